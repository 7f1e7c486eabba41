"""The Apollo final receipt screen (RCPT-2) end to end in-process: PSP simulator, charger simulator,
real Mosquitto, the agent built by agent.app.build_app with a receipt QR template."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import msgspec
import pytest

from agent.money.receipts import format_minor
from agent.upstream.contract import Receipt
from hil.psp_sim import Card
from tests.agent.rig import UNREACHABLE_BROKER, Rig, eventually, load, make_app, write_config

QR_TEMPLATE = "https://receipts.example/r/{station_id}/{receipt_id}"


def _props(screen: object) -> dict[str, str]:
    return dict(getattr(screen, "properties", ()))


@pytest.mark.req("RCPT-2")
async def test_req_rcpt_2_final_screen_shows_amount_and_qr_link_after_a_paid_session(
    apollo_rig: Rig,
) -> None:
    rig = apollo_rig
    path = write_config(
        rig.tmp_path,
        psp_port=rig.psp_port,
        broker_url=rig.broker_url,
        upstream_url=UNREACHABLE_BROKER,
        extra=f"receipts:\n  qr_url_template: {QR_TEMPLATE}\n",
    )
    app = make_app(load(path))  # as the daemon builds it: Apollo + QR template → final screen
    runtime, outbox = app.runtime, app.outbox
    try:
        shown: list[tuple[str, dict[str, str]]] = []
        show = app.terminal.show_screen

        async def recording(screen_type: str, properties: Mapping[str, str] | None = None) -> None:
            shown.append((screen_type, dict(properties or {})))
            await show(screen_type, properties)

        app.terminal.show_screen = recording  # type: ignore[method-assign]  # test instrumentation
        task = asyncio.create_task(app.run())
        try:
            await asyncio.wait_for(runtime.ready.wait(), 5)
            await eventually(
                lambda: runtime.recovered.is_set() and runtime.station.arbiter.state != "offline", 10
            )
            rig.charger.set_power(1, 11000.0)
            rig.charger.plug(1)
            await eventually(lambda: runtime.station.connectors[1].state == "awaiting_card", 5)
            await eventually(lambda: rig.psp.state.name == "WAIT_CARD", 10, "card read started")
            rig.psp.tap(Card.emv())
            await eventually(lambda: runtime.station.connectors[1].state == "charging", 5)
            machine = runtime.station.connectors[1]
            await eventually(lambda: machine.session is not None and machine.session.usage.energy_wh > 100, 5)
            rig.charger.unplug(1)
            await eventually(lambda: "qr" in _props(rig.psp.last_screen), 10, "final screen")
        finally:
            runtime.request_stop()
            await asyncio.wait_for(task, 10)

        (row,) = [r for r in outbox.pending() if r.kind == "receipt"]
        receipt = msgspec.json.decode(row.payload, type=Receipt)
        assert receipt.status == "captured"
        assert receipt.total_minor > 0
        assert receipt.qr_url == f"https://receipts.example/r/TEST-1/{receipt.receipt_id}"
        props = _props(rig.psp.last_screen)
        assert rig.psp.last_screen is not None
        assert rig.psp.last_screen.screen_type == "notification"
        assert props["subtitle"] == f"{format_minor(receipt.total_minor, 2)} EUR"
        assert props["qr"] == receipt.qr_url
        assert props["advice"] == "Scan the QR code for your receipt"
        assert [p for _, p in shown].count(props) == 1  # shown once, through the terminal actor
        # instead of the plain session_ended notification, not after it
        titles = [p.get("title") for _, p in shown]
        assert "Session ended. Thank you" not in titles
    finally:
        app.close()
