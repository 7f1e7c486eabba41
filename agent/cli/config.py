"""``evpay-agent check-config [FILE]``: validate the agent's config without starting (CFG-1, DESIGN.md §5.7).

Prints ``FILE: OK (station S, N connectors, terminal FAMILY at URL)`` and exits 0, or prints the
first error as ``FILE:LINE: PATH: REASON`` and exits 2. Warnings (``FILE:LINE: PATH: warning: …``)
go to stderr and do not change the exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config.schema import DEFAULT_CONFIG_PATH, LoadedConfig, load_config
from agent.errors import ConfigError

EXIT_INVALID = 2


def check_config(path: Path) -> LoadedConfig:
    """Load ``path`` as ``check-config`` does; raises ``CliError`` (exit 2) with the config error."""
    from agent.cli import CliError  # agent.cli imports this module

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_INVALID) from None


def summary(loaded: LoadedConfig) -> str:
    config = loaded.config
    count = len(config.connectors)
    return (
        f"{loaded.file}: OK (station {config.station_id}, {count} connector{'s' if count != 1 else ''}, "
        f"terminal {config.terminal.family} at {config.terminal.url})"
    )


def _check(args: argparse.Namespace) -> int:
    loaded = check_config(args.file)
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    print(summary(loaded))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate the config file without starting",
        description=(
            "Validate the agent's YAML config: types, ranges, cross-field rules, the tariff and "
            "that every referenced secret and TLS file is readable. Exit 0 when valid, 2 with "
            "FILE:LINE: PATH: REASON when not. Secret contents are never printed."
        ),
    )
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        metavar="FILE",
        help=f"the config file (default {DEFAULT_CONFIG_PATH})",
    )
    parser.set_defaults(func=_check)
