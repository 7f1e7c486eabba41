"""The journal (DESIGN.md §5.2): migrations, durability settings, write-ahead folding, PAN guard."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.store.journal import Journal, JournalError, check_no_pan, migrations, read_payments
from statemachines.effects import JournalRecord
from statemachines.events import Disposal, PaymentMethod
from statemachines.pricing import Usage, UsageKind

REF = "1-20250101T120000000001"
SID = "577090037"
HASH = "0123456789ABCDEF0123456789ABCDEF01234567"


def _approve(journal: Journal, ref: str = REF, sid: str = SID) -> None:
    journal.record(
        JournalRecord(
            "card_read",
            1,
            {
                "session_ref": ref,
                "card_kind": "emv",
                "token": HASH,
                "masked_pan": "476173******0010",
                "brand": "VISA",
                "amount_minor": 5000,
            },
        )
    )
    journal.record(
        JournalRecord(
            "payment_approved",
            1,
            {"session_ref": ref, "session_id": sid, "authorized_minor": 5000, "partial": False},
        )
    )


def test_migrations_create_schema_and_record_version(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        assert journal.schema_version == len(migrations()) >= 1
        conn = sqlite3.connect(tmp_path / "journal.sqlite3")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"payments", "events", "schema_version"} <= tables
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        conn.close()
    finally:
        journal.close()
    again = Journal.open(tmp_path)  # reopening applies nothing twice
    try:
        assert again.schema_version == 1
    finally:
        again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        Journal.open(tmp_path)


def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        assert journal.pragma("journal_mode") == "wal"
        assert journal.pragma("synchronous") == 2  # FULL
    finally:
        journal.close()


@pytest.mark.req("ERR-5", "STOP-7")
def test_req_err_5_records_fold_into_the_payment_and_survive_reopen(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    usage = Usage(datetime(2025, 1, 1, tzinfo=UTC)).add("", UsageKind.CHARGING, 1500, 60_000)
    _approve(journal)
    journal.record(JournalRecord("energy_on", 1, {"session_ref": REF, "method": "emv", "meter_wh": 1000}))
    journal.record(
        JournalRecord(
            "meter", 1, {"session_ref": REF, "meter_wh": 2500, "energy_wh": 1500, "cost_minor": 60}
        ),
        usage=usage,
    )
    journal.record(
        JournalRecord(
            "commit",
            1,
            {"session_ref": REF, "session_id": SID, "amount_minor": 60, "energy_wh": 1500, "cost_minor": 60},
        )
    )
    journal.close()  # "crash" here: the commit was decided, not confirmed

    journal = Journal.open(tmp_path)
    try:
        (row,) = journal.open_payments()
        assert (row.state, row.disposal, row.final_minor, row.last_meter_wh) == (
            "settling",
            "commit",
            60,
            2500,
        )
        restored = row.to_restored()
        assert restored.method is PaymentMethod.EMV
        assert restored.session_id == SID
        assert restored.disposal is Disposal.COMMIT
        assert restored.final_minor == 60
        assert restored.usage == usage
        assert restored.card is not None
        assert restored.card.token == HASH
        journal.record(
            JournalRecord("commit_confirmed", 1, {"session_ref": REF, "session_id": SID, "outcome": "ok"})
        )
        assert journal.open_payments() == []
        (done,) = read_payments(tmp_path)  # the CLI's read-only connection
        assert done.to_json()["state"] == "committed"
        assert done.to_json()["disposal_confirmed"] is True
        assert [e.kind for e in journal.events(REF)] == [
            "card_read",
            "payment_approved",
            "energy_on",
            "meter",
            "commit",
            "commit_confirmed",
        ]
    finally:
        journal.close()


def test_write_is_committed_before_record_returns(tmp_path: Path) -> None:
    """Write-ahead: once ``record`` returned, another connection sees the row (committed, WAL)."""
    journal = Journal.open(tmp_path)
    try:
        started = time.perf_counter()
        _approve(journal)
        elapsed = (time.perf_counter() - started) / 2
        other = sqlite3.connect(tmp_path / "journal.sqlite3")
        assert other.execute("SELECT state FROM payments").fetchall() == [("approved",)]
        other.close()
        assert elapsed < 0.1, f"a journal write took {elapsed * 1000:.1f} ms"
    finally:
        journal.close()


@pytest.mark.req("OPS-2")
def test_req_ops_2_pan_guard_refuses_full_pans(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        with pytest.raises(JournalError) as info:
            journal.record(
                JournalRecord("card_read", 1, {"session_ref": REF, "masked_pan": "4761739001010010"})
            )
        assert "4761739001010010" not in str(info.value)
        assert journal.events() == []  # nothing written
        check_no_pan(
            "ok", {"token": HASH, "masked_pan": "476173******0010", "session_ref": REF, "amount": 5000}
        )
        with pytest.raises(JournalError):
            check_no_pan("nested", {"data": {"x": ["4761 ", "4761739001010010121"]}})  # 19 digits, Luhn-valid
        # not PANs: an RFID UID whose hex happens to be mostly digits, a Luhn-invalid digit run,
        # a millisecond timestamp (first digit 1)
        check_no_pan(
            "rfid",
            {"token": "0411223344556677AABB", "ref": "4761739001010011", "at_ms": 1795000000000},
        )
    finally:
        journal.close()


def test_known_session_ids_include_every_approval(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        _approve(journal)
        _approve(journal, "2-20250101T120000000002", "42")
        assert journal.known_session_ids() == {SID, "42"}
    finally:
        journal.close()
