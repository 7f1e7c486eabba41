"""A tariff set by command prices the next session, and each receipt shows the tariff that priced its
session (STOP-8, START-8)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from agent.money.tariff import tariff_from_builtins
from agent.runtime.shell import Runtime
from agent.store.journal import usage_from_json
from agent.upstream.contract import Receipt
from hil.psp_sim import Card
from tests.agent.rig import UNREACHABLE_BROKER, Rig, eventually, load, make_app, write_config

NEW_TARIFF = {  # not the rig's 0.40/kWh: the receipt must show this one
    "currency": "EUR",
    "prices_include_vat": True,
    "vat_rate_percent": "21",
    "energy_per_kwh": "0.90",
    "session_fee": "0.25",
}


async def _nothing() -> None:
    pass


async def _session(
    rig: Rig, runtime: Runtime, *, before_unplug: Callable[[], Awaitable[object]] = _nothing
) -> None:
    rig.charger.set_power(1, 11000.0)
    rig.charger.plug(1)
    await eventually(lambda: runtime.station.connectors[1].state == "awaiting_card", 5)
    await eventually(lambda: rig.psp.state.name == "WAIT_CARD", 10, "card read started")
    rig.psp.tap(Card.emv())
    await eventually(lambda: runtime.station.connectors[1].state == "charging", 5)
    machine = runtime.station.connectors[1]
    await eventually(lambda: machine.session is not None and machine.session.usage.energy_wh > 100, 5)
    await before_unplug()
    await asyncio.sleep(0.2)  # meter values priced while the new tariff is already set
    rig.charger.unplug(1)
    await eventually(lambda: runtime.station.connectors[1].state == "available", 10, "session over")


@pytest.mark.req("STOP-8", "RCPT-1", "START-8")
async def test_receipt_quotes_the_tariff_that_priced_the_session(apollo_rig: Rig) -> None:
    """A tariff set while a session runs leaves that session (and its receipt) on the tariff the
    driver saw before paying; the connector's next session is priced and receipted with the new one."""
    rig = apollo_rig
    path = write_config(
        rig.tmp_path, psp_port=rig.psp_port, broker_url=rig.broker_url, upstream_url=UNREACHABLE_BROKER
    )
    app = make_app(load(path))
    runtime, outbox, journal = app.runtime, app.outbox, app.journal
    new = tariff_from_builtins(NEW_TARIFF)
    try:
        task = asyncio.create_task(app.run())
        try:
            await asyncio.wait_for(runtime.ready.wait(), 5)
            await eventually(
                lambda: runtime.recovered.is_set() and runtime.station.arbiter.state != "offline", 10
            )
            await _session(rig, runtime, before_unplug=lambda: app.port.set_tariff(NEW_TARIFF))
            await _session(rig, runtime)
            await eventually(
                lambda: sum(r.kind == "receipt" for r in outbox.pending()) == 2, 10, "two receipts"
            )
        finally:
            runtime.request_stop()
            await asyncio.wait_for(task, 10)

        receipts = [
            msgspec.json.decode(r.payload, type=Receipt) for r in outbox.pending() if r.kind == "receipt"
        ]
        sessions = rig.sessions()
        assert [s["status"] for s in sessions] == ["committed", "committed"]
        payments = sorted(journal.payments(10), key=lambda p: p.started_at)
        for receipt, session, payment in zip(receipts, sessions, payments, strict=True):
            assert receipt.session_id == payment.payment_id
            assert receipt.total_minor == session["committed_minor"] == payment.final_minor  # STOP-8
        usage = [usage_from_json(p.usage_json) for p in payments]
        old = rig.loaded.tariff
        assert receipts[0].total_minor == old.cost_minor(usage[0])  # kept the tariff it started with
        assert receipts[0].total_minor != new.cost_minor(usage[0])
        assert receipts[1].total_minor == new.cost_minor(usage[1])  # the next session: the new one
        assert receipts[1].total_minor != old.cost_minor(usage[1])
    finally:
        app.close()
