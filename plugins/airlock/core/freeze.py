"""Freeze windows and maintenance windows: whether a moment falls inside one, and until when.

A freeze is recurring (opens at every time of a cron expression read in its time zone and lasts
its duration) or fixed (a start and an end). ``release_<env>`` and ``migrate_<env>`` refuse to
start inside one unless the run asks for a ``freeze_override``, which then needs the approval of
the environment's ``freeze_approvers`` (:func:`freeze_override`, :func:`required_approvers`).
``rollback_<env>`` is never frozen. Maintenance windows are recurring windows in which scheduled
maintenance does its work (:func:`inside_any`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from airlock.config import Environment
from airlock.config.environment import FreezeWindow, RecurringWindow

#: Overlapping windows are followed at most this many times to say when a freeze really ends.
_CHAIN_LIMIT = 50


class FrozenError(RuntimeError):
    """The environment is frozen and the run did not ask for (or cannot have) an override."""


@dataclass(frozen=True)
class OpenWindow:
    """A window that is open at the moment asked about: since when and until when."""

    name: str
    reason: str
    started: datetime
    ends: datetime


def _opened_at(window: FreezeWindow | RecurringWindow, moment: datetime) -> tuple[datetime, datetime] | None:
    """(start, end) of the window's occurrence open at ``moment``, or None."""
    if getattr(window, "start", None) is not None:
        assert isinstance(window, FreezeWindow)
        assert window.end is not None
        return (window.start, window.end) if window.start <= moment < window.end else None
    from croniter import croniter

    assert window.cron is not None
    assert window.duration is not None
    local = moment.astimezone(ZoneInfo(window.timezone))
    # The latest opening at or before the moment: the one whose end is latest.
    opened = croniter(window.cron, local + timedelta(seconds=1)).get_prev(datetime)
    ends = opened + window.duration
    return (opened, ends) if opened <= local < ends else None


def open_window(windows: Sequence[FreezeWindow], moment: datetime) -> OpenWindow | None:
    """The freeze open at ``moment`` (the one that ends last), followed through overlapping
    freezes to when the environment is really free again; None when none is open."""
    found = None
    for window in windows:
        opened = _opened_at(window, moment)
        if opened and (found is None or opened[1] > found.ends):
            found = OpenWindow(window.name, window.reason, opened[0], opened[1])
    if found is None:
        return None
    ends = found.ends
    for _ in range(_CHAIN_LIMIT):
        later = [o for o in (_opened_at(w, ends) for w in windows) if o]
        if not later:
            break
        ends = max(end for _, end in later)
    return OpenWindow(found.name, found.reason, found.started, ends)


def inside_any(windows: Sequence[RecurringWindow], moment: datetime) -> bool:
    """Whether ``moment`` falls inside one of the maintenance windows (True when there are none)."""
    return not windows or any(_opened_at(window, moment) for window in windows)


def freeze_override(
    environment: Environment, *, moment: datetime, override_reason: str | None, what: str
) -> dict[str, Any] | None:
    """What a run starting at ``moment`` may do about the environment's freezes.

    None: no freeze is open (an ``override_reason`` is then unused). A freeze is open and the run
    asks for an override the environment allows: the override to record (its freeze, reason and
    end, and why), which needs the approval of ``freeze_approvers``. Otherwise :class:`FrozenError`
    naming the freeze, its reason, when it ends and the way out. ``what`` names the run, e.g.
    ``"Release 2.0.0"``.
    """
    frozen = open_window(environment.freezes, moment)
    if frozen is None:
        return None
    ends = frozen.ends.astimezone(ZoneInfo("UTC")).isoformat(timespec="minutes")
    refusal = (
        f"{what} refused: {environment.name} is frozen by '{frozen.name}' ({frozen.reason}) until {ends}"
    )
    if not override_reason:
        if not environment.freeze_approvers:
            raise FrozenError(f"{refusal}. Trigger it again after the freeze ends.")
        raise FrozenError(
            f"{refusal}. Trigger it again after the freeze ends or, for an emergency, with "
            f"freeze_override set to why it cannot wait: that needs the approval of one of "
            f"{', '.join(environment.freeze_approvers)} (freeze_approvers)."
        )
    if not environment.freeze_approvers:
        raise FrozenError(
            f"{refusal}, and this freeze cannot be overridden: {environment.name} lists no freeze_approvers."
        )
    return asdict(frozen) | {
        "started": frozen.started.isoformat(),
        "ends": frozen.ends.isoformat(),
        "override_reason": override_reason,
    }


def required_approvers(environment: Environment, override: Mapping[str, Any] | None) -> list[str] | None:
    """Who must approve a plan: the freeze approvers when it overrides a freeze, else the
    environment's approvers when approval is required; None when no approval is needed."""
    if override:
        return list(environment.freeze_approvers)
    if environment.approval.required:
        return list(environment.approval.approvers)
    return None


def describe_override(override: Mapping[str, Any]) -> str:
    """One line for the plan, the audit row and Slack."""
    return (
        f"Freeze '{override['name']}' ({override['reason']}, until {override['ends']}) overridden: "
        f"{override['override_reason']}"
    )
