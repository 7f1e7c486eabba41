"""Fixtures: a connected driver ↔ simulator pair on a real Mosquitto (tests/mosquitto.py)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from drivers.charger.base import ChargerBack, MeterReading
from drivers.charger.mqtt_bridge import MqttBridgeDriver
from hil.charger_sim import ChargerSimulator
from tests.charger.support import EventWaiter
from tests.mosquitto import Broker

METER_INTERVAL_S = 0.05


@dataclass
class Rig:
    broker: Broker
    driver: MqttBridgeDriver
    sim: ChargerSimulator
    events: EventWaiter


def make_driver(broker: Broker, **kwargs: object) -> MqttBridgeDriver:
    options: dict[str, object] = {
        "broker_url": broker.url,
        "connectors": 2,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "command_timeout_s": 2.0,
        "connect_timeout_s": 2.0,
        "rng": random.Random(7),
    }
    options.update(kwargs)
    return MqttBridgeDriver(**options)  # type: ignore[arg-type]


@pytest.fixture
async def rig(mosquitto: Broker) -> AsyncIterator[Rig]:
    """Driver and simulator (2 connectors, meter every 50 ms), connected; the initial fresh state consumed."""
    driver = make_driver(mosquitto)
    sim = ChargerSimulator(
        mosquitto.url, connectors=2, meter_interval_s=METER_INTERVAL_S, reconnect_delay_s=0.05
    )
    async with driver, sim:
        events = EventWaiter(driver)
        await events.next(ChargerBack)
        await events.next(MeterReading, lambda e: e.connector_id == 2)  # end of the fresh state
        events.seen.clear()
        yield Rig(mosquitto, driver, sim, events)
