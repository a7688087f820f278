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

from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ReleaseRun:
    """What a ``release_<env>`` run's steps did, said in the domain's words rather than task ids.

    :param verifications: each wave's verification state, wave 1 first (None: not run).
    :param deploys: each host's deploy state (None: not run).
    :param approval: the approval gate's state (None when the environment has no gate).
    :param failed: the failed steps, described for a reader (see :func:`describe_failed`).
    """

    verifications: list[str | None]
    deploys: dict[str, str | None] = field(default_factory=dict)
    approval: str | None = None
    failed: str = "an earlier step"

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


def nothing_to_roll_back(run: ReleaseRun, *, planned: bool) -> str | None:
    """Why a release run has nothing to roll back, or None when it has (see ``attempted_hosts``)."""
    if not planned:
        return "no plan: the run stopped before any host could change"
    if run.every_wave_verified:
        return "every wave succeeded: nothing to roll back"
    if not run.attempted_hosts():
        return "no host was touched by this run: nothing to roll back"
    return None


@dataclass(frozen=True)
class Outcome:
    """A run's result as the audit trail records it, with the detail a reader needs."""

    result: str
    detail: str | None = None

    @property
    def ended_well(self) -> bool:
        """The run may end successfully: the change went out, or a dry run only planned it."""
        return self.result in ("succeeded", "planned")


REJECTED = Outcome("rejected", "rejected or timed out at approval; nothing changed")


def release_outcome(
    run: ReleaseRun,
    *,
    planned: bool,
    dry_run: bool,
    rollback: Mapping[str, Any] | None,
    backup: str | None,
) -> Outcome:
    """How a release run ended.

    :param planned: the run got as far as a plan (without one no host can have changed).
    :param dry_run: the plan was a dry run's.
    :param rollback: what the ``rollback`` step returned (``failed`` and ``hosts``), if it rolled back.
    :param backup: the pre-release backup's name, if one was taken: a failed release names it,
        restoring it being the way back for the data.
    """
    if planned and dry_run:
        return Outcome("planned", "dry run: nothing changed")
    if planned and run.every_wave_verified:
        return Outcome("succeeded")
    if run.rejected:
        return REJECTED
    if rollback:
        outcome = Outcome("rolled_back", f"failed at {rollback['failed']}; {rollback['hosts']}")
    else:
        outcome = Outcome("failed", f"failed at {run.failed}; no host was switched")
    if backup:
        return Outcome(outcome.result, f"{outcome.detail}; pre-release backup {backup}")
    return outcome


def rollback_outcome(host_rollbacks: list[str | None], *, approval: str | None, failed: str) -> Outcome:
    """How a ``rollback_<env>`` run ended.

    :param host_rollbacks: the state of each host's roll-back step.
    :param approval: the approval gate's state (None when the environment has no gate).
    :param failed: the failed steps, described for a reader (see :func:`describe_failed`).
    """
    if host_rollbacks and all(state == "success" for state in host_rollbacks):
        return Outcome("succeeded")
    if approval == "failed":
        return REJECTED
    return Outcome("failed", f"failed at {failed}")
