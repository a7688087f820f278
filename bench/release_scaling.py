"""Release wall time over 3, 12 and 48 hosts in 3 waves, and the DAG against a sequential script.

Starts a real Airlock (api-server, scheduler with LocalExecutor, dag-processor, triggerer) with
N sandbox sshd hosts (each one sshd plus the demo app), releases 2.0.0 through the REST API
(approval off for timing; the other DAGs paused and their runs ended first, so the scheduled
health checks do not share the CPU) and reads from the API the time from the first deploy's
start to the last smoke test's end: the wave time. Then, on the same 12 hosts, a plain script does the same
per-host steps one host after another with the system's ``scp``/``ssh`` (upload, unpack,
switch ``current``, reload, wait for health/version).

Prints the wave times, seconds and CPU-seconds per host (CPU: the whole machine's, from
``/proc/stat``, during the waves: run it on a quiet machine), how close the waves came to their
floor (each wave's slowest host deploy, from the deploy reports), the sandbox hosts' memory,
each wave's task timeline with ``--timeline``, and two machine-readable lines:

    ratio 48/3 hosts: <x.xx>              goal <= 1.3 (time grows with waves, not hosts)
    ratio DAG/script at 12 hosts: <x.xx>  goal <= 0.5

    PYTHONPATH=plugins:tools .venv/bin/python bench/release_scaling.py [--timeline]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# This process only provisions the sandbox hosts and reads the API: its SSH commands would
# drown the results (the stack's own processes log at INFO, set in their environment).
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")

from airlock_dev.stack import AirlockStack, disposable_stack

WAVES = [1, "50%", "100%"]
REDIS_DB = 12
#: Hosts deployed at once within a wave (the bench's "forks"): a 48-host wave 3 has 24 hosts.
PARALLEL = 24


def cpu_seconds() -> float:
    """The whole machine's CPU time so far (user + nice + system, all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


