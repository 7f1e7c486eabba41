"""The outbox (agent/store/outbox.py; DESIGN.md §5.3): write-ahead, ordered, durable, bounded."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store.db import Store
from agent.store.journal import Journal
from agent.store.outbox import SCHEMA_VERSION, Outbox, OutboxFull
from agent.upstream.contract import Topics
from agent.upstream.publisher import Publisher
from statemachines.effects import RecordMeter
from statemachines.pricing import Usage

_AT = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


class _Client:
    """The publisher's view of the upstream client (retained state only)."""

    is_connected = False

    def set_retained(self, topic: str, payload: bytes) -> None:
        raise AssertionError("no retained state in these tests")


def _payload(n: int) -> bytes:
    return f'{{"msg_id":"m{n}","n":{n}}}'.encode()


@pytest.mark.req("UP-2")
def test_pending_is_in_insertion_order_across_connectors(tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db") as box:
        ids = [
            box.append(f"p/connectors/{n % 3 + 1}/events", _payload(n), kind="event", connector_id=n % 3 + 1)
            for n in range(30)
        ]
        assert ids == sorted(ids)
        rows = box.pending(100)
        assert [r.id for r in rows] == ids
        assert [r.payload for r in rows] == [_payload(n) for n in range(30)]
        assert box.pending(5, after_id=ids[9])[0].id == ids[10]
        assert box.count() == 30


@pytest.mark.req("UP-2")
def test_delete_after_puback_and_ids_are_never_reused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db") as box:
        ids = [box.append("p/receipts", _payload(n), kind="receipt", connector_id=None) for n in range(5)]
        assert box.delete(ids) == 5
        assert box.delete(ids) == 0  # repeated delete is harmless
        assert box.count() == 0
        new = box.append("p/receipts", _payload(9), kind="receipt", connector_id=None)
        assert new > max(ids)  # AUTOINCREMENT: insertion order survives an emptied table


@pytest.mark.req("UP-2", "ERR-6")
def test_rows_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    box = Outbox(path)
    ids = [box.append("p/connectors/1/meter", _payload(n), kind="meter", connector_id=1) for n in range(10)]
    box.delete(ids[:3])
    box.close()
    with Outbox(path) as again:
        assert again.count() == 7
        assert [r.id for r in again.pending(100)] == ids[3:]
        assert again.pending(1)[0].payload == _payload(3)  # same bytes: same msg_id on a repeat
        assert again.schema_version == SCHEMA_VERSION


def test_coexists_with_other_tables_and_uses_wal_full(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")  # like the journal's
    conn.execute("INSERT INTO schema_version VALUES (7)")
    conn.commit()
    conn.close()
    with Outbox(path) as box:
        box.append("p/alarms", b"{}", kind="alarm", connector_id=None)
        assert box._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(7,)]
    assert conn.execute("SELECT MAX(version) FROM outbox_schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db") as box:
        with pytest.raises(ValueError, match="kind"):
            box.append("p/x", b"{}", kind="bogus", connector_id=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="topic"):
            box.append("p/#", b"{}", kind="event", connector_id=None)
        with pytest.raises(TypeError):
            box.append("p/x", "text", kind="event", connector_id=None)  # type: ignore[arg-type]
        assert box.count() == 0


@pytest.mark.req("UP-2")
def test_full_drops_oldest_meter_values_first(tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db", max_messages=10) as box:
        box.append("p/connectors/1/events", _payload(0), kind="event", connector_id=1)
        for n in range(1, 6):
            box.append("p/connectors/1/meter", _payload(n), kind="meter", connector_id=1)
        for n in range(6, 10):
            box.append("p/receipts", _payload(n), kind="receipt", connector_id=None)
        assert box.count() == 10
        box.append("p/connectors/1/events", _payload(10), kind="event", connector_id=1)
        box.append("p/connectors/1/meter", _payload(11), kind="meter", connector_id=1)
        assert box.count() == 10
        assert box.stats.dropped_meter == 2
        kept = [r.payload for r in box.pending(100)]
        assert _payload(1) not in kept
        assert _payload(2) not in kept
        assert kept == [_payload(n) for n in (0, 3, 4, 5, 6, 7, 8, 9, 10, 11)]


@pytest.mark.req("UP-2")
def test_full_outbox_keeps_the_session_stream_and_refuses_reports_and_alarms(tmp_path: Path) -> None:
    """Nothing but meter values may be lost: at the bound with no meter value left, ``event`` and
    ``receipt`` rows are stored beyond the bound (and ``full_alarm`` raised); ``report`` and
    ``alarm`` rows are refused with :class:`OutboxFull`."""
    with Outbox(tmp_path / "agent.db", max_messages=4) as box:
        kinds = ("event", "receipt", "report", "alarm")
        ids = [box.append(f"p/{k}", _payload(n), kind=k, connector_id=None) for n, k in enumerate(kinds)]  # type: ignore[arg-type]
        assert not box.full_alarm
        assert box.full
        ids.append(box.append("p/connectors/1/events", _payload(4), kind="event", connector_id=1))
        assert box.full_alarm
        ids.append(box.append("p/receipts", _payload(5), kind="receipt", connector_id=None))
        assert box.count() == 6  # beyond the bound: the session/payment stream is never lost
        for n, kind in ((6, "report"), (7, "alarm")):
            with pytest.raises(OutboxFull, match="outbox full") as info:
                box.append(f"p/{kind}", _payload(n), kind=kind, connector_id=None)
            assert (info.value.kind, info.value.max_messages) == (kind, 4)
        assert box.stats.refused == 2
        assert box.full_alarm
        assert [r.id for r in box.pending(10)] == ids  # nothing lost, nothing else added
        box.delete(ids[:2])
        assert box.count() == 4
        assert box.full_alarm  # still at the bound
        box.delete(ids[2:3])
        assert not box.full_alarm  # below the bound again
        box.append("p/alarms", _payload(8), kind="alarm", connector_id=None)
        assert box.count_by_kind() == {"alarm": 2, "event": 1, "receipt": 1}


@pytest.mark.req("ERR-6", "UP-2")
def test_a_meter_value_to_a_full_outbox_is_dropped_not_refused(tmp_path: Path) -> None:
    """Meter values are the droppable kind: at the bound with no older meter value to drop, the
    new one is the one dropped; the step that produced it (its journal record) commits."""
    store = Store.open(tmp_path)
    try:
        journal = Journal(store)
        box = Outbox(store, max_messages=1)
        box.append("p/connectors/1/events", _payload(0), kind="event", connector_id=1)
        client = _Client()
        publisher = Publisher(box, client, Topics("ST"), "ST", clock=lambda: _AT)
        value = RecordMeter(
            1, "1-a", meter_wh=1500, energy_wh=500, cost_minor=20, power_w=None, periodic=True, usage=Usage()
        )
        with store.atomic(durable=False):  # the runtime's step: journal record, then its message
            journal.record(value, at=_AT)
            publisher.meter(value, at=_AT)
        assert [e.kind for e in journal.events("1-a")] == ["meter"]
        assert box.count_by_kind() == {"event": 1}
    finally:
        store.close()


def test_append_many_is_atomic(tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db", max_messages=3) as box:
        for n in range(3):
            box.append("p/e", _payload(n), kind="event", connector_id=1)
        with pytest.raises(OutboxFull):  # the event would be stored beyond the bound, the alarm not
            box.append_many(
                [("p/e", _payload(3), "event", 1, 1), ("p/a", _payload(4), "alarm", None, 1)], seq=("s", 7)
            )
        assert box.count() == 3
        assert len(box.pending(10)) == 3
        assert box.next_seq("s") == 0
        box.delete([r.id for r in box.pending(1)])
        ids = box.append_many([("p/e", _payload(n), "event", 1, 1) for n in (5, 6)], seq=("s", 7))
        assert [r.id for r in box.pending(10)][2:] == ids
        assert box.next_seq("s") == 8


def test_appends_join_the_stores_transaction(tmp_path: Path) -> None:
    """In the store's current transaction: counted, announced and visible to others only once it
    commits; gone (counter and sequence included) when it rolls back."""
    store = Store.open(tmp_path)
    try:
        box = Outbox(store, max_messages=3)
        woken: list[int] = []
        box.add_listener(lambda: woken.append(box.count()))
        inside: list[tuple[int, list[int]]] = []

        def failed_step() -> None:
            with store.atomic():
                box.append("p/e", _payload(0), kind="event", connector_id=1, seq=("events:1-a", 0))
                box.append("p/m", _payload(1), kind="meter", connector_id=1)
                inside.append((box.count(), list(woken)))
                raise RuntimeError("the step failed")

        with pytest.raises(RuntimeError):
            failed_step()
        assert inside == [(0, [])]
        assert (box.count(), box.pending(), box.next_seq("events:1-a"), woken) == (0, [], 0, [])
        with store.atomic():
            for n in range(4):  # the bound counts the rows of the open transaction too
                box.append("p/m", _payload(n), kind="meter", connector_id=1)
            other = sqlite3.connect(store.path)
            assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0  # not committed yet
            other.close()
            assert woken == []
        assert box.count() == 3
        assert [r.payload for r in box.pending()] == [_payload(n) for n in (1, 2, 3)]
        assert (len(woken), woken[-1]) == (4, 3)  # after the commit, once per append
        box.close()  # the outbox did not open the store: it leaves it open
        assert store.pragma("journal_mode") == "wal"
    finally:
        store.close()


def test_near_full_flag(tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db", max_messages=10) as box:
        ids = [box.append("p/m", _payload(n), kind="meter", connector_id=1) for n in range(7)]
        assert not box.near_full
        ids.append(box.append("p/m", _payload(7), kind="meter", connector_id=1))
        assert box.near_full  # 8 of 10 = 80 %
        box.delete(ids[:1])
        assert not box.near_full


def test_append_wakes_listeners(tmp_path: Path) -> None:
    calls: list[int] = []
    with Outbox(tmp_path / "agent.db") as box:
        box.add_listener(lambda: calls.append(box.count()))
        box.append("p/e", b"{}", kind="event", connector_id=None)
        assert calls == [1]


_KIND = st.sampled_from(["meter", "meter", "meter", "event", "receipt", "alarm", "report"])
_BOUND = 8


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(_KIND, st.integers(min_value=1, max_value=4)), max_size=60))
def test_bound_order_and_never_losing_the_session_stream(ops: list[str | int]) -> None:
    """Random appends (kinds) and acknowledgements (ints: delete that many of the oldest) against a
    model: insertion order, the oldest meter value dropped first at the bound, events and receipts
    never refused (stored beyond the bound), reports and alarms refused, ``full_alarm``."""
    with tempfile.TemporaryDirectory() as tmp, Outbox(Path(tmp) / "agent.db", max_messages=_BOUND) as box:
        model: list[tuple[int, str]] = []  # (n, kind) of the rows the outbox must hold
        alarm = False
        for n, op in enumerate(ops):
            if isinstance(op, int):
                acked = box.pending(op)
                box.delete([r.id for r in acked])
                del model[: len(acked)]
                alarm = alarm and len(model) >= _BOUND
            elif len(model) < _BOUND:
                box.append("p/t", _payload(n), kind=op, connector_id=1)  # type: ignore[arg-type]
                model.append((n, op))
                alarm = False
            elif meters := [i for i, (_, k) in enumerate(model) if k == "meter"]:
                box.append("p/t", _payload(n), kind=op, connector_id=1)  # type: ignore[arg-type]
                del model[meters[0]]
                model.append((n, op))
                alarm = False
            elif op in ("event", "receipt"):
                box.append("p/t", _payload(n), kind=op, connector_id=1)  # type: ignore[arg-type]
                model.append((n, op))
                alarm = True
            elif op in ("report", "alarm"):
                with pytest.raises(OutboxFull):
                    box.append("p/t", _payload(n), kind=op, connector_id=1)  # type: ignore[arg-type]
                alarm = True
            else:  # a meter value with nothing older to drop: not stored (refused or dropped)
                with contextlib.suppress(OutboxFull):
                    box.append("p/t", _payload(n), kind=op, connector_id=1)  # type: ignore[arg-type]
                alarm = box.full_alarm  # either way the outbox is at its bound: not asserted here
            assert box.count() == len(model)
            assert box.full_alarm is alarm
            if len(model) > _BOUND:  # beyond the bound only with the session stream, never a meter value
                assert all(k != "meter" for _, k in model)
        assert [r.payload for r in box.pending(200)] == [_payload(n) for n, _ in model]


@pytest.mark.req("UP-2")
def test_meter_rows_survive_a_process_crash_and_durable_rows_stay_full(tmp_path: Path) -> None:
    """Meter rows skip their own fsync (latency budget) but survive SIGKILL; other kinds stay FULL."""
    db = tmp_path / "journal.sqlite3"
    script = (
        "import os, signal, sys\n"
        "from agent.store.outbox import Outbox\n"
        f"box = Outbox({str(db)!r})\n"
        "box.append('m/1', b'meter-1', kind='meter', connector_id=1)\n"
        "box.append('e/1', b'event-1', kind='event', connector_id=1)\n"
        "box.append('m/1', b'meter-2', kind='meter', connector_id=1)\n"
        "assert box._conn.execute('PRAGMA synchronous').fetchone()[0] == 2  # FULL again\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    box = Outbox(db)
    try:
        assert [row.payload for row in box.pending(10)] == [b"meter-1", b"event-1", b"meter-2"]
    finally:
        box.close()
