"""The one way a settings file is read: YAML, ``${VAR}`` references expanded, validated by a model.

Environment files (``include/environments/<env>.yaml``) and the housekeeping settings
(``include/housekeeping.yaml``) both come through :func:`load_settings_file`, so they accept the
same syntax and report problems the same way: every error names the file (relative to the
project) and the field, e.g. ``include/housekeeping.yaml: log_retention_days: Input should be
greater than or equal to 1``.

Strings may refer to environment variables as ``${NAME}`` or ``${NAME:-default}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

#: The repository root: ``plugins/airlock/config/loader.py`` is three levels below it.
PROJECT_ROOT = Path(__file__).resolve().parents[3]

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Settings = TypeVar("Settings", bound=BaseModel)


class ConfigFileError(ValueError):
    """A settings file is missing, unreadable or invalid; the message names file and field."""


def display_path(path: Path) -> str:
    """``path`` relative to the project root when it lies inside it, as errors show it."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def expand_references(value: Any, where: str = "") -> Any:
    """Replace ``${NAME}``/``${NAME:-default}`` in every string of the parsed YAML.

    An unset variable without a default raises :class:`ConfigFileError` naming the field.
    """
    if isinstance(value, dict):
        return {
            key: expand_references(item, f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [expand_references(item, f"{where}.{index}") for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigFileError(f"{where}: environment variable {name} is not set and has no default")

    return _ENV_REFERENCE.sub(substitute, value)


def describe_validation_error(error: ValidationError) -> str:
    """Every problem pydantic found, as ``field.path: message`` joined by ``; ``."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against the reference in README.md)"
        # Whole-file checks (such as rollout.waves against hosts) name their field in the message.
        lines.append(f"{field}: {message}" if field else message)
    return "; ".join(lines)


def load_settings_file(
    path: Path,
    model: type[Settings],
    *,
    error: type[ConfigFileError] = ConfigFileError,
    empty_means_defaults: bool = False,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Settings:
    """Read ``path``, expand its ``${VAR}`` references and validate it with ``model``.

    :param error: the :class:`ConfigFileError` subclass raised, its message prefixed with the file.
    :param empty_means_defaults: an empty file is the model's defaults (otherwise an error).
    :param prepare: checks or completes the document as written, before references are expanded;
        a ``ValueError`` it raises becomes the error (its message should start with the field).
    """
    shown = display_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as problem:
        raise error(f"{shown}: cannot read: {problem.strerror}") from None
    except yaml.YAMLError as problem:
        raise error(f"{shown}: not valid YAML: {problem}") from None
    if raw is None and empty_means_defaults:
        raw = {}
    if not isinstance(raw, dict):
        raise error(f"{shown}: must be a mapping of settings, got {type(raw).__name__}")
    try:
        document = expand_references(prepare(raw) if prepare else raw)
        return model.model_validate(document)
    except ValidationError as problem:
        raise error(f"{shown}: {describe_validation_error(problem)}") from None
    except ValueError as problem:
        raise error(f"{shown}: {problem}") from None
