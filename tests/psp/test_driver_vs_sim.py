"""Acceptance 3 (issue 2): the driver against the simulator over TCP and a pty pair, both families."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from drivers.errors import NotSupported
from drivers.psp import messages as m
from drivers.psp.errors import SessionNotFound
from drivers.terminal import (
    Approved,
    CardKind,
    CardPresented,
    Declined,
    PartiallyApproved,
    ReadCancelled,
    UiSelection,
)
from hil.psp_sim import Card, CardBehaviour
from tests.psp.sim_rig import MATRIX, TRANSPORTS, Rig, rig

HASH_A = "A" * 40
HASH_B = "B" * 40


@pytest.fixture(params=MATRIX, ids=[f"{t}-{f}" for t, f in MATRIX])
async def both(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    transport, family = request.param
    async with rig(transport, family) as r:
        yield r


@pytest.fixture(params=TRANSPORTS)
async def apollo(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async with rig(request.param, "apollo") as r:
        yield r


@pytest.fixture(params=TRANSPORTS)
async def p6x(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async with rig(request.param, "p6x") as r:
        yield r


async def approve(r: Rig, amount_minor: int = 2500, card: Card | None = None) -> Approved:
    await r.terminal.start_card_read(amount_minor, 10)
    r.sim.tap(card or Card.emv())
    await r.next_event(CardPresented)
    outcome = await r.terminal.authorize()
    assert isinstance(outcome, Approved), outcome
    return outcome


@pytest.mark.req("TERM-1", "TERM-2")
async def test_setup(both: Rig) -> None:
    sim = both.sim
    assert sim.state is m.PspState.ENABLED
    assert sim.session_timeout == (172_800, m.TimeoutAction.VOID)  # TERM-2
    sent = [type(r).__name__ for r in sim.received]
    assert sent[:4] == ["Synchronize", "Protocol", "Setup", "Enable"]  # TERM-1, §7.1
    state = both.terminal.state
    assert state.ready
    assert state.psp_state == "ENABLED"
    ids = both.session.state.value.ids
    assert ids is not None
    assert ids["serial_number"] == "SIM0000001"
    link = both.session.link
    assert link is not None
    if both.family == "p6x":  # §5.3: Apollo-only options are not requested from a P6X
        assert not sim.protocol_options & m.APOLLO_ONLY_OPTIONS
        assert not link.wire.extended
    else:
        assert sim.detailed
        assert sim.extended  # §2.2: Apollo asks for the extended block format and gets it
        assert link.wire.extended


async def test_pre_auth_then_commit(both: Rig) -> None:
    await both.terminal.start_card_read(2500, 10)
    assert both.sim.state is m.PspState.WAIT_CARD
    both.sim.tap(Card.emv(card_hash=HASH_A, masked_pan="476173******0010", brand="VISA"))
    card = await both.next_event(CardPresented)
    assert card.kind is CardKind.EMV
    assert card.token == HASH_A
    assert card.masked_pan == "476173******0010"
    outcome = await both.terminal.authorize()
    assert isinstance(outcome, Approved)
    assert outcome.amount_minor == 2500
    assert outcome.card.masked_pan == "476173******0010"
    assert outcome.card.card_hash == HASH_A
    await both.terminal.commit(outcome.session_id, 1234)
    session = both.sim.sessions[outcome.session_id]
    assert session.status == "committed"
    assert session.committed_minor == 1234


async def test_cancel_a_read(both: Rig) -> None:
    await both.terminal.start_card_read(2500, 10)
    assert await both.terminal.cancel_read() is True  # while waiting for a card
    assert both.sim.state is m.PspState.ENABLED
    await both.terminal.start_card_read(2500, 11)
    both.sim.tap(Card.emv())
    await both.next_event(CardPresented)
    assert await both.terminal.cancel_read() is True  # a held card (tap-to-stop, §5.13)
    assert both.sim.state is m.PspState.ENABLED
    assert not both.sim.sessions
    assert await both.terminal.cancel_read() is False  # nothing to cancel


async def test_void_an_approved_session(both: Rig) -> None:
    outcome = await approve(both)
    await both.terminal.void(outcome.session_id)
    assert both.sim.sessions[outcome.session_id].status == "voided"
    with pytest.raises(SessionNotFound):  # §10.3: already disposed
        await both.terminal.void(outcome.session_id)


async def test_decline_with_reason(both: Rig) -> None:
    await both.terminal.start_card_read(2500, 10)
    both.sim.tap(Card.emv(behaviour=CardBehaviour.decline(m.DeclineReason.INSUFFICIENT_FUNDS)))
    await both.next_event(CardPresented)
    outcome = await both.terminal.authorize()
    assert isinstance(outcome, Declined)
    # §5.18: the reason needs detailed codes, which only an Apollo has
    expected = m.DeclineReason.INSUFFICIENT_FUNDS if both.family == "apollo" else None
    assert outcome.reason is expected
    assert not both.sim.sessions


async def test_partial_approval(apollo: Rig) -> None:
    await apollo.terminal.start_card_read(5000, 10)
    apollo.sim.tap(Card.emv(behaviour=CardBehaviour.partial(3000)))
    await apollo.next_event(CardPresented)
    outcome = await apollo.terminal.authorize()
    assert isinstance(outcome, PartiallyApproved)
    assert (outcome.amount_minor, outcome.requested_minor) == (3000, 5000)
    await apollo.terminal.commit(outcome.session_id, 3000)
    assert apollo.sim.sessions[outcome.session_id].committed_minor == 3000


async def test_update_session(apollo: Rig) -> None:
    outcome = await approve(apollo, 2500)
    update = await apollo.terminal.update_authorization(outcome.session_id, 7500)
    assert update.approved
    assert update.authorized_minor == 7500
    assert apollo.sim.sessions[outcome.session_id].authorized_minor == 7500
    await apollo.terminal.commit(outcome.session_id, 7000)
    assert apollo.sim.sessions[outcome.session_id].status == "committed"


async def test_rfid_prop_card_read(apollo: Rig) -> None:
    await apollo.terminal.read_card(42)
    apollo.sim.tap(Card.rfid("04A2B3C4D5E6F7"))
    card = await apollo.next_event(CardPresented)
    assert card.kind is CardKind.RFID
    assert card.token == "04A2B3C4D5E6F7"
    assert "04A2B3C4D5E6F7" not in repr(card)  # UIDs appear masked in logs
    assert await apollo.terminal.cancel_read() is True  # §7.6: Cancel returns to ENABLED
    assert apollo.sim.state is m.PspState.ENABLED


async def test_ui_request_and_ui_event(apollo: Rig) -> None:
    await apollo.terminal.show_screen(
        "dialog", {"title": "Charging", "buttons.stop": "", "buttons.stop.label": "Stop"}
    )
    screen = apollo.sim.current_screen
    assert screen is not None
    assert screen.screen_type == "dialog"
    assert screen.get("title") == "Charging"
    apollo.sim.press("stop")
    assert await apollo.next_event(UiSelection) == UiSelection("stop")


async def test_list_sessions(p6x: Rig) -> None:
    first = await approve(p6x, card=Card.emv(card_hash=HASH_A))
    second = await approve(p6x, card=Card.emv(card_hash=HASH_B))
    assert set(await p6x.terminal.list_sessions()) == {first.session_id, second.session_id}
    await p6x.terminal.commit(first.session_id, 100)
    assert await p6x.terminal.list_sessions() == (second.session_id,)


async def test_family_limits(p6x: Rig) -> None:
    for call in (
        p6x.terminal.update_authorization(1, 2),
        p6x.terminal.show_screen("dialog"),
        p6x.terminal.read_card(1),
    ):
        with pytest.raises(NotSupported):
            await call
    assert not p6x.terminal.capabilities.partial_approval


@pytest.mark.req("TERM-5")
@pytest.mark.parametrize("order", ["first-first", "second-first"])
async def test_two_sessions_committed_while_waiting_for_a_card(both: Rig, order: str) -> None:
    first = await approve(both, 2500, Card.emv(card_hash=HASH_A))
    second = await approve(both, 4000, Card.emv(card_hash=HASH_B))
    await both.terminal.start_card_read(2500, 99)  # the terminal waits for the next card
    assert both.sim.state is m.PspState.WAIT_CARD
    sessions = [first, second] if order == "first-first" else [second, first]
    for i, outcome in enumerate(sessions):
        await both.terminal.commit(outcome.session_id, 1000 + i)
        assert both.sim.state is m.PspState.WAIT_CARD  # Commit is allowed in WAIT_CARD (§3.3)
    assert {both.sim.sessions[s.session_id].status for s in sessions} == {"committed"}
    assert both.sim.sessions[sessions[0].session_id].committed_minor == 1000
    # the waiting read is unaffected: a card still gets through
    both.sim.tap(Card.emv())
    await both.next_event(CardPresented)
    assert await both.terminal.cancel_read() is True


async def test_card_detect_timeout_ends_the_read() -> None:
    async with rig("tcp", "apollo", sim_config={"card_detect_timeout_s": 0.2}) as r:
        await r.terminal.start_card_read(2500, 10)
        await r.next_event(ReadCancelled)
        assert r.sim.state is m.PspState.ENABLED


async def test_quirk_switches_end_to_end() -> None:
    """§4.3 / §5.17: Get Status under 0x26, Read Card 0x40, Commit amount-then-session, any preamble."""
    from drivers.psp.profile import Quirks
    from drivers.terminal import PspTerminal
    from hil.psp_sim import SimConfig, Simulator
    from tests.psp.sim_rig import fast_profile

    quirks = Quirks(
        read_card_header=0x40,
        status_response_header=0x26,
        commit_order=m.CommitOrder.AMOUNT_SESSION,
        accepted_preambles=None,
    )
    config = SimConfig(
        family="apollo", status_header=0x26, read_card_header=0x40, commit_order=quirks.commit_order
    )
    async with Simulator(config) as sim:
        url = f"tcp://127.0.0.1:{await sim.serve_tcp('127.0.0.1', 0)}"
        async with PspTerminal(
            url, fast_profile("apollo").with_quirks(quirks), ready_timeout_s=5
        ) as terminal:
            await terminal.wait_ready(5)
            r = Rig(sim, terminal, "tcp", "apollo")
            await terminal.read_card(7)
            sim.tap(Card.emv())
            await r.next_event(CardPresented)
            assert await terminal.cancel_read()
            outcome = await approve(r, 2500)
            await terminal.commit(outcome.session_id, 2000)
            assert sim.sessions[outcome.session_id].committed_minor == 2000
