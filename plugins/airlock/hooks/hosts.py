"""What a release does to one host: install, switch, activate, wait until serving, roll back, prune.

Host layout (the release contract)::

    <root>/releases/<version>/   one unpacked artifact per version, with shared -> ../../shared
    <root>/current               symlink to releases/<version>, replaced atomically (rename)
    <root>/shared/               configuration, logs and state kept across releases
    <root>/.airlock-history      the releases ``current`` was switched to by releases, oldest
                                 first; a rollback removes the releases it backs out of
    <root>/.airlock-previous     the release a rollback goes back to: the one before ``current``
                                 in that history (absent when there is none)
    <root>/releases/.incoming-<version>.tar.gz, .staging-<version>/
                                 an upload and an unpack in progress; what a killed one leaves
                                 behind is pruned with the old releases

The directory ``current`` resolves to is never removed: an install that would have to replace
it (a release laid out before Airlock, without a marker) is refused, and so is pruning it. A
release marker that exists but cannot be read fails loudly instead of counting as "not
installed".

Every step is idempotent: re-running it after a crash converges to the same state instead of
failing or doing the work twice. Every command is assembled from ``shlex``-quoted parts.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta

from airlock.config import Environment, Host
from airlock.hooks.artifacts import Artifact
from airlock.hooks.http import UNREACHABLE, fetch_json
from airlock.hooks.ssh import HostSSHHook, RemoteCommandError

log = logging.getLogger(__name__)

RELEASE_MARKER = ".airlock-release"
PREVIOUS_MARKER = ".airlock-previous"
HISTORY_FILE = ".airlock-history"
#: How many releases the history keeps.
HISTORY_LENGTH = 50
#: What an interrupted install leaves in ``releases/``: ``<prefix><version><suffix>``.
LEFTOVERS = ((".incoming-", ".tar.gz"), (".staging-", ""))
#: The exit status of a host script that refused to remove the live release.
_LIVE = 97
#: The exit status of the marker read when there is no marker.
_NO_MARKER = 98
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class HostNotServingError(RuntimeError):
    """The host did not become healthy on the expected version in time."""


class ReleaseMarkerError(RuntimeError):
    """A release marker exists but cannot be read: what the host has installed is unknown."""


class LiveReleaseError(RuntimeError):
    """A step would have removed the directory ``current`` points to; nothing was removed."""


def refuse_if_live(current: str, path: str) -> str:
    """Shell lines that exit :data:`_LIVE` when ``current`` resolves to ``path`` or inside it.

    Resolved on the host, right before the removal they guard, so a ``current`` that points at
    the directory through another name (or a symbolic link) is caught too.
    """
    q = shlex.quote
    return "\n".join(
        [
            f"live=$(readlink -f -- {q(current)}) || live=",
            f"doomed=$(readlink -f -- {q(path)}) || doomed=",
            'case "$live/" in "$doomed"/*) if [ -n "$doomed" ] && [ -n "$live" ]; then',
            f'    echo "current -> $live" >&2; exit {_LIVE}',
            "fi ;; esac",
        ]
    )


@dataclass(frozen=True)
class HostRelease:
    """What a run did to one host: the release it had before and the one it has now."""

    host: str
    previous_version: str | None
    version: str
    changed: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HostState:
    """A host as preflight found it."""

    host: str
    current_version: str | None
    free_disk_mb: int
    installed_versions: list[str]
    previous_version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def host_hook(environment: Environment, host: Host) -> HostSSHHook:
    """An SSH hook to ``host`` with the environment's connection, pinned known_hosts and timeouts.

    The caller closes it; :func:`host_session` does so for the release layout.
    """
    connect_timeout = int(environment.ssh.connect_timeout.total_seconds())
    hook = HostSSHHook(
        host=host,
        known_hosts=environment.ssh.known_hosts,
        ssh_conn_id=environment.ssh.conn_id,
        conn_timeout=connect_timeout,
        cmd_timeout=environment.ssh.command_timeout.total_seconds(),
    )
    # A host that accepts the TCP connection and then says nothing (a hung or stopped sshd)
    # waits for the banner and the authentication, not for the connect: bound those by
    # ssh.connect_timeout too (SSHHook's own defaults are 30 s and unbounded).
    hook.banner_timeout = connect_timeout
    hook.auth_timeout = connect_timeout
    return hook


class HostLayout:
    """The release directories of one host, operated over an SSH hook."""

    def __init__(self, hook: HostSSHHook, root: str) -> None:
        self.hook = hook
        self.root = root
        self.releases = f"{root}/releases"
        self.current = f"{root}/current"

    def release_dir(self, version: str) -> str:
        return f"{self.releases}/{version}"

    def current_version(self) -> str | None:
        result = self.hook.run(["readlink", self.current], check=False)
        target = result.stdout.strip()
        if result.exit_status != 0 or not target:
            return None
        return target.rstrip("/").rsplit("/", 1)[-1]

    def installed_versions(self) -> list[str]:
        """Installed releases, newest first."""
        script = f"cd {shlex.quote(self.releases)} 2>/dev/null && ls -1t -- || true"
        names = self.hook.run_script(script).stdout.split()
        return [name for name in names if not name.startswith(".")]

    def free_disk_mb(self) -> int:
        script = f"mkdir -p {shlex.quote(self.releases)} && df -Pk {shlex.quote(self.releases)} | tail -1"
        fields = self.hook.run_script(script).stdout.split()
        return int(fields[3]) // 1024

    def installed_sha256(self, version: str) -> str | None:
        """The SHA-256 the release was installed from; None when it has no marker (not installed).

        A marker that exists but cannot be read (permissions, I/O error, not a file) or does not
        hold a digest raises :class:`ReleaseMarkerError`: counting it as "not installed" would
        make :meth:`install` replace a release that may be live.
        """
        q = shlex.quote
        release, marker = self.release_dir(version), f"{self.release_dir(version)}/{RELEASE_MARKER}"
        script = "\n".join(
            [
                f"if [ ! -e {q(marker)} ] && [ ! -L {q(marker)} ]; then",
                # A directory the user cannot search hides its marker: unknown, not absent.
                f"  if [ -d {q(release)} ] && ! [ -x {q(release)} ]; then",
                f"    echo {q(release + ': Permission denied')} >&2; exit 1",
                "  fi",
                f"  exit {_NO_MARKER}",
                "fi",
                f"cat -- {q(marker)}",
            ]
        )
        result = self.hook.run_script(script, check=False)
        if result.exit_status == _NO_MARKER:
            return None
        digest = result.stdout.strip()
        if result.exit_status != 0 or not _SHA256.match(digest):
            problem = result.stderr.strip() or f"it holds {digest[:80]!r}, not a SHA-256"
            raise ReleaseMarkerError(
                f"Host {self.hook.host.name}: cannot read the release marker {marker} ({problem}); "
                "what is installed there is unknown, so nothing was changed: fix the file's "
                "permissions or the disk, then run again"
            )
        return digest

    def install(self, version: str, artifact: Artifact) -> bool:
        """Unpack the artifact into ``releases/<version>``; returns False when already there.

        The upload is checked against the artifact's SHA-256 on the host, unpacked into a
        temporary directory and renamed into place, so a release directory is either complete
        or absent. A version already installed from a different artifact is refused: versions
        are immutable. A directory of that version without a marker (an unfinished install, or
        a release laid out before Airlock) is replaced, unless ``current`` resolves to it: then
        :class:`LiveReleaseError` says so and the host keeps serving it untouched, since which
        artifact it holds is unknown and adopting it would vouch for an unchecked build.
        """
        installed = self.installed_sha256(version)
        if installed == artifact.sha256:
            return False
        if installed is not None:
            raise RuntimeError(
                f"Host {self.hook.host.name} already has {version} from another artifact "
                f"(SHA-256 {installed}, now {artifact.sha256}): versions are immutable, publish a new one"
            )
        q = shlex.quote
        incoming = f"{self.releases}/.incoming-{version}.tar.gz"
        staging = f"{self.releases}/.staging-{version}"
        target = self.release_dir(version)
        self.hook.run(["mkdir", "-p", self.releases, f"{self.root}/shared"])
        self.hook.upload(artifact.path, incoming)
        script = "\n".join(
            [
                "set -eu",
                f"echo {q(artifact.sha256 + '  ' + incoming)} | sha256sum --check --status -",
                # A directory without a marker (read above): an unfinished or pre-Airlock release.
                f"if [ -e {q(target)} ] || [ -L {q(target)} ]; then",
                f"trap {q('rm -f ' + q(incoming))} EXIT",
                refuse_if_live(self.current, target),
                "trap - EXIT",
                "fi",
                f"rm -rf {q(staging)} {q(target)}",
                f"mkdir -p {q(staging)}",
                f"tar -xzf {q(incoming)} -C {q(staging)} --no-same-owner",
                f"ln -sfn ../../shared {q(staging + '/shared')}",
                f"printf '%s\\n' {q(artifact.sha256)} > {q(staging + '/' + RELEASE_MARKER)}",
                f"mv -T {q(staging)} {q(target)}",
                f"rm -f {q(incoming)}",
            ]
        )
        result = self.hook.run_script(script, check=False)
        if result.exit_status == _LIVE:
            raise LiveReleaseError(
                f"Host {self.hook.host.name}: {target} is the live release "
                f"({result.stderr.strip()}) but has no Airlock release marker, so which artifact it "
                f"holds is unknown; Airlock will not replace the directory the host serves from. "
                f"Release a new version, or, once you have checked that it holds this artifact, "
                f"write its SHA-256 ({artifact.sha256}) into {target}/{RELEASE_MARKER}"
            )
        if result.exit_status != 0:
            raise RemoteCommandError(self.hook.host, f"install {version} into {target}", result)
        return True

    def previous_version(self) -> str | None:
        """The release a rollback goes back to: the one before ``current`` in its history."""
        result = self.hook.run(["cat", f"{self.root}/{PREVIOUS_MARKER}"], check=False)
        return (result.stdout.strip() or None) if result.exit_status == 0 else None

    def history(self) -> list[str]:
        """The releases ``current`` was switched to by releases, oldest first (see the module)."""
        result = self.hook.run(["cat", f"{self.root}/{HISTORY_FILE}"], check=False)
        return result.stdout.split() if result.exit_status == 0 else []

    def switch_current(self, version: str, *, rollback: bool = False) -> None:
        """Point ``current`` at ``releases/<version>`` with one atomic rename, and record it.

        A release (``rollback=False``) adds ``version`` to the history; a rollback backs out of
        the releases after ``version`` instead, so the build it leaves is never recorded as the
        one to go back to (:func:`history_after_release`, :func:`history_after_rollback`).
        """
        q = shlex.quote
        pending = f"{self.root}/.current-{version}"
        before = self.current_version()
        if rollback:
            history = history_after_rollback(self.history(), before, version)
        else:
            history = history_after_release(self.history(), before, version)
        previous = history[-2] if len(history) > 1 else None
        history_file = f"{self.root}/{HISTORY_FILE}"
        marker = f"{self.root}/{PREVIOUS_MARKER}"
        lines = [
            "set -eu",
            f"test -d {q(self.release_dir(version))}",
            f"printf '%s\\n' {' '.join(q(v) for v in history)} > {q(history_file + '.new')}",
            f"mv -f {q(history_file + '.new')} {q(history_file)}",
        ]
        if previous:
            lines += [
                f"printf '%s\\n' {q(previous)} > {q(marker + '.new')}",
                f"mv -f {q(marker + '.new')} {q(marker)}",
            ]
        else:
            lines.append(f"rm -f {q(marker)}")
        lines += [
            f"ln -sfn {q('releases/' + version)} {q(pending)}",
            f"mv -Tf {q(pending)} {q(self.current)}",
        ]
        script = "\n".join(lines)
        self.hook.run_script(script, shown=f"switch {self.current} to {version}")

    def activate(self, command: list[str], version: str) -> None:
        values = {"root": self.root, "release_dir": self.release_dir(version), "version": version}
        self.hook.run([part.format(**values) for part in command])

    def leftovers(self) -> dict[str, str]:
        """What interrupted installs left in ``releases/``: entry name -> the version it was for."""
        script = f"cd {shlex.quote(self.releases)} 2>/dev/null && ls -1A -- || true"
        found = {}
        for name in self.hook.run_script(script).stdout.splitlines():
            for prefix, suffix in LEFTOVERS:
                if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix + suffix):
                    found[name] = name[len(prefix) : len(name) - len(suffix)]
        return found

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Delete the oldest releases beyond ``keep`` and interrupted installs' leftovers.

        Never a release or a leftover of a version in ``protect`` (the one being released may
        still be uploading or unpacking), and never the directory ``current`` resolves to (kept,
        with a warning). Returns the releases and leftovers removed.
        """
        installed = self.installed_versions()
        doomed = [self.release_dir(v) for v in installed[keep:] if v not in protect]
        doomed += [f"{self.releases}/{name}" for name, v in self.leftovers().items() if v not in protect]
        removed = []
        for path in doomed:
            script = "\n".join(
                ["set -eu", refuse_if_live(self.current, path), shlex.join(["rm", "-rf", "--", path])]
            )
            result = self.hook.run_script(script, check=False)
            if result.exit_status == _LIVE:
                log.warning(
                    "Host %s: kept %s, the live release (%s)",
                    self.hook.host.name,
                    path,
                    result.stderr.strip(),
                )
                continue
            if result.exit_status != 0:
                raise RemoteCommandError(self.hook.host, f"rm -rf -- {path}", result)
            removed.append(path.rsplit("/", 1)[-1])
        return removed


