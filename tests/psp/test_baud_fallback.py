"""Serial baud-rate fallback (psp-reference §1.2: try 57600 first, then 115200; ``Quirks.baud_rates``)."""

from __future__ import annotations

import asyncio

import pytest

from drivers.psp.session import serial_url_candidates
from drivers.terminal import PspTerminal
from drivers.transport import Transport, memory_pair, open_transport
from hil.psp_sim import SimConfig, Simulator
from tests.psp.sim_rig import RECOVERY_S, fast_profile


def test_serial_url_candidates() -> None:
    assert serial_url_candidates("serial:///dev/ttyS0", (57600, 115200)) == (
        "serial:///dev/ttyS0?baudrate=57600",
        "serial:///dev/ttyS0?baudrate=115200",
    )
    # an explicit rate in the URL is tried first, the configured ones after it
    assert serial_url_candidates("serial:///dev/ttyS0?baudrate=19200", (57600, 115200)) == (
        "serial:///dev/ttyS0?baudrate=19200",
        "serial:///dev/ttyS0?baudrate=57600",
        "serial:///dev/ttyS0?baudrate=115200",
    )
    assert serial_url_candidates("tcp://10.0.0.5:3201", (57600, 115200)) == ("tcp://10.0.0.5:3201",)


@pytest.mark.req("TERM-1")
async def test_terminal_at_115200_is_found_after_57600_stays_silent() -> None:
    """At the wrong rate a real terminal answers nothing intelligible: the session moves on."""
    opened: list[str] = []
    deaf_ends: list[Transport] = []
    async with Simulator(SimConfig(family="p6x", auth_delay_s=0.01)) as sim:
        path = await sim.serve_pty()

        async def opener(url: str) -> Transport:
            opened.append(url)
            if "baudrate=115200" in url:
                return await open_transport(url)
            ours, theirs = memory_pair(f"deaf-{len(opened)}")  # nobody answers on the other end
            deaf_ends.append(theirs)
            return ours

        profile = fast_profile("p6x", other_s=0.1, sync_retry_s=0.01)
        async with PspTerminal(
            f"serial://{path}", profile, opener=opener, ready_timeout_s=RECOVERY_S
        ) as terminal:
            async with asyncio.timeout(RECOVERY_S):
                await terminal.wait_ready(RECOVERY_S)
            assert terminal.session.active_url == f"serial://{path}?baudrate=115200"
            assert opened[0] == f"serial://{path}?baudrate=57600"
            assert opened[-1] == f"serial://{path}?baudrate=115200"
            status = await terminal.session.get_status()
            assert status.state.name == "ENABLED"
        for end in deaf_ends:
            await end.close()
