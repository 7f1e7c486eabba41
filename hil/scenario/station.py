"""The station a scenario runs on: simulators (``sim``) or a real terminal and charger (``rig``).

Both modes run the real ``evpay-agent run`` process with its own state directory, a Mosquitto of
their own for the upstream link (behind a :class:`TcpGate`: a broker outage is the gate shut) with a
back office on it (the upstream capture, commands, RFID answers), and the terminal behind a second
gate when it speaks TCP (a terminal link drop). ``sim`` adds ``python -m hil.psp_sim`` and
``python -m hil.charger_sim`` (the charger's bridge on the same Mosquitto); ``rig`` takes the
terminal and the charger's bridge broker from ``rig.yaml`` and has no fault-injection channel.

Everything a scenario observes comes from what both modes have: the agent's log (connector
states), its journal (``evpay-agent sessions --json``) and the upstream stream. The simulators'
tables (terminal sessions, screens, the charger) are extra checks in ``sim`` mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from hil.rig.broker import Mosquitto, TcpGate
from hil.rig.config import base_config, deep_merge
from hil.rig.invariants import payment_is_open
from hil.rig.procs import Agent, ChargerSim, HarnessError, PspSim, wait_until
from hil.scenario.rig import RigConfig
from hil.scenario.schema import Scenario
from hil.stream import Finding, StreamCapture, check
from hil.stream.lines import MessageLine

__all__ = ["Station", "topic_matches"]

_numbers = itertools.count(1)
READY_S = 20.0  # the agent up and the terminal set up (TERM-1), from the process start
RELEASE_S = 30.0  # a rig run's teardown: settling what the run left open (a Commit/Void round trip each)
_STATE_LINE = re.compile(r"connector state connector=(\d+) old=\S+ new=(\S+)")


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT-style match of a relative topic (``+``: one level)."""
    want, got = pattern.split("/"), topic.split("/")
    return len(want) == len(got) and all(w in ("+", g) for w, g in zip(want, got, strict=True))