def history_after_release(history: list[str], before: str | None, version: str) -> list[str]:
    """The history once a release switched ``current`` from ``before`` to ``version``.

    A host without a history (laid out by an older Airlock) starts one with ``before``.
    """
    if before and (not history or history[-1] != before):
        history = [*history, before]
    if not history or history[-1] != version:
        history = [*history, version]
    return history[-HISTORY_LENGTH:]


def history_after_rollback(history: list[str], leaving: str | None, version: str) -> list[str]:
    """The history once a rollback put ``current`` back on ``version``, leaving ``leaving``.

    What came after the last ``version`` is backed out of, and so is ``leaving``: none of those
    builds stays anywhere in the history, so none can become "previous" again. A ``version`` the
    history never saw starts it afresh.
    """
    if version not in history:
        return [version]
    last = len(history) - 1 - history[::-1].index(version)
    backed_out = {*history[last + 1 :], leaving} - {version, None}
    kept: list[str] = []
    for entry in history[: last + 1]:
        if entry not in backed_out and (not kept or kept[-1] != entry):
            kept.append(entry)
    return kept


def serving_version(environment: Environment, host: Host) -> tuple[bool, str | None, str]:
    """Whether the host is healthy, which version it reports, and what was seen."""
    try:
        health_status, _, _ = fetch_json(host.app_url + environment.deploy.health_path, timeout=5)
        version_status, body, _ = fetch_json(host.app_url + environment.deploy.version_path, timeout=5)
    except UNREACHABLE as error:
        return False, None, f"not answering ({error})"
    version = (body or {}).get("version") if version_status == 200 else None
    return health_status == 200, version, f"health {health_status}, version {version!r}"


