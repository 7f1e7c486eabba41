"""Message size limits of the two block formats (psp-reference §2.2, §2.3) and the terminal contract's
``screen_fits`` / ``screen_limit_bytes``: fits at N bytes, not at N + 1, for both formats."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.psp import messages as m
from drivers.psp.codec import PREAMBLE_HOST, PREAMBLE_TERMINAL, Frame, FrameTooLong, max_payload
from drivers.psp.link import fits, payload_limit
from drivers.psp.profile import APOLLO
from drivers.terminal import PspTerminal, Terminal
from tests.psp.fake_terminal import FakeTerminal

NORMAL_LIMIT = 0xFE - 2  # §2.3: a host keeps Length ≤ 0xFE; Length counts magic + header
EXTENDED_LIMIT = 0x10000 - 2  # §2.3: the extended maximum is a [GAP]; the codec's bound
TIMERS = {"other_s": 0.5, "sync_retry_s": 0.02, "reconnect_min_s": 0.01, "reconnect_max_s": 0.05}


def screen(payload_size: int) -> tuple[str, dict[str, str]]:
    """A screen whose UI Request payload is exactly ``payload_size`` bytes (§5.21):
    ``type\\0t\\0`` + ``m\\0`` + the text + its NUL = 10 bytes around the text."""
    return "t", {"m": "x" * (payload_size - 10)}


def ui_request(payload_size: int) -> m.UiRequest:
    screen_type, props = screen(payload_size)
    ui = m.UiRequest(screen_type, tuple(props.items()))
    assert len(ui.payload()) == payload_size
    return ui


@pytest.mark.parametrize(
    ("extended", "preamble", "limit"),
    [
        (False, PREAMBLE_HOST, NORMAL_LIMIT),
        (False, PREAMBLE_TERMINAL, 0xFF - 2),  # §5.8: a terminal fills frames up to Length 0xFF
        (True, PREAMBLE_HOST, EXTENDED_LIMIT),
    ],
)
def test_codec_limit_is_exact(extended: bool, preamble: int, limit: int) -> None:
    assert max_payload(extended=extended, preamble=preamble) == limit
    raw = Frame(0x28, bytes(limit), preamble=preamble, extended=extended).to_bytes()
    assert len(raw) == limit + (8 if extended else 5)  # preamble, length, magic, header, checksum
    with pytest.raises(FrameTooLong) as info:
        Frame(0x28, bytes(limit + 1), preamble=preamble, extended=extended).to_bytes()
    assert (info.value.size, info.value.limit, info.value.extended) == (limit + 1, limit, extended)


@pytest.mark.parametrize(("extended", "limit"), [(False, NORMAL_LIMIT), (True, EXTENDED_LIMIT)])
def test_link_fits_at_the_limit_not_one_byte_above(extended: bool, limit: int) -> None:
    wire = m.WireFormat(extended=extended)
    assert payload_limit(wire) == limit
    assert fits(ui_request(limit), wire)
    assert not fits(ui_request(limit + 1), wire)
    ui_request(limit).to_bytes(wire)  # what fits also encodes
    with pytest.raises(FrameTooLong):
        ui_request(limit + 1).to_bytes(wire)


def test_no_link_measures_against_the_normal_format() -> None:
    terminal = PspTerminal("tcp://127.0.0.1:1", APOLLO)  # never started: no link
    assert terminal.screen_limit_bytes == NORMAL_LIMIT
    assert terminal.screen_bytes(*screen(NORMAL_LIMIT)) == NORMAL_LIMIT
    assert terminal.screen_fits(*screen(NORMAL_LIMIT))
    assert not terminal.screen_fits(*screen(NORMAL_LIMIT + 1))


@pytest.fixture
async def terminal_and_fake(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[PspTerminal, FakeTerminal]]:
    fake = FakeTerminal(m.Family.APOLLO)
    fake.grant = request.param
    terminal = PspTerminal(
        "memory://fake", APOLLO.with_timeouts(**TIMERS), opener=fake.opener, ready_timeout_s=3
    )
    async with terminal:
        await terminal.wait_ready(3)
        yield terminal, fake
    await fake.close_connection()


@pytest.mark.parametrize(
    ("terminal_and_fake", "extended", "limit"),
    [(m.KNOWN_OPTIONS, True, EXTENDED_LIMIT), (m.ProtocolOption(0x1B), False, NORMAL_LIMIT)],
    ids=["granted", "masked"],
    indirect=["terminal_and_fake"],
)
async def test_screen_fits_uses_the_format_the_echo_granted(
    terminal_and_fake: tuple[PspTerminal, FakeTerminal], extended: bool, limit: int
) -> None:
    terminal, fake = terminal_and_fake
    protocol = next(r for r in fake.received if isinstance(r, m.Protocol))
    assert m.ProtocolOption.EXTENDED_BLOCK in protocol.options  # Apollo asks in both cases (§2.2)
    link = terminal.session.link
    assert link is not None
    assert link.wire.extended is extended
    assert terminal.screen_limit_bytes == limit
    assert terminal.screen_fits(*screen(limit))
    assert not terminal.screen_fits(*screen(limit + 1))


class _Bare(Terminal):
    """A terminal with no size limit (only the contract's defaults matter here)."""


_Bare.__abstractmethods__ = frozenset()  # the abstract operations are never called


def test_contract_default_has_no_limit() -> None:
    bare = _Bare()  # type: ignore[abstract]
    assert bare.screen_fits(*screen(EXTENDED_LIMIT + 1))
    assert bare.screen_limit_bytes is None


screens = st.tuples(
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=20),
    st.dictionaries(
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12),
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=120),
        max_size=4,
    ),
)


@settings(max_examples=200)
@given(screens)
def test_screen_fits_agrees_with_the_encoder(screen_: tuple[str, Mapping[str, str]]) -> None:
    """Whatever the text (multi-byte UTF-8 included), ``screen_fits`` is True exactly when the
    UI Request encodes in the normal block format."""
    screen_type, props = screen_
    terminal = PspTerminal("tcp://127.0.0.1:1", APOLLO)
    ui = m.UiRequest(screen_type, tuple(props.items()))
    try:
        ui.to_bytes()
        encodes = True
    except FrameTooLong:
        encodes = False
    assert terminal.screen_fits(screen_type, props) is encodes
