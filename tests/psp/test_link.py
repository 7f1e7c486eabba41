"""PspLink against a scripted peer over memory_pair() (DESIGN.md §3.2 item 3, psp-reference §4.4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.errors import DriverError
from drivers.psp import messages as m
from drivers.psp.codec import Frame, FrameDecoder
from drivers.psp.errors import (
    LinkLost,
    MessageTooLong,
    PspNotOk,
    PspTimeout,
    UndecodableReply,
    UnexpectedState,
)
from drivers.psp.link import PspLink, command_timeout, reply_headers
from drivers.psp.profile import APOLLO, P6X, Quirks
from drivers.transport import MemoryTransport, memory_pair

FAST = APOLLO.with_timeouts(other_s=0.3, start_session_window_s=0.05, inter_byte_s=0.05, auth_s=0.4)
WIRE = m.WireFormat()


class Peer:
    """The terminal end: decode what the host sent, reply with raw bytes."""

    def __init__(self, end: MemoryTransport) -> None:
        self.end = end
        self.decoder = FrameDecoder(preambles=frozenset({0xCC}))
        self._buffered: list[m.Request | m.UnknownMessage] = []

    async def receive(self) -> m.Request | m.UnknownMessage:
        while not self._buffered:
            data = await self.end.read()
            assert data, "host closed"
            self._buffered.extend(m.decode_request(f, WIRE) for f in self.decoder.feed(data))
        return self._buffered.pop(0)

    async def send(self, *messages: m.Response) -> None:
        await self.end.write(b"".join(msg.to_bytes(WIRE) for msg in messages))


@pytest.fixture
async def pair() -> AsyncIterator[tuple[PspLink, Peer]]:
    host, term = memory_pair("link-test")
    async with PspLink(host, FAST) as link:
        yield link, Peer(term)


async def test_reply_is_correlated_and_events_pass_through(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.GetStatus()))
    assert isinstance(await peer.receive(), m.GetStatus)
    # events arriving before the reply are not taken as the reply (§4.4)
    await peer.send(m.TransactionEvent(1), m.UiEvent("ok"), m.GetStatusResponse(m.PspState.ENABLED, False))
    status = await call
    assert status == m.GetStatusResponse(m.PspState.ENABLED, False)
    assert await link.next_event() == m.TransactionEvent(1)
    assert await link.next_event() == m.UiEvent("ok")


async def test_status_under_header_0x26_is_accepted() -> None:
    host, term = memory_pair("link-0x26")
    async with PspLink(host, FAST) as link:
        peer = Peer(term)
        call = asyncio.create_task(link.request(m.GetStatus()))
        await peer.receive()
        await peer.end.write(
            m.GetStatusResponse(m.PspState.WAIT_CARD, True).to_bytes(
                m.WireFormat(status_response_header=0x26)
            )
        )
        assert await call == m.GetStatusResponse(m.PspState.WAIT_CARD, True)


async def test_not_ok_raises_with_reason(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.Enable()))
    await peer.receive()
    await peer.send(m.Result(False, m.ResultCode.INCORRECT_PSP_STATE))
    with pytest.raises(PspNotOk) as info:
        await call
    assert info.value.reason is m.ResultCode.INCORRECT_PSP_STATE
    assert "0x05" in str(info.value)


async def test_timeout_and_late_reply_becomes_an_event(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    with pytest.raises(PspTimeout) as info:
        await link.request(m.Enable(), timeout_s=0.05)
    assert info.value.timeout_s == 0.05
    await peer.send(m.Result(True))
    assert await link.next_event() == m.Result(True)
    assert link.stats.timeouts == 1
    assert link.stats.unexpected == 1


async def test_result_ok_is_not_a_reply_to_synchronize(pair: tuple[PspLink, Peer]) -> None:
    """A stray Result OK must not complete a Synchronize (only its echo or a Not OK can)."""
    link, peer = pair
    call = asyncio.create_task(link.request(m.Synchronize()))
    await peer.receive()
    await peer.send(m.Result(True), m.SynchronizeEcho())
    assert await call == m.SynchronizeEcho()
    assert await link.next_event() == m.Result(True)


async def test_session_cancelled_is_reply_to_cancel_and_event_otherwise(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    await peer.send(m.SessionCancelled())  # e.g. card-detect timeout: unsolicited
    assert await link.next_event() == m.SessionCancelled()
    call = asyncio.create_task(link.request(m.CancelSession()))
    await peer.receive()
    await peer.send(m.SessionCancelled())
    assert await call == m.SessionCancelled()


async def test_start_session_silence_is_accepted_then_confirmed(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.StartSession(2500, 10)))
    assert await peer.receive() == m.StartSession(2500, 10)
    assert isinstance(await peer.receive(), m.GetStatus)  # after the window: confirm (DESIGN.md §3.2)
    await peer.send(m.GetStatusResponse(m.PspState.WAIT_CARD, True))
    assert await call == m.GetStatusResponse(m.PspState.WAIT_CARD, True)


async def test_start_session_not_ok_in_window_rejects(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.StartSession(2500, 10)))
    await peer.receive()
    await peer.send(m.Result(False, m.ResultCode.INCORRECT_PSP_STATE))
    with pytest.raises(PspNotOk):
        await call


async def test_start_session_wrong_state_after_confirm(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.StartSession(2500, 10)))
    await peer.receive()
    await peer.receive()
    await peer.send(m.GetStatusResponse(m.PspState.DISABLED, False))
    with pytest.raises(UnexpectedState, match="DISABLED"):
        await call


async def test_card_read_during_start_window_is_an_event(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.StartSession(100, 1)))
    await peer.receive()
    card = m.CardRead(m.Dol(((m.Tag.MASKED_PAN, b"476173****0119"),)))
    await peer.send(card)
    await peer.receive()
    await peer.send(m.GetStatusResponse(m.PspState.WAIT_AUTH, False))
    reply = await call
    assert isinstance(reply, m.GetStatusResponse)
    assert reply.state is m.PspState.WAIT_AUTH
    assert await link.next_event() == card


@pytest.mark.req("ERR-7")
async def test_split_garbage_and_corrupt_frames_resynchronise(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.GetStatus()))
    await peer.receive()
    bad = bytearray(m.Result(True).to_bytes(WIRE))
    bad[-1] ^= 0xFF
    peer.end.faults.chunk = 1  # byte by byte
    await peer.end.write(
        b"\x00\x13\xaa" + bytes(bad) + m.GetStatusResponse(m.PspState.ENABLED).to_bytes(WIRE)
    )
    reply = await call
    assert isinstance(reply, m.GetStatusResponse)
    assert reply.state is m.PspState.ENABLED
    assert link.decoder.stats.checksum_errors >= 1


@pytest.mark.req("ERR-7")
async def test_stale_partial_frame_is_discarded_after_inter_byte_timeout(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.GetStatus()))
    await peer.receive()
    await peer.end.write(bytes([0xAA, 0x40, 0x3C, 0x00]))  # a frame that never completes
    await asyncio.sleep(FAST.timeouts.inter_byte_s * 3)
    await peer.send(m.GetStatusResponse(m.PspState.ENABLED))
    reply = await call
    assert isinstance(reply, m.GetStatusResponse)
    assert reply.state is m.PspState.ENABLED
    assert link.stats.partial_frames_discarded >= 1


@pytest.mark.req("ERR-7")
async def test_undecodable_frame_that_is_no_reply_is_counted_not_raised(pair: tuple[PspLink, Peer]) -> None:
    """A Session Approved (0x31) cannot answer Enable: undecodable, it stays a counted, logged event."""
    link, peer = pair
    call = asyncio.create_task(link.request(m.Enable()))
    await peer.receive()
    await peer.end.write(Frame(0x31, b"\x07", preamble=0xAA).to_bytes())  # 1 byte of a 4-byte id
    await peer.send(m.Result(True))
    assert await call == m.Result(True)
    assert link.stats.decode_errors == 1


STATUS = m.GetStatus()
UNDECODABLE_REPLIES = [
    # (request, header, payload, part of the reason): one per reply type of §4.1
    (m.Enable(), 0x00, b"\x07", "byte 0 is 0x07"),  # Result (every request)
    (STATUS, 0x00, b"\x08\x00\x00", "byte 0 is 0x08"),  # 3 bytes: no status, so a Result
    (STATUS, 0x26, b"\x03\x00", "state 0x03 is not a PSP state"),  # §4.3: status under 0x26
    (m.Synchronize(), 0x24, b"\x01", "trailing"),
    (m.Protocol(), 0x13, b"\x03", "need 4 more"),
    (m.RequestIds(), 0x27, b"\xff\xfe\xfd", "fits neither layout"),
    (m.AuthSession(), 0x31, b"\x00\x01", "need 4 more"),  # Session Approved
    (m.CancelSession(), 0x33, b"\x00", "trailing"),  # Session Cancelled has no payload
    (m.UpdateSession(1, 2), 0x43, b"\x09" + bytes(13), "unknown result 0x09"),
]


@pytest.mark.req("ERR-7")
@pytest.mark.parametrize(
    ("request_", "header", "payload", "reason"),
    UNDECODABLE_REPLIES,
    ids=[f"{r.name}-0x{h:02X}" for r, h, _p, _r in UNDECODABLE_REPLIES],
)
async def test_undecodable_reply_fails_the_request_at_once(
    pair: tuple[PspLink, Peer], request_: m.Request, header: int, payload: bytes, reason: str
) -> None:
    link, peer = pair
    assert header in reply_headers(request_)
    call = asyncio.create_task(link.request(request_, timeout_s=30.0))  # never waited for
    await peer.receive()
    await peer.end.write(Frame(header, payload, preamble=0xAA).to_bytes())
    async with asyncio.timeout(1.0):
        with pytest.raises(UndecodableReply) as info:
            await call
    assert info.value.request == request_
    assert info.value.header == header
    assert str(info.value).startswith(f"{request_.name}: undecodable reply 0x{header:02X}: ")
    assert reason in str(info.value)
    assert (link.stats.timeouts, link.stats.decode_errors) == (0, 1)
    assert not link.busy
    call = asyncio.create_task(link.request(m.GetStatus()))  # the link stays usable
    await peer.receive()
    await peer.send(m.GetStatusResponse(m.PspState.ENABLED))
    reply = await call
    assert isinstance(reply, m.GetStatusResponse)
    assert reply.state is m.PspState.ENABLED


@pytest.mark.req("ERR-7")
@pytest.mark.parametrize("header", [0x00, 0x26])
async def test_undecodable_status_fails_a_start_at_once(pair: tuple[PspLink, Peer], header: int) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.StartSession(2500, 10), timeout_s=30.0))
    await peer.receive()
    await peer.receive()  # the Get Status behind it
    await peer.end.write(Frame(header, b"\x40\x00", preamble=0xAA).to_bytes())  # 0x40: no state
    async with asyncio.timeout(1.0):
        with pytest.raises(UndecodableReply, match=f"StartSession: undecodable reply 0x{header:02X}"):
            await call
    assert link.stats.timeouts == 0


@pytest.mark.req("ERR-7")
async def test_rejected_start_followed_by_an_undecodable_status_reports_the_rejection(
    pair: tuple[PspLink, Peer],
) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.StartSession(2500, 10), timeout_s=30.0))
    await peer.receive()
    await peer.receive()
    await peer.send(m.Result(False, m.ResultCode.INCORRECT_PSP_STATE))
    await peer.end.write(Frame(0x00, b"\x40\x00\x00", preamble=0xAA).to_bytes())
    async with asyncio.timeout(1.0):
        with pytest.raises(PspNotOk) as info:
            await call
    assert info.value.reason is m.ResultCode.INCORRECT_PSP_STATE
    call = asyncio.create_task(link.request(m.GetStatus()))
    await peer.receive()
    await peer.send(m.GetStatusResponse(m.PspState.ENABLED))
    reply = await call
    assert isinstance(reply, m.GetStatusResponse)
    assert reply.state is m.PspState.ENABLED


def test_reply_headers_follow_the_reply_table() -> None:
    """psp-reference §4.1 / §4.4: Result 0x00 always; the reply types' headers; status 0x00/0x26."""
    assert reply_headers(m.Enable()) == {0x00}
    assert reply_headers(m.GetStatus()) == {0x00, 0x26}
    assert reply_headers(m.StartSession()) == {0x00, 0x26}
    assert reply_headers(m.ReadCard()) == {0x00, 0x26}
    assert reply_headers(m.RequestIds()) == {0x00, 0x27}
    assert reply_headers(m.AuthSession()) == {0x00, 0x31, 0x32, 0x33, 0x35}
    assert reply_headers(m.PropCardExchange()) == {0x00}  # no modelled reply type


