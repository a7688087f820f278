"""The steps of ``config_update_<env>``: a configuration set shipped the way a release is.

Lock, read the set from ``config.source`` (checksummed: its id is its manifest's digest), read
each host's active set, plan (the change file by file, secrets masked), approval, then wave by wave:
install the set beside the others, switch ``shared/config`` to it, activate, wait until the host
is healthy (and reports the set, with ``config.report_field``), smoke tests. Once a host fails no
further host is switched, and every host this run switched goes back to the set it had. Each
wave's task re-reads the source and refuses a set other than the approved one: the set that goes
out is the set the approver saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment, Host
from airlock.core.config_sets import ConfigSet, changes_markdown, diff_sets
from airlock.core.markdown import inline
from airlock.core.outcome import ROLLBACK_INCOMPLETE, approver, approver_name
from airlock.hooks.config_sets import (
    PRE_AIRLOCK,
    UNMANAGED,
    HostConfig,
    host_config,
    read_source,
    reported_config,
)
from airlock.hooks.hosts import HostLayout, HostNotServingError
from airlock.hooks.lock import LockLostError
from airlock.hooks.ops_store import AuditRecord, write_audit_record
from airlock.notifications.slack import post, render
from airlock.tasks import environment as shared
from airlock.tasks.environment import (
    approval_timeout,
    environment_lock,
    require_run_approval,
    run_task_states,
    triggering_user,
)
from airlock.tasks.release import attention_mark

log = logging.getLogger(__name__)

#: XCom key of a wave's per-host report, pushed before the task fails so rollback finds it.
REPORT = "hosts"


class TaskIds(shared.TaskIds):
    """The task ids of ``config_update_<env>``; a wave's are its TaskGroup's (``wave_<n>.update``)."""

    VALIDATE_REQUEST = "validate_request"
    READ_SOURCE = "read_config"
    CHECK_HOSTS = "check_config_hosts"
    PLAN = "plan"
    PROCEED = "proceed"
    UPDATE = "update"
    VERIFY = "verify"
    ROLLBACK = "rollback"
    CONCLUDE = "conclude"


shared.register_change_steps("config_update", ())


#: The keys a run's conf may hold.
PARAMS = ("dry_run", "reason")


def validate_request() -> dict[str, Any]:
    """The ``validate_request`` task: unknown conf keys are refused before anything is touched."""
    context = get_current_context()
    unknown = sorted(set(context["dag_run"].conf or {}) - set(PARAMS))
    if unknown:
        raise AirflowFailException(
            f"Invalid config update request: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(PARAMS)}"
        )
    params = context["params"]
    return {"dry_run": bool(params.get("dry_run")), "reason": params.get("reason")}


def read_config(environment: Environment) -> dict[str, Any]:
    """The set ``config.source`` holds now: its id and files (their content stays at the source)."""
    config_set = ConfigSet.of(read_source(_settings(environment)))
    log.info(
        "Config set %s from %s: %s", config_set.id, _settings(environment).source, ", ".join(config_set.paths)
    )
    return config_set.to_dict()


def _settings(environment: Environment):
    if environment.config is None:
        raise AirflowFailException(f"{environment.name} has no config section: there is no set to update to")
    return environment.config


def active_sets(environment: Environment) -> dict[str, str | None]:
    """Each host's active set (``unmanaged`` for a plain directory, None for none), read at once."""

    def active(host: Host) -> str | None:
        with host_config(environment, host) as config:
            return config.active()

    with ThreadPoolExecutor(max_workers=min(16, len(environment.hosts))) as pool:
        return dict(
            zip([h.name for h in environment.hosts], pool.map(active, environment.hosts), strict=True)
        )


