"""A small scripted PSP peer over ``memory_pair()`` for unit tests of the link and the session.

Not a simulator (that is ``hil.psp_sim``): just enough of psp-reference §3 and §7 to drive the
driver's happy paths and a few faults deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable

from drivers.psp import messages as m
from drivers.psp.codec import FrameDecoder
from drivers.psp.messages import PspState
from drivers.transport import MemoryTransport, Transport, memory_pair

HASH = "0123456789ABCDEF0123456789ABCDEF01234567"
MASKED_PAN = "476173****0119"


class FakeTerminal:
    """Answers requests on the terminal end of a memory pair. ``opener`` gives a new pair per connect."""

    def __init__(self, family: m.Family = m.Family.APOLLO) -> None:
        self.family = family
        self.wire = m.WireFormat(family=family)
        self.state = PspState.OFFLINE
        self.received: list[m.Request | m.UnknownMessage] = []
        self.sessions: dict[int, str] = {}
        self.next_session_id = 0x0B
        self.drop = 0  # drop the next n replies
        self.not_ready = 0  # answer the next n Synchronize with Not OK / 0x11
        self.silent = False  # answer nothing at all
        self.detailed = family is m.Family.APOLLO
        # §5.3: options the Protocol echo grants (a P6X masks the Apollo-only ones in any case)
        self.grant = m.KNOWN_OPTIONS
        # a raw UnknownMessage reply stands for a frame the host cannot decode
        self.handler: (
            Callable[[m.Request | m.UnknownMessage], m.Response | m.UnknownMessage | None] | None
        ) = None
        self.connects = 0
        self._end: MemoryTransport | None = None
        self._task: asyncio.Task[None] | None = None

    async def opener(self, url: str) -> Transport:
        await self.close_connection()
        host, term = memory_pair(f"fake-{id(self)}-{self.connects}")
        self.connects += 1
        self._end = term
        self._task = asyncio.get_running_loop().create_task(self._serve(term), name="fake-terminal")
        return host

    async def close_connection(self) -> None:
        if self._end is not None:
            await self._end.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        self._end = self._task = None

    async def send(self, message: m.Response) -> None:
        assert self._end is not None
        await self._end.write(message.to_bytes(self.wire))

    async def tap(self, card_hash: str = HASH, masked_pan: str = MASKED_PAN) -> None:
        dol = m.Dol(((m.Tag.CARD_HASH, card_hash.encode()), (m.Tag.MASKED_PAN, masked_pan.encode())))
        self.state = PspState.WAIT_AUTH
        await self.send(m.CardRead(dol))

    def _set_extended(self, extended: bool) -> None:
        """§2.2: from the frame after the Protocol echo on; Synchronize / Reset end it."""
        self.wire = dataclasses.replace(self.wire, extended=extended)

    def _result(self, ok: bool, reason: int) -> m.Result:
        return m.Result(ok, (0 if ok else reason) if self.detailed else None)

    async def _serve(self, end: MemoryTransport) -> None:
        decoder = FrameDecoder(preambles=frozenset({0xCC}))
        with contextlib.suppress(Exception):
            while data := await end.read():
                for frame in decoder.feed(data):
                    request = m.decode_request(frame, self.wire)
                    self.received.append(request)
                    reply = self.handler(request) if self.handler else None
                    if reply is None:
                        reply = self.answer(request)
                    if reply is None or self.silent:
                        continue
                    if self.drop:
                        self.drop -= 1
                        continue
                    await end.write(reply.to_bytes(self.wire))

    def answer(self, request: m.Request | m.UnknownMessage) -> m.Response | None:
        s = PspState
        ok = self._result(True, 0)
        wrong = self._result(False, m.ResultCode.INCORRECT_PSP_STATE)
        match request:
            case m.Synchronize():
                if self.not_ready:
                    self.not_ready -= 1
                    return self._result(False, m.ResultCode.NOT_READY)
                self.state = s.ONLINE
                self._set_extended(False)
                return m.SynchronizeEcho()
            case m.Reset():
                self.state = s.OFFLINE
                self._set_extended(False)
                return ok
            case m.Protocol(version=v, options=o):
                if self.state is not s.ONLINE:
                    return wrong
                o &= self.grant
                if self.family is m.Family.P6X:
                    o &= ~m.APOLLO_ONLY_OPTIONS
                self._set_extended(m.ProtocolOption.EXTENDED_BLOCK in o)
                return m.ProtocolEcho(v, o)  # always in the default format (§2.2)
            case m.Setup():
                if self.state is not s.ONLINE:
                    return wrong
                self.state = s.DISABLED
                return ok
            case m.Enable():
                if self.state not in (s.DISABLED, s.ENABLED):
                    return wrong
                self.state = s.ENABLED
                return ok
            case m.GetStatus():
                return m.GetStatusResponse(self.state, self.state is s.WAIT_CARD)
            case m.RequestIds():
                if self.family is m.Family.P6X:
                    return m.P6xIds(serial_number="P6X-FAKE", firmware="fw 1")
                return m.ApolloIds("APOLLO-FAKE", "APOLLO", "platform/1", ("psp/1",))
            case m.StartSession():
                if self.state is not s.ENABLED:
                    return wrong
                self.state = s.WAIT_CARD
                return None
            case m.AuthSession():
                if self.state is not s.WAIT_AUTH:
                    return wrong
                self.state = s.ENABLED
                sid = self.next_session_id
                self.next_session_id += 1
                self.sessions[sid] = "approved"
                return m.SessionApproved(sid, m.Dol(((m.Tag.MASKED_PAN, MASKED_PAN.encode()),)))
            case m.CancelSession():
                if self.state not in (s.WAIT_CARD, s.WAIT_AUTH):
                    return wrong
                self.state = s.ENABLED
                return m.SessionCancelled()
            case m.CommitSession(session_id=sid) | m.VoidSession(session_id=sid):
                if self.state not in (s.DISABLED, s.ENABLED, s.WAIT_CARD, s.WAIT_AUTH):
                    return wrong
                if self.sessions.get(sid) != "approved":
                    return self._result(False, m.ResultCode.SESSION_ID_NOT_FOUND)
                self.sessions[sid] = "committed" if isinstance(request, m.CommitSession) else "voided"
                return ok
            case m.ListSessions(offset=offset):
                open_ids = [k for k, v in self.sessions.items() if v == "approved"]
                return m.ListSessionsResponse(len(open_ids), tuple(open_ids[offset : offset + 2]))
        return self._result(False, m.ResultCode.UNKNOWN_COMMAND)
