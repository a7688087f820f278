"""How a run ended and what it must undo, decided from its steps' states: no Airflow here.

The task bodies (``airlock.tasks.release``, ``airlock.tasks.rollback``) read the run's task
states and XCom, translate task ids into what they mean (a wave's verification, a host's
deploy, the approval) and ask this module what happened: whether anything is to be rolled back,
which result goes into the audit trail, and who approved.

Users: a run's triggering user is ``triggering_user_name`` of the DAG run, or
:data:`UNKNOWN_USER` when Airflow recorded none (a run created without a user); Airflow 3.3
records no id for it. That one name is what the audit rows, the plans and the Slack texts show.
An approver has an id and a name (numeric ids under FAB): the audit keeps both
(:func:`approver`, :func:`approver_name`); who may approve is :mod:`airlock.core.evidence`'s.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Who triggered a run Airflow recorded no user for.
UNKNOWN_USER = "unknown"

#: Task states meaning a step never ran (so it changed nothing); any other state means it may have.
NOT_ATTEMPTED = frozenset({"skipped", "upstream_failed", "removed"})

#: Task states meaning a step failed (``up_for_retry``: failed, and the run gave up before retrying).
FAILED = frozenset({"failed", "up_for_retry"})


def triggering_user(dag_run: Any) -> str:
    """Who triggered the run: its ``triggering_user_name``, else :data:`UNKNOWN_USER`."""
    return getattr(dag_run, "triggering_user_name", None) or UNKNOWN_USER


def user_id(user: Any) -> str | None:
    """The id of a human-in-the-loop responder, given as a mapping (XCom, events) or an object."""
    if isinstance(user, Mapping):
        return user.get("id")
    return getattr(user, "id", None)


def user_name(user: Any) -> str | None:
    """The name of a human-in-the-loop responder (a mapping or an object), as :func:`user_id`."""
    if isinstance(user, Mapping):
        return user.get("name")
    return getattr(user, "name", None)


def approver(approval: Mapping[str, Any] | None) -> str | None:
    """The id of who answered the approval gate, from the ``approve`` task's XCom; None if nobody did."""
    return user_id((approval or {}).get("responded_by_user"))


def approver_name(approval: Mapping[str, Any] | None) -> str | None:
    """The name of who answered the approval gate (differs from the id under FAB); None if nobody did."""
    return user_name((approval or {}).get("responded_by_user"))


def failed_steps(task_states: Mapping[str, str | None]) -> list[str]:
    """The failed steps of a run, by task (instance) id, sorted."""
    return sorted(task for task, state in task_states.items() if state in FAILED)


def describe_failed(task_states: Mapping[str, str | None], names: Mapping[str, str] | None = None) -> str:
    """The failed steps as a reader should see them: each renamed by ``names`` where it has an
    entry (e.g. ``wave_1.deploy_2`` -> ``wave_1.deploy (web-3)``); "an earlier step" if none."""
    names = names or {}
    return ", ".join(names.get(task, task) for task in failed_steps(task_states)) or "an earlier step"


#: How one host's deploy ended, as a wave's deploy report says it.
SWITCHED, ALREADY_THERE, NOT_SWITCHED, HOST_FAILED = "switched", "already there", "not switched", "failed"

#: The task state each line of a deploy report stands for (what :class:`ReleaseRun` reads).
HOST_STATES = {SWITCHED: "success", ALREADY_THERE: "success", NOT_SWITCHED: "skipped", HOST_FAILED: "failed"}


@dataclass(frozen=True)
class HostDeploy:
    """One host's line of a wave's deploy report (the deploy task's log table and XCom).

    :param result: :data:`SWITCHED`, :data:`ALREADY_THERE`, :data:`NOT_SWITCHED` (fail-fast: another
        host had failed; its current release is unchanged) or :data:`HOST_FAILED`.
    :param before: the release it served before (None: none, or not read).
    :param after: the release it serves now, as far as the deploy knows.
    :param why: why it failed or was not switched.
    :param retry: a failure a retry may cure (a connection, an upload); False for one that needs
        a person or would only delay the rollback (not healthy in time, a changed artifact).
    """

    host: str
    result: str
    before: str | None = None
    after: str | None = None
    seconds: float = 0.0
    why: str | None = None
    retry: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostDeploy:
        return cls(**data)


