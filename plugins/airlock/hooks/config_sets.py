"""Configuration sets where they live: read from ``config.source``, installed on hosts.

The source is a directory or an object-store prefix (``ObjectStoragePath``); every regular file
under it is part of the set (links are refused: a set is what the source holds, not what a link
points to). On a host::

    <root>/shared/config-sets/<id>/   one installed set: its files, its manifest, its id
    <root>/shared/config              symlink to config-sets/<id>, switched atomically

A host whose ``shared/config`` is a plain directory (configuration laid out before Airlock) has it
moved to ``config-sets/pre-airlock`` at its first switch, so a rollback can put it back.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from airlock.config import Environment, Host
from airlock.config.environment import ConfigSettings
from airlock.core.config_sets import (
    ID_PATTERN,
    MANIFEST,
    SET_ID_FILE,
    ConfigSet,
    ConfigSetError,
    parse_manifest,
)
from airlock.hooks.hosts import host_hook, serving_version
from airlock.hooks.ssh import HostSSHHook, RemoteCommandError

#: The name a plain ``shared/config`` directory gets when Airlock first switches a host.
PRE_AIRLOCK = "pre-airlock"
#: What :meth:`HostConfig.active` answers for a plain directory.
UNMANAGED = "unmanaged"


def read_source(settings: ConfigSettings) -> dict[str, bytes]:
    """Every file of the source, by path relative to it; refused when too large or empty."""
    contents: dict[str, bytes] = {}
    total = 0
    for relative, read in _walk(settings):
        data = read()
        total += len(data)
        if total > settings.max_bytes:
            raise ConfigSetError(
                f"the config source {settings.source} holds more than {settings.max_bytes} bytes "
                "(config.max_bytes): a config set is for configuration, not data"
            )
        contents[relative] = data
    if not contents:
        raise ConfigSetError(f"the config source {settings.source} holds no files")
    return contents


def _walk(settings: ConfigSettings) -> Iterator[tuple[str, object]]:
    if "://" not in settings.source:
        root = Path(settings.source)
        if not root.is_dir():
            raise ConfigSetError(f"the config source {settings.source} is not a directory")
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise ConfigSetError(f"config file {relative!r} is a symbolic link: copy the file itself")
            if path.is_file():
                yield relative, path.read_bytes
        return
    from airflow.sdk import ObjectStoragePath

    root = ObjectStoragePath(settings.source, conn_id=settings.conn_id)
    if not root.exists():
        raise ConfigSetError(f"the config source {settings.source} does not exist")
    prefix = str(root).rstrip("/") + "/"
    for path in sorted(root.rglob("*"), key=str):
        if path.is_file():
            yield str(path)[len(prefix) :], path.read_bytes


def set_archive(config_set: ConfigSet, contents: Mapping[str, bytes]) -> bytes:
    """The set as one gzipped tarball: its files, its manifest and its id file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members = {**{path: contents[path] for path in config_set.paths}}
        members[MANIFEST] = config_set.manifest.encode("ascii")
        members[SET_ID_FILE] = (config_set.id + "\n").encode("ascii")
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o640, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass(frozen=True)
class HostConfigChange:
    host: str
    previous: str | None
    config: str
    changed: bool


