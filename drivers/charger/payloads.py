"""The MQTT bridge payloads of DESIGN.md §3.3 as msgspec Structs (sans-IO; shared with the simulator).

Validation strictness (a decision, see docs/charger-bridge.md): every field the contract names is
type-checked strictly (no ``"true"`` for ``true``, no ``1.0`` for an integer Wh register), required
fields must be present, but **unknown fields are ignored**, not rejected: firmware adds diagnostic
fields over time (voltage, session ids, …) and a newer firmware must not make the agent blind.
``ts`` is parsed separately by :func:`parse_ts` so that a bad timestamp costs only the timestamp,
not the whole reading.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from drivers.charger.base import ChargingState

MAX_TS_CHARS = 64  # longer than any ISO 8601 timestamp with fraction and offset
MAX_FAULT_CHARS = 128
MAX_CORRELATION_ID_CHARS = 128
MAX_CURRENT_A = 1000  # sanity bound for max_current_a (covers high-power DC)

NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
FaultCode = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FAULT_CHARS)]
CurrentA = Annotated[int, msgspec.Meta(ge=0, le=MAX_CURRENT_A)]
CorrelationId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CORRELATION_ID_CHARS)]


class PlugPayload(msgspec.Struct, kw_only=True):
    """``{prefix}/{connector}/plug``: ``{"plugged": true, "ts": "…"}``."""

    plugged: bool
    ts: Any = None


class StatusPayload(msgspec.Struct, kw_only=True):
    """``{prefix}/{connector}/status``: ``{"state": "charging", "fault": null, "ts": "…"}``."""

    state: ChargingState
    fault: FaultCode | None = None
    ts: Any = None


class MeterPayload(msgspec.Struct, kw_only=True):
    """``{prefix}/{connector}/meter``:
    ``{"energy_wh": 123456, "power_w": 7200.0, "ts": "…", "signed": null}``. ``power_w`` may be
    absent or null: a meter with an energy register only. ``current_a`` (optional) is the present
    current, for tariffs with current restrictions (OCPI 2.2.1 §Tariffs 4.4.6 min/max_current)."""

    energy_wh: NonNegativeInt
    power_w: float | None = None
    current_a: float | None = None  # optional: the present current (A, highest phase)
    ts: Any = None
    signed: str | None = None


class AlivePayload(msgspec.Struct, kw_only=True):
    """``{prefix}/alive`` (retained; the charger's MQTT will): ``{"online": true}``."""

    online: bool
    ts: Any = None


class CommandPayload(msgspec.Struct, kw_only=True):
    """``{prefix}/{connector}/cmd`` (agent → charger, QoS 1):
    ``{"action": "enable", "max_current_a": 32, "correlation_id": "…"}``.

    All three keys are always present; ``max_current_a`` is ``null`` for "no limit" and for disable.
    """

    action: Literal["enable", "disable"]
    max_current_a: CurrentA | None = None
    correlation_id: CorrelationId


def parse_ts(value: object) -> datetime | None:
    """An ISO 8601 timestamp with a UTC offset (``Z`` or ``+hh:mm``) → aware UTC ``datetime``.

    Returns ``None`` for anything else (absent, not a string, unparsable, naive): the caller then
    uses its receive time and counts the fallback.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_TS_CHARS:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None
    return parsed.astimezone(UTC)


def format_ts(at: datetime) -> str:
    """An aware ``datetime`` as ISO 8601 UTC with milliseconds and ``Z`` (what the simulator sends)."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
