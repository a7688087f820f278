"""``log_cleanup_<env>``'s task bodies: delete old compressed logs, gzip old logs, one SSH session a host.

The work happens on the host with its own ``find`` and ``gzip``: ``include/host/log_cleanup.sh``
is sent as the text of ``bash -c`` and every value (ages, patterns, directories) follows it as
a separately quoted argument (:func:`airlock.core.log_cleanup.cleanup_command`), so no setting
ever becomes shell code. One session per host does every directory; a dry run sends the same
script in ``dry-run`` mode, which only lists. The report is read by :mod:`airlock.core.log_cleanup`.

Safety rules (enforced by the script, tested on real sshd hosts):

- only regular files (``find -P -type f``: symbolic links are never followed nor touched),
  only below a configured directory (``-xdev``: never another filesystem mounted inside it);
  the walk starts from the directory itself (``cd -P``, its path checked with ``pwd -P``, then
  ``find -P .``), so an ancestor swapped for a symbolic link after the check cannot redirect it;
  ``gzip`` runs through ``-execdir`` and deletion through ``-delete``, both on the name inside the
  directory find walked, so a parent swapped for a symbolic link mid-run is never followed;
- a configured directory that is a symbolic link, or lies behind one, is refused: configure the
  real path instead; ``/`` is refused as too broad;
- only names matching ``logs.patterns`` are compressed, only names matching a pattern + ``.gz``
  are deleted, and only when last written longer ago than the configured age;
- a file some process holds open (per ``/proc/<pid>/fd``) is left alone; when the host cannot
  tell (no ``/proc``) or hides other users' processes, nothing is touched and the task fails
  (no retry), unless the environment sets ``logs.allow_partial_proc: true``; a dry run still
  lists, and its report says what ``/proc`` showed.

With ``logs.archive_to`` (docs/runbooks/log-cleanup.md, "Archival"), the script deletes nothing
itself: it lists every compressed log old enough to delete; each is read over SFTP (a link is
refused), uploaded and read back (:class:`airlock.hooks.log_archive.LogArchive`), and only the
files whose copy verified are then deleted by the script's ``delete-archived`` mode, which hashes
each once more on the host and keeps any whose content no longer matches. A file whose upload
failed stays on the host, and the task fails (retried: the next try re-checks what is archived).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import paramiko
from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment
from airlock.core.log_cleanup import (
    REFUSED,
    ArchivedLog,
    HostCleanupReport,
    MissingToolsError,
    PartialProcError,
    cleanup_command,
    delete_archived_command,
    host_directories,
    parse_deletions,
    parse_report,
    summarize_cleanup,
)
from airlock.hooks.hosts import host_hook
from airlock.hooks.log_archive import ArchiveError, LogArchive
from airlock.hooks.ssh import HostSSHHook
from airlock.notifications.slack import post, render

log = logging.getLogger(__name__)

#: The whole cleanup of one host (all its directories) must finish within this.
HOST_TIMEOUT = timedelta(minutes=25)
#: Files named in one ``delete-archived`` command (keeps the command line well below sshd's limit).
DELETE_BATCH = 200


class TaskIds:
    """The task ids of ``log_cleanup_<env>``."""

    CLEAN_HOST = "clean_host"
    SUMMARIZE = "summarize"


class LogCleanupError(AirflowFailException):
    """The host cannot run the cleanup as configured (missing tools, refused directories)."""


def clean_host_logs(environment: Environment, host_name: str, *, dry_run: bool) -> dict[str, Any]:
    """Clean (or, for a dry run, list) the logs of one host; returns its report as plain JSON.

    Raises :class:`LogCleanupError` (no retry) after cleaning the other directories when a
    configured directory is refused, and before touching anything when the host lacks the tools
    or its ``/proc`` hides processes (unless ``logs.allow_partial_proc``).
    """
    host = environment.host(host_name)
    directories = host_directories(environment, host)
    if not directories:
        log.info("logs.directories is empty for %s: nothing to clean on %s", environment.name, host.name)
        return HostCleanupReport(host=host.name, dry_run=dry_run).to_dict()
    archive = LogArchive.of(environment, host)
    if archive is not None:
        try:
            archive.check(f"include/environments/{environment.name}.yaml")
        except ArchiveError as error:
            raise LogCleanupError(str(error)) from None
    hook = host_hook(environment, host)
    try:
        result = hook.run_script(
            cleanup_command(environment.logs, directories, dry_run=dry_run),
            check=False,
            timeout=HOST_TIMEOUT.total_seconds(),
        )
        if result.stderr.strip():
            log.warning("Host %s said while cleaning logs:\n%s", host.name, result.stderr.strip()[-5000:])
        try:
            report = parse_report(host.name, directories, result.stdout, dry_run=dry_run)
        except (MissingToolsError, PartialProcError) as error:
            raise LogCleanupError(str(error)) from None
        if result.exit_status == 0 and archive is not None:
            report.archive = str(archive)
            if not dry_run:
                archive_then_delete(environment, hook, archive, report)
            prune_archive(environment, archive, report)
    finally:
        hook.close()
    for line in report.lines():
        log.info("%s", line)
    if result.exit_status != 0:
        raise RuntimeError(
            f"Host {host.name} ({host.ssh_target}): the log cleanup script exited {result.exit_status}: "
            f"{result.stderr.strip()[-500:]}"
        )
    if failed := [entry for entry in report.archived if entry.outcome == "failed"]:
        raise RuntimeError(
            f"Host {host.name}: {len(failed)} logs could not be archived to {archive} and were not "
            "deleted: "
            + "; ".join(f"{entry.path} ({entry.why})" for entry in failed[:5])
            + ("; ..." if len(failed) > 5 else "")
            + ". The next try uploads them again"
        )
    if refused := report.refused():
        raise LogCleanupError(
            f"Host {host.name}: refused "
            + "; ".join(f"{d.path} ({REFUSED[d.status]})" for d in refused)
            + f". Fix logs.directories in include/environments/{environment.name}.yaml; the other "
            "directories were cleaned"
        )
    return report.to_dict()


def archive_then_delete(
    environment: Environment, hook: HostSSHHook, archive: LogArchive, report: HostCleanupReport
) -> None:
    """Upload every listed log, then delete on the host exactly those whose copy read back right."""
    for directory in report.directories:
        verified: dict[str, str] = {}
        entries: dict[str, ArchivedLog] = {}
        for size, mtime, relative in directory.to_archive:
            path = f"{directory.path.rstrip('/')}/{relative}"
            entry = entries[relative] = ArchivedLog(path=path, bytes=size)
            try:
                target = archive.target(directory.path, relative, mtime)
                with hook.read_file(path) as source:
                    stored, entry.sha256 = archive.store(source, target)
            except (OSError, ArchiveError, paramiko.SSHException) as error:
                entry.why = str(error) or type(error).__name__
                log.warning("Not archived, so kept: %s (%s)", path, entry.why)
                continue
            entry.url, entry.outcome = str(stored), "kept"
            verified[relative] = entry.sha256
        names = list(verified)
        for start in range(0, len(names), DELETE_BATCH):
            batch = {name: verified[name] for name in names[start : start + DELETE_BATCH]}
            result = hook.run_script(
                delete_archived_command(environment.logs, directory.path, batch),
                check=False,
                timeout=HOST_TIMEOUT.total_seconds(),
            )
            outcomes = parse_deletions(result.stdout)
            for relative in batch:
                outcome, size = outcomes.get(relative, ("no longer old enough or held open", 0))
                entry = entries[relative]
                if outcome == "deleted":
                    entry.outcome = "deleted"
                    directory.delete.files += 1
                    directory.delete.bytes += size
                else:
                    entry.why = f"archived, not deleted: {outcome}"
            if result.exit_status != 0:
                log.warning(
                    "Deleting archived logs on %s exited %s: %s",
                    report.host,
                    result.exit_status,
                    result.stderr.strip()[-500:],
                )
        report.archived += entries.values()


def prune_archive(environment: Environment, archive: LogArchive, report: HostCleanupReport) -> None:
    """``logs.archive_retention_days``: remove (or, in a dry run, list) the expired days."""
    for day in archive.expired_days(environment.logs.archive_retention_days, datetime.now(UTC).date()):
        if not report.dry_run:
            archive.remove(day)
        report.archive_pruned.append(day.name)


def clean_host(environment: Environment, host_name: str) -> dict[str, Any]:
    """Task body of ``clean_host`` (mapped per host): labels the map index, honours ``dry_run``."""
    context = get_current_context()
    context["host_name"] = host_name
    return clean_host_logs(environment, host_name, dry_run=context["params"]["dry_run"])


def summarize(environment: Environment, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Task body of ``summarize``: totals over the hosts; Slack only when something needs a person."""
    summary = summarize_cleanup(list(reports))
    if summary["attention"]:
        post(
            environment.slack_conn_id,
            render(
                "log_cleanup_attention",
                environment=environment.name,
                items="; ".join(summary["attention"]),
            ),
        )
    return summary
