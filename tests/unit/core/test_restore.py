"""What a restore plan tells the approvers, and the names of the databases a restore makes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from airlock.core.backups import backup_name
from airlock.core.restore import BACKUP_PARAM_PATTERN, RestorePlan, sibling_name

SUMMARY = {
    "name": "demo-20261126T020000Z",
    "kind": "scheduled",
    "finished_at": "2026-11-26T02:00:41+00:00",
    "bytes": 81234,
    "tables": 4,
    "rows": 5120,
    "verified_at": "2026-11-26T02:01:30+00:00",
}


def plan(**changes) -> RestorePlan:
    return RestorePlan(
        **{
            "environment": "demo",
            "database": "app",
            "backup": SUMMARY,
            "triggered_by": "alice",
            "reason": "bad data import",
            **changes,
        }
    )


def test_the_plan_names_the_backup_who_asked_why_and_what_is_lost():
    markdown = plan().to_markdown()

    assert markdown.startswith("## Restore the demo database `app`\n")
    assert "- Requested by **alice**: bad data import\n" in markdown
    assert (
        "- Backup `demo-20261126T020000Z` (scheduled), taken 2026-11-26T02:00:41+00:00, "
        "verified at 2026-11-26T02:01:30+00:00\n" in markdown
    )
    assert "- 4 tables, 5120 rows, 81234 bytes\n" in markdown
    assert "1. A safety backup of `app` as it is now (kind pre-restore)." in markdown
    assert "`app` is renamed `app_before_restore_<time>` and kept" in markdown
    assert markdown.endswith(
        "**Writes made after 2026-11-26T02:00:41+00:00 will not be in `app`** "
        "(they stay in the kept database)."
    )


def test_the_plan_of_an_unverified_backup_says_it_is_checked_before_the_swap():
    markdown = plan(backup={**SUMMARY, "verified_at": None}, reason="").to_markdown()

    assert "**not verified**: its checksums and row counts are checked before the swap" in markdown
    assert "verified at" not in markdown
    assert "- Requested by **alice**\n" in markdown


def test_names_beside_a_long_database_name_stay_within_postgresqls_limit():
    name = sibling_name("d" * 63, "_before_restore_20261126120000")

    assert len(name.encode()) == 63
    assert name == "d" * 33 + "_before_restore_20261126120000"


def test_a_long_name_is_never_cut_inside_a_character():
    name = sibling_name("ü" * 30, "_restore_20261126120000")  # 60 bytes + 23

    assert len(name.encode()) <= 63
    assert name == "ü" * 20 + "_restore_20261126120000"


def test_a_short_name_gets_the_whole_suffix():
    assert sibling_name("app", "_restore_20261126120000") == "app_restore_20261126120000"


@pytest.mark.parametrize("kind", ["scheduled", "manual", "pre-release", "pre-restore"])
def test_the_backup_param_accepts_every_name_a_backup_gets(kind):
    name = backup_name("demo-eu", datetime(2026, 11, 26, 2, tzinfo=UTC), kind)

    assert re.fullmatch(BACKUP_PARAM_PATTERN, name)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty: the newest verified"),
        pytest.param("demo-20261126T020000Z", id="scheduled"),
        pytest.param("demo-20261126T020000Z-pre-release", id="safety"),
    ],
)
def test_the_backup_param_accepts(value):
    assert re.search(BACKUP_PARAM_PATTERN, value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("../demo-20261126T020000Z", id="path"),
        pytest.param("demo-20261126T020000Z-manual", id="unknown kind"),
        pytest.param("demo-20261126", id="no time"),
        pytest.param("Demo-20261126T020000Z", id="upper case"),
    ],
)
def test_the_backup_param_rejects(value):
    assert not re.search(BACKUP_PARAM_PATTERN, value)