def plan(
    environment: Environment, *, config: Mapping[str, Any], hosts: Mapping[str, str | None]
) -> dict[str, Any]:
    """The plan the approver reads: per group of hosts on one set, what changes, file by file."""
    context = get_current_context()
    params = context["params"]
    new_set = ConfigSet.from_dict(config)
    new_files = read_source(_settings(environment))
    if ConfigSet.of(new_files) != new_set:
        raise AirflowFailException("the config source changed while the run planned: trigger it again")
    mask = _settings(environment).mask
    groups: dict[str | None, list[str]] = {}
    for host, active in hosts.items():
        groups.setdefault(active, []).append(host)
    sections = []
    for active, names in groups.items():
        if active == new_set.id:
            sections.append(f"**{', '.join(names)}**: already on set `{new_set.id}`, left alone.")
            continue
        host = environment.host(names[0])
        with host_config(environment, host) as remote:
            old_files = remote.files(active)
        changes = diff_sets(old_files, new_files, mask=mask)
        current = f"set `{active}`" if active and active != UNMANAGED else (active or "no configuration")
        sections.append(
            f"**{', '.join(names)}** ({current} -> `{new_set.id}`):\n\n{changes_markdown(changes)}"
        )
    waves = "\n".join(f"- wave {wave.number}: {', '.join(wave.host_names)}" for wave in environment.waves)
    to_change = sorted(host for host, active in hosts.items() if active != new_set.id)
    digest = hashlib.sha256(
        json.dumps({"set": new_set.id, "hosts": dict(sorted(hosts.items()))}, sort_keys=True).encode()
    ).hexdigest()
    reason = params.get("reason")
    markdown = "\n\n".join(
        [
            f"## New configuration set `{new_set.id}` for {environment.name}",
            f"Source: `{_settings(environment).source}`; files: "
            + ", ".join(f"`{path}`" for path in new_set.paths),
            f"Reason: {inline(reason)}" if reason else "Reason: none given",
            "### Waves\n\n" + waves,
            "### Changes (secrets masked)\n\n" + "\n\n".join(sections),
            f"### Approval evidence\n\nPlan digest `{digest}` (the set, every host and its active set). "
            "Each step checks, before changing anything, that an assigned approver approved this "
            "digest in this run.",
        ]
    )
    return {
        "markdown": markdown,
        "digest": digest,
        "set": new_set.to_dict(),
        "hosts": dict(hosts),
        "to_change": to_change,
        "dry_run": bool(params.get("dry_run")),
        "reason": reason,
        "triggered_by": triggering_user(context),
    }


def announce(environment: Environment, planned: Mapping[str, Any]) -> bool:
    """Post the start, or the dry run's plan; a dry run or a set every host has already stops here."""
    set_id = planned["set"]["id"]
    if planned["dry_run"] or not planned["to_change"]:
        detail = "a dry run" if planned["dry_run"] else "every host is on it already"
        post(
            environment.slack_conn_id,
            render("config_update_planned", environment=environment.name, config=set_id, detail=detail),
        )
        return False
    reason = f": {planned['reason']}" if planned["reason"] else ""
    post(
        environment.slack_conn_id,
        render(
            "config_update_started",
            environment=environment.name,
            config=set_id,
            triggered_by=planned["triggered_by"],
            reason=reason,
        ),
    )
    return True


def _approved(environment: Environment, context: Any, step: str) -> dict[str, Any]:
    planned = context["ti"].xcom_pull(task_ids=TaskIds.PLAN)
    require_run_approval(
        environment,
        context,
        step=step,
        plan_digest=planned["digest"],
        instead="trigger the update again and approve its plan",
    )
    return planned


def wait_until_on_set(environment: Environment, host: Host, set_id: str | None) -> None:
    """Until the host is healthy (and reports ``set_id``, with ``config.report_field``)."""
    field = environment.config.report_field if environment.config else None
    deadline = time.monotonic() + environment.deploy.health_timeout.total_seconds()
    seen = "no answer yet"
    while time.monotonic() < deadline:
        healthy, reported, seen = reported_config(environment, host)
        if healthy and (field is None or reported == set_id):
            return
        time.sleep(0.2)
    raise HostNotServingError(
        f"Host {host.name} is not healthy on config set {set_id} after "
        f"{int(environment.deploy.health_timeout.total_seconds())}s: last seen {seen}"
    )


def _activate(environment: Environment, remote: HostConfig) -> None:
    layout = HostLayout(remote.hook, environment.root_of(remote.hook.host))
    version = layout.current_version() or ""
    layout.activate(environment.deploy.activate_command, version)


