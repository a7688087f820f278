"""Reading ``airflow db clean`` output: rows purged per table."""

from __future__ import annotations

from airlock.core.housekeeping import purged_rows


def test_rows_per_table_are_read_from_the_db_clean_output():
    output = (
        "Checking table dag_run\nFound 12 rows meeting deletion criteria.\n\n"
        "Checking table log\nFound 0 rows meeting deletion criteria.\nChecking table xcom\n"
    )

    assert purged_rows(output) == {"dag_run": 12, "log": 0}


def test_a_count_without_a_table_before_it_is_ignored():
    assert purged_rows("Found 3 rows meeting deletion criteria.\nChecking table log\n") == {}
