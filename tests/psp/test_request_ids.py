"""Request IDs Response in both documented layouts whatever the family profile (psp-reference §5.7).

Plausibility rules (drivers.psp.messages): Apollo = at least three NUL-terminated printable UTF-8
strings, the first three non-empty; P6X = at least the 82-byte fixed part, SAM/SIM status bytes
0x00/0x01, the serial number NUL-terminated in its 15-byte field, serial number and ICCID
printable. The family's own layout is tried first; neither fitting is a ``MessageError`` (which the
link turns into ``UndecodableReply``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.psp import messages as m
from drivers.psp.codec import Frame
from drivers.psp.errors import UndecodableReply
from drivers.psp.profile import APOLLO, P6X, Profile
from drivers.psp.session import TerminalSession
from tests.psp.fake_terminal import FakeTerminal

pytestmark = pytest.mark.req("ERR-7")

APOLLO_IDS = m.ApolloIds("APOLLO-0042", "APOLLO", "platform/1.2.3", ("psp/3.1", "ev/2.0"))
P6X_IDS = [
    m.P6xIds(serial_number="P6X-0001", firmware="p6x-fw 5.2.1"),  # nothing installed, zero MAC
    m.P6xIds(serial_number=""),  # an empty serial, no firmware: exactly the 82-byte fixed part
    m.P6xIds(
        serial_number="P6X-0123456789",  # 14 characters: the field's NUL is its last byte
        sams=(m.SamSlot(True, b"SAM0SER0"), m.SamSlot(True, bytes(range(8))), m.SamSlot()),
        mac=bytes.fromhex("0011223344aa"),
        sim_installed=True,
        sim_serial="8931000000000000001",
        firmware="P6X-SIM-FW 1.0.0",
    ),
]
FAMILIES = [m.Family.APOLLO, m.Family.P6X]


def decode(payload: bytes, family: m.Family) -> m.Message:
    return m.decode_response(Frame(0x27, payload, preamble=0xAA), m.WireFormat(family=family))


@pytest.mark.parametrize("family", FAMILIES)
def test_apollo_layout_decodes_under_either_profile(family: m.Family) -> None:
    assert decode(APOLLO_IDS.payload(), family) == APOLLO_IDS


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ids", P6X_IDS, ids=["plain", "empty-serial", "full"])
def test_p6x_layout_decodes_under_either_profile(family: m.Family, ids: m.P6xIds) -> None:
    assert decode(ids.payload(), family) == ids


GARBAGE = {
    "empty": b"",
    "no NUL": b"\xff\xfe\xfd",
    "three empty strings": b"\x00\x00\x00",
    "empty model id": b"SERIAL\x00\x00PLATFORM\x00",
    "two strings": b"SERIAL\x00MODEL\x00",
    "control character": b"SERIAL\x00MO\x01DEL\x00PLATFORM\x00",
    "not UTF-8": b"SERIAL\x00MODEL\x00PLAT\xc3\x28\x00",
    "P6X status byte 0x02": P6X_IDS[0].payload()[:15] + b"\x02" + P6X_IDS[0].payload()[16:],
    "P6X SIM status 0xFF": P6X_IDS[0].payload()[:48] + b"\xff" + P6X_IDS[0].payload()[49:],
    "P6X serial without NUL": b"S" * 15 + P6X_IDS[0].payload()[15:],
    "P6X 81 bytes": P6X_IDS[1].payload()[:81],
    "P6X ICCID unprintable": P6X_IDS[0].payload()[:49] + b"\x07" + P6X_IDS[0].payload()[50:],
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("payload", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_fits_neither_layout(family: m.Family, payload: bytes) -> None:
    with pytest.raises(m.MessageError, match="fits neither layout") as info:
        decode(payload, family)
    assert "ApolloIds: " in str(info.value)  # both reasons are named
    assert "P6xIds: " in str(info.value)


@settings(max_examples=500)
@given(st.binary(max_size=200), st.sampled_from(FAMILIES))
def test_arbitrary_bytes_raise_only_message_error(payload: bytes, family: m.Family) -> None:
    try:
        ids = m.decode_request_ids(payload, m.WireFormat(family=family))
    except m.MessageError:
        return
    if isinstance(ids, m.P6xIds):  # what is accepted obeys the documented rule
        assert len(payload) >= m.P6X_IDS_FIXED_LEN
        assert all(payload[i] in (0, 1) for i in (15, 24, 33, 48))
    else:
        assert all((ids.serial_number, ids.model_id, ids.platform))


@st.composite
def near_p6x(draw: st.DrawFn) -> bytes:
    """Random bytes shaped like the P6X fixed part (status bytes 0/1, NUL in the serial field)."""
    raw = bytearray(draw(st.binary(min_size=82, max_size=160)))
    for offset in (15, 24, 33, 48):
        raw[offset] = draw(st.sampled_from([0, 1]))
    raw[draw(st.integers(0, 14))] = 0
    return bytes(raw)


@settings(max_examples=300)
@given(near_p6x(), st.sampled_from(FAMILIES))
def test_near_plausible_bytes_raise_only_message_error(payload: bytes, family: m.Family) -> None:
    try:
        m.decode_request_ids(payload, m.WireFormat(family=family))
    except m.MessageError:
        pass


# -- through the session: the profile's family does not decide whether ids are understood --------

TIMERS = {"other_s": 5.0, "sync_retry_s": 0.02, "reconnect_min_s": 0.01, "reconnect_max_s": 0.05}


@pytest.mark.parametrize(
    ("profile", "family", "reply"),
    [(APOLLO, m.Family.APOLLO, P6X_IDS[2]), (P6X, m.Family.P6X, APOLLO_IDS)],
    ids=["apollo-profile-p6x-layout", "p6x-profile-apollo-layout"],
)
async def test_session_reads_the_other_layout(
    profile: Profile, family: m.Family, reply: m.Response, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "drivers.psp.session")
    fake = FakeTerminal(family)
    fake.handler = lambda request: reply if isinstance(request, m.RequestIds) else None
    async with TerminalSession(
        "memory://fake", profile.with_timeouts(**TIMERS), opener=fake.opener, ready_timeout_s=3
    ) as session:
        await session.wait_ready()
        ids = session.state.value.ids  # read during setup
        assert ids is not None
        assert ids["serial_number"] == reply.serial_number  # type: ignore[attr-defined]
        started = time.monotonic()
        assert await session.request_ids() == reply
        assert time.monotonic() - started < 1.0
    await fake.close_connection()
    assert "layout, the profile is" in caplog.text


async def test_undecodable_ids_during_setup_do_not_break_it(caplog: pytest.LogCaptureFixture) -> None:
    """Setup goes on without ids (one WARNING, no traceback); the command fails at once."""
    caplog.set_level(logging.INFO)
    fake = FakeTerminal(m.Family.APOLLO)
    garbage = m.UnknownMessage(raw_header=0x27, raw_payload=b"\xff\xfe\xfd")
    fake.handler = lambda request: garbage if isinstance(request, m.RequestIds) else None
    async with TerminalSession(
        "memory://fake", APOLLO.with_timeouts(**TIMERS), opener=fake.opener, ready_timeout_s=3
    ) as session:
        state = await session.wait_ready()
        assert state.ids is None
        assert state.setups == 1
        started = time.monotonic()
        async with asyncio.timeout(1.0):
            with pytest.raises(UndecodableReply) as info:
                await session.request_ids()
        assert time.monotonic() - started < 1.0  # not the 5 s Apollo reply timeout (§9.1)
        assert str(info.value).startswith("RequestIds: undecodable reply 0x27: ")
        assert (await session.get_status()).state is m.PspState.ENABLED  # the link stays up
        assert session.state.value.setups == 1
    await fake.close_connection()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "0x27" in r.getMessage()]
    assert any("continuing without terminal ids" in r.getMessage() for r in warnings)
    assert all(r.exc_info is None for r in caplog.records)  # no traceback anywhere
