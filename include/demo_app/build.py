"""Build demo-app release artifacts: ``demo-app-<version>.tar.gz`` plus its ``.sha256``.

The release DAG downloads these, checks the checksum and unpacks them into
``<root>/releases/<version>/``. Builds are reproducible (sorted entries, fixed mtimes, owner
0:0, gzip header without name or time), so rebuilding a version yields the same bytes and the
same checksum, and an artifact can be rebuilt instead of archived.

Each migration ships from the app version that introduced it onwards (``MIGRATIONS_SINCE``),
and a version whose name contains ``broken`` carries a ``BROKEN`` marker whose ``/health``
answers 503: that is how a demo shows an automatic rollback.

Usage::

    python include/demo_app/build.py --version 1.0.0 --version 2.0.0 --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
LEADING_NUMBERS = re.compile(r"^\d+(?:\.\d+)*")

# Which app version introduced each migration; migrations not listed ship with every version.
MIGRATIONS_SINCE = {
    "V1__create_items.sql": "1.0.0",
    "V2__add_item_category.sql": "1.1.0",
}

# 1980-01-01, the earliest time every archive format can store: a fixed, plausible mtime.
ARTIFACT_MTIME = 315532800
CONTROL_SCRIPT = "bin/demo-app"


def validate_version(version: str) -> str:
    """Refuse versions that could escape the releases directory or be read as shell syntax."""
    if not VERSION_PATTERN.fullmatch(version):
        raise ValueError(
            f"Invalid version {version!r}: use 1-64 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit (e.g. 2.1.0 or 2.1.0-broken)"
        )
    return version


def version_key(version: str) -> tuple[int, ...]:
    """The leading dotted numbers of a version, for numeric comparison (``1.10.0`` > ``1.9.2``)."""
    match = LEADING_NUMBERS.match(version)
    if not match:
        raise ValueError(
            f"Version {version!r} does not start with a dotted number like 1.2.0, "
            "so it is unclear which migrations it ships"
        )
    return tuple(int(part) for part in match.group().split("."))


def version_at_least(version: str, minimum: str) -> bool:
    left, right = version_key(version), version_key(minimum)
    width = max(len(left), len(right))
    return left + (0,) * (width - len(left)) >= right + (0,) * (width - len(right))


def is_broken_version(version: str) -> bool:
    return "broken" in version.lower()


def artifact_files(version: str) -> dict[str, bytes]:
    """Every file of the artifact, by its path inside the tarball."""
    files = {"VERSION": f"{version}\n".encode()}
    if is_broken_version(version):
        files["BROKEN"] = b"This build is deliberately broken: /health answers 503.\n"
    files[CONTROL_SCRIPT] = (SOURCE_DIR / CONTROL_SCRIPT).read_bytes()
    for source in sorted((SOURCE_DIR / "app").glob("*.py")):
        files[f"app/{source.name}"] = source.read_bytes()
    for migration in sorted((SOURCE_DIR / "migrations").glob("*.sql")):
        since = MIGRATIONS_SINCE.get(migration.name)
        if since is None or version_at_least(version, since):
            files[f"migrations/{migration.name}"] = migration.read_bytes()
    return files


def tar_entry(name: str, *, directory: bool = False, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else mode
    info.size = size
    info.mtime = ARTIFACT_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def tarball_bytes(files: dict[str, bytes]) -> bytes:
    """A gzipped tar of ``files`` whose bytes depend only on ``files``."""
    directories = {str(parent) for name in files for parent in Path(name).parents if str(parent) != "."}
    entries = sorted([(name, True) for name in directories] + [(name, False) for name in files])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, directory in entries:
            if directory:
                tar.addfile(tar_entry(name, directory=True))
            else:
                mode = 0o755 if name == CONTROL_SCRIPT else 0o644
                tar.addfile(tar_entry(name, size=len(files[name]), mode=mode), io.BytesIO(files[name]))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()


def write_atomically(path: Path, content: bytes) -> None:
    """Write beside ``path`` and rename, so a reader sees the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def build_artifact(version: str, out_dir: Path) -> Path:
    """Build ``out_dir/demo-app-<version>.tar.gz`` and its ``.sha256``; return the tarball's path.

    :param version: release version; validated, as it becomes a directory name on every host.
    :param out_dir: directory for the artifact, created if missing.
    """
    validate_version(version)
    version_key(version)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    content = tarball_bytes(artifact_files(version))
    tarball = out_dir / f"demo-app-{version}.tar.gz"
    write_atomically(tarball, content)
    checksum = hashlib.sha256(content).hexdigest()
    write_atomically(tarball.with_name(f"{tarball.name}.sha256"), f"{checksum}  {tarball.name}\n".encode())
    return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build reproducible demo-app release artifacts.")
    parser.add_argument(
        "--version", dest="versions", action="append", required=True, help="version to build (repeatable)"
    )
    parser.add_argument("--out", required=True, type=Path, help="directory for the artifacts")
    args = parser.parse_args(argv)
    try:
        for version in args.versions:
            validate_version(version)
            version_key(version)
    except ValueError as exc:
        parser.error(str(exc))
    for version in args.versions:
        print(build_artifact(version, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
