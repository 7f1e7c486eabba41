"""Effects returned by the machines. I/O effects are requests; outcomes come back as events.

``connector_id`` of a request is echoed by its result event. ``data`` maps are JSON-ready
(str, int, bool, None). Effects are executed in list order (write-ahead: a ``JournalRecord``
precedes the effect that acts on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from statemachines.events import CardToken, TimerKind

Data = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class StartCardRead:
    """Start Session (psp-reference §5.9) reserving ``amount_minor``; ``purpose`` for logs/UI."""

    amount_minor: int
    reference: int  # Start Session reference number, from a deterministic counter
    purpose: str  # "scan" | "ui_start" | "ui_stop"
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
class JournalRecord:
    """A money-relevant fact to persist (fsync) before the effects after it run (DESIGN.md §2)."""

    kind: str
    connector_id: int | None
    data: Data = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpstreamEvent:
    """A session/payment event for ``…/connectors/{id}/events`` (DESIGN.md §5.3)."""

    connector_id: int
    name: str
    data: Data = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ShowMessage:
    """Driver feedback by message key (Apollo UI Request or the charger display)."""

    connector_id: int | None
    key: str
    data: Data = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alarm:
    """Raise an alarm (``…/alarms``), e.g. an undisposed payment (STOP-7, ERR-8)."""

    name: str
    connector_id: int | None
    data: Data = field(default_factory=dict)


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
    | JournalRecord
    | UpstreamEvent
    | ShowMessage
    | Alarm
)
