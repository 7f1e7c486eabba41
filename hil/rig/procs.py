"""The process rig: the real ``evpay-agent run`` process and the simulators as child processes.

Generic parts shared by the end-to-end tests (``tests/e2e/harness.py`` builds its ``Station`` on
them), the randomized-world fuzzer (:mod:`hil.fuzz`) and the HIL runner:

* :class:`Proc` — one child process whose stdout and stderr are appended to a log file;
* :class:`LineClient` — the simulators' line-based control channel (one command, one answer);
* :class:`PspSim` — ``python -m hil.psp_sim`` (the Payter terminal; PSP over TCP or a pty);
* :class:`ChargerSim` — ``python -m hil.charger_sim`` (the charger on a Mosquitto);
* :class:`TerminalLink` — ``socat`` as a TCP relay in front of the terminal (link down / up);
* :class:`Agent` — ``evpay-agent run -c CONFIG`` (start, kill = SIGKILL, stop = SIGTERM, crash points
  via ``EVPAY_CRASH_AT``), optionally from another source tree (a mutant, :mod:`hil.fuzz.mutants`);
* :func:`wait_until` — the one polling wait: every wait is bounded, nothing sleeps longer than a
  poll interval.

Nothing here imports ``tests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hil.broker import free_port

__all__ = [
    "CLI_TIMEOUT_S",
    "CONTROL_TIMEOUT_S",
    "LOG_TAIL_LINES",
    "POLL_S",
    "READY_TIMEOUT_S",
    "REPO",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Agent",
    "AgentExited",
    "ChargerSim",
    "HarnessError",
    "LineClient",
    "Proc",
    "PspSim",
    "TerminalLink",
    "agent_missing_reason",
    "child_env",
    "evpay_agent_argv",
    "first_json_line",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 200
POLL_S = 0.05
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0  # SIGTERM → exit: settlements in flight are finished first (OPS-1)
CONTROL_TIMEOUT_S = 5.0
CLI_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 10.0

T = TypeVar("T")


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


def evpay_agent_argv(tree: Path = REPO) -> list[str]:
    """How to run ``evpay-agent``: the venv's script for this checkout, else ``python -m agent``
    (always for another source ``tree``: the script would import this checkout's ``agent``)."""
    script = Path(sys.executable).parent / "evpay-agent"
    if tree == REPO and script.exists():
        return [str(script)]
    return [sys.executable, "-m", "agent"]


def child_env(extra: Mapping[str, str] | None = None, *, tree: Path = REPO) -> dict[str, str]:
    """The environment of a child: unbuffered, ``tree`` first on ``PYTHONPATH``, no crash point
    unless ``extra`` sets one."""
    env = {k: v for k, v in os.environ.items() if k != "EVPAY_CRASH_AT"}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
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
        self._log_start = 0  # where the log of the latest start begins (the file is appended to)

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
        cwd: Path = REPO,
    ) -> None:
        if self.running:
            raise HarnessError(f"{self.name} already running")
        self.starts += 1
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            log.write(f"=== harness: start #{self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=str(cwd),
                env=dict(env) if env is not None else child_env(),
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

    def log_since_start(self) -> str:
        """The log of the latest start only (an earlier start's lines, or an earlier run's in a
        reused directory, name other addresses)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def note(self, text: str) -> None:
        """Write a harness marker into the log (for reading failures)."""
        with self.log_path.open("ab") as log:
            log.write(f"=== harness: {text}\n".encode())


async def first_json_line(proc: Proc, within: float = START_TIMEOUT_S) -> dict[str, Any]:
    """The first line of the latest start's log that parses as a JSON object (the simulators'
    "where" line)."""
    deadline = time.monotonic() + within
    while True:
        for line in proc.log_since_start().splitlines():
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
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args``: more ``python -m hil.psp_sim`` options (``--grant-options``, …), appended
        last (argparse: the last occurrence of an option wins)."""
        self.proc = Proc("psp_sim", workdir / "psp_sim.log")
        self.family = family
        self.pty = pty
        self.seed = seed
        self.session_timeout_scale = session_timeout_scale
        self.extra_args = tuple(extra_args)
        self.control = LineClient("psp_sim")
        self.where: dict[str, Any] = {}

    async def start(self) -> None:
        argv = [sys.executable, "-m", "hil.psp_sim", "--family", self.family, "--tcp", "127.0.0.1:0"]
        argv += ["--control-port", "0", "--seed", str(self.seed), "-v"]
        if self.pty:
            argv.append("--pty")
        if self.session_timeout_scale is not None:
            argv += ["--session-timeout-scale", repr(self.session_timeout_scale)]
        argv += self.extra_args
        await self.proc.spawn(argv)
        self.where = await first_json_line(self.proc)
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
        await _quit_and_reap(self.proc, self.control)


