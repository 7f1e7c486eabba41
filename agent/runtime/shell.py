"""The daemon's runtime: the imperative shell around the pure ``Station`` (DESIGN.md §2).

One asyncio process. :meth:`Runtime.run` owns every long-lived task in one ``TaskGroup``; each is
named and supervised (a task that crashes is logged and restarted with capped backoff; the daemon
does not die with it). The tasks:

``dispatcher``
    Pops events from the one inbound queue, steps the ``Station`` (pure, synchronous) and executes
    the resulting effects **in list order**: a ``JournalRecord`` is written and fsynced inline
    (:class:`agent.store.journal.Journal`, a few ms) before the next effect is even routed — the
    write-ahead rule; timers, log lines and upstream events are handled inline; every I/O effect is
    put on the queue of the actor that owns it.
``connector-N`` (one actor per connector)
    Executes that connector's I/O effects strictly in order: ``Authorize``/``Commit``/``Void``/
    ``UpdateAuthorization`` on the shared terminal (the PSP link serialises requests: one
    outstanding), ``EnableEnergy``/``DisableEnergy`` on the charger. Outcomes come back to the
    dispatcher as events (``AuthorizationResult``, ``CommitResult``, …). A slow operation on one
    connector never delays another connector's effects.
``terminal-actor``
    Card reads (``StartCardRead``/``CancelCardRead``) and Apollo screens (``ShowMessage``).
``terminal-link``, ``terminal-events``, ``charger-events``
    The PSP session, and the two driver event pumps that translate driver events into engine events.
``recovery`` (one-shot)
    ERR-5 restart recovery, see :mod:`agent.runtime.recovery`.

Card data: events carry the card hash / UID as the engine's ``CardToken``; log lines only ever
show the masked PAN and :func:`drivers.terminal.mask_token` of a token.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from agent import crashpoints
from agent.logs import kv
from agent.runtime import screens
from agent.runtime.recovery import (
    ChargerFacts,
    reconcile_terminal_sessions,
    restore_events,
    settle_unapproved,
)
from agent.runtime.timers import TimerKey, Timers
from agent.store.journal import Journal, JournalError
from agent.upstream.publisher import ConnectorSnapshot, Publisher
from drivers.charger import base as charger
from drivers.errors import DriverError
from drivers.psp.errors import PspNotOk, SessionNotFound, UnexpectedState
from drivers.terminal import (
    Approved,
    CardPresented,
    Declined,
    LinkStateChanged,
    PartiallyApproved,
    ReadCancelled,
    Terminal,
    TransactionProgress,
    mask_token,
)
from drivers.terminal import TerminalState as TerminalLinkState
from drivers.terminal import UiSelection as TerminalUiSelection
from statemachines.config import StationConfig
from statemachines.effects import (
    Alarm,
    Authorize,
    CancelCardRead,
    CancelTimer,
    Commit,
    DisableEnergy,
    Effect,
    EnableEnergy,
    JournalRecord,
    RequestBackendAuthorization,
    ShowMessage,
    StartCardRead,
    StartTimer,
    UpdateAuthorization,
    UpstreamEvent,
    Void,
)
from statemachines.events import (
    AuthorizationOutcome,
    AuthorizationResult,
    BackendAuthorizationResult,
    BackendAuthorizationStatus,
    CardKind,
    CardRead,
    CardReadEnded,
    CardToken,
    ChargerBack,
    ChargerLost,
    ChargerState,
    ChargerStatus,
    CommitResult,
    Event,
    MeterReading,
    Plugged,
    SettlementOutcome,
    TerminalLinkDown,
    TerminalLinkUp,
    TimerFired,
    UiAction,
    UiSelection,
    Unplugged,
    UpdateAuthorizationResult,
    UpdateOutcome,
    VoidResult,
)
from statemachines.pricing import Pricer, Usage
from statemachines.station import Station

_LOGGER = logging.getLogger(__name__)

RESTART_BACKOFF_MIN_S: Final = 0.1
RESTART_BACKOFF_MAX_S: Final = 5.0
READ_RETRY_S: Final = 1.0  # a failed Start Session is reported ended after this pause (no hot loop)
READ_IDLE_WAIT_S: Final = 1.0  # a refused Start Session: wait this long for the terminal to be ENABLED
READ_IDLE_POLL_S: Final = 0.05  # … asking Get Status this often
READ_START_ATTEMPTS: Final = 3  # Start Session attempts (each after the terminal was seen idle)
DISPATCH_STALL_S: Final = 5.0  # health: an event waiting longer than this for the dispatcher
CRASH_LOOP_RESTARTS: Final = 3  # health: this many restarts of one task …
CRASH_LOOP_WINDOW_S: Final = 30.0  # … within this many seconds is a crash-restart loop
ENERGY_RETRIES: Final = 3  # enable/disable attempts before an alarm
DEFAULT_RECOVERY_WAIT_S: Final = 1.0  # wait this long for the charger's plug facts (ERR-5 budget 2 s)
DEFAULT_DRAIN_S: Final = 10.0  # SIGTERM: wait this long for settlements in flight (OPS-1)

MESSAGE_TEXT: Final = screens.MESSAGE_TEXT  # ShowMessage keys → text (agent/runtime/screens.py)


def utcnow() -> datetime:
    return datetime.now(UTC)


def publish_upstream(effect: UpstreamEvent | Alarm) -> None:
    """The upstream seam (DESIGN.md §5.3): for now a structured log line; the outbox comes next."""
    if isinstance(effect, Alarm):
        _LOGGER.warning("alarm %s", kv(name=effect.name, connector=effect.connector_id, **_safe(effect.data)))
    else:
        _LOGGER.info(
            "upstream_event %s", kv(name=effect.name, connector=effect.connector_id, **_safe(effect.data))
        )


def _safe(data: Mapping[str, object]) -> dict[str, object]:
    """Log-safe copy of effect data: tokens (card hash / UID) masked."""
    return {k: mask_token(str(v)) if k in ("token", "id_token") else v for k, v in data.items()}


@dataclass(slots=True)
class RuntimeOptions:
    """Tunables; the defaults are production values, tests shrink them."""

    max_current_a: Mapping[int, int] = field(default_factory=dict)
    ui_screens: bool = False  # Apollo: render ShowMessage as UI Request screens
    connector_labels: Mapping[int, str] = field(default_factory=dict)  # names on the Apollo screens
    list_sessions: bool = False  # P6X: reconcile with List Sessions after a restart
    timer_scale: float = 1.0
    recovery_wait_s: float = DEFAULT_RECOVERY_WAIT_S
    drain_timeout_s: float = DEFAULT_DRAIN_S
    terminal_owned: bool = True  # run the terminal's link task here (False when the caller runs it)


class _Actor:
    """A FIFO of effects executed one at a time by one task."""

    def __init__(
        self, name: str, execute: Callable[[Effect], Awaitable[None]], progress: asyncio.Event
    ) -> None:
        self.name = name
        self._progress = progress
        self.queue: asyncio.Queue[Effect] = asyncio.Queue()
        self._execute = execute
        self.busy = False

    @property
    def idle(self) -> bool:
        return not self.busy and self.queue.empty()

    async def run(self) -> None:
        while True:
            effect = await self.queue.get()
            self.busy = True
            try:
                await self._execute(effect)
            except asyncio.CancelledError:
                raise
            except Exception:
                _LOGGER.exception("%s: effect %s failed", self.name, type(effect).__name__)
            finally:
                self.busy = False
                self.queue.task_done()
                self._progress.set()


class Runtime:
    """Drives a :class:`Station` with a terminal, a charger driver and the journal.

    Pre: ``journal`` is open and owned by the caller (closed by it after :meth:`run` returns).
    """

    def __init__(
        self,
        *,
        station_config: StationConfig,
        pricer: Pricer,
        journal: Journal,
        terminal: Terminal,
        charger_driver: charger.ChargerDriver,
        options: RuntimeOptions | None = None,
        clock: Callable[[], datetime] = utcnow,
        publisher: Publisher | None = None,
        upstream_run: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.options = options or RuntimeOptions()
        self.station = Station(station_config, pricer, terminal_online=False)
        self.journal = journal
        self.terminal = terminal
        self.charger = charger_driver
        self.clock = clock
        self.publisher = publisher  # the upstream seam (agent/upstream/publisher.py); None = log lines only
        self._upstream_run = upstream_run  # the UpstreamClient's run(), a supervised task
        self.connector_ids = tuple(c.connector_id for c in station_config.connectors)
        self.timers = Timers(self._timer_fired, scale=self.options.timer_scale)
        self.inbox: asyncio.Queue[Event | _Internal] = asyncio.Queue()
        self._progress = asyncio.Event()  # set whenever an event or an effect was processed
        self.actors: dict[int | None, _Actor] = {
            cid: _Actor(f"connector-{cid}", self._execute_connector, self._progress)
            for cid in self.connector_ids
        }
        self.actors[None] = _Actor("terminal-actor", self._execute_terminal, self._progress)
        self.facts = ChargerFacts()
        self.restarts: dict[str, int] = {}
        self.ready = asyncio.Event()  # config, journal and tasks are up (not gated on the terminal)
        self.recovered = asyncio.Event()  # ERR-5 restore done; new cards accepted from here on
        self._terminal_ready = False  # as last reported by the driver
        self._terminal_up_fed = False  # what the Station was told
        self._terminal_gate_open = False
        self._buffered: list[Event] = []
        self._stopping = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # health (watchdog): loop-clock times of the dispatcher's progress and of recent crashes
        self._dispatched_at = 0.0  # last item processed
        self._pending_since = 0.0  # the inbox last went from empty to non-empty
        self._crashes: dict[str, deque[float]] = {}
        self._read_outcomes = 0  # card reads that ended (card presented or read cancelled), see _start_read
        # RFID/CUG: awaited by the connector actor (agent/upstream/port.py wire_remote sets the back office's)
        self.backend_authorizer: Callable[[int, CardToken], Awaitable[BackendAuthorizationResult]]
        self.backend_authorizer = self._backend_unavailable
        self.extra_tasks: dict[str, Callable[[], Awaitable[None]]] = {}  # more supervised tasks
        # Apollo screens (agent/runtime/screens.py): the home screen is re-rendered, coalesced, on changes
        self.screens = screens.ScreenSettings.from_station(
            station_config, pricer, self.options.connector_labels
        )
        self._home_sig: tuple[object, ...] | None = None
        self._home_pending = False
        self._hold_until = 0.0  # a message is on screen until then (loop clock)
        self._hold_handle: asyncio.TimerHandle | None = None
        self._final_screens: set[int] = set()  # connectors whose final receipt screen this step queued

    # -- lifecycle -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM: stop taking new sessions, drain settlements, then :meth:`run` returns."""
        if not self._stop.is_set():
            _LOGGER.info("stop requested %s", kv(drain_timeout_s=self.options.drain_timeout_s))
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def health(self, *, stall_s: float = DISPATCH_STALL_S) -> str | None:
        """``None`` while healthy, else why not (the systemd watchdog is withheld, DESIGN.md §5.7).

        Healthy: the dispatcher is idle or processed an event within ``stall_s`` (no event has
        waited longer than that), and no supervised task is in a crash-restart loop
        (``CRASH_LOOP_RESTARTS`` restarts within ``CRASH_LOOP_WINDOW_S``). A blocked event loop
        cannot run the caller at all.
        """
        now = asyncio.get_running_loop().time()
        if not self.inbox.empty():
            waiting = now - max(self._dispatched_at, self._pending_since)
            if waiting > stall_s:
                return f"dispatcher stalled for {waiting:.1f} s with {self.inbox.qsize()} events queued"
        for name, crashes in self._crashes.items():
            recent = sum(1 for at in crashes if now - at <= CRASH_LOOP_WINDOW_S)
            if recent >= CRASH_LOOP_RESTARTS:
                return f"task {name} in a crash-restart loop ({recent} restarts)"
        return None

    async def run(self) -> None:
        """Run until :meth:`request_stop`; then drain (bounded) and return."""
        await self.charger.start()
        try:
            async with asyncio.TaskGroup() as tg:
                spawn = self._spawner(tg)
                if self.options.terminal_owned:
                    spawn("terminal-link", self.terminal.run)
                spawn("dispatcher", self._dispatch_loop)
                spawn("terminal-events", self._pump_terminal)
                spawn("charger-events", self._pump_charger)
                if self._upstream_run is not None:
                    spawn("upstream", self._upstream_run)
                if self.publisher is not None:
                    spawn("upstream-publisher", self.publisher.run)
                    for cid in self.connector_ids:
                        self._publish_connector_state(cid)
                for actor in self.actors.values():
                    spawn(actor.name, actor.run)
                for name, factory in self.extra_tasks.items():  # e.g. "commands" (agent/upstream/port.py)
                    spawn(name, factory)
                self._tasks.append(tg.create_task(self._recovery(), name="recovery"))
                self.ready.set()
                _LOGGER.info("runtime up %s", kv(connectors=",".join(map(str, self.connector_ids))))
                await self._stop.wait()
                await self._drain()
                for task in self._tasks:
                    task.cancel()
        finally:
            self.timers.cancel_all()
            if self._hold_handle is not None:
                self._hold_handle.cancel()
            await self.charger.close()
            _LOGGER.info("runtime stopped")

    def _spawner(self, tg: asyncio.TaskGroup) -> Callable[[str, Callable[[], Awaitable[None]]], None]:
        def spawn(name: str, factory: Callable[[], Awaitable[None]]) -> None:
            self._tasks.append(tg.create_task(self._supervised(name, factory), name=name))

        return spawn

    async def _supervised(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()``; when it crashes or ends early, log and restart it (capped backoff)."""
        backoff = RESTART_BACKOFF_MIN_S
        while True:
            try:
                await factory()
                if self._stop.is_set():
                    return
                _LOGGER.warning("task ended unexpectedly; restarting %s", kv(task=name))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _LOGGER.exception("task crashed; restarting %s", kv(task=name, error=type(exc).__name__))
            self.restarts[name] = self.restarts.get(name, 0) + 1
            crashes = self._crashes.setdefault(name, deque(maxlen=CRASH_LOOP_RESTARTS))
            crashes.append(asyncio.get_running_loop().time())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)

    async def _drain(self) -> None:
        """OPS-1: no new sessions; wait (bounded) until no settlement is in flight."""
        self._stopping = True
        if self.station.arbiter.read_in_progress:
            self.actors[None].queue.put_nowait(CancelCardRead())
        try:
            async with asyncio.timeout(self.options.drain_timeout_s):
                while not self._drained():
                    self._progress.clear()
                    await self._progress.wait()
            _LOGGER.info("drained: no settlement in flight")
        except TimeoutError:
            pending = [
                cid for cid, m in self.station.connectors.items() if m.state in ("stopping", "settling")
            ]
            _LOGGER.warning(
                "drain timed out; the journal keeps the decided disposals %s",
                kv(settling=",".join(map(str, pending)) or None),
            )

    def _drained(self) -> bool:
        if not self.inbox.empty() or any(not a.idle for a in self.actors.values()):
            return False
        # a stop in progress (final meter value awaited) settles next: wait for it too
        return all(m.state not in ("stopping", "settling") for m in self.station.connectors.values())

    # -- inbound ---------------------------------------------------------------------------------

    def post(self, event: Event | _Internal) -> None:
        if self.inbox.empty():
            self._pending_since = asyncio.get_running_loop().time()
        self.inbox.put_nowait(event)

    def _timer_fired(self, key: TimerKey) -> None:
        kind, connector_id = key
        self.post(TimerFired(kind, connector_id, self.clock()))

    async def _dispatch_loop(self) -> None:
        while True:
            item = await self.inbox.get()
            try:
                if isinstance(item, _Internal):
                    item.apply(self)
                elif not self.recovered.is_set() and _is_charger_event(item):
                    self._buffered.append(item)  # fed after the restore (ERR-5), see _RestoreNow
                else:
                    self.step(item)
                self._refresh_home()
            finally:
                self._dispatched_at = asyncio.get_running_loop().time()
                self._progress.set()

    def step(self, event: Event) -> None:
        """Step the engine with ``event`` and execute its effects in order (write-ahead)."""
        before = {cid: machine.state for cid, machine in self.station.connectors.items()}
        self._final_screens.clear()
        effects = self.station.handle(event)
        for cid, machine in self.station.connectors.items():
            if machine.state != before[cid]:
                _LOGGER.info("connector state %s", kv(connector=cid, old=before[cid], new=machine.state))
                self._publish_connector_state(cid)
        at = getattr(event, "at", None)
        for index, effect in enumerate(effects):
            try:
                self._execute_inline(effect, at)
                if isinstance(effect, JournalRecord) and effect.kind == "meter":
                    self._publish_meter(effect, event)
            except JournalError as exc:
                dropped = [type(e).__name__ for e in effects[index + 1 :]]
                _LOGGER.error(
                    "journal write failed; effects after it are not executed %s",
                    kv(error=str(exc), dropped=",".join(dropped) or None),
                )
                self._upstream(Alarm("journal_trouble", getattr(effect, "connector_id", None), {}))
                return

    def _execute_inline(self, effect: Effect, at: datetime | None) -> None:
        match effect:
            case JournalRecord():
                self.journal.record(effect, at=at, usage=self._usage_for(effect))
            case StartTimer(kind=kind, seconds=seconds, connector_id=cid):
                self.timers.start(kind, cid, seconds)
            case CancelTimer(kind=kind, connector_id=cid):
                self.timers.cancel(kind, cid)
            case UpstreamEvent() | Alarm():
                self._upstream(effect)
            case ShowMessage(connector_id=cid, key=key, data=data):
                _LOGGER.info("message %s", kv(connector=cid, key=key, **_safe(data)))
                if key == "session_ended" and cid in self._final_screens:
                    return  # the final receipt screen (queued by this step's session.ended) says it
                if self.options.ui_screens and not self._stopping:
                    self.actors[None].queue.put_nowait(effect)
            case StartCardRead() | CancelCardRead():
                if isinstance(effect, StartCardRead) and self._stopping:
                    _LOGGER.info("stopping: card read not started")
                    return
                self.actors[None].queue.put_nowait(effect)
            case _:
                self.actors[effect.connector_id].queue.put_nowait(effect)

    # -- upstream (agent/upstream/publisher.py; ERR-6: never raises into the engine's path) ----------------

    def _upstream(self, effect: UpstreamEvent | Alarm) -> None:
        publish_upstream(effect)  # the log line
        if self.publisher is None:
            return
        try:
            if isinstance(effect, Alarm):
                self.publisher.alarm(effect)
            else:
                self.publisher.event(effect)
        except Exception:
            _LOGGER.exception("upstream: %s not published", effect.name)

    def _publish_connector_state(self, cid: int) -> None:
        machine = self.station.connectors.get(cid)
        if self.publisher is None or machine is None:
            return
        session, payment = machine.session, machine.payment
        try:
            self.publisher.connector_state(
                ConnectorSnapshot(
                    connector_id=cid,
                    state=machine.state,
                    plugged=machine.plugged,
                    available=machine.enabled,
                    session_id=session.ref if session is not None else None,
                    terminal_session_id=payment.session_id if payment is not None else None,
                    method=payment.method.value if payment is not None else None,
                    energy_wh=session.usage.energy_wh if session is not None else 0,
                    power_w=round(session.power_w) if session is not None else 0,
                    cost_minor=machine.running_cost_minor,
                    authorized_minor=machine.authorized_minor,
                )
            )
        except Exception:
            _LOGGER.exception("upstream: connector %s state not published", cid)

    def _publish_meter(self, record: JournalRecord, event: Event) -> None:
        """A journaled meter value of a session → upstream meter message and connector state."""
        if self.publisher is None or not isinstance(event, MeterReading) or record.connector_id is None:
            return
        data = record.data
        try:
            self.publisher.meter(
                record.connector_id,
                str(data.get("session_ref") or ""),
                at=event.at,
                meter_wh=event.energy_wh,
                energy_wh=int(str(data.get("energy_wh") or 0)),
                power_w=event.power_w,
                cost_minor=int(str(data.get("cost_minor") or 0)),
            )
        except Exception:
            _LOGGER.exception("upstream: meter value not published")
        self._publish_connector_state(record.connector_id)

    def _publish_terminal_state(self, state: TerminalLinkState) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.terminal_state(
                state.link,
                ready=state.ready,
                since_monotonic=state.since,
                psp_state=state.psp_state,
                last_error=state.last_error,
            )
        except Exception:
            _LOGGER.exception("upstream: terminal state not published")

    def _usage_for(self, record: JournalRecord) -> Usage | None:
        if record.connector_id is None:
            return None
        machine = self.station.connectors.get(record.connector_id)
        session = machine.session if machine is not None else None
        if session is None or session.ref != record.data.get("session_ref"):
            return None
        return session.usage

    # -- actors ----------------------------------------------------------------------------------

    async def _execute_connector(self, effect: Effect) -> None:
        match effect:
            case Authorize(connector_id=cid):
                self.post(await self._authorize(cid))
            case Commit(connector_id=cid, session_id=sid, amount_minor=amount):
                outcome = await self._dispose(cid, sid, lambda: self.terminal.commit(int(sid), amount))
                self.post(CommitResult(cid, self.clock(), sid, outcome))
            case Void(connector_id=cid, session_id=sid):
                outcome = await self._dispose(cid, sid, lambda: self.terminal.void(int(sid)))
                self.post(VoidResult(cid, self.clock(), sid, outcome))
            case UpdateAuthorization(connector_id=cid, session_id=sid, new_total_minor=total):
                self.post(await self._update(cid, sid, total))
            case RequestBackendAuthorization(connector_id=cid, card=card):
                self.post(await self.backend_authorizer(cid, card))  # agent/upstream/port.py wire_remote
            case EnableEnergy(connector_id=cid):
                await self._energy(cid, enable=True)
            case DisableEnergy(connector_id=cid):
                await self._energy(cid, enable=False)
            case _:
                _LOGGER.warning("no executor for %s", type(effect).__name__)

    async def _backend_unavailable(self, cid: int, card: CardToken) -> BackendAuthorizationResult:
        """``backend_authorizer`` until :func:`agent.upstream.port.wire_remote` replaces it."""
        _LOGGER.info("backend authorization unavailable %s", kv(connector=cid, token=mask_token(card.token)))
        status = BackendAuthorizationStatus.UNAVAILABLE
        return BackendAuthorizationResult(cid, self.clock(), card.token, status)

    async def _authorize(self, cid: int) -> AuthorizationResult:
        try:
            outcome = await self.terminal.authorize()
        except DriverError as exc:
            _LOGGER.warning("authorization failed %s", kv(connector=cid, error=type(exc).__name__))
            return AuthorizationResult(
                cid, self.clock(), AuthorizationOutcome.FAILED, reason=type(exc).__name__
            )
        at = self.clock()
        match outcome:
            case PartiallyApproved(session_id=sid, amount_minor=amount, card=card):
                _LOGGER.info(
                    "partially approved %s",
                    kv(connector=cid, session_id=sid, amount_minor=amount, pan=card.masked_pan),
                )
                return AuthorizationResult(
                    cid,
                    at,
                    AuthorizationOutcome.PARTIALLY_APPROVED,
                    session_id=str(sid),
                    authorized_minor=amount,
                )
            case Approved(session_id=sid, amount_minor=amount, card=card):
                _LOGGER.info(
                    "approved %s", kv(connector=cid, session_id=sid, amount_minor=amount, pan=card.masked_pan)
                )
                return AuthorizationResult(
                    cid, at, AuthorizationOutcome.APPROVED, session_id=str(sid), authorized_minor=amount
                )
            case Declined(reason=reason):
                name = reason.name.lower() if reason is not None else None
                _LOGGER.info("declined %s", kv(connector=cid, reason=name))
                return AuthorizationResult(cid, at, AuthorizationOutcome.DECLINED, reason=name)
            case _:
                _LOGGER.info("authorization cancelled %s", kv(connector=cid))
                return AuthorizationResult(cid, at, AuthorizationOutcome.CANCELLED)

    async def _dispose(self, cid: int, sid: str, send: Callable[[], Awaitable[None]]) -> SettlementOutcome:
        try:
            await send()
            outcome = SettlementOutcome.OK
        except SessionNotFound:
            outcome = SettlementOutcome.NOT_FOUND  # psp-reference §10.3: counts as disposed
        except DriverError as exc:
            _LOGGER.warning(
                "settlement failed %s", kv(connector=cid, session_id=sid, error=type(exc).__name__)
            )
            outcome = SettlementOutcome.FAILED
        try:
            self.journal.disposal_sent(sid)
        except JournalError as exc:
            _LOGGER.error("journal: disposal_sent not recorded %s", kv(session_id=sid, error=str(exc)))
        _LOGGER.info("settlement %s", kv(connector=cid, session_id=sid, outcome=outcome.value))
        return outcome

    async def _update(self, cid: int, sid: str, total: int) -> UpdateAuthorizationResult:
        try:
            result = await self.terminal.update_authorization(int(sid), total)
        except DriverError as exc:
            _LOGGER.warning("update failed %s", kv(connector=cid, session_id=sid, error=type(exc).__name__))
            return UpdateAuthorizationResult(cid, self.clock(), sid, UpdateOutcome.FAILED)
        outcome = {
            "APPROVED": UpdateOutcome.APPROVED,
            "PARTIALLY_APPROVED": UpdateOutcome.PARTIALLY_APPROVED,
        }.get(result.result.name, UpdateOutcome.DECLINED)
        return UpdateAuthorizationResult(cid, self.clock(), sid, outcome, result.authorized_minor)

    async def _energy(self, cid: int, *, enable: bool) -> None:
        action = "enable" if enable else "disable"
        for attempt in range(1, ENERGY_RETRIES + 1):
            try:
                if enable:
                    await self.charger.enable_energy(cid, max_current_a=self.options.max_current_a.get(cid))
                else:
                    await self.charger.disable_energy(cid)
            except DriverError as exc:
                _LOGGER.warning(
                    "charger command failed %s",
                    kv(connector=cid, action=action, attempt=attempt, error=str(exc)),
                )
                await asyncio.sleep(0.5 * attempt)
                continue
            crashpoints.reached(f"charger_sent:{action}")
            _LOGGER.info("charger command sent %s", kv(connector=cid, action=action))
            return
        self._upstream(Alarm("charger_command_failed", cid, {"action": action}))

    async def _execute_terminal(self, effect: Effect) -> None:
        match effect:
            case StartCardRead():
                await self._start_read(effect)
            case CancelCardRead():
                try:
                    await self.terminal.cancel_read()
                except DriverError as exc:
                    _LOGGER.warning("cancel read failed %s", kv(error=type(exc).__name__))
            case ShowMessage():
                await self._show_message(effect)
            case _:
                _LOGGER.warning("no terminal executor for %s", type(effect).__name__)

    # -- Apollo screens (agent/runtime/screens.py) --------------------------------------------------------

    def _refresh_home(self) -> None:
        """After a dispatched item: re-render the home screen when what it shows changed, or when
        the payment flow released the display (a read ended)."""
        if not (self.options.ui_screens and self.screens.home_enabled):
            return
        sig = screens.home_signature(self.station.views(), self.station.arbiter.read_in_progress)
        if sig != self._home_sig:
            self._home_sig = sig
            self._request_home()

    def _request_home(self) -> None:
        """Queue one home screen render (coalesced: at most one queued at a time)."""
        if not (self.options.ui_screens and self.screens.home_enabled) or self._stopping:
            return
        if not self._home_pending:
            self._home_pending = True
            self.actors[None].queue.put_nowait(ShowMessage(None, screens.HOME_KEY))

    def show_final_screen(self, connector_id: int, screen_type: str, properties: Mapping[str, str]) -> None:
        """The publisher's ``final_screen`` callback (RCPT-2; wired on Apollo with a QR template,
        agent/cli/run.py): queue the final receipt screen (amount, QR link) on the terminal
        actor in place of the ``session_ended`` notification of the same engine step; held like
        any message (``MESSAGE_HOLD_S``), then the home screen returns. Never blocks."""
        if not self.options.ui_screens or self._stopping:
            return
        self._final_screens.add(connector_id)
        data = {"type": screen_type, "properties": dict(properties)}
        self.actors[None].queue.put_nowait(ShowMessage(connector_id, screens.FINAL_KEY, data))

    async def _show_message(self, message: ShowMessage) -> None:
        """Terminal actor: a ``ShowMessage`` (or the home screen marker) as a UI Request."""
        screen: screens.Screen | None
        if message.key == screens.FINAL_KEY:
            screen = screens.prebuilt(message)
        elif not self.screens.home_enabled:
            screen = screens.notification(self.screens, message)
        elif message.key == screens.HOME_KEY:
            self._home_pending = False
            if asyncio.get_running_loop().time() < self._hold_until:
                return  # a message is up; the hold timer brings the home screen back
            screen = screens.home_screen(self.screens, self.station.views())
        else:
            screen = screens.message_screen(self.screens, message)
            if screen is None:
                self._request_home()
                return
        try:
            await self.terminal.show_screen(*screen)
        except DriverError as exc:
            _LOGGER.info("screen not shown %s", kv(key=message.key, error=type(exc).__name__))
            return
        _LOGGER.debug("screen shown %s", kv(key=message.key, type=screen[0]))
        if self.screens.home_enabled and message.key != screens.HOME_KEY:
            loop = asyncio.get_running_loop()
            self._hold_until = loop.time() + screens.MESSAGE_HOLD_S
            if self._hold_handle is not None:
                self._hold_handle.cancel()
            self._hold_handle = loop.call_later(screens.MESSAGE_HOLD_S, self._hold_over)

    def _hold_over(self) -> None:
        self._hold_until = 0.0
        self._hold_handle = None
        self._request_home()

    async def _start_read(self, effect: StartCardRead) -> None:
        """Start Session / Read Card; when the terminal refuses because it is still busy (closing the
        previous transaction), wait until Get Status says ENABLED and send it again at once
        (TERM-3/START-1: always scanning) instead of reporting the read ended after 1 s.
        """
        purpose, cid, amount = effect.purpose, effect.connector_id, effect.amount_minor
        error = ""
        for attempt in range(1, READ_START_ATTEMPTS + 1):
            outcomes = self._read_outcomes
            try:
                if purpose == "ui_stop":
                    await self.terminal.read_card(effect.reference)  # Apollo Read Card (STOP-4)
                else:
                    await self.terminal.start_card_read(amount, effect.reference)
                _LOGGER.info(
                    "card read started %s",
                    kv(purpose=purpose, connector=cid, amount_minor=amount, attempt=attempt),
                )
                return
            except DriverError as exc:
                error = type(exc).__name__
                if self._read_outcomes != outcomes:
                    # The read did start: a card was presented (or the read ended) before the
                    # confirming Get Status, e.g. an Auth Session that ran in between. The engine
                    # already has that outcome; a CardReadEnded now would end the *next* read.
                    _LOGGER.info("card read started and already ended %s", kv(purpose=purpose, error=error))
                    return
                if not isinstance(exc, UnexpectedState | PspNotOk) or not await self._terminal_idle():
                    break
                _LOGGER.info("card read refused while busy; terminal idle now %s", kv(attempt=attempt))
        _LOGGER.warning("card read not started %s", kv(purpose=purpose, error=error))
        await asyncio.sleep(READ_RETRY_S)
        self.post(CardReadEnded(self.clock()))

    async def _terminal_idle(self) -> bool:
        """Poll Get Status (bounded) until the terminal is ENABLED: no transaction of its own."""
        try:
            async with asyncio.timeout(READ_IDLE_WAIT_S):
                while True:
                    state = await self.terminal.status()
                    if state == "ENABLED":
                        return True
                    if state not in ("WAIT_CARD", "WAIT_AUTH"):
                        return False  # offline / disabled: the link recovery deals with it
                    await asyncio.sleep(READ_IDLE_POLL_S)
        except (TimeoutError, DriverError):
            return False

    # -- driver event pumps ----------------------------------------------------------------------

    async def _pump_terminal(self) -> None:
        async for event in self.terminal.events():
            self._on_terminal_event(event)

    def _on_terminal_event(self, event: object) -> None:
        at = self.clock()
        match event:
            case LinkStateChanged(state=state):
                self._terminal_ready = state.ready
                _LOGGER.info("terminal link %s", kv(link=state.link, ready=state.ready))
                self._publish_terminal_state(state)
                if state.ready:
                    self._request_home()
                self._feed_link_state()
            case CardPresented(kind=kind, token=token, masked_pan=pan, brand=brand):
                self._read_outcomes += 1
                _LOGGER.info("card read %s", kv(kind=kind.value, pan=pan, token=mask_token(token)))
                if self._stopping:
                    self.actors[None].queue.put_nowait(CancelCardRead())  # TERM-3: answer it
                    return
                self.post(CardRead(at, CardToken(CardKind(kind.value), token or "", pan, brand)))
            case ReadCancelled():
                self._read_outcomes += 1
                self.post(CardReadEnded(at))
            case TerminalUiSelection(button_id=button):
                selection = parse_ui_button(button, at)
                if selection is None:
                    _LOGGER.info("ui button ignored %s", kv(button=button))
                else:
                    self.post(selection)
            case TransactionProgress(stage=stage):
                _LOGGER.debug("transaction progress %s", kv(stage=stage.name))
            case _:
                pass

    def _feed_link_state(self) -> None:
        """Tell the Station about link changes; held back until the restart recovery opened the gate."""
        if not self._terminal_gate_open:
            return
        if self._terminal_ready and not self._terminal_up_fed:
            self._terminal_up_fed = True
            self.post(TerminalLinkUp(self.clock()))
        elif not self._terminal_ready and self._terminal_up_fed:
            self._terminal_up_fed = False
            self.post(TerminalLinkDown(self.clock()))

    async def _pump_charger(self) -> None:
        async for event in self.charger.events():
            self.facts.observe(event)
            mapped = map_charger_event(event)
            if mapped is not None:
                self.post(mapped)

    # -- restart recovery (ERR-5) ----------------------------------------------------------------

    async def _recovery(self) -> None:
        rows = self.journal.open_payments()
        unapproved = [r for r in rows if not r.approved]
        settle_unapproved(self.journal, unapproved)
        restorable = [r for r in rows if r.approved]
        if restorable:
            wanted = {r.connector_id for r in restorable}
            try:
                async with asyncio.timeout(self.options.recovery_wait_s):
                    await self.facts.wait_known(wanted)
            except TimeoutError:
                _LOGGER.info(
                    "recovery: charger facts incomplete; using what is known %s", kv(online=self.facts.online)
                )
            _LOGGER.info("recovery: restoring open payments %s", kv(count=len(restorable)))
        self.post(_RestoreNow(restore_events(restorable, self.facts, self.clock())))
        await self.recovered.wait()
        if self.options.list_sessions:
            await self._reconcile_when_ready()
        self._terminal_gate_open = True
        self._feed_link_state()

    async def _reconcile_when_ready(self) -> None:
        """P6X: void approvals the journal never saw, once, before any new card is read."""
        while True:
            try:
                await self.terminal.wait_ready(None)
                await reconcile_terminal_sessions(self.journal, self.terminal)
                return
            except DriverError as exc:
                _LOGGER.warning("recovery: List Sessions failed; retrying %s", kv(error=type(exc).__name__))
                await asyncio.sleep(READ_RETRY_S)


class _Internal:
    """A message for the dispatcher itself (not an engine event)."""

    def apply(self, runtime: Runtime) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _RestoreNow(_Internal):
    events: list[Event]

    def apply(self, runtime: Runtime) -> None:
        for event in self.events:
            runtime.step(event)
        buffered, runtime._buffered = runtime._buffered, []
        for event in buffered:
            runtime.step(event)
        runtime.recovered.set()
        _LOGGER.info("recovery: restore done %s", kv(restored=len(self.events), charger_events=len(buffered)))


def _is_charger_event(event: Event) -> bool:
    return isinstance(event, Plugged | Unplugged | ChargerStatus | MeterReading | ChargerLost | ChargerBack)


def map_charger_event(event: charger.ChargerEvent) -> Event | None:
    match event:
        case charger.PlugChanged(connector_id=cid, plugged=plugged, at=at):
            return Plugged(cid, at) if plugged else Unplugged(cid, at)
        case charger.StatusChanged(connector_id=cid, state=state, fault=fault, at=at):
            return ChargerStatus(cid, at, ChargerState(state.value), fault)
        case charger.MeterReading(connector_id=cid, energy_wh=wh, power_w=w, at=at):
            return MeterReading(cid, at, wh, w)
        case charger.ChargerLost(at=at):
            return ChargerLost(at)
        case charger.ChargerBack(at=at):
            return ChargerBack(at)
    return None


def parse_ui_button(button: str, at: datetime) -> UiSelection | None:
    """Apollo button ids the agent puts on its screens: ``start.<connector>[.<cap_minor>]`` or
    ``stop.<connector>`` (docs/runtime.md). On the wire the parts are joined with ``_``
    (``start_2_5000``, :func:`agent.runtime.screens.button_id`): a ``.`` in an id would read as a nested
    property in the flattened UI Request keys (``items.<id>.label``, psp-reference §5.21)."""
    parts = button.replace("_", ".").split(".")
    if len(parts) not in (2, 3) or parts[0] not in ("start", "stop") or not parts[1].isdigit():
        return None
    cap = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else None
    return UiSelection(at, int(parts[1]), UiAction(parts[0]), cap)