def wait_until_serving(environment: Environment, host: Host, version: str, timeout: timedelta) -> None:
    """Poll health and version until the host is healthy on ``version``, or raise."""
    deadline = time.monotonic() + timeout.total_seconds()
    seen = "no answer yet"
    pause = 0.05  # most apps answer within a fraction of a second of their reload
    while time.monotonic() < deadline:
        healthy, reported, seen = serving_version(environment, host)
        if healthy and reported == version:
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
    raise HostNotServingError(
        f"Host {host.name} ({host.app_url}) is not healthy on {version} after "
        f"{int(timeout.total_seconds())}s: last seen {seen}"
    )


@contextmanager
def host_session(environment: Environment, host: Host) -> Iterator[HostLayout]:
    """The host's release layout over one SSH session, closed when the block ends."""
    hook = host_hook(environment, host)
    try:
        yield HostLayout(hook, environment.root_of(host))
    finally:
        hook.close()


def deploy_to_host(
    environment: Environment,
    host: Host,
    version: str,
    artifact: Artifact,
    *,
    before_switch: Callable[[], None] | None = None,
    check_current: Callable[[str | None], None] | None = None,
) -> HostRelease:
    """Install, switch, activate and wait; a no-op when the host already serves ``version``.

    One SSH connection carries every step.

    :param before_switch: called after the install, right before ``current`` changes; it may
        raise to stop the deploy there (fail-fast), leaving the host on its release.
    :param check_current: called with the release ``current`` points to, before anything changes;
        it may raise to refuse the deploy (a host that drifted from the approved plan).
    """
    with host_session(environment, host) as layout:
        previous = layout.current_version()
        if check_current is not None:
            check_current(previous)
        if previous == version:
            healthy, reported, _ = serving_version(environment, host)
            if healthy and reported == version:
                return HostRelease(host=host.name, previous_version=previous, version=version, changed=False)
        layout.install(version, artifact)
        if before_switch is not None:
            before_switch()
        layout.switch_current(version)
        layout.activate(environment.deploy.activate_command, version)
        wait_until_serving(environment, host, version, environment.deploy.health_timeout)
        return HostRelease(
            host=host.name, previous_version=previous, version=version, changed=previous != version
        )


