"""The Airlock board's API (``/airlock``) in Airflow's own api-server app, in process.

Airflow's FastAPI app is built with ``create_app`` (which mounts the plugin's app as the
api-server does), and every request carries a real JWT of the simple auth manager: one got by
logging in through ``POST /auth/token``, others signed by the same auth manager for users it
cannot list in this configuration (a viewer in a team, a user with no role). The data is real:
the audit trail, the health history and the backup written by Airlock's own writers into this
session's PostgreSQL database, the lock taken in Redis.

Two environments: ``sandbox`` (its DAGs belong to no team) and ``vault``, whose DAGs are in a
bundle owned by the team ``vault``, which the viewer is not in.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from airlock.core.health import CheckResult, Status
from airlock.hooks.lock import EnvironmentLock
from airlock.hooks.ops_store import AuditRecord, record_health_results, write_audit_record
from tests.support import write_environment

ROUTES = [
    "/airlock/",
    "/airlock/api/environments",
    "/airlock/api/environments/sandbox/releases",
    "/airlock/api/environments/sandbox/health",
    "/airlock/api/environments/sandbox/dora",
    "/airlock/metrics",
]
HOSTS = ("web-1", "web-2", "web-3")


def release(run_id: str, version: str, result: str, previous: str, action: str = "release") -> AuditRecord:
    return AuditRecord(
        dag_id=f"{action}_sandbox",
        run_id=run_id,
        action=action,
        version=version,
        previous=dict.fromkeys(HOSTS, previous),
        triggered_by="ci",
        approved_by="7",
        approved_by_name="rita",
        reason="board test",
        started_at=datetime.now(UTC) - timedelta(minutes=5),
        result=result,
    )


def result(check: str, target: str, status: Status, value: float | None, message: str) -> CheckResult:
    return CheckResult(check, target, status, value, None, message, 1.0)


@pytest.fixture(scope="module")
def vault(environment):
    """A second environment whose DAGs belong to the team ``vault`` (a bundle of that team)."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team
    from airflow.utils.session import create_session

    directory = Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"])
    document = yaml.safe_load((directory / "sandbox.yaml").read_text())
    path = directory / "vault.yaml"
    write_environment(path, document)
    with create_session() as session:
        team = Team(name="vault")
        bundle = DagBundleModel(name="vault-bundle")
        bundle.teams.append(team)
        session.add_all([team, bundle])
        session.flush()
        for dag_id in ("release_vault", "health_vault"):
            session.add(DagModel(dag_id=dag_id, bundle_name="vault-bundle", fileloc="/vault.py"))
    yield "vault"
    path.unlink()
    with create_session() as session:
        session.query(DagModel).filter(DagModel.dag_id.in_(["release_vault", "health_vault"])).delete()
        session.query(DagBundleModel).filter(DagBundleModel.name == "vault-bundle").delete()
        session.query(Team).filter(Team.name == "vault").delete()


@pytest.fixture(scope="module")
def history(environment, postgres_url, redis_client, verified_backup):
    """What Airlock's DAGs leave behind: releases, a rollback, health runs, a held lock."""
    write_audit_record(environment, release("board-1", "1.0.0", "succeeded", "0.9.0"))
    write_audit_record(environment, release("board-2", "1.1.0", "rolled_back", "1.0.0"))
    write_audit_record(environment, release("board-3", "1.1.1", "failed", "1.0.0"))
    write_audit_record(environment, release("board-4", "1.2.0", "succeeded", "1.0.0"))
    for run, disk in (("health-1", 40.0), ("health-2", 50.0), ("health-3", 60.0)):
        record_health_results(
            environment,
            dag_id="health_sandbox",
            run_id=run,
            results=[
                result("app", "web-1", Status.OK, 12.0, "healthy in 12 ms, version 1.2.0"),
                result("app", "web-2", Status.CRITICAL, None, "GET http://web-2/health got no answer"),
                result("disk", "web-1:/", Status.OK, disk, f"{disk:.0f}% used"),
                result("replication", "airlock_demo_db", Status.SKIPPED, None, "no replica"),
            ],
        )
    lock = EnvironmentLock(environment="sandbox", redis_conn_id="airlock_redis", ttl=timedelta(hours=1))
    lock.acquire(
        run_id="manual__board", purpose="release 1.3.0", triggered_by="rita", dag_id="release_sandbox"
    )
    yield verified_backup
    lock.release_for_run("manual__board")


