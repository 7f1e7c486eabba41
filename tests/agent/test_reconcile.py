"""Reconciliation report (REC-1, DESIGN.md §5.6): lines, totals, discrepancies, day windows, CLI.

Journals are written through the :class:`agent.store.journal.Journal` API with the records the engine
emits (``statemachines/connector.py``); agent-side notes (``commit_sent``, ``recovery_*``) take the
journal's clock, which the tests pin with :func:`_clock`.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest

import agent.store.journal as journal_mod
from agent.money.reconcile import build_report, day_window, has_discrepancy, render_text
from agent.store.journal import Journal, JournalError
from agent.upstream.contract import ReconciliationReport, encode
from statemachines.effects import (
    JournalRecord,
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordMeter,
    RecordPaymentApproved,
    RecordPaymentDeclined,
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
    PaymentMethod,
    RestoreResolution,
    SettlementOutcome,
    StopSource,
)
from statemachines.pricing import Usage

ROOT = Path(__file__).resolve().parents[2]
AMS = ZoneInfo("Europe/Amsterdam")
DAY = date(2026, 3, 1)  # CET (UTC+1): the local day is 2026-02-28T23:00Z .. 2026-03-01T23:00Z
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HASH = "0123456789ABCDEF0123456789ABCDEF01234567"
PAN = "476173******0010"
CARD = CardToken(CardKind.EMV, HASH, PAN, "VISA")
EMV = PaymentMethod.EMV
OK = SettlementOutcome.OK
EMPTY = Usage()


def _t(hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 3, 1, hh, mm, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = NOW


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """Pin the journal's clock for ``note()``/``disposal_sent()`` (they take no ``at``)."""
    c = _Clock()
    original = journal_mod._utc_iso
    monkeypatch.setattr(journal_mod, "_utc_iso", lambda at=None: original(at or c.now))
    return c


@pytest.fixture
def journal(tmp_path: Path, clock: _Clock) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "state")
    yield j
    j.close()


def _rec(j: Journal, record: JournalRecord, at: datetime) -> None:
    j.record(record, at=at)


def _card(j: Journal, ref: str, at: datetime, conn: int = 1, amount: int = 5000) -> None:
    _rec(j, RecordCardRead(conn, ref, card=CARD, amount_minor=amount), at)


def _approve(j: Journal, ref: str, sid: str, at: datetime, conn: int = 1, auth: int = 5000) -> None:
    _card(j, ref, at, conn, auth)
    _rec(j, RecordPaymentApproved(conn, ref, method=EMV, session_id=sid, authorized_minor=auth), at)


def _charge(j: Journal, ref: str, at: datetime, energy: int, cost: int, conn: int = 1) -> None:
    _rec(j, RecordEnergyOn(conn, ref, method=EMV, meter_wh=100_000, first=True, usage=EMPTY), at)
    _rec(
        j,
        RecordMeter(
            conn,
            ref,
            meter_wh=100_000 + energy,
            energy_wh=energy,
            cost_minor=cost,
            power_w=None,
            periodic=True,
            usage=EMPTY,
        ),
        at + timedelta(minutes=5),
    )
    _rec(
        j,
        RecordStop(conn, ref, reason=StopSource.TAP, energy_wh=energy, cost_minor=cost, usage=EMPTY),
        at + timedelta(minutes=10),
    )


def _commit(
    j: Journal, ref: str, sid: str, at: datetime, amount: int, energy: int, cost: int, *, confirm: bool = True
) -> None:
    _rec(
        j,
        RecordCommitDecided(
            1, ref, session_id=sid, amount_minor=amount, energy_wh=energy, cost_minor=cost, usage=EMPTY
        ),
        at,
    )
    j.disposal_sent(sid)
    if confirm:
        _rec(j, RecordCommitConfirmed(1, ref, session_id=sid, outcome=OK), at + timedelta(seconds=2))


def _paid(
    j: Journal, ref: str, sid: str, at: datetime, energy: int, cost: int, amount: int | None = None
) -> None:
    _approve(j, ref, sid, at)
    _charge(j, ref, at, energy, cost)
    _commit(j, ref, sid, at + timedelta(minutes=11), cost if amount is None else amount, energy, cost)


