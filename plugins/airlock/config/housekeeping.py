"""The settings of ``airflow_housekeeping``: ``include/housekeeping.yaml`` read into a validated object.

Not per environment: one Airflow, one housekeeping. The file is read at parse time (local file
only) through :mod:`airlock.config.loader`, so it accepts ``${VAR}`` references like the
environment files and its errors name the file and the field.

The retentions here are floors a run cannot go below: a run's params may keep more (to hold
evidence during an investigation), never less, so whoever may trigger the DAG cannot erase what
this reviewed file keeps. Approval evidence (HITL rows, the XComs the plan travelled in,
Airflow's audit log) is kept at least ``audit_retention_days``, whatever
``metadata_retention_days`` says.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from airlock.config.loader import PROJECT_ROOT, load_settings_file

SETTINGS_FILE = PROJECT_ROOT / "include" / "housekeeping.yaml"


class HousekeepingSettings(BaseModel):
    """``include/housekeeping.yaml``: the settings of ``airflow_housekeeping``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owner: str = "airlock"
    schedule: str | None = "15 2 * * *"
    slack_conn_id: str | None = "airlock_slack"
    metadata_conn_id: str = "airflow_metadata_db"
    log_folder: Path | None = None
    log_retention_days: int = Field(default=30, ge=1)
    metadata_retention_days: int = Field(default=90, ge=1)
    audit_retention_days: int = Field(default=365, ge=30)
    tables: list[str] = Field(default_factory=list)


def load_housekeeping_settings(path: Path = SETTINGS_FILE) -> HousekeepingSettings:
    """Read the settings file (an empty file means the defaults); errors name the file and the field."""
    return load_settings_file(path, HousekeepingSettings, empty_means_defaults=True)
