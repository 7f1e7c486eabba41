"""The PSP simulator as a peer: raw codec-level host, both families, memory / TCP / pty links."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.psp import messages as m
from drivers.psp.codec import Frame
from hil.psp_sim import Card, CardBehaviour, Faults, Outcome
from tests.sim.helpers import HASH, PAN, RawHost, connected, fast_config, until

DETAILED = m.ProtocolOption.DETAILED_RESULTS
KINDS = ["memory", "tcp", "pty"]


def _h(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_setup_sequence_bytes_of_7_1(family: str, kind: str) -> None:
    """psp-reference §7.1 byte for byte; P6X masks the Apollo-only option 0x08 in the echo."""
    async with connected(fast_config(family), kind) as (sim, host):  # type: ignore[arg-type]
        await host.send(_h("CC 02 3C 55 5F"))  # Reset
        assert await host.raw() == _h("AA 03 3C 00 00 E9")
        await host.send(_h("CC 02 3C 24 2E"))  # Synchronize
        assert await host.raw() == _h("AA 02 3C 24 0C")
        await host.send(_h("CC 07 3C 13 03 00 00 00 0B 30"))  # Protocol v3 + 0x01|0x02|0x08
        echo = await host.raw()
        if family == "apollo":
            assert echo == _h("AA 07 3C 13 03 00 00 00 0B 0E")
        else:
            assert echo == Frame(0x13, _h("03 00 00 00 03"), preamble=0xAA).to_bytes()
        await host.send(_h("CC 07 3C 23 00 02 A3 00 01 D8"))  # Setup 48 h, void
        assert await host.raw() == _h("AA 03 3C 00 00 E9")
        await host.send(_h("CC 02 3C 12 1C"))  # Enable
        assert await host.raw() == _h("AA 03 3C 00 00 E9")
        await host.send(_h("CC 02 3C 26 30"))  # Get Status → ENABLED
        assert await host.raw() == _h("AA 04 3C 00 08 00 F2")
        assert sim.state is m.PspState.ENABLED
        assert sim.session_timeout == (172_800, m.TimeoutAction.VOID)
        assert [r.name for r in sim.received] == [
            "Reset",
            "Synchronize",
            "Protocol",
            "Setup",
            "Enable",
            "GetStatus",
        ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_pre_auth_then_commit(family: str, kind: str) -> None:
    async with connected(fast_config(family), kind) as (sim, host):  # type: ignore[arg-type]
        await host.setup()
        card_read = await host.read_card(2500, sim)
        assert isinstance(card_read, m.CardRead)
        assert card_read.dol.card_hash == HASH
        assert card_read.dol.masked_pan == PAN
        assert (await host.status()).state is m.PspState.WAIT_AUTH
        await host.send(m.AuthSession())
        approved = await host.message()
        assert isinstance(approved, m.SessionApproved)
        assert approved.dol.card_hash == HASH
        assert approved.dol.get(m.Tag.HOST_TRANSACTION_REFERENCE)
        assert sim.state is m.PspState.ENABLED
        assert await host.call(m.CommitSession(approved.session_id, 1234)) == m.Result(True)
        session = sim.sessions[approved.session_id]
        assert (session.status, session.committed_minor, session.authorized_minor) == (
            "committed",
            1234,
            2500,
        )
        [row] = sim.sessions_json()
        assert row["card"] == {"kind": "emv", "masked_pan": PAN, "card_hash": HASH, "brand": "VISA"}


@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_commit_above_authorized_refused_unless_over_capture(family: str) -> None:
    async with connected(fast_config(family)) as (sim, host):
        await host.setup(DETAILED)
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)
        reply = await host.call(m.CommitSession(approved.session_id, 2501))
        # detailed codes are Apollo only (§5.3): P6X masks the option and answers one byte
        assert reply == (m.Result(False, 0x01) if family == "apollo" else m.Result(False))
        assert sim.sessions[approved.session_id].status == "approved"
    async with connected(fast_config(family, over_capture=True)) as (sim, host):
        await host.setup()
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)
        assert await host.call(m.CommitSession(approved.session_id, 3000)) == m.Result(True)
        assert sim.sessions[approved.session_id].committed_minor == 3000


@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_unknown_session_and_void(family: str) -> None:
    async with connected(fast_config(family)) as (sim, host):
        await host.setup(DETAILED)
        expected_nf = m.Result(False, 0x0C) if family == "apollo" else m.Result(False)
        assert await host.call(m.CommitSession(0xDEADBEEF, 100)) == expected_nf
        assert await host.call(m.VoidSession(0xDEADBEEF)) == expected_nf
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)
        assert await host.call(m.VoidSession(approved.session_id)) == m.Result(True)
        assert sim.sessions[approved.session_id].status == "voided"
        # disposed sessions are gone for Commit and Void (§10.3)
        assert await host.call(m.VoidSession(approved.session_id)) == expected_nf
        assert await host.call(m.CommitSession(approved.session_id, 1)) == expected_nf


async def test_commit_order_switch_amount_first() -> None:
    async with connected(fast_config("apollo", commit_order=m.CommitOrder.AMOUNT_SESSION)) as (sim, host):
        await host.setup()
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)
        assert await host.call(m.CommitSession(approved.session_id, 99)) == m.Result(True)
        assert sim.sessions[approved.session_id].committed_minor == 99


@pytest.mark.parametrize(
    ("family", "detailed", "reason"), [("apollo", True, 0x09), ("apollo", False, None), ("p6x", True, None)]
)
async def test_decline_with_reason(family: str, detailed: bool, reason: int | None) -> None:
    async with connected(fast_config(family)) as (sim, host):
        await host.setup(DETAILED if detailed else m.ProtocolOption.NONE)
        card = Card.emv(card_hash=HASH, behaviour=CardBehaviour.decline(m.DeclineReason.INSUFFICIENT_FUNDS))
        assert await host.approve(2500, sim, card) == m.SessionDeclined(reason)
        assert sim.sessions == {}
        assert sim.state is m.PspState.ENABLED


@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_partial_approval_apollo_only(family: str) -> None:
    async with connected(fast_config(family)) as (sim, host):
        await host.setup()
        reply = await host.approve(5000, sim, Card.emv(behaviour=CardBehaviour.partial(3000)))
        if family == "apollo":
            assert isinstance(reply, m.SessionPartiallyApproved)
            assert reply.amount_minor == 3000
            assert sim.sessions[reply.session_id].authorized_minor == 3000
            assert await host.call(m.CommitSession(reply.session_id, 3001)) == m.Result(False)
        else:
            assert isinstance(reply, m.SessionApproved)  # P6X cannot partially approve (§8)
            assert sim.sessions[reply.session_id].authorized_minor == 5000


async def test_limit_partial_on_apollo_decline_with_limit_action() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(DETAILED)
        limited = Card.emv(behaviour=CardBehaviour(approve_up_to_minor=2000))
        reply = await host.approve(5000, sim, limited)
        assert isinstance(reply, m.SessionPartiallyApproved)
        assert reply.amount_minor == 2000
        assert isinstance(await host.approve(1500, sim, limited), m.SessionApproved)
        declining = Card.emv(behaviour=CardBehaviour(approve_up_to_minor=2000, limit_action="decline"))
        assert await host.approve(5000, sim, declining) == m.SessionDeclined(0x09)


async def test_pin_delay_holds_the_auth_answer() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        card = Card.emv(behaviour=CardBehaviour(pin_delay_s=0.15))
        assert isinstance(await host.read_card(100, sim, card), m.CardRead)
        await host.send(m.AuthSession())
        assert await host.silent(0.08)
        assert isinstance(await host.message(), m.SessionApproved)


async def test_setup_timeout_action_void_and_commit() -> None:
    config = fast_config("apollo", session_timeout_scale=0.02)  # 1 s on the wire → 20 ms
    async with connected(config) as (sim, host):
        await host.setup(timeout_s=1, action=m.TimeoutAction.VOID)
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)
        await until(lambda: sim.sessions[approved.session_id].status != "approved")
        assert sim.sessions[approved.session_id].status == "expired_voided"
        assert await host.call(m.CommitSession(approved.session_id, 100)) == m.Result(False)
    async with connected(config) as (sim, host):
        await host.setup(timeout_s=1, action=m.TimeoutAction.COMMIT)
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)
        await until(lambda: sim.sessions[approved.session_id].status != "approved")
        session = sim.sessions[approved.session_id]
        assert (session.status, session.committed_minor) == ("expired_committed", 2500)


async def test_idle_close_and_not_while_a_request_is_outstanding() -> None:
    async with connected(fast_config("apollo", idle_close_s=0.15), "tcp") as (sim, host):
        await host.setup()
        sim.faults.delay_replies(0.35)  # the reply is held longer than the idle time
        started = time.monotonic()
        assert isinstance(await host.call(m.GetStatus()), m.GetStatusResponse)
        assert time.monotonic() - started >= 0.3
        assert sim.connected  # time between request and response is not idle (§1.3)
        assert await host.closed(1.0)
        assert time.monotonic() - started >= 0.45
        assert sim.state is m.PspState.OFFLINE


async def test_idle_close_keepalive_and_wait_card() -> None:
    config = fast_config("apollo", idle_close_s=0.15, card_detect_timeout_s=1.0)
    async with connected(config, "tcp") as (sim, host):
        await host.setup()
        for _ in range(4):  # Get Status keep-alive every 80 ms keeps the link up (§1.3)
            await asyncio.sleep(0.08)
            await host.status()
        await host.send(m.StartSession(100, 1))
        await asyncio.sleep(0.3)  # WAIT_CARD is not idle with card-detect ≤ 5 min (§1.3)
        assert sim.connected
        assert sim.state is m.PspState.WAIT_CARD
    # card-detect timeout above 5 minutes: WAIT_CARD counts as idle
    async with connected(fast_config("apollo", idle_close_s=0.1, card_detect_timeout_s=None), "tcp") as (
        sim,
        host,
    ):
        await host.setup()
        await host.send(m.StartSession(100, 1))
        assert await host.closed(1.0)
        assert sim.state is m.PspState.OFFLINE


async def test_card_decision_timeout_drops_the_card() -> None:
    async with connected(fast_config("apollo", card_decision_s=0.05)) as (sim, host):
        await host.setup(DETAILED)
        assert isinstance(await host.read_card(100, sim), m.CardRead)
        await until(lambda: sim.state is m.PspState.ENABLED)
        assert await host.silent(0.05)  # default: no message (§9.2 [GAP])
        assert await host.call(m.AuthSession()) == m.Result(False, 0x05)
    config = fast_config("p6x", card_decision_s=0.05, card_decision_message="session_cancelled")
    async with connected(config) as (sim, host):
        await host.setup()
        assert isinstance(await host.read_card(100, sim), m.CardRead)
        assert await host.message() == m.SessionCancelled()
        assert sim.state is m.PspState.ENABLED


@pytest.mark.parametrize(
    ("switch", "expected"),
    [("session_cancelled", m.SessionCancelled()), ("session_declined", m.SessionDeclined(0x02))],
)
async def test_card_detect_timeout(switch: str, expected: m.Message) -> None:
    async with connected(fast_config("apollo", card_detect_timeout_s=0.05, card_timeout_message=switch)) as (
        sim,
        host,
    ):
        await host.setup(DETAILED)
        await host.send(m.StartSession(100, 1))
        assert await host.message() == expected
        assert sim.state is m.PspState.ENABLED


async def test_cancel_session() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(DETAILED)
        assert await host.call(m.CancelSession()) == m.Result(False, 0x0A)
        await host.send(m.StartSession(100, 1))
        await until(lambda: sim.state is m.PspState.WAIT_CARD)
        assert (await host.status()) == m.GetStatusResponse(m.PspState.WAIT_CARD, True)
        assert await host.call(m.CancelSession()) == m.SessionCancelled()
        assert isinstance(await host.read_card(100, sim), m.CardRead)
        assert await host.call(m.CancelSession()) == m.SessionCancelled()
        assert sim.state is m.PspState.ENABLED


@pytest.mark.parametrize("keep", [True, False])
async def test_reboot_keeps_or_loses_sessions(keep: bool) -> None:
    async with connected(fast_config("apollo"), "tcp") as (sim, host):
        await host.setup(m.ProtocolOption.EXTENDED_BLOCK)
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)
        sim.reboot(keep_sessions=keep)
        assert sim.state is m.PspState.OFFLINE
        assert not sim.extended
        assert await host.closed()
        assert (approved.session_id in sim.sessions) is keep


async def test_control_reboot_replies_then_closes() -> None:
    async with connected(fast_config("apollo", keep_sessions_on_reboot=False), "tcp") as (sim, host):
        await host.setup()
        assert isinstance(await host.approve(2500, sim), m.SessionApproved)
        assert await host.call(m.Control(0)) == m.Result(True)
        assert await host.closed()
        assert sim.state is m.PspState.OFFLINE
        assert sim.sessions == {}


async def test_reset_goes_offline_and_wrong_state() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(DETAILED)
        assert await host.call(m.Reset()) == m.Result(True)
        assert sim.state is m.PspState.OFFLINE
        assert sim.protocol_options == m.ProtocolOption.NONE
        assert await host.call(m.Enable()) == m.Result(False)  # options reset: no detail
        await host.setup(DETAILED)
        assert await host.call(m.Protocol(3, m.ProtocolOption.NONE)) == m.Result(False, 0x05)
        assert await host.call(m.Setup()) == m.Result(False, 0x05)
        assert await host.call(m.AuthSession()) == m.Result(False, 0x05)
        assert await host.call(m.Disable()) == m.Result(True)
        assert await host.call(m.StartSession(1, 1)) == m.Result(False, 0x05)
        assert await host.call(m.Disable()) == m.Result(True)  # already disabled: OK (§5.5)


async def test_unknown_header_bad_message_and_family_gating() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(DETAILED)
        await host.send(Frame(0x56).to_bytes())  # Remove Sessions: not modelled
        assert await host.message() == m.Result(False, 0x02)
        await host.send(Frame(0x7E).to_bytes())
        assert await host.message() == m.Result(False, 0x02)
        await host.send(Frame(0x23, b"\x00").to_bytes())  # Setup with a short payload
        assert await host.message() == m.Result(False, 0x03)
        assert await host.call(m.ListSessions(0)) == m.Result(False, 0x02)  # P6X only
    async with connected(fast_config("p6x")) as (sim, host):
        await host.setup()
        assert await host.call(m.UiRequest("dialog", (("title", "x"),))) == m.Result(False)
        assert await host.call(m.UpdateSession(1, 2)) == m.Result(False)
        assert await host.call(m.Control(0)) == m.Result(False)
        assert sim.state is m.PspState.ENABLED


@pytest.mark.parametrize(
    ("silent", "detailed", "expected"),
    [(False, True, m.Result(False, 0x04)), (False, False, m.Result(False)), (True, True, None)],
)
async def test_bad_checksum(silent: bool, detailed: bool, expected: m.Result | None) -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(DETAILED if detailed else m.ProtocolOption.NONE)
        sim.faults.silent_on_bad_checksum(silent)
        await host.send(_h("CC 02 3C 26 31"))  # Get Status with a wrong checksum
        if expected is None:
            assert await host.silent(0.1)
        else:
            assert await host.message() == expected
        assert (await host.status()).state is m.PspState.ENABLED  # resynchronised


async def test_not_ready_during_boot() -> None:
    async with connected(fast_config("apollo", boot_not_ready=2)) as (sim, host):
        for _ in range(2):
            assert await host.call(m.Synchronize()) == m.Result(False, 0x11)
        assert await host.call(m.Synchronize()) == m.SynchronizeEcho()
        sim.faults.not_ready(1)
        assert await host.call(m.Synchronize()) == m.Result(False, 0x11)
        assert await host.call(m.Synchronize()) == m.SynchronizeEcho()


async def test_fault_drop_corrupt_delay() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        sim.faults.drop_replies()
        await host.send(m.GetStatus())
        assert await host.silent(0.1)
        assert (await host.status()).state is m.PspState.ENABLED
        sim.faults.corrupt_replies()
        await host.send(m.GetStatus())
        assert await host.silent(0.1)
        assert host.decoder.stats.checksum_errors == 1
        sim.faults.delay_replies(0.12)
        started = time.monotonic()
        await host.status()
        assert time.monotonic() - started >= 0.11


async def test_fault_split_arrives_as_separate_tcp_segments() -> None:
    async with connected(fast_config("apollo"), "tcp") as (sim, host):
        await host.setup()
        sim.faults.split_replies(chunk=2, n=1)
        host.chunks.clear()
        assert await host.status() == m.GetStatusResponse(m.PspState.ENABLED, False)
        assert host.chunks == [_h("AA 04"), _h("3C 00"), _h("08 00"), _h("F2")]
        host.chunks.clear()
        await host.status()
        assert len(host.chunks) == 1  # n=1: back to whole frames


async def test_protocol_extended_format_and_reset_by_synchronize() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.send(m.Synchronize())
        await host.message()
        await host.send(m.Protocol(3, m.ProtocolOption.EXTENDED_BLOCK | m.ProtocolOption(0x80)))
        echo_frame = await host.frame()
        assert not echo_frame.extended  # the echo itself uses the default format (§2.2)
        assert m.ProtocolEcho.from_payload(echo_frame.payload).options == m.ProtocolOption.EXTENDED_BLOCK
        assert sim.extended
        await host.send(m.GetStatus().to_frame(m.WireFormat(extended=True)).to_bytes())
        status_frame = await host.frame()
        assert status_frame.extended
        await host.send(m.Synchronize())
        assert not (await host.frame()).extended
        assert not sim.extended


async def test_extended_mode_widens_dol_length() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(m.ProtocolOption.EXTENDED_BLOCK)
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)  # decoded with a 2-byte DOL length
        assert approved.dol.masked_pan == PAN


async def test_list_sessions_pagination_with_70_sessions() -> None:
    async with connected(fast_config("p6x")) as (sim, host):
        await host.setup()
        for _ in range(70):
            assert isinstance(await host.approve(100, sim), m.SessionApproved)
        await host.send(m.ListSessions(0))
        first_frame = await host.frame()
        assert first_frame.length == 0xFF  # filled until the maximum frame length (§5.8)
        first = m.ListSessionsResponse.from_payload(first_frame.payload)
        second = await host.call(m.ListSessions(len(first.session_ids)))
        assert isinstance(second, m.ListSessionsResponse)
        assert (first.total, second.total) == (70, 70)
        assert (len(first.session_ids), len(second.session_ids)) == (63, 7)
        assert list(first.session_ids + second.session_ids) == list(sim.sessions)
        assert await host.call(m.VoidSession(first.session_ids[0])) == m.Result(True)
        third = await host.call(m.ListSessions(0))
        assert isinstance(third, m.ListSessionsResponse)
        assert third.total == 69


@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_rfid_tap(family: str) -> None:
    async with connected(fast_config(family)) as (sim, host):
        await host.setup(DETAILED)
        uid = "04A2B3C4D5E6F7"
        read = await host.read_card(0, sim, Card.rfid(uid))
        if family == "apollo":
            assert isinstance(read, m.PropCardRead)
            assert read.uid(host.wire) == uid
            assert await host.call(m.AuthSession()) == m.Result(False, 0x06)
        else:
            assert type(read) is m.CardRead  # §7.6 [GAP]: P6X reports the UID in DFF006
            assert read.dol.card_hash == uid
            assert await host.call(m.CancelSession()) == m.SessionCancelled()
        assert sim.state is m.PspState.ENABLED


async def test_read_card_header_switch_and_rfid_tag() -> None:
    config = fast_config("apollo", read_card_header=0x40, rfid_uid_tag=0xDFF002)
    async with connected(config) as (sim, host):
        await host.setup()
        await host.send(m.ReadCard(7).to_bytes(host.wire))
        await until(lambda: sim.state is m.PspState.WAIT_CARD)
        assert sim.received[-1] == m.ReadCard(7)
        assert host.wire.read_card_header == 0x40
        sim.tap(Card.rfid("04A2B3C4"))
        read = await host.message()
        assert isinstance(read, m.PropCardRead)
        assert read.dol.get(0xDFF002) == b"04A2B3C4"


async def test_tap_before_start_session_is_read_later_and_transaction_events() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(m.ProtocolOption.TRANSACTION_EVENTS)
        assert sim.tap(Card.emv()) == "queued"
        await host.send(m.StartSession(100, 1))
        events = [await host.message() for _ in range(4)]
        ev = m.TransactionEventCode
        assert events[:3] == [
            m.TransactionEvent(c) for c in (ev.STARTED, ev.READING_CARD, ev.CARD_READ_COMPLETE)
        ]
        assert isinstance(events[3], m.CardRead)
        await host.send(m.AuthSession())
        assert isinstance(await host.message(), m.SessionApproved)
        assert await host.message() == m.TransactionEvent(ev.TRANSACTION_COMPLETE)


async def test_update_session_outcomes() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        approved = await host.approve(5000, sim)
        assert isinstance(approved, m.SessionApproved)
        sid = approved.session_id
        assert await host.call(m.UpdateSession(sid, 7500)) == m.UpdateSessionResult(
            m.UpdateResult.APPROVED, sid, 7500, 2500, 0
        )
        card = Card.emv(behaviour=CardBehaviour(update=Outcome.partial(6000)))
        partial = await host.approve(5000, sim, card)
        assert isinstance(partial, m.SessionApproved)
        assert await host.call(m.UpdateSession(partial.session_id, 9000)) == m.UpdateSessionResult(
            m.UpdateResult.PARTIALLY_APPROVED, partial.session_id, 6000, 1000, 0
        )
        card = Card.emv(
            behaviour=CardBehaviour(update=Outcome.decline(m.DeclineReason.WITHDRAWAL_LIMIT_EXCEEDED))
        )
        declined = await host.approve(5000, sim, card)
        assert isinstance(declined, m.SessionApproved)
        assert await host.call(m.UpdateSession(declined.session_id, 9000)) == m.UpdateSessionResult(
            m.UpdateResult.DECLINED, declined.session_id, 5000, 0, 0x0A
        )
        assert await host.call(m.CommitSession(declined.session_id, 5001)) == m.Result(False)
        assert await host.call(m.AddTransactionContext(sid, "kWh=12.5")) == m.Result(True)
        assert sim.sessions[sid].context == ["kWh=12.5"]


async def test_ui_screens_both_forms_hidden_during_payment_and_press() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        dialog = b"type\0dialog\0title\0Hello\0buttons.ok\0\0buttons.ok.label\0OK\0"
        await host.send(Frame(0x28, dialog).to_bytes())
        assert await host.message() == m.Result(True)
        assert sim.current_screen is not None
        assert sim.current_screen.get("title") == "Hello"
        sim.press("ok")
        assert await host.message() == m.UiEvent("ok")
        with pytest.raises(ValueError, match="no button"):
            sim.press("cancel")
        page_form = b"selection\0title\0Pick\0items.fast\0\0items.slow\0\0"
        await host.send(Frame(0x28, page_form).to_bytes())
        assert await host.message() == m.Result(True)
        await host.send(m.StartSession(100, 1))
        await until(lambda: sim.state is m.PspState.WAIT_CARD)
        assert sim.current_screen is None  # hidden while the payment flow owns the display
        with pytest.raises(ValueError, match="no screen"):
            sim.press("fast")
        assert await host.call(m.CancelSession()) == m.SessionCancelled()
        sim.press("slow")
        assert await host.message() == m.UiEvent("slow")
        assert sim.current_screen is not None
        assert sim.current_screen.screen_type == "selection"


@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_request_ids_and_status_header_switch(family: str) -> None:
    async with connected(fast_config(family, status_header=0x26, serial_number="SN123")) as (_sim, host):
        reply = await host.call(m.RequestIds())
        if family == "apollo":
            assert isinstance(reply, m.ApolloIds)
            assert (reply.serial_number, reply.model_id) == ("SN123", "APOLLO")
        else:
            assert isinstance(reply, m.P6xIds)
            assert reply.serial_number == "SN123"
        await host.send(m.GetStatus())
        frame = await host.frame()
        assert (frame.header, frame.payload) == (0x26, b"\x01\x00")


async def test_new_tcp_client_replaces_the_old_one() -> None:
    from drivers.transport import open_transport

    async with connected(fast_config("apollo"), "tcp") as (sim, first):
        await first.setup()
        port = sim._servers[0].sockets[0].getsockname()[1]
        transport = await open_transport(f"tcp://127.0.0.1:{port}")
        try:
            second = RawHost(transport, first.wire)
            assert await first.closed()
            assert (await second.status()).state is m.PspState.OFFLINE
        finally:
            await transport.close()


async def test_close_connection_goes_offline() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        sim.close_connection()
        assert sim.state is m.PspState.OFFLINE
        assert await host.closed()
    async with connected(fast_config("p6x"), "pty") as (sim, host):
        await host.setup()
        sim.close_connection()  # a pty stays open; PSP goes OFFLINE
        assert sim.state is m.PspState.OFFLINE
        assert (await host.status()).state is m.PspState.OFFLINE


async def test_fault_delay_only_holds_the_named_request_type() -> None:
    """``delay_replies(only="CommitSession")``: other replies pass at once and do not use up the count;
    the Commit is booked when it arrives, only its Result is late."""
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        approved = await host.approve(2500, sim)
        assert isinstance(approved, m.SessionApproved)
        sim.faults.delay_replies(0.3, n=1, only="CommitSession")
        assert sim.faults.to_json()["delay_only"] == "CommitSession"
        started = time.monotonic()
        await host.status()  # not a Commit: answered at once, the count is kept
        assert time.monotonic() - started < 0.2
        assert sim.faults.delay_remaining == 1
        started = time.monotonic()
        await host.send(m.CommitSession(approved.session_id, 1000))
        await until(lambda: sim.sessions[approved.session_id].status == "committed")
        assert time.monotonic() - started < 0.2  # booked at once …
        assert await host.silent(0.15)  # … its Result is held
        assert await host.message() == m.Result(True)
        assert time.monotonic() - started >= 0.29
        assert sim.faults.delay_remaining == 0
        started = time.monotonic()
        await host.status()  # n=1: spent
        assert time.monotonic() - started < 0.2


async def test_fault_delay_only_auth_session_is_the_late_answer() -> None:
    """The Auth Session's answer is sent from a timer; it is still recognised as its reply."""
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        sim.faults.delay_replies(0.2, only="AuthSession")
        card_read = await host.read_card(2500, sim)
        assert isinstance(card_read, m.CardRead)  # an event, not held
        started = time.monotonic()
        await host.send(m.AuthSession())
        assert isinstance(await host.next_non_event(), m.SessionApproved)
        assert time.monotonic() - started >= 0.19


def test_fault_delay_rejects_a_bad_only() -> None:
    faults = Faults()
    with pytest.raises(ValueError):
        faults.delay_replies(1.0, only="Commit Session")
    faults.delay_replies(1.0, 2, only="VoidSession")
    faults.clear()
    assert faults.delay_only is None
    assert faults.delay_applies("VoidSession") is False
