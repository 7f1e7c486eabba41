"""One fuzz seed: the real processes in the seed's world, its session script and faults, then settle.

:class:`SeedRun` owns, in ``workdir``:

* one Mosquitto for the back office (``broker``) and, unless the world shares it, one for the charger
  bridge (``charger-broker``); the agent reaches the back-office broker through a :class:`TcpGate`, so
  that after a broker outage the upstream capture is subscribed again *before* the agent can publish
  (nothing the agent sends escapes the capture; markers ``broker_down``/``broker_up`` frame the outage);
* ``python -m hil.psp_sim`` and ``python -m hil.charger_sim`` with the world's options and habits;
* a :class:`hil.stream.StreamCapture` of the station's upstream tree (started before the agent's first
  start, ``upstream.jsonl``);
* ``evpay-agent run`` under an :class:`AgentSupervisor`: SIGKILL and restart (markers ``agent_killed``/
  ``agent_started``), crash points armed per start (``EVPAY_CRASH_AT``), restart after a crash point;
  any other exit is a finding.

The script runs one task per connector (its drivers, in order) and one task per fault (at its time);
a driver's moves wait on what the agent logged (``connector state …``) and on the simulators, every
wait bounded; a wait that runs out is noted in ``script.log`` and the driver goes on (faults make the
agent legitimately slower or different; the invariants decide). Then everything is unplugged, faults
are lifted and the seed settles: nothing approved on the terminal (an orphan approval waits for the
terminal's scaled session timeout), no open payment in the journal, an empty outbox. Then SIGTERM
(exit 0 expected) and :func:`hil.fuzz.oracle.evaluate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiomqtt
import yaml

from hil.fuzz.oracle import Evidence, Finding, PlugCycle, TapRecord, TariffCommand, evaluate
from hil.fuzz.world import TERMINAL_FAULTS, Fault, SessionPlan, Tap, TariffChange, World
from hil.rig.broker import Mosquitto, TcpGate
from hil.rig.invariants import payment_is_open
from hil.rig.procs import POLL_S, REPO, Agent, ChargerSim, HarnessError, PspSim
from hil.stream import Line, MessageLine, StreamCapture
from hil.stream.lines import BROKER_HANG, BROKER_HANG_OVER

__all__ = ["AgentSupervisor", "Figures", "SeedResult", "SeedRun", "replay_command"]

CHARGING: Final = frozenset({"charging", "suspended_ev", "suspended_evse"})
READY_S: Final = 25.0  # first start → terminal set up (boot Not Ready and a crash point included)
FREE_WAIT_S: Final = 25.0  # a connector becomes available again (after faults, restarts)
STATE_WAIT_S: Final = 10.0
WAIT_CARD_S: Final = 6.0
QUEUED_CARD_S: Final = 4.0  # a card left on the reader is taken away after this long
AUTH_WAIT_S: Final = 10.0  # beyond the terminal's auth delay and the card's PIN delay
FAULT_CLEAR_S: Final = 1.0  # a charger fault is cleared after this long
SCRIPT_MARGIN_S: Final = 90.0  # the script may run this much longer than planned
FAULT_FINISH_S: Final = 20.0  # a fault in progress when the script ends is given this long
SETTLE_S: Final = 45.0  # everything settles within this (plus the orphan allowance)
SETTLE_POLL_S: Final = 0.5
STOP_WAIT_S: Final = 25.0  # SIGTERM → exit (the agent's drain timeout is 10 s)
CAPTURE_BACK_S: Final = 10.0
RESTART_GAP_S: Final = 0.2  # after a crash point, the "systemd" restart delay
PUBLISH_S: Final = 5.0
QUIET_S: Final = 0.25  # the capture counts as caught up after this long without a new message
QUIET_MAX_S: Final = 2.0
TARIFF_REPLY_S: Final = 8.0  # a set_tariff result is awaited this long (a restart, an outage) …
TARIFF_ATTEMPTS: Final = 2  # … before the command is sent again (same correlation_id), once
_STATE_LINE: Final = re.compile(rb"connector state connector=(\d+) old=(\S+) new=(\S+)")
_CARD_LINE: Final = re.compile(rb"card read kind=emv pan=(\S+)")
_MESSAGE_LINE: Final = re.compile(rb"\bmessage connector=\S+ key=(\S+)")
# what a driver is told when a read card starts nothing (statemachines MessageKey values)
_REFUSALS: Final = frozenset(
    {"plug_in_first", "card_not_accepted", "card_in_use", "terminal_offline", "connector_unavailable",
     "terminal_busy", "card_mismatch"}
)  # fmt: skip


# --- results --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    """What the seeds did (summed over seeds by :meth:`add`)."""

    seeds: int = 0
    failed_seeds: int = 0
    sessions: int = 0  # distinct sessions in the upstream stream
    plans: int = 0  # drivers the script sent
    taps: int = 0
    kills: int = 0  # SIGKILLs by the harness
    crashes: int = 0  # armed crash points reached (the agent SIGKILLed itself)
    broker_outages: int = 0
    broker_hangs: int = 0
    terminal_faults: int = 0
    charger_faults: int = 0  # losses, reconnects, redeliveries, charger broker outages
    captured: int = 0  # payment.captured upstream
    voided: int = 0  # payment.voided upstream
    declined: int = 0  # payment.declined upstream
    capped: int = 0  # receipts with a cap_adjustment line (the cost reached the authorized amount)
    resumed: int = 0  # session.updated (a journaled payment handed back after a restart)
    orphan_alarms: int = 0  # possible_orphan_approval raised
    tariff_commands: int = 0  # set_tariff published by the back office
    tariff_accepted: int = 0  # … and answered accepted
    ocpi_tariffs: int = 0  # tariffs in the OCPI form (the configured one and set_tariff's)
    priced_by_set_tariff: int = 0  # captured sessions that only a set_tariff's tariff prices
    priced_by_ocpi: int = 0  # captured sessions that only an OCPI-form tariff prices
    current_reported: int = 0  # seeds whose charger reports current_a
    findings: int = 0

    def add(self, other: Figures) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def replay_command(seed: int, size: str, mutant: str | None) -> str:
    """The one command that replays ``seed`` (same world, same schedule)."""
    parts = ["python -m hil.fuzz", f"--seed {seed}"]
    if size != "normal":
        parts.append(f"--size {size}")
    if mutant is not None:
        parts.append(f"--mutant {mutant}")
    return " ".join(parts)


@dataclass(slots=True)
class SeedResult:
    seed: int
    size: str
    mutant: str | None
    findings: list[Finding]
    figures: Figures
    wall_s: float
    workdir: Path
    kept: bool

    @property
    def passed(self) -> bool:
        return not self.findings

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.size, self.mutant)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "size": self.size,
            "mutant": self.mutant,
            "passed": self.passed,
            "findings": [str(f) for f in self.findings],
            "figures": self.figures.to_json(),
            "wall_s": round(self.wall_s, 2),
            "workdir": str(self.workdir) if self.kept else None,
            "replay": self.replay,
        }


# --- the agent's log, read incrementally ---------------------------------------------------------


class AgentLog:
    """What the agent logged about its connectors and card reads, read incrementally from its log
    file, as a driver reads the screen: ``connector state connector=C old=… new=…``, ``card read
    kind=… pan=…`` and ``message connector=… key=…``. A harness start line resets the connector
    states (a restarted agent starts with every connector unavailable)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.states: dict[int, str] = {}
        self.records: list[tuple[str, ...]] = []  # ("state", c, old, new) | ("card", pan) | ("message", key)

    def refresh(self) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"=== harness: start"):
                self.states.clear()
                self.records.append(("start",))
            elif (match := _STATE_LINE.search(line)) is not None:
                self.states[int(match[1])] = match[3].decode()
                self.records.append(("state", match[1].decode(), match[2].decode(), match[3].decode()))
            elif (match := _CARD_LINE.search(line)) is not None:
                self.records.append(("card", match[1].decode()))
            elif (match := _MESSAGE_LINE.search(line)) is not None:
                self.records.append(("message", match[1].decode()))

    def state(self, connector: int) -> str | None:
        self.refresh()
        return self.states.get(connector)

    def position(self) -> int:
        self.refresh()
        return len(self.records)

    def outcome(self, since: int, masked_pan: str) -> tuple[int | None, str] | None:
        """What became of the card ``masked_pan`` read after record ``since``: (connector, state
        after ``authorizing``), (``None``, refusal message key), or ``None`` while undecided."""
        self.refresh()
        read = False
        for record in self.records[since:]:
            if record[0] == "card" and record[1] == masked_pan:
                read = True
            elif read and record[0] == "state" and record[2] == "authorizing":
                return int(record[1]), record[3]
            elif read and record[0] == "message" and record[1] in _REFUSALS:
                return None, record[1]
            elif record[0] == "start":
                read = False
        return None


