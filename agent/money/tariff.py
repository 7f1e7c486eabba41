"""Tariff: exact session prices in minor currency units, itemised (DESIGN.md §5.4).

Requirements: STOP-8 (final amount = tariff applied to the energy and time actually delivered,
exact, explicit rounding), STOP-9 (idle fee after a grace period, itemised), START-8 (price shown
before payment, :meth:`Tariff.describe`), AMT-1…AMT-4 (the authorization strategies live in
``statemachines.authorization`` because the connector machine takes those decisions and may not
import ``agent``; they are re-exported here, as is the projection
``statemachines.pricing.seconds_until_cost_reaches``).

Pure money logic: no I/O and no clock reads. Times arrive as timezone-aware ``datetime`` values;
``zoneinfo`` only maps them to the tariff's wall clock for time-of-day bands.

Components
    energy per kWh and time per minute (both overridable per time-of-day band), a flat session fee,
    an idle fee per minute after ``idle_grace_minutes`` of idle time (STOP-9, Payter guide §6.6),
    a minimum and a maximum price (gross). Time is priced pro rata to the millisecond (no rounding
    up to started minutes); ``time_applies_to`` says whether suspended time counts. Every session
    is priced, even one with no usage yet: the session fee and the minimum price apply to it. Whether
    a session that delivered nothing is voided instead (ERR-1) is the connector machine's decision.

Rounding policy (one policy, applied everywhere)
    1. Each line's amount is computed exactly (``Fraction``) in the basis the prices are given in
       (gross when ``prices_include_vat``, else net) and rounded **half-up** (ties away from zero,
       like ``decimal.ROUND_HALF_UP``) to whole minor units.
    2. VAT is computed **per line** from that rounded amount and rounded half-up: for gross prices
       ``net = round(gross * 100 / (100 + rate))`` and ``vat = gross - net``; for net prices
       ``vat = round(net * rate / 100)`` and ``gross = net + vat``. So every line satisfies
       ``net + vat == gross`` and the totals are the plain sums of the lines (the receipt adds up).
    3. The minimum and maximum price are gross: when the sum of the component lines' gross is
       below the minimum (above the maximum) a ``minimum_adjustment`` (``maximum_adjustment``)
       line with the difference as its gross is added and split into net and VAT as in step 2.
    :meth:`Tariff.cost_minor` is the gross total of :meth:`Tariff.quote`, always.

Bands
    ``bands`` are wall-clock windows in ``timezone`` ("HH:MM" to "HH:MM", may wrap midnight, end
    "24:00" allowed, optional ``weekdays`` naming the day a window starts on). They may not
    overlap; outside every band the base prices apply (band name ``""``). :meth:`Tariff.accumulate`
    splits an interval at band boundaries and at UTC-offset changes (DST), spreads the energy over
    the pieces in proportion to their duration with exact integer arithmetic (remainder in the last
    piece) and books durations as integer milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import StrEnum
from fractions import Fraction
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from agent.errors import AgentError, PathItem, format_path
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
    Usage,
    UsageKind,
    seconds_until_cost_reaches,
)

__all__ = [
    "PROJECTION_HORIZON_S",
    "WEEKDAYS",
    "AuthorizationPolicy",
    "AuthorizationStrategy",
    "LineKind",
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
_MSGSPEC_PATH_RE: Final = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MSGSPEC_PATH_ITEM_RE: Final = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


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
    match = _MSGSPEC_PATH_RE.match(text)
    message, path_text = (match["message"], match["path"] or "") if match else (text, "")
    path: list[PathItem] = [
        key if key else int(index) for key, index in _MSGSPEC_PATH_ITEM_RE.findall(path_text)
    ]
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", message):
        return TariffConfigError((*path, unknown[1]), "unknown field")
    if missing := re.fullmatch(r"Object missing required field `(.*)`", message):
        return TariffConfigError(tuple(path), f"missing required field '{missing[1]}'")
    wrong_type = re.fullmatch(r"Expected `str( \| null)?`, got `\w+`", message)
    if path and path[-1] in _DECIMAL_FIELDS and wrong_type:
        value = _lookup(obj, path)
        return TariffConfigError(
            tuple(path), f'expected a decimal string, got {value!r} (write it quoted, e.g. "0.39")'
        )
    message = message.replace("`", "")
    return TariffConfigError(tuple(path), message[:1].lower() + message[1:])


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
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


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


class Tariff:
    """A validated tariff; implements ``statemachines.pricing.Pricer``. Immutable and pure.

    Raises :class:`TariffConfigError` for an invalid configuration.
    """

    __slots__ = (
        "_bands",
        "_boundaries",
        "_digits",
        "_energy",
        "_idle",
        "_idle_grace_ms",
        "_maximum_minor",
        "_minimum_minor",
        "_session_fee",
        "_time",
        "_time_applies_to",
        "_vat_rate",
        "_zone",
        "config",
    )

    def __init__(self, config: TariffConfig) -> None:
        self.config = config
        if not _CURRENCY_RE.fullmatch(config.currency):
            raise TariffConfigError(
                ("currency",), f"expected an ISO 4217 code like 'EUR', got {config.currency!r}"
            )
        if not 0 <= config.minor_unit_digits <= _MAX_MINOR_UNIT_DIGITS:
            raise TariffConfigError(
                ("minor_unit_digits",),
                f"expected 0..{_MAX_MINOR_UNIT_DIGITS}, got {config.minor_unit_digits}",
            )
        self._digits = config.minor_unit_digits
        self._vat_rate = _decimal(("vat_rate_percent",), config.vat_rate_percent)
        if self._vat_rate >= 100:
            raise TariffConfigError(
                ("vat_rate_percent",), f"expected a rate below 100, got {config.vat_rate_percent!r}"
            )
        self._energy = _decimal(("energy_per_kwh",), config.energy_per_kwh)
        self._time = _decimal(("time_per_minute",), config.time_per_minute)
        self._idle = _decimal(("idle_fee_per_minute",), config.idle_fee_per_minute)
        self._session_fee = self._amount_minor("session_fee", config.session_fee)
        if config.idle_grace_minutes < 0:
            raise TariffConfigError(
                ("idle_grace_minutes",), f"expected >= 0, got {config.idle_grace_minutes}"
            )
        self._idle_grace_ms = config.idle_grace_minutes * _MS_PER_MINUTE
        try:  # a TariffConfig built in code is not type-checked by msgspec
            self._time_applies_to = TimeAppliesTo(config.time_applies_to)
        except ValueError:
            raise TariffConfigError(
                ("time_applies_to",), f"expected one of {[m.value for m in TimeAppliesTo]}"
            ) from None
        self._minimum_minor = self._optional_amount_minor("minimum_price", config.minimum_price)
        self._maximum_minor = self._optional_amount_minor("maximum_price", config.maximum_price)
        if (
            self._minimum_minor is not None
            and self._maximum_minor is not None
            and self._minimum_minor > self._maximum_minor
        ):
            raise TariffConfigError(("minimum_price",), "is above maximum_price")
        self._zone: tzinfo = UTC
        if config.timezone is not None:
            try:
                self._zone = ZoneInfo(config.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise TariffConfigError(("timezone",), f"unknown IANA timezone {config.timezone!r}") from None
        elif config.bands:
            raise TariffConfigError(("timezone",), "required when there are bands (e.g. 'Europe/Amsterdam')")
        self._bands = tuple(self._band(i, band) for i, band in enumerate(config.bands))
        self._check_overlaps()
        boundaries: list[set[int]] = [set() for _ in range(7)]
        for band in self._bands:
            for day in band.days:
                boundaries[day].add(band.start_min)
                end_day = day + 1 if band.wraps or band.end_min == _MINUTES_PER_DAY else day
                boundaries[end_day % 7].add(band.end_min % _MINUTES_PER_DAY)
        self._boundaries = tuple(tuple(sorted(b)) for b in boundaries)

    def _optional_amount_minor(self, field: str, text: str | None) -> int | None:
        return None if text is None else self._amount_minor(field, text)

    def _amount_minor(self, field: str, text: str) -> int:
        scaled = _decimal((field,), text) * 10**self._digits
        if scaled.denominator != 1:
            raise TariffConfigError(
                (field,), f"{text!r} is not a whole number of minor units ({self._digits} decimals)"
            )
        return int(scaled)

    def _band(self, index: int, band: TariffBand) -> _Band:
        path: tuple[PathItem, ...] = ("bands", index)
        if not band.name.strip():
            raise TariffConfigError((*path, "name"), "must not be empty")
        if band.name in (b.name for b in self.config.bands[:index]):
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
        energy_text = band.energy_per_kwh if band.energy_per_kwh is not None else self.config.energy_per_kwh
        time_text = band.time_per_minute if band.time_per_minute is not None else self.config.time_per_minute
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

    def _check_overlaps(self) -> None:
        for j, later in enumerate(self._bands):
            for earlier in self._bands[:j]:
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

    # ---------------------------------------------------------------- properties

    @property
    def currency(self) -> str:
        return self.config.currency

    @property
    def minor_unit_digits(self) -> int:
        return self._digits

    @property
    def timezone(self) -> tzinfo:
        """The tariff's wall-clock zone (UTC when none is configured)."""
        return self._zone

    @property
    def minimum_minor(self) -> int | None:
        return self._minimum_minor

    @property
    def maximum_minor(self) -> int | None:
        """The gross maximum price, e.g. the amount to authorize with the "maximum" strategy (AMT-1)."""
        return self._maximum_minor

    # ---------------------------------------------------------------- Pricer protocol

    def accumulate(
        self, usage: Usage, start: datetime, end: datetime, energy_wh: int, kind: UsageKind
    ) -> Usage:
        """Add ``energy_wh`` delivered between ``start`` and ``end`` as ``kind`` to ``usage``.

        Pre: ``start``/``end`` timezone-aware, ``start <= end``, ``energy_wh >= 0``. The interval is
        split at band boundaries; piece durations are whole milliseconds that sum to
        ``(end - start) // 1 ms``; energy is split in proportion to piece duration (floor), the
        remainder going to the last piece, so the parts sum to ``energy_wh``. ``started_at`` is set
        to ``start`` when still unset.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        if energy_wh < 0:
            raise ValueError(f"energy_wh must be >= 0, got {energy_wh}")
        start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
        if end_utc < start_utc:
            raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
        if usage.started_at is None:
            usage = replace(usage, started_at=start)
        pieces = self._pieces(start_utc, end_utc)
        total_ms = (end_utc - start_utc) // _MS
        energy_left = energy_wh
        for i, (band, piece_start, piece_end) in enumerate(pieces):
            duration_ms = (piece_end - start_utc) // _MS - (piece_start - start_utc) // _MS
            if i == len(pieces) - 1:
                energy = energy_left
            else:
                energy = energy_wh * duration_ms // total_ms if total_ms else 0
            energy_left -= energy
            usage = usage.add(band, kind, energy, duration_ms)
        return usage

    def cost_minor(self, usage: Usage) -> int:
        """The gross price of ``usage`` in minor units: ``quote(usage).gross_minor``."""
        return self.quote(usage).gross_minor

    # ---------------------------------------------------------------- itemised price

    def quote(self, usage: Usage) -> Quote:
        """The itemised price of ``usage`` (module docstring: rounding policy).

        Lines: energy and time per band (in order of first use), session fee, idle fee, then a
        minimum or maximum adjustment. Lines with a zero amount are left out. Raises ``ValueError``
        when ``usage`` names a band this tariff does not define.
        """
        bands = {band.name: band for band in self._bands}
        band_order: list[str] = []
        for bucket in usage.buckets:
            if bucket.band and bucket.band not in bands:
                raise ValueError(f"usage has band {bucket.band!r}, which this tariff does not define")
            if bucket.band not in band_order:
                band_order.append(bucket.band)
        timed = {UsageKind.CHARGING}
        if self._time_applies_to is TimeAppliesTo.CHARGING_AND_SUSPENDED:
            timed.add(UsageKind.SUSPENDED)
        scale = 10**self._digits
        lines: list[QuoteLine] = []
        for name in band_order:
            band = bands.get(name)
            energy_price, energy_text = (
                (self._energy, self.config.energy_per_kwh)
                if band is None
                else (band.energy_per_kwh, band.energy_text)
            )
            wh = sum(b.energy_wh for b in usage.buckets if b.band == name)
            exact = energy_price * scale * wh / _WH_PER_KWH
            lines += self._priced(LineKind.ENERGY, name, wh, "Wh", energy_text, "kWh", exact)
        for name in band_order:
            band = bands.get(name)
            time_price, time_text = (
                (self._time, self.config.time_per_minute)
                if band is None
                else (band.time_per_minute, band.time_text)
            )
            ms = sum(b.duration_ms for b in usage.buckets if b.band == name and b.kind in timed)
            exact = time_price * scale * ms / _MS_PER_MINUTE
            lines += self._priced(LineKind.TIME, name, ms, "ms", time_text, "min", exact)
        lines += self._priced(
            LineKind.SESSION_FEE,
            "",
            1,
            "session",
            self.config.session_fee,
            "session",
            Fraction(self._session_fee),
        )
        idle_ms = max(0, usage.duration_ms(UsageKind.IDLE) - self._idle_grace_ms)
        lines += self._priced(
            LineKind.IDLE_FEE,
            "",
            idle_ms,
            "ms",
            self.config.idle_fee_per_minute,
            "min",
            self._idle * scale * idle_ms / _MS_PER_MINUTE,
        )
        subtotal = sum(line.gross_minor for line in lines)
        if self._minimum_minor is not None and subtotal < self._minimum_minor:
            lines.append(self._adjustment(LineKind.MINIMUM_ADJUSTMENT, self._minimum_minor - subtotal))
        if self._maximum_minor is not None and subtotal > self._maximum_minor:
            lines.append(self._adjustment(LineKind.MAXIMUM_ADJUSTMENT, self._maximum_minor - subtotal))
        return Quote(
            currency=self.config.currency,
            minor_unit_digits=self._digits,
            prices_include_vat=self.config.prices_include_vat,
            vat_rate_percent=self.config.vat_rate_percent,
            lines=tuple(lines),
            net_minor=sum(line.net_minor for line in lines),
            vat_minor=sum(line.vat_minor for line in lines),
            gross_minor=sum(line.gross_minor for line in lines),
        )

    def _priced(
        self,
        kind: LineKind,
        band: str,
        quantity: int,
        unit: str,
        unit_price: str,
        price_unit: str,
        exact_minor: Fraction,
    ) -> list[QuoteLine]:
        """Zero or one line: ``exact_minor`` is in the price basis (gross or net), rounded here."""
        amount = round_half_up(exact_minor)
        if amount == 0:
            return []
        net, vat, gross = self._split(amount)
        return [
            QuoteLine(
                kind=kind,
                band=band,
                quantity=quantity,
                unit=unit,
                unit_price=unit_price,
                price_unit=price_unit,
                net_minor=net,
                vat_minor=vat,
                gross_minor=gross,
            )
        ]

    def _split(self, amount: int) -> tuple[int, int, int]:
        """(net, vat, gross) of an amount in the price basis (rounding policy step 2)."""
        if self.config.prices_include_vat:
            return self._split_gross(amount)
        vat = round_half_up(amount * self._vat_rate / 100)
        return amount, vat, amount + vat

    def _gross_minor(self, amount: int) -> int:
        return self._split(amount)[2]

    def _split_gross(self, gross: int) -> tuple[int, int, int]:
        net = round_half_up(gross * Fraction(100) / (100 + self._vat_rate))
        return net, gross - net, gross

    def _adjustment(self, kind: LineKind, gross: int) -> QuoteLine:
        net, vat, gross = self._split_gross(gross)
        return QuoteLine(
            kind=kind,
            band="",
            quantity=1,
            unit="session",
            unit_price=self._minor_text(gross),
            price_unit="session",
            net_minor=net,
            vat_minor=vat,
            gross_minor=gross,
        )

    # ---------------------------------------------------------------- price transparency (START-8)

    def describe(self) -> str:
        """Short driver-facing price text with gross prices, e.g.
        ``"0.39 EUR/kWh · 0.05 EUR/min · idle 0.20 EUR/min after 15 min · incl. 21% VAT"``."""
        cur = self.config.currency
        parts: list[str] = []
        if self._energy or any(b.energy_per_kwh for b in self._bands):
            parts.append(f"{self._gross_text(self._energy)} {cur}/kWh")
        if self._time or any(b.time_per_minute for b in self._bands):
            suffix = "" if self._time_applies_to is TimeAppliesTo.CHARGING else " charging or paused"
            parts.append(f"{self._gross_text(self._time)} {cur}/min{suffix}")
        for band in self._bands:
            when = " ".join(
                filter(
                    None,
                    (
                        _days_text(band.days),
                        f"{band.start_min // 60:02d}:"
                        f"{band.start_min % 60:02d}-{band.end_min // 60:02d}:"
                        f"{band.end_min % 60:02d}",
                    ),
                )
            )
            prices = []
            if band.energy_per_kwh != self._energy:
                prices.append(f"{self._gross_text(band.energy_per_kwh)} {cur}/kWh")
            if band.time_per_minute != self._time:
                prices.append(f"{self._gross_text(band.time_per_minute)} {cur}/min")
            parts.append(f"{band.name} {when}: {' '.join(prices) or 'base prices'}")
        if self._session_fee:
            parts.append(f"{self._minor_text(self._gross_minor(self._session_fee))} {cur}/session")
        if self._idle:
            grace = f" after {self.config.idle_grace_minutes} min" if self.config.idle_grace_minutes else ""
            parts.append(f"idle {self._gross_text(self._idle)} {cur}/min{grace}")
        if self._minimum_minor is not None:
            parts.append(f"min {self._minor_text(self._minimum_minor)} {cur}")
        if self._maximum_minor is not None:
            parts.append(f"max {self._minor_text(self._maximum_minor)} {cur}")
        parts.append(f"incl. {_decimal_text(self._vat_rate, 0)}% VAT")
        return " · ".join(parts)

    def _minor_text(self, amount_minor: int) -> str:
        return _decimal_text(Fraction(amount_minor, 10**self._digits), self._digits)

    def _gross_text(self, price: Fraction) -> str:
        if not self.config.prices_include_vat:
            price = price * (100 + self._vat_rate) / 100
        return _decimal_text(price, self._digits)

    # ---------------------------------------------------------------- band splitting

    def _band_at(self, instant: datetime) -> str:
        local = instant.astimezone(self._zone)
        weekday, minute = local.weekday(), local.hour * 60 + local.minute
        for band in self._bands:
            if band.active(weekday, minute):
                return band.name
        return ""

    def _pieces(self, start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
        """``[(band, piece_start, piece_end), …]`` covering ``start``..``end`` (UTC instants)."""
        if not self._bands:
            return [("", start, end)]
        pieces: list[tuple[str, datetime, datetime]] = []
        at = start
        while True:
            limit = min(self._next_boundary(at) or end, end)
            change = self._offset_change(at, limit)
            piece_end = change if change is not None else limit
            pieces.append((self._band_at(at), at, piece_end))
            if piece_end >= end:
                return pieces
            at = piece_end

    def _next_boundary(self, at: datetime) -> datetime | None:
        """The first instant after ``at`` whose wall clock is a band boundary (within 8 days)."""
        wall = at.astimezone(self._zone).replace(tzinfo=None)
        for day_offset in range(8):
            day = wall.date() + timedelta(days=day_offset)
            for minute in self._boundaries[day.weekday()]:
                candidate = datetime.combine(day, time()) + timedelta(minutes=minute)
                if candidate <= wall:
                    continue
                for fold in (0, 1):  # a repeated wall time (DST fall-back) has two instants
                    instant = candidate.replace(tzinfo=self._zone, fold=fold).astimezone(UTC)
                    if instant > at:
                        return instant
        return None

    def _offset_change(self, at: datetime, limit: datetime) -> datetime | None:
        """The first whole second in (``at``, ``limit``] at which the UTC offset differs from the
        offset at ``at`` (a DST transition), or ``None``. Transitions fall on whole seconds."""
        offset = at.astimezone(self._zone).utcoffset()
        if limit.astimezone(self._zone).utcoffset() == offset:
            return None
        low = (at - _EPOCH) // timedelta(seconds=1)  # offset(low) == offset
        high = -((_EPOCH - limit) // timedelta(seconds=1))  # ceil; offset(high) != offset
        while high - low > 1:
            mid = (low + high) // 2
            if (_EPOCH + timedelta(seconds=mid)).astimezone(self._zone).utcoffset() == offset:
                low = mid
            else:
                high = mid
        return min(_EPOCH + timedelta(seconds=high), limit)
