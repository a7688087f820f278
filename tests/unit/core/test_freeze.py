"""When a freeze is open and until when; what a run may do about it; who must approve it."""

from __future__ import annotations

from datetime import datetime

import pytest
import yaml

from airlock.config import load_environment
from airlock.config.environment import FreezeWindow, RecurringWindow
from airlock.core.freeze import FrozenError, freeze_override, inside_any, open_window, required_approvers
from tests.support import demo_document

# Friday 18:00 Berlin time for 62 hours: until Monday 08:00 Berlin time.
WEEKEND = FreezeWindow(
    name="weekend", reason="No releases over the weekend", cron="0 18 * * 5", duration="62h",
    timezone="Europe/Berlin",
)  # fmt: skip
YEAR_END = FreezeWindow(
    name="year-end",
    reason="Year-end close",
    start="2026-12-24T00:00:00+01:00",
    end="2027-01-02T00:00:00+01:00",
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("moment", "open_until"),
    [
        pytest.param("2026-12-04T16:59:00+00:00", None, id="friday-just-before"),
        pytest.param("2026-12-04T17:00:00+00:00", "2026-12-07T07:00:00+00:00", id="friday-18h-berlin"),
        pytest.param("2026-12-06T12:00:00+00:00", "2026-12-07T07:00:00+00:00", id="sunday"),
        pytest.param("2026-12-07T07:00:00+00:00", None, id="monday-08h-berlin-is-free"),
        pytest.param("2026-12-09T12:00:00+00:00", None, id="wednesday"),
        # Summer time: 18:00 in Berlin is 16:00 UTC.
        pytest.param("2026-07-03T16:30:00+00:00", "2026-07-06T06:00:00+00:00", id="summer-time"),
    ],
)
def test_a_recurring_freeze_is_read_in_its_time_zone(moment, open_until):
    frozen = open_window([WEEKEND], at(moment))
    if open_until is None:
        assert frozen is None
    else:
        assert frozen is not None
        assert (frozen.name, frozen.ends) == ("weekend", at(open_until))


def test_a_fixed_freeze_is_open_from_its_start_until_its_end():
    assert open_window([YEAR_END], at("2026-12-23T22:59:00+00:00")) is None
    assert open_window([YEAR_END], at("2026-12-23T23:00:00+00:00")).ends == at("2027-01-02T00:00:00+01:00")
    assert open_window([YEAR_END], at("2027-01-01T23:00:00+00:00")) is None


def test_overlapping_freezes_end_when_the_last_of_them_ends():
    # Sunday 27 December: inside both; the weekend ends Monday 28th, the year-end freeze later.
    frozen = open_window([WEEKEND, YEAR_END], at("2026-12-27T12:00:00+00:00"))
    assert frozen.name == "year-end"
    # Friday 1 January 2027, 22:00 UTC: year-end ends at 23:00 UTC, the weekend that began at
    # 17:00 UTC goes on until Monday: the environment is free only then.
    frozen = open_window([WEEKEND, YEAR_END], at("2027-01-01T22:00:00+00:00"))
    assert frozen.ends == at("2027-01-04T07:00:00+00:00")


def test_maintenance_windows_allow_any_time_when_there_are_none():
    nightly = RecurringWindow(cron="0 2 * * *", duration="3h")
    assert inside_any([], at("2026-12-02T12:00:00+00:00"))
    assert inside_any([nightly], at("2026-12-02T04:59:00+00:00"))
    assert not inside_any([nightly], at("2026-12-02T05:00:00+00:00"))


def environment(tmp_path, **change):
    weekend = {**WEEKEND.model_dump(exclude_none=True), "duration": "62h"}
    document = {**demo_document(), "freezes": [weekend], **change}
    path = tmp_path / "frozen.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_environment(path)


SUNDAY = at("2026-12-06T12:00:00+00:00")


def test_a_run_during_a_freeze_is_refused_naming_the_freeze_its_reason_its_end_and_the_way_out(tmp_path):
    frozen = environment(tmp_path, freeze_approvers=["cto"])
    with pytest.raises(FrozenError) as refused:
        freeze_override(frozen, moment=SUNDAY, override_reason=None, what="Release 2.0.0")
    message = str(refused.value)
    assert message.startswith(
        "Release 2.0.0 refused: frozen is frozen by 'weekend' (No releases over the weekend)"
    )
    assert "until 2026-12-07T07:00+00:00" in message
    assert "freeze_override" in message
    assert "cto" in message


def test_without_freeze_approvers_a_freeze_cannot_be_overridden(tmp_path):
    frozen = environment(tmp_path)
    with pytest.raises(FrozenError, match="cannot be overridden: frozen lists no freeze_approvers"):
        freeze_override(frozen, moment=SUNDAY, override_reason="the site is down", what="Release 2.0.0")
    with pytest.raises(FrozenError, match=r"Trigger it again after the freeze ends\.$"):
        freeze_override(frozen, moment=SUNDAY, override_reason=None, what="Release 2.0.0")


def test_an_override_names_its_freeze_and_reason_and_needs_a_freeze_approver(tmp_path):
    frozen = environment(tmp_path, freeze_approvers=["cto"])
    override = freeze_override(frozen, moment=SUNDAY, override_reason="hotfix for the outage", what="Release")
    assert override["name"] == "weekend"
    assert override["override_reason"] == "hotfix for the outage"
    assert override["ends"] == "2026-12-07T08:00:00+01:00"
    assert required_approvers(frozen, override) == ["cto"]
    assert required_approvers(frozen, None) == frozen.approval.approvers


def test_outside_a_freeze_nothing_is_overridden(tmp_path):
    frozen = environment(tmp_path, freeze_approvers=["cto"])
    wednesday = at("2026-12-09T12:00:00+00:00")
    assert freeze_override(frozen, moment=wednesday, override_reason="just in case", what="Release") is None
