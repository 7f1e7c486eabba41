"""The ``payment`` topic (agent → charger, docs/charger-bridge.md §2.1): retained, QoS 1, the latest
per connector, never refused, republished after every reconnect; the simulator records it."""

from __future__ import annotations

import msgspec
import pytest

from drivers.charger.base import ChargerBack
from drivers.charger.payloads import PaymentPayload, decimal_text
from hil.charger_sim import ChargerSimulator
from tests.charger.conftest import Rig, make_driver
from tests.charger.support import EventWaiter, eventually
from tests.mosquitto import Broker


def payment(event: str = "authorized", **changes: object) -> PaymentPayload:
    base = PaymentPayload(
        event="authorized",
        session_id="1-20260101T100000000000",
        psp_ref="3371212504",
        currency="EUR",
        minor_unit_digits=2,
        authorized_minor=5000,
        authorized="50.00",
        card_brand="VISA",
        card_last4="0119",
        ts="2026-01-01T10:00:00.000Z",
    )
    return msgspec.structs.replace(base, event=event, **changes)


def test_decimal_text() -> None:
    assert decimal_text(1234, 2) == "12.34"
    assert decimal_text(5, 2) == "0.05"
    assert decimal_text(5, 0) == "5"
    assert decimal_text(1, 3) == "0.001"
    assert decimal_text(-150, 2) == "-1.50"


async def test_payment_reaches_the_charger_retained(rig: Rig) -> None:
    rig.driver.offer_payment(1, payment())
    rig.driver.offer_payment(2, payment(session_id="1-b", psp_ref="7"))
    await eventually(lambda: len(rig.sim.payments) == 2)
    first = rig.sim.payments[0]
    assert first.connector_id == 1
    assert first.retained is False  # live delivery; the broker keeps it retained for later
    assert first.payload == msgspec.to_builtins(payment())
    assert rig.driver.stats.payments_sent == 2
    # a charger that subscribes later (reboot) gets the latest of each connector, retained
    late = ChargerSimulator(rig.broker.url, connectors=2)
    async with late:
        await eventually(lambda: len(late.payments) == 2)
    assert {(r.connector_id, r.retained) for r in late.payments} == {(1, True), (2, True)}


async def test_unknown_connector_is_dropped_not_raised(rig: Rig) -> None:
    rig.driver.offer_payment(9, payment())
    rig.driver.offer_payment(True, payment())
    assert rig.driver.stats.payments_offered == 0


async def test_offered_while_the_broker_is_away_is_sent_on_reconnect(mosquitto: Broker) -> None:
    """Never refused: queued (the latest per connector) and published once the broker is back;
    the latest is republished after a broker restart (no persistence: retained messages are lost)."""
    driver = make_driver(mosquitto, connectors=1)
    driver.offer_payment(1, payment())  # before start: kept
    driver.offer_payment(1, payment("cost", energy_wh=10, cost_minor=4, cost="0.04"))  # replaces it
    sim = ChargerSimulator(mosquitto.url, connectors=1, reconnect_delay_s=0.05)
    async with driver, sim:
        events = EventWaiter(driver)
        await events.next(ChargerBack)
        await eventually(lambda: len(sim.payments) >= 1)
        assert [r.payload["event"] for r in sim.payments] == ["cost"]
        settled = payment(
            "settled",
            status="Settled",
            settlement_minor=4,
            settlement_amount="0.04",
            settlement_time="2026-01-01T10:01:00.000Z",
        )
        mosquitto.kill()
        driver.offer_payment(1, settled)  # the broker is down: queued, no error
        mosquitto.start()
        await eventually(lambda: any(r.payload["event"] == "settled" for r in sim.payments), timeout_s=10)
        got = [r.payload for r in sim.payments if r.payload["event"] == "settled"]
        assert all(p == msgspec.to_builtins(settled) for p in got)


@pytest.mark.parametrize("bad", [b"{}", b"not json", b'{"v": 1, "event": "paid"}'])
async def test_the_simulator_counts_an_invalid_payment(rig: Rig, bad: bytes) -> None:
    from tests.charger.support import raw_client

    async with raw_client(rig.broker) as client:
        await client.publish("charger/1/payment", bad, qos=1)
    await eventually(lambda: rig.sim.invalid_payments == 1)
    assert rig.sim.payments == []
