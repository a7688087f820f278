"""The layering of ``plugins/airlock`` holds: read from the source, so a stray import fails here.

``docs/architecture.md`` states the rules; each test below is one of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import PROJECT

PACKAGE = PROJECT / "plugins" / "airlock"
DAGS = PROJECT / "dags"

# The Airflow names that turn a connection id into a client.
CLIENT_FACTORIES = {"PostgresHook", "RedisHook", "SSHHook", "BaseHook", "get_connection"}
AIRFLOW_EXCEPTIONS = {"AirflowFailException", "AirflowSkipException", "AirflowException"}


def modules(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_modules(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def names_used(tree: ast.AST) -> set[str]:
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            used.update(alias.name for alias in node.names)
    return used


def parsed(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def where(path: Path) -> str:
    return str(path.relative_to(PROJECT))


@pytest.mark.parametrize("path", modules(PACKAGE / "core"), ids=where)
def test_core_imports_no_airflow_and_nothing_above_it(path):
    imports = imported_modules(parsed(path))
    airflow = sorted(name for name in imports if name.split(".")[0] == "airflow")
    above = sorted(
        name
        for name in imports
        if name.startswith("airlock.") and name.split(".")[1] not in {"core", "config"}
    )
    assert not airflow, f"{where(path)} imports Airflow: {airflow}"
    assert not above, f"{where(path)} imports from a layer above core: {above}"


@pytest.mark.parametrize("path", modules(PACKAGE / "config"), ids=where)
def test_config_imports_no_airflow_and_no_other_layer(path):
    imports = imported_modules(parsed(path))
    assert not [n for n in imports if n.split(".")[0] == "airflow"], f"{where(path)} imports Airflow"
    assert not [n for n in imports if n.startswith("airlock.") and not n.startswith("airlock.config")]


def test_only_hooks_turn_a_connection_id_into_a_client():
    offenders = {}
    for path in modules(PACKAGE) + modules(DAGS):
        if path.is_relative_to(PACKAGE / "hooks"):
            continue
        used = CLIENT_FACTORIES & names_used(parsed(path))
        if used:
            offenders[where(path)] = sorted(used)
    assert offenders == {}, f"connections opened outside airlock/hooks: {offenders}"


def test_psycopg_connects_only_in_hooks():
    for path in modules(PACKAGE) + modules(DAGS):
        if path.is_relative_to(PACKAGE / "hooks"):
            continue
        text = path.read_text()
        assert "psycopg.connect(" not in text, f"{where(path)} opens a database connection itself"


def test_only_tasks_and_operators_read_the_context_or_raise_airflow_exceptions():
    allowed = {"tasks", "operators", "listeners", "executors", "notifications"}
    offenders = {}
    for path in modules(PACKAGE) + modules(DAGS):
        if path.is_relative_to(PACKAGE) and layer_of(path) in allowed:
            continue
        used = names_used(parsed(path)) & ({"get_current_context"} | AIRFLOW_EXCEPTIONS)
        if used:
            offenders[where(path)] = sorted(used)
    assert offenders == {}, f"context or Airflow exceptions outside airlock/tasks: {offenders}"


@pytest.mark.parametrize("path", modules(DAGS), ids=where)
def test_dag_files_use_the_trigger_rule_enum(path):
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.keyword) and node.arg == "trigger_rule":
            assert not isinstance(node.value, ast.Constant), (
                f"{where(path)}:{node.value.lineno} spells a trigger rule as a string; use TriggerRule"
            )


@pytest.mark.parametrize("path", modules(DAGS), ids=where)
def test_scheduled_dags_start_at_the_one_start_date(path):
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DAG":
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            schedule = keywords.get("schedule")
            if schedule is None or (isinstance(schedule, ast.Constant) and schedule.value is None):
                continue
            start = keywords.get("start_date")
            rule = f"{where(path)}: a scheduled DAG takes start_date=START_DATE from airlock.conventions"
            assert isinstance(start, ast.Name), rule
            assert start.id == "START_DATE", rule


def test_dev_tooling_stays_out_of_the_package_and_the_dags():
    for path in modules(PACKAGE) + modules(DAGS):
        imports = imported_modules(parsed(path))
        assert not [n for n in imports if n.split(".")[0] == "airlock_dev"], (
            f"{where(path)} imports the dev tooling (tools/airlock_dev)"
        )


@pytest.mark.parametrize("path", modules(PACKAGE / "web"), ids=where)
def test_the_board_reads_its_data_only_through_hooks(path):
    imports = imported_modules(parsed(path))
    clients = sorted(name for name in imports if name.split(".")[0] in {"psycopg", "redis", "sqlalchemy"})
    above = sorted(name for name in imports if name.startswith("airlock.tasks"))
    assert not clients, f"{where(path)} reaches a database or Redis itself: {clients}"
    assert not above, f"{where(path)} imports task bodies: {above}"
