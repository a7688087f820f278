"""``POST /airlock/slack/interactions``: Slack's callbacks when an approver clicks Approve or Reject.

Slack cannot log in to Airflow, so this one route is not behind Airflow's authentication: the
request's signature is its authentication. In order, before anything is written:

1. the button's value names one approval request (:class:`~airlock.core.slack_approval.RequestRef`)
   of a configured environment, whose ``approval.slack_signing_conn_id`` holds the signing secret;
2. the signature (``X-Slack-Signature`` over ``v0:<timestamp>:<body>``) verifies with that secret
   (``slack_sdk``'s ``SignatureVerifier``, which also refuses a timestamp over 5 minutes old),
   and this exact signed request was never seen before (Redis, kept 10 minutes): else HTTP 401;
3. the request is still waiting, for the plan digest the button showed;
4. the Slack user maps to an Airflow user (``approval.slack_users``) who is assigned to the
   request and, unless the environment allows it, did not trigger the run.

Then the HITL request is answered as the REST API answers it (row locks in the same order, the
parked task resumed at once), with the mapped user recorded as the responder. Every refusal
answers Slack with an ephemeral message (also sent to the click's ``response_url``, in the
background: Slack wants its answer within 3 seconds) and changes nothing; the gate itself checks
the answer again when the task resumes. Unlike Airflow's REST route, no Airflow permission of the
mapped user is checked: the mapping and the request's assignment are the authorisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from airlock.config import Environment, load_environments
from airlock.core.slack_approval import OPTIONS, RequestRef, slack_refusal

log = logging.getLogger(__name__)

#: Slack's interaction payloads are small; anything bigger is not one.
MAX_BODY = 64 * 1024
#: How long a signed request is remembered (longer than the 5 minutes a signature is valid).
REPLAY_WINDOW_SECONDS = 600


class Refused(Exception):
    """A click that changes nothing: HTTP ``status`` and what Slack shows the user."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def ephemeral(text: str) -> dict[str, Any]:
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


def handle_interaction(body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """Answer one interaction callback: ``(HTTP status, JSON body)``. Nothing unexpected becomes
    a 500 with a trace: before the signature verified, every failure is the same 401; after it,
    a failure to answer is a 503 telling the user to answer in Airflow."""
    payload: dict[str, Any] = {}
    verified = False
    try:
        try:
            payload, ref, environment = _parse(body)
            _verify(environment, body, headers)
        except Refused:
            raise
        except Exception as error:  # malformed headers, a broken secret, deep JSON...
            log.warning("Slack interaction refused before verification: %r", error)
            raise Refused(401, "not a verifiable Slack interaction") from None
        verified = True
        text = _answer(environment, ref, payload)
        status = 200
    except Refused as refusal:
        status, text = refusal.status, refusal.text
        log.warning("Slack interaction refused (%s): %s", status, text)
    except Exception:
        log.exception("Could not answer a verified Slack interaction")
        status, text = 503, "Airlock could not record this answer; answer in Airflow (Required Actions)."
    if verified:
        _respond(payload.get("response_url"), text)
    return status, ephemeral(text)


def _parse(body: bytes) -> tuple[dict[str, Any], RequestRef, Environment]:
    if len(body) > MAX_BODY:
        raise Refused(401, "not a Slack interaction")
    try:
        payload = json.loads(parse_qs(body.decode("utf-8"))["payload"][0])
        [action] = payload["actions"]
        ref = RequestRef.decode(action["value"])
        if action["action_id"] not in OPTIONS:
            raise ValueError(action["action_id"])
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        raise Refused(401, "not a verifiable Slack interaction") from None
    environment = next((e for e in load_environments() if e.name == ref.environment), None)
    # The environment (its secret, its mapping) must be the DAG's own: a button of one environment
    # can never name another's run.
    if environment is None or not ref.dag_id.endswith(f"_{environment.name}"):
        raise Refused(401, "not a verifiable Slack interaction")
    return payload, ref, environment


def _verify(environment: Environment, body: bytes, headers: Mapping[str, str]) -> None:
    from slack_sdk.signature import SignatureVerifier

    from airlock.hooks.approval_requests import first_time, signing_secret

    timestamp = headers.get("x-slack-request-timestamp")
    signature = headers.get("x-slack-signature")
    secret = signing_secret(environment.approval.slack_signing_conn_id)
    if not secret or not SignatureVerifier(secret).is_valid(body, timestamp, signature):
        if not secret:
            log.error("No Slack signing secret in %s", environment.approval.slack_signing_conn_id)
        raise Refused(401, "bad signature, or a request older than 5 minutes")
    seen = hashlib.sha256(f"{timestamp}:{signature}".encode()).hexdigest()
    if not first_time(environment.redis_conn_id, f"airlock:slack:seen:{seen}", REPLAY_WINDOW_SECONDS):
        raise Refused(401, "this request was already received (a replay)")


def _answer(environment: Environment, ref: RequestRef, payload: Mapping[str, Any]) -> str:
    from airlock.hooks.approval_requests import PendingRequest, answer_request

    option = OPTIONS[payload["actions"][0]["action_id"]]
    slack_user = str((payload.get("user") or {}).get("id") or "")

    def decide(request: PendingRequest | None) -> tuple[str, str]:
        """Who answers (the mapped Airflow user's id and name), or :class:`Refused` saying why nobody does."""
        if request is None:
            raise Refused(200, "This approval request no longer exists.")
        if request.answered:
            decided = "approved" if request.chosen_options == ["Approve"] else "rejected"
            who = request.responded_by or "the scheduler (nobody answered in time)"
            raise Refused(200, f"This request was already {decided} by {who}.")
        if request.clear_number != ref.clear_number or not request.waiting:
            raise Refused(200, "This message is for an earlier try of the run, which no longer waits.")
        if option not in request.options:
            raise Refused(200, f"This request does not offer {option}.")
        if request.plan_digest != ref.plan_digest:
            raise Refused(
                200, "This message shows an older plan than the request now does: answer in Airflow."
            )
        user, refusal = slack_refusal(
            slack_user=slack_user,
            mapping=environment.approval.slack_users,
            assigned=request.assigned,
            triggered_by=request.triggered_by,
            allow_self_approval=environment.approval.allow_self_approval,
        )
        if refusal:
            raise Refused(200, refusal)
        return user.id, user.name

    user, _ = answer_request(
        dag_id=ref.dag_id,
        run_id=ref.run_id,
        task_id=ref.task_id,
        map_index=ref.map_index,
        option=option,
        decide=decide,
    )
    log.info(
        "%s of %s (run %s) answered %s from Slack by %s", ref.task_id, ref.dag_id, ref.run_id, option, user
    )
    return f"Approved as {user}." if option == "Approve" else f"Rejected as {user}."


def _respond(response_url: Any, text: str) -> None:
    """Tell the clicking user in Slack (``response_url``); best effort: the HTTP answer says it too."""
    if not isinstance(response_url, str) or urlsplit(response_url).scheme not in ("http", "https"):
        return
    import threading

    threading.Thread(
        target=_post_response, args=(response_url, text), name="airlock-slack-response", daemon=True
    ).start()


def _post_response(response_url: str, text: str) -> None:
    import urllib.request

    request = urllib.request.Request(
        response_url,
        data=json.dumps(ephemeral(text)).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5):
            pass
    except OSError as error:
        log.warning("Could not answer Slack's response_url: %s", error)
