"""Logging for journald (DESIGN.md §5.7, OPS-2): stderr, syslog priority prefixes, key=value context.

Every line starts with ``<N>`` (sd-daemon(3) priority: ``<3>`` error, ``<4>`` warning, ``<6>``
info, ``<7>`` debug), which journald turns into the entry's priority. Structured context is written
as ``key=value`` pairs by :func:`kv`. Card data never reaches a line: callers pass only masked PANs
and :func:`drivers.terminal.mask_token`-masked RFID UIDs, and :class:`JournaldFormatter` masks any
13 to 19 digit run as a last line of defence.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from agent.timefmt import utc_timestamp

_PRIORITIES: Final = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_PAN_LIKE: Final = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")
_SAFE: Final = re.compile(r"^[A-Za-z0-9_.:/@+*…-]+$")


def priority(levelno: int) -> int:
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7


def mask_pan_like(text: str) -> str:
    return _PAN_LIKE.sub(lambda mo: "*" * (len(mo.group()) - 4) + mo.group()[-4:], text)


class JournaldFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = mask_pan_like(super().format(record))
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def kv(fields: Mapping[str, object] | None = None, /, **more: object) -> str:
    """``key=value`` pairs; values with spaces or quotes are JSON-style quoted; an aware datetime
    in the agent's one timestamp format (agent.timefmt: RFC 3339 UTC ``Z``)."""
    items = {**(fields or {}), **more}
    parts = []
    for key, value in items.items():
        if value is None:
            text = "-"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, datetime) and value.tzinfo is not None:
            text = utc_timestamp(value)
        else:
            text = str(value)
        if not _SAFE.match(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


QUIET_LIBRARIES = ("transitions",)


class _AsDebug(logging.Filter):
    """Lowers a quiet library's INFO and WARNING records to DEBUG: with ``log_level: debug`` they
    are shown, but not as warnings (an ignored trigger is the rulebook working as designed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        library = record.name.partition(".")[0]
        if library in QUIET_LIBRARIES and record.levelno < logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def configure(level: str = "info") -> None:
    """Route the root logger to stderr with :class:`JournaldFormatter` at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournaldFormatter())
    handler.addFilter(_AsDebug())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Libraries whose INFO and WARNING are internals: the transitions rulebook logs every callback,
    # and every trigger the machines ignore on purpose (ignore_invalid_triggers) as a warning. The
    # agent logs the state changes that matter itself.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