# --- the agent under supervision ------------------------------------------------------------------


class AgentSupervisor:
    """Starts, kills and restarts the agent like systemd would, and tells crash points (armed per
    start from the world's list) from real crashes."""

    def __init__(
        self, agent: Agent, crash_points: tuple[str | None, ...], note: Callable[[str], None]
    ) -> None:
        self.agent = agent
        self.crash_points = crash_points
        self.note = note
        self.starts = 0
        self.kills = 0
        self.crashes = 0
        self.unexpected: list[str] = []
        self.arming = True
        self.lock = asyncio.Lock()
        self._watching = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        point = (
            self.crash_points[self.starts] if self.arming and self.starts < len(self.crash_points) else None
        )
        self.starts += 1
        await self.agent.start(crash_at=point)
        self.note(f"agent start #{self.starts}" + (f" armed with {point}" if point else ""))

    async def kill(self, gap_s: float) -> None:
        async with self.lock:
            if self.agent.running:
                await self.agent.kill()
                self.kills += 1
                self.note(f"agent SIGKILLed; restart in {gap_s} s")
            await asyncio.sleep(gap_s)
            await self.start()

    def watch(self) -> None:
        self._watching = True
        self._task = asyncio.create_task(self._watch(), name=f"fuzz-agent-watch-{self.agent.proc.log_path}")

    async def _watch(self) -> None:
        while self._watching:
            await asyncio.sleep(POLL_S)
            if self.lock.locked() or not self._watching:
                continue
            code = self.agent.proc.poll()
            if code is None:
                continue
            async with self.lock:
                if not self._watching or self.agent.running:
                    continue
                if code == -9 and self.agent.crash_at:
                    self.crashes += 1
                    self.note(f"agent reached crash point {self.agent.crash_at}")
                else:
                    self.unexpected.append(
                        f"the agent exited on its own with {code} (crash point armed: {self.agent.crash_at})"
                    )
                    self.note(f"agent exited with {code}")
                self.agent.mark("agent_killed")
                await asyncio.sleep(RESTART_GAP_S)
                await self.start()

    async def stop(self) -> int | None:
        """Stop watching, then SIGTERM; the exit code (``None``: it had to be SIGKILLed)."""
        self._watching = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        async with self.lock:
            if not self.agent.running:
                return self.agent.proc.poll()
            try:
                return await self.agent.stop(expect=None)
            except HarnessError as exc:
                self.unexpected.append(f"SIGTERM: {exc}")
                return None


