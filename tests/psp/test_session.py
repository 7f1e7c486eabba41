"""TerminalSession against the scripted FakeTerminal (DESIGN.md §3.2 item 4, psp-reference §7.1, §10)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from drivers.errors import NotSupported, TransportError
from drivers.psp import messages as m
from drivers.psp.errors import PspTimeout, SessionNotFound, TerminalNotReady
from drivers.psp.profile import APOLLO, P6X, Profile
from drivers.psp.session import LinkStatus, TerminalLinkState, TerminalSession, Watch
from drivers.transport import Transport
from tests.psp.fake_terminal import MASKED_PAN, FakeTerminal

TIMERS = {
    "other_s": 0.3,
    "auth_s": 0.5,
    "commit_void_s": 0.5,
    "start_session_window_s": 0.03,
    "keepalive_s": 5.0,
    "sync_retry_s": 0.02,
    "reconnect_min_s": 0.01,
    "reconnect_max_s": 0.05,
    "inter_byte_s": 0.05,
}


def fast(profile: Profile, **changes: float) -> Profile:
    return profile.with_timeouts(**{**TIMERS, **changes})


@pytest.fixture
async def apollo() -> AsyncIterator[tuple[TerminalSession, FakeTerminal]]:
    fake = FakeTerminal(m.Family.APOLLO)
    async with TerminalSession(
        "memory://fake", fast(APOLLO), opener=fake.opener, ready_timeout_s=3
    ) as session:
        await session.wait_ready()
        yield session, fake
    await fake.close_connection()


def names(fake: FakeTerminal) -> list[str]:
    return [type(r).__name__ for r in fake.received]


@pytest.mark.req("TERM-1", "TERM-2")
async def test_setup_sequence(apollo: tuple[TerminalSession, FakeTerminal]) -> None:
    session, fake = apollo
    assert names(fake)[:4] == ["Synchronize", "Protocol", "Setup", "Enable"]
    setup = next(r for r in fake.received if isinstance(r, m.Setup))
    assert setup == m.Setup(172_800, m.TimeoutAction.VOID)  # TERM-2: void on timeout
    protocol = next(r for r in fake.received if isinstance(r, m.Protocol))
    assert protocol.options == APOLLO.requested_options()
    assert m.ProtocolOption.EXTENDED_BLOCK in protocol.options  # §2.2: Apollo asks for it
    state = session.state.value
    assert state.link is LinkStatus.READY
    assert state.psp_state is m.PspState.ENABLED
    assert state.ids is not None
    assert state.ids["serial_number"] == "APOLLO-FAKE"
    assert state.protocol is not None
    assert state.protocol["accepted_options"] == int(APOLLO.requested_options())
    assert state.protocol["extended"] is True
    assert session.link is not None
    assert session.link.wire.extended
    assert session.wire.extended


@pytest.mark.req("TERM-1")
async def test_echo_masking_extended_block_keeps_the_normal_format(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "drivers.psp.session")
    fake = FakeTerminal()
    fake.grant = m.KNOWN_OPTIONS & ~m.ProtocolOption.EXTENDED_BLOCK  # §5.3 [GAP]: masked, not refused
    async with TerminalSession("memory://fake", fast(APOLLO), opener=fake.opener) as session:
        state = await session.wait_ready(3)
        assert state.protocol is not None
        requested = state.protocol["requested_options"]
        assert isinstance(requested, int)
        assert requested & m.ProtocolOption.EXTENDED_BLOCK
        assert state.protocol["extended"] is False
        assert not session.wire.extended
        assert session.payload_limit == 252
        assert (await session.get_status()).state is m.PspState.ENABLED  # both ends speak normal
        assert not fake.wire.extended
    await fake.close_connection()
    assert "extended block format not granted (echo 0x0B); normal format, 252-byte payloads" in caplog.text


@pytest.mark.req("TERM-1", "ERR-7")
async def test_reset_returns_to_the_normal_format_and_setup_asks_again(
    apollo: tuple[TerminalSession, FakeTerminal],
) -> None:
    session, fake = apollo
    link = session.link
    assert link is not None
    assert link.wire.extended
    fake.drop = 1
    with pytest.raises(PspTimeout):
        await session.get_status()  # §10.1: Reset + full setup
    async with asyncio.timeout(5):
        await session.state.wait_for(lambda s: s.ready and s.setups >= 2)
    assert session.link is link  # the same link, no reconnect
    sent = names(fake)
    reset = sent.index("Reset")
    assert sent[reset : reset + 3] == ["Reset", "Synchronize", "Protocol"]
    protocols = [r for r in fake.received if isinstance(r, m.Protocol)]
    assert len(protocols) == 2
    assert all(m.ProtocolOption.EXTENDED_BLOCK in p.options for p in protocols)
    assert link.wire.extended  # granted again
    assert fake.wire.extended


@pytest.mark.req("TERM-1")
async def test_not_ready_during_boot_keeps_polling_synchronize() -> None:
    fake = FakeTerminal()
    fake.not_ready = 3  # §10.8
    async with TerminalSession("memory://fake", fast(APOLLO), opener=fake.opener) as session:
        await session.wait_ready(3)
    assert names(fake)[:5] == ["Synchronize"] * 4 + ["Protocol"]
    await fake.close_connection()


@pytest.mark.req("TERM-4")
async def test_keepalive_get_status() -> None:
    fake = FakeTerminal()
    profile = fast(APOLLO, keepalive_s=0.05)
    async with TerminalSession("memory://fake", profile, opener=fake.opener) as session:
        await session.wait_ready(3)
        before = names(fake).count("GetStatus")
        await asyncio.sleep(0.3)
        assert names(fake).count("GetStatus") >= before + 3
    await fake.close_connection()


@pytest.mark.req("TERM-4", "TERM-1")
async def test_failed_probe_is_a_lost_link_and_reconnects() -> None:
    fake = FakeTerminal()
    profile = fast(APOLLO, keepalive_s=0.05, other_s=0.1)
    async with TerminalSession("memory://fake", profile, opener=fake.opener) as session:
        await session.wait_ready(3)
        fake.drop = 1  # the next keep-alive is not answered
        async with asyncio.timeout(5):
            state = await session.state.wait_for(lambda s: s.ready and s.setups >= 2)
        assert fake.connects == 2
        assert state.psp_state is m.PspState.ENABLED
    await fake.close_connection()


@pytest.mark.req("TERM-1")
async def test_peer_close_reconnects_and_sets_up_again(apollo: tuple[TerminalSession, FakeTerminal]) -> None:
    session, fake = apollo
    await fake.close_connection()
    async with asyncio.timeout(5):
        await session.state.wait_for(lambda s: s.ready and s.setups >= 2)
    assert fake.connects == 2


@pytest.mark.req("ERR-7")
async def test_command_timeout_resets_and_sets_up_again(apollo: tuple[TerminalSession, FakeTerminal]) -> None:
    session, fake = apollo
    fake.drop = 1
    with pytest.raises(PspTimeout):
        await session.get_status()
    async with asyncio.timeout(5):
        await session.state.wait_for(lambda s: s.ready and s.setups >= 2)
    tail = names(fake)[-7:]
    assert tail[:3] == ["GetStatus", "Reset", "Synchronize"]
    assert fake.connects == 1  # the link itself was fine: no reconnect
    assert (await session.get_status()).state is m.PspState.ENABLED


@pytest.mark.req("ERR-8")
async def test_wrong_state_recovers_with_missing_transitions(
    apollo: tuple[TerminalSession, FakeTerminal],
) -> None:
    session, fake = apollo
    fake.state = m.PspState.DISABLED  # e.g. someone sent Disable
    status = await session.start_card_read(2500, 10)
    assert status.state is m.PspState.WAIT_CARD
    sent = names(fake)
    first = sent.index("StartSession")
    assert "Enable" in sent[first:]  # §10.7: the missing transition DISABLED → ENABLED
    assert sent[-2:] == ["StartSession", "GetStatus"]  # sent again after the repair, confirmed


@pytest.mark.req("ERR-8")
async def test_wrong_state_offline_runs_full_setup(apollo: tuple[TerminalSession, FakeTerminal]) -> None:
    session, fake = apollo
    fake.state = m.PspState.OFFLINE  # the terminal rebooted behind a serial link
    fake.sessions[0x42] = "approved"
    await session.commit(0x42, 1000)
    assert fake.sessions[0x42] == "committed"
    assert session.state.value.setups == 2


async def test_payment_flow_and_events(apollo: tuple[TerminalSession, FakeTerminal]) -> None:
    session, fake = apollo
    await session.start_card_read(2500, 10)
    await fake.tap()
    event = await anext(aiter(session.events()))
    while isinstance(event, TerminalLinkState):
        event = await anext(aiter(session.events()))
    assert isinstance(event, m.CardRead)
    assert event.dol.masked_pan == MASKED_PAN
    outcome = await session.authorize()
    assert isinstance(outcome, m.SessionApproved)
    await session.commit(outcome.session_id, 1234)
    with pytest.raises(SessionNotFound) as info:
        await session.void(outcome.session_id)  # already disposed → 0x0C (§10.3)
    assert info.value.session_id == outcome.session_id


@pytest.mark.req("STOP-7", "ERR-8")
async def test_apollo_without_detailed_codes_counts_a_refused_repeat_commit_as_disposed() -> None:
    """An Apollo that did not grant detailed result codes (option 0x08) answers a Commit of a
    session it already committed — the reply was lost with the host — with a bare Not OK, and it
    cannot list sessions (psp-reference §10.3): counted as disposed (``SessionNotFound``) instead of
    being retried for ever (found by the fuzzer: seed 18, a kill right after ``psp_sent:CommitSession``)."""
    fake = FakeTerminal(m.Family.APOLLO)
    fake.detailed = False
    async with TerminalSession(
        "memory://fake", fast(APOLLO), opener=fake.opener, ready_timeout_s=3
    ) as session:
        await session.wait_ready()
        await session.start_card_read(2500, 10)
        await fake.tap()
        outcome = await session.authorize()
        assert isinstance(outcome, m.SessionApproved)
        await session.commit(outcome.session_id, 1234)
        with pytest.raises(SessionNotFound):
            await session.commit(outcome.session_id, 1234)  # again: Not OK without a code
        assert fake.sessions[outcome.session_id] == "committed"  # committed once
    await fake.close_connection()


async def test_cancel_read(apollo: tuple[TerminalSession, FakeTerminal]) -> None:
    session, _fake = apollo
    assert await session.cancel_read() is False  # nothing running
    await session.start_card_read(100, 1)
    assert await session.cancel_read() is True


async def test_family_capabilities_come_from_the_profile(
    apollo: tuple[TerminalSession, FakeTerminal],
) -> None:
    session, _fake = apollo
    with pytest.raises(NotSupported, match="List Sessions"):
        await session.list_sessions()


async def test_p6x_list_sessions_follows_pagination() -> None:
    fake = FakeTerminal(m.Family.P6X)
    fake.sessions = {
        1: "approved",
        2: "approved",
        3: "committed",
        4: "approved",
        5: "approved",
        6: "approved",
    }
    async with TerminalSession("memory://fake", fast(P6X), opener=fake.opener) as session:
        await session.wait_ready(3)
        assert await session.list_sessions() == (1, 2, 4, 5, 6)
        with pytest.raises(NotSupported):
            await session.show_screen("dialog", {"title": "x"})
        protocol = next(r for r in fake.received if isinstance(r, m.Protocol))
        assert not protocol.options & m.APOLLO_ONLY_OPTIONS
    await fake.close_connection()


async def test_commands_wait_for_ready_and_time_out() -> None:
    async def refuse(url: str) -> Transport:
        raise TransportError(f"{url}: connection refused")

    async with TerminalSession("tcp://nowhere", fast(APOLLO), opener=refuse, ready_timeout_s=0.1) as session:
        with pytest.raises(TerminalNotReady, match="connection refused"):
            await session.get_status()
        assert session.state.value.link in (LinkStatus.DOWN, LinkStatus.CONNECTING)


async def test_watch_wait_for() -> None:
    watch = Watch(1)
    waiter = asyncio.create_task(watch.wait_for(lambda v: v >= 3, 1))
    await asyncio.sleep(0)
    watch.set(2)
    watch.set(3)
    assert await waiter == 3
    with pytest.raises(TimeoutError):
        await watch.wait_for(lambda v: v > 10, 0.01)
