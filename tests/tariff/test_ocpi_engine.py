"""The OCPI 2.2.1 engine: restrictions on the wall clock (midnight, DST, weekdays, dates), on the
session (kWh, duration, power, current), step_size, min/max price, rounding, the simple form's
translation — and properties over random tariffs and sessions (monotone in energy and time, step_size
never lowers a price, splitting a session into periods changes nothing).

Requirements: STOP-8 (final amount = tariff applied to energy and time, exact, explicit rounding),
AMT-2 (running cost and its projection by the same engine)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.money.tariff import (
    Dimension,
    Tariff,
    TariffConfigError,
    tariff_fingerprint,
    tariff_from_builtins,
    tariff_to_builtins,
)
from statemachines.pricing import Period, Usage, UsageKind, seconds_until_cost_reaches

C, S, IDLE = UsageKind.CHARGING, UsageKind.SUSPENDED, UsageKind.IDLE
AMS = ZoneInfo("Europe/Amsterdam")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ocpi(*elements: dict[str, Any], tz: str | None = "Europe/Amsterdam", **fields: Any) -> Tariff:
    body: dict[str, Any] = {
        "country_code": "NL",
        "party_id": "EVP",
        "id": "t",
        "currency": "EUR",
        "last_updated": "2026-01-01T00:00:00Z",
        "elements": list(elements),
        **fields,
    }
    return tariff_from_builtins({"ocpi": body, "timezone": tz})


def comp(kind: str, price: str, step: int = 1, vat: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"type": kind, "price": price, "step_size": step}
    if vat is not None:
        found["vat"] = vat
    return found


def element(*components: dict[str, Any], **restrictions: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"price_components": list(components)}
    if restrictions:
        found["restrictions"] = restrictions
    return found


def run(t: Tariff, start: datetime, *parts: tuple[UsageKind, timedelta, int], **kw: Any) -> Usage:
    usage, at = Usage(), start
    for kind, length, wh in parts:
        usage = t.accumulate(usage, at, at + length, wh, kind, **kw)
        at += length
    return usage


def net(t: Tariff, usage: Usage) -> Fraction:
    return t.exact_price(usage).net


H = timedelta(hours=1)
MIN = timedelta(minutes=1)


# --- the wall clock ------------------------------------------------------------------------------


def test_a_window_across_midnight_STOP_8() -> None:
    night = ocpi(
        element(comp("TIME", "1.00"), start_time="22:00", end_time="06:00"), element(comp("TIME", "0"))
    )
    usage = run(night, datetime(2026, 3, 2, 21, 0, tzinfo=AMS), (C, 10 * H, 0))  # 21:00 → 07:00
    assert net(night, usage) == 8  # 22:00-06:00
    assert [p.duration_ms // 3_600_000 for p in usage.periods] == [1, 8, 1]


def test_a_window_that_runs_twice_when_dst_falls_back() -> None:
    # 2026-10-25 Europe/Amsterdam: 03:00 CEST → 02:00 CET, the wall time 02:00-03:00 happens twice
    t = ocpi(element(comp("TIME", "1.00"), start_time="02:00", end_time="03:00"), element(comp("TIME", "0")))
    usage = run(t, datetime(2026, 10, 24, 23, 0, tzinfo=UTC), (C, 4 * H, 0))  # 01:00 CEST → 04:00 CET
    assert net(t, usage) == 2


def test_a_window_that_never_happens_when_dst_springs_forward() -> None:
    # 2026-03-29 Europe/Amsterdam: 02:00 CET → 03:00 CEST, the wall time 02:00-03:00 never happens
    t = ocpi(element(comp("TIME", "1.00"), start_time="02:00", end_time="03:00"), element(comp("TIME", "0")))
    usage = run(t, datetime(2026, 3, 29, 0, 0, tzinfo=UTC), (C, 3 * H, 0))
    assert net(t, usage) == 0


def test_day_of_week_and_dates_change_at_local_midnight() -> None:
    t = ocpi(
        element(comp("TIME", "2.00"), day_of_week=["SATURDAY"]),
        element(comp("TIME", "5.00"), start_date="2026-12-25", end_date="2026-12-26"),
        element(comp("TIME", "1.00")),
    )
    fri = datetime(2026, 12, 4, 23, 0, tzinfo=AMS)  # Friday 23:00 → Saturday 01:00
    assert net(t, run(t, fri, (C, 2 * H, 0))) == 1 + 2
    christmas_eve = datetime(2026, 12, 24, 23, 0, tzinfo=AMS)  # Thursday → Christmas (a Friday)
    assert net(t, run(t, christmas_eve, (C, 2 * H, 0))) == 1 + 5


def test_local_time_restrictions_need_a_timezone() -> None:
    with pytest.raises(TariffConfigError, match=r"^timezone: required: elements\[0\]"):
        ocpi(element(comp("TIME", "1"), start_time="10:00"), tz=None)


# --- the session: kWh, duration, power, current --------------------------------------------------


def test_kwh_thresholds_split_the_energy_exactly_STOP_8() -> None:
    t = ocpi(element(comp("ENERGY", "0.50"), max_kwh="10"), element(comp("ENERGY", "0.20")))
    usage = run(t, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), (C, H, 7_000), (C, H, 7_000))
    assert net(t, usage) == Fraction("5.00") + Fraction("0.80")  # 10 kWh at 0.50, 4 kWh at 0.20
    jump = run(t, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), (C, timedelta(0), 14_000))  # no time at all
    assert net(t, jump) == Fraction("5.80")


def test_duration_thresholds_are_the_sessions_duration() -> None:
    t = ocpi(element(comp("TIME", "0"), max_duration=1800), element(comp("TIME", "6.00")))
    usage = run(t, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), (C, 40 * MIN, 0), (IDLE, 20 * MIN, 0))
    assert net(t, usage) == 1  # 10 min of charging after the first 30 min (parking is free here)


def test_power_and_current_restrictions_use_what_the_charger_reports() -> None:
    t = ocpi(
        element(comp("ENERGY", "0.20"), max_power="11"),
        element(comp("ENERGY", "0.40"), min_current="32"),
        element(comp("ENERGY", "0.30")),
    )
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    slow = t.accumulate(Usage(), at, at + H, 7_000, C, power_w=7_000.0)
    fast_high_current = t.accumulate(slow, at + H, at + 2 * H, 22_000, C, power_w=22_000.0, current_a=32.0)
    fast = t.accumulate(fast_high_current, at + 2 * H, at + 3 * H, 22_000, C, power_w=22_000.0)
    assert net(t, slow) == Fraction("1.40")
    assert net(t, fast_high_current) == Fraction("1.40") + Fraction("8.80")
    assert net(t, fast) == Fraction("1.40") + Fraction("8.80") + Fraction("6.60")  # current unknown
    averaged = t.accumulate(Usage(), at, at + H, 7_000, C)  # no power reported: 7 kW on average
    assert net(t, averaged) == Fraction("1.40")


def test_suspended_and_idle_time_are_parking_time() -> None:
    t = ocpi(element(comp("TIME", "1.00"), comp("PARKING_TIME", "3.00")))
    usage = run(
        t, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), (C, H, 1000), (S, H, 0), (C, H, 1000), (IDLE, H, 0)
    )
    assert net(t, usage) == 2 + 6


# --- step_size, min/max, VAT, rounding -------------------------------------------------------------


def test_step_size_rounds_the_whole_session_of_the_last_dimension_once() -> None:
    t = ocpi(
        element(
            comp("TIME", "6.00", step=300), comp("PARKING_TIME", "6.00", step=300), comp("ENERGY", "1", 500)
        )
    )
    usage = run(t, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), (C, 21 * MIN, 4_300), (IDLE, 7 * MIN, 0))
    exact = t.exact_price(usage)
    assert exact.dimension_total(Dimension.TIME)[0] == Fraction("2.10")  # 21 min: not rounded to 25
    assert exact.dimension_total(Dimension.PARKING_TIME)[0] == 1  # 7 min → 10 min
    assert exact.dimension_total(Dimension.ENERGY)[0] == Fraction("4.5")  # 4.3 kWh → 4.5 kWh


def test_min_and_max_price_apply_excl_and_incl_vat() -> None:
    low = ocpi(element(comp("ENERGY", "0.25", vat="10")), min_price={"excl_vat": "0.50", "incl_vat": "0.55"})
    usage = run(low, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), (C, H, 1_000))
    price = low.exact_price(usage)
    assert (price.net, price.gross, price.minimum_applied) == (Fraction("0.50"), Fraction("0.55"), True)
    high = ocpi(element(comp("ENERGY", "0.25", vat="10")), max_price={"excl_vat": "10"})  # no incl_vat
    price = high.exact_price(run(high, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), (C, H, 50_000)))
    assert (price.net, price.gross) == (Fraction(10), Fraction(11))  # incl. VAT in the session's own ratio
    assert high.maximum_minor == 1100  # the most incl. VAT: excl_vat with the highest rate (AMT-1)


def test_mixed_vat_totals_round_once_and_lines_add_up_STOP_8() -> None:
    t = ocpi(element(comp("FLAT", "0.005", vat="20"), comp("ENERGY", "0.333", vat="10")))
    quote = t.quote(run(t, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), (C, H, 1_500)))
    # exact: net 0.005 + 0.4995 = 0.5045 → 50; gross 0.006 + 0.54945 = 0.55545 → 56
    assert (quote.net_minor, quote.gross_minor) == (50, 56)
    assert sum(line.gross_minor for line in quote.lines) == quote.gross_minor
    assert sum(line.net_minor for line in quote.lines) == quote.net_minor
    assert all(line.net_minor + line.vat_minor == line.gross_minor for line in quote.lines)


def test_reservation_restrictions_are_rejected_with_their_path() -> None:
    with pytest.raises(TariffConfigError, match=r"^ocpi\.elements\[0\]\.restrictions\.reservation: "):
        ocpi(element(comp("TIME", "5.00"), reservation="RESERVATION"))


def test_a_bad_ocpi_tariff_names_the_field() -> None:
    with pytest.raises(TariffConfigError, match=r"^ocpi\.elements\[0\]\.price_components\[0\]\.price: "):
        ocpi(element(comp("ENERGY", "-0.25")))
    with pytest.raises(TariffConfigError, match=r"^elements\[0\]\.price_components\[0\]\.type: "):
        tariff_from_builtins(
            {
                "country_code": "NL",
                "party_id": "EVP",
                "id": "t",
                "currency": "EUR",
                "last_updated": "2026-01-01T00:00:00Z",
                "elements": [element(comp("KWH", "1"))],
            }
        )


def test_the_canonical_form_reads_back_to_the_same_prices() -> None:
    t = ocpi(
        element(comp("ENERGY", "0.25", vat="21"), start_time="10:00", end_time="18:00"),
        element(comp("ENERGY", "0.35", vat="21")),
    )
    again = tariff_from_builtins(tariff_to_builtins(t))
    usage = run(t, datetime(2026, 3, 2, 17, 0, tzinfo=UTC), (C, 2 * H, 22_000))
    assert again.exact_price(usage) == t.exact_price(usage)
    assert tariff_fingerprint(again) == tariff_fingerprint(t)


def test_the_projection_uses_the_same_engine_AMT_2() -> None:
    t = ocpi(element(comp("ENERGY", "0.50"), max_kwh="10"), element(comp("ENERGY", "0.20")))
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    # 11 kW: 5.00 after 10 kWh, then 0.20/kWh; 6.00 (rounded half-up) from 5.995: 14 975 Wh,
    # reached after ceil(14 975 * 3600 / 11 000) = 4901 s
    assert seconds_until_cost_reaches(t, Usage(), at, 11_000.0, 600) == 4901


# --- properties over random tariffs and sessions ---------------------------------------------------

DAYS = ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]
prices = st.integers(0, 500).map(lambda cents: f"{cents / 100:.2f}")
clock = st.integers(0, 23).map(lambda h: f"{h:02d}:00")


@st.composite
def restrictions(draw: st.DrawFn, *, energy_only: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if draw(st.booleans()):
        start, end = draw(clock), draw(clock)
        if start != end:
            found.update(start_time=start, end_time=end)
    if draw(st.booleans()):
        found["day_of_week"] = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
    if draw(st.booleans()):
        low = draw(st.integers(0, 7200))
        found.update(min_duration=low, max_duration=low + draw(st.integers(60, 7200)))
    if energy_only and draw(st.booleans()):
        low = draw(st.integers(0, 30))
        found.update(min_kwh=low, max_kwh=low + draw(st.integers(1, 30)))
    return found


@st.composite
def tariffs(draw: st.DrawFn, *, steps: bool = True) -> Tariff:
    """Random OCPI tariffs: energy, time, parking and flat elements with restrictions (time of
    day, weekdays, duration; kWh on energy elements), one step size per dimension group, VAT or
    none, maybe a min_price; no max_price."""
    energy_step = draw(st.sampled_from([1, 100, 500])) if steps else 1
    time_step = draw(st.sampled_from([1, 60, 300, 900])) if steps else 1
    elements = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["ENERGY", "TIME", "PARKING_TIME", "FLAT"]))
        step = energy_step if kind == "ENERGY" else time_step
        elements.append(
            element(
                comp(kind, draw(prices), step, vat=draw(st.sampled_from([None, "9", "21"]))),
                **draw(restrictions(energy_only=kind == "ENERGY")),
            )
        )
    fields = {}
    if draw(st.booleans()):
        fields["min_price"] = {"excl_vat": draw(prices)}
    return ocpi(
        *elements, tz=draw(st.sampled_from(["Europe/Amsterdam", "America/New_York", "UTC"])), **fields
    )


starts = st.datetimes(datetime(2026, 1, 1), datetime(2027, 1, 1)).map(
    lambda d: d.replace(second=0, microsecond=0, tzinfo=UTC)
)
# (kind, whole minutes, Wh per minute): constant power within a part, so every split at a whole
# minute divides the energy exactly and "splitting changes nothing" is an exact statement
parts = st.lists(
    st.tuples(st.sampled_from([C, C, S, IDLE]), st.integers(0, 240), st.integers(0, 400)),
    min_size=1,
    max_size=5,
)


def build(t: Tariff, start: datetime, spec: list[tuple[UsageKind, int, int]], cuts: int = 1) -> Usage:
    usage, at = Usage(), start
    for kind, minutes, per_minute in spec:
        wh = per_minute * minutes if kind is C else 0
        bounds = sorted({0, minutes, *(minutes * i // cuts for i in range(1, cuts))})
        for a, b in itertools.pairwise(bounds):
            usage = t.accumulate(
                usage, at + a * MIN, at + b * MIN, wh * (b - a) // minutes if minutes else wh, kind
            )
        if minutes == 0:
            usage = t.accumulate(usage, at, at, wh, kind)
        at += minutes * MIN
    return usage


@SETTINGS
@given(tariffs(), starts, parts, st.integers(2, 7))
def test_splitting_a_session_into_more_periods_changes_nothing_STOP_8(
    t: Tariff, start: datetime, spec: list[tuple[UsageKind, int, int]], cuts: int
) -> None:
    assert t.exact_price(build(t, start, spec, cuts)) == t.exact_price(build(t, start, spec))


# Monotone in time and energy: for tariffs without step_size (and without max_price). With steps
# OCPI's own rule breaks it — the rounding of a dimension's total is billed at the price of the
# *last* element that priced it, so a session that goes on into a cheaper element (or a smaller
# step) can cost less (docs/tariff.md §step_size; pinned in test_ocpi_examples.py).
@SETTINGS
@given(tariffs(steps=False), starts, parts, st.integers(1, 120), st.integers(0, 400))
def test_cost_never_falls_as_the_session_goes_on(
    t: Tariff, start: datetime, spec: list[tuple[UsageKind, int, int]], minutes: int, per_minute: int
) -> None:
    usage = build(t, start, spec)
    end = start + sum(m for _, m, _ in spec) * MIN
    longer = t.accumulate(usage, end, end + minutes * MIN, per_minute * minutes, C)
    assert t.cost_minor(longer) >= t.cost_minor(usage)
    assert t.exact_price(longer).gross >= t.exact_price(usage).gross


@SETTINGS
@given(tariffs(steps=False), starts, parts, st.integers(1, 5000))
def test_more_energy_in_the_same_time_never_costs_less(
    t: Tariff, start: datetime, spec: list[tuple[UsageKind, int, int]], extra_wh: int
) -> None:
    usage = build(t, start, spec)
    end = start + sum(m for _, m, _ in spec) * MIN
    more = t.accumulate(usage, end, end + H, extra_wh, C, power_w=1000.0)
    same = t.accumulate(usage, end, end + H, 0, C, power_w=1000.0)
    assert t.exact_price(more).gross >= t.exact_price(same).gross


@SETTINGS
@given(st.data(), starts, parts)
def test_step_size_never_lowers_a_price(
    data: st.DataObject, start: datetime, spec: list[tuple[UsageKind, int, int]]
) -> None:
    stepped = data.draw(tariffs())
    built = tariff_to_builtins(stepped)
    ocpi_body = built["ocpi"]
    assert isinstance(ocpi_body, dict)
    for e in ocpi_body["elements"]:
        for c in e["price_components"]:
            c["step_size"] = 1
    plain = tariff_from_builtins(built)
    assert (
        stepped.exact_price(build(stepped, start, spec)).gross
        >= plain.exact_price(build(plain, start, spec)).gross
    )


@SETTINGS
@given(tariffs(), starts, parts)
def test_the_receipt_lines_add_up_to_the_rounded_totals(
    t: Tariff, start: datetime, spec: list[tuple[UsageKind, int, int]]
) -> None:
    quote = t.quote(build(t, start, spec))
    exact = t.exact_price(build(t, start, spec))
    assert quote.gross_minor == t.cost_minor(build(t, start, spec))
    assert abs(quote.gross_minor - exact.gross * 100) <= Fraction(1, 2)
    assert sum(line.gross_minor for line in quote.lines) == quote.gross_minor
    assert sum(line.net_minor for line in quote.lines) == quote.net_minor


def test_cdr_shape_periods_read_back_to_the_same_usage() -> None:
    from agent.money.ocpi import ocpi_cdr_from_builtins
    from agent.money.tariff import cdr_charging_periods, usage_from_cdr

    t = ocpi(element(comp("TIME", "1.00"), comp("PARKING_TIME", "2.00"), comp("ENERGY", "0.30")))
    usage = run(
        t,
        datetime(2026, 3, 2, 9, 0, 0, 123_000, tzinfo=UTC),
        (C, 37 * MIN + timedelta(milliseconds=7), 12_345),
        (IDLE, 20 * MIN, 0),
    )
    cdr = ocpi_cdr_from_builtins(
        {
            "start_date_time": "2026-03-02T09:00:00.123Z",
            "end_date_time": "2026-03-02T09:57:00.130Z",
            "charging_periods": cdr_charging_periods(usage),
        }
    )
    again = usage_from_cdr(cdr)
    assert [(p.kind is C, p.energy_wh, p.duration_ms) for p in again.periods] == [
        (p.kind is C, p.energy_wh, p.duration_ms) for p in usage.periods
    ]
    assert t.exact_price(again) == t.exact_price(usage)


def test_an_old_journals_bucket_usage_reads_as_periods() -> None:
    from agent.store.journal import usage_from_json

    simple = tariff_from_builtins(
        {
            "currency": "EUR",
            "prices_include_vat": True,
            "vat_rate_percent": "21",
            "idle_fee_per_minute": "0.20",
            "idle_grace_minutes": 15,
        }
    )
    old = (
        '{"started_at":"2026-03-02T09:00:00+00:00",'
        '"buckets":[["","charging",1000,600000],["","idle",0,1800000]]}'
    )
    usage = usage_from_json(old)
    assert [p.kind for p in usage.periods] == [C, IDLE]
    assert simple.cost_minor(simple.engine.normalized(usage)) == 300  # 15 min after the grace
    assert simple.cost_minor(usage) == 0  # as read: the idle stretch starts inside the grace
    assert Period(usage.periods[1].start, IDLE, 0, 1_800_000) == usage.periods[1]
