"""The release request and the release plan: what will happen, shown before anything happens.

A :class:`ReleasePlan` is built from preflight results and is the single description of a
release: the approver reads it (Markdown in the approval request), a dry run outputs it, the
waves deploy it, rollback reads each host's previous release from it and the audit record
stores it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from airlock.config import VERSION_PATTERN, Environment
from airlock.config.environment import REASON_MAX_LENGTH
from airlock.core.freeze import describe_override, required_approvers
from airlock.core.markdown import inline
from airlock.core.migrations import pending_migrations_markdown

_VERSION = re.compile(VERSION_PATTERN)
REQUEST_KEYS = frozenset(
    {"version", "dry_run", "reason", "artifact_sha256", "committed_at", "freeze_override"}
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class InvalidReleaseRequest(ValueError):
    """The trigger's parameters are not a valid release request; nothing was touched."""


@dataclass(frozen=True)
class ReleaseRequest:
    version: str
    dry_run: bool
    reason: str
    #: The artifact's SHA-256 CI expects (lower-case hex), or "" when the trigger pinned none.
    artifact_sha256: str = ""
    #: When the released commit was made, if CI said: the start of the DORA lead time.
    committed_at: datetime | None = None
    #: Why this release must start during a freeze, if it must ("" for none).
    freeze_override: str = ""


def validate_version(version: Any) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidReleaseRequest(
            f"version {version!r} is not a valid version: use 1-64 letters, digits, '.', '_', '+' "
            f"or '-', starting with a letter or digit (pattern {VERSION_PATTERN})"
        )
    return version


def validate_request(conf: Mapping[str, Any], params: Mapping[str, Any]) -> ReleaseRequest:
    """Check the run's request: known keys only, a safe version, a boolean dry_run.

    ``conf`` is what the trigger sent (unknown keys are refused: Airflow would accept them
    as extra params), ``params`` the resolved values with defaults.
    """
    unknown = sorted(set(conf or {}) - REQUEST_KEYS)
    if unknown:
        raise InvalidReleaseRequest(
            f"unknown parameter(s) {', '.join(unknown)}: "
            f"a release takes only {', '.join(sorted(REQUEST_KEYS))}"
        )
    version = validate_version(params.get("version"))
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidReleaseRequest(f"dry_run must be true or false, not {dry_run!r}")
    return ReleaseRequest(
        version=version,
        dry_run=dry_run,
        reason=validate_one_line("reason", params.get("reason")),
        artifact_sha256=validate_artifact_sha256(params.get("artifact_sha256")),
        committed_at=validate_committed_at(params.get("committed_at")),
        freeze_override=validate_one_line("freeze_override", params.get("freeze_override")),
    )


def validate_one_line(name: str, value: Any) -> str:
    """A free-text field of the request (``reason``, ``freeze_override``): one line of at most
    500 characters (a newline could fake a section of the plan the approver reads); "" for none."""
    text = value or ""
    if not isinstance(text, str) or len(text) > REASON_MAX_LENGTH or re.search(r"[\r\n]", text):
        raise InvalidReleaseRequest(f"{name} must be one line of at most {REASON_MAX_LENGTH} characters")
    return text


def validate_artifact_sha256(value: Any) -> str:
    """The trigger's ``artifact_sha256``: 64 hex characters (returned lower-case), or "" for none."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise InvalidReleaseRequest(
            f"artifact_sha256 {value!r} is not a SHA-256: give 64 hex characters, or leave it empty"
        )
    return value.lower()


def validate_committed_at(value: Any) -> datetime | None:
    """The trigger's ``committed_at``: an ISO 8601 time with its UTC offset, or None for none."""
    if value is None or value == "":
        return None
    hint = "give an ISO 8601 time with its offset (git show -s --format=%cI), or leave it empty"
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise InvalidReleaseRequest(f"committed_at {value!r} is not a time: {hint}")
    if moment.tzinfo is None:
        raise InvalidReleaseRequest(f"committed_at {value!r} has no UTC offset: {hint}")
    return moment


@dataclass(frozen=True)
class PlannedHost:
    host: str
    current_version: str | None
    new_version: str

    @property
    def changes(self) -> bool:
        return self.current_version != self.new_version


