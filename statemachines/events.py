"""Events fed into the machines: facts from the charger, the terminal, the backend and timers.

Every event carries ``at`` (timezone-aware UTC, stamped by the agent) and, when it targets one
connector, ``connector_id``. Results of effects (:mod:`statemachines.effects`) echo the
``connector_id`` of the effect that asked for them. No full PAN ever: cards are :class:`CardToken`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from statemachines.pricing import Pricer, Usage

P = TypeVar("P", bound=Pricer)


class CardKind(StrEnum):
    EMV = "emv"  # payment card: authorized by the terminal (Card Read 0x34)
    RFID = "rfid"  # closed-user-group / eMSP card: authorized by the backend (Prop Card Read 0x40)


@dataclass(frozen=True, slots=True)
class CardToken:
    """Identity of a presented card: card hash for EMV, UID for RFID; never a full PAN."""

    kind: CardKind
    token: str
    masked_pan: str | None = None
    brand: str | None = None


class ChargerState(StrEnum):
    IDLE = "idle"
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"
    SUSPENDED_EVSE = "suspended_evse"
    FAULT = "fault"


class PaymentMethod(StrEnum):
    EMV = "emv"
    RFID = "rfid"
    REMOTE = "remote"
    FREE_VEND = "free_vend"


class AuthorizationOutcome(StrEnum):
    APPROVED = "approved"  # Session Approved 0x31
    PARTIALLY_APPROVED = "partially_approved"  # Session Partially Approved 0x35 (Apollo)
    DECLINED = "declined"  # Session Declined 0x32
    CANCELLED = "cancelled"  # Session Cancelled 0x33
    FAILED = "failed"  # no answer / terminal offline


class BackendAuthorizationStatus(StrEnum):
    """DESIGN.md §5.3 auth/response statuses, plus ``unavailable`` when the backend did not answer."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    BLOCKED = "blocked"
    EXPIRED = "expired"
    NO_CREDIT = "no_credit"
    UNAVAILABLE = "unavailable"


class DeclineOutcome(StrEnum):
    """Why a card got no payment: the terminal's answer (EMV) or the back office's (RFID/CUG)."""

    DECLINED = "declined"
    CANCELLED = "cancelled"
    FAILED = "failed"  # no answer / terminal offline
    REJECTED = "rejected"
    BLOCKED = "blocked"
    EXPIRED = "expired"
    NO_CREDIT = "no_credit"
    UNAVAILABLE = "unavailable"  # the back office did not answer


class RestoreResolution(StrEnum):
    """What the restart recovery did with a journaled payment (ERR-5)."""

    RESUMED = "resumed"  # charging continues
    RESENT = "resent"  # a Commit/Void decided before the restart is sent again, unchanged
    COMMIT = "commit"  # decided now: commit the last journaled total
    VOID = "void"  # decided now: nothing was delivered
    ENDED = "ended"  # a session with nothing to settle on the terminal was ended


