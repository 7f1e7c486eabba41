"""Journal durability and step atomicity (DESIGN.md §2 write-ahead rule, docs/runtime.md "Journal
durability", integrity issue B).

Every transaction that holds a money-relevant fact is committed with ``synchronous=FULL`` (fsync
before the outermost :meth:`Store.atomic` returns); a transaction opened with ``durable=False`` (a
step that wrote only periodic meter values) is committed with ``synchronous=NORMAL`` (in the WAL,
i.e. in the OS: it survives a crash or SIGKILL of the process, not necessarily a power cut) unless
the last FULL commit is older than ``meter_sync_interval_s``. A step's journal records and its
outbox rows are one transaction: after any crash both exist or neither does. The crash point
``journal:<KIND>`` is reached once the record is committed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import crashpoints
from agent.store.db import Store
from agent.store.journal import Journal, JournalError, PaymentState, read_payments
from agent.store.outbox import Outbox, OutboxError, OutboxFull
from statemachines.effects import (
    LimitKind,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordLimitReached,
    RecordStop,
)
from statemachines.events import SettlementOutcome, StopSource
from tests.agent.test_journal import EMPTY, REF, SID, _approve, approved, card_read, energy_on, meter

ROOT = Path(__file__).resolve().parents[2]
# the money-relevant record kinds of docs/state-machines.md that the runtime journals
MONEY_FACTS = ("card_read", "payment_approved", "energy_on", "stop", "commit", "commit_confirmed")
EVENT_TOPIC = "evpay/v1/ST/connectors/1/events"


def _trace(store: Store) -> list[str]:
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    return statements


def _charging(journal: Journal) -> None:
    _approve(journal)
    journal.record(energy_on())


def _meter(journal: Journal, wh: int, *, periodic: bool = True) -> None:
    journal.record(meter(wh, periodic=periodic))


def _step(store: Store, *writes: Callable[[], object], fail: Exception | None = None) -> None:
    """One engine step as the runtime stores it: ``writes`` in one transaction; ``fail`` raised
    inside it after them (an effect that failed)."""
    with store.atomic():
        for write in writes:
            write()
        if fail is not None:
            raise fail


def _sync_levels(statements: list[str]) -> list[str]:
    return [s.split("=")[1] for s in statements if s.upper().startswith("PRAGMA SYNCHRONOUS=")]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path)
    yield s
    s.close()


# --------------------------------------------------------------------------------------------------
# durability levels
# --------------------------------------------------------------------------------------------------


def test_money_facts_are_committed_with_full(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        statements = _trace(journal.store)
        _charging(journal)
        _meter(journal, 1500)  # periodic: NORMAL, then back to FULL
        statements.clear()
        journal.record(
            RecordStop(1, REF, reason=StopSource.UNPLUG, energy_wh=600, cost_minor=24, usage=EMPTY)
        )
        _meter(journal, 1600, periodic=False)  # the final meter value (payment stopping) is money-relevant
        journal.record(
            RecordCommitDecided(
                1, REF, session_id=SID, amount_minor=24, energy_wh=600, cost_minor=24, usage=EMPTY
            )
        )
        journal.disposal_sent(SID)
        journal.record(RecordCommitConfirmed(1, REF, session_id=SID, outcome=SettlementOutcome.OK))
        assert _sync_levels(statements) == []  # never switched away from FULL
        assert statements.count("COMMIT") == 5
        assert journal.pragma("synchronous") == 2  # FULL
        assert journal.unsynced_meter_commits == 0
        kinds = {e.kind for e in journal.events()}
        assert set(MONEY_FACTS) <= kinds
    finally:
        journal.close()


def test_periodic_meter_value_does_not_wait_for_its_fsync(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        _charging(journal)
        statements = _trace(journal.store)
        _meter(journal, 1500)
        assert _sync_levels(statements) == ["NORMAL", "FULL"]  # around the meter transaction only
        assert statements.index("COMMIT") < statements.index("PRAGMA synchronous=FULL")
        assert journal.pragma("synchronous") == 2
        assert journal.unsynced_meter_commits == 1
        journal.record(RecordLimitReached(1, REF, limit=LimitKind.ENERGY))
        assert journal.unsynced_meter_commits == 0  # the next FULL commit fsynced the WAL with it
    finally:
        journal.close()


def test_meter_value_is_fsynced_when_the_last_full_commit_is_too_old(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, meter_sync_interval_s=0.0)  # every meter value is "too late"
    try:
        _charging(journal)
        statements = _trace(journal.store)
        _meter(journal, 1500)
        _meter(journal, 1600)
        assert _sync_levels(statements) == []
        assert journal.unsynced_meter_commits == 0
    finally:
        journal.close()


def test_the_meter_sync_bound_follows_the_injected_clock(tmp_path: Path) -> None:
    """At most ``meter_sync_interval_s`` between FULL commits, whatever the meter rate (no sleep:
    the store's monotonic clock is injected)."""
    path = tmp_path / "journal.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    now = [0.0]
    store = Store(conn, path, meter_sync_interval_s=5.0, monotonic=lambda: now[0])
    try:
        journal = Journal(store)
        _charging(journal)  # FULL at t=0
        levels: list[tuple[float, int]] = []
        for t in (1.0, 4.9, 5.0, 6.0, 9.9, 10.0):
            now[0] = t
            _meter(journal, 1000 + int(t * 100))
            levels.append((t, store.unsynced_commits))
        assert levels == [(1.0, 1), (4.9, 2), (5.0, 0), (6.0, 1), (9.9, 2), (10.0, 0)]
    finally:
        store.close()


def test_a_step_of_periodic_meter_values_commits_once_without_its_own_fsync(store: Store) -> None:
    journal, outbox = Journal(store), Outbox(store)
    _charging(journal)
    statements = _trace(store)
    with store.atomic(durable=False):  # the runtime: the step stored only periodic meter values
        journal.record(meter(1500))
        outbox.append("evpay/v1/ST/connectors/1/meter", b"{}", kind="meter", connector_id=1)
    assert statements.count("COMMIT") == 1
    assert _sync_levels(statements) == ["NORMAL", "FULL"]
    assert store.unsynced_commits == 1
    assert store.pragma("synchronous") == 2


def test_the_outermost_transaction_decides_durability(store: Store) -> None:
    journal, outbox = Journal(store), Outbox(store)
    _charging(journal)
    statements = _trace(store)
    with store.atomic():  # a step with a money fact: FULL, although the meter value alone would not be
        journal.record(meter(1500))
        with store.atomic(durable=False):  # joins the outer transaction
            outbox.append("evpay/v1/ST/connectors/1/meter", b"{}", kind="meter", connector_id=1)
        journal.record(RecordLimitReached(1, REF, limit=LimitKind.ENERGY))
    assert statements.count("COMMIT") == 1
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert _sync_levels(statements) == []
    assert store.unsynced_commits == 0
    assert store.commits >= 1


def _run_writer(script: str, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(crashpoints.ENV_VAR, None)
    if crash_at is not None:
        env[crashpoints.ENV_VAR] = crash_at
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_periodic_meter_value_survives_sigkill_of_the_writer(tmp_path: Path) -> None:
    """NORMAL in WAL mode: the commit is in the OS when ``record`` returns; a killed process loses
    nothing (only a power cut could lose it, docs/runtime.md)."""
    script = """
        import os, signal, sys
        from agent.store.journal import Journal
        from tests.agent.test_journal_durability import _charging, _meter
        journal = Journal.open(sys.argv[1])
        _charging(journal)
        _meter(journal, 4321)
        assert journal.unsynced_meter_commits == 1, "the meter value was fsynced: test is void"
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no atexit
        """
    proc = _run_writer(script, str(tmp_path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "journal.sqlite3-wal").stat().st_size > 0  # never checkpointed
    rows = read_payments(tmp_path, open_only=True)
    assert [(r.state, r.last_meter_wh, r.energy_wh) for r in rows] == [("charging", 4321, 3321)]


# --------------------------------------------------------------------------------------------------
# crash points ``journal:<KIND>``: reached after the commit
# --------------------------------------------------------------------------------------------------


class _Seen:
    """A stand-in for :func:`agent.crashpoints.reached` that looks at the database from another
    connection at the moment the point is reached: what a process killed there would leave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.points: list[tuple[str, list[str], int]] = []

    def __call__(self, point: str) -> None:
        other = sqlite3.connect(self.path)
        try:
            kinds = [r[0] for r in other.execute("SELECT kind FROM events ORDER BY id")]
            tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            rows = other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] if "outbox" in tables else 0
        finally:
            other.close()
        self.points.append((point, kinds, rows))


def test_the_crash_point_is_reached_once_the_record_is_committed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _Seen(store.path)
    monkeypatch.setattr(crashpoints, "reached", seen)
    journal, outbox = Journal(store), Outbox(store)
    journal.record(card_read())  # a transaction of its own
    assert seen.points == [("journal:card_read", ["card_read"], 0)]
    seen.points.clear()

    with store.atomic():  # a step: the point waits for the step's commit, outbox row included
        journal.record(approved())
        outbox.append(EVENT_TOPIC, b'{"event":"payment.authorized"}', kind="event", connector_id=1)
        assert seen.points == []
    assert seen.points == [("journal:payment_approved", ["card_read", "payment_approved"], 1)]
    seen.points.clear()

    with pytest.raises(RuntimeError):
        _step(store, lambda: journal.record(energy_on()), fail=RuntimeError("the step failed"))
    assert seen.points == []  # a rolled-back record reaches no crash point


@pytest.mark.req("ERR-5")
def test_a_writer_killed_at_the_crash_point_keeps_the_record(tmp_path: Path) -> None:
    script = """
        import sys
        from agent.store.journal import Journal
        from tests.agent.test_journal import card_read, approved
        journal = Journal.open(sys.argv[1])
        journal.record(card_read())
        journal.record(approved())
        sys.exit("not killed at journal:payment_approved")
        """
    proc = _run_writer(script, str(tmp_path), crash_at="journal:payment_approved")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (row,) = read_payments(tmp_path)
    assert (row.state, row.terminal_session_id) == (PaymentState.APPROVED, SID)


def test_a_writer_killed_at_the_crash_point_of_a_step_keeps_the_whole_step(tmp_path: Path) -> None:
    """The point of the step's first record is reached after the step's commit: the outbox row
    appended *after* that record in the same step is there too."""
    script = """
        import sys
        from agent.store.db import Store
        from agent.store.journal import Journal
        from agent.store.outbox import Outbox
        from tests.agent.test_journal import card_read, approved
        store = Store.open(sys.argv[1])
        journal, outbox = Journal(store), Outbox(store)
        journal.record(card_read())
        with store.atomic():
            journal.record(approved())
            outbox.append("evpay/v1/ST/connectors/1/events", b"authorized", kind="event", connector_id=1)
        sys.exit("not killed at journal:payment_approved")
        """
    proc = _run_writer(script, str(tmp_path), crash_at="journal:payment_approved")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = Store.open(tmp_path)
    try:
        journal, outbox = Journal(store), Outbox(store)
        assert [e.kind for e in journal.events(REF)] == ["card_read", "payment_approved"]
        assert [r.payload for r in outbox.pending()] == [b"authorized"]
    finally:
        store.close()


# --------------------------------------------------------------------------------------------------
# one step, one transaction: the journal record and its outbox rows together or not at all
# --------------------------------------------------------------------------------------------------


def _step_rows(store: Store) -> tuple[list[str], list[bytes], int]:
    """(event kinds of REF, outbox payloads, the events stream's next seq) as committed."""
    other = sqlite3.connect(store.path)
    try:
        kinds = [
            r[0] for r in other.execute("SELECT kind FROM events WHERE payment_id = ? ORDER BY id", (REF,))
        ]
        payloads = [bytes(r[0]) for r in other.execute("SELECT payload FROM outbox ORDER BY id")]
        seq = other.execute("SELECT next FROM outbox_seq WHERE stream = ?", (f"events:{REF}",)).fetchone()
    finally:
        other.close()
    return kinds, payloads, 0 if seq is None else int(seq[0])


def test_a_step_commits_its_record_and_its_outbox_row_together(store: Store) -> None:
    journal, outbox = Journal(store), Outbox(store)
    journal.record(card_read())
    with store.atomic():
        journal.record(approved())
        outbox.append(EVENT_TOPIC, b"authorized", kind="event", connector_id=1, seq=(f"events:{REF}", 0))
    assert _step_rows(store) == (["card_read", "payment_approved"], [b"authorized"], 1)
    assert outbox.count() == 1


def test_a_failed_step_leaves_neither_its_record_nor_its_outbox_row(store: Store) -> None:
    journal, outbox = Journal(store), Outbox(store)
    journal.record(card_read())
    woken: list[int] = []
    outbox.add_listener(lambda: woken.append(outbox.count()))
    counted: list[int] = []
    with pytest.raises(RuntimeError, match="effect failed"):
        _step(
            store,
            lambda: journal.record(approved()),
            lambda: outbox.append(
                EVENT_TOPIC, b"authorized", kind="event", connector_id=1, seq=(f"events:{REF}", 0)
            ),
            lambda: counted.append(outbox.count()),
            fail=RuntimeError("effect failed"),
        )
    assert counted == [0]  # nothing counted before the commit
    assert _step_rows(store) == (["card_read"], [], 0)
    row = journal.payment(REF)
    assert row is not None
    assert row.state is PaymentState.AUTHORIZING
    assert (outbox.count(), outbox.next_seq(f"events:{REF}"), woken) == (0, 0, [])
    # the store is usable afterwards and the counters are right
    with store.atomic():
        journal.record(approved())
        outbox.append(EVENT_TOPIC, b"authorized", kind="event", connector_id=1, seq=(f"events:{REF}", 0))
    assert _step_rows(store) == (["card_read", "payment_approved"], [b"authorized"], 1)
    assert (outbox.count(), woken) == (1, [1])


def test_a_refused_outbox_row_rolls_back_the_steps_journal_records(store: Store) -> None:
    journal, outbox = Journal(store), Outbox(store, max_messages=1)
    outbox.append("evpay/v1/ST/alarms", b"alarm-1", kind="alarm", connector_id=None)
    journal.record(card_read())
    with pytest.raises(OutboxFull):
        _step(
            store,
            lambda: journal.record(approved()),
            lambda: outbox.append("evpay/v1/ST/alarms", b"alarm-2", kind="alarm", connector_id=None),
        )
    assert _step_rows(store) == (["card_read"], [b"alarm-1"], 0)
    assert outbox.count() == 1


def test_a_database_error_in_the_outbox_rolls_back_the_steps_journal_records(store: Store) -> None:
    journal, outbox = Journal(store), Outbox(store)
    journal.record(card_read())
    store.conn.execute(  # an I/O error, disk full… at the outbox write
        "CREATE TRIGGER outbox_broken BEFORE INSERT ON outbox "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    with pytest.raises(OutboxError, match="disk I/O error"):
        _step(
            store,
            lambda: journal.record(approved()),
            lambda: outbox.append(EVENT_TOPIC, b"authorized", kind="event", connector_id=1),
        )
    assert _step_rows(store) == (["card_read"], [], 0)
    store.conn.execute("DROP TRIGGER outbox_broken")
    # and the other way round: a journal write that fails takes the step's outbox rows with it
    with pytest.raises(JournalError):
        _step(
            store,
            lambda: outbox.append(EVENT_TOPIC, b"authorized", kind="event", connector_id=1),
            lambda: journal.record(approved(sid="4761739001010010")),  # refused: looks like a full PAN
        )
    assert _step_rows(store) == (["card_read"], [], 0)
    assert outbox.count() == 0


@pytest.mark.req("ERR-5")
def test_a_writer_killed_in_the_middle_of_a_step_leaves_neither(tmp_path: Path) -> None:
    """SIGKILL inside the step's transaction, after its journal record and its outbox row were
    written (and, with a 4 MB payload, spilled into the WAL file): after reopening, neither is
    there; what was committed before is."""
    script = """
        import os, signal, sys
        from pathlib import Path
        from agent.store.db import Store
        from agent.store.journal import Journal
        from agent.store.outbox import Outbox
        from tests.agent.test_journal import REF, card_read, approved
        store = Store.open(sys.argv[1])
        journal, outbox = Journal(store), Outbox(store)
        journal.record(card_read())
        wal = Path(store.path).with_name(Path(store.path).name + "-wal")
        before = wal.stat().st_size
        with store.atomic():
            journal.record(approved())
            big = b"x" * 4_000_000
            outbox.append("t/events", big, kind="event", connector_id=1, seq=("events:" + REF, 0))
            seen = store.conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'payment_approved'")
            assert seen.fetchone()[0] == 1 and len(outbox.pending()) == 1, "not written: test is void"
            assert wal.stat().st_size > before + 1_000_000, "nothing reached the WAL: test is void"
            os.kill(os.getpid(), signal.SIGKILL)
        """
    proc = _run_writer(script, str(tmp_path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = Store.open(tmp_path)
    try:
        journal, outbox = Journal(store), Outbox(store)
        assert [e.kind for e in journal.events()] == ["card_read"]
        row = journal.payment(REF)
        assert row is not None
        assert row.state is PaymentState.AUTHORIZING
        assert (outbox.count(), outbox.pending(), outbox.next_seq(f"events:{REF}")) == (0, [], 0)
    finally:
        store.close()
