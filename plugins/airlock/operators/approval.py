"""The approval gate: Airflow's human-in-the-loop ``ApprovalOperator`` with Airlock's rules.

- Only the environment's approvers are assigned, so only they can answer (Airflow checks the
  assignment when the response is submitted through the UI or the REST API).
- Unless the environment allows it, the person who triggered the run is removed from the
  assignees and, should they still answer, their answer is refused.
- No answer within the environment's timeout counts as a rejection (the default option).
- Approved: the run goes on. Rejected or timed out: the task fails, nothing downstream runs
  except the teardown, and Slack says who rejected or that time ran out.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment
from airlock.core.outcome import triggering_user, user_id
from airlock.notifications.slack import post, render

#: How long the gate's own work may take, before it parks to wait and after the answer comes.
APPROVAL_EXECUTION_TIMEOUT = timedelta(minutes=5)


class ReleaseApprovalOperator(ApprovalOperator):
    """
    Ask the environment's approvers to approve a release plan.

    :param environment: environment name (for messages).
    :param change: what is to be approved, e.g. "release 2.0.0" (templated).
    :param approvers: Airflow user ids allowed to approve.
    :param allow_self_approval: whether the user who triggered the run may approve it.
    :param slack_conn_id: Slack webhook connection for the request and the outcome.
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

    def execute(self, context: Any) -> Any:
        triggered_by = triggering_user(context["dag_run"])
        if not self.allow_self_approval:
            self.assigned_users = [user for user in self.assigned_users or [] if user["id"] != triggered_by]
            if not self.assigned_users:
                raise AirflowFailException(
                    f"{triggered_by} triggered this release and may not approve it, and no other approver "
                    f"is configured (approval.approvers: {', '.join(self.approvers)})"
                )
        try:
            link = self.generate_link_to_ui_from_context(context=context)
        except ValueError:
            link = "(set [api] base_url to get a link)"
        post(
            self.slack_conn_id,
            render(
                "approval_requested",
                environment=self.environment,
                change=self.change,
                approvers=", ".join(user["id"] for user in self.assigned_users or []),
                link=link,
            ),
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("timedout") or event.get("error_type") == "timeout":
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
        responder = user_id(event.get("responded_by_user"))
        if not self.allow_self_approval and responder and responder == triggering_user(context["dag_run"]):
            raise AirflowFailException(f"{responder} may not approve a change they triggered")
        # HITLOperator's validation only: ApprovalOperator would skip the downstream tasks on
        # "Reject" and end the run as a success; a rejected release must end failed instead.
        result = HITLOperator.execute_complete(self, context=context, event=event)
        self.hitl_summary_extra["approved"] = result["chosen_options"] == [self.APPROVE]
        if result["chosen_options"] != [self.APPROVE]:
            post(
                self.slack_conn_id,
                render("approval_rejected", environment=self.environment, change=self.change, who=responder),
            )
            raise AirflowFailException(f"{self.change} was rejected by {responder}")
        return result


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
) -> list[ReleaseApprovalOperator]:
    """The approval task of an environment's DAG, as a list to splice into ``chain(...)``: empty
    when the environment needs no approval. Its approvers, timeout and Slack come from the
    environment; the body is the ``markdown`` the DAG's plan task (``plan_task_id``) returned; both
    ids come from the DAG's ``TaskIds``."""
    if not environment.approval.required:
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
    )
    return [gate]
