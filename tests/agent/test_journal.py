"""The journal (DESIGN.md §5.2): migrations, durability settings, write-ahead folding of the engine's
typed records, possible orphan approvals, PAN guard."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import pytest

from agent.store.journal import (
    Journal,
    JournalError,
    PaymentState,
    check_no_pan,
    migrations,
    read_payments,
    record_data,
)
from statemachines.effects import (
    JOURNAL_RECORDS,
    JournalRecord,
    LimitKind,
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordLimitReached,
    RecordMeter,
    RecordPaymentApproved,
    RecordPaymentDeclined,
    RecordPaymentIncremented,
    RecordPaymentRestored,
    RecordSessionEnded,
    RecordStop,
    RecordVoidConfirmed,
    RecordVoidDecided,
)
from statemachines.events import (
    CardKind,
    CardToken,
    DeclineOutcome,
    Disposal,
    PaymentMethod,
    RestoreResolution,
    SettlementOutcome,
    StopSource,
)
from statemachines.pricing import Usage, UsageKind

REF = "1-20250101T120000000001"
SID = "577090037"
HASH = "0123456789ABCDEF0123456789ABCDEF01234567"
PAN = "476173******0010"
CARD = CardToken(CardKind.EMV, HASH, PAN, "VISA")
EMPTY = Usage()


def card_read(ref: str = REF, connector_id: int = 1, card: CardToken = CARD) -> RecordCardRead:
    return RecordCardRead(connector_id, ref, card=card, amount_minor=5000)


def approved(ref: str = REF, sid: str = SID, connector_id: int = 1) -> RecordPaymentApproved:
    return RecordPaymentApproved(
        connector_id, ref, method=PaymentMethod.EMV, session_id=sid, authorized_minor=5000
    )


def energy_on(ref: str = REF, meter_wh: int | None = 1000, *, first: bool = True) -> RecordEnergyOn:
    return RecordEnergyOn(1, ref, method=PaymentMethod.EMV, meter_wh=meter_wh, first=first, usage=EMPTY)


def meter(
    wh: int, *, periodic: bool = True, ref: str = REF, start_wh: int = 1000, usage: Usage = EMPTY
) -> RecordMeter:
    return RecordMeter(
        1,
        ref,
        meter_wh=wh,
        energy_wh=wh - start_wh,
        cost_minor=(wh - start_wh) // 25,
        power_w=11_000.0,
        periodic=periodic,
        usage=usage,
    )


def _approve(journal: Journal, ref: str = REF, sid: str = SID) -> None:
    journal.record(card_read(ref))
    journal.record(approved(ref, sid))


def test_migrations_create_schema_and_record_version(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        assert journal.schema_version == len(migrations()) == 5
        conn = sqlite3.connect(tmp_path / "journal.sqlite3")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"payments", "events", "schema_version", "tariffs", "station_tariff"} <= tables
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(1,), (2,), (3,), (4,), (5,)]
        columns = {r[1] for r in conn.execute("PRAGMA table_info(payments)")}
        assert {
            "session_started_at",
            "host_reference",
            "orphan_suspected",
            "orphan_cleared_at",
            "orphan_resolution",
            "tariff_fingerprint",
        } <= columns
        conn.close()
    finally:
        journal.close()
    again = Journal.open(tmp_path)  # reopening applies nothing twice
    try:
        assert again.schema_version == 5
    finally:
        again.close()


def test_migration_2_marks_the_started_sessions_of_a_schema_1_journal(tmp_path: Path) -> None:
    """0002_integrity.sql on a journal written by the previous agent: an open payment that had
    energy enabled has published its session.started (a restart must not publish it again)."""
    schema_1 = dict(migrations())[1]
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    conn.executescript(schema_1)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    at = "2025-01-01T12:00:00.000000+00:00"
    rows = [  # (ref, state, disposal, ended_at)
        ("1-charging", "charging", None, None),
        ("1-stopping", "stopping", None, None),
        ("1-commit", "settling", "commit", None),
        ("1-void", "settling", "void", None),
        ("1-approved", "approved", None, None),
        ("1-done", "committed", "commit", at),
    ]
    for ref, state, disposal, ended in rows:
        conn.execute(
            "INSERT INTO payments (payment_id, connector_id, state, disposal, started_at, updated_at, "
            "ended_at) VALUES (?, 1, ?, ?, ?, ?, ?)",
            (ref, state, disposal, at, at, ended),
        )
    conn.commit()
    conn.close()
    journal = Journal.open(tmp_path)
    try:
        assert journal.schema_version == 5
        started = {ref for ref, *_ in rows if (p := journal.payment(ref)) and p.session_started_at}
        assert started == {"1-charging", "1-stopping", "1-commit"}
        assert all(not p.orphan_suspected and p.host_reference is None for p in journal.payments())
        restored = journal.payment("1-charging")
        assert restored is not None
        assert restored.to_restored().started is True
    finally:
        journal.close()


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
    usage = Usage(datetime(2025, 1, 1, tzinfo=UTC)).add(UsageKind.CHARGING, 1500, 60_000)
    _approve(journal)
    journal.record(energy_on())
    journal.record(meter(2500, usage=usage))
    journal.record(
        RecordCommitDecided(
            1, REF, session_id=SID, amount_minor=60, energy_wh=1500, cost_minor=60, usage=usage
        )
    )
    journal.close()  # "crash" here: the commit was decided, not confirmed

    journal = Journal.open(tmp_path)
    try:
        (row,) = journal.open_payments()
        assert row.state is PaymentState.SETTLING
        assert (row.disposal, row.final_minor, row.last_meter_wh, row.energy_wh) == ("commit", 60, 2500, 1500)
        restored = row.to_restored()
        assert restored.method is PaymentMethod.EMV
        assert restored.session_id == SID
        assert restored.disposal is Disposal.COMMIT
        assert restored.final_minor == 60
        assert restored.usage == usage  # the usage travels in the typed record
        assert restored.started is True  # energy_on(first=True) published session.started
        assert restored.card is not None
        assert restored.card.token == HASH
        journal.record(RecordCommitConfirmed(1, REF, session_id=SID, outcome=SettlementOutcome.OK))
        assert journal.open_payments() == []
        (done,) = read_payments(tmp_path)  # the CLI's read-only connection
        assert done.state is PaymentState.COMMITTED
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


def test_unknown_facts_stay_unknown(tmp_path: Path) -> None:
    """A meter register not reported yet at energy-on, a brand the terminal did not give: NULL in
    the journal (never 0 or ""); ``first`` marks the session start once, a resume keeps it."""
    journal = Journal.open(tmp_path)
    try:
        journal.record(card_read(card=CardToken(CardKind.EMV, HASH, PAN, None)))
        journal.record(
            RecordPaymentApproved(
                1, REF, method=PaymentMethod.EMV, session_id=SID, authorized_minor=5000, host_reference="H-77"
            )
        )
        journal.record(energy_on(meter_wh=None), at=datetime(2025, 1, 1, 12, 0, tzinfo=UTC))
        row = journal.payment(REF)
        assert row is not None
        assert (row.brand, row.last_meter_wh, row.last_meter_at) == (None, None, None)
        assert row.host_reference == "H-77"
        assert row.session_started_at == "2025-01-01T12:00:00.000000Z"
        journal.record(energy_on(meter_wh=1200, first=False), at=datetime(2025, 1, 1, 13, 0, tzinfo=UTC))
        row = journal.payment(REF)
        assert row is not None
        assert row.session_started_at == "2025-01-01T12:00:00.000000Z"  # a resume is no new start
        assert row.last_meter_wh == 1200
        assert row.to_restored().last_meter_wh == 1200
    finally:
        journal.close()


def _one_of_each(ref: str) -> dict[type[JournalRecord], JournalRecord]:
    usage = Usage(datetime(2025, 1, 1, tzinfo=UTC)).add(UsageKind.CHARGING, 600, 60_000)
    return {
        RecordCardRead: card_read(ref),
        RecordPaymentDeclined: RecordPaymentDeclined(1, ref, outcome=DeclineOutcome.DECLINED, reason="51"),
        RecordPaymentApproved: approved(ref),
        RecordPaymentIncremented: RecordPaymentIncremented(1, ref, session_id=SID, authorized_minor=7000),
        RecordEnergyOn: energy_on(ref),
        RecordMeter: meter(1600, ref=ref, usage=usage),
        RecordLimitReached: RecordLimitReached(1, ref, limit=LimitKind.COST_CAP),
        RecordStop: RecordStop(1, ref, reason=StopSource.LIMIT, energy_wh=600, cost_minor=24, usage=usage),
        RecordCommitDecided: RecordCommitDecided(
            1, ref, session_id=SID, amount_minor=24, energy_wh=600, cost_minor=24, usage=usage
        ),
        RecordVoidDecided: RecordVoidDecided(1, ref, session_id=SID, usage=usage),
        RecordCommitConfirmed: RecordCommitConfirmed(1, ref, session_id=SID, outcome=SettlementOutcome.OK),
        RecordVoidConfirmed: RecordVoidConfirmed(1, ref, session_id=SID, outcome=SettlementOutcome.NOT_FOUND),
        RecordSessionEnded: RecordSessionEnded(1, ref, energy_wh=600, cost_minor=24, usage=usage),
        RecordPaymentRestored: RecordPaymentRestored(
            1, ref, session_id=SID, plugged=True, energy_on=True, resolution=RestoreResolution.RESUMED
        ),
    }


def test_every_record_type_has_its_own_kind_and_event_row(tmp_path: Path) -> None:
    """One type per fact (style.md "types end to end"): ``KIND`` is the journal's name of the fact
    (the kinds of schema 1, unchanged), and every type is folded and logged with exactly its data."""
    assert set(JOURNAL_RECORDS) == set(get_args(JournalRecord))
    kinds = [t.KIND for t in JOURNAL_RECORDS]
    assert sorted(kinds) == sorted(
        [
            "card_read",
            "payment_declined",
            "payment_approved",
            "payment_incremented",
            "energy_on",
            "meter",
            "limit_reached",
            "stop",
            "commit",
            "void",
            "commit_confirmed",
            "void_confirmed",
            "session_ended",
            "payment_restored",
        ]
    )
    samples = _one_of_each(REF)
    assert set(samples) == set(JOURNAL_RECORDS)
    journal = Journal.open(tmp_path)
    try:
        for record in samples.values():
            journal.record(record)
        events = journal.events(REF)
        assert [e.kind for e in events] == [r.KIND for r in samples.values()]
        for event, record in zip(events, samples.values(), strict=True):
            assert event.data == record_data(record), record.KIND
            assert event.connector_id == 1
    finally:
        journal.close()


def test_record_data_flattens_cards_and_enums_and_leaves_the_usage_out() -> None:
    assert record_data(card_read()) == {
        "session_ref": REF,
        "card_kind": "emv",
        "token": HASH,
        "masked_pan": PAN,
        "brand": "VISA",
        "amount_minor": 5000,
    }
    stop = RecordStop(1, REF, reason=StopSource.UNPLUG, energy_wh=600, cost_minor=24, usage=EMPTY)
    data = record_data(stop)
    assert data == {"session_ref": REF, "reason": "unplug", "energy_wh": 600, "cost_minor": 24}
    assert type(data["reason"]) is str  # the enum's value, not the enum


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


def test_note_updates_its_payment_and_logs_the_event(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        _approve(journal)
        journal.note("commit_sent", 1, REF, {"session_id": SID, "attempt": 3}, disposal_attempts=3)
        journal.note("recovery_list_sessions", None, None, {"open": 0}, disposal_attempts=9)  # no payment
        (sent,) = journal.events(REF, kind="commit_sent")
        assert (sent.payment_id, sent.connector_id, sent.data) == (REF, 1, {"session_id": SID, "attempt": 3})
        (listed,) = journal.events(kind="recovery_list_sessions")
        assert listed.payment_id is None
        row = journal.payment(REF)
        assert row is not None
        assert row.disposal_attempts == 3
        with pytest.raises(JournalError, match="looks like a full PAN"):
            journal.note("recovery_x", 1, REF, {"pan": "4761739001010010"})
        assert journal.events(kind="recovery_x") == []
    finally:
        journal.close()


@pytest.mark.req("ERR-5")
def test_possible_orphan_approval_is_kept_until_cleared(tmp_path: Path) -> None:
    """psp-reference §10.4: a card read without an outcome at a restart may have an approval the
    journal never saw; the row stays a possible orphan until someone accounts for it."""
    journal = Journal.open(tmp_path)
    try:
        journal.record(card_read(REF))
        journal.record(card_read("2-rfid", connector_id=2, card=CardToken(CardKind.RFID, "04A1B2C3")))
        for row in journal.open_payments():
            journal.close_unapproved(row, orphan_suspected=row.card_kind == "emv")
        assert journal.open_payments() == []
        (orphan,) = journal.open_orphans()
        assert orphan.payment_id == REF
        assert (orphan.state, orphan.recovered, orphan.orphan_open) == (PaymentState.FAILED, True, True)
        assert orphan.to_json()["orphan_suspected"] is True
        rfid = journal.payment("2-rfid")
        assert rfid is not None
        assert (rfid.state, rfid.orphan_suspected, rfid.orphan_open) == (PaymentState.FAILED, False, False)
        assert [e.data["orphan_suspected"] for e in journal.events(kind="recovery_unapproved")] == [
            True,
            False,
        ]

        with pytest.raises(KeyError):
            journal.clear_orphan("9-unknown", "cleared_by_operator")
        with pytest.raises(ValueError, match="not an open possible orphan"):
            journal.clear_orphan("2-rfid", "cleared_by_operator")
        cleared = journal.clear_orphan(REF, "cleared_by_operator", note="hold released in the portal")
        assert cleared.orphan_resolution == "cleared_by_operator"
        assert cleared.orphan_cleared_at is not None
        assert (cleared.orphan_suspected, cleared.orphan_open) == (True, False)
        assert journal.open_orphans() == []
        (event,) = journal.events(REF, kind="orphan_cleared")
        assert event.data == {"resolution": "cleared_by_operator", "note": "hold released in the portal"}
        with pytest.raises(ValueError):
            journal.clear_orphan(REF, "cleared_by_operator")  # once
    finally:
        journal.close()


@pytest.mark.req("OPS-2")
def test_req_ops_2_pan_guard_refuses_full_pans(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        with pytest.raises(JournalError) as info:
            journal.record(card_read(card=CardToken(CardKind.EMV, HASH, "4761739001010010", "VISA")))
        assert "4761739001010010" not in str(info.value)
        assert "masked_pan" in str(info.value)
        assert journal.events() == []  # nothing written
        assert journal.payments() == []
        check_no_pan("ok", {"token": HASH, "masked_pan": PAN, "session_ref": REF, "amount": 5000})
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
