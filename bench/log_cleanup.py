"""Log cleanup of 200,000 files on a sandbox host against a bare ``find -mtime +N -delete``.

Starts one real sshd sandbox host and lays out two identical trees in its log directory:
150,000 compressed logs older than ``delete_after_days`` (both tools delete them) and 50,000
logs younger than ``compress_after_days`` (both leave them), in 200 directories. One tree is
cleaned by Airlock's cleanup (``clean_host_logs``: one SSH session, the host-side script with
its pattern, age, open-file and symlink rules and its report), the other by
``find <dir> -mtime +7 -delete`` over one SSH session too. Two rounds, alternating which runs
first; the trees are rebuilt (and synced to disk) for every round.

Prints both times and the ratio. Goal: Airlock / find <= 1.2.

    PYTHONPATH=plugins:tools .venv/bin/python bench/log_cleanup.py
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from airlock.config import PROJECT_ROOT, LogSettings, load_environment
from airlock.hooks.hosts import host_hook
from airlock.tasks.log_cleanup import clean_host_logs
from airlock_dev.hosts import Sandbox, free_port

FILES, OLD_SHARE, DIRECTORIES = 200_000, 0.75, 200
DAY = 86400


def build_tree(directory: Path) -> None:
    now = time.time()
    old, young = now - 10 * DAY, now - DAY / 2
    per_directory = FILES // DIRECTORIES
    for number in range(DIRECTORIES):
        folder = directory / f"app-{number:03d}"
        folder.mkdir(parents=True)
        for index in range(per_directory):
            is_old = index < per_directory * OLD_SHARE
            path = folder / (f"app.{index}.log.gz" if is_old else f"app.{index}.log")
            path.write_bytes(b"x" * 64)
            stamp = old if is_old else young
            os.utime(path, (stamp, stamp))


def remaining(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def main() -> None:
    workspace = Path(tempfile.mkdtemp(prefix="airlock-bench-logs-"))
    root = workspace / "host" / "srv" / "app"
    document = yaml.safe_load((PROJECT_ROOT / "include" / "environments" / "demo.yaml").read_text())
    document["hosts"] = [
        {
            "name": "web-1",
            "address": "127.0.0.1",
            "ssh_port": free_port(),
            "app_url": "http://127.0.0.1:1",
            "root": str(root),
        }
    ]
    document["ssh"]["known_hosts"] = str(workspace / "known_hosts")
    document["rollout"] = {"waves": ["100%"]}
    document["logs"] = {
        "directories": ["{root}/shared/log/airlock"],
        "compress_after_days": 1,
        "delete_after_days": 7,
    }
    (workspace / "bench.yaml").write_text(yaml.safe_dump(document))
    environment = load_environment(workspace / "bench.yaml")
    assert environment.logs == LogSettings(**document["logs"])
    sandbox = Sandbox(environment=environment, directory=workspace / "ssh")
    sandbox.start()
    os.environ["AIRFLOW_CONN_AIRLOCK_SSH"] = json.dumps(sandbox.ssh_connection_uri())
    host = environment.hosts[0]
    airlock_dir, find_dir = root / "shared" / "log" / "airlock", root / "shared" / "log" / "find"
    timings: dict[str, list[float]] = {"airlock": [], "find": []}
    try:
        for round_number in range(2):
            for directory in (airlock_dir, find_dir):
                shutil.rmtree(directory, ignore_errors=True)
                build_tree(directory)
            os.sync()  # the trees' writeback must not land inside either timed run
            order = ["airlock", "find"] if round_number == 0 else ["find", "airlock"]
            for tool in order:
                started = time.monotonic()
                if tool == "airlock":
                    report = clean_host_logs(environment, host.name, dry_run=False)
                    assert report["deleted"]["files"] == FILES * OLD_SHARE, report["deleted"]
                else:
                    hook = host_hook(environment, host)
                    try:
                        hook.run(["find", str(find_dir), "-mtime", "+7", "-delete"], timeout=1800)
                    finally:
                        hook.close()
                timings[tool].append(time.monotonic() - started)
            left = {remaining(airlock_dir), remaining(find_dir)}
            assert left == {int(FILES * (1 - OLD_SHARE))}, f"the trees ended differently: {left}"
            print(
                f"round {round_number + 1}: airlock {timings['airlock'][-1]:.2f}s, "
                f"find -delete {timings['find'][-1]:.2f}s"
            )
    finally:
        sandbox.stop()
        shutil.rmtree(workspace, ignore_errors=True)
    airlock, find = sum(timings["airlock"]), sum(timings["find"])
    print(
        f"{FILES} files, {int(FILES * OLD_SHARE)} deleted, 2 rounds: airlock {airlock:.2f}s, find {find:.2f}s"
    )
    print(f"ratio airlock/find: {airlock / find:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
