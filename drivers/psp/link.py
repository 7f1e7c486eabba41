"""The asyncio PSP link: one outstanding request, spec timeouts, an event stream (DESIGN.md §3.2 item 3).

PSP has no sequence numbers (psp-reference §4.4), so the link allows **one outstanding request**
(an :class:`asyncio.Lock`) and interprets the next frame that is a valid reply to it (the table
:data:`_REPLIES`, from §4.1) as its answer. The reply future is registered **before** the write
(style.md, zigpy model) so a fast terminal cannot answer into the void.

Unsolicited frames — Card Read, Prop Card Read, UI Event, Transaction Event, Session Cancelled or
Declined when no Cancel/Auth is outstanding, and anything that is not a valid reply — go to the
event stream (:meth:`PspLink.events`). Frames that do not decode are counted and logged, never
raised out of the reader (style.md §2); when such a frame's header is one a reply to the outstanding
request can carry (:func:`reply_headers`), that request fails at once with :class:`UndecodableReply`
instead of waiting for its §9.1 timeout.

Block format (§2.2): the link speaks the normal format until a Protocol echo **grants** option 0x04
(the echo itself is still in the normal format); an echo that masks 0x04, or a refused Protocol,
leaves it in the normal format; Reset and Synchronize return it to the normal format. A request
too long for the format in force raises :class:`MessageTooLong` before anything is written.

Start Session and Read Card have no documented immediate reply (§5.9): only a Result Not OK
rejects them. The link writes the start **and a Get Status right behind it** (one write, under the
one lock) and waits for the first reply: the terminal answers in order, so a rejection (Result Not
OK) arrives before the status reply, and a status of WAIT_CARD (WAIT_AUTH if a card was already
at the reader) confirms the start (DESIGN.md §3.2). There is no fixed waiting window: the lock is
held for one round trip, so an Auth Session for a card read at once is not delayed. After a
rejection the link still consumes the status reply that follows, so the next request is not
answered with it. The Card Read that follows is an event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

from drivers.errors import TransportError
from drivers.psp.codec import PREAMBLE_HOST, Frame, FrameDecoder, FrameTooLong, max_payload
from drivers.psp.errors import (
    LinkLost,
    MessageTooLong,
    PspNotOk,
    PspTimeout,
    UndecodableReply,
    UnexpectedState,
)
from drivers.psp.messages import (
    AddTransactionContext,
    ApolloIds,
    AuthSession,
    CancelSession,
    CardRead,
    CommitSession,
    Control,
    Disable,
    Enable,
    GetStatus,
    GetStatusResponse,
    ListSessions,
    ListSessionsResponse,
    MessageError,
    P6xIds,
    PropCardRead,
    Protocol,
    ProtocolEcho,
    ProtocolOption,
    PspState,
    ReadCard,
    Request,
    RequestIds,
    Reset,
    Response,
    ResponseHeader,
    Result,
    SessionApproved,
    SessionCancelled,
    SessionDeclined,
    SessionPartiallyApproved,
    Setup,
    StartSession,
    Synchronize,
    SynchronizeEcho,
    TransactionEvent,
    UiEvent,
    UiRequest,
    UnknownMessage,
    UpdateSession,
    UpdateSessionResult,
    VoidSession,
    WireFormat,
    decode_response,
)
from drivers.psp.profile import Profile
from drivers.transport import Transport

_LOGGER = logging.getLogger(__name__)

PspMessage = Response | UnknownMessage

EVENT_QUEUE_SIZE = 256  # bounded (style.md §2): the oldest event is dropped and counted when full

# psp-reference §4.2 / §4.4: these are events at any time, never replies
_ALWAYS_EVENTS: tuple[type[Response], ...] = (CardRead, PropCardRead, UiEvent, TransactionEvent)

# psp-reference §4.1 "Normal reply" column. Result Not OK is a valid reply to every request;
# Result OK only to the requests listed in _RESULT_OK_REPLY.
_REPLIES: dict[type[Request], tuple[type[Response], ...]] = {
    Synchronize: (SynchronizeEcho,),  # §5.2
    Protocol: (ProtocolEcho,),  # §5.3
    GetStatus: (GetStatusResponse,),  # §5.6, header 0x00 or 0x26 (§4.3)
    RequestIds: (ApolloIds, P6xIds),  # §5.7
    ListSessions: (ListSessionsResponse,),  # §5.8
    # §5.12: Approved / Partially Approved (Apollo) / Declined / Cancelled
    AuthSession: (SessionApproved, SessionPartiallyApproved, SessionDeclined, SessionCancelled),
    CancelSession: (SessionCancelled,),  # §5.13
    UpdateSession: (UpdateSessionResult,),  # §5.20
    StartSession: (),  # §5.9: no documented reply; only a Result Not OK rejects it
    ReadCard: (),  # §5.10: as Start Session
}
_RESULT_OK_REPLY: tuple[type[Request], ...] = (
    Disable,
    Enable,
    Setup,
    VoidSession,
    CommitSession,
    UiRequest,
    AddTransactionContext,
    Control,
    Reset,
    CancelSession,  # lenient: Session Cancelled is documented, a Result OK is accepted too
)
_START_REQUESTS: tuple[type[Request], ...] = (StartSession, ReadCard)


@dataclass(slots=True)
class LinkStats:
    """Counters for diagnostics; bad input is counted, never raised."""

    requests: int = 0
    timeouts: int = 0
    not_ok: int = 0
    decode_errors: int = 0
    unexpected: int = 0
    events: int = 0
    events_dropped: int = 0
    partial_frames_discarded: int = 0


@dataclass(slots=True)
class _Pending:
    request: Request
    future: asyncio.Future[PspMessage]
    # a start (Start Session / Read Card) with its confirming Get Status written right behind it:
    # the first reply is either the start's Result Not OK or the status reply (§4.4, §5.9)
    start_pair: bool = False
    # start pair only: the reply to its Get Status when the start was rejected (it follows the Not OK)
    trailing: asyncio.Future[PspMessage] | None = None


def command_timeout(profile: Profile, request: Request) -> float:
    """Host-side reply timeout for ``request`` (psp-reference §9.1, via ``profile.timeouts``)."""
    t = profile.timeouts
    if isinstance(request, AuthSession):
        return t.auth_s  # §9.1: P6X 30 s, Apollo 3 min 30 s
    if isinstance(request, CommitSession | VoidSession):
        return t.commit_void_s  # §9.1: 60 s
    # others, and Start Session / Read Card: confirmed by the Get Status written right behind them
    return t.other_s  # §9.1: P6X 10 s, Apollo 5 s


def is_reply(request: Request, message: PspMessage) -> bool:
    """Whether ``message`` can answer ``request`` (psp-reference §4.1, §4.4)."""
    if type(message) in _ALWAYS_EVENTS:
        return False
    if isinstance(message, Result):
        return not message.ok or isinstance(request, _RESULT_OK_REPLY)
    expected = _REPLIES.get(type(request))
    if expected is None:  # a request without a modelled reply (e.g. Prop Card Exchange): take any
        return not isinstance(message, SessionCancelled | SessionDeclined)
    return type(message) in expected


def reply_headers(request: Request) -> frozenset[int]:
    """Headers a reply to ``request`` can carry (psp-reference §4.1, §4.4): the Result header 0x00
    (Result Not OK answers every request), and the headers of its reply types in :data:`_REPLIES`;
    a status reply may come under 0x00 or 0x26 (§4.3). A start pair (Start Session / Read Card with
    its Get Status, §5.9) takes the Result and status headers."""
    headers = {int(ResponseHeader.RESULT)}
    replies = _REPLIES[GetStatus] if isinstance(request, _START_REQUESTS) else _REPLIES.get(type(request), ())
    for cls in replies:
        headers.add(cls.HEADER)
        if cls is GetStatusResponse:
            headers.add(ResponseHeader.GET_STATUS_ALT)  # §4.3: the T1 variant
    return frozenset(headers)


def payload_limit(wire: WireFormat) -> int:
    """The largest request payload the block format of ``wire`` carries (§2.3; §2.2 extended)."""
    return max_payload(extended=wire.extended, preamble=PREAMBLE_HOST)


def fits(request: Request, wire: WireFormat) -> bool:
    """Whether ``request`` fits one block in the format of ``wire`` (sizes per §2.3)."""
    return len(request.payload(wire)) <= payload_limit(wire)


def _is_start_pair_reply(message: PspMessage) -> bool:
    """First reply to Start Session / Read Card + Get Status: the start's Result Not OK (§5.9) or
    the status reply (§5.6); a Result OK is no documented reply to a start and stays an event."""
    if isinstance(message, Result):
        return not message.ok
    return isinstance(message, GetStatusResponse)


class PspLink:
    """One connected PSP byte link: request/response correlation and an event stream.

    Use as ``async with PspLink(transport, profile) as link:``; leaving the block (or
    :meth:`aclose`) cancels and awaits the reader task and closes the transport. A closed link
    (peer closed, read failed, write failed) fails the outstanding request with
    :class:`LinkLost` and ends the event stream; open a new link to reconnect.
    """

    def __init__(
        self,
        transport: Transport,
        profile: Profile,
        *,
        wire: WireFormat | None = None,
        on_event: Callable[[PspMessage | None], None] | None = None,
    ) -> None:
        """``on_event``: when given, unsolicited messages (and ``None`` once the link closes) are
        passed to it instead of the internal queue of :meth:`events`; it must not block or raise."""
        self._transport = transport
        self._on_event = on_event
        self.profile = profile
        self._default_wire = wire if wire is not None else profile.wire()
        self.wire = self._default_wire
        quirks = profile.quirks
        self._decoder = FrameDecoder(
            preambles=quirks.accepted_preambles,
            strict_magic=profile.magic_is_strict,
            allow_extended=profile.extended_block,
        )
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._events: asyncio.Queue[PspMessage | None] = asyncio.Queue(EVENT_QUEUE_SIZE + 1)
        self._reader: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._close_reason = "link closed"
        self.stats = LinkStats()
        self.last_rx = time.monotonic()  # monotonic time of the last received frame
        self.last_tx = time.monotonic()
        self.last_reply = time.monotonic()  # monotonic time of the last valid reply
        self.accepted_options: ProtocolOption | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def description(self) -> str:
        return self._transport.description

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_reason(self) -> str:
        return self._close_reason

    @property
    def last_activity(self) -> float:
        """Monotonic time of the last request sent or reply received (the terminal's idle clock, §1.3)."""
        return max(self.last_tx, self.last_reply)

    @property
    def payload_limit(self) -> int:
        """The largest request payload the block format in force carries (252 bytes normal, §2.3)."""
        return payload_limit(self.wire)

    def fits(self, request: Request) -> bool:
        """Whether ``request`` can be sent in the block format in force (else :class:`MessageTooLong`)."""
        return fits(request, self.wire)

    @property
    def busy(self) -> bool:
        """A request is outstanding (the terminal does not count this time as idle, §1.3)."""
        return self._pending is not None

    def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._read_loop(), name=f"psp-link-reader {self.description}"
            )

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._mark_closed("closed by host")
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.wait([reader])
        try:
            await self._transport.close()
        except (OSError, TransportError) as exc:
            _LOGGER.debug("%s: close failed: %s", self.description, exc)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- requests ------------------------------------------------------------------------------

    async def request(self, request: Request, *, timeout_s: float | None = None) -> PspMessage:
        """Send ``request`` and return its reply.

        Raises :class:`PspTimeout` (no valid reply in time), :class:`PspNotOk` (Result Not OK),
        :class:`UndecodableReply` (a frame with a reply's header did not decode),
        :class:`MessageTooLong` (nothing sent; the link stays usable) or :class:`LinkLost`.
        Start Session / Read Card return the confirming Get Status Response (see the module
        docstring); a Card Read later arrives as an event.
        """
        if isinstance(request, _START_REQUESTS):
            return await self._start(request, timeout_s)
        limit_s = command_timeout(self.profile, request) if timeout_s is None else timeout_s
        reply = await self._exchange(request, limit_s)
        if isinstance(reply, Result) and not reply.ok:
            self.stats.not_ok += 1
            raise PspNotOk(request, reply)
        return reply

    async def _start(self, request: Request, timeout_s: float | None) -> GetStatusResponse:
        """Start Session / Read Card + Get Status in one exchange (see the module docstring)."""
        limit_s = command_timeout(self.profile, request) if timeout_s is None else timeout_s
        reply = await self._exchange(request, limit_s, confirm=True)
        if isinstance(reply, Result) and not reply.ok:
            self.stats.not_ok += 1
            raise PspNotOk(request, reply)
        if not isinstance(reply, GetStatusResponse):  # pragma: no cover - is_reply forbids it
            raise UnexpectedState(request.name, PspState.OFFLINE, (PspState.WAIT_CARD,))
        if reply.state not in (PspState.WAIT_CARD, PspState.WAIT_AUTH):
            raise UnexpectedState(request.name, reply.state, (PspState.WAIT_CARD, PspState.WAIT_AUTH))
        return reply

    async def _exchange(self, request: Request, timeout_s: float, *, confirm: bool = False) -> PspMessage:
        """One request and its reply under the lock. ``confirm`` (starts only): a Get Status is
        written right behind ``request`` and the first reply is the start's Result Not OK or the
        status; after a Not OK the status reply is consumed as well (bounded by ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self.closed:
                raise LinkLost(self.description, self._close_reason)
            # encoded under the lock (a Protocol echo may change the format) and before anything
            # is registered or written: a request too long for the format leaves no trace
            data = self._encode(request)
            if confirm:
                data += self._encode(GetStatus())  # one write: both frames leave in one segment
            future: asyncio.Future[PspMessage] = loop.create_future()
            trailing: asyncio.Future[PspMessage] | None = loop.create_future() if confirm else None
            # registered before the write
            self._pending = _Pending(request, future, start_pair=confirm, trailing=trailing)
            self.stats.requests += 2 if confirm else 1
            try:
                try:
                    await self._transport.write(data)
                except TransportError as exc:
                    self._mark_closed(f"write failed: {exc}")
                    raise LinkLost(self.description, self._close_reason) from exc
                self.last_tx = time.monotonic()
                try:
                    async with asyncio.timeout(timeout_s):
                        reply = await future
                except TimeoutError:
                    self.stats.timeouts += 1
                    raise PspTimeout(request, timeout_s) from None
                if trailing is not None and isinstance(reply, Result) and not reply.ok:
                    await self._consume_status(request, trailing, timeout_s)
            finally:
                self._pending = None
                for waiter in (future, trailing):
                    if waiter is not None and not waiter.done():
                        waiter.cancel()
            self.last_reply = time.monotonic()
            self._after_reply(request, reply)
            return reply

    def _encode(self, request: Request) -> bytes:
        """``request`` as one block in the format in force; :class:`MessageTooLong` if it does not fit."""
        try:
            data = request.to_frame(self.wire).to_bytes()
        except FrameTooLong as exc:
            raise MessageTooLong(request, exc.size, exc.limit, extended=exc.extended) from None
        if _LOGGER.isEnabledFor(logging.DEBUG):
            _LOGGER.debug("%s → %s %s", self.description, request.name, data.hex(" "))
        return data

    async def _consume_status(
        self, request: Request, trailing: asyncio.Future[PspMessage], timeout_s: float
    ) -> None:
        """After a rejected start: wait for the reply to the Get Status written behind it (the
        reader registered ``trailing`` as the pending reply when it took the Not OK; lock held)."""
        try:
            async with asyncio.timeout(timeout_s):
                await trailing
        except TimeoutError:
            self.stats.timeouts += 1
            _LOGGER.info("%s: no status reply after %s was rejected", self.description, request.name)
        except UndecodableReply as exc:  # the rejection is what the caller needs to hear about
            _LOGGER.info("%s: status reply after %s was rejected: %s", self.description, request.name, exc)

    def _after_reply(self, request: Request, reply: PspMessage) -> None:
        if isinstance(reply, ProtocolEcho):
            self.accepted_options = reply.options
            # §2.2 / §5.3: the echo decides, whatever was asked: extended only when it grants 0x04
            # (the echo itself is in the default format; the next frames use the granted one).
            # A refused Protocol (Not OK) changes nothing: after Synchronize that is the default.
            extended = ProtocolOption.EXTENDED_BLOCK in reply.options
            self.wire = replace(self.wire, extended=extended)
            if extended:
                self._decoder.allow_extended = True
        elif isinstance(request, Reset | Synchronize) and not (isinstance(reply, Result) and not reply.ok):
            # §2.2 [I]: Reset and Synchronize are a "protocol reset": the default block format and
            # no options until the next Protocol echo
            self.wire = replace(self.wire, extended=False)
            self.accepted_options = None

    # -- events --------------------------------------------------------------------------------

    async def next_event(self) -> PspMessage | None:
        """The next unsolicited message, or ``None`` once the link is closed."""
        if self.closed and self._events.empty():
            return None
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)  # keep the end marker for other readers
        return item

    async def events(self) -> AsyncIterator[PspMessage]:
        """``async for message in link.events()``: unsolicited messages until the link closes."""
        while (item := await self.next_event()) is not None:
            yield item

    def _emit(self, message: PspMessage | None) -> None:
        if self._on_event is not None:
            try:
                self._on_event(message)
            except Exception:  # a consumer bug must not kill the reader
                _LOGGER.exception("%s: event callback failed", self.description)
            return
        if self._events.full():
            try:
                dropped = self._events.get_nowait()
            except asyncio.QueueEmpty:  # pragma: no cover
                dropped = None
            self.stats.events_dropped += 1
            _LOGGER.warning("%s: event queue full, dropped %s", self.description, _name(dropped))
        self._events.put_nowait(message)

    # -- reader --------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        inter_byte_s = self.profile.timeouts.inter_byte_s
        try:
            while True:
                if self._decoder.buffered:
                    try:
                        async with asyncio.timeout(inter_byte_s):
                            data = await self._transport.read()
                    except TimeoutError:
                        # §2.5 step 4: silence mid-frame; abandon the partial frame
                        self.stats.partial_frames_discarded += 1
                        frames: list[Frame] = []
                        while self._decoder.buffered:
                            frames.extend(self._decoder.discard_partial())
                        _LOGGER.debug(
                            "%s: partial frame discarded after %.3f s", self.description, inter_byte_s
                        )
                        self._handle_frames(frames)
                        continue
                else:
                    data = await self._transport.read()
                if not data:
                    self._mark_closed("closed by peer")
                    return
                self._handle_frames(self._decoder.feed(data))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave a request hanging
            _LOGGER.exception("%s: reader failed", self.description)
            self._mark_closed(f"reader failed: {exc!r}")

    def _handle_frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.last_rx = time.monotonic()
            pending = self._pending
            try:
                wire = (
                    self.wire
                    if frame.extended == self.wire.extended
                    else replace(self.wire, extended=frame.extended)
                )
                # a start pair: no context, so 0x01 reads as Not OK and a one-hot state as status
                expecting = None if pending is None or pending.start_pair else pending.request
                message = decode_response(frame, wire, expecting=expecting)
            except MessageError as exc:
                self.stats.decode_errors += 1
                if _LOGGER.isEnabledFor(logging.DEBUG):
                    _LOGGER.debug("%s: frame %s", self.description, frame.to_bytes().hex(" "))
                if (
                    pending is not None
                    and not pending.future.done()
                    and frame.header in reply_headers(pending.request)
                ):
                    # a possible reply that does not decode: fail the request now, not after §9.1
                    _LOGGER.warning(
                        "%s: undecodable reply 0x%02X to %s: %s",
                        self.description,
                        frame.header,
                        pending.request.name,
                        exc,
                    )
                    pending.future.set_exception(UndecodableReply(pending.request, frame.header, str(exc)))
                else:
                    _LOGGER.warning("%s: undecodable frame 0x%02X: %s", self.description, frame.header, exc)
                continue
            if _LOGGER.isEnabledFor(logging.DEBUG):
                _LOGGER.debug("%s ← %s %s", self.description, _name(message), frame.to_bytes().hex(" "))
            if (
                pending is not None
                and not pending.future.done()
                and (
                    _is_start_pair_reply(message)
                    if pending.start_pair
                    else is_reply(pending.request, message)
                )
            ):
                pending.future.set_result(message)
                if pending.trailing is not None and isinstance(message, Result):
                    # a rejected start: the reply to its Get Status is next (same read or later)
                    self._pending = _Pending(GetStatus(), pending.trailing)
                continue
            if type(message) not in _ALWAYS_EVENTS and not isinstance(
                message, SessionCancelled | SessionDeclined
            ):
                self.stats.unexpected += 1
                _LOGGER.info(
                    "%s: unexpected %s (outstanding: %s)",
                    self.description,
                    _name(message),
                    _name(pending and pending.request),
                )
            self.stats.events += 1
            self._emit(message)

    def _mark_closed(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._close_reason = reason
        self._closed.set()
        _LOGGER.info("%s: link closed: %s", self.description, reason)
        pending = self._pending
        if pending is not None and not pending.future.done():
            pending.future.set_exception(LinkLost(self.description, reason))
        self._emit(None)


def _name(message: object) -> str:
    if message is None:
        return "nothing"
    if isinstance(message, UnknownMessage):
        return f"UnknownMessage(0x{message.raw_header:02X})"
    return type(message).__name__