def update(environment: Environment, *, wave_hosts: list[str]) -> list[dict[str, Any]]:
    """One wave: each host gets the approved set, switched, activated and checked; a per-host
    report in the XCom ``hosts`` (pushed before a failure is raised)."""
    context = get_current_context()
    ti, run_id = context["ti"], context["run_id"]
    planned = _approved(environment, context, step="update hosts")
    approved = ConfigSet.from_dict(planned["set"])
    contents = read_source(_settings(environment))
    if ConfigSet.of(contents) != approved:  # every file's SHA-256, not only the short id
        raise AirflowFailException(
            f"the config source no longer holds the approved set {approved.id} (it holds "
            f"{ConfigSet.of(contents).id}): nothing was changed; trigger the update again"
        )
    lock = environment_lock(environment)
    failed = threading.Event()
    reports: dict[str, dict[str, Any]] = {}

    def one(name: str) -> None:
        host = environment.host(name)
        # The set the host had when the run planned: what a rollback puts back, also for a host
        # that an earlier try of this task switched already.
        previous = planned["hosts"].get(name)
        report = {"host": name, "previous": previous, "config": approved.id, "result": "pending"}
        reports[name] = report
        started = time.monotonic()
        try:
            with host_config(environment, host) as remote:
                active = remote.active()
                if active == approved.id and previous == approved.id:
                    wait_until_on_set(environment, host, approved.id)
                    report["result"] = "unchanged"
                    return
                if active == approved.id:  # an earlier try switched it, and may not have activated
                    report["result"] = "switched"
                    _activate(environment, remote)
                    wait_until_on_set(environment, host, approved.id)
                    report["result"] = "updated"
                    return
                if active != previous:
                    raise AirflowFailException(
                        f"{name} is on config set {active}, not {previous} as planned: "
                        "someone changed it since; trigger the update again"
                    )
                remote.install(approved, contents)
                if failed.is_set():
                    report["result"] = "not switched"
                    report["why"] = "another host of this run failed"
                    return
                lock.extend_for_run(run_id)
                remote.switch(approved.id)
                report["result"] = "switched"
                _activate(environment, remote)
            wait_until_on_set(environment, host, approved.id)
            report["result"] = "updated"
        except Exception as error:
            failed.set()
            report["why"] = str(error)
            report["failed"] = True
            raise
        finally:
            report["seconds"] = round(time.monotonic() - started, 1)

    workers = max(1, min(environment.rollout.max_parallel_per_wave, len(wave_hosts)))
    errors, final = [], False
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="config") as pool:
        for name, future in [(name, pool.submit(one, name)) for name in wave_hosts]:
            try:
                future.result()
            except Exception as error:
                errors.append(f"{name}: {error}")
                # A set the app does not come up on, or a refusal, does not get better by retrying
                # (the rollback comes sooner); a dropped SSH connection may.
                final = final or isinstance(error, HostNotServingError | AirflowFailException | LockLostError)
    lines = [reports[name] for name in wave_hosts]
    ti.xcom_push(key=REPORT, value=lines)
    for line in lines:
        log.info(
            "%-12s %-18s -> %-18s %-12s %5.1fs %s",
            line["host"],
            line["previous"],
            line["config"],
            line["result"],
            line.get("seconds", 0.0),
            line.get("why", ""),
        )
    if errors:
        failure = AirflowFailException if final else RuntimeError
        raise failure("config update failed on " + "; ".join(errors))
    return lines


def _wave_reports(environment: Environment, context: Any) -> list[dict[str, Any]]:
    ti = context["ti"]
    found = []
    for wave in environment.waves:
        pulled = ti.xcom_pull(task_ids=f"{wave.group_id}.{TaskIds.UPDATE}", key=REPORT)
        found += pulled or []
    return found


def rollback(environment: Environment) -> dict[str, Any] | None:
    """If a wave failed: every host the plan meant to change that is on the new set now goes back
    to the set it had, and is activated and checked again; None when nothing failed.

    Which hosts were switched is read from the hosts themselves, not from the waves' reports: a
    wave task killed, timed out or retried (a new try starts without the last one's XCom) may
    have switched hosts it never reported.
    """
    context = get_current_context()
    states = run_task_states(context)
    waves_failed = any(
        state in ("failed", "upstream_failed") for task, state in states.items() if task.startswith("wave_")
    )
    planned = context["ti"].xcom_pull(task_ids=TaskIds.PLAN)
    if not waves_failed or planned is None:
        return None
    new_id = planned["set"]["id"]
    candidates = [environment.host(name) for name in planned["to_change"]]
    results: dict[str, str] = {}

    def back(host: Host) -> None:
        previous = planned["hosts"].get(host.name)
        target = PRE_AIRLOCK if previous == UNMANAGED else previous
        try:
            with host_config(environment, host) as remote:
                if remote.active() != new_id:
                    return  # never switched by this run (or changed by hand since): left alone
                if target is None:
                    remote.hook.run(["rm", "-f", remote.link])
                else:
                    remote.switch(target)
                _activate(environment, remote)
            wait_until_on_set(environment, host, None if target in (None, PRE_AIRLOCK) else target)
            results[host.name] = "rolled back"
        except Exception as error:
            log.error("Could not put %s back on config set %s: %s", host.name, target, error)
            results[host.name] = f"NOT rolled back ({error})"

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(candidates) or 1))) as pool:
        list(pool.map(back, candidates))
    incomplete = sorted(host for host, result in results.items() if result != "rolled back")
    report = {"hosts": results, "incomplete": incomplete}
    context["ti"].xcom_push(key="rollback", value=report)
    if incomplete:
        raise AirflowFailException(f"rollback of the config update incomplete: {', '.join(incomplete)}")
    return report


