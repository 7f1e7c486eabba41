"""Start Session + Get Status in one exchange (DESIGN.md §3.2, psp-reference §4.4, §5.9).

The link writes the start and a Get Status right behind it and holds its lock for that one round
trip only: no fixed window, so an Auth Session for a card read at once (the card was already at the
reader) is sent without waiting.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.psp import messages as m
from drivers.psp.errors import PspNotOk
from drivers.psp.link import PspLink
from drivers.psp.profile import APOLLO
from drivers.terminal import Approved, CardPresented
from drivers.transport import memory_pair
from hil.psp_sim import Card
from tests.psp.sim_rig import rig
from tests.psp.test_link import Peer

# a window far longer than any test wait: if the link still waited for it, these tests would fail
SLOW_WINDOW = APOLLO.with_timeouts(other_s=2.0, start_session_window_s=30.0, auth_s=2.0)
CARD = m.CardRead(m.Dol(((m.Tag.MASKED_PAN, b"476173****0119"),)))


async def test_start_and_get_status_leave_together_and_the_lock_is_free_after_the_status() -> None:
    host, term = memory_pair("start-pair")
    async with PspLink(host, SLOW_WINDOW) as link:
        peer = Peer(term)
        started = time.monotonic()
        call = asyncio.create_task(link.request(m.StartSession(2500, 10)))
        assert await peer.receive() == m.StartSession(2500, 10)
        assert isinstance(await peer.receive(), m.GetStatus)  # written right behind it, no window
        # the card is already at the reader: Card Read (an event) precedes the status reply
        await peer.send(CARD, m.GetStatusResponse(m.PspState.WAIT_AUTH, False))
        status = await call
        assert isinstance(status, m.GetStatusResponse)
        assert status.state is m.PspState.WAIT_AUTH
        assert await link.next_event() == CARD
        auth = asyncio.create_task(link.request(m.AuthSession()))
        assert isinstance(await peer.receive(), m.AuthSession)  # the lock is free: one round trip
        assert time.monotonic() - started < 1.0  # far below the 30 s "window"
        await peer.send(m.SessionApproved(0x1234))
        assert isinstance(await auth, m.SessionApproved)


async def test_not_ok_before_the_status_rejects_and_the_status_is_consumed() -> None:
    host, term = memory_pair("start-not-ok")
    async with PspLink(host, SLOW_WINDOW) as link:
        peer = Peer(term)
        call = asyncio.create_task(link.request(m.StartSession(2500, 10)))
        await peer.receive()
        await peer.receive()
        # the terminal answers in order: the start's Not OK, then the status
        await peer.send(m.Result(False, m.ResultCode.INCORRECT_PSP_STATE))
        await peer.send(m.GetStatusResponse(m.PspState.DISABLED, False))
        with pytest.raises(PspNotOk) as info:
            await call
        assert info.value.reason is m.ResultCode.INCORRECT_PSP_STATE
        # the trailing status was taken by the start: the next Get Status gets its own reply
        status = asyncio.create_task(link.request(m.GetStatus()))
        assert isinstance(await peer.receive(), m.GetStatus)
        await peer.send(m.GetStatusResponse(m.PspState.ENABLED, False))
        reply = await status
        assert isinstance(reply, m.GetStatusResponse)
        assert reply.state is m.PspState.ENABLED
        assert link.stats.unexpected == 0


@pytest.mark.parametrize("transport", ["tcp", "pty"])
async def test_card_already_at_the_reader_is_authorized_at_once_against_the_simulator(transport: str) -> None:
    async with rig(transport, "apollo", start_session_window_s=30.0) as r:
        assert r.sim.tap(Card.emv()) == "queued"  # on the reader before the card read starts
        started = time.monotonic()
        await r.terminal.start_card_read(2500, 10)  # confirmed by the simulator's WAIT_AUTH
        await r.next_event(CardPresented)
        outcome = await r.terminal.authorize()
        assert isinstance(outcome, Approved), outcome
        assert time.monotonic() - started < 1.0  # no 30 s window (nor the old 0.5 s one)
        received = [type(msg).__name__ for msg in r.sim.received]
        start = max(i for i, name in enumerate(received) if name == "StartSession")
        assert received[start : start + 3] == ["StartSession", "GetStatus", "AuthSession"]