@dataclass(frozen=True)
class ReleasePlan:
    environment: str
    version: str
    artifact_url: str
    artifact_sha256: str
    waves: list[list[PlannedHost]]
    triggered_by: str
    reason: str
    dry_run: bool
    approval_required: bool
    approvers: list[str]
    checks: list[str] = field(default_factory=list)
    migrations: list[dict[str, str]] = field(default_factory=list)
    backup: str | None = None
    #: The freeze this release overrides (``airlock.core.freeze.freeze_override``), if any: the
    #: approval must then come from a freeze approver.
    freeze_override: dict[str, Any] | None = None

    def previous_versions(self) -> dict[str, str | None]:
        """Each host's release before this run: the rollback target."""
        return {planned.host: planned.current_version for wave in self.waves for planned in wave}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReleasePlan:
        waves = [[PlannedHost(**planned) for planned in wave] for wave in data["waves"]]
        return cls(**{**data, "waves": waves})

    def to_markdown(self) -> str:
        lines = [
            f"## Release {self.version} to {self.environment}",
            "",
            f"- Requested by **{inline(self.triggered_by)}**"
            + (f": {inline(self.reason)}" if self.reason else ""),
            f"- Artifact `{self.artifact_url}` (SHA-256 `{self.artifact_sha256[:16]}…`, verified)",
            "- Approval: "
            + ("required from " + ", ".join(self.approvers) if self.approval_required else "not required"),
            f"- Mode: {'**dry run**: nothing will change' if self.dry_run else 'apply'}",
            *([f"- **{inline(describe_override(self.freeze_override))}**"] if self.freeze_override else []),
            "",
            "| Wave | Host | Current | New |",
            "| --- | --- | --- | --- |",
        ]
        for number, wave in enumerate(self.waves, start=1):
            for planned in wave:
                current = planned.current_version or "(none)"
                marker = "" if planned.changes else " (already there)"
                lines.append(f"| {number} | {planned.host} | {current} | {planned.new_version}{marker} |")
        lines += ["", "### Migrations", "", pending_migrations_markdown(self.migrations)]
        lines += [
            "",
            "### Backup",
            "",
            self.backup or "None.",
        ]
        lines += ["", "### Preflight", ""]
        lines += [f"- {check}" for check in self.checks] or ["- (none)"]
        rollback = ", ".join(f"{h} → {v or '(none)'}" for h, v in self.previous_versions().items())
        lines += [
            "",
            "### If a wave fails",
            "",
            f"Every host switched by this run goes back to its previous release: {rollback}.",
        ]
        return "\n".join(lines)


def build_plan(
    *,
    environment: Environment,
    request: ReleaseRequest,
    artifact: Mapping[str, Any],
    host_states: list[Mapping[str, Any]],
    triggered_by: str,
    checks: list[str],
    migrations: list[dict[str, str]] | None = None,
    backup: str | None = None,
    freeze_override: dict[str, Any] | None = None,
) -> ReleasePlan:
    current = {state["host"]: state["current_version"] for state in host_states}
    approvers = required_approvers(environment, freeze_override)
    missing = [host.name for host in environment.hosts if host.name not in current]
    if missing:
        raise RuntimeError(f"preflight has no result for host(s) {', '.join(missing)}")
    waves = [
        [PlannedHost(host.name, current[host.name], request.version) for host in wave.hosts]
        for wave in environment.waves
    ]
    return ReleasePlan(
        environment=environment.name,
        version=request.version,
        artifact_url=artifact["url"],
        artifact_sha256=artifact["sha256"],
        waves=waves,
        triggered_by=triggered_by,
        reason=request.reason,
        dry_run=request.dry_run,
        approval_required=approvers is not None,
        approvers=approvers or [],
        checks=checks,
        migrations=list(migrations or []),
        backup=backup,
        freeze_override=freeze_override,
    )


def migration_checksum(entry: Mapping[str, str]) -> str:
    """A planned migration's SHA-256: its ``checksum``, else that of its SQL (the file's bytes,
    which are UTF-8: :func:`airlock.core.migrations.read_migration` refuses anything else)."""
    return entry.get("checksum") or hashlib.sha256(entry["sql"].encode("utf-8")).hexdigest()


def plan_digest(plan: ReleasePlan) -> str:
    """The SHA-256 binding an approval to a plan: over the environment, the version, the
    artifact's SHA-256, each pending migration's file and checksum, and every host of every wave
    with its current release. Two plans with the same digest change the same things the same way.
    """
    canonical = {
        "environment": plan.environment,
        "version": plan.version,
        "artifact_sha256": plan.artifact_sha256,
        "migrations": [[entry["file"], migration_checksum(entry)] for entry in plan.migrations],
        "waves": [[[planned.host, planned.current_version] for planned in wave] for wave in plan.waves],
    }
    if plan.freeze_override:  # absent otherwise: plans without one keep their digest
        canonical["freeze_override"] = plan.freeze_override
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def evidence_markdown(plan: ReleasePlan, digest: str) -> str:
    """The plan's last section: what an approval is bound to, and what checks it."""
    if not plan.approval_required:
        return (
            "### Approval evidence\n\nNone required: this environment has no approval gate "
            "(approval.required is false), so backup, migrations and deploys run without one."
        )
    return (
        f"### Approval evidence\n\nPlan digest `{digest}` (version, artifact SHA-256, migration "
        "checksums, hosts and their current releases). Backup, migrations and every deploy check, "
        "before changing anything, that an assigned approver approved this digest in this run."
        + (
            " The freeze override is part of the digest: only a freeze approver's approval counts."
            if plan.freeze_override
            else ""
        )
    )