class SettlementOutcome(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"  # psp-reference §10.3: after a previous send, counts as disposed
    FAILED = "failed"


class UpdateOutcome(StrEnum):
    APPROVED = "approved"  # Update Session Result 0x00 (psp-reference §5.20)
    PARTIALLY_APPROVED = "partially_approved"  # 0x01
    DECLINED = "declined"  # 0x02
    FAILED = "failed"


class StopSource(StrEnum):
    TAP = "tap"
    UNPLUG = "unplug"
    UI = "ui"
    REMOTE = "remote"
    LOCAL = "local"  # charger's own stop button
    LIMIT = "limit"
    EV = "ev"
    FAULT = "fault"
    CHARGER_LOST = "charger_lost"
    TIMEOUT = "timeout"


class UiAction(StrEnum):
    START = "start"
    STOP = "stop"


class TimerKind(StrEnum):
    PLUG_IN = "plug_in"  # START-6
    CARD_DECISION = "card_decision"  # TERM-3, psp-reference §9.2
    FINAL_METER = "final_meter"
    SETTLEMENT_RETRY = "settlement_retry"  # STOP-7
    UNDISPOSED_PAYMENT = "undisposed_payment"  # STOP-7 alarm


class Disposal(StrEnum):
    COMMIT = "commit"
    VOID = "void"


# --- charger -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plugged:
    connector_id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Unplugged:
    connector_id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class ChargerStatus:
    connector_id: int
    at: datetime
    state: ChargerState
    fault: str | None = None


@dataclass(frozen=True, slots=True)
class MeterReading:
    connector_id: int
    at: datetime
    energy_wh: int  # meter register
    power_w: float | None = None  # None: the meter reports no power
    current_a: float | None = None  # None: the meter reports no current
    # delivered from the broker's store (published before the agent subscribed): possibly old
    retained: bool = False


@dataclass(frozen=True, slots=True)
class ChargerLost:
    """Contact with the charger lost (all connectors)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class ChargerBack:
    at: datetime


@dataclass(frozen=True, slots=True)
class SetAvailability:
    """Operator / backend ``set_availability``: an unavailable connector starts no new session."""

    connector_id: int
    at: datetime
    available: bool


# --- terminal ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalLinkUp:
    at: datetime


@dataclass(frozen=True, slots=True)
class TerminalLinkDown:
    at: datetime


@dataclass(frozen=True, slots=True)
class CardRead:
    """Card Read / Prop Card Read for the read in progress (psp-reference §5.11, §5.22)."""

    at: datetime
    card: CardToken


@dataclass(frozen=True, slots=True)
class CardReadEnded:
    """The read in progress ended without a card (card-detect timeout, unsolicited cancel)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class UiSelection:
    """Apollo UI Event: the driver selected a connector to start or stop (START-3, STOP-4)."""

    at: datetime
    connector_id: int
    action: UiAction
    cap_minor: int | None = None  # AMT-1 driver-chosen cap


@dataclass(frozen=True, slots=True)
class AuthorizationResult:
    connector_id: int
    at: datetime
    outcome: AuthorizationOutcome
    session_id: str | None = None  # terminal session id when (partially) approved
    authorized_minor: int | None = None  # the approved amount for a partial approval
    reason: str | None = None
    host_reference: str | None = None  # the acquirer's reference (receipts), when the terminal gives one
    # the card brand the approval names (DFCA0A, an Auth-stage tag, psp-reference §6.4): the Card
    # Read before it usually has none (RCPT-1: the receipt shows the brand)
    brand: str | None = None


@dataclass(frozen=True, slots=True)
class CommitResult:
    connector_id: int
    at: datetime
    session_id: str
    outcome: SettlementOutcome


@dataclass(frozen=True, slots=True)
class VoidResult:
    connector_id: int
    at: datetime
    session_id: str
    outcome: SettlementOutcome


@dataclass(frozen=True, slots=True)
class UpdateAuthorizationResult:
    connector_id: int
    at: datetime
    session_id: str
    outcome: UpdateOutcome
    authorized_minor: int | None = None  # new authorised total


# --- backend -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendAuthorizationResult:
    connector_id: int
    at: datetime
    token: str
    status: BackendAuthorizationStatus
    limit_minor: int | None = None  # spending limit or balance


@dataclass(frozen=True, slots=True)
class RemoteStart:
    connector_id: int
    at: datetime
    id_token: str
    limit_minor: int | None = None


@dataclass(frozen=True, slots=True)
class StopRequest:
    """A stop of the connector's session from ``source`` (remote, local button, tap, UI)."""

    connector_id: int
    at: datetime
    source: StopSource


@dataclass(frozen=True, slots=True)
class TimerFired:
    kind: TimerKind
    connector_id: int | None
    at: datetime


# --- restart recovery (ERR-5) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoredPayment:
    """A non-final payment as the journal holds it after a restart."""

    method: PaymentMethod
    session_ref: str
    session_id: str | None
    card: CardToken | None
    authorized_minor: int | None
    usage: Usage
    last_meter_wh: int | None
    last_meter_at: datetime | None
    energy_on: bool
    disposal: Disposal | None = None  # a Commit/Void was already decided (and maybe sent)
    final_minor: int = 0  # the amount of that Commit
    started: bool = False  # energy was enabled before: session.started is already published
    stop_reason: StopSource | None = None  # a stop already journaled


@dataclass(frozen=True, slots=True)
class PaymentRestored(Generic[P]):
    """Sent once per journaled payment after a restart, with the charger's current facts.

    ``pricer`` is the tariff the session started with, as the journal kept it (STOP-8: a restored
    session is priced by its own tariff, not by the station's current one, which then prices the
    connector's next session). ``None``: the journal holds none (a payment journaled before
    tariffs were); the connector's current tariff prices it."""

    connector_id: int
    at: datetime
    payment: RestoredPayment
    plugged: bool
    charger_online: bool = True
    pricer: P | None = None


@dataclass(frozen=True, slots=True)
class TariffChanged(Generic[P]):
    """``set_tariff``: the station's tariff from now on. A connector without a session prices with
    it at once; a running session keeps the tariff it started with (START-8, STOP-8) and the new
    one applies from the connector's next session."""

    at: datetime
    pricer: P


# --- internal: the arbiter tells a connector -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardAssigned:
    """The card read is for this connector; ``amount_minor`` is what the Start Session reserved."""

    connector_id: int
    at: datetime
    card: CardToken
    amount_minor: int


TerminalEvent = TerminalLinkUp | TerminalLinkDown | CardRead | CardReadEnded | UiSelection
ConnectorEvent = (
    Plugged
    | Unplugged
    | ChargerStatus
    | MeterReading
    | SetAvailability
    | AuthorizationResult
    | CommitResult
    | VoidResult
    | UpdateAuthorizationResult
    | BackendAuthorizationResult
    | RemoteStart
    | StopRequest
    | TimerFired
    | PaymentRestored[Any]
    | CardAssigned
)
Event = TerminalEvent | ConnectorEvent | ChargerLost | ChargerBack
