"""Cost growth (DESIGN.md §7): CPU and meter latency by number of connectors; RSS, start time and
journal size by number of sessions in the journal.

The rig of :mod:`hil.bench.agent` (Mosquitto on a free port, the Apollo PSP simulator over TCP, the
charger simulator, the real ``evpay-agent run`` process; charger and upstream share the one broker).

* **Connectors** (``CONNECTOR_COUNTS``: 1, 8, 32, 64; quick: 1, 8): a rig with N connectors, a
  session started on each (plug and tap, one after the other), meter values at 1 Hz, then
  ``SETTLE_S`` of settling and a ``WINDOW_S`` window. Agent CPU: the nanosecond CPU time of all its
  threads (``/proc/PID/task/*/schedstat``, as the idle figure of :mod:`hil.bench.agent`) over the
  window, in % of one core. Meter → upstream at the broker: :class:`hil.bench.upstream.MeterWatch`
  (the charger simulator's queue → the bench subscriber, paired by connector and register) for the
  readings that arrived in the window; p50/p99 by nearest rank. The simulator ticks all connectors
  at once, so every second a burst of N readings arrives. The 64-connector row carries the budget:
  CPU ≤ 3 % of one core (DESIGN.md §7).
* **Journal** (``SESSION_COUNTS``: 100, 1 000, 10 000; quick: 100, 1 000): the state dir of a fresh
  8-connector config is filled with N completed paid sessions through the agent's journal API
  (:mod:`hil.bench.journal_fill`, far faster than running them); then start → READY (median of
  ``READY_STARTS`` starts, the method of :mod:`hil.bench.agent`), one more start with
  ``REAL_SESSIONS`` real sessions (plug, tap, unplug, settled) and its ``VmRSS`` after them; the
  journal's size (``journal.sqlite3`` with its ``-wal``/``-shm``) and row counts are taken as found
  once that agent stopped — after whatever retention rule the agent applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.store.journal import JOURNAL_FILE
from hil.bench import journal_fill
from hil.bench.agent import (
    BenchError,
    _ms,
    _percentile,
    _proc_cpu_ns,
    _proc_status_kib,
    _Rig,
    _start_to_ready,
)
from hil.bench.upstream import MeterWatch
from hil.broker import LocalBroker
from hil.psp_sim import SimConfig, Simulator

# DESIGN.md §7: 64 connectors charging, meter at 1 Hz: CPU ≤ 3 % of one core
BUDGET_CPU_CONNECTORS = 64
BUDGET_CPU_PERCENT = 3.0
# DESIGN.md §7 "Cost growth": CPU/p99 at 1, 8, 32, 64 connectors; RSS and start time after 100,
# 1 000, 10 000 sessions
CONNECTOR_COUNTS = (1, 8, 32, 64)
QUICK_CONNECTOR_COUNTS = (1, 8)
SESSION_COUNTS = (100, 1_000, 10_000)
QUICK_SESSION_COUNTS = (100, 1_000)
JOURNAL_CONNECTORS = 8  # DESIGN.md §7: the RSS figure is for 8 connectors
WINDOW_S = 10.0
QUICK_WINDOW_S = 3.0
SETTLE_S = 2.0  # after the last session started: its first readings and retained state are out
QUICK_SETTLE_S = 1.0
READY_STARTS = 3
REAL_SESSIONS = 4
QUICK_REAL_SESSIONS = 2
TOPIC = "evpay/v1/BENCH-1/connectors/+/meter"


async def _connectors_row(workdir: Path, broker: LocalBroker, connectors: int, quick: bool) -> dict[str, Any]:
    base = workdir / f"connectors-{connectors}"
    base.mkdir()
    window_s = QUICK_WINDOW_S if quick else WINDOW_S
    async with Simulator(SimConfig(family="apollo", seed=13)) as psp:
        port = await psp.serve_tcp("127.0.0.1", 0)
        rig = _Rig(base, broker, psp, port, connectors=connectors)
        try:
            async with rig.charger:
                await rig.charger.wait_connected(5)
                async with MeterWatch(rig, TOPIC, f"bench-scaling-{connectors}") as watch:
                    agent = await rig.spawn(rig.write_config("agent"))
                    await rig.wait_notify(agent)
                    await rig.terminal_ready(agent)
                    for cid in rig.charger.connector_ids:
                        await rig.start_session(agent, cid)
                    await asyncio.sleep(QUICK_SETTLE_S if quick else SETTLE_S)
                    start, t0, cpu0 = len(watch.arrivals), time.monotonic(), _proc_cpu_ns(agent.pid)
                    await asyncio.sleep(window_s)
                    end, t1, cpu1 = len(watch.arrivals), time.monotonic(), _proc_cpu_ns(agent.pid)
                    agent.check_alive()
                    await agent.stop()
        finally:
            await rig.close()
    samples = watch.samples(start, end)
    if not samples:
        raise BenchError(f"{connectors} connectors: no meter samples in the window")
    window = t1 - t0
    cpu_percent = (cpu1 - cpu0) / 1e9 / window * 100
    row: dict[str, Any] = {
        "connectors": connectors,
        "agent_cpu_percent": round(cpu_percent, 3),
        "cpu_ms_per_reading": round((cpu1 - cpu0) / 1e6 / max(1, end - start), 3),
        "meter_to_upstream_p50_ms": _ms(_percentile(samples, 50)),
        "meter_to_upstream_p99_ms": _ms(_percentile(samples, 99)),
        "samples": len(samples),
        "readings_at_broker": end - start,
        "window_s": round(window, 2),
    }
    if connectors == BUDGET_CPU_CONNECTORS:
        row["budget_percent"] = BUDGET_CPU_PERCENT
        row["within_budget"] = cpu_percent <= BUDGET_CPU_PERCENT
    return row


def _journal_size(state_dir: Path) -> dict[str, Any]:
    """The journal as found: its files' bytes and the rows of its two tables (read-only)."""
    files = sorted(state_dir.glob(JOURNAL_FILE + "*"))
    uri = f"file:{state_dir / JOURNAL_FILE}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        payments = conn.execute("SELECT count(*) FROM payments").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return {
        "journal_mib": round(sum(f.stat().st_size for f in files) / 2**20, 3),
        "payments_rows": int(payments),
        "events_rows": int(events),
    }


