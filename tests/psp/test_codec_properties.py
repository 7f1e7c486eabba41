"""Hypothesis properties of the sans-IO codec and messages (issue 2, AC 2; requirement ERR-7).

- encode → decode round trip for every message type;
- arbitrary bytes never raise out of the frame decoder, and message decoding raises only
  ``MessageError``;
- any split of a valid byte stream (one byte at a time, random chunks, garbage between frames)
  yields the same frames.
"""

from __future__ import annotations

import itertools
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.psp import messages as m
from drivers.psp.codec import PREAMBLE_HOST, PREAMBLE_TERMINAL, Frame, FrameDecoder, scan_capture

pytestmark = pytest.mark.req("ERR-7")

u32 = st.integers(0, 0xFFFFFFFF)
u8 = st.integers(0, 0xFF)
text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20)
short_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=8)
tags = st.sampled_from([t.value for t in m.Tag])
dol = st.lists(st.tuples(tags, st.binary(max_size=300)), max_size=4).map(lambda items: m.Dol(tuple(items)))
small_dol = st.lists(st.tuples(tags, st.binary(max_size=40)), max_size=4).map(
    lambda items: m.Dol(tuple(items))
)
wires = st.builds(
    m.WireFormat,
    family=st.sampled_from(list(m.Family)),
    extended=st.booleans(),
    commit_order=st.sampled_from(list(m.CommitOrder)),
    read_card_header=st.sampled_from([0x40, 0x41]),
    status_response_header=st.sampled_from([0x00, 0x26]),
)


@st.composite
def start_sessions(draw: st.DrawFn) -> m.StartSession:
    present = draw(st.integers(0, 7))
    optional: list[object] = [
        draw(st.lists(tags, max_size=6).map(tuple)),
        draw(u8),
        draw(short_text.filter(lambda s: len(s.encode()) < 0x40)),
        draw(st.booleans()),
        draw(text),
        draw(short_text),
        draw(short_text),
    ]
    values = optional[:present] + [None] * (7 - present)
    return m.StartSession(draw(u32), draw(u32), *values)  # type: ignore[arg-type]


@st.composite
def read_cards(draw: st.DrawFn) -> m.ReadCard:
    present = draw(st.integers(0, 7))
    optional: list[object] = [
        draw(st.lists(tags, max_size=6).map(tuple)),
        draw(u8),
        draw(short_text),
        draw(text),
        draw(short_text),
        draw(short_text),
        draw(short_text),
    ]
    values = optional[:present] + [None] * (7 - present)
    return m.ReadCard(draw(u32), *values)  # type: ignore[arg-type]


sam = st.builds(m.SamSlot, st.booleans(), st.binary(min_size=8, max_size=8))
# §5.7 plausible Apollo ids: printable strings, the serial number, model id and platform non-empty
printable = st.text(st.characters(categories=("L", "N", "P", "S")), max_size=8)
printable_id = printable.filter(bool)
ascii_field = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=14)

REQUEST_STRATEGIES: dict[type[m.Request], st.SearchStrategy[m.Request]] = {
    m.Disable: st.just(m.Disable()),
    m.Enable: st.just(m.Enable()),
    m.Synchronize: st.just(m.Synchronize()),
    m.GetStatus: st.just(m.GetStatus()),
    m.RequestIds: st.just(m.RequestIds()),
    m.AuthSession: st.just(m.AuthSession()),
    m.CancelSession: st.just(m.CancelSession()),
    m.Reset: st.just(m.Reset()),
    m.Protocol: st.builds(m.Protocol, st.integers(1, 3), st.integers(0, 0x1F).map(m.ProtocolOption)),
    m.Setup: st.builds(m.Setup, u32, st.sampled_from(list(m.TimeoutAction))),
    m.ListSessions: st.builds(m.ListSessions, u8),
    m.VoidSession: st.builds(m.VoidSession, u32),
    m.CommitSession: st.builds(m.CommitSession, u32, u32),
    m.UpdateSession: st.builds(m.UpdateSession, u32, u32),
    m.StartSession: start_sessions(),
    m.ReadCard: read_cards(),
    m.UiRequest: st.builds(
        m.UiRequest,
        short_text.filter(lambda s: s != "type" and s != ""),
        st.lists(st.tuples(short_text, short_text), max_size=5).map(tuple),
    ),
    m.AddTransactionContext: st.builds(m.AddTransactionContext, u32, text),
    m.Control: st.builds(m.Control, u8),
    m.PropCardExchange: st.builds(m.PropCardExchange, st.binary(max_size=60)),
}

