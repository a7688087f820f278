"""``log_cleanup_<env>`` on real sshd hosts: exactly the old, matching, closed files change.

The sandbox hosts' roots are local directories, so each test lays out a tree of logs with set
modification times under ``<root>/shared/log`` (the demo's ``logs.directories``), runs the
cleanup over SSH and compares the tree with what the settings (compress after 1 day, delete
after 7, pattern ``*.log``) say must remain.
"""

from __future__ import annotations

import gzip
import os
import time
import uuid
from pathlib import Path

import pytest

from airlock.config import LogSettings
from airlock.tasks.log_cleanup import LogCleanupError, clean_host_logs
from tests.support import PROJECT, run_dag

DAY = 86400
QUOTED = 'it\'s a "quoted" name.log'


def load_dag(dag_id: str):
    """A freshly parsed DAG from its own file (other DAG files being edited cannot break it)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=PROJECT / "dags" / "log_cleanup.py")
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def write(path: Path, content: str, days_old: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    stamp = time.time() - days_old * DAY
    os.utime(path, (stamp, stamp))
    return path


def snapshot(directory: Path) -> dict[str, tuple]:
    """Every entry below ``directory``: kind, size and mtime (links: their target), not followed."""
    entries = {}
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        relative = str(path.relative_to(directory))
        if path.is_symlink():
            entries[relative] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[relative] = ("dir",)
        else:
            entries[relative] = ("file", info.st_size, int(info.st_mtime))
    return entries


@pytest.fixture
def log_tree(sandbox, environment):
    """A tree of logs on web-1 and, next to the configured directory, files that must never change."""
    root = Path(environment.root_of(environment.hosts[0]))
    tree = root / "shared" / "log" / f"test-{uuid.uuid4().hex[:8]}"
    outside = root / "shared" / f"outside-{tree.name}"
    write(tree / "app.log", "live\n", 0)
    write(tree / "yesterday-morning.log", "recent\n", 0.5)
    write(tree / "old.log", "old line\n" * 100, 3)
    write(tree / "dir with spaces" / QUOTED, "quoted\n", 3)
    write(tree / "ancient.log", "never compressed before\n", 40)
    write(tree / "ancient.log.gz", "x" * 10, 10)
    write(tree / "recent.log.gz", "y" * 10, 3)
    write(tree / "notes.txt", "not a log\n", 30)
    write(tree / "notes.txt.gz", "not a log either\n", 30)
    secret = write(outside / "secret.log", "outside\n", 30)
    write(outside / "secret.log.gz", "outside\n", 30)
    (tree / "link-to-outside.log").symlink_to(secret)
    (tree / "link-to-outside.log.gz").symlink_to(outside / "secret.log.gz")
    (tree / "linked-dir").symlink_to(outside, target_is_directory=True)
    held = write(tree / "held-open.log", "a process still writes here\n", 3)
    with held.open("a"):
        yield tree, outside


def expected_after_cleanup(before: dict[str, tuple]) -> dict[str, tuple]:
    after = dict(before)
    del after["ancient.log.gz"]  # compressed, older than 7 days: deleted
    for name in ("old.log", f"dir with spaces/{QUOTED}", "ancient.log"):  # older than 1 day: gzipped
        kind, _size, mtime = after.pop(name)
        after[f"{name}.gz"] = (kind, "any size", mtime)
    return after


def comparable(entries: dict[str, tuple]) -> dict[str, tuple]:
    return {
        name: (entry[0], "any size", entry[2]) if name.endswith(".gz") and entry[0] == "file" else entry
        for name, entry in entries.items()
    }


def test_the_dag_compresses_and_deletes_exactly_what_the_settings_say_and_a_dry_run_nothing(
    log_tree, environment, slack_messages
):
    tree, outside = log_tree
    before, outside_before = snapshot(tree), snapshot(outside)

    _, dry_states, _ = run_dag(load_dag(f"log_cleanup_{environment.name}"), {"dry_run": True})

    assert dry_states["summarize"] == "success", dry_states
    assert snapshot(tree) == before

    _, states, _ = run_dag(load_dag(f"log_cleanup_{environment.name}"), {})

    assert {state for task, state in states.items() if task.startswith("clean_host")} == {"success"}
    assert comparable(snapshot(tree)) == comparable(expected_after_cleanup(before))
    assert gzip.decompress((tree / "old.log.gz").read_bytes()) == b"old line\n" * 100
    assert gzip.decompress((tree / "dir with spaces" / f"{QUOTED}.gz").read_bytes()) == b"quoted\n"
    assert snapshot(outside) == outside_before
    assert slack_messages.texts() == []


def test_the_report_counts_files_and_bytes_per_directory_and_names_open_files(log_tree, environment):
    tree, _ = log_tree
    sizes = {name: (tree / name).stat().st_size for name in ("old.log", "ancient.log", "ancient.log.gz")}
    quoted_size = (tree / "dir with spaces" / QUOTED).stat().st_size
    prefix = tree.name + "/"

    planned = clean_host_logs(environment, "web-1", dry_run=True)
    report = clean_host_logs(environment, "web-1", dry_run=False)

    for result in (planned, report):
        [directory] = result["directories"]
        samples = {
            action: sorted(path.removeprefix(prefix) for _, path in entries if path.startswith(prefix))
            for action, entries in directory["samples"].items()
        }
        assert samples == {
            "delete": ["ancient.log.gz"],
            "compress": sorted(["ancient.log", f"dir with spaces/{QUOTED}", "old.log"]),
            "open": ["held-open.log"],
        }
        assert result["open_files_check"] == "proc"
    assert (planned["dry_run"], report["dry_run"]) == (True, False)
    own = {
        action: sum(size for size, path in entries if path.startswith(prefix))
        for action, entries in report["directories"][0]["samples"].items()
    }
    assert own["delete"] == sizes["ancient.log.gz"]
    assert own["compress"] == sizes["old.log"] + sizes["ancient.log"] + quoted_size


def test_a_symlinked_directory_is_refused_and_the_other_directories_are_still_cleaned(
    sandbox, environment, tmp_path
):
    root = Path(environment.root_of(environment.hosts[1]))
    real = root / "shared" / f"real-{uuid.uuid4().hex[:8]}"
    linked = root / "shared" / f"linked-{real.name}"
    write(real / "old.log", "old\n", 3)
    linked.symlink_to(real, target_is_directory=True)
    cleaned = root / "shared" / f"cleaned-{real.name}"
    write(cleaned / "old.log", "old\n", 3)
    settings = LogSettings(
        directories=[f"{{root}}/shared/{linked.name}", f"{{root}}/shared/{cleaned.name}"],
        compress_after_days=1,
        delete_after_days=7,
    )
    configured = environment.model_copy(update={"logs": settings})

    with pytest.raises(LogCleanupError, match=rf"web-2: refused .*{linked.name} \(is a symbolic link"):
        clean_host_logs(configured, "web-2", dry_run=False)

    assert sorted(p.name for p in real.iterdir()) == ["old.log"]
    assert sorted(p.name for p in cleaned.iterdir()) == ["old.log.gz"]
