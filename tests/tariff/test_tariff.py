"""Worked examples for agent/money/tariff.py (issue 3, acceptance 3): every component, half-cent rounding,
VAT both ways, band changes (also across DST), idle fee with grace, minimum/maximum, authorization
strategies with the projection. Amounts are minor units (cents); the arithmetic is in the comments."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.money.tariff import (
    AuthorizationPolicy,
    AuthorizationStrategy,
    Dimension,
    LineKind,
    Quote,
    Tariff,
    TariffBand,
    TariffConfig,
    TariffConfigError,
    TimeAppliesTo,
    Weekday,
    capture_amount_minor,
    increment_total_minor,
    must_stop_for_cap,
    partial_cap_minor,
    round_half_up,
    seconds_until_cost_reaches,
    start_amount_minor,
    tariff_config_from_builtins,
)
from statemachines.pricing import Pricer, Usage, UsageKind


@dataclass(frozen=True, slots=True)
class Bucket:
    band: str
    kind: UsageKind
    energy_wh: int
    duration_ms: int


def buckets(t: Tariff, usage: Usage) -> list[Bucket]:
    """The usage per (band, kind) in order of first use; a period's band is the name of the
    element that prices its time (else its energy): how the bands split a session."""
    engine = t.engine
    found: dict[tuple[str, UsageKind], Bucket] = {}
    for period, state in zip(usage.periods, engine.period_states(usage), strict=True):
        dim = engine.time_dimension(period.kind)
        index = None if dim is None else engine.active(dim, state)
        if index is None:
            index = engine.active(Dimension.ENERGY, state)
        band = "" if index is None else engine.elements[index].name
        old = found.get((band, period.kind), Bucket(band, period.kind, 0, 0))
        found[(band, period.kind)] = Bucket(
            band, period.kind, old.energy_wh + period.energy_wh, old.duration_ms + period.duration_ms
        )
    return list(found.values())


AMS = ZoneInfo("Europe/Amsterdam")
MONDAY_0800 = datetime(2025, 3, 3, 8, 0, tzinfo=AMS)  # a Monday without DST change
C, S, IDLE = UsageKind.CHARGING, UsageKind.SUSPENDED, UsageKind.IDLE


def tariff(**overrides: Any) -> Tariff:
    fields: dict[str, Any] = {"currency": "EUR", "prices_include_vat": True, "vat_rate_percent": "21"}
    fields.update(overrides)
    return Tariff(TariffConfig(**fields))


def session(t: Tariff, start: datetime, *stretches: tuple[UsageKind, timedelta, int]) -> Usage:
    """Accumulate consecutive stretches ``(kind, duration, energy_wh)`` from ``start``."""
    usage, at = Usage(), start
    for kind, duration, energy_wh in stretches:
        usage = t.accumulate(usage, at, at + duration, energy_wh, kind)
        at += duration
    return usage


def lines(quote: Quote) -> list[tuple[str, str, int, int, int]]:
    return [(line.kind, line.band, line.net_minor, line.vat_minor, line.gross_minor) for line in quote.lines]


def check_consistent(quote: Quote) -> None:
    for line in quote.lines:
        assert line.net_minor + line.vat_minor == line.gross_minor
    assert quote.net_minor == sum(line.net_minor for line in quote.lines)
    assert quote.vat_minor == sum(line.vat_minor for line in quote.lines)
    assert quote.gross_minor == sum(line.gross_minor for line in quote.lines)


# ------------------------------------------------------------------------------------------ components


@pytest.mark.req("STOP-8")
def test_energy_gross_price_STOP_8() -> None:
    t = tariff(energy_per_kwh="0.39")
    quote = t.quote(session(t, MONDAY_0800, (C, timedelta(hours=1), 10_000)))
    # 10 kWh * 0.39 = 3.90 gross; net = 390 / 1.21 = 322.31 -> 322; vat = 390 - 322 = 68
    assert lines(quote) == [("energy", "", 322, 68, 390)]
    assert quote.lines[0].quantity == 10_000
    assert (quote.lines[0].unit, quote.lines[0].unit_price, quote.lines[0].price_unit) == (
        "Wh",
        "0.39",
        "kWh",
    )
    assert (quote.net_minor, quote.vat_minor, quote.gross_minor) == (322, 68, 390)
    assert t.cost_minor(session(t, MONDAY_0800, (C, timedelta(hours=1), 10_000))) == 390


@pytest.mark.req("STOP-8")
@pytest.mark.parametrize(
    ("energy_wh", "gross"),
    [
        (2500, 98),  # 2.5 kWh * 39 = 97.5 cents: exactly half a cent -> rounds up to 98
        (2499, 97),  # 97.461 -> 97
        (1250, 49),  # 48.75 -> 49
        (12, 0),  # 0.468 -> 0: the line disappears
        (13, 1),  # 0.507 -> 1
    ],
)
def test_energy_rounds_half_up_at_half_cent_STOP_8(energy_wh: int, gross: int) -> None:
    t = tariff(energy_per_kwh="0.39")
    assert t.cost_minor(session(t, MONDAY_0800, (C, timedelta(minutes=10), energy_wh))) == gross


@pytest.mark.req("STOP-8")
def test_net_prices_add_vat_per_line_half_up_STOP_8() -> None:
    t = tariff(prices_include_vat=False, energy_per_kwh="2.50", session_fee="1.00")
    quote = t.quote(session(t, MONDAY_0800, (C, timedelta(hours=1), 1000)))
    # energy: net 250, vat 250 * 0.21 = 52.5 -> 53 (half-up), gross 303
    # session fee: net 100, vat 21, gross 121
    assert lines(quote) == [("energy", "", 250, 53, 303), ("session_fee", "", 100, 21, 121)]
    assert (quote.net_minor, quote.vat_minor, quote.gross_minor) == (350, 74, 424)
    check_consistent(quote)


@pytest.mark.req("STOP-8")
def test_gross_prices_split_net_half_up_STOP_8() -> None:
    t = tariff(vat_rate_percent="20", session_fee="6.03")
    # gross 603 at 20 %: net = 603 / 1.2 = 502.5 -> 503 (half-up), vat = 603 - 503 = 100
    assert lines(t.quote(Usage())) == [("session_fee", "", 503, 100, 603)]


def test_fractional_vat_rate() -> None:
    t = tariff(prices_include_vat=False, vat_rate_percent="7.7", energy_per_kwh="1")
    # net 1000; vat 1000 * 0.077 = 77; gross 1077
    assert lines(t.quote(session(t, MONDAY_0800, (C, timedelta(hours=1), 10_000)))) == [
        ("energy", "", 1000, 77, 1077)
    ]


@pytest.mark.req("STOP-8")
def test_time_price_charging_only_and_with_suspended_STOP_8() -> None:
    stretches = ((C, timedelta(minutes=60), 0), (S, timedelta(minutes=30), 0), (C, timedelta(minutes=30), 0))
    charging = tariff(time_per_minute="0.05")
    # 90 charging minutes * 5 = 450; the 30 suspended minutes are free
    q = charging.quote(session(charging, MONDAY_0800, *stretches))
    assert [(ln.kind, ln.quantity, ln.unit, ln.gross_minor) for ln in q.lines] == [
        ("time", 5_400_000, "ms", 450)
    ]
    both = tariff(time_per_minute="0.05", time_applies_to=TimeAppliesTo.CHARGING_AND_SUSPENDED)
    # 120 minutes * 5 = 600
    assert both.cost_minor(session(both, MONDAY_0800, *stretches)) == 600


def test_time_is_pro_rata_to_the_millisecond() -> None:
    t = tariff(time_per_minute="0.05")
    # 90 s = 1.5 min * 5 = 7.5 -> 8; 89.999 s -> 7.49992 -> 7
    assert t.cost_minor(session(t, MONDAY_0800, (C, timedelta(seconds=90), 0))) == 8
    assert t.cost_minor(session(t, MONDAY_0800, (C, timedelta(milliseconds=89_999), 0))) == 7


def test_session_fee_and_empty_session() -> None:
    t = tariff(energy_per_kwh="0.39", session_fee="0.50")
    # every session is priced, even one without usage: the session fee applies
    assert lines(t.quote(Usage())) == [("session_fee", "", 41, 9, 50)]  # 50 / 1.21 = 41.32 -> 41
    assert t.cost_minor(session(t, MONDAY_0800, (C, timedelta(hours=1), 1000))) == 39 + 50


@pytest.mark.req("STOP-9")
@pytest.mark.parametrize(
    ("idle", "gross"),
    [
        (timedelta(minutes=10), 0),  # within the 15 min grace
        (timedelta(minutes=15), 0),  # exactly the grace
        (timedelta(minutes=15, seconds=30), 10),  # 0.5 min * 20 = 10
        (timedelta(minutes=35), 400),  # 20 min * 20 = 400
    ],
)
def test_idle_fee_after_grace_STOP_9(idle: timedelta, gross: int) -> None:
    t = tariff(energy_per_kwh="0.39", idle_fee_per_minute="0.20", idle_grace_minutes=15)
    quote = t.quote(session(t, MONDAY_0800, (C, timedelta(hours=1), 10_000), (IDLE, idle, 0)))
    idle_lines = [line for line in quote.lines if line.kind == LineKind.IDLE_FEE]
    assert sum(line.gross_minor for line in idle_lines) == gross
    if gross:  # itemised: quantity is the billable idle time after the grace
        assert idle_lines[0].quantity == (idle - timedelta(minutes=15)) // timedelta(milliseconds=1)
    assert quote.gross_minor == 390 + gross


@pytest.mark.req("STOP-9")
def test_idle_grace_counts_all_idle_time_of_the_session_STOP_9() -> None:
    t = tariff(idle_fee_per_minute="0.20", idle_grace_minutes=15)
    # two idle stretches of 10 min: 20 min idle - 15 grace = 5 min * 20 = 100
    usage = session(
        t,
        MONDAY_0800,
        (IDLE, timedelta(minutes=10), 0),
        (S, timedelta(minutes=1), 0),
        (IDLE, timedelta(minutes=10), 0),
    )
    assert t.cost_minor(usage) == 100


def test_minimum_price_adds_an_adjustment_line() -> None:
    t = tariff(energy_per_kwh="0.39", minimum_price="2.00")
    quote = t.quote(session(t, MONDAY_0800, (C, timedelta(minutes=10), 1000)))
    # energy 39 (net 32, vat 7); adjustment 200 - 39 = 161: net 161 / 1.21 = 133.06 -> 133, vat 28
    assert lines(quote) == [("energy", "", 32, 7, 39), ("minimum_adjustment", "", 133, 28, 161)]
    assert quote.lines[1].unit_price == "1.61"
    assert quote.gross_minor == 200
    assert t.cost_minor(Usage()) == 200  # the minimum applies to every session


def test_maximum_price_caps_the_total() -> None:
    t = tariff(energy_per_kwh="0.39", maximum_price="50.00")
    quote = t.quote(session(t, MONDAY_0800, (C, timedelta(hours=20), 200_000)))
    # energy 200 kWh * 39 = 7800 (net 7800 / 1.21 = 6446.28 -> 6446, vat 1354)
    # adjustment 5000 - 7800 = -2800: net -2800 / 1.21 = -2314.05 -> -2314, vat -486
    assert lines(quote) == [("energy", "", 6446, 1354, 7800), ("maximum_adjustment", "", -2314, -486, -2800)]
    assert quote.lines[1].unit_price == "-28.00"
    assert (quote.net_minor, quote.vat_minor, quote.gross_minor) == (4132, 868, 5000)


def test_minimum_and_maximum_with_net_prices_are_gross() -> None:
    t = tariff(prices_include_vat=False, energy_per_kwh="1", minimum_price="12.10", maximum_price="12.10")
    # 1 kWh net 100 + vat 21 = 121 gross < 1210 -> adjustment 1089 gross (net 900, vat 189)
    quote = t.quote(session(t, MONDAY_0800, (C, timedelta(hours=1), 1000)))
    assert lines(quote) == [("energy", "", 100, 21, 121), ("minimum_adjustment", "", 900, 189, 1089)]
    assert quote.gross_minor == 1210


@pytest.mark.parametrize(
    ("digits", "price", "energy_wh", "gross"),
    [
        (0, "39", 2500, 98),  # JPY-like: 2.5 kWh * 39 = 97.5 -> 98 yen
        (3, "0.390", 2500, 975),  # KWD-like: 0.975 KWD = 975 fils
    ],
)
def test_minor_unit_digits(digits: int, price: str, energy_wh: int, gross: int) -> None:
    t = tariff(currency="XXX", minor_unit_digits=digits, energy_per_kwh=price)
    assert t.cost_minor(session(t, MONDAY_0800, (C, timedelta(hours=1), energy_wh))) == gross


# ------------------------------------------------------------------------------------------ bands

PEAK = TariffBand(
    name="peak",
    start="17:00",
    end="21:00",
    weekdays=("mon", "tue", "wed", "thu", "fri"),
    energy_per_kwh="0.49",
)
NIGHT = TariffBand(name="night", start="22:00", end="06:00", energy_per_kwh="0.29", time_per_minute="0")


def banded(**overrides: Any) -> Tariff:
    fields: dict[str, Any] = {
        "energy_per_kwh": "0.39",
        "timezone": "Europe/Amsterdam",
        "bands": (PEAK, NIGHT),
    }
    fields.update(overrides)
    return tariff(**fields)


@pytest.mark.req("STOP-8")
def test_band_change_during_session_STOP_8() -> None:
    t = banded(time_per_minute="0.05")
    start = datetime(2025, 3, 3, 16, 30, tzinfo=AMS)  # Monday
    usage = session(t, start, (C, timedelta(hours=1), 11_000))
    # 30 min base + 30 min peak, the 11 kWh split in proportion to time: 5500 Wh each
    assert [(b.band, b.energy_wh, b.duration_ms) for b in buckets(t, usage)] == [
        ("", 5500, 1_800_000),
        ("peak", 5500, 1_800_000),
    ]
    quote = t.quote(usage)
    # energy: 5.5 * 39 = 214.5, 5.5 * 49 = 269.5; time: 30 * 5 = 150 in each band. The total is
    # exact (784) and rounded once; the lines get 214 + 269 and the cent left goes to the larger
    # remainder, the earlier line on a tie (docs/tariff.md §Rounding; per-line rounding said 785)
    assert [(ln.kind, ln.band, ln.unit_price, ln.gross_minor) for ln in quote.lines] == [
        ("energy", "", "0.39", 215),
        ("energy", "peak", "0.49", 269),
        ("time", "", "0.05", 150),
        ("time", "peak", "0.05", 150),
    ]
    assert quote.gross_minor == 784


def test_band_wrapping_midnight_and_its_own_time_price() -> None:
    t = banded(time_per_minute="0.05")
    start = datetime(2025, 3, 8, 21, 0, tzinfo=AMS)  # Saturday: no peak
    usage = session(t, start, (C, timedelta(hours=10), 10_000))
    # 21-22 base (1 h), 22-06 night (8 h), 06-07 base (1 h); energy 1000 per hour
    assert [(b.band, b.energy_wh, b.duration_ms // 60_000) for b in buckets(t, usage)] == [
        ("", 2000, 120),
        ("night", 8000, 480),
    ]
    # base: 2 kWh * 39 = 78 + 120 min * 5 = 600; night: 8 kWh * 29 = 232, no time price
    assert t.cost_minor(usage) == 78 + 232 + 600


def test_weekday_band_only_on_its_days() -> None:
    t = banded()
    for day, expected in ((3, "peak"), (7, "peak"), (8, "")):  # Mon, Fri, Sat
        usage = session(t, datetime(2025, 3, day, 18, 0, tzinfo=AMS), (C, timedelta(hours=1), 1000))
        assert [b.band for b in buckets(t, usage)] == [expected]


def test_energy_split_remainder_goes_to_the_last_piece() -> None:
    t = banded()
    # 16:40-17:40 Monday: 20 min base, 40 min peak; 1000 Wh -> floor(1000 * 20 / 60) = 333, rest 667
    usage = session(t, datetime(2025, 3, 3, 16, 40, tzinfo=AMS), (C, timedelta(hours=1), 1000))
    assert [(b.band, b.energy_wh) for b in buckets(t, usage)] == [("", 333), ("peak", 667)]


def test_band_on_dst_fall_back_runs_twice() -> None:
    # 2024-10-27 Europe/Amsterdam: 03:00 CEST -> 02:00 CET, wall time 02:00-03:00 happens twice
    t = tariff(
        energy_per_kwh="0.39",
        timezone="Europe/Amsterdam",
        bands=(TariffBand(name="x", start="02:00", end="03:00", energy_per_kwh="0.10"),),
    )
    start = datetime(2024, 10, 26, 23, 0, tzinfo=UTC)  # 01:00 CEST
    usage = session(t, start, (C, timedelta(hours=4), 4000))  # until 03:00 UTC = 04:00 CET
    durations = {b.band: b.duration_ms // 60_000 for b in buckets(t, usage)}
    assert durations == {"": 120, "x": 120}


def test_band_on_dst_spring_forward_is_skipped() -> None:
    # 2024-03-31 Europe/Amsterdam: 02:00 CET -> 03:00 CEST, wall time 02:00-03:00 never happens
    t = tariff(
        energy_per_kwh="0.39",
        timezone="Europe/Amsterdam",
        bands=(
            TariffBand(name="x", start="02:00", end="02:30", energy_per_kwh="0.10"),
            TariffBand(name="y", start="02:30", end="04:00", energy_per_kwh="0.20"),
        ),
    )
    start = datetime(2024, 3, 31, 0, 0, tzinfo=UTC)  # 01:00 CET
    usage = session(t, start, (C, timedelta(hours=3), 3000))  # until 05:00 CEST
    # 01:00-02:00 CET base (1 h); x never happens; y, starting in the gap, runs from the jump to
    # 03:00 CEST until 04:00 CEST (1 h); 04:00-05:00 base (1 h)
    durations = {b.band: b.duration_ms // 60_000 for b in buckets(t, usage)}
    assert durations == {"": 120, "y": 60}


def test_end_2400_and_whole_day_band() -> None:
    t = tariff(
        energy_per_kwh="0.39",
        timezone="UTC",
        bands=(
            TariffBand(
                name="weekend", start="00:00", end="24:00", weekdays=("sat", "sun"), energy_per_kwh="0.19"
            ),
        ),
    )
    usage = session(t, datetime(2025, 3, 7, 23, 0, tzinfo=UTC), (C, timedelta(hours=50), 50_000))  # Fri 23:00
    assert {b.band: b.duration_ms // 3_600_000 for b in buckets(t, usage)} == {"": 2, "weekend": 48}


def test_accumulate_preconditions() -> None:
    t = tariff()
    with pytest.raises(ValueError, match="timezone-aware"):
        t.accumulate(Usage(), datetime(2025, 1, 1), datetime(2025, 1, 2), 0, C)
    with pytest.raises(ValueError, match="before start"):
        t.accumulate(Usage(), MONDAY_0800, MONDAY_0800 - timedelta(seconds=1), 0, C)
    with pytest.raises(ValueError, match="energy_wh"):
        t.accumulate(Usage(), MONDAY_0800, MONDAY_0800, -1, C)
    usage = t.accumulate(Usage(), MONDAY_0800, MONDAY_0800, 5, C)  # zero-length interval keeps its energy
    assert usage.energy_wh == 5
    assert usage.started_at == MONDAY_0800


# ------------------------------------------------------------------------------------------ config


BAND = {"name": "p", "start": "17:00", "end": "21:00", "energy_per_kwh": "1"}
BASE = {"currency": "EUR", "prices_include_vat": True, "vat_rate_percent": "21"}


@pytest.mark.parametrize(
    ("overrides", "path", "message"),
    [
        ({"energy_per_kwh": "abc"}, ("energy_per_kwh",), "expected a decimal string, got 'abc'"),
        ({"energy_per_kwh": 0.39}, ("energy_per_kwh",), "expected a decimal string, got 0.39"),
        ({"energy_per_kwh": "-0.39"}, ("energy_per_kwh",), "expected a decimal string"),
        ({"energy_per_kwh": "1e3"}, ("energy_per_kwh",), "expected a decimal string"),
        ({"vat_rate_percent": "100"}, ("vat_rate_percent",), "below 100"),
        ({"currency": "euro"}, ("currency",), "ISO 4217"),
        ({"minor_unit_digits": 7}, ("minor_unit_digits",), "0..4"),
        ({"session_fee": "0.505"}, ("session_fee",), "whole number of minor units"),
        ({"minimum_price": "5.00", "maximum_price": "4.00"}, ("minimum_price",), "above maximum_price"),
        ({"idle_grace_minutes": -1}, ("idle_grace_minutes",), ">= 0"),
        ({"time_applies_to": "always"}, ("time_applies_to",), "invalid enum value 'always'"),
        ({"timezone": "Mars/Olympus"}, ("timezone",), "unknown IANA timezone"),
        ({"colour": "red"}, ("colour",), "unknown field"),
        ({"bands": [BAND]}, ("timezone",), "required when there are bands"),
        (
            {"timezone": "UTC", "bands": [{**BAND, "start": "7:00"}]},
            ("bands", 0, "start"),
            "expected a time HH:MM",
        ),
        ({"timezone": "UTC", "bands": [{**BAND, "start": "24:00"}]}, ("bands", 0, "start"), "00:00..23:59"),
        ({"timezone": "UTC", "bands": [{**BAND, "start": "21:00"}]}, ("bands", 0, "end"), "equals start"),
        (
            {"timezone": "UTC", "bands": [{"name": "p", "start": "17:00", "end": "21:00"}]},
            ("bands", 0),
            "overrides neither",
        ),
        (
            {"timezone": "UTC", "bands": [{**BAND, "weekdays": ["mon", "fri"], "energy_per_kwh": "1x"}]},
            ("bands", 0, "energy_per_kwh"),
            "expected a decimal string, got '1x'",
        ),
        (
            {"timezone": "UTC", "bands": [{**BAND, "weekdays": ["mon", "monday"]}]},
            ("bands", 0, "weekdays", 1),
            "invalid enum value 'monday'",
        ),
        (
            {"timezone": "UTC", "bands": [{**BAND, "weekdays": []}]},
            ("bands", 0, "weekdays"),
            "must not be empty",
        ),
        (
            {
                "timezone": "UTC",
                "bands": [
                    {
                        "name": "night",
                        "start": "22:00",
                        "end": "06:00",
                        "weekdays": ["sun"],
                        "energy_per_kwh": "1",
                    },
                    {
                        "name": "early",
                        "start": "05:00",
                        "end": "07:00",
                        "weekdays": ["mon"],
                        "energy_per_kwh": "1",
                    },
                ],
            },
            ("bands", 1),
            "band 'early' overlaps band 'night' from mon 05:00",
        ),
        (
            {
                "timezone": "UTC",
                "bands": [
                    {"name": "a", "start": "10:00", "end": "11:00", "energy_per_kwh": "1"},
                    {"name": "a", "start": "12:00", "end": "13:00", "energy_per_kwh": "1"},
                ],
            },
            ("bands", 1, "name"),
            "duplicate band name 'a'",
        ),
    ],
)
def test_invalid_config_is_rejected_with_its_path(
    overrides: dict[str, Any], path: tuple[str | int, ...], message: str
) -> None:
    with pytest.raises(TariffConfigError) as info:
        tariff_config_from_builtins({**BASE, **overrides})
    assert info.value.path == path
    assert message in info.value.message


def test_missing_required_field() -> None:
    with pytest.raises(TariffConfigError, match="missing required field 'vat_rate_percent'") as info:
        tariff_config_from_builtins({"currency": "EUR", "prices_include_vat": True})
    assert info.value.path == ()


def test_non_overlapping_adjacent_bands_are_accepted() -> None:
    config = tariff_config_from_builtins(
        {
            **BASE,
            "timezone": "UTC",
            "bands": [
                {"name": "night", "start": "22:00", "end": "06:00", "energy_per_kwh": "0.29"},
                {
                    "name": "day",
                    "start": "06:00",
                    "end": "22:00",
                    "weekdays": ["sat"],
                    "energy_per_kwh": "0.35",
                },
            ],
        }
    )
    assert len(config.bands) == 2


def test_config_round_trips_through_json_schema_types() -> None:
    config = tariff_config_from_builtins({**BASE, "energy_per_kwh": "0.39"})
    assert msgspec.convert(msgspec.to_builtins(config), TariffConfig) == config


# ------------------------------------------------------------------------------------------ START-8


@pytest.mark.req("START-8")
def test_describe_for_price_transparency_START_8() -> None:
    t = tariff(
        energy_per_kwh="0.39", time_per_minute="0.05", idle_fee_per_minute="0.20", idle_grace_minutes=15
    )
    assert t.describe() == "0.39 EUR/kWh · 0.05 EUR/min · idle 0.20 EUR/min after 15 min · incl. 21% VAT"


@pytest.mark.req("START-8")
def test_describe_shows_gross_prices_bands_and_limits_START_8() -> None:
    t = banded(prices_include_vat=False, session_fee="1.00", minimum_price="2.00", maximum_price="60.00")
    # net 0.39 * 1.21 = 0.4719; 0.49 * 1.21 = 0.5929; 0.29 * 1.21 = 0.3509; fee 1.00 net -> 1.21 gross
    assert t.describe() == (
        "0.4719 EUR/kWh · peak mon-fri 17:00-21:00: 0.5929 EUR/kWh · night 22:00-06:00: 0.3509 EUR/kWh"
        " · 1.21 EUR/session · min 2.00 EUR · max 60.00 EUR · incl. 21% VAT"
    )


# ------------------------------------------------------------------------------------------ authorization


def test_tariff_is_a_pricer() -> None:
    pricer: Pricer = tariff(energy_per_kwh="0.39")  # mypy checks the protocol statically
    assert pricer.cost_minor(Usage()) == 0


@pytest.mark.req("AMT-2")
def test_projection_at_11_kw_reaches_the_cap_AMT_2() -> None:
    t = tariff(energy_per_kwh="0.39")
    # 50.00 is reached at E >= 4999.5 / 0.039 = 128192.3 -> 128193 Wh;
    # energy after s seconds at 11 kW is floor(11000 * s / 3600): 41954 s -> 128192, 41955 s -> 128195
    seconds = seconds_until_cost_reaches(t, Usage(), MONDAY_0800, 11_000.0, 5000)
    assert seconds == 41955
    assert t.cost_minor(session(t, MONDAY_0800, (C, timedelta(seconds=41954), 128_192))) == 4999
    assert t.cost_minor(session(t, MONDAY_0800, (C, timedelta(seconds=41955), 128_195))) == 5000


@pytest.mark.req("AMT-2")
def test_projection_across_a_band_change_AMT_2() -> None:
    t = banded()
    start = datetime(2025, 3, 3, 16, 0, tzinfo=AMS)  # 16:00-17:00 base: 11 kWh * 39 = 429; then 49/kWh
    seconds = seconds_until_cost_reaches(t, Usage(), start, 11_000.0, 1000)
    assert seconds is not None
    assert 7400 < seconds < 7420  # 3600 s + about 11.65 kWh of peak energy at 11 kW

    def cost(s: int) -> int:
        usage = t.accumulate(Usage(), start, start + timedelta(seconds=s), 11_000 * s // 3600, C)
        return t.cost_minor(usage)

    assert cost(seconds - 1) < 1000 <= cost(seconds)


@pytest.mark.req("AMT-2")
def test_projection_none_when_the_maximum_price_is_below_the_limit_AMT_2() -> None:
    t = tariff(energy_per_kwh="0.39", maximum_price="40.00")
    assert seconds_until_cost_reaches(t, Usage(), MONDAY_0800, 11_000.0, 5000) is None


@pytest.mark.req("AMT-1")
def test_start_amount_for_the_four_strategies_AMT_1() -> None:
    t = tariff(energy_per_kwh="0.39", maximum_price="80.00")
    max_minor = t.maximum_minor
    assert max_minor == 8000
    fixed = AuthorizationPolicy(strategy=AuthorizationStrategy.FIXED, amount_minor=5000)
    incremental = AuthorizationPolicy(strategy=AuthorizationStrategy.INCREMENTAL, amount_minor=2000)
    driver = AuthorizationPolicy(
        strategy=AuthorizationStrategy.DRIVER_CAP, driver_cap_choices_minor=(2000, 5000)
    )
    maximum = AuthorizationPolicy(strategy=AuthorizationStrategy.MAXIMUM, maximum_minor=max_minor)
    assert start_amount_minor(fixed) == 5000
    assert start_amount_minor(incremental) == 2000
    assert start_amount_minor(driver, 5000) == 5000
    assert start_amount_minor(maximum) == 8000  # the tariff's maximum: the session can never cost more


@pytest.mark.req("AMT-1", "AMT-2")
def test_incremental_authorization_before_the_cap_AMT_1_AMT_2() -> None:
    t = tariff(energy_per_kwh="0.39")
    policy = AuthorizationPolicy(
        strategy=AuthorizationStrategy.INCREMENTAL,
        amount_minor=2000,
        increment_minor=2500,
        maximum_minor=15000,
        increment_headroom_s=300,
    )
    # after 16400 s at 11 kW: 50111 Wh -> 1954.33 -> 1954; the 2000 cap needs 51270 Wh (1999.53),
    # 1159 Wh more = 380 s away: beyond the 300 s headroom, no request yet
    early = session(t, MONDAY_0800, (C, timedelta(seconds=16400), 50_111))
    at = MONDAY_0800 + timedelta(seconds=16400)
    assert t.cost_minor(early) == 1954
    to_cap = seconds_until_cost_reaches(t, early, at, 11_000.0, 2000)
    assert to_cap == 380
    assert increment_total_minor(policy, 2000, to_cap, supports_update_session=True) is None
    # after 16500 s: 50416 Wh -> 1966; 854 Wh more = 280 s away: ask for the new total 4500
    later = session(t, MONDAY_0800, (C, timedelta(seconds=16500), 50_416))
    to_cap = seconds_until_cost_reaches(t, later, MONDAY_0800 + timedelta(seconds=16500), 11_000.0, 2000)
    assert to_cap == 280
    assert increment_total_minor(policy, 2000, to_cap, supports_update_session=True) == 4500
    assert increment_total_minor(policy, 2000, to_cap, supports_update_session=False) is None  # P6X
    assert not must_stop_for_cap(to_cap, margin_s=10)


@pytest.mark.req("AMT-3")
def test_partial_approval_caps_the_session_AMT_3() -> None:
    t = tariff(energy_per_kwh="0.39")
    cap = partial_cap_minor(requested_minor=5000, approved_minor=3000)
    assert cap == 3000
    # 30.00 needs 2999.5 / 0.039 = 76910.3 -> 76911 Wh: floor(11000 s / 3600) >= 76911 -> s = 25171
    to_cap = seconds_until_cost_reaches(t, Usage(), MONDAY_0800, 11_000.0, cap)
    assert to_cap == 25171
    # after 25165 s: floor(11000 * 25165 / 3600) = 76893 Wh -> 2998.83 -> 2999; 18 Wh = 6 s to go
    near = session(t, MONDAY_0800, (C, timedelta(seconds=25165), 76_893))
    to_cap = seconds_until_cost_reaches(t, near, MONDAY_0800 + timedelta(seconds=25165), 11_000.0, cap)
    assert to_cap == 6
    assert must_stop_for_cap(to_cap, margin_s=10)  # within one meter interval: stop at the cap


@pytest.mark.req("AMT-4", "STOP-9")
def test_idle_fees_are_capped_by_the_authorized_amount_AMT_4_STOP_9() -> None:
    t = tariff(energy_per_kwh="0.39", idle_fee_per_minute="0.20", idle_grace_minutes=15)
    usage = session(t, MONDAY_0800, (C, timedelta(hours=10), 110_000), (IDLE, timedelta(hours=3), 0))
    # energy 110 kWh * 39 = 4290; idle 165 min * 20 = 3300; total 7590 > 5000 authorized
    assert t.cost_minor(usage) == 7590
    policy = AuthorizationPolicy()
    assert capture_amount_minor(policy, t.cost_minor(usage), authorized_minor=5000) == 5000
    over = replace(policy, allow_over_capture=True)
    assert capture_amount_minor(over, t.cost_minor(usage), authorized_minor=5000) == 7590


# ------------------------------------------------------------------------------------------ properties


def _decimal(n: int, places: int) -> str:
    return f"{Decimal(n).scaleb(-places):f}"


prices = st.builds(_decimal, st.integers(0, 99_999), st.integers(0, 4))
ZONES = ("UTC", "Europe/Amsterdam", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")
DST_EDGES = tuple(
    datetime(*args, tzinfo=UTC)
    for args in (
        (2024, 3, 31, 1),
        (2024, 10, 27, 1),
        (2024, 3, 10, 7),
        (2024, 11, 3, 6),
        (2024, 4, 6, 15),
        (2024, 10, 5, 15),
    )
)


SOME_DAYS: tuple[Weekday, ...] = ("mon", "tue", "sat", "sun")


def _days(days: list[Weekday]) -> tuple[Weekday, ...]:
    return tuple(days)


@st.composite
def configs(draw: st.DrawFn) -> TariffConfig:
    digits = draw(st.sampled_from([0, 2, 3]))
    amounts = st.builds(_decimal, st.integers(0, 20_000), st.just(digits))
    points = sorted(set(draw(st.lists(st.integers(0, 47).map(lambda h: h * 30), max_size=4))))
    bands: list[TariffBand] = []
    if len(points) >= 2:
        for i, begin in enumerate(points):
            end = points[(i + 1) % len(points)]
            if draw(st.booleans()):
                day_lists = st.lists(st.sampled_from(SOME_DAYS), min_size=1, unique=True)
                days = draw(st.none() | day_lists.map(_days))
                bands.append(
                    TariffBand(
                        name=f"b{i}",
                        start=f"{begin // 60:02d}:{begin % 60:02d}",
                        end=f"{end // 60:02d}:{end % 60:02d}",
                        weekdays=days,
                        energy_per_kwh=draw(prices),
                        time_per_minute=draw(st.none() | prices),
                    )
                )
    minimum = draw(st.none() | amounts)
    maximum = draw(st.none() | amounts)
    if minimum is not None and maximum is not None and Decimal(minimum) > Decimal(maximum):
        minimum, maximum = maximum, minimum
    return TariffConfig(
        currency="EUR",
        minor_unit_digits=digits,
        prices_include_vat=draw(st.booleans()),
        vat_rate_percent=draw(st.sampled_from(["0", "7.7", "19", "20", "21", "25.5"])),
        energy_per_kwh=draw(prices),
        time_per_minute=draw(prices),
        time_applies_to=draw(st.sampled_from(list(TimeAppliesTo))),
        session_fee=draw(amounts),
        idle_fee_per_minute=draw(prices),
        idle_grace_minutes=draw(st.integers(0, 30)),
        minimum_price=minimum,
        maximum_price=maximum,
        timezone=draw(st.sampled_from(ZONES)),
        bands=tuple(bands),
    )


starts = st.one_of(
    st.integers(0, 366 * 24 * 60).map(lambda m: datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=m)),
    st.tuples(st.sampled_from(DST_EDGES), st.integers(-240, 240)).map(
        lambda p: p[0] + timedelta(minutes=p[1])
    ),
)
stretches = st.lists(
    st.tuples(st.sampled_from(list(UsageKind)), st.integers(0, 2 * 24 * 60), st.integers(0, 150_000)),
    min_size=1,
    max_size=4,
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _accumulate(t: Tariff, start: datetime, parts: list[tuple[UsageKind, int, int]]) -> Usage:
    return session(t, start, *((kind, timedelta(minutes=m), wh) for kind, m, wh in parts))


@SETTINGS
@given(configs(), starts, stretches)
def test_cost_is_the_gross_of_the_quote_and_lines_add_up(
    config: TariffConfig, start: datetime, parts: list[tuple[UsageKind, int, int]]
) -> None:
    t = Tariff(config)
    usage = _accumulate(t, start, parts)
    quote = t.quote(usage)
    assert t.cost_minor(usage) == quote.gross_minor
    check_consistent(quote)
    if t.minimum_minor is not None:
        assert quote.gross_minor >= t.minimum_minor
    if t.maximum_minor is not None:
        assert quote.gross_minor <= t.maximum_minor


@SETTINGS
@given(
    configs(),
    starts,
    stretches,
    st.tuples(st.sampled_from(list(UsageKind)), st.integers(0, 600), st.integers(0, 50_000)),
)
def test_cost_never_falls_as_usage_grows(
    config: TariffConfig,
    start: datetime,
    parts: list[tuple[UsageKind, int, int]],
    more: tuple[UsageKind, int, int],
) -> None:
    t = Tariff(config)
    before = _accumulate(t, start, parts)
    after = _accumulate(t, start, [*parts, more])
    assert t.cost_minor(after) >= t.cost_minor(before)


def _band_by_wall_clock(config: TariffConfig, instant: datetime) -> str:
    """An independent oracle for the band of a wall-clock minute."""
    local = instant.astimezone(ZoneInfo(config.timezone or "UTC"))
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    today, yesterday = names[local.weekday()], names[(local.weekday() - 1) % 7]
    minute = local.hour * 60 + local.minute
    for band in config.bands:
        begin = int(band.start[:2]) * 60 + int(band.start[3:])
        end = int(band.end[:2]) * 60 + int(band.end[3:])
        days = band.weekdays or names
        if begin < end and today in days and begin <= minute < end:
            return band.name
        if end <= begin and ((today in days and minute >= begin) or (yesterday in days and minute < end)):
            return band.name
    return ""


@SETTINGS
@given(configs(), starts, st.integers(0, 3 * 24 * 60), st.integers(0, 10**6))
def test_accumulate_matches_a_minute_by_minute_oracle(
    config: TariffConfig, start: datetime, minutes: int, energy_wh: int
) -> None:
    t = Tariff(config)
    usage = t.accumulate(Usage(), start, start + timedelta(minutes=minutes), energy_wh, C)
    expected: dict[str, int] = {}
    for m in range(minutes):
        band = _band_by_wall_clock(config, start + timedelta(minutes=m))
        expected[band] = expected.get(band, 0) + 60_000
    assert {b.band: b.duration_ms for b in buckets(t, usage) if b.duration_ms} == expected
    assert usage.energy_wh == energy_wh


@SETTINGS
@given(configs(), starts, st.integers(0, 10**8), st.integers(0, 10**8), st.integers(0, 10**6))
def test_splitting_an_interval_keeps_band_durations_and_energy(
    config: TariffConfig, start: datetime, first_ms: int, second_ms: int, energy_wh: int
) -> None:
    t = Tariff(config)
    middle = start + timedelta(milliseconds=first_ms)
    end = middle + timedelta(milliseconds=second_ms)
    whole = t.accumulate(Usage(), start, end, energy_wh, C)
    split = t.accumulate(
        t.accumulate(Usage(), start, middle, energy_wh // 2, C), middle, end, energy_wh - energy_wh // 2, C
    )
    assert {b.band: b.duration_ms for b in buckets(t, whole)} == {
        b.band: b.duration_ms for b in buckets(t, split)
    }
    assert whole.energy_wh == split.energy_wh == energy_wh
    assert whole.duration_ms(C) == first_ms + second_ms


@given(st.fractions())
def test_round_half_up_is_symmetric_and_nearest(value: Fraction) -> None:
    rounded = round_half_up(value)
    assert abs(value - rounded) <= Fraction(1, 2)
    assert round_half_up(-value) == -rounded
    assert round_half_up(Fraction(5, 2)) == 3
    assert round_half_up(Fraction(-5, 2)) == -3


@pytest.mark.req("AMT-2")
@SETTINGS
@given(
    configs(),
    starts,
    stretches,
    st.floats(0, 350_000),
    st.integers(1, 30_000),
    st.integers(1, 3_600),
)
def test_a_shorter_projection_horizon_gives_the_same_answer_within_it_AMT_2(
    config: TariffConfig,
    start: datetime,
    parts: list[tuple[UsageKind, int, int]],
    power_w: float,
    limit_minor: int,
    horizon_s: int,
) -> None:
    """Issue 12: the connector projects only as far as its thresholds (one meter interval, the
    increment headroom). Wherever the full projection is within that horizon, the short one
    returns the same second; beyond it, ``None`` — so every threshold decision is unchanged."""
    t = Tariff(config)
    usage = _accumulate(t, start, parts)
    at = usage.periods[-1].end
    full = seconds_until_cost_reaches(t, usage, at, power_w, limit_minor)
    short = seconds_until_cost_reaches(
        t, usage, at, power_w, limit_minor, horizon_s=horizon_s, cost_minor=t.cost_minor(usage)
    )
    assert short == (full if full is not None and full <= horizon_s else None)
    for threshold in (0, 1, horizon_s // 2, horizon_s):
        assert must_stop_for_cap(short, threshold) == must_stop_for_cap(full, threshold)
