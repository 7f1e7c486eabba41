"""The charger simulator publishes pipelined (issue 12): up to ``PUBLISH_WINDOW`` QoS 1 messages in
flight at once, written in queue order, each done once acknowledged; a failed publish ends the
connection as before.

The unit tests drive ``ChargerSimulator._publish`` with a stand-in for the aiomqtt client whose
``publish`` records the message as written to the connection (as paho's ``publish`` does before
aiomqtt awaits anything) and then waits for a PUBACK that the test gives. The last test checks the
order at a real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import aiomqtt
import pytest

from drivers.charger.mqtt_bridge import cancel_and_wait
from hil.charger_sim import ChargerSimulator
from hil.charger_sim import simulator as simulator_module
from hil.charger_sim.simulator import _Outgoing
from tests.charger.support import eventually, raw_client
from tests.mosquitto import Broker

NO_TIMER_S = 3600.0  # the meter timer never fires within a unit test


class _Recording(ChargerSimulator):
    """Records every message queued for publishing, in queue order."""

    def __init__(self, broker_url: str, **kwargs: Any) -> None:
        self.queued: list[_Outgoing] = []
        super().__init__(broker_url, **kwargs)

    def _queue(self, message: _Outgoing) -> None:
        self.queued.append(message)
        super()._queue(message)


class _Wire:
    """Stands in for ``aiomqtt.Client``: ``publish`` appends to ``written`` at once, then waits for
    the test's PUBACK (:meth:`ack`) or failure (:meth:`fail`)."""

    def __init__(self) -> None:
        self.written: list[tuple[str, bytes, bool]] = []
        self._acks: list[asyncio.Future[None]] = []

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        assert qos == 1
        self.written.append((topic, payload, retain))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.append(ack)
        await ack

    def ack(self, index: int) -> None:
        self._acks[index].set_result(None)

    def fail(self, index: int, error: BaseException) -> None:
        self._acks[index].set_exception(error)


def _sim(**kwargs: Any) -> _Recording:
    return _Recording("mqtt://127.0.0.1:1", meter_interval_s=NO_TIMER_S, **kwargs)  # never connects


def _meter_burst(sim: ChargerSimulator) -> None:
    """One meter reading per connector, queued together (what the meter timer does every second)."""
    for c in sim._connectors.values():
        sim._queue_meter(c)


@asynccontextmanager
async def _publishing(sim: ChargerSimulator, wire: _Wire) -> AsyncIterator[None]:
    """``sim._publish`` on ``wire`` in a task group of its own (the connection's), stopped after."""
    async with asyncio.TaskGroup() as group:
        publisher = group.create_task(sim._publish(cast(aiomqtt.Client, wire), group), name="test-publish")
        try:
            yield
        finally:
            publisher.cancel()


def _as_written(messages: list[_Outgoing]) -> list[tuple[str, bytes, bool]]:
    return [(m.topic, m.payload, m.retain) for m in messages]


async def test_a_burst_of_readings_is_in_flight_at_once_in_queue_order() -> None:
    sim, wire = _sim(connectors=8), _Wire()
    async with _publishing(sim, wire):
        _meter_burst(sim)
        await eventually(lambda: len(wire.written) == 8)
        # every reading left before any PUBACK, in queue order (one per connector, 1 … 8)
        assert wire.written == _as_written(sim.queued)
        assert [t.split("/")[1] for t, _, _ in wire.written] == [str(c) for c in range(1, 9)]
        assert sim.published == 0
        joined = asyncio.create_task(sim._outbox.join(), name="test-join")
        for index in reversed(range(1, 8)):  # PUBACKs in any order: done only with the last one
            wire.ack(index)
        await asyncio.sleep(0.01)
        assert not joined.done()
        assert sim.published == 7
        wire.ack(0)
        await asyncio.wait_for(joined, 1)
        assert sim.published == 8


async def test_no_more_than_the_window_is_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator_module, "PUBLISH_WINDOW", 3)
    sim, wire = _sim(connectors=5), _Wire()
    async with _publishing(sim, wire):
        _meter_burst(sim)
        await eventually(lambda: len(wire.written) == 3)
        await asyncio.sleep(0.01)
        assert len(wire.written) == 3
        wire.ack(1)  # one slot free: the next message in queue order leaves
        await eventually(lambda: len(wire.written) == 4)
        await asyncio.sleep(0.01)
        assert len(wire.written) == 4
        for index in (0, 2, 3):
            wire.ack(index)
        await eventually(lambda: len(wire.written) == 5)
        wire.ack(4)
        await asyncio.wait_for(sim._outbox.join(), 1)
        assert wire.written == _as_written(sim.queued)
        assert sim.published == 5


async def test_a_failed_publish_ends_the_connection_and_every_message_is_done() -> None:
    sim, wire = _sim(connectors=3), _Wire()
    ended = False
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(sim._publish(cast(aiomqtt.Client, wire), group), name="test-publish")
            _meter_burst(sim)
            await eventually(lambda: len(wire.written) == 3)
            wire.ack(0)
            await asyncio.sleep(0)
            wire.fail(1, aiomqtt.MqttError("Operation timed out"))  # what aiomqtt raises after 5 s
            await asyncio.sleep(1)  # the group is cancelled by the failure before this ends
    except* aiomqtt.MqttError:
        ended = True
    assert ended
    assert sim.published == 1  # the failed and the cancelled publishes are not counted
    await asyncio.wait_for(sim._outbox.join(), 1)  # no message left undone (join never hangs)


async def test_a_duplicate_follows_its_original_at_once() -> None:
    sim, wire = _sim(connectors=3, duplicate_rate=1.0, seed=3), _Wire()
    async with _publishing(sim, wire):
        _meter_burst(sim)
        await eventually(lambda: len(wire.written) == 6)
        assert wire.written == [w for w in _as_written(sim.queued) for _ in range(2)]
        for index in range(6):
            wire.ack(index)
        await asyncio.wait_for(sim._outbox.join(), 1)
    assert (sim.published, sim.duplicates) == (6, 3)


async def test_the_broker_sees_every_burst_in_queue_order(mosquitto: Broker) -> None:
    """Eight connectors with a meter every 20 ms: bursts of 8 pipelined publishes; a subscriber
    (subscribed before the simulator connects) receives exactly the queued sequence."""
    seen: list[tuple[str, bytes]] = []
    async with raw_client(mosquitto) as spy:
        await spy.subscribe("charger/#", qos=1)

        async def read() -> None:
            async for message in spy.messages:
                if not message.topic.value.endswith(("/cmd", "/payment")):
                    assert isinstance(message.payload, bytes)
                    seen.append((message.topic.value, message.payload))

        reader = asyncio.create_task(read(), name="test-spy")
        try:
            sim = _Recording(mosquitto.url, connectors=8, meter_interval_s=0.02, reconnect_delay_s=0.05)
            async with sim:
                await sim.wait_connected(5)
                for cid in sim.connector_ids:
                    sim.plug(cid)
                await eventually(lambda: sim.meter_ticks >= 10)
                await sim._outbox.join()
                queued = [(m.topic, m.payload) for m in sim.queued]
                await eventually(lambda: len(seen) >= len(queued))
        finally:
            await cancel_and_wait(reader)
    assert sum(t.endswith("/meter") for t, _ in queued) >= 8 * 10  # ten bursts of eight at least
    assert seen[: len(queued)] == queued
