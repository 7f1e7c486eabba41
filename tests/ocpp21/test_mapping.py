"""Issue 11 acceptance 5: OCPP 2.1 ``TransactionEvent`` and ``NotifySettlement`` requests from a real
session's events, built with the ``ocpp`` library's v21 dataclasses and validated against its JSON
schemas (docs/ocpp21.md; the mapping is :mod:`hil.ocpp21`).

The real agent process runs a session against the simulators (tests/e2e); the charger simulator
records the ``payment`` messages of the bridge, the back office captures the upstream events.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hil.ocpp21 import notify_settlement, schema_errors, to_json, transaction_events
from hil.stream import MessageLine
from tests.e2e.conftest import StationFactory
from tests.e2e.harness import Station, wait_until
from tests.pan_guard import find_pans

POWER_W = 360_000  # 100 Wh per second
QR_TEMPLATE = "https://receipts.example.com/r/{receipt_id}"
CONFIG: dict[str, Any] = {
    "session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]},
    "receipts": {"qr_url_template": QR_TEMPLATE},
}


def upstream(st: Station, kind: str) -> list[dict[str, Any]]:
    """The captured upstream messages on ``…/{kind}`` topics (each once, by ``msg_id``)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    assert st.capture is not None
    for line in st.capture.lines:
        if (
            isinstance(line, MessageLine)
            and line.topic.endswith(f"/{kind}")
            and isinstance(line.payload, dict)
        ):
            msg_id = str(line.payload.get("msg_id"))
            if msg_id not in seen:
                seen.add(msg_id)
                out.append(dict(line.payload))
    return out


async def run_session(st: Station, *, energy_wh: int) -> str:
    """Plug in, tap, charge ``energy_wh``, unplug; returns the terminal session id."""
    await st.charger.power(1, POWER_W)
    await st.charger.plug(1)
    await st.wait_connector(1, ("awaiting_card",))
    await st.wait_terminal(("WAIT_CARD",))
    await st.psp.tap_emv(hash="C0FFEE" * 6 + "0011", pan="476173******0119", brand="VISA")
    sessions = await st.wait_session_status("approved")
    await st.wait_energy(1, energy_wh)
    await st.charger.unplug(1)
    await st.wait_settled()
    return str(sessions[0]["session_id"])


def amount_text(minor: int, digits: int = 2) -> float:
    return float(minor) / float(10**digits)


