"""The log archive's uploads on fsspec's in-memory store (standing in for S3, which cannot run
here): nothing archived is ever overwritten, and a rerun finds what it archived before."""

from __future__ import annotations

import hashlib
import io
from datetime import date

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from airlock.hooks.log_archive import LogArchive


@pytest.fixture
def archive(monkeypatch) -> LogArchive:
    from airflow.sdk.io import fs, store

    memory = MemoryFileSystem()
    memory.store.clear()
    memory.pseudo_dirs[:] = [""]
    monkeypatch.setitem(fs._register_filesystems(), "memory", lambda conn_id, options: memory)
    monkeypatch.delitem(store._STORE_CACHE, "memory", raising=False)
    yield LogArchive("memory://archive/logs", None, "production", "web-1")
    memory.store.clear()


def test_a_name_taken_by_other_content_gets_that_contents_hash_and_nothing_is_overwritten(archive):
    target = archive.target("/srv/app/shared/log", "app.log.1.gz", 1_700_000_000)
    first, second = b"monday's rotation", b"tuesday's rotation, same name"

    stored_first, digest_first = archive.store(io.BytesIO(first), target)
    stored_second, digest_second = archive.store(io.BytesIO(second), target)
    again_first, _ = archive.store(io.BytesIO(first), target)
    again_second, _ = archive.store(io.BytesIO(second), target)

    assert (
        str(stored_first)
        == "memory://archive/logs/production/web-1/2023-11-14/srv/app/shared/log/app.log.1.gz"
    )
    assert stored_second.name == f"app.log.1.gz.{hashlib.sha256(second).hexdigest()[:12]}"
    assert (stored_first.read_bytes(), stored_second.read_bytes()) == (first, second)
    assert (digest_first, digest_second) == tuple(hashlib.sha256(c).hexdigest() for c in (first, second))
    assert (again_first, again_second) == (stored_first, stored_second)
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, stored_second.name])


def test_only_day_folders_older_than_the_retention_expire(archive):
    for day in ("2026-01-01", "2026-11-01", "2026-11-30"):
        archive.store(io.BytesIO(day.encode()), archive.root / day / "srv" / "a.log.gz")
    (archive.root / "notes").mkdir(parents=True, exist_ok=True)
    archive.store(io.BytesIO(b"x"), archive.root / "notes" / "readme")

    expired = archive.expired_days(30, today=date(2026, 12, 2))

    assert [day.name for day in expired] == ["2026-01-01", "2026-11-01"]
    assert archive.expired_days(None, today=date(2026, 12, 2)) == []
