"""The alert rules of ``health_<env>`` without services: hysteresis, pending lines, silences, the
rate limit's arithmetic and the validation of a silence request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airlock.config import HealthSettings
from airlock.core.health import (
    AlertRules,
    AlertState,
    CheckResult,
    Silence,
    Status,
    decide,
    next_slot,
    plan_alerts,
    sent_within_hour,
    silence_request,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DEFAULTS = AlertRules.of(HealthSettings())


def result(status: Status, check: str = "disk", target: str = "web-1:/") -> CheckResult:
    return CheckResult(check, target, status, 91.0, "warn 80%, critical 90%", "disk used 91.0%", 3.0)


def runs(statuses, rules=DEFAULTS, state=None):
    """The templates sent by consecutive runs 5 minutes apart (None where nothing was sent)."""
    sent = []
    for n, status in enumerate(statuses):
        state, notification = decide(result(status), state, NOW + timedelta(minutes=5 * n), rules)
        sent.append(notification and notification.template)
    return sent, state


def test_by_default_critical_alerts_at_once_and_warn_after_two_runs_in_a_row():
    assert runs([Status.CRITICAL])[0] == ["health_alert"]
    assert runs([Status.WARN, Status.WARN])[0] == [None, "health_alert"]


def test_by_default_a_check_resolves_after_two_passing_runs_in_a_row():
    sent, state = runs([Status.CRITICAL, Status.OK, Status.CRITICAL, Status.OK, Status.OK])

    assert sent == ["health_alert", None, None, None, "health_resolved"]
    assert state.status is Status.OK


def test_a_flapping_check_with_alert_after_2_never_alerts():
    rules = AlertRules.of(HealthSettings(alert_after=2))

    sent, state = runs([Status.CRITICAL, Status.OK] * 4, rules)

    assert sent == [None] * 8
    assert (state.status, state.failing_runs, state.passing_runs) == (Status.OK, 0, 1)


def test_an_alert_after_a_streak_says_since_when_the_streak_began():
    first, _ = decide(result(Status.WARN), None, NOW, DEFAULTS)
    state, alert = decide(result(Status.WARN), first, NOW + timedelta(minutes=5), DEFAULTS)

    assert alert.since == NOW
    assert state.since == NOW.isoformat()


def test_states_written_before_hysteresis_are_read_with_empty_streaks():
    stamp = "2026-11-26T10:00:00+00:00"
    old = f'{{"status": "critical", "since": "{stamp}", "notified_at": "{stamp}"}}'

    state = AlertState.from_json(old)

    assert (state.status, state.failing_runs, state.pending, state.updated_at) == (
        Status.CRITICAL,
        0,
        None,
        "",
    )


def silence(check: str = "disk", host: str = "web-1", minutes: int = 30) -> Silence:
    return Silence(
        3, check, host, NOW - timedelta(minutes=1), NOW + timedelta(minutes=minutes), "resize", "alice"
    )


@pytest.mark.parametrize(
    ("check", "target", "matches"),
    [
        pytest.param("disk", "web-1:/", True, id="host-part-of-a-mount-target"),
        pytest.param("disk", "web-1", True, id="the-host-itself"),
        pytest.param("disk", "web-10:/", False, id="another-host-with-the-same-prefix"),
        pytest.param("inodes", "web-1:/", False, id="another-check"),
    ],
)
def test_a_silence_matches_its_check_and_host_patterns(check, target, matches):
    assert silence().matches(check, target) is matches


def test_a_silenced_alert_stays_due_and_comes_once_the_silence_has_expired():
    during = plan_alerts([result(Status.CRITICAL)], {}, [silence()], NOW, DEFAULTS)
    after = plan_alerts(
        [result(Status.CRITICAL)], during.states, [silence()], NOW + timedelta(minutes=31), DEFAULTS
    )

    assert during.notifications == []
    [(muted, by)] = during.muted
    assert (muted.template, by.id) == ("health_alert", 3)
    assert during.states["disk", "web-1:/"].status is Status.OK
    [alert] = after.notifications
    assert alert.template == "health_alert"
    assert after.muted == []


def test_a_line_slack_did_not_take_is_retried_until_a_newer_one_replaces_it():
    held = decide(result(Status.CRITICAL), None, NOW, DEFAULTS)[0].held(
        "health_alert", "disk alert", NOW, attempted=True
    )

    retried = plan_alerts(
        [result(Status.CRITICAL)], {held_key(): held}, [], NOW + timedelta(minutes=5), DEFAULTS
    )
    replaced = plan_alerts(
        [result(Status.OK)],
        {held_key(): decide(result(Status.OK), held, NOW + timedelta(minutes=5), DEFAULTS)[0]},
        [],
        NOW + timedelta(minutes=10),
        DEFAULTS,
    )

    assert retried.notifications == []
    assert retried.retries()[held_key()].pending == "disk alert"
    assert retried.retries()[held_key()].attempts == 1
    [resolved] = replaced.notifications
    assert resolved.template == "health_resolved"
    assert replaced.retries() == {}
    assert replaced.states[held_key()].pending is None


def held_key() -> tuple[str, str]:
    return ("disk", "web-1:/")


def test_a_held_line_counts_its_attempts_and_keeps_when_it_was_first_held():
    state = AlertState(Status.CRITICAL, NOW.isoformat(), NOW.isoformat())

    once = state.held("health_alert", "line", NOW, attempted=True)
    twice = once.held("health_alert", "line", NOW + timedelta(minutes=5), attempted=True)
    rate_limited = twice.held("health_alert", "line", NOW + timedelta(minutes=10), attempted=False)

    assert (twice.attempts, twice.pending_since) == (2, NOW.isoformat())
    assert rate_limited.attempts == 2
    assert rate_limited.delivered().pending is None


def test_the_rate_limit_counts_the_last_hour_and_says_when_there_is_room_again():
    sent = [NOW - timedelta(minutes=70), NOW - timedelta(minutes=50), NOW - timedelta(minutes=10)]

    assert sent_within_hour(sent, NOW) == 2
    assert next_slot(sent, NOW, 2) == NOW + timedelta(minutes=10)
    assert next_slot(sent, NOW, 3) == NOW


def test_a_valid_silence_request_is_trimmed_and_its_duration_read():
    request = silence_request(" db_* ", "web-[12]", "90m", "  vacuum   full on items ")

    assert (request.check, request.host, request.duration, request.reason) == (
        "db_*",
        "web-[12]",
        timedelta(minutes=90),
        "vacuum full on items",
    )


@pytest.mark.parametrize(
    ("params", "error"),
    [
        pytest.param(("disk; rm", "*", "1h", "why not"), "check: 'disk; rm' is not a pattern", id="check"),
        pytest.param(("*", "", "1h", "why not"), "host: '' is not a pattern", id="empty-host"),
        pytest.param(("*", "*", "soon", "why not"), "duration: invalid duration 'soon'", id="duration"),
        pytest.param(("*", "*", "8d", "why not"), "duration: '8d' is longer than 168 h", id="too-long"),
        pytest.param(("*", "*", "1h", "no"), "reason: give one line of 3 to 500", id="short-reason"),
        pytest.param(("*", "*", "1h", "two\nlines"), "reason: give one line", id="two-lines"),
    ],
)
def test_a_bad_silence_request_is_refused_naming_the_param(params, error):
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("(", r"\(")):
        silence_request(*params)
