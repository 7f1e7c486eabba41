"""``python -m hil.bench fleet --stations N``: a fleet of stations against one upstream broker (issue 12).

N real ``evpay-agent run`` processes, each with its own PSP terminal simulator (Apollo, TCP) and its
own charger simulator (one connector, charging at 11 kW, meter at 1 Hz), all publishing upstream to
**one** Mosquitto; the chargers share a second Mosquitto (the charger side is local to each
controller in the field, so it stays up). Then:

1. **steady state**: every station online and charging; the upstream broker's message rate;
2. **outage**: the upstream broker is stopped for ``--outage`` seconds (default 10); the stations
   keep charging and queue their meter values (``offline: true``) in their outboxes;
3. **restart**: the broker starts again on the same port and the bench's subscriber reconnects
   at once (within a few ms; a station that reconnects even earlier is still seen through its
   retained birth message). Measured from the moment the broker accepts connections:

   * **reconnect spread**: when each station's birth (``{prefix}/status`` ``online``) arrives —
     min / median / p90 / max, and the most stations that reconnected within any 100 ms window
     (the thundering-herd figure: with the client's jittered exponential backoff, uniform in
     ``[0.5, 1] x`` the capped step, the reconnects spread over seconds instead of one instant);
   * **backlog drained**: for each station, the arrival of its first meter value created after
     the reconnection (``offline: false``); its outbox publishes in insertion order, so everything
     it queued during the outage has arrived before it. The figure is the time until *every*
     station is drained;
   * **broker message rate**: PUBLISH packets received by the broker per second
     (``$SYS/broker/publish/messages/received``, ``sys_interval 1``), its peak during the drain
     and its mean in the steady state; plus what the bench subscriber received.

Nothing here is a budget of DESIGN.md §7; ``ok`` says that every station reconnected, drained,
stayed alive and logged no traceback. Percentiles by nearest rank. The figures are written down in
README.md ("Fleet").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec

from hil.bench.agent import CONFIG, EV_POWER_W, BenchError, _Agent, _ms, _percentile
from hil.broker import LocalBroker
from hil.charger_sim import ChargerSimulator
from hil.psp_sim import Card, SimConfig, Simulator

DEFAULT_STATIONS = 50
DEFAULT_OUTAGE_S = 10.0
STEADY_S = 10.0
HERD_WINDOW_S = 0.1
WAIT_S = 60.0  # start-up of the whole fleet, and reconnect + drain after the restart
STOP_TIMEOUT_S = 20.0
SYS_TOPIC = "$SYS/broker/publish/messages/received"
CONNECTOR = 1


@dataclass
class _Station:
    index: int
    workdir: Path
    psp: Simulator
    psp_port: int
    charger: ChargerSimulator
    agent: _Agent | None = None

    @property
    def station_id(self) -> str:
        return _station_id(self.index)


def _station_id(index: int) -> str:
    return f"FLEET-{index:03d}"


@dataclass
class _Observer:
    """The bench's subscriber on the upstream broker: births, meter values, the $SYS counter."""

    online: dict[str, list[float]] = field(default_factory=dict)  # station -> arrival times
    live_meter: dict[str, list[float]] = field(default_factory=dict)  # offline: false
    offline_meter: dict[str, int] = field(default_factory=dict)
    received: list[float] = field(default_factory=list)
    sys_counter: list[tuple[float, int]] = field(default_factory=list)

    def handle(self, message: aiomqtt.Message) -> None:
        stamp = time.monotonic()
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if topic == SYS_TOPIC:
            with contextlib.suppress(ValueError):
                self.sys_counter.append((stamp, int(payload)))
            return
        self.received.append(stamp)
        levels = topic.split("/")  # evpay/v1/{station}/status | evpay/v1/{station}/connectors/1/meter
        station = levels[2]
        if levels[3] == "status":
            if b'"online"' in payload:
                self.online.setdefault(station, []).append(stamp)
        elif levels[-1] == "meter":
            body = msgspec.json.decode(payload)
            if body.get("offline"):
                self.offline_meter[station] = self.offline_meter.get(station, 0) + 1
            else:
                self.live_meter.setdefault(station, []).append(stamp)

    async def run(self, port: int, connected: asyncio.Event) -> None:
        """Subscribe; reconnect at once (every 5 ms) when the broker goes away."""
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier="bench-fleet-observer") as client:
                    await client.subscribe([("evpay/v1/+/status", 1), ("evpay/v1/+/connectors/+/meter", 1)])
                    await client.subscribe(SYS_TOPIC, qos=0)
                    connected.set()
                    async for message in client.messages:
                        self.handle(message)
            except aiomqtt.MqttError:
                connected.clear()
                await asyncio.sleep(0.005)


