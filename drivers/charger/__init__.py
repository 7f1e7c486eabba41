"""Charger drivers (DESIGN.md §3.3): the contract in :mod:`drivers.charger.base` and a registry.

Drivers plug in by name; ``load_driver(name)`` imports ``module:Class`` lazily, so that a
deployment only imports what it configured.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

from drivers.charger.base import (
    ChargerBack,
    ChargerDriver,
    ChargerError,
    ChargerErrorCode,
    ChargerEvent,
    ChargerLost,
    ChargingState,
    MeterReading,
    PlugChanged,
    StatusChanged,
)

CHARGER_DRIVERS: Mapping[str, str] = MappingProxyType(
    {
        "mqtt_bridge": "drivers.charger.mqtt_bridge:MqttBridgeDriver",
    }
)


def load_driver(name: str) -> type[ChargerDriver]:
    """The driver class registered as ``name``; unknown names raise :class:`ChargerError`."""
    target = CHARGER_DRIVERS.get(name)
    if target is None:
        raise ChargerError(
            ChargerErrorCode.UNKNOWN_DRIVER,
            f"no charger driver {name!r}; known: {', '.join(sorted(CHARGER_DRIVERS))}",
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ChargerError(
            ChargerErrorCode.UNKNOWN_DRIVER, f"charger driver {name!r} ({target}): {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, ChargerDriver)):
        raise ChargerError(ChargerErrorCode.UNKNOWN_DRIVER, f"{target} is not a ChargerDriver")
    return cls


__all__ = [
    "CHARGER_DRIVERS",
    "ChargerBack",
    "ChargerDriver",
    "ChargerError",
    "ChargerErrorCode",
    "ChargerEvent",
    "ChargerLost",
    "ChargingState",
    "MeterReading",
    "PlugChanged",
    "StatusChanged",
    "load_driver",
]
