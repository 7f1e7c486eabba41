"""Tariffs in the journal (issue 10, journal schema 3; docs/tariff.md "Changing the tariff"), on a real
SQLite file: the station's tariff of the last ``set_tariff`` with the configured tariff it replaced,
each session's tariff by fingerprint, and the start-up decision which tariff applies
(:func:`agent.runtime.recovery.station_tariff_at_start`) — the journaled one, unless the configured
tariff changed since the command (then the configuration wins, for good).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from agent.money.tariff import Tariff, tariff_fingerprint, tariff_from_builtins, tariff_to_builtins
from agent.runtime.recovery import session_tariffs, station_tariff_at_start, stored_tariff
from agent.store.journal import Journal, JournalError, StoredTariff, migrations
from statemachines.effects import RecordCardRead, RecordPaymentApproved
from statemachines.events import CardKind, CardToken, PaymentMethod

CONFIGURED = {
    "currency": "EUR",
    "prices_include_vat": True,
    "vat_rate_percent": "21",
    "energy_per_kwh": "0.39",
}
SET_BY_COMMAND = {**CONFIGURED, "energy_per_kwh": "0.99"}
CHANGED_CONFIG = {**CONFIGURED, "energy_per_kwh": "0.45"}
CARD = CardToken(CardKind.EMV, "0123456789ABCDEF0123456789ABCDEF01234567", "476173******0010", "VISA")


def tariff(builtins: dict[str, object]) -> Tariff:
    return tariff_from_builtins(builtins)


def open_session(journal: Journal, ref: str, stored: StoredTariff) -> None:
    """What the runtime writes in the step that journals a session's first record."""
    with journal.store.atomic():
        journal.record(RecordCardRead(1, ref, CARD, 5000))
        journal.bind_session_tariff(ref, stored)
    with journal.store.atomic():
        journal.record(RecordPaymentApproved(1, ref, PaymentMethod.EMV, "77", 5000))
        journal.bind_session_tariff(ref, stored)


def start_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("tariff at start")]


def test_stored_tariff_is_the_canonical_form_and_its_fingerprint() -> None:
    configured = tariff(CONFIGURED)
    stored = stored_tariff(configured)
    assert stored.fingerprint == tariff_fingerprint(configured)
    assert json.dumps(stored.builtins) == json.dumps(tariff_to_builtins(configured))
    assert json.loads(stored.to_json()) == stored.builtins


def test_migration_3_keeps_a_schema_2_journal_and_its_open_payments(tmp_path: Path) -> None:
    """An open payment journaled by the previous agent names no tariff: it is restored with the
    station's tariff (as before), no error."""
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    known = dict(migrations())
    conn.executescript(known[1] + known[2])
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.executemany("INSERT INTO schema_version VALUES (?)", [(1,), (2,)])
    at = "2026-01-01T12:00:00.000000+00:00"
    conn.execute(
        "INSERT INTO payments (payment_id, connector_id, state, started_at, updated_at) "
        "VALUES ('1-old', 1, 'charging', ?, ?)",
        (at, at),
    )
    conn.commit()
    conn.close()
    journal = Journal.open(tmp_path)
    try:
        assert journal.schema_version == len(migrations())
        (row,) = journal.open_payments()
        assert row.tariff_fingerprint is None
        assert journal.station_tariff() is None
        assert session_tariffs(journal, [row]) == {}
    finally:
        journal.close()