def _scenario(j: Journal, clock: _Clock) -> None:
    """Every case of the brief on 2026-03-01 (UTC times; local = +1 h)."""
    # I: resumed after a crash, then committed
    _approve(j, "1-I", "1009", _t(4))
    _rec(j, RecordEnergyOn(1, "1-I", method=EMV, meter_wh=0, first=True, usage=EMPTY), _t(4))
    _rec(
        j,
        RecordMeter(
            1, "1-I", meter_wh=5000, energy_wh=5000, cost_minor=200, power_w=None, periodic=True, usage=EMPTY
        ),
        _t(4, 5),
    )
    _rec(
        j,
        RecordPaymentRestored(
            1, "1-I", session_id="1009", plugged=True, energy_on=True, resolution=RestoreResolution.RESUMED
        ),
        _t(4, 20),
    )
    _rec(
        j,
        RecordStop(1, "1-I", reason=StopSource.UNPLUG, energy_wh=7500, cost_minor=300, usage=EMPTY),
        _t(4, 30),
    )
    _commit(j, "1-I", "1009", _t(4, 31), 300, 7500, 300)
    # H: free vend (terminal offline): energy without a payment
    _rec(
        j,
        RecordPaymentApproved(
            2, "2-H", method=PaymentMethod.FREE_VEND, session_id=None, authorized_minor=None
        ),
        _t(5),
    )
    _rec(
        j,
        RecordEnergyOn(2, "2-H", method=PaymentMethod.FREE_VEND, meter_wh=0, first=True, usage=EMPTY),
        _t(5),
    )
    _rec(j, RecordSessionEnded(2, "2-H", energy_wh=3000, cost_minor=120, usage=EMPTY), _t(5, 30))
    # G: cost above the authorization: capped (info)
    _paid(j, "1-G", "1007", _t(6), energy=135_000, cost=5400, amount=5000)
    # F: captured differs from the computed cost
    _paid(j, "1-F", "1006", _t(7), energy=16_000, cost=650, amount=700)
    # A: clean
    _paid(j, "1-A", "1001", _t(8), energy=10_000, cost=400)
    # B: voided (nothing delivered)
    _approve(j, "1-B", "1002", _t(8, 30))
    _rec(j, RecordVoidDecided(1, "1-B", session_id="1002", usage=EMPTY), _t(8, 40))
    j.disposal_sent("1002")
    _rec(j, RecordVoidConfirmed(1, "1-B", session_id="1002", outcome=OK), _t(8, 41))
    # C: declined
    _card(j, "1-C", _t(9))
    _rec(
        j,
        RecordPaymentDeclined(1, "1-C", outcome=DeclineOutcome.DECLINED, reason="not_authorised"),
        _t(9),
    )
    # E: commit sent, never confirmed (90 min before NOW)
    _approve(j, "1-E", "1005", _t(10))
    _charge(j, "1-E", _t(10), 20_000, 800)
    _commit(j, "1-E", "1005", _t(10, 30), 800, 20_000, 800, confirm=False)
    # D: approved 60 min before NOW, nothing since
    _approve(j, "2-D", "1004", _t(11), conn=2)
    # orphan: P6X List Sessions found a session the journal never saw
    clock.now = _t(3)
    j.note("recovery_list_sessions", None, None, {"open": 1, "orphans": 1})
    j.note("recovery_orphan_void", None, None, {"session_id": "99999"})
    j.note("recovery_orphan_voided", None, None, {"session_id": "99999", "outcome": "ok"})
    clock.now = NOW


def _report(tmp_path: Path, day: date = DAY) -> ReconciliationReport:
    return build_report(tmp_path / "state", station_id="ST-1", day=day, tz=AMS, currency="EUR", now=NOW)


@pytest.mark.req("REC-1")
def test_req_rec_1_every_discrepancy_once_with_its_code(
    tmp_path: Path, journal: Journal, clock: _Clock
) -> None:
    _scenario(journal, clock)
    report = _report(tmp_path)
    found = Counter((d.kind, d.session_id or d.terminal_session_id) for d in report.discrepancies)
    assert found == Counter(
        {
            ("undisposed_payment", "2-D"): 1,
            ("commit_unconfirmed", "1-E"): 1,
            ("captured_mismatch", "1-F"): 1,
            ("capped_at_authorized", "1-G"): 1,
            ("free_vend", "2-H"): 1,
            ("recovered_after_crash", "1-I"): 1,
            ("orphan_voided", "99999"): 1,
        }
    )
    by_kind = {d.kind: d for d in report.discrepancies}
    assert by_kind["undisposed_payment"].age_s == 3600
    assert by_kind["undisposed_payment"].severity == "error"
    assert by_kind["commit_unconfirmed"].amount_minor == 800
    assert by_kind["captured_mismatch"].amount_minor == 50
    assert by_kind["capped_at_authorized"].severity == "info"
    assert by_kind["capped_at_authorized"].amount_minor == 400
    assert by_kind["free_vend"].amount_minor == 120
    assert by_kind["orphan_voided"].session_id is None
    assert "outcome ok" in by_kind["orphan_voided"].detail
    assert has_discrepancy(report)


