"""What ``unlock_<env>`` shows the approver before breaking a lock."""

from __future__ import annotations

from airlock.core.unlock import break_lock_markdown, normalized_reason


def test_the_reason_is_kept_on_one_line():
    assert normalized_reason("  worker VM\tdeleted \n mid-release ") == "worker VM deleted mid-release"
    assert normalized_reason(" \n ") == ""


def test_the_plan_names_the_holder_and_says_what_is_unknown():
    markdown = break_lock_markdown(
        environment="demo",
        holder="release 9.9.9 (run manual__1, by alice, since 2026-11-30T10:00:00+00:00)",
        dag_id=None,
        installation="inst-1",
        reason="worker VM deleted",
    )

    assert markdown.startswith("## Break the lock of demo\n")
    assert "- Held by: release 9.9.9 (run manual__1, by alice" in markdown
    assert "- DAG: (not recorded)" in markdown
    assert "- Installation: inst-1" in markdown
    assert "- Reason given: worker VM deleted" in markdown
    assert "make sure it is dead or stopped first" in markdown
