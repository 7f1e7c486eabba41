"""Helpers for machine tests: times, cards, station builders, expected-effect helpers and the
write-ahead check.

Expected effects are written with the effect types' own constructors (``RecordMeter(1, REF, …)``),
so mypy checks every field; :data:`ANY_USAGE` stands for the accumulated :class:`Usage` a record
carries (its energy and cost are spelled out in the record's other fields, and the property tests
check that they agree with the usage).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

from statemachines.config import ConnectorConfig, StationConfig
from statemachines.connector import ConnectorMachineState
from statemachines.effects import (
    Authorize,
    CancelTimer,
    Commit,
    Effect,
    EnableEnergy,
    JournalRecord,
    MessageKey,
    PublishPaymentCaptured,
    PublishPaymentVoided,
    ReadPurpose,
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordPaymentApproved,
    RecordPaymentRestored,
    RecordVoidConfirmed,
    RecordVoidDecided,
    RequestBackendAuthorization,
    ShowMessage,
    StartCardRead,
    StartTimer,
    Void,
)
from statemachines.events import CardKind, CardToken, Event, TariffChanged, TimerKind
from statemachines.pricing import Pricer, Usage
from statemachines.station import Station
from tests.support.pricing import LinearPricer

PricerT = TypeVar("PricerT", bound=Pricer)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CARD_A = CardToken(CardKind.EMV, "hashA", "****1111", "VISA")
CARD_B = CardToken(CardKind.EMV, "hashB", "****2222", "MASTERCARD")
RFID_A = CardToken(CardKind.RFID, "04A1B2C3")


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ref(seconds: float, connector_id: int = 1) -> str:
    """The session_ref of a session that started (card assigned / remote start) at ``t(seconds)``."""
    return f"{connector_id}-{t(seconds).strftime('%Y%m%dT%H%M%S%f')}"


@overload
def make_station(
    n: int, config: StationConfig | None = None, pricer: None = None
) -> Station[LinearPricer]: ...
@overload
def make_station(n: int, config: StationConfig | None, pricer: PricerT) -> Station[PricerT]: ...
@overload
def make_station(n: int, config: StationConfig | None = None, *, pricer: PricerT) -> Station[PricerT]: ...
def make_station(n: int, config: StationConfig | None = None, pricer: Any = None) -> Station[Any]:
    """A station with connectors 1..n; connector 1 keeps the per-connector options of ``config``.
    Without ``pricer``: :class:`LinearPricer` (0.40 per kWh)."""
    base = config or StationConfig()
    first = base.connectors[0]
    connectors = (first, *(ConnectorConfig(i) for i in range(2, n + 1)))
    return Station(replace(base, connectors=connectors), pricer if pricer is not None else LinearPricer())


def state(station: Station[Any], connector_id: int) -> ConnectorMachineState:
    """The connector's state (a call, so that mypy does not narrow it across events)."""
    return station.connectors[connector_id].state


def run(station: Station[PricerT], events: Iterable[Event | TariffChanged[PricerT]]) -> list[Effect]:
    out: list[Effect] = []
    for event in events:
        out += station.handle(event)
    return out


# --- expected effects ------------------------------------------------------------------------------

REF = ref(5)  # most scenarios assign the card at t(5)


