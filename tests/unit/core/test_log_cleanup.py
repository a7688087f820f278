"""The command sent to a host, the settings it is built from, and the report read from its answer."""

from __future__ import annotations

import shlex

import pytest
from pydantic import ValidationError

from airlock.config import LogSettings
from airlock.core.log_cleanup import (
    MissingToolsError,
    PartialProcError,
    cleanup_command,
    describe_open_files_check,
    parse_report,
    summarize_cleanup,
)
from tests.support import PROJECT

SCRIPT = PROJECT / "include" / "host" / "log_cleanup.sh"


def test_every_setting_reaches_the_host_as_its_own_argument_never_as_code():
    settings = LogSettings(patterns=["*.log", "it's $(id).out"], compress_after_days=2, delete_after_days=9)
    directories = ["/srv/app/shared/log", "/var/log/my app; rm -rf /"]

    argv = shlex.split(cleanup_command(settings, directories, dry_run=True))

    assert argv == [
        "bash",
        "-c",
        SCRIPT.read_text(),
        "airlock-log-cleanup",
        "dry-run",
        "refuse",
        "delete",
        str(2 * 1440),
        str(9 * 1440),
        "50",
        "2",
        "*.log",
        "it's $(id).out",
        *directories,
    ]


def test_allow_partial_proc_is_passed_to_the_script_and_defaults_to_refusing():
    allowed = LogSettings(allow_partial_proc=True)

    assert shlex.split(cleanup_command(allowed, ["/l"], dry_run=False))[4:6] == ["apply", "allow"]
    assert shlex.split(cleanup_command(LogSettings(), ["/l"], dry_run=False))[4:6] == ["apply", "refuse"]
    with pytest.raises(ValidationError, match="allow_partial_proc"):
        LogSettings(allow_partial_proc="sometimes")


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        pytest.param(
            "open\tpartial\t3\nrefused\topen-files\n",
            "does not show the open files of 3 processes",
            id="unreadable",
        ),
        pytest.param("open\tpartial\t0\nrefused\topen-files\n", "hides other users. processes", id="hidepid"),
        pytest.param("open\tunchecked\t0\nrefused\topen-files\n", "does not exist", id="no-proc"),
    ],
)
def test_a_refusal_for_partial_proc_names_the_host_why_and_the_setting(output, reason):
    with pytest.raises(
        PartialProcError, match=rf"Host web-1: /proc {reason}.*nothing was touched.*allow_partial_proc"
    ):
        parse_report("web-1", ["/a"], output, dry_run=False)


@pytest.mark.parametrize(
    "patterns",
    [pytest.param(["../*.log"], id="path"), pytest.param([""], id="empty"), pytest.param([], id="none")],
)
def test_patterns_are_file_name_globs(patterns):
    with pytest.raises(ValidationError, match="patterns"):
        LogSettings(patterns=patterns)


def test_a_report_reads_totals_samples_and_names_with_newlines():
    output = (
        "open\tpartial\t3\ndir\t0\tok\ndir\t1\tsymlink\n"
        "file\t0\tdelete\t10\tsub/two\x01lines.log.gz\n"
        "total\t0\topen\t0\t0\ntotal\t0\tdelete\t1\t10\ntotal\t0\tcompress\t4\t4000\n"
    )

    report = parse_report("web-1", ["/a", "/b"], output, dry_run=False)

    assert report.to_dict()["deleted"] == {"files": 1, "bytes": 10}
    assert report.to_dict()["compressed"] == {"files": 4, "bytes": 4000}
    assert report.directories[0].samples["delete"] == [(10, "sub/two\nlines.log.gz")]
    assert [d.path for d in report.refused()] == ["/b"]
    assert (report.open_files_check, report.unreadable_processes) == ("partial", 3)