RESPONSE_STRATEGIES: dict[type[m.Response], st.SearchStrategy[m.Response]] = {
    m.Result: st.builds(m.Result, st.booleans(), st.none() | u8),
    m.GetStatusResponse: st.builds(m.GetStatusResponse, st.sampled_from(list(m.PspState)), st.booleans()),
    m.ProtocolEcho: st.builds(m.ProtocolEcho, st.integers(1, 3), st.integers(0, 0x1F).map(m.ProtocolOption)),
    m.SynchronizeEcho: st.just(m.SynchronizeEcho()),
    m.SessionCancelled: st.just(m.SessionCancelled()),
    m.ApolloIds: st.builds(
        m.ApolloIds, printable_id, printable_id, printable_id, st.lists(printable, max_size=3).map(tuple)
    ),
    m.P6xIds: st.builds(
        m.P6xIds,
        ascii_field,
        st.tuples(sam, sam, sam),
        st.binary(min_size=6, max_size=6),
        st.booleans(),
        ascii_field,
        ascii_field,
    ),
    m.UiEvent: st.builds(m.UiEvent, short_text),
    m.ListSessionsResponse: st.builds(m.ListSessionsResponse, u8, st.lists(u32, max_size=60).map(tuple)),
    m.SessionApproved: st.builds(m.SessionApproved, u32, small_dol),
    m.SessionPartiallyApproved: st.builds(m.SessionPartiallyApproved, u32, u32, small_dol),
    m.SessionDeclined: st.builds(m.SessionDeclined, st.none() | u8),
    m.CardRead: st.builds(m.CardRead, small_dol),
    m.PropCardRead: st.builds(m.PropCardRead, small_dol),
    m.TransactionEvent: st.builds(m.TransactionEvent, u8),
    m.UpdateSessionResult: st.builds(
        m.UpdateSessionResult, st.sampled_from(list(m.UpdateResult)), u32, u32, u32, u8
    ),
}


def test_every_message_type_has_a_strategy() -> None:
    """New message classes must be added to the round-trip properties."""
    live = [obj for obj in vars(m).values() if isinstance(obj, type) and not obj.__name__.startswith("_")]
    requests = {c for c in live if issubclass(c, m.Request) and c is not m.Request}
    responses = {c for c in live if issubclass(c, m.Response) and c is not m.Response}
    assert requests == set(REQUEST_STRATEGIES)
    assert responses == set(RESPONSE_STRATEGIES)


def _fits(msg: m.Message, wire: m.WireFormat) -> bool:
    try:
        msg.to_bytes(wire)
    except Exception:  # a payload too long for the normal block format
        return False
    return True


@pytest.mark.parametrize("cls", list(REQUEST_STRATEGIES), ids=lambda c: c.__name__)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_request_round_trip(cls: type[m.Request], data: st.DataObject) -> None:
    wire = data.draw(wires)
    msg = data.draw(REQUEST_STRATEGIES[cls].filter(lambda x: _fits(x, wire)))
    frames = FrameDecoder(preambles=frozenset({PREAMBLE_HOST})).feed(msg.to_bytes(wire))
    assert len(frames) == 1
    assert m.decode_request(frames[0], wire) == msg


@pytest.mark.parametrize("cls", list(RESPONSE_STRATEGIES), ids=lambda c: c.__name__)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_response_round_trip(cls: type[m.Response], data: st.DataObject) -> None:
    wire = data.draw(wires)  # Request IDs decode in either layout whatever the family (§5.7)
    msg = data.draw(RESPONSE_STRATEGIES[cls].filter(lambda x: _fits(x, wire)))
    expecting = m.GetStatus() if cls is m.GetStatusResponse else m.Enable() if cls is m.Result else None
    frames = FrameDecoder().feed(msg.to_bytes(wire))
    assert len(frames) == 1
    assert m.decode_response(frames[0], wire, expecting=expecting) == msg


