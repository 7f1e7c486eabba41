"""The frame tap reports frames in order and never breaks the link it watches."""

from __future__ import annotations

from drivers.psp import messages as m
from drivers.psp.tap import Direction, TappedTransport
from drivers.transport import memory_pair


async def test_tap_reports_sent_and_received_frames() -> None:
    ours, theirs = memory_pair("tap-ok")
    seen: list[tuple[Direction, str]] = []
    tap = TappedTransport(ours, m.WireFormat(), lambda d, msg, raw: seen.append((d, msg.name)))
    await tap.write(m.GetStatus().to_bytes())
    assert await theirs.read() == m.GetStatus().to_bytes()  # bytes pass unchanged
    await theirs.write(m.GetStatusResponse(m.PspState.ENABLED).to_bytes())
    await tap.read()
    assert seen == [("sent", "GetStatus"), ("received", "GetStatusResponse")]
    await tap.close()


async def test_a_failing_observer_does_not_break_the_link() -> None:
    ours, theirs = memory_pair("tap-fail")

    def broken(direction: Direction, message: m.Message, raw: bytes) -> None:
        raise BrokenPipeError("stdout closed")

    tap = TappedTransport(ours, m.WireFormat(), broken)
    await tap.write(m.Enable().to_bytes())
    assert await theirs.read() == m.Enable().to_bytes()
    await theirs.write(m.Result(True).to_bytes())
    assert await tap.read() == m.Result(True).to_bytes()
    await tap.close()


async def test_tap_decodes_extended_frames_with_their_wide_inner_lengths() -> None:
    """§2.2: in the extended format the DOL length of Session Approved is 2 bytes; the tap decodes
    each frame in its own format (the agent's ``psp_received:SessionApproved`` crash point)."""
    ours, theirs = memory_pair("tap-extended")
    seen: list[m.Message] = []
    tap = TappedTransport(ours, m.WireFormat(), lambda d, msg, raw: seen.append(msg))
    extended = m.WireFormat(extended=True)
    approved = m.SessionApproved(0x0B, m.Dol(((m.Tag.MASKED_PAN, b"476173******0010"),)))
    await tap.write(m.AuthSession().to_bytes(extended))
    await theirs.read()
    await theirs.write(approved.to_bytes(extended))
    await tap.read()
    assert seen == [m.AuthSession(), approved]
    await tap.close()
