"""Every frame of psp-reference §16 is produced byte-exactly and decodes right (issue 2, AC 1)."""

from __future__ import annotations

import pytest

from drivers.psp import messages as m
from drivers.psp.codec import Frame, FrameDecoder
from drivers.psp.messages import WireFormat
from drivers.psp.profile import APOLLO, P6X

HASH = b"0123456789ABCDEF0123456789ABCDEF01234567"  # 40 ASCII hex chars (§5.14)
PAN = b"476173****"  # 10-char masked PAN as in the §5.14 capture

EXTENDED = WireFormat(extended=True)

# (name, message, wire, frame hex) for host → terminal frames
REQUESTS: list[tuple[str, m.Request, WireFormat, str]] = [
    ("disable", m.Disable(), WireFormat(), "CC 02 3C 11 1B"),
    ("enable", m.Enable(), WireFormat(), "CC 02 3C 12 1C"),
    ("protocol v3 none", m.Protocol(3, m.ProtocolOption.NONE), WireFormat(), "CC 07 3C 13 03 00 00 00 00 25"),
    (
        "protocol v3 auth dol",
        m.Protocol(3, m.ProtocolOption.AUTH_DOL),
        WireFormat(),
        "CC 07 3C 13 03 00 00 00 02 27",
    ),
    ("protocol v2 legacy", m.Protocol(2), WireFormat(), "CC 07 3C 13 02 00 00 00 00 24"),
    (
        "protocol v3 0x0B (§5.3)",
        m.Protocol(
            3,
            m.ProtocolOption.TRANSACTION_EVENTS
            | m.ProtocolOption.AUTH_DOL
            | m.ProtocolOption.DETAILED_RESULTS,
        ),
        WireFormat(),
        "CC 07 3C 13 03 00 00 00 0B 30",
    ),
    (
        "protocol v3 0x0F, Apollo setup with extended block (§2.2)",
        m.Protocol(3, APOLLO.requested_options()),
        WireFormat(),
        "CC 07 3C 13 03 00 00 00 0F 34",
    ),
    (
        "setup 48h commit",
        m.Setup(172_800, m.TimeoutAction.COMMIT),
        WireFormat(),
        "CC 07 3C 23 00 02 A3 00 00 D7",
    ),
    ("setup 1h void", m.Setup(3600, m.TimeoutAction.VOID), WireFormat(), "CC 07 3C 23 00 00 0E 10 01 51"),
    (
        "setup 48h void (§7.1)",
        m.Setup(172_800, m.TimeoutAction.VOID),
        WireFormat(),
        "CC 07 3C 23 00 02 A3 00 01 D8",
    ),
    ("synchronize", m.Synchronize(), WireFormat(), "CC 02 3C 24 2E"),
    ("get status", m.GetStatus(), WireFormat(), "CC 02 3C 26 30"),
    ("request ids", m.RequestIds(), WireFormat(), "CC 02 3C 27 31"),
    ("list sessions", m.ListSessions(0), WireFormat(family=m.Family.P6X), "CC 03 3C 30 00 3B"),
    ("void 0x0B", m.VoidSession(0x0B), WireFormat(), "CC 06 3C 33 00 00 00 0B 4C"),
    (
        "start session 25.00 ref 10",
        m.StartSession(2500, 10),
        WireFormat(),
        "CC 0A 3C 34 00 00 09 C4 00 00 00 0A 1D",
    ),
    (
        "start session with DOL list (§5.9)",
        m.StartSession(5000, 0x1234, (0xDFF006, 0xDFCA0B)),
        WireFormat(),
        "CC 11 3C 34 00 00 13 88 00 00 12 34 06 DF F0 06 DF CA 0B BD",
    ),
    (
        "commit 0x0B 12.34",
        m.CommitSession(0x0B, 1234),
        WireFormat(),
        "CC 0A 3C 35 00 00 00 0B 00 00 04 D2 28",
    ),
    ("auth session", m.AuthSession(), WireFormat(), "CC 02 3C 36 40"),
    ("cancel session", m.CancelSession(), WireFormat(), "CC 02 3C 37 41"),
    (
        "prop card exchange PPSE",
        m.PropCardExchange(bytes.fromhex("00A404000E") + b"2PAY.SYS.DDF01" + b"\x00"),
        WireFormat(),
        "CC 16 3C 38 00 A4 04 00 0E 32 50 41 59 2E 53 59 53 2E 44 44 46 30 31 00 B2",
    ),
    ("update session", m.UpdateSession(0x0B, 7500), WireFormat(), "CC 0A 3C 42 00 00 00 0B 00 00 1D 4C C8"),
    ("control reboot", m.Control(0), WireFormat(), "CC 03 3C 48 00 53"),
    ("reset", m.Reset(), WireFormat(), "CC 02 3C 55 5F"),
    ("extended get status", m.GetStatus(), EXTENDED, "CC 00 00 00 02 3C 26 30"),
    (
        "ui template (§5.21)",
        m.UiRequest(
            "template",
            (("template", "my-first-screen"), ("comp.my-label.value", "Hello this is a new message")),
        ),
        WireFormat(),
        "CC 59 3C 28 "
        + (
            b"type\0template\0template\0my-first-screen\0comp.my-label.value\0Hello this is a new message\0"
        ).hex()
        + " DE",
    ),
    (
        "ui dialog (§5.21)",
        m.UiRequest("dialog", (("title", "Hello"), ("buttons.ok", ""), ("buttons.ok.label", "OK"))),
        WireFormat(),
        "CC 3A 3C 28 " + b"type\0dialog\0title\0Hello\0buttons.ok\0\0buttons.ok.label\0OK\0".hex() + " A8",
    ),
    (
        "add transaction context (§5.25)",
        m.AddTransactionContext(0x0B, "kWh=12.5"),
        WireFormat(),
        "CC 0F 3C 47 00 00 00 0B " + b"kWh=12.5\0".hex() + " 96",
    ),
]

