"""Processes that fork DAG parses start them with the DAG files' imports loaded, never stale ones.

The LocalExecutor's workers fork one process per task, and that process parses the task's DAG
file first; the dag-processor forks one per DAG file, every ``min_file_process_interval``.
Parsing ``dags/release.py`` imports Airlock and what it uses (paramiko, psycopg, redis, YAML,
pydantic): 0.3-0.5 s of CPU each time, most of a short task's life and most of the
dag-processor's work. Airflow pre-imports its own modules before forking a parse
(``[dag_processor] parsing_pre_import_modules``); this does it for the Airflow and Airlock
modules the DAG files import (:data:`PACKAGES`; another package's import might do anything, and
is left to the tasks), in the scheduler (whose LocalExecutor workers inherit it) and the dag-processor: before
each fork, :meth:`WarmImports.refresh` makes sure those modules are loaded, and the child finds
them in ``sys.modules`` (a parse of ``dags/release.py`` then takes about 25 ms).

Code a user edits still takes effect at the next task or parse, as without this: before each
fork the files of the loaded user modules (those under the DAG and plugins folders) are compared
with what they were when imported, and if one changed or vanished, every user module is
forgotten and imported afresh. Third-party packages stay loaded until the component restarts (a
``pip install`` needs a restart anyway).
"""

from __future__ import annotations

import ast
import importlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)
#: The packages whose modules are loaded ahead (with what they import in turn: psycopg, redis,
#: paramiko, pydantic, YAML for Airlock's).
PACKAGES = ("airflow", "airlock")


def top_level_imports(source: str) -> Iterator[str]:
    """The absolute modules a DAG file's source imports at its top level, in order.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a submodule). Relative
    imports and imports inside functions are left to the task, as is a file that does not parse.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    for node in tree.body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "__future__":
                continue
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


class WarmImports:
    """What the DAG files in ``dags_folder`` import, loaded ahead of the tasks that parse them.

    :param dags_folder: the DAG files whose top-level imports are loaded.
    :param user_folders: where user code lives (the DAG and plugins folders): modules loaded
        from there are checked for changes before every task.
    :param packages: only the DAG files' imports of these top-level packages are loaded.
    """

    def __init__(
        self,
        dags_folder: str | os.PathLike[str],
        user_folders: Iterable[str | os.PathLike[str]],
        packages: tuple[str, ...] = PACKAGES,
    ):
        self.dags_folder = Path(dags_folder)
        self.packages = packages
        self.user_folders = tuple(os.path.realpath(folder) + os.sep for folder in user_folders if folder)
        #: Each loaded user module's file, with its mtime and size when it was imported.
        self.loaded: dict[str, tuple[str, tuple[int, int] | None]] = {}
        self.warm = False

    def modules(self) -> list[str]:
        """The Airflow and Airlock modules the DAG files import, each once, in the order the files
        name them. Another package a DAG file imports is left to its tasks: its import might do
        anything, and the scheduler is no place to find out."""
        wanted: dict[str, None] = {}
        for path in sorted(self.dags_folder.rglob("*.py")):
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            names = top_level_imports(source)
            wanted.update(dict.fromkeys(name for name in names if name.split(".")[0] in self.packages))
        return list(wanted)

    def load(self) -> None:
        """Import the DAG files' modules (no-op once warm); one that fails is left to its task."""
        if self.warm:
            return
        for name in self.modules():
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as error:
                if error.name == name and "." in name:
                    continue  # ``from module import name`` where name is not a module
                log.warning("Not pre-importing %s (%s); the tasks that need it will say why", name, error)
            except Exception as error:  # a broken module fails its task's parse with the real error
                log.warning("Not pre-importing %s (%s); the tasks that need it will say why", name, error)
        self.loaded = {
            name: (path, _stamp(path)) for name, path in self._user_modules(list(sys.modules.items()))
        }
        self.warm = True

    def _user_modules(self, modules: list[tuple[str, Any]]) -> Iterator[tuple[str, str]]:
        for name, module in modules:
            path = getattr(module, "__file__", None)
            if path and os.path.realpath(path).startswith(self.user_folders):
                yield name, path

    def forget_if_changed(self) -> bool:
        """Forget every user module if one's file changed since it was imported: True if so."""
        if not any(_stamp(path) != stamp for path, stamp in self.loaded.values()):
            return False
        stale = [name for name, _ in self._user_modules(list(sys.modules.items()))]
        for name in stale:
            sys.modules.pop(name, None)
        log.info("User code changed since it was imported: %d modules will be imported afresh", len(stale))
        self.loaded = {}
        self.warm = False
        return True

    def refresh(self) -> None:
        """Before a fork: forget changed user code, then load whatever is missing."""
        self.forget_if_changed()
        self.load()


#: Components whose forks parse DAG files: the scheduler (its LocalExecutor workers fork the
#: task processes) and the dag-processor.
PARSING_COMPONENTS = ("SchedulerJob", "DagProcessorJob")
_component: object | None = None
_imports: WarmImports | None = None


def _before_fork() -> None:
    """Runs before every fork of this process (and of its forked children, which inherit it)."""
    if _imports is None or getattr(_component, "job_type", None) not in PARSING_COMPONENTS:
        return
    try:
        _imports.refresh()
    except Exception:  # never stop a fork: the child imports what it needs itself
        log.warning("Could not pre-import the DAG files' modules", exc_info=True)


@hookimpl
def on_starting(component: object) -> None:
    """In every Airflow job: keep the DAG files' imports warm across its forks, if it parses.

    The job type is not known yet when this fires, so the check happens at each fork (by then
    it is): the triggerer and the api-server never load anything.
    """
    global _component, _imports
    from airflow.configuration import conf
    from airflow.jobs.job import Job

    if not isinstance(component, Job) or _imports is not None:
        return
    dags_folder = conf.get("core", "dags_folder")
    _component = component
    _imports = WarmImports(dags_folder, user_folders=[dags_folder, conf.get("core", "plugins_folder")])
    os.register_at_fork(before=_before_fork)
