"""The plan digest an approval is bound to, and the pinned artifact of a release request."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from airlock.core.release import (
    InvalidReleaseRequest,
    PlannedHost,
    ReleasePlan,
    evidence_markdown,
    plan_digest,
    validate_request,
)

SQL = "ALTER TABLE items ADD COLUMN category text;\n"


def plan(**overrides) -> ReleasePlan:
    fields = {
        "environment": "staging",
        "version": "2.0.0",
        "artifact_url": "file:///a/demo-app-2.0.0.tar.gz",
        "artifact_sha256": "a" * 64,
        "waves": [[PlannedHost("web-1", "1.0.0", "2.0.0")], [PlannedHost("web-2", "1.0.0", "2.0.0")]],
        "triggered_by": "alice",
        "reason": "weekly",
        "dry_run": False,
        "approval_required": True,
        "approvers": ["7"],
        "migrations": [{"file": "V2__add_category.sql", "sql": SQL}],
        **overrides,
    }
    return ReleasePlan(**fields)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param({"version": "2.0.1"}, id="version"),
        pytest.param({"artifact_sha256": "b" * 64}, id="artifact"),
        pytest.param({"migrations": [{"file": "V2__add_category.sql", "sql": f"{SQL}--\n"}]}, id="migration"),
        pytest.param({"migrations": []}, id="no-migration"),
        pytest.param(
            {"waves": [[PlannedHost("web-1", "1.5.0", "2.0.0")], [PlannedHost("web-2", "1.0.0", "2.0.0")]]},
            id="a-hosts-current-release",
        ),
        pytest.param({"waves": [[PlannedHost("web-1", "1.0.0", "2.0.0")]]}, id="fewer-hosts"),
    ],
)
def test_the_digest_changes_with_anything_the_release_would_change(changed):
    assert plan_digest(plan(**changed)) != plan_digest(plan())


def test_the_digest_ignores_what_changes_nothing_and_survives_xcom():
    same = plan(reason="another reason", checks=["Artifact verified"], backup="None.")

    assert plan_digest(same) == plan_digest(plan())
    assert plan_digest(ReleasePlan.from_dict(plan().to_dict())) == plan_digest(plan())


def test_a_migrations_checksum_is_that_of_its_file():
    checksum = hashlib.sha256(SQL.encode()).hexdigest()
    with_checksum = plan(migrations=[{"file": "V2__add_category.sql", "sql": SQL, "checksum": checksum}])

    assert plan_digest(with_checksum) == plan_digest(plan())


def test_the_plan_says_what_the_approval_is_bound_to_or_that_none_is_needed():
    assert f"Plan digest `{plan_digest(plan())}`" in evidence_markdown(plan(), plan_digest(plan()))
    ungated = dataclasses.replace(plan(), approval_required=False)
    assert "None required: this environment has no approval gate" in evidence_markdown(ungated, "x")


def test_a_pinned_artifact_sha256_is_kept_lower_case_and_an_empty_one_means_unpinned():
    params = {"version": "2.0.0", "dry_run": False, "reason": ""}

    pinned = validate_request({"artifact_sha256": "AB" * 32}, {**params, "artifact_sha256": "AB" * 32})

    assert pinned.artifact_sha256 == "ab" * 32
    assert validate_request({}, {**params, "artifact_sha256": ""}).artifact_sha256 == ""


@pytest.mark.parametrize("value", ["abc", "g" * 64, "a" * 65, 12])
def test_a_malformed_artifact_sha256_is_refused(value):
    with pytest.raises(InvalidReleaseRequest, match="artifact_sha256"):
        validate_request({}, {"version": "2.0.0", "artifact_sha256": value})
