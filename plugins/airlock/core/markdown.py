"""User text inside the Markdown an approver reads: made inert, on one line.

A ``reason`` or a user name comes from whoever triggers a run. Put in the approval request as it
is, ``**``, links, HTML or a newline followed by ``### Migrations`` could fake a part of the plan.
:func:`inline` joins it onto one line and backslash-escapes every character Markdown (CommonMark
and GitHub's tables and strikethrough) would read as syntax, so it renders as the text typed.
"""

from __future__ import annotations

import re

#: Characters that open inline Markdown syntax anywhere in a line (code, emphasis, links, HTML,
#: tables, strikethrough, entities). Syntax that only counts at the start of a line (``#``, ``-``,
#: ``1.``) cannot occur: the text is one line placed after a prefix.
_SYNTAX = re.compile(r"([\\`*\[\]<>|~&])")
_UNDERSCORES = re.compile(r"_+")


def _escape_underscores(text: str) -> str:
    """Escape each run of underscores except one inside a word (``manual__1``: never emphasis)."""

    def escaped(match: re.Match[str]) -> str:
        before, after = text[match.start() - 1 : match.start()], text[match.end() : match.end() + 1]
        if before.isalnum() and after.isalnum():
            return match.group()
        return "\\_" * len(match.group())

    return _UNDERSCORES.sub(escaped, text)


def inline(text: str | None) -> str:
    """``text`` as literal Markdown on one line: white space runs (newlines too) become one space
    and syntax characters are backslash-escaped."""
    one_line = " ".join(str(text or "").split())
    return _escape_underscores(_SYNTAX.sub(r"\\\1", one_line))
