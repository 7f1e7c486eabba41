"""Issue 10, acceptance 3, end to end: an OCPI 2.2.1 tariff with ``step_size``, a time-of-day
restriction and a parking window, sent by ``set_tariff`` while a session runs, prices the next
session per OCPI and the running one by its old tariff; commit = receipt = ``session.ended`` amount
= the tariff applied to what ``session.ended`` reports (its ``charging_periods``, priced here by an
independent formula); all of it across a SIGKILL and restart of the agent (STOP-8, ERR-5).

The real ``evpay-agent run``, the PSP and charger simulators, a real Mosquitto, a test back office.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from tests.e2e.conftest import StationFactory
from tests.e2e.harness import expected_cost_minor, journal_problems
from tests.e2e.test_tariff_persistence import (
    charge,
    receipt_and_ended,
    restart_after_kill,
    set_tariff,
    station,
    unplug_and_settle,
)

pytestmark = [pytest.mark.usefixtures("requires_agent"), pytest.mark.timeout(150)]

VAT = 21
ENERGY_PER_KWH, ENERGY_STEP_WH = "0.30", 100  # inside the window
OUTSIDE_PER_KWH = "0.50"  # the fallback element: never used by a session in the window
TIME_PER_H, TIME_STEP_S = "1.20", 60
PARKING_PER_H, PARKING_STEP_S = "6.00", 300


def ocpi_with_a_window(now: datetime) -> dict[str, Any]:
    """Energy and charging time priced in a window of -1 h .. +2 h around ``now`` (UTC), else a
    dearer fallback; parking priced in the same window, per started 5 minutes (OCPI §Tariffs 4.4.6)."""
    window = {"start_time": f"{(now.hour - 1) % 24:02d}:00", "end_time": f"{(now.hour + 2) % 24:02d}:00"}
    return {
        "country_code": "NL",
        "party_id": "EVP",
        "id": "ad-hoc-window",
        "currency": "EUR",
        "type": "AD_HOC_PAYMENT",
        "last_updated": "2026-12-01T00:00:00Z",
        "elements": [
            {
                "price_components": [
                    {"type": "ENERGY", "price": ENERGY_PER_KWH, "vat": VAT, "step_size": ENERGY_STEP_WH},
                    {"type": "TIME", "price": TIME_PER_H, "vat": VAT, "step_size": TIME_STEP_S},
                ],
                "restrictions": window,
            },
            {"price_components": [{"type": "ENERGY", "price": OUTSIDE_PER_KWH, "vat": VAT, "step_size": 1}]},
            {
                "price_components": [
                    {
                        "type": "PARKING_TIME",
                        "price": PARKING_PER_H,
                        "vat": VAT,
                        "step_size": PARKING_STEP_S,
                    }
                ],
                "restrictions": window,
            },
        ],
    }


def volumes(periods: list[dict[str, Any]], kind: str) -> Fraction:
    return sum(
        (Fraction(Decimal(str(d["volume"]))) for p in periods for d in p["dimensions"] if d["type"] == kind),
        Fraction(0),
    )


def independent_price_minor(periods: list[dict[str, Any]]) -> int:
    """The OCPI rules written out for this tariff (docs/tariff.md, mod_cdrs §step_size): the energy
    total rounded up to 100 Wh; the session ends parked, so parking is rounded up to 5 minutes and
    charging time is not rounded; each at its price, VAT 21 %, the total rounded half-up once."""
    energy_wh = volumes(periods, "ENERGY") * 1000
    charging_h = Fraction(round(volumes(periods, "TIME") * 3_600_000), 3_600_000)  # to the ms
    parking_ms = round(volumes(periods, "PARKING_TIME") * 3_600_000)
    billed_wh = math.ceil(energy_wh / ENERGY_STEP_WH) * ENERGY_STEP_WH
    billed_parking_h = Fraction(math.ceil(parking_ms / (PARKING_STEP_S * 1000)) * PARKING_STEP_S, 3600)
    net = (
        billed_wh / 1000 * Fraction(ENERGY_PER_KWH)
        + charging_h * Fraction(TIME_PER_H)
        + billed_parking_h * Fraction(PARKING_PER_H)
    )
    gross_minor = net * (100 + VAT) / 100 * 100
    return math.floor(gross_minor + Fraction(1, 2))


@pytest.mark.req("STOP-8", "ERR-5")
async def test_req_stop_8_an_ocpi_set_tariff_mid_session_prices_the_next_session_and_survives_a_restart(
    station_factory: StationFactory,
) -> None:
    async with station(station_factory) as (st, bo):
        configured = st.tariff()
        await charge(st, 1)  # session 1: the configured (simple) tariff
        reply = await set_tariff(bo, {"ocpi": ocpi_with_a_window(datetime.now(UTC)), "timezone": "UTC"})
        await st.wait_energy(1, 200)
        await restart_after_kill(st, bo)  # the set_tariff and both sessions' tariffs survive it
        await st.wait_charger(1, lambda s: s["enabled"], what="charging resumed after the restart")
        first = await unplug_and_settle(st, 1)
        assert first["final_minor"] == expected_cost_minor(configured, first["energy_wh"]), first
        receipt, ended = await receipt_and_ended(st, first["payment_id"])
        assert receipt["total_minor"] == ended["amount_minor"] == first["final_minor"]

        await charge(st, 2)  # session 2: the OCPI tariff — charge, then park a while, then leave
        await st.charger.pause(1)
        await st.wait_connector(1, ("suspended_ev",), within=10)
        await asyncio.sleep(2.0)
        second = await unplug_and_settle(st, 2)
        assert second["tariff_fingerprint"] == reply["data"]["fingerprint"]
        receipt, ended = await receipt_and_ended(st, second["payment_id"])
        periods = ended["charging_periods"]
        assert receipt["charging_periods"] == periods
        assert {d["type"] for p in periods for d in p["dimensions"]} >= {"ENERGY", "TIME", "PARKING_TIME"}
        assert volumes(periods, "ENERGY") * 1000 == second["energy_wh"]
        expected = independent_price_minor(periods)
        assert second["final_minor"] == receipt["total_minor"] == ended["amount_minor"] == expected, periods
        kinds = {line["kind"]: line for line in receipt["lines"]}
        assert kinds["energy"]["quantity"] % ENERGY_STEP_WH == 0  # billed in 100 Wh steps
        assert kinds["idle_fee"]["quantity"] % (PARKING_STEP_S * 1000) == 0  # parking per 5 min
        assert (kinds["time"]["price_unit"], kinds["time"]["unit_price"]) == ("h", "1.20")
        assert expected != expected_cost_minor(configured, second["energy_wh"])
        sim, journal = await st.wait_settled()
        assert journal_problems(journal, sim) == []
