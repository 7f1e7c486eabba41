"""The PSP terminal session: keep a terminal set up, alive and observable (DESIGN.md §3.2 item 4).

:class:`TerminalSession` owns the connection to one terminal. ``await session.run()`` (or
``async with session:``) connects, runs the setup sequence of psp-reference §7.1 (Synchronize
until echoed → Protocol → Setup with the **void** timeout action → Enable; TERM-1, TERM-2), keeps
the link alive with Get Status (≤ 15 s, on every transport: TERM-4), and recovers:

- link lost (socket closed after the 20 s idle timeout, read/write failure, failed keep-alive
  probe) → reconnect with capped exponential backoff and jitter, then setup again (§10.2);
- a command timeout → Reset + full setup (§10.1); if the Reset is not answered either, reconnect;
- Result Not OK that may be a wrong state (0x05, or no detailed code) → Get Status and the
  missing transitions (§10.7, ERR-8), then the command is retried once when that is safe;
- Not Ready (0x11) during boot → keep polling Synchronize (§10.8);
- an undecodable reply (:class:`UndecodableReply`) fails its command at once; during setup an
  undecodable Request IDs reply is logged and setup goes on without ids (as for a refused one),
  an undecodable Synchronize echo counts as an unanswered poll.

The block format (§2.2) is the link's: setup asks for the extended format when the profile says so,
and :meth:`TerminalSession.screen_fits` measures a UI Request against the format in force.

Commands wait (bounded) until the link is ready, then go through the :class:`PspLink`. Family
differences come only from the :class:`Profile`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

from drivers.errors import DriverError, NotSupported, TransportError
from drivers.psp.errors import (
    LinkLost,
    PspError,
    PspNotOk,
    PspTimeout,
    SessionNotFound,
    TerminalNotReady,
    UndecodableReply,
)
from drivers.psp.link import PspLink, PspMessage, payload_limit
from drivers.psp.messages import (
    AddTransactionContext,
    ApolloIds,
    AuthSession,
    CancelSession,
    CommitSession,
    Enable,
    Family,
    GetStatus,
    GetStatusResponse,
    ListSessions,
    ListSessionsResponse,
    P6xIds,
    Protocol,
    ProtocolEcho,
    ProtocolOption,
    PspState,
    ReadCard,
    Request,
    RequestIds,
    Reset,
    Response,
    ResultCode,
    SessionApproved,
    SessionCancelled,
    SessionDeclined,
    SessionPartiallyApproved,
    Setup,
    StartSession,
    Synchronize,
    TimeoutAction,
    UiRequest,
    UpdateSession,
    UpdateSessionResult,
    VoidSession,
    WireFormat,
    describe,
)
from drivers.psp.profile import Profile
from drivers.transport import DEFAULT_BAUDRATE, Transport, open_transport

_LOGGER = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT_S = 172_800  # TERM-2 / psp-reference §5.4: 48 h, action void
DEFAULT_READY_TIMEOUT_S = 30.0  # how long a command waits for the link to become ready
EVENT_QUEUE_SIZE = 256
MAX_LIST_OFFSET = 0xFF  # §5.8: the List Sessions offset is one byte
# §3.1: states in which the terminal is set up and enabled (a card read may be running)
OPERATIONAL_STATES = (PspState.ENABLED, PspState.WAIT_CARD, PspState.WAIT_AUTH)
# psp-reference §1.2: the baud rate is configurable on the terminal; after this many unanswered
# Synchronize polls on a serial link, the next rate of ``Quirks.baud_rates`` is tried.
SYNC_POLLS_PER_BAUD_RATE = 3


class NoSyncAtBaudRate(LinkLost):
    """No Synchronize echo at this serial baud rate: reconnect at the next one (§1.2)."""


def serial_url_candidates(url: str, baud_rates: tuple[int, ...]) -> tuple[str, ...]:
    """The URLs to try in turn: a ``serial://`` URL at its own baud rate first, then at each other
    rate of ``baud_rates`` (psp-reference §1.2: try 57600 first, then 115200); other URLs as given."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "serial":
        return (url,)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    first = int(query.get("baudrate", baud_rates[0] if baud_rates else DEFAULT_BAUDRATE))
    rates = [first, *(rate for rate in baud_rates if rate != first)]
    # built by hand: urlunsplit drops the "//" of "serial:///dev/…" when the netloc is empty
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return tuple(f"{base}?{urlencode({**query, 'baudrate': rate})}" for rate in rates)