def deploy_table(lines: list[HostDeploy]) -> str:
    """A deploy report as a plain-text table: host, before, after, result, seconds, why."""
    rows = [("host", "before", "after", "result", "seconds", "why")]
    rows += [
        (line.host, line.before or "-", line.after or "-", line.result, f"{line.seconds:.1f}", line.why or "")
        for line in lines
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)), row[5]]
        ).rstrip()
        for row in rows
    )


@dataclass(frozen=True)
class ReleaseRun:
    """What a ``release_<env>`` run's steps did, said in the domain's words rather than task ids.

    :param verifications: each wave's verification state, wave 1 first (None: not run).
    :param deploys: each host's deploy state (None: not run).
    :param approval: the approval gate's state (None when the environment has no gate).
    :param failed: the failed steps, described for a reader (see :func:`describe_failed`).
    :param rollback: the rollback step's state (None: not run yet).
    :param approval_timeout: the approval's timeout, when nobody answered within it (the gate
        records it; None: answered, or not asked).
    :param why: why each host that failed did, from the deploy reports (host -> reason).
    """

    verifications: list[str | None]
    deploys: dict[str, str | None] = field(default_factory=dict)
    approval: str | None = None
    failed: str = "an earlier step"
    rollback: str | None = None
    approval_timeout: str | None = None
    why: dict[str, str] = field(default_factory=dict)

    def reasons(self) -> str:
        """Why the failed hosts failed, one sentence (empty when no deploy report said)."""
        return " ".join(f"{host}: {reason.rstrip('.')}." for host, reason in sorted(self.why.items()))

    @property
    def every_wave_verified(self) -> bool:
        return all(state == "success" for state in self.verifications)

    @property
    def rejected(self) -> bool:
        """The approval gate failed: rejected, timed out, or answered by someone not allowed."""
        return self.approval == "failed"

    def attempted_hosts(self) -> list[str]:
        """The hosts whose deploy ran, however it ended: the ones this run may have switched."""
        return sorted(host for host, state in self.deploys.items() if state not in (None, *NOT_ATTEMPTED))

    def failed_hosts(self) -> list[str]:
        """The hosts whose deploy failed for good (retries exhausted, or not worth retrying)."""
        return sorted(host for host, state in self.deploys.items() if state == "failed")


def nothing_to_roll_back(run: ReleaseRun, *, planned: bool) -> str | None:
    """Why a release run has nothing to roll back, or None when it has (see ``attempted_hosts``)."""
    if not planned:
        return "no plan: the run stopped before any host could change"
    if run.every_wave_verified:
        return "every wave succeeded: nothing to roll back"
    if not run.attempted_hosts():
        return "no host was touched by this run: nothing to roll back"
    return None


def rollback_waves(waves: list[list[str]], hosts: Collection[str]) -> list[list[str]]:
    """The order a rollback puts ``hosts`` back in: the rollout's waves, last wave first, each
    wave's hosts together (so a rollback changes at most a wave's worth of hosts at once);
    hosts outside ``hosts`` (never switched by the run) are left out, and so are empty waves."""
    ordered = [[host for host in wave if host in hosts] for wave in reversed(waves)]
    return [wave for wave in ordered if wave]


@dataclass(frozen=True)
class HostRollback:
    """What a rollback did to one host.

    :param host: the host's name.
    :param target: the release it was to go back to (None: it had none).
    :param back: it is confirmed on ``target`` (or was left alone, having never been switched).
    :param note: what happened, for a reader: ``back on 1.0.0``, ``never switched by this run;
        left alone``, or why it could not be put back.
    """

    host: str
    target: str | None
    back: bool
    note: str

    def describe(self) -> str:
        return f"{self.host} ({self.note})"


