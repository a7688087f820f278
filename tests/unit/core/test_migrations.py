"""Migration files: names, order, fingerprints, the no-transaction marker and the plan's Markdown."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from airlock.core.migrations import (
    MigrationError,
    discover_migrations,
    pending_migrations_markdown,
    plan_entry,
    split_statements,
)


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


@pytest.mark.parametrize(
    ("filename", "version", "version_text", "description"),
    [
        pytest.param("V1__create_orders.sql", (1,), "1", "create orders", id="single-number"),
        pytest.param("V1.1__add_status.sql", (1, 1), "1.1", "add status", id="dotted"),
        pytest.param("V2_1__add_index.sql", (2, 1), "2.1", "add index", id="underscored"),
        pytest.param("V010.02__leading_zeros.sql", (10, 2), "10.2", "leading zeros", id="leading-zeros"),
        pytest.param("V2.0.0__trailing_zeros.sql", (2,), "2", "trailing zeros", id="trailing-zeros-dropped"),
    ],
)
def test_file_name_gives_version_and_description(
    tmp_path: Path, filename: str, version: tuple[int, ...], version_text: str, description: str
) -> None:
    [migration] = discover_migrations(write(tmp_path, {filename: "SELECT 1;\n"}))

    assert (migration.version, migration.version_text, migration.description) == (
        version,
        version_text,
        description,
    )
    assert migration.filename == filename
    assert migration.sql == "SELECT 1;\n"


@pytest.mark.parametrize(
    ("filenames", "expected"),
    [
        pytest.param(["V10__b.sql", "V2__a.sql", "V1__c.sql"], ["1", "2", "10"], id="V2-before-V10"),
        pytest.param(
            ["V1.10__b.sql", "V1.2__a.sql", "V1.1__c.sql"], ["1.1", "1.2", "1.10"], id="V1.1-before-V1.10"
        ),
        pytest.param(
            ["V2__b.sql", "V1.5__a.sql", "V1__c.sql"], ["1", "1.5", "2"], id="V1-before-V1.5-before-V2"
        ),
    ],
)
def test_migrations_are_ordered_by_numeric_version(
    tmp_path: Path, filenames: list[str], expected: list[str]
) -> None:
    migrations = discover_migrations(write(tmp_path, dict.fromkeys(filenames, "SELECT 1;")))

    assert [migration.version_text for migration in migrations] == expected


@pytest.mark.parametrize(
    "filenames",
    [
        pytest.param(["V1.1__first.sql", "V1.1__second.sql"], id="same-text"),
        pytest.param(["V1.1__first.sql", "V1_1__second.sql"], id="dot-and-underscore"),
        pytest.param(["V01__first.sql", "V1__second.sql"], id="leading-zero"),
        pytest.param(["V1.0__first.sql", "V1__second.sql"], id="trailing-zero"),
    ],
)
def test_two_files_of_one_version_are_refused(tmp_path: Path, filenames: list[str]) -> None:
    write(tmp_path, dict.fromkeys(filenames, "SELECT 1;"))

    with pytest.raises(MigrationError, match=r"__second\.sql: version 1(\.1)? already used by V"):
        discover_migrations(tmp_path)


@pytest.mark.parametrize(
    "filename",
    [
        pytest.param("V1_create_orders.sql", id="single-underscore"),
        pytest.param("v1__create_orders.sql", id="lowercase-prefix"),
        pytest.param("V1.x__create_orders.sql", id="non-numeric-version"),
        pytest.param("V1__.sql", id="no-description"),
        pytest.param("seed.sql", id="not-a-migration"),
        pytest.param("R__refresh_views.sql", id="repeatable-not-supported"),
    ],
)
def test_badly_named_sql_file_is_refused_by_name(tmp_path: Path, filename: str) -> None:
    write(tmp_path, {"V1__fine.sql": "SELECT 1;", filename: "SELECT 1;"})

    with pytest.raises(MigrationError, match=f"^{re.escape(filename)}: not a migration file name"):
        discover_migrations(tmp_path)


def test_files_other_than_sql_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, {"V1__fine.sql": "SELECT 1;", "README.md": "how to write migrations"})

    assert [migration.filename for migration in discover_migrations(tmp_path)] == ["V1__fine.sql"]


def test_undo_script_is_attached_to_its_migration(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "V1__create_orders.sql": "CREATE TABLE orders (id int);",
            "U1__drop_orders.sql": "DROP TABLE orders;",
            "V2__create_items.sql": "CREATE TABLE items (id int);",
        },
    )

    first, second = discover_migrations(tmp_path)

    assert first.undo_sql == "DROP TABLE orders;"
    assert first.undo_path == tmp_path / "U1__drop_orders.sql"
    assert second.undo_sql is None


def test_undo_script_without_its_migration_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"V1__create_orders.sql": "SELECT 1;", "U2__drop_items.sql": "SELECT 1;"})

    with pytest.raises(MigrationError, match=r"^U2__drop_items\.sql: undo script without a migration V2"):
        discover_migrations(tmp_path)


@pytest.mark.parametrize(
    ("text", "transactional"),
    [
        pytest.param("CREATE TABLE t (id int);\n", True, id="no-marker"),
        pytest.param(
            "-- airlock:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (id);\n",
            False,
            id="marker-first-line",
        ),
        pytest.param(
            "-- builds online\n  --  airlock:no-transaction  \nVACUUM t;\n", False, id="marker-indented"
        ),
        pytest.param("SELECT 1; -- airlock:no-transaction\n", True, id="marker-after-code-does-not-count"),
        pytest.param(
            "-- see airlock:no-transaction in the docs\nSELECT 1;\n", True, id="marker-mentioned-in-prose"
        ),
    ],
)
def test_no_transaction_marker_is_a_line_of_its_own(tmp_path: Path, text: str, transactional: bool) -> None:
    [migration] = discover_migrations(write(tmp_path, {"V1__m.sql": text}))

    assert migration.transactional is transactional


def test_checksum_is_sha256_of_the_file_and_changes_with_its_content(tmp_path: Path) -> None:
    path = tmp_path / "V1__create_orders.sql"
    path.write_text("CREATE TABLE orders (id int);\n")
    [before] = discover_migrations(tmp_path)
    [unchanged] = discover_migrations(tmp_path)
    expected = hashlib.sha256(b"CREATE TABLE orders (id int);\n").hexdigest()

    path.write_text("CREATE TABLE orders (id bigint);\n")
    [after] = discover_migrations(tmp_path)

    assert before.checksum == expected
    assert unchanged.checksum == before.checksum
    assert after.checksum != before.checksum


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="migrations directory does not exist"):
        discover_migrations(tmp_path / "missing")


def test_statements_split_on_top_level_semicolons_only() -> None:
    script = """
    -- airlock:no-transaction
    CREATE INDEX CONCURRENTLY orders_note ON orders (note); /* a; comment */
    INSERT INTO notes VALUES ('semi;colon', "odd;name", $$body;$$, $tag$ more; $tag$);
    -- trailing comment;
    """

    assert split_statements(script) == [
        "-- airlock:no-transaction\n    CREATE INDEX CONCURRENTLY orders_note ON orders (note);",
        "/* a; comment */\n    INSERT INTO notes VALUES "
        "('semi;colon', \"odd;name\", $$body;$$, $tag$ more; $tag$);",
    ]


def rendered(markdown: str) -> list[tuple[str, str, str]]:
    """What a CommonMark renderer makes of ``markdown``: (kind, info, content) per block."""
    blocks = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type == "fence":
            blocks.append(("code", token.info, token.content))
        elif token.type == "inline":
            blocks.append(("text", "", token.content))
    return blocks


def test_plan_lists_each_pending_migration_with_its_sql_in_order(tmp_path: Path) -> None:
    migrations = discover_migrations(
        write(
            tmp_path,
            {
                "V1__create_orders.sql": "CREATE TABLE orders (id int);\n",
                "V2__index_orders.sql": (
                    "-- airlock:no-transaction\nCREATE INDEX CONCURRENTLY i ON orders (id);\n"
                ),
            },
        )
    )

    plan = pending_migrations_markdown([plan_entry(migration) for migration in migrations])

    assert rendered(plan) == [
        ("text", "", "`V1__create_orders.sql`"),
        ("code", "sql", "CREATE TABLE orders (id int);\n"),
        ("text", "", "`V2__index_orders.sql` (runs outside a transaction)"),
        ("code", "sql", "-- airlock:no-transaction\nCREATE INDEX CONCURRENTLY i ON orders (id);\n"),
    ]


def test_plan_entry_carries_file_version_and_sql(tmp_path: Path) -> None:
    [migration] = discover_migrations(write(tmp_path, {"V1.2__add_status.sql": "ALTER TABLE t ADD s int;"}))

    assert plan_entry(migration) == {
        "file": "V1.2__add_status.sql",
        "version": "1.2",
        "sql": "ALTER TABLE t ADD s int;",
    }


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            "/* usage:\n```\n# not a heading\n```\n*/\nCREATE TABLE t (id int);", id="fence-in-block-comment"
        ),
        pytest.param("COMMENT ON TABLE t IS '\n````\n**not bold**\n````\n';", id="longer-fence-in-string"),
        pytest.param("SELECT 1;\n```", id="fence-as-last-line"),
    ],
)
def test_sql_holding_backtick_fences_stays_one_code_block(script: str) -> None:
    plan = pending_migrations_markdown([{"file": "V1__t.sql", "sql": script}])

    assert rendered(plan) == [("text", "", "`V1__t.sql`"), ("code", "sql", script + "\n")]


def test_file_name_with_a_backtick_stays_inline_code() -> None:
    plan = pending_migrations_markdown([{"file": "V1__odd`name.sql", "sql": "SELECT 1;"}])

    [(_, _, heading), _] = rendered(plan)
    [code] = [t for t in MarkdownIt("commonmark").parseInline(heading)[0].children if t.type == "code_inline"]
    assert code.content == "V1__odd`name.sql"


def test_plan_without_pending_migrations_says_none_pending() -> None:
    assert pending_migrations_markdown([]) == "None pending."
