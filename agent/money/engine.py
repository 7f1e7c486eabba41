"""The price engine: OCPI 2.2.1 tariff elements applied to a session's charging periods.

Pure and exact (``Fraction`` everywhere, no clock, no I/O). :mod:`agent.money.tariff` builds an
:class:`Engine` from an OCPI 2.2.1 Tariff or from the simple configuration form, and rounds what it
returns to the currency's minor unit (the one rounding rule, docs/tariff.md §Rounding).

OCPI 2.2.1 rules implemented here (section numbers of the Tariffs module, ``mod_tariffs``; CDRs,
``mod_cdrs``):

- §4.4.4 TariffElement: the elements are tried in order and, *per dimension*, the first element
  that has a PriceComponent of that dimension and whose restrictions all hold is used.
- §4.4.6 TariffRestrictions, evaluated at the start of each charging period: ``start_time`` /
  ``end_time`` (local wall clock of the station, ``end < start`` wraps midnight, end exclusive),
  ``start_date`` (inclusive) / ``end_date`` (exclusive), ``day_of_week``, ``min_kwh`` (inclusive) /
  ``max_kwh`` (exclusive) on the session's energy so far, ``min_current`` / ``max_current`` and
  ``min_power`` / ``max_power`` (min inclusive, max exclusive) on what the charger reports (a
  restriction on a value nobody reported: a minimum does not hold, a maximum does),
  ``min_duration`` (inclusive) / ``max_duration`` (exclusive) on the session's duration so far.
- §4.4.5 TariffDimensionType: ENERGY per kWh (step multiplier 1 Wh), TIME per hour of charging and
  PARKING_TIME per hour of not charging (multiplier 1 s), FLAT once per session (evaluated at the
  session's start).
- mod_cdrs §step_size: ``step_size`` is applied once per session for ENERGY (the total priced energy
  is rounded up to the step of the last period that priced energy; the extra is billed at that
  period's price) and once for TIME and PARKING_TIME combined: the total of the dimension of the
  last time-priced period is rounded up to its step (so switching from charging to parking leaves
  the charging time unrounded, mod_cdrs "21 minutes, not 25").
- §4.3.1 ``min_price`` / ``max_price``: applied to the excl. and the incl. VAT totals (a missing
  ``incl_vat`` follows ``excl_vat`` in the session's own VAT ratio).

The engine's periods are the connector machine's :class:`statemachines.pricing.Period`; the tariff
splits time wherever the active elements could change (wall-clock boundaries, DST changes, kWh and
duration thresholds) so that every period is priced by one element per dimension.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from fractions import Fraction
from typing import Final

from statemachines.pricing import Period, Usage, UsageKind

_MS: Final = timedelta(milliseconds=1)
_WH_PER_KWH: Final = 1000
_MS_PER_HOUR: Final = 3_600_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class Dimension(StrEnum):  # OCPI 2.2.1 §Tariffs 4.4.5 TariffDimensionType
    ENERGY = "ENERGY"
    FLAT = "FLAT"
    PARKING_TIME = "PARKING_TIME"
    TIME = "TIME"


@dataclass(frozen=True, slots=True)
class Component:
    """One price component, normalised: ``net`` is the price excl. VAT in major units per kWh
    (ENERGY), per hour (TIME, PARKING_TIME) or per session (FLAT); ``vat`` in percent; ``step`` in
    Wh (ENERGY) or ms (TIME, PARKING_TIME). ``unit_price``/``price_unit`` are how it is shown."""

    dimension: Dimension
    net: Fraction
    vat: Fraction
    step: int
    unit_price: str
    price_unit: str


@dataclass(frozen=True, slots=True)
class Restrictions:
    """OCPI 2.2.1 §4.4.6 in the engine's units (minutes of the day, Wh, W, A, ms).
    ``min_idle_ms`` is not OCPI: the simple form's idle grace (idle time so far, inclusive)."""

    start_min: int | None = None
    end_min: int | None = None
    start_date: date | None = None
    end_date: date | None = None
    days: frozenset[int] | None = None  # datetime.weekday()
    min_wh: Fraction | None = None
    max_wh: Fraction | None = None
    min_current_a: Fraction | None = None
    max_current_a: Fraction | None = None
    min_power_w: Fraction | None = None
    max_power_w: Fraction | None = None
    min_duration_ms: int | None = None
    max_duration_ms: int | None = None
    min_idle_ms: int | None = None

    @property
    def on_wall_clock(self) -> bool:
        return any(
            v is not None for v in (self.start_min, self.end_min, self.start_date, self.end_date, self.days)
        )

    def _in_window(self, minute: int) -> bool:
        """``start_time`` inclusive, ``end_time`` exclusive; ``end < start`` wraps midnight."""
        s, e = self.start_min, self.end_min
        if s is not None and e is not None:
            return s <= minute < e if s < e else minute >= s or minute < e
        return (s is None or minute >= s) and (e is None or minute < e)

    def hold(self, state: State) -> bool:
        local = state.local
        if local is not None:
            minute = local.hour * 60 + local.minute
            if not self._in_window(minute):
                return False
            day = local.date()
            if self.start_date is not None and day < self.start_date:
                return False
            if self.end_date is not None and day >= self.end_date:
                return False
            if self.days is not None and local.weekday() not in self.days:
                return False
        return (
            _at_least(state.energy_wh, self.min_wh)
            and _below(state.energy_wh, self.max_wh)
            and _at_least(state.current_a, self.min_current_a)
            and _below(state.current_a, self.max_current_a)
            and _at_least(state.power_w, self.min_power_w)
            and _below(state.power_w, self.max_power_w)
            and _at_least(state.elapsed_ms, self.min_duration_ms)
            and _below(state.elapsed_ms, self.max_duration_ms)
            and _at_least(state.idle_ms, self.min_idle_ms)
        )