@pytest.fixture(scope="module")
def api(vault, history):
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app("core"), base_url="http://127.0.0.1:8080") as client:
        yield client


def login(api, username: str = "admin") -> dict[str, str]:
    """A bearer header with the token ``POST /auth/token`` hands a configured user."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    password = json.loads(Path(SimpleAuthManager.get_generated_password_file()).read_text())[username]
    response = api.post("/auth/token", json={"username": username, "password": password})
    assert response.status_code in (200, 201), response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def signed(role: str | None, teams: list[str] | None = None) -> dict[str, str]:
    """A bearer header for a user the simple auth manager signs but this config does not list."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    user = SimpleAuthManagerUser(username=f"user-{role}", role=role, teams=teams)
    return {"Authorization": f"Bearer {get_auth_manager().generate_jwt(user)}"}


@pytest.fixture(scope="module")
def admin(api) -> dict[str, str]:
    return login(api)


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_refuses_a_request_without_credentials(api, route):
    response = api.get(route)
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_refuses_a_forged_token(api, route):
    response = api.get(route, headers={"Authorization": "Bearer not.a.token"})
    assert response.status_code == 403, response.text


@pytest.mark.parametrize("route", [r for r in ROUTES if "/sandbox/" in r or r == "/airlock/"])
def test_a_user_without_a_role_is_refused(api, route):
    assert api.get(route, headers=signed(None)).status_code == 403


def test_a_user_without_a_role_sees_no_environment(api):
    response = api.get("/airlock/api/environments", headers=signed(None))
    assert response.json() == {"environments": []}


def test_the_board_page_opens_with_the_ui_cookie(api, admin):
    token = admin["Authorization"].removeprefix("Bearer ")
    response = api.get("/airlock/", cookies={"_token": token})
    assert response.status_code == 200
    assert "<title>Airlock</title>" in response.text
    assert "api/environments" in response.text


def test_the_overview_shows_hosts_lock_last_release_backup_and_alerts(api, admin, history):
    listed = api.get("/airlock/api/environments", headers=admin).json()["environments"]
    environments = {environment["name"]: environment for environment in listed}
    assert {"sandbox", "vault"} <= set(environments)
    sandbox = environments["sandbox"]
    hosts = {host["name"]: host for host in sandbox["hosts"]}
    assert {name: host["version"]["version"] for name, host in hosts.items()} == dict.fromkeys(HOSTS, "1.2.0")
    assert hosts["web-1"]["version"]["source"] == "health"
    assert hosts["web-2"]["version"]["source"] == "audit"
    assert hosts["web-1"]["health"]["status"] == "ok"
    assert hosts["web-2"]["health"] == {
        "status": "critical",
        "checked_at": hosts["web-2"]["health"]["checked_at"],
        "checks": ["app (web-2)"],
    }
    assert hosts["web-3"]["health"] is None
    assert sandbox["lock"]["run_id"] == "manual__board"
    assert sandbox["lock"]["purpose"] == "release 1.3.0"
    assert "token" not in sandbox["lock"]
    last = sandbox["last_release"]
    assert (last["version"], last["result"], last["approver"]) == ("1.2.0", "succeeded", "rita")
    assert last["url"] == "/dags/release_sandbox/runs/board-4"
    assert sandbox["backup"]["name"] == history
    assert 0 <= sandbox["backup"]["age_seconds"] < 3600
    alerts = [(alert["check"], alert["target"], alert["status"]) for alert in sandbox["alerts"]]
    assert alerts == [("app", "web-2", "critical")]


def test_a_viewer_sees_only_the_environments_whose_dags_they_may_read(api):
    viewer = signed("viewer", teams=["web"])
    names = [e["name"] for e in api.get("/airlock/api/environments", headers=viewer).json()["environments"]]
    assert "sandbox" in names
    assert "vault" not in names
    assert api.get("/airlock/api/environments/vault/releases", headers=viewer).status_code == 403
    assert api.get("/airlock/api/environments/sandbox/releases", headers=viewer).status_code == 200
    metrics = api.get("/airlock/metrics", headers=viewer).text
    assert 'environment="sandbox"' in metrics
    assert 'environment="vault"' not in metrics


