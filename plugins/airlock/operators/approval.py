"""The approval gate: Airflow's human-in-the-loop ``ApprovalOperator`` with Airlock's rules.

- Only the environment's approvers are assigned, so only they can answer (Airflow checks the
  assignment when the response is submitted through the UI or the REST API, by the user's *id*
  only: under FAB, list approvers by id for Airflow to let them answer).
- The answer counts only when the responder's id or name is one of the approvers, and, unless
  the environment allows it, neither their id nor their name is the triggering user's (the
  triggering user is also removed from the assignees).
- The gate records what its request showed (the plan digest, the run and its clear number, as
  XCom ``request``) and returns it with the answer: the evidence every later step that changes
  something checks (:mod:`airlock.core.evidence`).
- No answer within the environment's timeout is not an approval (the default option is
  *Reject*, which the scheduler applies); the gate records the timeout (XCom
  :data:`APPROVAL_TIMED_OUT`), so the audit row says ``timed_out``, not ``rejected``.
- Approved: the run goes on. Rejected or timed out: the task fails, nothing downstream runs
  except the teardown, and Slack says who rejected or that time ran out.
- A plan that overrides a freeze (its ``freeze_override``, :mod:`airlock.core.freeze`) is
  assigned to the environment's ``freeze_approvers`` instead, and only their answer counts; in
  an environment whose releases need no approval the gate exists for such plans only and lets
  every other plan through without asking.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment
from airlock.core.evidence import describe_user, response_refusal
from airlock.core.freeze import describe_override
from airlock.core.outcome import triggering_user
from airlock.core.slack_approval import RequestRef, plan_summary
from airlock.notifications.slack import post, render
from airlock.notifications.slack_approval import post_request, update_request

#: The gate's XCom key holding its timeout (as text) when nobody answered within it.
APPROVAL_TIMED_OUT = "timed_out"

#: The gate's XCom key holding where its interactive Slack message is (``channel``, ``ts``).
SLACK_MESSAGE = "slack_message"

#: How long the gate's own work may take, before it parks to wait and after the answer comes.
APPROVAL_EXECUTION_TIMEOUT = timedelta(minutes=5)


class ReleaseApprovalOperator(ApprovalOperator):
    """
    Ask the environment's approvers to approve a release plan.

    :param environment: environment name (for messages).
    :param change: what is to be approved, e.g. "release 2.0.0" (templated).
    :param approvers: Airflow user ids or names allowed to approve.
    :param allow_self_approval: whether the user who triggered the run may approve it.
    :param slack_conn_id: Slack webhook connection for the request and the outcome.
    :param plan_task_id: the task whose XCom holds the plan shown (its ``digest`` is recorded).
    :param freeze_approvers: who may approve a plan that overrides a freeze.
    :param approval_required: whether plans that override no freeze need an approval.
    :param slack_channel: where to post the request with Approve and Reject buttons (through
        ``slack_api_conn_id``); None: the webhook message with a link only.
    :param slack_api_conn_id: the Slack API connection (bot token) for ``slack_channel``.
    """

    template_fields = (*ApprovalOperator.template_fields, "change")

    def __init__(
        self,
        *,
        environment: str,
        change: str,
        approvers: list[str],
        allow_self_approval: bool,
        slack_conn_id: str | None,
        plan_task_id: str | None = None,
        freeze_approvers: list[str] | None = None,
        approval_required: bool = True,
        slack_channel: str | None = None,
        slack_api_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            assigned_users=[{"id": approver, "name": approver} for approver in approvers],
            defaults=[ApprovalOperator.REJECT],
            fail_on_reject=False,
            retries=0,
            **kwargs,
        )
        self.environment = environment
        self.change = change
        self.approvers = approvers
        self.allow_self_approval = allow_self_approval
        self.slack_conn_id = slack_conn_id
        self.plan_task_id = plan_task_id
        self.freeze_approvers = list(freeze_approvers or [])
        self.approval_required = approval_required
        self.slack_channel = slack_channel
        self.slack_api_conn_id = slack_api_conn_id

    def freeze_override(self, context: Any) -> dict[str, Any] | None:
        """The freeze the shown plan overrides, if any (its ``freeze_override``)."""
        planned = context["ti"].xcom_pull(task_ids=self.plan_task_id) if self.plan_task_id else None
        return (planned or {}).get("freeze_override")

    def approvers_for(self, override: dict[str, Any] | None) -> tuple[list[str], str]:
        """Who may approve this plan, and the setting that lists them."""
        if override:
            return self.freeze_approvers, "freeze_approvers"
        return self.approvers, "approval.approvers"

    def execute(self, context: Any) -> Any:
        triggered_by = triggering_user(context["dag_run"])
        override = self.freeze_override(context)
        if not override and not self.approval_required:
            self.log.info("No approval needed: this plan overrides no freeze and approval.required is false")
            return {"approval": "not required"}
        approvers, setting = self.approvers_for(override)
        self.assigned_users = [{"id": approver, "name": approver} for approver in approvers]
        if not self.allow_self_approval:
            self.assigned_users = [user for user in self.assigned_users if user["id"] != triggered_by]
            if not self.assigned_users:
                raise AirflowFailException(
                    f"{triggered_by} triggered this release and may not approve it, and no other approver "
                    f"is configured ({setting}: {', '.join(approvers)})"
                )
        try:
            link = self.generate_link_to_ui_from_context(context=context)
        except ValueError:
            link = "(set [api] base_url to get a link)"
        context["ti"].xcom_push(key="request", value=self.shown_request(context))
        assigned = ", ".join(user["id"] for user in self.assigned_users or [])
        if override:
            message = render(
                "freeze_override_requested",
                environment=self.environment,
                change=self.change,
                freeze=f"{override['name']} ({override['reason']}, until {override['ends']})",
                why=override["override_reason"],
                approvers=assigned,
                link=link,
            )
        else:
            message = render(
                "approval_requested",
                environment=self.environment,
                change=self.change,
                approvers=assigned,
                link=link,
            )
        # The interactive message where there is one; the webhook's when there is none, or when
        # Slack's Web API did not take it (nobody would hear of the request otherwise).
        if not (self.slack_channel and self.slack_api_conn_id and self.post_interactive(context, link)):
            post(self.slack_conn_id, message)
        return super().execute(context)

    def post_interactive(self, context: Any, link: str) -> bool:
        """The request as a Slack message with Approve and Reject buttons; where it is, as XCom
        :data:`SLACK_MESSAGE`, for its update once decided. Returns whether Slack took it."""
        ti = context["ti"]
        ref = RequestRef(
            environment=self.environment,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=ti.map_index if ti.map_index is not None else -1,
            plan_digest=self.shown_request(context)["plan_digest"],
            clear_number=self.shown_request(context)["clear_number"],
        )
        where = post_request(
            self.slack_api_conn_id,
            self.slack_channel,
            subject=self.subject,
            summary=self.summary(context),
            approvers=[user["id"] for user in self.assigned_users or []],
            link=link,
            ref=ref,
        )
        if where is None:
            return False
        ti.xcom_push(key=SLACK_MESSAGE, value=where)
        return True

    def summary(self, context: Any) -> list[str]:
        planned = context["ti"].xcom_pull(task_ids=self.plan_task_id) if self.plan_task_id else None
        return plan_summary(planned)

    def decided(self, context: Any, decision: str) -> None:
        """Update the interactive message (if one was posted) with how the request was decided."""
        if not (self.slack_channel and self.slack_api_conn_id):
            return
        message = context["ti"].xcom_pull(task_ids=self.task_id, key=SLACK_MESSAGE)
        update_request(
            self.slack_api_conn_id,
            message,
            subject=self.subject,
            summary=self.summary(context),
            decision=decision,
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("timedout") or event.get("error_type") == "timeout":
            context["ti"].xcom_push(key=APPROVAL_TIMED_OUT, value=str(self.response_timeout))
            self.decided(context, f"Timed out: nobody answered within {self.response_timeout}; not approved.")
            post(
                self.slack_conn_id,
                render(
                    "approval_timed_out",
                    environment=self.environment,
                    change=self.change,
                    timeout=self.response_timeout,
                ),
            )
            raise AirflowFailException(f"Nobody approved {self.change} within {self.response_timeout}")
        responder = describe_user(event.get("responded_by_user"))
        override = self.freeze_override(context)
        refused = response_refusal(
            event.get("responded_by_user"),
            approvers=self.approvers_for(override)[0],
            triggered_by=triggering_user(context["dag_run"]),
            allow_self_approval=self.allow_self_approval,
        )
        if refused:
            self.decided(context, f"Not approved: the answer of {responder} does not count ({refused}).")
            raise AirflowFailException(f"The answer to {self.change} does not count: {refused}")
        # HITLOperator's validation only: ApprovalOperator would skip the downstream tasks on
        # "Reject" and end the run as a success; a rejected release must end failed instead.
        result = HITLOperator.execute_complete(self, context=context, event=event)
        self.hitl_summary_extra["approved"] = result["chosen_options"] == [self.APPROVE]
        when = _answered_at(event)
        if result["chosen_options"] != [self.APPROVE]:
            self.decided(context, f"Rejected by {responder} at {when}.")
            post(
                self.slack_conn_id,
                render("approval_rejected", environment=self.environment, change=self.change, who=responder),
            )
            raise AirflowFailException(f"{self.change} was rejected by {responder}")
        self.decided(context, f"Approved by {responder} at {when}.")
        if override:
            self.log.warning("%s approved by %s: %s", self.change, responder, describe_override(override))
            post(
                self.slack_conn_id,
                render(
                    "freeze_overridden",
                    environment=self.environment,
                    change=self.change,
                    who=responder,
                    freeze=override["name"],
                    why=override["override_reason"],
                ),
            )
        shown = context["ti"].xcom_pull(task_ids=self.task_id, key="request") or {}
        return {**result, **shown}

    def shown_request(self, context: Any) -> dict[str, Any]:
        """What this request shows and binds the answer to: the plan's digest, the run and how
        often it had been cleared (a later clear makes the answer stale)."""
        planned = context["ti"].xcom_pull(task_ids=self.plan_task_id) if self.plan_task_id else None
        dag_run = context["dag_run"]
        return {
            "plan_digest": (planned or {}).get("digest"),
            "run_id": dag_run.run_id,
            "clear_number": getattr(dag_run, "clear_number", None) or 0,
        }


def _answered_at(event: dict[str, Any]) -> str:
    """When the answer was given, as the message shows it (UTC, to the second)."""
    from datetime import UTC, datetime

    answered = event.get("responded_at")
    if isinstance(answered, str):
        try:
            answered = datetime.fromisoformat(answered.replace("Z", "+00:00"))
        except ValueError:
            return answered
    if not isinstance(answered, datetime):
        answered = datetime.now(UTC)
    return answered.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def plan_markdown(plan_task_id: str) -> str:
    """The template of the gate's body: the ``markdown`` the DAG's plan task returned."""
    return f"{{{{ ti.xcom_pull(task_ids='{plan_task_id}')['markdown'] }}}}"


def approval_gate(
    environment: Environment,
    *,
    subject: str,
    change: str,
    task_id: str,
    plan_task_id: str,
    freezable: bool = False,
) -> list[ReleaseApprovalOperator]:
    """The approval task of an environment's DAG, as a list to splice into ``chain(...)``: empty
    when the environment needs no approval. Its approvers, timeout and Slack come from the
    environment; the body is the ``markdown`` the DAG's plan task (``plan_task_id``) returned; both
    ids come from the DAG's ``TaskIds``. A ``freezable`` DAG (release, migrate) of an environment
    whose freezes can be overridden always has the gate: an override needs a freeze approver."""
    overridable = freezable and bool(environment.freezes and environment.freeze_approvers)
    if not environment.approval.required and not overridable:
        return []
    # Two separate limits, both explicit (default_args' 30-minute execution_timeout is not inherited):
    # response_timeout bounds the wait for an answer (the task is parked in awaiting_input, no
    # process runs; Airflow 3.3's scheduler enforces it); execution_timeout bounds only the task's
    # own work before parking and after the answer (writing the request, Slack, checking it).
    gate = ReleaseApprovalOperator(
        execution_timeout=APPROVAL_EXECUTION_TIMEOUT,
        task_id=task_id,
        subject=subject,
        body=plan_markdown(plan_task_id),
        environment=environment.name,
        change=change,
        approvers=environment.approval.approvers,
        allow_self_approval=environment.approval.allow_self_approval,
        slack_conn_id=environment.slack_conn_id,
        response_timeout=environment.approval.timeout,
        plan_task_id=plan_task_id,
        freeze_approvers=environment.freeze_approvers if overridable else [],
        approval_required=environment.approval.required,
        slack_channel=environment.approval.slack_channel,
        slack_api_conn_id=environment.approval.slack_api_conn_id,
    )
    return [gate]
