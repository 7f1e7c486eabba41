"""Tariff: exact session prices in minor currency units, itemised (DESIGN.md §5.4, docs/tariff.md).

Requirements: STOP-8 (final amount = tariff applied to the energy and time actually delivered,
exact, explicit rounding), STOP-9 (idle fee after a grace period, itemised), START-8 (price shown
before payment, :meth:`Tariff.describe`), AMT-1…AMT-4 (the authorization strategies live in
``statemachines.authorization`` because the connector machine takes those decisions and may not
import ``agent``; they are re-exported here, as is the projection
``statemachines.pricing.seconds_until_cost_reaches``).

Pure money logic: no I/O and no clock reads. Times arrive as timezone-aware ``datetime`` values;
``zoneinfo`` only maps them to the station's wall clock for local-time restrictions.

Two forms, one engine (:mod:`agent.money.engine`)
    An OCPI 2.2.1 Tariff (:class:`OcpiTariffConfig`: the object, the station's ``timezone``, the
    currency's ``minor_unit_digits``) is the native price model. The simple form
    (:class:`TariffConfig`: energy per kWh, time per minute, time-of-day ``bands``, a session fee,
    an idle fee after ``idle_grace_minutes``, minimum and maximum price, prices incl. or excl. one
    VAT rate) is sugar: it is translated into tariff elements (docs/tariff.md "The simple form as
    OCPI elements") and priced by the same engine. Every session is priced, even one with no usage
    yet: the session fee and the minimum price apply to it. Whether a session that delivered
    nothing is voided instead (ERR-1) is the connector machine's decision.

The rounding rule (one rule, applied once; docs/tariff.md §Rounding)
    Every amount is exact (``Fraction``) until the end. The total incl. VAT is rounded **half-up**
    (ties away from zero, ``decimal.ROUND_HALF_UP``) to whole minor units: that is what is
    captured (:meth:`Tariff.cost_minor`). The total excl. VAT is rounded the same way; VAT is the
    difference. The quote's lines get whole minor units by largest remainder (each line the floor
    of its exact amount, the units left to the largest fractional parts, the earlier line on a
    tie), so the lines add up to the totals exactly and each line has ``net + vat == gross``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from agent.errors import AgentError, PathItem, explain_msgspec_error, format_path
from agent.money.engine import (
    Bound,
    Component,
    Dimension,
    Element,
    Engine,
    ExactPrice,
    Restrictions,
    allocate,
)
from agent.money.ocpi import (
    OcpiCdr,
    OcpiError,
    OcpiPrice,
    OcpiTariff,
    TariffRestrictions,
    ocpi_tariff_from_builtins,
    parse_datetime,
)
from statemachines.authorization import (
    AuthorizationPolicy,
    AuthorizationStrategy,
    capture_amount_minor,
    increment_total_minor,
    must_stop_for_cap,
    partial_cap_minor,
    start_amount_minor,
)
from statemachines.pricing import (
    PROJECTION_HORIZON_S,
    Period,
    Usage,
    UsageKind,
    seconds_until_cost_reaches,
)

__all__ = [
    "PROJECTION_HORIZON_S",
    "WEEKDAYS",
    "AuthorizationPolicy",
    "AuthorizationStrategy",
    "Dimension",
    "ExactPrice",
    "LineKind",
    "OcpiTariffConfig",
    "Quote",
    "QuoteLine",
    "Tariff",
    "TariffBand",
    "TariffConfig",
    "TariffConfigError",
    "TimeAppliesTo",
    "Weekday",
    "capture_amount_minor",
    "format_path",
    "increment_total_minor",
    "must_stop_for_cap",
    "partial_cap_minor",
    "round_half_up",
    "seconds_until_cost_reaches",
    "start_amount_minor",
    "tariff_config_from_builtins",
    "tariff_from_builtins",
    "tariff_to_builtins",
]

# --------------------------------------------------------------------------------------------------
# Configuration (embedded under ``tariff:`` in the agent's YAML config, DESIGN.md §5.1)
# --------------------------------------------------------------------------------------------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: Final[tuple[Weekday, ...]] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeAppliesTo(StrEnum):
    """Which session time the per-minute time price applies to."""

    CHARGING = "charging"
    CHARGING_AND_SUSPENDED = "charging_and_suspended"


class TariffBand(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A time-of-day window overriding the energy and/or time price.

    ``start``/``end`` are "HH:MM" wall-clock times in the tariff's timezone; ``end`` may be "24:00"
    and may be earlier than ``start`` (the window wraps midnight). ``weekdays`` (default: every day)
    names the days on which the window *starts*.
    """

    name: str
    start: str
    end: str
    weekdays: tuple[Weekday, ...] | None = None
    energy_per_kwh: str | None = None
    time_per_minute: str | None = None


class TariffConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tariff as configured. Prices are decimal strings in major units (``"0.39"``), never floats.

    ``session_fee``, ``minimum_price`` and ``maximum_price`` are amounts and must be whole minor
    units; unit prices may have more decimals (``"0.3949"``). ``minimum_price`` and
    ``maximum_price`` are gross whatever ``prices_include_vat`` says.
    """

    currency: str  # ISO 4217 alphabetic code
    prices_include_vat: bool
    vat_rate_percent: str
    minor_unit_digits: int = 2  # ISO 4217 minor unit (EUR 2, JPY 0, KWD 3, CLF 4)
    energy_per_kwh: str = "0"
    time_per_minute: str = "0"
    time_applies_to: TimeAppliesTo = TimeAppliesTo.CHARGING
    session_fee: str = "0"
    idle_fee_per_minute: str = "0"
    idle_grace_minutes: int = 0
    minimum_price: str | None = None
    maximum_price: str | None = None
    timezone: str | None = None  # IANA name; required when there are bands
    bands: tuple[TariffBand, ...] = ()


class TariffConfigError(AgentError, ValueError):
    """An invalid tariff configuration. ``path`` locates the value (mapping keys and list indexes,
    relative to the tariff mapping) so a config loader can name the file line (``ConfigError``)."""

    def __init__(self, path: tuple[PathItem, ...], message: str) -> None:
        super().__init__(f"{format_path(path)}: {message}" if path else message)
        self.path = path
        self.message = message


_DECIMAL_RE: Final = re.compile(r"[0-9]+(\.[0-9]+)?")
_HHMM_RE: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_MAX_MINOR_UNIT_DIGITS: Final = 4  # ISO 4217 has 0, 2, 3 and 4 (CLF) minor-unit digits
_DECIMAL_FIELDS: Final = frozenset(
    {
        "vat_rate_percent",
        "energy_per_kwh",
        "time_per_minute",
        "session_fee",
        "idle_fee_per_minute",
        "minimum_price",
        "maximum_price",
    }
)


def tariff_config_from_builtins(obj: object) -> TariffConfig:
    """Validate a decoded YAML/JSON mapping into a :class:`TariffConfig`, checked as :class:`Tariff`
    checks it. Raises :class:`TariffConfigError` with the path of the offending value."""
    try:
        config = msgspec.convert(obj, TariffConfig)
    except msgspec.ValidationError as exc:
        raise _config_error_from_msgspec(obj, str(exc)) from None
    Tariff(config)  # the semantic checks (decimals, bands, timezone, …)
    return config


def _config_error_from_msgspec(obj: object, text: str) -> TariffConfigError:
    path, message, raw = explain_msgspec_error(text)
    wrong_type = re.fullmatch(r"Expected `str( \| null)?`, got `\w+`", raw)
    if path and path[-1] in _DECIMAL_FIELDS and wrong_type:
        value = _lookup(obj, path)
        return TariffConfigError(
            path, f'expected a decimal string, got {value!r} (write it quoted, e.g. "0.39")'
        )
    return TariffConfigError(path, message)


def _lookup(obj: object, path: Iterable[PathItem]) -> object:
    for item in path:
        if isinstance(obj, dict):
            obj = obj.get(item)
        elif isinstance(obj, list) and isinstance(item, int) and item < len(obj):
            obj = obj[item]
        else:
            return None
    return obj


def _decimal(path: tuple[PathItem, ...], text: str) -> Fraction:
    if not isinstance(text, str) or not _DECIMAL_RE.fullmatch(text):
        raise TariffConfigError(path, f"expected a decimal string, got {text!r}")
    return Fraction(text)


def _hhmm(path: tuple[PathItem, ...], text: str, *, allow_24: bool) -> int:
    """Minutes after midnight of an "HH:MM" text."""
    if not _HHMM_RE.fullmatch(text) or (text == "24:00" and not allow_24):
        allowed = "00:00..24:00" if allow_24 else "00:00..23:59"
        raise TariffConfigError(path, f"expected a time HH:MM ({allowed}), got {text!r}")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


# --------------------------------------------------------------------------------------------------
# Quotes (itemised prices)
# --------------------------------------------------------------------------------------------------


class LineKind(StrEnum):
    ENERGY = "energy"
    TIME = "time"
    SESSION_FEE = "session_fee"
    IDLE_FEE = "idle_fee"
    MINIMUM_ADJUSTMENT = "minimum_adjustment"
    MAXIMUM_ADJUSTMENT = "maximum_adjustment"


class QuoteLine(msgspec.Struct, frozen=True, kw_only=True):
    """One itemised line. ``quantity`` is exact, in ``unit`` (``Wh``, ``ms`` or ``session``);
    ``unit_price`` is a decimal string in major units per ``price_unit`` (``kWh``, ``min`` or
    ``session``), gross or net as the quote's ``prices_include_vat`` says. For adjustment lines
    ``unit_price`` is the adjustment's gross amount."""

    kind: LineKind
    band: str
    quantity: int
    unit: str
    unit_price: str
    price_unit: str
    net_minor: int
    vat_minor: int
    gross_minor: int


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    """The itemised price of a usage; totals are the sums of the lines (rounding policy above)."""

    currency: str
    minor_unit_digits: int
    prices_include_vat: bool
    vat_rate_percent: str
    lines: tuple[QuoteLine, ...]
    net_minor: int
    vat_minor: int
    gross_minor: int


def round_half_up(value: Fraction) -> int:
    """Round to the nearest integer, ties away from zero (``decimal.ROUND_HALF_UP``)."""
    magnitude = abs(value)
    rounded = (2 * magnitude.numerator + magnitude.denominator) // (2 * magnitude.denominator)
    return rounded if value >= 0 else -rounded


def _decimal_text(value: Fraction, min_places: int) -> str:
    """Exact decimal text of ``value`` with at least ``min_places`` decimals (prices and VAT rates
    are decimals, so their products terminate; anything else is rounded half-up at 12 places)."""
    places = min_places
    while (value * 10**places).denominator != 1 and places < 12:
        places += 1
    scaled = round_half_up(value * 10**places)
    digits = str(abs(scaled)).rjust(places + 1, "0")
    sign = "-" if scaled < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}" if places else f"{sign}{digits}"


# --------------------------------------------------------------------------------------------------
# The tariff
# --------------------------------------------------------------------------------------------------

_MINUTES_PER_DAY: Final = 24 * 60
_MINUTES_PER_WEEK: Final = 7 * _MINUTES_PER_DAY
_MS: Final = timedelta(milliseconds=1)
_WH_PER_KWH: Final = 1000
_MS_PER_MINUTE: Final = 60_000