def roll_back_host(environment: Environment, host: Host, to_version: str) -> bool:
    """Put the host back on ``to_version`` (already installed); returns whether it changed anything.

    The history forgets the releases after ``to_version``: the build rolled back from never
    becomes the host's "previous" release, so a second rollback cannot toggle back to it.
    """
    with host_session(environment, host) as layout:
        current = layout.current_version()
        if current == to_version:
            healthy, reported, _ = serving_version(environment, host)
            if healthy and reported == to_version:
                return False
        if layout.installed_sha256(to_version) is None:
            raise RuntimeError(f"Host {host.name} has no release {to_version} to switch to")
        layout.switch_current(to_version, rollback=True)
        layout.activate(environment.deploy.activate_command, to_version)
        wait_until_serving(environment, host, to_version, environment.deploy.health_timeout)
        return True


def inspect_host(environment: Environment, host: Host) -> HostState:
    """Preflight: reach the host (host key checked), read its current release and free disk."""
    with host_session(environment, host) as layout:
        free = layout.free_disk_mb()
        if free < environment.deploy.min_free_disk_mb:
            raise RuntimeError(
                f"Host {host.name} has {free} MB free under {layout.releases}, below the "
                f"{environment.deploy.min_free_disk_mb} MB required (deploy.min_free_disk_mb)"
            )
        return HostState(
            host=host.name,
            current_version=layout.current_version(),
            free_disk_mb=free,
            installed_versions=layout.installed_versions(),
            previous_version=layout.previous_version(),
        )


def prune_host(environment: Environment, host: Host, protect: set[str]) -> list[str]:
    """Delete the host's oldest releases beyond ``deploy.keep_releases``; never ``current`` or ``protect``."""
    with host_session(environment, host) as layout:
        current = layout.current_version()
        return layout.prune(environment.deploy.keep_releases, protect | ({current} if current else set()))
