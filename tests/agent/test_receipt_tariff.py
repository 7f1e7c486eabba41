"""A tariff set by command prices the next session, and its receipt shows that tariff (STOP-8)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from agent.money.tariff import tariff_config_from_builtins
from agent.store.journal import usage_from_json
from agent.store.outbox import Outbox
from agent.upstream.contract import Receipt, Topics
from agent.upstream.port import RuntimeAdapter
from agent.upstream.publisher import Publisher
from hil.psp_sim import Card
from tests.agent.rig import Rig, eventually, make_runtime

NEW_TARIFF = {  # not the rig's 0.40/kWh: the receipt must show this one
    "currency": "EUR",
    "prices_include_vat": True,
    "vat_rate_percent": "21",
    "energy_per_kwh": "0.90",
    "session_fee": "0.25",
}


class _Offline:
    is_connected = False

    def set_retained(self, topic: str, payload: bytes) -> None:
        pass


@pytest.mark.req("STOP-8", "RCPT-1")
async def test_receipt_quotes_the_tariff_that_priced_the_session(apollo_rig: Rig) -> None:
    rig = apollo_rig
    journal = rig.open_journal()
    outbox = Outbox(journal.path)
    try:
        runtime = make_runtime(rig.loaded, journal)
        publisher = Publisher(
            outbox, _Offline(), Topics("TEST-1"), "TEST-1", journal=journal, tariff=rig.loaded.tariff,
            currency="EUR", terminal_family="apollo",
        )  # fmt: skip
        runtime.publisher = publisher
        port = RuntimeAdapter(runtime, station_id="TEST-1", topics=Topics("TEST-1"), outbox=outbox)
        publisher.tariff_for = port.session_tariff  # as agent.port.wire_remote wires it
        task = asyncio.create_task(runtime.run())
        try:
            await asyncio.wait_for(runtime.ready.wait(), 5)
            await eventually(
                lambda: runtime.recovered.is_set() and runtime.station.arbiter.state != "offline", 10
            )
            port.set_tariff(tariff_config_from_builtins(NEW_TARIFF))  # idle connector: applies now
            rig.charger.set_power(1, 11000.0)
            rig.charger.plug(1)
            await eventually(lambda: runtime.station.connectors[1].state == "awaiting_card", 5)
            await eventually(lambda: rig.psp.state.name == "WAIT_CARD", 10, "card read started")
            rig.psp.tap(Card.emv())
            await eventually(lambda: runtime.station.connectors[1].state == "charging", 5)
            machine = runtime.station.connectors[1]
            await eventually(lambda: machine.session is not None and machine.session.usage.energy_wh > 100, 5)
            rig.charger.unplug(1)
            await eventually(lambda: any(r.kind == "receipt" for r in outbox.pending()), 10, "receipt")
        finally:
            runtime.request_stop()
            await asyncio.wait_for(task, 10)

        (row,) = [r for r in outbox.pending() if r.kind == "receipt"]
        receipt = msgspec.json.decode(row.payload, type=Receipt)
        (session,) = rig.sessions()
        assert session["status"] == "committed"
        assert receipt.total_minor == session["committed_minor"]  # receipt = commit (STOP-8)
        (payment,) = journal.payments(10)
        old_price = rig.loaded.tariff.cost_minor(usage_from_json(payment.usage_json))
        assert receipt.total_minor != old_price  # not the configured tariff's price
    finally:
        outbox.close()
        journal.close()
