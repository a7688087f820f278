"""The demo-app artifact builder: reproducible, checksummed, safe version names, right migrations."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from include.demo_app.build import ARTIFACT_MTIME, build_artifact

pytestmark = pytest.mark.unit

V1 = "V1__create_items.sql"
V2 = "V2__add_item_category.sql"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "include" / "demo_app" / "build.py"


def members(tarball: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tarball) as tar:
        return {member.name: member for member in tar.getmembers()}


def read_member(tarball: Path, name: str) -> bytes:
    with tarfile.open(tarball) as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read()


def test_building_a_version_twice_gives_byte_identical_tarballs(tmp_path: Path) -> None:
    first = build_artifact("2.0.0", tmp_path / "first")
    second = build_artifact("2.0.0", tmp_path / "second")

    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[4:8] == b"\0\0\0\0", "gzip header must carry mtime 0"


def test_rebuilding_into_the_same_directory_keeps_the_checksum(tmp_path: Path) -> None:
    checksum_file = build_artifact("2.0.0", tmp_path).with_suffix(".gz.sha256")
    before = checksum_file.read_text()

    build_artifact("2.0.0", tmp_path)

    assert checksum_file.read_text() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "demo-app-2.0.0.tar.gz",
        "demo-app-2.0.0.tar.gz.sha256",
    ]


def test_checksum_file_matches_the_tarball_in_sha256sum_format(tmp_path: Path) -> None:
    tarball = build_artifact("1.0.0", tmp_path)

    checksum_file = tmp_path / "demo-app-1.0.0.tar.gz.sha256"
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert checksum_file.read_text() == f"{digest}  demo-app-1.0.0.tar.gz\n"
    subprocess.run(["sha256sum", "--check", "--quiet", checksum_file.name], cwd=tmp_path, check=True)


@pytest.mark.parametrize(
    "version",
    [
        pytest.param("../x", id="path-traversal"),
        pytest.param("a b", id="space"),
        pytest.param("$(id)", id="command-substitution"),
        pytest.param("", id="empty"),
        pytest.param("-1.0.0", id="leading-dash"),
        pytest.param("1" * 65, id="too-long"),
    ],
)
def test_build_refuses_unsafe_versions_and_writes_nothing(tmp_path: Path, version: str) -> None:
    with pytest.raises(ValueError, match="Invalid version"):
        build_artifact(version, tmp_path)

    assert list(tmp_path.iterdir()) == []


def test_build_refuses_a_version_without_leading_numbers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not start with a dotted number"):
        build_artifact("nightly", tmp_path)


@pytest.mark.parametrize(
    ("version", "broken"),
    [
        pytest.param("2.1.0-broken", True, id="broken-suffix"),
        pytest.param("3.0.0-BROKEN.1", True, id="upper-case"),
        pytest.param("2.1.0", False, id="release"),
        pytest.param("2.1.0-rc1", False, id="pre-release"),
    ],
)
def test_only_versions_named_broken_carry_the_broken_marker(
    tmp_path: Path, version: str, broken: bool
) -> None:
    tarball = build_artifact(version, tmp_path)

    assert ("BROKEN" in members(tarball)) is broken


@pytest.mark.parametrize(
    ("version", "migrations"),
    [
        pytest.param("1.0.0", ["V1__create_items.sql"], id="1.0.0"),
        pytest.param("1.0.9", ["V1__create_items.sql"], id="1.0.9"),
        pytest.param("1.1.0", ["V1__create_items.sql", "V2__add_item_category.sql"], id="1.1.0"),
        pytest.param(
            "1.10.0", ["V1__create_items.sql", "V2__add_item_category.sql"], id="numeric-not-lexical"
        ),
        pytest.param(
            "2.1.0-broken", ["V1__create_items.sql", "V2__add_item_category.sql"], id="2.1.0-broken"
        ),
    ],
)
def test_each_version_ships_the_migrations_introduced_up_to_it(
    tmp_path: Path, version: str, migrations: list[str]
) -> None:
    tarball = build_artifact(version, tmp_path)

    shipped = sorted(
        name.removeprefix("migrations/") for name in members(tarball) if name.startswith("migrations/")
    )
    assert shipped == migrations


def test_artifact_has_no_leading_directory_and_fixed_owner_modes_and_times(tmp_path: Path) -> None:
    tarball = build_artifact("1.1.0", tmp_path)

    entries = members(tarball)
    assert sorted(entries) == [
        "VERSION",
        "app",
        "app/control.py",
        "app/host_layout.py",
        "app/master.py",
        "app/worker.py",
        "bin",
        "bin/demo-app",
        "migrations",
        f"migrations/{V1}",
        f"migrations/{V2}",
    ]
    modes = {name: (info.mode, info.isdir()) for name, info in entries.items()}
    assert modes["bin/demo-app"] == (0o755, False)
    assert {mode for name, mode in modes.items() if name != "bin/demo-app"} == {(0o755, True), (0o644, False)}
    assert {(info.uid, info.gid, info.mtime) for info in entries.values()} == {(0, 0, ARTIFACT_MTIME)}
    assert read_member(tarball, "VERSION") == b"1.1.0\n"


def run_build_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILD_SCRIPT), *args], capture_output=True, text=True)


def test_cli_builds_every_requested_version(tmp_path: Path) -> None:
    result = run_build_cli("--version", "1.0.0", "--version", "2.0.0", "--out", str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "demo-app-1.0.0.tar.gz",
        "demo-app-1.0.0.tar.gz.sha256",
        "demo-app-2.0.0.tar.gz",
        "demo-app-2.0.0.tar.gz.sha256",
    ]
    assert result.stdout.splitlines() == [
        str(tmp_path / "demo-app-1.0.0.tar.gz"),
        str(tmp_path / "demo-app-2.0.0.tar.gz"),
    ]


def test_cli_refuses_an_unsafe_version_before_building_anything(tmp_path: Path) -> None:
    result = run_build_cli("--version", "1.0.0", "--version", "$(id)", "--out", str(tmp_path))

    assert result.returncode == 2
    assert "Invalid version '$(id)'" in result.stderr
    assert list(tmp_path.iterdir()) == []
