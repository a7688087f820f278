"""lock_ttl must outlast the approval wait plus the longest step: the lock is not renewed while
a run waits for its approval."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airlock.config import EnvironmentConfigError, load_environment
from tests.support import demo_document


def load(tmp_path: Path, **changes) -> object:
    document = demo_document()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = document
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_environment(path)


def test_a_lock_ttl_shorter_than_the_approval_wait_and_the_backup_is_refused_naming_the_fields(tmp_path):
    with pytest.raises(EnvironmentConfigError) as refused:
        load(tmp_path, lock_ttl="2h", approval__timeout="1h", backup__timeout="4h")

    message = str(refused.value)
    assert "lock_ttl (2h)" in message
    assert "approval.timeout (1h)" in message
    assert "backup.timeout (4h)" in message
    assert "at least 5h" in message


def test_without_a_long_backup_the_default_step_timeout_counts(tmp_path):
    with pytest.raises(EnvironmentConfigError, match=r"default step timeout \(30m\).*at least 90m"):
        load(tmp_path, lock_ttl="1h", approval__timeout="1h", backup__timeout="10m")


def test_no_approval_means_only_the_step_counts(tmp_path):
    environment = load(
        tmp_path, lock_ttl="1h", approval__required=False, approval__approvers=[], backup__timeout="1h"
    )

    assert environment.lock_ttl.total_seconds() == 3600


def test_a_lock_ttl_equal_to_the_sum_is_accepted(tmp_path):
    environment = load(tmp_path, lock_ttl="5h", approval__timeout="1h", backup__timeout="4h")

    assert environment.longest_step_timeout[1] == "backup.timeout"


def test_the_default_lock_ttl_covers_the_default_approval_and_backup(tmp_path):
    document = demo_document()
    document.pop("lock_ttl")
    document["approval"].pop("timeout")
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    assert load_environment(path).lock_ttl.total_seconds() == 12 * 3600
