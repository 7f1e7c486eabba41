"""Defect 7 of the integrity issue: a reply that arrives but does not decode fails its request at
once, naming the header and the reason, instead of timing out; Request IDs decodes both documented
layouts (psp-reference §5.7) whatever the family profile expects.

Before the fix the undecodable frame was logged and dropped, and the request timed out (5 s on
Apollo, 10 s on P6X; 2 s here).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from drivers.errors import DriverError
from drivers.psp import messages as m
from drivers.psp.profile import APOLLO, P6X, Profile
from drivers.psp.session import TerminalSession
from tests.psp.fake_terminal import FakeTerminal

pytestmark = [pytest.mark.req("ERR-7")]

TIMERS = {
    "other_s": 2.0,  # the reply timeout an undecodable reply must not wait for
    "sync_retry_s": 0.02,
    "reconnect_min_s": 0.01,
    "reconnect_max_s": 0.05,
    "keepalive_s": 5.0,
}


def fast(profile: Profile) -> Profile:
    return profile.with_timeouts(**TIMERS)


async def _session(
    family: m.Family, profile: Profile, reply: m.Message
) -> AsyncIterator[tuple[TerminalSession, FakeTerminal]]:
    fake = FakeTerminal(family)
    answer_ids = False

    def handler(request: m.Request | m.UnknownMessage) -> m.Response | None:
        if isinstance(request, m.RequestIds) and answer_ids:
            return reply  # type: ignore[return-value]
        return None

    fake.handler = handler
    async with TerminalSession("memory://fake", fast(profile), opener=fake.opener, ready_timeout_s=3) as s:
        await s.wait_ready()
        answer_ids = True
        yield s, fake
    await fake.close_connection()


@pytest.fixture
async def apollo_garbage_ids() -> AsyncIterator[tuple[TerminalSession, FakeTerminal]]:
    garbage = m.UnknownMessage(raw_header=0x27, raw_payload=b"\xff\xfe\xfd")  # no NUL: no layout fits
    async for pair in _session(m.Family.APOLLO, APOLLO, garbage):
        yield pair


@pytest.fixture
async def p6x_answering_apollo_layout() -> AsyncIterator[tuple[TerminalSession, FakeTerminal]]:
    ids = m.ApolloIds("APOLLO-0042", "APOLLO", "platform/1", ("psp/1",))
    async for pair in _session(m.Family.P6X, P6X, ids):
        yield pair


async def test_undecodable_reply_fails_at_once_naming_header_and_reason(
    apollo_garbage_ids: tuple[TerminalSession, FakeTerminal],
) -> None:
    session, _fake = apollo_garbage_ids
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        await session.request_ids()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"the request waited {elapsed:.2f} s for a reply that had already come"
    text = str(caught.value)
    assert "0x27" in text
    assert "timeout" not in text.lower()
    # the link is still usable afterwards
    status = await session.get_status()
    assert status.state in (m.PspState.ENABLED, m.PspState.WAIT_CARD)


async def test_request_ids_in_the_other_family_layout_is_decoded(
    p6x_answering_apollo_layout: tuple[TerminalSession, FakeTerminal],
) -> None:
    session, _fake = p6x_answering_apollo_layout
    started = time.monotonic()
    ids = await session.request_ids()
    assert time.monotonic() - started < 1.0
    assert ids.serial_number == "APOLLO-0042"
