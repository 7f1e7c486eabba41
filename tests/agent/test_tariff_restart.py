"""Tariffs across agent restarts, in process (issue 10; STOP-8, ERR-5): the agent as
:func:`agent.app.build_app` builds it, the PSP and charger simulators, a real journal file. The
restarts here are clean stops (the SIGKILL versions are tests/e2e/test_tariff_persistence.py).

- ``set_tariff`` is answered only once the step applying it committed: a separate connection
  already reads it from the journal;
- a session started before a ``set_tariff`` and restored after a restart is priced, committed and
  receipted by its own tariff, and the connector's next session by the station's current one;
- a changed configured tariff wins over a journaled ``set_tariff``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgspec
import pytest

from agent.money.tariff import tariff_fingerprint, tariff_from_builtins, tariff_to_builtins
from agent.runtime.shell import Runtime
from agent.store.journal import JOURNAL_FILE, JournalError, usage_from_json
from agent.upstream.commands import NotJournaled
from agent.upstream.contract import Receipt, SessionEnded
from hil.psp_sim import Card
from tests.agent.rig import UNREACHABLE_BROKER, Rig, eventually, load, running_agent, write_config

CONFIGURED = {
    "currency": "EUR",
    "prices_include_vat": True,
    "vat_rate_percent": "21",
    "energy_per_kwh": "0.40",
}
NEW = {**CONFIGURED, "energy_per_kwh": "0.90", "session_fee": "0.25"}
NEWER = {**CONFIGURED, "energy_per_kwh": "1.50"}


def _config(rig: Rig) -> Path:
    return write_config(
        rig.tmp_path, psp_port=rig.psp_port, broker_url=rig.broker_url, upstream_url=UNREACHABLE_BROKER
    )


def _fingerprint(builtins: dict[str, object]) -> str:
    return tariff_fingerprint(tariff_from_builtins(builtins))


async def _start_charging(rig: Rig, runtime: Runtime) -> None:
    await eventually(lambda: runtime.recovered.is_set() and runtime.station.arbiter.state != "offline", 10)
    rig.charger.set_power(1, 11000.0)
    rig.charger.plug(1)
    await eventually(lambda: runtime.station.connectors[1].state == "awaiting_card", 5)
    await eventually(lambda: rig.psp.state.name == "WAIT_CARD", 10, "card read started")
    rig.psp.tap(Card.emv())
    await eventually(lambda: runtime.station.connectors[1].state == "charging", 5)
    machine = runtime.station.connectors[1]
    await eventually(lambda: machine.session is not None and machine.session.usage.energy_wh > 100, 5)


def _station_tariff_row(state_dir: str) -> tuple[str, str] | None:
    """The ``station_tariff`` row as another process would read it (a connection of its own)."""
    conn = sqlite3.connect(f"{(Path(state_dir) / JOURNAL_FILE).as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT fingerprint, configured_fingerprint FROM station_tariff").fetchone()
        return None if row is None else (str(row[0]), str(row[1]))
    finally:
        conn.close()


@pytest.mark.req("START-8", "ERR-5")
async def test_set_tariff_is_journaled_before_it_is_answered_and_applies_after_a_restart(
    apollo_rig: Rig,
) -> None:
    rig = apollo_rig
    loaded = load(_config(rig))
    state_dir = loaded.config.state_dir
    async with running_agent(loaded) as agent:
        tariff = await agent.app.port.set_tariff(NEW)
        assert _station_tariff_row(state_dir) == (_fingerprint(NEW), _fingerprint(CONFIGURED))
        assert tariff_fingerprint(agent.runtime.tariff) == _fingerprint(NEW) == tariff_fingerprint(tariff)
    async with running_agent(load(_config(rig))) as agent:
        assert tariff_fingerprint(agent.runtime.tariff) == _fingerprint(NEW)
        assert agent.runtime.screens.tariff_text == tariff_from_builtins(NEW).describe()  # START-8
        await _start_charging(rig, agent.runtime)
        rig.charger.unplug(1)
        await eventually(lambda: agent.runtime.station.connectors[1].state == "available", 10)
        (row,) = agent.journal.payments()
        assert row.tariff_fingerprint == _fingerprint(NEW)
        assert row.final_minor == tariff_from_builtins(NEW).cost_minor(usage_from_json(row.usage_json))


@pytest.mark.req("STOP-8", "ERR-5")
async def test_a_session_restored_after_a_restart_keeps_the_tariff_it_started_with(apollo_rig: Rig) -> None:
    """Started under NEW, NEWER set while it charges, the agent restarts: the restored session is
    priced by NEW (commit = receipt = ``session.ended`` amount), the next one by NEWER."""
    rig = apollo_rig
    loaded = load(_config(rig))
    async with running_agent(loaded) as agent:
        await agent.app.port.set_tariff(NEW)
        await _start_charging(rig, agent.runtime)
        await agent.app.port.set_tariff(NEWER)
        await asyncio.sleep(0.2)  # meter values priced while NEWER is the station's
    # the agent is gone with the session charging; it comes back on the same journal
    async with running_agent(load(_config(rig))) as agent:
        runtime = agent.runtime
        assert tariff_fingerprint(runtime.tariff) == _fingerprint(NEWER)
        machine = runtime.station.connectors[1]
        await eventually(lambda: machine.state == "charging", 10, "resumed")
        assert tariff_fingerprint(machine.pricer) == _fingerprint(NEW)
        assert machine.pending_pricer is runtime.tariff
        await asyncio.sleep(0.2)  # charging goes on under the restored session's tariff
        rig.charger.unplug(1)
        await eventually(lambda: machine.state == "available", 10, "first session over")
        await _start_charging(rig, runtime)  # the connector's next session: NEWER
        rig.charger.unplug(1)
        await eventually(lambda: machine.state == "available", 10, "second session over")
        await eventually(
            lambda: sum(r.kind == "receipt" for r in agent.app.outbox.pending()) == 2, 10, "two receipts"
        )
        rows = agent.app.outbox.pending(1000)
        receipts = [msgspec.json.decode(r.payload, type=Receipt) for r in rows if r.kind == "receipt"]
        ended = [
            msgspec.json.decode(r.payload, type=SessionEnded)
            for r in rows
            if r.kind == "event" and b'"session.ended"' in r.payload
        ]
        payments = sorted(agent.journal.payments(10), key=lambda p: p.started_at)
    sessions = rig.sessions()
    assert [s["status"] for s in sessions] == ["committed", "committed"]
    assert [p.tariff_fingerprint for p in payments] == [_fingerprint(NEW), _fingerprint(NEWER)]
    assert payments[0].recovered
    for tariff, payment, receipt, end, session in zip(
        (NEW, NEWER), payments, receipts, ended, sessions, strict=True
    ):
        priced = tariff_from_builtins(tariff).cost_minor(usage_from_json(payment.usage_json))
        assert receipt.session_id == end.session_id == payment.payment_id
        assert (
            session["committed_minor"]
            == payment.final_minor
            == receipt.total_minor
            == end.amount_minor
            == priced
        )
    usage = usage_from_json(payments[0].usage_json)
    assert payments[0].final_minor != tariff_from_builtins(NEWER).cost_minor(usage)


@pytest.mark.req("ERR-5")
async def test_a_changed_configured_tariff_wins_over_a_journaled_set_tariff(apollo_rig: Rig) -> None:
    rig = apollo_rig
    path = _config(rig)
    async with running_agent(load(path)) as agent:
        await agent.app.port.set_tariff(NEW)
    path.write_text(path.read_text().replace('energy_per_kwh: "0.40"', 'energy_per_kwh: "0.45"'))
    changed = {**CONFIGURED, "energy_per_kwh": "0.45"}
    async with running_agent(load(path)) as agent:
        assert tariff_to_builtins(agent.runtime.tariff) == tariff_to_builtins(tariff_from_builtins(changed))
        assert _station_tariff_row(agent.app.journal.path.parent.as_posix()) is None
    path.write_text(path.read_text().replace('energy_per_kwh: "0.45"', 'energy_per_kwh: "0.40"'))
    async with running_agent(load(path)) as agent:  # the dropped set_tariff does not come back
        assert tariff_fingerprint(agent.runtime.tariff) == _fingerprint(CONFIGURED)


@pytest.mark.req("UP-3")
async def test_set_tariff_whose_journal_write_fails_is_not_answered_accepted(
    apollo_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal refuses the write (disk full, …): the step is not committed, the command gets
    ``NotJournaled`` (answered ``error``/``internal``) and a restart still has the configured tariff."""
    rig = apollo_rig
    async with running_agent(load(_config(rig))) as agent:

        def refuse(*args: object, **kwargs: object) -> None:
            raise JournalError("database or disk is full")

        monkeypatch.setattr(agent.journal, "set_station_tariff", refuse)
        with pytest.raises(NotJournaled, match="journal write failed"):
            await agent.app.port.set_tariff(NEW)
        monkeypatch.undo()
        assert _station_tariff_row(agent.app.journal.path.parent.as_posix()) is None
    async with running_agent(load(_config(rig))) as agent:
        assert tariff_fingerprint(agent.runtime.tariff) == _fingerprint(CONFIGURED)
