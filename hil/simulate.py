"""``python -m hil.simulate`` (``evpay-agent simulate``): the whole station without hardware.

The station is :class:`hil.scenario.station.Station` in sim mode, the one the HIL scenarios run on:
a Mosquitto of its own (the upstream broker, with the upstream capture and a back office on it),
``python -m hil.psp_sim`` (the terminal), ``python -m hil.charger_sim`` (the charger and its bridge)
and the real ``evpay-agent run`` process, each with its log in the work directory.

* ``--script FILE`` runs a scenario file with :func:`hil.scenario.engine.run_scenario` and prints its
  step log and result: exit 0 passed (or skipped), 1 failed, 2 an unreadable file
  (``FILE:LINE: PATH: REASON``).
* Otherwise an interactive console (``evpay> ``): each command is a scenario step run by the
  engine's own step runner (``plug 1`` is the ``plug: 1`` step, ``tap visa`` the ``tap: visa`` step
  …), plus views (``status``, ``events``, ``screen``). New upstream events, connector state changes
  and terminal link changes are printed as they arrive (``»``). A bad command is a one-line
  ``error: …`` and the console goes on; end of input or ``quit`` stops the station; Ctrl-C (or
  SIGTERM) tears it down too, exit 130 (143).

``--config FILE`` tries an agent configuration: it is validated like ``check-config`` (without
reading its secret files), then everything but the station's wiring is merged into the station's
agent configuration (for a script: under the scenario's own ``config:``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from agent.cli.simulate import add_arguments
from agent.config.schema import parse_config
from agent.config.yamlload import read_yaml_file
from agent.errors import ConfigError
from hil.rig.config import deep_merge
from hil.rig.procs import HarnessError, wait_until
from hil.scenario import schema as s
from hil.scenario.cards import BUILTIN_CARDS
from hil.scenario.engine import ScenarioResult, StepFailed, StepRunner, run_scenario, sync_read
from hil.scenario.schema import Scenario, load_scenario
from hil.scenario.station import READY_S, Station, topic_matches
from hil.stream.lines import MessageLine

__all__ = ["COMMANDS", "Console", "main"]

_LOGGER = logging.getLogger(__name__)

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
PROMPT: Final = "evpay> "
CONSOLE_POWER_W: Final = 11_000  # the simulated vehicle's draw until ``meter`` says otherwise
PRESS_WITHIN_S: Final = 3.0  # a screen with the button to press
SETTLE_WITHIN_S: Final = 30.0  # ``wait settled``
FEED_POLL_S: Final = 0.2
DEFAULT_EVENTS: Final = 10
MAX_WAIT_S: Final = s.MAX_WAIT_S
# the user's config keys that belong to the simulated station, not to the config being tried
STATION_KEYS: Final = ("station_id", "state_dir", "log_level", "charger", "upstream")
STATION_TERMINAL_KEYS: Final = ("driver", "url", "family")
_POWER = re.compile(r"^(?P<value>[0-9]+(?:\.[0-9]+)?)(?P<unit>k?w)?$", re.I)
_FAULT_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_EVENT_HIDDEN: Final = frozenset({"event", "msg_id", "connector_id", "session_id", "seq", "ts"})
_RECEIPT_SHOWN: Final = ("status", "method", "masked_pan", "energy_wh", "total_minor", "currency")

# name → (usage, what it does); the order of ``help``
COMMANDS: Final[Mapping[str, tuple[str, str]]] = {
    "plug": ("plug N", "a vehicle is plugged into connector N"),
    "unplug": ("unplug N", "the vehicle is unplugged from connector N"),
    "tap": ("tap CARD", "present a card: " + ", ".join(BUILTIN_CARDS)),
    "remove": ("remove", "take the card away from the reader"),
    "press": (
        "press LABEL|N",
        "press the Apollo screen's button whose label or id has LABEL, or that selects connector N",
    ),
    "meter": ("meter N POWER", "the vehicle on connector N draws POWER (7kW, 7400W, 0): the meter ramp"),
    "pause": ("pause N", "the vehicle on connector N pauses charging (suspended_ev)"),
    "resume": ("resume N", "the vehicle on connector N resumes charging"),
    "fault": (
        "fault drop|up|corrupt [COUNT]|reboot [keep|lose]|clear",
        "the terminal: its link drops (and stays down until 'fault up'), its next COUNT frames "
        "are corrupted, it reboots keeping (or losing) its sessions; clear ends all of it",
    ),
    "charger-fault": (
        "charger-fault N [CODE|clear]",
        "the charger reports fault CODE (default ground_fault) on connector N, or clears it",
    ),
    "broker": ("broker down|up", "the upstream broker becomes unreachable / reachable again"),
    "kill": ("kill", "SIGKILL the agent (a crash or power loss) and start it again"),
    "status": ("status", "evpay-agent status of the running agent (its control socket)"),
    "events": ("events [N]", f"the last N upstream events, alarms and receipts (default {DEFAULT_EVENTS})"),
    "screen": ("screen", "the terminal's state and the screen it shows"),
    "wait": ("wait SECONDS|settled", f"sleep; or wait until no payment is open (≤ {SETTLE_WITHIN_S:g} s)"),
    "help": ("help", "this list"),
    "quit": ("quit", "stop everything and exit (also: exit, end of input, Ctrl-D)"),
}


class UsageError(ValueError):
    """A console command or an option that cannot be run as given; the message is for the user."""


# --- the config being tried -------------------------------------------------------------------------


@dataclass(frozen=True)
class TriedConfig:
    """An agent configuration to try on the simulated station."""

    file: str
    overrides: dict[str, Any]  # merged into the station's agent configuration
    family: str
    connectors: int | None  # how many it lists (numbered 1..N), None when it lists none


def load_tried_config(path: Path) -> TriedConfig:
    """Read and validate ``path`` like ``check-config`` (secret files are not read: the simulated
    station has its own broker); raises :class:`ConfigError` ``FILE:LINE: PATH: REASON``."""
    doc = read_yaml_file(path, display=str(path))
    config = parse_config(doc, base_dir=path.parent)  # reads a tariff.ocpi_file
    assert isinstance(doc.data, dict)  # parse_config insists on a mapping
    ids = [c.id for c in config.connectors]
    if ids != list(range(1, len(ids) + 1)):
        raise doc.error(
            ("connectors",),
            f"simulate numbers the connectors 1..{len(ids)} like its charger simulator; got ids {ids}",
        )
    overrides = {k: copy.deepcopy(v) for k, v in doc.data.items() if k not in STATION_KEYS}
    if "tariff" in overrides:  # with an ocpi_file's content inline: the station's config is elsewhere
        overrides["tariff"] = copy.deepcopy(config.tariff)
    terminal = overrides.get("terminal")
    if isinstance(terminal, dict):
        overrides["terminal"] = {k: v for k, v in terminal.items() if k not in STATION_TERMINAL_KEYS}
    return TriedConfig(str(path), overrides, str(config.terminal.family), len(ids) or None)


def _connector_count(
    asked: int | None, tried: TriedConfig | None, *, scenario_needs: int | None = None
) -> int:
    listed = tried.connectors if tried is not None else None
    count = asked or listed or scenario_needs or 1
    if tried is not None and listed is not None and listed != count:
        raise UsageError(f"--connectors {count}, but {tried.file} lists {listed} connector(s)")
    if scenario_needs is not None and count < scenario_needs:
        raise UsageError(f"the scenario needs {scenario_needs} connectors, the station would have {count}")
    return count


def _workdir(asked: Path | None) -> Path:
    if asked is None:
        return Path(tempfile.mkdtemp(prefix="evpay-simulate-"))
    if asked.exists() and (not asked.is_dir() or any(asked.iterdir())):
        raise UsageError(f"--workdir {asked} is not an empty directory (the station needs a fresh one)")
    asked.mkdir(parents=True, exist_ok=True)
    return asked


# --- the console -----------------------------------------------------------------------------------


def _one_line(text: object, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _fields(payload: Mapping[str, Any], keys: tuple[str, ...] | None = None) -> str:
    items = payload.items() if keys is None else ((k, payload.get(k)) for k in keys)
    return " ".join(
        f"{k}={_value(v)}"
        for k, v in items
        if k not in _EVENT_HIDDEN and v is not None and not (k == "offline" and v is False)
    )


def event_line(station: Station, message: MessageLine) -> str | None:
    """One line for an upstream event, alarm or receipt (``None`` for any other message)."""
    payload, topic = message.payload, station.relative(message)
    if not isinstance(payload, dict):
        return None
    stamp = time.strftime("%H:%M:%S", time.localtime(message.t))
    if topic_matches("connectors/+/events", topic):
        return f"{stamp} connector {payload.get('connector_id')}  {payload.get('event')}  {_fields(payload)}"
    if topic == "alarms":
        return f"{stamp} alarm  {_fields(payload)}"
    if topic == "receipts":
        return f"{stamp} receipt connector {payload.get('connector_id')}  {_fields(payload, _RECEIPT_SHOWN)}"
    return None


def screen_line(screen: Mapping[str, Any]) -> str:
    """The simulated terminal's ``screen`` answer in one line."""
    if not screen.get("visible"):
        return "no screen of ours is shown" + (
            " (the last one was hidden)" if screen.get("hidden_screen") else ""
        )
    properties = screen.get("properties")
    texts = [
        f"{pair[0]}: {pair[1]}"
        for pair in (properties if isinstance(properties, list) else [])
        if isinstance(pair, list) and len(pair) == 2
    ]
    buttons = [str(b) for b in screen.get("buttons", [])]
    kind = screen.get("screen_type") or screen.get("template") or "screen"
    return f"[{kind}] " + " | ".join(texts) + (f"  buttons: {', '.join(buttons)}" if buttons else "")


