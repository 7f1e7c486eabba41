"""``python -m hil.bench.profile {meter,card} [--tool T] [--connectors N] [--seconds S] [--out DIR]``

Profile the real agent process under the bench's load (docs/performance.md). The rig is the one of
:mod:`hil.bench.agent` (Mosquitto on a free port, the Apollo PSP simulator, the charger simulator,
the agent started as ``python -m agent run -c FILE``); nothing in the agent is patched.

* ``meter``: ``--connectors`` sessions are started (plug and tap), then meter values flow at 1 Hz for
  ``--seconds``; latency is the charger simulator's queue → the upstream meter message at a bench
  subscriber, paired by (connector, register) as :mod:`hil.bench.upstream` does.
* ``card``: ``--seconds`` is the number of sessions, round-robin over the connectors with at most
  ``connectors - 1`` charging (the method of :mod:`hil.bench.agent`); card read → Auth Session and
  unplug → Commit Session as there.

``--tool``: ``none`` (latency and CPU only), ``cprofile`` (the agent runs under ``python -m cProfile
-o DIR/cprofile-PATH.prof``; written at its SIGTERM exit), ``pyspy`` (``py-spy record -f raw`` attached
after the sessions started, needs ``pip install py-spy``), ``strace`` (``strace -f -tt -T`` of the
file-sync, write and socket calls, attached likewise). CPU is the agent's ``/proc/PID/task/*/schedstat``
over the window. Prints one JSON object. Percentiles by nearest rank.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import hil.bench.agent as bench_agent
from hil.bench.agent import BenchError, _percentile, _proc_cpu_ns, _Rig, _Session
from hil.bench.upstream import MeterWatch
from hil.broker import LocalBroker
from hil.psp_sim import SimConfig, Simulator

TOOLS = ("none", "cprofile", "pyspy", "strace")
STRACE_CALLS = "trace=fsync,fdatasync,pwrite64,write,sendto,recvfrom,read"
METER_TOPIC = "evpay/v1/BENCH-1/connectors/+/meter"


class _Profiler:
    """The tool attached to (or wrapped around) the agent process."""

    def __init__(self, tool: str, path: str, out: Path, seconds: float) -> None:
        self.tool = tool
        self.path = path
        self.out = out
        self.seconds = seconds
        self._proc: asyncio.subprocess.Process | None = None

    def agent_command(self) -> list[str]:
        if self.tool == "cprofile":
            target = self.out / f"cprofile-{self.path}.prof"
            return [sys.executable, "-m", "cProfile", "-o", str(target), "-m", "agent"]
        return [sys.executable, "-m", "agent"]

    async def attach(self, pid: int) -> None:
        if self.tool == "pyspy":
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            cmd = [pyspy, "record", "-p", str(pid), "-r", "500", "-f", "raw"]
            cmd += ["-o", str(self.out / f"pyspy-{self.path}.txt"), "-d", str(max(1, int(self.seconds)))]
        elif self.tool == "strace":
            cmd = ["strace", "-f", "-tt", "-T", "-e", STRACE_CALLS, "-p", str(pid)]
            cmd += ["-o", str(self.out / f"strace-{self.path}.txt")]
        else:
            return
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.sleep(0.5)  # let the tool attach before the window starts

    async def detach(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None and self.tool == "strace":
            proc.send_signal(signal.SIGINT)
        await proc.wait()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def _meter(rig: _Rig, prof: _Profiler, connectors: int, seconds: float) -> dict[str, Any]:
    async with MeterWatch(rig, METER_TOPIC, "profile-upstream") as watch:
        agent = await rig.spawn(rig.write_config("meter"))
        await rig.wait_notify(agent)
        await rig.terminal_ready(agent)
        for cid in range(1, connectors + 1):
            await rig.start_session(agent, cid)
        await asyncio.sleep(1.0)
        await prof.attach(agent.pid)
        start, t0, cpu0 = len(watch.arrivals), time.monotonic(), _proc_cpu_ns(agent.pid)
        await asyncio.sleep(seconds)
        end, t1, cpu1 = len(watch.arrivals), time.monotonic(), _proc_cpu_ns(agent.pid)
        await prof.detach()
        agent.check_alive()
        await agent.stop()
    samples = watch.samples(start, end)
    if not samples:
        raise BenchError("no meter samples in the window")
    return {
        "connectors_charging": connectors,
        "window_s": round(t1 - t0, 2),
        "readings_at_broker": end - start,
        "agent_cpu_percent": round((cpu1 - cpu0) / 1e9 / (t1 - t0) * 100, 3),
        "cpu_ms_per_reading": round((cpu1 - cpu0) / 1e6 / max(1, end - start), 3),
        "meter_to_upstream_p50_ms": _ms(_percentile(samples, 50)),
        "meter_to_upstream_p99_ms": _ms(_percentile(samples, 99)),
        "samples": len(samples),
    }


async def _card(rig: _Rig, prof: _Profiler, connectors: int, sessions: int) -> dict[str, Any]:
    agent = await rig.spawn(rig.write_config("card"))
    await rig.wait_notify(agent)
    await rig.terminal_ready(agent)
    await asyncio.sleep(0.5)
    await prof.attach(agent.pid)
    t0, cpu0 = time.monotonic(), _proc_cpu_ns(agent.pid)
    auth: list[float] = []
    commit: list[float] = []
    charging: deque[_Session] = deque()
    for i in range(sessions):
        if len(charging) >= connectors - 1:
            commit.append((await rig.end_session(agent, charging.popleft()))[0])
        session, latency = await rig.start_session(agent, i % connectors + 1, early_tap=i % 10 == 9)
        charging.append(session)
        auth.append(latency)
    while charging:
        commit.append((await rig.end_session(agent, charging.popleft()))[0])
    t1, cpu1 = time.monotonic(), _proc_cpu_ns(agent.pid)
    await prof.detach()
    await agent.stop()
    return {
        "sessions": sessions,
        "connectors": connectors,
        "window_s": round(t1 - t0, 2),
        "agent_cpu_percent": round((cpu1 - cpu0) / 1e9 / (t1 - t0) * 100, 3),
        "card_read_to_auth_session_p50_ms": _ms(_percentile(auth, 50)),
        "card_read_to_auth_session_p99_ms": _ms(_percentile(auth, 99)),
        "unplug_to_commit_session_p50_ms": _ms(_percentile(commit, 50)),
        "unplug_to_commit_session_p99_ms": _ms(_percentile(commit, 99)),
    }


async def _run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    prof = _Profiler(args.tool, args.path, out, args.seconds)
    command = bench_agent._agent_command
    bench_agent._agent_command = prof.agent_command
    try:
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
            broker = LocalBroker(Path(tmp))
            try:
                async with Simulator(SimConfig(family="apollo", seed=11)) as psp:
                    port = await psp.serve_tcp("127.0.0.1", 0)
                    rig = _Rig(Path(tmp), broker, psp, port, connectors=args.connectors)
                    observer = asyncio.create_task(rig.observe_unplugs(), name="profile-unplug-observer")
                    try:
                        async with rig.charger:
                            await rig.charger.wait_connected(5)
                            await asyncio.wait_for(rig.observing.wait(), 5)
                            if args.path == "meter":
                                result = await _meter(rig, prof, args.connectors, args.seconds)
                            else:
                                result = await _card(rig, prof, args.connectors, int(args.seconds))
                    finally:
                        await prof.detach()
                        observer.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await observer
                        await rig.close()
            finally:
                broker.stop()
    finally:
        bench_agent._agent_command = command
    result.update(path=args.path, tool=args.tool, out=str(out))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("path", choices=("meter", "card"))
    parser.add_argument("--tool", choices=TOOLS, default="none")
    parser.add_argument("--connectors", type=int, default=bench_agent.CONNECTORS)
    parser.add_argument("--seconds", type=float, default=20.0, help="meter: window (s); card: sessions")
    parser.add_argument(
        "--out",
        default=str(Path(tempfile.gettempdir()) / "evpay-bench-profile"),
        help="directory for the tool's output (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    json.dump(asyncio.run(_run(args, out)), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
