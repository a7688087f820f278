"""Forks that parse DAG files (task processes, the dag-processor's) inherit the imports, never stale ones."""

from __future__ import annotations

import multiprocessing
import os
import sys
import textwrap

import pytest
from airflow.jobs.job import Job

from airlock.listeners import warm_imports
from airlock.listeners.warm_imports import WarmImports, top_level_imports


def test_the_modules_a_dag_file_imports_at_its_top_level_are_named():
    source = textwrap.dedent(
        """
        from __future__ import annotations
        import json, os.path
        from airflow.sdk import DAG, task
        from .sibling import helper

        def later():
            import tarfile
        """
    )
    assert list(top_level_imports(source)) == [
        "json",
        "os.path",
        "airflow.sdk",
        "airflow.sdk.DAG",
        "airflow.sdk.task",
    ]
    assert list(top_level_imports("def broken(:\n")) == []


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A DAG folder whose one file imports ``warmed_steps`` from a plugins folder."""
    dags, plugins = tmp_path / "dags", tmp_path / "plugins"
    dags.mkdir()
    plugins.mkdir()
    (dags / "release.py").write_text(
        "from warmed_steps import VALUE\nimport no_such_module_here\nimport another_package\n"
    )
    (plugins / "another_package.py").write_text("IMPORTED = True\n")
    (plugins / "warmed_steps.py").write_text("VALUE = 'first'\n")
    monkeypatch.syspath_prepend(str(plugins))
    yield dags, plugins
    sys.modules.pop("warmed_steps", None)
    sys.modules.pop("another_package", None)


#: In these tests the DAG file's user code stands for Airlock's package.
PACKAGES = ("warmed_steps", "no_such_module_here")


def test_loading_imports_the_dag_files_modules_and_skips_one_that_does_not_import(user_code, caplog):
    dags, plugins = user_code
    imports = WarmImports(dags, user_folders=[dags, plugins], packages=PACKAGES)

    imports.load()

    assert sys.modules["warmed_steps"].VALUE == "first"
    assert "no_such_module_here" not in sys.modules
    assert "Not pre-importing no_such_module_here" in caplog.text
    assert "another_package" not in sys.modules  # not one of the packages loaded ahead
    assert imports.forget_if_changed() is False  # nothing changed: the modules stay loaded
    assert "warmed_steps" in sys.modules


def test_a_user_module_edited_after_it_was_loaded_is_forgotten_so_the_next_task_imports_it_afresh(
    user_code,
):
    dags, plugins = user_code
    imports = WarmImports(dags, user_folders=[dags, plugins], packages=PACKAGES)
    imports.load()
    (plugins / "warmed_steps.py").write_text("VALUE = 'edited'\n")  # same mtime tick: size differs

    assert imports.forget_if_changed() is True
    assert "warmed_steps" not in sys.modules
    assert "json" in sys.modules  # third-party and standard modules stay
    imports.load()
    assert sys.modules["warmed_steps"].VALUE == "edited"


def _fork_and_read(results) -> None:
    """Fork as a LocalExecutor worker or the dag-processor does; the child reports what it sees."""
    child = os.fork()
    if child == 0:
        module = sys.modules.get("warmed_steps")
        results.put(module.VALUE if module else "not loaded")
        os._exit(0)
    os.waitpid(child, 0)


class _Component:
    job_type = "DagProcessorJob"


@pytest.fixture
def before_each_fork(user_code, monkeypatch):
    """This process's forks refreshed as a parsing component's are (one hook, for the session)."""
    dags, plugins = user_code
    monkeypatch.setattr(warm_imports, "_component", _Component())
    monkeypatch.setattr(
        warm_imports, "_imports", WarmImports(dags, user_folders=[dags, plugins], packages=PACKAGES)
    )
    if not getattr(os, "_airlock_test_hook", False):
        os.register_at_fork(before=warm_imports._before_fork)
        os._airlock_test_hook = True
    return plugins


def test_a_forked_parse_finds_the_module_loaded_and_sees_an_edit_at_once(before_each_fork):
    plugins = before_each_fork
    results = multiprocessing.SimpleQueue()

    _fork_and_read(results)
    assert results.get() == "first"  # loaded in the parent just before the fork

    (plugins / "warmed_steps.py").write_text("VALUE = 'second'\n")
    _fork_and_read(results)
    assert results.get() == "second"  # forgotten and loaded again before this fork


def test_a_component_that_parses_no_dag_files_loads_nothing(before_each_fork, monkeypatch):
    monkeypatch.setattr(warm_imports._component, "job_type", "TriggererJob", raising=False)
    results = multiprocessing.SimpleQueue()

    _fork_and_read(results)

    assert results.get() == "not loaded"


def test_every_airflow_job_gets_the_hook_through_the_plugin_and_only_a_job(monkeypatch, tmp_path):
    monkeypatch.setattr(warm_imports, "_imports", None)
    monkeypatch.setattr(warm_imports, "_component", None)
    registered = []
    monkeypatch.setattr(warm_imports.os, "register_at_fork", lambda **hooks: registered.append(hooks))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(tmp_path))

    warm_imports.on_starting(component=object())
    assert warm_imports._imports is None

    job = Job()  # Airflow calls its listeners' on_starting: Airlock's plugin registers this one
    assert warm_imports._component is job
    warm_imports.on_starting(component=job)  # once per process
    ours = [hooks for hooks in registered if hooks.get("before") is warm_imports._before_fork]
    assert ours == [{"before": warm_imports._before_fork}]
    assert warm_imports._component is job
    assert warm_imports._imports.dags_folder == tmp_path


def test_by_default_only_airflow_and_airlock_modules_are_loaded_ahead(tmp_path):
    (tmp_path / "release.py").write_text(
        "from airflow.sdk import DAG\nfrom airlock.config import load_environments\nimport tensorflow\n"
    )

    assert WarmImports(tmp_path, user_folders=[tmp_path]).modules() == [
        "airflow.sdk",
        "airflow.sdk.DAG",
        "airlock.config",
        "airlock.config.load_environments",
    ]
