"""Use cases and error scenarios of requirements.md against the real agent process (DESIGN.md §6).

Each test drives the simulators like a driver and a charger would, then checks both records of the
money: the terminal simulator's sessions table (what was committed or voided) and the agent's
journal (``evpay-agent sessions --json``). Energy comes from a high simulated power (100 Wh/s) so
that amounts are well above rounding; expected amounts are the tariff (``agent.money.tariff``) applied to
the energy the journal reports, which must equal what the charger simulator metered.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import StationFactory
from tests.e2e.harness import (
    Station,
    journal_by_sid,
    journal_problems,
    settlement_problems,
)

pytestmark = [pytest.mark.usefixtures("requires_agent"), pytest.mark.timeout(90)]

POWER_W = 360_000  # 100 Wh per second; max_current_a 1000 allows it
AUTHORIZED = 5000  # authorization.amount_minor of the generated config


def card(n: int) -> dict[str, str]:
    """Tap options of EMV test card ``n`` (its own card hash and masked PAN)."""
    return {"hash": f"{n:040X}", "pan": f"476173******{n:04d}"}


def pan(n: int) -> str:
    return card(n)["pan"]


async def assert_settled(
    st: Station, *, committed: int = 0, voided: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Everything settled; the terminal has exactly ``committed`` commits and ``voided`` voids, and
    the journal agrees with it session by session."""
    sim, journal = await st.wait_settled()
    assert settlement_problems(sim) == []
    assert journal_problems(journal, sim) == []
    statuses = sorted(s["status"] for s in sim)
    assert statuses == sorted(["committed"] * committed + ["voided"] * voided), sim
    return sim, journal


async def start_charging(st: Station, c: int, n: int, *, plug_first: bool = True) -> dict[str, Any]:
    """Plug in (or tap first), tap card ``n``, wait for energy; returns the approved terminal session."""
    before = {s["session_id"] for s in await st.psp.sessions()}
    await st.charger.power(c, POWER_W)
    if plug_first:
        await st.charger.plug(c)
        # the terminal may already be scanning (tap-to-stop): tap only once the agent saw the plug
        await st.wait_connector(c, ("awaiting_card",))
    await st.wait_terminal(("WAIT_CARD",))
    await st.psp.tap_emv(**card(n))
    sessions = await st.wait_sim_sessions(
        lambda ss: any(s["session_id"] not in before for s in ss), what=f"card {n} approved"
    )
    (new,) = [s for s in sessions if s["session_id"] not in before]
    assert new["status"] == "approved"
    assert new["authorized_minor"] == AUTHORIZED
    assert new["card"].get("masked_pan", pan(n)) == pan(n)
    if not plug_first:
        await asyncio.sleep(0.3)  # START-1: no energy before the vehicle is connected
        assert not (await st.charger.state(c))["enabled"]
        await st.charger.plug(c)
    await st.wait_energy(c, 150)
    return new


def assert_commit_matches_energy(
    st: Station, sim_session: dict[str, Any], payment: dict[str, Any], metered_wh: int, c: int
) -> None:
    """STOP-8: committed = journal final = tariff(journal energy); journal energy = metered energy."""
    assert payment["connector_id"] == c
    assert payment["method"] == "emv"
    assert payment["disposal"] == "commit"
    assert payment["disposal_confirmed"] is True
    assert payment["energy_wh"] == metered_wh, (payment, metered_wh)
    expected = st.expected_cost(payment["energy_wh"])
    assert sim_session["committed_minor"] == payment["final_minor"] == expected
    assert 0 < expected <= payment["authorized_minor"] == AUTHORIZED
    assert payment["masked_pan"] == sim_session["card"].get("masked_pan", payment["masked_pan"])


# --- start -------------------------------------------------------------------------------------------


@pytest.mark.req("START-1", "STOP-3")
@pytest.mark.parametrize("transport", ["tcp", "pty"])
async def test_tap_to_start(station_factory: StationFactory, transport: str) -> None:
    config = {"session": {"start_modes": ["tap"], "stop_modes": ["tap", "unplug"]}}
    async with station_factory(transport=transport, config=config) as st:
        await st.wait_terminal(("WAIT_CARD",))  # always scanning while a connector is free
        e0 = await st.charger.energy_wh(1)
        s = await start_charging(st, 1, 1, plug_first=False)
        await st.charger.unplug(1)
        e1 = await st.charger.energy_wh(1)
        sim, journal = await assert_settled(st, committed=1)
        assert_commit_matches_energy(st, sim[0], journal_by_sid(journal, s["session_id"]), e1 - e0, 1)


