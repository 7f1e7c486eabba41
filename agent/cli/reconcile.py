"""``evpay-agent reconcile -c FILE [--date D | --since T --until T] [--json] [--fail-on-discrepancy]``.

Prints the reconciliation report (REC-1, DESIGN.md §5.6, docs/reconciliation.md) built from the
journal through a read-only connection, so it works while the daemon runs. Default: today in the
station's timezone (the tariff's ``timezone``, else UTC). ``--json`` prints the
``ReconciliationReport`` payload of the upstream contract (trigger ``cli``).

Exit codes: 0 report printed; 1 journal unreadable; 2 bad arguments, config or missing journal;
3 with ``--fail-on-discrepancy`` when the report lists a discrepancy (``info`` ones excepted).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime
from pathlib import Path

from agent.config.schema import DEFAULT_CONFIG_PATH, load_config
from agent.errors import ConfigError
from agent.money.reconcile import build_report, has_discrepancy, render_text
from agent.store.journal import JOURNAL_FILE, JournalError
from agent.upstream.contract import encode

EXIT_DISCREPANCY = 3


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset (e.g. 2026-03-01T00:00+01:00 or Z)")
    return value


def _reconcile(args: argparse.Namespace) -> int:
    from agent.cli import CliError

    if (args.since is None) != (args.until is None):
        raise CliError("--since and --until go together")
    if args.date is not None and args.since is not None:
        raise CliError("give --date or --since/--until, not both")
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    config = loaded.config
    journal = Path(config.state_dir) / JOURNAL_FILE
    if not journal.is_file():
        raise CliError(f"no journal at {journal} (has the agent run with state_dir {config.state_dir}?)", 2)
    try:
        report = build_report(
            config.state_dir,
            station_id=config.station_id,
            day=args.date,
            since=args.since,
            until=args.until,
            tariff=loaded.tariff,
            undisposed_after_s=config.session.undisposed_alarm_after_s,
            trigger="cli",
        )
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    except JournalError as exc:
        raise CliError(str(exc), 1) from None
    if args.json:
        sys.stdout.write(encode(report).decode() + "\n")
    else:
        sys.stdout.write(render_text(report, minor_digits=loaded.tariff.minor_unit_digits))
    if args.fail_on_discrepancy and has_discrepancy(report):
        return EXIT_DISCREPANCY
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reconcile",
        help="print the reconciliation report of a day (payments, totals, discrepancies)",
        description=(
            "Print the reconciliation report from the journal (read-only; works while the agent "
            "runs). Days are in the station's timezone (the tariff's, else UTC); default: today."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="config file")
    parser.add_argument("--date", type=_date, help="local day YYYY-MM-DD (default: today)")
    parser.add_argument("--since", type=_instant, help="window start, ISO 8601 with offset (with --until)")
    parser.add_argument("--until", type=_instant, help="window end, exclusive, ISO 8601 with offset")
    parser.add_argument("--json", action="store_true", help="print the ReconciliationReport JSON payload")
    parser.add_argument(
        "--fail-on-discrepancy",
        action="store_true",
        help=f"exit {EXIT_DISCREPANCY} when the report lists a discrepancy (for monitoring)",
    )
    parser.set_defaults(func=_reconcile)
