"""A small linear test pricer (so the machine tests do not depend on ``agent.money.tariff``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from statemachines.pricing import Period, Usage, UsageKind


@dataclass(frozen=True, slots=True)
class LinearPricer:
    """``per_kwh_minor`` per kWh, ``per_minute_minor`` per minute plugged and authorized
    (charging or suspended), ``idle_per_minute_minor`` per idle minute, plus a flat
    ``session_fee_minor`` (also for an empty usage, as a tariff's session fee); rounded down."""

    per_kwh_minor: int = 40
    per_minute_minor: int = 0
    idle_per_minute_minor: int = 0
    session_fee_minor: int = 0

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
        duration_ms = max(0, int((end - start).total_seconds() * 1000))
        if usage.started_at is None:
            usage = Usage(started_at=start)
        period = Period(start, kind, energy_wh, duration_ms, power_w, current_a)
        return usage.extended(period, merge=bool(usage.periods) and usage.periods[-1].kind is kind)

    def cost_minor(self, usage: Usage) -> int:
        energy = usage.energy_wh * self.per_kwh_minor // 1000
        active_ms = usage.duration_ms(UsageKind.CHARGING) + usage.duration_ms(UsageKind.SUSPENDED)
        time = active_ms * self.per_minute_minor // 60_000
        idle = usage.duration_ms(UsageKind.IDLE) * self.idle_per_minute_minor // 60_000
        return energy + time + idle + self.session_fee_minor