class Console:
    """The interactive console on a started :class:`Station` (sim mode)."""

    def __init__(self, station: Station, lines: asyncio.Queue[str | None], *, echo: bool) -> None:
        self.st = station
        self.lines = lines
        self.echo = echo  # input is not a terminal: show each command after the prompt
        self.tty = sys.stdout.isatty()
        self.runner = StepRunner(station, ScenarioResult(station.scenario, "sim", station.family), None)
        self._seen = 0  # upstream messages the live feed has looked at
        self._states: dict[str, object] = {}  # retained topic → the state last shown
        self._at_prompt = False
        self._agent_restarting = False
        self._agent_exit_shown: int | None = None  # the agent start whose exit was reported
        self._handlers: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "plug": self._plug,
            "unplug": self._unplug,
            "tap": self._tap,
            "remove": self._remove,
            "press": self._press,
            "meter": self._meter,
            "pause": self._pause,
            "resume": self._resume,
            "fault": self._fault,
            "charger-fault": self._charger_fault,
            "broker": self._broker,
            "kill": self._kill,
            "status": self._status,
            "events": self._events,
            "screen": self._screen,
            "wait": self._wait,
            "help": self._help,
        }

    # -- output ----------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self._at_prompt and self.tty:  # a live line while the prompt waits: the prompt moves below
            sys.stdout.write("\r\x1b[K" + text + "\n" + PROMPT)
        else:
            if self._at_prompt:  # not a terminal: the prompt stays where it was, the lines follow
                sys.stdout.write("\n")
                self._at_prompt = False
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def done(self, text: str) -> None:
        """A command's confirmation, after what the live feed has to show of it."""
        self.flush_feed()
        self.say(text)

    def _prompt(self) -> None:
        sys.stdout.write(PROMPT)
        sys.stdout.flush()
        self._at_prompt = True

    def flush_feed(self) -> None:
        """Print what the upstream capture received since the last look (events, changes)."""
        capture = self.st.capture
        if capture is None:
            return
        fresh = capture.messages[self._seen :]
        self._seen += len(fresh)
        for message in fresh:
            line = event_line(self.st, message) or self._change_line(message)
            if line is not None:
                self.say(f"» {line}")

    def _change_line(self, message: MessageLine) -> str | None:
        topic, payload = self.st.relative(message), message.payload
        if not isinstance(payload, dict):
            return None
        if topic_matches("connectors/+/state", topic):
            key, what, new = topic, f"connector {payload.get('connector_id')}", payload.get("state")
        elif topic == "terminal":
            key, what, new = topic, "terminal link", payload.get("link")
        else:
            return None
        old = self._states.get(key)
        self._states[key] = new
        if old == new:
            return None
        stamp = time.strftime("%H:%M:%S", time.localtime(message.t))
        return f"{stamp} {what}  {old or '-'} → {new}"

    async def _feed(self) -> None:
        while True:
            self.flush_feed()
            proc = self.st.agent.proc
            if (
                not self._agent_restarting
                and proc.poll() is not None
                and self._agent_exit_shown != proc.starts
            ):
                self._agent_exit_shown = proc.starts
                self.say(
                    f"! the agent exited with {proc.returncode} (log: {proc.log_path}); "
                    "'kill' starts it again"
                )
            await asyncio.sleep(FEED_POLL_S)

    # -- the loop --------------------------------------------------------------------------------------

    async def run(self) -> None:
        feed = asyncio.create_task(self._feed(), name="simulate-feed")
        try:
            while True:
                self.flush_feed()
                self._prompt()
                line = await self.lines.get()
                self._at_prompt = False
                if line is None:  # end of input: quit
                    sys.stdout.write("\n")
                    return
                if self.echo:
                    sys.stdout.write(line.strip() + "\n")
                if not await self.execute(line):
                    return
        finally:
            self._at_prompt = False
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed

    async def execute(self, line: str) -> bool:
        """Run one command line; ``False`` for ``quit``. Never raises for a bad command."""
        words = line.split("#", 1)[0].split()
        if not words:
            return True
        name, args = words[0].lower(), words[1:]
        if name in ("quit", "exit"):
            return False
        handler = self._handlers.get(name)
        if handler is None:
            self.say(f"error: unknown command {words[0]!r}; type help for the commands")
            return True
        try:
            await handler(args)
        except UsageError as exc:
            self.say(f"error: {name}: {exc} (usage: {COMMANDS[name][0]})")
        except (StepFailed, HarnessError) as exc:
            self.say(f"error: {name}: {_one_line(exc)}")
        except Exception as exc:  # the console outlives any one command
            _LOGGER.debug("command %r failed", line, exc_info=True)
            self.say(f"error: {name}: {type(exc).__name__}: {_one_line(exc)}")
        return True

    async def step(self, step: s._Step) -> None:
        """Run ``step`` as a scenario would (:meth:`hil.scenario.engine.StepRunner.step`)."""
        await self.runner.step(step)

    # -- arguments -------------------------------------------------------------------------------------

    def _connector(self, text: str) -> int:
        try:
            c = int(text)
        except ValueError:
            raise UsageError(f"not a connector number: {text!r}") from None
        if not 1 <= c <= self.st.connectors:
            have = "connector 1" if self.st.connectors == 1 else f"connectors 1..{self.st.connectors}"
            raise UsageError(f"no connector {c}: the station has {have}")
        return c

    @staticmethod
    def _count(args: list[str], least: int, most: int | None = None) -> None:
        most = least if most is None else most
        if not least <= len(args) <= most:
            raise UsageError(f"expected {least if least == most else f'{least}..{most}'} argument(s)")

    @staticmethod
    def _power_w(text: str) -> int:
        found = _POWER.match(text.replace(",", "."))
        if found is None:
            raise UsageError(f"not a power: {text!r} (7kW, 7400W, 7400, 0)")
        watts = float(found["value"]) * (1000 if (found["unit"] or "").lower() == "kw" else 1)
        if watts > 1_000_000:
            raise UsageError(f"{text} is more than 1 MW")
        return round(watts)

    # -- commands --------------------------------------------------------------------------------------

    async def _plug(self, args: list[str]) -> None:
        self._count(args, 1)
        c = self._connector(args[0])
        await self.step(s.Plug(connector=c))
        self.done(f"ok: a vehicle is plugged into connector {c}")

    async def _unplug(self, args: list[str]) -> None:
        self._count(args, 1)
        c = self._connector(args[0])
        await self.step(s.Unplug(connector=c))
        self.done(f"ok: connector {c} unplugged")

    async def _tap(self, args: list[str]) -> None:
        self._count(args, 1)
        _card, description = self.runner._card(args[0].lower())
        await self.step(s.Tap(card=args[0].lower()))
        self.done(f"ok: tapped {args[0].lower()} ({description})")

    async def _remove(self, args: list[str]) -> None:
        self._count(args, 0)
        await self.step(s.RemoveCard())
        self.done("ok: card removed")

    async def _press(self, args: list[str]) -> None:
        if not args:
            raise UsageError("expected a label or a connector number")
        if self.st.family != "apollo":
            raise UsageError("a P6X terminal shows no screens of ours to press")
        target = " ".join(args)
        if target.isdigit():
            await self.step(s.Press(connector=self._connector(target), within=PRESS_WITHIN_S))
        else:
            await self.step(s.Press(label=target, within=PRESS_WITHIN_S))
        self.done(f"ok: pressed {target}")

    async def _meter(self, args: list[str]) -> None:
        self._count(args, 2)
        c, watts = self._connector(args[0]), self._power_w(args[1])
        await self.step(s.Ev(connector=c, power_w=watts))
        self.done(f"ok: the vehicle on connector {c} draws {watts} W")

    async def _pause(self, args: list[str]) -> None:
        self._count(args, 1)
        c = self._connector(args[0])
        await self.step(s.Ev(connector=c, pause=True))
        self.done(f"ok: the vehicle on connector {c} paused")

    async def _resume(self, args: list[str]) -> None:
        self._count(args, 1)
        c = self._connector(args[0])
        await self.step(s.Ev(connector=c, pause=False))
        self.done(f"ok: the vehicle on connector {c} resumed")

    async def _fault(self, args: list[str]) -> None:
        if not args:
            raise UsageError("expected drop, up, corrupt, reboot or clear")
        kind, rest = args[0].lower(), args[1:]
        if kind == "drop":
            self._count(rest, 0)
            await self.step(s.TerminalLink(state="down"))
            self.done("ok: the terminal link is down and refuses reconnection ('fault up' brings it back)")
        elif kind == "up":
            self._count(rest, 0)
            await self.step(s.TerminalLink(state="up"))
            self.done("ok: the terminal link is up again")
        elif kind == "corrupt":
            self._count(rest, 0, 1)
            count = 1
            if rest:
                if not rest[0].isdigit() or not 1 <= int(rest[0]) <= 1000:
                    raise UsageError(f"COUNT must be 1..1000, got {rest[0]!r}")
                count = int(rest[0])
            await self.step(s.TerminalFault(kind="corrupt", count=count))
            self.done(f"ok: the terminal corrupts its next {count} frame(s)")
        elif kind == "reboot":
            self._count(rest, 0, 1)
            sessions = rest[0].lower() if rest else "keep"
            if sessions not in ("keep", "lose"):
                raise UsageError(f"reboot keep or lose, not {rest[0]!r}")
            await self.step(s.TerminalReboot(sessions="keep" if sessions == "keep" else "lose"))
            self.done(f"ok: the terminal reboots ({sessions}ing its sessions)")
        elif kind == "clear":
            self._count(rest, 0)
            await self.step(s.TerminalFault(kind="clear"))
            await self.step(s.TerminalLink(state="up"))
            self.done("ok: terminal faults cleared, its link is up")
        else:
            raise UsageError(f"unknown terminal fault {args[0]!r}")

    async def _charger_fault(self, args: list[str]) -> None:
        self._count(args, 1, 2)
        c = self._connector(args[0])
        code = args[1] if len(args) == 2 else "ground_fault"
        if code.lower() == "clear":
            await self.step(s.ChargerFault(connector=c, clear=True))
            self.done(f"ok: the charger's fault on connector {c} cleared")
            return
        if not _FAULT_CODE.match(code):
            raise UsageError(f"not a fault code: {code!r} (letters, digits, _ . -)")
        await self.step(s.ChargerFault(connector=c, code=code))
        self.done(f"ok: the charger reports {code} on connector {c}")

    async def _broker(self, args: list[str]) -> None:
        self._count(args, 1)
        state = args[0].lower()
        if state not in ("down", "up"):
            raise UsageError(f"down or up, not {args[0]!r}")
        await self.step(s.Broker(state="down" if state == "down" else "up"))
        self.done(f"ok: the upstream broker is {'unreachable' if state == 'down' else 'reachable again'}")

    async def _kill(self, args: list[str]) -> None:
        self._count(args, 0)
        self.say("killing the agent (SIGKILL) and starting it again …")
        self._agent_restarting = True
        try:
            await self.step(s.Agent(action="kill"))
            capture = self.st.capture
            assert capture is not None
            since = len(capture.messages)
            await self.step(s.Agent(action="start"))

            def set_up() -> bool:  # Station.wait_ready may see the killed agent's retained state
                return any(
                    self.st.relative(m) == "terminal"
                    and isinstance(m.payload, dict)
                    and m.payload.get("link") == "ready"
                    for m in capture.messages[since:]
                )

            await wait_until(
                sync_read(set_up),
                bool,
                what="the restarted agent to set up the terminal",
                within=READY_S,
                check=self.st.agent.check_alive,
            )
        finally:
            self._agent_restarting = False
        self.done(f"ok: the agent runs again (pid {self.st.agent.proc.pid}) and has set up the terminal")

    async def _status(self, args: list[str]) -> None:
        self._count(args, 0)
        code, out, err = await self.st.agent.cli("status", "-c", str(self.st.config_path))
        for text in (out, err):
            if text.strip():
                self.say(text.rstrip("\n"))
        if code != 0:
            self.say(f"(evpay-agent status exited {code})")

    async def _events(self, args: list[str]) -> None:
        self._count(args, 0, 1)
        try:
            count = int(args[0]) if args else DEFAULT_EVENTS
        except ValueError:
            raise UsageError(f"not a number: {args[0]!r}") from None
        if count < 1:
            raise UsageError("N must be at least 1")
        assert self.st.capture is not None
        lines = [x for m in self.st.capture.messages if (x := event_line(self.st, m)) is not None]
        for line in lines[-count:]:
            self.say(line)
        if not lines:
            self.say("no upstream events yet")

    async def _screen(self, args: list[str]) -> None:
        self._count(args, 0)
        psp, _charger = self.st.require_sim("screen")
        state = await psp.state()
        link = "connected" if state.get("connected") else "NOT connected"
        self.say(f"terminal {self.st.family}  {state.get('state')}  agent link {link}")
        if self.st.family == "apollo":
            self.say(screen_line(await psp.screen()))

    async def _wait(self, args: list[str]) -> None:
        self._count(args, 1)
        if args[0].lower() == "settled":
            await self.step(s.WaitSettled(within=SETTLE_WITHIN_S))
            self.done("ok: no payment is open")
            return
        try:
            seconds = float(args[0])
        except ValueError:
            raise UsageError(f"not a number of seconds: {args[0]!r}") from None
        if not 0 <= seconds <= MAX_WAIT_S:
            raise UsageError(f"SECONDS must be 0..{MAX_WAIT_S:g}")
        await self.step(s.Sleep(seconds=seconds))

    async def _help(self, args: list[str]) -> None:
        width = 28
        for usage, what in COMMANDS.values():
            if len(usage) > width:
                self.say(f"  {usage}")
                usage = ""
            self.say(f"  {usage:<{width}}  {what}")


