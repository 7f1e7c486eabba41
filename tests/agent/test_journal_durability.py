"""Journal durability levels (DESIGN.md §2 write-ahead rule, docs/runtime.md "Journal durability").

Every money-relevant fact is committed with ``synchronous=FULL`` (fsync before ``record`` returns);
only a periodic meter value of a charging session is committed with ``synchronous=NORMAL`` (in the
WAL, i.e. in the OS: it survives a crash or SIGKILL of the process, not necessarily a power cut).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from agent.store.journal import Journal, read_payments
from statemachines.effects import JournalRecord
from tests.agent.test_journal import REF, SID, _approve

# the money-relevant record kinds of docs/state-machines.md that the runtime journals
MONEY_FACTS = ("card_read", "payment_approved", "energy_on", "stop", "commit", "commit_confirmed")


def _trace(journal: Journal) -> list[str]:
    statements: list[str] = []
    journal._conn.set_trace_callback(statements.append)
    return statements


def _charging(journal: Journal) -> None:
    _approve(journal)
    journal.record(JournalRecord("energy_on", 1, {"session_ref": REF, "meter_wh": 1000}))


def _meter(journal: Journal, wh: int) -> None:
    journal.record(
        JournalRecord(
            "meter", 1, {"session_ref": REF, "meter_wh": wh, "energy_wh": wh - 1000, "cost_minor": 1}
        )
    )


def _sync_levels(statements: list[str]) -> list[str]:
    return [s.split("=")[1] for s in statements if s.upper().startswith("PRAGMA SYNCHRONOUS=")]


def test_money_facts_are_committed_with_full(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        statements = _trace(journal)
        _charging(journal)
        _meter(journal, 1500)  # periodic: NORMAL, then back to FULL
        statements.clear()
        journal.record(JournalRecord("stop", 1, {"session_ref": REF, "reason": "unplug", "energy_wh": 600}))
        _meter(journal, 1600)  # the final meter value (payment stopping) is money-relevant
        journal.record(
            JournalRecord("commit", 1, {"session_ref": REF, "session_id": SID, "amount_minor": 24})
        )
        journal.disposal_sent(SID)
        journal.record(JournalRecord("commit_confirmed", 1, {"session_ref": REF, "session_id": SID}))
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
        statements = _trace(journal)
        _meter(journal, 1500)
        assert _sync_levels(statements) == ["NORMAL", "FULL"]  # around the meter transaction only
        assert statements.index("COMMIT") < statements.index("PRAGMA synchronous=FULL")
        assert journal.pragma("synchronous") == 2
        assert journal.unsynced_meter_commits == 1
        journal.record(JournalRecord("limit_reached", 1, {"session_ref": REF, "limit": "energy"}))
        assert journal.unsynced_meter_commits == 0  # the next FULL commit fsynced the WAL with it
    finally:
        journal.close()


def test_meter_value_is_fsynced_when_the_last_full_commit_is_too_old(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, meter_sync_interval_s=0.0)  # every meter value is "too late"
    try:
        _charging(journal)
        statements = _trace(journal)
        _meter(journal, 1500)
        _meter(journal, 1600)
        assert _sync_levels(statements) == []
        assert journal.unsynced_meter_commits == 0
    finally:
        journal.close()


def test_periodic_meter_value_survives_sigkill_of_the_writer(tmp_path: Path) -> None:
    """NORMAL in WAL mode: the commit is in the OS when ``record`` returns; a killed process loses
    nothing (only a power cut could lose it, docs/runtime.md)."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from agent.store.journal import Journal
        from statemachines.effects import JournalRecord
        from tests.agent.test_journal import REF
        from tests.agent.test_journal_durability import _charging, _meter
        journal = Journal.open(sys.argv[1])
        _charging(journal)
        _meter(journal, 4321)
        assert journal.unsynced_meter_commits == 1, "the meter value was fsynced: test is void"
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no atexit
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, cwd=root, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "journal.sqlite3-wal").stat().st_size > 0  # never checkpointed
    rows = read_payments(tmp_path, open_only=True)
    assert [(r.state, r.last_meter_wh, r.energy_wh) for r in rows] == [("charging", 4321, 3321)]
