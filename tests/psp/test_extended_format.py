"""Apollo extended block format (Protocol option 0x04, psp-reference §2.2) end to end with the simulator."""

from __future__ import annotations

import asyncio

import pytest

from drivers.psp import messages as m
from drivers.terminal import Approved, CardPresented, PspTerminal
from hil.psp_sim import Card, SimConfig, Simulator
from tests.psp.sim_rig import RECOVERY_S, fast_profile

LONG_QR = "https://receipts.example.com/r/" + "x" * 600  # needs the extended format (> 0xFE bytes)


@pytest.mark.parametrize("transport", ["tcp", "pty"])
async def test_extended_format_session_with_a_long_field(transport: str) -> None:
    profile = fast_profile("apollo")
    assert profile.extended_block  # the Apollo profile asks for it (§2.2); the echo grants it
    async with Simulator(SimConfig(family="apollo", auth_delay_s=0.01, seed=3)) as sim:
        if transport == "tcp":
            url = f"tcp://127.0.0.1:{await sim.serve_tcp('127.0.0.1', 0)}"
        else:
            url = f"serial://{await sim.serve_pty()}?baudrate=115200"
        async with PspTerminal(url, profile, ready_timeout_s=RECOVERY_S) as terminal:
            await terminal.wait_ready(RECOVERY_S)
            assert sim.extended  # §2.2: option 0x04 confirmed by the echo, in force from the next frame
            assert sim.protocol_options & m.ProtocolOption.EXTENDED_BLOCK
            link = terminal.session.link
            assert link is not None
            assert link.wire.extended

            # a Start Session whose QR URL does not fit a 1-byte length (§2.3) goes out extended
            await terminal.start_card_read(2500, 21, qr_url=LONG_QR)
            assert sim.state is m.PspState.WAIT_CARD
            start = next(r for r in sim.received if isinstance(r, m.StartSession))
            assert start.qr_url == LONG_QR

            sim.tap(Card.emv())
            async with asyncio.timeout(3):
                async for event in terminal.events():
                    if isinstance(event, CardPresented):
                        break
            outcome = await terminal.authorize()
            assert isinstance(outcome, Approved)
            await terminal.commit(outcome.session_id, 999)
            assert sim.sessions[outcome.session_id].status == "committed"
            assert sim.sessions[outcome.session_id].committed_minor == 999
