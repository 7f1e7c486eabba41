"""The root of every exception raised by ``agent`` (style.md §10)."""

from __future__ import annotations

from collections.abc import Iterable

PathItem = str | int
KeyPath = tuple[PathItem, ...]


def format_path(path: Iterable[PathItem]) -> str:
    """``("connectors", 1, "max_current_a")`` → ``"connectors[1].max_current_a"``; ``()`` → ``""``."""
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else item)
    return text


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