@pytest.mark.req("START-2", "STOP-3")
async def test_plug_in_to_start(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station_factory(config=config) as st:
        await asyncio.sleep(0.3)
        assert (await st.psp.state())["state"] == "ENABLED"  # idle until a vehicle plugs in
        e0 = await st.charger.energy_wh(1)
        s = await start_charging(st, 1, 2)
        await st.charger.unplug(1)
        e1 = await st.charger.energy_wh(1)
        sim, journal = await assert_settled(st, committed=1)
        assert_commit_matches_energy(st, sim[0], journal_by_sid(journal, s["session_id"]), e1 - e0, 1)


def button_for_connector(screen: dict[str, Any], connector_id: int) -> str | None:
    """The id of the button / item of ``screen`` that selects ``connector_id`` (by id or label)."""
    buttons: list[str] = screen.get("buttons", [])
    text = repr(screen)
    for b in buttons:
        digits = "".join(ch for ch in b if ch.isdigit())
        if digits == str(connector_id):
            return b
    for b in buttons:
        if f"Connector {connector_id}" in text and b in text.split(f"Connector {connector_id}")[0][-200:]:
            return b
    return None


async def press_connector(st: Station, connector_id: int) -> str:
    screen = await st.wait_for_screen(lambda s: button_for_connector(s, connector_id) is not None)
    button = button_for_connector(screen, connector_id)
    assert button is not None
    await st.psp.press(button)
    return button


@pytest.mark.req("START-3")
async def test_ui_start_binds_the_selected_connector(station_factory: StationFactory) -> None:
    config = {
        "session": {
            "start_modes": ["ui", "plug_in"],
            "stop_modes": ["tap", "unplug"],
            "routing": "ui_selection",
        }
    }
    async with station_factory(connectors=2, config=config) as st:
        await st.charger.power(2, POWER_W)
        await press_connector(st, 2)
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(3))
        (s,) = await st.wait_session_status("approved")
        e0 = await st.charger.energy_wh(2)
        await st.charger.plug(2)
        await st.wait_energy(2, 150)
        assert not (await st.charger.state(1))["enabled"]
        await st.charger.unplug(2)
        e1 = await st.charger.energy_wh(2)
        sim, journal = await assert_settled(st, committed=1)
        assert_commit_matches_energy(st, sim[0], journal_by_sid(journal, s["session_id"]), e1 - e0, 2)


@pytest.mark.req("START-7")
async def test_decline_then_a_second_card(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station_factory(config=config) as st:
        await st.charger.power(1, POWER_W)
        await st.charger.plug(1)
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(decline="INSUFFICIENT_FUNDS", **card(4))
        await asyncio.sleep(0.2)
        await st.wait_terminal(("WAIT_CARD",))  # still plugged: the terminal reads again
        assert await st.psp.sessions() == []  # a decline leaves nothing to dispose of
        assert not (await st.charger.state(1))["enabled"]
        await st.psp.tap_emv(**card(5))
        (s,) = await st.wait_session_status("approved")
        await st.wait_energy(1, 150)
        await st.charger.unplug(1)
        _sim, journal = await assert_settled(st, committed=1)
        p = journal_by_sid(journal, s["session_id"])
        assert p["masked_pan"] == pan(5)
        assert not any(q.get("masked_pan") == pan(4) and q.get("terminal_session_id") for q in journal)


@pytest.mark.req("START-6", "ERR-1")
@pytest.mark.timeout(120)
async def test_plug_in_timeout_voids(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["tap"], "stop_modes": ["tap", "unplug"], "plug_in_timeout_s": 30}}
    async with station_factory(config=config) as st:
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(6))
        (s,) = await st.wait_session_status("approved")
        await asyncio.sleep(25)  # the schema's minimum plug-in timeout is 30 s
        assert (await st.psp.sessions())[0]["status"] == "approved"
        await st.wait_session_status("voided", within=15)
        _sim, journal = await assert_settled(st, voided=1)
        p = journal_by_sid(journal, s["session_id"])
        assert p["disposal"] == "void"
        assert p["final_minor"] in (0, None)
        assert not (await st.charger.state(1))["enabled"]


# --- stop --------------------------------------------------------------------------------------------