def _write_config(station: _Station, charger_url: str, upstream_url: str) -> Path:
    path = station.workdir / "agent.yaml"
    path.write_text(
        CONFIG.format(
            station_id=station.station_id,
            state_dir=station.workdir / "state",
            psp_port=station.psp_port,
            charger_url=charger_url,
            charger_prefix=f"charger/{station.station_id}",
            upstream_url=upstream_url,
            connectors=f"  - id: {CONNECTOR}\n    max_current_a: 32",
        ),
        encoding="utf-8",
    )
    return path


async def _spawn(station: _Station, config: Path) -> _Agent:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "EVPAY_CRASH_AT")}
    return await _Agent.spawn(config, station.workdir / "agent.log", env)


async def _until(stations: list[_Station], predicate: Any, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for station in stations:
            assert station.agent is not None
            station.agent.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"fleet: timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.01)


def _spread(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    herd = max(
        (sum(1 for u in ordered[i:] if u - t < HERD_WINDOW_S) for i, t in enumerate(ordered)), default=0
    )
    return {
        "min_s": round(ordered[0], 3),
        "p50_s": round(_percentile(ordered, 50), 3),
        "p90_s": round(_percentile(ordered, 90), 3),
        "max_s": round(ordered[-1], 3),
        "max_per_100ms": herd,
    }


def _rate(counter: list[tuple[float, int]], start: float, end: float) -> tuple[float, float]:
    """(mean, peak) PUBLISH/s from the broker's cumulative counter between ``start`` and ``end``."""
    points = [(t, n) for t, n in counter if start <= t <= end]
    rates = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in itertools.pairwise(points) if t1 > t0]
    if len(points) < 2:
        return 0.0, 0.0
    mean = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
    return round(mean, 1), round(max(rates), 1)


def _tracebacks(stations: list[_Station]) -> list[str]:
    return [s.station_id for s in stations if s.agent is not None and "Traceback" in s.agent.tail(10**7)]


async def _fleet(n: int, outage_s: float, workdir: Path) -> dict[str, Any]:
    (workdir / "upstream").mkdir()
    (workdir / "charger").mkdir()
    upstream = LocalBroker(workdir / "upstream", extra_config="sys_interval 1\nmax_queued_messages 0\n")
    charger_broker = LocalBroker(workdir / "charger")
    stations: list[_Station] = []
    observer = _Observer()
    observing = asyncio.Event()
    observer_task: asyncio.Task[None] | None = None
    try:
        for i in range(1, n + 1):
            psp = Simulator(SimConfig(family="apollo", seed=i))
            await psp.__aenter__()
            port = await psp.serve_tcp("127.0.0.1", 0)
            base = workdir / f"station-{i:03d}"
            base.mkdir()
            charger = ChargerSimulator(
                charger_broker.url,
                connectors=1,
                prefix=f"charger/{_station_id(i)}",
                client_id=f"charger-sim-{_station_id(i)}",
                reconnect_delay_s=0.05,
            )
            charger.set_power(CONNECTOR, EV_POWER_W)
            station = _Station(i, base, psp, port, charger)
            await station.charger.__aenter__()
            stations.append(station)
        observer_task = asyncio.create_task(observer.run(upstream.port, observing), name="fleet-observer")
        await asyncio.wait_for(observing.wait(), 5)
        spawn_start = time.monotonic()
        for station in stations:
            station.agent = await _spawn(station, _write_config(station, charger_broker.url, upstream.url))
        await _until(stations, lambda: len(observer.online) == n, "every station online")
        all_online_s = time.monotonic() - spawn_start
        for station in stations:  # the card is held at the reader, then the EV plugs in
            station.psp.tap(Card.emv(card_hash=f"{station.index:040X}", masked_pan="476173******0010"))
            station.charger.plug(CONNECTOR)
        await _until(
            stations, lambda: all(s.charger.state(CONNECTOR).enabled for s in stations), "every EV charging"
        )
        await _until(stations, lambda: len(observer.live_meter) == n, "meter values from every station")
        steady_start = time.monotonic()
        received_before = len(observer.received)
        await asyncio.sleep(STEADY_S)
        steady_end = time.monotonic()
        steady_received = (len(observer.received) - received_before) / (steady_end - steady_start)
        steady_mean, _ = _rate(observer.sys_counter, steady_start, steady_end)

        upstream.stop()  # the outage
        await asyncio.sleep(outage_s)
        online_before = {s: len(t) for s, t in observer.online.items()}
        live_before = {s: len(t) for s, t in observer.live_meter.items()}
        offline_before = sum(observer.offline_meter.values())
        received_before = len(observer.received)
        upstream.start()
        t0 = time.monotonic()
        await asyncio.wait_for(observing.wait(), 5)
        observer_after_s = time.monotonic() - t0

        def reconnected() -> list[float]:
            return [
                t[online_before.get(s, 0)] - t0
                for s, t in observer.online.items()
                if len(t) > online_before.get(s, 0)
            ]

        def drained() -> list[float]:
            return [
                t[live_before.get(s, 0)] - t0
                for s, t in observer.live_meter.items()
                if len(t) > live_before.get(s, 0)
            ]

        await _until(stations, lambda: len(reconnected()) == n, "every station reconnected")
        await _until(stations, lambda: len(drained()) == n, "every station's backlog drained")
        drain_end = time.monotonic()
        reconnects, drains = reconnected(), drained()
        await asyncio.sleep(1.5)  # one more $SYS sample after the drain
        drain_mean, drain_peak = _rate(observer.sys_counter, t0, drain_end + 1.0)
        backlog = sum(observer.offline_meter.values()) - offline_before
        received_during = len(observer.received) - received_before
        alive = sum(1 for s in stations if s.agent is not None and s.agent.proc.returncode is None)
        codes = await asyncio.gather(*(s.agent.stop() for s in stations if s.agent is not None))
        tracebacks = _tracebacks(stations)
    finally:
        if observer_task is not None:
            observer_task.cancel()
            await asyncio.gather(observer_task, return_exceptions=True)
        for station in stations:
            if station.agent is not None and station.agent.proc.returncode is None:
                station.agent.proc.kill()
                await station.agent.proc.wait()
            with contextlib.suppress(Exception):
                await station.charger.__aexit__(None, None, None)
            with contextlib.suppress(Exception):
                await station.psp.close()
        upstream.stop()
        charger_broker.stop()
    return {
        "stations": n,
        "connectors_per_station": 1,
        "outage_s": outage_s,
        "fleet_start_to_all_online_s": round(all_online_s, 3),
        "observer_reconnected_after_ms": _ms(observer_after_s),
        "reconnect_after_restart": _spread(reconnects),
        "backlog_drained_after_restart": _spread(drains),
        "all_drained_after_s": round(max(drains), 3),
        "backlog_meter_messages": backlog,
        "messages_received_by_bench_during_drain": received_during,
        "broker_publish_rate_steady_per_s": steady_mean,
        "bench_received_rate_steady_per_s": round(steady_received, 1),
        "broker_publish_rate_drain_mean_per_s": drain_mean,
        "broker_publish_rate_drain_peak_per_s": drain_peak,
        "agents_alive_at_end": alive,
        "agent_exit_codes_nonzero": sum(1 for c in codes if c != 0),
        "agents_with_traceback": tracebacks,
        "ok": alive == n and not tracebacks and all(c == 0 for c in codes),
        "note": "real agent processes, one upstream Mosquitto restarted after the outage, one charger "
        "Mosquitto; times from the moment the restarted broker accepts connections; see "
        "hil/bench/fleet.py",
    }


def run(stations: int = DEFAULT_STATIONS, outage_s: float = DEFAULT_OUTAGE_S) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        return asyncio.run(_fleet(stations, outage_s, Path(tmp)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.bench fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--stations", type=int, default=DEFAULT_STATIONS, help="agent processes (default 50)")
    parser.add_argument("--outage", type=float, default=DEFAULT_OUTAGE_S, help="broker down for S seconds")
    args = parser.parse_args(argv)
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)  # the observer's "broken pipe" at the outage
    if args.stations < 1 or args.outage <= 0:
        parser.error("--stations must be >= 1 and --outage > 0")
    result = {"fleet": run(args.stations, args.outage)}
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result["fleet"]["ok"] else 1