def test_releases_come_newest_first_up_to_the_limit(api, admin):
    response = api.get("/airlock/api/environments/sandbox/releases", params={"limit": 2}, headers=admin)
    rows = response.json()["releases"]
    newest = [(row["run_id"], row["result"]) for row in rows]
    assert newest == [("board-4", "succeeded"), ("board-3", "failed")]
    assert rows[0]["approver"] == "rita"
    assert rows[0]["previous"] == dict.fromkeys(HOSTS, "1.0.0")


def test_health_history_since_a_time_with_strips_and_trends(api, admin):
    response = api.get("/airlock/api/environments/sandbox/health", headers=admin)
    body = response.json()
    disk = [row["value"] for row in body["rows"] if row["check"] == "disk"]
    assert disk == [60.0, 50.0, 40.0]
    checks = {(c["check"], c["target"]): c for c in body["checks"]}
    assert checks[("disk", "web-1:/")]["strip"] == ["ok", "ok", "ok"]
    assert checks[("disk", "web-1:/")]["trend"] == "rising"
    assert checks[("app", "web-2")]["status"] == "critical"
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    empty = api.get("/airlock/api/environments/sandbox/health", params={"since": later}, headers=admin)
    assert empty.json()["rows"] == []


def test_dora_figures_from_the_audit_trail(api, admin):
    body = api.get("/airlock/api/environments/sandbox/dora", params={"days": 7}, headers=admin).json()
    assert body["days"] == 7
    # board-1 and board-4 succeeded, board-2 was rolled back; board-3 switched no host.
    assert body["deployment_frequency"] == {"deployments": 3, "succeeded": 2, "per_day": round(2 / 7, 4)}
    assert body["change_failure_rate"]["rate"] == round(1 / 3, 4)
    assert body["recovery_time"]["recovered"] == 1
    assert body["recovery_time"]["seconds"] > 0
    assert body["lead_time"] == {"seconds": None, "samples": 0, "text": "unknown"}


@pytest.mark.parametrize(
    ("route", "query"),
    [
        pytest.param("releases", {"limit": 0}, id="limit-zero"),
        pytest.param("releases", {"limit": "many"}, id="limit-not-a-number"),
        pytest.param("health", {"since": "yesterday"}, id="since-not-iso8601"),
        pytest.param("dora", {"days": 0}, id="days-zero"),
        pytest.param("dora", {"days": 366}, id="days-over-a-year"),
    ],
)
def test_bad_query_values_answer_422(api, admin, route, query):
    response = api.get(f"/airlock/api/environments/sandbox/{route}", params=query, headers=admin)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("route", ["releases", "health", "dora"])
def test_an_unknown_environment_answers_404_naming_it(api, admin, route):
    response = api.get(f"/airlock/api/environments/nowhere/{route}", headers=admin)
    assert response.status_code == 404
    assert "No environment 'nowhere' is configured" in response.json()["detail"]


def test_metrics_in_the_prometheus_text_format(api, admin):
    response = api.get("/airlock/metrics", headers=admin)
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"environment": "sandbox", **labels}.items())))]

    assert value("airlock_health_status", target="web-2", check="app") == 2
    assert value("airlock_health_status", target="web-1", check="app") == 0
    assert ("airlock_health_status", (("check", "replication"),)) not in samples
    assert value("airlock_releases_total", outcome="succeeded") == 2
    assert value("airlock_releases_total", outcome="rolled_back") == 1
    assert value("airlock_lock_held") == 1
    assert 0 <= value("airlock_backup_age_seconds") < 3600
    assert 0 < value("airlock_last_release_duration_seconds") < 3600
    assert value("airlock_dora_change_failure_rate") == pytest.approx(1 / 3)
    assert value("airlock_dora_deployments_per_day") == pytest.approx(2 / 30)
    assert not [key for key in samples if key[0] == "airlock_dora_lead_time_seconds"]


def test_the_airlock_view_is_in_the_navigation(api, admin):
    plugins = api.get("/api/v2/plugins", headers=admin).json()["plugins"]
    views = [view for plugin in plugins for view in plugin["external_views"]]
    assert {"name": "Airlock", "href": "/airlock/", "destination": "nav"}.items() <= next(
        view for view in views if view["name"] == "Airlock"
    ).items()
