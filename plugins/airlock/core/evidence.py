"""Approval evidence: whether a step of a release may change a host or the database. No Airflow.

The approval gate (:mod:`airlock.operators.approval`) returns, as its XCom, what an approver
answered (``chosen_options``, ``responded_by_user`` with its ``id`` and ``name``) and what the
request showed (``plan_digest``, ``run_id``, ``clear_number``). Every step that changes something
(the pre-release backup, the migrations, each host's deploy) hands that XCom, this run's plan
digest and this run's identity to :func:`approval_refusal` before it changes anything:

- no XCom: ``approve`` was marked success by hand (or its result deleted); nobody answered;
- an answer other than Approve, or from someone who is not an approver, or self-approval;
- an approval from another run, or from before this run was cleared (``clear_number``: Airflow
  counts every clear of a run's tasks), so re-running last month's deploy is refused;
- an approval of another plan (its digest differs from this run's plan).

Identity: an auth manager's user has an id and a name; under the simple auth manager they are
equal, under FAB the id is numeric, under Keycloak a subject id. An approver listed in the
environment file by either matches; the person who triggered a run (Airflow records only their
name, ``triggering_user_name``) is recognised by either too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

APPROVE = "Approve"

#: What to do instead, said by every refusal.
TRIGGER_A_NEW_RELEASE = (
    "Nothing was changed. Trigger a new release of this version and have an approver answer it "
    "under Browse > Required Actions."
)


def user_identity(user: Any) -> tuple[str | None, str | None]:
    """(id, name) of an auth manager's user, given as a mapping (XCom, events) or an object."""
    if isinstance(user, Mapping):
        identity = user.get("id"), user.get("name")
    else:
        identity = getattr(user, "id", None), getattr(user, "name", None)
    return tuple(None if value is None else str(value) for value in identity)  # type: ignore[return-value]


def describe_user(user: Any) -> str:
    """``alice (id 7)`` when id and name differ, else the one of them there is."""
    user_id, name = user_identity(user)
    if name and user_id and name != user_id:
        return f"{name} (id {user_id})"
    return name or user_id or "an unknown user"


def is_listed(user: Any, approvers: Iterable[str]) -> bool:
    """Whether the user's id or name is one of ``approvers`` (which may list ids or names)."""
    listed = set(approvers)
    return any(value is not None and value in listed for value in user_identity(user))


def is_triggering_user(user: Any, triggered_by: str) -> bool:
    """Whether the user is the one who triggered the run, by their id or by their name."""
    return triggered_by in {value for value in user_identity(user) if value is not None}


def response_refusal(
    user: Any, *, approvers: Iterable[str], triggered_by: str, allow_self_approval: bool
) -> str | None:
    """Why this responder's answer does not count (None when it does)."""
    who = describe_user(user)
    if not is_listed(user, approvers):
        return f"{who} is not an approver (approval.approvers: {', '.join(approvers)})"
    if not allow_self_approval and is_triggering_user(user, triggered_by):
        return f"{who} triggered this run and may not approve it (approval.allow_self_approval is false)"
    return None


def approval_refusal(
    approval: Mapping[str, Any] | None,
    *,
    step: str,
    plan_digest: str,
    run_id: str,
    clear_number: int,
    approvers: Iterable[str],
    triggered_by: str,
    allow_self_approval: bool,
    instead: str = TRIGGER_A_NEW_RELEASE,
) -> str | None:
    """Why ``step`` may not change anything on this run's approval (None when it may).

    :param approval: the ``approve`` task's XCom in this run (None when it has none).
    :param plan_digest: the digest of this run's plan (:func:`airlock.core.release.plan_digest`).
    :param clear_number: how often this run's tasks were cleared, as Airflow counts it now.
    :param instead: what to do instead, ending every refusal (a new release, by default).
    """
    approvers = list(approvers)
    if not approval:
        return (
            f"{step} refused: this run has no recorded approval. The approve task holds no answer "
            f"from an approver: it was marked success by hand (or its result was deleted). "
            f"{instead}"
        )
    if approval.get("chosen_options") != [APPROVE]:
        answer = approval.get("chosen_options")
        return f"{step} refused: the recorded answer is {answer}, not {APPROVE}. {instead}"
    why_not = response_refusal(
        approval.get("responded_by_user"),
        approvers=approvers,
        triggered_by=triggered_by,
        allow_self_approval=allow_self_approval,
    )
    if why_not:
        return f"{step} refused: {why_not}. {instead}"
    if approval.get("run_id") != run_id:
        return (
            f"{step} refused: the approval was recorded for run {approval.get('run_id')}, not this run "
            f"({run_id}). {instead}"
        )
    if approval.get("clear_number") != clear_number:
        return (
            f"{step} refused: the approval was given before this run's tasks were cleared "
            f"(approved at clear {approval.get('clear_number')}, now {clear_number}); re-running an "
            f"old run's steps would change production against a stale plan. {instead}"
        )
    if approval.get("plan_digest") != plan_digest:
        return (
            f"{step} refused: the approver approved plan digest {approval.get('plan_digest')}, but this "
            f"run's plan has digest {plan_digest}. {instead}"
        )
    return None


def document_digest(planned: Mapping[str, Any]) -> str:
    """The SHA-256 binding an approval to a plan task's result (its ``markdown`` and ``digest``
    aside): what ``migrate_<env>`` and ``restore_<env>`` show their approvers."""
    import hashlib
    import json

    canonical = {key: value for key, value in planned.items() if key not in ("markdown", "digest")}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def host_drift(
    host: str, *, planned_current: str | None, new_version: str, current: str | None
) -> str | None:
    """Why a host no longer is as the approved plan saw it (None when it is, or this run already
    switched it): a deploy must not go ahead on a host someone changed since the plan."""
    if current in (planned_current, new_version):
        return None
    return (
        f"{host} now runs {current or '(none)'}, but the approved plan saw {planned_current or '(none)'}: "
        f"the plan is stale. {TRIGGER_A_NEW_RELEASE}"
    )
