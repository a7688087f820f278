"""User text in Slack messages is inert: no channel pings, no links, no fake markup."""

from __future__ import annotations

import pytest

from airlock.notifications.slack import escape_mrkdwn, render


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        pytest.param("<!channel>", "&lt;!channel&gt;", id="channel-ping"),
        pytest.param("<@U123>", "&lt;@U123&gt;", id="user-mention"),
        pytest.param("<https://evil.example|docs>", "&lt;https://evil.example|docs&gt;", id="link"),
        pytest.param("R&D &lt;", "R&amp;D &amp;lt;", id="ampersand-first"),
    ],
)
def test_escape_follows_slacks_three_characters(text, sent):
    assert escape_mrkdwn(text) == sent


def test_a_reason_with_a_channel_ping_reaches_slack_inert():
    text = render(
        "release_started",
        environment="demo",
        version="2.0.0",
        triggered_by="<@U999>",
        reason=": ship it <!channel> & <https://evil.example|the docs>",
    )

    assert "<!channel>" not in text
    assert "<https://" not in text
    assert "<@U999>" not in text
    assert text.endswith(": ship it &lt;!channel&gt; &amp; &lt;https://evil.example|the docs&gt;")
    assert "by &lt;@U999&gt;" in text


def test_the_templates_own_markup_stays():
    text = render(
        "task_failed",
        dag_id="release_demo",
        task="deploy",
        try_number=1,
        error="<!here> boom",
        log_url="http://x/log?a=1&b=2",
    )

    assert text.startswith(
        ":x: *release_demo*: task deploy failed (try 1): &lt;!here&gt; boom <http://x/log?a=1&amp;b=2|log>"
    )
