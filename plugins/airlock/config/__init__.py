"""What the environment is: settings files read into validated, frozen objects.

- :mod:`airlock.config.loader`: the one YAML loader (``${VAR}`` references, errors naming file
  and field) and the project root;
- :mod:`airlock.config.environment`: the environment model, ``include/environments/<env>.yaml``;
- :mod:`airlock.config.housekeeping`: the settings of ``airflow_housekeeping``,
  ``include/housekeeping.yaml``.

Every public name is re-exported here, so callers write ``from airlock.config import Environment``.
"""

from __future__ import annotations

from airlock.config.environment import (
    ENVIRONMENTS_DIR_VARIABLE,
    NAME_PATTERN,
    VERSION_PATTERN,
    ApprovalSettings,
    BackupRetention,
    BackupSettings,
    DatabaseMaintenanceSettings,
    DatabaseSettings,
    DeploySettings,
    Duration,
    Environment,
    EnvironmentCatalog,
    EnvironmentConfigError,
    HealthSettings,
    Host,
    HttpSmokeTest,
    LogSettings,
    MigrationSettings,
    Percent,
    RemotePath,
    RolloutSettings,
    SmokeTest,
    SqlSmokeTest,
    SSHSettings,
    Thresholds,
    Wave,
    WaveSize,
    environments_dir,
    load_environment,
    load_environments,
    parse_duration,
)
from airlock.config.housekeeping import HousekeepingSettings, load_housekeeping_settings
from airlock.config.loader import (
    PROJECT_ROOT,
    ConfigFileError,
    describe_validation_error,
    display_path,
    expand_references,
    load_settings_file,
)

__all__ = [
    "ENVIRONMENTS_DIR_VARIABLE",
    "NAME_PATTERN",
    "PROJECT_ROOT",
    "VERSION_PATTERN",
    "ApprovalSettings",
    "BackupRetention",
    "BackupSettings",
    "ConfigFileError",
    "DatabaseMaintenanceSettings",
    "DatabaseSettings",
    "DeploySettings",
    "Duration",
    "Environment",
    "EnvironmentCatalog",
    "EnvironmentConfigError",
    "HealthSettings",
    "Host",
    "HousekeepingSettings",
    "HttpSmokeTest",
    "LogSettings",
    "MigrationSettings",
    "Percent",
    "RemotePath",
    "RolloutSettings",
    "SSHSettings",
    "SmokeTest",
    "SqlSmokeTest",
    "Thresholds",
    "Wave",
    "WaveSize",
    "describe_validation_error",
    "display_path",
    "environments_dir",
    "expand_references",
    "load_environment",
    "load_environments",
    "load_housekeeping_settings",
    "load_settings_file",
    "parse_duration",
]
