"""``python -m hil.psp_sim``: run the PSP terminal simulator until SIGINT, SIGTERM or ``quit``.

Prints one JSON line with where it listens, e.g.
``{"tcp": "127.0.0.1:3201", "pty": "/dev/pts/5", "control": "127.0.0.1:3202"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys

from drivers.psp.messages import KNOWN_OPTIONS, CommitOrder, ProtocolOption
from hil.psp_sim.config import SimConfig
from hil.psp_sim.control import serve_lines
from hil.psp_sim.simulator import Simulator

_LOGGER = logging.getLogger(__name__)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    try:
        return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {value!r}") from None


def _byte(value: str) -> int:
    return int(value, 0)


def _options(value: str) -> ProtocolOption:
    try:
        number = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an option bitfield such as 0x1B, got {value!r}") from None
    if not 0 <= number <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"option bitfield {value!r} is not 32 bits (§5.3)")
    return ProtocolOption(number)


def _optional_seconds(value: str) -> float | None:
    if value.lower() in ("none", "never", "off"):
        return None
    return float(value)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hil.psp_sim", description="Payter PSP terminal simulator")
    p.add_argument("--family", choices=("apollo", "p6x"), default="apollo")
    p.add_argument(
        "--tcp",
        type=_host_port,
        default=None,
        metavar="HOST:PORT",
        help="PSP over TCP (psp-reference §1.3; default 127.0.0.1:3201 unless --no-tcp)",
    )
    p.add_argument("--no-tcp", action="store_true", help="do not listen on TCP")
    p.add_argument("--pty", action="store_true", help="also serve a pseudo-terminal (serial://PATH)")
    control = p.add_mutually_exclusive_group()
    control.add_argument(
        "--control-port",
        type=int,
        default=None,
        metavar="N",
        help="line-based control channel on the TCP host, port N (0 = any)",
    )
    control.add_argument("--control-stdin", action="store_true", help="read control commands from stdin")
    p.add_argument(
        "--status-header", type=_byte, default=0x00, help="Get Status Response header 0x00|0x26 (§4.3)"
    )
    p.add_argument("--read-card-header", type=_byte, default=0x41, help="Read Card header 0x41|0x40 (§4.3)")
    p.add_argument(
        "--commit-order", choices=[c.value for c in CommitOrder], default=CommitOrder.SESSION_AMOUNT.value
    )
    p.add_argument("--rfid-uid-tag", type=_byte, default=0xDFF006, help="DOL tag carrying an RFID UID (§6.4)")
    p.add_argument("--idle-close", type=float, default=20.0, help="TCP idle close in s, 0 = off (§1.3)")
    p.add_argument("--card-decision", type=float, default=30.0, help="card hold without a decision, s (§9.2)")
    p.add_argument("--card-detect-timeout", type=_optional_seconds, default=60.0, help="s, or none (§11)")
    p.add_argument("--auth-delay", type=float, default=0.05, help="delay before the Auth answer, s")
    p.add_argument(
        "--session-timeout-scale",
        type=_positive_float,
        default=1.0,
        metavar="F",
        help="tests: multiply the Setup session timeout by F (e.g. 0.001: 3600 s → 3.6 s, §5.4)",
    )
    p.add_argument("--over-capture", action="store_true", help="allow Commit above the authorised amount")
    p.add_argument(
        "--boot-not-ready", type=int, default=0, help="Not Ready answers to Synchronize after boot"
    )
    p.add_argument(
        "--card-timeout-message",
        choices=("session_cancelled", "session_declined"),
        default="session_cancelled",
    )
    p.add_argument("--card-decision-message", choices=("none", "session_cancelled"), default="none")
    p.add_argument("--lose-sessions-on-reboot", action="store_true")
    p.add_argument("--any-preamble", action="store_true", help="accept any preamble byte (§12.2)")
    p.add_argument(
        "--grant-options",
        type=_options,
        default=KNOWN_OPTIONS,
        metavar="MASK",
        help=(
            "Protocol options the terminal grants; the echo masks the others (§5.3): 0x01 transaction"
            " events, 0x02 auth DOL, 0x04 extended block format, 0x08 detailed result codes, 0x10"
            f" declined DOL. Default 0x{int(KNOWN_OPTIONS):02X} (all); e.g. 0x1B masks the extended"
            " block format, so the link stays in the normal one (252-byte payloads). A P6X never grants"
            " 0x04/0x08/0x10"
        ),
    )
    p.add_argument("--serial-number", default="SIM0000001")
    p.add_argument("--seed", type=int, default=None, help="RNG seed for session ids")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: decoded frames; -vv: debug")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        family=args.family,
        idle_close_s=args.idle_close or None,
        card_decision_s=args.card_decision,
        card_detect_timeout_s=args.card_detect_timeout,
        auth_delay_s=args.auth_delay,
        session_timeout_scale=args.session_timeout_scale,
        status_header=args.status_header,
        read_card_header=args.read_card_header,
        commit_order=CommitOrder(args.commit_order),
        rfid_uid_tag=args.rfid_uid_tag,
        over_capture=args.over_capture,
        boot_not_ready=args.boot_not_ready,
        card_timeout_message=args.card_timeout_message,
        card_decision_message=args.card_decision_message,
        keep_sessions_on_reboot=not args.lose_sessions_on_reboot,
        accept_any_preamble=args.any_preamble,
        grant_options=args.grant_options,
        serial_number=args.serial_number,
        seed=args.seed,
    )


async def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    async with Simulator(config) as sim:
        where: dict[str, str] = {}
        tcp = None if args.no_tcp else (args.tcp or ("127.0.0.1", 3201))  # §1.3: default port 3201
        if tcp is not None:
            port = await sim.serve_tcp(tcp[0], tcp[1])
            where["tcp"] = f"{tcp[0]}:{port}"
        if args.pty:
            where["pty"] = await sim.serve_pty()
        if args.control_port is not None:
            host = tcp[0] if tcp is not None else "127.0.0.1"
            where["control"] = f"{host}:{await sim.serve_control(host, args.control_port)}"
        if not where:
            print("error: nothing to serve (use --tcp or --pty)", file=sys.stderr)
            return 2
        print(json.dumps(where), flush=True)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sim.quit_requested.set)
        stdin_task = None
        if args.control_stdin:
            stdin_task = asyncio.create_task(_stdin_control(sim), name="psp-sim-control-stdin")
        try:
            await sim.quit_requested.wait()
            if stdin_task is not None:
                stdin_task.cancel()
                await asyncio.gather(stdin_task, return_exceptions=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return 0


async def _stdin_control(sim: Simulator) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        await serve_lines(sim, reader.readline, None, lambda line: print(line, end="", flush=True))
    finally:
        transport.close()
    sim.quit_requested.set()  # stdin closed or quit: stop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if not args.verbose else (logging.INFO if args.verbose == 1 else logging.DEBUG)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
