"""Backup and verify against raw pg_dump / pg_restore, on a generated database of at least 1 GB.

Side by side in one run, on the local PostgreSQL server (127.0.0.1:5432):

- backup: Airlock's ``take_backup`` (snapshot, row counts, pg_dump, SHA-256, manifest, atomic
  publish) against ``pg_dump -Fc -Z<compression>`` to a file;
- verify: Airlock's ``verify_backup`` (SHA-256 check, pg_restore into a scratch database, row
  counts compared, scratch dropped) against ``createdb`` + ``pg_restore -j<jobs>`` + ``dropdb``.

Each is measured ``--repeat`` times (default 2), alternating which runs first; the best time
counts. Prints both ratios (goal <= 1.15 each). The generated database is dropped at the end
unless ``--keep`` (it is reused when present: generating 1 GB takes about a minute).

    PYTHONPATH=plugins:tools .venv/bin/python bench/backup.py [--gigabytes 1.0] [--repeat 2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

PROJECT = Path(__file__).resolve().parents[1]
SERVER = "postgresql://postgres@127.0.0.1:5432"
DATABASE = "airlock_bench_backup"


def generate(gigabytes: float) -> int:
    """Create (or reuse) the bench database with at least ``gigabytes`` of tables and indexes."""
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            connection.execute(f'CREATE DATABASE "{DATABASE}"')
    with psycopg.connect(f"{SERVER}/{DATABASE}", autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS events (id bigint PRIMARY KEY, account int, kind text, "
            "payload text, created timestamptz)"
        )
        connection.execute("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, name text, plan text)")
        if not connection.execute("SELECT 1 FROM accounts LIMIT 1").fetchone():
            connection.execute(
                "INSERT INTO accounts SELECT i, 'account ' || i, "
                "(ARRAY['free','team','enterprise'])[1 + i % 3] FROM generate_series(1, 100000) AS i"
            )
        while (size := database_size(connection)) < gigabytes * 2**30:
            start = connection.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
            connection.execute(
                "INSERT INTO events SELECT i, (i %% 100000)::int, "
                "(ARRAY['login','click','buy','view'])[1 + i %% 4], "
                "md5(i::text) || md5((i * 7)::text) "
                "|| repeat(chr((97 + i %% 26)::int), (40 + i %% 60)::int), "
                "timestamptz '2026-01-01' + i * interval '1 second' "
                "FROM generate_series(%s::bigint + 1, %s::bigint + 1000000) AS i",
                (start, start),
            )
            print(f"  generating: {size / 2**30:.2f} GB", flush=True)
        connection.execute("VACUUM ANALYZE")
    return size


def database_size(connection) -> int:
    return connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, env={**os.environ, "PGHOST": "127.0.0.1", "PGUSER": "postgres"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="airlock-bench-backup-"))
    os.environ.update(
        {
            "AIRFLOW_HOME": str(work / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_AIRLOCK_BENCH_DB": json.dumps(
                {
                    "conn_type": "postgres",
                    "host": "127.0.0.1",
                    "port": 5432,
                    "login": "postgres",
                    "schema": DATABASE,
                }
            ),
        }
    )
    sys.path.insert(0, str(PROJECT))
    from airlock.hooks.backup_store import BackupStore
    from airlock.tasks.backup import take_backup, verify_backup
    from tests.support import demo_document, write_environment

    try:
        print(f"database {DATABASE}: {generate(options.gigabytes) / 2**30:.2f} GB", flush=True)
        document = demo_document()
        document["ssh"]["known_hosts"] = str(work / "known_hosts")
        document["database"] = {"conn_id": "airlock_bench_db"}
        document["backup"] = {"destination": f"file://{work}/backups", "compression": 6, "jobs": 2}
        environment = write_environment(work / "environments" / "bench.yaml", document)
        settings = environment.backup
        raw_dump = work / "raw.dump"

        backup_times = {"pg_dump -Fc": [], "airlock backup": []}
        verify_times = {"pg_restore": [], "airlock verify": []}
        names = []

        def raw_backup() -> None:
            run(["pg_dump", "-Fc", f"-Z{settings.compression}", "-f", str(raw_dump), DATABASE])

        def airlock_backup() -> None:
            names.append(take_backup(environment, kind="manual").name)

        def raw_verify() -> None:
            run(["createdb", "--template=template0", "airlock_bench_raw_restore"])
            try:
                run(
                    [
                        "pg_restore",
                        "--exit-on-error",
                        f"-j{settings.jobs}",
                        "-d",
                        "airlock_bench_raw_restore",
                        str(raw_dump),
                    ]
                )
            finally:
                run(["dropdb", "--if-exists", "airlock_bench_raw_restore"])

        def airlock_verify() -> None:
            verify_backup(environment, names[-1])

        for attempt in range(options.repeat):
            order = [("pg_dump -Fc", raw_backup), ("airlock backup", airlock_backup)]
            for label, action in order if attempt % 2 == 0 else reversed(order):
                backup_times[label].append(timed(action))
                print(f"  {label}: {backup_times[label][-1]:.1f}s", flush=True)
            order = [("pg_restore", raw_verify), ("airlock verify", airlock_verify)]
            for label, action in order if attempt % 2 == 0 else reversed(order):
                verify_times[label].append(timed(action))
                print(f"  {label}: {verify_times[label][-1]:.1f}s", flush=True)
            for name in names[:-1]:
                BackupStore.of(environment).remove(name)

        best = {label: min(times) for label, times in {**backup_times, **verify_times}.items()}
        dump_size = raw_dump.stat().st_size / 2**20
        print()
        print(
            f"dump size: {dump_size:.0f} MB (compression {settings.compression}), "
            f"restore jobs {settings.jobs}"
        )
        print(
            f"backup: airlock {best['airlock backup']:.1f}s vs pg_dump -Fc {best['pg_dump -Fc']:.1f}s "
            f"-> ratio {best['airlock backup'] / best['pg_dump -Fc']:.2f} (goal <= 1.15)"
        )
        print(
            f"verify: airlock {best['airlock verify']:.1f}s vs pg_restore {best['pg_restore']:.1f}s "
            f"-> ratio {best['airlock verify'] / best['pg_restore']:.2f} (goal <= 1.15)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not options.keep:
            with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
