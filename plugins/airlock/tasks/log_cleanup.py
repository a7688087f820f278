"""Log cleanup on a host: delete old compressed logs, gzip old logs, in one SSH session.

The work happens on the host with its own ``find`` and ``gzip``: ``include/host/log_cleanup.sh``
is sent as the text of ``bash -c`` and every value (ages, patterns, directories) follows it as
a separately quoted argument, so no setting ever becomes shell code. One session per host does
every directory; a dry run sends the same script in ``dry-run`` mode, which only lists.

Safety rules (enforced by the script, tested on real sshd hosts):

- only regular files (``find -P -type f``: symbolic links are never followed nor touched),
  only below a configured directory (``-xdev``: never another filesystem mounted inside it);
  ``gzip`` runs through ``-execdir`` and deletion through ``-delete``, both on the name inside the
  directory find walked, so a parent swapped for a symbolic link mid-run is never followed;
- a configured directory that is a symbolic link, or lies behind one, is refused: configure the
  real path instead; ``/`` is refused as too broad;
- only names matching ``logs.patterns`` are compressed, only names matching a pattern + ``.gz``
  are deleted, and only when last written longer ago than the configured age;
- a file some process holds open (per ``/proc/<pid>/fd``) is left alone; when the host cannot
  tell (no ``/proc``) or hides other users' processes, the report says so.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from airlock.config import PROJECT_ROOT, Environment, Host, LogSettings
from airlock.hooks.hosts import host_hook

log = logging.getLogger(__name__)

SCRIPT = PROJECT_ROOT / "include" / "host" / "log_cleanup.sh"
#: Paths listed per directory and action in a report; the totals always count every file.
SAMPLE_LIMIT = 50
#: The whole cleanup of one host (all its directories) must finish within this.
HOST_TIMEOUT = timedelta(minutes=25)
#: Directory states that mean the settings are wrong for this host: the task fails (no retry).
REFUSED = {
    "symlink": "is a symbolic link or lies behind one: configure its real path",
    "not-directory": "is not a directory",
    "too-broad": "is the root directory: configure the log directory itself",
}
ACTIONS = ("delete", "compress", "open")


class LogCleanupError(AirflowFailException):
    """The host cannot run the cleanup as configured (missing tools, refused directories)."""


@dataclass
class Tally:
    files: int = 0
    bytes: int = 0

    def add(self, other: Tally) -> None:
        self.files += other.files
        self.bytes += other.bytes


@dataclass
class DirectoryReport:
    """What happened (or, in a dry run, would happen) in one configured directory."""

    path: str
    status: str = "unreported"
    delete: Tally = field(default_factory=Tally)
    compress: Tally = field(default_factory=Tally)
    open: Tally = field(default_factory=Tally)
    samples: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: {a: [] for a in ACTIONS})


@dataclass
class HostCleanupReport:
    """One host's cleanup: per directory the files and bytes deleted, compressed and left open."""

    host: str
    dry_run: bool
    open_files_check: str = "unchecked"
    unreadable_processes: int = 0
    directories: list[DirectoryReport] = field(default_factory=list)

    def total(self, action: str) -> Tally:
        tally = Tally()
        for directory in self.directories:
            tally.add(getattr(directory, action))
        return tally

    def refused(self) -> list[DirectoryReport]:
        return [d for d in self.directories if d.status in REFUSED]

    def lines(self) -> list[str]:
        """The report as plain lines for the task log."""
        verb = "would be" if self.dry_run else "were"
        lines = [f"Log cleanup on {self.host}{' (dry run: nothing changed)' if self.dry_run else ''}"]
        for directory in self.directories:
            if directory.status != "ok":
                reason = REFUSED.get(directory.status, "does not exist: nothing to clean")
                lines.append(f"  {directory.path}: {directory.status}, {reason}")
                continue
            lines.append(
                f"  {directory.path}: {directory.delete.files} files ({directory.delete.bytes} bytes) "
                f"{verb} deleted, {directory.compress.files} files ({directory.compress.bytes} bytes) "
                f"{verb} compressed, {directory.open.files} skipped as open"
            )
            for action in ACTIONS:
                for size, path in directory.samples[action]:
                    lines.append(f"    {action:8} {size:>12} {path}")
                shown = len(directory.samples[action])
                if getattr(directory, action).files > shown:
                    lines.append(f"    {action:8} ... and {getattr(directory, action).files - shown} more")
        lines.append(f"  open files: {describe_open_files_check(self)}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document.update(
            deleted=asdict(self.total("delete")),
            compressed=asdict(self.total("compress")),
            skipped_open=asdict(self.total("open")),
        )
        return document


def describe_open_files_check(report: HostCleanupReport) -> str:
    if report.open_files_check == "proc":
        return "checked through /proc: files held open were left alone"
    if report.open_files_check == "partial" and not report.unreadable_processes:
        return (
            "partly checked: /proc hides other users' processes (mounted with hidepid); connect as "
            "root or as the logs' owner, or their open files may have been touched"
        )
    if report.open_files_check == "partial":
        return (
            f"partly checked: {report.unreadable_processes} processes of other users were not visible "
            "(connect as root or as the logs' owner); their open files may have been touched"
        )
    return "not checked: the host has no /proc; files held open may have been touched"


