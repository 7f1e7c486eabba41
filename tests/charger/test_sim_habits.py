"""The charger simulator's habits (hil/charger_sim/habits.py), watched by a plain aiomqtt subscriber.

The spy subscribes to ``charger/#`` with MQTT 5 "retain as published", so the retain flag it sees is
the one the simulator set, and it is subscribed before the simulator connects, so it sees every
message in publication order. "Nothing was published" is always checked against a later message
(FIFO from one publisher) or against the simulator's meter timer having run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.charger.mqtt_bridge import cancel_and_wait
from drivers.charger.payloads import MeterPayload
from hil.charger_sim import ChargerHabits, ChargerSimulator, MeterMode, PlugOrder
from hil.charger_sim.__main__ import _parser
from tests.charger.support import eventually, raw_client
from tests.mosquitto import Broker

ROOT = Path(__file__).resolve().parents[2]
NO_TIMER_S = 3600.0  # the meter timer never fires within a test
FAST_TIMER_S = 0.05
WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool

    @property
    def label(self) -> str:
        """``alive``, ``plug1``, ``status2``, ``meter1``, …"""
        parts = self.topic.split("/")
        return parts[1] if len(parts) == 2 else f"{parts[2]}{parts[1]}"

    @property
    def data(self) -> Any:
        return json.loads(self.payload)


class Spy:
    """Every message on ``charger/#`` except ``cmd``, in arrival order."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seen: list[Seen] = []
        self._new = asyncio.Event()

    async def read(self) -> None:
        async for message in self.client.messages:
            if message.topic.value.endswith("/cmd"):
                continue
            payload = message.payload
            assert isinstance(payload, bytes)
            self.seen.append(Seen(message.topic.value, payload, message.retain))
            self._new.set()

    async def wait(self, predicate: Callable[[list[Seen]], bool], timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate(self.seen):
                self._new.clear()
                await self._new.wait()

    async def next(self, start: int, where: Callable[[Seen], bool]) -> int:
        """The index of the first message at or after ``start`` that matches ``where``."""

        def found() -> int | None:
            return next((i for i in range(start, len(self.seen)) if where(self.seen[i])), None)

        await self.wait(lambda _: found() is not None)
        index = found()
        assert index is not None
        return index

    async def at(self, index: int) -> Seen:
        """The message at ``index``, once it has arrived."""
        await self.wait(lambda seen: len(seen) > index)
        return self.seen[index]

    def labels(self, start: int = 0, end: int | None = None) -> list[str]:
        return [m.label for m in self.seen[start:end]]

    async def enable(self, connector_id: int, max_current_a: int | None = None) -> None:
        payload = {"action": "enable", "max_current_a": max_current_a, "correlation_id": str(uuid.uuid4())}
        await self.client.publish(f"charger/{connector_id}/cmd", json.dumps(payload), qos=1)


def _is(label: str, **fields: object) -> Callable[[Seen], bool]:
    return lambda m: m.label == label and all(m.data.get(k) == v for k, v in fields.items())


@contextlib.asynccontextmanager
async def spying(broker: Broker) -> AsyncIterator[Spy]:
    async with raw_client(broker, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("charger/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
        spy = Spy(client)
        task = asyncio.create_task(spy.read(), name="test-spy")
        try:
            yield spy
        finally:
            await cancel_and_wait(task)


async def retained_now(broker: Broker) -> dict[str, Seen]:
    """What a subscriber arriving now receives as retained messages, by label."""
    got: dict[str, Seen] = {}
    async with raw_client(broker) as client:
        await client.subscribe([("charger/#", 1), ("test/marker", 1)])
        await client.publish("test/marker", b"end", qos=1)  # after the retained messages
        async with asyncio.timeout(WAIT_S):
            async for message in client.messages:
                if message.topic.value == "test/marker":
                    return got
                assert isinstance(message.payload, bytes)
                seen = Seen(message.topic.value, message.payload, message.retain)
                got[seen.label] = seen
    raise AssertionError("unreachable")


def _sim(broker: Broker, **kwargs: Any) -> ChargerSimulator:
    options: dict[str, Any] = {"connectors": 2, "meter_interval_s": NO_TIMER_S, "reconnect_delay_s": 0.05}
    options.update(kwargs)
    return ChargerSimulator(broker.url, **options)


async def _connected(spy: Spy, connectors: int = 2, meters: bool = True) -> None:
    per = 3 if meters else 2
    await spy.wait(lambda seen: len(seen) >= 1 + per * connectors)


# -- defaults and the profile ---------------------------------------------------------------------


def test_defaults_are_the_historic_behaviour() -> None:
    sim = ChargerSimulator("mqtt://127.0.0.1:1")
    habits = sim.habits.as_dict()
    assert isinstance(habits.pop("seed"), int)  # drawn and reported
    assert habits == {
        "meter_mode": "always",
        "meter_interval_s": 1.0,
        "meter_retain": True,
        "report_power": True,
        "report_current": False,
        "plug_order": "plug_first",
        "status_on_plug": False,
        "duplicate_rate": 0.0,
    }


def test_habits_round_trip_through_cli_flags_and_constructor() -> None:
    habits = ChargerHabits(
        meter_mode=MeterMode.FLOWING,
        meter_interval_s=0.25,
        meter_retain=False,
        report_power=False,
        plug_order=PlugOrder.STATUS_FIRST,
        status_on_plug=True,
        duplicate_rate=0.125,
        seed=99,
    )
    args = _parser().parse_args(habits.argv())
    parsed = ChargerHabits(
        meter_mode=args.meter_mode,
        meter_interval_s=args.meter_interval,
        meter_retain=args.meter_retain,
        report_power=args.report_power,
        plug_order=args.plug_order,
        status_on_plug=args.status_on_plug,
        duplicate_rate=args.duplicate_rate,
        seed=args.seed,
    )
    assert parsed == habits
    assert ChargerSimulator("mqtt://127.0.0.1:1", **habits.as_dict()).habits == habits


@pytest.mark.parametrize(
    "kwargs",
    [
        {"meter_mode": "sometimes"},
        {"plug_order": "random"},
        {"duplicate_rate": -0.1},
        {"duplicate_rate": 1.5},
        {"duplicate_rate": float("nan")},
        {"meter_interval_s": 0},
        {"meter_interval_s": float("inf")},
        {"seed": "7"},
    ],
)
def test_invalid_habits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ChargerSimulator("mqtt://127.0.0.1:1", **kwargs)


def test_habit_control_commands_in_process() -> None:
    sim = ChargerSimulator("mqtt://127.0.0.1:1", seed=3)  # never started: no broker needed
    for word in ("redeliver", "reconnect", "habits", "habit NAME VALUE"):
        assert word in sim.control("help")
    assert json.loads(sim.control("habits")) == sim.habits.as_dict()
    for line in (
        "habit meter_mode flowing",
        "habit meter-interval 0.5",
        "habit meter_retain off",
        "habit power off",
        "habit plug_order status_first",
        "habit status-on-plug on",
        "habit duplicate_rate 0.3",
        "habit seed 5",
    ):
        assert sim.control(line) == "ok", line
    assert json.loads(sim.control("habits")) == {
        "meter_mode": "flowing",
        "meter_interval_s": 0.5,
        "meter_retain": False,
        "report_power": False,
        "report_current": False,
        "plug_order": "status_first",
        "status_on_plug": True,
        "duplicate_rate": 0.3,
        "seed": 5,
    }
    assert sim.control("reconnect") == "ok: not connected, nothing done"
    assert sim.control("redeliver") == "ok: not connected, nothing done"
    for line in (
        "habit",
        "habit meter_mode",
        "habit bogus 1",
        "habit meter_mode sometimes",
        "habit duplicate_rate 1.5",
        "habit duplicate_rate nan",
        "habit meter_interval_s 0",
        "habit meter_retain maybe",
        "habit seed x",
        "habits now",
        "reconnect now",
        "reconnect -1",
        "reconnect nan",
        "reconnect 1 2",
        "redeliver 1",
    ):
        answer = sim.control(line)
        assert answer.startswith("error: "), (line, answer)
    assert sim.habits.meter_mode == "flowing"  # a refused change changes nothing


def test_set_habits_reseeds_the_duplicate_rng() -> None:
    sim = ChargerSimulator("mqtt://127.0.0.1:1", seed=1)
    first = sim._rng.random()  # the RNG state is the point of this test
    sim.set_habits(seed=1)
    assert sim._rng.random() == first
    with pytest.raises(ValueError, match="duplicate_rate"):
        sim.set_habits(duplicate_rate=2.0)


# -- meter reporting ------------------------------------------------------------------------------


async def test_meter_mode_always_at_connect_and_on_every_change(mosquitto: Broker) -> None:
    async with spying(mosquitto) as spy, _sim(mosquitto) as sim:
        await _connected(spy)
        assert spy.labels() == ["alive", "plug1", "status1", "meter1", "plug2", "status2", "meter2"]
        assert all(m.retain for m in spy.seen)
        sim.plug(1)
        sim.set_power(2, 1000.0)  # a change on an unplugged connector still reports its meter
        end = await spy.next(7, _is("meter2"))
        assert spy.labels(7, end + 1) == ["plug1", "meter1", "meter2"]
        assert spy.seen[8].data["power_w"] == 0.0


async def test_meter_mode_flowing(mosquitto: Broker) -> None:
    async with (
        spying(mosquitto) as spy,
        _sim(mosquitto, meter_mode="flowing", meter_interval_s=FAST_TIMER_S) as sim,
    ):
        await _connected(spy, meters=False)
        sim.plug(1)
        ticks = sim.meter_ticks
        await eventually(lambda: sim.meter_ticks >= ticks + 3)
        sim.plug(2)  # marker
        mark = await spy.next(0, _is("plug2", plugged=True))
        assert spy.labels(0, mark) == ["alive", "plug1", "status1", "plug2", "status2", "plug1"]

        await spy.enable(1)
        charging = await spy.next(mark, _is("status1", state="charging"))
        first = await spy.at(charging + 1)  # the change that starts the flow reports at once
        assert first.label == "meter1"
        assert first.data["power_w"] == 7200.0
        assert first.data["energy_wh"] == 0
        await spy.wait(lambda seen: [m.label for m in seen[charging:]].count("meter1") >= 4)  # timer

        sim.reconnect()  # a fresh state: a meter for the flowing connector only
        alive = await spy.next(charging + 1, _is("alive"))
        await spy.next(alive, _is("status2"))
        assert spy.labels(alive, alive + 6) == ["alive", "plug1", "status1", "meter1", "plug2", "status2"]

        sim.ev_pause(1)
        paused = await spy.next(alive, _is("status1", state="suspended_ev"))
        final = await spy.at(paused + 1)
        assert final.label == "meter1"
        assert final.data["power_w"] == 0.0
        ticks = sim.meter_ticks
        await eventually(lambda: sim.meter_ticks >= ticks + 3)
        sim.unplug(1)  # marker; no flow before or after: no meter
        end = await spy.next(paused, _is("status1", state="idle"))
        assert spy.labels(paused + 2, end + 1) == ["plug1", "status1"]
        assert "meter2" not in spy.labels()


async def test_meter_mode_periodic(mosquitto: Broker) -> None:
    async with spying(mosquitto) as spy, _sim(mosquitto, meter_mode="periodic") as sim:
        await _connected(spy, meters=False)
        sim.plug(1)
        sim.plug(2)
        await spy.enable(1)
        await spy.next(0, _is("status1", state="charging"))
        sim.set_power(1, 3600.0)
        sim.ev_pause(2)
        sim.fault(2, "E1")  # marker
        mark = await spy.next(0, _is("status2", state="fault"))
        assert spy.labels(5, mark + 1) == ["plug1", "plug2", "status1", "status2"]  # no meter on a change

        sim.reconnect()  # no meter after a connect either
        alive = await spy.next(mark, _is("alive"))
        sim.clear_fault(2)  # marker
        end = await spy.next(alive, _is("status2", state="idle"))
        assert spy.labels(alive, end + 1) == ["alive", "plug1", "status1", "plug2", "status2", "status2"]

        sim.unplug(2)
        sim.set_habits(meter_interval_s=FAST_TIMER_S)  # takes effect at once
        await spy.wait(lambda seen: [m.label for m in seen[end:]].count("meter1") >= 3)
        assert "meter2" not in spy.labels(end)  # unplugged: no periodic meter
        meters = [m.data for m in spy.seen[end:] if m.label == "meter1"]
        assert all(m["power_w"] == 3600.0 for m in meters)
        assert [m["energy_wh"] for m in meters] == sorted(m["energy_wh"] for m in meters)

        sim.unplug(1)
        unplugged = await spy.next(end, _is("plug1", plugged=False))
        ticks = sim.meter_ticks
        await eventually(lambda: sim.meter_ticks >= ticks + 3)
        sim.plug(2)  # marker
        last = await spy.next(unplugged, _is("plug2", plugged=True))
        assert "meter1" not in spy.labels(unplugged, last)


@pytest.mark.parametrize("meter_retain", [True, False])
async def test_meter_retained_or_not(mosquitto: Broker, meter_retain: bool) -> None:
    async with spying(mosquitto) as spy, _sim(mosquitto, connectors=1, meter_retain=meter_retain):
        await _connected(spy, connectors=1)
        flags = {m.label: m.retain for m in spy.seen}
        assert flags == {"alive": True, "plug1": True, "status1": True, "meter1": meter_retain}
        retained = await retained_now(mosquitto)
        expected = {"alive", "plug1", "status1"} | ({"meter1"} if meter_retain else set())
        assert set(retained) == expected
        assert all(m.retain for m in retained.values())


@pytest.mark.parametrize("report_current", [False, True])
@pytest.mark.parametrize("report_power", [True, False])
async def test_meter_with_or_without_power(
    mosquitto: Broker, report_power: bool, report_current: bool
) -> None:
    async with (
        spying(mosquitto) as spy,
        _sim(
            mosquitto,
            connectors=1,
            report_power=report_power,
            report_current=report_current,
            meter_interval_s=FAST_TIMER_S,
        ) as sim,
    ):
        await _connected(spy, connectors=1)
        sim.plug(1)
        await spy.enable(1)
        charging = await spy.next(0, _is("status1", state="charging"))
        await spy.wait(lambda seen: [m.label for m in seen[charging:]].count("meter1") >= 3)
        meters = [m.data for m in spy.seen if m.label == "meter1"]
        keys = {"energy_wh", "ts", "signed"} | ({"power_w"} if report_power else set())
        keys |= {"current_a"} if report_current else set()
        assert all(set(m) == keys for m in meters), meters
        if report_current:  # what the agent's bridge reads (docs/charger-bridge.md)
            assert all(msgspec.convert(m, MeterPayload).current_a is not None for m in meters)
        assert all(isinstance(m["energy_wh"], int) for m in meters)


# -- plug and status ------------------------------------------------------------------------------


@pytest.mark.parametrize("plug_order", ["plug_first", "status_first"])
@pytest.mark.parametrize("status_on_plug", [False, True])
async def test_plug_order_and_status_on_plug(
    mosquitto: Broker, plug_order: str, status_on_plug: bool
) -> None:
    first, second = ("plug1", "status1") if plug_order == "plug_first" else ("status1", "plug1")
    async with (
        spying(mosquitto) as spy,
        _sim(mosquitto, connectors=1, plug_order=plug_order, status_on_plug=status_on_plug) as sim,
    ):
        await _connected(spy, connectors=1)
        assert spy.labels() == ["alive", first, second, "meter1"]  # also the order after a connect
        start = len(spy.seen)
        sim.plug(1)  # idle -> idle
        end = await spy.next(start, _is("meter1"))
        assert spy.labels(start, end + 1) == ([first, second] if status_on_plug else ["plug1"]) + ["meter1"]
        if status_on_plug:
            assert spy.seen[spy.labels(start).index("status1") + start].data["state"] == "idle"

        await spy.enable(1)
        charging = await spy.next(end, _is("status1", state="charging"))
        sim.unplug(1)  # charging -> idle: both change
        end = await spy.next(charging, _is("plug1", plugged=False))
        end = await spy.next(end, _is("meter1"))
        assert spy.labels(charging + 2, end + 1) == [first, second, "meter1"]

        start = len(spy.seen)
        sim.plug(1)
        sim.unplug(1)  # idle -> idle again
        end = await spy.next(start, _is("plug1", plugged=False))
        end = await spy.next(end, _is("meter1"))
        tail = spy.labels(start, end + 1)
        if status_on_plug:
            assert tail == [first, second, "meter1"] * 2
        else:
            assert tail == ["plug1", "meter1"] * 2


# -- duplicates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "seed"), [(0.5, 11), (1.0, 2), (0.0, 5)])
async def test_duplicates_follow_the_seed(mosquitto: Broker, rate: float, seed: int) -> None:
    base = ["alive", "plug1", "status1", "meter1"] + ["plug1", "meter1"] * 10
    rng = random.Random(seed)
    expected: list[tuple[str, bool]] = []  # (label, is the second copy)
    for label in base:
        expected.append((label, False))
        if rate > 0 and rng.random() < rate:
            expected.append((label, True))
    async with (
        spying(mosquitto) as spy,
        _sim(mosquitto, connectors=1, duplicate_rate=rate, seed=seed) as sim,
    ):
        await _connected(spy, connectors=1)
        for _ in range(5):
            sim.plug(1)
            sim.unplug(1)
        await spy.wait(lambda seen: len(seen) >= len(expected))
        await eventually(lambda: sim.published >= len(expected))
        assert sim.published == len(expected) == len(spy.seen)
        assert sim.duplicates == sum(copy for _, copy in expected)
        assert spy.labels() == [label for label, _ in expected]
        for i, (_, copy) in enumerate(expected):
            if copy:  # the same message again, right after: bytes and retain flag
                assert spy.seen[i] == spy.seen[i - 1]
            elif i > 0:
                assert spy.seen[i] != spy.seen[i - 1]
    if rate == 0.5:
        assert 0 < sim.duplicates < len(base)


# -- re-deliveries and reconnects -----------------------------------------------------------------


@pytest.mark.parametrize("meter_retain", [True, False])
async def test_redeliver_republishes_the_retained_state_unchanged(
    mosquitto: Broker, meter_retain: bool
) -> None:
    async with spying(mosquitto) as spy, _sim(mosquitto, meter_retain=meter_retain) as sim:
        await _connected(spy)
        sim.plug(1)
        await spy.enable(1)
        await spy.next(0, _is("status1", state="charging"))
        sim.fault(2, "RCD_TRIPPED")
        mark = await spy.next(0, _is("meter2"))
        mark = await spy.next(mark + 1, _is("meter2"))
        last = {m.topic: m for m in spy.seen}
        assert sim.control("redeliver") == "ok"
        meters = ["meter1", "meter2"] if meter_retain else []
        expected = ["alive", "plug1", "status1", *meters[:1], "plug2", "status2", *meters[1:]]
        await spy.wait(lambda seen: len(seen) >= mark + 1 + len(expected))
        redelivered = spy.seen[mark + 1 :]
        assert [m.label for m in redelivered] == expected
        for m in redelivered:
            assert m.payload == last[m.topic].payload  # unchanged, same ts
            assert m.retain
        assert redelivered[5 if meter_retain else 4].data == {
            "state": "fault",
            "fault": "RCD_TRIPPED",
            "ts": last["charger/2/status"].data["ts"],
        }


async def test_reconnect_is_clean_and_republishes_the_state(mosquitto: Broker) -> None:
    async with spying(mosquitto) as spy, _sim(mosquitto, connectors=1) as sim:
        await _connected(spy, connectors=1)
        assert sim.connects == 1
        sim.plug(1)
        assert sim.control("reconnect") == "ok"  # the queued plug-in is published before the DISCONNECT
        alive = await spy.next(4, _is("alive"))
        await spy.next(alive, _is("meter1"))
        assert spy.labels(4) == ["plug1", "meter1", "alive", "plug1", "status1", "meter1"]
        assert spy.seen[alive].data["online"] is True
        assert spy.seen[alive + 1].data["plugged"] is True
        assert all(m.data.get("online") is not False for m in spy.seen)  # no will, no alive offline
        assert sim.connects == 2

        assert sim.control("reconnect 0.5") == "ok"  # away for a while: a cmd meanwhile is lost
        await eventually(lambda: not sim.connected)
        await spy.enable(1)
        await eventually(lambda: sim.connects == 3)
        assert sim.state(1).commands == ()
        assert sim.state(1).status == "idle"

        await spy.enable(1)  # subscribed again: commands arrive
        await spy.next(alive, _is("status1", state="charging"))
        assert len(sim.state(1).commands) == 1

        sim.lose_contact()  # unlike reconnect: the broker publishes the will
        lost = await spy.next(alive, _is("alive", online=False))
        assert spy.seen[lost].retain
        sim.restore_contact()
        await spy.next(lost, _is("alive", online=True))
        await eventually(lambda: sim.connects == 4)


# -- energy accounting ----------------------------------------------------------------------------


async def test_session_energy_is_counted_from_the_last_plug_in(mosquitto: Broker) -> None:
    now = [1000.0]
    async with spying(mosquitto) as spy, _sim(mosquitto, connectors=1, monotonic=lambda: now[0]) as sim:
        await _connected(spy, connectors=1)
        assert json.loads(sim.control("state 1"))["session_energy_wh"] == 0
        sim.plug(1)
        await spy.enable(1)
        charging = await spy.next(0, _is("status1", state="charging"))
        now[0] += 3600.0  # one hour at 7200 W
        state = json.loads(sim.control("state 1"))
        assert (state["energy_wh"], state["session_start_wh"], state["session_energy_wh"]) == (7200, 0, 7200)
        sim.unplug(1)
        now[0] += 3600.0  # nothing flows unplugged; the last session's energy stays readable
        assert sim.state(1).session_energy_wh == 7200
        sim.set_power(1, 1000.0)
        sim.plug(1)
        assert (sim.state(1).session_start_wh, sim.state(1).session_energy_wh) == (7200, 0)
        await spy.enable(1)
        await spy.next(charging + 1, _is("status1", state="charging"))
        now[0] += 1800.0  # half an hour at 1000 W
        state = json.loads(sim.control("state 1"))
        assert (state["energy_wh"], state["session_start_wh"], state["session_energy_wh"]) == (
            7700,
            7200,
            500,
        )


# -- the CLI ---------------------------------------------------------------------------------------


async def _run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil.charger_sim",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_cli_habit_flags_are_in_effect_and_reported(mosquitto: Broker) -> None:
    habits = ChargerHabits(
        meter_mode=MeterMode.FLOWING,
        meter_interval_s=FAST_TIMER_S,
        meter_retain=False,
        report_power=False,
        plug_order=PlugOrder.STATUS_FIRST,
        status_on_plug=True,
        duplicate_rate=0.0,
        seed=42,
    )
    async with spying(mosquitto) as spy:
        proc = await _run_cli("--broker", mosquitto.url, "--connectors", "1", *habits.argv())
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(10):
                where = json.loads(await proc.stdout.readline())
            assert where["habits"] == habits.as_dict()
            reader, writer = await asyncio.open_connection(where["control"]["host"], where["control"]["port"])
            try:

                async def ask(line: str) -> str:
                    writer.write(line.encode() + b"\n")
                    await writer.drain()
                    async with asyncio.timeout(2):
                        return (await reader.readline()).decode().rstrip("\n")

                assert json.loads(await ask("habits")) == habits.as_dict()
                await _connected(spy, connectors=1, meters=False)
                assert spy.labels() == ["alive", "status1", "plug1"]  # status first, no meter
                assert await ask("plug 1") == "ok"
                await spy.enable(1)
                charging = await spy.next(0, _is("status1", state="charging"))
                meter = await spy.at(charging + 1)
                assert meter.label == "meter1"
                assert not meter.retain
                assert "power_w" not in meter.data
                assert await ask("habit duplicate_rate 1") == "ok"
                assert await ask("unplug 1") == "ok"
                end = await spy.next(charging, _is("plug1", plugged=False))
                await spy.at(end + 3)  # every message twice, the final meter of the flow last
                assert spy.labels(end - 2, end + 4) == [
                    "status1",
                    "status1",
                    "plug1",
                    "plug1",
                    "meter1",
                    "meter1",
                ]
                assert json.loads(await ask("state 1"))["session_energy_wh"] >= 0
                assert await ask("quit") == "ok: bye"
            finally:
                writer.close()
                await writer.wait_closed()
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duplicate-rate", "2"], b"duplicate_rate"),
        (["--meter-interval", "0"], b"meter_interval_s"),
        (["--meter-mode", "sometimes"], b"--meter-mode"),
        (["--plug-order", "random"], b"--plug-order"),
    ],
)
async def test_cli_rejects_bad_habits(args: list[str], message: bytes) -> None:
    proc = await _run_cli("--broker", "mqtt://127.0.0.1:1", *args)
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 2
    assert message in stderr
