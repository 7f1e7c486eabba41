"""Authorization amount strategies (requirements AMT-1…4, DESIGN.md §5.4, payter-ev-guide §6.2, §9).

Pure decisions the connector machine takes: the amount reserved by the Start Session, whether to ask
for an incremental authorization (Apollo Update Session, psp-reference §5.20: a *new total*, not a
delta), the cap of a partially approved payment and the amount a Commit may capture.
``agent.money.tariff`` re-exports this module; it lives here because ``statemachines`` may not
import ``agent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AuthorizationStrategy(StrEnum):
    """Payter's four approaches (payter-ev-guide §6.2)."""

    FIXED = "fixed"  # reserve a fixed amount, commit the lower actual amount
    INCREMENTAL = "incremental"  # small amount, Update Session top-ups before the cap (Apollo only)
    DRIVER_CAP = "driver_cap"  # the driver picks the cap on the Apollo selection screen
    MAXIMUM = "maximum"  # reserve the maximum, commit the lower actual amount


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    strategy: AuthorizationStrategy = AuthorizationStrategy.FIXED
    amount_minor: int = 5000  # initial (incremental) or fixed amount
    increment_minor: int = 2500  # step added per Update Session (incremental)
    maximum_minor: int = 15000  # reserve for MAXIMUM; ceiling of all increments
    driver_cap_choices_minor: tuple[int, ...] = (2000, 5000, 10000)
    increment_headroom_s: int = 300  # ask for more when the cap is projected within this time
    allow_over_capture: bool = False  # AMT-4: never capture above the authorized amount unless set

    def __post_init__(self) -> None:
        if self.amount_minor <= 0 or self.maximum_minor <= 0 or self.increment_minor < 0:
            raise ValueError("authorization amounts must be positive")
        if self.strategy is AuthorizationStrategy.DRIVER_CAP and not self.driver_cap_choices_minor:
            raise ValueError("driver_cap needs at least one choice")


def start_amount_minor(policy: AuthorizationPolicy, chosen_cap_minor: int | None = None) -> int:
    """The amount of the Start Session (the amount Auth Session authorises, psp-reference §5.9).

    For ``driver_cap`` a choice not on the list (or no choice, e.g. plug-in-to-start without a
    selection screen) falls back to the first choice.
    """
    match policy.strategy:
        case AuthorizationStrategy.MAXIMUM:
            return policy.maximum_minor
        case AuthorizationStrategy.DRIVER_CAP:
            if chosen_cap_minor in policy.driver_cap_choices_minor:
                return chosen_cap_minor
            return policy.driver_cap_choices_minor[0]
        case _:
            return policy.amount_minor


def increment_total_minor(
    policy: AuthorizationPolicy,
    authorized_minor: int,
    seconds_to_cap: int | None,
    supports_update_session: bool,
) -> int | None:
    """The new total to request by Update Session now, or ``None`` for no request.

    A request is made only for the incremental strategy on a terminal that supports Update Session
    (Apollo, psp-reference §8), when the projection reaches the authorized amount within the
    headroom, and while the maximum leaves room for more.
    """
    if policy.strategy is not AuthorizationStrategy.INCREMENTAL or not supports_update_session:
        return None
    if seconds_to_cap is None or seconds_to_cap > policy.increment_headroom_s:
        return None
    new_total = min(authorized_minor + policy.increment_minor, policy.maximum_minor)
    return new_total if new_total > authorized_minor else None


def partial_cap_minor(requested_minor: int, approved_minor: int) -> int:
    """AMT-3: a partially approved payment caps the session at the approved amount."""
    return max(0, min(requested_minor, approved_minor))


def capture_amount_minor(policy: AuthorizationPolicy, cost_minor: int, authorized_minor: int | None) -> int:
    """AMT-4: the Commit amount; capped by the authorized amount unless over-capture is allowed."""
    if authorized_minor is None or policy.allow_over_capture:
        return max(cost_minor, 0)
    return max(0, min(cost_minor, authorized_minor))


def must_stop_for_cap(seconds_to_cap: int | None, margin_s: int) -> bool:
    """AMT-2: stop energy when the cap is reached within ``margin_s`` (about one meter interval)."""
    return seconds_to_cap is not None and seconds_to_cap <= margin_s