@pytest.mark.req("STOP-8")
def test_a_sessions_tariff_is_kept_once_and_never_changes(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        old, new = stored_tariff(tariff(CONFIGURED)), stored_tariff(tariff(SET_BY_COMMAND))
        open_session(journal, "1-a", old)
        open_session(journal, "1-b", old)
        journal.bind_session_tariff("1-a", new)  # a second bind changes nothing
        assert journal.session_tariff("1-a") == old
        row = journal.payment("1-a")
        assert row is not None
        assert row.tariff_fingerprint == old.fingerprint
        assert row.to_json()["tariff_fingerprint"] == old.fingerprint
        count = journal.store.conn.execute("SELECT COUNT(*) FROM tariffs").fetchone()[0]
        assert count == 2  # old (bound by two sessions) once, and new
        assert journal.tariff(new.fingerprint) == new
        assert journal.tariff("0" * 64) is None
        assert journal.session_tariff("1-nowhere") is None
    finally:
        journal.close()


def test_the_station_tariff_is_written_in_the_callers_transaction(tmp_path: Path) -> None:
    """The runtime writes it in the step that applies the ``TariffChanged``: rolled back with it."""
    journal = Journal.open(tmp_path)
    try:
        new = stored_tariff(tariff(SET_BY_COMMAND))
        configured = tariff_fingerprint(tariff(CONFIGURED))

        def failing_step() -> None:
            with journal.store.atomic():
                journal.set_station_tariff(new, configured_fingerprint=configured)
                raise RuntimeError("the step failed")

        with pytest.raises(RuntimeError):
            failing_step()
        assert journal.station_tariff() is None
        assert journal.events(kind="tariff_set") == []
        with journal.store.atomic():
            journal.set_station_tariff(new, configured_fingerprint=configured)
        row = journal.station_tariff()
        assert row is not None
        assert (row.tariff, row.configured_fingerprint) == (new, configured)
        (event,) = journal.events(kind="tariff_set")
        assert event.data == {"fingerprint": new.fingerprint, "configured_fingerprint": configured}
    finally:
        journal.close()
    again = Journal.open(tmp_path)  # durable: a new process reads it
    try:
        row = again.station_tariff()
        assert row is not None
        assert row.tariff == new
    finally:
        again.close()


def test_a_tariff_that_looks_like_card_data_is_refused(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        suspicious = StoredTariff("f" * 64, {**CONFIGURED, "note": "4111111111111111"})
        with pytest.raises(JournalError, match="looks like a full PAN"):
            journal.set_station_tariff(suspicious, configured_fingerprint="c" * 64)
        assert journal.station_tariff() is None
    finally:
        journal.close()


@pytest.mark.req("ERR-5")
def test_without_a_set_tariff_the_configured_tariff_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal.open(tmp_path)
    try:
        configured = tariff(CONFIGURED)
        with caplog.at_level(logging.INFO, logger="agent.runtime.recovery"):
            current, stored = station_tariff_at_start(journal, configured)
        assert current is configured
        assert stored == stored_tariff(configured)
        (line,) = start_lines(caplog)
        assert "the configured tariff applies" in line.getMessage()
    finally:
        journal.close()


@pytest.mark.req("ERR-5")
def test_a_journaled_set_tariff_applies_after_a_restart_while_the_configuration_is_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal.open(tmp_path)
    try:
        configured = tariff(CONFIGURED)
        new = stored_tariff(tariff(SET_BY_COMMAND))
        journal.set_station_tariff(new, configured_fingerprint=tariff_fingerprint(configured))
    finally:
        journal.close()
    for _ in range(2):  # every restart, as long as the configuration stays
        journal = Journal.open(tmp_path)
        caplog.clear()
        try:
            with caplog.at_level(logging.INFO, logger="agent.runtime.recovery"):
                current, stored = station_tariff_at_start(journal, tariff(CONFIGURED))
            assert stored == new
            assert tariff_to_builtins(current)["energy_per_kwh"] == "0.99"
            (line,) = start_lines(caplog)
            assert line.levelno == logging.INFO
            assert "the tariff of set_tariff applies" in line.getMessage()
        finally:
            journal.close()


@pytest.mark.req("ERR-5")
def test_a_changed_configured_tariff_wins_over_a_journaled_set_tariff_for_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal.open(tmp_path)
    try:
        new = stored_tariff(tariff(SET_BY_COMMAND))
        journal.set_station_tariff(new, configured_fingerprint=tariff_fingerprint(tariff(CONFIGURED)))
        changed = tariff(CHANGED_CONFIG)
        with caplog.at_level(logging.INFO, logger="agent.runtime.recovery"):
            current, stored = station_tariff_at_start(journal, changed)
        assert current is changed
        assert stored == stored_tariff(changed)
        (line,) = start_lines(caplog)
        assert line.levelno == logging.INFO
        assert "configured tariff changed since set_tariff" in line.getMessage()
        assert journal.station_tariff() is None
        (event,) = journal.events(kind="tariff_config_applied")
        assert event.data["replaced_fingerprint"] == new.fingerprint
        # the configuration changed back: the dropped set_tariff does not come back
        current, _ = station_tariff_at_start(journal, tariff(CONFIGURED))
        assert tariff_to_builtins(current)["energy_per_kwh"] == "0.39"
    finally:
        journal.close()


def test_an_unreadable_journaled_tariff_falls_back_to_the_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal.open(tmp_path)
    try:
        configured = tariff(CONFIGURED)
        broken = StoredTariff("e" * 64, {**SET_BY_COMMAND, "vat_rate_percent": "a lot"})
        journal.set_station_tariff(broken, configured_fingerprint=tariff_fingerprint(configured))
        with caplog.at_level(logging.INFO, logger="agent.runtime.recovery"):
            current, _ = station_tariff_at_start(journal, configured)
        assert current is configured
        (line,) = start_lines(caplog)
        assert line.levelno == logging.ERROR
        assert "vat_rate_percent" in line.getMessage()
    finally:
        journal.close()


@pytest.mark.req("STOP-8", "ERR-5")
def test_open_payments_are_restored_with_the_tariff_their_session_started_with(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        old, new = tariff(CONFIGURED), tariff(SET_BY_COMMAND)
        open_session(journal, "1-old", stored_tariff(old))
        open_session(journal, "2-new", stored_tariff(new))
        with journal.store.atomic():
            journal.record(RecordCardRead(3, "3-plain", CARD, 5000))  # journaled without a tariff
        tariffs = session_tariffs(journal, journal.open_payments())
        assert set(tariffs) == {"1-old", "2-new"}
        assert tariff_to_builtins(tariffs["1-old"]) == tariff_to_builtins(old)
        assert tariff_to_builtins(tariffs["2-new"]) == tariff_to_builtins(new)
    finally:
        journal.close()
