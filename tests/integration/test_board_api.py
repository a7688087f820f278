"""The Airlock board's API (``/airlock``) in Airflow's own api-server app, in process.

Airflow's FastAPI app is built with ``create_app`` (which mounts the plugin's app as the
api-server does), and every request carries a real JWT of the simple auth manager: one got by
logging in through ``POST /auth/token``, others signed by the same auth manager for users it
cannot list in this configuration (a viewer in a team, a user with no role). The data is real:
the audit trail, the health history and the backup written by Airlock's own writers into this
session's PostgreSQL database, the lock taken in Redis.

Two environments of their own, so that other tests' runs on ``sandbox`` change no figure here:
``board`` (the sandbox's shape; its DAGs belong to no team) and ``vault``, whose DAGs are in a
bundle owned by the team ``vault``, which the viewer is not in.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from airlock.core.health import CheckResult, Status
from airlock.hooks.lock import EnvironmentLock
from airlock.hooks.ops_store import AuditRecord, record_health_results, write_audit_record
from airlock.tasks.backup import take_backup, verify_backup
from tests.integration.releases import NEW, OLD, on_every_host
from tests.support import load_dag, run_dag, write_environment

ROUTES = [
    "/airlock/",
    "/airlock/api/environments",
    "/airlock/api/environments/board/releases",
    "/airlock/api/environments/board/health",
    "/airlock/api/environments/board/dora",
    "/airlock/metrics",
]
HOSTS = ("web-1", "web-2", "web-3")


def release(run_id: str, version: str, result: str, previous: str, action: str = "release") -> AuditRecord:
    return AuditRecord(
        dag_id=f"{action}_board",
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


def environment_like_sandbox(name: str):
    directory = Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"])
    document = yaml.safe_load((directory / "sandbox.yaml").read_text())
    return write_environment(directory / f"{name}.yaml", document)


@pytest.fixture(scope="module")
def board(environment, postgres_url):
    environment = environment_like_sandbox("board")
    yield environment
    (Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"]) / "board.yaml").unlink()


@pytest.fixture(scope="module")
def vault(environment):
    """A second environment whose DAGs belong to the team ``vault`` (a bundle of that team)."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team
    from airflow.utils.session import create_session

    environment_like_sandbox("vault")
    path = Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"]) / "vault.yaml"
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
def history(board, redis_client):
    """What Airlock's DAGs leave behind: releases, health runs, a verified backup, a held lock."""
    environment = board
    backup = take_backup(environment, kind="manual")
    verify_backup(environment, backup.name)
    write_audit_record(environment, release("board-1", "1.0.0", "succeeded", "0.9.0"))
    write_audit_record(environment, release("board-2", "1.1.0", "rolled_back", "1.0.0"))
    write_audit_record(environment, release("board-3", "1.1.1", "failed", "1.0.0"))
    write_audit_record(environment, release("board-4", "1.2.0", "succeeded", "1.0.0"))
    for run, disk in (("health-1", 40.0), ("health-2", 50.0), ("health-3", 60.0)):
        record_health_results(
            environment,
            dag_id="health_board",
            run_id=run,
            results=[
                result("app", "web-1", Status.OK, 12.0, "healthy in 12 ms, version 1.2.0"),
                result("app", "web-2", Status.CRITICAL, None, "GET http://web-2/health got no answer"),
                result("disk", "web-1:/", Status.OK, disk, f"{disk:.0f}% used"),
                result("replication", "airlock_demo_db", Status.SKIPPED, None, "no replica"),
            ],
        )
    lock = EnvironmentLock(environment="board", redis_conn_id="airlock_redis", ttl=timedelta(hours=1))
    lock.acquire(run_id="manual__board", purpose="release 1.3.0", triggered_by="rita", dag_id="release_board")
    yield backup.name
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


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(name, labels) -> value, read by prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(environment: str, **more: str) -> tuple:
    return tuple(sorted({"environment": environment, **more}.items()))


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


