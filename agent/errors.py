"""The root of every exception raised by ``agent`` (style.md §10)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

PathItem = str | int
KeyPath = tuple[PathItem, ...]


def format_path(path: Iterable[PathItem]) -> str:
    """``("connectors", 1, "max_current_a")`` → ``"connectors[1].max_current_a"``; ``()`` → ``""``."""
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else item)
    return text


_MSGSPEC_RE: Final = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MSGSPEC_PATH_ITEM_RE: Final = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def explain_msgspec_error(text: str) -> tuple[KeyPath, str, str]:
    """A ``msgspec.ValidationError`` text as (the key path, a message for people, msgspec's own
    message): ``"Object contains unknown field `fee` - at `$.tariff`"`` →
    ``(("tariff", "fee"), "unknown field", …)``; a missing field names itself; backquotes go."""
    match = _MSGSPEC_RE.match(text)
    raw, path_text = (match["message"], match["path"] or "") if match else (text, "")
    path: KeyPath = tuple(key if key else int(i) for key, i in _MSGSPEC_PATH_ITEM_RE.findall(path_text))
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", raw):
        return (*path, unknown[1]), "unknown field", raw
    if missing := re.fullmatch(r"Object missing required field `(.*)`", raw):
        return path, f"missing required field '{missing[1]}'", raw
    message = raw.replace("`", "")
    return path, message[:1].lower() + message[1:], raw


class AgentError(Exception):
    """Base class for agent errors."""


class ConfigError(AgentError):
    """An invalid or unreadable configuration (CFG-1).

    ``str()`` is ``FILE:LINE: PATH: REASON`` (``agent.yaml:23: connectors[1].max_current_a: …``);
    the line and the key path are left out when they are not known (``agent.yaml: cannot read: …``).
    ``path`` uses dots for keys and ``[i]`` for list items, without msgspec's leading ``$``. The
    message never contains the content of a secret file.
    """

    def __init__(self, file: str, reason: str, *, line: int | None = None, path: str | None = None) -> None:
        super().__init__(file, reason, line, path)
        self.file = file
        self.reason = reason
        self.line = line
        self.path = path

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"