@pytest.mark.req("STOP-1", "STOP-2")
async def test_tap_to_stop(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["tap", "unplug"]}}
    async with station_factory(config=config) as st:
        e0 = await st.charger.energy_wh(1)
        s = await start_charging(st, 1, 7)
        await st.wait_terminal(("WAIT_CARD",))  # scanning for tap-to-stop
        await st.psp.tap_emv(**card(8))  # STOP-2: another card never stops this session
        await asyncio.sleep(0.5)
        assert (await st.charger.state(1))["enabled"]
        assert [x["status"] for x in await st.psp.sessions()] == ["approved"]
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(7))
        await st.wait_session_status("committed")
        snap = await st.wait_charger(1, lambda c: not c["enabled"], what="energy off")
        assert snap["plugged"]
        sim, journal = await assert_settled(st, committed=1)
        assert len(sim) == 1  # the stop card was not authorized again
        assert_commit_matches_energy(
            st, sim[0], journal_by_sid(journal, s["session_id"]), snap["energy_wh"] - e0, 1
        )
        await st.charger.unplug(1)


@pytest.mark.req("STOP-3")
@pytest.mark.parametrize("transport", ["tcp", "pty"])
async def test_unplug_to_stop(station_factory: StationFactory, transport: str) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station_factory(transport=transport, config=config) as st:
        e0 = await st.charger.energy_wh(1)
        s = await start_charging(st, 1, 9)
        await st.charger.unplug(1)
        e1 = await st.charger.energy_wh(1)
        sim, journal = await assert_settled(st, committed=1)
        assert_commit_matches_energy(st, sim[0], journal_by_sid(journal, s["session_id"]), e1 - e0, 1)


@pytest.mark.req("STOP-4")
async def test_ui_stop(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["plug_in", "ui"], "stop_modes": ["ui", "unplug"]}}
    async with station_factory(config=config) as st:
        e0 = await st.charger.energy_wh(1)
        s = await start_charging(st, 1, 10)
        await press_connector(st, 1)
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(10))  # authenticate with the same card
        await st.wait_session_status("committed")
        snap = await st.wait_charger(1, lambda c: not c["enabled"], what="energy off")
        sim, journal = await assert_settled(st, committed=1)
        assert len(sim) == 1
        assert_commit_matches_energy(
            st, sim[0], journal_by_sid(journal, s["session_id"]), snap["energy_wh"] - e0, 1
        )
        await st.charger.unplug(1)


