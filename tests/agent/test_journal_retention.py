"""The journal's retention rule (issue 12): settled sessions older than the retention are deleted in
bounded batches; open payments, possible orphan approvals and recent sessions never are."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config.schema import MIN_RETENTION_DAYS, JournalConfig
from agent.store.journal import PRUNE_BATCH, Journal
from statemachines.effects import (
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordPaymentApproved,
)
from statemachines.events import CardKind, CardToken, PaymentMethod, SettlementOutcome
from statemachines.pricing import Usage
from tests.agent.rig import Rig, eventually, running_agent

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
CARD = CardToken(CardKind.EMV, "A" * 40, "476173******0010", None)


def _settled(journal: Journal, ref: str, sid: str, at: datetime) -> None:
    journal.record(RecordCardRead(1, ref, card=CARD, amount_minor=5000), at=at)
    journal.record(
        RecordPaymentApproved(1, ref, method=PaymentMethod.EMV, session_id=sid, authorized_minor=5000), at=at
    )
    usage = Usage(started_at=at)
    journal.record(RecordCommitDecided(1, ref, sid, 100, 1000, 100, usage), at=at)
    journal.record(RecordCommitConfirmed(1, ref, sid, SettlementOutcome.OK), at=at + timedelta(seconds=1))


def _approved_only(journal: Journal, ref: str, sid: str, at: datetime) -> None:
    journal.record(RecordCardRead(1, ref, card=CARD, amount_minor=5000), at=at)
    journal.record(
        RecordPaymentApproved(1, ref, method=PaymentMethod.EMV, session_id=sid, authorized_minor=5000), at=at
    )


def test_prune_deletes_only_settled_sessions_older_than_the_cutoff_in_bounded_batches(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        old = NOW - timedelta(days=500)
        for n in range(5):
            _settled(journal, f"old-{n}", f"{n}", old + timedelta(minutes=n))
        _approved_only(journal, "open-old", "90", old)  # approved, never disposed: open
        journal.record(RecordCardRead(1, "orphan-old", card=CARD, amount_minor=5000), at=old)
        journal.close_unapproved(journal.payment("orphan-old"), orphan_suspected=True)  # type: ignore[arg-type]
        _settled(journal, "recent", "91", NOW - timedelta(days=10))
        cutoff = NOW - timedelta(days=400)

        first = journal.prune(cutoff, limit=3)
        assert (first.payments, first.more) == (3, True)
        second = journal.prune(cutoff, limit=3)
        assert (second.payments, second.more) == (2, False)
        assert journal.prune(cutoff, limit=3).payments == 0

        left = {p.payment_id for p in journal.payments(limit=100)}
        assert left == {"open-old", "orphan-old", "recent"}
        assert [r.payment_id for r in journal.open_payments()] == ["open-old"]
        assert [r.payment_id for r in journal.open_orphans()] == ["orphan-old"]
        assert not [e for e in journal.events() if e.payment_id and e.payment_id.startswith("old-")]
        assert journal.events(payment_id="recent")  # kept with its session
    finally:
        journal.close()


def test_prune_uses_the_index_not_a_scan(tmp_path: Path) -> None:
    Journal.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT payment_id FROM payments WHERE ended_at IS NOT NULL AND ended_at < ? "
        "ORDER BY ended_at LIMIT 5",
        ("2026",),
    ).fetchall()
    assert any("payments_ended" in str(row[-1]) for row in plan), plan


def test_the_retention_is_configurable_but_never_below_a_month() -> None:
    import msgspec

    assert JournalConfig().retention_days == 400
    assert msgspec.convert({"retention_days": 90}, JournalConfig).retention_days == 90
    with pytest.raises(msgspec.ValidationError, match="retention_days"):
        msgspec.convert({"retention_days": MIN_RETENTION_DAYS - 1}, JournalConfig)


async def test_the_running_agent_prunes_expired_sessions_after_its_recovery(apollo_rig: Rig) -> None:
    """Through the real in-process agent: a journal holding sessions settled 500 days ago (and one
    10 days ago, and one approval still open) is pruned after the start, in batches, by the
    dispatcher; the open approval is restored and stays, the recent session stays."""
    rig = apollo_rig
    state_dir = Path(rig.loaded.config.state_dir)
    now = datetime.now(UTC)
    journal = Journal.open(state_dir)
    try:
        for n in range(PRUNE_BATCH + 5):  # more than one batch
            _settled(journal, f"old-{n}", f"{1000 + n}", now - timedelta(days=500, minutes=n))
        _settled(journal, "recent", "91", now - timedelta(days=10))
    finally:
        journal.close()
    assert rig.loaded.config.journal.retention_days == 400
    async with running_agent(rig.loaded) as agent:
        runtime = agent.runtime

        def pruned() -> bool:
            refs = {p.payment_id for p in runtime.journal.payments(limit=1000)}
            return refs == {"recent"}

        await eventually(pruned, 10)
