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
from typing import Any

import msgspec
import yaml

from agent.tariff import Tariff, TariffConfigError, format_path, tariff_config_from_builtins
from statemachines.pricing import Usage, UsageKind

PathItem = str | int


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate mapping keys (DESIGN.md §5.1)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: let the base class report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


KeyPath = tuple[PathItem, ...]


def _key_lines(node: yaml.Node | None, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    """Record the 1-based line of every key path (of the key itself for mapping entries)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node))
            lines[child] = key_node.start_mark.line + 1
            _key_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _key_lines(item, (*path, index), lines)


def load_tariff_file(path: Path) -> Tariff:
    """Load and validate a tariff from a YAML file; raises ``CliError`` naming file, line and path."""
    from agent.cli import CliError  # agent.cli imports this module

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise CliError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    lines: dict[KeyPath, int] = {}
    _key_lines(node, (), lines)
    prefix: KeyPath = ()
    if isinstance(data, dict) and "tariff" in data:
        prefix, data = ("tariff",), data["tariff"]
    try:
        return Tariff(tariff_config_from_builtins(data))
    except TariffConfigError as exc:
        full = (*prefix, *exc.path)
        line = next((lines[full[:n]] for n in range(len(full), 0, -1) if full[:n] in lines), 1)
        where = format_path(full) or "(document)"
        raise CliError(f"{path}:{line}: {where}: {exc.message}") from None


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
