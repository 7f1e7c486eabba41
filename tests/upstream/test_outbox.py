"""The outbox (agent/store/outbox.py; DESIGN.md §5.3): write-ahead, ordered, durable, bounded."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store.outbox import SCHEMA_VERSION, Outbox, OutboxFull


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
def test_full_of_events_refuses_with_outbox_full_and_alarm(tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db", max_messages=4) as box:
        kinds = ("event", "receipt", "report", "alarm")
        ids = [box.append(f"p/{k}", _payload(n), kind=k, connector_id=None) for n, k in enumerate(kinds)]  # type: ignore[arg-type]
        assert not box.full_alarm
        with pytest.raises(OutboxFull, match="outbox full") as info:
            box.append("p/connectors/1/events", _payload(9), kind="event", connector_id=1)
        assert info.value.kind == "event"
        assert box.full_alarm
        with pytest.raises(OutboxFull):
            box.append("p/connectors/1/meter", _payload(10), kind="meter", connector_id=1)
        assert [r.id for r in box.pending(10)] == ids  # nothing lost, nothing added
        box.delete(ids[:1])
        assert not box.full_alarm
        box.append("p/connectors/1/events", _payload(11), kind="event", connector_id=1)


def test_append_many_is_atomic(tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db", max_messages=3) as box:
        box.append("p/e", _payload(0), kind="event", connector_id=1)
        with pytest.raises(OutboxFull):
            box.append_many([("p/e", _payload(n), "event", 1, 1) for n in range(1, 4)])
        assert box.count() == 1
        ids = box.append_many([("p/e", _payload(n), "event", 1, 1) for n in range(1, 3)])
        assert [r.id for r in box.pending(10)][1:] == ids


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


_KIND = st.sampled_from(["meter", "meter", "meter", "event", "receipt", "alarm"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_KIND, st.integers(min_value=1, max_value=4)), max_size=60))
def test_bound_order_and_never_dropping_events(ops: list[str | int]) -> None:
    """Random appends (kinds) and acknowledgements (ints: delete that many of the oldest)."""
    with tempfile.TemporaryDirectory() as tmp, Outbox(Path(tmp) / "agent.db", max_messages=8) as box:
        model: list[tuple[int, str]] = []  # (n, kind) of the rows the outbox must hold
        for n, op in enumerate(ops):
            if isinstance(op, int):
                acked = box.pending(op)
                box.delete([r.id for r in acked])
                del model[: len(acked)]
                continue
            if len(model) >= 8:
                meters = [i for i, (_, k) in enumerate(model) if k == "meter"]
                if not meters:
                    with pytest.raises(OutboxFull):
                        box.append("p/t", _payload(n), kind=op, connector_id=1)  # type: ignore[arg-type]
                    continue
                del model[meters[0]]
            box.append("p/t", _payload(n), kind=op, connector_id=1)  # type: ignore[arg-type]
            model.append((n, op))
            assert box.count() <= 8
        assert [r.payload for r in box.pending(100)] == [_payload(n) for n, _ in model]


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
