"""The database maintenance report and the REINDEX decision, from inspection results alone."""

from __future__ import annotations

import pytest

from airlock.core.db_maintenance import human_size, indexes_to_rebuild, maintenance_report, redact_query
from tests.support import demo_document, write_environment


@pytest.fixture
def environment(tmp_path):
    document = demo_document()
    document["db_maintenance"] = {"reindex_bloat_percent": 40, "dead_tuple_threshold": 1000}
    return write_environment(tmp_path / "staging.yaml", document)


def inspection(**overrides):
    found = {
        "database": "app",
        "vacuum_candidates": [{"schema": "public", "table": "orders", "dead_tuples": 5000}],
        "sessions": [],
        "invalid_indexes": [],
        "unused_indexes": [],
        "pgstattuple": True,
        "table_bloat": [],
        "index_bloat": [
            {
                "schema": "public",
                "index": "orders_pkey",
                "table": "orders",
                "bytes": 3 * 1024**2,
                "bloat_percent": 55.0,
            },
            {
                "schema": "public",
                "index": "orders_note",
                "table": "orders",
                "bytes": 2048,
                "bloat_percent": 10.0,
            },
            {
                "schema": "public",
                "index": "orders_new",
                "table": "orders",
                "bytes": 2048,
                "bloat_percent": None,
            },
        ],
        "bloat_error": None,
    }
    return {**found, **overrides}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(None, "?", id="unknown"),
        pytest.param(512, "512 bytes", id="bytes"),
        pytest.param(1536, "1.5 kB", id="kilobytes"),
        pytest.param(3 * 1024**2, "3.0 MB", id="megabytes"),
        pytest.param(5 * 1024**4, "5120.0 GB", id="gigabytes-at-most"),
    ],
)
def test_sizes_are_shown_in_the_largest_unit_up_to_gigabytes(value, shown):
    assert human_size(value) == shown


def test_only_measured_indexes_over_the_limit_are_rebuilt(environment):
    rebuilt = indexes_to_rebuild(environment.db_maintenance, inspection()["index_bloat"])

    assert [index["index"] for index in rebuilt] == ["orders_pkey"]


def test_nothing_is_rebuilt_when_no_limit_is_set(environment):
    settings = environment.db_maintenance.model_copy(update={"reindex_bloat_percent": None})

    assert indexes_to_rebuild(settings, inspection()["index_bloat"]) == []


def test_a_dry_run_report_says_what_would_happen_and_needs_nobody(environment):
    report = maintenance_report(environment, inspection(), None, None, dry_run=True)

    lines = report["markdown"].splitlines()
    assert lines[0] == "# Database maintenance of staging (app) - dry run, nothing changed"
    assert "- would vacuum public.orders: 5000 dead tuples" in lines
    assert "- index public.orders_pkey on orders: 3.0 MB, bloat 55.0% (over the REINDEX limit)" in lines
    assert "- would rebuild orders_pkey" in lines
    assert report["attention"] == []


def test_tuples_held_back_and_failed_rebuilds_need_a_person(environment):
    vacuumed = [
        {
            "table": "public.orders",
            "outcome": "vacuumed",
            "dead_tuples_before": 5000,
            "dead_tuples_after": 4000,
        }
    ]
    reindexed = [
        {
            "index": "public.orders_pkey",
            "bloat_percent": 55.0,
            "bytes_before": 3 * 1024**2,
            "outcome": "failed",
            "detail": "canceling statement due to lock timeout",
        }
    ]

    report = maintenance_report(environment, inspection(), vacuumed, reindexed, dry_run=False)

    assert "- public.orders: vacuumed, dead tuples 5000 -> 4000" in report["markdown"].splitlines()
    assert report["attention"] == [
        "public.orders still has 4000 dead tuples after VACUUM: "
        "an old transaction holds them back (see sessions)",
        "REINDEX CONCURRENTLY public.orders_pkey failed: canceling statement due to lock timeout",
    ]


def test_a_failed_inspection_is_the_whole_report(environment):
    report = maintenance_report(environment, None, None, None, dry_run=False)

    assert report == {
        "markdown": "# Database maintenance of staging\n\n"
        "- the inspect task failed: nothing was vacuumed or rebuilt (see its log)",
        "attention": ["the inspect task failed: nothing was vacuumed or rebuilt (see its log)"],
    }


def test_invalid_indexes_and_long_sessions_are_listed_and_need_a_person(environment):
    found = inspection(
        vacuum_candidates=[],
        index_bloat=[],
        sessions=[
            {
                "pid": 42,
                "user": "app",
                "application_name": "",
                "state": "idle in transaction",
                "seconds": 900,
                "query": "SELECT 1",
            }
        ],
        invalid_indexes=[{"schema": "public", "index": "orders_ccnew", "table": "orders"}],
    )

    report = maintenance_report(environment, found, [], [], dry_run=False)

    assert report["attention"] == [
        "session pid 42 (app, no application name) idle in transaction for 900 s: SELECT 1",
        "invalid index public.orders_ccnew",
    ]
    assert "- public.orders_ccnew on orders: drop it with DROP INDEX CONCURRENTLY, then rebuild" in (
        report["markdown"].splitlines()
    )


@pytest.mark.parametrize(
    ("query", "shape"),
    [
        pytest.param("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD ?", id="password"),
        pytest.param(
            "SELECT * FROM users WHERE email = 'ann@example.com' AND id = 42 -- ticket 991",
            "SELECT * FROM users WHERE email = ? AND id = ?",
            id="string-number-comment",
        ),
        pytest.param(
            "UPDATE t SET v = E'it\\'s x' /* key=abc */, w = $tag$ secret $tag$, n = 1.5e3 WHERE c = $1",
            "UPDATE t SET v = ? , w = ?, n = ? WHERE c = $1",
            id="escape-dollar-quoted",
        ),
        pytest.param(
            'SELECT "Col""1", t2.c3 FROM "T"', 'SELECT "Col""1", t2.c3 FROM "T"', id="identifiers-stay"
        ),
        pytest.param(
            "INSERT INTO cards VALUES ('4111 1111 1111", "INSERT INTO cards VALUES (?", id="cut-off"
        ),
    ],
)
def test_session_statements_are_reduced_to_their_shape(query, shape):
    assert redact_query(query) == shape


def test_a_redacted_statement_is_cut_to_the_report_length():
    redacted = redact_query("SELECT " + ", ".join(f"column_{i}" for i in range(100)))

    assert len(redacted) == 120
    assert redacted.endswith("…")