def _at_least(value: float | int | None, low: Fraction | int | None) -> bool:
    return low is None or (value is not None and value >= low)


def _below(value: float | int | None, high: Fraction | int | None) -> bool:
    return high is None or value is None or value < high


@dataclass(frozen=True, slots=True)
class Element:
    name: str  # shown as a quote line's ``band``
    components: tuple[Component, ...]
    restrictions: Restrictions

    def component(self, dimension: Dimension) -> Component | None:
        return next((c for c in self.components if c.dimension is dimension), None)


@dataclass(frozen=True, slots=True)
class State:
    """The session as restrictions see it at an instant (the start of a period)."""

    local: datetime | None  # the station's wall clock; None: not known (nothing happened yet)
    energy_wh: int
    elapsed_ms: int
    idle_ms: int
    power_w: float | None
    current_a: float | None


@dataclass(frozen=True, slots=True)
class ExactLine:
    """One line before rounding: the amounts are exact, in major units."""

    dimension: Dimension | None  # None: a min/max price adjustment
    element: int | None
    quantity: int  # Wh, ms or 1 (session)
    net: Fraction
    gross: Fraction


@dataclass(frozen=True, slots=True)
class ExactPrice:
    lines: tuple[ExactLine, ...]
    net: Fraction  # after min/max price
    gross: Fraction
    minimum_applied: bool
    maximum_applied: bool

    def dimension_total(self, dimension: Dimension) -> tuple[Fraction, Fraction]:
        parts = [line for line in self.lines if line.dimension is dimension]
        return sum((p.net for p in parts), Fraction(0)), sum((p.gross for p in parts), Fraction(0))


@dataclass(frozen=True, slots=True)
class Bound:
    """``min_price`` / ``max_price`` (§4.3.1): excl. VAT, and incl. VAT when given."""

    excl: Fraction
    incl: Fraction | None