async def _quit_and_reap(proc: Proc, control: LineClient) -> None:
    """A simulator's close: ``quit`` over its control channel, then reap (SIGKILL after 3 s)."""
    with contextlib.suppress(HarnessError, ConnectionError, OSError):
        if proc.running and control._writer is not None:
            await control.command("quit")
    await control.close()
    if proc.running:
        try:
            await proc.wait(3.0)
        except HarnessError:
            await proc.kill()


class ChargerSim:
    """``python -m hil.charger_sim`` as a process, driven over its control port."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        *,
        connectors: int,
        prefix: str,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args``: more ``python -m hil.charger_sim`` options (the habit flags of
        :meth:`hil.charger_sim.habits.ChargerHabits.argv`, ``--initial-energy-wh``), appended last."""
        self.proc = Proc("charger_sim", workdir / "charger_sim.log")
        self.broker_url = broker_url
        self.connectors = connectors
        self.prefix = prefix
        self.extra_args = tuple(extra_args)
        self.control = LineClient("charger_sim")
        self.where: dict[str, Any] = {}

    async def start(self) -> None:
        argv = [sys.executable, "-m", "hil.charger_sim", "--broker", self.broker_url]
        argv += ["--connectors", str(self.connectors), "--prefix", self.prefix]
        argv += ["--control-port", "0", "--meter-interval", "0.05", "--log-level", "INFO"]
        argv += self.extra_args
        await self.proc.spawn(argv)
        self.where = where = await first_json_line(self.proc)
        control = where["control"]
        await self.control.connect(str(control["host"]), int(control["port"]))

    async def state(self, connector_id: int) -> dict[str, Any]:
        return dict(await self.control.json(f"state {connector_id}"))

    async def energy_wh(self, connector_id: int) -> int:
        return int((await self.state(connector_id))["energy_wh"])

    async def payments(self, connector_id: int | None = None) -> list[dict[str, Any]]:
        """The ``payment`` messages the charger received (docs/charger-bridge.md), in order."""
        verb = "payments" if connector_id is None else f"payments {connector_id}"
        return [dict(r) for r in await self.control.json(verb)]

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

    async def command(self, line: str) -> str:
        """Any control command (``reconnect 0.5``, ``redeliver``, ``habit …``); raises unless ``ok``."""
        return await self.control.ok(line)

    async def close(self) -> None:
        await _quit_and_reap(self.proc, self.control)


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

    def __init__(self, workdir: Path, config_path: Path, *, tree: Path = REPO) -> None:
        """``tree``: the source tree the agent process runs from (``PYTHONPATH`` and working
        directory), e.g. a patched copy (:mod:`hil.fuzz.mutants`); the rig itself stays here."""
        self.proc = Proc("agent", workdir / "agent.log")
        self.config_path = config_path
        self.tree = tree
        self.crash_at: str | None = None
        self.on_mark: Callable[[str], None] | None = None  # the station's upstream capture markers

    def mark(self, name: str) -> None:
        """A marker for the upstream capture (``on_mark``), e.g. ``agent_killed`` for a crash
        the harness noticed rather than caused."""
        if self.on_mark is not None:
            self.on_mark(name)

    async def start(self, *, crash_at: str | None = None, env: Mapping[str, str] | None = None) -> None:
        extra = dict(env or {})
        if crash_at is not None:
            extra["EVPAY_CRASH_AT"] = crash_at
        self.crash_at = crash_at
        self.mark("agent_started")
        await self.proc.spawn(
            [*evpay_agent_argv(self.tree), "run", "-c", str(self.config_path)],
            env=child_env(extra, tree=self.tree),
            cwd=self.tree,
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
        self.mark("agent_killed")
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
            *evpay_agent_argv(self.tree),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(self.tree),
            env=child_env(tree=self.tree),
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
