"""What ``unlock_<env>`` shows its approver before it breaks a lock: no Airflow here."""

from __future__ import annotations

from airlock.core.markdown import inline


def normalized_reason(reason: str) -> str:
    """The reason on one line, runs of white space made one space ("" when only space was given)."""
    return " ".join(reason.split())


def break_lock_markdown(
    *, environment: str, holder: str, dag_id: str | None, installation: str | None, reason: str
) -> str:
    """The plan of breaking ``environment``'s lock: who holds it, and why it is to be broken.

    :param holder: the holder as :meth:`LockHolder.describe` says it.
    """
    return "\n".join(
        [
            f"## Break the lock of {environment}",
            "",
            f"- Held by: {inline(holder)}",
            f"- DAG: {dag_id or '(not recorded)'}",
            f"- Installation: {installation or '(not recorded)'}",
            f"- Reason given: {inline(reason)}",
            "",
            "Breaking it lets the next release, rollback, migration or restore start while that run"
            " may still be changing things: make sure it is dead or stopped first.",
        ]
    )