class Engine:
    """Elements + how usage kinds map to dimensions + the station's zone. Immutable."""

    __slots__ = (
        "_duration_thresholds",
        "_energy_thresholds",
        "_idle_thresholds",
        "_kind_dimension",
        "_wall",
        "_wall_minutes",
        "elements",
        "maximum",
        "minimum",
        "zone",
    )

    def __init__(
        self,
        elements: Sequence[Element],
        *,
        zone: tzinfo,
        kind_dimension: dict[UsageKind, Dimension | None],
        minimum: Bound | None = None,
        maximum: Bound | None = None,
    ) -> None:
        self.elements = tuple(elements)
        self.zone = zone
        self._kind_dimension = dict(kind_dimension)
        self.minimum = minimum
        self.maximum = maximum
        rs = [e.restrictions for e in self.elements]
        self._wall = any(r.on_wall_clock for r in rs)
        minutes = {m % 1440 for r in rs for m in (r.start_min, r.end_min) if m is not None}
        if any(r.start_date or r.end_date or r.days for r in rs):
            minutes.add(0)  # a new day
        self._wall_minutes = tuple(sorted(minutes))
        self._energy_thresholds = tuple(
            sorted({t for r in rs for t in (r.min_wh, r.max_wh) if t is not None})
        )
        self._duration_thresholds = tuple(
            sorted({t for r in rs for t in (r.min_duration_ms, r.max_duration_ms) if t is not None})
        )
        self._idle_thresholds = tuple(sorted({r.min_idle_ms for r in rs if r.min_idle_ms is not None}))

    def time_dimension(self, kind: UsageKind) -> Dimension | None:
        """The dimension that prices time spent as ``kind`` (None: that time is free)."""
        return self._kind_dimension.get(kind)

    # ------------------------------------------------------------------ element choice

    def active(self, dimension: Dimension, state: State) -> int | None:
        """§4.4.4: the index of the first element with a ``dimension`` component whose
        restrictions hold in ``state``."""
        for i, element in enumerate(self.elements):
            if element.component(dimension) is not None and element.restrictions.hold(state):
                return i
        return None

    def _key(self, kind: UsageKind, state: State) -> tuple[UsageKind, int | None, int | None]:
        dim = self.time_dimension(kind)
        return (
            kind,
            self.active(Dimension.ENERGY, state),
            None if dim is None else self.active(dim, state),
        )

    def _state(
        self,
        usage: Usage,
        at: datetime,
        energy_wh: int,
        idle_ms: int,
        power: float | None,
        current: float | None,
    ) -> State:
        started = usage.started_at or at
        return State(
            local=at.astimezone(self.zone),
            energy_wh=energy_wh,
            elapsed_ms=max(0, (at - started) // _MS),
            idle_ms=idle_ms,
            power_w=power,
            current_a=current,
        )

    def period_states(self, usage: Usage) -> list[State]:
        """The state at the start of each period of ``usage`` (prefix sums)."""
        states: list[State] = []
        energy = idle = 0
        for p in usage.periods:
            states.append(self._state(usage, p.start, energy, idle, p.power_w, p.current_a))
            energy += p.energy_wh
            if p.kind is UsageKind.IDLE:
                idle += p.duration_ms
        return states

    # ------------------------------------------------------------------ accumulate

    def accumulate(
        self,
        usage: Usage,
        start: datetime,
        end: datetime,
        energy_wh: int,
        kind: UsageKind,
        power_w: float | None,
        current_a: float | None,
    ) -> Usage:
        """Append ``start``..``end`` (UTC instants, ``start <= end``) to ``usage``: split where the
        active elements could change, energy spread in proportion to time (exact integers,
        cumulative floor), each piece merged into the last period when it follows on without a gap
        and nothing changed. Times are whole ms counted from the session's start, so stretches
        that follow each other meet exactly; a gap (the agent was down) starts a new period."""
        base = usage.started_at or start
        a_ms, b_ms = (start - base) // _MS, (end - base) // _MS
        start, end = base + timedelta(milliseconds=a_ms), base + timedelta(milliseconds=b_ms)
        total_ms = b_ms - a_ms
        if power_w is None and kind is UsageKind.CHARGING and total_ms > 0:
            power_w = energy_wh * _MS_PER_HOUR / total_ms  # the interval's average power
        energy0 = usage.energy_wh
        idle0 = sum(p.duration_ms for p in usage.periods if p.kind is UsageKind.IDLE)
        if total_ms > 0:
            bounds = [0, *self._cuts(usage, start, end, total_ms, energy_wh, energy0, idle0, kind), total_ms]
            pieces = [
                (a, b, energy_wh * a // total_ms, energy_wh * b // total_ms)
                for a, b in itertools.pairwise(bounds)
            ]
        else:  # energy without time (a meter jump): split at the kWh thresholds alone
            marks = [0, *self._energy_cuts(energy0, energy_wh), energy_wh]
            pieces = [(0, 0, e_a, e_b) for e_a, e_b in itertools.pairwise(marks)]
        for a, b, e_a, e_b in pieces:
            at = start + timedelta(milliseconds=a)
            idle_a = idle0 + (a if kind is UsageKind.IDLE else 0)
            state = self._state(usage, at, energy0 + e_a, idle_a, power_w, current_a)
            piece = Period(
                start=at,
                kind=kind,
                energy_wh=e_b - e_a,
                duration_ms=b - a,
                power_w=power_w,
                current_a=current_a,
            )
            usage = usage.extended(piece, merge=self._merges(usage, piece, state))
        return usage

    def _merges(self, usage: Usage, piece: Period, state: State) -> bool:
        if not usage.periods:
            return False
        last = usage.periods[-1]
        if last.kind is not piece.kind or last.end != piece.start:
            return False
        last_state = self.period_states(usage)[-1]
        return self._key(last.kind, last_state) == self._key(piece.kind, state)

    def _cuts(
        self,
        usage: Usage,
        start: datetime,
        end: datetime,
        total_ms: int,
        energy_wh: int,
        energy0: int,
        idle0: int,
        kind: UsageKind,
    ) -> list[int]:
        """Offsets (ms after ``start``, strictly inside the interval) where a piece begins."""
        if total_ms <= 0:
            return []
        cuts: set[int] = set()
        if self._wall:
            at = start
            while True:
                boundary = self._next_wall_boundary(at)
                limit = end if boundary is None else min(boundary, end)
                change = self._offset_change(at, limit)
                nxt = change if change is not None else limit
                if nxt >= end:
                    break
                cuts.add(-((start - nxt) // _MS))  # ceil: the first whole ms at or after it
                at = nxt
        started = usage.started_at or start
        for threshold in self._duration_thresholds:
            cuts.add((started + timedelta(milliseconds=threshold) - start) // _MS)
        if kind is UsageKind.IDLE:
            cuts.update(t - idle0 for t in self._idle_thresholds)
        for k in self._energy_cuts(energy0, energy_wh):
            cuts.add(-((-k * total_ms) // energy_wh))  # ceil(k·T/E): the first ms it is reached
        return sorted(c for c in cuts if 0 < c < total_ms)

    def _energy_cuts(self, energy0: int, energy_wh: int) -> list[int]:
        """The Wh (after ``energy0``, within ``0 < k < energy_wh``) at which a kWh threshold is
        reached: the whole Wh still needed, rounded up."""
        found = {int(-((energy0 - wh) // 1)) for wh in self._energy_thresholds}
        return sorted(k for k in found if 0 < k < energy_wh)

    def _next_wall_boundary(self, at: datetime) -> datetime | None:
        """The first instant after ``at`` whose wall clock is a restriction boundary (8 days)."""
        wall = at.astimezone(self.zone).replace(tzinfo=None)
        for day_offset in range(8):
            day = wall.date() + timedelta(days=day_offset)
            for minute in self._wall_minutes:
                candidate = datetime.combine(day, time()) + timedelta(minutes=minute)
                if candidate <= wall:
                    continue
                for fold in (0, 1):  # a repeated wall time (DST fall-back) has two instants
                    instant = candidate.replace(tzinfo=self.zone, fold=fold).astimezone(UTC)
                    if instant > at:
                        return instant
        return None

    def _offset_change(self, at: datetime, limit: datetime) -> datetime | None:
        """The first whole second in (``at``, ``limit``] with another UTC offset (DST)."""
        offset = at.astimezone(self.zone).utcoffset()
        if limit.astimezone(self.zone).utcoffset() == offset:
            return None
        low = (at - _EPOCH) // timedelta(seconds=1)
        high = -((_EPOCH - limit) // timedelta(seconds=1))
        while high - low > 1:
            mid = (low + high) // 2
            if (_EPOCH + timedelta(seconds=mid)).astimezone(self.zone).utcoffset() == offset:
                low = mid
            else:
                high = mid
        return min(_EPOCH + timedelta(seconds=high), limit)

    # ------------------------------------------------------------------ price

    def normalized(self, usage: Usage) -> Usage:
        """``usage`` re-split by this engine, each period spread evenly: for usage that was not
        accumulated by it (hand-built, or split by someone else) and is to be priced as if it had
        been. (Not done by :meth:`price`: re-spreading a merged period could move its energy
        across a boundary the original readings had on one side.)"""
        rebuilt = Usage(started_at=usage.started_at)
        for p in usage.periods:
            rebuilt = self.accumulate(rebuilt, p.start, p.end, p.energy_wh, p.kind, p.power_w, p.current_a)
        return rebuilt

    def price(self, usage: Usage) -> ExactPrice:
        """The exact price of ``usage``, each period priced by the elements active at its start
        (a CDR's periods as given): lines per (dimension, element) in order of first use,
        step_size applied (module docstring), then the min/max price."""
        states = self.period_states(usage)
        quantities: dict[tuple[Dimension, int], int] = {}
        last: dict[str, tuple[Dimension, int]] = {}  # "energy" / "time" → the last priced period's
        for p, state in zip(usage.periods, states, strict=True):
            e = self.active(Dimension.ENERGY, state)
            if e is not None and p.energy_wh:
                key = (Dimension.ENERGY, e)
                quantities[key] = quantities.get(key, 0) + p.energy_wh
                last["energy"] = key
            dim = self.time_dimension(p.kind)
            t = None if dim is None else self.active(dim, state)
            if dim is not None and t is not None and p.duration_ms:
                key = (dim, t)
                quantities[key] = quantities.get(key, 0) + p.duration_ms
                last["time"] = key
        for group in ("energy", "time"):
            if group not in last:
                continue
            dim, index = last[group]
            component = self.elements[index].component(dim)
            assert component is not None
            total = sum(q for (d, _), q in quantities.items() if d is dim)
            step = component.step
            rounded = -(-total // step) * step
            quantities[last[group]] += rounded - total
        lines: list[ExactLine] = []
        for (dim, index), quantity in quantities.items():
            component = self.elements[index].component(dim)
            assert component is not None
            divisor = _WH_PER_KWH if dim is Dimension.ENERGY else _MS_PER_HOUR
            net = component.net * quantity / divisor
            lines.append(ExactLine(dim, index, quantity, net, net * (100 + component.vat) / 100))
        start_state = states[0] if states else self._start_state(usage)
        flat = self.active(Dimension.FLAT, start_state)
        if flat is not None:
            component = self.elements[flat].component(Dimension.FLAT)
            assert component is not None
            gross = component.net * (100 + component.vat) / 100
            lines.append(ExactLine(Dimension.FLAT, flat, 1, component.net, gross))
        lines = sorted((line for line in lines if line.net or line.gross), key=_line_order)
        net = sum((line.net for line in lines), Fraction(0))
        gross = sum((line.gross for line in lines), Fraction(0))
        low_net, low_gross = self._at_least_minimum(net, gross)
        new_net, new_gross = self._at_most_maximum(low_net, low_gross)
        minimum_applied = (low_net, low_gross) != (net, gross)
        maximum_applied = (new_net, new_gross) != (low_net, low_gross)
        if minimum_applied or maximum_applied:
            lines.append(ExactLine(None, None, 1, new_net - net, new_gross - gross))
        return ExactPrice(tuple(lines), new_net, new_gross, minimum_applied, maximum_applied)

    def _at_least_minimum(self, net: Fraction, gross: Fraction) -> tuple[Fraction, Fraction]:
        """§4.3.1 ``min_price``: each side on its own (at least ``excl_vat`` excl., at least
        ``incl_vat`` incl.). Without ``incl_vat`` the excl. difference is added with the lowest VAT
        rate of the tariff: in the driver's favour, and more usage never costs less."""
        bound = self.minimum
        if bound is None:
            return net, gross
        if bound.incl is not None:
            return max(net, bound.excl), max(gross, bound.incl)
        if net >= bound.excl:
            return net, gross
        lowest = min((c.vat for e in self.elements for c in e.components), default=Fraction(0))
        return bound.excl, gross + (bound.excl - net) * (100 + lowest) / 100

    def _at_most_maximum(self, net: Fraction, gross: Fraction) -> tuple[Fraction, Fraction]:
        """§4.3.1 ``max_price``: each side on its own (at most ``excl_vat`` excl., at most
        ``incl_vat`` incl.). Without ``incl_vat`` the incl. total is scaled down with the excl.
        one (the session's own VAT mix)."""
        bound = self.maximum
        if bound is None:
            return net, gross
        if bound.incl is not None:
            return min(net, bound.excl), min(gross, bound.incl)
        if net <= bound.excl:
            return net, gross
        return bound.excl, gross * bound.excl / net

    def _start_state(self, usage: Usage) -> State:
        at = usage.started_at
        local = None if at is None else at.astimezone(self.zone)
        return State(local=local, energy_wh=0, elapsed_ms=0, idle_ms=0, power_w=None, current_a=None)


_LINE_ORDER: Final = (Dimension.ENERGY, Dimension.TIME, Dimension.FLAT, Dimension.PARKING_TIME)


def _line_order(line: ExactLine) -> int:
    """Receipt order: energy, time, session fee, parking (idle) fee; stable within a dimension."""
    return _LINE_ORDER.index(line.dimension) if line.dimension is not None else len(_LINE_ORDER)


def allocate(total: int, exact: Sequence[Fraction]) -> list[int]:
    """Whole minor units per line that add up to ``total`` (largest remainder: each line gets the
    floor of its exact amount, the units left go to the largest fractional parts, earliest first)."""
    floors = [x.numerator // x.denominator for x in exact]
    left = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    if left >= 0:
        for i in order[:left]:
            floors[i] += 1
    else:  # cannot happen when total is the rounded sum; kept total-preserving anyway
        for i in reversed(order[len(order) + left :]):
            floors[i] -= 1
    return floors