@pytest.mark.parametrize("route", [r for r in ROUTES if "/board/" in r or r == "/airlock/"])
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
    assert {"board", "vault"} <= set(environments)
    board = environments["board"]
    hosts = {host["name"]: host for host in board["hosts"]}
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
    assert board["lock"]["run_id"] == "manual__board"
    assert board["lock"]["purpose"] == "release 1.3.0"
    assert "token" not in board["lock"]
    last = board["last_release"]
    assert (last["version"], last["result"], last["approver"]) == ("1.2.0", "succeeded", "rita")
    assert last["url"] == "/dags/release_board/runs/board-4"
    assert board["backup"]["name"] == history
    assert 0 <= board["backup"]["age_seconds"] < 3600
    alerts = [(alert["check"], alert["target"], alert["status"]) for alert in board["alerts"]]
    assert alerts == [("app", "web-2", "critical")]


def test_a_viewer_sees_only_the_environments_whose_dags_they_may_read(api):
    viewer = signed("viewer", teams=["web"])
    names = [e["name"] for e in api.get("/airlock/api/environments", headers=viewer).json()["environments"]]
    assert "board" in names
    assert "vault" not in names
    hidden = api.get("/airlock/api/environments/vault/releases", headers=viewer)
    unknown = api.get("/airlock/api/environments/nowhere/releases", headers=viewer)
    # Nothing tells an environment the viewer may not read from one that does not exist.
    assert (hidden.status_code, unknown.status_code) == (404, 404)
    assert hidden.json()["detail"] == unknown.json()["detail"].replace("'nowhere'", "'vault'")
    assert "vault" not in unknown.json()["detail"]
    assert api.get("/airlock/api/environments/board/releases", headers=viewer).status_code == 200
    metrics = api.get("/airlock/metrics", headers=viewer).text
    assert 'environment="board"' in metrics
    assert 'environment="vault"' not in metrics


def test_releases_come_newest_first_up_to_the_limit(api, admin):
    response = api.get("/airlock/api/environments/board/releases", params={"limit": 2}, headers=admin)
    rows = response.json()["releases"]
    newest = [(row["run_id"], row["result"]) for row in rows]
    assert newest == [("board-4", "succeeded"), ("board-3", "failed")]
    assert rows[0]["approver"] == "rita"
    assert rows[0]["previous"] == dict.fromkeys(HOSTS, "1.0.0")


def test_health_history_since_a_time_with_strips_and_trends(api, admin):
    response = api.get("/airlock/api/environments/board/health", headers=admin)
    body = response.json()
    disk = [row["value"] for row in body["rows"] if row["check"] == "disk"]
    assert disk == [60.0, 50.0, 40.0]
    checks = {(c["check"], c["target"]): c for c in body["checks"]}
    assert checks[("disk", "web-1:/")]["strip"] == ["ok", "ok", "ok"]
    assert checks[("disk", "web-1:/")]["trend"] == "rising"
    assert checks[("app", "web-2")]["status"] == "critical"
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    empty = api.get("/airlock/api/environments/board/health", params={"since": later}, headers=admin)
    assert empty.json()["rows"] == []


def test_dora_figures_from_the_audit_trail(api, admin):
    body = api.get("/airlock/api/environments/board/dora", params={"days": 7}, headers=admin).json()
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
    response = api.get(f"/airlock/api/environments/board/{route}", params=query, headers=admin)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("route", ["releases", "health", "dora"])
def test_an_unknown_environment_answers_404_naming_it(api, admin, route):
    response = api.get(f"/airlock/api/environments/nowhere/{route}", headers=admin)
    assert response.status_code == 404
    assert "No environment 'nowhere' that you may read (yours: " in response.json()["detail"]