@pytest.mark.req("REC-1")
def test_req_rec_1_lines_and_totals_are_exact(tmp_path: Path, journal: Journal, clock: _Clock) -> None:
    _scenario(journal, clock)
    report = _report(tmp_path)
    assert report.date == "2026-03-01"
    assert report.period_start == "2026-02-28T23:00:00.000Z"
    assert report.period_end == "2026-03-01T23:00:00.000Z"
    lines = {p.session_id: p for p in report.payments}
    assert list(lines) == ["1-I", "2-H", "1-G", "1-F", "1-A", "1-B", "1-C", "1-E", "2-D"]  # by start
    a = lines["1-A"]
    assert (a.status, a.method, a.terminal_session_id, a.masked_pan) == ("captured", "emv", "1001", PAN)
    assert (a.authorized_minor, a.captured_minor, a.voided_minor, a.energy_wh, a.computed_minor) == (
        5000,
        400,
        None,
        10_000,
        400,
    )
    b = lines["1-B"]
    assert (b.status, b.voided, b.voided_minor, b.captured_minor) == ("voided", True, 5000, 0)
    assert lines["1-C"].status == "declined"
    assert lines["1-C"].authorized_minor is None
    assert (lines["1-E"].status, lines["1-E"].captured_minor) == ("undisposed", None)
    assert lines["2-D"].status == "open"
    assert (lines["2-H"].status, lines["2-H"].method, lines["2-H"].masked_pan) == (
        "free_vend",
        "free_vend",
        None,
    )
    assert lines["1-I"].recovery == "resumed"
    assert all(p.recovery is None for ref, p in lines.items() if ref != "1-I")
    t = report.totals
    assert t.payments == 9
    assert t.authorized_minor == 7 * 5000
    assert t.captured_minor == 400 + 700 + 5000 + 300
    assert (t.voided, t.voided_minor) == (1, 5000)
    assert t.energy_wh == 10_000 + 20_000 + 16_000 + 135_000 + 3000 + 7500
    assert t.computed_minor == 400 + 800 + 650 + 5400 + 120 + 300
    assert t.by_method == {"emv": 8, "free_vend": 1}
    assert t.by_status == {
        "captured": 4,
        "declined": 1,
        "free_vend": 1,
        "open": 1,
        "undisposed": 1,
        "voided": 1,
    }
    # the payload is the contract type and round-trips
    assert msgspec.json.decode(encode(report), type=ReconciliationReport) == report


@pytest.mark.req("REC-1")
def test_req_rec_1_clean_day_has_no_discrepancy(tmp_path: Path, journal: Journal) -> None:
    _paid(journal, "1-A", "1001", _t(8), energy=10_000, cost=400)
    report = _report(tmp_path)
    assert report.discrepancies == ()
    assert not has_discrepancy(report)
    assert "discrepancies: none" in render_text(report)


def test_young_open_payments_are_not_yet_discrepancies(tmp_path: Path, journal: Journal) -> None:
    _approve(journal, "1-D", "1004", NOW - timedelta(minutes=5))
    _approve(journal, "2-E", "1005", NOW - timedelta(minutes=20), conn=2)
    _commit(journal, "2-E", "1005", NOW - timedelta(minutes=1), 800, 1000, 800, confirm=False)
    assert _report(tmp_path).discrepancies == ()
    later = build_report(
        tmp_path / "state", station_id="ST-1", day=DAY, tz=AMS, now=NOW + timedelta(minutes=15)
    )
    assert {d.kind for d in later.discrepancies} == {"undisposed_payment", "commit_unconfirmed"}


def test_commit_answered_session_not_found_is_unconfirmed(tmp_path: Path, journal: Journal) -> None:
    _approve(journal, "1-A", "1001", _t(8))
    _charge(journal, "1-A", _t(8), 1000, 40)
    _rec(
        journal,
        RecordCommitDecided(
            1, "1-A", session_id="1001", amount_minor=40, energy_wh=1000, cost_minor=40, usage=EMPTY
        ),
        _t(8, 11),
    )
    _rec(
        journal,
        RecordCommitConfirmed(1, "1-A", session_id="1001", outcome=SettlementOutcome.NOT_FOUND),
        _t(8, 12),
    )
    assert [d.kind for d in _report(tmp_path).discrepancies] == ["commit_unconfirmed"]


