"""Log cleanup reports: the command sent to a host and what its script answers, read without Airflow.

``include/host/log_cleanup.sh`` does the work on the host (see :mod:`airlock.tasks.log_cleanup`
for how it is sent and its safety rules). This module builds the one command line that carries
it, every setting as its own quoted argument, and reads the script's tab-separated records back
into a :class:`HostCleanupReport`; :func:`summarize_cleanup` adds the hosts up.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from airlock.config import PROJECT_ROOT, Environment, Host, LogSettings

log = logging.getLogger(__name__)

SCRIPT = PROJECT_ROOT / "include" / "host" / "log_cleanup.sh"
#: Paths listed per directory and action in a report; the totals always count every file.
SAMPLE_LIMIT = 50
#: Directory states that mean the settings are wrong for this host: the task fails (no retry).
REFUSED = {
    "symlink": "is a symbolic link or lies behind one: configure its real path",
    "not-directory": "is not a directory",
    "unreadable": "cannot be entered by the SSH user: check its permissions",
    "too-broad": "is the root directory: configure the log directory itself",
}
ACTIONS = ("delete", "compress", "open")


class MissingToolsError(RuntimeError):
    """The host lacks a program the cleanup script needs; the message names them and what to install."""


class PartialProcError(RuntimeError):
    """The host's ``/proc`` hides processes, so open files cannot be told apart; nothing was touched."""


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
    #: With ``logs.archive_to``: every compressed file old enough to delete, (bytes, mtime, path).
    to_archive: list[tuple[int, float, str]] = field(default_factory=list)


@dataclass
class ArchivedLog:
    """One compressed log uploaded to the archive (or that failed to be), and what became of it."""

    path: str  # on the host
    bytes: int
    url: str = ""
    sha256: str = ""
    #: deleted (its SHA-256 on the host matched the archived copy), kept (changed or moved since
    #: it was listed: archived, not deleted), failed (not archived, so not deleted)
    outcome: str = "failed"
    why: str = ""


