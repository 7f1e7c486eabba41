"""``evpay-agent sessions -c FILE [--json] [--open] [--limit N]``: payments from the journal (OPS-3).

Reads through its own read-only SQLite connection, so it works while the daemon runs. ``--json``
prints a JSON array (a contract used by tests and tools; the fields are listed in
``docs/runtime.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.config.schema import DEFAULT_CONFIG_PATH, load_config
from agent.errors import ConfigError
from agent.store.journal import JournalError, PaymentRow, read_payments


def _money(value: int | None) -> str:
    return "-" if value is None else f"{value / 100:.2f}"


def _table(rows: list[PaymentRow]) -> str:
    header = (
        f"{'payment':<28} {'conn':>4} {'method':<9} {'state':<11} {'auth':>8} {'final':>8} {'Wh':>7} card"
    )
    lines = [header]
    for r in rows:
        flags = " recovered" if r.recovered else ""
        lines.append(
            f"{r.payment_id:<28} {r.connector_id:>4} {r.method or '-':<9} {r.state:<11} "
            f"{_money(r.authorized_minor):>8} {_money(r.final_minor):>8} {r.energy_wh:>7} "
            f"{r.masked_pan or '-'}{flags}"
        )
    return "\n".join(lines)


def _sessions(args: argparse.Namespace) -> int:
    from agent.cli import CliError

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    try:
        rows = read_payments(loaded.config.state_dir, limit=args.limit, open_only=args.open)
    except JournalError as exc:
        raise CliError(str(exc), 1) from None
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        print(_table(rows))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sessions",
        help="list open and recent payments from the journal",
        description="List open and recent payments from the journal (read-only; works while the agent runs).",
    )
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="config file")
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.add_argument("--open", action="store_true", help="only payments not yet final")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.set_defaults(func=_sessions)
