"""Line-based control channel of the PSP simulator.

One command per line, one reply per line: ``ok …``, a JSON document for structured answers, or
``error: …``. The same commands work in-process (``sim.control("state")``), over TCP
(``--control-port``, :class:`ControlServer`) and on stdin (``--control-stdin``). A bad command
never disturbs the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from drivers.psp.messages import DeclineReason, UiRequest, describe
from hil.psp_sim.cards import Card, CardBehaviour, Outcome
from hil.psp_sim.simulator import REQUEST_NAMES, screen_buttons

if TYPE_CHECKING:
    from hil.psp_sim.simulator import Simulator

_LOGGER = logging.getLogger(__name__)

MAX_LINE = 4096  # a control line longer than this is refused
MAX_SCREENS = 200  # ``screens`` answers with at most this many (one reply line stays small)

HELP = (
    "commands: help | state | tap emv [hash=H40] [pan=MASKED] [brand=B] "
    "[decline=REASON|partial=N|pin_delay=S|limit=N] [limit_action=partial|decline] "
    "[update=approve|partial:N|decline:REASON] | tap rfid uid=HEX | remove | press ID | screen | screens | "
    "sessions | received | faults | fault drop [N] [only=REQUEST] | fault corrupt [N] [only=REQUEST] | "
    "fault split [CHUNK] [N] | "
    "fault delay SECONDS [N] [only=REQUEST] | fault not_ready N | fault silent on|off | fault clear | "
    "close | reboot [keep|lose] | quit"
)


class CommandError(ValueError):
    """A control command that cannot be run; the message is sent back as ``error: …``."""


def handle_command(sim: Simulator, line: str) -> str:
    """Run one command; always returns exactly one line."""
    try:
        reply = _dispatch(sim, line)
    except (CommandError, ValueError, KeyError, IndexError, OverflowError) as exc:
        reply = f"error: {exc}"
    except Exception as exc:  # the control channel must never take the simulator down
        _LOGGER.exception("control command %r failed", line[:80])
        reply = f"error: internal: {type(exc).__name__}: {exc}"
    return reply.replace("\r", " ").replace("\n", " ")


def _dispatch(sim: Simulator, line: str) -> str:
    words = line.strip().split()
    if not words:
        raise CommandError("empty command; try help")
    command, args = words[0].lower(), words[1:]
    handler = _COMMANDS.get(command)
    if handler is None:
        raise CommandError(f"unknown command {command!r}; try help")
    return handler(sim, args)


def _no_args(args: list[str], command: str) -> None:
    if args:
        raise CommandError(f"{command} takes no arguments")


def _cmd_help(sim: Simulator, args: list[str]) -> str:
    return HELP


def _cmd_state(sim: Simulator, args: list[str]) -> str:
    _no_args(args, "state")
    return json.dumps(sim.status_json())


def _cmd_sessions(sim: Simulator, args: list[str]) -> str:
    _no_args(args, "sessions")
    return json.dumps(sim.sessions_json())


def _cmd_received(sim: Simulator, args: list[str]) -> str:
    _no_args(args, "received")
    return json.dumps([m.name for m in sim.received])


def _cmd_screens(sim: Simulator, args: list[str]) -> str:
    """Every UI Request received so far (oldest first, at most the last ``MAX_SCREENS``), described."""
    _no_args(args, "screens")
    shown = [describe(m) for m in sim.received if isinstance(m, UiRequest)]
    return json.dumps(shown[-MAX_SCREENS:])


def _cmd_faults(sim: Simulator, args: list[str]) -> str:
    _no_args(args, "faults")
    return json.dumps(sim.faults.to_json())


def _cmd_screen(sim: Simulator, args: list[str]) -> str:
    _no_args(args, "screen")
    screen = sim.current_screen
    if screen is None:
        hidden = sim.last_screen is not None
        payment = sim.payment_screen
        extra = {} if payment is None else {"payment": payment}
        return json.dumps({"visible": False, "hidden_screen": hidden, **extra})
    out = describe(screen)
    out["visible"] = True
    out["buttons"] = screen_buttons(screen)
    return json.dumps(out)


def _key_values(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key or not value:
            raise CommandError(f"expected key=value, got {arg!r}")
        if key in out:
            raise CommandError(f"{key} given twice")
        out[key.lower()] = value
    return out


def _int(value: str, what: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        raise CommandError(f"{what} must be an integer, got {value!r}") from None
    if number < 0:
        raise CommandError(f"{what} must not be negative")
    return number


def _float(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise CommandError(f"{what} must be a number, got {value!r}") from None
    if not 0 <= number < 1e6:
        raise CommandError(f"{what} out of range")
    return number


def _reason(value: str) -> DeclineReason:
    try:
        return DeclineReason[value.upper()]
    except KeyError:
        pass
    code = _int(value, "decline reason")
    if code not in DeclineReason._value2member_map_:
        raise CommandError(f"unknown decline reason {value!r}")
    return DeclineReason(code)


def _update_outcome(value: str) -> Outcome:
    kind, _, arg = value.partition(":")
    if kind == "approve" and not arg:
        return Outcome.approve()
    if kind == "partial" and arg:
        return Outcome.partial(_int(arg, "update partial amount"))
    if kind == "decline":
        return Outcome.decline(_reason(arg) if arg else DeclineReason.INSUFFICIENT_FUNDS)
    raise CommandError("update must be approve, partial:N or decline[:REASON]")


def _cmd_tap(sim: Simulator, args: list[str]) -> str:
    if not args:
        raise CommandError("tap emv … or tap rfid uid=HEX")
    kind, options = args[0].lower(), _key_values(args[1:])
    if kind == "rfid":
        if set(options) != {"uid"}:
            raise CommandError("tap rfid takes exactly uid=HEX")
        return f"ok {sim.tap(Card.rfid(options['uid']))}"
    if kind != "emv":
        raise CommandError(f"unknown card kind {kind!r} (emv, rfid)")
    known = {"hash", "pan", "brand", "decline", "partial", "pin_delay", "limit", "limit_action", "update"}
    unknown = set(options) - known
    if unknown:
        raise CommandError(f"unknown tap option(s): {', '.join(sorted(unknown))}")
    if "decline" in options and "partial" in options:
        raise CommandError("decline and partial exclude each other")
    if "decline" in options:
        outcome = Outcome.decline(_reason(options["decline"]))
    elif "partial" in options:
        outcome = Outcome.partial(_int(options["partial"], "partial"))
    else:
        outcome = Outcome.approve()
    limit_action = options.get("limit_action", "partial")
    if limit_action not in ("partial", "decline"):
        raise CommandError("limit_action must be partial or decline")
    behaviour = CardBehaviour(
        outcome=outcome,
        pin_delay_s=_float(options["pin_delay"], "pin_delay") if "pin_delay" in options else 0.0,
        approve_up_to_minor=_int(options["limit"], "limit") if "limit" in options else None,
        limit_action="partial" if limit_action == "partial" else "decline",
        update=_update_outcome(options["update"]) if "update" in options else Outcome.approve(),
    )
    card_args: dict[str, str] = {}
    for option, name in (("hash", "card_hash"), ("pan", "masked_pan"), ("brand", "brand")):
        if option in options:
            card_args[name] = options[option]
    card = Card.emv(behaviour=behaviour, **card_args)
    return f"ok {sim.tap(card)}"


def _cmd_remove(sim: Simulator, args: list[str]) -> str:
    _no_args(args, "remove")
    sim.remove_card()
    return "ok"


def _cmd_press(sim: Simulator, args: list[str]) -> str:
    if len(args) != 1:
        raise CommandError("press takes one button id")
    sim.press(args[0])
    return "ok"


def _cmd_fault(sim: Simulator, args: list[str]) -> str:
    if not args:
        raise CommandError("fault drop|corrupt|split|delay|not_ready|silent|clear …")
    kind, rest = args[0].lower(), args[1:]
    faults = sim.faults

    def count(index: int, default: int | None) -> int | None:
        if len(rest) <= index:
            return default
        if rest[index] in ("all", "always"):
            return None
        return _int(rest[index], "count")

    def at_most(n: int) -> None:
        if len(rest) > n:
            raise CommandError(f"fault {kind}: too many arguments")

    only = None
    if kind in ("drop", "corrupt", "delay") and rest and rest[-1].lower().startswith("only="):
        only = rest.pop()[len("only=") :]
        if only not in REQUEST_NAMES:
            raise CommandError(f"only: unknown request type {only!r}")

    if kind == "drop":
        at_most(1)
        faults.drop_replies(count(0, 1), only=only)
    elif kind == "corrupt":
        at_most(1)
        faults.corrupt_replies(count(0, 1), only=only)
    elif kind == "split":
        at_most(2)
        chunk = _int(rest[0], "chunk") if rest else 1
        if chunk < 1:
            raise CommandError("chunk must be at least 1")
        faults.split_replies(chunk, count(1, None))
    elif kind == "delay":
        if not rest:
            raise CommandError("fault delay SECONDS [N] [only=REQUEST]")
        at_most(2)
        faults.delay_replies(_float(rest[0], "seconds"), count(1, 1), only=only)
    elif kind == "not_ready":
        if len(rest) != 1:
            raise CommandError("fault not_ready N")
        faults.not_ready(_int(rest[0], "count"))
    elif kind == "silent":
        if len(rest) != 1 or rest[0] not in ("on", "off"):
            raise CommandError("fault silent on|off")
        faults.silent_on_bad_checksum(rest[0] == "on")
    elif kind == "clear":
        at_most(0)
        faults.clear()
    else:
        raise CommandError(f"unknown fault {kind!r}")
    return "ok"


def _cmd_close(sim: Simulator, args: list[str]) -> str:
    _no_args(args, "close")
    sim.close_connection()
    return "ok"


def _cmd_reboot(sim: Simulator, args: list[str]) -> str:
    if len(args) > 1 or (args and args[0] not in ("keep", "lose")):
        raise CommandError("reboot [keep|lose]")
    sim.reboot(None if not args else args[0] == "keep")
    return "ok"


def _cmd_quit(sim: Simulator, args: list[str]) -> str:
    _no_args(args, "quit")
    sim.quit_requested.set()
    return "ok bye"


_COMMANDS: dict[str, Callable[[Simulator, list[str]], str]] = {
    "help": _cmd_help,
    "state": _cmd_state,
    "sessions": _cmd_sessions,
    "received": _cmd_received,
    "faults": _cmd_faults,
    "screen": _cmd_screen,
    "screens": _cmd_screens,
    "tap": _cmd_tap,
    "remove": _cmd_remove,
    "press": _cmd_press,
    "fault": _cmd_fault,
    "close": _cmd_close,
    "reboot": _cmd_reboot,
    "quit": _cmd_quit,
}


class ControlServer:
    """The control channel over TCP: one command per line, one reply per line."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()
        self._count = 0
        self._closing = False

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._on_client, host, port, limit=MAX_LINE)
        bound: int = self._server.sockets[0].getsockname()[1]
        _LOGGER.info("control channel on %s:%d", host, bound)
        return bound

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._count += 1
            task.set_name(f"psp-sim-control-client-{self._count}")
            self._connections.add(task)
        try:
            await serve_lines(self._sim, reader.readline, writer)
        except (ConnectionError, OSError) as exc:
            _LOGGER.info("control client gone: %s", exc)
        except asyncio.CancelledError:
            # asyncio.start_server's done-callback logs a cancelled handler task as an error
            # (Python 3.11), so a handler cancelled by close() ends normally instead.
            if not self._closing:
                raise
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        clients = list(self._connections)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None


async def serve_lines(
    sim: Simulator,
    readline: Callable[[], Awaitable[bytes]],
    writer: asyncio.StreamWriter | None,
    write: Callable[[str], None] | None = None,
) -> None:
    """Read command lines until EOF or ``quit``; answer each with one line."""
    while True:
        try:
            raw = await readline()
        except ValueError:  # asyncio.LimitOverrunError: line longer than MAX_LINE
            reply = "error: line too long"
        else:
            if not raw:
                return
            reply = handle_command(sim, raw.decode("utf-8", "replace").strip())
        line = reply + "\n"
        if writer is not None:
            writer.write(line.encode("utf-8"))
            await writer.drain()
        if write is not None:
            write(line)
        if sim.quit_requested.is_set():
            return