@settings(max_examples=500)
@given(st.binary(max_size=600), wires)
def test_arbitrary_bytes_never_raise(data: bytes, wire: m.WireFormat) -> None:
    for preambles in (frozenset({PREAMBLE_TERMINAL}), frozenset({PREAMBLE_HOST}), None):
        decoder = FrameDecoder(preambles=preambles, strict_magic=preambles is not None)
        for frame in decoder.feed(data):
            for decode in (m.decode_request, m.decode_response):
                try:
                    decode(frame, wire)
                except m.MessageError:
                    pass  # the only exception message decoding may raise
        assert decoder.buffered <= 0x10000 + 6  # bounded buffer
    scan_capture(data)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=300), wires)
def test_arbitrary_payloads_raise_only_message_error(payload: bytes, wire: m.WireFormat) -> None:
    for header in range(0x60):
        for decode in (m.decode_request, m.decode_response):
            try:
                decode(Frame(header, payload), wire)
            except m.MessageError:
                pass


def _stream_messages() -> st.SearchStrategy[list[m.Response]]:
    small = [s for c, s in RESPONSE_STRATEGIES.items() if c not in (m.P6xIds, m.ApolloIds)]
    return st.lists(st.one_of(small), min_size=1, max_size=8)


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    _stream_messages(),
    st.lists(st.binary(max_size=12).map(lambda b: b.replace(bytes([PREAMBLE_TERMINAL]), b"")), max_size=9),
    st.booleans(),
    st.data(),
)
def test_any_split_yields_the_same_frames(
    msgs: list[m.Response], garbage: list[bytes], extended: bool, data: st.DataObject
) -> None:
    wire = m.WireFormat(extended=extended)
    encoded = [msg.to_frame(wire) for msg in msgs]
    stream = b"".join(g + f.to_bytes() for g, f in zip(garbage + [b""] * len(encoded), encoded, strict=False))
    stream += b"".join(garbage[len(encoded) :])

    whole = FrameDecoder().feed(stream)
    assert whole == encoded  # garbage without a preamble byte never hides or invents a frame

    one_by_one = FrameDecoder()
    assert [f for i in range(len(stream)) for f in one_by_one.feed(stream[i : i + 1])] == encoded

    chunked = FrameDecoder()
    assert [f for chunk in data.draw(splits(stream)) for f in chunked.feed(chunk)] == encoded


@settings(max_examples=200)
@given(_stream_messages(), st.data())
def test_corrupt_frame_does_not_hide_the_next(msgs: list[m.Response], data: st.DataObject) -> None:
    """§2.5: after a checksum failure only the preamble is dropped, so the next frame survives."""
    frames = [msg.to_bytes() for msg in msgs]
    victim = data.draw(st.integers(0, len(frames) - 1))
    bad = bytearray(frames[victim])
    bad[-1] ^= 0xFF
    stream = b"".join(bytes(bad) if i == victim else f for i, f in enumerate(frames))
    decoder = FrameDecoder()
    decoded = decoder.feed(stream)
    expected = [msg.to_frame() for i, msg in enumerate(msgs) if i != victim]
    assert decoded == expected
    assert decoder.stats.checksum_errors >= 1


def test_truncated_length_candidate_resynchronises() -> None:
    """A garbage preamble announcing a long body must not swallow the frames behind it forever."""
    real = m.Result(True).to_bytes()
    decoder = FrameDecoder()
    assert decoder.feed(bytes([PREAMBLE_TERMINAL, 0x40, 0x3C]) + real) == []  # waiting for 0x40 bytes
    # inter-byte timeout: drop the bogus start; the rescan recovers the real frame behind it
    assert decoder.discard_partial() == [m.Result(True).to_frame()]
    assert decoder.buffered == 0


def test_message_fields_are_dataclass_fields() -> None:
    """``describe`` shows instance fields only, never class constants."""
    names = {f.name for f in fields(m.CommitSession)}
    assert names == {"session_id", "amount_minor"}
    assert set(m.describe(m.CommitSession(1, 2))) == names
