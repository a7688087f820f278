"""Helpers shared by the tests: environment files shaped like the demo's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from airlock.config import Environment, load_environment

PROJECT = Path(__file__).resolve().parents[1]
DEMO_ENVIRONMENT = PROJECT / "include" / "environments" / "demo.yaml"


def demo_document() -> dict[str, Any]:
    """The demo environment file as written (``${...}`` references not yet expanded)."""
    return yaml.safe_load(DEMO_ENVIRONMENT.read_text())


def write_environment(path: Path, document: dict[str, Any]) -> Environment:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_environment(path)


def write_sandbox_environment(
    path: Path, *, base: Path, ssh_ports: list[int], app_ports: list[int], **overrides: Any
) -> Environment:
    """The demo environment moved to the given ports and to directories under ``base``."""
    document = demo_document()
    document["hosts"] = [
        {
            "name": f"web-{index}",
            "address": "127.0.0.1",
            "ssh_port": ssh_port,
            "app_url": f"http://127.0.0.1:{app_port}",
            "root": str(base / "hosts" / f"web-{index}" / "srv" / "demo-app"),
        }
        for index, (ssh_port, app_port) in enumerate(zip(ssh_ports, app_ports, strict=True), start=1)
    ]
    document["ssh"]["known_hosts"] = str(base / "known_hosts")
    document["deploy"]["artifact_url"] = f"file://{base}/artifacts/demo-app-{{version}}.tar.gz"
    document["backup"]["destination"] = f"file://{base}/backups"
    document.update(overrides)
    return write_environment(path, document)
