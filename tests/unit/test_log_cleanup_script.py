"""The host-side cleanup script on generated trees: what it may never do, whatever the tree.

Runs ``include/host/log_cleanup.sh`` locally with bash (the same text the DAG sends over SSH)
on trees hypothesis generates: names inside and outside the patterns, ages on both sides of
both limits, nested directories, and symbolic links to files and directories outside.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import PROJECT

SCRIPT = PROJECT / "include" / "host" / "log_cleanup.sh"
HOUR = 3600
COMPRESS_DAYS, DELETE_DAYS = 2, 5
PATTERNS = ["*.log", "app-*.out"]

names = st.sampled_from(
    [
        "a.log",
        "b.log.gz",
        "app-1.out",
        "app-2.out.gz",
        "a.log.1",
        "notes.txt",
        "notes.txt.gz",
        "x.gz",
        "with space.log",
        'it\'s "q".log.gz',
        "app.out",
        "log",
        "two\nlines.log",
    ]
)
# Half a day off any whole day, so no file sits on a limit while the script runs.
ages = st.integers(min_value=0, max_value=9).map(lambda days: days * 24 + 12)
entries = st.lists(
    st.tuples(st.sampled_from(["", "sub/", "sub/deeper/", "other dir/"]), names, ages), max_size=25
)
links = st.lists(st.tuples(names, ages), max_size=4)


def matches(name: str, suffix: str = "") -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, pattern + suffix) for pattern in PATTERNS)


def state(directory: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(directory)): ("link" if p.is_symlink() else "file", int(p.lstat().st_mtime))
        for p in directory.rglob("*")
        if p.is_symlink() or p.is_file()
    }


def run_script(
    directory: Path,
    mode: str,
    *,
    partial_proc: str = "refuse",
    old_gz: str = "delete",
    after: tuple[str, ...] = (),
    prefix: tuple[str, ...] = (),
    env=None,
) -> subprocess.CompletedProcess:
    """The script on ``directory``; ``prefix`` runs it through another program (setpriv, env)."""
    argv = [mode, partial_proc, old_gz, str(COMPRESS_DAYS * 1440), str(DELETE_DAYS * 1440), "10"]
    argv += [str(len(PATTERNS)), *PATTERNS, str(directory), *after]
    return subprocess.run(
        [*prefix, "bash", "-c", SCRIPT.read_text(), "log-cleanup", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=entries, outside_links=links)
def test_nothing_young_or_outside_the_patterns_is_ever_deleted_and_everything_old_is(entries, outside_links):
    with tempfile.TemporaryDirectory() as workspace:
        logs, outside = Path(workspace) / "logs", Path(workspace) / "outside"
        logs.mkdir()
        outside.mkdir()
        now = time.time()
        ages: dict[str, int] = {}
        for folder, name, age in entries:
            path = logs / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
            os.utime(path, (now - age * HOUR, now - age * HOUR))
            ages[str(path.relative_to(logs))] = age
        for index, (name, age) in enumerate(outside_links):
            target = outside / f"{index}-{name}"
            target.write_text(name)
            os.utime(target, (now - age * HOUR, now - age * HOUR))
            link = logs / f"link-{index}-{name}"
            if not link.exists():
                link.symlink_to(target)
        (logs / "linked-dir").symlink_to(outside, target_is_directory=True)
        before, outside_before = state(logs), state(outside)

        run_script(logs, "dry-run")
        assert state(logs) == before

        run_script(logs, "apply")
        after = state(logs)

        assert state(outside) == outside_before
        for path, (kind, mtime) in before.items():
            name = Path(path).name
            if kind == "link":
                assert after.get(path) == (kind, mtime), f"link {path} changed"
                continue
            age_hours = ages[path]
            if matches(name, ".gz") and age_hours > DELETE_DAYS * 24:
                assert path not in after, f"{path} should have been deleted"
            if (
                matches(name)
                and not name.endswith(".gz")
                and age_hours > COMPRESS_DAYS * 24
                and f"{path}.gz" not in before
            ):
                assert (path in after, f"{path}.gz" in after) == (False, True), f"{path} not compressed"
            if path in after:
                continue
            compressed = after.get(f"{path}.gz")
            if compressed is not None and path + ".gz" not in before:
                assert matches(name), f"{path} compressed outside the patterns"
                assert not name.endswith(".gz"), f"{path} compressed twice"
                assert age_hours > COMPRESS_DAYS * 24, f"{path} compressed at {age_hours}h"
                assert compressed == ("file", mtime), f"{path}.gz lost its mtime"
            else:
                assert matches(name, ".gz"), f"{path} deleted outside the patterns"
                assert age_hours > DELETE_DAYS * 24, f"{path} deleted at {age_hours}h old"


def records(output: str, kind: str) -> list[list[str]]:
    return [line.split("\t")[1:] for line in output.splitlines() if line.startswith(kind + "\t")]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=entries, outside_links=links, keep=st.randoms(use_true_random=False))
def test_with_archival_nothing_is_deleted_until_named_with_the_hash_of_its_archived_copy(
    entries, outside_links, keep
):
    import hashlib

    with tempfile.TemporaryDirectory() as workspace:
        logs, outside = Path(workspace) / "logs", Path(workspace) / "outside"
        logs.mkdir()
        outside.mkdir()
        now = time.time()
        for folder, name, age in entries:
            path = logs / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name + folder)
            os.utime(path, (now - age * HOUR, now - age * HOUR))
        for index, (name, age) in enumerate(outside_links):
            target = outside / f"{index}-{name}"
            target.write_text(name)
            os.utime(target, (now - age * HOUR, now - age * HOUR))
            (logs / f"link-{index}-{name}").symlink_to(target)
        old_gz = {
            str(p.relative_to(logs))
            for p in logs.rglob("*")
            if p.is_file()
            and not p.is_symlink()
            and matches(p.name, ".gz")
            and now - p.stat().st_mtime > DELETE_DAYS * 24 * HOUR
        }
        outside_before = state(outside)

        listed = run_script(logs, "apply", old_gz="archive").stdout

        assert {r[3].replace("\x01", "\n") for r in records(listed, "archive")} == old_gz
        assert old_gz <= set(state(logs)), "apply deleted a file it was to archive first"
        named = {path: hashlib.sha256((logs / path).read_bytes()).hexdigest() for path in old_gz}
        wrong = {path for path in named if keep.random() < 0.3}
        named.update({path: "0" * 64 for path in wrong})
        before = state(logs)

        done = run_script(
            logs, "delete-archived", old_gz="archive", after=tuple(p for pair in named.items() for p in pair)
        ).stdout

        after = state(logs)
        assert set(before) - set(after) == old_gz - wrong
        assert {r[2].replace("\x01", "\n") for r in records(done, "deleted")} == old_gz - wrong
        assert {r[2].replace("\x01", "\n") for r in records(done, "kept") if r[1] == "changed"} == wrong
        assert state(outside) == outside_before


def old_logs(directory: Path) -> None:
    """One log old enough to compress and one compressed log old enough to delete."""
    directory.mkdir(parents=True)
    stamp = time.time() - (DELETE_DAYS + 1) * 24 * HOUR
    for name in ("old.log", "older.log.gz"):
        (directory / name).write_text(name)
        os.utime(directory / name, (stamp, stamp))


def find_that_swaps(workspace: Path, ancestor: Path, decoy: Path) -> Path:
    """A ``find`` that, when the walk starts, swaps ``ancestor`` for a link to ``decoy``.

    The swap lands between the script's check of the directory and its walk: the window an
    attacker who can rename an ancestor has. The tool check (``find /dev/null``) is let through.
    """
    tools = workspace / "bin"
    tools.mkdir()
    swap = f"mv {ancestor} {ancestor}.real && ln -s {decoy} {ancestor}"
    (tools / "find").write_text(
        f'#!/bin/sh\ncase " $* " in *" -xdev "*) [ -L {ancestor} ] || {{ {swap}; }} ;; esac\n'
        f'exec {shutil.which("find")} "$@"\n'
    )
    (tools / "find").chmod(0o755)
    return tools


def test_an_ancestor_swapped_for_a_symlink_after_the_check_does_not_redirect_the_walk(tmp_path):
    ancestor, decoy = tmp_path / "srv", tmp_path / "elsewhere"
    old_logs(ancestor / "logs")
    old_logs(decoy / "logs")
    outside_before = state(decoy)
    tools = find_that_swaps(tmp_path, ancestor, decoy)

    run_script(ancestor / "logs", "apply", env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"})

    assert (ancestor / "logs").resolve() == decoy / "logs"  # the swap did happen
    assert state(decoy) == outside_before
    assert sorted(p.name for p in (tmp_path / "srv.real" / "logs").iterdir()) == ["old.log.gz"]


AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.fixture
def nobodys_logs():
    """Old logs owned by nobody, in a directory nobody can reach (pytest's tmp_path is 0700)."""
    with tempfile.TemporaryDirectory() as workspace:
        Path(workspace).chmod(0o755)
        logs = Path(workspace) / "logs"
        old_logs(logs)
        for path in (logs, *logs.iterdir()):
            os.chown(path, 65534, 65534)
        yield logs


def test_an_apply_that_cannot_see_every_process_refuses_and_touches_nothing(nobodys_logs):
    # Run as nobody, /proc/<pid>/fd of every other user's process is unreadable: the partial
    # visibility a cleanup connected as an unprivileged user has on a real host.
    logs = nobodys_logs
    before = state(logs)

    refused = run_script(logs, "apply", prefix=AS_NOBODY)

    records = [line.split("\t") for line in refused.stdout.splitlines()]
    assert records[0][:2] == ["open", "partial"]
    assert int(records[0][2]) > 0
    assert records[1:] == [["refused", "open-files"]]
    assert state(logs) == before

    allowed = run_script(logs, "apply", partial_proc="allow", prefix=AS_NOBODY)

    assert "dir\t0\tok" in allowed.stdout
    assert sorted(p.name for p in logs.iterdir()) == ["old.log.gz"]