@dataclass
class HostCleanupReport:
    """One host's cleanup: per directory the files and bytes deleted, compressed and left open."""

    host: str
    dry_run: bool
    open_files_check: str = "unchecked"
    unreadable_processes: int = 0
    directories: list[DirectoryReport] = field(default_factory=list)
    #: ``logs.archive_to`` of this host (its environment/host prefix), or "" without archival.
    archive: str = ""
    archived: list[ArchivedLog] = field(default_factory=list)
    #: Days of the archive removed by ``logs.archive_retention_days`` (or, in a dry run, that would be).
    archive_pruned: list[str] = field(default_factory=list)

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
        if self.archive:
            lines += self.archive_lines()
        return lines

    def archive_lines(self) -> list[str]:
        if self.dry_run:
            listed = [(size, f"{d.path}/{path}") for d in self.directories for size, _, path in d.to_archive]
            lines = [
                f"  archive {self.archive}: {len(listed)} files ({sum(size for size, _ in listed)} bytes) "
                "would be uploaded, checked and then deleted"
            ]
            lines += [f"    archive  {size:>12} {path}" for size, path in listed[:SAMPLE_LIMIT]]
        else:
            done = [a for a in self.archived if a.outcome != "failed"]
            lines = [
                f"  archive {self.archive}: {len(done)} files ({sum(a.bytes for a in done)} bytes) "
                f"uploaded and checked, {sum(a.outcome == 'deleted' for a in done)} then deleted, "
                f"{len(self.archived) - len(done)} failed (kept on the host)"
            ]
            lines += [
                f"    {a.outcome:8} {a.bytes:>12} {a.path}"
                + (f" -> {a.url}" if a.url else "")
                + (f" ({a.why})" if a.why else "")
                for a in self.archived[:SAMPLE_LIMIT]
            ]
            shown = len(self.archived[:SAMPLE_LIMIT])
            if len(self.archived) > shown:
                lines.append(f"    ... and {len(self.archived) - shown} more (all in the task's XCom)")
        if self.archive_pruned:
            verb = "would be" if self.dry_run else "were"
            lines.append(f"  archive retention: logs of {', '.join(self.archive_pruned)} {verb} removed")
        return lines

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document.update(
            deleted=asdict(self.total("delete")),
            compressed=asdict(self.total("compress")),
            skipped_open=asdict(self.total("open")),
            archived_files=asdict(
                Tally(
                    sum(a.outcome != "failed" for a in self.archived),
                    sum(a.bytes for a in self.archived if a.outcome != "failed"),
                )
            ),
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


def unseen_processes(report: HostCleanupReport) -> str:
    """Why the open-files check saw only part of the processes, for a refusal."""
    if report.open_files_check == "unchecked":
        return "does not exist on the host"
    if report.unreadable_processes:
        return f"does not show the open files of {report.unreadable_processes} processes of other users"
    return "hides other users' processes (mounted with hidepid)"


def host_directories(environment: Environment, host: Host) -> list[str]:
    """``logs.directories`` for ``host``, ``{root}`` filled in with its deploy root."""
    root = environment.root_of(host)
    return [str(PurePosixPath(directory.format(root=root))) for directory in environment.logs.directories]


def cleanup_command(settings: LogSettings, directories: list[str], *, dry_run: bool) -> str:
    """The one command sent to a host: the script, then every value as its own quoted argument.

    With ``logs.archive_to`` it deletes nothing: it lists what is old enough to delete, for
    :func:`delete_archived_command` once the uploads are checked.
    """
    return _script_command(settings, "dry-run" if dry_run else "apply", directories)


def delete_archived_command(settings: LogSettings, directory: str, verified: dict[str, str]) -> str:
    """Delete, in ``directory``, the files named (path relative to it) whose SHA-256 still is the
    one given: the archived copy's. Each must still pass the deletion test."""
    pairs = [part for relative, digest in verified.items() for part in (relative, digest)]
    return _script_command(settings, "delete-archived", [directory, *pairs])


def _script_command(settings: LogSettings, mode: str, arguments: list[str]) -> str:
    minutes = [str(days * 24 * 60) for days in (settings.compress_after_days, settings.delete_after_days)]
    return shlex.join(
        [
            "bash",
            "-c",
            SCRIPT.read_text(),
            "airlock-log-cleanup",
            mode,
            "allow" if settings.allow_partial_proc else "refuse",
            "archive" if settings.archive_to else "delete",
            *minutes,
            str(SAMPLE_LIMIT),
            str(len(settings.patterns)),
            *settings.patterns,
            *arguments,
        ]
    )


def parse_deletions(output: str) -> dict[str, tuple[str, int]]:
    """What a ``delete-archived`` run did: relative path -> (deleted | changed | moved, bytes)."""
    outcomes = {}
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "deleted":
            _, size, path = rest.split("\t", 2)
            outcomes[path.replace("\x01", "\n")] = ("deleted", int(size))
        elif kind == "kept":
            _, why, path = rest.split("\t", 2)
            outcomes[path.replace("\x01", "\n")] = (why, 0)
    return outcomes


def parse_report(host: str, directories: list[str], output: str, *, dry_run: bool) -> HostCleanupReport:
    """Read the script's tab-separated records (see the script's header) into a report."""
    report = HostCleanupReport(host=host, dry_run=dry_run)
    report.directories = [DirectoryReport(path=path) for path in directories]
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "tools":
            raise MissingToolsError(
                f"Host {host} lacks {rest} needed by the log cleanup: install them (GNU findutils, "
                "gzip, coreutils, gawk or mawk)"
            )
        if kind == "refused" and rest == "open-files":
            raise PartialProcError(
                f"Host {host}: /proc {unseen_processes(report)}, so files they hold open cannot be "
                "told apart; nothing was touched. Connect as root or as the logs' owner, or set "
                "logs.allow_partial_proc: true in the environment file to clean anyway (a log a "
                "hidden process still writes may then be compressed or deleted)"
            )
        if kind == "open":
            report.open_files_check, unreadable = rest.split("\t")
            report.unreadable_processes = int(unreadable)
        elif kind == "dir":
            index, status = rest.split("\t")
            report.directories[int(index)].status = status
        elif kind == "total":
            index, action, files, size = rest.split("\t")
            if action in ACTIONS:  # "archive": the files are listed one by one
                setattr(report.directories[int(index)], action, Tally(int(files), int(size)))
        elif kind == "archive":
            index, size, mtime, path = rest.split("\t", 3)
            report.directories[int(index)].to_archive.append(
                (int(size), float(mtime), path.replace("\x01", "\n"))
            )
        elif kind == "file":
            index, action, size, path = rest.split("\t", 3)
            report.directories[int(index)].samples[action].append((int(size), path.replace("\x01", "\n")))
    return report


def summarize_cleanup(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over hosts, and the lines for the task log of the summary task."""
    lines = []
    totals = {"deleted": Tally(), "compressed": Tally(), "skipped_open": Tally(), "archived_files": Tally()}
    attention = []
    archived = []
    for report in reports:
        for key, tally in totals.items():
            tally.add(Tally(**report[key]))
        lines.append(
            f"{report['host']}: deleted {report['deleted']['files']} files "
            f"({report['deleted']['bytes']} bytes), compressed {report['compressed']['files']} files "
            f"({report['compressed']['bytes']} bytes), {report['skipped_open']['files']} open files skipped"
            + (
                f", archived {report['archived_files']['files']} files "
                f"({report['archived_files']['bytes']} bytes) to {report['archive']}"
                if report["archive"]
                else ""
            )
        )
        archived += [{"host": report["host"], **entry} for entry in report["archived"]]
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
        "archived": archived,
        **{key: asdict(tally) for key, tally in totals.items()},
    }
