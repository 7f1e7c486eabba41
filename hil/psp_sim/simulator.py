"""A PSP terminal simulator: a real peer built on the driver's codec (DESIGN.md §6, psp-reference §12).

All protocol logic is synchronous and runs on the event loop thread: request handlers, card taps,
button presses and timers (``loop.call_later`` handles, monotonic loop time). The only tasks are
one per link (a ``TaskGroup`` of a reader and a writer) and, for the TCP control channel, one per
control client. :meth:`Simulator.close` cancels and awaits all of them and cancels every timer.

Replies and events are encoded when they are queued (so a Protocol echo still goes out in the
old block format, §2.2) and written by the link's writer, which applies :class:`Faults`.

Choices for the [GAP]s of the reference, all documented here and in ``SimConfig``:

* a TCP (or ``serve_transport``) link that ends puts PSP into OFFLINE (§1.3 says so for the idle
  close; for a host-side close it is assumed). A pty link never ends; ``close_connection`` on it only
  drops PSP to OFFLINE and discards partial input;
* Synchronize, Reset and reboot reset the protocol options to "none" and the block format to the
  default (§2.2 "protocol reset"); the host re-sends Protocol after each Synchronize;
* Protocol options the terminal does not support are masked in the echo, never refused (§5.3
  [GAP]): ``SimConfig.grant_options`` says which are supported (default: all five on Apollo; a
  P6X never grants the Apollo-only ones). Without 0x04 granted the simulator keeps speaking the
  normal block format (an extended frame from the host is still read);
* Result OK is always one byte; Not OK carries a reason byte only with detailed codes (§5.1),
  except Not Ready (0x11) during boot, which always carries it (§10.8);
* Cancel with nothing to cancel → Not OK / 0x0A "No Transaction Running"; Commit above the
  authorised amount → Not OK / 0x01; Commit/Void/Update of an unknown or closed session → 0x0C;
* Auth after an RFID read → Not OK / 0x06 "Unknown Card" (Apollo), Session Declined (P6X);
  Auth after Read Card (no amount) → Not OK / 0x0A; Prop Card Exchange → Not OK / 0x0D (the Prop
  Card Response layout is a [GAP]);
* an RFID tap on a P6X answers Card Read with the UID (ASCII hex) in DFF006 (§7.6 is a [GAP]);
  on Apollo it answers Prop Card Read with the UID in ``Quirks.rfid_uid_tag``;
* Update Session Result's "updated amount" is the absolute change (the field is unsigned, §5.20);
* a card tapped outside WAIT_CARD stays on the reader and is read by the next Start Session/Read Card;
* headers the codec does not model (Select Language, Get Receipt, Remove Sessions, …) → Not OK/0x02.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Self

from drivers.errors import TransportError
from drivers.psp.codec import PREAMBLE_HOST, Frame, FrameDecoder
from drivers.psp.messages import (
    DEFAULT_DOL_TAGS,
    AddTransactionContext,
    ApolloIds,
    AuthSession,
    CancelSession,
    CardRead,
    CommitSession,
    Control,
    DeclineReason,
    Disable,
    Dol,
    Enable,
    Family,
    GetStatus,
    GetStatusResponse,
    ListSessions,
    ListSessionsResponse,
    MessageError,
    P6xIds,
    PropCardExchange,
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
    Result,
    ResultCode,
    SessionApproved,
    SessionCancelled,
    SessionDeclined,
    SessionPartiallyApproved,
    Setup,
    StartSession,
    Synchronize,
    SynchronizeEcho,
    Tag,
    TimeoutAction,
    TransactionEvent,
    TransactionEventCode,
    UiEvent,
    UiRequest,
    UnknownMessage,
    UpdateResult,
    UpdateSession,
    UpdateSessionResult,
    VoidSession,
    WireFormat,
    decode_request,
    describe,
)
from drivers.transport import FdTransport, StreamTransport, Transport, pty_pair
from hil.psp_sim.cards import Card, Outcome
from hil.psp_sim.config import SimConfig
from hil.psp_sim.faults import Faults
from hil.psp_sim.sessions import SimSession

_LOGGER = logging.getLogger(__name__)

INTER_BYTE_TIMEOUT_S = 0.5  # §2.5 step 4: abandon a partial frame after 500 ms without bytes
LIST_SESSIONS_PAGE = (0xFF - 3) // 4  # §5.8 / §2.3: ids until Length 0xFF is reached → 63 per frame
MAX_LIST_TOTAL = 0xFF  # §5.8: the total is one byte
PROTOCOL_VERSIONS = {Family.P6X: (1, 2, 3), Family.APOLLO: (3,)}  # §5.3 / §8

_ACTIVE_STATES = (PspState.DISABLED, PspState.ENABLED, PspState.WAIT_CARD, PspState.WAIT_AUTH)
# psp-reference §3.2 / §3.3: where each restricted request is allowed (absent = always)
_ALLOWED: dict[type[Request], tuple[PspState, ...]] = {
    Disable: (PspState.DISABLED, PspState.ENABLED),
    Enable: (PspState.DISABLED, PspState.ENABLED),
    Protocol: (PspState.ONLINE,),
    Setup: (PspState.ONLINE,),
    UiRequest: (PspState.ENABLED, PspState.WAIT_CARD, PspState.WAIT_AUTH),
    ListSessions: _ACTIVE_STATES,
    VoidSession: _ACTIVE_STATES,
    CommitSession: _ACTIVE_STATES,
    UpdateSession: _ACTIVE_STATES,
    AddTransactionContext: _ACTIVE_STATES,
    StartSession: (PspState.ENABLED,),
    ReadCard: (PspState.ENABLED,),
    AuthSession: (PspState.WAIT_AUTH,),
    PropCardExchange: (PspState.WAIT_AUTH,),
}
# psp-reference §8: family-specific requests
_FAMILY_ONLY: dict[type[Request], Family] = {
    UiRequest: Family.APOLLO,
    ReadCard: Family.APOLLO,
    UpdateSession: Family.APOLLO,
    AddTransactionContext: Family.APOLLO,
    Control: Family.APOLLO,
    PropCardExchange: Family.APOLLO,  # §5.23 / S15: RFID read/write is Apollo-only
    ListSessions: Family.P6X,
}
_PAYMENT_STATES = (PspState.WAIT_CARD, PspState.WAIT_AUTH)  # §3.3: the UI screen is hidden here
# §6.4: tags available when the card is read, and additionally at Auth
_CARD_STAGE_TAGS = (Tag.CARD_HASH, Tag.MASKED_PAN, Tag.ITEM_REFERENCE)
_AUTH_STAGE_TAGS = (Tag.HOST_TRANSACTION_REFERENCE, Tag.BRAND_NAME, Tag.HOST_RESPONSE_CODE, Tag.ACQUIRER_ID)

LinkKind = Literal["tcp", "pty", "transport"]
# every request the simulator answers; names usable for targeted faults (``only=``)
REQUEST_NAMES: frozenset[str] = frozenset(
    t.__name__
    for t in (
        Synchronize,
        GetStatus,
        Protocol,
        Setup,
        Enable,
        Disable,
        RequestIds,
        StartSession,
        ReadCard,
        AuthSession,
        CancelSession,
        CommitSession,
        VoidSession,
        UpdateSession,
        ListSessions,
        UiRequest,
        AddTransactionContext,
        Control,
        PropCardExchange,
        Reset,
    )
)
_AUTH = AuthSession.__name__  # the Auth Session's answer comes later (timer), named explicitly


class _LinkClosed(Exception):
    """The peer closed the link (or the simulator dropped it)."""


@dataclass(slots=True)
class _Outgoing:
    data: bytes
    label: str
    ends_request: bool
    request: str | None = None  # the request this frame answers (None: an unsolicited frame)


_CLOSE = _Outgoing(b"", "close", False)  # writer sentinel: close the link after what is queued


@dataclass(eq=False, slots=True)
class _Link:
    transport: Transport
    kind: LinkKind
    decoder: FrameDecoder
    idle_close: bool  # §1.3: the 20 s idle close applies (TCP only)
    queue: asyncio.Queue[_Outgoing] = field(default_factory=asyncio.Queue)
    pending: int = 0  # requests received whose reply has not been written yet
    answering: str | None = None  # name of the request being handled (for targeted faults)
    idle_handle: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    closed: bool = False

    @property
    def description(self) -> str:
        return self.transport.description


@dataclass(slots=True)
class _Transaction:
    """A running Start Session / Read Card (WAIT_CARD, then WAIT_AUTH)."""

    amount_minor: int | None  # None: Read Card (no amount, §5.10)
    reference: int
    dol_tags: tuple[int, ...] | None
    card: Card | None = None
    request: StartSession | ReadCard | None = None  # what the payment screen shows (§5.9, §5.10)
    detect_timer: asyncio.TimerHandle | None = None
    decision_timer: asyncio.TimerHandle | None = None
    auth_timer: asyncio.TimerHandle | None = None

    def cancel_timers(self) -> None:
        for handle in (self.detect_timer, self.decision_timer, self.auth_timer):
            if handle is not None:
                handle.cancel()
        self.detect_timer = self.decision_timer = self.auth_timer = None


class Simulator:
    """A Payter P6X / Apollo terminal speaking PSP. See the module docstring and ``SimConfig``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.family = self.config.family_enum
        self.faults = Faults()
        self.faults.not_ready(self.config.boot_not_ready)
        self.sessions: dict[int, SimSession] = {}
        self.received: list[Request | UnknownMessage] = []
        self.sent: list[Response] = []  # every reply/event queued, in order (before faults)
        self.quit_requested = asyncio.Event()
        self._rng = random.Random(self.config.seed)
        self._state = PspState.OFFLINE
        self._options = ProtocolOption.NONE
        self._version = 3  # §5.3: default version
        self._extended = False
        self._session_timeout_s: int | None = None
        self._timeout_action = TimeoutAction.VOID
        self._txn: _Transaction | None = None
        self._card_on_reader: Card | None = None
        self._screen: UiRequest | None = None
        self._links: list[_Link] = []
        self._active: _Link | None = None
        self._servers: list[asyncio.Server] = []
        self._held_fds: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closers: list[Callable[[], object]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._link_ids = itertools.count(1)

    # -- public state ------------------------------------------------------------------------

    @property
    def state(self) -> PspState:
        return self._state

    @property
    def protocol_options(self) -> ProtocolOption:
        return self._options

    @property
    def protocol_version(self) -> int:
        return self._version

    @property
    def extended(self) -> bool:
        return self._extended

    @property
    def detailed(self) -> bool:
        """Detailed result codes and decline reasons are on (Apollo, option 0x08, §5.3)."""
        return ProtocolOption.DETAILED_RESULTS in self._options

    @property
    def transaction_running(self) -> bool:
        return self._state is PspState.WAIT_CARD  # §3.1: normally only true in WAIT_CARD

    @property
    def current_screen(self) -> UiRequest | None:
        """The visible UI screen (Apollo); hidden, but kept, during WAIT_CARD/WAIT_AUTH (§3.3)."""
        return None if self._state in _PAYMENT_STATES else self._screen

    @property
    def payment_screen(self) -> dict[str, object] | None:
        """What the payment flow shows in WAIT_CARD/WAIT_AUTH (Apollo, §3.3): the amount unless
        hidden, the session reference (or the reference string that replaces it), the second
        reference string and the QR code URL of the Start Session / Read Card (§5.9, §5.10)."""
        txn = self._txn
        if self._state not in _PAYMENT_STATES or txn is None or txn.request is None:
            return None
        request = txn.request
        hide = isinstance(request, ReadCard) or bool(request.hide_amount)
        return {
            "amount_minor": None if hide else txn.amount_minor,
            "reference": request.reference_string or str(request.reference),
            "second_reference": request.second_reference_string or None,
            "qr_url": request.qr_url or None,
        }

    @property
    def last_screen(self) -> UiRequest | None:
        """The last UI Request, visible or not."""
        return self._screen

    @property
    def connected(self) -> bool:
        return any(not link.closed for link in self._links)

    @property
    def session_timeout(self) -> tuple[int | None, TimeoutAction]:
        return self._session_timeout_s, self._timeout_action

    def wire(self) -> WireFormat:
        return self.config.wire(extended=self._extended)

    def sessions_json(self) -> list[dict[str, object]]:
        return [s.to_json() for s in self.sessions.values()]

    def status_json(self) -> dict[str, object]:
        return {
            "family": self.family.value,
            "state": self._state.name,
            "transaction_running": self.transaction_running,
            "protocol_version": self._version,
            "protocol_options": int(self._options),
            "extended": self._extended,
            "grant_options": int(self.config.grant_options),
            "detailed": self.detailed,
            "session_timeout_s": self._session_timeout_s,
            "timeout_action": self._timeout_action.name,
            "connected": self.connected,
            "card_on_reader": self._card_on_reader is not None,
            "open_sessions": sum(1 for s in self.sessions.values() if s.is_open),
            "faults": self.faults.to_json(),
        }

    def control(self, line: str) -> str:
        """Run one control-channel command (see ``hil.psp_sim.control``); never raises."""
        from hil.psp_sim.control import handle_command

        return handle_command(self, line)

    # -- serving -----------------------------------------------------------------------------

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 3201) -> int:
        """Listen for PSP over TCP (§1.3, default port 3201); returns the bound port.

        One client at a time: a new client replaces the old one.
        """
        self._bind_loop()
        server = await asyncio.start_server(self._on_tcp_client, host, port)
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        _LOGGER.info("PSP simulator (%s) listening on tcp://%s:%d", self.family.value, host, bound)
        return bound

    async def serve_pty(self) -> str:
        """Serve PSP on a new pseudo-terminal; returns the slave path (open it as ``serial://PATH``)."""
        self._bind_loop()
        master, path = pty_pair()
        # Hold the slave open ourselves: otherwise the master reads EIO whenever no client has it
        # open, and the reader callback would spin. We never read from this descriptor.
        self._held_fds.append(os.open(path, os.O_RDWR | os.O_NOCTTY))
        self._start_link(FdTransport(master, f"pty://{path}"), "pty", idle_close=False)
        _LOGGER.info("PSP simulator (%s) serving pty %s", self.family.value, path)
        return path

    async def serve_transport(self, transport: Transport, *, idle_close: bool = False) -> None:
        """Serve any connected transport (e.g. one end of ``memory_pair``); returns at once.

        ``idle_close``: apply the TCP idle-close rule to this link (§1.3).
        """
        self._bind_loop()
        self._start_link(transport, "transport", idle_close=idle_close)

    async def serve_control(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve the line-based control channel over TCP; returns the bound port."""
        from hil.psp_sim.control import ControlServer

        self._bind_loop()
        server = ControlServer(self)
        bound = await server.start(host, port)
        self._closers.append(server.close)
        return bound

    async def __aenter__(self) -> Self:
        self._bind_loop()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the servers, every link and control task, and cancel every timer."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        for closer in self._closers:
            result = closer()
            if asyncio.iscoroutine(result):
                await result
        tasks = [link.task for link in self._links if link.task is not None]
        tasks.extend(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        for link in self._links:
            self._cancel_idle(link)
        if self._txn is not None:
            self._txn.cancel_timers()
        for session in self.sessions.values():
            session.cancel_expiry()
        for fd in self._held_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held_fds.clear()
        _LOGGER.info("PSP simulator closed")

    # -- test / operator hooks ---------------------------------------------------------------

    def tap(self, card: Card) -> str:
        """Present a card. Read at once in WAIT_CARD ("read"), else kept on the reader ("queued")."""
        _LOGGER.info("card presented: %s", card.masked())
        if self._state is PspState.WAIT_CARD and self._txn is not None and self._txn.card is None:
            self._read_card(card)
            return "read"
        self._card_on_reader = card
        return "queued"

    def remove_card(self) -> None:
        self._card_on_reader = None

    def press(self, button_id: str) -> None:
        """Press a button / selection item of the visible screen (Apollo) → UI Event (§5.21)."""
        if self.family is not Family.APOLLO:
            raise ValueError("UI is Apollo only (psp-reference §8)")
        screen = self.current_screen
        if screen is None:
            raise ValueError("no screen is visible")
        if button_id not in screen_buttons(screen):
            raise ValueError(f"no button or item {button_id!r} on the current screen")
        self._emit(UiEvent(button_id))

    def close_connection(self) -> None:
        """Drop the current client like the 20 s idle close (TCP, memory); a pty only goes OFFLINE."""
        link = self._active or next((lnk for lnk in reversed(self._links) if not lnk.closed), None)
        if link is None:
            return
        if link.kind == "pty":
            link.decoder = self._new_decoder()
            self._go_offline()
        else:
            self._drop_link(link, "closed by the control channel")

    def reboot(self, keep_sessions: bool | None = None, *, drop_link: bool = True) -> None:
        """Reboot: PSP OFFLINE, extended mode off, Not Ready for ``boot_not_ready`` Synchronizes.

        ``keep_sessions`` defaults to ``SimConfig.keep_sessions_on_reboot`` (§10.9 [GAP]).
        ``drop_link``: a reboot closes TCP/memory links (a pty stays open).
        """
        keep = self.config.keep_sessions_on_reboot if keep_sessions is None else keep_sessions
        _LOGGER.info("reboot (%s sessions)", "keeping" if keep else "losing")
        self._go_offline()
        self._screen = None
        self._session_timeout_s = None
        if not keep:
            for session in self.sessions.values():
                session.cancel_expiry()
            self.sessions.clear()
        self.faults.not_ready(self.config.boot_not_ready)
        if drop_link:
            for link in list(self._links):
                if link.kind != "pty" and not link.closed:
                    self._drop_link(link, "reboot")

    # -- links -------------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        if self._closed:
            raise RuntimeError("simulator is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _new_decoder(self) -> FrameDecoder:
        preambles = None if self.config.accept_any_preamble else frozenset({PREAMBLE_HOST})
        # §2.2: only an Apollo understands the extended block format
        return FrameDecoder(
            preambles=preambles, strict_magic=True, allow_extended=self.family is Family.APOLLO
        )

    def _on_tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._closed:
            writer.close()
            return
        for link in list(self._links):  # §1.3 [GAP]: one client; a new one replaces the old one
            if link.kind == "tcp" and not link.closed:
                self._drop_link(link, "replaced by a new client")
        desc = f"tcp://{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "tcp"
        self._start_link(
            StreamTransport(reader, writer, desc), "tcp", idle_close=self.config.idle_close_enabled
        )

    def _start_link(self, transport: Transport, kind: LinkKind, *, idle_close: bool) -> _Link:
        link = _Link(transport, kind, self._new_decoder(), idle_close)
        self._links = [lnk for lnk in self._links if not lnk.closed]
        self._links.append(link)
        self._active = link
        name = f"psp-sim-link-{next(self._link_ids)} {transport.description}"
        link.task = asyncio.create_task(self._run_link(link), name=name)
        _LOGGER.info("client connected: %s", transport.description)
        self._update_idle(link)
        return link

    async def _run_link(self, link: _Link) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._reader(link), name=f"psp-sim-read {link.description}")
                group.create_task(self._writer(link), name=f"psp-sim-write {link.description}")
        except* (_LinkClosed, TransportError) as caught:
            _LOGGER.info("link %s ended: %s", link.description, caught.exceptions[0])
        finally:
            self._link_lost(link)
            with contextlib.suppress(Exception):
                await link.transport.close()

    async def _reader(self, link: _Link) -> None:
        while True:
            if link.decoder.buffered:
                try:
                    async with asyncio.timeout(INTER_BYTE_TIMEOUT_S):
                        data = await link.transport.read()
                except TimeoutError:
                    recovered = link.decoder.discard_partial()
                    frames = recovered if isinstance(recovered, list) else link.decoder.feed(b"")
                    for frame in frames:
                        self._on_frame(link, frame)
                    continue
            else:
                data = await link.transport.read()
            if not data:
                raise _LinkClosed("closed by the peer")
            before = link.decoder.stats.checksum_errors
            frames = link.decoder.feed(data)
            if link.decoder.stats.checksum_errors > before:
                self._on_bad_checksum(link)
            for frame in frames:
                self._on_frame(link, frame)

    async def _writer(self, link: _Link) -> None:
        faults = self.faults
        while True:
            item = await link.queue.get()
            if item is _CLOSE:
                raise _LinkClosed("closed by the simulator")
            if faults.drop_applies(item.request):
                _LOGGER.info("fault: dropping %s", item.label)
                self._end_request(link, item)
                continue
            if faults.delay_applies(item.request):
                _LOGGER.info(
                    "fault: holding %s (reply to %s) for %.3f s", item.label, item.request, faults.delay_s
                )
                await asyncio.sleep(faults.delay_s)
            data = item.data
            if faults.corrupt_applies(item.request):
                _LOGGER.info("fault: corrupting the checksum of %s", item.label)
                data = data[:-1] + bytes((data[-1] ^ 0xFF,))
            split, faults.split_remaining = Faults.take(faults.split_remaining)
            if split and len(data) > faults.split_chunk:
                chunk = faults.split_chunk
                _LOGGER.info("fault: splitting %s into %d-byte chunks", item.label, chunk)
                for i in range(0, len(data), chunk):
                    if i:
                        await asyncio.sleep(self.config.split_pause_s)
                    await link.transport.write(data[i : i + chunk])
            else:
                await link.transport.write(data)
            self._end_request(link, item)

    def _drop_link(self, link: _Link, why: str) -> None:
        _LOGGER.info("dropping link %s: %s", link.description, why)
        self._link_lost(link)
        if link.task is not None and not link.task.done():
            link.task.cancel()

    def _link_lost(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        self._cancel_idle(link)
        if self._active is link:
            self._active = None
        if link.kind != "pty" and not self._closed:
            self._go_offline()  # §1.3: the idle close (and, assumed, any close) → OFFLINE

    # -- idle close (§1.3, §9.2) -------------------------------------------------------------

    def _busy(self, link: _Link) -> bool:
        """Between a request and its response; WAIT_CARD counts unless card-detect > 5 min (§1.3)."""
        waiting_card = self._state is PspState.WAIT_CARD and not self.config.wait_card_is_idle
        return link.pending > 0 or (waiting_card and self._active is link)

    def _update_idle(self, link: _Link | None) -> None:
        if link is None or not link.idle_close or link.closed or self._closed:
            return
        if self._busy(link):
            self._cancel_idle(link)
        elif link.idle_handle is None and self.config.idle_close_s:
            link.idle_handle = self.loop.call_later(self.config.idle_close_s, self._idle_expired, link)

    def _cancel_idle(self, link: _Link) -> None:
        if link.idle_handle is not None:
            link.idle_handle.cancel()
            link.idle_handle = None

    def _idle_expired(self, link: _Link) -> None:
        link.idle_handle = None
        _LOGGER.info("idle for %.3f s: closing %s (§1.3)", self.config.idle_close_s or 0.0, link.description)
        self._drop_link(link, "idle timeout")

    # -- sending -----------------------------------------------------------------------------

    def _enqueue(
        self, link: _Link | None, message: Response, *, ends_request: bool, request: str | None = None
    ) -> None:
        self.sent.append(message)
        if link is None or link.closed:
            _LOGGER.info("no client: %s not sent", message.name)
            return
        data = message.to_bytes(self.wire())
        if _LOGGER.isEnabledFor(logging.INFO):
            _LOGGER.info("tx %s %s", message.name, json.dumps(describe(message), default=str))
        link.queue.put_nowait(_Outgoing(data, message.name, ends_request, request))

    def _reply(self, link: _Link, message: Response, *, request: str | None = None) -> None:
        """The answer to the request being handled (``request``: name it when answering later)."""
        self._enqueue(link, message, ends_request=True, request=request or link.answering)

    def _emit(self, message: Response) -> None:
        """An unsolicited frame (Card Read, events) to the current client."""
        self._enqueue(self._active, message, ends_request=False)

    def _no_reply(self, link: _Link) -> None:
        """The request has no immediate answer (Start Session, Read Card, Auth until decided)."""
        link.pending = max(0, link.pending - 1)
        self._update_idle(link)

    def _end_request(self, link: _Link, item: _Outgoing) -> None:
        if item.ends_request:
            link.pending = max(0, link.pending - 1)
        self._update_idle(link)

    def _result(self, link: _Link, ok: bool, reason: ResultCode | None = None) -> None:
        """Result (§5.1): OK is one byte; Not OK adds the reason with detailed codes on."""
        detail = int(reason) if (not ok and reason is not None and self.detailed) else None
        self._reply(link, Result(ok, detail))

    # -- receiving ---------------------------------------------------------------------------

    def _on_bad_checksum(self, link: _Link) -> None:
        self._active = link
        link.answering = None
        if self.faults.silent_bad_checksum:
            _LOGGER.info("bad checksum: staying silent")
            return
        link.pending += 1
        self._update_idle(link)
        self._result(link, False, ResultCode.INCORRECT_CHECKSUM)  # §2.5 / §6.1: 0x04

    def _on_frame(self, link: _Link, frame: Frame) -> None:
        self._active = link
        link.pending += 1
        link.answering = None
        self._update_idle(link)
        try:
            message = decode_request(frame, self.wire())
        except MessageError as exc:
            _LOGGER.info("rx bad message 0x%02X: %s", frame.header, exc)
            self._result(link, False, ResultCode.INCORRECT_MESSAGE)  # §6.1: 0x03
            return
        self.received.append(message)
        link.answering = message.name
        if _LOGGER.isEnabledFor(logging.INFO):
            _LOGGER.info("rx %s %s", message.name, json.dumps(describe(message), default=str))
        if isinstance(message, UnknownMessage):
            self._result(link, False, ResultCode.UNKNOWN_COMMAND)  # §12.3: unknown header → 0x02
            return
        family = _FAMILY_ONLY.get(type(message))
        if family is not None and family is not self.family:
            self._result(link, False, ResultCode.UNKNOWN_COMMAND)  # §12.13 / §8
            return
        allowed = _ALLOWED.get(type(message))
        if allowed is not None and self._state not in allowed:
            self._result(link, False, ResultCode.INCORRECT_PSP_STATE)  # §3.2: 0x05
            return
        handler = self._handlers().get(type(message))
        if handler is None:
            self._result(link, False, ResultCode.UNKNOWN_COMMAND)
            return
        handler(link, message)

    def _handlers(self) -> dict[type[Request], Callable[[_Link, Request], None]]:
        h: dict[type[Request], Callable[[_Link, Request], None]] = {
            Synchronize: self._on_synchronize,
            GetStatus: self._on_get_status,
            Protocol: self._on_protocol,  # type: ignore[dict-item]
            Setup: self._on_setup,  # type: ignore[dict-item]
            Enable: self._on_enable,
            Disable: self._on_disable,
            RequestIds: self._on_request_ids,
            StartSession: self._on_start_session,  # type: ignore[dict-item]
            ReadCard: self._on_read_card,  # type: ignore[dict-item]
            AuthSession: self._on_auth,
            CancelSession: self._on_cancel,
            CommitSession: self._on_commit,  # type: ignore[dict-item]
            VoidSession: self._on_void,  # type: ignore[dict-item]
            UpdateSession: self._on_update,  # type: ignore[dict-item]
            ListSessions: self._on_list_sessions,  # type: ignore[dict-item]
            UiRequest: self._on_ui_request,  # type: ignore[dict-item]
            AddTransactionContext: self._on_add_context,  # type: ignore[dict-item]
            Control: self._on_control,  # type: ignore[dict-item]
            PropCardExchange: self._on_prop_card_exchange,
            Reset: self._on_reset,
        }
        return h

    # -- state helpers -----------------------------------------------------------------------

    def _set_state(self, state: PspState) -> None:
        if state is not self._state:
            _LOGGER.info("PSP state %s → %s", self._state.name, state.name)
            self._state = state
        if state not in _PAYMENT_STATES and self._txn is not None:
            self._txn.cancel_timers()
            self._txn = None
        for link in self._links:
            self._update_idle(link)

    def _reset_protocol(self) -> None:
        """§2.2 "protocol reset": default block format and no options."""
        self._options = ProtocolOption.NONE
        self._version = 3
        self._extended = False

    def _go_offline(self) -> None:
        self._reset_protocol()
        self._set_state(PspState.OFFLINE)

    def _txn_event(self, code: TransactionEventCode) -> None:
        if ProtocolOption.TRANSACTION_EVENTS in self._options:  # §5.19: needs option 0x01
            self._emit(TransactionEvent(code))

    # -- handlers: link setup (§5.2 to §5.7, §5.26, §5.27) -----------------------------------

    def _on_synchronize(self, link: _Link, _msg: Request) -> None:
        if self.faults.not_ready_remaining > 0:
            self.faults.not_ready_remaining -= 1
            # §6.1 / §10.8: Not Ready during boot (always with its reason byte)
            self._reply(link, Result(False, ResultCode.NOT_READY))
            return
        self._reset_protocol()
        self._set_state(PspState.ONLINE)
        self._reply(link, SynchronizeEcho())  # §5.2: echo 0x24

    def _on_get_status(self, link: _Link, _msg: Request) -> None:
        self._reply(link, GetStatusResponse(self._state, self.transaction_running))

    def _on_protocol(self, link: _Link, msg: Protocol) -> None:
        if msg.version not in PROTOCOL_VERSIONS[self.family]:
            self._result(link, False, ResultCode.SERVICE_NOT_SUPPORTED)
            return
        self._version = msg.version
        # §5.3 / §12.5: unknown bits, the ones not in SimConfig.grant_options and, on a P6X, the
        # Apollo-only bits are masked in the echo
        self._options = self.config.granted(msg.options)
        self._reply(link, ProtocolEcho(msg.version, self._options))  # always in the default format
        self._extended = ProtocolOption.EXTENDED_BLOCK in self._options  # takes effect on the next frame

    def _on_setup(self, link: _Link, msg: Setup) -> None:
        self._session_timeout_s = msg.session_timeout_s
        self._timeout_action = msg.timeout_action
        self._set_state(PspState.DISABLED)
        self._result(link, True)

    def _on_enable(self, link: _Link, _msg: Request) -> None:
        self._set_state(PspState.ENABLED)
        self._result(link, True)

    def _on_disable(self, link: _Link, _msg: Request) -> None:
        self._set_state(PspState.DISABLED)
        self._result(link, True)

    def _on_request_ids(self, link: _Link, _msg: Request) -> None:
        cfg = self.config
        if self.family is Family.APOLLO:
            self._reply(
                link, ApolloIds(cfg.serial_number, cfg.model or "APOLLO", cfg.platform, cfg.applications)
            )
        else:
            self._reply(link, P6xIds(serial_number=cfg.serial_number[:14], firmware=cfg.firmware))

    def _on_control(self, link: _Link, msg: Control) -> None:
        if msg.action != 0x00:  # §5.26: 0x00 = reboot, the only action
            self._result(link, False, ResultCode.INCORRECT_MESSAGE)
            return
        self._result(link, True)
        self.reboot(drop_link=False)
        if link.kind != "pty":
            link.queue.put_nowait(_CLOSE)  # close after the Result OK has been written

    def _on_reset(self, link: _Link, _msg: Request) -> None:
        self._go_offline()  # §5.27: Reset → OFFLINE
        self._result(link, True)

    # -- handlers: card flow (§5.9 to §5.15) -------------------------------------------------

    def _on_start_session(self, link: _Link, msg: StartSession) -> None:
        txn = _Transaction(msg.amount_minor, msg.reference, msg.dol_tags or None, request=msg)
        self._begin_transaction(link, txn)

    def _on_read_card(self, link: _Link, msg: ReadCard) -> None:
        self._begin_transaction(link, _Transaction(None, msg.reference, msg.dol_tags or None, request=msg))

    def _begin_transaction(self, link: _Link, txn: _Transaction) -> None:
        self._txn = txn
        self._set_state(PspState.WAIT_CARD)
        self._no_reply(link)  # §5.9: no immediate answer; the Card Read is the reply
        self._txn_event(TransactionEventCode.STARTED)
        timeout = self.config.card_detect_timeout_s
        if timeout is not None:
            txn.detect_timer = self.loop.call_later(timeout, self._card_detect_expired, txn)
        if self._card_on_reader is not None:
            card, self._card_on_reader = self._card_on_reader, None
            self.loop.call_soon(self._read_card_if_waiting, txn, card)

    def _read_card_if_waiting(self, txn: _Transaction, card: Card) -> None:
        if self._txn is txn and self._state is PspState.WAIT_CARD and txn.card is None:
            self._read_card(card)

    def _read_card(self, card: Card) -> None:
        txn = self._txn
        assert txn is not None
        if txn.detect_timer is not None:
            txn.detect_timer.cancel()
            txn.detect_timer = None
        txn.card = card
        self._txn_event(TransactionEventCode.READING_CARD)
        self._txn_event(TransactionEventCode.CARD_READ_COMPLETE)
        self._set_state(PspState.WAIT_AUTH)
        if card.kind == "rfid":
            uid = card.uid.encode("ascii")  # ASCII hex, like the DFF006 card hash (§5.14)
            if self.family is Family.APOLLO:
                self._emit(PropCardRead(Dol(((self.config.rfid_uid_tag, uid),))))  # §5.22
            else:
                self._emit(CardRead(Dol(((Tag.CARD_HASH, uid),))))  # §7.6 [GAP]: P6X guess
        else:
            self._emit(CardRead(self._card_dol(card, txn, None)))  # §5.11
        # §9.2: 30 s for the host to decide, then drop the card and go to ENABLED
        txn.decision_timer = self.loop.call_later(self.config.card_decision_s, self._decision_expired, txn)

    def _card_dol(self, card: Card, txn: _Transaction, host_ref: bytes | None) -> Dol:
        """DOL data (§5.11, §5.14, §6.4): requested tags, else the default set; Auth adds Auth tags."""
        values: dict[int, bytes] = {
            Tag.CARD_HASH: card.card_hash.encode("ascii"),
            Tag.MASKED_PAN: card.masked_pan.encode("utf-8"),
            Tag.ITEM_REFERENCE: txn.reference.to_bytes(4, "big"),
        }
        tags: list[int] = list(txn.dol_tags or DEFAULT_DOL_TAGS)
        if host_ref is not None:
            values[Tag.HOST_TRANSACTION_REFERENCE] = host_ref
            values[Tag.BRAND_NAME] = card.brand.encode("utf-8")
            values[Tag.HOST_RESPONSE_CODE] = b"00"
            values[Tag.ACQUIRER_ID] = b"SIMACQ01"
            if ProtocolOption.AUTH_DOL in self._options:  # §5.3: add every "Auth" tag
                tags.extend(t for t in _AUTH_STAGE_TAGS if t not in tags)
        else:
            tags = [t for t in tags if t in _CARD_STAGE_TAGS]
        return Dol(tuple((t, values[t]) for t in tags if values.get(t)))

    def _card_detect_expired(self, txn: _Transaction) -> None:
        txn.detect_timer = None
        if self._txn is not txn or self._state is not PspState.WAIT_CARD:
            return
        _LOGGER.info("card-detect timeout: ending WAIT_CARD")
        self._set_state(PspState.ENABLED)
        if self.config.card_timeout_message == "session_declined":  # §5.9 [GAP] switch
            reason = DeclineReason.CARD_READ_TIMEOUT if self.detailed else None  # §6.2: 0x02
            self._emit(SessionDeclined(reason))
        else:
            self._emit(SessionCancelled())

    def _decision_expired(self, txn: _Transaction) -> None:
        txn.decision_timer = None
        if self._txn is not txn or self._state is not PspState.WAIT_AUTH or txn.auth_timer is not None:
            return
        _LOGGER.info("no host decision within %.3f s: dropping the card (§9.2)", self.config.card_decision_s)
        self._set_state(PspState.ENABLED)
        if self.config.card_decision_message == "session_cancelled":
            self._emit(SessionCancelled())

    def _on_auth(self, link: _Link, _msg: Request) -> None:
        txn = self._txn
        if txn is None or txn.card is None or txn.auth_timer is not None:
            self._result(link, False, ResultCode.INCORRECT_PSP_STATE)
            return
        if txn.decision_timer is not None:
            txn.decision_timer.cancel()
            txn.decision_timer = None
        card = txn.card
        if card.kind == "rfid":
            self._set_state(PspState.ENABLED)
            if self.family is Family.APOLLO:
                self._result(link, False, ResultCode.UNKNOWN_CARD)  # §6.1: 0x06
            else:
                self._reply(link, SessionDeclined(None))
            return
        if txn.amount_minor is None:  # Read Card has no amount to authorise (§5.10)
            self._set_state(PspState.ENABLED)
            self._result(link, False, ResultCode.NO_TRANSACTION_RUNNING)
            return
        delay = self.config.auth_delay_s + card.behaviour.pin_delay_s
        txn.auth_timer = self.loop.call_later(delay, self._finish_auth, link, txn)

    def _finish_auth(self, link: _Link, txn: _Transaction) -> None:
        txn.auth_timer = None
        if self._txn is not txn or txn.card is None or txn.amount_minor is None:
            self._no_reply(link)
            return
        card, requested = txn.card, txn.amount_minor
        outcome = card.behaviour.outcome
        limit = card.behaviour.approve_up_to_minor
        if outcome.kind == "approve" and limit is not None and requested > limit:
            if card.behaviour.limit_action == "partial" and self.family is Family.APOLLO:
                outcome = Outcome.partial(limit)
            else:
                outcome = Outcome.decline(DeclineReason.INSUFFICIENT_FUNDS)
        self._set_state(PspState.ENABLED)
        if outcome.kind == "decline":
            self._reply(
                link, SessionDeclined(int(outcome.reason) if self.detailed else None), request=_AUTH
            )  # §5.18
        else:
            authorized = requested
            partial = outcome.kind == "partial" and self.family is Family.APOLLO  # §5.15: Apollo only
            if partial and outcome.amount_minor is not None:
                authorized = min(outcome.amount_minor, requested)
            session = self._new_session(card, txn, authorized, requested)
            host_ref = self._rng.getrandbits(48).to_bytes(6, "big")
            dol = self._card_dol(card, txn, host_ref)
            if partial:
                self._reply(
                    link, SessionPartiallyApproved(session.session_id, authorized, dol), request=_AUTH
                )
            else:
                self._reply(link, SessionApproved(session.session_id, dol), request=_AUTH)
        self._txn_event(TransactionEventCode.TRANSACTION_COMPLETE)

    def _on_cancel(self, link: _Link, _msg: Request) -> None:
        txn = self._txn
        if self._state not in _PAYMENT_STATES or txn is None:
            self._result(link, False, ResultCode.NO_TRANSACTION_RUNNING)  # §5.13: nothing to cancel
            return
        if txn.auth_timer is not None:
            self._result(link, False, ResultCode.INCORRECT_PSP_STATE)  # already authorising
            return
        self._set_state(PspState.ENABLED)
        self._reply(link, SessionCancelled())
        self._txn_event(TransactionEventCode.TRANSACTION_COMPLETE)

    def _on_prop_card_exchange(self, link: _Link, _msg: Request) -> None:
        self._result(link, False, ResultCode.SERVICE_NOT_SUPPORTED)  # §5.23: response layout [GAP]

    # -- handlers: sessions (§5.4, §5.8, §5.16, §5.17, §5.20, §5.25) -------------------------

    def _new_session(self, card: Card, txn: _Transaction, authorized: int, requested: int) -> SimSession:
        session_id = 0
        while session_id == 0 or session_id in self.sessions:
            session_id = self._rng.getrandbits(32)  # §12.8: random 32-bit session id
        session = SimSession(
            session_id=session_id,
            authorized_minor=authorized,
            requested_minor=requested,
            reference=txn.reference,
            card=card.masked(),
            behaviour=card.behaviour,
        )
        session.history.append({"event": "approved", "authorized_minor": authorized})
        self.sessions[session_id] = session
        if self._session_timeout_s is not None:  # §5.4: commit or void in full when it runs out
            session.expiry = self.loop.call_later(
                self._session_timeout_s * self.config.session_timeout_scale,
                self._expire_session,
                session,
                self._timeout_action,
            )
        _LOGGER.info("session %d approved for %d (card %s)", session_id, authorized, card.masked())
        return session

    def _expire_session(self, session: SimSession, action: TimeoutAction) -> None:
        session.expiry = None
        if not session.is_open:
            return
        if action is TimeoutAction.COMMIT:
            session.status = "expired_committed"
            session.committed_minor = session.authorized_minor
        else:
            session.status = "expired_voided"
        session.history.append({"event": session.status, "amount_minor": session.committed_minor})
        _LOGGER.info("session %d timed out: %s", session.session_id, session.status)

    def _open_session(self, link: _Link, session_id: int) -> SimSession | None:
        session = self.sessions.get(session_id)
        if session is None or not session.is_open:
            self._result(link, False, ResultCode.SESSION_ID_NOT_FOUND)  # §6.1: 0x0C
            return None
        return session

    def _on_commit(self, link: _Link, msg: CommitSession) -> None:
        session = self._open_session(link, msg.session_id)
        if session is None:
            return
        if msg.amount_minor > session.authorized_minor and not self.config.over_capture:
            session.history.append({"event": "commit_refused", "amount_minor": msg.amount_minor})
            self._result(link, False, ResultCode.NOT_OK)  # §12.9: commit ≤ authorised
            return
        session.cancel_expiry()
        session.status = "committed"
        session.committed_minor = msg.amount_minor
        session.history.append({"event": "committed", "amount_minor": msg.amount_minor})
        self._result(link, True)

    def _on_void(self, link: _Link, msg: VoidSession) -> None:
        session = self._open_session(link, msg.session_id)
        if session is None:
            return
        session.cancel_expiry()
        session.status = "voided"
        session.history.append({"event": "voided"})
        self._result(link, True)

    def _on_update(self, link: _Link, msg: UpdateSession) -> None:
        session = self._open_session(link, msg.session_id)
        if session is None:
            return
        old, new = session.authorized_minor, msg.new_total_minor
        outcome = session.behaviour.update
        if outcome.kind == "decline":
            result, authorized, reason = UpdateResult.DECLINED, old, int(outcome.reason)
        elif outcome.kind == "partial" and outcome.amount_minor is not None:
            result, authorized, reason = UpdateResult.PARTIALLY_APPROVED, min(outcome.amount_minor, new), 0
        else:
            result, authorized, reason = UpdateResult.APPROVED, new, 0
        session.authorized_minor = authorized
        session.history.append(
            {"event": "update", "requested_minor": new, "result": result.name, "authorized_minor": authorized}
        )
        self._reply(
            link, UpdateSessionResult(result, session.session_id, authorized, abs(authorized - old), reason)
        )

    def _on_list_sessions(self, link: _Link, msg: ListSessions) -> None:
        open_ids = [s.session_id for s in self.sessions.values() if s.is_open]
        page = tuple(open_ids[msg.offset : msg.offset + LIST_SESSIONS_PAGE])
        self._reply(link, ListSessionsResponse(min(len(open_ids), MAX_LIST_TOTAL), page))

    def _on_add_context(self, link: _Link, msg: AddTransactionContext) -> None:
        session = self._open_session(link, msg.session_id)
        if session is None:
            return
        session.context.append(msg.data)
        self._result(link, True)

    # -- handlers: UI (§5.21) ----------------------------------------------------------------

    def _on_ui_request(self, link: _Link, msg: UiRequest) -> None:
        self._screen = msg
        self._result(link, True)


def screen_buttons(screen: UiRequest) -> list[str]:
    """Button and selection-item ids of a screen (``buttons.<id>`` / ``items.<id>`` keys, §5.21)."""
    ids: list[str] = []
    for key, _value in screen.properties:
        for prefix in ("buttons.", "items."):
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                if rest and "." not in rest and rest not in ids:
                    ids.append(rest)
    return ids
