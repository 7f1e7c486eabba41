"""``evpay-agent tariff quote|describe``: check a tariff before deploying it (issue 3, docs/tariff.md).

``--config FILE`` is YAML: its top-level ``tariff:`` mapping when there is one (so the agent's full
config file works), else the whole document. Errors name the file, the line and the key path:
``tariff.yaml:4: tariff.energy_per_kwh: expected a decimal string, got 'abc'``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from pathlib import Path

import msgspec

from agent.config.yamlload import read_yaml_file
from agent.errors import ConfigError, KeyPath
from agent.money.tariff import Tariff, TariffConfigError, tariff_config_from_builtins
from statemachines.pricing import Usage, UsageKind


def load_tariff_file(path: Path) -> Tariff:
    """Load and validate a tariff from a YAML file; raises ``CliError`` naming file, line and path.

    Uses the agent's config loader (duplicate keys rejected, every key's line kept, DESIGN.md §5.1).
    """
    from agent.cli import CliError  # agent.cli imports this module

    try:
        doc = read_yaml_file(path)
        prefix: KeyPath = ()
        data = doc.data
        if isinstance(data, dict) and "tariff" in data:
            prefix, data = ("tariff",), data["tariff"]
        try:
            return Tariff(tariff_config_from_builtins(data))
        except TariffConfigError as exc:
            raise doc.error((*prefix, *exc.path), exc.message) from None
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _start(text: str | None, tariff: Tariff) -> datetime:
    """``--start``: ISO 8601; a time without offset is wall-clock time in the tariff's timezone.
    Default: now in the tariff's timezone (the CLI may read the clock; the tariff never does)."""
    from agent.cli import CliError

    if text is None:
        return datetime.now(tariff.timezone)
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--start: expected an ISO 8601 date-time, got {text!r}") from None
    return start if start.tzinfo is not None else start.replace(tzinfo=tariff.timezone)


def modelled_usage(
    tariff: Tariff, start: datetime, *, energy_wh: int, charging_s: int, suspended_s: int = 0, idle_s: int = 0
) -> Usage:
    """The session ``tariff quote`` prices: ``charging_s`` of charging delivering ``energy_wh``
    evenly, then ``suspended_s`` suspended, then ``idle_s`` idle (stretches of length 0 are skipped,
    except charging, which always opens the session)."""
    usage = Usage()
    at = start
    for kind, seconds, energy in (
        (UsageKind.CHARGING, charging_s, energy_wh),
        (UsageKind.SUSPENDED, suspended_s, 0),
        (UsageKind.IDLE, idle_s, 0),
    ):
        if seconds or kind is UsageKind.CHARGING:
            end = at + timedelta(seconds=seconds)
            usage = tariff.accumulate(usage, at, end, energy, kind)
            at = end
    return usage


def _quote(args: argparse.Namespace) -> int:
    tariff = load_tariff_file(args.config)
    usage = modelled_usage(
        tariff,
        _start(args.start, tariff),
        energy_wh=args.energy_wh,
        charging_s=args.charging_s,
        suspended_s=args.suspended_s,
        idle_s=args.idle_s,
    )
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(tariff.quote(usage)), indent=2).decode() + "\n")
    return 0


def _describe(args: argparse.Namespace) -> int:
    print(load_tariff_file(args.config).describe())
    return 0


_CONFIG_HELP = "YAML tariff file, or the agent config (its tariff: mapping is used)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tariff", help="check a tariff file", description="Check a tariff before deploying it."
    )
    commands = parser.add_subparsers(dest="tariff_command", metavar="SUBCOMMAND")
    commands.required = True

    quote = commands.add_parser(
        "quote",
        help="print the itemised price of a modelled session as JSON",
        description=(
            "Price a session of CHARGING_S seconds of charging delivering ENERGY_WH evenly, then "
            "SUSPENDED_S suspended and IDLE_S idle. Prints one JSON object: lines, net/vat/gross "
            "totals (minor units), currency."
        ),
    )
    quote.add_argument("--config", required=True, type=Path, metavar="FILE", help=_CONFIG_HELP)
    quote.add_argument("--energy-wh", required=True, type=_non_negative_int, metavar="N")
    quote.add_argument("--charging-s", required=True, type=_non_negative_int, metavar="N")
    quote.add_argument("--suspended-s", default=0, type=_non_negative_int, metavar="N")
    quote.add_argument("--idle-s", default=0, type=_non_negative_int, metavar="N")
    quote.add_argument(
        "--start",
        metavar="ISO",
        help="session start, ISO 8601 (no offset: tariff timezone; default: now in the tariff timezone)",
    )
    quote.set_defaults(func=_quote)

    describe = commands.add_parser("describe", help="print the driver-facing price text (START-8)")
    describe.add_argument("--config", required=True, type=Path, metavar="FILE", help=_CONFIG_HELP)
    describe.set_defaults(func=_describe)
