"""End-to-end rig: the real ``evpay-agent run`` process against the simulators as real processes.

A :class:`Station` owns, per test:

* ``python -m hil.psp_sim`` (the Payter terminal; PSP over TCP or a pty),
* ``python -m hil.charger_sim`` (the charger, on a Mosquitto :class:`tests.mosquitto.Broker` that a
  module may share; every station uses its own charger topic prefix and station id, so retained
  messages of one test never reach another),
* optionally ``socat`` as a TCP relay in front of the terminal, so that a test can take the terminal
  link down and bring it back without losing the simulator's sessions table (ERR-3),
* ``evpay-agent run -c CONFIG`` with a temporary ``state_dir`` (``Agent``: start, kill = SIGKILL,
  stop = SIGTERM expecting exit 0, restart with the same state dir, crash points via
  ``EVPAY_CRASH_AT``).

Every process writes stdout/stderr to a log file in the test's directory; on a failing test the
conftest attaches the last 200 lines of each log to the report. Every wait is bounded and polls
(:func:`wait_until`); nothing sleeps longer than a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agent.money.tariff import Tariff, tariff_config_from_builtins
from statemachines.pricing import Usage, UsageBucket, UsageKind
from tests.mosquitto import Broker, free_port

REPO = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 200
POLL_S = 0.05
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0  # SIGTERM → exit: settlements in flight are finished first (OPS-1)
CONTROL_TIMEOUT_S = 5.0
CLI_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 10.0

T = TypeVar("T")

_station_numbers = itertools.count(1)

# Stations of the running test (the fixture clears it); the conftest reads their logs on failure.
ACTIVE_STATIONS: list[Station] = []


class HarnessError(AssertionError):
    """A wait timed out or a process misbehaved; an AssertionError so pytest shows it as a failure."""


class AgentExited(HarnessError):
    """The agent process ended while a test waited for something else."""


def agent_missing_reason() -> str | None:
    """Why ``evpay-agent run`` cannot be tested yet, or ``None`` when the daemon exists."""
    missing = [p for p in ("agent/runtime/shell.py", "agent/cli/run.py") if not (REPO / p).exists()]
    if missing:
        return f"blocked on the daemon: {', '.join(missing)} not there yet"
    return None


def _evpay_agent_argv() -> list[str]:
    script = Path(sys.executable).parent / "evpay-agent"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "agent"]


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EVPAY_CRASH_AT"}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if extra:
        env.update(extra)
    return env


async def wait_until(
    fetch: Callable[[], Awaitable[T]],
    pred: Callable[[T], object],
    *,
    what: str,
    within: float,
    interval: float = POLL_S,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``fetch`` until ``pred(value)`` holds; returns the value.

    ``check`` runs before every poll and may raise (e.g. the agent died). On timeout raises
    :class:`HarnessError` naming ``what`` and the last value seen.
    """
    deadline = time.monotonic() + within
    while True:
        if check is not None:
            check()
        value = await fetch()
        if pred(value):
            return value
        if time.monotonic() >= deadline:
            shown = repr(value)
            if len(shown) > 1500:
                shown = shown[:1500] + "…"
            raise HarnessError(f"timed out after {within:.1f} s waiting for {what}; last value: {shown}")
        await asyncio.sleep(interval)


# --- processes ------------------------------------------------------------------------------------