def test_metrics_in_the_prometheus_text_format(api, admin):
    response = api.get("/airlock/metrics", headers=admin)
    assert response.headers["content-type"].startswith("text/plain")
    metrics = samples(response.text)

    def value(name: str, **more: str) -> float:
        return metrics[(name, labels("board", **more))]

    assert value("airlock_health_status", target="web-2", check="app") == 2
    assert value("airlock_health_status", target="web-1", check="app") == 0
    assert (
        "airlock_health_status",
        labels("board", target="airlock_demo_db", check="replication"),
    ) not in metrics
    assert value("airlock_releases_total", outcome="succeeded") == 2
    assert value("airlock_releases_total", outcome="rolled_back") == 1
    assert value("airlock_lock_held") == 1
    assert 0 <= value("airlock_backup_age_seconds") < 3600
    assert 0 < value("airlock_last_release_duration_seconds") < 3600
    assert value("airlock_dora_change_failure_rate") == pytest.approx(1 / 3)
    assert value("airlock_dora_deployments_per_day") == pytest.approx(2 / 30)
    assert not [key for key in metrics if key[0] == "airlock_dora_lead_time_seconds"]


def test_the_airlock_view_is_in_the_navigation(api, admin):
    plugins = api.get("/api/v2/plugins", headers=admin).json()["plugins"]
    views = [view for plugin in plugins for view in plugin["external_views"]]
    assert {"name": "Airlock", "href": "/airlock/", "destination": "nav"}.items() <= next(
        view for view in views if view["name"] == "Airlock"
    ).items()


# --- after real runs of release_sandbox and health_sandbox --------------------------------------


def stop_app(environment, host) -> None:
    """The host's app stops (its own control script), as an operator or a crash would stop it."""
    root = environment.root_of(host)
    stopped = subprocess.run(
        [f"{root}/current/bin/demo-app", "--root", root, "stop"], capture_output=True, text=True
    )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_the_board_shows_what_a_real_release_and_health_run_left(api, admin, hosts_on_old):
    environment = hosts_on_old
    committed_at = datetime.now(UTC) - timedelta(hours=2)
    conf = {"version": NEW, "reason": "board", "committed_at": committed_at.isoformat()}
    run_id, states, _ = run_dag(load_dag("release_sandbox"), conf, answer="Approve")
    assert states["conclude"] == "success", states
    web_3 = environment.hosts[2]
    stop_app(environment, web_3)
    try:
        run_dag(load_dag("health_sandbox"), {})

        listed = api.get("/airlock/api/environments", headers=admin).json()["environments"]
        sandbox = next(e for e in listed if e["name"] == "sandbox")
        hosts = {host["name"]: host for host in sandbox["hosts"]}
        assert {name: host["version"]["version"] for name, host in hosts.items()} == dict.fromkeys(HOSTS, NEW)
        assert hosts["web-3"]["health"]["status"] == "critical"
        assert "app (web-3)" in hosts["web-3"]["health"]["checks"]
        assert ("app", "web-3", "critical") in [
            (a["check"], a["target"], a["status"]) for a in sandbox["alerts"]
        ]
        assert (sandbox["last_release"]["run_id"], sandbox["last_release"]["approver"]) == (run_id, "admin")

        [row] = api.get(
            "/airlock/api/environments/sandbox/releases", params={"limit": 1}, headers=admin
        ).json()["releases"]
        assert (row["run_id"], row["version"], row["result"]) == (run_id, NEW, "succeeded")
        assert datetime.fromisoformat(row["committed_at"]) == committed_at
        lead = api.get("/airlock/api/environments/sandbox/dora", params={"days": 1}, headers=admin).json()
        assert lead["lead_time"]["samples"] == 1
        assert 2 * 3600 <= lead["lead_time"]["seconds"] < 3 * 3600

        metrics = samples(api.get("/airlock/metrics", headers=admin).text)
        assert metrics[("airlock_health_status", labels("sandbox", target="web-3", check="app"))] == 2
    finally:
        on_every_host(environment, OLD)
