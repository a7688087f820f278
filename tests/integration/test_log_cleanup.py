"""``log_cleanup_<env>`` on real sshd hosts: exactly the old, matching, closed files change.

The sandbox hosts' roots are local directories, so each test lays out a tree of logs with set
modification times under ``<root>/shared/log`` (the demo's ``logs.directories``), runs the
cleanup over SSH and compares the tree with what the settings (compress after 1 day, delete
after 7, pattern ``*.log``) say must remain.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from airlock.config import LogSettings
from airlock.tasks.log_cleanup import LogCleanupError, clean_host_logs
from tests.support import PROJECT, run_dag, serve_memory_urls, write_environment

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


def run_through(monkeypatch, *prefix: str) -> None:
    """Send the cleanup command through ``prefix`` (a program run before bash on the host).

    The sandbox hosts connect as root and start sshd without ``AcceptEnv``, so this is how a
    test puts the script where a real host could (another user, a hostile PATH).
    """
    from airlock.tasks import log_cleanup

    command = log_cleanup.cleanup_command
    monkeypatch.setattr(
        log_cleanup,
        "cleanup_command",
        lambda *args, **kwargs: shlex.join(prefix) + " " + command(*args, **kwargs),
    )


def cleanup_settings(*directories: str, **extra) -> LogSettings:
    return LogSettings(directories=list(directories), compress_after_days=1, delete_after_days=7, **extra)


def test_an_ancestor_swapped_for_a_symlink_mid_run_does_not_redirect_deletion(
    sandbox, environment, tmp_path, monkeypatch
):
    root = Path(environment.root_of(environment.hosts[1]))
    ancestor = root / "shared" / f"swapped-{uuid.uuid4().hex[:8]}"
    decoy = root / "shared" / f"decoy-{ancestor.name}"
    for directory in (ancestor, decoy):
        write(directory / "log" / "old.log", "old\n", 3)
        write(directory / "log" / "ancient.log.gz", "gz\n", 10)
    decoy_before = snapshot(decoy)
    # The host's find, once the walk starts (after the script checked the directory), swaps
    # the directory's parent for a link to another tree: the race an attacker would win.
    tools = tmp_path / "bin"
    tools.mkdir()
    swap = f"mv {ancestor} {ancestor}.real && ln -s {decoy} {ancestor}"
    (tools / "find").write_text(
        f'#!/bin/sh\ncase " $* " in *" -xdev "*) [ -L {ancestor} ] || {{ {swap}; }} ;; esac\n'
        f'exec {shutil.which("find")} "$@"\n'
    )
    (tools / "find").chmod(0o755)
    run_through(monkeypatch, "env", f"PATH={tools}:/usr/local/bin:/usr/bin:/bin")
    configured = environment.model_copy(
        update={"logs": cleanup_settings(f"{{root}}/shared/{ancestor.name}/log")}
    )

    clean_host_logs(configured, "web-2", dry_run=False)

    assert ancestor.is_symlink()  # the swap did happen
    assert snapshot(decoy) == decoy_before
    assert sorted(p.name for p in Path(f"{ancestor}.real", "log").iterdir()) == ["old.log.gz"]


def test_a_host_whose_proc_hides_processes_is_refused_and_nothing_is_touched(
    sandbox, environment, monkeypatch, request
):
    root = Path(environment.root_of(environment.hosts[2]))
    directory = root / "shared" / f"unseen-{uuid.uuid4().hex[:8]}"
    write(directory / "old.log", "old\n", 3)
    write(directory / "ancient.log.gz", "gz\n", 10)
    # Connected as nobody, /proc/<pid>/fd of every other user's process is unreadable: what
    # an unprivileged SSH user sees on a real host. The directory and the logs are nobody's.
    for path in (directory, *directory.iterdir()):
        os.chown(path, 65534, 65534)
    for parent in directory.parents:  # let nobody reach it; the modes are put back afterwards
        mode = parent.stat().st_mode & 0o7777
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
            request.addfinalizer(lambda parent=parent, mode=mode: parent.chmod(mode))
    run_through(monkeypatch, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    before = snapshot(directory)
    refusing = environment.model_copy(update={"logs": cleanup_settings(f"{{root}}/shared/{directory.name}")})

    with pytest.raises(
        LogCleanupError,
        match=r"Host web-3: /proc does not show the open files of \d+ processes of other users.*"
        r"nothing was touched.*logs\.allow_partial_proc: true",
    ):
        clean_host_logs(refusing, "web-3", dry_run=False)

    assert snapshot(directory) == before

    allowing = environment.model_copy(
        update={"logs": cleanup_settings(f"{{root}}/shared/{directory.name}", allow_partial_proc=True)}
    )
    report = clean_host_logs(allowing, "web-3", dry_run=False)

    assert report["open_files_check"] == "partial"
    assert sorted(p.name for p in directory.iterdir()) == ["old.log.gz"]


# -- archival before deletion (logs.archive_to) ----------------------------------------------------


@pytest.fixture
def archived_environment(sandbox, environment, tmp_path):
    """``sandbox``'s hosts as environment ``archived``, archiving to a local directory."""
    directory = Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"])
    document = yaml.safe_load((directory / "sandbox.yaml").read_text())
    archive = tmp_path / "archive"
    document["logs"] = {**document["logs"], "archive_to": archive.as_uri()}
    path = directory / "archived.yaml"
    configured = write_environment(path, document)
    yield configured, archive
    path.unlink()


