"""Group commit (issue 12): one dispatcher turn steps every waiting engine event and stores them in
**one** SQLite transaction, one savepoint per step (DESIGN.md §2 write-ahead rule kept: nothing of a
step is executed before the turn's commit).

Real parts: the in-process agent of :mod:`tests.agent.rig` (PSP simulator, charger simulator, a real
Mosquitto, the journal on disk). The turn is driven directly with :meth:`Runtime._turn` from the
agent's own event loop, so no dispatcher turn can interleave with it.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.runtime.shell import Runtime
from agent.store.db import Store, StoreError
from agent.store.journal import JournalError
from agent.upstream.alarms import JournalTrouble
from statemachines.effects import RecordMeter
from statemachines.events import MeterReading
from tests.agent.rig import Rig, eventually, running_agent
from tests.agent.test_runtime import _tap_and_charge


def _journaled_meter_wh(runtime: Runtime) -> set[int]:
    rows = runtime.store.conn.execute(
        "SELECT json_extract(data, '$.meter_wh') FROM events WHERE kind = 'meter'"
    )
    return {int(r[0]) for r in rows if r[0] is not None}


def _readings(runtime: Runtime, cid: int, n: int) -> list[MeterReading]:
    machine = runtime.station.connectors[cid]
    assert machine.meter_wh is not None
    at = datetime.now(UTC)
    return [MeterReading(cid, at, machine.meter_wh + 10 * (k + 1), 11000.0) for k in range(n)]


@pytest.mark.req("STOP-8")
async def test_one_turn_of_meter_readings_is_one_transaction(apollo_rig: Rig) -> None:
    rig = apollo_rig
    async with running_agent(rig.loaded) as agent:
        runtime = agent.runtime
        await _tap_and_charge(rig, runtime)
        await eventually(lambda: runtime.inbox.empty(), 5)
        commits, appended = runtime.store.commits, runtime.publisher.outbox.stats.appended
        readings = _readings(runtime, 1, 8)
        outcome = runtime._turn(readings)
        assert outcome == [True] * 8
        assert runtime.store.commits == commits + 1  # eight steps, one transaction
        assert {r.energy_wh for r in readings} <= _journaled_meter_wh(runtime)
        assert runtime.publisher.outbox.stats.appended == appended + 8  # one meter message per step


@pytest.mark.req("STOP-8")
async def test_a_step_that_cannot_be_stored_is_dropped_alone(
    apollo_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = apollo_rig
    async with running_agent(rig.loaded) as agent:
        runtime = agent.runtime
        await _tap_and_charge(rig, runtime)
        await eventually(lambda: runtime.inbox.empty(), 5)
        readings = _readings(runtime, 1, 3)
        poisoned = readings[1].energy_wh
        record = runtime.journal.record

        def failing(effect: object, **kwargs: object) -> None:
            if isinstance(effect, RecordMeter) and effect.meter_wh == poisoned:
                # the step's first write went through before the failure: the savepoint takes it back
                runtime.store.conn.execute("INSERT INTO outbox_seq (stream, next) VALUES ('probe', 1)")
                raise JournalError("disk on fire")
            record(effect, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(runtime.journal, "record", failing)
        raised: list[object] = []
        raise_alarm = runtime._raise_alarm

        def recording(alarm: JournalTrouble) -> None:
            raised.append(alarm)
            raise_alarm(alarm)

        monkeypatch.setattr(runtime, "_raise_alarm", recording)
        outbox = runtime.publisher.outbox
        commits, appended, count = runtime.store.commits, outbox.stats.appended, outbox.count()
        outcome = runtime._turn(readings)
        assert outcome == [True, False, True]
        assert runtime.store.commits == commits + 2  # the turn, then the alarm in its own
        stored = _journaled_meter_wh(runtime)
        assert readings[0].energy_wh in stored
        assert readings[2].energy_wh in stored
        assert poisoned not in stored
        probe = runtime.store.conn.execute("SELECT COUNT(*) FROM outbox_seq WHERE stream = 'probe'")
        assert probe.fetchone()[0] == 0
        assert outbox.stats.appended == appended + 3  # two meter messages and the alarm
        in_table = int(runtime.store.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        assert outbox.count() == in_table  # the bound's bookkeeping is back in balance
        assert outbox.count() <= count + 3
        assert [type(a) for a in raised] == [JournalTrouble]


def test_savepoint_rolls_back_its_part_and_its_callbacks_only(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db.sqlite3")
    try:
        store.conn.execute("CREATE TABLE t (v INTEGER)")
        ran: list[str] = []

        def failing_step() -> None:
            with store.savepoint():
                store.conn.execute("INSERT INTO t VALUES (3)")
                store.after_commit(lambda: ran.append("commit-3"))
                store.after_rollback(lambda: ran.append("rollback-3"))
                raise ValueError("step 3 fails")

        with store.atomic():
            store.conn.execute("INSERT INTO t VALUES (1)")
            with store.savepoint():
                store.conn.execute("INSERT INTO t VALUES (2)")
                store.after_commit(lambda: ran.append("commit-2"))
            with pytest.raises(ValueError, match="step 3 fails"):
                failing_step()
            with pytest.raises(StoreError), store.savepoint():
                store.conn.execute("INSERT INTO nowhere VALUES (4)")
            store.after_commit(lambda: ran.append("commit-outer"))
        assert [r[0] for r in store.conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2]
        assert ran == ["rollback-3", "commit-2", "commit-outer"]
        with pytest.raises(StoreError, match="outside of a transaction"), store.savepoint():
            pass
        other = sqlite3.connect(store.path)
        assert [r[0] for r in other.execute("SELECT v FROM t ORDER BY v")] == [1, 2]
        other.close()
    finally:
        store.close()
