"""The upstream MQTT contract (DESIGN.md §5.3; UP-1, UP-3): topics, payloads and commands.

Every payload is a frozen msgspec Struct; the same Structs encode what the agent publishes, validate
what it receives and give the JSON Schemas of ``docs/asyncapi.yaml`` (AsyncAPI 3.1.0), which is
generated from this module::

    python -m agent.upstream.contract --asyncapi > docs/asyncapi.yaml

Conventions (every payload)
    * money: integers in minor units of the tariff currency, named ``*_minor`` (never floats);
    * energy ``*_wh`` (integer Wh), power ``*_w`` (integer W), durations ``*_s``;
    * timestamps: ISO 8601 UTC strings ending in ``Z`` (:func:`utc_timestamp`);
    * ``msg_id``: a random UUID on every message that goes through the outbox (at-least-once
      delivery: the back office de-duplicates on it, UP-2);
    * ``session_id`` is the **agent's** session reference (engine: ``session_ref``), present for
      every session whatever the payment method; ``terminal_session_id`` is the Payter (PSP)
      session id of an EMV payment (engine: ``session_id``);
    * ``seq``: per session and per topic, from 0. Session events have no gaps unless a message
      was lost; meter values may have gaps (the outbox drops the oldest meter values when full);
    * ``offline``: the message was created while the broker was unreachable.

Card data (DESIGN.md §5.7, PCI DSS): no payload carries a full PAN. Receipts carry the terminal's
masked PAN, whose schema allows at most 10 visible digits (first 6, last 4). The RFID/CUG token
authorization request (``auth/request``) carries the card **UID** in clear, upper-case hex: the
back office needs it to look the token up (as OCPP ``idToken`` type ISO14443 does). A UID is not
card-holder data; EMV cards never reach ``auth/request`` (the terminal authorizes them).

Inbound messages (commands, auth responses) are strict: unknown fields are rejected. Decoding
never raises anything but :class:`ContractError` (:class:`CommandError` for commands).
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import Meta

from agent import timefmt
from agent.errors import AgentError, format_path
from agent.money.tariff import TariffConfigError
from statemachines.connector import ConnectorMachineState as MachineState
from statemachines.effects import UpdateReason
from statemachines.events import DeclineOutcome as EngineDeclineOutcome
from statemachines.events import PaymentMethod as EnginePaymentMethod
from statemachines.events import RestoreResolution, StopSource

__all__ = [
    "COMMANDS",
    "CONTRACT_VERSION",
    "DEFAULT_MAX_COMMAND_BYTES",
    "DEFAULT_PREFIX",
    "EVENT_TYPES",
    "TOPICS",
    "Alarm",
    "AuthRequest",
    "AuthResponse",
    "CdrDimension",
    "ChargingPeriod",
    "ClearDiscrepancy",
    "Command",
    "CommandError",
    "CommandErrorCode",
    "CommandResult",
    "ConnectorState",
    "ContractError",
    "Discrepancy",
    "DisplayMessage",
    "GetSessions",
    "LocalAuthEntry",
    "MeterValue",
    "PaymentAuthorized",
    "PaymentCaptured",
    "PaymentDeclined",
    "PaymentFailed",
    "PaymentIncremented",
    "PaymentPartiallyApproved",
    "PaymentVoided",
    "Receipt",
    "ReceiptLine",
    "Reconcile",
    "ReconciledPayment",
    "ReconciliationReport",
    "ReconciliationTotals",
    "SessionEnded",
    "SessionEvent",
    "SessionStarted",
    "SessionSummary",
    "SessionUpdated",
    "SetAvailability",
    "SetLocalAuthList",
    "SetTariff",
    "SignedMeterData",
    "Start",
    "Status",
    "StatusOffline",
    "StatusOnline",
    "Stop",
    "TerminalState",
    "TopicSpec",
    "Topics",
    "decode_auth_response",
    "decode_command",
    "encode",
    "masked_pan_ok",
    "new_msg_id",
    "tariff_error",
    "utc_timestamp",
]

CONTRACT_VERSION: Final = "1.2.0"  # semver of this contract; the topic prefix carries the major ("v1")
DEFAULT_PREFIX: Final = "evpay/v1/{station_id}"
DEFAULT_MAX_COMMAND_BYTES: Final = 256 * 1024  # a full local auth list of ~2 500 entries fits

# --------------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------------

_TS_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$"
Timestamp = Annotated[
    str,
    Meta(
        pattern=_TS_PATTERN,
        description="ISO 8601 UTC timestamp ending in Z",
        examples=["2026-03-01T10:00:00.000Z"],
    ),
]
MsgId = Annotated[
    str,
    Meta(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description="random UUID of this message, for de-duplication (at-least-once delivery)",
    ),
]
CorrelationId = Annotated[
    str,
    Meta(min_length=1, max_length=128, description="chosen by the sender, echoed in the result"),
]
ConnectorId = Annotated[int, Meta(ge=1, le=255, description="connector number, as configured")]
Minor = Annotated[int, Meta(ge=0, description="amount in integer minor units of the currency")]
Wh = Annotated[int, Meta(ge=0, description="energy in Wh")]
Watts = Annotated[int, Meta(ge=0, description="power in W")]
Seq = Annotated[int, Meta(ge=0, description="per-session sequence number on this topic, from 0")]
SessionRef = Annotated[
    str, Meta(min_length=1, max_length=64, description="the agent's session id (every session)")
]
TerminalSessionId = Annotated[
    str, Meta(min_length=1, max_length=32, description="Payter (PSP) session id of an EMV payment")
]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 alphabetic code")]
Date = Annotated[str, Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description="calendar date YYYY-MM-DD")]
Text = Annotated[str, Meta(max_length=256)]
ShortText = Annotated[str, Meta(max_length=64)]
_MASK = r"[*Xx\u2022 .-]"
MaskedPan = Annotated[
    str,
    Meta(
        # at most 10 visible digits (first 6 + last 4, PCI DSS 3.4); no full PAN fits
        pattern=rf"^{_MASK}*(?:[0-9]{_MASK}*){{0,10}}$",
        min_length=4,
        max_length=23,
        description="the terminal's masked PAN: at most the first 6 and last 4 digits visible",
        examples=["411111******1111"],
    ),
]
RfidUid = Annotated[
    str,
    Meta(
        pattern=r"^(?:[0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$",
        description="ISO 14443 UID (4, 7 or 10 bytes) as upper-case hex, sent in clear",
    ),
]
IdToken = Annotated[
    str,
    Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9*._:-]+$", description="RFID/CUG or eMSP token"),
]

# The engine's enums are the contract's (types end to end: a value the engine can produce is one the
# contract accepts, checked by mypy; their JSON Schemas are named enums in docs/asyncapi.yaml).
PaymentMethod = EnginePaymentMethod
ConnectorMachineState = MachineState  # the machine state as the contract names it
StopReason = StopSource
DeclineOutcome = EngineDeclineOutcome
AuthStatus = Literal["accepted", "rejected", "blocked", "expired", "no_credit"]


def utc_timestamp(at: datetime) -> str:
    """``2026-03-01T10:00:00.000Z`` for a timezone-aware ``at`` (millisecond precision; the
    agent's one timestamp format, :mod:`agent.timefmt`)."""
    return timefmt.utc_timestamp(at)


def new_msg_id() -> str:
    """A fresh ``msg_id`` (random UUID, lower-case text)."""
    return str(uuid.uuid4())


_MASKED_PAN_RE: Final = re.compile(rf"{_MASK}*(?:[0-9]{_MASK}*){{0,10}}")


def masked_pan_ok(text: str) -> bool:
    """True when ``text`` looks masked: mask characters and at most 10 visible digits."""
    return 4 <= len(text) <= 23 and _MASKED_PAN_RE.fullmatch(text) is not None


class _Payload(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """Base of the payloads the agent publishes."""


class _Inbound(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the payloads the agent receives: unknown fields are rejected."""


# --------------------------------------------------------------------------------------------------
# Retained state: status (birth / last will), terminal, connector state
# --------------------------------------------------------------------------------------------------


class StatusOnline(msgspec.Struct, frozen=True, kw_only=True, tag_field="state", tag="online"):
    """Birth message, published retained on every connect; replaced by the last will when the
    agent's connection drops without a clean disconnect."""

    version: Annotated[str, Meta(max_length=64, description="agent version")]
    contract: Annotated[str, Meta(description="version of this upstream contract (semver)")] = (
        CONTRACT_VERSION
    )
    started_at: Annotated[Timestamp, Meta(description="when the agent process started")]


class StatusOffline(msgspec.Struct, frozen=True, kw_only=True, tag_field="state", tag="offline"):
    """Last will (and the message of a clean shutdown): exactly ``{"state": "offline"}``."""


Status = StatusOnline | StatusOffline


class TerminalState(_Payload, frozen=True, kw_only=True):
    """The payment terminal's link and PSP state (TERM-6), retained, published on change."""

    link: Annotated[
        Literal["down", "connecting", "setting_up", "ready"],
        Meta(description="ready = synchronized, set up and enabled (TERM-1)"),
    ]
    psp_state: Annotated[
        Literal["offline", "online", "disabled", "enabled", "wait_card", "wait_auth"] | None,
        Meta(description="last PSP state from Get Status; null while the link is down"),
    ] = None
    family: Annotated[Literal["apollo", "p6x"] | None, Meta(description="terminal family")] = None
    model: Annotated[str, Meta(max_length=64)] | None = None
    serial: Annotated[str, Meta(max_length=64)] | None = None
    software_version: Annotated[str, Meta(max_length=64)] | None = None
    since: Annotated[Timestamp, Meta(description="when `link` last changed")]
    last_error: Annotated[Text | None, Meta(description="last link or setup error")] = None
    ts: Annotated[Timestamp, Meta(description="when this state was published")]


class ConnectorState(_Payload, frozen=True, kw_only=True):
    """One connector's state, retained, published on change and with every meter value."""

    connector_id: ConnectorId
    state: Annotated[
        ConnectorMachineState, Meta(description="connector machine state (docs/state-machines.md)")
    ]
    plugged: bool
    available: Annotated[bool, Meta(description="false after set_availability(false)")] = True
    session_id: SessionRef | None = None
    terminal_session_id: TerminalSessionId | None = None
    method: PaymentMethod | None = None
    energy_wh: Annotated[Wh, Meta(description="energy of the current session so far")] = 0
    power_w: Annotated[Watts | None, Meta(description="last reported power; null: not reported")] = None
    cost_minor: Annotated[Minor, Meta(description="running cost (gross) of the current session")] = 0
    authorized_minor: Annotated[
        Minor | None, Meta(description="amount authorized (EMV) or backend limit (RFID); null = none")
    ] = None
    currency: Currency | None = None
    since: Annotated[Timestamp, Meta(description="when `state` was entered")]
    ts: Timestamp


# --------------------------------------------------------------------------------------------------
# Meter values and session/payment events (outbox, QoS 1, in order per connector)
# --------------------------------------------------------------------------------------------------


class MeterValue(_Payload, frozen=True, kw_only=True):
    """A periodic meter value during a session (``meter_interval_s``)."""

    msg_id: MsgId
    connector_id: ConnectorId
    session_id: SessionRef
    seq: Seq
    ts: Annotated[Timestamp, Meta(description="when the charger reported the value")]
    meter_wh: Annotated[Wh, Meta(description="meter register")]
    energy_wh: Annotated[Wh, Meta(description="energy of this session so far")]
    power_w: Annotated[Watts | None, Meta(description="null: the meter reports no power")] = None
    cost_minor: Annotated[Minor | None, Meta(description="running cost (gross) so far")] = None
    offline: bool = False


class _SessionEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="event"):
    msg_id: MsgId
    connector_id: ConnectorId
    session_id: SessionRef
    seq: Seq
    ts: Timestamp
    offline: bool = False


class SessionStarted(_SessionEvent, frozen=True, kw_only=True, tag="session.started"):
    """Energy was enabled for the session for the first time: exactly once per session (a resume
    after a restart is a ``session.updated``). A payment voided before energy ever flowed has
    neither a ``session.started`` nor a ``session.ended``."""

    method: PaymentMethod
    meter_wh: Annotated[
        Wh | None,
        Meta(description="meter register at the start; null: the charger had reported none yet"),
    ] = None


class SessionUpdated(_SessionEvent, frozen=True, kw_only=True, tag="session.updated"):
    """A journaled payment was handed back to the engine after an agent restart (ERR-5; reason
    ``resumed``, OCPP 2.1 ``TxResumed``), published before anything else of the session after the
    restart: ``resolution`` says what was done — ``resumed`` charging, ``resent`` a decided
    Commit/Void, decided a ``commit`` or ``void`` now, or ``ended`` a session that has nothing to
    settle on the terminal."""

    reason: UpdateReason
    resolution: RestoreResolution
    terminal_session_id: TerminalSessionId | None = None
    method: PaymentMethod
    plugged: bool
    authorized_minor: Minor | None = None


class CdrDimension(_Payload, frozen=True, kw_only=True):
    """OCPI 2.2.1 §CDRs 10.4.2 CdrDimension: ENERGY in kWh, TIME (charging) and PARKING_TIME (not
    charging) in hours (9 decimals: exact to the millisecond), MAX_POWER in kW, MAX_CURRENT in A."""

    type: Literal["ENERGY", "TIME", "PARKING_TIME", "MAX_POWER", "MAX_CURRENT"]
    volume: Annotated[float, Meta(ge=0)]


class ChargingPeriod(_Payload, frozen=True, kw_only=True):
    """OCPI 2.2.1 §CDRs 10.4.6 ChargingPeriod: from ``start_date_time`` until the next period
    (the last one until the session's end), priced by one tariff element per dimension."""

    start_date_time: Timestamp
    dimensions: tuple[CdrDimension, ...]


ChargingPeriods = Annotated[
    tuple[ChargingPeriod, ...],
    Meta(description="the session's OCPI 2.2.1 CDR charging periods (contract 1.2.0)"),
]


class SessionEnded(_SessionEvent, frozen=True, kw_only=True, tag="session.ended"):
    """Session over: settled on the terminal, or ended without terminal settlement (RFID, remote,
    free vend). ``amount_minor`` is what was captured (EMV) or is owed (others); ``cost_minor`` the
    tariff's price of the usage (they differ only when the cost reached the authorized cap).
    ``charging_periods``: what was priced, in the OCPI CDR shape."""

    reason: StopReason
    energy_wh: Wh
    cost_minor: Minor
    amount_minor: Minor
    charging_periods: ChargingPeriods = ()


class PaymentAuthorized(_SessionEvent, frozen=True, kw_only=True, tag="payment.authorized"):
    """EMV approved in full (``terminal_session_id`` set) or RFID accepted by the back office."""

    method: Annotated[PaymentMethod | None, Meta(description="emv or rfid (1.1)")] = None
    terminal_session_id: TerminalSessionId | None = None
    authorized_minor: Annotated[Minor | None, Meta(description="null: RFID without a limit")] = None


class PaymentPartiallyApproved(_SessionEvent, frozen=True, kw_only=True, tag="payment.partially_approved"):
    """EMV partially approved (Apollo, AMT-3): the session is capped at ``authorized_minor``."""

    terminal_session_id: TerminalSessionId
    authorized_minor: Minor


class PaymentDeclined(_SessionEvent, frozen=True, kw_only=True, tag="payment.declined"):
    """No payment to dispose of (START-7): the card was declined, cancelled or not answered
    (EMV), or the token was not accepted (RFID)."""

    outcome: DeclineOutcome
    reason: Annotated[Text | None, Meta(description="terminal or back-office reason text")] = None


class PaymentIncremented(_SessionEvent, frozen=True, kw_only=True, tag="payment.incremented"):
    """Apollo Update Session granted a higher total (AMT-1)."""

    terminal_session_id: TerminalSessionId
    authorized_minor: Annotated[Minor, Meta(description="the new authorized total")]


class PaymentCaptured(_SessionEvent, frozen=True, kw_only=True, tag="payment.captured"):
    """Commit confirmed by the terminal (STOP-7); ``amount_minor`` captured."""

    terminal_session_id: TerminalSessionId
    amount_minor: Minor


class PaymentVoided(_SessionEvent, frozen=True, kw_only=True, tag="payment.voided"):
    """Void confirmed by the terminal (nothing delivered, STOP-7, ERR-1)."""

    terminal_session_id: TerminalSessionId


class PaymentFailed(_SessionEvent, frozen=True, kw_only=True, tag="payment.failed"):
    """A payment step failed for good and needs the operator (e.g. a Commit the terminal keeps
    refusing, ERR-8); an ``undisposed_payment`` / ``commit_failing`` alarm accompanies it."""

    terminal_session_id: TerminalSessionId | None = None
    stage: Literal["authorization", "capture", "void", "increment"]
    reason: Text


SessionEvent = (
    SessionStarted
    | SessionUpdated
    | SessionEnded
    | PaymentAuthorized
    | PaymentPartiallyApproved
    | PaymentDeclined
    | PaymentIncremented
    | PaymentCaptured
    | PaymentVoided
    | PaymentFailed
)
EVENT_TYPES: Final[Mapping[str, type[_SessionEvent]]] = {
    t.__struct_config__.tag: t  # type: ignore[misc]
    for t in (
        SessionStarted,
        SessionUpdated,
        SessionEnded,
        PaymentAuthorized,
        PaymentPartiallyApproved,
        PaymentDeclined,
        PaymentIncremented,
        PaymentCaptured,
        PaymentVoided,
        PaymentFailed,
    )
}


# --------------------------------------------------------------------------------------------------
# Receipts (DESIGN.md §5.5) and reconciliation (§5.6)
# --------------------------------------------------------------------------------------------------


class ReceiptLine(msgspec.Struct, frozen=True, kw_only=True):
    """One itemised line; ``net_minor + vat_minor == gross_minor``."""

    kind: Literal[
        "energy",
        "time",
        "session_fee",
        "idle_fee",
        "minimum_adjustment",
        "maximum_adjustment",
        "cap_adjustment",
    ]
    band: Annotated[str, Meta(max_length=64, description='time-of-day band name; "" = base prices')] = ""
    quantity: Annotated[int, Meta(description="in `unit`")]
    unit: Literal["Wh", "ms", "session"]
    unit_price: Annotated[
        str, Meta(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="decimal, major units per `price_unit`")
    ]
    price_unit: Literal["kWh", "min", "h", "session"]
    net_minor: int
    vat_minor: int
    gross_minor: int


class SignedMeterData(msgspec.Struct, frozen=True, kw_only=True):
    """Signed meter values as the charger provides them (e.g. OCMF, German Eichrecht)."""

    format: Annotated[str, Meta(max_length=32, description='e.g. "OCMF", "EDL"')]
    start: Annotated[str, Meta(max_length=8192)]
    stop: Annotated[str, Meta(max_length=8192)] | None = None
    public_key: Annotated[str, Meta(max_length=1024)] | None = None


ReceiptStatus = Literal["captured", "voided", "declined", "failed", "account", "free_vend"]


class Receipt(_Payload, frozen=True, kw_only=True):
    """The receipt of a finished session, successful or not (RCPT-1).

    ``status``: ``captured`` (EMV, Commit confirmed), ``voided`` (EMV, nothing delivered),
    ``declined`` (no payment), ``failed`` (the payment could not be settled), ``account`` (RFID or
    remote start: billed by the back office to the token's account), ``free_vend`` (energy without
    payment, e.g. terminal offline). ``total_minor`` is what the driver pays: the sum of the lines'
    ``gross_minor``. Lines are empty when nothing is charged.
    """

    msg_id: MsgId
    receipt_id: Annotated[str, Meta(min_length=1, max_length=64)]
    station_id: Annotated[str, Meta(min_length=1, max_length=64)]
    connector_id: ConnectorId
    session_id: SessionRef
    status: ReceiptStatus
    method: PaymentMethod
    issued_at: Timestamp
    started_at: Annotated[Timestamp, Meta(description="session start (or card read when declined)")]
    stopped_at: Timestamp | None = None
    duration_s: Annotated[int, Meta(ge=0)] = 0
    meter_start_wh: Wh | None = None
    meter_stop_wh: Wh | None = None
    energy_wh: Wh = 0
    currency: Currency
    minor_unit_digits: Annotated[int, Meta(ge=0, le=4)]
    prices_include_vat: bool
    vat_rate_percent: Annotated[str, Meta(pattern=r"^[0-9]+(\.[0-9]+)?$")]
    lines: tuple[ReceiptLine, ...] = ()
    charging_periods: ChargingPeriods = ()
    net_minor: int = 0
    vat_minor: int = 0
    total_minor: Annotated[Minor, Meta(description="gross total the driver pays")] = 0
    authorized_minor: Minor | None = None
    captured_minor: Minor | None = None
    masked_pan: MaskedPan | None = None
    brand: Annotated[str, Meta(max_length=32)] | None = None
    id_token_masked: (
        Annotated[str, Meta(max_length=64, description="RFID/remote token, masked but for the last 4")] | None
    ) = None
    terminal_session_id: TerminalSessionId | None = None
    host_reference: Annotated[str, Meta(max_length=64, description="acquirer/host reference")] | None = None
    decline_reason: Text | None = None
    signed_meter: SignedMeterData | None = None
    qr_url: Annotated[str, Meta(max_length=4279, description="dynamic receipt link (RCPT-2)")] | None = None


class ReconciledPayment(msgspec.Struct, frozen=True, kw_only=True):
    session_id: SessionRef
    connector_id: ConnectorId
    method: PaymentMethod
    terminal_session_id: TerminalSessionId | None = None
    status: Literal["open", "captured", "voided", "declined", "failed", "undisposed", "account", "free_vend"]
    started_at: Timestamp
    ended_at: Timestamp | None = None
    energy_wh: Wh = 0
    computed_minor: Annotated[Minor, Meta(description="tariff price of the usage")] = 0
    authorized_minor: Minor | None = None
    captured_minor: Minor | None = None
    voided: bool = False
    voided_minor: Annotated[
        Minor | None, Meta(description="authorization released by a Void (the authorized amount)")
    ] = None
    masked_pan: MaskedPan | None = None
    recovery: Annotated[
        Literal["resumed", "resent", "commit", "void", "ended"] | None,
        Meta(description="set when the payment was restored after a crash (ERR-5)"),
    ] = None


class ReconciliationTotals(msgspec.Struct, frozen=True, kw_only=True):
    payments: Annotated[int, Meta(ge=0)]
    authorized_minor: Minor
    captured_minor: Minor
    voided: Annotated[int, Meta(ge=0, description="number of voided payments")]
    energy_wh: Wh
    computed_minor: Minor
    voided_minor: Annotated[Minor, Meta(description="sum of the authorizations released by Voids")] = 0
    by_method: Annotated[dict[str, int], Meta(description="number of payments per method")] = msgspec.field(
        default_factory=dict
    )
    by_status: Annotated[dict[str, int], Meta(description="number of payments per status")] = msgspec.field(
        default_factory=dict
    )


DiscrepancyKind = Literal[
    "possible_orphan_approval",
    "undisposed_payment",
    "commit_unconfirmed",
    "captured_mismatch",
    "free_vend",
    "recovered_after_crash",
    "orphan_voided",
    "capped_at_authorized",
]


class Discrepancy(msgspec.Struct, frozen=True, kw_only=True):
    kind: DiscrepancyKind
    severity: Annotated[
        Literal["error", "warning", "info"],
        Meta(description="error: money at risk, act now; warning: check; info: expected, for the record"),
    ] = "warning"
    session_id: SessionRef | None = None
    connector_id: ConnectorId | None = None
    terminal_session_id: TerminalSessionId | None = None
    amount_minor: int | None = None
    age_s: Annotated[int, Meta(ge=0, description="age of the open payment, seconds")] | None = None
    detail: Text


class ReconciliationReport(_Payload, frozen=True, kw_only=True):
    """Per-day (and on-command) reconciliation (REC-1, DESIGN.md §5.6)."""

    msg_id: MsgId
    report_id: Annotated[str, Meta(min_length=1, max_length=64)]
    station_id: Annotated[str, Meta(min_length=1, max_length=64)]
    trigger: Literal["daily", "command", "cli"]
    correlation_id: Annotated[CorrelationId | None, Meta(description="of the reconcile command")] = None
    date: Date | None = None
    period_start: Timestamp
    period_end: Timestamp
    generated_at: Timestamp
    currency: Currency
    payments: tuple[ReconciledPayment, ...] = ()
    totals: ReconciliationTotals
    discrepancies: tuple[Discrepancy, ...] = ()


# --------------------------------------------------------------------------------------------------
# Alarms
# --------------------------------------------------------------------------------------------------

AlarmName = Literal[
    "terminal_offline",  # TERM-6: link down longer than terminal.offline_alarm_after_s
    "undisposed_payment",  # STOP-7: payment not committed/voided after session.undisposed_alarm_after_s
    "commit_failing",  # ERR-8: Commit/Void rejected or unanswered repeatedly
    "outbox_near_full",  # DESIGN.md §5.3: outbox above its high-water mark
    "journal_error",  # the journal cannot be written (disk full, I/O error, corruption)
    "charger_command_failed",  # energy enable/disable not handed to the charger after retries
    # ERR-5 / psp-reference §10.4: a card read without an outcome at a restart; the terminal may
    # hold an approval the journal never saw (masked PAN, amount, time in ``data``)
    "possible_orphan_approval",
]


class Alarm(_Payload, frozen=True, kw_only=True):
    """An alarm was raised or cleared. A raised alarm is repeated at most once per clearing."""

    msg_id: MsgId
    alarm: AlarmName
    state: Literal["raised", "cleared"]
    severity: Literal["warning", "critical"]
    connector_id: ConnectorId | None = None
    session_id: SessionRef | None = None
    terminal_session_id: TerminalSessionId | None = None
    message: Text
    data: Annotated[dict[str, str | int | bool | None], Meta(description="alarm-specific details, flat")] = (
        msgspec.field(default_factory=dict)
    )
    ts: Timestamp


# --------------------------------------------------------------------------------------------------
# RFID/CUG token authorization (START-5)
# --------------------------------------------------------------------------------------------------


class AuthRequest(_Payload, frozen=True, kw_only=True):
    """The agent asks the back office to authorize a non-payment card (RFID/CUG, START-5).

    The answer goes to ``…/auth/response`` with the same ``request_id`` (or, MQTT 5, to the
    response topic with the correlation data). Without an answer in time the agent falls back to
    its local authorization list and cache per its offline policy.
    """

    request_id: Annotated[MsgId, Meta(description="UUID, echoed by the response")]
    connector_id: ConnectorId | None = None
    token_type: Literal["iso14443"] = "iso14443"
    uid: RfidUid
    ts: Timestamp


class AuthResponse(_Inbound, frozen=True, kw_only=True):
    """The back office's answer to an :class:`AuthRequest` (inbound: unknown fields rejected)."""

    request_id: MsgId
    status: AuthStatus
    limit_minor: Annotated[Minor | None, Meta(description="spending limit of this session")] = None
    balance_minor: Annotated[Minor | None, Meta(description="prepaid balance; caps the session too")] = None
    expires_at: Annotated[Timestamp | None, Meta(description="cache the answer until")] = None
    reason: Text | None = None


# --------------------------------------------------------------------------------------------------
# Commands (cmd/{name} → cmd/{name}/result)
# --------------------------------------------------------------------------------------------------


class _Command(_Inbound, frozen=True, kw_only=True):
    name: ClassVar[str]
    correlation_id: CorrelationId


class Start(_Command, frozen=True, kw_only=True):
    """Remote start (START-4): start a session on ``connector_id`` for ``id_token`` without a card
    payment; ``limit_minor`` caps the session (null = no limit)."""

    name: ClassVar[str] = "start"
    connector_id: ConnectorId
    id_token: IdToken
    limit_minor: Minor | None = None


class Stop(_Command, frozen=True, kw_only=True):
    """Remote stop (STOP-5). With ``session_id`` the stop applies only to that session."""

    name: ClassVar[str] = "stop"
    connector_id: ConnectorId
    session_id: SessionRef | None = None


class SetAvailability(_Command, frozen=True, kw_only=True):
    """Make a connector (or, with ``connector_id`` null, every connector) (un)available. A running
    session is not stopped; the connector becomes unavailable when it ends."""

    name: ClassVar[str] = "set_availability"
    connector_id: ConnectorId | None = None
    available: bool


TariffObject = Annotated[
    dict[str, Any],
    Meta(
        description="the tariff in any form the configuration takes (docs/tariff.md): the simple "
        "form, the OCPI wrapper `{ocpi, timezone, minor_unit_digits}` or a bare OCPI 2.2.1 Tariff "
        "object (it has `elements`; its timezone is then the station's current tariff's). Checked "
        "field by field when the command is executed: a bad one is answered with its path "
        "(`tariff.elements[0].price_components[0].price: …`) and changes nothing"
    ),
]


class SetTariff(_Command, frozen=True, kw_only=True):
    """Replace the station's tariff for sessions that start afterwards; running sessions keep
    theirs. Journaled: it survives a restart unless the configured tariff changes (docs/commands.md)."""

    name: ClassVar[str] = "set_tariff"
    tariff: TariffObject


class LocalAuthEntry(_Inbound, frozen=True, kw_only=True):
    uid: RfidUid
    status: AuthStatus
    limit_minor: Minor | None = None
    expires_at: Timestamp | None = None


class SetLocalAuthList(_Command, frozen=True, kw_only=True):
    """The offline authorization list for RFID/CUG tokens (START-5). ``full`` replaces the list;
    ``differential`` adds or replaces the given entries. ``version`` must increase."""

    name: ClassVar[str] = "set_local_auth_list"
    version: Annotated[int, Meta(ge=0)]
    update: Literal["full", "differential"]
    entries: Annotated[tuple[LocalAuthEntry, ...], Meta(max_length=10_000)]


class DisplayMessage(_Command, frozen=True, kw_only=True):
    """Show a message on the Apollo screen (ignored with an error result on P6X)."""

    name: ClassVar[str] = "display_message"
    connector_id: ConnectorId | None = None
    title: Annotated[str, Meta(min_length=1, max_length=64)]
    message: Annotated[str, Meta(max_length=256)] = ""
    duration_s: Annotated[int, Meta(ge=1, le=3600)] = 30


class Reconcile(_Command, frozen=True, kw_only=True):
    """Build and publish a reconciliation report (REC-1) for ``date`` (UTC day; null = today)."""

    name: ClassVar[str] = "reconcile"
    date: Date | None = None


class ClearDiscrepancy(_Command, frozen=True, kw_only=True):
    """An operator has accounted for a discrepancy that stays in every reconciliation report until
    cleared: today a ``possible_orphan_approval`` (checked in the Payter portal that the hold was
    released, or voided it there). ``note`` is kept in the journal."""

    name: ClassVar[str] = "clear_discrepancy"
    session_id: SessionRef
    kind: Literal["possible_orphan_approval"] = "possible_orphan_approval"
    note: Annotated[str, Meta(max_length=256)] | None = None


class GetSessions(_Command, frozen=True, kw_only=True):
    """List sessions: ``open`` ones, or ``all`` of the journal's recent ones (at most ``limit``)."""

    name: ClassVar[str] = "get_sessions"
    scope: Literal["open", "all"] = "open"
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


Command = (
    Start
    | Stop
    | SetAvailability
    | SetTariff
    | SetLocalAuthList
    | DisplayMessage
    | Reconcile
    | ClearDiscrepancy
    | GetSessions
)
COMMANDS: Final[Mapping[str, type[_Command]]] = {
    c.name: c
    for c in (
        Start,
        Stop,
        SetAvailability,
        SetTariff,
        SetLocalAuthList,
        DisplayMessage,
        Reconcile,
        ClearDiscrepancy,
        GetSessions,
    )
}


class CommandErrorCode(StrEnum):
    """Why a command was refused before it reached the agent's logic (``code`` of the result)."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_ENCODING = "invalid_encoding"  # not UTF-8
    INVALID_JSON = "invalid_json"  # not JSON, or nested too deeply, or a number out of range
    NOT_AN_OBJECT = "not_an_object"  # JSON, but not an object
    MISSING_CORRELATION_ID = "missing_correlation_id"  # absent, null, empty or not a string
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"  # wrong JSON type, including null where not allowed
    INVALID_VALUE = "invalid_value"  # right type, out of range / bad format / inconsistent
    # set by the agent's command handlers, not by decode_command:
    NOT_SUPPORTED = "not_supported"
    CONFLICT = "conflict"
    INTERNAL = "internal"


class SessionSummaryState(StrEnum):
    """A listed session's state: its connector's machine state, or ``ended`` (from the journal)."""

    UNAVAILABLE = "unavailable"
    AVAILABLE = "available"
    AWAITING_CARD = "awaiting_card"
    AUTHORIZING = "authorizing"
    AWAITING_PLUG = "awaiting_plug"
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"
    SUSPENDED_EVSE = "suspended_evse"
    STOPPING = "stopping"
    IDLE_FEE = "idle_fee"
    SETTLING = "settling"
    FINISHING = "finishing"
    ENDED = "ended"


# the connector machine's states and ``ended``, nothing else (a new machine state must be listed)
assert {s.value for s in SessionSummaryState} == {s.value for s in MachineState} | {"ended"}


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One session in a ``get_sessions`` result."""

    session_id: SessionRef
    connector_id: ConnectorId
    state: SessionSummaryState
    method: PaymentMethod
    terminal_session_id: TerminalSessionId | None = None
    started_at: Timestamp
    ended_at: Timestamp | None = None
    energy_wh: Wh = 0
    cost_minor: Minor = 0
    authorized_minor: Minor | None = None


class CommandResult(_Payload, frozen=True, kw_only=True):
    """The answer to every command, malformed ones included (UP-3).

    ``accepted``: the agent will act on it (or has); ``rejected``: well-formed but refused in the
    current state (e.g. connector busy, ``code`` conflict); ``error``: malformed (``code`` from
    :class:`CommandErrorCode`). ``correlation_id`` is null only when the request had none usable.
    """

    correlation_id: CorrelationId | None
    command: Annotated[str, Meta(max_length=64, description="the command name from the topic")]
    status: Literal["accepted", "rejected", "error"]
    code: CommandErrorCode | None = None
    reason: Text | None = None
    sessions: Annotated[tuple[SessionSummary, ...] | None, Meta(description="get_sessions: the sessions")] = (
        None
    )
    data: Annotated[
        dict[str, str | int | bool | None] | None,
        Meta(description="command-specific extras, e.g. reconcile: report_id; start: session_id"),
    ] = None
    ts: Timestamp


class ContractError(AgentError, ValueError):
    """An inbound payload that does not fit the contract. ``str()`` is ``code: reason``; the reason
    never echoes long digit runs (no card data in exception text, OPS-2)."""

    def __init__(self, code: CommandErrorCode, reason: str, *, correlation_id: str | None = None) -> None:
        reason = _scrub(reason)
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.correlation_id = correlation_id

    def __str__(self) -> str:
        return f"{self.code.value}: {self.reason}"


class CommandError(ContractError):
    """A malformed command; ``correlation_id`` is the request's, when one could be read."""

    def result(self, command: str, ts: str) -> CommandResult:
        """The ``error`` result to publish for this command."""
        return CommandResult(
            correlation_id=self.correlation_id,
            command=command[:64],
            status="error",
            code=self.code,
            reason=self.reason[:256],
            ts=ts,
        )


_LONG_DIGITS: Final = re.compile(r"[0-9]{11,}")


def _scrub(text: str) -> str:
    return _LONG_DIGITS.sub(lambda m: m.group()[:4] + "…", text)


_VALIDATION_RE: Final = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def _from_validation(text: str, correlation_id: str | None, cls: type[ContractError]) -> ContractError:
    match = _VALIDATION_RE.match(text)
    message, path = (match["message"], match["path"] or "") if match else (text, "")
    where = path.lstrip(".") or "payload"
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", message, re.DOTALL):
        field = f"{path.lstrip('.')}.{unknown[1]}" if path else unknown[1]
        return cls(
            CommandErrorCode.UNKNOWN_FIELD, f"unknown field {field[:64]!r}", correlation_id=correlation_id
        )
    if missing := re.fullmatch(r"Object missing required field `(.*)`", message, re.DOTALL):
        field = f"{path.lstrip('.')}.{missing[1]}" if path else missing[1]
        return cls(CommandErrorCode.MISSING_FIELD, f"missing field {field!r}", correlation_id=correlation_id)
    reason = f"{where}: {message.replace('`', '')}"[:200]
    if re.fullmatch(r"Expected `[^`]*`, got `[^`]*`", message):
        return cls(CommandErrorCode.INVALID_TYPE, reason, correlation_id=correlation_id)
    return cls(CommandErrorCode.INVALID_VALUE, reason, correlation_id=correlation_id)


def _parse_object(payload: bytes, max_bytes: int, cls: type[ContractError]) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise cls(CommandErrorCode.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes, at most {max_bytes}")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise cls(CommandErrorCode.INVALID_ENCODING, f"not UTF-8 at byte {exc.start}") from None
    try:
        obj = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise cls(CommandErrorCode.INVALID_JSON, str(exc)[:200]) from None
    except (msgspec.MsgspecError, RecursionError, ValueError) as exc:  # number out of range, nesting
        raise cls(CommandErrorCode.INVALID_JSON, str(exc)[:200] or type(exc).__name__) from None
    if not isinstance(obj, dict):
        raise cls(CommandErrorCode.NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(obj)}")
    return obj


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def decode_command(
    name: str,
    payload: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_COMMAND_BYTES,
    correlation_data: str | None = None,
) -> Command:
    """Decode the payload of ``…/cmd/{name}`` into a typed command (UP-3).

    ``correlation_data`` is the MQTT 5 correlation data (decoded as UTF-8), used when the payload
    has no ``correlation_id``. Checks run in this order, the first failure wins: size, UTF-8, JSON,
    top-level object, ``correlation_id``, command name, fields (unknown, missing, type, value). The
    tariff of ``set_tariff`` is only checked to be an object here: its form's checks need the
    station's timezone and run when the command is executed (:func:`tariff_error` gives the codes).

    Raises :class:`CommandError` and nothing else, whatever the input.
    """
    obj = _parse_object(payload, max_bytes, CommandError)
    if "correlation_id" not in obj and correlation_data:
        obj["correlation_id"] = correlation_data
    correlation_id = obj.get("correlation_id")
    if not isinstance(correlation_id, str) or not 1 <= len(correlation_id) <= 128:
        got = "absent" if "correlation_id" not in obj else _json_type(correlation_id)
        if isinstance(correlation_id, str):
            got = f"a string of {len(correlation_id)} characters (1 to 128 allowed)"
        raise CommandError(CommandErrorCode.MISSING_CORRELATION_ID, f"correlation_id is {got}")
    cls = COMMANDS.get(name)
    if cls is None:
        raise CommandError(
            CommandErrorCode.UNKNOWN_COMMAND,
            f"unknown command {name[:64]!r} (known: {', '.join(COMMANDS)})",
            correlation_id=correlation_id,
        )
    try:
        command: Command = msgspec.convert(obj, cls, strict=True)  # type: ignore[assignment]
    except msgspec.ValidationError as exc:
        raise _from_validation(str(exc), correlation_id, CommandError) from None
    return command


_TYPE_ERROR: Final = re.compile(r"expected [\w |`]+, got `?(str|int|float|bool|null|array|object)`?")


def tariff_error(exc: TariffConfigError, *, correlation_id: str | None = None) -> CommandError:
    """The ``set_tariff`` error for an invalid tariff: the code of what is wrong (unknown, missing,
    wrongly typed or invalid field) and the field's path below ``tariff``."""
    where = ".".join(("tariff", format_path(exc.path))) if exc.path else "tariff"
    message = exc.message
    if message == "unknown field":
        return CommandError(
            CommandErrorCode.UNKNOWN_FIELD, f"unknown field {where[:64]!r}", correlation_id=correlation_id
        )
    if missing := re.fullmatch(r"missing required field '(.*)'", message):
        reason = f"missing field '{where}.{missing[1]}'"[:200]
        return CommandError(CommandErrorCode.MISSING_FIELD, reason, correlation_id=correlation_id)
    wrong_type = _TYPE_ERROR.fullmatch(message) or "(write it quoted" in message
    code = CommandErrorCode.INVALID_TYPE if wrong_type else CommandErrorCode.INVALID_VALUE
    return CommandError(code, _scrub(f"{where}: {message}")[:200], correlation_id=correlation_id)


def decode_auth_response(payload: bytes, *, max_bytes: int = 4096) -> AuthResponse:
    """Decode ``…/auth/response``; raises :class:`ContractError` and nothing else."""
    obj = _parse_object(payload, max_bytes, ContractError)
    request_id = obj.get("request_id")
    try:
        return msgspec.convert(obj, AuthResponse, strict=True)
    except msgspec.ValidationError as exc:
        raise _from_validation(
            str(exc), request_id if isinstance(request_id, str) else None, ContractError
        ) from None


_ENCODER: Final = msgspec.json.Encoder()


def encode(payload: msgspec.Struct) -> bytes:
    """The JSON bytes of a payload."""
    return _ENCODER.encode(payload)


# --------------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One row of DESIGN.md §5.3. ``suffix`` is relative to the prefix, with ``{connector_id}`` /
    ``{name}`` parameters; ``direction`` is from the agent's view (``send``: the agent publishes)."""

    key: str
    suffix: str
    direction: Literal["send", "receive"]
    retained: bool
    via_outbox: bool
    qos: int
    payload: tuple[type[msgspec.Struct], ...]
    title: str
    description: str
    reply_to: str | None = None  # key of the topic this one answers


TOPICS: Final[tuple[TopicSpec, ...]] = (
    TopicSpec(
        "status",
        "status",
        "send",
        retained=True,
        via_outbox=False,
        qos=1,
        payload=(StatusOnline, StatusOffline),
        title="Agent status (birth and last will)",
        description=(
            "Retained. On every connection the agent publishes `online` (birth) and registers "
            '`{"state": "offline"}` as its MQTT last will, so the retained value always tells '
            "whether the agent is connected. A clean shutdown publishes `offline` itself."
        ),
    ),
    TopicSpec(
        "terminal",
        "terminal",
        "send",
        retained=True,
        via_outbox=False,
        qos=1,
        payload=(TerminalState,),
        title="Payment terminal state",
        description=(
            "Retained; the terminal link and PSP state (TERM-6), published when it changes. States "
            "that follow each other faster than one publish (`connecting` → `setting_up` → `ready` "
            "within milliseconds) are coalesced: the retained value is always the latest. "
            "An alarm `terminal_offline` follows when the link stays down too long."
        ),
    ),
    TopicSpec(
        "connector_state",
        "connectors/{connector_id}/state",
        "send",
        retained=True,
        via_outbox=False,
        qos=1,
        payload=(ConnectorState,),
        title="Connector state",
        description=(
            "Retained, one topic per connector; published on every state change and with each "
            "meter value. Latest value only: use `events` for the history."
        ),
    ),
    TopicSpec(
        "meter",
        "connectors/{connector_id}/meter",
        "send",
        retained=False,
        via_outbox=True,
        qos=1,
        payload=(MeterValue,),
        title="Meter values",
        description=(
            "Periodic meter values during a session, through the outbox (at-least-once, in order "
            "per connector). When the outbox is full the oldest meter values are dropped first, "
            "so `seq` may have gaps here (never on events)."
        ),
    ),
    TopicSpec(
        "events",
        "connectors/{connector_id}/events",
        "send",
        retained=False,
        via_outbox=True,
        qos=1,
        payload=tuple(EVENT_TYPES.values()),
        title="Session and payment events",
        description=(
            "Session and payment events of one connector, through the outbox: at-least-once "
            "(de-duplicate on `msg_id`) and in order; `seq` counts the session's events from 0 "
            "without gaps; `offline` marks events created while the broker was unreachable. "
            "The `event` field tells the type."
        ),
    ),
    TopicSpec(
        "receipts",
        "receipts",
        "send",
        retained=False,
        via_outbox=True,
        qos=1,
        payload=(Receipt,),
        title="Receipts",
        description=(
            "One receipt per finished session, paid or not (RCPT-1), through the outbox. "
            "`qr_url` is the dynamic link shown to the driver (RCPT-2); serve the receipt there."
        ),
    ),
    TopicSpec(
        "reconciliation",
        "reports/reconciliation",
        "send",
        retained=False,
        via_outbox=True,
        qos=1,
        payload=(ReconciliationReport,),
        title="Reconciliation reports",
        description="Daily and on-command reconciliation reports (REC-1), through the outbox.",
    ),
    TopicSpec(
        "alarms",
        "alarms",
        "send",
        retained=False,
        via_outbox=True,
        qos=1,
        payload=(Alarm,),
        title="Alarms",
        description="Alarms raised and cleared, through the outbox.",
    ),
    TopicSpec(
        "auth_request",
        "auth/request",
        "send",
        retained=False,
        via_outbox=False,
        qos=1,
        payload=(AuthRequest,),
        title="RFID/CUG token authorization request",
        description=(
            "The agent asks whether an RFID/closed-user-group card may charge (START-5). Not "
            "queued in the outbox: an answer after the driver has walked away is useless. With "
            "MQTT 5 the request also carries a response topic and correlation data."
        ),
    ),
    TopicSpec(
        "auth_response",
        "auth/response",
        "receive",
        retained=False,
        via_outbox=False,
        qos=1,
        payload=(AuthResponse,),
        title="RFID/CUG token authorization response",
        description=(
            "The back office's answer, with the request's `request_id`. Answer within 5 s; "
            "later answers are ignored and the agent applies its offline policy."
        ),
        reply_to="auth_request",
    ),
    *(
        spec
        for cls in COMMANDS.values()
        for spec in (
            TopicSpec(
                f"cmd_{cls.name}",
                f"cmd/{cls.name}",
                "receive",
                retained=False,
                via_outbox=False,
                qos=1,
                payload=(cls,),
                title=f"Command {cls.name}",
                description=(cls.__doc__ or "").strip().replace("\n    ", " ")
                + " Every request is answered on the result topic.",
            ),
            TopicSpec(
                f"cmd_{cls.name}_result",
                f"cmd/{cls.name}/result",
                "send",
                retained=False,
                via_outbox=False,
                qos=1,
                payload=(CommandResult,),
                title=f"Result of command {cls.name}",
                description=(
                    f"The result of each `{cls.name}` command, with its `correlation_id`. With MQTT 5, "
                    "when the request has a response topic, the result goes there instead, with the "
                    "request's correlation data."
                ),
                reply_to=f"cmd_{cls.name}",
            ),
        )
    ),
)


class Topics:
    """Concrete topic names under one station's prefix (``evpay/v1/{station_id}`` by default)."""

    __slots__ = ("prefix",)

    def __init__(self, station_id: str, prefix_template: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix_template.format(station_id=station_id).rstrip("/")

    def _t(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    @property
    def status(self) -> str:
        return self._t("status")

    @property
    def terminal(self) -> str:
        return self._t("terminal")

    def connector_state(self, connector_id: int) -> str:
        return self._t(f"connectors/{connector_id}/state")

    def meter(self, connector_id: int) -> str:
        return self._t(f"connectors/{connector_id}/meter")

    def events(self, connector_id: int) -> str:
        return self._t(f"connectors/{connector_id}/events")

    @property
    def receipts(self) -> str:
        return self._t("receipts")

    @property
    def reconciliation(self) -> str:
        return self._t("reports/reconciliation")

    @property
    def alarms(self) -> str:
        return self._t("alarms")

    @property
    def auth_request(self) -> str:
        return self._t("auth/request")

    @property
    def auth_response(self) -> str:
        return self._t("auth/response")

    @property
    def command_filter(self) -> str:
        """Subscription filter for every command (results are one level deeper: not matched)."""
        return self._t("cmd/+")

    def command(self, name: str) -> str:
        return self._t(f"cmd/{name}")

    def command_result(self, name: str) -> str:
        return self._t(f"cmd/{name}/result")

    def command_name(self, topic: str) -> str | None:
        """The command name of a ``…/cmd/{name}`` topic, else ``None``."""
        head = self._t("cmd/")
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None


# --------------------------------------------------------------------------------------------------
# AsyncAPI (generated; see agent/upstream/asyncapi.py for the document builder)
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.upstream.contract --asyncapi``: print the AsyncAPI document (YAML)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["--asyncapi"]:
        print("usage: python -m agent.upstream.contract --asyncapi > docs/asyncapi.yaml", file=sys.stderr)
        return 2
    from agent.upstream.asyncapi import render_asyncapi

    sys.stdout.write(render_asyncapi())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
