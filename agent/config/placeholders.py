"""The lines of a config file an installer must edit: those marked ``# EDIT: <why>`` (issue 11).

The shipped example (``systemd/agent.example.yaml``) marks every value that is specific to a
charger — its station id, terminal address, connectors, tariff, broker, user names and the
secret / TLS files, whose paths are placeholders until the files are created — with a comment
``# EDIT: <why>.`` on the key's line (a comment line of its own does not count).
``evpay-agent check-config --example`` lists them as
``FILE:LINE: PATH: edit this before starting: <why>``; ``<why>`` is the text after the marker up
to the first full stop (or the end of the line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from agent.config.yamlload import YamlDocument, format_path

__all__ = ["EDIT_MARKER", "EditLine", "edit_lines"]

EDIT_MARKER: Final = "# EDIT:"
_EDIT_RE: Final = re.compile(r"#\s*EDIT:\s*(?P<why>.*?)\s*(?:\.(?:\s|$)|$)")


@dataclass(frozen=True, slots=True)
class EditLine:
    """One line marked ``# EDIT:``: its number, the key path on it and why it must be edited."""

    file: str
    line: int
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: edit this before starting: {self.why}"


def edit_lines(text: str, doc: YamlDocument) -> tuple[EditLine, ...]:
    """Every key line of ``text`` (the source of ``doc``) marked ``# EDIT:``, in order, with the
    deepest key path on it. A marker on a comment line of its own does not count."""
    deepest: dict[int, tuple[int, str]] = {}  # line -> (depth, path)
    for path, line in doc.lines.items():
        if path and (line not in deepest or len(path) > deepest[line][0]):
            deepest[line] = (len(path), format_path(path))
    found: list[EditLine] = []
    for number, source in enumerate(text.splitlines(), 1):
        match = _EDIT_RE.search(source)
        if match is None or not source[: match.start()].strip() or number not in deepest:
            continue  # a comment line (which may mention the marker) or no key on the line
        found.append(EditLine(doc.file, number, deepest[number][1], match["why"] or "placeholder value"))
    return tuple(found)
