"""``evpay-agent terminal probe --url URL``: run the PSP setup sequence once and print what the terminal says.

The field tool for commissioning: connects (serial or TCP), runs Synchronize → Protocol → Setup
(void on timeout) → Enable exactly as the daemon does (psp-reference §7.1), then prints one JSON
object with the terminal's Request IDs, its status and the accepted protocol options. Exits 1 with
a clear message when the terminal cannot be reached or does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from drivers.errors import DriverError, TransportError
from drivers.psp.link import PspLink
from drivers.psp.messages import Family
from drivers.psp.profile import Profile, profile_for
from drivers.psp.session import Opener, TerminalSession
from drivers.transport import open_transport

DEFAULT_PROBE_TIMEOUT_S = 10.0


class ProbeFailed(Exception):
    """The probe could not complete; the message is for the operator."""


def register(subparsers: Any) -> None:
    terminal = subparsers.add_parser("terminal", help="payment terminal tools")
    terminal_sub = terminal.add_subparsers(dest="terminal_command", metavar="SUBCOMMAND")
    terminal_sub.required = True
    probe = terminal_sub.add_parser(
        "probe",
        help="run the setup sequence against a terminal and print its ids and status as JSON",
        description="Connect to a Payter terminal (serial:///dev/ttyUSB0?baudrate=57600 or "
        "tcp://HOST:3201), run Synchronize → Protocol → Setup → Enable and print one JSON object.",
    )
    probe.add_argument("--url", required=True, help="serial:///dev/…?baudrate=57600 or tcp://host:3201")
    probe.add_argument("--family", choices=[f.value for f in Family], default=Family.APOLLO.value)
    probe.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_PROBE_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for the connection and for the setup sequence "
        f"(default {DEFAULT_PROBE_TIMEOUT_S:g})",
    )
    probe.set_defaults(func=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    from agent.cli import CliError  # imported here: agent.cli imports this module

    try:
        result = asyncio.run(probe(args.url, profile_for(args.family), timeout_s=args.timeout))
    except ProbeFailed as exc:
        raise CliError(str(exc), 1) from exc
    print(json.dumps(result, indent=None, sort_keys=False))
    return 0


async def probe(
    url: str, profile: Profile, *, timeout_s: float = DEFAULT_PROBE_TIMEOUT_S, opener: Opener | None = None
) -> dict[str, object]:
    """Connect, set up once, and return the JSON-ready result; :class:`ProbeFailed` otherwise."""
    try:
        if opener is None:
            transport = await open_transport(url, timeout_s=timeout_s)
        else:
            async with asyncio.timeout(timeout_s):
                transport = await opener(url)
    except (TransportError, TimeoutError) as exc:
        reason = str(exc).removeprefix(f"{url}: ") or "timed out"
        raise ProbeFailed(f"cannot connect to terminal at {url}: {reason}") from exc
    session = TerminalSession(url, profile)
    try:
        async with PspLink(transport, profile) as link:
            async with asyncio.timeout(timeout_s):
                state = await session.setup(link)
    except TimeoutError as exc:
        raise ProbeFailed(
            f"terminal at {url} did not answer {session.setup_step} within {timeout_s:g} s"
        ) from exc
    except DriverError as exc:
        raise ProbeFailed(f"terminal at {url}: {session.setup_step} failed: {exc}") from exc
    return {
        "url": url,
        "family": profile.family.value,
        "ids": None if state.ids is None else dict(state.ids),
        "status": {
            "state": None if state.psp_state is None else state.psp_state.name,
            "transaction_running": state.transaction_running,
        },
        "protocol": None if state.protocol is None else dict(state.protocol),
    }
