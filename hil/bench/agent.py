"""Agent-level figures of DESIGN.md §7, measured on the real ``evpay-agent run`` process.

Everything runs on this machine and is started and stopped here: a Mosquitto on a free 127.0.0.1
port, the PSP terminal simulator (Apollo, TCP on 127.0.0.1, the real terminal's timers: 50 ms
acquirer round trip, 20 s idle close) and the charger simulator (8 connectors, meter every 1 s;
its energy physics run 360 times faster so that every session has a non-zero amount to commit). The
agent is the installed ``evpay-agent run -c FILE`` in its own process; its config is plug-and-tap
(``start_modes: [plug_in]``, ``stop_modes: [unplug]``), log level ``info`` to a file.

Latencies are taken at the wire, in this process, with ``time.monotonic``: the simulator's
``sent``/``received`` lists are replaced by lists that timestamp every append (bench side; the
simulator is unchanged). ``sent`` is appended when a frame is queued for the link writer — just
*before* its bytes are written — and ``received`` right *after* a frame was read and decoded, so
both figures are conservative (they include the simulator's own hand-over). An unplug is
timestamped right before ``ChargerSimulator.unplug`` queues the MQTT publish.

* card read → Auth Session: the Card Read frame queued by the simulator → the Auth Session frame
  received. Includes the agent's journal write (fsync) of ``card_read`` before it authorizes.
* unplug → Commit Session: unplug published → Commit Session received; includes the MQTT hops
  (plug, status and the final meter value the agent waits for) and three fsync'd journal writes
  (``stop``, ``meter``, ``commit``).
* Both from ``SESSIONS`` complete sessions spread round-robin over 8 connectors, up to 7 charging
  at once (a connector is re-plugged one session after its unplug; their 1 Hz meter values are
  journaled meanwhile); p50/p99 by nearest rank. Budgets (DESIGN.md §7): p99 ≤ 3 ms and ≤ 10 ms.
* RSS: ``VmRSS`` of the agent process after those sessions (all settled); budget ≤ 34 MiB.
* idle CPU: that process afterwards, nothing plugged, the terminal connected (keep-alive Get Status
  every 10 s): ``utime+stime`` of ``/proc/PID/stat`` over the window (10 ms ticks), and the
  nanosecond CPU time of all its threads from ``/proc/PID/task/*/schedstat``; the verdict takes the
  larger of the two; budget ≤ 0.2 % of one core.
* start → READY: spawn of ``evpay-agent run`` → ``READY=1`` on our ``NOTIFY_SOCKET`` (the journal
  exists, the simulators and the broker run); median of several starts, each stopped with SIGTERM;
  budget ≤ 250 ms.
* restart → pending settlements sent: 8 sessions charging, the terminal's replies held, all 8
  unplugged; ``EVPAY_CRASH_AT=journal:commit#8`` SIGKILLs the agent right after the 8th Commit
  decision was journaled (the terminal has at most the first Commit, unanswered). Restart → the
  simulator has received a Commit or Void for every one of the 8 terminal session ids; measured from
  the spawn of the new process (Python start-up included); budget ≤ 2 s.

The rig (:class:`_Rig`) takes the number of connectors (default ``CONNECTORS``, 8) for the
profiling tool and the cost-growth figures (:mod:`hil.bench.profile`, :mod:`hil.bench.scaling`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt

from agent.store.journal import read_payments
from drivers.psp.messages import (
    AuthSession,
    CardRead,
    CommitSession,
    GetStatus,
    GetStatusResponse,
    PspState,
    StartSession,
    VoidSession,
)
from hil.broker import LocalBroker
from hil.charger_sim import ChargerSimulator
from hil.psp_sim import Card, SimConfig, Simulator

# DESIGN.md §7 (second set of budgets, issue 12)
BUDGET_AUTH_P99_MS = 3.0
BUDGET_COMMIT_P99_MS = 10.0
BUDGET_RSS_MIB = 34.0
BUDGET_IDLE_CPU_PERCENT = 0.2
BUDGET_READY_MS = 250.0
BUDGET_RESTART_MS = 2000.0

CONNECTORS = 8  # the rig's default: the figures of this module are for 8 connectors (DESIGN.md §7)
SESSIONS = 100
QUICK_SESSIONS = 20
EARLY_TAP_EVERY = 10  # every 10th session: the card is already at the reader when the read starts
PENDING = 8  # payments left to settle by the restart
ENERGY_SPEEDUP = 360.0  # charger physics only: 11 kW for 1 s = 1.1 kWh
EV_POWER_W = 11000.0
WAIT_S = 10.0  # any single step of the bench
STOP_TIMEOUT_S = 15.0
CRASH_POINT = f"journal:commit#{PENDING}"

CONFIG = """\
station_id: {station_id}
state_dir: {state_dir}
log_level: info
terminal:
  url: tcp://127.0.0.1:{psp_port}
  family: apollo
