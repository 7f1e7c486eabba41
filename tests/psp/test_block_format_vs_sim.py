"""The terminal as it is, end to end against the simulator as a real peer (psp-reference §2.2, §2.3):

- Apollo asks for the extended block format (Protocol option 0x04) and uses it when the echo grants
  it: a ~1000-byte UI Request is accepted and shown;
- when the terminal masks 0x04 the link stays in the normal format: ``screen_fits`` says no, and
  sending the screen anyway raises ``MessageTooLong`` without touching the link;
- a reboot (OFFLINE) or a Reset returns to the normal format and the next setup asks again.

The undecodable-reply end-to-end check (a fake terminal answering Request IDs with garbage) is in
``tests/psp/test_request_ids.py``: the simulator only ever sends well-formed frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.psp import messages as m
from drivers.psp.errors import MessageTooLong, PspTimeout
from tests.psp.sim_rig import TRANSPORTS, Rig, rig

NO_EXTENDED = 0x1B  # every known option but 0x04 (§5.3)
TEXT = "Charged 12.5 kWh — thank you! " * 32  # 1024 UTF-8 bytes: far beyond a normal frame
SCREEN = {"title": "Receipt", "message": TEXT, "icon": "approved"}


@pytest.fixture(params=TRANSPORTS)
async def granted(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async with rig(request.param, "apollo") as r:
        yield r


@pytest.fixture(params=TRANSPORTS)
async def masked(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async with rig(request.param, "apollo", sim_config={"grant_options": m.ProtocolOption(NO_EXTENDED)}) as r:
        yield r


def _protocols(r: Rig) -> list[m.Protocol]:
    return [req for req in r.sim.received if isinstance(req, m.Protocol)]


async def test_granted_extended_format_shows_a_1000_byte_screen(granted: Rig) -> None:
    r = granted
    (protocol,) = _protocols(r)
    assert m.ProtocolOption.EXTENDED_BLOCK in protocol.options
    assert r.sim.extended
    assert r.terminal.screen_bytes("notification", SCREEN) > 1000  # ~4 normal frames' worth
    assert r.terminal.screen_limit_bytes > 1000
    assert r.terminal.screen_fits("notification", SCREEN)
    await r.terminal.show_screen("notification", SCREEN)
    shown = r.sim.current_screen
    assert shown is not None
    assert shown.screen_type == "notification"
    assert shown.get("message") == TEXT
    assert shown.get("icon") == "approved"


async def test_masked_extended_format_refuses_the_screen_and_keeps_the_link(masked: Rig) -> None:
    r = masked
    (protocol,) = _protocols(r)
    assert m.ProtocolOption.EXTENDED_BLOCK in protocol.options  # asked …
    assert not r.sim.extended  # … but not granted
    link = r.session.link
    assert link is not None
    assert not link.wire.extended
    assert r.terminal.screen_limit_bytes == 252
    assert not r.terminal.screen_fits("notification", SCREEN)
    with pytest.raises(MessageTooLong) as info:
        await r.terminal.show_screen("notification", SCREEN)
    assert (info.value.limit, info.value.extended) == (252, False)
    assert info.value.size == r.terminal.screen_bytes("notification", SCREEN)
    assert not any(isinstance(req, m.UiRequest) for req in r.sim.received)  # nothing was sent
    assert await r.terminal.status() == "ENABLED"  # the link works on
    assert r.session.link is link
    assert r.session.state.value.setups == 1
    short = {"title": "Receipt", "message": TEXT[:150]}
    assert r.terminal.screen_fits("notification", short)
    await r.terminal.show_screen("notification", short)  # a screen that fits is shown as before
    assert r.sim.current_screen == m.UiRequest("notification", tuple(short.items()))


@pytest.mark.req("TERM-1")
async def test_reboot_returns_to_the_normal_format_and_setup_asks_again(granted: Rig) -> None:
    """TCP: the reboot closes the socket (a new link); pty: the link stays and the keep-alive finds
    the terminal OFFLINE. Either way the next setup asks for 0x04 again and gets it."""
    r = granted
    before = r.session.state.value.setups
    r.sim.reboot(keep_sessions=True)
    assert not r.sim.extended  # the simulator's "protocol reset"
    await r.recovered(before)
    protocols = _protocols(r)
    assert len(protocols) == 2
    assert all(m.ProtocolOption.EXTENDED_BLOCK in p.options for p in protocols)
    assert r.sim.extended
    link = r.session.link
    assert link is not None
    assert link.wire.extended
    await r.terminal.show_screen("notification", SCREEN)  # extended again
    assert r.sim.current_screen is not None


@pytest.mark.req("TERM-1", "ERR-7")
async def test_reset_after_a_timeout_returns_to_the_normal_format_and_setup_asks_again(granted: Rig) -> None:
    r = granted
    before = r.session.state.value.setups
    r.sim.faults.drop_replies(1)
    with pytest.raises(PspTimeout):
        await r.terminal.status()  # §10.1: Reset, then the full setup
    await r.recovered(before)
    names = [req.name for req in r.sim.received]
    reset = names.index("Reset")
    assert names[reset : reset + 3] == ["Reset", "Synchronize", "Protocol"]
    assert all(m.ProtocolOption.EXTENDED_BLOCK in p.options for p in _protocols(r))
    assert r.sim.extended
    async with asyncio.timeout(3):
        await r.terminal.show_screen("notification", SCREEN)
    assert r.sim.current_screen is not None