# --- input -----------------------------------------------------------------------------------------


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Feed stdin's lines to ``lines`` (``None`` at its end) from a daemon thread.

    ``os.read`` on the descriptor (not ``sys.stdin``): the thread holds no lock of a Python file
    object, so the interpreter can exit while it is blocked (Ctrl-C at a terminal)."""

    def push(item: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(lines.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody reads any more
            return False
        return True

    def read() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(0, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                if pending:
                    push(pending.decode(errors="replace"))
                push(None)
                return
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                if not push(raw.decode(errors="replace")):
                    return

    threading.Thread(target=read, name="simulate-stdin", daemon=True).start()


# --- the two modes ---------------------------------------------------------------------------------


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _agent_failure(station: Station) -> str:
    tail = [line for line in station.agent.proc.log_since_start().splitlines() if line.strip()][-8:]
    return "\n".join(f"  | {line}" for line in tail)


async def run_console(scenario: Scenario, workdir: Path, family: str, tried: TriedConfig | None) -> int:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    _read_stdin(asyncio.get_running_loop(), lines)
    station = Station(scenario, workdir, family=family)
    _say(
        f"starting the station in {workdir}: Mosquitto, the PSP simulator ({family}), the charger "
        f"simulator ({station.connectors} connector{'s' if station.connectors > 1 else ''}), "
        "evpay-agent run …"
    )
    try:
        await station.start()
    except HarnessError as exc:
        await station.close()
        _say(f"simulate: the station did not start: {_one_line(exc)}")
        if station.agent.proc.log_path.exists():
            _say(_agent_failure(station))
        return EXIT_FAILED
    except BaseException:
        await _close_fully(station)
        raise
    try:
        broker = station.broker
        pid = station.agent.proc.pid
        _say(f"station {station.station_id} is up; the agent (pid {pid}) has set up the terminal")
        _say(f"  agent config  {station.config_path}" + (f" (with {tried.file})" if tried else ""))
        _say(f"  logs          {workdir}/agent.log, psp_sim.log, charger_sim.log")
        _say(
            f"  upstream      mqtt://{broker.host}:{broker.port} prefix {station.prefix} "
            f"(capture: {station.capture_path})"
        )
        _say("type help for the commands, quit (or Ctrl-D) to stop")
        await Console(station, lines, echo=not sys.stdin.isatty()).run()
    finally:
        _say("stopping the station …")
        await _close_fully(station)
    _say(f"stopped; the logs and the journal stay in {workdir}")
    return 0


async def _close_fully(station: Station) -> None:
    """Tear ``station`` down to the end even when a signal cancels the console meanwhile (Ctrl-C
    during ``quit``, or at the same moment as the end of input): a half-closed station would leave
    the agent, the simulators or Mosquitto running. The cancellation is raised once it is done."""
    closing = asyncio.create_task(station.close(), name="simulate-close")
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing
        raise


async def run_script(scenario: Scenario, workdir: Path, family: str | None) -> int:
    _say(f"scenario {scenario.id} ({scenario.file}): {scenario.title}")
    _say(f"work directory {workdir}")
    result = await run_scenario(scenario, workdir, family=family)
    for line in result.log:
        _say(line)
    if result.status == "failed":
        run = f"{result.mode}, {result.family}, {result.duration_s:.1f} s"
        _say(f"failed: {scenario.id} ({run}): {result.message}")
        _say(f"the agent's log: {workdir / 'agent.log'}; the upstream capture: {result.capture_path}")
        return EXIT_FAILED
    if result.status == "skipped":
        _say(f"skipped: {scenario.id}: {result.message}")
        return 0
    _say(f"passed: {scenario.id} ({result.mode}, {result.family}, {result.duration_s:.1f} s)")
    return 0


def block_sigint() -> None:
    """Block SIGINT in this thread and so in every thread and child process started after it.

    A Ctrl-C at a terminal goes to the whole foreground process group: the agent, the simulators
    and Mosquitto would each stop at once, in no order, under the station's feet. With SIGINT
    blocked they never see it; :func:`supervised` takes it with ``sigwait`` and tears the station
    down in order (the children still stop on SIGTERM, SIGKILL and ``quit``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _wait_sigint(loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]) -> None:
    def wait() -> None:
        while True:
            signum = signal.sigwait({signal.SIGINT})
            try:
                loop.call_soon_threadsafe(on_signal, signum)
            except RuntimeError:  # the loop is closed
                return

    threading.Thread(target=wait, name="simulate-sigint", daemon=True).start()