@pytest.mark.req("STOP-9")
async def test_idle_fee_commit_only_after_unplug(station_factory: StationFactory) -> None:
    config = {
        "session": {"start_modes": ["plug_in"], "stop_modes": ["tap", "unplug"], "idle_fee_enabled": True},
        "tariff": {"idle_fee_per_minute": "6.00", "idle_grace_minutes": 0},
    }
    async with station_factory(config=config) as st:
        s = await start_charging(st, 1, 11)
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(11))  # charging ends, the vehicle stays: idle time starts
        await st.wait_charger(1, lambda c: not c["enabled"], what="energy off")
        await asyncio.sleep(2.0)
        assert [x["status"] for x in await st.psp.sessions()] == ["approved"]  # commit deferred
        await st.charger.unplug(1)
        (c,) = await st.wait_session_status("committed")
        _sim, journal = await assert_settled(st, committed=1)
        p = journal_by_sid(journal, s["session_id"])
        energy_cost = st.expected_cost(p["energy_wh"])
        assert c["committed_minor"] == p["final_minor"]
        assert energy_cost + 20 <= c["committed_minor"] <= AUTHORIZED  # ≥ 2 s at 0.10 EUR/s idle


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.req("ERR-2")
async def test_charger_lost_commits_last_total(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station_factory(config=config) as st:
        e0 = await st.charger.energy_wh(1)
        s = await start_charging(st, 1, 12)
        await st.wait_energy(1, 300)
        await st.charger.lose()
        e1 = await st.charger.energy_wh(1)
        (c,) = await st.wait_session_status("committed")
        _sim, journal = await assert_settled(st, committed=1)
        p = journal_by_sid(journal, s["session_id"])
        assert c["committed_minor"] == p["final_minor"] == st.expected_cost(p["energy_wh"])
        assert 0 < p["final_minor"] <= AUTHORIZED
        assert 300 <= p["energy_wh"] <= e1 - e0  # the last total the agent knew
        await st.charger.restore()
        await st.charger.unplug(1)


@pytest.mark.req("ERR-4", "STOP-3")
async def test_charger_fault_commits_delivered_energy(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station_factory(config=config) as st:
        e0 = await st.charger.energy_wh(1)
        s = await start_charging(st, 1, 13)
        await st.charger.fault(1, "RCD_TRIPPED")
        e1 = await st.charger.energy_wh(1)
        sim, journal = await assert_settled(st, committed=1)
        assert_commit_matches_energy(st, sim[0], journal_by_sid(journal, s["session_id"]), e1 - e0, 1)
        await asyncio.sleep(0.3)
        assert not (await st.charger.state(1))["enabled"]
        await st.charger.clear(1)
        await st.charger.unplug(1)


@pytest.mark.req("ERR-3")
@pytest.mark.parametrize("policy", ["free_vend", "refuse"])
async def test_terminal_offline_at_start(station_factory: StationFactory, policy: str) -> None:
    config = {
        "session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"], "free_vend_when_offline": policy}
    }
    async with station_factory(relay=True, config=config) as st:
        assert st.link is not None
        await st.link.down()
        await st.charger.power(1, POWER_W)
        await st.charger.plug(1)
        if policy == "free_vend":
            await st.wait_energy(1, 150)
            await st.charger.unplug(1)
            # the free-vend session ends without anything to settle on the terminal
            sim, journal = await st.wait_settled()
            assert sim == []
            (p,) = journal
            assert p["method"] == "free_vend"
            assert p["terminal_session_id"] is None
            assert p["energy_wh"] > 0
            assert p["ended_at"] is not None
        else:
            await asyncio.sleep(2.0)
            assert not (await st.charger.state(1))["enabled"]  # no energy without payment
            assert [p for p in await st.agent.sessions() if p.get("method") != "emv"] == []
            await st.link.up()  # link back: the plugged vehicle is asked for a card
            await st.wait_ready(within=20)
            await st.wait_terminal(("WAIT_CARD",), within=10)
            await st.psp.tap_emv(**card(14))
            await st.wait_session_status("approved")
            await st.wait_energy(1, 150)
            await st.charger.unplug(1)
            await assert_settled(st, committed=1)


@pytest.mark.req("ERR-3", "STOP-7")
async def test_terminal_offline_at_stop_commit_retried(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"], "settlement_retry_s": [1]}}
    async with station_factory(relay=True, config=config) as st:
        assert st.link is not None
        e0 = await st.charger.energy_wh(1)
        s = await start_charging(st, 1, 15)
        await st.link.down()
        await st.charger.unplug(1)
        e1 = await st.charger.energy_wh(1)
        await asyncio.sleep(2.0)
        assert [x["status"] for x in await st.psp.sessions()] == ["approved"]  # not reachable yet
        await st.link.up()
        await st.wait_session_status("committed", within=30)
        sim, journal = await assert_settled(st, committed=1)
        assert_commit_matches_energy(st, sim[0], journal_by_sid(journal, s["session_id"]), e1 - e0, 1)


@pytest.mark.req("TERM-5", "STOP-1", "STOP-3")
async def test_two_connectors_interleaved_taps(station_factory: StationFactory) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["tap", "unplug"]}}
    async with station_factory(connectors=2, config=config) as st:
        a = await start_charging(st, 1, 21)
        b = await start_charging(st, 2, 22)
        assert (await st.charger.state(1))["enabled"]
        assert (await st.charger.state(2))["enabled"]
        await st.wait_terminal(("WAIT_CARD",))
        await st.charger.unplug(1)  # commit A while the terminal waits for a card (TERM-5)
        committed = await st.wait_session_status("committed")
        assert [x["session_id"] for x in committed] == [a["session_id"]]
        assert (await st.charger.state(2))["enabled"]
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(22))  # tap-to-stop B
        await st.wait_session_status("committed", count=2)
        sim, journal = await assert_settled(st, committed=2)
        pa, pb = journal_by_sid(journal, a["session_id"]), journal_by_sid(journal, b["session_id"])
        assert (pa["connector_id"], pa["masked_pan"]) == (1, pan(21))
        assert (pb["connector_id"], pb["masked_pan"]) == (2, pan(22))
        for s in sim:
            p = journal_by_sid(journal, s["session_id"])
            assert s["committed_minor"] == p["final_minor"] == st.expected_cost(p["energy_wh"])
        await st.charger.unplug(2)
