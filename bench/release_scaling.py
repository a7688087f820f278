"""Release wall time: 3 vs 12 hosts in 3 waves, and the DAG against a plain sequential SSH script.

Starts a real Airlock (api-server, scheduler with LocalExecutor, dag-processor, triggerer) with
N sandbox sshd hosts, releases 2.0.0 through the REST API (approval off for timing) and reads
the time from the first deploy's start to the last smoke test's end from the API. Then, on the
same 12 hosts, a plain script does the same per-host steps one host after another with the
system's ``scp``/``ssh`` (upload, unpack, switch ``current``, reload, wait for health/version).

Prints both ratios. Goals: 12 hosts / 3 hosts <= 1.3 (time grows with waves, not hosts);
DAG / sequential script below 1.0 at 12 hosts.

    PYTHONPATH=plugins:tools .venv/bin/python bench/release_scaling.py
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from airlock_dev.stack import AirlockStack, disposable_stack

WAVES = [1, "50%", "100%"]
REDIS_DB = 12


def api(stack: AirlockStack, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{stack.api_url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {stack.token()}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def release_seconds(stack: AirlockStack, version: str) -> float:
    run = api(
        stack,
        "POST",
        "/api/v2/dags/release_demo/dagRuns",
        {"logical_date": None, "conf": {"version": version}},
    )
    path = f"/api/v2/dags/release_demo/dagRuns/{run['dag_run_id']}"
    deadline = time.monotonic() + 900
    while api(stack, "GET", path)["state"] not in ("success", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError("release did not finish in 15 minutes")
        time.sleep(2)
    tis = api(stack, "GET", f"{path}/taskInstances?limit=200")["task_instances"]
    if api(stack, "GET", path)["state"] != "success":
        failed = [
            f"{ti['task_id']}[{ti['rendered_map_index'] or ti['map_index']}]"
            for ti in tis
            if ti["state"] == "failed"
        ]
        raise RuntimeError(f"release failed at {', '.join(failed)}; Slack said: {stack.slack.texts()[-3:]}")
    waves = [ti for ti in tis if ti["task_id"].startswith("wave_")]
    start = min(datetime.fromisoformat(ti["start_date"]) for ti in waves)
    end = max(datetime.fromisoformat(ti["end_date"]) for ti in waves)
    return (end - start).total_seconds()


def sequential_script_seconds(stack: AirlockStack, version: str) -> float:
    """The same per-host steps, one host after another, with plain scp/ssh/curl."""
    environment = stack.environment()
    artifact = Path(environment.deploy.artifact_url_for(version).removeprefix("file://"))
    key = str(stack.sandbox.client_key)
    started = time.monotonic()
    for host in environment.hosts:
        root = environment.root_of(host)
        options = [
            "-i",
            key,
            "-o",
            f"UserKnownHostsFile={environment.ssh.known_hosts}",
            "-o",
            "BatchMode=yes",
        ]
        target = f"root@{host.address}"
        incoming = f"{root}/releases/.script-{version}.tar.gz"
        subprocess.run(
            ["scp", "-q", "-P", str(host.ssh_port), *options, str(artifact), f"{target}:{incoming}"],
            check=True,
        )
        release = f"{root}/releases/{version}-script"
        pending = f"{root}/.current-script"
        remote = " && ".join(
            [
                f"rm -rf {shlex.quote(release)}",
                f"mkdir -p {shlex.quote(release)}",
                f"tar -xzf {shlex.quote(incoming)} -C {shlex.quote(release)}",
                f"ln -sfn ../../shared {shlex.quote(release + '/shared')}",
                f"ln -sfn {shlex.quote(f'releases/{version}-script')} {shlex.quote(pending)}",
                f"mv -Tf {shlex.quote(pending)} {shlex.quote(root + '/current')}",
                f"{shlex.quote(root + '/current/bin/demo-app')} --root {shlex.quote(root)} reload",
            ]
        )
        subprocess.run(
            ["ssh", "-p", str(host.ssh_port), *options, target, remote], check=True, capture_output=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(host.app_url + "/version", timeout=5) as response:
                    if json.loads(response.read())["version"] == version:
                        break
            except OSError:
                pass
            time.sleep(0.2)
    return time.monotonic() - started


def run(hosts: int, with_script: bool) -> tuple[float, float | None]:
    overrides = {"rollout": {"waves": WAVES, "max_parallel_per_wave": 16}, "approval": {"required": False}}
    with disposable_stack(
        hosts=hosts, redis_db=REDIS_DB, prefix="airlock-bench-", overrides=overrides
    ) as stack:
        dag_seconds = release_seconds(stack, "2.0.0")
        script_seconds = sequential_script_seconds(stack, "1.1.0") if with_script else None
    return dag_seconds, script_seconds


def main() -> None:
    small, _ = run(3, with_script=False)
    large, script = run(12, with_script=True)
    print(f"release in 3 waves:  3 hosts {small:.1f}s, 12 hosts {large:.1f}s")
    print(f"ratio 12/3 hosts: {large / small:.2f} (goal <= 1.3)")
    print(f"sequential scp/ssh script, 12 hosts: {script:.1f}s")
    print(f"ratio DAG/script at 12 hosts: {large / script:.2f} (below 1.0: waves in parallel win)")


if __name__ == "__main__":
    main()