async def supervised(work: Coroutine[Any, Any, int]) -> int:
    """Run ``work``; the first SIGINT (Ctrl-C; blocked by :func:`block_sigint`, taken with
    ``sigwait``) or SIGTERM cancels it (its teardown runs, later signals are ignored) and the exit
    code is 128 + the signal."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(work, name="simulate")
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            sys.stderr.write("\ninterrupted: stopping the station …\n")
            task.cancel()
        received.append(signum)

    loop.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
    _wait_sigint(loop, on_signal)
    try:
        code = await task
    except asyncio.CancelledError:
        if not received:
            raise
        code = EXIT_FAILED
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    if received:  # also when the work ended on its own as the signal came (end of input, quit)
        sys.stderr.write("interrupted: the station is stopped\n")
        return 128 + received[0]
    return code


def _console_scenario(family: str, connectors: int, tried: TriedConfig | None) -> Scenario:
    return Scenario(
        id="simulate",
        title="evpay-agent simulate: the interactive console",
        requirements=["OPS-3"],
        family="apollo" if family == "apollo" else "p6x",
        connectors=connectors,
        config=tried.overrides if tried is not None else {},
        power_w=CONSOLE_POWER_W,
        timeout_s=3600.0,
        steps=[s.Note(text="the interactive console")],
        file="(console)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evpay-agent simulate",
        description="The whole station without hardware: the real agent, the PSP terminal simulator, "
        "the charger simulator and a throwaway Mosquitto; an interactive console or a scenario file.",
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    work: Coroutine[Any, Any, int]
    try:
        tried = load_tried_config(args.config) if args.config is not None else None
        if args.script is not None:
            scenario = load_scenario(args.script)
            if tried is not None:
                scenario = msgspec.structs.replace(
                    scenario, config=deep_merge(tried.overrides, scenario.config)
                )
            count = _connector_count(args.connectors, tried, scenario_needs=scenario.connectors)
            scenario = msgspec.structs.replace(scenario, connectors=count)
            family = args.family or (tried.family if tried is not None else None)
            work = run_script(scenario, _workdir(args.workdir), family)
        else:
            family = args.family or (tried.family if tried is not None else "apollo")
            count = _connector_count(args.connectors, tried)
            work = run_console(_console_scenario(family, count, tried), _workdir(args.workdir), family, tried)
    except ConfigError as exc:  # a scenario file's ScenarioError too: FILE:LINE: PATH: REASON
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"evpay-agent simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    block_sigint()
    return asyncio.run(supervised(work))


if __name__ == "__main__":
    sys.exit(main())
