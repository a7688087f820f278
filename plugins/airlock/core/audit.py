"""Which runs the audit trail records, and how a run that wrote no row of its own ended.

Every run of ``release_``, ``rollback_``, ``migrate_`` and ``restore_`` that got past request
validation leaves a row. The step that concludes a run writes it; a run that stopped before that
step (the lock held elsewhere, a checksum or host key mismatch before the plan, a rejected
migration) gets its row from the lock task or the teardown, from the run's task states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from airlock.core.outcome import Outcome, describe_failed, failed_steps, not_approved

#: DAG id prefixes whose runs the audit trail records, and the action each row says.
AUDITED_ACTIONS = ("release", "rollback", "migrate", "restore", "config_update")


def audited_action(dag_id: str, environment: str) -> str | None:
    """The audit action of a run of ``dag_id`` (``release_demo`` -> ``release``); None when the
    DAG's runs are not audited this way."""
    suffix = f"_{environment}"
    action = dag_id[: -len(suffix)] if dag_id.endswith(suffix) else None
    return action if action in AUDITED_ACTIONS else None


def unconcluded_outcome(
    task_states: Mapping[str, str | None],
    *,
    approve_task_id: str,
    change_task_ids: Sequence[str] = (),
    approval_timeout: str | None = None,
) -> Outcome:
    """How a run ended that wrote no audit row of its own, from its task states.

    :param approve_task_id: the approval gate's task id (its failure is a rejection or a timeout).
    :param change_task_ids: the steps that change something; none of them succeeded and nothing
        failed means the run only planned (a dry run, or nothing to do).
    :param approval_timeout: the approval's timeout, when the gate recorded that nobody answered.
    """
    if failed_steps(task_states):
        if task_states.get(approve_task_id) == "failed":
            return not_approved(approval_timeout)
        return Outcome("failed", f"failed at {describe_failed(task_states)}")
    if change_task_ids and all(task_states.get(task) == "success" for task in change_task_ids):
        return Outcome("succeeded")
    return Outcome("planned", "nothing changed (dry run, or nothing to do)")