def test_processes_hidden_by_hidepid_make_the_check_partial_not_checked():
    hidden = parse_report("web-1", ["/a"], "open\tpartial\t0\ndir\t0\tok\n", dry_run=False)
    unreadable = parse_report("web-1", ["/a"], "open\tpartial\t3\ndir\t0\tok\n", dry_run=False)

    assert "hidepid" in describe_open_files_check(hidden)
    assert "3 processes" in describe_open_files_check(unreadable)


def test_the_script_reports_hidden_processes_and_gzips_through_execdir():
    script = SCRIPT.read_text()

    assert "[[ -e /proc/1 ]] || hidden=1" in script
    assert "hidepid=(2|4|invisible|ptraceable)" in script
    assert "-execdir gzip -- {}" in script
    assert "-exec gzip" not in script


def test_a_host_without_the_tools_is_named_with_what_to_install():
    with pytest.raises(
        MissingToolsError, match=r"^Host web-2 lacks gzip,find needed by the log cleanup: install"
    ):
        parse_report("web-2", ["/a"], "tools\tgzip,find\n", dry_run=False)


def test_the_summary_adds_the_hosts_up_and_names_what_needs_attention():
    checked = parse_report(
        "web-1", ["/a"], "open\tproc\t0\ndir\t0\tok\ntotal\t0\tdelete\t2\t20\n", dry_run=False
    )
    unchecked = parse_report(
        "web-2",
        ["/a", "/b"],
        "open\tnone\t0\ndir\t0\tok\ndir\t1\tmissing\ntotal\t0\tdelete\t1\t5\ntotal\t0\tcompress\t3\t300\n",
        dry_run=False,
    )

    summary = summarize_cleanup([checked.to_dict(), unchecked.to_dict()])

    assert summary["deleted"] == {"files": 3, "bytes": 25}
    assert summary["compressed"] == {"files": 3, "bytes": 300}
    assert summary["lines"][0] == (
        "web-1: deleted 2 files (20 bytes), compressed 0 files (0 bytes), 0 open files skipped"
    )
    assert summary["attention"] == ["web-2: open files none", "web-2: /b is missing"]


def test_the_host_log_lists_samples_and_counts_the_rest():
    output = (
        "open\tproc\t0\ndir\t0\tok\ndir\t1\tsymlink\n"
        "file\t0\tdelete\t10\told.log.gz\ntotal\t0\tdelete\t3\t30\n"
    )

    lines = parse_report("web-1", ["/a", "/b"], output, dry_run=True).lines()

    assert lines == [
        "Log cleanup on web-1 (dry run: nothing changed)",
        "  /a: 3 files (30 bytes) would be deleted, 0 files (0 bytes) would be compressed, 0 skipped as open",
        "    delete             10 old.log.gz",
        "    delete   ... and 2 more",
        "  /b: symlink, is a symbolic link or lies behind one: configure its real path",
        "  open files: checked through /proc: files held open were left alone",
    ]


def test_an_archive_setting_that_cannot_work_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match=r"archive_to[\s\S]*'/var/archive' is not a storage URL"):
        LogSettings(archive_to="/var/archive")
    with pytest.raises(ValidationError, match="archive_retention_days must be greater than delete_after"):
        LogSettings(archive_to="file:///var/archive", delete_after_days=30, archive_retention_days=30)
    assert LogSettings(archive_to="s3://bucket/logs").archive_retention_days == 365


def test_with_an_archive_the_script_is_told_to_archive_and_deletes_only_what_it_is_named():
    from airlock.core.log_cleanup import delete_archived_command

    settings = LogSettings(archive_to="file:///var/archive")

    apply = shlex.split(cleanup_command(settings, ["/l"], dry_run=False))
    named = {"a b.log.gz": "ab" * 32, "$(x).log.gz": "cd" * 32}
    delete = shlex.split(delete_archived_command(settings, "/l", named))

    assert apply[4:7] == ["apply", "refuse", "archive"]
    assert delete[4:7] == ["delete-archived", "refuse", "archive"]
    assert delete[-5:] == ["/l", "a b.log.gz", "ab" * 32, "$(x).log.gz", "cd" * 32]