def api(stack: AirlockStack, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{stack.api_url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {stack.token()}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def quiet(stack: AirlockStack) -> None:
    """Pause every DAG but the release and wait until none of their tasks is queued or running:
    the scheduled health checks, log cleanup and maintenance would otherwise share the 2 cores
    with the waves (a paused DAG's run schedules no further task)."""
    for dag in api(stack, "GET", "/api/v2/dags?limit=100")["dags"]:
        if dag["dag_id"] != "release_demo" and not dag["is_paused"]:
            api(stack, "PATCH", f"/api/v2/dags/{dag['dag_id']}", {"is_paused": True})
    busy = "/api/v2/dags/~/dagRuns/~/taskInstances?state=running&state=queued&limit=1"
    deadline = time.monotonic() + 300
    while api(stack, "GET", busy)["total_entries"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the scheduled DAGs' tasks did not end in 5 minutes")
        time.sleep(1)


def release_seconds(stack: AirlockStack, version: str) -> float:
    return release_timing(stack, version)[0]


def slowest_hosts(stack: AirlockStack, tis: list[dict]) -> dict[str, float]:
    """Each wave's slowest host deploy in seconds (from the deploy tasks' XCom ``hosts``)."""
    slowest: dict[str, float] = {}
    for ti in tis:
        if not ti["task_id"].endswith(".deploy"):
            continue
        path = (
            f"/api/v2/dags/release_demo/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}"
            f"/xcomEntries/hosts?map_index={ti['map_index']}"
        )
        report = api(stack, "GET", path)["value"]
        report = json.loads(report) if isinstance(report, str) else report
        wave = ti["task_id"].split(".")[0]
        slowest[wave] = max([slowest.get(wave, 0.0), *(line["seconds"] for line in report)])
    return dict(sorted(slowest.items(), key=lambda item: int(item[0].removeprefix("wave_"))))


def sandbox_memory_mb(stack: AirlockStack) -> float:
    """What the sandbox hosts' processes hold (sshd, demo-app master and worker), in MB of PSS."""
    total_kb = 0
    home = str(stack.home)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if home not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            rollup = (entry / "smaps_rollup").read_text()
        except OSError:  # gone since the listing, or not ours to read
            continue
        total_kb += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return total_kb / 1024


def release_timing(stack: AirlockStack, version: str) -> tuple[float, list[dict]]:
    """The release's wave time (first deploy's start to last smoke test's end) and its tasks."""
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
    return (end - start).total_seconds(), tis


def timeline(tis: list[dict]) -> str:
    """Each wave task's queued, start and end, in seconds after the first wave task was queued."""
    waves = sorted((ti for ti in tis if ti["task_id"].startswith("wave_")), key=lambda ti: ti["start_date"])
    zero = min(datetime.fromisoformat(ti["queued_when"] or ti["start_date"]) for ti in waves)

    def at(value: str | None) -> str:
        return f"{(datetime.fromisoformat(value) - zero).total_seconds():6.2f}" if value else "     -"

    lines = [f"  {'task':28} {'queued':>6} {'start':>6} {'end':>6}"]
    for ti in waves:
        index = ti["rendered_map_index"] or ti["map_index"]
        name = ti["task_id"] + (f"[{index}]" if ti["map_index"] >= 0 else "")
        lines.append(f"  {name[:28]:28} {at(ti['queued_when'])} {at(ti['start_date'])} {at(ti['end_date'])}")
    return "\n".join(lines)


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


@dataclass(frozen=True)
class Measured:
    hosts: int
    seconds: float
    cpu: float
    tis: list[dict]
    #: Each wave's slowest host deploy (seconds): their sum is the floor of the wave time.
    slowest: dict[str, float]
    memory_mb: float
    script_seconds: float | None = None
    script_cpu: float | None = None

    def per_host(self) -> str:
        return f"{self.seconds / self.hosts:.2f} s and {self.cpu / self.hosts:.2f} CPU-s per host"

    def limit(self) -> str:
        """How close the waves came to their floor: the slowest hosts' deploys, one per wave."""
        floor = sum(self.slowest.values())
        return (
            f"slowest host per wave {' + '.join(f'{s:.1f}' for s in self.slowest.values())} = "
            f"{floor:.1f} s; the rest ({self.seconds - floor:.1f} s) is smoke tests and Airflow's gates"
        )


def run(hosts: int, with_script: bool) -> Measured:
    overrides = {
        "rollout": {"waves": WAVES, "max_parallel_per_wave": PARALLEL},
        "approval": {"required": False},
    }
    with disposable_stack(
        hosts=hosts, redis_db=REDIS_DB, prefix="airlock-bench-", overrides=overrides
    ) as stack:
        quiet(stack)
        cpu_before = cpu_seconds()
        seconds, tis = release_timing(stack, "2.0.0")
        # The run's CPU up to the end of its waves: conclude and unlock come after (prorated).
        cpu = cpu_seconds() - cpu_before
        slowest = slowest_hosts(stack, tis)
        memory = sandbox_memory_mb(stack)
        run_start = min(datetime.fromisoformat(ti["start_date"]) for ti in tis if ti["start_date"])
        run_end = max(datetime.fromisoformat(ti["end_date"]) for ti in tis if ti["end_date"])
        wave_share = seconds / max((run_end - run_start).total_seconds(), seconds)
        if not with_script:
            return Measured(hosts, seconds, cpu * wave_share, tis, slowest, memory)
        cpu_before = cpu_seconds()
        script = sequential_script_seconds(stack, "1.1.0")
        script_cpu = cpu_seconds() - cpu_before
    return Measured(hosts, seconds, cpu * wave_share, tis, slowest, memory, script, script_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--timeline", action="store_true", help="print each wave task's timeline")
    arguments = parser.parse_args()
    results = [run(3, with_script=False), run(12, with_script=True), run(48, with_script=False)]
    for measured in results:
        waves = f"{measured.seconds:5.1f} s of waves"
        print(f"{measured.hosts:2} hosts in 3 waves: {waves}, {measured.per_host()}")
        print(f"   {measured.limit()}")
        print(
            f"   sandbox hosts' memory: {measured.memory_mb:.0f} MB "
            f"({measured.memory_mb / measured.hosts:.1f} MB per host: sshd, demo-app master and worker)"
        )
        if arguments.timeline:
            print(timeline(measured.tis))
    small, twelve, large = results
    assert twelve.script_seconds is not None
    assert twelve.script_cpu is not None
    print(
        f"sequential scp/ssh script, 12 hosts: {twelve.script_seconds:.1f} s, "
        f"{twelve.script_seconds / 12:.2f} s and {twelve.script_cpu / 12:.2f} CPU-s per host"
    )
    print(f"ratio 48/3 hosts: {large.seconds / small.seconds:.2f}")
    print(f"ratio DAG/script at 12 hosts: {twelve.seconds / twelve.script_seconds:.2f}")


if __name__ == "__main__":
    main()