@pytest.mark.usefixtures("requires_agent")
@pytest.mark.timeout(90)
async def test_real_session_maps_to_valid_ocpp21_requests(station_factory: StationFactory) -> None:
    async with station_factory(config=CONFIG) as st:
        psp_ref = await run_session(st, energy_wh=300)
        records = await wait_until(
            st.charger.payments,
            lambda rs: any(r["payload"]["event"] == "settled" for r in rs),
            what="the settlement on the charger's payment topic",
            within=10.0,
        )
        events = upstream(st, "events")
        receipts = upstream(st, "receipts")
    payments = [r["payload"] for r in records]
    assert all(r["connector_id"] == 1 for r in records)
    assert not find_pans(repr(payments).encode())
    # what the charger got: authorized, ≥ 1 running cost, one settlement content
    kinds = [p["event"] for p in payments]
    assert kinds[0] == "authorized", kinds
    assert kinds[-1] == "settled", kinds
    assert "cost" in kinds, kinds
    authorized = payments[0]
    assert authorized["psp_ref"] == psp_ref  # the terminal's session id as the terminal reports it
    assert authorized["id_token_type"] == "DirectPayment"
    assert authorized["card_brand"] == "VISA"
    assert authorized["card_last4"] == "0119"
    settlements = {repr(sorted(p.items())) for p in payments if p["event"] == "settled"}
    assert len(settlements) == 1
    settled = payments[-1]

    (session_id,) = {e["session_id"] for e in events}
    assert {p["session_id"] for p in payments} == {session_id}
    by_name = {e["event"]: e for e in events}
    captured, ended = by_name["payment.captured"], by_name["session.ended"]
    assert captured["terminal_session_id"] == psp_ref
    # the amounts agree: settlement = captured = session.ended amount
    assert settled["status"] == "Settled"
    assert settled["settlement_minor"] == captured["amount_minor"] == ended["amount_minor"] > 0
    (receipt,) = receipts
    assert settled["receipt_id"] == receipt["receipt_id"]
    assert settled["receipt_url"] == receipt["qr_url"] == QR_TEMPLATE.format(receipt_id=receipt["receipt_id"])
    assert settled["vat_minor"] == receipt["vat_minor"]
    assert settled["net_minor"] == receipt["net_minor"]

    session_events = [e for e in events if e["event"].startswith("session.")]
    tx = transaction_events(session_events, payments, evse_id=1)
    requests = [to_json(m) for m in tx.messages]
    for request in requests:
        assert schema_errors("TransactionEvent", request) == [], request
    kinds = [r["eventType"] for r in requests]
    assert kinds[0] == "Started", kinds
    assert kinds[-1] == "Ended", kinds
    assert set(kinds[1:-1]) <= {"Updated"}, kinds
    assert "RunningCost" in [r["triggerReason"] for r in requests]
    assert [r["seqNo"] for r in requests] == list(range(len(requests)))
    started, final = requests[0], requests[-1]
    assert started["idToken"] == {"idToken": psp_ref, "type": "DirectPayment"}
    assert started["transactionInfo"]["transactionLimit"] == {"maxCost": float(authorized["authorized"])}
    assert started["evse"] == {"id": 1, "connectorId": 1}
    assert {r["transactionInfo"]["transactionId"] for r in requests} == {session_id}
    assert final["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    total = final["costDetails"]["totalCost"]
    assert total["currency"] == settled["currency"] == "EUR"
    assert total["total"]["inclTax"] == amount_text(ended["amount_minor"])
    assert final["costDetails"]["totalUsage"]["energy"] == ended["energy_wh"]
    assert final["costDetails"]["chargingPeriods"]

    settlement = to_json(notify_settlement(settled, transaction_id=tx.transaction_id))
    assert schema_errors("NotifySettlement", settlement) == [], settlement
    assert settlement["pspRef"] == psp_ref
    assert settlement["status"] == "Settled"
    assert (
        settlement["settlementAmount"] == amount_text(captured["amount_minor"]) == total["total"]["inclTax"]
    )
    assert settlement["receiptUrl"] == settled["receipt_url"]
    assert settlement["transactionId"] == session_id


def test_voided_payment_maps_to_canceled_settlement() -> None:
    """A payment voided before energy flowed: NotifySettlement ``Canceled``, amount 0, and no
    ``transactionId`` (the OCPP transaction never started; the schema's own wording)."""
    settled = {
        "v": 1,
        "event": "settled",
        "session_id": "1-20260101T100000000000",
        "psp_ref": "3371212504",
        "id_token_type": "DirectPayment",
        "method": "emv",
        "currency": "EUR",
        "minor_unit_digits": 2,
        "authorized_minor": 5000,
        "authorized": "50.00",
        "status": "Canceled",
        "settlement_minor": 0,
        "settlement_amount": "0",
        "settlement_time": "2026-01-01T10:00:05.000Z",
        "receipt_id": "1-20260101T100000000000",
        "receipt_url": None,
        "ts": "2026-01-01T10:00:05.000Z",
    }
    tx = transaction_events([], [settled], evse_id=1)
    assert tx.messages == []
    assert tx.transaction_id is None
    request = to_json(notify_settlement(settled, transaction_id=tx.transaction_id))
    assert schema_errors("NotifySettlement", request) == []
    assert request == {
        "pspRef": "3371212504",
        "settlementAmount": 0.0,
        "settlementTime": "2026-01-01T10:00:05.000Z",
        "status": "Canceled",
        "receiptId": "1-20260101T100000000000",
    }
    with pytest.raises(ValueError, match="not a settlement"):
        notify_settlement({**settled, "event": "cost"})
    # the schema check is real: a missing required field and a wrong enum are reported
    assert schema_errors("NotifySettlement", {**request, "status": "Voided"})
    assert schema_errors("NotifySettlement", {k: v for k, v in request.items() if k != "pspRef"})
    assert schema_errors("NotifySettlement", {**request, "settlementTime": "2026-01-01 10:00"})
    assert schema_errors("NotifySettlement", {**request, "settlementTime": "2026-01-01T10:00:05"})


def test_voided_session_after_energy_maps_to_ended_and_canceled() -> None:
    """A void after the transaction started (nothing billable): Ended with a 0 total and a
    ``Canceled`` settlement that names the transaction."""
    base = {"connector_id": 1, "session_id": "1-20260101T110000000000", "offline": False}
    events = [
        {**base, "event": "session.started", "seq": 1, "ts": "2026-01-01T11:00:01.000Z", "meter_wh": 1000},
        {
            **base,
            "event": "session.ended",
            "seq": 3,
            "ts": "2026-01-01T11:00:09.000Z",
            "reason": "fault",
            "energy_wh": 0,
            "cost_minor": 0,
            "amount_minor": 0,
            "charging_periods": [],
        },
    ]
    authorized = {
        "event": "authorized",
        "session_id": base["session_id"],
        "psp_ref": "42",
        "id_token_type": "DirectPayment",
        "currency": "EUR",
        "minor_unit_digits": 2,
        "ts": "2026-01-01T11:00:00.500Z",
    }
    settled = {
        **authorized,
        "event": "settled",
        "status": "Canceled",
        "settlement_amount": "0",
        "settlement_time": "2026-01-01T11:00:10.000Z",
        "ts": "2026-01-01T11:00:10.000Z",
    }
    tx = transaction_events(events, [authorized, settled], evse_id=2, connector_id=1)
    requests = [to_json(m) for m in tx.messages]
    assert [r["eventType"] for r in requests] == ["Started", "Ended"]
    for request in requests:
        assert schema_errors("TransactionEvent", request) == []
    assert requests[1]["triggerReason"] == "AbnormalCondition"
    assert requests[1]["costDetails"]["totalCost"]["total"] == {"inclTax": 0.0}
    notify = to_json(notify_settlement(settled, transaction_id=tx.transaction_id))
    assert schema_errors("NotifySettlement", notify) == []
    assert notify["status"] == "Canceled"
    assert notify["transactionId"] == base["session_id"]


def test_mapping_does_not_reach_the_agent() -> None:
    """The agent never imports ``ocpp`` (a dev dependency): only hil/ocpp21.py and tests do."""
    import subprocess
    import sys

    code = (
        "import sys, agent.app, agent.runtime.shell, drivers.charger.mqtt_bridge; "
        "print(any(m == 'ocpp' or m.startswith('ocpp.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.usefixtures("requires_agent")
@pytest.mark.timeout(90)
async def test_payment_records_survive_charger_reconnect(station_factory: StationFactory) -> None:
    """The settlement is retained: a charger that was away when it was sent gets it on its return."""
    async with station_factory(config=CONFIG) as st:
        await st.charger.power(1, POWER_W)
        await st.charger.plug(1)
        await st.wait_connector(1, ("awaiting_card",))
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(hash="C0FFEE" * 6 + "0022", pan="476173******0022")
        await st.wait_energy(1, 150)
        await st.charger.unplug(1)
        await asyncio.sleep(0.05)
        await st.charger.control.ok("reconnect 1.5")  # away while the settlement is published
        await st.wait_settled()
        records = await wait_until(
            st.charger.payments,
            lambda rs: any(r["payload"]["event"] == "settled" for r in rs),
            what="the settlement after the charger's return",
            within=10.0,
        )
    settled = [r for r in records if r["payload"]["event"] == "settled"]
    assert len({repr(sorted(r["payload"].items())) for r in settled}) == 1


@pytest.mark.usefixtures("requires_agent")
@pytest.mark.timeout(90)
async def test_settlement_survives_a_kill_between_commit_and_publish(station_factory: StationFactory) -> None:
    """SIGKILL right after the step that confirms the Commit is committed (crash point
    ``journal:commit_confirmed``: before the payment message is handed to the bridge): the restart
    offers the journaled settlement, and the charger gets exactly one settlement content, of the
    captured amount."""
    async with station_factory(config=CONFIG, start_agent=False) as st:
        await st.agent.start(crash_at="journal:commit_confirmed")
        await st.wait_ready()
        await st.charger.power(1, POWER_W)
        await st.charger.plug(1)
        await st.wait_connector(1, ("awaiting_card",))
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(hash="C0FFEE" * 6 + "0033", pan="476173******0033")
        await st.wait_energy(1, 150)
        await st.charger.unplug(1)
        assert await st.agent.wait_exit(10) == -9
        before = [r["payload"]["event"] for r in await st.charger.payments()]
        assert "settled" not in before, before  # the kill came before the publish
        await st.agent.start()
        await st.wait_ready()
        records = await wait_until(
            st.charger.payments,
            lambda rs: any(r["payload"]["event"] == "settled" for r in rs),
            what="the journaled settlement offered after the restart",
            within=10.0,
        )
        await st.agent.restart()  # every start offers it again: the same content
        await st.wait_ready()
        await asyncio.sleep(0.5)
        records = await st.charger.payments()
        captured = [e for e in upstream(st, "events") if e["event"] == "payment.captured"]
    settled = [r["payload"] for r in records if r["payload"]["event"] == "settled"]
    assert len(settled) >= 2
    assert len({repr(sorted(p.items())) for p in settled}) == 1
    (capture,) = captured
    assert settled[0]["settlement_minor"] == capture["amount_minor"] > 0
    assert settled[0]["status"] == "Settled"