@pytest.mark.req("REC-1")
def test_req_rec_1_day_edges_are_local_midnight(tmp_path: Path, journal: Journal) -> None:
    before = datetime(2026, 2, 28, 22, 59, 59, 999_999, tzinfo=UTC)  # 23:59:59.999999 local, Feb 28
    at_midnight = datetime(2026, 2, 28, 23, 0, tzinfo=UTC)  # 00:00 local, Mar 1
    last = datetime(2026, 3, 1, 22, 59, 59, tzinfo=UTC)  # 23:59:59 local, Mar 1
    next_day = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)  # 00:00 local, Mar 2
    _paid(journal, "1-before", "2001", before, energy=1000, cost=40)
    _paid(journal, "1-midnight", "2002", at_midnight, energy=2000, cost=80)
    _paid(journal, "1-last", "2003", last, energy=3000, cost=120)
    _paid(journal, "1-next", "2004", next_day, energy=4000, cost=160)
    later = NOW + timedelta(days=2)
    refs = {
        d: [
            p.session_id
            for p in build_report(tmp_path / "state", station_id="ST-1", day=d, tz=AMS, now=later).payments
        ]
        for d in (date(2026, 2, 28), DAY, date(2026, 3, 2))
    }
    assert refs == {
        date(2026, 2, 28): ["1-before"],
        DAY: ["1-midnight", "1-last"],
        date(2026, 3, 2): ["1-next"],
    }
    # UTC days differ: "1-before" (22:59:59Z) is on Feb 28 in UTC too, "1-next" (23:00Z) on Mar 1
    utc = build_report(tmp_path / "state", station_id="ST-1", day=DAY, tz=UTC, now=later)
    assert [p.session_id for p in utc.payments] == ["1-last", "1-next"]
    # an explicit window is [since, until)
    window = build_report(tmp_path / "state", station_id="ST-1", since=at_midnight, until=last, now=later)
    assert [p.session_id for p in window.payments] == ["1-midnight"]
    assert window.date is None


def test_dst_day_is_23_hours() -> None:
    w = day_window(date(2026, 3, 29), AMS)
    assert w.until - w.since == timedelta(hours=23)


def test_open_payment_from_an_earlier_day_is_carried_over(tmp_path: Path, journal: Journal) -> None:
    _approve(journal, "1-old", "3001", datetime(2026, 2, 27, 10, 0, tzinfo=UTC))
    report = _report(tmp_path)
    assert [p.session_id for p in report.payments] == ["1-old"]
    assert [d.kind for d in report.discrepancies] == ["undisposed_payment"]


def _orphan_kinds(report: ReconciliationReport) -> list[tuple[str, str | None]]:
    return [(d.kind, d.session_id) for d in report.discrepancies]


@pytest.mark.req("REC-1", "ERR-5")
def test_req_rec_1_possible_orphan_approval_until_cleared(tmp_path: Path, journal: Journal) -> None:
    """psp-reference §10.4: an EMV card read without an outcome at a restart may hold an approval
    on the terminal. It is an error in its day's report and in every later day's until an operator
    clears it; an RFID read without an outcome (nothing held on the terminal) is not."""
    _card(journal, "1-O", _t(9, 30))
    rfid = CardToken(CardKind.RFID, "04A1B2C3")
    _rec(journal, RecordCardRead(2, "2-R", card=rfid, amount_minor=0), _t(9, 40))
    for row in journal.open_payments():  # the restart recovery
        journal.close_unapproved(row, orphan_suspected=row.card_kind == "emv")

    report = _report(tmp_path)
    assert _orphan_kinds(report) == [
        ("possible_orphan_approval", "1-O"),
        ("recovered_after_crash", "2-R"),
    ]
    orphan = report.discrepancies[0]
    assert (orphan.severity, orphan.amount_minor, orphan.age_s, orphan.connector_id) == (
        "error",
        5000,
        9000,
        1,
    )
    assert PAN in orphan.detail
    assert "clear_discrepancy" in orphan.detail
    assert has_discrepancy(report)
    assert "possible_orphan_approval" in render_text(report)
    lines = {p.session_id: p for p in report.payments}
    assert (lines["1-O"].status, lines["1-O"].recovery) == ("failed", "ended")
    # not before it happened
    assert _report(tmp_path, date(2026, 2, 28)).payments == ()

    # carried into every later day's report, and only the orphan (a closed payment is not)
    for later in (date(2026, 3, 2), date(2026, 3, 9)):
        carried = build_report(
            tmp_path / "state",
            station_id="ST-1",
            day=later,
            tz=AMS,
            now=NOW + timedelta(days=(later - DAY).days),
        )
        assert [p.session_id for p in carried.payments] == ["1-O"]
        assert _orphan_kinds(carried) == [("possible_orphan_approval", "1-O")]
        assert carried.discrepancies[0].age_s == 9000 + (later - DAY).days * 86_400

    journal.clear_orphan("1-O", "cleared_by_operator", note="hold released in the Payter portal")
    report = _report(tmp_path)
    assert ("possible_orphan_approval", "1-O") not in _orphan_kinds(report)
    assert _orphan_kinds(report) == [("recovered_after_crash", "1-O"), ("recovered_after_crash", "2-R")]
    carried = build_report(tmp_path / "state", station_id="ST-1", day=date(2026, 3, 2), tz=AMS, now=NOW)
    assert (carried.payments, carried.discrepancies) == ((), ())


