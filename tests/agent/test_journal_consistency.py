"""Issue 11, "demo and journal consistency" at the journal: one timestamp format (RFC 3339 UTC ``Z``,
agent.timefmt, the upstream contract's), migrated journals of schema 1-3 (``+00:00``) restore
unchanged, card facts the terminal did not give are not journaled as ``null``."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.logs import kv
from agent.store.journal import (
    Journal,
    StoredTariff,
    migrations,
    read_payments,
    record_data,
    usage_from_json,
    usage_to_json,
)
from agent.timefmt import normalize_timestamp, parse_timestamp, utc_timestamp
from agent.upstream import contract
from statemachines.effects import RecordCardRead, RecordEnergyOn, RecordMeter, RecordPaymentApproved
from statemachines.events import CardKind, CardToken, PaymentMethod
from statemachines.pricing import Period, Usage, UsageKind

REF = "1-20260101T120000000001"
SID = "577090037"
HASH = "0123456789ABCDEF0123456789ABCDEF01234567"
PAN = "476173******0010"
AT = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
Z_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3}|\.\d{6})Z$")


def _dump(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def test_the_one_format_is_the_upstream_contracts() -> None:
    for at in (AT, AT.astimezone(timezone(timedelta(hours=2))), datetime(2026, 3, 1, tzinfo=UTC)):
        assert utc_timestamp(at) == contract.utc_timestamp(at)
        assert Z_STAMP.match(utc_timestamp(at, timespec="microseconds"))
        assert parse_timestamp(utc_timestamp(at, timespec="microseconds")) == at
    assert utc_timestamp(AT) == "2026-01-01T12:00:00.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        utc_timestamp(datetime(2026, 1, 1))
    assert normalize_timestamp("2026-01-01T12:00:00.123456+00:00") == "2026-01-01T12:00:00.123456Z"
    assert normalize_timestamp("2026-01-01T12:00:00.123Z") == "2026-01-01T12:00:00.123Z"
    assert normalize_timestamp(None) is None
    assert kv(at=AT) == "at=2026-01-01T12:00:00.123Z"  # log fields too


def test_journal_writes_utc_z_everywhere(tmp_path: Path) -> None:
    usage = Usage(started_at=AT, periods=(Period(AT, UsageKind.CHARGING, 10, 1500, 11000.0, None),))
    journal = Journal.open(tmp_path)
    try:
        journal.record(
            RecordCardRead(1, REF, card=CardToken(CardKind.EMV, HASH, PAN, None), amount_minor=5000)
        )
        journal.bind_session_tariff(REF, StoredTariff("f" * 64, {"currency": "EUR"}))
        journal.record(RecordPaymentApproved(1, REF, PaymentMethod.EMV, SID, 5000, card_brand="VISA"), at=AT)
        journal.record(RecordEnergyOn(1, REF, method=PaymentMethod.EMV, meter_wh=0, first=True, usage=usage))
        journal.record(
            RecordMeter(
                1, REF, meter_wh=10, energy_wh=10, cost_minor=1, power_w=11000.0, periodic=True, usage=usage
            )
        )
        journal.set_station_tariff(
            StoredTariff("e" * 64, {"currency": "EUR"}), configured_fingerprint="d" * 64
        )
        journal.note("recovery_test", 1, REF, {"when": AT})
        (row,) = journal.payments()
        assert row.brand == "VISA"
        assert row.started_at.endswith("Z")
        assert row.updated_at.endswith("Z")
        assert Z_STAMP.match(row.session_started_at or "")
        assert usage_from_json(row.usage_json) == usage
        events = journal.events(REF)
        assert all(Z_STAMP.match(e.at) for e in events)
        assert events[-1].data == {"when": "2026-01-01T12:00:00.123456Z"}
    finally:
        journal.close()
    dump = _dump(tmp_path / "journal.sqlite3")
    assert "+00:00" not in dump
    stamps = re.findall(r"\d{4}-\d{2}-\d{2}T[0-9:.]+[^0-9:.]", dump)
    assert stamps
    assert all(s.endswith("Z") for s in stamps), sorted({s[-1] for s in stamps})


def test_usage_json_is_z_and_reads_the_old_offset_form() -> None:
    usage = Usage(started_at=AT, periods=(Period(AT, UsageKind.CHARGING, 10, 1500),))
    text = usage_to_json(usage)
    assert "+00:00" not in text
    assert '"2026-01-01T12:00:00.123456Z"' in text
    assert usage_from_json(text) == usage
    assert usage_from_json(text.replace('Z"', '+00:00"')) == usage


def test_card_facts_not_given_are_not_journaled_as_null() -> None:
    read = RecordCardRead(1, REF, card=CardToken(CardKind.EMV, HASH, PAN, None), amount_minor=5000)
    assert record_data(read) == {
        "session_ref": REF,
        "card_kind": "emv",
        "token": HASH,
        "masked_pan": PAN,
        "amount_minor": 5000,
    }
    approved = RecordPaymentApproved(1, REF, PaymentMethod.EMV, SID, 5000, card_brand="VISA")
    data = record_data(approved)
    assert data["card_brand"] == "VISA"
    assert "card" not in data
    assert "brand" not in data


def _schema_3_journal(path: Path) -> str:
    """A journal as the agent of schema 3 left it: an open charging payment, isoformat ``+00:00``."""
    old = "2026-01-01T12:00:00.123456+00:00"
    later = "2026-01-01T12:00:05.000000+00:00"
    usage = json.dumps(
        {"started_at": old, "periods": [[old, "charging", 40, 4877, 11000.0, None]]}, separators=(",", ":")
    )
    conn = sqlite3.connect(path / "journal.sqlite3")
    known = dict(migrations())
    conn.executescript(known[1] + known[2] + known[3])
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.executemany("INSERT INTO schema_version VALUES (?)", [(1,), (2,), (3,)])
    conn.execute(
        "INSERT INTO tariffs (fingerprint, tariff_json, stored_at) VALUES (?, '{}', ?)", ("a" * 64, old)
    )
    conn.execute(
        "INSERT INTO station_tariff (id, fingerprint, configured_fingerprint, set_at) VALUES (1, ?, ?, ?)",
        ("a" * 64, "b" * 64, old),
    )
    conn.execute(
        "INSERT INTO payments (payment_id, connector_id, method, terminal_session_id, card_kind, card_token, "
        "masked_pan, brand, requested_minor, authorized_minor, state, energy_wh, cost_minor, energy_on, "
        "last_meter_wh, last_meter_at, usage_json, started_at, updated_at, session_started_at) "
        "VALUES (?, 1, 'emv', ?, 'emv', ?, ?, 'VISA', 5000, 5000, 'charging', 40, 2, 1, 1040, ?, ?, ?, ?, ?)",
        (REF, SID, HASH, PAN, later, usage, old, later, old),
    )
    conn.execute(
        "INSERT INTO events (at, kind, connector_id, payment_id, data) VALUES (?, 'energy_on', 1, ?, '{}')",
        (old, REF),
    )
    conn.commit()
    conn.close()
    return old


def test_a_schema_3_journal_is_normalised_on_read_before_migration(tmp_path: Path) -> None:
    """A read-only reader (``sessions``, reconciliation) may see a journal no writer migrated yet."""
    _schema_3_journal(tmp_path)
    (row,) = read_payments(tmp_path)
    assert row.started_at == "2026-01-01T12:00:00.123456Z"
    assert row.last_meter_at == "2026-01-01T12:00:05.000000Z"
    assert "+00:00" not in (row.usage_json or "")
    assert "+00:00" not in json.dumps(row.to_json())


def test_migration_4_rewrites_a_schema_3_journal_and_its_open_payment_restores_unchanged(
    tmp_path: Path,
) -> None:
    old = _schema_3_journal(tmp_path)
    journal = Journal.open(tmp_path)
    try:
        assert journal.schema_version == len(migrations())
        (row,) = journal.open_payments()
        restored = row.to_restored()
        assert restored.session_id == SID
        assert restored.card is not None
        assert restored.card.brand == "VISA"
        assert restored.last_meter_at == parse_timestamp(old) + timedelta(seconds=4, microseconds=876544)
        assert restored.usage.started_at == parse_timestamp(old)
        assert restored.usage.periods[0].start == parse_timestamp(old)
        assert restored.started is True
        station = journal.station_tariff()
        assert station is not None
        assert station.set_at == "2026-01-01T12:00:00.123456Z"
        (event,) = journal.events(REF)
        assert event.at == "2026-01-01T12:00:00.123456Z"
    finally:
        journal.close()
    assert "+00:00" not in _dump(tmp_path / "journal.sqlite3")


def test_the_newest_event_per_connector_uses_the_kind_index(tmp_path: Path) -> None:
    """What a restart offers the charger again (agent.runtime.charger_payment): the newest
    ``charger_settlement`` of each connector, found through ``events_kind``, not a journal scan."""
    journal = Journal.open(tmp_path)
    try:
        for n, cid in enumerate((1, 2, 1, 3, 2, 1)):
            journal.note("charger_settlement", cid, f"{cid}-{n}", {"n": n})
            journal.note("recovery_noted", cid, f"{cid}-{n}", {"n": n})
        journal.note("charger_settlement", None, None, {"n": 99})  # not a connector's: left out
        newest = journal.last_events_per_connector("charger_settlement")
        assert [(e.connector_id, e.data["n"]) for e in newest] == [(3, 3), (2, 4), (1, 5)]
        assert journal.last_events_per_connector("nothing_of_this_kind") == []
    finally:
        journal.close()
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    plan = " ".join(
        str(row[3])
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT max(id) FROM events WHERE kind = ? AND connector_id IS NOT NULL "
            "GROUP BY connector_id",
            ("charger_settlement",),
        )
    )
    conn.close()
    assert "events_kind" in plan, plan