# (name, message, wire, frame hex, expecting) for terminal → host frames
RESPONSES: list[tuple[str, m.Response, WireFormat, str, m.Request | None]] = [
    ("result ok", m.Result(True), WireFormat(), "AA 03 3C 00 00 E9", None),
    ("result not ok", m.Result(False), WireFormat(), "AA 03 3C 00 01 EA", None),
    ("result not ok 0x05", m.Result(False, 0x05), WireFormat(), "AA 04 3C 00 01 05 F0", m.Enable()),
    (
        "status enabled hdr 0x00",
        m.GetStatusResponse(m.PspState.ENABLED, False),
        WireFormat(),
        "AA 04 3C 00 08 00 F2",
        m.GetStatus(),
    ),
    (
        "status wait card running (§5.6)",
        m.GetStatusResponse(m.PspState.WAIT_CARD, True),
        WireFormat(),
        "AA 04 3C 00 10 01 FB",
        m.GetStatus(),
    ),
    (
        "status offline hdr 0x26 (T1)",
        m.GetStatusResponse(m.PspState.OFFLINE, False),
        WireFormat(status_response_header=0x26),
        "AA 04 3C 26 01 00 11",
        m.GetStatus(),
    ),
    ("synchronize echo", m.SynchronizeEcho(), WireFormat(), "AA 02 3C 24 0C", None),
    (
        "protocol echo v3 auth dol",
        m.ProtocolEcho(3, m.ProtocolOption.AUTH_DOL),
        WireFormat(),
        "AA 07 3C 13 03 00 00 00 02 05",
        None,
    ),
    (
        "protocol echo v3 0x0B (§7.1)",
        m.ProtocolEcho(3, m.ProtocolOption(0x0B)),
        WireFormat(),
        "AA 07 3C 13 03 00 00 00 0B 0E",
        None,
    ),
    (
        "protocol echo v3 0x0F, extended granted (§2.2)",
        m.ProtocolEcho(3, m.ProtocolOption(0x0F)),
        EXTENDED,  # the echo is in the default format even when it grants 0x04
        "AA 07 3C 13 03 00 00 00 0F 12",
        None,
    ),
    ("session declined", m.SessionDeclined(), WireFormat(), "AA 02 3C 32 1A", None),
    ("session declined 0x09", m.SessionDeclined(0x09), WireFormat(), "AA 03 3C 32 09 24", None),
    ("session cancelled", m.SessionCancelled(), WireFormat(), "AA 02 3C 33 1B", None),
    ("transaction event reading card", m.TransactionEvent(0x01), WireFormat(), "AA 03 3C 38 01 22", None),
    ("ui event ok", m.UiEvent("ok"), WireFormat(), "AA 05 3C 29 6F 6B 00 EE", None),
    ("extended result ok", m.Result(True), EXTENDED, "AA 00 00 00 03 3C 00 00 E9", None),
    (
        "update session result approved (§5.20)",
        m.UpdateSessionResult(m.UpdateResult.APPROVED, 0x0B, 7500, 2500, 0),
        WireFormat(),
        "AA 10 3C 43 00 00 00 00 0B 00 00 1D 4C 00 00 09 C4 00 7A",
        None,
    ),
]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(("name", "msg", "wire", "frame"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_golden_vector(name: str, msg: m.Request, wire: WireFormat, frame: str) -> None:
    raw = _hex(frame)
    assert msg.to_bytes(wire) == raw
    decoder = FrameDecoder(preambles=frozenset({0xCC}))
    frames = decoder.feed(raw)
    assert len(frames) == 1
    assert m.decode_request(frames[0], wire) == msg


@pytest.mark.parametrize(
    ("name", "msg", "wire", "frame", "expecting"), RESPONSES, ids=[r[0] for r in RESPONSES]
)
def test_response_golden_vector(
    name: str, msg: m.Response, wire: WireFormat, frame: str, expecting: m.Request | None
) -> None:
    raw = _hex(frame)
    assert msg.to_bytes(wire) == raw
    frames = FrameDecoder().feed(raw)
    assert len(frames) == 1
    assert m.decode_response(frames[0], wire, expecting=expecting) == msg


def test_documented_layout_example() -> None:
    """§2.1: ``AA 04 3C 21 03 66 74``, and its extended twin (§2.2) with the same checksum."""
    assert Frame(0x21, b"\x03\x66", preamble=0xAA).to_bytes() == _hex("AA 04 3C 21 03 66 74")
    ext = Frame(0x21, b"\x03\x66", preamble=0xAA, extended=True).to_bytes()
    assert ext == _hex("AA 00 00 00 04 3C 21 03 66 74")
    (frame,) = FrameDecoder().feed(ext)
    assert frame.extended
    assert frame.header == 0x21
    assert frame.payload == b"\x03\x66"


def test_session_approved_capture() -> None:
    """§5.14: the T1 capture layout (session 0x0B, card hash + masked PAN, length byte 0x41)."""
    dol = m.Dol(((0xDFF006, HASH), (0xDFCA0B, PAN)))
    raw = m.SessionApproved(0x0B, dol).to_bytes()
    assert raw[:9] == _hex("AA 41 3C 31 00 00 00 0B 3A")
    assert raw[9:13] == _hex("DF F0 06 28")
    (frame,) = FrameDecoder().feed(raw)
    decoded = m.decode_response(frame)
    assert isinstance(decoded, m.SessionApproved)
    assert decoded.session_id == 0x0B
    assert decoded.dol.card_hash == HASH.decode()
    assert decoded.dol.masked_pan == PAN.decode()


def test_commit_order_quirk() -> None:
    """§5.17: the field order is a switch; amount-first swaps the two words."""
    wire = WireFormat(commit_order=m.CommitOrder.AMOUNT_SESSION)
    raw = m.CommitSession(0x0B, 1234).to_bytes(wire)
    assert raw[4:12] == _hex("00 00 04 D2 00 00 00 0B")
    (frame,) = FrameDecoder(preambles=frozenset({0xCC})).feed(raw)
    assert m.decode_request(frame, wire) == m.CommitSession(0x0B, 1234)


def test_read_card_header_quirk() -> None:
    """§4.3: Read Card is 0x41 by default and 0x40 when switched."""
    assert m.ReadCard(7).to_bytes()[3] == 0x41
    wire = WireFormat(read_card_header=0x40)
    raw = m.ReadCard(7, (), 0xFF).to_bytes(wire)
    assert raw[3] == 0x40
    (frame,) = FrameDecoder(preambles=frozenset({0xCC})).feed(raw)
    assert m.decode_request(frame, wire) == m.ReadCard(7, (), 0xFF)


def test_ui_request_page_form_decodes() -> None:
    """§5.21: the page's form (type string first, then pairs) decodes to the same screen."""
    payload = b"dialog\0title\0Hello\0"
    assert m.UiRequest.from_payload(payload) == m.UiRequest("dialog", (("title", "Hello"),))


def test_p6x_request_ids_fixed_layout() -> None:
    ids = m.P6xIds(
        serial_number="P6X-0001",
        sams=(m.SamSlot(True, bytes(range(8))), m.SamSlot(), m.SamSlot()),
        mac=bytes.fromhex("0011223344aa"),
        sim_installed=True,
        sim_serial="8931000000000000001",
        firmware="p6x-fw 5.2.1",
    )
    payload = ids.payload()
    assert len(payload) == m.P6X_IDS_FIXED_LEN + len("p6x-fw 5.2.1") + 1
    assert m.P6xIds.from_payload(payload) == ids


def test_setup_asks_for_the_extended_block_format_on_apollo_only() -> None:
    """§2.2 / §5.3: Apollo asks for 0x01|0x02|0x04|0x08; a P6X only for 0x01|0x02."""
    assert APOLLO.requested_options() == m.ProtocolOption(0x0F)
    assert P6X.requested_options() == m.ProtocolOption(0x03)
    assert not P6X.requested_options() & m.APOLLO_ONLY_OPTIONS
