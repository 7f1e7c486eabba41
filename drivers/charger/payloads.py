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


PAYMENT_VERSION = 1  # ``v`` of :class:`PaymentPayload`; a breaking change increments it
MAX_REF_CHARS = 64
PaymentEvent = Literal["authorized", "cost", "settled"]
# OCPP 2.1 PaymentStatusEnumType, spelled as OCPP spells it (NotifySettlementRequest.status)
SettlementStatus = Literal["Settled", "Canceled", "Rejected", "Failed"]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REF_CHARS)]
Decimal = Annotated[str, msgspec.Meta(pattern=r"^-?[0-9]+(\.[0-9]+)?$")]
Last4 = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}$")]


class PaymentPayload(msgspec.Struct, kw_only=True, frozen=True):
    """``{prefix}/{connector}/payment`` (agent → charger, QoS 1, **retained**; docs/charger-bridge.md,
    docs/ocpp21.md): what the charger's own OCPP 2.1 stack needs for the local payment terminal
    use cases, as one self-contained snapshot of the connector's current EMV payment.

    ``event`` says what changed: ``authorized`` (the terminal approved the card), ``cost`` (a running
    cost update), ``settled`` (the payment was committed or voided; final). Every message repeats
    the fields known so far, so the retained message alone is enough after a reconnect. Amounts are
    given in minor units (``*_minor``, integers) **and** as decimal strings in major units (what OCPP
    puts in its JSON numbers). Card data: brand and the last four PAN digits only, never a PAN.

    Idempotency: a charger keys what it does on ``(session_id, event)`` and, for ``cost``, on
    ``energy_wh``; the same ``settled`` content may arrive more than once (the agent republishes
    after every reconnect, the broker redelivers the retained message), never a second one with a
    different content.
    """

    v: int = PAYMENT_VERSION
    event: PaymentEvent
    session_id: Ref  # the agent's session id (upstream ``session_id``, receipt id)
    psp_ref: Ref  # the terminal's session id as the terminal reports it (OCPP idToken / pspRef)
    id_token_type: Literal["DirectPayment"] = "DirectPayment"
    method: Literal["emv"] = "emv"
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
    minor_unit_digits: Annotated[int, msgspec.Meta(ge=0, le=4)]
    authorized_minor: NonNegativeInt | None  # None: no limit (never for EMV in practice)
    authorized: Decimal | None
    partial: bool = False  # the terminal approved less than requested
    card_brand: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    card_last4: Last4 | None = None
    energy_wh: NonNegativeInt = 0  # the session's energy so far
    cost_minor: NonNegativeInt = 0  # the running cost so far (the tariff's price of the usage)
    cost: Decimal = "0"
    power_w: float | None = None
    charging_s: NonNegativeInt = 0  # time energy flowed so far (OCPP totalUsage.chargingTime)
    idle_s: NonNegativeInt = 0  # time plugged in and not charging so far (totalUsage.idleTime)
    status: SettlementStatus | None = None  # settled only
    settlement_minor: NonNegativeInt | None = None  # settled only: what was captured (0 when voided)
    settlement_amount: Decimal | None = None
    settlement_time: str | None = None  # settled only: when the terminal confirmed it (ISO 8601 UTC)
    receipt_id: Ref | None = None  # settled only, when the agent issued a receipt
    receipt_url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None  # the QR receipt link
    net_minor: NonNegativeInt | None = None  # settled only, from the receipt: VAT breakdown
    vat_minor: NonNegativeInt | None = None
    vat_rate_percent: Decimal | None = None
    ts: str  # when the agent learned what this message reports (ISO 8601 UTC, ms, ``Z``)


def decimal_text(minor: int, digits: int) -> str:
    """``1234`` minor units with 2 digits → ``"12.34"`` (exact; no float on the way)."""
    if digits == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


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