def archived_copies(archive: Path, environment: str, host: str) -> dict[str, bytes]:
    """Every archived object of one host: its path below the host's prefix, and its bytes."""
    prefix = archive / environment / host
    return {str(p.relative_to(prefix)): p.read_bytes() for p in prefix.rglob("*") if p.is_file()}


def test_the_dag_archives_each_old_compressed_log_and_deletes_it_only_after_the_copy_verified(
    log_tree, archived_environment
):
    tree, outside = log_tree
    _, archive = archived_environment
    ancient = (tree / "ancient.log.gz").read_bytes()
    mtime = (tree / "ancient.log.gz").stat().st_mtime
    before, outside_before = snapshot(tree), snapshot(outside)
    day = datetime.fromtimestamp(mtime, UTC).date().isoformat()
    key = f"{day}/{str(tree.parent).strip('/')}/{tree.name}/ancient.log.gz"

    _, dry_states, _ = run_dag(load_dag("log_cleanup_archived"), {"dry_run": True})

    assert dry_states["summarize"] == "success", dry_states
    assert snapshot(tree) == before
    assert not archive.exists()

    run_id, states, _ = run_dag(load_dag("log_cleanup_archived"), {})

    assert set(states.values()) == {"success"}, states
    # ancient.log's compressed name was still taken by the ancient.log.gz awaiting its upload:
    # gzip left it alone, and the next run compresses it.
    expected = expected_after_cleanup(before)
    expected["ancient.log"] = before["ancient.log"]
    del expected["ancient.log.gz"]
    assert comparable(snapshot(tree)) == comparable(expected)
    assert snapshot(outside) == outside_before
    copies = archived_copies(archive, "archived", "web-1")
    assert copies[key] == ancient
    summary = xcom("log_cleanup_archived", run_id, "summarize")
    [entry] = [a for a in summary["archived"] if a["path"] == str(tree / "ancient.log.gz")]
    assert entry["host"] == "web-1"
    assert entry["outcome"] == "deleted"
    assert entry["sha256"] == hashlib.sha256(ancient).hexdigest()
    assert entry["url"] == (archive / "archived" / "web-1" / key).as_uri()

    run_dag(load_dag("log_cleanup_archived"), {})

    assert comparable(snapshot(tree)) == comparable(expected_after_cleanup(before))
    assert archived_copies(archive, "archived", "web-1")[key] == ancient


