"""Helpers for machine tests: times, cards, station builders and a compact effect notation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from statemachines.config import ConnectorConfig, StationConfig
from statemachines.effects import (
    Authorize,
    CancelTimer,
    Effect,
    JournalRecord,
    ShowMessage,
    StartCardRead,
    StartTimer,
    UpstreamEvent,
)
from statemachines.events import CardKind, CardToken, TimerKind
from statemachines.station import Station
from tests.support.pricing import LinearPricer

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CARD_A = CardToken(CardKind.EMV, "hashA", "****1111", "VISA")
CARD_B = CardToken(CardKind.EMV, "hashB", "****2222", "MASTERCARD")
RFID_A = CardToken(CardKind.RFID, "04A1B2C3")


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ref(seconds: float, connector_id: int = 1) -> str:
    """The session_ref of a session that started (card assigned / remote start) at ``t(seconds)``."""
    return f"{connector_id}-{t(seconds).strftime('%Y%m%dT%H%M%S%f')}"


def make_station(n: int, config: StationConfig | None = None, pricer: Any = None) -> Station:
    """A station with connectors 1..n; connector 1 keeps the per-connector options of ``config``."""
    base = config or StationConfig()
    first = base.connectors[0]
    connectors = (first, *(ConnectorConfig(i) for i in range(2, n + 1)))
    return Station(replace(base, connectors=connectors), pricer or LinearPricer())


def run(station: Station, events: Iterable[Any]) -> list[Effect]:
    out: list[Effect] = []
    for event in events:
        out += station.handle(event)
    return out


# --- compact expected effects ---------------------------------------------------------------------

REF = ref(5)  # most scenarios assign the card at t(5)


def J(kind: str, cid: int = 1, sref: str = REF, **data: object) -> JournalRecord:
    return JournalRecord(kind, cid, {"session_ref": sref, **data})


def Up(name: str, cid: int = 1, sref: str = REF, **data: object) -> UpstreamEvent:
    return UpstreamEvent(cid, name, {"session_ref": sref, **data})


def Msg(key: str, cid: int | None = 1, **data: object) -> ShowMessage:
    return ShowMessage(cid, key, data)


def Timer(kind: TimerKind, seconds: int, cid: int | None = 1) -> StartTimer:
    return StartTimer(kind, seconds, cid)


def Cancel(kind: TimerKind, cid: int | None = 1) -> CancelTimer:
    return CancelTimer(kind, cid)


def Read(reference: int, amount: int = 5000, purpose: str = "scan", cid: int | None = None) -> list[Effect]:
    """A card read as the arbiter starts it: the tariff (START-8), then the Start Session."""
    return [ShowMessage(cid, "tariff"), StartCardRead(amount, reference, purpose, cid)]


def flatten(items: Sequence[Effect | list[Effect]]) -> list[Effect]:
    out: list[Effect] = []
    for item in items:
        out += item if isinstance(item, list) else [item]
    return out


def assert_write_ahead(effects: Sequence[Effect]) -> None:
    """DESIGN.md §2: the money fact is journaled before the effect that acts on it."""
    kinds_before: dict[int | None, list[str]] = {}
    for effect in effects:
        if isinstance(effect, JournalRecord):
            kinds_before.setdefault(effect.connector_id, []).append(effect.kind)
            continue
        seen = kinds_before.get(getattr(effect, "connector_id", None), [])
        name = type(effect).__name__
        needed = {
            "Authorize": "card_read",
            "RequestBackendAuthorization": "card_read",
            "EnableEnergy": "energy_on",
            "Commit": "commit",
            "Void": "void",
        }.get(name)
        if needed is not None:
            assert needed in seen, f"{name} without a preceding {needed} journal record: {effects}"
        if isinstance(effect, Authorize):
            kinds_before[effect.connector_id] = []
