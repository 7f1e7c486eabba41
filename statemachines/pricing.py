"""The pricing contract between the connector machine and the tariff (DESIGN.md §4.1, §5.4).

``statemachines`` may not import ``agent``, so the connector machine prices a session through the
structural :class:`Pricer` protocol; ``agent.money.tariff.Tariff`` implements it. Usage is a list of
charging periods (OCPI 2.2.1 §CDRs ChargingPeriod, in exact integers: energy in Wh, durations in
milliseconds): the tariff splits the session wherever the set of its active elements changes (a
time-of-day window, a kWh or duration threshold, a power or current restriction, a DST change) and
merges what follows on without a change, so a period is priced by one element per dimension.

Times are timezone-aware ``datetime`` values that arrive in events; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UsageKind(StrEnum):
    """What the vehicle was doing during a stretch of a session."""

    CHARGING = "charging"  # energy flowing (or allowed to flow and the EV is drawing)
    SUSPENDED = "suspended"  # plugged and authorized, paused by the EV or the EVSE
    IDLE = "idle"  # charging finished, vehicle still plugged (idle fee may apply)


@dataclass(frozen=True, slots=True)
class Period:
    """One charging period: ``duration_ms`` from ``start`` (UTC), ``energy_wh`` delivered, spent as
    ``kind``; ``power_w`` / ``current_a`` are what the charger reported (or the average power) when
    the period began — what power and current restrictions were evaluated on."""

    start: datetime
    kind: UsageKind
    energy_wh: int = 0
    duration_ms: int = 0
    power_w: float | None = None
    current_a: float | None = None

    @property
    def end(self) -> datetime:
        return self.start + timedelta(milliseconds=self.duration_ms)


@dataclass(frozen=True, slots=True)
class Usage:
    """Accumulated usage of one session; immutable, grown by :meth:`Pricer.accumulate`."""

    started_at: datetime | None = None
    periods: tuple[Period, ...] = ()

    @property
    def energy_wh(self) -> int:
        return sum(p.energy_wh for p in self.periods)

    def duration_ms(self, kind: UsageKind) -> int:
        return sum(p.duration_ms for p in self.periods if p.kind is kind)

    def add(self, kind: UsageKind, energy_wh: int, duration_ms: int) -> Usage:
        """A copy with a period of ``kind`` appended right after the last one (the first at
        ``started_at``, the Unix epoch when unset) — usage built without a tariff to split it."""
        at = self.periods[-1].end if self.periods else self.started_at or _EPOCH
        return replace(self, started_at=self.started_at or at).extended(
            Period(at, kind, energy_wh, duration_ms), merge=False
        )

    def extended(self, period: Period, *, merge: bool) -> Usage:
        """A copy with ``period`` appended, or added to the last period when ``merge``."""
        if merge and self.periods:
            last = self.periods[-1]
            grown = replace(
                last,
                energy_wh=last.energy_wh + period.energy_wh,
                duration_ms=last.duration_ms + period.duration_ms,
            )
            return replace(self, periods=(*self.periods[:-1], grown))
        return replace(self, periods=(*self.periods, period))


class Pricer(Protocol):
    """What the connector machine needs from a tariff. Both methods are pure."""

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
        """Add ``energy_wh`` delivered between ``start`` and ``end`` as ``kind`` to ``usage``; the
        charger's reported ``power_w`` / ``current_a`` (``None``: not reported) for restrictions."""
        ...

    def cost_minor(self, usage: Usage) -> int:
        """The gross price of ``usage`` in minor currency units (all rounding, minimum, maximum applied)."""
        ...


# Projections look at most this far ahead; a cap not reached within it counts as "not soon".
PROJECTION_HORIZON_S = 24 * 3600


def seconds_until_cost_reaches(
    pricer: Pricer,
    usage: Usage,
    at: datetime,
    power_w: float,
    limit_minor: int,
    *,
    horizon_s: int = PROJECTION_HORIZON_S,
    cost_minor: int | None = None,
) -> int | None:
    """Whole seconds from ``at`` until charging at ``power_w`` makes the cost reach ``limit_minor``.

    Returns 0 when the cost already reaches the limit and ``None`` when it is not reached within
    ``horizon_s`` (at most :data:`PROJECTION_HORIZON_S`). Assumes cost never falls as time passes
    (all tariff prices are non-negative), which makes a binary search over the horizon exact to the
    second — and makes the answer for a shorter horizon the same as for the full one wherever it
    is within the shorter one. A caller that only compares the result with thresholds passes the
    largest threshold as ``horizon_s``: one tariff evaluation while the limit is farther away than
    that (the common case on every meter reading), ``log2(horizon_s)`` more when it is near,
    instead of ~19 (docs/performance.md §3.2). ``cost_minor``: the cost of ``usage`` when the
    caller already knows it (saves one evaluation).
    """

    def cost_after(seconds: int) -> int:
        energy_wh = int(max(power_w, 0.0) * seconds // 3600)
        grown = pricer.accumulate(
            usage, at, at + timedelta(seconds=seconds), energy_wh, UsageKind.CHARGING, power_w=power_w
        )
        return pricer.cost_minor(grown)

    if (pricer.cost_minor(usage) if cost_minor is None else cost_minor) >= limit_minor:
        return 0
    horizon = max(1, min(horizon_s, PROJECTION_HORIZON_S))
    if cost_after(horizon) < limit_minor:
        return None
    low, high = 0, horizon  # cost(low) < limit <= cost(high)
    while high - low > 1:
        mid = (low + high) // 2
        if cost_after(mid) >= limit_minor:
            high = mid
        else:
            low = mid
    return high
