"""Reading ``airflow db clean`` output: rows purged per table."""

from __future__ import annotations

from airlock.core.housekeeping import purged_rows, split_evidence_tables


def test_rows_per_table_are_read_from_the_db_clean_output():
    output = (
        "Checking table dag_run\nFound 12 rows meeting deletion criteria.\n\n"
        "Checking table log\nFound 0 rows meeting deletion criteria.\nChecking table xcom\n"
    )

    assert purged_rows(output) == {"dag_run": 12, "log": 0}


def test_a_count_without_a_table_before_it_is_ignored():
    assert purged_rows("Found 3 rows meeting deletion criteria.\nChecking table log\n") == {}


def test_tables_whose_purge_reaches_approval_evidence_are_set_apart():
    # airflow db clean's dependencies: purging a dag_run purges its task instances (and their
    # HITL rows), a trigger its deferred task instances, a dag its versions and so on.
    dependents = {
        "dag": ["dag_version", "deadline"],
        "dag_version": ["task_instance", "dag_run"],
        "dag_run": ["task_instance", "deadline"],
        "task_instance": ["task_instance_history", "xcom"],
        "trigger": ["task_instance"],
        "deadline": [],
        "job": [],
        "import_error": [],
        "log": [],
        "xcom": [],
    }

    plain, evidence = split_evidence_tables(dependents, dependents)

    assert sorted(plain) == ["deadline", "import_error", "job"]
    assert sorted(evidence) == ["dag", "dag_run", "dag_version", "log", "task_instance", "trigger", "xcom"]
