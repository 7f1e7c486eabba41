"""The agent configuration of a rig: the structure of ``systemd/agent.example.yaml`` with test timers."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_TARIFF", "base_config", "deep_merge"]


_OCPI_FORM_KEYS = ("ocpi", "ocpi_file", "elements")  # docs/tariff.md: the OCPI forms of ``tariff:``


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in (mappings recursively; anything else replaced). A
    ``tariff`` in an OCPI form replaces the base tariff whole: the two forms share no field."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        other_form = (
            key == "tariff" and isinstance(value, Mapping) and any(k in value for k in _OCPI_FORM_KEYS)
        )
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and not other_form:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


DEFAULT_TARIFF: dict[str, Any] = {
    "currency": "EUR",
    "minor_unit_digits": 2,
    "prices_include_vat": True,
    "vat_rate_percent": "21",
    "energy_per_kwh": "0.39",
}


def base_config(
    *,
    station_id: str,
    state_dir: Path,
    terminal_url: str,
    family: str,
    broker_url: str,
    charger_prefix: str,
    connectors: int,
) -> dict[str, Any]:
    """The structure of systemd/agent.example.yaml with test timers (short where the schema allows).

    Schema floors that bound test time: ``plug_in_timeout_s`` ≥ 30, ``final_meter_wait_s`` ≥ 1,
    ``meter_interval_s`` ≥ 1, ``settlement_retry_s`` items ≥ 1 (whole seconds).
    """
    return {
        "station_id": station_id,
        "state_dir": str(state_dir),
        "log_level": "debug",
        "terminal": {
            "driver": "psp",
            "url": terminal_url,
            "family": family,
            "keepalive_s": 5,
            "offline_alarm_after_s": 5,
        },
        "charger": {"driver": "mqtt_bridge", "broker_url": broker_url, "prefix": charger_prefix},
        "connectors": [
            {"id": c, "max_current_a": 1000, "label": f"Connector {c}"} for c in range(1, connectors + 1)
        ],
        "session": {
            "start_modes": ["tap", "plug_in"],
            "stop_modes": ["tap", "unplug"],
            "free_vend_when_offline": "refuse",
            "plug_in_timeout_s": 30,
            "card_decision_s": 25,
            "final_meter_wait_s": 1,
            "meter_interval_s": 1,
            "settlement_retry_s": [1],
            "undisposed_alarm_after_s": 60,
            "idle_fee_enabled": False,
        },
        "authorization": {"strategy": "fixed", "amount_minor": 5000, "maximum_minor": 15000},
        "tariff": dict(DEFAULT_TARIFF),
        "upstream": {"broker_url": broker_url, "prefix": "e2e/{station_id}", "protocol": 5},
    }
