"""Reading a configuration set from ``config.source``: a directory, or an object-store prefix
(fsspec's memory store standing in for S3, through the same ObjectStoragePath code path)."""

from __future__ import annotations

import pytest

from airlock.config.environment import ConfigSettings
from airlock.core.config_sets import ConfigSet, ConfigSetError
from airlock.hooks.config_sets import read_source


def test_a_directory_gives_every_file_under_it_by_relative_path(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "app.conf").write_bytes(b"a = 1\n")
    (tmp_path / "nested" / "flags.yaml").write_bytes(b"b: 2\n")

    assert read_source(ConfigSettings(source=str(tmp_path))) == {
        "app.conf": b"a = 1\n",
        "nested/flags.yaml": b"b: 2\n",
    }


def test_an_object_store_prefix_gives_the_same_set_as_a_directory_with_the_same_files(tmp_path, memory_store):
    files = {"app.conf": b"a = 1\n", "nested/flags.yaml": b"b: 2\n"}
    for path, data in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
        memory_store.pipe(f"/config/production/{path}", data)
    memory_store.pipe("/config/production-other/app.conf", b"not ours\n")  # a neighbouring prefix

    from_store = read_source(ConfigSettings(source="memory://config/production"))

    assert from_store == files
    assert ConfigSet.of(from_store).id == ConfigSet.of(read_source(ConfigSettings(source=str(tmp_path)))).id


def test_a_symbolic_link_in_the_source_is_refused(tmp_path):
    (tmp_path / "real.conf").write_bytes(b"a = 1\n")
    (tmp_path / "link.conf").symlink_to(tmp_path / "real.conf")

    with pytest.raises(ConfigSetError, match=r"'link\.conf' is a symbolic link"):
        read_source(ConfigSettings(source=str(tmp_path)))


def test_a_source_too_large_missing_or_empty_is_refused(tmp_path, memory_store):
    (tmp_path / "big.conf").write_bytes(b"x" * 2048)
    with pytest.raises(ConfigSetError, match=r"more than 1024 bytes \(config.max_bytes\)"):
        read_source(ConfigSettings(source=str(tmp_path), max_bytes=1024))
    with pytest.raises(ConfigSetError, match="is not a directory"):
        read_source(ConfigSettings(source=str(tmp_path / "absent")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigSetError, match="holds no files"):
        read_source(ConfigSettings(source=str(tmp_path / "empty")))
    with pytest.raises(ConfigSetError, match="does not exist"):
        read_source(ConfigSettings(source="memory://nothing/here"))
