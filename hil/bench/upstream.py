"""DESIGN.md §7: charger meter reading → upstream meter message at the broker, p50/p99 (≤ 5 ms).

The rig of :mod:`hil.bench.agent` (Mosquitto on a free port, PSP simulator, charger simulator with 8
connectors, the real ``evpay-agent run`` process; here the charger and the upstream share the one
broker). ``CHARGING`` sessions are started (plug and tap); meanwhile:

* every meter value the charger simulator queues for publishing is timestamped (``time.monotonic``
  right before it is handed to its MQTT publisher: conservative, the simulator's own hand-over is
  included; the simulator keeps up to ``PUBLISH_WINDOW`` QoS 1 publishes in flight, as a charger's
  MQTT client does, so a reading does not wait for the PUBACKs of the readings before it);
* a bench subscriber on ``evpay/v1/BENCH-1/connectors/+/meter`` timestamps every upstream
  :class:`~agent.upstream.contract.MeterValue` on arrival.

A sample pairs an upstream message with the charger value of the same connector and register
(``meter_wh`` = the simulator's ``energy_wh``); it includes both MQTT hops, the agent's journal write
(fsync) of the meter value, the outbox append (fsync) and the drainer's QoS 1 publish. The
simulator ticks all connectors at once, so up to ``CHARGING`` readings arrive together and queue
behind each other: the figure is for that burst load. Percentiles by nearest rank.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec

from hil.bench.agent import BenchError, _ms, _percentile, _Rig
from hil.broker import LocalBroker
from hil.psp_sim import SimConfig, Simulator

BUDGET_METER_P99_MS = 5.0  # DESIGN.md §7, 8 connectors at once
CHARGING = 8
MIN_SAMPLES = 50
COLLECT_S = 20.0
QUICK_COLLECT_S = 8.0
TOPIC = "evpay/v1/BENCH-1/connectors/+/meter"


class MeterWatch:
    """Both ends of the meter path: when the charger simulator queued each reading
    (``charger_stamps``, keyed by connector and register) and when its upstream copy reached the
    broker (``arrivals``). An async context: patches the simulator, subscribes, undoes both."""

    def __init__(self, rig: _Rig, topic: str, identifier: str) -> None:
        self.rig, self.topic, self.identifier = rig, topic, identifier
        self.charger_stamps: dict[tuple[int, int], float] = {}
        self.arrivals: list[tuple[int, int, float]] = []
        self._original = rig.charger._queue_meter
        self._task: asyncio.Task[None] | None = None

    def _stamped(self, c: Any) -> None:
        self.charger_stamps.setdefault((c.connector_id, int(c.energy_wh)), time.monotonic())
        self._original(c)

    async def _subscribe(self, subscribed: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.rig.broker.port, identifier=self.identifier) as client:
            await client.subscribe(self.topic, qos=1)
            subscribed.set()
            async for message in client.messages:
                stamp = time.monotonic()
                assert isinstance(message.payload, bytes)
                body = msgspec.json.decode(message.payload)
                self.arrivals.append((int(body["connector_id"]), int(body["meter_wh"]), stamp))

    def samples(self, start: int, end: int | None = None) -> list[float]:
        """Charger → broker seconds of the readings that arrived in ``arrivals[start:end]``."""
        stamps = self.charger_stamps
        return [
            t - stamps[(cid, wh)]
            for cid, wh, t in self.arrivals[start:end]
            if (cid, wh) in stamps and t >= stamps[(cid, wh)]
        ]

    async def __aenter__(self) -> MeterWatch:
        self.rig.charger._queue_meter = self._stamped  # type: ignore[method-assign]
        subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._subscribe(subscribed), name=f"{self.identifier}-subscriber")
        try:
            await asyncio.wait_for(subscribed.wait(), 5)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.rig.charger._queue_meter = self._original  # type: ignore[method-assign]


async def _measure(rig: _Rig, collect_s: float) -> dict[str, Any]:
    async with MeterWatch(rig, TOPIC, "bench-upstream") as watch:
        agent = await rig.spawn(rig.write_config("upstream"))
        await rig.wait_notify(agent)
        await rig.terminal_ready(agent)
        for cid in range(1, CHARGING + 1):
            await rig.start_session(agent, cid)
        start = len(watch.arrivals)
        await asyncio.sleep(collect_s)
        agent.check_alive()
        await agent.stop()
    samples = watch.samples(start)
    if len(samples) < MIN_SAMPLES:
        raise BenchError(f"only {len(samples)} meter samples (want ≥ {MIN_SAMPLES})")
    p99 = _percentile(samples, 99)
    return {
        "p50_ms": _ms(_percentile(samples, 50)),
        "p99_ms": _ms(p99),
        "max_ms": _ms(max(samples)),
        "samples": len(samples),
        "connectors_charging": CHARGING,
        "budget_p99_ms": BUDGET_METER_P99_MS,
        "within_budget": p99 * 1000 <= BUDGET_METER_P99_MS,
    }


async def _run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-upstream-") as tmp:
        workdir = Path(tmp)
        broker = LocalBroker(workdir)
        try:
            async with Simulator(SimConfig(family="apollo", seed=11)) as psp:
                psp_port = await psp.serve_tcp("127.0.0.1", 0)
                rig = _Rig(workdir, broker, psp, psp_port)
                try:
                    async with rig.charger:
                        await rig.charger.wait_connected(5)
                        figure = await _measure(rig, QUICK_COLLECT_S if quick else COLLECT_S)
                finally:
                    await rig.close()
        finally:
            broker.stop()
    return {
        "meter_to_upstream_at_broker": figure,
        "note": "charger simulator queue → bench subscriber, one Mosquitto on 127.0.0.1, real agent "
        "process; see hil/bench/upstream.py",
    }


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_run(quick))
