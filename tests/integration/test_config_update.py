"""``config_update_<env>`` on real sshd hosts, the real demo app, PostgreSQL, Redis and Slack.

Each test writes the set it ships into the sandbox environment's ``config.source`` and runs the DAG
with ``dag.test()`` (the approval answered as the REST API answers it), then checks what a user
would: which set each host's app reports and reads from ``shared/config``, the audit row, Slack.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from airlock.core.config_sets import ConfigSet
from airlock.hooks.config_sets import host_config
from tests.integration.releases import audit_rows, plan_of, served_versions
from tests.support import PROJECT, load_dag, run_dag

DEMO_CONFIG = PROJECT / "include" / "demo_config"


@pytest.fixture
def source(hosts_on_old) -> Path:
    """The sandbox's config source, holding the demo's set; every host without a config set."""
    environment = hosts_on_old
    directory = Path(environment.config.source)
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(DEMO_CONFIG, directory)
    for host in environment.hosts:
        with host_config(environment, host) as remote:
            remote.hook.run(["rm", "-rf", remote.link, remote.sets])
    _reload(environment)
    return directory


def _reload(environment) -> None:
    from airlock.hooks.hosts import HostLayout, wait_until_serving

    for host in environment.hosts:
        with host_config(environment, host) as remote:
            layout = HostLayout(remote.hook, environment.root_of(host))
            version = layout.current_version()
            layout.activate(environment.deploy.activate_command, version)
        wait_until_serving(environment, host, version, environment.deploy.health_timeout)


def reported(environment) -> dict[str, str | None]:
    """The config set each host's app says it runs with (``GET /version``'s ``config``)."""
    import json
    import urllib.request

    found = {}
    for host in environment.hosts:
        with urllib.request.urlopen(host.app_url + "/version", timeout=5) as response:
            found[host.name] = json.loads(response.read())["config"]
    return found


def live_file(environment, host, path: str) -> bytes:
    with host_config(environment, host) as remote, remote.hook.read_file(f"{remote.link}/{path}") as handle:
        return handle.read()


@pytest.fixture
def dag(environment, sandbox):
    return load_dag(f"config_update_{environment.name}")


def current_set(directory: Path) -> ConfigSet:
    return ConfigSet.of(
        {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    )


def test_an_approved_update_puts_the_set_live_on_every_host_and_audits_it(
    dag, source, hosts_on_old, slack_messages, ops_url
):
    environment = hosts_on_old
    expected = current_set(source)

    run_id, states, answered = run_dag(
        dag, {"reason": "turn on dark mode"}, answer="Approve", as_user="admin"
    )

    assert answered["ok"] is True, answered
    assert states["conclude"] == "success", states
    assert reported(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], expected.id)
    for host in environment.hosts:
        assert live_file(environment, host, "app.conf") == (source / "app.conf").read_bytes()
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], "1.0.0")
    [(action, version, result, previous, approver, reason)] = audit_rows(
        ops_url, run_id, "action", "version", "result", "previous", "approved_by", "reason"
    )
    assert (action, version, result, approver, reason) == (
        "config_update",
        expected.id,
        "succeeded",
        "admin",
        "turn on dark mode",
    )
    assert previous == dict.fromkeys(["web-1", "web-2", "web-3"], None)
    assert any(f"configuration set {expected.id} is live" in text for text in slack_messages.texts())

    # Running it again changes nothing: every host is on the set, the plan says so and stops.
    again, states, _ = run_dag(dag, {}, answer="Approve", as_user="admin")
    assert states["proceed"] == "success", states
    assert states.get("approve") == "skipped", states
    assert audit_rows(ops_url, again, "result") == [("planned",)]


def test_the_plan_shows_the_change_file_by_file_with_secrets_masked(dag, source, hosts_on_old):
    environment = hosts_on_old
    run_dag(dag, {}, answer="Approve", as_user="admin")
    (source / "app.conf").write_text(
        "greeting = hello from Airlock, again\nitems_page_size = 20\napi_token = rotated-secret-value\n"
    )
    (source / "features.yaml").unlink()
    (source / "limits.conf").write_text("max_upload_mb = 5\n")

    run_id, states, _ = run_dag(dag, {"dry_run": True})

    assert states["proceed"] == "success", states
    assert states.get("wave_1.update") == "skipped", states
    markdown = plan_of(dag.dag_id, run_id)["markdown"]
    assert "`app.conf`: changed" in markdown
    assert "+greeting = hello from Airlock, again" in markdown
    assert "`features.yaml`: removed" in markdown
    assert "`limits.conf`: added" in markdown
    assert "rotated-secret-value" not in markdown
    assert "demo-not-a-real-token" not in markdown
    assert "********" in markdown
    first = ConfigSet.of({p.name: p.read_bytes() for p in DEMO_CONFIG.iterdir()}).id
    assert reported(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], first)  # a dry run


def test_a_set_that_breaks_the_app_is_rolled_back_on_the_hosts_it_reached(
    dag, source, hosts_on_old, slack_messages, ops_url
):
    environment = hosts_on_old
    run_dag(dag, {}, answer="Approve", as_user="admin")
    good = current_set(source)
    (source / "BROKEN").write_text("this configuration makes the demo app fail its health check\n")
    bad = current_set(source)

    run_id, states, _ = run_dag(dag, {"reason": "a bad flag"}, answer="Approve", as_user="admin")

    assert states["wave_1.update"] == "failed", states
    assert states["wave_2.update"] in ("upstream_failed", "skipped"), states
    assert states["rollback"] == "success", states
    assert states["conclude"] == "failed", states
    # The first wave's host was switched and put back; the others were never touched.
    assert reported(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], good.id)
    for host in environment.hosts:
        assert live_file(environment, host, "app.conf") == (DEMO_CONFIG / "app.conf").read_bytes()
    [(version, result, detail)] = audit_rows(ops_url, run_id, "version", "result", "detail")
    assert (version, result) == (bad.id, "rolled_back")
    assert "web-1" in detail
    assert any("rolled_back" in text and bad.id in text for text in slack_messages.texts()), (
        slack_messages.texts()
    )


def test_a_source_that_changes_after_approval_is_refused_before_any_host_changes(dag, source, hosts_on_old):
    environment = hosts_on_old
    before = reported(environment)

    def approve_then_change(dag_id, run_id, task_id):
        from tests.support import respond_to_approval

        (source / "app.conf").write_text("greeting = slipped in after approval\n")
        respond_to_approval(dag_id, run_id, task_id, "Approve", "admin")

    _, states, _ = run_dag(dag, {}, answer=approve_then_change)

    assert states["wave_1.update"] == "failed", states
    assert reported(environment) == before


def test_a_configuration_laid_out_before_airlock_is_kept_and_put_back_on_rollback(
    dag, source, hosts_on_old, ops_url
):
    environment = hosts_on_old
    web_1 = environment.hosts[0]
    with host_config(environment, web_1) as remote:
        link = shlex.quote(remote.link)
        remote.hook.run_script(f"mkdir -p {link} && echo 'legacy = yes' > {link}/legacy.conf")
    (source / "BROKEN").write_text("this configuration makes the demo app fail its health check\n")

    run_id, states, _ = run_dag(dag, {}, answer="Approve", as_user="admin")

    assert states["wave_1.update"] == "failed", states
    assert states["rollback"] == "success", states
    [(previous, result)] = audit_rows(ops_url, run_id, "previous", "result")
    assert previous["web-1"] == "unmanaged"
    assert result == "rolled_back"
    # web-1 reads its own configuration again, from where Airlock kept it, and serves.
    assert live_file(environment, web_1, "legacy.conf") == b"legacy = yes\n"
    with host_config(environment, web_1) as remote:
        assert remote.hook.run(["readlink", remote.link]).stdout.strip() == "config-sets/pre-airlock"
    assert served_versions(environment)["web-1"] == "1.0.0"
    plan = plan_of(dag.dag_id, run_id)["markdown"]
    assert "`legacy.conf`: removed" in plan

    # The next update plans against the kept directory and goes out; web-1's old files are gone
    # from its live configuration, still kept in config-sets/pre-airlock.
    (source / "BROKEN").unlink()
    fixed, states, _ = run_dag(dag, {}, answer="Approve", as_user="admin")
    assert states["conclude"] == "success", states
    assert "`legacy.conf`: removed" in plan_of(dag.dag_id, fixed)["markdown"]
    assert set(reported(environment).values()) == {current_set(source).id}