def conclude(environment: Environment) -> dict[str, Any]:
    """Audit row, Slack; the run fails unless the set went out (or there was nothing to do)."""
    context = get_current_context()
    ti, dag_run = context["ti"], context["dag_run"]
    planned = ti.xcom_pull(task_ids=TaskIds.PLAN)
    if planned is None:  # stopped before a plan: the lock task or the unlock teardown audits it
        raise AirflowFailException("the configuration update stopped before it planned; see the failed task")
    states = run_task_states(context)
    set_id = planned["set"]["id"]
    reports = _wave_reports(environment, context)
    rolled = ti.xcom_pull(task_ids=TaskIds.ROLLBACK) or ti.xcom_pull(
        task_ids=TaskIds.ROLLBACK, key="rollback"
    )
    waves = {task: state for task, state in states.items() if task.startswith("wave_")}
    approval = ti.xcom_pull(task_ids=TaskIds.APPROVE)
    per_host = "; ".join(
        f"{line['host']}: {line['previous']} -> {line['config']} {line['result']}"
        + (f" ({line['why']})" if line.get("why") else "")
        for line in reports
    )
    if planned["dry_run"] or not planned["to_change"]:
        result, detail = (
            "planned",
            "dry run: nothing changed" if planned["dry_run"] else "every host was on the set already",
        )
    elif states.get(TaskIds.APPROVE) == "failed":
        timeout = approval_timeout(context)
        result = "timed_out" if timeout else "rejected"
        detail = (
            f"approval timed out after {timeout}; nothing changed"
            if timeout
            else "not approved; nothing changed"
        )
    elif waves and all(state == "success" for state in waves.values()):
        result, detail = "succeeded", per_host
    elif (rolled and rolled.get("incomplete")) or states.get(TaskIds.ROLLBACK) != "success":
        # A rollback that failed before it reported: which hosts stayed on the new set is unknown.
        not_back = ", ".join(rolled["incomplete"]) if rolled else "unknown (the rollback step failed)"
        result = ROLLBACK_INCOMPLETE
        detail = f"{per_host or 'failed'}. Rollback INCOMPLETE: {not_back}"
        attention_mark(environment).set(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            what=f"config update to {set_id}: {detail}",
            resolve=(
                "put each host named back on its previous set by hand (shared/config -> "
                "config-sets/<id>, previous sets in the audit row), activate it, then delete "
                f"airlock:attention:{environment.name} in Redis"
            ),
        )
    elif rolled and rolled["hosts"]:
        result = "rolled_back"
        detail = f"{per_host or 'failed'}. Rolled back: {', '.join(sorted(rolled['hosts']))}"
    else:
        result, detail = "failed", f"{per_host or 'failed'}. No host was switched."
    write_audit_record(
        environment,
        AuditRecord(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            action="config_update",
            version=set_id,
            previous=planned["hosts"],
            triggered_by=planned["triggered_by"],
            approved_by=approver(approval),
            approved_by_name=approver_name(approval),
            reason=planned["reason"],
            started_at=dag_run.start_date,
            result=result,
            detail=detail,
        ),
    )
    if result == "succeeded":
        post(
            environment.slack_conn_id,
            render(
                "config_update_succeeded",
                environment=environment.name,
                config=set_id,
                hosts=", ".join(h.name for h in environment.hosts),
            ),
        )
    elif result != "planned":
        post(
            environment.slack_conn_id,
            render(
                "config_update_failed",
                environment=environment.name,
                config=set_id,
                result=result,
                detail=detail,
            ),
        )
    if result not in ("succeeded", "planned"):
        raise AirflowFailException(f"Config update to {set_id} on {environment.name}: {result} ({detail})")
    return {"result": result, "config": set_id, "finished_at": datetime.now(UTC).isoformat()}
