"""DESIGN.md §7: charger meter reading → upstream meter message at the broker, p50/p99 (≤ 10 ms).

The rig of :mod:`hil.bench.agent` (Mosquitto on a free port, PSP simulator, charger simulator with 8
connectors, the real ``evpay-agent run`` process; here the charger and the upstream share the one
broker). ``CHARGING`` sessions are started (plug and tap); meanwhile:

* every meter value the charger simulator queues for publishing is timestamped (``time.monotonic``
  right before it is handed to its MQTT publisher: conservative, the simulator's own hand-over is
  included);
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

BUDGET_METER_P99_MS = 10.0
CHARGING = 8
MIN_SAMPLES = 50
COLLECT_S = 20.0
QUICK_COLLECT_S = 8.0
TOPIC = "evpay/v1/BENCH-1/connectors/+/meter"


async def _measure(rig: _Rig, collect_s: float) -> dict[str, Any]:
    charger_stamps: dict[tuple[int, int], float] = {}
    original = rig.charger._queue_meter

    def stamped(c: Any) -> None:
        charger_stamps.setdefault((c.connector_id, int(c.energy_wh)), time.monotonic())
        original(c)

    rig.charger._queue_meter = stamped  # type: ignore[method-assign]
    arrivals: list[tuple[int, int, float]] = []
    subscribed = asyncio.Event()

    async def subscribe() -> None:
        async with aiomqtt.Client("127.0.0.1", rig.broker.port, identifier="bench-upstream") as client:
            await client.subscribe(TOPIC, qos=1)
            subscribed.set()
            async for message in client.messages:
                stamp = time.monotonic()
                assert isinstance(message.payload, bytes)
                body = msgspec.json.decode(message.payload)
                arrivals.append((int(body["connector_id"]), int(body["meter_wh"]), stamp))

    task = asyncio.create_task(subscribe(), name="bench-upstream-subscriber")
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        agent = await rig.spawn(rig.write_config("upstream"))
        await rig.wait_notify(agent)
        await rig.terminal_ready(agent)
        for cid in range(1, CHARGING + 1):
            await rig.start_session(agent, cid)
        start = len(arrivals)
        await asyncio.sleep(collect_s)
        agent.check_alive()
        await agent.stop()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        rig.charger._queue_meter = original  # type: ignore[method-assign]
    samples = [
        stamp - charger_stamps[(cid, wh)]
        for cid, wh, stamp in arrivals[start:]
        if (cid, wh) in charger_stamps and stamp >= charger_stamps[(cid, wh)]
    ]
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