async def _journal_row(rig: _Rig, sessions: int, quick: bool) -> dict[str, Any]:
    config = rig.write_config(f"journal-{sessions}")
    state_dir = config.parent / "state"
    t0 = time.monotonic()
    filled = await asyncio.to_thread(journal_fill.fill, config, sessions, rig.connectors)
    fill_s = time.monotonic() - t0
    rig.drain_notify()
    ready = await _start_to_ready(rig, READY_STARTS, config)

    rig.drain_notify()
    agent = await rig.spawn(config)
    await rig.wait_notify(agent)
    await rig.terminal_ready(agent)
    real = QUICK_REAL_SESSIONS if quick else REAL_SESSIONS
    commits = 0
    for i in range(real):
        session, _ = await rig.start_session(agent, i % rig.connectors + 1)
        commits += (await rig.end_session(agent, session))[2]
    await asyncio.sleep(1.0)  # the last confirmations journaled, nothing in flight
    agent.check_alive()
    rss_kib = _proc_status_kib(agent.pid, "VmRSS")
    hwm_kib = _proc_status_kib(agent.pid, "VmHWM")
    code = await agent.stop()
    if code != 0:
        raise BenchError(f"agent exited with {code} after SIGTERM:\n{agent.tail()}")
    return {
        "sessions_in_journal": sessions,
        "rss_mib": round(rss_kib / 1024, 2),
        "peak_rss_mib": round(hwm_kib / 1024, 2),
        "start_to_ready_median_ms": ready["median_ms"],
        "start_to_ready_max_ms": ready["max_ms"],
        "start_to_ready_samples": ready["samples"],
        "real_sessions": real,
        "commits": commits,
        "journal_mib_after_fill": round(filled.journal_bytes / 2**20, 3),
        **_journal_size(state_dir),  # at the end of the run
        "filled_from": filled.oldest_started_at,
        "filled_to": filled.newest_ended_at,
        "meters_per_filled_session": journal_fill.METERS_PER_SESSION,
        "fill_s": round(fill_s, 2),
    }


async def _journal_rows(workdir: Path, broker: LocalBroker, quick: bool) -> list[dict[str, Any]]:
    base = workdir / "journal"
    base.mkdir()
    async with Simulator(SimConfig(family="apollo", seed=17)) as psp:
        port = await psp.serve_tcp("127.0.0.1", 0)
        rig = _Rig(base, broker, psp, port, connectors=JOURNAL_CONNECTORS)
        observer = asyncio.create_task(rig.observe_unplugs(), name="bench-scaling-unplug-observer")
        try:
            async with rig.charger:
                await rig.charger.wait_connected(5)
                await asyncio.wait_for(rig.observing.wait(), 5)
                counts = QUICK_SESSION_COUNTS if quick else SESSION_COUNTS
                return [await _journal_row(rig, n, quick) for n in counts]
        finally:
            observer.cancel()
            await asyncio.gather(observer, return_exceptions=True)
            await rig.close()


async def _run(quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        workdir = Path(tmp)
        broker = LocalBroker(workdir)
        try:
            counts = QUICK_CONNECTOR_COUNTS if quick else CONNECTOR_COUNTS
            connectors = []
            for n in counts:
                connectors.append(await _connectors_row(workdir, broker, n, quick))
                broker.restart()  # no persistence: the next rig meets none of this one's retained topics
            journal = await _journal_rows(workdir, broker, quick)
        finally:
            broker.stop()
    return {
        "connectors_charging_1hz": connectors,
        "journal_growth": journal,
        "bench_duration_s": round(time.monotonic() - started, 1),
        "note": "real `evpay-agent run` process, one Mosquitto, PSP and charger simulators; CPU from "
        "/proc/PID/task/*/schedstat over the window, latency charger simulator queue → bench "
        "subscriber, percentiles by nearest rank; journals filled through the agent's journal API "
        "(hil/bench/journal_fill.py); see hil/bench/scaling.py",
    }


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_run(quick))
