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
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment
from airlock.core.log_cleanup import (
    REFUSED,
    HostCleanupReport,
    MissingToolsError,
    PartialProcError,
    cleanup_command,
    host_directories,
    parse_report,
    summarize_cleanup,
)
from airlock.hooks.hosts import host_hook
from airlock.notifications.slack import post, render

log = logging.getLogger(__name__)

#: The whole cleanup of one host (all its directories) must finish within this.
HOST_TIMEOUT = timedelta(minutes=25)


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
    try:
        report = parse_report(host.name, directories, result.stdout, dry_run=dry_run)
    except (MissingToolsError, PartialProcError) as error:
        raise LogCleanupError(str(error)) from None
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