class HostConfig:
    """The config sets of one host, over its SSH session."""

    def __init__(self, hook: HostSSHHook, root: str) -> None:
        self.hook = hook
        self.shared = f"{root}/shared"
        self.link = f"{self.shared}/config"
        self.sets = f"{self.shared}/config-sets"

    def set_dir(self, set_id: str) -> str:
        return f"{self.sets}/{set_id}"

    def active(self) -> str | None:
        """The active set's id; :data:`UNMANAGED` for a plain directory, :data:`PRE_AIRLOCK` for
        one Airlock kept at its first switch; None when there is none."""
        q = shlex.quote
        link = q(self.link)
        script = f"if [ -L {link} ]; then readlink {link}; elif [ -d {link} ]; then echo /{UNMANAGED}; fi"
        target = self.hook.run_script(script).stdout.strip()
        if not target:
            return None
        name = target.rstrip("/").rsplit("/", 1)[-1]
        return UNMANAGED if target == f"/{UNMANAGED}" else name

    def files(self, set_id: str | None) -> dict[str, bytes]:
        """The active or named set's files (for the plan's diff): a managed set from its manifest,
        a plain directory as it is; empty when there is none."""
        if set_id is None:
            return {}
        if set_id in (UNMANAGED, PRE_AIRLOCK):  # no manifest: the directory as it is
            base = self.link if set_id == UNMANAGED else self.set_dir(PRE_AIRLOCK)
            listing = self.hook.run_script(
                f"cd {shlex.quote(base)} && find . -type f -printf '%P\\n' | LC_ALL=C sort"
            ).stdout.split("\n")
            paths = [path for path in listing if path]
        else:
            base = self.set_dir(set_id)
            paths = list(parse_manifest(self._read(f"{base}/{MANIFEST}").decode("ascii")))
        return {path: self._read(f"{base}/{path}") for path in paths}

    def _read(self, remote: str) -> bytes:
        with self.hook.read_file(remote) as handle:
            return handle.read()

    def installed(self, config_set: ConfigSet) -> bool:
        """Whether exactly this set is installed: its manifest is this set's, byte for byte (not
        only its id), and its files still match it."""
        q = shlex.quote
        directory = self.set_dir(config_set.id)
        script = (
            f"cd {q(directory)} 2>/dev/null && sha256sum --check --status --strict {MANIFEST} "
            f"&& sha256sum < {MANIFEST}"
        )
        result = self.hook.run_script(script, check=False)
        expected = hashlib.sha256(config_set.manifest.encode("ascii")).hexdigest()
        return result.exit_status == 0 and result.stdout.split()[:1] == [expected]

    def install(self, config_set: ConfigSet, contents: Mapping[str, bytes]) -> bool:
        """Upload the set into ``config-sets/<id>``, checked against its manifest on the host;
        returns False when it was there already. A directory is either complete or absent."""
        if self.installed(config_set):
            return False
        q = shlex.quote
        archive = set_archive(config_set, contents)
        digest = hashlib.sha256(archive).hexdigest()
        incoming = f"{self.sets}/.incoming-{config_set.id}.tar.gz"
        staging = f"{self.sets}/.staging-{config_set.id}"
        target = self.set_dir(config_set.id)
        self.hook.run(["mkdir", "-p", self.sets])
        with tempfile.TemporaryDirectory(prefix="airlock-config-") as scratch:
            local = Path(scratch) / "set.tar.gz"
            local.write_bytes(archive)
            self.hook.upload(local, incoming)
        script = "\n".join(
            [
                "set -eu",
                f"echo {q(digest + '  ' + incoming)} | sha256sum --check --status -",
                f"rm -rf {q(staging)}",
                f"mkdir -p {q(staging)}",
                f"tar -xzf {q(incoming)} -C {q(staging)} --no-same-owner",
                f"(cd {q(staging)} && sha256sum --check --status --strict {MANIFEST})",
                f"rm -rf {q(target)}",
                f"mv -T {q(staging)} {q(target)}",
                f"rm -f {q(incoming)}",
            ]
        )
        result = self.hook.run_script(script, check=False)
        if result.exit_status != 0:
            raise RemoteCommandError(
                self.hook.host, f"install config set {config_set.id} into {target}", result
            )
        return True

    def switch(self, set_id: str) -> None:
        """Point ``shared/config`` at ``config-sets/<set_id>`` in one rename; a plain directory
        there is kept as ``config-sets/pre-airlock`` first."""
        if not (ID_PATTERN.match(set_id) or set_id == PRE_AIRLOCK):
            raise ValueError(f"not a config set id: {set_id!r}")
        q = shlex.quote
        keep = self.set_dir(PRE_AIRLOCK)
        temporary = f"{self.shared}/.config-switch"
        script = "\n".join(
            [
                "set -eu",
                f"test -d {q(self.set_dir(set_id))}",
                f"if [ -d {q(self.link)} ] && [ ! -L {q(self.link)} ]; then",
                f"  if [ -e {q(keep)} ]; then echo {q(keep + ' exists already')} >&2; exit 1; fi",
                f"  mkdir -p {q(self.sets)} && mv -T {q(self.link)} {q(keep)}",
                "fi",
                f"ln -sfn {q('config-sets/' + set_id)} {q(temporary)}",
                f"mv -T {q(temporary)} {q(self.link)}",
            ]
        )
        self.hook.run_script(script, shown=f"switch {self.link} to {set_id}")


@contextmanager
def host_config(environment: Environment, host: Host) -> Iterator[HostConfig]:
    hook = host_hook(environment, host)
    try:
        yield HostConfig(hook, environment.root_of(host))
    finally:
        hook.close()


def reported_config(environment: Environment, host: Host) -> tuple[bool, str | None, str]:
    """Whether the host is healthy, the config set id it reports (``config.report_field``), and
    what was seen."""
    from airlock.hooks.http import UNREACHABLE, fetch_json

    healthy, _, seen = serving_version(environment, host)
    field = environment.config.report_field if environment.config else None
    if field is None:
        return healthy, None, seen
    try:
        status, body, _ = fetch_json(host.app_url + environment.deploy.version_path, timeout=5)
    except UNREACHABLE as error:
        return False, None, f"not answering ({error})"
    reported = (body or {}).get(field) if status == 200 else None
    return healthy, reported, f"{seen}, {field} {reported!r}"