@dataclass(frozen=True)
class RollbackReport:
    """Every host's rollback result, as the ``rollback`` step returns it (plain JSON)."""

    failed: str
    version: str
    hosts: list[HostRollback]

    @property
    def incomplete(self) -> list[HostRollback]:
        """The hosts not confirmed back: they may still serve the new build."""
        return [host for host in self.hosts if not host.back]

    def rolled_back(self) -> str:
        return ", ".join(host.describe() for host in self.hosts if host.back) or "no host"

    def still_on_new_build(self) -> str:
        return ", ".join(
            f"{host.host} may still serve {self.version} ({host.note})" for host in self.incomplete
        )

    def to_dict(self) -> dict[str, Any]:
        return {"failed": self.failed, "version": self.version, "hosts": [asdict(h) for h in self.hosts]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RollbackReport:
        hosts = [HostRollback(**host) for host in data["hosts"]]
        return cls(failed=data["failed"], version=data["version"], hosts=hosts)


@dataclass(frozen=True)
class Outcome:
    """A run's result as the audit trail records it, with the detail a reader needs."""

    result: str
    detail: str | None = None

    @property
    def ended_well(self) -> bool:
        """The run may end successfully: the change went out, or a dry run only planned it."""
        return self.result in ("succeeded", "planned")


REJECTED = Outcome("rejected", "rejected at approval; nothing changed")


def not_approved(approval_timeout: str | None) -> Outcome:
    """The outcome of a run whose approval gate failed: ``timed_out`` when nobody answered within
    ``approval_timeout`` (what the gate recorded), else :data:`REJECTED` (refused, or answered by
    someone not allowed)."""
    if approval_timeout:
        detail = f"approval timed out: nobody answered within {approval_timeout}; nothing changed"
        return Outcome("timed_out", detail)
    return REJECTED


#: The result of a run whose rollback could not put every host back: the environment needs a person.
ROLLBACK_INCOMPLETE = "rollback_incomplete"


def release_outcome(
    run: ReleaseRun,
    *,
    planned: bool,
    dry_run: bool,
    rollback: Mapping[str, Any] | None,
    backup: str | None,
    migrations_applied: list[str] | None = None,
) -> Outcome:
    """How a release run ended; the detail is what the audit row and Slack both say.

    :param planned: the run got as far as a plan (without one no host can have changed).
    :param dry_run: the plan was a dry run's.
    :param rollback: what the ``rollback`` step reported (a :class:`RollbackReport` as a dict),
        if it rolled back or tried to.
    :param backup: the pre-release backup's name, if one was taken: a failed release names it,
        restoring it being the way back for the data.
    :param migrations_applied: the migrations this run applied (they stay applied on failure).
    """
    if planned and dry_run:
        return Outcome("planned", "dry run: nothing changed")
    if planned and run.every_wave_verified:
        return Outcome("succeeded")
    if run.rejected:
        return not_approved(run.approval_timeout)
    if rollback:
        report = RollbackReport.from_dict(rollback)
        if report.incomplete:
            outcome = Outcome(
                ROLLBACK_INCOMPLETE,
                f"failed at {report.failed}. Rollback INCOMPLETE: {report.still_on_new_build()}. "
                f"Rolled back: {report.rolled_back()}.",
            )
        else:
            outcome = Outcome(
                "rolled_back", f"failed at {report.failed}. Rolled back {report.rolled_back()}."
            )
    elif run.rollback in FAILED and planned and run.attempted_hosts():
        hosts = ", ".join(run.attempted_hosts())
        outcome = Outcome(
            ROLLBACK_INCOMPLETE,
            f"failed at {run.failed}. Rollback INCOMPLETE: the rollback step failed before reporting; "
            f"hosts this run may have switched: {hosts}.",
        )
    else:
        outcome = Outcome("failed", f"failed at {run.failed}. No host was switched.")
    notes = [run.reasons()] if run.why else []
    if migrations_applied:
        notes.append(f"Migrations applied by this run (not rolled back): {', '.join(migrations_applied)}.")
    if backup:
        notes.append(f"Database not rolled back; pre-release backup: {backup}.")
    return Outcome(outcome.result, " ".join([outcome.detail or "", *notes]).strip())


def rollback_outcome(
    host_rollbacks: Mapping[str, str | None],
    *,
    approval: str | None,
    failed: str,
    approval_timeout: str | None = None,
) -> Outcome:
    """How a ``rollback_<env>`` run ended.

    :param host_rollbacks: each host's roll-back step state, by host name.
    :param approval: the approval gate's state (None when the environment has no gate).
    :param failed: the failed steps, described for a reader (see :func:`describe_failed`).
    :param approval_timeout: the approval's timeout, when the gate recorded that nobody answered.
    """
    states = list(host_rollbacks.values())
    if states and all(state == "success" for state in states):
        return Outcome("succeeded")
    if approval == "failed":
        return not_approved(approval_timeout)
    switched = sorted(host for host, state in host_rollbacks.items() if state == "success")
    not_back = sorted(host for host, state in host_rollbacks.items() if state in FAILED)
    if switched and not_back:
        return Outcome(
            ROLLBACK_INCOMPLETE,
            f"failed at {failed}. Rollback INCOMPLETE: not back: {', '.join(not_back)}; "
            f"back: {', '.join(switched)}.",
        )
    return Outcome("failed", f"failed at {failed}")
