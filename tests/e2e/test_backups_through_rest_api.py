"""``backup_demo`` run by the real scheduler and workers, triggered over REST as an operator would."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit


def test_a_triggered_backup_is_dumped_verified_and_published(stack):
    environment = stack.environment()
    destination = Path(urlsplit(environment.backup.destination).path)
    before = {path.name for path in destination.iterdir()} if destination.is_dir() else set()

    state = stack.wait_for_run("backup_demo", stack.trigger("backup_demo"))

    assert state == "success"
    new = [
        path for path in destination.iterdir() if path.name not in before and not path.name.startswith(".")
    ]
    assert len(new) == 1
    manifest = (new[0] / "manifest.json").read_text()
    assert '"verified_at": "' in manifest
    assert (new[0].stat().st_mode & 0o777) == 0o700
