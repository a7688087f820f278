"""Configuration sets: a versioned, checksummed set of config files, and what changing to one shows.

No Airflow, no I/O: :mod:`airlock.hooks.config_source` reads a set from ``config.source``,
:mod:`airlock.hooks.hosts` installs it on a host as ``<root>/shared/config-sets/<id>/`` and points
``<root>/shared/config`` at it; ``airlock.tasks.config_update`` runs the change as a release.

A set's id is the first 16 hex digits of the SHA-256 of its manifest (each file's SHA-256 and
path, in path order, in ``sha256sum`` format): the same files give the same id wherever they come
from, and any changed byte or name gives another. The manifest is installed with the set, so a
host checks its copy with ``sha256sum -c`` before it is switched to it.

The plan shows the change file by file against each host's active set. Lines that look like a
setting (``KEY=value``, ``key: value``) whose key matches one of ``config.mask`` lose their value
(``********``); a file whose name matches is never shown, only whether it changed.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: The manifest's name inside an installed set (``sha256sum -c`` reads it).
MANIFEST = ".airlock-manifest"
#: The file holding the set's id inside an installed set (what the app reports, if it does).
SET_ID_FILE = ".airlock-config-set"
#: What a masked value shows.
MASKED = "********"
#: A path inside a set: relative, plain names, no dot-dot, no leading dot (the set's own files).
PATH_PATTERN = re.compile(
    r"^(?!\.)[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,127}){0,7}$"
)
#: A set's id.
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
_QUOTED_PAIR = re.compile(r"([\"'])([A-Za-z0-9_.\-]+)\1(\s*:\s*)(\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^,}\]\s]+)")
_SETTING = re.compile(
    r"^(?P<lead>\s*(?:export\s+)?[\"']?)(?P<key>[A-Za-z0-9_.\-]+)(?P<sep>[\"']?\s*[:=]\s*)(?P<value>.*)$"
)


class ConfigSetError(ValueError):
    """A config source that cannot become a set (a bad name, too large, empty)."""


@dataclass(frozen=True)
class ConfigFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ConfigSet:
    """The files of one set, by path; their content travels separately (see ``load``)."""

    files: tuple[ConfigFile, ...]

    @classmethod
    def of(cls, contents: Mapping[str, bytes]) -> ConfigSet:
        if not contents:
            raise ConfigSetError("the config source holds no files")
        for path in contents:
            if not PATH_PATTERN.match(path) or ".." in path.split("/"):
                raise ConfigSetError(
                    f"config file {path!r}: use relative paths of letters, digits, '.', '_' and '-' "
                    "(no leading dot, at most 8 levels)"
                )
        files = tuple(
            ConfigFile(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            for path, data in sorted(contents.items())
        )
        return cls(files)

    @property
    def manifest(self) -> str:
        """``sha256sum`` lines, in path order: what the id is computed from and hosts check."""
        return "".join(f"{file.sha256}  {file.path}\n" for file in self.files)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.manifest.encode("ascii")).hexdigest()[:16]

    @property
    def paths(self) -> list[str]:
        return [file.path for file in self.files]

    def to_dict(self) -> dict:
        return {"id": self.id, "files": [vars(file) | {} for file in self.files]}

    @classmethod
    def from_dict(cls, data: Mapping) -> ConfigSet:
        config_set = cls(tuple(ConfigFile(**file) for file in data["files"]))
        if config_set.id != data["id"]:
            raise ConfigSetError(f"config set {data['id']} does not match its files (id {config_set.id})")
        return config_set


def parse_manifest(text: str) -> dict[str, str]:
    """Path -> SHA-256 from an installed set's manifest."""
    found = {}
    for line in text.splitlines():
        digest, _, path = line.partition("  ")
        if digest and path:
            found[path] = digest
    return found


def masked_name(path: str, patterns: Sequence[str]) -> bool:
    """Whether any component of ``path`` (a file's path, or a key) matches one of ``patterns``."""
    return any(
        fnmatch.fnmatchcase(part.lower(), pattern.lower()) for part in path.split("/") for pattern in patterns
    )


def _mask_inline(line: str, patterns: Sequence[str]) -> str:
    """Credentials in URLs, and quoted ``"key": value`` pairs of masked keys anywhere in the line."""
    line = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASKED}@", line)
    return _QUOTED_PAIR.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{MASKED}"
            if masked_name(m.group(2), patterns)
            else m.group(0)
        ),
        line,
    )


def mask_line(line: str, patterns: Sequence[str]) -> str:
    """``line`` with its value hidden when it sets a key matching one of ``patterns``, and any
    URL's password hidden."""
    match = _SETTING.match(line)
    if match and match.group("value").strip() and masked_name(match.group("key"), patterns):
        return f"{match.group('lead')}{match.group('key')}{match.group('sep')}{MASKED}"
    return _mask_inline(line, patterns)


def mask_lines(lines: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Every line masked (:func:`mask_line`); a masked key whose value follows on more indented
    lines (a YAML block such as ``tls_key: |``) has those lines masked too."""
    masked, block_indent = [], None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not line.strip() or indent > block_indent):
            masked.append(" " * indent + MASKED if line.strip() else line)
            continue
        block_indent = None
        match = _SETTING.match(line)
        if (
            match
            and masked_name(match.group("key"), patterns)
            and match.group("value").strip() in ("", "|", ">", "|-", ">-", "|+", ">+")
        ):
            block_indent = indent
            masked.append(line)
            continue
        masked.append(mask_line(line, patterns))
    return masked


@dataclass(frozen=True)
class FileChange:
    path: str
    #: ``added``, ``removed``, ``changed`` (``unchanged`` files are not listed).
    change: str
    #: The masked unified diff lines (none for a masked file or a binary one).
    lines: tuple[str, ...] = ()
    note: str = ""


def _text(data: bytes | None) -> list[str] | None:
    if data is None:
        return []
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None


def diff_sets(
    old: Mapping[str, bytes], new: Mapping[str, bytes], *, mask: Sequence[str], context: int = 2
) -> list[FileChange]:
    """What changes, file by file, from ``old`` to ``new`` (path -> content), secrets masked."""
    changes = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "changed"
        if masked_name(path, mask):
            changes.append(FileChange(path, change, note="content masked (config.mask)"))
            continue
        before_lines, after_lines = _text(before), _text(after)
        if before_lines is None or after_lines is None:
            changes.append(FileChange(path, change, note="binary file"))
            continue
        lines = difflib.unified_diff(
            mask_lines(before_lines, mask),
            mask_lines(after_lines, mask),
            lineterm="",
            n=context,
        )
        shown = tuple(line for line in lines if not line.startswith(("---", "+++")))
        masked_only = not any(line[:1] in "+-" for line in shown if not line.startswith("@@"))
        note = "a masked value changed" if masked_only else ""
        changes.append(FileChange(path, change, lines=shown, note=note))
    return changes


def changes_markdown(changes: Iterable[FileChange]) -> str:
    """The changes as the approval request shows them."""
    parts = []
    for change in changes:
        heading = f"- `{change.path}`: {change.change}" + (f" ({change.note})" if change.note else "")
        parts.append(heading)
        if change.lines:
            body = "\n".join(change.lines).replace("```", "'''")
            parts.append(f"\n  ```diff\n{_indent(body)}\n  ```")
    return "\n".join(parts) if parts else "- no file changes"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())