T = TypeVar("T")

Opener = Callable[[str], Awaitable[Transport]]
AuthOutcome = SessionApproved | SessionPartiallyApproved | SessionDeclined | SessionCancelled


class Watch(Generic[T]):
    """A small watchable value: read ``value``, await changes with :meth:`wait_for`."""

    def __init__(self, value: T) -> None:
        self._value = value
        self._changed = asyncio.Event()

    @property
    def value(self) -> T:
        return self._value

    def set(self, value: T) -> None:
        if value == self._value:
            return
        self._value = value
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[T], bool], timeout_s: float | None = None) -> T:
        """The first value (the current one included) for which ``predicate`` holds.

        Raises :class:`TimeoutError` after ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            while not predicate(self._value):
                await self._changed.wait()
        return self._value

    async def next_change(self) -> T:
        await self._changed.wait()
        return self._value


class LinkStatus(StrEnum):
    DOWN = "down"
    CONNECTING = "connecting"
    SETTING_UP = "setting_up"
    READY = "ready"


@dataclass(frozen=True, slots=True)
class TerminalLinkState:
    """What the session knows about the terminal link (TERM-6: exposed upstream by the agent)."""

    link: LinkStatus = LinkStatus.DOWN
    since: float = field(default_factory=time.monotonic)  # monotonic time ``link`` last changed
    psp_state: PspState | None = None
    transaction_running: bool = False
    ids: Mapping[str, object] | None = None
    protocol: Mapping[str, object] | None = None
    last_error: str | None = None
    setups: int = 0  # completed setup sequences (1 after the first connect)

    @property
    def ready(self) -> bool:
        return self.link is LinkStatus.READY

    def to_json(self) -> dict[str, object]:
        return {
            "link": self.link.value,
            "psp_state": None if self.psp_state is None else self.psp_state.name,
            "transaction_running": self.transaction_running,
            "ids": None if self.ids is None else dict(self.ids),
            "protocol": None if self.protocol is None else dict(self.protocol),
            "last_error": self.last_error,
            "setups": self.setups,
        }


SessionEvent = PspMessage | TerminalLinkState


def _ids_json(ids: Response) -> dict[str, object]:
    if isinstance(ids, P6xIds):
        return ids.to_json()
    return describe(ids)


def _ui_request(screen_type: str, properties: Mapping[str, str] | None) -> UiRequest:
    """The UI Request (§5.21) that :meth:`TerminalSession.show_screen` sends for a screen."""
    return UiRequest(screen_type, tuple((properties or {}).items()))


class TerminalSession:
    """One PSP terminal, kept connected, set up and enabled. See the module docstring."""

    def __init__(
        self,
        url: str,
        profile: Profile,
        *,
        session_timeout_s: int = DEFAULT_SESSION_TIMEOUT_S,
        opener: Opener = open_transport,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self._candidates = serial_url_candidates(url, profile.quirks.baud_rates)
        self.active_url = self._candidates[0]  # the URL of the current (or last) connection attempt
        self.profile = profile
        self.session_timeout_s = session_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._opener = opener
        self._rng = rng or random.Random()
        self.state: Watch[TerminalLinkState] = Watch(TerminalLinkState())
        self._events: asyncio.Queue[SessionEvent | None] = asyncio.Queue(EVENT_QUEUE_SIZE + 1)
        self._link: PspLink | None = None
        self._wake = asyncio.Event()
        self._recover_reason: str | None = None
        self._repair_lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        self.events_dropped = 0
        self.setup_step = "connect"  # the setup step in progress (diagnostics)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep the terminal set up until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._supervise(), name=f"psp-session {self.url}")
        finally:
            self._update(link=LinkStatus.DOWN)
            self._emit(None)

    async def __aenter__(self) -> Self:
        self._runner = asyncio.get_running_loop().create_task(self.run(), name=f"psp-session-run {self.url}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner])

    async def wait_ready(self, timeout_s: float | None = None) -> TerminalLinkState:
        """Wait until the link is set up and enabled; :class:`TerminalNotReady` after the timeout."""
        limit = self.ready_timeout_s if timeout_s is None else timeout_s
        try:
            return await self.state.wait_for(lambda s: s.ready, limit)
        except TimeoutError:
            raise TerminalNotReady(limit, self.state.value.last_error) from None

    @property
    def link(self) -> PspLink | None:
        """The current link (``None`` while disconnected); for diagnostics."""
        return self._link

    @property
    def wire(self) -> WireFormat:
        """The wire format in force: the current link's (extended only when its Protocol echo granted
        option 0x04, §2.2), or the profile's default (normal) format while no link is up."""
        link = self._link
        return link.wire if link is not None and not link.closed else self.profile.wire()

    @property
    def payload_limit(self) -> int:
        """The largest request payload, in bytes, of the block format in force (§2.3, §2.2)."""
        return payload_limit(self.wire)

    def screen_bytes(self, screen_type: str, properties: Mapping[str, str] | None = None) -> int:
        """The encoded payload size of :meth:`show_screen`'s UI Request for this screen (§5.21).

        Raises :class:`ValueError` for a string with a NUL byte (which :meth:`show_screen` refuses too).
        """
        return len(_ui_request(screen_type, properties).payload(self.wire))

    def screen_fits(self, screen_type: str, properties: Mapping[str, str] | None = None) -> bool:
        """Whether :meth:`show_screen` of this screen fits the block format in force right now;
        when it does not, :meth:`show_screen` raises :class:`MessageTooLong`."""
        return self.screen_bytes(screen_type, properties) <= self.payload_limit

    # -- events --------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Unsolicited PSP messages and link state changes, until :meth:`run` ends."""
        while (item := await self.next_event()) is not None:
            yield item

    async def next_event(self) -> SessionEvent | None:
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)
        return item

    def _emit(self, item: SessionEvent | None) -> None:
        if self._events.full():
            self._events.get_nowait()
            self.events_dropped += 1
            _LOGGER.warning("%s: event queue full, oldest event dropped", self.url)
        self._events.put_nowait(item)

    def _on_link_event(self, message: PspMessage | None) -> None:
        if message is None:  # the link closed
            self._wake.set()
            return
        self._emit(message)

    # -- state ---------------------------------------------------------------------------------

    def _update(self, **changes: Any) -> None:
        old = self.state.value
        new = replace(old, **changes)
        if new.link is not old.link:
            new = replace(new, since=time.monotonic())
            _LOGGER.info("%s: link %s → %s", self.url, old.link.value, new.link.value)
        self.state.set(new)
        if new.link is not old.link:
            self._emit(new)

    def _note_status(self, status: GetStatusResponse) -> None:
        self._update(psp_state=status.state, transaction_running=status.transaction_running)

    # -- supervisor ----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        t = self.profile.timeouts
        delay = t.reconnect_min_s
        while True:
            self._update(link=LinkStatus.CONNECTING)
            self.setup_step = "connect"
            setups_before = self.state.value.setups
            try:
                transport = await self._opener(self.active_url)
            except TransportError as exc:
                _LOGGER.warning("%s: connect failed: %s", self.url, exc)
                self._update(link=LinkStatus.DOWN, last_error=str(exc))
            else:
                link = PspLink(transport, self.profile, on_event=self._on_link_event)
                try:
                    async with link:
                        self._link = link
                        await self._maintain(link)
                except NoSyncAtBaudRate as exc:
                    self.active_url = self._next_candidate()
                    _LOGGER.warning("%s; trying %s", exc, self.active_url)
                    self._update(link=LinkStatus.DOWN, last_error=str(exc))
                    continue  # a different baud rate is not a failure to back off from
                except DriverError as exc:
                    _LOGGER.warning("%s: link dropped: %s", self.url, exc)
                    self._update(link=LinkStatus.DOWN, last_error=str(exc))
                finally:
                    self._link = None
                    self._recover_reason = None
                if self.state.value.setups > setups_before:
                    delay = t.reconnect_min_s  # the link worked: start the backoff again
            pause = delay * (0.5 + self._rng.random() / 2)  # jitter, never above the cap
            _LOGGER.debug("%s: reconnecting in %.2f s", self.url, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, t.reconnect_max_s)

    def _next_candidate(self) -> str:
        index = self._candidates.index(self.active_url)
        return self._candidates[(index + 1) % len(self._candidates)]

    async def _maintain(self, link: PspLink) -> None:
        """Set up, then keep alive and recover until the link is lost (raises DriverError)."""
        await self._setup(link, fetch_ids=True)
        keepalive_s = self.profile.timeouts.keepalive_s  # TERM-4 / §1.3: ≤ 15 s
        while True:
            if link.closed:
                raise LinkLost(link.description, link.close_reason)
            if self._recover_reason is not None:
                reason, self._recover_reason = self._recover_reason, None
                await self._reset_and_setup(link, reason)
                continue
            idle_s = time.monotonic() - link.last_activity
            if idle_s >= keepalive_s and not link.busy:
                await self._probe(link)
                continue
            wait_s = keepalive_s - idle_s if idle_s < keepalive_s else keepalive_s
            self._wake.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _probe(self, link: PspLink) -> None:
        """Keep-alive Get Status (§1.3, TERM-4). A timeout is a lost link (style.md §8)."""
        try:
            status = await link.request(GetStatus())
        except PspTimeout as exc:
            raise LinkLost(link.description, f"keep-alive probe failed: {exc}") from exc
        if isinstance(status, GetStatusResponse):
            self._note_status(status)
            if status.state not in OPERATIONAL_STATES:  # e.g. a serial terminal that rebooted (§10.9)
                _LOGGER.warning("%s: terminal is %s; setting it up again", self.url, status.state.name)
                await self._repair(link, status)

    def _request_recovery(self, reason: str) -> None:
        """A command timed out: Reset + full setup (§10.1), run by the maintenance loop."""
        if self._link is not None:
            self._recover_reason = reason
            self._update(link=LinkStatus.SETTING_UP, last_error=reason)
            self._wake.set()

    async def _reset_and_setup(self, link: PspLink, reason: str) -> None:
        _LOGGER.warning("%s: %s; Reset and setup again (psp-reference §10.1)", self.url, reason)
        async with self._repair_lock:
            self._update(link=LinkStatus.SETTING_UP)
            try:
                await link.request(Reset())
            except PspTimeout as exc:
                raise LinkLost(link.description, f"Reset not answered: {exc}") from exc
            except PspNotOk as exc:
                _LOGGER.warning("%s: %s", self.url, exc)
            await self._setup(link)

    # -- setup (§7.1) --------------------------------------------------------------------------

    async def setup(self, link: PspLink) -> TerminalLinkState:
        """Run the setup sequence once on ``link`` (the field tool's probe); see :meth:`run`.

        ``setup_step`` names the step in progress, for error messages when it times out.
        """
        await self._setup(link, fetch_ids=True)
        return self.state.value

    async def _setup(self, link: PspLink, *, fetch_ids: bool = False) -> None:
        self._update(link=LinkStatus.SETTING_UP)
        for attempt in (1, 2):
            self.setup_step = "Synchronize"
            await self._synchronize(link)
            try:
                await self._configure(link)
                break
            except PspNotOk as exc:
                if attempt == 2:
                    raise
                _LOGGER.warning("%s: setup failed (%s); Reset and again", self.url, exc)
                try:
                    await link.request(Reset())
                except PspNotOk:
                    pass
        if fetch_ids or self.state.value.ids is None:
            self.setup_step = "Request IDs"
            try:
                ids = await link.request(RequestIds())
                self._update(ids=self._ids(ids) if isinstance(ids, Response) else None)
            except PspNotOk as exc:
                _LOGGER.info("%s: Request IDs refused: %s", self.url, exc)
            except UndecodableReply as exc:  # identification is diagnostics: never worth a failed setup
                _LOGGER.warning("%s: %s; continuing without terminal ids", self.url, exc)
        self.setup_step = "Get Status"
        status = await link.request(GetStatus())
        if isinstance(status, GetStatusResponse):
            self._note_status(status)
        self.setup_step = "done"
        self._update(link=LinkStatus.READY, setups=self.state.value.setups + 1, last_error=None)

    async def _synchronize(self, link: PspLink) -> None:
        """§5.2: poll Synchronize until echoed; Not OK/0x11 Not Ready during boot (§10.8).

        An undecodable echo counts as no echo (it may be noise at the wrong baud rate, §1.2)."""
        retry_s = self.profile.timeouts.sync_retry_s
        unanswered = 0
        while True:
            try:
                await link.request(Synchronize())
                return
            except (PspTimeout, UndecodableReply) as exc:
                unanswered += 1
                _LOGGER.debug("%s: %s; Synchronize again", self.url, exc)
                if len(self._candidates) > 1 and unanswered >= SYNC_POLLS_PER_BAUD_RATE:
                    raise NoSyncAtBaudRate(
                        link.description, f"no Synchronize echo after {unanswered} polls"
                    ) from None
            except PspNotOk as exc:
                _LOGGER.info("%s: %s; polling again", self.url, exc)
            self._wake.clear()
            try:  # sleep, but wake up at once when the link closes
                async with asyncio.timeout(retry_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if link.closed:
                raise LinkLost(link.description, link.close_reason)

    async def _configure(self, link: PspLink) -> None:
        """ONLINE → Protocol → Setup (void, TERM-2) → Enable (§7.1)."""
        p = self.profile
        options = p.requested_options()  # with the extended block format 0x04 on Apollo (§2.2)
        self.setup_step = "Protocol"
        try:
            echo = await link.request(Protocol(p.protocol_version, options))
        except PspNotOk as exc:  # §15: whether Protocol rejects unsupported options is a [GAP]
            _LOGGER.warning("%s: %s; continuing with the defaults (v3, no options)", self.url, exc)
            echo = None
        accepted = echo.options if isinstance(echo, ProtocolEcho) else ProtocolOption.NONE
        if ProtocolOption.EXTENDED_BLOCK in options and not link.wire.extended:
            # §5.3 [GAP]: a terminal may mask an option it does not support; the link follows the echo
            _LOGGER.info(
                "%s: extended block format not granted (echo 0x%02X); normal format, %d-byte payloads",
                self.url,
                int(accepted),
                link.payload_limit,
            )
        self._update(
            protocol={
                "version": echo.version if isinstance(echo, ProtocolEcho) else 3,
                "requested_options": int(options),
                "accepted_options": int(accepted),
                "extended": link.wire.extended,
            }
        )
        # §5.4 / TERM-2: a long session timeout with action VOID is the safety net
        self.setup_step = "Setup"
        await link.request(Setup(self.session_timeout_s, TimeoutAction.VOID))
        self.setup_step = "Enable"
        await link.request(Enable())  # §5.5

    async def _repair(self, link: PspLink, status: GetStatusResponse) -> None:
        """§10.7: the missing transitions from ``status`` to ENABLED."""
        async with self._repair_lock:
            fresh = await link.request(GetStatus())  # another task may have repaired it meanwhile
            if isinstance(fresh, GetStatusResponse):
                status = fresh
                self._note_status(status)
            if status.state in OPERATIONAL_STATES:
                return
            self._update(link=LinkStatus.SETTING_UP)
            if status.state is PspState.DISABLED:
                await link.request(Enable())
                after = await link.request(GetStatus())
                if isinstance(after, GetStatusResponse):
                    self._note_status(after)
                self._update(link=LinkStatus.READY)
            else:  # OFFLINE / ONLINE: Synchronize → Protocol → Setup → Enable
                await self._setup(link)

    # -- commands ------------------------------------------------------------------------------

    async def _ready_link(self) -> PspLink:
        await self.wait_ready()
        link = self._link
        if link is None or link.closed:
            raise TerminalNotReady(0.0, self.state.value.last_error or "link lost")
        return link

    async def _command(self, request: Request, *, retry_on_wrong_state: bool = False) -> PspMessage:
        link = await self._ready_link()
        try:
            return await self._send(link, request)
        except PspNotOk as exc:
            if not await self._wrong_state_repaired(link, exc) or not retry_on_wrong_state:
                raise
        _LOGGER.info("%s: %s sent again after recovery (§10.7)", self.url, request.name)
        return await self._send(await self._ready_link(), request)

    async def _send(self, link: PspLink, request: Request) -> PspMessage:
        try:
            reply = await link.request(request)
        except PspTimeout as exc:
            self._request_recovery(str(exc))
            raise
        if isinstance(reply, GetStatusResponse):
            self._note_status(reply)
        return reply

    async def _wrong_state_repaired(self, link: PspLink, exc: PspNotOk) -> bool:
        """§10.7 / ERR-8: after a Not OK that may mean "wrong state", check and repair the state."""
        if exc.reason not in (None, ResultCode.NOT_OK, ResultCode.INCORRECT_PSP_STATE):
            return False
        try:
            status = await self._send(link, GetStatus())
        except PspError as probe_exc:
            _LOGGER.warning("%s: Get Status after %s failed: %s", self.url, exc, probe_exc)
            return False
        if not isinstance(status, GetStatusResponse) or status.state in OPERATIONAL_STATES:
            return False
        _LOGGER.warning("%s: %s while the terminal is %s; recovering", self.url, exc, status.state.name)
        try:
            await self._repair(link, status)
        except PspTimeout as timeout:
            self._request_recovery(str(timeout))
            return False
        return True

    async def get_status(self) -> GetStatusResponse:
        reply = await self._command(GetStatus())
        assert isinstance(reply, GetStatusResponse)
        return reply

    async def request_ids(self) -> ApolloIds | P6xIds:
        """Request IDs (§5.7), in either layout; :class:`UndecodableReply` when neither fits."""
        reply = await self._command(RequestIds())
        assert isinstance(reply, ApolloIds | P6xIds)
        self._update(ids=self._ids(reply))
        return reply

    def _ids(self, ids: Response) -> dict[str, object]:
        layout = Family.P6X if isinstance(ids, P6xIds) else Family.APOLLO
        if layout is not self.profile.family:
            _LOGGER.info(
                "%s: Request IDs answered in the %s layout, the profile is %s (§5.7)",
                self.url,
                layout.value,
                self.profile.family.value,
            )
        return _ids_json(ids)

    async def start_card_read(self, amount_minor: int, reference: int, **fields: Any) -> GetStatusResponse:
        """Start Session (§5.9): returns the confirming status (WAIT_CARD); the card comes as an event."""
        reply = await self._command(
            StartSession(amount_minor, reference, **fields), retry_on_wrong_state=True
        )
        assert isinstance(reply, GetStatusResponse)
        return reply

    async def read_card(self, reference: int, **fields: Any) -> GetStatusResponse:
        """Read Card (§5.10, Apollo): a card read without an amount."""
        self._require(self.profile.read_card, "Read Card")
        reply = await self._command(ReadCard(reference, **fields), retry_on_wrong_state=True)
        assert isinstance(reply, GetStatusResponse)
        return reply

    async def authorize(self) -> AuthOutcome:
        """Auth Session (§5.12) for the card just read."""
        reply = await self._command(AuthSession())
        assert isinstance(
            reply, SessionApproved | SessionPartiallyApproved | SessionDeclined | SessionCancelled
        )
        return reply

    async def cancel_read(self) -> bool:
        """Cancel Session (§5.13): ``True`` if cancelled, ``False`` when nothing could be cancelled."""
        try:
            await self._command(CancelSession())
        except PspNotOk as exc:
            _LOGGER.info("%s: nothing to cancel: %s", self.url, exc)
            return False
        return True

    async def commit(self, session_id: int, amount_minor: int) -> None:
        """Commit Session (§5.17); :class:`SessionNotFound` on Not OK 0x0C (§10.3)."""
        await self._dispose(CommitSession(session_id, amount_minor), session_id)

    async def void(self, session_id: int) -> None:
        """Void Session (§5.16); :class:`SessionNotFound` on Not OK 0x0C (§10.3)."""
        await self._dispose(VoidSession(session_id), session_id)

    async def _dispose(self, request: Request, session_id: int) -> None:
        try:
            await self._command(request, retry_on_wrong_state=True)
        except PspNotOk as exc:
            if exc.reason is ResultCode.SESSION_ID_NOT_FOUND:
                raise SessionNotFound(exc.request, exc.result, session_id) from exc
            # §10.3: without detailed codes (P6X) ask List Sessions whether it is still open
            if exc.reason is None and self.profile.list_sessions:
                if session_id not in await self.list_sessions():
                    raise SessionNotFound(exc.request, exc.result, session_id) from exc
                raise
            if exc.reason is None:
                # §10.3 [I]: an Apollo that did not grant detailed result codes (Protocol option
                # 0x08) answers a Commit/Void of a session it no longer holds (disposed before,
                # e.g. when the reply was lost with the host, or voided by the Setup timeout) with
                # a bare Not OK, and cannot list sessions. The state was checked above (a wrong
                # state is repaired and the command sent again), and the host never commits above
                # the authorization (AMT-4): a bare Not OK is the session being gone. Counted as
                # disposed; the journal keeps outcome not_found, which reconciliation reports.
                _LOGGER.warning(
                    "%s: %s refused without a result code; counted as disposed (psp-reference §10.3)",
                    self.url,
                    request.name,
                )
                raise SessionNotFound(exc.request, exc.result, session_id) from exc
            raise

    async def update_authorization(self, session_id: int, new_total_minor: int) -> UpdateSessionResult:
        """Update Session (§5.20, Apollo): the new total, not a delta."""
        self._require(self.profile.update_session, "Update Session")
        reply = await self._command(UpdateSession(session_id, new_total_minor))
        assert isinstance(reply, UpdateSessionResult)
        return reply

    async def show_screen(self, screen_type: str, properties: Mapping[str, str] | None = None) -> None:
        """UI Request (§5.21, Apollo); button presses come as UI Event events.

        :class:`MessageTooLong` when the screen does not fit the block format in force (check with
        :meth:`screen_fits` first); nothing is sent then and the link stays up."""
        self._require(self.profile.ui, "UI Request")
        await self._command(_ui_request(screen_type, properties), retry_on_wrong_state=True)

    async def add_transaction_context(self, session_id: int, data: str) -> None:
        """Add Transaction Context (§5.25, Apollo), e.g. CDR data."""
        self._require(self.profile.add_transaction_context, "Add Transaction Context")
        await self._command(AddTransactionContext(session_id, data))

    async def list_sessions(self) -> tuple[int, ...]:
        """List Sessions (§5.8, P6X): every open session id, following the offset until all are read."""
        self._require(self.profile.list_sessions, "List Sessions")
        ids: list[int] = []
        while True:
            reply = await self._command(ListSessions(len(ids)))
            assert isinstance(reply, ListSessionsResponse)
            ids.extend(reply.session_ids)
            if not reply.session_ids or len(ids) >= reply.total or len(ids) > MAX_LIST_OFFSET:
                return tuple(ids)

    def _require(self, capable: bool, operation: str) -> None:
        if not capable:
            raise NotSupported(operation, self.profile.family.value)
