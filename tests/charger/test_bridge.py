"""MqttBridgeDriver ↔ ChargerSimulator over a real Mosquitto: events, commands, loss of contact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC

import pytest

from drivers.charger.base import (
    ChargerBack,
    ChargerError,
    ChargerErrorCode,
    ChargerLost,
    ChargingState,
    MeterReading,
    PlugChanged,
    StatusChanged,
)
from hil.charger_sim import ChargerSimulator
from tests.charger.conftest import METER_INTERVAL_S, Rig, make_driver
from tests.charger.support import EventWaiter, eventually, raw_client
from tests.mosquitto import Broker

FAST_W = 360_000.0  # 100 Wh per second: the register visibly moves within a few meter intervals


def _for(connector_id: int) -> Callable[[object], bool]:
    return lambda e: getattr(e, "connector_id", None) == connector_id


async def test_fresh_state_on_connect_is_typed_and_ordered(mosquitto: Broker) -> None:
    sim = ChargerSimulator(mosquitto.url, connectors=2, meter_interval_s=METER_INTERVAL_S)
    driver = make_driver(mosquitto)
    async with sim, driver:
        events = EventWaiter(driver)
        back = await events.next(ChargerBack)
        assert back.at.tzinfo is UTC
        assert driver.online
        expected = {(kind, c) for c in (1, 2) for kind in ("PlugChanged", "StatusChanged", "MeterReading")}

        def kinds() -> set[tuple[str, int | None]]:
            return {(type(e).__name__, getattr(e, "connector_id", None)) for e in events.seen[1:]}

        while not expected <= kinds():
            await events.next(PlugChanged | StatusChanged | MeterReading)  # type: ignore[arg-type]
        # ChargerBack first, then a fresh state of every connector (docs/charger-bridge.md §1); the
        # order among connectors is not part of the contract (a broker delivers retained messages
        # of one subscription grouped by topic)
        assert isinstance(events.seen[0], ChargerBack)
        assert kinds() == expected
        plug = next(e for e in events.seen if isinstance(e, PlugChanged) and e.connector_id == 1)
        assert plug.plugged is False
        status = next(e for e in events.seen if isinstance(e, StatusChanged) and e.connector_id == 1)
        assert status.state is ChargingState.IDLE
        assert status.fault is None
        assert driver.stats.ts_fallbacks == 0  # the simulator always sends ts


@pytest.mark.req("STOP-3")
async def test_plug_enable_charge_unplug_in_order(rig: Rig) -> None:
    rig.sim.set_power(1, FAST_W)
    rig.sim.plug(1)
    assert (await rig.events.next(PlugChanged, _for(1))).plugged is True
    await rig.driver.enable_energy(1)
    await rig.events.next(StatusChanged, lambda e: e.state is ChargingState.CHARGING)
    first = await rig.events.next(MeterReading, lambda e: e.connector_id == 1 and (e.power_w or 0) > 0)
    later = await rig.events.next(
        MeterReading, lambda e: e.connector_id == 1 and e.energy_wh > first.energy_wh
    )
    assert later.power_w == FAST_W
    rig.sim.unplug(1)
    unplugged = await rig.events.next(PlugChanged, _for(1))
    assert unplugged.plugged is False
    idle = await rig.events.next(StatusChanged, _for(1))
    assert idle.state is ChargingState.IDLE
    final = await rig.events.next(MeterReading, _for(1))
    assert final.power_w == 0.0
    assert final.energy_wh >= later.energy_wh
    facts = [
        (type(e).__name__, getattr(e, "plugged", None), getattr(e, "state", None))
        for e in rig.events.seen
        if isinstance(e, PlugChanged | StatusChanged) and e.connector_id == 1
    ]
    assert facts == [
        ("PlugChanged", True, None),
        ("StatusChanged", None, ChargingState.CHARGING),
        ("PlugChanged", False, None),
        ("StatusChanged", None, ChargingState.IDLE),
    ]
    assert all(e.at.tzinfo is UTC for e in rig.events.seen)
    assert not rig.sim.state(1).enabled  # unplug ends the session


async def test_enable_energy_flows_disable_stops(rig: Rig) -> None:
    rig.sim.set_power(2, FAST_W)
    rig.sim.plug(2)
    await rig.driver.enable_energy(2, max_current_a=32)
    await rig.events.next(StatusChanged, lambda e: e.connector_id == 2 and e.state is ChargingState.CHARGING)
    reading = await rig.events.next(MeterReading, lambda e: e.connector_id == 2 and e.energy_wh >= 2)
    assert reading.power_w == 32 * 230 * 3  # 22 080 W: the EV's 360 kW capped by 32 A on 3 phases
    await rig.driver.disable_energy(2)
    stopped = await rig.events.next(StatusChanged, _for(2))
    assert stopped.state is ChargingState.SUSPENDED_EVSE  # plugged, the EVSE withholds energy
    at_stop = await rig.events.next(MeterReading, _for(2))
    assert at_stop.power_w == 0.0
    await asyncio.sleep(4 * METER_INTERVAL_S)
    after = await rig.events.next(MeterReading, _for(2))
    assert after.energy_wh == at_stop.energy_wh
    assert after.power_w == 0.0
    commands = rig.sim.state(2).commands
    assert [(c.action, c.max_current_a, c.accepted) for c in commands] == [
        ("enable", 32, True),
        ("disable", None, True),
    ]
    assert rig.driver.stats.commands_sent == 2


async def test_cmd_payload_is_exactly_the_contract(rig: Rig) -> None:
    ids = iter(["corr-1", "corr-2"])
    driver = make_driver(rig.broker, correlation_ids=lambda: next(ids), client_id="spy-driver")
    async with raw_client(rig.broker) as spy, driver:
        await spy.subscribe("charger/+/cmd", qos=1)
        await EventWaiter(driver).next(ChargerBack)
        await driver.enable_energy(1, max_current_a=16)
        await driver.disable_energy(1)
        got = []
        async with asyncio.timeout(3):
            async for message in spy.messages:
                got.append((message.topic.value, message.qos, json.loads(bytes(message.payload))))
                if len(got) == 2:
                    break
    assert got == [
        ("charger/1/cmd", 1, {"action": "enable", "max_current_a": 16, "correlation_id": "corr-1"}),
        ("charger/1/cmd", 1, {"action": "disable", "max_current_a": None, "correlation_id": "corr-2"}),
    ]


async def test_enable_before_plug_starts_on_plug_in(rig: Rig) -> None:
    await rig.driver.enable_energy(1)  # authorize first, then plug in
    await eventually(lambda: rig.sim.state(1).enabled)
    rig.sim.plug(1)
    await rig.events.next(StatusChanged, lambda e: e.connector_id == 1 and e.state is ChargingState.CHARGING)


async def test_ev_pause_is_suspended_ev(rig: Rig) -> None:
    rig.sim.plug(1)
    await rig.driver.enable_energy(1)
    await rig.events.next(StatusChanged, lambda e: e.state is ChargingState.CHARGING)
    rig.sim.ev_pause(1)
    paused = await rig.events.next(StatusChanged, _for(1))
    assert paused.state is ChargingState.SUSPENDED_EV
    assert (await rig.events.next(MeterReading, _for(1))).power_w == 0.0
    rig.sim.ev_pause(1, paused=False)
    assert (await rig.events.next(StatusChanged, _for(1))).state is ChargingState.CHARGING
    rig.sim.set_power(1, 0)  # an EV drawing nothing is suspended too (battery full)
    assert (await rig.events.next(StatusChanged, _for(1))).state is ChargingState.SUSPENDED_EV


@pytest.mark.req("ERR-4")
async def test_fault_with_code_stops_energy(rig: Rig) -> None:
    rig.sim.set_power(1, FAST_W)
    rig.sim.plug(1)
    await rig.driver.enable_energy(1)
    await rig.events.next(MeterReading, lambda e: e.connector_id == 1 and e.energy_wh > 0)
    rig.sim.fault(1, "RCD_TRIPPED")
    fault = await rig.events.next(StatusChanged, _for(1))
    assert (fault.state, fault.fault) == (ChargingState.FAULT, "RCD_TRIPPED")
    at_fault = await rig.events.next(MeterReading, _for(1))
    assert at_fault.power_w == 0.0
    await rig.driver.enable_energy(1)  # refused by the charger while faulted
    await eventually(lambda: len(rig.sim.state(1).commands) == 2)
    assert rig.sim.state(1).commands[-1].accepted is False
    await rig.driver.disable_energy(1)  # the agent stops the session (ERR-4)
    rig.sim.clear_fault(1)
    cleared = await rig.events.next(StatusChanged, _for(1))
    assert cleared.state is ChargingState.SUSPENDED_EVSE
    assert cleared.fault is None
    assert rig.sim.state(1).energy_wh == at_fault.energy_wh


@pytest.mark.req("ERR-2")
async def test_lose_and_restore_contact(rig: Rig) -> None:
    rig.sim.plug(1)
    await rig.events.next(PlugChanged, _for(1))
    rig.sim.lose_contact()
    lost = await rig.events.next(ChargerLost)
    assert lost.reason == "offline"
    assert lost.at.tzinfo is UTC
    assert not rig.driver.online
    assert rig.driver.connected
    with pytest.raises(ChargerError) as info:
        await rig.driver.enable_energy(1)
    assert info.value.code is ChargerErrorCode.CHARGER_OFFLINE
    await rig.driver.disable_energy(1)  # the safe direction is still published
    rig.sim.plug(2)  # happens while nobody can see it
    rig.sim.restore_contact()
    await rig.events.next(ChargerBack)
    rest = await rig.events.next(PlugChanged, _for(2))  # the fresh state after ChargerBack
    assert rest.plugged is True
    assert [type(e) for e in rig.events.seen].count(ChargerLost) == 1
    await rig.driver.enable_energy(2)
    await rig.events.next(StatusChanged, lambda e: e.connector_id == 2 and e.state is ChargingState.CHARGING)


@pytest.mark.req("ERR-2")
async def test_broker_restart_lost_back_and_keeps_working(rig: Rig) -> None:
    rig.sim.set_power(1, FAST_W)
    rig.sim.plug(1)
    await rig.driver.enable_energy(1)
    before = await rig.events.next(MeterReading, lambda e: e.connector_id == 1 and e.energy_wh > 0)
    rig.broker.stop()
    await rig.events.next(ChargerLost)
    await eventually(lambda: not rig.driver.connected)
    with pytest.raises(ChargerError) as info:
        await rig.driver.disable_energy(1)
    assert info.value.code is ChargerErrorCode.NOT_CONNECTED
    rig.broker.start()
    await rig.events.next(ChargerBack, timeout_s=5)
    fresh = await rig.events.next(StatusChanged, _for(1))
    assert fresh.state is ChargingState.CHARGING
    after = await rig.events.next(
        MeterReading, lambda e: e.connector_id == 1 and e.energy_wh > before.energy_wh
    )
    assert after.power_w == FAST_W
    await rig.driver.disable_energy(1)  # commands work after the reconnect
    assert (await rig.events.next(StatusChanged, _for(1))).state is ChargingState.SUSPENDED_EVSE
    assert rig.driver.stats.connection_losses == 1
    assert rig.driver.stats.connects == 2
    kinds = [type(e) for e in rig.events.seen if isinstance(e, ChargerLost | ChargerBack)]
    assert kinds == [ChargerLost, ChargerBack]


@pytest.mark.req("ERR-2")
async def test_broker_killed_is_charger_lost(rig: Rig) -> None:
    rig.broker.kill()
    lost = await rig.events.next(ChargerLost)
    assert lost.reason == "broker_connection_lost"
    rig.broker.start()
    await rig.events.next(ChargerBack, timeout_s=5)


async def test_driver_starts_without_broker_and_connects_later(mosquitto: Broker) -> None:
    mosquitto.stop()
    driver = make_driver(mosquitto)
    sim = ChargerSimulator(
        mosquitto.url, connectors=2, meter_interval_s=METER_INTERVAL_S, reconnect_delay_s=0.05
    )
    async with driver, sim:
        events = EventWaiter(driver)
        await asyncio.sleep(0.3)  # a few refused attempts; start() did not wait and nothing crashed
        assert not driver.connected
        assert not driver.online
        with pytest.raises(ChargerError) as info:
            await driver.enable_energy(1)
        assert info.value.code is ChargerErrorCode.NOT_CONNECTED
        mosquitto.start()
        await events.next(ChargerBack, timeout_s=5)
        assert driver.online
        assert driver.stats.connection_losses == 0


async def test_events_end_after_close(mosquitto: Broker) -> None:
    driver = make_driver(mosquitto)
    await driver.start()
    events = driver.events()
    await driver.close()
    await driver.close()  # idempotent
    assert [e async for e in events] == []
    with pytest.raises(ChargerError) as info:
        await driver.disable_energy(1)
    assert info.value.code is ChargerErrorCode.CLOSED


async def test_command_argument_errors(rig: Rig) -> None:
    with pytest.raises(ChargerError) as info:
        await rig.driver.enable_energy(3)
    assert info.value.code is ChargerErrorCode.UNKNOWN_CONNECTOR
    assert info.value.connector_id == 3
    assert "connector 3" in str(info.value)
    for bad in (-1, 1001, True, "16"):
        with pytest.raises(ChargerError) as info:
            await rig.driver.enable_energy(1, max_current_a=bad)  # type: ignore[arg-type]
        assert info.value.code is ChargerErrorCode.INVALID_ARGUMENT
    driver = make_driver(rig.broker)
    with pytest.raises(ChargerError) as info:
        await driver.disable_energy(1)
    assert info.value.code is ChargerErrorCode.NOT_STARTED


@pytest.mark.req("STOP-8")
async def test_a_meter_without_power_is_a_reading_with_power_unknown(mosquitto: Broker) -> None:
    """A meter that reports only its energy register (no ``power_w``) is not dropped as invalid:
    the reading carries ``power_w=None`` (integrity issue A: facts that can be unknown are optional)."""
    sim = ChargerSimulator(mosquitto.url, connectors=1, meter_interval_s=METER_INTERVAL_S, report_power=False)
    driver = make_driver(mosquitto, connectors=1)
    async with sim, driver:
        events = EventWaiter(driver)
        reading = await events.next(MeterReading, _for(1))
        assert reading.power_w is None
        assert reading.energy_wh >= 0
        assert driver.stats.invalid == 0


@pytest.mark.req("STOP-8")
async def test_a_retained_meter_value_is_marked_retained(mosquitto: Broker) -> None:
    """The meter value the broker kept (published before the driver subscribed) is marked
    ``retained``: it may be behind the meter by now, so the engine never takes it as a session's
    start register (fuzzer seed 117 billed a stale register's difference). Live values are not."""
    sim = ChargerSimulator(mosquitto.url, connectors=1, meter_interval_s=METER_INTERVAL_S, meter_retain=True)
    async with sim:
        sim.plug(1)  # a plugged connector reports its meter every interval
        await asyncio.sleep(METER_INTERVAL_S * 4)  # the broker now holds a retained meter value
        driver = make_driver(mosquitto, connectors=1)
        async with driver:
            events = EventWaiter(driver)
            first = await events.next(MeterReading, _for(1))
            assert first.retained is True
            live = await events.next(MeterReading, _for(1))
            assert live.retained is False