class Station:
    """Use ``async with Station(scenario, workdir, family=…, rig=…)``."""

    def __init__(
        self, scenario: Scenario, workdir: Path, *, family: str, rig: RigConfig | None = None
    ) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.family = family
        self.rig = rig
        self.mode = "sim" if rig is None else "rig"
        self.station_id = f"HIL-{os.getpid()}-{next(_numbers)}"
        self.prefix = f"hil/{self.station_id}"
        self.state_dir = workdir / "state"
        self.config_path = workdir / "agent.yaml"
        self.capture_path = workdir / "upstream.jsonl"
        self.broker = Mosquitto(workdir)
        self.upstream_gate: TcpGate | None = None
        self.terminal_gate: TcpGate | None = None
        self.psp: PspSim | None = None
        self.charger: ChargerSim | None = None
        self.connectors = scenario.connectors if rig is None else rig.connectors
        if rig is None:
            self.psp = PspSim(
                workdir, family=family, pty=scenario.transport == "pty", extra_args=scenario.psp_args
            )
        self.agent = Agent(workdir, self.config_path)
        self.agent.on_mark = self.mark
        self.config: dict[str, Any] = {}
        self.capture: StreamCapture | None = None
        self._backend: aiomqtt.Client | None = None
        self._backend_stack = contextlib.AsyncExitStack()
        self._answered_auth: set[str] = set()
        self._started_at = 0  # the capture's length when the agent process last started
        self.left_open: list[str] = []  # rig: payments still open after the teardown's release

    async def __aenter__(self) -> Station:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, *, start_agent: bool = True) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await self.broker.start()
        self.upstream_gate = TcpGate(self.broker.host, self.broker.port)
        await self.upstream_gate.start()
        charger_url, charger_prefix = (
            self.broker.url,
            f"hilc{os.getpid()}n{self.station_id.rsplit('-', 1)[1]}",
        )
        if self.rig is not None:
            charger_url, charger_prefix = self.rig.charger.broker_url, self.rig.charger.prefix
            terminal_url = self.rig.terminal.url
            tcp = self.rig.terminal.tcp
        else:
            assert self.psp is not None
            self.charger = ChargerSim(
                self.workdir, self.broker.url, connectors=self.connectors, prefix=charger_prefix
            )
            await asyncio.gather(self.psp.start(), self.charger.start())
            terminal_url = self.psp.url
            tcp = None if self.psp.pty else ("127.0.0.1", self.psp.tcp_port)
            for c in range(1, self.connectors + 1):
                await self.charger.power(c, self.scenario.power_w)
        if tcp is not None:
            self.terminal_gate = TcpGate(*tcp)
            await self.terminal_gate.start()
            terminal_url = f"tcp://127.0.0.1:{self.terminal_gate.port}"
        config = base_config(
            station_id=self.station_id,
            state_dir=self.state_dir,
            terminal_url=terminal_url,
            family=self.family,
            broker_url=self.upstream_gate.url,
            charger_prefix=charger_prefix,
            connectors=self.connectors,
        )
        config["charger"]["broker_url"] = charger_url
        config["upstream"]["prefix"] = "hil/{station_id}"
        if self.rig is not None:
            config = deep_merge(config, self.rig.agent_config)
        self.config = deep_merge(config, self.scenario.config)
        if self.rig is not None:  # the teardown's release_holds stops sessions through the back office
            stop_modes = self.config["session"].setdefault("stop_modes", [])
            if "remote" not in stop_modes:
                stop_modes.append("remote")
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        self.capture = StreamCapture(self.broker.host, self.broker.port, self.prefix, self.capture_path)
        await self.capture.__aenter__()
        self._backend = await self._backend_stack.enter_async_context(
            aiomqtt.Client(
                self.broker.host, self.broker.port, identifier=f"hil-backoffice-{uuid.uuid4().hex[:8]}"
            )
        )
        if start_agent:
            await self.start_agent()

    async def start_agent(self, *, crash_at: str | None = None) -> None:
        # what the agent publishes from now on: a killed agent's retained ``terminal: ready`` is not
        # the new process having set the terminal up
        self._started_at = len(self.capture.messages) if self.capture is not None else 0
        await self.agent.start(crash_at=crash_at)
        if crash_at is None:
            await self.wait_ready()

    async def wait_ready(self, within: float = READY_S) -> None:
        """The terminal is set up (TERM-1): the running agent's ``terminal`` state says ``ready``."""
        await wait_until(
            self._terminal_link,
            lambda link: link == "ready",
            what="the agent to set up the terminal (retained terminal state link=ready)",
            within=within,
            check=self.agent.check_alive,
        )

    async def _terminal_link(self) -> str | None:
        assert self.capture is not None
        since = self.capture.messages[self._started_at :]
        found = [m.payload for m in since if self.relative(m) == "terminal" and isinstance(m.payload, dict)]
        return str(found[-1].get("link")) if found else None

    async def close(self) -> None:
        if self.rig is not None and self.agent.running:
            await self.release_holds()
        if self.agent.running:
            await self.agent.kill()
        closers = [sim.close() for sim in (self.psp, self.charger) if sim is not None]
        await asyncio.gather(*closers, return_exceptions=True)
        for gate in (self.terminal_gate, self.upstream_gate):
            if gate is not None:
                await gate.close()
        with contextlib.suppress(Exception):
            await self._backend_stack.aclose()
        capture, self.capture = self.capture, None
        if capture is not None:
            with contextlib.suppress(Exception):
                await capture.__aexit__(None, None, None)
        await self.broker.stop()

    async def wait_journal_settled(
        self, within: float, *, what: str = "no open payment in the journal"
    ) -> None:
        """Until the journal holds no open payment (each one committed, voided or closed)."""
        await wait_until(
            self.journal,
            lambda ps: not any(payment_is_open(p) for p in ps),
            what=what,
            within=within,
            interval=0.3,
        )

    async def release_holds(self, within: float = RELEASE_S) -> None:
        """Before a rig run ends (a failed step, a timeout, Ctrl-C): a real terminal keeps what the
        run left authorized until its session timeout (TERM-2, hours), so every session that still
        holds a payment is stopped through the back office (``stop``, STOP-5) and settled; what stays
        open is listed in :attr:`left_open` for the report."""
        with contextlib.suppress(Exception):  # best effort: the run's own result is already decided
            async with asyncio.timeout(within):
                open_payments = [p for p in await self.journal() if payment_is_open(p)]
                for c in sorted({int(p["connector_id"]) for p in open_payments}):
                    with contextlib.suppress(HarnessError):
                        await self.command("stop", {"connector_id": c, "session_id": None}, within=5.0)
                await self.wait_journal_settled(within, what="the run's open payments settled")
        with contextlib.suppress(Exception):
            self.left_open = [
                f"{p['payment_id']} (connector {p['connector_id']}, {p['state']}, terminal session "
                f"{p.get('terminal_session_id')})"
                for p in await self.journal()
                if payment_is_open(p)
            ]

    # -- the upstream stream ---------------------------------------------------------------------------

    def mark(self, name: str) -> None:
        if self.capture is not None:
            self.capture.mark(name)

    def relative(self, message: MessageLine) -> str:
        return message.topic.removeprefix(self.prefix + "/")

    def messages(self, topic: str) -> list[MessageLine]:
        assert self.capture is not None
        return [m for m in self.capture.messages if topic_matches(topic, self.relative(m))]

    def retained(self, topic: str) -> dict[str, Any] | None:
        """The latest payload on ``topic`` (a retained state topic)."""
        found = self.messages(topic)
        payload = found[-1].payload if found else None
        return payload if isinstance(payload, dict) else None

    def findings(self, *, complete: bool) -> list[Finding]:
        assert self.capture is not None
        return check(self.capture.lines, complete=complete, prefix=self.prefix)

    # -- the back office ---------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        assert self._backend is not None
        await self._backend.publish(f"{self.prefix}/{topic}", json.dumps(payload).encode(), qos=1)

    async def command(self, name: str, args: dict[str, Any], *, within: float) -> dict[str, Any]:
        """Publish command ``name``; returns its result (docs/commands.md)."""
        correlation = f"hil-{uuid.uuid4().hex[:12]}"
        assert self.capture is not None
        await self.publish(f"cmd/{name}", {"correlation_id": correlation, **args})
        try:
            result = await self.capture.wait_for(
                lambda m: (
                    self.relative(m) == f"cmd/{name}/result"
                    and isinstance(m.payload, dict)
                    and m.payload.get("correlation_id") == correlation
                ),
                within,
            )
        except TimeoutError:
            raise HarnessError(f"no result of command {name} within {within:g} s") from None
        assert isinstance(result.payload, dict)
        return result.payload

    async def answer_auth(self, status: str, limit_minor: int | None, *, within: float) -> dict[str, Any]:
        """Answer the next unanswered RFID authorization request; returns the request."""
        assert self.capture is not None
        try:
            request = await self.capture.wait_for(
                lambda m: (
                    self.relative(m) == "auth/request"
                    and isinstance(m.payload, dict)
                    and m.payload.get("request_id") not in self._answered_auth
                ),
                within,
            )
        except TimeoutError:
            raise HarnessError(f"no RFID authorization request within {within:g} s") from None
        assert isinstance(request.payload, dict)
        request_id = str(request.payload.get("request_id"))
        self._answered_auth.add(request_id)
        if status != "none":  # "none": the back office never answers (the agent's timeout)
            answer: dict[str, Any] = {"request_id": request_id, "status": status}
            if limit_minor is not None:
                answer["limit_minor"] = limit_minor
            await self.publish("auth/response", answer)
        return request.payload

    # -- the agent --------------------------------------------------------------------------------------

    def connector_state(self, c: int) -> str | None:
        """The connector's last state in the agent's log (what it has processed)."""
        states = [s for n, s in _STATE_LINE.findall(self.agent.proc.log_text()) if int(n) == c]
        return states[-1] if states else None

    async def journal(self) -> list[dict[str, Any]]:
        return await self.agent.sessions()

    def session_energy_wh(self, c: int) -> int:
        state = self.retained(f"connectors/{c}/state")
        return int(state.get("energy_wh") or 0) if state else 0

    def terminal_psp_state(self) -> str | None:
        state = self.retained("terminal")
        value = None if state is None else state.get("psp_state")
        return None if value is None else str(value).upper()

    def log_tail(self, chars: int = 20_000) -> str:
        return self.agent.proc.log_text()[-chars:]

    def require_sim(self, what: str) -> tuple[PspSim, ChargerSim]:
        if self.psp is None or self.charger is None:
            raise HarnessError(f"{what} needs the simulators")
        return self.psp, self.charger
