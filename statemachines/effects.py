"""Effects returned by the machines: every effect is its own frozen type (style.md "types end to end").

I/O effects are requests whose outcomes come back as events; ``connector_id`` of a request is
echoed by its result event. Three families the shell routes by type, never by a name string:

* **journal records** (:data:`JournalRecord`): one type per money-relevant fact, mapping 1:1 onto
  the journal (``agent/store/journal.py``); ``KIND`` is the name of the fact in the journal's event
  log (and of its crash point ``journal:<KIND>``);
* **upstream events** (:data:`UpstreamEvent`): one type per session/payment event of the upstream
  contract (``agent/upstream/contract.py``, ``…/connectors/{id}/events``), plus
  :class:`IssueReceipt` and the :class:`RaiseUndisposedPayment` alarm;
* everything else: terminal, charger, timer and display requests.

Everything one engine step returns that is stored — journal records, the outbox rows of its
upstream events and its receipt — is committed by the shell in **one** transaction before any
other effect of the step runs (DESIGN.md §2 write-ahead; integrity issue B). Facts that can be
unknown in the real world are ``Optional`` here, in the journal and in the contract alike: the
meter register at the start (a charger that reports energy only once it flows), the power, the
card brand, the acquirer's host reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from statemachines.events import (
    CardToken,
    DeclineOutcome,
    Disposal,
    PaymentMethod,
    RestoreResolution,
    SettlementOutcome,
    StopSource,
    TimerKind,
)
from statemachines.pricing import Usage


class ReadPurpose(StrEnum):
    SCAN = "scan"  # plug-in-to-start / tap-to-start / tap-to-stop
    UI_START = "ui_start"  # Apollo: the driver selected a connector to start (START-3)
    UI_STOP = "ui_stop"  # Apollo: the driver selected a session to stop (STOP-4)


class MessageKey(StrEnum):
    """What the driver is told (Apollo screen or charger display text, agent/runtime/screens.py)."""

    TARIFF = "tariff"  # START-8: the price before payment
    PLUG_IN = "plug_in"
    CHARGING = "charging"
    DECLINED = "declined"
    SESSION_ENDED = "session_ended"
    TERMINAL_OFFLINE = "terminal_offline"
    IDLE_FEE = "idle_fee"
    SELECT_CONNECTOR = "select_connector"
    SELECTION_TIMEOUT = "selection_timeout"
    CONNECTOR_UNAVAILABLE = "connector_unavailable"
    NO_SESSION = "no_session"
    TERMINAL_BUSY = "terminal_busy"
    RFID_ACCEPTED = "rfid_accepted"
    RFID_REJECTED = "rfid_rejected"
    CARD_MISMATCH = "card_mismatch"
    CARD_IN_USE = "card_in_use"
    PLUG_IN_FIRST = "plug_in_first"
    CARD_NOT_ACCEPTED = "card_not_accepted"


class LimitKind(StrEnum):
    """STOP-6 / AMT-2: which limit stopped a session."""

    ENERGY = "energy"
    DURATION = "duration"
    COST_CAP = "cost_cap"


# --- terminal ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartCardRead:
    """Start Session (psp-reference §5.9) reserving ``amount_minor`` (Read Card for ``ui_stop``)."""

    amount_minor: int
    reference: int  # Start Session reference number, from a deterministic counter
    purpose: ReadPurpose
    connector_id: int | None = None


@dataclass(frozen=True, slots=True)
class CancelCardRead:
    """Cancel Session (psp-reference §5.13): drop the read or the read card."""


@dataclass(frozen=True, slots=True)
class Authorize:
    """Auth Session for the card just read (psp-reference §5.12) → AuthorizationResult."""

    connector_id: int
    amount_minor: int


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit Session → CommitResult. Repeated on retry with identical fields."""

    connector_id: int
    session_id: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class Void:
    """Void Session → VoidResult. Repeated on retry with identical fields."""

    connector_id: int
    session_id: str


@dataclass(frozen=True, slots=True)
class UpdateAuthorization:
    """Apollo Update Session with the new total (psp-reference §5.20) → UpdateAuthorizationResult."""

    connector_id: int
    session_id: str
    new_total_minor: int


@dataclass(frozen=True, slots=True)
class RequestBackendAuthorization:
    """RFID / CUG token authorization request (DESIGN.md §5.3) → BackendAuthorizationResult."""

    connector_id: int
    card: CardToken


# --- charger, timers, display -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnableEnergy:
    connector_id: int


@dataclass(frozen=True, slots=True)
class DisableEnergy:
    connector_id: int


