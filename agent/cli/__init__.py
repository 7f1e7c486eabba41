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
from typing import Any

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

# The top-level command each module registers: ``evpay-agent run …`` imports ``agent.cli.run`` only,
# not the eleven modules and what they import (start-up time, issue 12: start -> READY).
# tests/cli/test_cli_lazy.py checks this table against what the modules register.
COMMAND_NAMES: dict[str, str] = {
    "psp": "agent.cli.psp",
    "terminal": "agent.cli.terminal",
    "diagram": "agent.cli.diagram",
    "tariff": "agent.cli.tariff",
    "check-config": "agent.cli.config",
    "unit-dropin": "agent.cli.unit_dropin",
    "run": "agent.cli.run",
    "status": "agent.cli.status",
    "sessions": "agent.cli.sessions",
    "reconcile": "agent.cli.reconcile",
    "simulate": "agent.cli.simulate",
}


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2 unless given."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def installed_version() -> str:
    """The installed distribution's version (what pip and the .deb installed), else the source's."""
    from importlib import metadata  # only here: it pulls in email.* (~30 ms of every start)

    try:
        return metadata.version("evpay-agent")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return __version__


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"evpay-agent {installed_version()}")
        parser.exit()


def _command_of(words: Sequence[str]) -> str | None:
    """The sub-command named in ``words`` (the first word that is not an option), if any."""
    return next((word for word in words if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` naming a known sub-command, only that sub-command's module is
    imported (``--help`` and unknown commands load them all, ``--version`` none)."""
    words = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(words)
    module = COMMAND_NAMES.get(command or "")
    modules = (module,) if module in COMMAND_MODULES else COMMAND_MODULES
    if command is None and "--version" in words:
        modules = ()  # argparse prints the version and exits before any sub-command matters
    parser = argparse.ArgumentParser(
        prog="evpay-agent",
        description="Card payment at EV chargers with Payter P6X / Apollo terminals.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
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
