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

The process rig itself (``Proc``, ``LineClient``, ``PspSim``, ``ChargerSim``, ``TerminalLink``,
``Agent``, ``wait_until``), the generated configuration (``base_config``) and the settlement
invariants live in :mod:`hil.rig` (shared with the fuzzer, :mod:`hil.fuzz`); they are re-exported
here under their historic names.

Every process writes stdout/stderr to a log file in the test's directory; on a failing test the
conftest attaches the last 200 lines of each log to the report. Every wait is bounded and polls
(:func:`wait_until`); nothing sleeps longer than a poll interval.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agent.money.tariff import tariff_from_builtins
from hil.rig.config import DEFAULT_TARIFF, base_config, deep_merge
from hil.rig.invariants import (
    FINAL_SIM_STATUSES,
    journal_by_sid,
    journal_problems,
    payment_is_open,
    settlement_problems,
    sim_disposals,
)
from hil.rig.procs import (
    CLI_TIMEOUT_S,
    CONTROL_TIMEOUT_S,
    LOG_TAIL_LINES,
    POLL_S,
    READY_TIMEOUT_S,
    REPO,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Agent,
    AgentExited,
    ChargerSim,
    HarnessError,
    LineClient,
    Proc,
    PspSim,
    TerminalLink,
    agent_missing_reason,
    wait_until,
)
from hil.rig.procs import child_env as _child_env
from hil.rig.procs import evpay_agent_argv as _evpay_agent_argv
from hil.rig.procs import first_json_line as _first_json_line
from hil.stream import Finding, StreamCapture, check
from hil.stream.capture import parse_broker_url
from statemachines.pricing import Usage, UsageKind
from tests.mosquitto import Broker

__all__ = [
    "ACTIVE_STATIONS",
    "CLI_TIMEOUT_S",
    "CONTROL_TIMEOUT_S",
    "DEFAULT_TARIFF",
    "FINAL_SIM_STATUSES",
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
    "Station",
    "StationOptions",
    "TerminalLink",
    "_child_env",
    "_evpay_agent_argv",
    "_first_json_line",
    "agent_missing_reason",
    "base_config",
    "deep_merge",
    "expected_cost_minor",
    "journal_by_sid",
    "journal_problems",
    "payment_is_open",
    "settlement_problems",
    "sim_disposals",
    "wait_until",
]

_station_numbers = itertools.count(1)

# Stations of the running test (the fixture clears it); the conftest reads their logs on failure.
ACTIVE_STATIONS: list[Station] = []


def expected_cost_minor(tariff: Mapping[str, Any], energy_wh: int) -> int:
    """The tariff (``agent.money.tariff``) applied to ``energy_wh`` of charging and no time components."""
    priced = tariff_from_builtins(dict(tariff))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return priced.cost_minor(priced.accumulate(Usage(), at, at, energy_wh, UsageKind.CHARGING))


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
    # capture everything the agent publishes upstream and check it with hil.check_stream when the
    # station closes (integrity issue F: every e2e test's stream must pass)
    check_stream: bool = True
    # more ``python -m hil.psp_sim`` options, e.g. ("--grant-options", "0x1B")
    psp_args: tuple[str, ...] = ()


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
            extra_args=self.options.psp_args,
        )
        self.charger = ChargerSim(
            workdir, broker.url, connectors=self.options.connectors, prefix=f"e2e{os.getpid()}n{self.number}"
        )
        self.link: TerminalLink | None = None
        self.agent = Agent(workdir, self.config_path)
        self.agent.on_mark = self.mark
        self.config: dict[str, Any] = {}
        self.capture: StreamCapture | None = None
        self.capture_path = workdir / "upstream.jsonl"
        self.findings: list[Finding] = []

    # lifecycle
    async def __aenter__(self) -> Station:
        ACTIVE_STATIONS.append(self)
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self.close(check_stream=exc is None)

    @property
    def upstream_prefix(self) -> str:
        return str(self.config["upstream"]["prefix"]).format(station_id=self.station_id)

    def mark(self, name: str) -> None:
        """A marker in the upstream capture (``broker_down``, ``agent_killed`` …, hil/stream/lines.py)."""
        if self.capture is not None:
            self.capture.mark(name)

    def stream_findings(self, *, complete: bool = False) -> list[Finding]:
        """What ``hil.check_stream`` says about everything the agent published so far."""
        if self.capture is None:
            return []
        return check(self.capture.lines, complete=complete, prefix=self.upstream_prefix)

    def assert_stream(self, *, complete: bool = False) -> None:
        """The capture passes the stream checker (``complete``: everything has settled)."""
        findings = self.stream_findings(complete=complete)
        if findings:
            raise HarnessError(
                f"upstream stream of {self.station_id} ({self.capture_path}) has findings:\n"
                + "\n".join(str(f) for f in findings[:40])
            )

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
        if self.options.check_stream:
            self.capture = self._new_capture()
            await self.capture.__aenter__()
        if self.options.start_agent:
            await self.agent.start()
            await self.wait_ready()

    def _new_capture(self) -> StreamCapture:
        """A back office on the agent's upstream broker (TLS with the agent's CA and certificate)."""
        upstream = self.config["upstream"]
        host, port, tls, user, password = parse_broker_url(str(upstream["broker_url"]))
        context = None
        if tls:
            files = upstream.get("tls") or {}
            context = ssl.create_default_context(cafile=files.get("ca_file"))
            if files.get("cert_file"):
                context.load_cert_chain(files["cert_file"], files.get("key_file"))
        return StreamCapture(
            host,
            port,
            self.upstream_prefix,
            self.capture_path,
            username=user,
            password=password,
            tls_context=context,
        )

    async def close(self, *, check_stream: bool = True) -> None:
        """Kill the agent (never leave it running), stop the simulators, the relay and the upstream
        capture, and check the captured stream (raises :class:`HarnessError` with its findings;
        ``check_stream=False`` when the test already failed: the findings go into the report).
        Idempotent. The station stays in ``ACTIVE_STATIONS`` until the fixture ends: failure
        reports read its logs."""
        if self.agent.running:
            await self.agent.kill()
        await asyncio.gather(self.psp.close(), self.charger.close(), return_exceptions=True)
        if self.link is not None:
            await self.link.down()
        capture, self.capture = self.capture, None
        if capture is None:
            return
        await capture.__aexit__(None, None, None)
        self.findings = check(capture.lines, complete=False, prefix=self.upstream_prefix)
        if self.findings and check_stream:
            raise HarnessError(
                f"upstream stream of {self.station_id} ({self.capture_path}) has findings:\n"
                + "\n".join(str(f) for f in self.findings[:40])
            )

    def logs(self, lines: int = LOG_TAIL_LINES) -> list[tuple[str, str]]:
        """(name, last ``lines`` lines) of every process log, for failure reports."""
        procs: list[Proc] = [self.agent.proc, self.psp.proc, self.charger.proc]
        if self.link is not None:
            procs.append(self.link.proc)
        out = [(f"{p.name} [{self.station_id}] {p.log_path}", p.log_tail(lines)) for p in procs]
        out.append(
            (f"mosquitto :{self.broker.port}", "\n".join(self.broker.log_tail(20000).splitlines()[-lines:]))
        )
        if self.findings:
            out.append((f"hil.check_stream [{self.station_id}]", "\n".join(str(f) for f in self.findings)))
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