def test_missing_journal_and_bad_window(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        build_report(tmp_path / "nowhere", station_id="ST-1", day=DAY)
    with pytest.raises(ValueError, match="after"):
        build_report(tmp_path, station_id="ST-1", since=NOW, until=NOW)


def test_text_shows_lines_totals_and_discrepancies(tmp_path: Path, journal: Journal, clock: _Clock) -> None:
    _scenario(journal, clock)
    text = render_text(_report(tmp_path))
    assert "totals: payments 9, authorized 350.00, captured 64.00, voided 1 (50.00)" in text
    assert "computed 76.70" in text
    assert "discrepancies: 7" in text
    assert "orphan_voided" in text
    assert "terminal session 99999" in text
    assert PAN in text
    assert HASH not in text  # the card hash is not report material


# --- CLI ------------------------------------------------------------------------------------------

CONFIG = """\
station_id: ST-1
state_dir: {state_dir}
terminal:
  url: tcp://127.0.0.1:9
  family: p6x
connectors:
  - id: 1
    max_current_a: 32
  - id: 2
    max_current_a: 16
tariff:
  currency: EUR
  timezone: Europe/Amsterdam
  prices_include_vat: true
  vat_rate_percent: "21"
  energy_per_kwh: "0.40"
upstream:
  broker_url: mqtt://127.0.0.1:1883
"""


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "reconcile", "-c", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG.format(state_dir=tmp_path / "state"))
    return path


@pytest.mark.req("REC-1")
def test_req_rec_1_cli_json_text_and_exit_codes(
    tmp_path: Path, journal: Journal, clock: _Clock, config: Path
) -> None:
    _scenario(journal, clock)
    proc = _cli(config, "--date", "2026-03-01", "--json")
    assert proc.returncode == 0, proc.stderr
    report = msgspec.json.decode(proc.stdout, type=ReconciliationReport)
    assert (report.station_id, report.trigger, report.date, report.currency) == (
        "ST-1",
        "cli",
        "2026-03-01",
        "EUR",
    )
    assert report.period_start == "2026-02-28T23:00:00.000Z"  # the tariff's timezone
    assert report.totals.payments == 9
    assert {d.kind for d in report.discrepancies} >= {
        "undisposed_payment",
        "commit_unconfirmed",
        "orphan_voided",
    }

    text = _cli(config, "--date", "2026-03-01")
    assert text.returncode == 0, text.stderr
    assert "totals: payments 9, authorized 350.00, captured 64.00" in text.stdout

    assert _cli(config, "--date", "2026-03-01", "--fail-on-discrepancy").returncode == 3
    window = _cli(
        config, "--since", "2026-03-01T08:00Z", "--until", "2026-03-01T08:20Z", "--fail-on-discrepancy"
    )
    assert window.returncode == 0, window.stderr
    assert "1-A" in window.stdout
    assert "discrepancies: none" in window.stdout
    today = _cli(config)
    assert today.returncode == 0, today.stderr


def test_cli_errors_exit_2(tmp_path: Path, config: Path) -> None:
    missing = _cli(config, "--date", "2026-03-01")
    assert missing.returncode == 2
    assert "no journal" in missing.stderr
    Journal.open(tmp_path / "state").close()
    bad = _cli(config, "--date", "2026-02-30")
    assert bad.returncode == 2
    assert "YYYY-MM-DD" in bad.stderr
    naive = _cli(config, "--since", "2026-03-01T00:00", "--until", "2026-03-02T00:00Z")
    assert naive.returncode == 2
    assert "UTC offset" in naive.stderr
    half = _cli(config, "--since", "2026-03-01T00:00Z")
    assert half.returncode == 2
    assert "go together" in half.stderr
