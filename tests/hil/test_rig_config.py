"""hil.rig.config.deep_merge: how scenario files, the rig file and ``simulate --config`` override
the rig's base configuration (docs/hil-rig.md)."""

from __future__ import annotations

from hil.rig.config import DEFAULT_TARIFF, deep_merge


def test_mappings_merge_and_values_replace() -> None:
    base = {"session": {"start_modes": ["tap"], "meter_interval_s": 10}, "tariff": dict(DEFAULT_TARIFF)}
    merged = deep_merge(base, {"session": {"meter_interval_s": 5}, "tariff": {"energy_per_kwh": "0.49"}})
    assert merged["session"] == {"start_modes": ["tap"], "meter_interval_s": 5}
    assert merged["tariff"] == {**DEFAULT_TARIFF, "energy_per_kwh": "0.49"}
    assert base["tariff"] == DEFAULT_TARIFF  # the base is not touched


def test_an_ocpi_tariff_replaces_the_simple_one_whole() -> None:
    """The two forms share no field (docs/tariff.md): merging an OCPI tariff into the simple one
    would make a tariff in neither form."""
    base = {"tariff": dict(DEFAULT_TARIFF)}
    forms: list[dict[str, object]] = [
        {"ocpi": {"id": "t"}, "timezone": "UTC"},
        {"ocpi_file": "t.json"},
        {"elements": []},
    ]
    for ocpi in forms:
        assert deep_merge(base, {"tariff": ocpi})["tariff"] == ocpi
