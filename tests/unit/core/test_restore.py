"""What a restore plan tells the approvers, the names of the databases a restore makes, what it
reads from a dump archive about the database itself, and the rights its admin role needs."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from airlock.core.backups import backup_name
from airlock.core.restore import (
    BACKUP_PARAM_PATTERN,
    AdminRights,
    RestorePlan,
    database_entries,
    database_properties,
    interrupted_restore_pattern,
    names_of_restore,
    restore_names,
    sibling_name,
    unchecked_swap_pattern,
)

SUMMARY = {
    "name": "demo-20261126T020000Z",
    "kind": "scheduled",
    "finished_at": "2026-11-26T02:00:41+00:00",
    "bytes": 81234,
    "tables": 4,
    "rows": 5120,
    "verified_at": "2026-11-26T02:01:30+00:00",
}


def plan(**changes) -> RestorePlan:
    return RestorePlan(
        **{
            "environment": "demo",
            "database": "app",
            "backup": SUMMARY,
            "triggered_by": "alice",
            "reason": "bad data import",
            **changes,
        }
    )


def test_the_plan_names_the_backup_who_asked_why_and_what_is_lost():
    markdown = plan().to_markdown()

    assert markdown.startswith("## Restore the demo database `app`\n")
    assert "- Requested by **alice**: bad data import\n" in markdown
    assert (
        "- Backup `demo-20261126T020000Z` (scheduled), taken 2026-11-26T02:00:41+00:00, "
        "verified at 2026-11-26T02:01:30+00:00\n" in markdown
    )
    assert "- 4 tables, 5120 rows, 81234 bytes\n" in markdown
    assert "1. A safety backup of `app` as it is now (kind pre-restore)." in markdown
    assert "`app` is renamed `app_before_restore_<time>` and kept" in markdown
    assert markdown.endswith(
        "**Writes made after 2026-11-26T02:00:41+00:00 will not be in `app`** "
        "(they stay in the kept database)."
    )


def test_the_plan_of_an_unverified_backup_says_it_is_checked_before_the_swap():
    markdown = plan(backup={**SUMMARY, "verified_at": None}, reason="").to_markdown()

    assert "**not verified**: its checksums and row counts are checked before the swap" in markdown
    assert "verified at" not in markdown
    assert "- Requested by **alice**\n" in markdown


def test_names_beside_a_long_database_name_stay_within_postgresqls_limit():
    name = sibling_name("d" * 63, "_before_restore_20261126120000")

    assert len(name.encode()) == 63
    assert name == "d" * 33 + "_before_restore_20261126120000"


def test_a_long_name_is_never_cut_inside_a_character():
    name = sibling_name("ü" * 30, "_restore_20261126120000")  # 60 bytes + 23

    assert len(name.encode()) <= 63
    assert name == "ü" * 20 + "_restore_20261126120000"


def test_a_short_name_gets_the_whole_suffix():
    assert sibling_name("app", "_restore_20261126120000") == "app_restore_20261126120000"


@pytest.mark.parametrize("kind", ["scheduled", "manual", "pre-release", "pre-restore"])
def test_the_backup_param_accepts_every_name_a_backup_gets(kind):
    name = backup_name("demo-eu", datetime(2026, 11, 26, 2, tzinfo=UTC), kind)

    assert re.fullmatch(BACKUP_PARAM_PATTERN, name)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty: the newest verified"),
        pytest.param("demo-20261126T020000Z", id="scheduled"),
        pytest.param("demo-20261126T020000Z-pre-release", id="safety"),
    ],
)
def test_the_backup_param_accepts(value):
    assert re.search(BACKUP_PARAM_PATTERN, value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("../demo-20261126T020000Z", id="path"),
        pytest.param("demo-20261126T020000Z-manual", id="unknown kind"),
        pytest.param("demo-20261126", id="no time"),
        pytest.param("Demo-20261126T020000Z", id="upper case"),
    ],
)
def test_the_backup_param_rejects(value):
    assert not re.search(BACKUP_PARAM_PATTERN, value)


# -- what a dump archive says about the database itself (output of pg_restore 15) ------------------

LISTING = """;
; Archive created at 2026-12-01 16:59:54 UTC
;     dbname: app
;
3344; 1262 16388 DATABASE - app postgres
3345; 0 0 COMMENT - DATABASE app postgres
3346; 0 0 ACL - DATABASE app postgres
3347; 0 0 DATABASE PROPERTIES - app postgres
214; 1259 16389 TABLE public t postgres
3338; 0 16389 TABLE DATA public t postgres
3339; 0 0 COMMENT - TABLE t postgres
"""

SCRIPT = b"""--
-- PostgreSQL database dump
--
\\restrict L9w6TCztsrrnweFp
SET statement_timeout = 0;
SET client_encoding = 'LATIN1';
SELECT pg_catalog.set_config('search_path', '', false);
CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE_PROVIDER = icu LC_COLLATE = 'C' \
LC_CTYPE = 'de_DE.ISO-8859-1' ICU_LOCALE = 'fr';
ALTER DATABASE app OWNER TO postgres;
\\unrestrict L9w6TCztsrrnweFp
\\connect app
SET lock_timeout = 0;
COMMENT ON DATABASE app IS 'it''s \xe9t\xe9 ;
SET x = 1;';
ALTER DATABASE app SET search_path TO '$user', 'public';
ALTER ROLE reader IN DATABASE app SET work_mem TO '8MB';
REVOKE CONNECT,TEMPORARY ON DATABASE app FROM PUBLIC;
GRANT CONNECT ON DATABASE app TO reader;
""".replace(b"\\\n", b"")


def test_only_the_archive_entries_about_the_database_itself_are_selected():
    assert database_entries(LISTING) == [
        "3344; 1262 16388 DATABASE - app postgres",
        "3345; 0 0 COMMENT - DATABASE app postgres",
        "3346; 0 0 ACL - DATABASE app postgres",
        "3347; 0 0 DATABASE PROPERTIES - app postgres",
    ]


def test_an_archive_of_objects_only_has_no_database_entries():
    assert database_entries("214; 1259 16389 TABLE public t postgres\n") == []


def test_the_encoding_and_locale_come_from_the_archives_create_database():
    properties = database_properties(SCRIPT)

    assert properties.create_options == {
        "ENCODING": "LATIN1",
        "LOCALE_PROVIDER": "icu",
        "LC_COLLATE": "C",
        "LC_CTYPE": "de_DE.ISO-8859-1",
        "ICU_LOCALE": "fr",
    }
    assert properties.encoding == "LATIN1"


def test_the_acl_and_settings_are_kept_in_the_archives_encoding_without_session_header_or_owner():
    statements = database_properties(SCRIPT).statements

    assert b"COMMENT ON DATABASE app IS 'it''s \xe9t\xe9 ;\n" in statements  # LATIN1 bytes, untouched
    assert b"ALTER ROLE reader IN DATABASE app SET work_mem TO '8MB';" in statements
    assert b"GRANT CONNECT ON DATABASE app TO reader;" in statements
    for dropped in (
        b"\\connect",
        b"\\restrict",
        b"SET lock_timeout",
        b"client_encoding",
        b"OWNER TO",
        b"CREATE",
    ):
        assert dropped not in statements


def test_a_script_without_create_database_is_refused():
    with pytest.raises(ValueError, match="no CREATE DATABASE"):
        database_properties(b"GRANT CONNECT ON DATABASE app TO reader;\n")


def test_an_unusable_encoding_name_is_refused():
    script = b"CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'x; DROP';\n"

    with pytest.raises(ValueError, match="unusable encoding"):
        database_properties(script)


# -- names of a restore's databases ---------------------------------------------------------------


def test_a_restore_in_the_same_second_as_another_gets_the_next_free_stamp():
    when = datetime(2026, 12, 1, 17, 0, 0, tzinfo=UTC)

    names = restore_names("app", when, ["app", "app_before_restore_20261201170000"])

    assert names == {
        "restored": "app_restore_20261201170001",
        "unchecked": "app_unchecked_restore_20261201170001",
        "kept": "app_before_restore_20261201170001",
        "failed": "app_failed_restore_20261201170001",
    }


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        pytest.param("app_restore_20261201170000", True, id="an-unswapped-copy"),
        pytest.param("app", False, id="the-live-database"),
        pytest.param("app_before_restore_20261201170000", False, id="a-kept-database"),
        pytest.param("app_failed_restore_20261201170000", False, id="a-failed-restore"),
        pytest.param("app_unchecked_restore_20261201170000", False, id="an-unchecked-swap"),
        pytest.param("app_restore_2026120117", False, id="not-a-stamp"),
        pytest.param("app2_restore_20261201170000", False, id="another-database"),
    ],
)
def test_only_unswapped_copies_count_as_interrupted_restores(name, matches):
    assert bool(interrupted_restore_pattern("app").match(name)) is matches


def test_interrupted_copies_of_a_long_name_are_recognised():
    database = "d" * 63

    assert interrupted_restore_pattern(database).match(sibling_name(database, "_restore_20261201170000"))


# -- the admin role's rights ----------------------------------------------------------------------


def test_a_superuser_admin_lacks_nothing():
    assert AdminRights("postgres", True, False, False, False).missing("app") == []


def test_each_missing_right_is_named_with_its_fix():
    assert AdminRights("restorer", False, False, False, False).missing("app") == [
        "ALTER ROLE restorer CREATEDB",
        "GRANT app TO restorer (the database's owner)",
        "GRANT pg_signal_backend TO restorer (to end the database's sessions)",
    ]
    assert AdminRights("restorer", False, True, True, True).missing("app") == []


def test_an_unchecked_swap_is_recognised_with_its_stamp():
    found = unchecked_swap_pattern("app").match("app_unchecked_restore_20261201170000")

    assert found["stamp"] == "20261201170000"
    assert names_of_restore("app", found["stamp"])["kept"] == "app_before_restore_20261201170000"
    assert not unchecked_swap_pattern("app").match("app_restore_20261201170000")