@dataclass(frozen=True, slots=True)
class _Band:
    index: int
    name: str
    start_min: int  # minutes after midnight, 0..1439
    end_min: int  # 1..1440; <= start_min means the window wraps midnight
    days: frozenset[int]  # datetime.weekday() of the day a window starts on
    energy_per_kwh: Fraction
    energy_text: str
    time_per_minute: Fraction
    time_text: str

    @property
    def wraps(self) -> bool:
        return self.end_min <= self.start_min

    def active(self, weekday: int, minute: int) -> bool:
        if not self.wraps:
            return weekday in self.days and self.start_min <= minute < self.end_min
        return (weekday in self.days and minute >= self.start_min) or (
            (weekday - 1) % 7 in self.days and minute < self.end_min
        )

    def week_intervals(self) -> list[tuple[int, int]]:
        """Half-open minute-of-week intervals (Monday 00:00 = 0) during which the band is active."""
        found: list[tuple[int, int]] = []
        length = self.end_min - self.start_min + (_MINUTES_PER_DAY if self.wraps else 0)
        for day in sorted(self.days):
            begin = day * _MINUTES_PER_DAY + self.start_min
            end = begin + length
            if end <= _MINUTES_PER_WEEK:
                found.append((begin, end))
            else:
                found += [(begin, _MINUTES_PER_WEEK), (0, end - _MINUTES_PER_WEEK)]
        return found


def _week_minute_text(minute: int) -> str:
    day, rest = divmod(minute, _MINUTES_PER_DAY)
    return f"{WEEKDAYS[day]} {rest // 60:02d}:{rest % 60:02d}"


def _days_text(days: frozenset[int]) -> str:
    """``{0,1,2,3,4}`` → ``"mon-fri"``, ``{5,6}`` → ``"sat,sun"``; empty for every day."""
    if len(days) == 7:
        return ""
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(
        f"{WEEKDAYS[r[0]]}-{WEEKDAYS[r[-1]]}" if len(r) > 2 else ",".join(WEEKDAYS[d] for d in r)
        for r in runs
    )


class OcpiTariffConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``tariff:`` as an OCPI 2.2.1 Tariff object (DESIGN.md §5.4, docs/tariff.md).

    ``timezone`` is the station's IANA zone, which local-time restrictions (``start_time``,
    ``end_time``, dates, ``day_of_week``; OCPI §4.4.6 "local time of the Location") are read in;
    required when an element has one. ``minor_unit_digits`` is the currency's ISO 4217 minor unit:
    what is captured is rounded to it."""

    ocpi: dict[str, Any]
    timezone: str | None = None
    minor_unit_digits: int = 2


_SECOND_MS: Final = 1000  # OCPI §4.4.5: the step_size multiplier of TIME and PARKING_TIME is 1 s
_OCPI_DAYS: Final = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
_OCPI_KINDS: Final = {  # §4.4.5: TIME is time charging, PARKING_TIME time not charging
    UsageKind.CHARGING: Dimension.TIME,
    UsageKind.SUSPENDED: Dimension.PARKING_TIME,
    UsageKind.IDLE: Dimension.PARKING_TIME,
}
_LINE_KIND: Final = {
    Dimension.ENERGY: LineKind.ENERGY,
    Dimension.TIME: LineKind.TIME,
    Dimension.FLAT: LineKind.SESSION_FEE,
    Dimension.PARKING_TIME: LineKind.IDLE_FEE,
}
_QUANTITY_UNIT: Final = {
    Dimension.ENERGY: "Wh",
    Dimension.TIME: "ms",
    Dimension.PARKING_TIME: "ms",
    Dimension.FLAT: "session",
}


def _fraction(value: Decimal | int) -> Fraction:
    return Fraction(value)


def _number_text(value: Decimal) -> str:
    return format(value.normalize(), "f") if value == value.to_integral() else format(value, "f")


def _hhmm_minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _zone(path: tuple[PathItem, ...], name: str | None) -> tzinfo:
    if name is None:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TariffConfigError(path, f"unknown IANA timezone {name!r}") from None


def _compile_ocpi(config: OcpiTariffConfig) -> tuple[OcpiTariff, Engine]:
    try:
        ocpi = ocpi_tariff_from_builtins(config.ocpi)
    except OcpiError as exc:
        raise TariffConfigError(("ocpi", *exc.path), exc.message) from None
    if not 0 <= config.minor_unit_digits <= _MAX_MINOR_UNIT_DIGITS:
        raise TariffConfigError(
            ("minor_unit_digits",), f"expected 0..{_MAX_MINOR_UNIT_DIGITS}, got {config.minor_unit_digits}"
        )
    zone = _zone(("timezone",), config.timezone)
    elements: list[Element] = []
    for i, element in enumerate(ocpi.elements):
        components = []
        for c in element.price_components:
            dim = Dimension(c.type.value)
            step = {Dimension.ENERGY: c.step_size, Dimension.FLAT: 1}.get(dim, c.step_size * _SECOND_MS)
            components.append(
                Component(
                    dimension=dim,
                    net=_fraction(c.price),
                    vat=_fraction(c.vat) if c.vat is not None else Fraction(0),
                    step=step,
                    unit_price=_number_text(c.price),
                    price_unit={Dimension.ENERGY: "kWh", Dimension.FLAT: "session"}.get(dim, "h"),
                )
            )
        r = element.restrictions or TariffRestrictions()
        if config.timezone is None and any(
            v is not None for v in (r.start_time, r.end_time, r.start_date, r.end_date, r.day_of_week)
        ):
            raise TariffConfigError(
                ("timezone",),
                f"required: elements[{i}] has a local-time restriction (e.g. 'Europe/Amsterdam')",
            )
        elements.append(
            Element(
                name=f"elements[{i}]",
                components=tuple(components),
                restrictions=Restrictions(
                    start_min=None if r.start_time is None else _hhmm_minutes(r.start_time),
                    end_min=None if r.end_time is None else _hhmm_minutes(r.end_time),
                    start_date=None if r.start_date is None else date.fromisoformat(r.start_date),
                    end_date=None if r.end_date is None else date.fromisoformat(r.end_date),
                    days=None
                    if r.day_of_week is None
                    else frozenset(_OCPI_DAYS.index(d.value) for d in r.day_of_week),
                    min_wh=None if r.min_kwh is None else _fraction(r.min_kwh) * _WH_PER_KWH,
                    max_wh=None if r.max_kwh is None else _fraction(r.max_kwh) * _WH_PER_KWH,
                    min_current_a=None if r.min_current is None else _fraction(r.min_current),
                    max_current_a=None if r.max_current is None else _fraction(r.max_current),
                    min_power_w=None if r.min_power is None else _fraction(r.min_power) * 1000,  # kW
                    max_power_w=None if r.max_power is None else _fraction(r.max_power) * 1000,
                    min_duration_ms=None if r.min_duration is None else r.min_duration * _SECOND_MS,
                    max_duration_ms=None if r.max_duration is None else r.max_duration * _SECOND_MS,
                ),
            )
        )

    def bound(price: OcpiPrice | None) -> Bound | None:
        if price is None:
            return None
        incl = None if price.incl_vat is None else _fraction(price.incl_vat)
        return Bound(_fraction(price.excl_vat), incl)

    engine = Engine(
        elements,
        zone=zone,
        kind_dimension=dict(_OCPI_KINDS),
        minimum=bound(ocpi.min_price),
        maximum=bound(ocpi.max_price),
    )
    return ocpi, engine


@dataclass(frozen=True, slots=True)
class _Simple:
    """The simple form, validated: what :func:`_compile_simple` and ``describe`` read."""

    config: TariffConfig
    vat_rate: Fraction
    energy: Fraction
    time: Fraction
    idle: Fraction
    session_fee_minor: int
    idle_grace_ms: int
    minimum_minor: int | None
    maximum_minor: int | None
    zone: tzinfo
    bands: tuple[_Band, ...]


def _validate_simple(config: TariffConfig) -> _Simple:
    if not _CURRENCY_RE.fullmatch(config.currency):
        raise TariffConfigError(
            ("currency",), f"expected an ISO 4217 code like 'EUR', got {config.currency!r}"
        )
    digits = config.minor_unit_digits
    if not 0 <= digits <= _MAX_MINOR_UNIT_DIGITS:
        raise TariffConfigError(("minor_unit_digits",), f"expected 0..{_MAX_MINOR_UNIT_DIGITS}, got {digits}")

    def amount_minor(field: str, text: str) -> int:
        scaled = _decimal((field,), text) * 10**digits
        if scaled.denominator != 1:
            raise TariffConfigError(
                (field,), f"{text!r} is not a whole number of minor units ({digits} decimals)"
            )
        return int(scaled)

    vat_rate = _decimal(("vat_rate_percent",), config.vat_rate_percent)
    if vat_rate >= 100:
        raise TariffConfigError(
            ("vat_rate_percent",), f"expected a rate below 100, got {config.vat_rate_percent!r}"
        )
    energy = _decimal(("energy_per_kwh",), config.energy_per_kwh)
    time_price = _decimal(("time_per_minute",), config.time_per_minute)
    idle = _decimal(("idle_fee_per_minute",), config.idle_fee_per_minute)
    session_fee = amount_minor("session_fee", config.session_fee)
    if config.idle_grace_minutes < 0:
        raise TariffConfigError(("idle_grace_minutes",), f"expected >= 0, got {config.idle_grace_minutes}")
    try:  # a TariffConfig built in code is not type-checked by msgspec
        TimeAppliesTo(config.time_applies_to)
    except ValueError:
        raise TariffConfigError(
            ("time_applies_to",), f"expected one of {[m.value for m in TimeAppliesTo]}"
        ) from None
    minimum = None if config.minimum_price is None else amount_minor("minimum_price", config.minimum_price)
    maximum = None if config.maximum_price is None else amount_minor("maximum_price", config.maximum_price)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise TariffConfigError(("minimum_price",), "is above maximum_price")
    if config.timezone is None and config.bands:
        raise TariffConfigError(("timezone",), "required when there are bands (e.g. 'Europe/Amsterdam')")
    zone = _zone(("timezone",), config.timezone)
    bands = tuple(_simple_band(config, i, band) for i, band in enumerate(config.bands))
    _check_overlaps(bands)
    return _Simple(
        config=config,
        vat_rate=vat_rate,
        energy=energy,
        time=time_price,
        idle=idle,
        session_fee_minor=session_fee,
        idle_grace_ms=config.idle_grace_minutes * _MS_PER_MINUTE,
        minimum_minor=minimum,
        maximum_minor=maximum,
        zone=zone,
        bands=bands,
    )


def _simple_band(config: TariffConfig, index: int, band: TariffBand) -> _Band:
    path: tuple[PathItem, ...] = ("bands", index)
    if not band.name.strip():
        raise TariffConfigError((*path, "name"), "must not be empty")
    if band.name in (b.name for b in config.bands[:index]):
        raise TariffConfigError((*path, "name"), f"duplicate band name {band.name!r}")
    start = _hhmm((*path, "start"), band.start, allow_24=False)
    end = _hhmm((*path, "end"), band.end, allow_24=True)
    if start == end:
        raise TariffConfigError((*path, "end"), "equals start (for a whole day write 00:00 to 24:00)")
    if band.weekdays is not None:
        if not band.weekdays:
            raise TariffConfigError((*path, "weekdays"), "must not be empty (omit it for every day)")
        if unknown := [d for d in band.weekdays if d not in WEEKDAYS]:
            raise TariffConfigError((*path, "weekdays"), f"unknown day {unknown[0]!r} (use mon..sun)")
        if len(set(band.weekdays)) != len(band.weekdays):
            raise TariffConfigError((*path, "weekdays"), "lists a day twice")
    if band.energy_per_kwh is None and band.time_per_minute is None:
        raise TariffConfigError(path, "overrides neither energy_per_kwh nor time_per_minute")
    energy_text = band.energy_per_kwh if band.energy_per_kwh is not None else config.energy_per_kwh
    time_text = band.time_per_minute if band.time_per_minute is not None else config.time_per_minute
    return _Band(
        index=index,
        name=band.name,
        start_min=start,
        end_min=end,
        days=frozenset(range(7) if band.weekdays is None else (WEEKDAYS.index(d) for d in band.weekdays)),
        energy_per_kwh=_decimal((*path, "energy_per_kwh"), energy_text),
        energy_text=energy_text,
        time_per_minute=_decimal((*path, "time_per_minute"), time_text),
        time_text=time_text,
    )


def _check_overlaps(bands: tuple[_Band, ...]) -> None:
    for j, later in enumerate(bands):
        for earlier in bands[:j]:
            shared = [
                max(a0, b0)
                for a0, a1 in earlier.week_intervals()
                for b0, b1 in later.week_intervals()
                if max(a0, b0) < min(a1, b1)
            ]
            if shared:
                raise TariffConfigError(
                    ("bands", j),
                    f"band {later.name!r} overlaps band {earlier.name!r} "
                    f"from {_week_minute_text(min(shared))}",
                )


def _compile_simple(simple: _Simple) -> Engine:
    """The simple form as elements: one per band (split in two when it wraps midnight on named
    weekdays), then the base prices, then the idle fee after its grace."""
    config = simple.config
    rate = simple.vat_rate

    def to_net(price: Fraction) -> Fraction:
        return price * 100 / (100 + rate) if config.prices_include_vat else price

    def components(
        energy: Fraction | None, energy_text: str, per_minute: Fraction | None, time_text: str
    ) -> list[Component]:
        """Components for the prices given (``None``: not given; a band's 0 is given)."""
        found = []
        if energy is not None:
            found.append(Component(Dimension.ENERGY, to_net(energy), rate, 1, energy_text, "kWh"))
        if per_minute is not None:  # per minute as configured, per hour in the engine
            found.append(Component(Dimension.TIME, to_net(per_minute) * 60, rate, 1, time_text, "min"))
        return found

    elements: list[Element] = []
    for band in simple.bands:
        given = config.bands[band.index]
        parts = components(  # a band has both prices (the base one where it sets none), as lines
            band.energy_per_kwh if given.energy_per_kwh is not None or simple.energy else None,
            band.energy_text,
            band.time_per_minute if given.time_per_minute is not None or simple.time else None,
            band.time_text,
        )
        if band.wraps and len(band.days) < 7:  # the window starts on the named days, ends the next
            later_days = frozenset((d + 1) % 7 for d in band.days)
            windows: list[tuple[int, int | None, frozenset[int] | None]]
            windows = [(band.start_min, None, band.days)]
            if band.end_min:
                windows.append((0, band.end_min, later_days))
        else:
            end = None if band.end_min == _MINUTES_PER_DAY else band.end_min
            windows = [(band.start_min, end, None if len(band.days) == 7 else band.days)]
        for start, end, days in windows:
            elements.append(
                Element(band.name, tuple(parts), Restrictions(start_min=start, end_min=end, days=days))
            )
    base = components(
        simple.energy or None, config.energy_per_kwh, simple.time or None, config.time_per_minute
    )
    if simple.session_fee_minor:
        fee = Fraction(simple.session_fee_minor, 10**config.minor_unit_digits)
        base.append(Component(Dimension.FLAT, to_net(fee), rate, 1, config.session_fee, "session"))
    elements.append(Element("", tuple(base), Restrictions()))
    if simple.idle:
        idle = Component(
            Dimension.PARKING_TIME, to_net(simple.idle) * 60, rate, 1, config.idle_fee_per_minute, "min"
        )
        grace = simple.idle_grace_ms or None
        elements.append(Element("", (idle,), Restrictions(min_idle_ms=grace)))
    suspended = Dimension.TIME if config.time_applies_to == TimeAppliesTo.CHARGING_AND_SUSPENDED else None
    scale = Fraction(1, 10**config.minor_unit_digits)

    def bound(minor: int | None) -> Bound | None:
        return None if minor is None else Bound(minor * scale * 100 / (100 + rate), minor * scale)

    return Engine(
        elements,
        zone=simple.zone,
        kind_dimension={
            UsageKind.CHARGING: Dimension.TIME,
            UsageKind.SUSPENDED: suspended,
            UsageKind.IDLE: Dimension.PARKING_TIME,
        },
        minimum=bound(simple.minimum_minor),
        maximum=bound(simple.maximum_minor),
    )


# --------------------------------------------------------------------------------------------------
# The tariff
# --------------------------------------------------------------------------------------------------


class Tariff:
    """A validated tariff (simple form or OCPI 2.2.1); implements ``statemachines.pricing.Pricer``.
    Immutable and pure. Raises :class:`TariffConfigError` for an invalid configuration."""

    __slots__ = ("_digits", "_engine", "_ocpi", "_simple", "config")

    def __init__(self, config: TariffConfig | OcpiTariffConfig) -> None:
        self.config = config
        self._simple: _Simple | None = None
        self._ocpi: OcpiTariff | None = None
        if isinstance(config, OcpiTariffConfig):
            self._ocpi, self._engine = _compile_ocpi(config)
        else:
            self._simple = _validate_simple(config)
            self._engine = _compile_simple(self._simple)
        self._digits = config.minor_unit_digits

    # ---------------------------------------------------------------- properties

    @property
    def currency(self) -> str:
        return self._ocpi.currency if self._ocpi is not None else self.config.currency  # type: ignore[union-attr]

    @property
    def minor_unit_digits(self) -> int:
        return self._digits

    @property
    def timezone(self) -> tzinfo:
        """The wall-clock zone of local-time restrictions (UTC when none is configured)."""
        return self._engine.zone

    @property
    def timezone_name(self) -> str | None:
        return self.config.timezone

    @property
    def ocpi(self) -> OcpiTariff | None:
        """The OCPI 2.2.1 Tariff this was built from (``None`` for the simple form)."""
        return self._ocpi

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def minimum_minor(self) -> int | None:
        """The gross minimum price in minor units (rounded half-up)."""
        bound = self._engine.minimum
        return None if bound is None else self._round(_incl(bound))

    @property
    def maximum_minor(self) -> int | None:
        """The most a session can cost incl. VAT, in minor units, e.g. the amount to authorize
        with the "maximum" strategy (AMT-1): ``max_price.incl_vat``, or without it ``excl_vat``
        with the highest VAT rate of the tariff; rounded up, so no session is ever captured above
        it."""
        bound = self._engine.maximum
        if bound is None:
            return None
        if bound.incl is not None:
            most = bound.incl
        else:
            highest = max((c.vat for e in self._engine.elements for c in e.components), default=Fraction(0))
            most = bound.excl * (100 + highest) / 100
        ceiled: int = math.ceil(most * 10**self._digits)
        return ceiled

    def time_dimension(self, kind: UsageKind) -> Dimension | None:
        return self._engine.time_dimension(kind)

    # ---------------------------------------------------------------- Pricer protocol

    def accumulate(
        self,
        usage: Usage,
        start: datetime,
        end: datetime,
        energy_wh: int,
        kind: UsageKind,
        *,
        power_w: float | None = None,
        current_a: float | None = None,
    ) -> Usage:
        """Add ``energy_wh`` delivered between ``start`` and ``end`` as ``kind`` to ``usage``.

        Pre: ``start``/``end`` timezone-aware, ``start <= end``, ``energy_wh >= 0``. The interval is
        split where the active tariff elements could change (engine module docstring); durations
        are whole milliseconds summing to ``(end - start) // 1 ms``, energy parts sum to
        ``energy_wh``. ``power_w``/``current_a``: what the charger reported for the interval
        (``None``: not reported; power then is the interval's average). ``started_at`` is set to
        ``start`` when still unset."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        if energy_wh < 0:
            raise ValueError(f"energy_wh must be >= 0, got {energy_wh}")
        start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
        if end_utc < start_utc:
            raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
        if usage.started_at is None:
            usage = replace(usage, started_at=start_utc)
        return self._engine.accumulate(usage, start_utc, end_utc, energy_wh, kind, power_w, current_a)

    def cost_minor(self, usage: Usage) -> int:
        """The gross price of ``usage`` in minor units: ``quote(usage).gross_minor``."""
        return self._round(self._engine.price(usage).gross)

    # ---------------------------------------------------------------- itemised price

    def exact_price(self, usage: Usage) -> ExactPrice:
        """The price before rounding (what ``tariff price`` prints)."""
        return self._engine.price(usage)

    def quote(self, usage: Usage) -> Quote:
        """The itemised price of ``usage`` (module docstring: the rounding rule).

        Lines: energy and time per element in order of first use, the session fee, the idle
        (parking) fee, then a minimum or maximum adjustment; lines with a zero amount are left out."""
        exact = self._engine.price(usage)
        scale = 10**self._digits
        gross = self._round(exact.gross)
        net = round_half_up(exact.net * scale)
        gross_parts = allocate(gross, [line.gross * scale for line in exact.lines])
        net_parts = allocate(net, [line.net * scale for line in exact.lines])
        lines: list[QuoteLine] = []
        for line, line_gross, line_net in zip(exact.lines, gross_parts, net_parts, strict=True):
            if line.dimension is None or line.element is None:
                kind = LineKind.MINIMUM_ADJUSTMENT if exact.minimum_applied else LineKind.MAXIMUM_ADJUSTMENT
                band, quantity, unit, price, price_unit = (
                    "",
                    1,
                    "session",
                    self._minor_text(line_gross),
                    "session",
                )
            else:
                element = self._engine.elements[line.element]
                component = element.component(line.dimension)
                assert component is not None
                kind, band = _LINE_KIND[line.dimension], element.name
                quantity, unit = line.quantity, _QUANTITY_UNIT[line.dimension]
                price, price_unit = component.unit_price, component.price_unit
            lines.append(
                QuoteLine(
                    kind=kind,
                    band=band,
                    quantity=quantity,
                    unit=unit,
                    unit_price=price,
                    price_unit=price_unit,
                    net_minor=line_net,
                    vat_minor=line_gross - line_net,
                    gross_minor=line_gross,
                )
            )
        return Quote(
            currency=self.currency,
            minor_unit_digits=self._digits,
            prices_include_vat=self._simple is not None and self._simple.config.prices_include_vat,
            vat_rate_percent=self._vat_rate_text(),
            lines=tuple(lines),
            net_minor=net,
            vat_minor=gross - net,
            gross_minor=gross,
        )

    def _vat_rate_text(self) -> str:
        if self._simple is not None:
            return self._simple.config.vat_rate_percent
        rates = [c.vat for e in self._engine.elements for c in e.components]
        return _decimal_text(max(rates, default=Fraction(0)), 0)

    def _round(self, amount: Fraction) -> int:
        return round_half_up(amount * 10**self._digits)

    def _minor_text(self, amount_minor: int) -> str:
        return _decimal_text(Fraction(amount_minor, 10**self._digits), self._digits)

    # ---------------------------------------------------------------- price transparency (START-8)

    def describe(self, language: str = "en") -> str:
        """Short driver-facing price text with gross prices (START-8): the OCPI ``tariff_alt_text``
        in ``language`` (else the first one) when the tariff has one, otherwise generated, e.g.
        ``"0.39 EUR/kWh · 0.05 EUR/min · idle 0.20 EUR/min after 15 min · incl. 21% VAT"``."""
        if self._simple is not None:
            return _describe_simple(self._simple)
        assert self._ocpi is not None
        texts = self._ocpi.tariff_alt_text
        if texts:
            chosen = next((t for t in texts if t.language.lower() == language.lower()), texts[0])
            return chosen.text
        return _describe_engine(self._engine, self.currency, self._digits)


def _incl(bound: Bound) -> Fraction:
    return bound.incl if bound.incl is not None else bound.excl


def _gross(component: Component) -> Fraction:
    return component.net * (100 + component.vat) / 100


def _describe_simple(simple: _Simple) -> str:
    config = simple.config
    cur = config.currency
    digits = config.minor_unit_digits

    def gross_text(price: Fraction) -> str:
        if not config.prices_include_vat:
            price = price * (100 + simple.vat_rate) / 100
        return _decimal_text(price, digits)

    def minor_text(amount: int) -> str:
        return _decimal_text(Fraction(amount, 10**digits), digits)

    parts: list[str] = []
    if simple.energy or any(b.energy_per_kwh for b in simple.bands):
        parts.append(f"{gross_text(simple.energy)} {cur}/kWh")
    if simple.time or any(b.time_per_minute for b in simple.bands):
        suffix = "" if config.time_applies_to == TimeAppliesTo.CHARGING else " charging or paused"
        parts.append(f"{gross_text(simple.time)} {cur}/min{suffix}")
    for band in simple.bands:
        when = " ".join(
            filter(
                None,
                (
                    _days_text(band.days),
                    f"{band.start_min // 60:02d}:{band.start_min % 60:02d}-"
                    f"{band.end_min // 60:02d}:{band.end_min % 60:02d}",
                ),
            )
        )
        prices = []
        if band.energy_per_kwh != simple.energy:
            prices.append(f"{gross_text(band.energy_per_kwh)} {cur}/kWh")
        if band.time_per_minute != simple.time:
            prices.append(f"{gross_text(band.time_per_minute)} {cur}/min")
        parts.append(f"{band.name} {when}: {' '.join(prices) or 'base prices'}")
    if simple.session_fee_minor:
        fee = Fraction(simple.session_fee_minor, 10**digits)
        parts.append(f"{gross_text(fee)} {cur}/session")
    if simple.idle:
        grace = f" after {config.idle_grace_minutes} min" if config.idle_grace_minutes else ""
        parts.append(f"idle {gross_text(simple.idle)} {cur}/min{grace}")
    if simple.minimum_minor is not None:
        parts.append(f"min {minor_text(simple.minimum_minor)} {cur}")
    if simple.maximum_minor is not None:
        parts.append(f"max {minor_text(simple.maximum_minor)} {cur}")
    parts.append(f"incl. {_decimal_text(simple.vat_rate, 0)}% VAT")
    return " · ".join(parts)


_UNIT_TEXT: Final = {
    Dimension.ENERGY: "/kWh",
    Dimension.TIME: "/h charging",
    Dimension.PARKING_TIME: "/h parking",
    Dimension.FLAT: " per session",
}


def _restriction_text(r: Restrictions) -> str:
    parts: list[str] = []
    if r.days is not None:
        parts.append(_days_text(r.days) or "every day")
    if r.start_min is not None or r.end_min is not None:
        s, e = r.start_min or 0, r.end_min if r.end_min is not None else _MINUTES_PER_DAY
        parts.append(f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}")
    if r.start_date is not None:
        parts.append(f"from {r.start_date.isoformat()}")
    if r.end_date is not None:
        parts.append(f"until {r.end_date.isoformat()}")
    for low, high, unit, scale in (
        (r.min_wh, r.max_wh, "kWh", Fraction(1, 1000)),
        (r.min_power_w, r.max_power_w, "kW", Fraction(1, 1000)),
        (r.min_current_a, r.max_current_a, "A", Fraction(1)),
    ):
        if low is not None:
            parts.append(f"from {_decimal_text(low * scale, 0)} {unit}")
        if high is not None:
            parts.append(f"below {_decimal_text(high * scale, 0)} {unit}")
    if r.min_duration_ms is not None:
        parts.append(f"after {_duration_text(r.min_duration_ms)}")
    if r.max_duration_ms is not None:
        parts.append(f"first {_duration_text(r.max_duration_ms)}")
    if r.min_idle_ms is not None:
        parts.append(f"after {_duration_text(r.min_idle_ms)} idle")
    return " ".join(parts)


def _duration_text(ms: int) -> str:
    minutes = Fraction(ms, _MS_PER_MINUTE)
    if minutes.denominator == 1 and minutes % 60 == 0:
        return f"{minutes // 60} h"
    return f"{_decimal_text(minutes, 0)} min"


def _describe_engine(engine: Engine, currency: str, digits: int) -> str:
    """A generated price text: each element's gross prices with its restrictions."""
    parts: list[str] = []
    for element in engine.elements:
        prices = " + ".join(
            f"{_decimal_text(_gross(c), digits)} {currency}{_UNIT_TEXT[c.dimension]}"
            for c in element.components
        )
        when = _restriction_text(element.restrictions)
        parts.append(f"{prices} ({when})" if when else prices)
    if engine.minimum is not None:
        parts.append(f"min {_decimal_text(_incl(engine.minimum), digits)} {currency}")
    if engine.maximum is not None:
        parts.append(f"max {_decimal_text(_incl(engine.maximum), digits)} {currency}")
    parts.append("incl. VAT")
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------------
# Forms, round trip, fingerprint (persisted tariffs: the station's current one, each session's)
# --------------------------------------------------------------------------------------------------


def tariff_from_builtins(obj: object, *, default_timezone: str | None = None) -> Tariff:
    """A :class:`Tariff` from a decoded mapping in any accepted form: the simple form, the OCPI
    wrapper ``{"ocpi": {…}, "timezone": …, "minor_unit_digits": …}``, or a bare OCPI 2.2.1 Tariff
    (it has ``elements``; its timezone is ``default_timezone``). Raises :class:`TariffConfigError`
    with the path of the offending value (OCPI field paths below ``ocpi``)."""
    if isinstance(obj, dict) and "elements" in obj:
        try:
            return Tariff(OcpiTariffConfig(ocpi=obj, timezone=default_timezone))
        except TariffConfigError as exc:  # a bare object's paths are its own
            if exc.path[:1] == ("ocpi",):
                raise TariffConfigError(exc.path[1:], exc.message) from None
            raise
    if isinstance(obj, dict) and "ocpi" in obj:
        try:
            config = msgspec.convert(obj, OcpiTariffConfig)
        except msgspec.ValidationError as exc:
            raise _config_error_from_msgspec(obj, str(exc)) from None
        return Tariff(config)
    return Tariff(tariff_config_from_builtins(obj))


def tariff_to_builtins(tariff: Tariff) -> dict[str, object]:
    """The JSON-able form of ``tariff`` that :func:`tariff_from_builtins` reads back unchanged."""
    built = msgspec.to_builtins(tariff.config)
    assert isinstance(built, dict)
    if isinstance(tariff.config, OcpiTariffConfig):  # numbers as exact decimal strings
        built["ocpi"] = json.loads(msgspec.json.encode(tariff.ocpi).decode())
    return built


def tariff_fingerprint(tariff: Tariff) -> str:
    """A stable digest of what ``tariff`` prices (sha256 of its canonical JSON form)."""
    text = json.dumps(tariff_to_builtins(tariff), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def usage_from_cdr(cdr: OcpiCdr) -> Usage:
    """The usage an OCPI 2.2.1 CDR's ``charging_periods`` describe (mod_cdrs §10.4.6): each period
    starts at its ``start_date_time``; ENERGY (kWh) → Wh, TIME (h) → a charging stretch, PARKING_TIME
    (h) → an idle stretch after it (energy in whole Wh rounded up on the running total, times to the
    nearest ms); a period with neither lasts
    until the next period (the CDR's end). MAX_POWER (kW) / MAX_CURRENT (A), else MIN_POWER /
    MIN_CURRENT, are the period's power and current for restrictions."""
    periods: list[Period] = []
    starts = [parse_datetime(p.start_date_time).astimezone(UTC) for p in cdr.charging_periods]
    end = parse_datetime(cdr.end_date_time).astimezone(UTC)
    energy_so_far, billed_wh = Fraction(0), 0
    for i, period in enumerate(cdr.charging_periods):
        volumes: dict[str, Fraction] = {}
        for dim in period.dimensions:
            volumes[dim.type] = volumes.get(dim.type, Fraction(0)) + Fraction(dim.volume)
        # whole Wh, rounded up on the running total (§Tariffs 4.4.5: ENERGY is billed per started Wh)
        energy_so_far += volumes.get("ENERGY", Fraction(0)) * _WH_PER_KWH
        energy_wh = math.ceil(energy_so_far) - billed_wh
        billed_wh += energy_wh
        power = volumes.get("MAX_POWER", volumes.get("MIN_POWER"))
        current = volumes.get("MAX_CURRENT", volumes.get("MIN_CURRENT"))
        power_w = None if power is None else float(power * 1000)
        current_a = None if current is None else float(current)
        start = starts[i]
        charging_ms = parking_ms = 0
        if "TIME" in volumes or "PARKING_TIME" in volumes:
            charging_ms = round_half_up(volumes.get("TIME", Fraction(0)) * 3_600_000)
            parking_ms = round_half_up(volumes.get("PARKING_TIME", Fraction(0)) * 3_600_000)
        else:
            charging_ms = ((starts[i + 1] if i + 1 < len(starts) else end) - start) // _MS
        if charging_ms or not parking_ms:
            periods.append(Period(start, UsageKind.CHARGING, energy_wh, charging_ms, power_w, current_a))
            energy_wh = 0
        if parking_ms:
            at = start + timedelta(milliseconds=charging_ms)
            periods.append(Period(at, UsageKind.IDLE, energy_wh, parking_ms, power_w, current_a))
    return Usage(started_at=parse_datetime(cdr.start_date_time).astimezone(UTC), periods=tuple(periods))


def cdr_charging_periods(usage: Usage) -> list[dict[str, object]]:
    """``usage`` as OCPI 2.2.1 CDR ``charging_periods`` (mod_cdrs §10.4.6): ``start_date_time``
    (UTC, RFC 3339), dimensions ENERGY (kWh, exact), TIME (charging) or PARKING_TIME (suspended
    or idle; §Tariffs 4.4.5) in hours to 9 decimals (snapped to the ms they read back exactly),
    MAX_POWER (kW) and MAX_CURRENT (A) when known. :func:`usage_from_cdr` reads it back."""
    found: list[dict[str, object]] = []
    for period in usage.periods:
        dims: list[dict[str, object]] = []
        if period.energy_wh:
            dims.append({"type": "ENERGY", "volume": float(Decimal(period.energy_wh) / _WH_PER_KWH)})
        dim = Dimension.TIME if period.kind is UsageKind.CHARGING else Dimension.PARKING_TIME
        hours = round(Decimal(period.duration_ms) / 3_600_000, 9)
        dims.append({"type": dim.value, "volume": float(hours)})
        if period.power_w is not None:
            dims.append({"type": "MAX_POWER", "volume": round(period.power_w / 1000, 3)})
        if period.current_a is not None:
            dims.append({"type": "MAX_CURRENT", "volume": round(period.current_a, 3)})
        stamp = period.start.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        found.append({"start_date_time": stamp, "dimensions": dims})
    return found
