"""``evpay-agent tariff quote|describe|price``: check a tariff before deploying it (issue 3, docs/tariff.md).

The tariff comes from ``--config FILE`` or ``--ocpi-tariff FILE``:

- ``--config FILE`` is YAML: its top-level ``tariff:`` mapping when there is one (so the agent's full
  config file works), else the whole document; any form ``tariff_from_builtins`` reads (the simple
  form, the OCPI wrapper with ``ocpi`` or ``ocpi_file``, a bare OCPI 2.2.1 Tariff).
- ``--ocpi-tariff FILE`` is a JSON (``.json``) or YAML file holding an OCPI 2.2.1 Tariff object (or
  the OCPI wrapper); ``--timezone ZONE`` is the station's zone its local-time restrictions are read in.

``price`` prices an OCPI 2.2.1 CDR's ``charging_periods`` (``--ocpi-cdr FILE``) with the tariff.
Errors name the file, the line (YAML) and the key or OCPI field path and exit with status 2:
``tariff.yaml:4: tariff.energy_per_kwh: expected a decimal string, got 'abc'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Final

import msgspec

from agent.config.yamlload import YamlDocument, format_path, read_json_file, read_yaml_file
from agent.errors import ConfigError, KeyPath, PathItem
from agent.money.engine import Dimension, ExactPrice
from agent.money.ocpi import OcpiError, ocpi_cdr_from_builtins
from agent.money.tariff import Tariff, TariffConfigError, round_half_up, tariff_from_builtins, usage_from_cdr
from statemachines.pricing import Usage, UsageKind

_OCPI_DECIMALS: Final = 4  # OCPI 2.2.1 types §number: 4 decimals unless a field says otherwise


# ------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class _Document:
    """A decoded JSON or YAML file and how to point at a path inside it."""

    file: str
    data: object
    yaml: YamlDocument | None  # the keys' lines; None for JSON (decoded by ``json``, no lines)

    def error(self, path: Iterable[PathItem], message: str) -> ConfigError:
        if self.yaml is not None:
            return self.yaml.error(path, message)
        return ConfigError(self.file, message, path=format_path(path))


def _read_document(path: Path) -> _Document:
    """JSON when the name ends in ``.json`` (duplicate keys rejected), else YAML with the config
    loader's rules: decoded as the agent decodes ``tariff.ocpi_file`` (agent.config.schema), so a
    tariff checked here is the tariff the agent runs. Raises ``ConfigError``."""
    file = str(path)
    if path.suffix.lower() != ".json":
        doc = read_yaml_file(path)
        return _Document(file, doc.data, doc)
    return _Document(file, read_json_file(path), None)


def load_tariff_file(path: Path, *, timezone: str | None = None) -> Tariff:
    """Load and validate a tariff in any form from a YAML file, or from the ``tariff:`` mapping of
    the agent config (``tariff.ocpi_file`` is read relative to the file's directory); raises
    ``CliError`` naming file, line and path. ``timezone``: ``--timezone`` (see :func:`_tariff`)."""
    from agent.cli import CliError  # agent.cli imports this module

    try:
        doc = _read_document(path)
        prefix: KeyPath = ()
        data = doc.data
        if isinstance(data, dict) and "tariff" in data:
            prefix, data = ("tariff",), data["tariff"]
        ocpi_doc: _Document | None = None
        if isinstance(data, dict) and "ocpi_file" in data:
            data, ocpi_doc = _with_ocpi_file(doc, prefix, data, path.parent)
        return _tariff(doc, prefix, data, timezone, ocpi_doc)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def load_ocpi_tariff_file(path: Path, *, timezone: str | None = None) -> Tariff:
    """Load and validate ``--ocpi-tariff FILE`` (JSON or YAML): a bare OCPI 2.2.1 Tariff, or any
    other form ``tariff_from_builtins`` reads; raises ``CliError`` naming file, line and OCPI path."""
    from agent.cli import CliError

    try:
        doc = _read_document(path)
        return _tariff(doc, (), doc.data, timezone, None)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _with_ocpi_file(
    doc: _Document, prefix: KeyPath, data: dict[str, object], base_dir: Path
) -> tuple[dict[str, object], _Document]:
    """``data`` with the content of its ``ocpi_file`` as ``ocpi`` (config loader semantics)."""
    key: KeyPath = (*prefix, "ocpi_file")
    name = data["ocpi_file"]
    if "ocpi" in data:
        raise doc.error(key, "give either ocpi or ocpi_file, not both")
    if not isinstance(name, str) or not name:
        raise doc.error(key, "expected the path of a JSON or YAML file holding an OCPI 2.2.1 Tariff object")
    file = Path(name) if Path(name).is_absolute() else base_dir / name
    ocpi_doc = _read_document(file)
    resolved = {k: v for k, v in data.items() if k != "ocpi_file"}
    resolved["ocpi"] = ocpi_doc.data
    return resolved, ocpi_doc


def _tariff(
    doc: _Document, prefix: KeyPath, data: object, timezone: str | None, ocpi_doc: _Document | None
) -> Tariff:
    """``tariff_from_builtins(data)``. ``timezone`` (``--timezone``) is the zone of a bare OCPI
    Tariff; a wrapper or simple form without ``timezone`` takes it, one with another is an error."""
    from agent.cli import CliError

    bare = isinstance(data, dict) and "elements" in data
    if timezone is not None and isinstance(data, dict) and not bare:
        given = data.get("timezone")
        if given is not None and given != timezone:
            raise CliError(f"--timezone {timezone}: the tariff in {doc.file} says timezone {given!r}")
        data = {**data, "timezone": timezone}
    try:
        return tariff_from_builtins(data, default_timezone=timezone)
    except TariffConfigError as exc:
        if exc.path == ("timezone",) and (bare or timezone is not None):
            if timezone is not None:
                raise CliError(f"--timezone: {exc.message}") from None
            raise CliError(f"{doc.file}: --timezone {exc.message}") from None
        if ocpi_doc is not None and exc.path[:1] == ("ocpi",):
            raise ocpi_doc.error(exc.path[1:], exc.message) from None
        raise doc.error((*prefix, *exc.path), exc.message) from None


def _load_tariff(args: argparse.Namespace) -> Tariff:
    if args.config is not None:
        return load_tariff_file(args.config, timezone=args.timezone)
    return load_ocpi_tariff_file(args.ocpi_tariff, timezone=args.timezone)


# ------------------------------------------------------------------------------------------ quote


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
    tariff = _load_tariff(args)
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
    print(_load_tariff(args).describe(args.language))
    return 0


# ------------------------------------------------------------------------------------------ price


def amount_text(value: Fraction, min_places: int) -> str:
    """``value`` (major units) as a decimal string with at least ``min_places`` decimals: exact when
    :data:`_OCPI_DECIMALS` decimals suffice, else rounded half-up to that many (0.38333… → 0.3833)."""
    places = min(min_places, _OCPI_DECIMALS)
    while places < _OCPI_DECIMALS and (value * 10**places).denominator != 1:
        places += 1
    scaled = round_half_up(value * 10**places)
    digits = str(abs(scaled)).rjust(places + 1, "0")
    sign = "-" if scaled < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}" if places else f"{sign}{digits}"


# (output key, what it sums): OCPI 2.2.1 §CDRs 10.3.1 total_*_cost; reservation costs never apply
_TOTALS: Final = (
    ("total_energy_cost", Dimension.ENERGY),
    ("total_time_cost", Dimension.TIME),
    ("total_parking_cost", Dimension.PARKING_TIME),
    ("total_fixed_cost", Dimension.FLAT),
)


def price_report(tariff: Tariff, exact: ExactPrice, captured_minor: int) -> dict[str, object]:
    """What ``tariff price --json`` prints: the CDR totals as exact decimal strings (dimension
    totals before, ``total_cost`` after the min/max price) and the amount captured."""
    digits = tariff.minor_unit_digits

    def price(net: Fraction, gross: Fraction) -> dict[str, str]:
        return {"excl_vat": amount_text(net, digits), "incl_vat": amount_text(gross, digits)}

    report: dict[str, object] = {
        "currency": tariff.currency,
        "total_cost": price(exact.net, exact.gross),
    }
    for key, dimension in _TOTALS:
        report[key] = price(*exact.dimension_total(dimension))
    report["min_price_applied"] = exact.minimum_applied
    report["max_price_applied"] = exact.maximum_applied
    report["captured_minor"] = captured_minor
    return report


def _aligned(values: list[str]) -> list[str]:
    """Decimal strings (and whole numbers) padded so that their decimal points line up."""
    parts = [v.partition(".") for v in values]
    whole = max(len(p[0]) for p in parts)
    frac = max(len(p[1] + p[2]) for p in parts)
    return [(p[0].rjust(whole) + p[1] + p[2]).ljust(whole + frac) for p in parts]


def price_table(report: dict[str, object]) -> str:
    """The text form of :func:`price_report`: one row per total, columns aligned on the point,
    ``captured_minor`` under ``incl_vat`` (it is the incl. VAT total in minor units)."""
    names = [key for key, _ in _TOTALS] + ["total_cost"]
    prices = [report[name] for name in names]
    excl = [p["excl_vat"] for p in prices if isinstance(p, dict)]
    incl = [p["incl_vat"] for p in prices if isinstance(p, dict)]
    rows = [
        (str(report["currency"]), "excl_vat", "incl_vat"),
        *zip(
            [*names, "captured_minor"],
            [*_aligned(excl), ""],
            _aligned([*incl, str(report["captured_minor"])]),
            strict=True,
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{name.ljust(widths[0])}  {e.rjust(widths[1])}  {i.rjust(widths[2])}".rstrip() for name, e, i in rows
    ]
    for key, bound in (("min_price_applied", "min_price"), ("max_price_applied", "max_price")):
        if report[key]:
            lines.append(
                f"{bound} applied: total_cost is the tariff's {bound}, not the sum of the totals above"
            )
    return "\n".join(lines)


def _warn_if_not_split(tariff: Tariff, usage: Usage, exact: ExactPrice, file: str) -> None:
    """mod_cdrs §ChargingPeriod: the CPO starts a period at every change that is relevant for the
    cost; each period is priced by the elements active at its start. Say so when the CDR's periods
    miss such a change, i.e. when splitting them where this tariff's elements change prices them
    differently."""
    split = tariff.exact_price(tariff.engine.normalized(usage))
    if (split.net, split.gross) == (exact.net, exact.gross):
        return
    digits = tariff.minor_unit_digits
    print(
        f"evpay-agent: warning: {file}: the charging periods do not start at every change of the "
        "tariff's active elements (mod_cdrs ChargingPeriod); each is priced by the elements active "
        f"at its start (split at those changes: total_cost {amount_text(split.net, digits)} excl. / "
        f"{amount_text(split.gross, digits)} incl. VAT)",
        file=sys.stderr,
    )


def _price(args: argparse.Namespace) -> int:
    from agent.cli import CliError

    tariff = _load_tariff(args)
    try:
        doc = _read_document(args.ocpi_cdr)
        try:
            cdr = ocpi_cdr_from_builtins(doc.data)
        except OcpiError as exc:
            raise doc.error(exc.path, exc.message) from None
        if cdr.currency is not None and cdr.currency != tariff.currency:
            raise doc.error(("currency",), f"{cdr.currency} is not the tariff's currency {tariff.currency}")
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    usage = usage_from_cdr(cdr)
    exact = tariff.exact_price(usage)
    report = price_report(tariff, exact, tariff.cost_minor(usage))
    _warn_if_not_split(tariff, usage, exact, doc.file)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print(price_table(report))
    return 0


# ------------------------------------------------------------------------------------------ parsers


_CONFIG_HELP = "YAML tariff file, or the agent config (its tariff: mapping is used); any tariff form"
_OCPI_TARIFF_HELP = "JSON (.json) or YAML file holding an OCPI 2.2.1 Tariff object"
_TIMEZONE_HELP = (
    "IANA zone of the station, which local-time restrictions are read in (a bare OCPI Tariff has none; "
    "default UTC; required when an element has start_time, end_time, dates or day_of_week)"
)


def _add_tariff_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help=_CONFIG_HELP)
    source.add_argument("--ocpi-tariff", type=Path, metavar="FILE", help=_OCPI_TARIFF_HELP)
    parser.add_argument("--timezone", metavar="ZONE", help=_TIMEZONE_HELP)


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
    _add_tariff_source(quote)
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

    describe = commands.add_parser(
        "describe",
        help="print the driver-facing price text (START-8)",
        description="Print the price text shown before payment: the OCPI tariff_alt_text in LANGUAGE "
        "(else its first text) when the tariff has one, else a text generated from the prices.",
    )
    _add_tariff_source(describe)
    describe.add_argument("--language", default="en", metavar="LL", help="ISO 639-1 code (default: en)")
    describe.set_defaults(func=_describe)

    price = commands.add_parser(
        "price",
        help="price an OCPI 2.2.1 CDR's charging periods with the tariff (STOP-8)",
        description=(
            "Price the charging_periods of an OCPI 2.2.1 CDR with the tariff and print the CDR totals: "
            "total_cost (after min_price/max_price) and total_energy_cost, total_time_cost, "
            "total_parking_cost, total_fixed_cost (before them), each excl_vat and incl_vat, as exact "
            "decimal strings in major units; a value that needs more than 4 decimals (OCPI numbers "
            "have 4) is rounded half-up to 4. captured_minor is what the agent would capture: "
            "the incl. VAT total rounded half-up once to the currency's minor unit (before the "
            "authorization cap, AMT-4)."
        ),
    )
    _add_tariff_source(price)
    price.add_argument(
        "--ocpi-cdr",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSON (.json) or YAML file holding an OCPI 2.2.1 CDR (charging_periods, start/end_date_time)",
    )
    price.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    price.set_defaults(func=_price)
