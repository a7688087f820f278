"""The command sent to a host and the settings it is built from."""

from __future__ import annotations

import shlex

import pytest
from pydantic import ValidationError

from airlock.config import LogSettings
from airlock.tasks.log_cleanup import (
    SAMPLE_LIMIT,
    SCRIPT,
    cleanup_command,
    describe_open_files_check,
    parse_report,
)


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
        str(2 * 1440),
        str(9 * 1440),
        str(SAMPLE_LIMIT),
        "2",
        "*.log",
        "it's $(id).out",
        *directories,
    ]


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
