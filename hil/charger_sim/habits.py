"""Charger habits: the ways real firmware differs within docs/charger-bridge.md, as one profile object.

A randomized-world fuzzer runs the agent against chargers that behave slightly differently; every
such difference the simulator can show is a field of :class:`ChargerHabits`. The defaults are the
simulator's historic behaviour. One profile maps onto the ``ChargerSimulator`` keyword arguments
(:meth:`ChargerHabits.as_dict`), onto ``python -m hil.charger_sim`` flags (:meth:`ChargerHabits.argv`)
and onto the ``habit NAME VALUE`` control command (:meth:`ChargerHabits.with_text`).

* ``meter_mode`` — when ``meter`` is published:

  - ``always``: on every change (any control or command that touches the connector), every
    ``meter_interval_s`` while plugged, and for every connector after each connect;
  - ``flowing``: only while energy flows (on a change and every ``meter_interval_s``), plus one
    final value (``power_w`` 0) on the change that stops the flow; nothing before the first flow
    and nothing after a connect for a connector without flow;
  - ``periodic``: only every ``meter_interval_s`` while plugged; never on a change, never after a
    connect.
* ``meter_interval_s`` — the meter timer (s, > 0).
* ``meter_retain`` — publish ``meter`` retained (the contract: "recommended").
* ``report_power`` — include ``power_w`` in ``meter`` payloads; ``False``: a meter with only an
  energy register (the payload has no ``power_w`` key at all).
* ``report_current`` — include ``current_a`` (the per-phase current at 230 V) in ``meter``
  payloads, for tariffs with current restrictions; ``False`` (default): no ``current_a`` key.
* ``plug_order`` — ``plug_first`` or ``status_first``: which of ``plug`` and ``status`` goes out
  first when a plug change comes with a status message (plug-in, unplug), and in the state
  published after a connect or by ``redeliver``. ``status_first`` is outside rule 3 of the contract
  ("plug first") but is what some firmware does.
* ``status_on_plug`` — also publish ``status`` on a plug change (plug-in, unplug) when the status
  does not change (``idle`` → ``idle``); ``False``: status only when it changes.
* ``duplicate_rate`` — probability (0..1) that a published message is published a second time
  right after it (same topic, bytes, retain flag), drawn from a ``random.Random(seed)``.
* ``seed`` — that RNG's seed (``None`` → the simulator draws one and reports it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_METER_INTERVAL_S = 1.0

_TRUE = frozenset({"1", "on", "true", "yes"})
_FALSE = frozenset({"0", "off", "false", "no"})


class MeterMode(StrEnum):
    ALWAYS = "always"
    FLOWING = "flowing"
    PERIODIC = "periodic"


class PlugOrder(StrEnum):
    PLUG_FIRST = "plug_first"
    STATUS_FIRST = "status_first"


def as_meter_mode(value: str) -> MeterMode:
    """``"flowing"`` → ``MeterMode.FLOWING``; ``ValueError`` naming the choices."""
    try:
        return MeterMode(value)
    except ValueError:
        raise ValueError(f"meter_mode {value!r}: expected one of {[m.value for m in MeterMode]}") from None


def as_plug_order(value: str) -> PlugOrder:
    """``"status_first"`` → ``PlugOrder.STATUS_FIRST``; ``ValueError`` naming the choices."""
    try:
        return PlugOrder(value)
    except ValueError:
        raise ValueError(f"plug_order {value!r}: expected one of {[o.value for o in PlugOrder]}") from None


def _parse_bool(text: str) -> bool:
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r}: expected on or off")


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected a number") from None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected an integer") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerHabits:
    """One charger's habits (see the module docstring); validated at construction (``ValueError``)."""

    meter_mode: MeterMode = MeterMode.ALWAYS
    meter_interval_s: float = DEFAULT_METER_INTERVAL_S
    meter_retain: bool = True
    report_power: bool = True
    report_current: bool = False
    plug_order: PlugOrder = PlugOrder.PLUG_FIRST
    status_on_plug: bool = False
    duplicate_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "meter_mode", as_meter_mode(self.meter_mode))
        object.__setattr__(self, "plug_order", as_plug_order(self.plug_order))
        if not (math.isfinite(self.meter_interval_s) and self.meter_interval_s > 0):
            raise ValueError(f"meter_interval_s {self.meter_interval_s!r}: must be > 0")
        if not (math.isfinite(self.duplicate_rate) and 0.0 <= self.duplicate_rate <= 1.0):
            raise ValueError(f"duplicate_rate {self.duplicate_rate!r}: must be in 0..1")
        for name in ("meter_retain", "report_power", "report_current", "status_on_plug"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} {getattr(self, name)!r}: expected a bool")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed {self.seed!r}: expected an integer")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; the keys are the ``ChargerSimulator`` keyword arguments and habit names."""
        return {
            "meter_mode": self.meter_mode.value,
            "meter_interval_s": self.meter_interval_s,
            "meter_retain": self.meter_retain,
            "report_power": self.report_power,
            "report_current": self.report_current,
            "plug_order": self.plug_order.value,
            "status_on_plug": self.status_on_plug,
            "duplicate_rate": self.duplicate_rate,
            "seed": self.seed,
        }

    def argv(self) -> list[str]:
        """The ``python -m hil.charger_sim`` flags that select these habits."""
        args = [
            "--meter-mode",
            self.meter_mode.value,
            "--meter-interval",
            repr(self.meter_interval_s),
            "--meter-retain" if self.meter_retain else "--no-meter-retain",
            "--power" if self.report_power else "--no-power",
            "--current" if self.report_current else "--no-current",
            "--plug-order",
            self.plug_order.value,
            "--status-on-plug" if self.status_on_plug else "--no-status-on-plug",
            "--duplicate-rate",
            repr(self.duplicate_rate),
        ]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        return args

    def with_text(self, name: str, text: str) -> ChargerHabits:
        """A copy with habit ``name`` (``meter_mode`` or ``meter-mode``) set from its text form
        (``on``/``off`` for booleans); ``ValueError`` for an unknown name or a bad value."""
        key = name.replace("-", "_").lower()
        key = _ALIASES.get(key, key)
        parser = _PARSERS.get(key)
        if parser is None:
            raise ValueError(f"unknown habit {name!r}; known: {', '.join(_PARSERS)}")
        try:
            return dataclasses.replace(self, **{key: parser(text)})
        except ValueError as exc:
            raise ValueError(f"habit {key}: {exc}") from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "meter_mode": as_meter_mode,
    "meter_interval_s": _parse_float,
    "meter_retain": _parse_bool,
    "report_power": _parse_bool,
    "report_current": _parse_bool,
    "plug_order": as_plug_order,
    "status_on_plug": _parse_bool,
    "duplicate_rate": _parse_float,
    "seed": _parse_int,
}
_ALIASES = {
    "meter_interval": "meter_interval_s",
    "power": "report_power",
    "current": "report_current",
}  # the CLI flag names