class Proc:
    """One child process, stdout and stderr appended to ``log_path``."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.returncode: int | None = None
        self.starts = 0

    async def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, new_session: bool = False
    ) -> None:
        if self.running:
            raise HarnessError(f"{self.name} already running")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== harness: start #{self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=str(REPO),
                env=dict(env) if env is not None else _child_env(),
                start_new_session=new_session,
            )
        self.returncode = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def poll(self) -> int | None:
        """The exit code if the process has ended (``-N``: killed by signal N)."""
        if self.proc is not None and self.proc.returncode is not None:
            self.returncode = self.proc.returncode
        return self.returncode if self.proc is not None and self.proc.returncode is not None else None

    async def wait(self, within: float) -> int:
        assert self.proc is not None
        try:
            async with asyncio.timeout(within):
                code = await self.proc.wait()
        except TimeoutError:
            raise HarnessError(
                f"{self.name} (pid {self.proc.pid}) did not exit within {within:.1f} s"
            ) from None
        self.returncode = code
        return code

    async def kill(self) -> int | None:
        """SIGKILL (a crash or power loss) and reap; ``None`` if it was not running."""
        if self.proc is None or self.proc.returncode is not None:
            return self.poll()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        return await self.wait(5.0)

    async def terminate(self, within: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait; SIGKILL after ``within`` (and raise, so the test sees it)."""
        if self.proc is None or self.proc.returncode is not None:
            return self.poll()
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            return await self.wait(within)
        except HarnessError:
            await self.kill()
            raise

    async def kill_group(self) -> None:
        """SIGKILL the process group this process leads (socat forks a child per connection)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.returncode is None:
            await self.wait(5.0)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def note(self, text: str) -> None:
        """Write a harness marker into the log (for reading failures)."""
        with self.log_path.open("ab") as log:
            log.write(f"=== harness: {text}\n".encode())


async def _first_json_line(proc: Proc, within: float = START_TIMEOUT_S) -> dict[str, Any]:
    """The first line of the log that parses as a JSON object (the simulators' "where" line)."""
    deadline = time.monotonic() + within
    while True:
        for line in proc.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    data = json.loads(line)
                    if isinstance(data, dict):
                        return data
        code = proc.poll()
        if code is not None:
            raise HarnessError(f"{proc.name} exited with {code} before it listened:\n{proc.log_tail(40)}")
        if time.monotonic() >= deadline:
            raise HarnessError(f"{proc.name} printed no address within {within} s:\n{proc.log_tail(40)}")
        await asyncio.sleep(0.02)


class LineClient:
    """The simulators' control channel: one command line, one answer line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def connect(self, host: str, port: int) -> None:
        async with asyncio.timeout(CONTROL_TIMEOUT_S):
            self._reader, self._writer = await asyncio.open_connection(host, port, limit=1 << 20)

    async def command(self, line: str) -> str:
        if self._reader is None or self._writer is None:
            raise HarnessError(f"{self.name} control channel is not connected")
        async with self._lock:
            self._writer.write(line.encode() + b"\n")
            try:
                async with asyncio.timeout(CONTROL_TIMEOUT_S):
                    await self._writer.drain()
                    raw = await self._reader.readline()
            except TimeoutError:
                raise HarnessError(
                    f"{self.name}: no answer to {line!r} within {CONTROL_TIMEOUT_S} s"
                ) from None
        if not raw:
            raise HarnessError(f"{self.name}: control channel closed (command {line!r})")
        return raw.decode().strip()

    async def ok(self, line: str) -> str:
        answer = await self.command(line)
        if not answer.startswith("ok"):
            raise HarnessError(f"{self.name}: {line!r} → {answer!r}")
        return answer

    async def json(self, line: str) -> Any:
        answer = await self.command(line)
        try:
            return json.loads(answer)
        except ValueError:
            raise HarnessError(f"{self.name}: {line!r} → {answer!r} (not JSON)") from None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class PspSim:
    """``python -m hil.psp_sim`` as a process, driven over its control port."""

    def __init__(
        self,
        workdir: Path,
        *,
        family: str = "apollo",
        pty: bool = False,
        seed: int = 1,
        session_timeout_scale: float | None = None,
    ) -> None:
        self.proc = Proc("psp_sim", workdir / "psp_sim.log")
        self.family = family
        self.pty = pty
        self.seed = seed
        self.session_timeout_scale = session_timeout_scale
        self.control = LineClient("psp_sim")
        self.where: dict[str, Any] = {}

    async def start(self) -> None:
        argv = [sys.executable, "-m", "hil.psp_sim", "--family", self.family, "--tcp", "127.0.0.1:0"]
        argv += ["--control-port", "0", "--seed", str(self.seed), "-v"]
        if self.pty:
            argv.append("--pty")
        if self.session_timeout_scale is not None:
            argv += ["--session-timeout-scale", repr(self.session_timeout_scale)]
        await self.proc.spawn(argv)
        self.where = await _first_json_line(self.proc)
        host, _, port = str(self.where["control"]).rpartition(":")
        await self.control.connect(host, int(port))

    @property
    def tcp_port(self) -> int:
        return int(str(self.where["tcp"]).rpartition(":")[2])

    @property
    def url(self) -> str:
        """The terminal URL the agent uses to reach this simulator directly."""
        if self.pty:
            return f"serial://{self.where['pty']}?baudrate=115200"
        return f"tcp://{self.where['tcp']}"

    # control commands
    async def state(self) -> dict[str, Any]:
        return dict(await self.control.json("state"))

    async def sessions(self) -> list[dict[str, Any]]:
        return list(await self.control.json("sessions"))

    async def screen(self) -> dict[str, Any]:
        return dict(await self.control.json("screen"))

    async def received(self) -> list[str]:
        return list(await self.control.json("received"))

    async def tap_emv(self, **options: object) -> str:
        """``tap emv key=value …`` (hash, pan, brand, decline, partial, pin_delay, limit, …)."""
        args = " ".join(f"{k}={v}" for k, v in options.items())
        return await self.control.ok(f"tap emv {args}".strip())

    async def tap_rfid(self, uid: str) -> str:
        return await self.control.ok(f"tap rfid uid={uid}")

    async def press(self, button_id: str) -> None:
        await self.control.ok(f"press {button_id}")

    async def command(self, line: str) -> str:
        return await self.control.ok(line)

    async def close(self) -> None:
        with contextlib.suppress(HarnessError, ConnectionError, OSError):
            if self.proc.running and self.control._writer is not None:
                await self.control.command("quit")
        await self.control.close()
        if self.proc.running:
            try:
                await self.proc.wait(3.0)
            except HarnessError:
                await self.proc.kill()


class ChargerSim:
    """``python -m hil.charger_sim`` as a process, driven over its control port."""

    def __init__(self, workdir: Path, broker_url: str, *, connectors: int, prefix: str) -> None:
        self.proc = Proc("charger_sim", workdir / "charger_sim.log")
        self.broker_url = broker_url
        self.connectors = connectors
        self.prefix = prefix
        self.control = LineClient("charger_sim")

    async def start(self) -> None:
        argv = [sys.executable, "-m", "hil.charger_sim", "--broker", self.broker_url]
        argv += ["--connectors", str(self.connectors), "--prefix", self.prefix]
        argv += ["--control-port", "0", "--meter-interval", "0.05", "--log-level", "INFO"]
        await self.proc.spawn(argv)
        where = await _first_json_line(self.proc)
        control = where["control"]
        await self.control.connect(str(control["host"]), int(control["port"]))

    async def state(self, connector_id: int) -> dict[str, Any]:
        return dict(await self.control.json(f"state {connector_id}"))

    async def energy_wh(self, connector_id: int) -> int:
        return int((await self.state(connector_id))["energy_wh"])

    async def plug(self, c: int) -> None:
        await self.control.ok(f"plug {c}")

    async def unplug(self, c: int) -> None:
        await self.control.ok(f"unplug {c}")

    async def power(self, c: int, watts: float) -> None:
        await self.control.ok(f"power {c} {watts}")

    async def pause(self, c: int) -> None:
        await self.control.ok(f"pause {c}")

    async def resume(self, c: int) -> None:
        await self.control.ok(f"resume {c}")

    async def fault(self, c: int, code: str) -> None:
        await self.control.ok(f"fault {c} {code}")

    async def clear(self, c: int) -> None:
        await self.control.ok(f"clear {c}")

    async def lose(self) -> None:
        await self.control.ok("lose")

    async def restore(self) -> None:
        await self.control.ok("restore")

    async def close(self) -> None:
        with contextlib.suppress(HarnessError, ConnectionError, OSError):
            if self.proc.running and self.control._writer is not None:
                await self.control.command("quit")
        await self.control.close()
        if self.proc.running:
            try:
                await self.proc.wait(3.0)
            except HarnessError:
                await self.proc.kill()


class TerminalLink:
    """``socat`` relaying a local TCP port to the terminal simulator: ``down()`` / ``up()`` (ERR-3).

    Taking the relay down closes the agent's connection and refuses new ones, exactly like a
    terminal that dropped off the LAN, while the simulator keeps its sessions table.
    """

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.proc = Proc("socat", workdir / "socat.log")
        self.port = free_port()
        self.target_port = target_port

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def up(self) -> None:
        argv = [
            "socat",
            f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
            f"TCP:127.0.0.1:{self.target_port}",
        ]
        await self.proc.spawn(argv, new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # wait until the relay listens (a probe connection is relayed and closed)
            try:
                async with asyncio.timeout(0.5):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
                return
            except (OSError, TimeoutError):
                if self.proc.poll() is not None or time.monotonic() >= deadline:
                    raise HarnessError(
                        f"socat did not listen on {self.port}:\n{self.proc.log_tail(20)}"
                    ) from None
                await asyncio.sleep(0.02)

    async def down(self) -> None:
        await self.proc.kill_group()


# --- the agent ------------------------------------------------------------------------------------


class Agent:
    """``evpay-agent run -c CONFIG`` as a process; the state dir survives restarts."""

    def __init__(self, workdir: Path, config_path: Path) -> None:
        self.proc = Proc("agent", workdir / "agent.log")
        self.config_path = config_path
        self.crash_at: str | None = None

    async def start(self, *, crash_at: str | None = None, env: Mapping[str, str] | None = None) -> None:
        extra = dict(env or {})
        if crash_at is not None:
            extra["EVPAY_CRASH_AT"] = crash_at
        self.crash_at = crash_at
        await self.proc.spawn(
            [*_evpay_agent_argv(), "run", "-c", str(self.config_path)], env=_child_env(extra)
        )
        if crash_at:
            self.proc.note(f"EVPAY_CRASH_AT={crash_at}")

    @property
    def running(self) -> bool:
        return self.proc.running

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AgentExited(f"the agent exited with {code} (EVPAY_CRASH_AT={self.crash_at})")

    async def kill(self) -> int | None:
        """SIGKILL: a crash or power loss."""
        self.proc.note("SIGKILL by the harness")
        return await self.proc.kill()

    async def stop(self, *, expect: int | None = 0) -> int | None:
        """SIGTERM; the agent finishes settlements in flight and exits 0 (OPS-1)."""
        self.proc.note("SIGTERM by the harness")
        code = await self.proc.terminate()
        if expect is not None and code != expect:
            raise HarnessError(f"agent exited with {code} on SIGTERM, expected {expect}")
        return code

    async def restart(self, *, crash_at: str | None = None) -> None:
        """Start again on the same config and state dir (after a kill or a stop)."""
        if self.running:
            await self.stop()
        await self.start(crash_at=crash_at)

    async def wait_exit(self, within: float) -> int:
        return await self.proc.wait(within)

    async def cli(self, *args: str, within: float = CLI_TIMEOUT_S) -> tuple[int, str, str]:
        """Run ``evpay-agent ARGS…`` (another process, e.g. ``sessions``); returns (code, out, err)."""
        proc = await asyncio.create_subprocess_exec(
            *_evpay_agent_argv(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO),
            env=_child_env(),
        )
        try:
            async with asyncio.timeout(within):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise HarnessError(f"evpay-agent {' '.join(args)} took more than {within} s") from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def sessions(self) -> list[dict[str, Any]]:
        """``evpay-agent sessions -c CONFIG --json`` (read-only; works while the daemon runs)."""
        code, out, err = await self.cli(
            "sessions", "-c", str(self.config_path), "--json", "--limit", "100000"
        )
        if code != 0:
            raise HarnessError(f"evpay-agent sessions exited {code}: {err.strip()[-2000:]}")
        try:
            data = json.loads(out)
        except ValueError:
            raise HarnessError(f"evpay-agent sessions --json printed no JSON: {out[:500]!r}") from None
        if not isinstance(data, list):
            raise HarnessError(f"evpay-agent sessions --json: expected an array, got {type(data).__name__}")
        return data


# --- configuration ---------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in (mappings recursively; anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


DEFAULT_TARIFF: dict[str, Any] = {
    "currency": "EUR",
    "minor_unit_digits": 2,
    "prices_include_vat": True,
    "vat_rate_percent": "21",
    "energy_per_kwh": "0.39",
}


def base_config(
    *,
    station_id: str,
    state_dir: Path,
    terminal_url: str,
    family: str,
    broker_url: str,
    charger_prefix: str,
    connectors: int,
) -> dict[str, Any]:
    """The structure of systemd/agent.example.yaml with test timers (short where the schema allows).

    Schema floors that bound test time: ``plug_in_timeout_s`` ≥ 30, ``final_meter_wait_s`` ≥ 1,
    ``meter_interval_s`` ≥ 1, ``settlement_retry_s`` items ≥ 1 (whole seconds).
    """
    return {
        "station_id": station_id,
        "state_dir": str(state_dir),
        "log_level": "debug",
        "terminal": {
            "driver": "psp",
            "url": terminal_url,
            "family": family,
            "keepalive_s": 5,
            "offline_alarm_after_s": 5,
        },
        "charger": {"driver": "mqtt_bridge", "broker_url": broker_url, "prefix": charger_prefix},
        "connectors": [
            {"id": c, "max_current_a": 1000, "label": f"Connector {c}"} for c in range(1, connectors + 1)
        ],
        "session": {
            "start_modes": ["tap", "plug_in"],
            "stop_modes": ["tap", "unplug"],
            "free_vend_when_offline": "refuse",
            "plug_in_timeout_s": 30,
            "card_decision_s": 25,
            "final_meter_wait_s": 1,
            "meter_interval_s": 1,
            "settlement_retry_s": [1],
            "undisposed_alarm_after_s": 60,
            "idle_fee_enabled": False,
        },
        "authorization": {"strategy": "fixed", "amount_minor": 5000, "maximum_minor": 15000},
        "tariff": dict(DEFAULT_TARIFF),
        "upstream": {"broker_url": broker_url, "prefix": "e2e/{station_id}", "protocol": 5},
    }


def expected_cost_minor(tariff: Mapping[str, Any], energy_wh: int) -> int:
    """The tariff (``agent.money.tariff``) applied to ``energy_wh`` of charging and no time components."""
    priced = Tariff(tariff_config_from_builtins(dict(tariff)))
    usage = Usage(buckets=(UsageBucket("", UsageKind.CHARGING, energy_wh=energy_wh),))
    return priced.cost_minor(usage)


# --- invariants ------------------------------------------------------------------------------------

FINAL_SIM_STATUSES = {"committed", "voided", "expired_committed", "expired_voided"}


def sim_disposals(session: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [h for h in session.get("history", []) if h.get("event") in ("committed", "voided")]


def settlement_problems(sim_sessions: Sequence[Mapping[str, Any]]) -> list[str]:
    """ERR-5 / STOP-7 on the terminal: every approved session ended in exactly one commit or void."""
    problems: list[str] = []
    for s in sim_sessions:
        sid = s["session_id"]
        disposals = sim_disposals(s)
        if s["status"] == "approved":
            problems.append(f"session {sid} still approved (authorized {s['authorized_minor']})")
        if len(disposals) != 1 and s["status"] != "approved":
            problems.append(f"session {sid}: {len(disposals)} disposals {disposals}")
        refused = [h for h in s.get("history", []) if h.get("event") == "commit_refused"]
        if refused:
            problems.append(f"session {sid}: commit above the authorized amount attempted {refused}")
        if s["status"] == "committed" and not (0 < (s["committed_minor"] or 0) <= s["authorized_minor"]):
            problems.append(f"session {sid}: committed {s['committed_minor']} of {s['authorized_minor']}")
    return problems


def payment_is_open(p: Mapping[str, Any]) -> bool:
    """A journal payment not yet finished: an EMV payment without a confirmed disposal, or any
    payment without ``ended_at``."""
    if p.get("terminal_session_id") is not None and not (p.get("disposal") and p.get("disposal_confirmed")):
        return True
    return p.get("ended_at") is None


def journal_problems(
    payments: Sequence[Mapping[str, Any]],
    sim_sessions: Sequence[Mapping[str, Any]],
    *,
    orphans_voided: bool = False,
) -> list[str]:
    """The journal agrees with the terminal: no open payment; each terminal session's disposal and
    amount are the journal's. ``orphans_voided``: a voided terminal session without a journal
    payment is fine (P6X restart recovery voids approvals the journal never saw, docs/runtime.md)."""
    problems = [
        f"payment {p.get('payment_id')} open: state={p.get('state')} disposal={p.get('disposal')} "
        f"confirmed={p.get('disposal_confirmed')} ended_at={p.get('ended_at')}"
        for p in payments
        if payment_is_open(p)
    ]
    by_sid: dict[int, list[Mapping[str, Any]]] = {}
    for p in payments:
        if p.get("terminal_session_id") is not None:
            by_sid.setdefault(int(p["terminal_session_id"]), []).append(p)
    for s in sim_sessions:
        sid = int(s["session_id"])
        rows = by_sid.get(sid, [])
        if not rows and orphans_voided and s["status"] == "voided":
            continue
        if len(rows) != 1:
            problems.append(f"terminal session {sid} ({s['status']}) has {len(rows)} journal payments")
            continue
        p = rows[0]
        if s["status"] == "committed":
            if p.get("disposal") != "commit" or p.get("final_minor") != s["committed_minor"]:
                problems.append(
                    f"session {sid}: terminal committed {s['committed_minor']}, journal "
                    f"disposal={p.get('disposal')} final_minor={p.get('final_minor')}"
                )
        elif s["status"] == "voided" and p.get("disposal") != "void":
            problems.append(f"session {sid}: terminal voided, journal disposal={p.get('disposal')}")
    return problems


# --- the station ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StationOptions:
    transport: str = "tcp"  # "tcp" | "pty"
    family: str = "apollo"
    connectors: int = 1
    relay: bool = False  # socat in front of the terminal (TCP only): link down/up
    config: Mapping[str, Any] | None = None  # merged into base_config()
    start_agent: bool = True
    # the terminal simulator's Setup session timeout times this (--session-timeout-scale); None = real
    session_timeout_scale: float | None = None


class Station:
    """The whole rig for one test. Use ``async with Station(workdir, broker, options) as st``."""

    def __init__(self, workdir: Path, broker: Broker, options: StationOptions | None = None) -> None:
        self.options = options or StationOptions()
        self.number = next(_station_numbers)
        self.workdir = workdir
        self.broker = broker
        self.station_id = f"E2E-{os.getpid()}-{self.number}"
        self.state_dir = workdir / "state"
        self.config_path = workdir / "agent.yaml"
        if self.options.transport not in ("tcp", "pty"):
            raise ValueError(f"transport {self.options.transport!r}")
        if self.options.relay and self.options.transport != "tcp":
            raise ValueError("the relay is for TCP")
        self.psp = PspSim(
            workdir,
            family=self.options.family,
            pty=self.options.transport == "pty",
            session_timeout_scale=self.options.session_timeout_scale,
        )
        self.charger = ChargerSim(
            workdir, broker.url, connectors=self.options.connectors, prefix=f"e2e{os.getpid()}n{self.number}"
        )
        self.link: TerminalLink | None = None
        self.agent = Agent(workdir, self.config_path)
        self.config: dict[str, Any] = {}

    # lifecycle
    async def __aenter__(self) -> Station:
        ACTIVE_STATIONS.append(self)
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.gather(self.psp.start(), self.charger.start())
        url = self.psp.url
        if self.options.relay:
            self.link = TerminalLink(self.workdir, self.psp.tcp_port)
            await self.link.up()
            url = self.link.url
        self.config = deep_merge(
            base_config(
                station_id=self.station_id,
                state_dir=self.state_dir,
                terminal_url=url,
                family=self.options.family,
                broker_url=self.broker.url,
                charger_prefix=self.charger.prefix,
                connectors=self.options.connectors,
            ),
            self.options.config or {},
        )
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        if self.options.start_agent:
            await self.agent.start()
            await self.wait_ready()

    async def close(self) -> None:
        """Kill the agent (never leave it running), stop the simulators and the relay. Idempotent.

        The station stays in ``ACTIVE_STATIONS`` until the fixture ends: failure reports read its logs.
        """
        if self.agent.running:
            await self.agent.kill()
        await asyncio.gather(self.psp.close(), self.charger.close(), return_exceptions=True)
        if self.link is not None:
            await self.link.down()

    def logs(self, lines: int = LOG_TAIL_LINES) -> list[tuple[str, str]]:
        """(name, last ``lines`` lines) of every process log, for failure reports."""
        procs: list[Proc] = [self.agent.proc, self.psp.proc, self.charger.proc]
        if self.link is not None:
            procs.append(self.link.proc)
        out = [(f"{p.name} [{self.station_id}] {p.log_path}", p.log_tail(lines)) for p in procs]
        out.append(
            (f"mosquitto :{self.broker.port}", "\n".join(self.broker.log_tail(20000).splitlines()[-lines:]))
        )
        return out

    # waits
    async def wait_ready(self, within: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """The agent runs and has set up the terminal (Synchronize → … → Enable)."""
        return await wait_until(
            self.psp.state,
            lambda s: s["connected"] and s["state"] in ("ENABLED", "WAIT_CARD", "WAIT_AUTH"),
            what="the agent to set up the terminal",
            within=within,
            check=self.agent.check_alive,
        )

    async def wait_connector(self, c: int, states: Sequence[str], *, within: float = 5.0) -> str:
        """The agent's connector ``c`` is in one of ``states``, read from its ``connector state``
        log lines (what the agent has processed, not what the simulators were told)."""
        pattern = re.compile(rf"connector state connector={c} old=\S+ new=(\S+)")

        async def current() -> str | None:
            found = pattern.findall(self.agent.proc.log_text())
            return found[-1] if found else None

        state = await wait_until(
            current,
            lambda s: s in states,
            what=f"connector {c} in {list(states)}",
            within=within,
            check=self.agent.check_alive,
        )
        assert state is not None
        return state

    async def wait_terminal(
        self, states: Sequence[str], *, within: float = 5.0, alive: bool = True
    ) -> dict[str, Any]:
        return await wait_until(
            self.psp.state,
            lambda s: s["connected"] and s["state"] in states,
            what=f"terminal state in {list(states)}",
            within=within,
            check=self.agent.check_alive if alive else None,
        )

    async def wait_sim_sessions(
        self,
        pred: Callable[[list[dict[str, Any]]], object],
        *,
        what: str,
        within: float = 10.0,
        alive: bool = True,
    ) -> list[dict[str, Any]]:
        return await wait_until(
            self.psp.sessions,
            pred,
            what=what,
            within=within,
            check=self.agent.check_alive if alive else None,
        )

    async def wait_session_status(
        self, status: str, *, count: int = 1, within: float = 10.0, alive: bool = True
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` terminal sessions have ``status``; returns those sessions."""
        sessions = await self.wait_sim_sessions(
            lambda ss: sum(1 for s in ss if s["status"] == status) >= count,
            what=f"{count} terminal session(s) {status}",
            within=within,
            alive=alive,
        )
        return [s for s in sessions if s["status"] == status]

    async def wait_charger(
        self,
        connector_id: int,
        pred: Callable[[dict[str, Any]], object],
        *,
        what: str,
        within: float = 10.0,
        alive: bool = True,
    ) -> dict[str, Any]:
        return await wait_until(
            lambda: self.charger.state(connector_id),
            pred,
            what=f"connector {connector_id}: {what}",
            within=within,
            check=self.agent.check_alive if alive else None,
        )

    async def wait_energy(
        self, connector_id: int, at_least_wh: int, *, within: float = 10.0
    ) -> dict[str, Any]:
        """Energy flows (the agent enabled it) and the register grew by ``at_least_wh``."""
        start = await self.charger.energy_wh(connector_id)
        return await self.wait_charger(
            connector_id,
            lambda s: s["enabled"] and s["energy_wh"] >= start + at_least_wh,
            what=f"energy enabled and ≥ {at_least_wh} Wh more",
            within=within,
        )

    async def wait_settled(
        self, *, within: float = 15.0
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Nothing approved on the terminal, no open payment in the journal; returns (sim, journal)."""
        await self.wait_sim_sessions(
            lambda ss: all(s["status"] != "approved" for s in ss),
            what="no approved session left on the terminal",
            within=within,
            alive=False,
        )
        journal = await wait_until(
            self.agent.sessions,
            lambda ps: not any(payment_is_open(p) for p in ps),
            what="no open payment in the journal",
            within=within,
            interval=0.3,
        )
        return await self.psp.sessions(), journal

    async def wait_until_journal_closed(self, *, within: float = 10.0) -> list[dict[str, Any]]:
        """The journal (``sessions --json``) has no open payment; fails fast if the agent dies."""
        return await wait_until(
            self.agent.sessions,
            lambda ps: not any(payment_is_open(p) for p in ps),
            what="no open payment in the journal",
            within=within,
            interval=0.2,
            check=self.agent.check_alive,
        )

    async def wait_for_screen(
        self, pred: Callable[[dict[str, Any]], object], *, within: float = 5.0
    ) -> dict[str, Any]:
        """A visible Apollo screen (``screen`` of the simulator) for which ``pred`` holds."""
        return await wait_until(
            self.psp.screen,
            lambda s: bool(s.get("visible")) and pred(s),
            what="a matching screen on the terminal",
            within=within,
            check=self.agent.check_alive,
        )

    def tariff(self) -> dict[str, Any]:
        return dict(self.config["tariff"])

    def expected_cost(self, energy_wh: int) -> int:
        return expected_cost_minor(self.tariff(), energy_wh)


def journal_by_sid(payments: Sequence[Mapping[str, Any]], sid: int) -> dict[str, Any]:
    rows = [
        p
        for p in payments
        if p.get("terminal_session_id") is not None and int(p["terminal_session_id"]) == sid
    ]
    if len(rows) != 1:
        raise HarnessError(f"expected one journal payment for terminal session {sid}, got {rows}")
    return dict(rows[0])