def _screen(payload_size: int) -> m.UiRequest:
    """A UI Request whose payload is exactly ``payload_size`` bytes (``type\\0t\\0m\\0`` + text + NUL)."""
    request = m.UiRequest("t", (("m", "x" * (payload_size - 10)),))
    assert len(request.payload()) == payload_size
    return request


async def test_message_too_long_is_refused_before_anything_is_written(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    assert link.fits(_screen(252))
    assert not link.fits(_screen(253))
    with pytest.raises(MessageTooLong) as info:
        await link.request(_screen(253))  # §2.3: one byte more than the normal format carries
    exc = info.value
    assert isinstance(exc, DriverError)
    assert not isinstance(exc, ValueError)
    assert (exc.request, exc.size, exc.limit, exc.extended) == (_screen(253), 253, 252, False)
    assert str(exc) == (
        "UiRequest: 253-byte payload exceeds the 252-byte limit of the normal block format; not sent"
    )
    assert (link.stats.requests, link.busy, link.closed) == (0, False, False)
    call = asyncio.create_task(link.request(m.GetStatus()))
    assert await peer.end.read() == m.GetStatus().to_bytes()  # the first bytes the terminal sees
    await peer.send(m.GetStatusResponse(m.PspState.ENABLED))
    reply = await call
    assert isinstance(reply, m.GetStatusResponse)
    assert reply.state is m.PspState.ENABLED
    call = asyncio.create_task(link.request(_screen(252)))  # at the limit: sent
    assert await peer.receive() == _screen(252)
    await peer.send(m.Result(True))
    assert await call == m.Result(True)


async def _grant(link: PspLink, peer: Peer, granted: m.ProtocolOption) -> None:
    asked = m.ProtocolOption.EXTENDED_BLOCK | m.ProtocolOption.DETAILED_RESULTS
    call = asyncio.create_task(link.request(m.Protocol(3, asked)))
    await peer.receive()
    await peer.send(m.ProtocolEcho(3, granted))  # in the default format (§2.2)
    assert await call == m.ProtocolEcho(3, granted)
    assert link.accepted_options == granted


async def test_echo_masking_extended_keeps_the_normal_format(pair: tuple[PspLink, Peer]) -> None:
    """§2.2 / §5.3: extended only when the echo grants 0x04, whatever was asked."""
    link, peer = pair
    await _grant(link, peer, m.ProtocolOption.DETAILED_RESULTS)
    assert not link.wire.extended
    assert link.payload_limit == 252
    call = asyncio.create_task(link.request(m.GetStatus()))
    assert await peer.end.read() == bytes.fromhex("CC 02 3C 26 30")  # §16: normal Get Status
    await peer.send(m.GetStatusResponse(m.PspState.ONLINE))
    await call
    with pytest.raises(MessageTooLong):
        await link.request(_screen(253))


async def test_refused_protocol_stays_in_the_normal_format(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.Protocol(3, m.ProtocolOption.EXTENDED_BLOCK)))
    await peer.receive()
    await peer.send(m.Result(False, m.ResultCode.INCORRECT_PSP_STATE))
    with pytest.raises(PspNotOk):
        await call
    assert not link.wire.extended
    call = asyncio.create_task(link.request(m.GetStatus()))
    assert await peer.end.read() == bytes.fromhex("CC 02 3C 26 30")
    await peer.send(m.GetStatusResponse(m.PspState.ONLINE))
    await call