def host_directories(environment: Environment, host: Host) -> list[str]:
    """``logs.directories`` for ``host``, ``{root}`` filled in with its deploy root."""
    root = environment.root_of(host)
    return [str(PurePosixPath(directory.format(root=root))) for directory in environment.logs.directories]


def cleanup_command(settings: LogSettings, directories: list[str], *, dry_run: bool) -> str:
    """The one command sent to a host: the script, then every value as its own quoted argument."""
    minutes = [str(days * 24 * 60) for days in (settings.compress_after_days, settings.delete_after_days)]
    return shlex.join(
        [
            "bash",
            "-c",
            SCRIPT.read_text(),
            "airlock-log-cleanup",
            "dry-run" if dry_run else "apply",
            *minutes,
            str(SAMPLE_LIMIT),
            str(len(settings.patterns)),
            *settings.patterns,
            *directories,
        ]
    )


def parse_report(host: str, directories: list[str], output: str, *, dry_run: bool) -> HostCleanupReport:
    """Read the script's tab-separated records (see the script's header) into a report."""
    report = HostCleanupReport(host=host, dry_run=dry_run)
    report.directories = [DirectoryReport(path=path) for path in directories]
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "tools":
            raise LogCleanupError(
                f"Host {host} lacks {rest} needed by the log cleanup: install them (GNU findutils, "
                "gzip, coreutils, gawk or mawk)"
            )
        if kind == "open":
            report.open_files_check, unreadable = rest.split("\t")
            report.unreadable_processes = int(unreadable)
        elif kind == "dir":
            index, status = rest.split("\t")
            report.directories[int(index)].status = status
        elif kind == "total":
            index, action, files, size = rest.split("\t")
            setattr(report.directories[int(index)], action, Tally(int(files), int(size)))
        elif kind == "file":
            index, action, size, path = rest.split("\t", 3)
            report.directories[int(index)].samples[action].append((int(size), path.replace("\x01", "\n")))
    return report


def clean_host_logs(environment: Environment, host_name: str, *, dry_run: bool) -> dict[str, Any]:
    """Clean (or, for a dry run, list) the logs of one host; returns its report as plain JSON.

    Raises :class:`LogCleanupError` (no retry) after cleaning the other directories when a
    configured directory is refused, or when the host lacks the tools.
    """
    host = environment.host(host_name)
    directories = host_directories(environment, host)
    if not directories:
        log.info("logs.directories is empty for %s: nothing to clean on %s", environment.name, host.name)
        return HostCleanupReport(host=host.name, dry_run=dry_run).to_dict()
    hook = host_hook(environment, host)
    try:
        result = hook.run_script(
            cleanup_command(environment.logs, directories, dry_run=dry_run),
            check=False,
            timeout=HOST_TIMEOUT.total_seconds(),
        )
    finally:
        hook.close()
    if result.stderr.strip():
        log.warning("Host %s said while cleaning logs:\n%s", host.name, result.stderr.strip()[-5000:])
    report = parse_report(host.name, directories, result.stdout, dry_run=dry_run)
    for line in report.lines():
        log.info("%s", line)
    if result.exit_status != 0:
        raise RuntimeError(
            f"Host {host.name} ({host.ssh_target}): the log cleanup script exited {result.exit_status}: "
            f"{result.stderr.strip()[-500:]}"
        )
    if refused := report.refused():
        raise LogCleanupError(
            f"Host {host.name}: refused "
            + "; ".join(f"{d.path} ({REFUSED[d.status]})" for d in refused)
            + f". Fix logs.directories in include/environments/{environment.name}.yaml; the other "
            "directories were cleaned"
        )
    return report.to_dict()


def summarize_cleanup(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over hosts, and the lines for the task log of the summary task."""
    lines = []
    totals = {"deleted": Tally(), "compressed": Tally(), "skipped_open": Tally()}
    attention = []
    for report in reports:
        for key, tally in totals.items():
            tally.add(Tally(**report[key]))
        lines.append(
            f"{report['host']}: deleted {report['deleted']['files']} files "
            f"({report['deleted']['bytes']} bytes), compressed {report['compressed']['files']} files "
            f"({report['compressed']['bytes']} bytes), {report['skipped_open']['files']} open files skipped"
        )
        if report["directories"] and report["open_files_check"] != "proc":
            attention.append(f"{report['host']}: open files {report['open_files_check']}")
        attention += [
            f"{report['host']}: {directory['path']} is missing"
            for directory in report["directories"]
            if directory["status"] == "missing"
        ]
    for line in lines:
        log.info("%s", line)
    for item in attention:
        log.warning("Needs attention: %s", item)
    return {
        "lines": lines,
        "attention": attention,
        **{key: asdict(tally) for key, tally in totals.items()},
    }
