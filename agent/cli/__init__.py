"""``evpay-agent`` command line: one entry point, sub-commands registered by ``agent.cli.*``.

Every sub-command module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib import metadata

from agent import __version__

# Sub-command modules, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.cli.psp",
    "agent.cli.terminal",
    "agent.cli.diagram",
    "agent.cli.tariff",
    "agent.cli.config",
    "agent.cli.unit_dropin",
    "agent.cli.run",
    "agent.cli.status",
    "agent.cli.sessions",
    "agent.cli.reconcile",
    "agent.cli.simulate",
)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2 unless given."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def installed_version() -> str:
    """The installed distribution's version (what pip and the .deb installed), else the source's."""
    try:
        return metadata.version("evpay-agent")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evpay-agent",
        description="Card payment at EV chargers with Payter P6X / Apollo terminals.",
    )
    parser.add_argument("--version", action="version", version=f"evpay-agent {installed_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"evpay-agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code