@pytest.mark.parametrize(
    ("request_", "reply"), [(m.Synchronize(), m.SynchronizeEcho()), (m.Reset(), m.Result())]
)
async def test_synchronize_and_reset_return_to_the_normal_format(
    pair: tuple[PspLink, Peer], request_: m.Request, reply: m.Response
) -> None:
    """§2.2 [I]: a "protocol reset" ends the extended format; the next setup must ask again."""
    link, peer = pair
    await _grant(link, peer, m.ProtocolOption.EXTENDED_BLOCK)
    assert link.wire.extended
    assert link.payload_limit == 0x10000 - 2
    assert link.fits(_screen(1000))
    call = asyncio.create_task(link.request(request_))
    assert await peer.end.read() == request_.to_bytes(m.WireFormat(extended=True))  # still extended
    await peer.send(reply)
    await call
    assert not link.wire.extended
    assert link.accepted_options is None
    assert not link.fits(_screen(1000))
    call = asyncio.create_task(link.request(m.GetStatus()))
    assert await peer.end.read() == bytes.fromhex("CC 02 3C 26 30")
    await peer.send(m.GetStatusResponse(m.PspState.OFFLINE))
    await call


async def test_link_loss_fails_outstanding_request_and_ends_events(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.AuthSession()))
    await peer.receive()
    await peer.end.close()
    with pytest.raises(LinkLost):
        await call
    assert [e async for e in link.events()] == []
    with pytest.raises(LinkLost):
        await link.request(m.GetStatus())


