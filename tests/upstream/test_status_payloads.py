"""What ``evpay-agent status`` takes from the publisher (OPS-3): the retained payloads as of now and
the alarms raised and not cleared (agent/upstream/publisher.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from agent.store.db import Store
from agent.store.outbox import Outbox
from agent.upstream.alarms import JournalTrouble, OrphanCleared, PossibleOrphanApproval
from agent.upstream.contract import ConnectorMachineState, ConnectorState, TerminalState, Topics
from agent.upstream.publisher import MAX_ACTIVE_ALARMS, ConnectorSnapshot, Publisher
from statemachines.effects import PublishPaymentCaptured, RaiseUndisposedPayment
from statemachines.events import Disposal

pytestmark = pytest.mark.req("OPS-3")

_AT = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


class _Client:
    def __init__(self) -> None:
        self.is_connected = True
        self.retained: dict[str, bytes] = {}

    def set_retained(self, topic: str, payload: bytes) -> None:
        self.retained[topic] = payload


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path)
    yield s
    s.close()


class _Clock:
    def __init__(self) -> None:
        self.mono = 100.0

    def monotonic(self) -> float:
        return self.mono


def _publisher(store: Store, client: _Client, clock: _Clock) -> Publisher:
    return Publisher(
        Outbox(store),
        client,
        Topics("ST-1"),
        "ST-1",
        clock=lambda: _AT,
        currency="EUR",
        terminal_offline_alarm_after_s=5,
        monotonic=clock.monotonic,
    )


def _active(publisher: Publisher) -> list[tuple[str, int | None, str | None]]:
    return [(a.alarm, a.connector_id, a.session_id) for a in publisher.active_alarms()]


def test_the_status_payloads_are_the_retained_ones(store: Store) -> None:
    client, clock = _Client(), _Clock()
    publisher = _publisher(store, client, clock)
    snapshot = ConnectorSnapshot(
        1, ConnectorMachineState.CHARGING, plugged=True, session_id="1-a", energy_wh=1200, cost_minor=55
    )
    publisher.connector_state(snapshot)
    retained = msgspec.json.decode(client.retained["evpay/v1/ST-1/connectors/1/state"], type=ConnectorState)
    assert publisher.connector_state_payload(snapshot) == retained
    assert (retained.energy_wh, retained.cost_minor, retained.currency) == (1200, 55, "EUR")

    publisher.terminal_state("ready", ready=True, since_monotonic=90.0, psp_state="WAIT_CARD")
    terminal = msgspec.json.decode(client.retained["evpay/v1/ST-1/terminal"], type=TerminalState)
    built = publisher.terminal_state_payload("ready", since_monotonic=90.0, psp_state="WAIT_CARD")
    assert built == terminal
    assert (terminal.psp_state, terminal.since) == ("wait_card", "2026-03-01T09:59:50.000Z")


def test_active_alarms_fold_raised_and_cleared(store: Store) -> None:
    client, clock = _Client(), _Clock()
    publisher = _publisher(store, client, clock)
    publisher.terminal_state("down", ready=False)
    clock.mono += 6  # longer than terminal_offline_alarm_after_s
    publisher.check()
    assert _active(publisher) == [("terminal_offline", None, None)]

    with store.atomic():
        publisher.alarm(
            PossibleOrphanApproval(2, "2-b", "476173******0001", "VISA", 5000, "2026-03-01T09:00:00Z")
        )
        publisher.alarm(RaiseUndisposedPayment(1, "1-a", "77", Disposal.COMMIT, 3))
        publisher.alarm(JournalTrouble(None, "disk full"))
        publisher.alarm(JournalTrouble(None, "disk still full"))  # the latest raise, once
    assert _active(publisher) == [
        ("terminal_offline", None, None),
        ("possible_orphan_approval", 2, "2-b"),
        ("undisposed_payment", 1, "1-a"),
        ("journal_error", None, None),
    ]
    assert publisher.active_alarms()[-1].data == {"error": "disk still full"}

    publisher.terminal_state("ready", ready=True)  # clears terminal_offline
    with store.atomic():
        publisher.orphan_cleared(OrphanCleared(2, "2-b", "cleared_by_operator"))
        publisher.event(PublishPaymentCaptured(1, "1-a", "77", 1234))  # the undisposed payment is settled
    assert _active(publisher) == [("journal_error", None, None)]  # never cleared by the contract


def test_active_alarms_are_bounded(store: Store) -> None:
    publisher = _publisher(store, _Client(), _Clock())
    with store.atomic():
        for n in range(MAX_ACTIVE_ALARMS + 5):
            publisher.alarm(RaiseUndisposedPayment(1, f"1-{n}", str(n), Disposal.VOID, 1))
    refs = [session for _, _, session in _active(publisher)]
    assert len(refs) == MAX_ACTIVE_ALARMS
    assert refs[0] == "1-5"  # the oldest went first
    assert refs[-1] == f"1-{MAX_ACTIVE_ALARMS + 4}"
