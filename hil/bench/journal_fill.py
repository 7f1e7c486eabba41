"""Fill an agent state directory with completed, paid sessions, through the agent's own journal API.

For the journal-growth figures of :mod:`hil.bench.scaling` (DESIGN.md §7 "Cost growth": RSS and
start time after 100, 1 000, 10 000 sessions). Running that many real sessions would take hours, so
each session is written as the records a real paid EMV session of the bench journals, in the same
order and with the same API (``agent/runtime/shell.py`` ``Runtime._store``; one real session of the
bench rig dumped): ``card_read`` (and the session's tariff bound), ``payment_approved``,
``energy_on``, ``METERS_PER_SESSION`` periodic ``meter`` values, ``stop`` (unplug), the final
``meter``, ``commit``, ``commit_sent`` (:meth:`Journal.disposal_sent`), ``commit_confirmed`` and the
``charger_settlement`` note (the ``payment`` message journaled for the charger). Energy, usage and
cost come from the configured tariff (:meth:`Tariff.accumulate` / :meth:`Tariff.quote`), exact in
minor units.

The sessions lie in the past, one every ``SPACING`` (on the connectors round-robin), the newest
ending ``SPACING`` before now; record timestamps are given to :meth:`Journal.record` (``at``). The
two agent-side notes (``commit_sent``, ``charger_settlement``) carry the time they were written, as
:meth:`Journal.note` has no other. One transaction per ``BATCH`` sessions (a bench shortcut: the
agent commits each step on its own, the rows are the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from agent.config.schema import load_config
from agent.money.tariff import Tariff
from agent.runtime.charger_payment import SETTLEMENT_KIND, card_last4
from agent.runtime.recovery import stored_tariff
from agent.store.journal import JOURNAL_FILE, Journal, StoredTariff
from drivers.charger.payloads import PaymentPayload, decimal_text, format_ts
from statemachines.effects import (
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordMeter,
    RecordPaymentApproved,
    RecordStop,
)
from statemachines.events import CardKind, CardToken, PaymentMethod, SettlementOutcome, StopSource
from statemachines.pricing import Usage, UsageKind

METERS_PER_SESSION = 10  # periodic meter values per session (a real one journals one per second)
METER_INTERVAL = timedelta(seconds=1)  # the bench charger's meter interval
POWER_W = 11_000.0  # the bench's EV (hil.bench.agent.EV_POWER_W)
AMOUNT_MINOR = 5000  # the bench config's authorization.amount_minor
SPACING = timedelta(hours=1)  # one session started every hour on the station
BATCH = 200  # sessions per transaction
MASKED_PAN = "476173******0010"
BRAND = "VISA"


@dataclass(frozen=True, slots=True)
class Filled:
    sessions: int
    oldest_started_at: str
    newest_ended_at: str
    journal_bytes: int


def fill(config_path: Path, sessions: int, connectors: int) -> Filled:
    """Write ``sessions`` completed sessions into the state directory of the agent config
    ``config_path`` (its journal is created when missing). Returns what was written."""
    loaded = load_config(config_path)
    state_dir = Path(loaded.config.state_dir)
    tariff = loaded.tariff
    stored = stored_tariff(tariff)
    journal = Journal.open(state_dir)
    now = datetime.now(UTC)
    first_start = now - SPACING * (sessions + 1)
    try:
        for batch_start in range(0, sessions, BATCH):
            with journal.store.atomic():
                for i in range(batch_start, min(sessions, batch_start + BATCH)):
                    _session(journal, tariff, stored, i, i % connectors + 1, first_start + SPACING * i)
    finally:
        journal.close()
    last_end = first_start + SPACING * (sessions - 1) + METER_INTERVAL * (METERS_PER_SESSION + 1)
    size = sum(p.stat().st_size for p in state_dir.glob(JOURNAL_FILE + "*"))  # with -wal, -shm
    return Filled(sessions, format_ts(first_start), format_ts(last_end), size)


def _session(
    journal: Journal, tariff: Tariff, stored: StoredTariff, n: int, cid: int, started: datetime
) -> None:
    ref = f"{cid}-{started.strftime('%Y%m%dT%H%M%S%f')}"
    sid = str(100_000_000 + n)  # the terminal's session id
    card = CardToken(CardKind.EMV, f"F{n:039X}", MASKED_PAN, None)  # no card hash the rig taps
    journal.record(RecordCardRead(cid, ref, card=card, amount_minor=AMOUNT_MINOR), at=started)
    journal.bind_session_tariff(ref, stored)
    approved_at = started + timedelta(milliseconds=55)  # the simulator's acquirer round trip
    journal.record(
        RecordPaymentApproved(
            cid,
            ref,
            method=PaymentMethod.EMV,
            session_id=sid,
            authorized_minor=AMOUNT_MINOR,
            host_reference=f"{n:012x}",
            card_brand=BRAND,
        ),
        at=approved_at,
    )
    usage = Usage(started_at=approved_at)
    journal.record(
        RecordEnergyOn(cid, ref, method=PaymentMethod.EMV, meter_wh=0, first=True, usage=usage),
        at=approved_at,
    )
    at, meter_wh = approved_at, 0
    for _ in range(METERS_PER_SESSION):
        step_wh = int(POWER_W * METER_INTERVAL.total_seconds() / 3600)
        usage = tariff.accumulate(
            usage, at, at + METER_INTERVAL, step_wh, UsageKind.CHARGING, power_w=POWER_W
        )
        at, meter_wh = at + METER_INTERVAL, meter_wh + step_wh
        cost = tariff.cost_minor(usage)
        journal.record(
            RecordMeter(cid, ref, meter_wh, meter_wh, cost, POWER_W, periodic=True, usage=usage), at=at
        )
    stopped = at + METER_INTERVAL / 2
    cost = tariff.cost_minor(usage)
    journal.record(RecordStop(cid, ref, StopSource.UNPLUG, meter_wh, cost, usage), at=stopped)
    journal.record(
        RecordMeter(cid, ref, meter_wh, meter_wh, cost, 0.0, periodic=False, usage=usage), at=stopped
    )
    journal.record(RecordCommitDecided(cid, ref, sid, cost, meter_wh, cost, usage), at=stopped)
    journal.disposal_sent(sid)
    confirmed = stopped + timedelta(milliseconds=10)
    journal.record(RecordCommitConfirmed(cid, ref, sid, SettlementOutcome.OK), at=confirmed)
    quote = tariff.quote(usage)
    digits = tariff.minor_unit_digits
    settled = format_ts(confirmed)
    payload = PaymentPayload(
        event="settled",
        session_id=ref,
        psp_ref=sid,
        currency=tariff.currency,
        minor_unit_digits=digits,
        authorized_minor=AMOUNT_MINOR,
        authorized=decimal_text(AMOUNT_MINOR, digits),
        card_brand=BRAND,
        card_last4=card_last4(MASKED_PAN),
        energy_wh=meter_wh,
        cost_minor=cost,
        cost=decimal_text(cost, digits),
        charging_s=usage.duration_ms(UsageKind.CHARGING) // 1000,
        status="Settled",
        settlement_minor=cost,
        settlement_amount=decimal_text(cost, digits),
        settlement_time=settled,
        receipt_id=ref,
        net_minor=quote.net_minor,
        vat_minor=quote.vat_minor,
        vat_rate_percent=quote.vat_rate_percent,
        ts=settled,
    )
    journal.note(SETTLEMENT_KIND, cid, ref, msgspec.to_builtins(payload))