@dataclass(frozen=True, slots=True)
class StartTimer:
    """(Re)start the timer ``(kind, connector_id)``; fires ``TimerFired`` after ``seconds``."""

    kind: TimerKind
    seconds: int
    connector_id: int | None


@dataclass(frozen=True, slots=True)
class CancelTimer:
    kind: TimerKind
    connector_id: int | None


@dataclass(frozen=True, slots=True)
class ShowMessage:
    """Driver feedback (Apollo UI Request or the charger display). Never card data."""

    connector_id: int | None
    key: MessageKey
    amount_minor: int | None = None  # session_ended: what was charged
    connectors: tuple[int, ...] = ()  # select_connector: the choices
    status: str | None = None  # rfid_rejected: the back office's status


# --- journal records (one per money-relevant fact; agent/store/journal.py folds them) ---------------


@dataclass(frozen=True, slots=True)
class RecordCardRead:
    """A card was assigned to this connector and handed to the terminal or the back office."""

    KIND: ClassVar[str] = "card_read"
    connector_id: int
    session_ref: str
    card: CardToken
    amount_minor: int  # what the Start Session reserved


@dataclass(frozen=True, slots=True)
class RecordPaymentDeclined:
    KIND: ClassVar[str] = "payment_declined"
    connector_id: int
    session_ref: str
    outcome: DeclineOutcome
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RecordPaymentApproved:
    """A payment exists from here on (EMV approval, RFID acceptance, remote start, free vend)."""

    KIND: ClassVar[str] = "payment_approved"
    connector_id: int
    session_ref: str
    method: PaymentMethod
    session_id: str | None  # terminal session id (EMV only)
    authorized_minor: int | None  # None: no limit
    partial: bool = False
    host_reference: str | None = None
    card: CardToken | None = None  # the id token of a remote start (no card read before it)
    card_brand: str | None = None  # the brand the approval named when the card read had none (RCPT-1)


@dataclass(frozen=True, slots=True)
class RecordPaymentIncremented:
    KIND: ClassVar[str] = "payment_incremented"
    connector_id: int
    session_ref: str
    session_id: str
    authorized_minor: int


@dataclass(frozen=True, slots=True)
class RecordEnergyOn:
    """Energy is about to be enabled (write-ahead). ``first``: the session starts here."""

    KIND: ClassVar[str] = "energy_on"
    connector_id: int
    session_ref: str
    method: PaymentMethod
    meter_wh: int | None  # None: the charger reported no meter register yet
    first: bool
    usage: Usage


@dataclass(frozen=True, slots=True)
class RecordMeter:
    """A meter value of a session. ``periodic``: taken while energy flows (no fsync of its own,
    docs/runtime.md "Journal durability"); the value that concludes a stop is not periodic."""

    KIND: ClassVar[str] = "meter"
    connector_id: int
    session_ref: str
    meter_wh: int
    energy_wh: int
    cost_minor: int
    power_w: float | None
    periodic: bool
    usage: Usage


@dataclass(frozen=True, slots=True)
class RecordLimitReached:
    KIND: ClassVar[str] = "limit_reached"
    connector_id: int
    session_ref: str
    limit: LimitKind


@dataclass(frozen=True, slots=True)
class RecordStop:
    KIND: ClassVar[str] = "stop"
    connector_id: int
    session_ref: str
    reason: StopSource
    energy_wh: int
    cost_minor: int
    usage: Usage


@dataclass(frozen=True, slots=True)
class RecordCommitDecided:
    """STOP-8: the final amount, decided once; a retry re-sends it unchanged."""

    KIND: ClassVar[str] = "commit"
    connector_id: int
    session_ref: str
    session_id: str
    amount_minor: int
    energy_wh: int
    cost_minor: int
    usage: Usage


@dataclass(frozen=True, slots=True)
class RecordVoidDecided:
    KIND: ClassVar[str] = "void"
    connector_id: int
    session_ref: str
    session_id: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class RecordCommitConfirmed:
    KIND: ClassVar[str] = "commit_confirmed"
    connector_id: int
    session_ref: str
    session_id: str
    outcome: SettlementOutcome


@dataclass(frozen=True, slots=True)
class RecordVoidConfirmed:
    KIND: ClassVar[str] = "void_confirmed"
    connector_id: int
    session_ref: str
    session_id: str
    outcome: SettlementOutcome


@dataclass(frozen=True, slots=True)
class RecordSessionEnded:
    """A session with nothing to settle on the terminal ended (RFID, remote, free vend)."""

    KIND: ClassVar[str] = "session_ended"
    connector_id: int
    session_ref: str
    energy_wh: int
    cost_minor: int
    usage: Usage


