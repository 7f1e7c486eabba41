"""The pricing contract between the connector machine and the tariff (DESIGN.md §4.1, §5.4).

``statemachines`` may not import ``agent``, so the connector machine prices a session through the
structural :class:`Pricer` protocol; ``agent.money.tariff.Tariff`` implements it. Usage is accumulated as
exact integers: energy in Wh, durations in milliseconds, bucketed by tariff band and usage kind, so
that a time-of-day band change during a session prices each part at its own rate.

Times are timezone-aware ``datetime`` values that arrive in events; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol


class UsageKind(StrEnum):
    """What the vehicle was doing during a stretch of a session."""

    CHARGING = "charging"  # energy flowing (or allowed to flow and the EV is drawing)
    SUSPENDED = "suspended"  # plugged and authorized, paused by the EV or the EVSE
    IDLE = "idle"  # charging finished, vehicle still plugged (idle fee may apply)


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """Usage of one kind within one tariff band. ``band`` is ``""`` for a tariff without bands."""

    band: str
    kind: UsageKind
    energy_wh: int = 0
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Accumulated usage of one session; immutable, grown by :meth:`Pricer.accumulate`."""

    started_at: datetime | None = None
    buckets: tuple[UsageBucket, ...] = ()

    @property
    def energy_wh(self) -> int:
        return sum(b.energy_wh for b in self.buckets)

    def duration_ms(self, kind: UsageKind) -> int:
        return sum(b.duration_ms for b in self.buckets if b.kind is kind)

    def add(self, band: str, kind: UsageKind, energy_wh: int, duration_ms: int) -> Usage:
        """Return a copy with the amounts added to the (band, kind) bucket (created when missing)."""
        buckets = list(self.buckets)
        for i, bucket in enumerate(buckets):
            if bucket.band == band and bucket.kind is kind:
                buckets[i] = replace(
                    bucket,
                    energy_wh=bucket.energy_wh + energy_wh,
                    duration_ms=bucket.duration_ms + duration_ms,
                )
                break
        else:
            buckets.append(UsageBucket(band, kind, energy_wh, duration_ms))
        return replace(self, buckets=tuple(buckets))


class Pricer(Protocol):
    """What the connector machine needs from a tariff. Both methods are pure."""

    def accumulate(
        self, usage: Usage, start: datetime, end: datetime, energy_wh: int, kind: UsageKind
    ) -> Usage:
        """Add ``energy_wh`` delivered between ``start`` and ``end`` as ``kind`` to ``usage``."""
        ...

    def cost_minor(self, usage: Usage) -> int:
        """The gross price of ``usage`` in minor currency units (all rounding, minimum, maximum applied)."""
        ...


# Projections look at most this far ahead; a cap not reached within it counts as "not soon".
PROJECTION_HORIZON_S = 24 * 3600


def seconds_until_cost_reaches(
    pricer: Pricer, usage: Usage, at: datetime, power_w: float, limit_minor: int
) -> int | None:
    """Whole seconds from ``at`` until charging at ``power_w`` makes the cost reach ``limit_minor``.

    Returns 0 when the cost already reaches the limit and ``None`` when it is not reached within
    :data:`PROJECTION_HORIZON_S`. Assumes cost never falls as time passes (all tariff prices are
    non-negative), which makes a binary search over the horizon exact to the second.
    """

    def cost_after(seconds: int) -> int:
        energy_wh = int(max(power_w, 0.0) * seconds // 3600)
        grown = pricer.accumulate(usage, at, at + timedelta(seconds=seconds), energy_wh, UsageKind.CHARGING)
        return pricer.cost_minor(grown)

    if pricer.cost_minor(usage) >= limit_minor:
        return 0
    if cost_after(PROJECTION_HORIZON_S) < limit_minor:
        return None
    low, high = 0, PROJECTION_HORIZON_S  # cost(low) < limit <= cost(high)
    while high - low > 1:
        mid = (low + high) // 2
        if cost_after(mid) >= limit_minor:
            high = mid
        else:
            low = mid
    return high
