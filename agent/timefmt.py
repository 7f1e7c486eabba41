"""The agent's one timestamp format: RFC 3339, UTC, ``Z`` (``2026-03-01T10:00:00.000Z``).

Everything the agent writes — upstream payloads and receipts (:func:`agent.upstream.contract.utc_timestamp`,
milliseconds), the journal (microseconds: it keeps the exact instants that restart pricing needs),
CLI JSON output and ``key=value`` log fields — goes through :func:`utc_timestamp`; never
``datetime.isoformat()`` alone, which writes ``+00:00``.

:func:`parse_timestamp` reads either suffix (journals written before schema 4 hold ``+00:00``);
:func:`normalize_timestamp` rewrites such stored text to the one format without changing the instant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

Timespec = Literal["milliseconds", "microseconds"]

_UTC_OFFSET: Final = "+00:00"


def utc_timestamp(at: datetime, *, timespec: Timespec = "milliseconds") -> str:
    """``2026-03-01T10:00:00.000Z`` (``timespec="microseconds"``: ``…:00.000000Z``) for a
    timezone-aware ``at``; raises :class:`ValueError` for a naive one."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("utc_timestamp needs a timezone-aware datetime")
    return at.astimezone(UTC).isoformat(timespec=timespec).removesuffix(_UTC_OFFSET) + "Z"


def utc_now(*, timespec: Timespec = "milliseconds") -> str:
    return utc_timestamp(datetime.now(UTC), timespec=timespec)


def parse_timestamp(text: str) -> datetime:
    """The instant of an RFC 3339 / ISO 8601 timestamp with ``Z`` or an offset (aware, in UTC)."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return value.astimezone(UTC)


def normalize_timestamp(text: str | None) -> str | None:
    """Stored timestamp text in the one format: a trailing ``+00:00`` becomes ``Z`` (the same
    instant, the same precision); anything else is returned unchanged."""
    if text is not None and text.endswith(_UTC_OFFSET) and "T" in text:
        return text.removesuffix(_UTC_OFFSET) + "Z"
    return text