# --- one seed -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Notes:
    path: Path
    t0: float = field(default_factory=time.monotonic)

    def __call__(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(f"{time.monotonic() - self.t0:8.2f} {text}\n")


async def _publish_once(host: str, port: int, topic: str, payload: bytes) -> str | None:
    """Publish one QoS 1 message with a fresh client; ``None`` when done, else why not."""

    async def publish() -> None:
        async with aiomqtt.Client(
            host, port, identifier=f"fuzz-bo-{uuid.uuid4().hex[:10]}", protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.publish(topic, payload, qos=1, timeout=math.inf)

    task = asyncio.create_task(publish(), name=f"fuzz-back-office-{topic}")
    done, _ = await asyncio.wait({task}, timeout=PUBLISH_S)
    if not done:
        while not task.done():  # aiomqtt's wait_for may swallow a cancellation (Python 3.11)
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        return f"no PUBACK within {PUBLISH_S} s"
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return None if exc is None else f"{type(exc).__name__}: {exc}"


class SeedRun:
    """The processes, script, faults and settling of one world (see the module docstring)."""

    def __init__(self, world: World, workdir: Path, *, tree: Path = REPO, mutant: str | None = None) -> None:
        self.world = world
        self.workdir = workdir
        self.tree = tree
        self.mutant = mutant
        # a fresh directory: a journal, logs or a capture left by an earlier run of this seed would
        # be restored, read as this run's addresses, and judged as this run's evidence
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        self.note = _Notes(workdir / "script.log")
        self.figures = Figures(
            seeds=1,
            plans=len(world.plans),
            ocpi_tariffs=sum(t.form == "ocpi" for t in world.tariffs),
            current_reported=int(world.charger.report_current),
        )
        self.tariff_commands: list[TariffCommand] = []
        self.tariff_last_sent = -1  # the index of the last set_tariff sent
        self.rig_problems: list[str] = []
        self.taps: list[TapRecord] = []
        self.cycles: list[PlugCycle] = []
        self.open_cycles: dict[int, PlugCycle] = {}
        self.station_id = f"FZ-{world.seed}"
        self.prefix = f"fz/{self.station_id}"
        self.broker = Mosquitto(workdir, name="broker")
        self.charger_broker = (
            self.broker if world.charger.shared_broker else Mosquitto(workdir, name="charger-broker")
        )
        self.gate = TcpGate(self.broker.host, self.broker.port)
        t = world.terminal
        self.psp = PspSim(
            workdir,
            family=t.family,
            pty=t.transport == "pty",
            seed=world.seed,
            session_timeout_scale=t.session_timeout_scale,
            extra_args=t.sim_args(),
        )
        self.charger = ChargerSim(
            workdir,
            self.charger_broker.url,
            connectors=world.charger.connectors,
            prefix=f"fz{world.seed}",
            extra_args=world.charger.sim_args(),
        )
        self.config_path = workdir / "agent.yaml"
        self.agent = Agent(workdir, self.config_path, tree=tree)
        self.log = AgentLog(self.agent.proc.log_path)
        self.supervisor = AgentSupervisor(self.agent, world.crash_points, self.note)
        self.capture: StreamCapture | None = None
        self.terminal_lock = asyncio.Lock()  # one driver at the card reader at a time
        self.broker_lock = asyncio.Lock()
        self.charger_lock = asyncio.Lock()
        self.settling = False
        self.script_t0 = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> tuple[list[Finding], Figures]:
        stop_code: int | None = None
        journal: list[dict[str, Any]] | None = None
        sim_sessions: list[dict[str, Any]] = []
        charger_payments: list[dict[str, Any]] = []
        started = False
        try:
            await self._start()
            started = True
            await self._script()
            await self._settle()
        except Exception as exc:  # a process that does not start, a control channel that fails …
            what = "seed could not run" if not started else "rig"
            self.rig_problems.append(f"{what}: {type(exc).__name__}: {exc}")
            self.note(f"rig problem: {type(exc).__name__}: {exc}")
        finally:
            try:
                stop_code = await self.supervisor.stop()
                if started:
                    sim_sessions = await self.psp.sessions()
                    journal = await self.agent.sessions()
                    charger_payments = await self.charger.payments()
            except Exception as exc:
                self.rig_problems.append(f"rig: collecting the results: {type(exc).__name__}: {exc}")
            await self._close()
        lines = list(self.capture.lines) if self.capture is not None else []
        evidence = Evidence(
            world=self.world,
            prefix=self.prefix,
            lines=lines,
            sim_sessions=sim_sessions,
            journal=journal,
            agent_log=self.agent.proc.log_text(),
            taps=self.taps,
            cycles=self.cycles,
            tariff_commands=self.tariff_commands,
            unexpected_exits=self.supervisor.unexpected,
            stop_code=stop_code,
            rig_problems=self.rig_problems,
            charger_payments=charger_payments,
        )
        seen: dict[str, int] = {}
        findings = evaluate(evidence, seen) if started else [Finding("rig", p) for p in self.rig_problems]
        self.figures.priced_by_set_tariff = seen.get("priced_by_set_tariff", 0)
        self.figures.priced_by_ocpi = seen.get("priced_by_ocpi", 0)
        self._count_stream(lines)
        self.figures.kills = self.supervisor.kills
        self.figures.crashes = self.supervisor.crashes
        self.figures.taps = len(self.taps)
        self.figures.findings = len(findings)
        self.figures.failed_seeds = 1 if findings else 0
        return findings, self.figures

    def _count_stream(self, lines: list[Line]) -> None:
        """Coverage figures from the captured stream (each message once, by ``msg_id``)."""
        seen: set[str] = set()
        sessions: set[str] = set()
        f = self.figures
        f.tariff_commands = len(self.tariff_commands)
        for line in lines:
            if not isinstance(line, MessageLine) or not isinstance(line.payload, dict):
                continue
            payload = line.payload
            if line.topic.endswith("/cmd/set_tariff/result"):
                f.tariff_accepted += payload.get("status") == "accepted"
                continue
            msg_id = payload.get("msg_id")
            if not isinstance(msg_id, str) or msg_id in seen:
                continue
            seen.add(msg_id)
            if line.topic.endswith("/events"):
                sessions.add(str(payload.get("session_id")))
                event = payload.get("event")
                f.captured += event == "payment.captured"
                f.voided += event == "payment.voided"
                f.declined += event == "payment.declined"
                f.resumed += event == "session.updated"
            elif line.topic.endswith("/receipts"):
                items = payload.get("lines")
                kinds = (
                    [x.get("kind") for x in items if isinstance(x, dict)] if isinstance(items, list) else []
                )
                f.capped += "cap_adjustment" in kinds
            elif line.topic.endswith("/alarms"):
                raised = (
                    payload.get("alarm") == "possible_orphan_approval" and payload.get("state") == "raised"
                )
                f.orphan_alarms += raised
        f.sessions = len(sessions)

    async def _start(self) -> None:
        (self.workdir / "world.json").write_text(json.dumps(self.world.to_json(), indent=1), encoding="utf-8")
        await self.broker.start()
        if self.charger_broker is not self.broker:
            await self.charger_broker.start()
        await self.gate.start()
        await asyncio.gather(self.psp.start(), self.charger.start())
        config = self.world.agent_config(
            station_id=self.station_id,
            state_dir=str(self.workdir / "state"),
            terminal_url=self.psp.url,
            charger_broker_url=self.charger_broker.url,
            charger_prefix=self.charger.prefix,
            upstream_broker_url=self.gate.url,
            upstream_prefix=self.prefix,
        )
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.capture = StreamCapture(
            self.broker.host, self.broker.port, self.prefix, self.workdir / "upstream.jsonl"
        )
        await self.capture.__aenter__()
        self.agent.on_mark = self._mark
        await self.supervisor.start()
        self.supervisor.watch()
        deadline = time.monotonic() + READY_S
        while True:
            state = await self.psp.state()
            if state["connected"] and state["state"] in ("ENABLED", "WAIT_CARD", "WAIT_AUTH"):
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"the agent did not set the terminal up within {READY_S} s: {state}")
            await asyncio.sleep(POLL_S)

    def _mark(self, name: str) -> None:
        """A marker in the upstream capture (``agent_killed``, ``agent_started``, ``broker_down`` …)."""
        if self.capture is not None:
            self.capture.mark(name)

    async def _close(self) -> None:
        with contextlib.suppress(HarnessError):
            await self.agent.kill()
        await asyncio.gather(self.psp.close(), self.charger.close(), return_exceptions=True)
        if self.capture is not None:
            await self._capture_quiet()  # the last PUBACKed messages on their way to the capture
            await self.capture.close()
        await self.gate.close()
        await self.broker.stop()
        if self.charger_broker is not self.broker:
            await self.charger_broker.stop()

    # -- the script --------------------------------------------------------------------------------

    async def _script(self) -> None:
        self.script_t0 = time.monotonic()
        for line in self.world.summary():
            self.note(f"world: {line}")
        drivers = [
            asyncio.create_task(self._driver(c), name=f"fuzz-{self.world.seed}-connector-{c}")
            for c in range(1, self.world.charger.connectors + 1)
        ]
        faults = [
            asyncio.create_task(self._fault(f), name=f"fuzz-{self.world.seed}-fault-{i}")
            for i, f in enumerate(self.world.faults)
        ] + [
            asyncio.create_task(self._set_tariff(i, change), name=f"fuzz-{self.world.seed}-set-tariff-{i}")
            for i, change in enumerate(self.world.tariff_changes)
        ]
        bound = self.world.script_s * 2 + SCRIPT_MARGIN_S
        done, pending = await asyncio.wait(drivers, timeout=bound)
        for task in pending:
            task.cancel()
            self.rig_problems.append(f"rig: a driver did not finish within {bound:.0f} s: {task.get_name()}")
        await asyncio.gather(*drivers, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                self.rig_problems.append(f"rig: {task.get_name()} failed: {type(exc).__name__}: {exc}")
        self.settling = True  # faults not yet due are skipped; one in progress finishes
        _, late = await asyncio.wait(faults, timeout=FAULT_FINISH_S) if faults else (set(), set())
        for task in late:
            task.cancel()
        for result in await asyncio.gather(*faults, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                self.rig_problems.append(f"rig: a fault failed: {type(result).__name__}: {result}")
        self.note("script done")

    async def _soft_wait(
        self, what: str, pred: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float
    ) -> bool:
        deadline = time.monotonic() + within
        while True:
            result = pred()
            if not isinstance(result, bool):
                result = await result
            if result:
                return True
            if time.monotonic() >= deadline:
                self.note(f"wait ran out ({within:.1f} s): {what}")
                return False
            await asyncio.sleep(POLL_S)

    async def _wait_state(self, c: int, states: frozenset[str] | set[str], within: float) -> str | None:
        ok = await self._soft_wait(
            f"connector {c} in {sorted(states)}", lambda: self.log.state(c) in states, within
        )
        return self.log.state(c) if ok else None

    async def _terminal_in(self, states: tuple[str, ...]) -> bool:
        state = await self.psp.state()
        return bool(state["connected"]) and state["state"] in states

    async def _driver(self, c: int) -> None:
        for plan in self.world.plans_of(c):
            self.note(f"c{c} plan {plan.index}: {plan.start}, {len(plan.taps)} tap(s), stop {plan.stop}")
            await self._session(plan)

    async def _session(self, p: SessionPlan) -> None:
        c = p.connector
        await asyncio.sleep(p.gap_s)  # the world's script: the driver arrives
        await self._wait_state(c, {"available"}, FREE_WAIT_S)
        await self.charger.power(c, p.power_w)
        approved = None
        async with self.terminal_lock:  # one driver at the terminal: plug-in, card(s), outcome
            start = p.start
            if start == "ui" and not await self._ui_start(p):
                start = "plug_in"
            if start == "plug_in":
                await self._plug(c)
                await self._wait_state(c, {"awaiting_card", *CHARGING}, STATE_WAIT_S)
            for tap in p.taps:
                approved = await self._tap_for_session(c, tap)
                if approved is None and start == "tap_first" and c not in self.open_cycles:
                    self.note(f"c{c}: the tap-first card started nothing here; plugging in first")
                    await self._plug(c)
                    await self._wait_state(c, {"awaiting_card", *CHARGING}, STATE_WAIT_S)
                    approved = await self._tap_for_session(c, tap)
                if approved is not None:
                    break
        if approved is None:
            self.note(f"c{c}: no approval; the driver leaves")
            await self._unplug(c)
            await self._wait_state(c, {"available", "unavailable"}, STATE_WAIT_S)
            return
        if c not in self.open_cycles:
            if p.plug_after_s is None:
                self.note(f"c{c}: authorized, the vehicle never comes (START-6)")
                await self._wait_state(c, {"available"}, self.world.session.plug_in_timeout_s + 15)
                return
            await asyncio.sleep(p.plug_after_s)
            await self._plug(c)
        await self._wait_state(c, CHARGING | {"stopping", "settling", "finishing"}, STATE_WAIT_S)
        await self._charge(p)
        await self._stop(p, approved)
        await asyncio.sleep(p.unplug_after_s)
        await self._unplug(c)
        await self._wait_state(c, {"available", "unavailable"}, STATE_WAIT_S)

    async def _ui_start(self, p: SessionPlan) -> bool:
        """Apollo UI start (START-3): press the connector's start item on the home screen."""
        button = f"start_{p.connector}" if p.ui_cap_minor is None else f"start_{p.connector}_{p.ui_cap_minor}"

        async def shown() -> bool:
            screen = await self.psp.screen()
            return bool(screen.get("visible")) and button in screen.get("buttons", [])

        if not await self._soft_wait(f"{button} on the home screen", shown, STATE_WAIT_S):
            return False
        answer = await self.psp.control.command(f"press {button}")
        self.note(f"c{p.connector}: press {button} → {answer}")
        return answer.startswith("ok")

    async def _present(self, c: int, tap: Tap, *, stranger: bool = False) -> str:
        """Tap ``tap``'s card (after waiting a little for a card read); a card the terminal did not
        read is taken away again after a while. Returns the simulator's answer."""
        await self._soft_wait(
            "the terminal waits for a card", lambda: self._terminal_in(("WAIT_CARD",)), WAIT_CARD_S
        )
        answer = await self.psp.control.command(tap.command())
        if not answer.startswith("ok"):
            self.rig_problems.append(f"rig: {tap.command()!r} → {answer!r}")
        self.taps.append(TapRecord(time.time(), c, tap.card.card_hash, stranger, answer))
        self.note(
            f"c{c}: tap {tap.card.masked_pan} {tap.outcome}{' (stranger)' if stranger else ''} → {answer}"
        )
        if "queued" in answer:

            async def taken() -> bool:
                return not (await self.psp.state())["card_on_reader"]

            if not await self._soft_wait("the queued card to be read", taken, QUEUED_CARD_S):
                await self.psp.control.command("remove")
        return answer

    async def _tap_for_session(self, c: int, tap: Tap) -> str | None:
        """A card for a new session on ``c`` (the caller holds the terminal lock): the state it
        led to on ``c`` when approved there, else ``None`` (declined, refused, routed elsewhere)."""
        since = self.log.position()
        await self._present(c, tap)
        pan = tap.card.masked_pan
        await self._soft_wait(
            f"c{c}: the outcome of {pan}",
            lambda: self.log.outcome(since, pan) is not None,
            AUTH_WAIT_S + tap.pin_delay_s + self.world.terminal.auth_delay_s,
        )
        outcome = self.log.outcome(since, pan)
        if outcome is None:
            return None
        connector, state = outcome
        if connector is not None and connector != c:
            self.note(f"c{c}: {pan} went to connector {connector} ({state})")
        if connector == c and (state in CHARGING or state == "awaiting_plug"):
            return state
        return None

    async def _charge(self, p: SessionPlan) -> None:
        c = p.connector
        events: list[tuple[float, str]] = []
        if p.pause is not None:
            events.append((p.pause[0], "pause"))
        if p.stranger is not None:
            events.append((p.stranger_after_s, "stranger"))
        elapsed = 0.0
        for at, what in sorted(events):
            await asyncio.sleep(max(0.0, at - elapsed))  # the world's script
            elapsed = at
            if what == "pause" and p.pause is not None:
                await self.charger.pause(c)
                await asyncio.sleep(p.pause[1])
                await self.charger.resume(c)
                elapsed += p.pause[1]
            elif p.stranger is not None:
                async with self.terminal_lock:
                    await self._present(c, p.stranger, stranger=True)
        await asyncio.sleep(max(0.0, p.charge_s - elapsed))

    async def _stop(self, p: SessionPlan, approved: str) -> None:
        c = p.connector
        self.note(f"c{c}: stop by {p.stop}")
        if p.stop == "unplug":
            await self._unplug(c)
        elif p.stop == "tap":
            own = next(t for t in reversed(p.taps) if t.outcome != "decline")
            async with self.terminal_lock:
                await self._present(c, Tap(own.card, "approve"))
        elif p.stop == "remote":
            payload = {"correlation_id": f"fz-{uuid.uuid4().hex[:12]}", "connector_id": c, "session_id": None}
            why = await _publish_once(
                self.broker.host, self.broker.port, f"{self.prefix}/cmd/stop", json.dumps(payload).encode()
            )
            self.note(f"c{c}: remote stop {'sent' if why is None else 'not sent: ' + why}")
        else:
            await self.charger.fault(c, p.fault_code)
            await asyncio.sleep(FAULT_CLEAR_S)
            await self.charger.clear(c)
        await self._wait_state(c, {"finishing", "available", "awaiting_card", "unavailable"}, STATE_WAIT_S)

    async def _plug(self, c: int) -> None:
        if c in self.open_cycles:
            return
        t = time.time()
        await self.charger.plug(c)
        state = await self.charger.state(c)
        self.open_cycles[c] = cycle = PlugCycle(c, t, int(state["session_start_wh"]))
        self.cycles.append(cycle)
        self.note(f"c{c}: plugged (register {cycle.start_wh} Wh)")

    async def _unplug(self, c: int) -> None:
        cycle = self.open_cycles.pop(c, None)
        if cycle is None:
            return
        await self.charger.unplug(c)
        state = await self.charger.state(c)
        cycle.t_unplug = time.time()
        cycle.delivered_wh = int(state["session_energy_wh"])
        self.note(f"c{c}: unplugged after {cycle.delivered_wh} Wh")

    # -- the back office's set_tariff --------------------------------------------------------------

    async def _set_tariff(self, index: int, change: TariffChange) -> None:
        """Publish ``change`` as ``set_tariff`` at its time (docs/commands.md) and wait (bounded) for
        its result in the capture; without one, publish it once more with the same
        ``correlation_id``, as a back office that times out retries — unless a later command was
        sent meanwhile (a late repeat would undo it). The oracle reads the results itself."""
        await asyncio.sleep(max(0.0, self.script_t0 + change.at_s - time.monotonic()))  # the world's schedule
        if self.settling:
            return
        correlation = f"fz-tariff-{index + 1}-{uuid.uuid4().hex[:10]}"
        payload = json.dumps({"correlation_id": correlation, "tariff": change.payload_tariff()}).encode()
        topic = f"{self.prefix}/cmd/set_tariff"
        self.tariff_last_sent = index
        sent = time.time()
        for attempt in range(1, TARIFF_ATTEMPTS + 1):
            why = await _publish_once(self.broker.host, self.broker.port, topic, payload)
            self._record_tariff_command(TariffCommand(index, correlation, sent, why))
            outcome = "sent" if why is None else f"not sent: {why}"
            self.note(f"set_tariff #{index + 1} (attempt {attempt}) {change.describe()}: {outcome}")
            what = f"the result of set_tariff #{index + 1}"
            if await self._soft_wait(what, lambda: self._result(correlation) is not None, TARIFF_REPLY_S):
                answer = self._result(correlation) or {}
                status, code, data = answer.get("status"), answer.get("code"), answer.get("data")
                self.note(f"set_tariff #{index + 1}: {status} {code} {data}")
                return
            if self.settling or self.tariff_last_sent != index:
                return

    def _record_tariff_command(self, command: TariffCommand) -> None:
        self.tariff_commands[:] = [c for c in self.tariff_commands if c.index != command.index]
        self.tariff_commands.append(command)
        self.tariff_commands.sort(key=lambda c: c.index)
        (self.workdir / "tariff_commands.json").write_text(
            json.dumps([asdict(c) for c in self.tariff_commands], indent=1), encoding="utf-8"
        )

    def _result(self, correlation: str) -> dict[str, Any] | None:
        """The ``set_tariff`` result for ``correlation`` the capture received, if any."""
        if self.capture is None:
            return None
        for message in self.capture.messages:
            body = message.payload
            if (
                message.topic.endswith("/cmd/set_tariff/result")
                and isinstance(body, dict)
                and body.get("correlation_id") == correlation
            ):
                return body
        return None

    # -- faults ------------------------------------------------------------------------------------

    async def _fault(self, f: Fault) -> None:
        await asyncio.sleep(max(0.0, self.script_t0 + f.at_s - time.monotonic()))  # the world's schedule
        if self.settling:
            return
        self.note(f"fault {f.kind} {f.detail} {f.duration_s or ''}".rstrip())
        if f.kind == "agent_kill":
            await self.supervisor.kill(f.duration_s)
        elif f.kind == "broker_outage":
            async with self.broker_lock:
                await self._broker_outage(f)
            self.figures.broker_outages += 1
        elif f.kind == "broker_hang":
            async with self.broker_lock:
                self._mark(BROKER_HANG)  # before the hold: a message stamped after it may be held
                self.gate.hold()
                try:
                    await asyncio.sleep(f.duration_s)
                finally:
                    self.gate.release()
                    self._mark(BROKER_HANG_OVER)
            self.figures.broker_hangs += 1
        elif f.kind == "charger_broker_outage":
            async with self.charger_lock:
                await self.charger_broker.stop()
                await asyncio.sleep(f.duration_s)
                await self.charger_broker.start()
            self.figures.charger_faults += 1
        elif f.kind in TERMINAL_FAULTS:
            await self.psp.command(f.detail)
            if f.kind == "terminal_not_ready":
                await self.psp.command("close")  # the host resynchronises and meets Not Ready
            self.figures.terminal_faults += 1
        elif f.kind == "charger_lost":
            async with self.charger_lock:
                await self.charger.lose()
                await asyncio.sleep(f.duration_s)
                await self.charger.restore()
            self.figures.charger_faults += 1
        else:  # charger_reconnect, charger_redeliver
            async with self.charger_lock:
                await self.charger.command(f.detail)
            self.figures.charger_faults += 1

    async def _broker_outage(self, f: Fault) -> None:
        assert self.capture is not None
        connects = self.capture.connects
        self.gate.shut()
        self._mark("broker_down")
        await self.broker.stop()
        if f.inside:
            await self.supervisor.kill(min(0.5, f.duration_s / 2))
        await asyncio.sleep(f.duration_s)
        await self.broker.start()
        capture = self.capture
        if not await self._soft_wait(
            "the capture to subscribe again",
            lambda: capture.connected and capture.connects > connects,
            CAPTURE_BACK_S,
        ):
            self.rig_problems.append("rig: the upstream capture did not reconnect after a broker outage")
        self.gate.open()
        self._mark("broker_up")

    # -- settling ----------------------------------------------------------------------------------

    async def _settle(self) -> None:
        self.note("settling")
        self.supervisor.arming = False
        await self.psp.command("fault clear")
        for c in range(1, self.world.charger.connectors + 1):
            await self.charger.clear(c)
            await self.charger.resume(c)
            await self._unplug(c)
        await self.charger.restore()
        deadline = time.monotonic() + SETTLE_S
        orphan_deadline = deadline + self.world.terminal.session_timeout_real_s
        last_journal = 0.0
        journal: list[dict[str, Any]] = []
        journal_open = True
        while True:
            now = time.monotonic()
            sessions = await self.psp.sessions()
            approved = [s for s in sessions if s["status"] == "approved"]
            if now - last_journal >= 1.0:
                last_journal = now
                try:
                    journal = await self.agent.sessions()
                    journal_open = any(payment_is_open(p) for p in journal)
                except HarnessError as exc:
                    self.note(f"settle: sessions: {exc}")
                    journal_open = True
            outbox = self._outbox_rows()
            if not approved and not journal_open and outbox == 0:
                self.note("settled")
                return
            known = {str(p.get("terminal_session_id")) for p in journal}
            only_orphans = approved and all(str(s["session_id"]) not in known for s in approved)
            limit = orphan_deadline if only_orphans else deadline
            if now >= limit:
                self.note(
                    f"settle ran out: {len(approved)} approved, journal open {journal_open}, outbox {outbox}"
                )
                return
            await asyncio.sleep(SETTLE_POLL_S)

    async def _capture_quiet(self) -> None:
        """Until the capture received nothing new for :data:`QUIET_S` (at most :data:`QUIET_MAX_S`)."""
        capture = self.capture
        if capture is None:
            return
        deadline = time.monotonic() + QUIET_MAX_S
        count, since = len(capture.lines), time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            if len(capture.lines) != count:
                count, since = len(capture.lines), time.monotonic()
            elif time.monotonic() - since >= QUIET_S:
                return

    def _state_db(self) -> Path:
        return self.workdir / "state" / "journal.sqlite3"

    def _outbox_rows(self) -> int | None:
        """Messages still in the agent's outbox (docs/upstream.md: a table in the agent's SQLite
        file), read-only; ``None`` when it cannot be read."""
        try:
            conn = sqlite3.connect(f"file:{self._state_db()}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error:
            return None
        try:
            return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error:
            return None
        finally:
            conn.close()


async def run_seed(
    world: World,
    workdir: Path,
    *,
    tree: Path = REPO,
    mutant: str | None = None,
    keep: bool = False,
) -> SeedResult:
    """Run one seed in ``workdir`` (removed afterwards when it passed and ``keep`` is false)."""
    t0 = time.monotonic()
    try:
        run = SeedRun(world, workdir, tree=tree, mutant=mutant)
    except Exception as exc:  # e.g. no mosquitto: the seed cannot run, which is a finding
        findings = [Finding("rig", f"seed could not run: {type(exc).__name__}: {exc}")]
        figures = Figures(seeds=1, failed_seeds=1, findings=1)
        return SeedResult(
            world.seed, world.size, mutant, findings, figures, time.monotonic() - t0, workdir, True
        )
    findings, figures = await run.run()
    kept = keep or bool(findings)
    if not kept:
        shutil.rmtree(workdir, ignore_errors=True)
    return SeedResult(world.seed, world.size, mutant, findings, figures, time.monotonic() - t0, workdir, kept)