@dataclass(frozen=True)
class RollbackPlan:
    """Which release each host goes back to; every target is already installed on its host."""

    environment: str
    hosts: list[PlannedHost]
    triggered_by: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RollbackPlan:
        return cls(**{**data, "hosts": [PlannedHost(**planned) for planned in data["hosts"]]})

    def targets(self) -> str:
        return ", ".join(f"{p.host} → {p.new_version}" for p in self.hosts)

    def digest(self) -> str:
        """The SHA-256 binding an approval to this plan: every host with its current release and
        the release it goes back to (as :func:`plan_digest` does for a release)."""
        canonical = {
            "environment": self.environment,
            "hosts": [[p.host, p.current_version, p.new_version] for p in self.hosts],
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def to_markdown(self) -> str:
        lines = [
            f"## Rollback of {self.environment}",
            "",
            f"- Requested by **{inline(self.triggered_by)}**"
            + (f": {inline(self.reason)}" if self.reason else ""),
            "",
            "| Host | Current | Back to |",
            "| --- | --- | --- |",
        ]
        for planned in self.hosts:
            note = "" if planned.changes else " (already there)"
            lines.append(
                f"| {planned.host} | {planned.current_version or '(none)'} | {planned.new_version}{note} |"
            )
        lines += [
            "",
            "### Approval evidence",
            "",
            f"Plan digest `{self.digest()}` (every host, its current release and its target). Each "
            "host's rollback checks, before it switches anything, that this run's approval by an "
            "assigned approver is of this plan.",
        ]
        return "\n".join(lines)


def build_rollback_plan(
    *,
    environment: Environment,
    to_version: str | None,
    host_states: list[Mapping[str, Any]],
    triggered_by: str,
    reason: str,
) -> RollbackPlan:
    """Target per host: ``to_version`` if given, else the release before the current one."""
    planned, problems = [], []
    for state in sorted(host_states, key=lambda s: [h.name for h in environment.hosts].index(s["host"])):
        target = to_version or state.get("previous_version")
        if target is None:
            problems.append(f"{state['host']} has no previous release recorded")
        elif target not in state["installed_versions"]:
            problems.append(f"{state['host']} does not have release {target} installed")
        else:
            planned.append(PlannedHost(state["host"], state["current_version"], target))
    if problems:
        raise InvalidReleaseRequest("cannot roll back: " + "; ".join(problems))
    return RollbackPlan(environment=environment.name, hosts=planned, triggered_by=triggered_by, reason=reason)


def takes_pre_release_backup(environment: Environment) -> bool:
    """Whether a release of ``environment`` backs its database up after approval."""
    return environment.backup is not None and environment.backup.required_for_release


def describe_backups(environment: Environment, newest: Mapping[str, Any] | None) -> str:
    """The plan's Backup section; ``newest`` is the newest verified backup's summary, if any."""
    if not takes_pre_release_backup(environment):
        return "None: this environment does not take pre-release backups (backup.required_for_release)."
    return (
        f"A pre-release backup (`{environment.name}-<time>-pre-release`) is taken after approval, "
        f"before migrations and before any host is switched. Newest verified backup: "
        f"`{newest['name']}`, taken {newest['finished_at']}."
        if newest
        else "A pre-release backup is taken after approval, before migrations."
    )


def preflight_checks(
    *,
    artifact: Mapping[str, Any],
    host_states: list[Mapping[str, Any]],
    database: Mapping[str, Any],
    migrations: list[Mapping[str, str]],
    backup: Mapping[str, Any] | None,
) -> list[str]:
    """The plan's Preflight section: what each preflight check found, one line each."""
    checks = [
        f"Artifact verified ({artifact['size']} bytes)",
        *(f"{s['host']}: reachable, host key verified, {s['free_disk_mb']} MB free" for s in host_states),
        f"Database {database['database']} reachable (PostgreSQL {database['server_version']})",
        f"Migrations validated against the database: {len(migrations)} pending",
    ]
    if backup:
        checks.append(f"Newest verified backup {backup['name']} is younger than backup.max_age")
    return checks
