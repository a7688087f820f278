"""Configuration sets: their id, their manifest, and the plan's masked diff."""

from __future__ import annotations

import hashlib

import pytest

from airlock.config.environment import DEFAULT_CONFIG_MASK
from airlock.core.config_sets import (
    MASKED,
    ConfigSet,
    ConfigSetError,
    changes_markdown,
    diff_sets,
    mask_line,
    parse_manifest,
)

FILES = {"app.conf": b"greeting = hi\napi_token = abc123\n", "flags/features.yaml": b"dark_mode: true\n"}


def test_a_sets_id_is_the_digest_of_its_manifest_and_changes_with_any_byte_or_name():
    config_set = ConfigSet.of(FILES)
    manifest = config_set.manifest
    assert manifest.splitlines() == [
        f"{hashlib.sha256(FILES['app.conf']).hexdigest()}  app.conf",
        f"{hashlib.sha256(FILES['flags/features.yaml']).hexdigest()}  flags/features.yaml",
    ]
    assert config_set.id == hashlib.sha256(manifest.encode()).hexdigest()[:16]
    assert ConfigSet.of(dict(reversed(FILES.items()))).id == config_set.id  # order does not matter
    assert ConfigSet.of({**FILES, "app.conf": b"greeting = hi!\napi_token = abc123\n"}).id != config_set.id
    assert ConfigSet.of(
        {"app2.conf": FILES["app.conf"], "flags/features.yaml": FILES["flags/features.yaml"]}
    ).id != (config_set.id)
    assert parse_manifest(manifest) == {file.path: file.sha256 for file in config_set.files}


def test_a_set_travels_as_a_dict_and_refuses_files_that_do_not_match_its_id():
    config_set = ConfigSet.of(FILES)
    assert ConfigSet.from_dict(config_set.to_dict()) == config_set
    tampered = config_set.to_dict()
    tampered["files"][0]["sha256"] = "0" * 64
    with pytest.raises(ConfigSetError, match="does not match its files"):
        ConfigSet.from_dict(tampered)


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/etc/passwd", ".airlock-manifest", "a/../b", "sp ace.conf", "a/.hidden", ""],
)
def test_a_path_that_could_escape_the_set_or_clash_with_its_own_files_is_refused(path):
    with pytest.raises(ConfigSetError, match="config file"):
        ConfigSet.of({path: b"x"})


def test_an_empty_source_is_refused():
    with pytest.raises(ConfigSetError, match="no files"):
        ConfigSet.of({})


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("api_token = abc123", f"api_token = {MASKED}"),
        ("DATABASE_PASSWORD=hunter2", f"DATABASE_PASSWORD={MASKED}"),
        ("export AWS_SECRET_ACCESS_KEY='x'", f"export AWS_SECRET_ACCESS_KEY={MASKED}"),
        ("  signing_key: s3cr3t", f"  signing_key: {MASKED}"),
        ("greeting = hello", "greeting = hello"),
        ("# the api_token is rotated monthly", "# the api_token is rotated monthly"),
        ("password =", "password ="),
    ],
)
def test_values_of_keys_that_look_secret_are_masked(line, shown):
    assert mask_line(line, DEFAULT_CONFIG_MASK) == shown


def test_the_diff_shows_each_file_masked_and_never_a_secret_value():
    old = {"app.conf": b"greeting = hi\napi_token = old-secret\n", "gone.conf": b"x = 1\n", "tls.pem": b"OLD"}
    new = {
        "app.conf": b"greeting = hello\napi_token = new-secret\n",
        "added.conf": b"y = 2\n",
        "tls.pem": b"NEW",
        "logo.bin": b"\xff\xfe\x00",
    }
    changes = {change.path: change for change in diff_sets(old, new, mask=DEFAULT_CONFIG_MASK)}

    assert {path: change.change for path, change in changes.items()} == {
        "added.conf": "added",
        "app.conf": "changed",
        "gone.conf": "removed",
        "logo.bin": "added",
        "tls.pem": "changed",
    }
    assert "-greeting = hi" in changes["app.conf"].lines
    assert "+greeting = hello" in changes["app.conf"].lines
    assert changes["tls.pem"].lines == ()
    assert changes["tls.pem"].note == "content masked (config.mask)"
    assert changes["logo.bin"].note == "binary file"
    shown = changes_markdown(changes.values())
    for secret in ("old-secret", "new-secret", "OLD", "NEW"):
        assert secret not in shown
    assert "`app.conf`: changed" in shown


def test_a_change_of_a_masked_value_only_says_so():
    old = {"app.conf": b"api_token = one\n"}
    new = {"app.conf": b"api_token = two\n"}
    [change] = diff_sets(old, new, mask=DEFAULT_CONFIG_MASK)
    assert change.note == "a masked value changed"
    assert "one" not in changes_markdown([change])
    assert "two" not in changes_markdown([change])


def test_secrets_in_urls_json_pairs_yaml_blocks_and_secret_directories_are_masked():
    old = {"app.yaml": b"name: a\n", "secrets/db.conf": b"x = 1\n"}
    new = {
        "app.yaml": (
            b"name: b\n"
            b"DATABASE_URL=postgres://app:pw-in-url@db:5432/app\n"
            b'{"user": "a", "password": "json-secret", "port": 1}\n'
            b"tls_key: |\n  -----BEGIN PRIVATE KEY-----\n  block-secret\nafter: visible\n"
        ),
        "secrets/db.conf": b"x = directory-secret\n",
    }
    mask = [*DEFAULT_CONFIG_MASK, "secrets"]
    shown = changes_markdown(diff_sets(old, new, mask=mask))
    for secret in ("pw-in-url", "json-secret", "block-secret", "BEGIN PRIVATE KEY", "directory-secret"):
        assert secret not in shown, secret
    assert "+after: visible" in shown
    assert "postgres://app:********@db:5432/app" in shown
    assert "`secrets/db.conf`: changed (content masked (config.mask))" in shown
