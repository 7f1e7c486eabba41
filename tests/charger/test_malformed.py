"""Bad charger payloads are counted and logged, never raised; the driver stays healthy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from drivers.charger.base import ChargerLost, MeterReading, PlugChanged, StatusChanged
from drivers.charger.mqtt_bridge import DEFAULT_MAX_PAYLOAD_BYTES
from tests.charger.conftest import Rig
from tests.charger.support import raw_client

OVERSIZE = b'{"energy_wh": 1, "power_w": 1.0, "signed": "' + b"A" * DEFAULT_MAX_PAYLOAD_BYTES + b'"}'

# (topic, payload, reason)
MALFORMED: list[tuple[str, bytes, str]] = [
    ("charger/1/plug", b"not json", "json"),
    ("charger/1/plug", b'{"plugged": tru', "json"),
    ("charger/1/plug", b'{"plugged": "yes"}', "schema"),
    ("charger/1/plug", b"{}", "schema"),
    ("charger/1/plug", b"[true]", "schema"),
    ("charger/1/plug", b"null", "schema"),
    ("charger/1/plug", b"", "empty"),
    ("charger/1/plug", b'\xff\xfe{"plugged": true}', "encoding"),
    ("charger/1/status", b'{"state": "flying"}', "schema"),
    ("charger/1/status", b'{"state": 3}', "schema"),
    ("charger/1/status", b'{"state": "fault", "fault": 42}', "schema"),
    ("charger/1/status", b'{"fault": "E1"}', "schema"),
    ("charger/1/meter", b'{"energy_wh": "12", "power_w": 1.0}', "schema"),
    ("charger/1/meter", b'{"energy_wh": 12.5, "power_w": 1.0}', "schema"),
    ("charger/1/meter", b'{"energy_wh": -1, "power_w": 1.0}', "schema"),
    ("charger/1/meter", b'{"power_w": 1.0}', "schema"),
    ("charger/1/meter", b'{"energy_wh": 1, "power_w": true}', "schema"),
    ("charger/1/meter", b'{"energy_wh": 1, "power_w": 1.0, "signed": 5}', "schema"),
    ("charger/1/meter", b'{"energy_wh": 1, "current_a": -16.0}', "schema"),
    ("charger/1/meter", b'{"energy_wh": 1, "current_a": "16"}', "schema"),
    ("charger/1/meter", OVERSIZE, "oversize"),
    ("charger/9/plug", b'{"plugged": true}', "unknown_connector"),
    ("charger/0/plug", b'{"plugged": true}', "unknown_connector"),
    ("charger/01/plug", b'{"plugged": true}', "unknown_connector"),
    ("charger/x/status", b'{"state": "idle"}', "unknown_connector"),
    ("charger/alive", b'{"online": "yes"}', "schema"),
    ("charger/alive", b"garbage", "json"),
]


async def test_malformed_payloads_are_counted_and_ignored(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    assert len(MALFORMED) >= 15
    caplog.set_level(logging.WARNING, logger="drivers.charger.mqtt_bridge")
    invalid_before = rig.driver.stats.invalid
    async with raw_client(rig.broker) as firmware:
        for topic, payload, _ in MALFORMED:
            await firmware.publish(topic, payload, qos=1)
        await firmware.publish("charger/1/plug", b'{"plugged": true, "extra": {"x": 1}}', qos=1)
    plug = await rig.events.next(PlugChanged, lambda e: e.connector_id == 1)
    assert plug.plugged is True  # unknown fields are ignored, not rejected
    expected: dict[str, int] = {}
    for _, _, reason in MALFORMED:
        expected[reason] = expected.get(reason, 0) + 1
    assert rig.driver.stats.invalid - invalid_before == len(MALFORMED)
    assert dict(rig.driver.stats.invalid_by_reason) == expected
    # nothing malformed became an event, the charger is still online, the link never dropped
    assert not [e for e in rig.events.seen if isinstance(e, ChargerLost)]
    assert not [e for e in rig.events.seen[:-1] if isinstance(e, StatusChanged | PlugChanged)]
    assert rig.driver.online
    assert rig.driver.connected
    assert rig.driver.stats.connection_losses == 0
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "dropped a payload" in r.message
    ]
    assert len(warnings) == len(MALFORMED)
    assert "charger/9/plug" in caplog.text
    # and it keeps working
    rig.sim.plug(1)
    await rig.driver.enable_energy(1)
    await rig.events.next(StatusChanged, lambda e: e.connector_id == 1 and e.state.value == "charging")


def _energy(wh: int) -> Callable[[MeterReading], bool]:
    return lambda e: e.energy_wh == wh


async def test_a_meter_may_report_its_current(rig: Rig) -> None:
    """docs/charger-bridge.md: ``current_a`` is optional; tariffs with current restrictions read it."""
    async with raw_client(rig.broker) as firmware:
        await firmware.publish("charger/2/meter", b'{"energy_wh": 20, "power_w": 11000, "current_a": 16.0}')
        await firmware.publish("charger/2/meter", b'{"energy_wh": 21, "power_w": 11000}')
    with_current = await rig.events.next(MeterReading, _energy(20))
    without = await rig.events.next(MeterReading, _energy(21))
    assert (with_current.current_a, without.current_a) == (16.0, None)


async def test_timestamps_parsed_or_fallback_counted(rig: Rig) -> None:
    fallbacks = rig.driver.stats.ts_fallbacks
    async with raw_client(rig.broker) as firmware:
        await firmware.publish(
            "charger/2/meter", b'{"energy_wh": 10, "power_w": 0, "ts": "2024-05-01T12:00:00+02:00"}'
        )
        await firmware.publish(
            "charger/2/meter", b'{"energy_wh": 11, "power_w": 0, "ts": "2024-05-01T10:00:01Z"}'
        )
        await firmware.publish("charger/2/meter", b'{"energy_wh": 12, "power_w": 0}')
        await firmware.publish(
            "charger/2/meter", b'{"energy_wh": 13, "power_w": 0, "ts": "2024-05-01T10:00:00"}'
        )
        await firmware.publish("charger/2/meter", b'{"energy_wh": 14, "power_w": 0, "ts": "yesterday"}')
        await firmware.publish("charger/2/meter", b'{"energy_wh": 15, "power_w": 0, "ts": 1714557600}')
    readings = [await rig.events.next(MeterReading, _energy(wh)) for wh in range(10, 16)]
    assert readings[0].at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert readings[0].at.utcoffset() == timedelta(0)
    assert readings[1].at == datetime(2024, 5, 1, 10, 0, 1, tzinfo=timezone.utc)  # noqa: UP017
    now = datetime.now(UTC)
    for fallback in readings[2:]:
        assert fallback.at.tzinfo is UTC
        assert abs(now - fallback.at) < timedelta(seconds=10)
    assert rig.driver.stats.ts_fallbacks - fallbacks == 4


async def test_a_bug_in_message_handling_does_not_end_the_bridge(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = rig.driver._on_message
    calls: list[str] = []

    def buggy(message: Any) -> None:
        calls.append(message.topic.value)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        original(message)

    monkeypatch.setattr(rig.driver, "_on_message", buggy)
    rig.sim.plug(1)  # the plug message hits the bug; the meter that follows still arrives
    await rig.events.next(MeterReading, lambda e: e.connector_id == 1)
    assert rig.driver.stats.invalid_by_reason["internal_error"] == 1
    assert rig.driver.connected
    assert rig.driver.stats.connection_losses == 0
    assert "failed on a message on charger/1/plug" in caplog.text