async def test_extended_format_after_protocol_echo(pair: tuple[PspLink, Peer]) -> None:
    link, peer = pair
    call = asyncio.create_task(link.request(m.Protocol(3, m.ProtocolOption.EXTENDED_BLOCK)))
    await peer.receive()
    await peer.send(m.ProtocolEcho(3, m.ProtocolOption.EXTENDED_BLOCK))  # default format (§2.2)
    await call
    assert link.wire.extended
    call = asyncio.create_task(link.request(m.GetStatus()))
    data = await peer.end.read()
    assert data == bytes.fromhex("CC 00 00 00 02 3C 26 30")  # §16: extended Get Status
    await peer.end.write(m.GetStatusResponse(m.PspState.ONLINE).to_bytes(m.WireFormat(extended=True)))
    reply = await call
    assert isinstance(reply, m.GetStatusResponse)
    assert reply.state is m.PspState.ONLINE


def test_command_timeouts_follow_the_spec_table() -> None:
    """psp-reference §9.1: Auth 30 s / 210 s, Commit/Void 60 s, others 10 s / 5 s."""
    assert command_timeout(P6X, m.AuthSession()) == 30.0
    assert command_timeout(APOLLO, m.AuthSession()) == 210.0
    assert command_timeout(APOLLO, m.CommitSession(1, 1)) == 60.0
    assert command_timeout(P6X, m.VoidSession(1)) == 60.0
    assert command_timeout(P6X, m.GetStatus()) == 10.0
    assert command_timeout(APOLLO, m.Enable()) == 5.0
    assert command_timeout(APOLLO, m.StartSession()) == 5.0  # confirmed by the Get Status behind it


async def test_any_preamble_quirk_for_p6x() -> None:
    """§2.1: a P6X may write a configurable address byte as preamble."""
    profile = P6X.with_quirks(Quirks(accepted_preambles=None)).with_timeouts(other_s=0.3)
    host, term = memory_pair("link-p6x")
    async with PspLink(host, profile) as link:
        peer = Peer(term)
        call = asyncio.create_task(link.request(m.Enable()))
        await peer.receive()
        from drivers.psp.codec import Frame

        await term.write(Frame(0x00, b"\x00", preamble=0x07, magic=0x3D).to_bytes())
        assert await call == m.Result(True)