class _AnyUsage(Usage):
    """Equal to every :class:`Usage` (a subclass, so its ``__eq__`` is asked first either way)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Usage)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ANY_USAGE"


ANY_USAGE: Usage = _AnyUsage()


def Timer(kind: TimerKind, seconds: int, cid: int | None = 1) -> StartTimer:
    return StartTimer(kind, seconds, cid)


def Cancel(kind: TimerKind, cid: int | None = 1) -> CancelTimer:
    return CancelTimer(kind, cid)


def Read(
    reference: int, amount: int = 5000, purpose: ReadPurpose = ReadPurpose.SCAN, cid: int | None = None
) -> list[Effect]:
    """A card read as the arbiter starts it: the tariff (START-8), then the Start Session."""
    return [ShowMessage(cid, MessageKey.TARIFF), StartCardRead(amount, reference, purpose, cid)]


def flatten(items: Sequence[Effect | list[Effect]]) -> list[Effect]:
    out: list[Effect] = []
    for item in items:
        out += item if isinstance(item, list) else [item]
    return out


# --- write-ahead (DESIGN.md §2) ----------------------------------------------------------------------


class WriteAhead:
    """DESIGN.md §2: the money fact is journaled before the effect that acts on it. Feed it the
    effects of every step in order (``prior``: journal records from before, e.g. a restart's)."""

    def __init__(self, prior: Iterable[JournalRecord] = ()) -> None:
        self._card_read: set[int] = set()  # connectors whose card read is journaled, not yet handed over
        self._energy_on: set[int] = set()  # connectors whose energy_on is journaled, not yet enabled
        self._paid: set[str] = set()  # session refs with a payment approved or restored
        self._commit: dict[str, int] = {}  # terminal session id -> decided amount
        self._void: set[str] = set()
        self._commit_confirmed: set[str] = set()
        self._void_confirmed: set[str] = set()
        self.feed(prior)

    def feed(self, effects: Iterable[Effect]) -> None:
        for effect in effects:
            self._check(effect)

    def _check(self, effect: Effect) -> None:
        match effect:
            case RecordCardRead(connector_id=c):
                self._card_read.add(c)
            case Authorize(connector_id=c) | RequestBackendAuthorization(connector_id=c):
                assert c in self._card_read, f"{effect} without a preceding RecordCardRead of connector {c}"
                self._card_read.discard(c)
            case RecordPaymentApproved(session_ref=sref) | RecordPaymentRestored(session_ref=sref):
                self._paid.add(sref)
            case RecordEnergyOn(connector_id=c, session_ref=sref):
                assert sref in self._paid, f"{effect} before the payment of {sref} is journaled"
                self._energy_on.add(c)
            case EnableEnergy(connector_id=c):
                assert c in self._energy_on, f"{effect} without a preceding RecordEnergyOn of connector {c}"
                self._energy_on.discard(c)
            case RecordCommitDecided(session_id=sid, amount_minor=amount):
                self._decided_once(sid)
                self._commit[sid] = amount
            case RecordVoidDecided(session_id=sid):
                self._decided_once(sid)
                self._void.add(sid)
            case Commit(session_id=sid, amount_minor=amount):
                assert sid in self._commit, f"{effect} without a preceding RecordCommitDecided"
                assert self._commit[sid] == amount, f"{effect} differs from the journaled {self._commit[sid]}"
            case Void(session_id=sid):
                assert sid in self._void, f"{effect} without a preceding RecordVoidDecided"
            case RecordCommitConfirmed(session_id=sid):
                assert sid in self._commit, f"{effect} of a commit never decided"
                self._commit_confirmed.add(sid)
            case RecordVoidConfirmed(session_id=sid):
                assert sid in self._void, f"{effect} of a void never decided"
                self._void_confirmed.add(sid)
            case PublishPaymentCaptured(session_id=sid, amount_minor=amount):
                assert sid in self._commit_confirmed, f"{effect} before its RecordCommitConfirmed"
                assert self._commit[sid] == amount, f"{effect} differs from the committed amount"
            case PublishPaymentVoided(session_id=sid):
                assert sid in self._void_confirmed, f"{effect} before its RecordVoidConfirmed"
            case _:
                pass

    def _decided_once(self, session_id: str) -> None:
        """STOP-8: the final amount is decided once; a retry re-sends it unchanged."""
        assert session_id not in self._commit, f"{session_id}: a second decision after a commit"
        assert session_id not in self._void, f"{session_id}: a second decision after a void"


def assert_write_ahead(effects: Sequence[Effect], prior: Iterable[JournalRecord] = ()) -> None:
    """DESIGN.md §2 over one effect list (see :class:`WriteAhead`)."""
    WriteAhead(prior).feed(effects)