@dataclass(frozen=True, slots=True)
class RecordPaymentRestored:
    """ERR-5: the journal's open payment was handed back to the engine after a restart."""

    KIND: ClassVar[str] = "payment_restored"
    connector_id: int
    session_ref: str
    session_id: str | None
    plugged: bool
    energy_on: bool
    resolution: RestoreResolution


JournalRecord = (
    RecordCardRead
    | RecordPaymentDeclined
    | RecordPaymentApproved
    | RecordPaymentIncremented
    | RecordEnergyOn
    | RecordMeter
    | RecordLimitReached
    | RecordStop
    | RecordCommitDecided
    | RecordVoidDecided
    | RecordCommitConfirmed
    | RecordVoidConfirmed
    | RecordSessionEnded
    | RecordPaymentRestored
)
JOURNAL_RECORDS: tuple[type[JournalRecord], ...] = (
    RecordCardRead,
    RecordPaymentDeclined,
    RecordPaymentApproved,
    RecordPaymentIncremented,
    RecordEnergyOn,
    RecordMeter,
    RecordLimitReached,
    RecordStop,
    RecordCommitDecided,
    RecordVoidDecided,
    RecordCommitConfirmed,
    RecordVoidConfirmed,
    RecordSessionEnded,
    RecordPaymentRestored,
)


# --- upstream events (``…/connectors/{id}/events``; agent/upstream/contract.py, 1:1) ---------------


class UpdateReason(StrEnum):
    RESUMED = "resumed"  # after a restart (OCPP 2.1 TriggerReason TxResumed)


@dataclass(frozen=True, slots=True)
class PublishSessionStarted:
    """Energy is enabled for the first time in this session (exactly once per session)."""

    connector_id: int
    session_ref: str
    method: PaymentMethod
    meter_wh: int | None  # None: the meter register was not known yet


@dataclass(frozen=True, slots=True)
class PublishSessionUpdated:
    """ERR-5: the session was handed back to the engine after a restart; published before any
    other event of the session after the restart."""

    connector_id: int
    session_ref: str
    reason: UpdateReason
    resolution: RestoreResolution
    session_id: str | None
    method: PaymentMethod
    plugged: bool
    authorized_minor: int | None


@dataclass(frozen=True, slots=True)
class PublishSessionEnded:
    """Exactly once per session that started; never for one that did not."""

    connector_id: int
    session_ref: str
    reason: StopSource
    energy_wh: int
    cost_minor: int
    amount_minor: int


@dataclass(frozen=True, slots=True)
class PublishPaymentAuthorized:
    connector_id: int
    session_ref: str
    method: PaymentMethod
    session_id: str | None  # EMV: the terminal session id; RFID: None
    authorized_minor: int | None  # None: RFID without a limit


@dataclass(frozen=True, slots=True)
class PublishPaymentPartiallyApproved:
    connector_id: int
    session_ref: str
    session_id: str
    authorized_minor: int


@dataclass(frozen=True, slots=True)
class PublishPaymentDeclined:
    connector_id: int
    session_ref: str
    outcome: DeclineOutcome
    reason: str | None


@dataclass(frozen=True, slots=True)
class PublishPaymentIncremented:
    connector_id: int
    session_ref: str
    session_id: str
    authorized_minor: int


@dataclass(frozen=True, slots=True)
class PublishPaymentCaptured:
    connector_id: int
    session_ref: str
    session_id: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class PublishPaymentVoided:
    connector_id: int
    session_ref: str
    session_id: str


UpstreamEvent = (
    PublishSessionStarted
    | PublishSessionUpdated
    | PublishSessionEnded
    | PublishPaymentAuthorized
    | PublishPaymentPartiallyApproved
    | PublishPaymentDeclined
    | PublishPaymentIncremented
    | PublishPaymentCaptured
    | PublishPaymentVoided
)


@dataclass(frozen=True, slots=True)
class IssueReceipt:
    """RCPT-1: the payment or session is over; the shell builds the receipt from the journal
    (the same transaction) and the tariff that priced it. ``declined``: a refused card."""

    connector_id: int
    session_ref: str
    amount_minor: int = 0
    declined: DeclineOutcome | None = None
    decline_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RaiseUndisposedPayment:
    """STOP-7 alarm: the Commit/Void of this payment is not confirmed after the configured time."""

    connector_id: int
    session_ref: str
    session_id: str
    disposal: Disposal
    attempts: int


Effect = (
    StartCardRead
    | CancelCardRead
    | Authorize
    | Commit
    | Void
    | UpdateAuthorization
    | RequestBackendAuthorization
    | EnableEnergy
    | DisableEnergy
    | StartTimer
    | CancelTimer
    | ShowMessage
    | JournalRecord
    | UpstreamEvent
    | IssueReceipt
    | RaiseUndisposedPayment
)