def xcom(dag_id: str, run_id: str, task_id: str):
    """The return value of ``task_id`` in run ``run_id``, from the metadata database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = select(XComModel.value).where(
        XComModel.dag_id == dag_id,
        XComModel.run_id == run_id,
        XComModel.task_id == task_id,
        XComModel.key == "return_value",
    )
    with create_session() as session:
        [value] = session.scalars(query).all()
    return value if isinstance(value, dict) else json.loads(value)


def old_compressed_logs(environment, host_index: int, *names: str) -> Path:
    root = Path(environment.root_of(environment.hosts[host_index]))
    directory = root / "shared" / f"archive-{uuid.uuid4().hex[:8]}"
    for name in names:
        write(directory / name, f"compressed {name}\n" * 20, 10)
    return directory


def in_memory(environment, directory: Path, **extra):
    settings = cleanup_settings(
        f"{{root}}/shared/{directory.name}", archive_to="memory://logs-archive", **extra
    )
    return environment.model_copy(update={"logs": settings})


def test_an_object_store_archive_holds_each_log_byte_for_byte_and_a_rerun_changes_nothing(
    sandbox, environment, memory_store
):
    directory = old_compressed_logs(environment, 1, "a.log.gz", "sub/b.log.gz")
    contents = {name: (directory / name).read_bytes() for name in ("a.log.gz", "sub/b.log.gz")}
    configured = in_memory(environment, directory)

    report = clean_host_logs(configured, "web-2", dry_run=False)

    assert sorted(p.name for p in directory.rglob("*") if p.is_file()) == []
    assert {a["outcome"] for a in report["archived"]} == {"deleted"}
    for entry in report["archived"]:
        name = entry["path"].removeprefix(f"{directory}/")
        assert memory_store.cat_file(entry["url"].removeprefix("memory://")) == contents[name]
        assert entry["sha256"] == hashlib.sha256(contents[name]).hexdigest()
    stored = dict(memory_store.store)

    again = clean_host_logs(configured, "web-2", dry_run=False)

    assert again["archived"] == []
    assert {k: v.getvalue() for k, v in memory_store.store.items()} == {
        k: v.getvalue() for k, v in stored.items()
    }


def test_a_log_whose_upload_does_not_read_back_is_never_deleted(sandbox, environment, monkeypatch):
    """A store that corrupts what it is sent (a broken bucket, a bad proxy): fsspec's memory
    filesystem with every write's first byte flipped."""
    from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

    class Corrupting(MemoryFile):
        def write(self, data):
            if self.tell() == 0 and data:
                data = bytes([data[0] ^ 0xFF]) + bytes(data[1:])
            return super().write(data)

    class CorruptingStore(MemoryFileSystem):
        store, pseudo_dirs = {}, [""]

        def _open(self, path, mode="rb", **kwargs):
            if "w" not in mode:
                return super()._open(path, mode, **kwargs)
            written = Corrupting(self, self._strip_protocol(path))
            written.commit()
            return written

    serve_memory_urls(monkeypatch, CorruptingStore())
    directory = old_compressed_logs(environment, 2, "a.log.gz")
    before = snapshot(directory)

    with pytest.raises(
        RuntimeError, match=r"web-3: 1 logs could not be archived .* and were not deleted: .*a\.log\.gz"
    ):
        clean_host_logs(in_memory(environment, directory), "web-3", dry_run=False)

    assert snapshot(directory) == before
    assert CorruptingStore.store == {}  # the bad copy was removed, not left as if archived


def test_the_archive_keeps_its_own_retention_and_a_dry_run_only_lists(sandbox, environment, memory_store):
    directory = old_compressed_logs(environment, 1)
    prefix = "/logs-archive/sandbox/web-2"
    memory_store.pipe(f"{prefix}/2020-01-01/srv/old.log.gz", b"expired")
    recent = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    memory_store.pipe(f"{prefix}/{recent}/srv/new.log.gz", b"kept")
    memory_store.pipe(f"{prefix}/notes/readme.txt", b"not Airlock's")
    configured = in_memory(environment, directory, archive_retention_days=30)

    planned = clean_host_logs(configured, "web-2", dry_run=True)

    assert planned["archive_pruned"] == ["2020-01-01"]
    assert memory_store.exists(f"{prefix}/2020-01-01/srv/old.log.gz")

    done = clean_host_logs(configured, "web-2", dry_run=False)

    assert done["archive_pruned"] == ["2020-01-01"]
    assert not memory_store.exists(f"{prefix}/2020-01-01/srv/old.log.gz")
    assert memory_store.cat_file(f"{prefix}/{recent}/srv/new.log.gz") == b"kept"
    assert memory_store.cat_file(f"{prefix}/notes/readme.txt") == b"not Airlock's"


def test_an_archive_no_filesystem_serves_is_refused_before_anything_is_touched(sandbox, environment):
    directory = old_compressed_logs(environment, 0, "a.log.gz")
    before = snapshot(directory)
    settings = cleanup_settings(f"{{root}}/shared/{directory.name}", archive_to="nosuch://bucket/logs")

    with pytest.raises(
        LogCleanupError, match=r"logs\.archive_to in .*'nosuch://bucket/logs'.*nothing was touched"
    ):
        clean_host_logs(environment.model_copy(update={"logs": settings}), "web-1", dry_run=False)

    assert snapshot(directory) == before


def test_a_log_swapped_for_a_symbolic_link_is_not_read_into_the_archive(sandbox, environment):
    """What ``clean_host`` reads over SFTP must still be the regular file it listed."""
    from airlock.hooks.hosts import host_hook
    from airlock.hooks.ssh import HostSSHHook

    directory = old_compressed_logs(environment, 0, "real.log.gz")
    (directory / "swapped.log.gz").symlink_to(directory / "real.log.gz")
    hook: HostSSHHook = host_hook(environment, environment.hosts[0])
    try:
        with hook.read_file(str(directory / "real.log.gz")) as source:
            assert source.read() == (directory / "real.log.gz").read_bytes()
        refused = pytest.raises(OSError, match=r"swapped\.log\.gz on web-1 is no longer a regular file")
        with refused, hook.read_file(str(directory / "swapped.log.gz")):
            pass
    finally:
        hook.close()
