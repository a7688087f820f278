"""Database maintenance decisions and the report a DBA reads, without Airflow or a database.

:mod:`airlock.tasks.db_maintenance` inspects, vacuums and rebuilds; this module decides which
indexes are over the REINDEX limit and turns what those steps found and did into the Markdown
report and the list of what needs a person (empty: no Slack message).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from airlock.config import DatabaseMaintenanceSettings, Environment

log = logging.getLogger(__name__)


#: How much of a session's (redacted) statement the report shows.
QUERY_SHOWN = 120
_NUMBER = re.compile(r"0[xXoObB][0-9A-Fa-f_]+|\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_PARAMETER = re.compile(r"\$\d+")
_STRING_PREFIX = re.compile(r"(?:[EeBbXxNn]|[Uu]&)'")


def _string_end(text: str, start: int, backslashes: bool) -> int:
    """The index after the string literal whose opening quote is at ``start`` (or the text's end)."""
    index = start + 1
    while index < len(text):
        if backslashes and text[index] == "\\":
            index += 2
        elif text[index] == "'":
            if text.startswith("''", index):
                index += 2
            else:
                return index + 1
        else:
            index += 1
    return len(text)


def redact_query(text: str | None, limit: int = QUERY_SHOWN) -> str:
    """A session's statement reduced to its shape, safe for a report and Slack.

    Every literal (quoted, escape, bit and dollar-quoted strings, numbers) becomes ``?`` and every
    comment goes, so no password, e-mail address or other value a statement carries leaves the
    database; keywords, identifiers and ``$1`` parameters stay. Then cut to ``limit`` characters.
    A literal cut off by PostgreSQL's ``track_activity_query_size`` is redacted to the end.
    """
    text = text or ""
    shape: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if text.startswith("--", index):
            end = text.find("\n", index)
            index = len(text) if end < 0 else end
            shape.append(" ")
        elif text.startswith("/*", index):
            end = text.find("*/", index + 2)
            index = len(text) if end < 0 else end + 2
            shape.append(" ")
        elif prefix := _STRING_PREFIX.match(text, index):
            quote = prefix.end() - 1
            index = _string_end(text, quote, backslashes=text[index] in "Ee")
            shape.append("?")
        elif char == "'":
            index = _string_end(text, index, backslashes=False)
            shape.append("?")
        elif char == '"':
            end = index + 1
            while end < len(text) and (text[end] != '"' or text.startswith('""', end)):
                end += 2 if text.startswith('""', end) else 1
            shape.append(text[index : end + 1])
            index = end + 1
        elif tag := _DOLLAR_TAG.match(text, index):
            end = text.find(tag.group(), tag.end())
            index = len(text) if end < 0 else end + len(tag.group())
            shape.append("?")
        elif parameter := _PARAMETER.match(text, index):
            shape.append(parameter.group())
            index = parameter.end()
        elif number := _NUMBER.match(text, index):
            shape.append("?")
            index = number.end()
        elif word := _WORD.match(text, index):
            shape.append(word.group())
            index = word.end()
        else:
            shape.append(char)
            index += 1
    redacted = " ".join("".join(shape).split())
    return redacted if len(redacted) <= limit else redacted[: limit - 1] + "…"


def qualified(schema: str, name: str) -> str:
    """``schema.name`` for the report (statements always use ``sql.Identifier``)."""
    return f"{schema}.{name}"


def indexes_to_rebuild(
    settings: DatabaseMaintenanceSettings, index_bloat: list[dict[str, Any]]
) -> list[dict]:
    """The measured indexes bloated above ``reindex_bloat_percent`` (none when it is unset)."""
    if settings.reindex_bloat_percent is None:
        return []
    return [
        index
        for index in index_bloat
        if index["bloat_percent"] is not None and index["bloat_percent"] > settings.reindex_bloat_percent
    ]


def human_size(value: int | None) -> str:
    """Bytes as the report shows them: ``512 bytes``, ``1.5 kB``, ``12.0 MB``; ``?`` when unknown."""
    if value is None:
        return "?"
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def maintenance_report(
    environment: Environment,
    inspection: dict[str, Any] | None,
    vacuumed: list[dict[str, Any]] | None,
    reindexed: list[dict[str, Any]] | None,
    *,
    dry_run: bool,
) -> dict[str, Any]:
    """The report as Markdown, and the list of what needs a person (empty: no Slack message).

    The report runs whatever happened before it: ``inspection`` None means the inspect task
    failed; ``vacuumed``/``reindexed`` None outside a dry run mean that task failed or never ran.
    """
    settings = environment.db_maintenance
    attention: list[str] = []
    if inspection is None:
        attention.append("the inspect task failed: nothing was vacuumed or rebuilt (see its log)")
        lines = [f"# Database maintenance of {environment.name}", "", f"- {attention[0]}"]
        for line in lines:
            log.info("%s", line)
        return {"markdown": "\n".join(lines), "attention": attention}
    lines = [
        f"# Database maintenance of {environment.name} ({inspection['database']})"
        + (" - dry run, nothing changed" if dry_run else ""),
        "",
        f"## VACUUM (ANALYZE): tables above {settings.dead_tuple_threshold} dead tuples "
        f"and {settings.dead_tuple_ratio:.0%} of their rows",
    ]
    if dry_run:
        lines += [
            f"- would vacuum {qualified(t['schema'], t['table'])}: {t['dead_tuples']} dead tuples"
            for t in inspection["vacuum_candidates"]
        ]
    for result in vacuumed or []:
        lines.append(
            f"- {result['table']}: {result['outcome']}, dead tuples {result['dead_tuples_before']} -> "
            f"{result.get('dead_tuples_after')}" + (f" ({result['detail']})" if result.get("detail") else "")
        )
        if result["outcome"] != "vacuumed":
            attention.append(f"VACUUM of {result['table']} {result['outcome']}: {result.get('detail', '')}")
        elif (result.get("dead_tuples_after") or 0) > settings.dead_tuple_threshold:
            attention.append(
                f"{result['table']} still has {result['dead_tuples_after']} dead tuples after VACUUM: "
                "an old transaction holds them back (see sessions)"
            )
    if vacuumed is None and not dry_run:
        lines.append("- the vacuum task failed: see its log")
        attention.append("the vacuum task failed: tables may not have been vacuumed (see its log)")
    elif not inspection["vacuum_candidates"]:
        lines.append("- none needed")

    lines += ["", "## Long-running and idle-in-transaction sessions"]
    for session in inspection["sessions"]:
        application = session["application_name"] or "no application name"
        text = (
            f"pid {session['pid']} ({session['user']}, {application}) "
            f"{session['state']} for {session['seconds']} s: {session['query']}"
        )
        lines.append(f"- {text}")
        attention.append(f"session {text}")
    if not inspection["sessions"]:
        lines.append(f"- none longer than {int(settings.long_session.total_seconds())} s")

    lines += ["", "## Bloat estimates"]
    if inspection["bloat_error"]:
        lines.append(f"- could not be estimated: {inspection['bloat_error']}")
    elif not inspection["pgstattuple"]:
        lines.append(
            "- pgstattuple is not installed: table bloat is the dead tuple share only, index bloat is "
            "not measured (CREATE EXTENSION pgstattuple, see the runbook)"
        )
    for table in inspection["table_bloat"]:
        measured = f", bloat {table['bloat_percent']}%" if table["bloat_percent"] is not None else ""
        lines.append(
            f"- table {qualified(table['schema'], table['table'])}: {human_size(table['bytes'])}, "
            f"dead {table['dead_percent'] if table['dead_percent'] is not None else 0}%{measured}"
        )
    rebuild = {index["index"] for index in indexes_to_rebuild(settings, inspection["index_bloat"])}
    for index in inspection["index_bloat"]:
        over = " (over the REINDEX limit)" if index["index"] in rebuild else ""
        lines.append(
            f"- index {qualified(index['schema'], index['index'])} on {index['table']}: "
            f"{human_size(index['bytes'])}, bloat {index['bloat_percent']}%{over}"
        )
    if settings.reindex_bloat_percent is not None:
        limit = settings.reindex_bloat_percent
        lines += ["", f"## REINDEX INDEX CONCURRENTLY: B-tree indexes over {limit}% bloat"]
        if not rebuild:
            lines.append(
                "- none" if inspection["pgstattuple"] else "- not measured: pgstattuple is not installed"
            )
        elif reindexed is None and not dry_run:
            lines.append("- the reindex task failed or did not run (vacuum failed): see its log")
            attention.append(
                f"REINDEX CONCURRENTLY did not run or failed: {len(rebuild)} index(es) over the limit"
            )
        if dry_run:
            lines += [f"- would rebuild {name}" for name in sorted(rebuild)]
        for result in reindexed or []:
            lines.append(
                f"- {result['index']}: {result['outcome']}, {human_size(result['bytes_before'])} -> "
                f"{human_size(result.get('bytes_after'))}"
                + (f" ({result['detail']})" if result.get("detail") else "")
            )
            if result["outcome"] != "rebuilt":
                attention.append(f"REINDEX CONCURRENTLY {result['index']} failed: {result.get('detail', '')}")

    if settings.report_unused_indexes:
        lines += ["", "## Unused indexes (never scanned since the statistics were reset; report only)"]
        for index in inspection["unused_indexes"]:
            name = qualified(index["schema"], index["index"])
            lines.append(f"- {name} on {index['table']}: {human_size(index['bytes'])}")
        if not inspection["unused_indexes"]:
            lines.append("- none")

    if inspection["invalid_indexes"]:
        lines += ["", "## Invalid indexes"]
        for index in inspection["invalid_indexes"]:
            name = qualified(index["schema"], index["index"])
            lines.append(f"- {name} on {index['table']}: drop it with DROP INDEX CONCURRENTLY, then rebuild")
            attention.append(f"invalid index {name}")

    markdown = "\n".join(lines)
    for line in lines:
        log.info("%s", line)
    return {"markdown": markdown, "attention": attention}
