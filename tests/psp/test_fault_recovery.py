"""Acceptance 4 (issue 2): fault recovery against the simulator (psp-reference §10, ERR-7, ERR-8, TERM-1/4).

After each fault the link is back and enabled within 5 s (test-shortened timers), no task leaks
(the conftest guard), no crash.
"""

from __future__ import annotations

import asyncio

import pytest

from drivers.psp import messages as m
from drivers.psp.errors import PspTimeout, SessionNotFound
from drivers.terminal import Approved, CardPresented
from hil.psp_sim import Card
from tests.psp.sim_rig import FAST_TIMERS, MATRIX, RECOVERY_S, rig

ids = [f"{t}-{f}" for t, f in MATRIX]


@pytest.mark.req("TERM-1")
@pytest.mark.parametrize(("transport", "family"), MATRIX, ids=ids)
async def test_idle_socket_close(transport: str, family: str) -> None:
    """§10.2: the terminal closes the socket (TCP) or drops PSP to OFFLINE (pty); set up again."""
    async with rig(transport, family) as r:
        before = r.session.state.value.setups
        r.sim.close_connection()
        await r.recovered(before)
        assert r.sim.state is m.PspState.ENABLED


@pytest.mark.req("TERM-4")
async def test_keepalive_prevents_the_idle_close() -> None:
    """TERM-4: Get Status at ≤ 15 s keeps a TCP link open across the terminal's idle close."""
    async with rig("tcp", "apollo", sim_config={"idle_close_s": 0.4}, keepalive_s=0.1) as r:
        await asyncio.sleep(1.2)  # three idle-close periods
        assert r.session.state.value.setups == 1
        assert r.sim.received.count(m.GetStatus()) >= 5


@pytest.mark.req("TERM-1")
async def test_idle_close_without_keepalive_reconnects() -> None:
    async with rig("tcp", "apollo", sim_config={"idle_close_s": 0.3}, keepalive_s=30.0) as r:
        await r.recovered(r.session.state.value.setups)


@pytest.mark.req("TERM-1", "ERR-8")
@pytest.mark.parametrize(("transport", "family"), MATRIX, ids=ids)
async def test_terminal_reboot(transport: str, family: str) -> None:
    """§10.9: after a reboot (Not Ready at first) the link is set up again; open sessions survive."""
    async with rig(transport, family, sim_config={"boot_not_ready": 2}) as r:
        await r.terminal.start_card_read(2500, 1)
        r.sim.tap(Card.emv())
        await r.next_event(CardPresented)
        outcome = await r.terminal.authorize()
        assert isinstance(outcome, Approved)
        before = r.session.state.value.setups
        r.sim.reboot(keep_sessions=True)
        await r.recovered(before)
        await r.terminal.commit(outcome.session_id, 1500)
        assert r.sim.sessions[outcome.session_id].status == "committed"


@pytest.mark.req("ERR-7")
@pytest.mark.parametrize("fault", ["corrupt", "drop"])
@pytest.mark.parametrize(("transport", "family"), MATRIX, ids=ids)
async def test_corrupted_or_dropped_reply(transport: str, family: str, fault: str) -> None:
    """A lost reply is a command timeout: Reset + full setup (§10.1), then commands work."""
    async with rig(transport, family) as r:
        before = r.session.state.value.setups
        if fault == "corrupt":
            r.sim.faults.corrupt_replies(1)
        else:
            r.sim.faults.drop_replies(1)
        with pytest.raises(PspTimeout):
            await r.session.get_status()
        await r.recovered(before)
        assert r.sim.received.count(m.Reset()) + (r.session.state.value.setups - before) >= 1


@pytest.mark.req("ERR-7")
@pytest.mark.parametrize(("transport", "family"), MATRIX, ids=ids)
async def test_split_replies(transport: str, family: str) -> None:
    """Replies split into 1- and 3-byte pieces (separate TCP segments) decode unchanged."""
    async with rig(transport, family) as r:
        r.sim.faults.split_replies(1)
        await r.terminal.start_card_read(2500, 1)
        r.sim.tap(Card.emv())
        card = await r.next_event(CardPresented)
        assert card.masked_pan == "476173******0010"
        r.sim.faults.split_replies(3)
        outcome = await r.terminal.authorize()
        assert isinstance(outcome, Approved)
        await r.terminal.commit(outcome.session_id, 100)
        assert r.session.state.value.setups == 1  # no recovery was needed


@pytest.mark.req("ERR-7")
@pytest.mark.parametrize(("transport", "family"), MATRIX, ids=ids)
async def test_reply_delayed_past_its_timeout(transport: str, family: str) -> None:
    """§10.1: a reply later than the command timeout → Reset + re-setup; the late reply is harmless."""
    async with rig(transport, family) as r:
        before = r.session.state.value.setups
        r.sim.faults.delay_replies(FAST_TIMERS["other_s"] * 1.7, 1)
        with pytest.raises(PspTimeout):
            await r.session.get_status()
        await r.recovered(before)
        assert m.Reset() in r.sim.received
        assert r.sim.state is m.PspState.ENABLED


@pytest.mark.req("ERR-7")
@pytest.mark.parametrize(("transport", "family"), MATRIX, ids=ids)
async def test_commit_reply_lost_is_resent(transport: str, family: str) -> None:
    """§10.3: a lost Commit reply; after recovery the same Commit is answered (or 0x0C = done)."""
    async with rig(transport, family) as r:
        await r.terminal.start_card_read(2500, 1)
        r.sim.tap(Card.emv())
        await r.next_event(CardPresented)
        outcome = await r.terminal.authorize()
        assert isinstance(outcome, Approved)
        before = r.session.state.value.setups
        r.sim.faults.drop_replies(1)
        with pytest.raises(PspTimeout):
            await r.terminal.commit(outcome.session_id, 1200)
        await r.recovered(before)
        try:
            await r.terminal.commit(outcome.session_id, 1200)
        except SessionNotFound:
            pass  # the first Commit went through: already disposed
        assert r.sim.sessions[outcome.session_id].status == "committed"
        assert r.sim.sessions[outcome.session_id].committed_minor == 1200


@pytest.mark.req("TERM-1")
@pytest.mark.parametrize(("transport", "family"), MATRIX, ids=ids)
async def test_not_ready_during_boot(transport: str, family: str) -> None:
    """§10.8: Synchronize answered Not OK/0x11 while booting → keep polling."""
    async with rig(transport, family, sim_config={"boot_not_ready": 3}) as r:
        sent = [type(x).__name__ for x in r.sim.received]
        assert sent[:5] == ["Synchronize"] * 4 + ["Protocol"]
        assert r.terminal.state.ready


@pytest.mark.req("ERR-8")
@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_wrong_state_recovers_via_get_status(family: str) -> None:
    """§10.7: a Start Session refused because the terminal fell back to OFFLINE is sent again after setup."""
    async with rig("tcp", family, keepalive_s=30.0) as r:
        r.sim.reboot(drop_link=False)  # OFFLINE behind the driver's back, link kept
        before = r.session.state.value.setups
        async with asyncio.timeout(RECOVERY_S):
            status = await r.terminal.session.start_card_read(2500, 3)
        assert status.state is m.PspState.WAIT_CARD
        assert r.session.state.value.setups == before + 1
