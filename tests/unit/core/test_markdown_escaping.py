"""User text in the approver's Markdown renders as typed: no faked section, no markup."""

from __future__ import annotations

import pytest

from airlock.core.markdown import inline
from airlock.core.release import ReleasePlan, RollbackPlan
from airlock.core.restore import RestorePlan
from airlock.core.unlock import break_lock_markdown

FAKE_SECTION = "hotfix\n\n### Migrations\n\nNothing to see. **Approved by security**"


def release_plan(**changes) -> ReleasePlan:
    fields = dict(
        environment="demo",
        version="2.0.0",
        dry_run=False,
        artifact_url="file:///a/demo-app-2.0.0.tar.gz",
        artifact_sha256="a" * 64,
        artifact_size=1,
        waves=[],
        migrations=[],
        backup=None,
        checks=[],
        approval_required=True,
        approvers=["admin"],
        triggered_by="alice",
        reason="",
    )
    known = ReleasePlan.__dataclass_fields__
    return ReleasePlan(**{k: v for k, v in {**fields, **changes}.items() if k in known})


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("a\nb\r\nc", "a b c", id="newlines-joined"),
        pytest.param("**bold** _it_ `code`", r"\*\*bold\*\* \_it\_ \`code\`", id="emphasis-and-code"),
        pytest.param("[click](http://x) <b>", r"\[click\](http://x) \<b\>", id="link-and-html"),
        pytest.param("a | b ~~c~~ &amp;", r"a \| b \~\~c\~\~ \&amp;", id="table-strike-entity"),
        pytest.param("run manual__1 by bob", "run manual__1 by bob", id="word-underscores-kept"),
        pytest.param("back\\slash", "back\\\\slash", id="backslash"),
    ],
)
def test_inline_makes_user_text_literal_on_one_line(text, shown):
    assert inline(text) == shown


def test_a_reason_cannot_fake_a_section_of_the_release_plan():
    markdown = release_plan(reason=FAKE_SECTION, triggered_by="**mallory**").to_markdown()

    lines = markdown.splitlines()
    assert [line for line in lines if line.startswith("### Migrations")] == ["### Migrations"]
    assert not [line for line in lines if line.startswith("Nothing to see")]
    assert (
        r"- Requested by **\*\*mallory\*\***: hotfix ### Migrations Nothing to see. \*\*Approved" in markdown
    )


def test_the_rollback_restore_and_unlock_plans_escape_user_text_too():
    rollback = RollbackPlan(
        environment="demo", hosts=[], triggered_by="bob", reason=FAKE_SECTION
    ).to_markdown()
    restore = RestorePlan(
        environment="demo",
        database="app",
        backup={
            "name": "demo-1",
            "kind": "manual",
            "finished_at": "t",
            "verified_at": "t",
            "tables": 1,
            "rows": 1,
            "bytes": 1,
        },
        triggered_by="bob",
        reason=FAKE_SECTION,
    ).to_markdown()
    unlock = break_lock_markdown(
        environment="demo", holder="release <b>x</b>", dag_id=None, installation=None, reason=FAKE_SECTION
    )

    for markdown in (rollback, restore, unlock):
        assert "\n### Migrations" not in markdown
        assert r"\*\*Approved by security\*\*" in markdown
    assert r"release \<b\>x\</b\>" in unlock
