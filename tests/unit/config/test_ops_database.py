"""Where the audit trail goes: a database of its own unless the environment says otherwise."""

from __future__ import annotations

from pathlib import Path

import yaml

from airlock.config import load_environment
from tests.support import demo_document


def load(tmp_path: Path, database: dict):
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump({**demo_document(), "database": database}))
    return load_environment(path)


def test_the_audit_trail_defaults_to_the_airlock_ops_connection_not_the_application_database(tmp_path):
    environment = load(tmp_path, {"conn_id": "shop_db"})

    assert environment.database.ops_connection == "airlock_ops"
    assert environment.database.ops_connection != environment.database.conn_id


def test_an_environment_may_still_keep_it_in_the_application_database(tmp_path):
    environment = load(tmp_path, {"conn_id": "shop_db", "ops_conn_id": "shop_db"})

    assert environment.database.ops_connection == "shop_db"