charger:
  broker_url: {charger_url}
  prefix: {charger_prefix}
connectors:
{connectors}
session:
  start_modes: [plug_in]
  stop_modes: [unplug]
authorization:
  amount_minor: 5000
tariff:
  currency: EUR
  prices_include_vat: true
  vat_rate_percent: "21"
  energy_per_kwh: "0.40"
upstream:
  broker_url: {upstream_url}
"""
STATION_ID = "BENCH-1"
CHARGER_PREFIX = "charger"  # the simulator's default prefix

T = TypeVar("T")


class BenchError(RuntimeError):
    """The bench could not take a figure (a step timed out, the agent died, …)."""


class _Stamped(list[T]):
    """A list that records ``time.monotonic()`` of every append (the simulator's frame logs)."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        super().__init__(items)
        self.times: list[float] = [math.nan] * len(self)

    def append(self, item: T) -> None:
        self.times.append(time.monotonic())
        super().append(item)


# -- helpers -------------------------------------------------------------------------------------


def _agent_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m agent``."""
    script = Path(sys.executable).parent / "evpay-agent"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "agent"]


def _percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def _until(predicate: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.002)


def _proc_cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def _proc_cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def _proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"{key} not in /proc/{pid}/status")


# -- the rig: broker, simulators, agent processes ------------------------------------------------


class _Agent:
    """One ``evpay-agent run`` process; stderr goes to a log file (its tail is in errors)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path, spawned_at: float) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log = log
        self.spawned_at = spawned_at

    @classmethod
    async def spawn(cls, config: Path, log: Path, env: dict[str, str]) -> _Agent:
        """``evpay-agent run -c config`` with ``env``; its stderr goes to ``log``."""
        with log.open("wb") as stderr:
            spawned_at = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *_agent_command(),
                "run",
                "-c",
                str(config),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        return cls(proc, log, spawned_at)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise BenchError(f"agent exited with {self.proc.returncode}:\n{self.tail()}")

    async def stop(self) -> int:
        """SIGTERM (graceful drain) and wait; SIGKILL when it does not exit in time."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


@dataclass
class _Session:
    connector_id: int
    session_id: int


class _Rig:
    def __init__(
        self, workdir: Path, broker: LocalBroker, psp: Simulator, psp_port: int, connectors: int = CONNECTORS
    ) -> None:
        self.workdir = workdir
        self.connectors = connectors
        self.broker = broker
        self.psp = psp
        self.psp_port = psp_port
        self.sent: _Stamped[Any] = _Stamped(psp.sent)
        self.received: _Stamped[Any] = _Stamped(psp.received)
        psp.sent = self.sent
        psp.received = self.received
        self.charger = ChargerSimulator(
            broker.url,
            connectors=connectors,
            reconnect_delay_s=0.05,
            monotonic=lambda: time.monotonic() * ENERGY_SPEEDUP,
        )
        for cid in self.charger.connector_ids:
            self.charger.set_power(cid, EV_POWER_W)
        self.notify_path = workdir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.agents: list[_Agent] = []
        self._cards = 0
        self.observing = asyncio.Event()
        self.unplugs: list[tuple[int, float]] = []  # (connector, monotonic) seen at the broker

    async def observe_unplugs(self) -> None:
        """Timestamp every ``plugged: false`` as the broker forwards it (what the agent receives)."""
        topic = self.charger.topics.subscription("plug")
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier="bench-observer") as client:
            await client.subscribe(topic, qos=1)
            self.observing.set()
            async for message in client.messages:
                stamp = time.monotonic()
                payload = message.payload
                if isinstance(payload, bytes) and b'"plugged":false' in payload.replace(b" ", b""):
                    cid = int(message.topic.value.split("/")[-2])
                    self.unplugs.append((cid, stamp))

    def write_config(self, name: str) -> Path:
        base = self.workdir / name
        base.mkdir()
        connectors = "".join(f"  - id: {c}\n    max_current_a: 32\n" for c in self.charger.connector_ids)
        path = base / "agent.yaml"
        path.write_text(
            CONFIG.format(
                station_id=STATION_ID,
                state_dir=base / "state",
                psp_port=self.psp_port,
                charger_url=self.broker.url,
                charger_prefix=CHARGER_PREFIX,
                upstream_url=self.broker.url,
                connectors=connectors.rstrip("\n"),
            ),
            encoding="utf-8",
        )
        return path

    async def spawn(self, config: Path, crash_at: str | None = None) -> _Agent:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        env.pop("EVPAY_CRASH_AT", None)
        if crash_at is not None:
            env["EVPAY_CRASH_AT"] = crash_at
        agent = await _Agent.spawn(config, self.workdir / f"agent-{len(self.agents) + 1}.log", env)
        self.agents.append(agent)
        return agent

    async def wait_notify(self, agent: _Agent, state: bytes = b"READY=1") -> float:
        """Wait for ``state`` on the notify socket; returns its arrival time (monotonic)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"no {state.decode()} within {WAIT_S:g} s:\n{agent.tail()}")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.notify, 256), min(remaining, 0.5))
            except TimeoutError:
                agent.check_alive()
                continue
            if state in data.split(b"\n"):
                return time.monotonic()

    def drain_notify(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.notify.recv(256)

    async def terminal_ready(self, agent: _Agent) -> None:
        """The agent's PSP link is set up (Enable received) and the simulator is idle."""
        await self._agent_until(agent, lambda: self.psp.state is PspState.ENABLED, "terminal enabled")

    async def _agent_until(self, agent: _Agent, predicate: Callable[[], object], what: str) -> None:
        def done() -> object:
            agent.check_alive()
            return predicate()

        try:
            await _until(done, what)
        except BenchError as exc:
            raise BenchError(f"{exc}\nagent log tail:\n{agent.tail()}") from None

    def _card(self) -> Card:
        self._cards += 1
        return Card.emv(card_hash=f"{self._cards:040X}", masked_pan="476173******0010")

    async def start_session(
        self, agent: _Agent, cid: int, *, early_tap: bool = False
    ) -> tuple[_Session, float]:
        """Plug in, tap: returns the session and card read → Auth Session (s).

        The card is tapped once the agent's Start Session is confirmed (its Get Status answered), or,
        with ``early_tap``, held at the reader before the plug-in, so that the terminal reads it at
        once when the card read starts (while the driver still waits out the Start Session window).
        """
        n_sent, n_received = len(self.sent), len(self.received)
        if early_tap and self.psp.tap(self._card()) != "queued":
            raise BenchError("the simulator read a card without a card read running")
        self.charger.plug(cid)
        if not early_tap:

            def start_confirmed() -> bool:
                starts = [i for i, m in enumerate(self.received[n_received:]) if isinstance(m, StartSession)]
                return bool(starts) and any(
                    isinstance(m, GetStatus) for m in self.received[n_received + starts[0] + 1 :]
                )

            await self._agent_until(agent, start_confirmed, f"card read on {cid}")
            await self._agent_until(
                agent, lambda: isinstance(self.sent[-1], GetStatusResponse), "Get Status answered"
            )
            if self.psp.state is not PspState.WAIT_CARD:
                raise BenchError(f"card read on {cid}: terminal in {self.psp.state.name}")
            if self.psp.tap(self._card()) != "read":
                raise BenchError("the simulator did not read the card at once")
        await self._agent_until(
            agent, lambda: any(isinstance(m, CardRead) for m in self.sent[n_sent:]), "Card Read"
        )
        t_card = next(t for m, t in self._since(self.sent, n_sent) if isinstance(m, CardRead))
        await self._agent_until(
            agent, lambda: any(isinstance(m, AuthSession) for m in self.received[n_received:]), "Auth Session"
        )
        t_auth = next(t for m, t in self._since(self.received, n_received) if isinstance(m, AuthSession))
        await self._agent_until(agent, lambda: self.charger.state(cid).enabled, f"energy on {cid}")
        session_id = next(reversed(self.psp.sessions))  # the newest simulator session is this one
        return _Session(cid, session_id), t_auth - t_card

    async def end_session(self, agent: _Agent, session: _Session) -> tuple[float, float, bool]:
        """Unplug; returns unplug → Commit/Void Session received (s) from the unplug at the broker and
        from the charger simulator's call, and whether it was a Commit."""
        cid = session.connector_id
        n_received, n_unplugs = len(self.received), len(self.unplugs)
        t_call = time.monotonic()
        self.charger.unplug(cid)

        def disposal() -> tuple[Any, float] | None:
            for message, stamp in self._since(self.received, n_received):
                if isinstance(message, CommitSession | VoidSession) and (
                    message.session_id == session.session_id
                ):
                    return message, stamp
            return None

        await self._agent_until(agent, disposal, f"Commit/Void of connector {cid}")
        found = disposal()
        assert found is not None
        await self._agent_until(
            agent, lambda: any(c == cid for c, _ in self.unplugs[n_unplugs:]), "the unplug at the broker"
        )
        t_unplug = next(t for c, t in self.unplugs[n_unplugs:] if c == cid)
        sim_session = self.psp.sessions[session.session_id]
        await self._agent_until(agent, lambda: not sim_session.is_open, "session settled")
        return found[1] - t_unplug, found[1] - t_call, isinstance(found[0], CommitSession)

    @staticmethod
    def _since(log: _Stamped[Any], start: int) -> Iterable[tuple[Any, float]]:
        return zip(log[start:], log.times[start:], strict=True)

    async def close(self) -> None:
        for agent in self.agents:
            if agent.proc.returncode is None:
                agent.proc.kill()
                await agent.proc.wait()
        self.notify.close()


# -- the figures ---------------------------------------------------------------------------------


async def _sessions_rss_idle(rig: _Rig, sessions: int, idle_window_s: float) -> dict[str, Any]:
    config = rig.write_config("sessions")
    agent = await rig.spawn(config)
    await rig.wait_notify(agent)
    await rig.terminal_ready(agent)
    await asyncio.sleep(0.5)
    rss_ready_kib = _proc_status_kib(agent.pid, "VmRSS")
    auth: list[float] = []
    auth_early: list[float] = []
    commit: list[float] = []
    commit_from_call: list[float] = []
    commits = 0
    charging: deque[_Session] = deque()

    async def end_oldest() -> None:
        nonlocal commits
        latency, from_call, was_commit = await rig.end_session(agent, charging.popleft())
        commit.append(latency)
        commit_from_call.append(from_call)
        commits += was_commit

    for i in range(sessions):
        if len(charging) >= rig.connectors - 1:  # a connector is re-plugged one session after its unplug
            await end_oldest()
        early = i % EARLY_TAP_EVERY == EARLY_TAP_EVERY - 1
        session, latency = await rig.start_session(agent, i % rig.connectors + 1, early_tap=early)
        charging.append(session)
        (auth_early if early else auth).append(latency)
    while charging:
        await end_oldest()
    await asyncio.sleep(1.0)  # the last confirmations journaled, nothing in flight
    agent.check_alive()
    rss_kib = _proc_status_kib(agent.pid, "VmRSS")
    hwm_kib = _proc_status_kib(agent.pid, "VmHWM")

    tick_hz = os.sysconf("SC_CLK_TCK")
    t0, ticks0, ns0 = time.monotonic(), _proc_cpu_ticks(agent.pid), _proc_cpu_ns(agent.pid)
    await asyncio.sleep(idle_window_s)
    t1, ticks1, ns1 = time.monotonic(), _proc_cpu_ticks(agent.pid), _proc_cpu_ns(agent.pid)
    agent.check_alive()
    connected, psp_state = rig.psp.connected, rig.psp.state.name
    exit_code = await agent.stop()

    window = t1 - t0
    cpu_ticks_percent = (ticks1 - ticks0) / tick_hz / window * 100
    cpu_ns_percent = (ns1 - ns0) / 1e9 / window * 100
    auth_p99, commit_p99 = _percentile(auth, 99), _percentile(commit, 99)
    rss_mib = rss_kib / 1024
    return {
        "card_read_to_auth_session": {
            "p50_ms": _ms(_percentile(auth, 50)),
            "p99_ms": _ms(auth_p99),
            "max_ms": _ms(max(auth)),
            "samples": len(auth),
            "budget_p99_ms": BUDGET_AUTH_P99_MS,
            "within_budget": auth_p99 * 1000 <= BUDGET_AUTH_P99_MS,
        },
        "card_read_to_auth_session_card_already_at_reader": {
            "p50_ms": _ms(_percentile(auth_early, 50)),
            "max_ms": _ms(max(auth_early)),
            "samples": len(auth_early),
            "budget_p99_ms": BUDGET_AUTH_P99_MS,
            "within_budget": max(auth_early) * 1000 <= BUDGET_AUTH_P99_MS,
            "note": "card held at the reader before the card read starts: the terminal sends Card Read "
            "at once, right behind the reply that confirms the Start Session",
        },
        "unplug_to_commit_session": {
            "p50_ms": _ms(_percentile(commit, 50)),
            "p99_ms": _ms(commit_p99),
            "max_ms": _ms(max(commit)),
            "p99_from_charger_sim_call_ms": _ms(_percentile(commit_from_call, 99)),
            "samples": len(commit),
            "commits": commits,
            "budget_p99_ms": BUDGET_COMMIT_P99_MS,
            "within_budget": commit_p99 * 1000 <= BUDGET_COMMIT_P99_MS,
        },
        "rss_after_sessions": {
            "rss_mib": round(rss_mib, 2),
            "peak_rss_mib": round(hwm_kib / 1024, 2),
            "rss_at_ready_mib": round(rss_ready_kib / 1024, 2),
            "sessions": len(commit),
            "connectors": rig.connectors,
            "budget_mib": BUDGET_RSS_MIB,
            "within_budget": rss_mib <= BUDGET_RSS_MIB,
        },
        "idle_cpu": {
            "cpu_percent": round(cpu_ticks_percent, 3),
            "cpu_schedstat_percent": round(cpu_ns_percent, 4),
            "window_s": round(window, 2),
            "terminal_connected": connected,
            "terminal_psp_state": psp_state,
            "budget_percent": BUDGET_IDLE_CPU_PERCENT,
            "within_budget": max(cpu_ticks_percent, cpu_ns_percent) <= BUDGET_IDLE_CPU_PERCENT,
        },
        "agent_exit_code": exit_code,
    }


async def _start_to_ready(rig: _Rig, starts: int, config: Path | None = None) -> dict[str, Any]:
    """Median of ``starts`` starts on ``config`` (default: a fresh one, its state dir empty)."""
    if config is None:
        config = rig.write_config("starts")
    samples: list[float] = []
    for _ in range(starts):
        rig.drain_notify()
        agent = await rig.spawn(config)
        ready_at = await rig.wait_notify(agent)
        samples.append(ready_at - agent.spawned_at)
        await rig.terminal_ready(agent)  # a complete start, so that the next one is a restart
        code = await agent.stop()
        if code != 0:
            raise BenchError(f"agent exited with {code} after SIGTERM:\n{agent.tail()}")
    median = _percentile(samples, 50)
    return {
        "median_ms": _ms(median),
        "min_ms": _ms(min(samples)),
        "max_ms": _ms(max(samples)),
        "samples": len(samples),
        "budget_ms": BUDGET_READY_MS,
        "within_budget": median * 1000 <= BUDGET_READY_MS,
    }


async def _restart_settles(rig: _Rig) -> dict[str, Any]:
    config = rig.write_config("restart")
    state_dir = config.parent / "state"
    rig.drain_notify()
    agent = await rig.spawn(config, crash_at=CRASH_POINT)
    await rig.wait_notify(agent)
    await rig.terminal_ready(agent)
    sessions = [(await rig.start_session(agent, cid))[0] for cid in rig.charger.connector_ids[:PENDING]]
    await asyncio.sleep(0.3)  # a few meter values journaled
    rig.psp.faults.delay_replies(60.0, n=None)  # the terminal stops answering: nothing is confirmed
    for session in sessions:
        rig.charger.unplug(session.connector_id)
    try:
        code = await asyncio.wait_for(agent.proc.wait(), WAIT_S)
    except TimeoutError:
        raise BenchError(f"the agent did not reach {CRASH_POINT}:\n{agent.tail()}") from None
    finally:
        rig.psp.faults.clear()
    if code != -signal.SIGKILL:
        raise BenchError(f"agent exited with {code}, expected SIGKILL at {CRASH_POINT}:\n{agent.tail()}")
    pending = [
        row
        for row in read_payments(state_dir, open_only=True)
        if row.disposal is not None and row.disposal_confirmed_at is None
    ]
    wanted = {int(row.terminal_session_id) for row in pending if row.terminal_session_id is not None}
    if len(wanted) != PENDING:
        raise BenchError(f"expected {PENDING} pending settlements in the journal, found {len(wanted)}")
    await _until(lambda: not rig.psp.connected, "the simulator to see the link close")

    rig.drain_notify()
    n_received = len(rig.received)
    agent = await rig.spawn(config)

    def sent_at() -> float | None:
        seen: dict[int, float] = {}
        for message, stamp in rig._since(rig.received, n_received):
            if isinstance(message, CommitSession | VoidSession) and message.session_id in wanted:
                seen.setdefault(message.session_id, stamp)
        return max(seen.values()) if len(seen) == len(wanted) else None

    ready_at = await rig.wait_notify(agent)
    await rig._agent_until(agent, sent_at, "every pending Commit/Void after the restart")
    last = sent_at()
    assert last is not None
    await rig._agent_until(
        agent, lambda: all(not rig.psp.sessions[s.session_id].is_open for s in sessions), "all settled"
    )
    code = await agent.stop()
    elapsed = last - agent.spawned_at
    return {
        "all_sent_after_spawn_ms": _ms(elapsed),
        "all_sent_after_ready_ms": _ms(last - ready_at),
        "ready_after_spawn_ms": _ms(ready_at - agent.spawned_at),
        "pending_settlements": len(wanted),
        "crash_point": CRASH_POINT,
        "agent_exit_code": code,
        "budget_ms": BUDGET_RESTART_MS,
        "within_budget": elapsed * 1000 <= BUDGET_RESTART_MS,
    }


async def _run(quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        workdir = Path(tmp)
        broker = LocalBroker(workdir)
        try:
            async with Simulator(SimConfig(family="apollo", seed=7)) as psp:
                psp_port = await psp.serve_tcp("127.0.0.1", 0)
                rig = _Rig(workdir, broker, psp, psp_port)
                observer = asyncio.create_task(rig.observe_unplugs(), name="bench-unplug-observer")
                try:
                    async with rig.charger:
                        await rig.charger.wait_connected(5)
                        await asyncio.wait_for(rig.observing.wait(), 5)
                        sessions = QUICK_SESSIONS if quick else SESSIONS
                        result = await _sessions_rss_idle(rig, sessions, 3.0 if quick else 10.0)
                        result["start_to_ready"] = await _start_to_ready(rig, 3 if quick else 7)
                        result["restart_to_pending_settlements_sent"] = await _restart_settles(rig)
                finally:
                    observer.cancel()
                    await asyncio.gather(observer, return_exceptions=True)
                    await rig.close()
        finally:
            broker.stop()
    result["bench_duration_s"] = round(time.monotonic() - started, 1)
    result["note"] = (
        "real `evpay-agent run` process vs PSP simulator (Apollo, TCP 127.0.0.1), charger simulator "
        "and Mosquitto started here; latencies at the simulator's frame logs (monotonic clock); "
        "percentiles by nearest rank; see hil/bench/agent.py"
    )
    return result


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_run(quick))
