"""The environment file reference (``docs/environment-reference.md``), generated from the model.

``python -m airlock_dev.reference > docs/environment-reference.md`` rewrites it; a unit test fails
when the committed file and the model disagree, so the reference can never drift.
"""

from __future__ import annotations

import types
import typing
from datetime import timedelta

from pydantic import BaseModel

from airlock.config import Environment

HEADER = """# Environment file reference

One YAML file per environment in `include/environments/<name>.yaml`; the file name is the
environment's name and part of every DAG id (`release_<name>`, ...). Unknown keys are errors.
Durations are written `30s`, `5m`, `4h`, `7d`, `2w`. Strings may use `${VAR}` or
`${VAR:-default}`. Secrets never go here: `*conn_id` fields name Airflow connections.
Examples: `include/environments/demo.yaml`, `include/environments/examples/`.

Generated from `plugins/airlock/config/environment.py` by `python -m airlock_dev.reference`; do not edit
by hand.
"""


def _type_name(annotation: object) -> str:
    if annotation is timedelta:
        return "duration"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is typing.Literal:
        return " / ".join(repr(arg) for arg in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    factory = field.default_factory
    if isinstance(factory, type) and issubclass(factory, BaseModel):
        return "see below"
    value = factory() if factory is not None else field.default
    if isinstance(value, timedelta):
        return f"`{int(value.total_seconds())}s`"
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{value!r}`"


def _models(model: type[BaseModel], seen: list[type[BaseModel]]) -> list[type[BaseModel]]:
    if model in seen:
        return seen
    seen.append(model)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                _models(annotation, seen)
            stack.extend(typing.get_args(annotation))
    return seen


def render() -> str:
    sections = [HEADER]
    for model in _models(Environment, []):
        title = "Top level" if model is Environment else f"`{model.__name__}`"
        lines = [f"## {title}", ""]
        if model.__doc__ and model is not Environment:
            lines += [model.__doc__.strip().splitlines()[0], ""]
        lines += ["| Field | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            meaning = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


if __name__ == "__main__":
    print(render(), end="")
