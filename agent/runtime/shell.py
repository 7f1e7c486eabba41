"""The daemon's runtime: the imperative shell around the pure ``Station`` (DESIGN.md §2).

One asyncio process. :meth:`Runtime.run` owns every long-lived task in one ``TaskGroup``; each is
named and supervised (a task that crashes is logged and restarted with capped backoff; the daemon
does not die with it). The tasks:

``dispatcher``
    Pops events from the one inbound queue and steps the ``Station`` (pure, synchronous). Every
    effect is its own type and is routed by type (:meth:`Runtime.step`): everything the step
    stores — its journal records, the outbox rows of its upstream events and meter values, its
    receipt, its alarm, the tariff of a session it begins or of a ``set_tariff`` it applies
    (issue 10) — is written in **one** SQLite transaction (:meth:`agent.store.db.Store.atomic`,
    fsynced unless the step holds only periodic meter values); only after the commit are the
    step's other effects executed, in list order — timers inline, every I/O effect on the queue of
    the actor that owns it. So after any crash either a fact and its messages exist or neither
    does, and nothing is acted on before it is journaled (the write-ahead rule).
``connector-N`` (one actor per connector)
    Executes that connector's I/O effects strictly in order: ``Authorize``/``Commit``/``Void``/
    ``UpdateAuthorization`` on the shared terminal (the PSP link serialises requests: one
    outstanding), the RFID back-office request, ``EnableEnergy``/``DisableEnergy`` on the charger.
    Outcomes come back to the dispatcher as events (``AuthorizationResult``, ``CommitResult``, …).
    A slow operation on one connector never delays another connector's effects.
``terminal-actor``
    Card reads (``StartCardRead``/``CancelCardRead``) and Apollo screens (``ShowMessage`` and the
    runtime's own screen requests, fitted to what the terminal's block format can carry).
``terminal-link``, ``terminal-events``, ``charger-events``
    The PSP session, and the two driver event pumps that translate driver events into engine events.
``recovery`` (one-shot)
    ERR-5 restart recovery (:mod:`agent.runtime.recovery`): waits (bounded) until the charger's
    retained state is applied, closes card reads without an outcome (a possible orphan approval
    raises an alarm), restores open payments, then opens the terminal to card reads.
plus the tasks the composition root (:func:`agent.app.build_app`) passes to :meth:`Runtime.run`
(the upstream client, commands, the daily reconciliation).

Card data: events carry the card hash / UID as the engine's ``CardToken``; log lines only ever
show the masked PAN and :func:`drivers.terminal.mask_token` of a token.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Final, Generic, Literal, TypeVar, assert_never

from agent import crashpoints
from agent.logs import kv
from agent.money.receipts import apollo_final_screen
from agent.money.tariff import Tariff
from agent.runtime import screens
from agent.runtime.charger_payment import PaymentFeed
from agent.runtime.recovery import (
    ChargerFacts,
    reconcile_terminal_sessions,
    restore_events,
    session_tariffs,
    station_tariff_at_start,
    stored_tariff,
)
from agent.runtime.timers import TimerKey, Timers
from agent.store.db import Store, StoreError
from agent.store.journal import Journal, JournalError, PaymentRow
from agent.store.outbox import OutboxError
from agent.upstream.alarms import (
    ChargerCommandFailed,
    JournalTrouble,
    OrphanCleared,
    PossibleOrphanApproval,
    ShellAlarm,
)
from agent.upstream.contract import Receipt
from agent.upstream.publisher import ConnectorSnapshot, Publisher
from drivers.charger import base as charger
from drivers.charger.payloads import PaymentPayload
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
from statemachines.connector import ConnectorMachineState
from statemachines.effects import (
    Authorize,
    CancelCardRead,
    CancelTimer,
    Commit,
    DisableEnergy,
    Effect,
    EnableEnergy,
    IssueReceipt,
    MessageKey,
    PublishPaymentAuthorized,
    PublishPaymentCaptured,
    PublishPaymentDeclined,
    PublishPaymentIncremented,
    PublishPaymentPartiallyApproved,
    PublishPaymentVoided,
    PublishSessionEnded,
    PublishSessionStarted,
    PublishSessionUpdated,
    RaiseUndisposedPayment,
    ReadPurpose,
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordLimitReached,
    RecordMeter,
    RecordPaymentApproved,
    RecordPaymentDeclined,
    RecordPaymentIncremented,
    RecordPaymentRestored,
    RecordSessionEnded,
    RecordStop,
    RecordVoidConfirmed,
    RecordVoidDecided,
    RequestBackendAuthorization,
    ShowMessage,
    StartCardRead,
    StartTimer,
    UpdateAuthorization,
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
    PaymentRestored,
    Plugged,
    SettlementOutcome,
    TariffChanged,
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
from statemachines.station import Station

_LOGGER = logging.getLogger(__name__)

RESTART_BACKOFF_MIN_S: Final = 0.1
RESTART_BACKOFF_MAX_S: Final = 5.0
READ_RETRY_S: Final = 1.0  # a failed Start Session is reported ended after this pause (no hot loop)
READ_IDLE_WAIT_S: Final = 1.0  # a refused Start Session: wait this long for the terminal to be ENABLED
READ_IDLE_POLL_S: Final = 0.05  # … asking Get Status this often
READ_START_ATTEMPTS: Final = 3  # Start Session attempts (each after the terminal was seen idle)
MAX_TURN_EVENTS: Final = 64  # group commit: engine events stepped and stored in one transaction
DISPATCH_STALL_S: Final = 5.0  # health: an event waiting longer than this for the dispatcher
CRASH_LOOP_RESTARTS: Final = 3  # health: this many restarts of one task …
CRASH_LOOP_WINDOW_S: Final = 30.0  # … within this many seconds is a crash-restart loop
ENERGY_RETRIES: Final = 3  # enable/disable attempts before an alarm
# ERR-5 / integrity issue E: after a (re)start, wait at most this long for the charger's retained
# state (online, every connector's plug) before restoring payments and reading cards
DEFAULT_RECOVERY_WAIT_S: Final = 5.0
PRUNE_INTERVAL_S: Final = 3600.0  # journal retention: look for expired sessions hourly (issue 12)
DEFAULT_DRAIN_S: Final = 10.0  # SIGTERM: wait this long for settlements in flight (OPS-1)
_DRAIN_STATES: Final = frozenset({ConnectorMachineState.STOPPING, ConnectorMachineState.SETTLING})

MESSAGE_TEXT: Final = screens.MESSAGE_TEXT  # ShowMessage keys → text (agent/runtime/screens.py)

BackendAuthorizer = Callable[[int, CardToken], Awaitable[BackendAuthorizationResult]]
TaskFactory = Callable[[], Awaitable[None]]
ConnectorEffect = (
    Authorize
    | Commit
    | Void
    | UpdateAuthorization
    | RequestBackendAuthorization
    | EnableEnergy
    | DisableEnergy
)
TerminalItem = StartCardRead | CancelCardRead | screens.ScreenRequest


T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Tunables; the defaults are production values, tests shrink them."""

    max_current_a: Mapping[int, int] = field(default_factory=dict)
    ui_screens: bool = False  # Apollo: render ShowMessage as UI Request screens
    final_screen: bool = False  # Apollo with a receipt QR template: the final receipt screen (RCPT-2)
    price_on_payment_screen: bool = False  # Apollo: the tariff in the Start Session's reference strings
    connector_labels: Mapping[int, str] = field(default_factory=dict)  # names on the Apollo screens
    list_sessions: bool = False  # P6X: reconcile with List Sessions after a restart
    timer_scale: float = 1.0
    recovery_wait_s: float = DEFAULT_RECOVERY_WAIT_S
    drain_timeout_s: float = DEFAULT_DRAIN_S
    retention_days: int | None = None  # journal retention (agent.config JournalConfig); None: keep all
    terminal_owned: bool = True  # run the terminal's link task here (False when the caller runs it)


class _Actor(Generic[T]):
    """A FIFO of effects executed one at a time by one task."""

    def __init__(self, name: str, execute: Callable[[T], Awaitable[None]], progress: asyncio.Event) -> None:
        self.name = name
        self._progress = progress
        self.queue: asyncio.Queue[T] = asyncio.Queue()
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
    """Drives a :class:`Station` with a terminal, a charger driver, the store and the publisher.

    Built by :func:`agent.app.build_app` (the composition root) through this constructor; nothing
    is set on it afterwards. Pre: ``store`` is open and owned by the caller (closed by it after
    :meth:`run` returns); ``journal`` and ``publisher`` write through ``store``.

    ``tariff`` is the configured tariff; the station starts with the tariff of the last
    ``set_tariff`` instead when the journal holds one and the configuration has not changed since
    (:func:`agent.runtime.recovery.station_tariff_at_start`).
    """

    def __init__(
        self,
        *,
        station_config: StationConfig,
        tariff: Tariff,
        store: Store,
        journal: Journal,
        publisher: Publisher,
        terminal: Terminal,
        charger_driver: charger.ChargerDriver,
        authorizer: BackendAuthorizer | None = None,
        options: RuntimeOptions | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.options = options or RuntimeOptions()
        self.store = store
        self.journal = journal
        self.configured_tariff_fingerprint = stored_tariff(tariff).fingerprint
        tariff, self.stored_tariff = station_tariff_at_start(journal, tariff)
        self.station: Station[Tariff] = Station(station_config, tariff, terminal_online=False)
        self.tariff = tariff  # the station's tariff for new sessions (set_tariff changes it)
        self.publisher = publisher
        self.terminal = terminal
        self.charger = charger_driver
        self.clock = clock
        self._authorizer = authorizer or self._backend_unavailable
        self.connector_ids = tuple(c.connector_id for c in station_config.connectors)
        # each connector's state as last logged and published (see :meth:`step`)
        self._states = {cid: m.state for cid, m in self.station.connectors.items()}
        self.timers = Timers(self._timer_fired, scale=self.options.timer_scale)
        self.inbox: asyncio.Queue[Event | TariffChanged[Tariff] | _Internal] = asyncio.Queue()
        self._progress = asyncio.Event()  # set whenever an event or an effect was processed
        self.actors: dict[int, _Actor[ConnectorEffect]] = {
            cid: _Actor(f"connector-{cid}", self._execute_connector, self._progress)
            for cid in self.connector_ids
        }
        self.terminal_actor: _Actor[TerminalItem] = _Actor(
            "terminal-actor", self._execute_terminal, self._progress
        )
        self.facts = ChargerFacts()
        # docs/ocpp21.md: what the charger's OCPP stack needs (payment topic), derived per step
        self.payment_feed = PaymentFeed(journal, self._currency)
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
        # Apollo screens (agent/runtime/screens.py): the home screen is re-rendered, coalesced, on changes
        self.screens = screens.ScreenSettings.from_station(
            station_config, tariff, self.options.connector_labels
        )
        self._home_sig: tuple[object, ...] | None = None
        self._home_pending = False
        self._hold_until = 0.0  # a message is on screen until then (loop clock)
        self._hold_handle: asyncio.TimerHandle | None = None
        self._unfit_warned: set[str] = set()  # screen kinds that did not fit (one WARNING each)

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

    async def run(self, tasks: Mapping[str, TaskFactory] | None = None) -> None:
        """Run until :meth:`request_stop`; then drain (bounded) and return. ``tasks``: more named,
        supervised tasks (the composition root's: upstream client, commands, daily report)."""
        await self.charger.start()
        try:
            async with asyncio.TaskGroup() as tg:
                spawn = self._spawner(tg)
                if self.options.terminal_owned:
                    spawn("terminal-link", self.terminal.run)
                spawn("dispatcher", self._dispatch_loop)
                spawn("terminal-events", self._pump_terminal)
                spawn("charger-events", self._pump_charger)
                spawn("upstream-publisher", self.publisher.run)
                for cid in self.connector_ids:
                    self._publish_connector_state(cid)
                for actor in self.actors.values():
                    spawn(actor.name, actor.run)
                spawn(self.terminal_actor.name, self.terminal_actor.run)
                for name, factory in (tasks or {}).items():
                    spawn(name, factory)
                self._tasks.append(tg.create_task(self._recovery(), name="recovery"))
                if self.options.retention_days is not None:
                    spawn("journal-retention", self._retention)
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
            self.terminal_actor.queue.put_nowait(CancelCardRead())
        try:
            async with asyncio.timeout(self.options.drain_timeout_s):
                while not self._drained():
                    self._progress.clear()
                    await self._progress.wait()
            _LOGGER.info("drained: no settlement in flight")
        except TimeoutError:
            pending = [cid for cid, m in self.station.connectors.items() if m.state in _DRAIN_STATES]
            _LOGGER.warning(
                "drain timed out; the journal keeps the decided disposals %s",
                kv(settling=",".join(map(str, pending)) or None),
            )

    def _drained(self) -> bool:
        busy = not self.terminal_actor.idle or any(not a.idle for a in self.actors.values())
        if not self.inbox.empty() or busy:
            return False
        # a stop in progress (final meter value awaited) settles next: wait for it too
        return all(m.state not in _DRAIN_STATES for m in self.station.connectors.values())

    # -- inbound ---------------------------------------------------------------------------------

    def post(self, event: Event | TariffChanged[Tariff] | _Internal) -> None:
        if self.inbox.empty():
            self._pending_since = asyncio.get_running_loop().time()
        self.inbox.put_nowait(event)

    def _timer_fired(self, key: TimerKey) -> None:
        kind, connector_id = key
        self.post(TimerFired(kind, connector_id, self.clock()))

    async def _dispatch_loop(self) -> None:
        """One turn per wake-up: every engine event already waiting (up to ``MAX_TURN_EVENTS``) is
        stepped and stored in **one** transaction (group commit, issue 12), then the effects are
        executed; an internal item ends a turn and is applied alone."""
        inbox = self.inbox
        while True:
            item = await inbox.get()
            try:
                events: list[Event | TariffChanged[Tariff]] = []
                while True:
                    if isinstance(item, _Internal):
                        self._turn(events)
                        events = []
                        item.apply(self)
                    elif not self.recovered.is_set() and _is_charger_event(item):
                        assert not isinstance(item, TariffChanged)
                        self._buffered.append(item)  # fed after the restore (ERR-5), see _RestoreNow
                    else:
                        events.append(item)
                    if len(events) >= MAX_TURN_EVENTS or inbox.empty():
                        break
                    item = inbox.get_nowait()
                self._turn(events)
                self._refresh_home()
            finally:
                self._dispatched_at = asyncio.get_running_loop().time()
                self._progress.set()

    def step(self, event: Event | TariffChanged[Tariff]) -> bool:
        """Step the engine with ``event``: store everything the step stores in one transaction,
        then execute its other effects in order (write-ahead). Returns whether the transaction
        committed (``False``: logged, alarmed, the effects not executed)."""
        return self._turn([event])[0]

    def _turn(self, events: Sequence[Event | TariffChanged[Tariff]]) -> list[bool]:
        """Step the engine with each of ``events`` in order, store what all the steps store in one
        transaction — one savepoint per step, so a step that cannot be stored is dropped alone,
        and one fsync when any step holds a money-relevant fact — then, after the commit, execute
        each step's other effects in step order (write-ahead). Returns per step whether it
        committed (``False``: logged, alarmed, its effects not executed)."""
        steps: list[tuple[Event | TariffChanged[Tariff], list[Effect], dict[int, ConnectorMachineState]]] = []
        for event in events:
            if isinstance(event, TariffChanged):
                self._apply_tariff(event.pricer)
            effects = self.station.handle(event)
            connectors = self.station.connectors
            steps.append((event, effects, {cid: connectors[cid].state for cid in self.station.touched}))
        committed = [True] * len(steps)
        receipts: list[list[tuple[int, screens.PrebuiltScreen]]] = [[] for _ in steps]
        writing = [i for i, (event, effects, _) in enumerate(steps) if _writes(effects, event)]
        if writing:
            durable = any(_durable(steps[i][1], steps[i][0]) for i in writing)
            failed: list[tuple[int, Exception]] = []
            try:
                with self.store.atomic(durable=durable):
                    for i in writing:
                        event, effects, _ = steps[i]
                        try:
                            with self.store.savepoint():
                                receipts[i] = self._store(effects, event)
                        except (JournalError, StoreError, OutboxError) as step_error:
                            failed.append((i, step_error))
            except (JournalError, StoreError, OutboxError) as turn_error:  # the COMMIT itself failed
                failed = [(i, turn_error) for i in writing]
            for i, error in failed:  # each alarm in a transaction of its own, after the turn's
                committed[i] = False
                self._not_committed(steps[i][0], steps[i][1], error)
        for (_, effects, states), ok, step_receipts in zip(steps, committed, receipts, strict=True):
            if ok:
                self._after_step(effects, states, step_receipts)
        return committed

    def _not_committed(
        self, event: Event | TariffChanged[Tariff], effects: Sequence[Effect], exc: Exception
    ) -> None:
        dropped = [type(e).__name__ for e in effects if not _is_stored(e)]
        _LOGGER.error(
            "step not committed; its effects are not executed %s",
            kv(event=type(event).__name__, error=str(exc), dropped=",".join(dropped) or None),
        )
        connector = getattr(event, "connector_id", None)
        self._raise_alarm(JournalTrouble(connector if isinstance(connector, int) else None, str(exc)))

    def _after_step(
        self,
        effects: Sequence[Effect],
        states: Mapping[int, ConnectorMachineState],
        receipts: Sequence[tuple[int, screens.PrebuiltScreen]],
    ) -> None:
        """A committed step: its connector state changes, then its other effects, in order."""
        for cid, new in states.items():  # a connector's state changes only when it handles an event
            old = self._states[cid]
            if new != old:
                self._states[cid] = new
                _LOGGER.info("connector state %s", kv(connector=cid, old=old, new=new))
                self._publish_connector_state(cid)
        final_screens = {cid for cid, _ in receipts}
        for effect in effects:
            if not _is_stored(effect):
                self._execute(effect, final_screens)
        for cid, screen in receipts:
            self.terminal_actor.queue.put_nowait(screen)
            _LOGGER.debug("final receipt screen queued %s", kv(connector=cid))

    def _store(
        self, effects: Sequence[Effect], event: Event | TariffChanged[Tariff]
    ) -> list[tuple[int, screens.PrebuiltScreen]]:
        """The step's transaction: journal records (with the tariff of a session they begin),
        events, meter values, receipts and the engine's alarm, in effect order — for a
        ``TariffChanged`` first the station's new tariff. Returns the final receipt screens to show
        (Apollo, RCPT-2)."""
        stored = [e for e in effects if _is_stored(e)]
        changed = event.pricer if isinstance(event, TariffChanged) else None
        if not stored and changed is None:
            return []
        issued: dict[str, Receipt] = {}  # the step's receipts, for the charger's settlement message
        at = getattr(event, "at", None)
        final: list[tuple[int, screens.PrebuiltScreen]] = []
        with self.store.atomic(durable=_durable(effects, event)):  # joins the turn's transaction
            if changed is not None:  # issue 10: the station's tariff survives a restart
                self.journal.set_station_tariff(
                    self.stored_tariff, configured_fingerprint=self.configured_tariff_fingerprint, at=at
                )
            for effect in stored:
                match effect:
                    case RecordMeter():
                        self.journal.record(effect, at=at)
                        self.publisher.meter(effect, at=at or self.clock())
                        self.store.after_commit(partial(self._publish_connector_state, effect.connector_id))
                    case RecordCardRead() | RecordPaymentApproved():  # a session's first records
                        self.journal.record(effect, at=at)
                        self._bind_session_tariff(effect.connector_id, effect.session_ref)
                    case (
                        RecordPaymentDeclined()
                        | RecordPaymentIncremented()
                        | RecordEnergyOn()
                        | RecordLimitReached()
                        | RecordStop()
                        | RecordCommitDecided()
                        | RecordVoidDecided()
                        | RecordCommitConfirmed()
                        | RecordVoidConfirmed()
                        | RecordSessionEnded()
                        | RecordPaymentRestored()
                    ):
                        self.journal.record(effect, at=at)
                    case (
                        PublishSessionStarted()
                        | PublishSessionUpdated()
                        | PublishSessionEnded()
                        | PublishPaymentAuthorized()
                        | PublishPaymentPartiallyApproved()
                        | PublishPaymentDeclined()
                        | PublishPaymentIncremented()
                        | PublishPaymentCaptured()
                        | PublishPaymentVoided()
                    ):
                        self.publisher.event(effect)
                    case IssueReceipt():
                        machine = self.station.connectors[effect.connector_id]
                        receipt = self.publisher.receipt(effect, machine.pricer)  # the session's tariff
                        if receipt is not None:
                            issued[effect.session_ref] = receipt
                        if receipt is not None and effect.declined is None and self.options.final_screen:
                            screen_type, props = apollo_final_screen(receipt, receipt.qr_url)
                            final.append(
                                (
                                    effect.connector_id,
                                    screens.PrebuiltScreen(effect.connector_id, screen_type, props),
                                )
                            )
                    case RaiseUndisposedPayment():
                        self.publisher.alarm(effect)
                    case _:
                        raise AssertionError(f"not a stored effect: {effect!r}")
            payments = self.payment_feed.messages(stored, issued, at or self.clock())
            if payments:
                self.store.after_commit(partial(self._offer_payments, payments))
        return final

    def _currency(self, cid: int) -> tuple[str, int]:
        """The currency of connector ``cid``'s session (its tariff): code, minor unit digits."""
        pricer = self.station.connectors[cid].pricer
        return pricer.currency, pricer.minor_unit_digits

    def _offer_payments(self, payments: Mapping[int, PaymentPayload]) -> None:
        """After the step's commit: the charger's payment messages (docs/ocpp21.md); never raises."""
        for cid, payload in payments.items():
            try:
                self.charger.offer_payment(cid, payload)
            except Exception:
                _LOGGER.exception("charger payment not offered %s", kv(connector=cid))
                continue
            _LOGGER.info(
                "charger payment %s",
                kv(connector=cid, event=payload.event, session=payload.session_id, psp_ref=payload.psp_ref),
            )

    def _execute(self, effect: Effect, final_screens: set[int]) -> None:
        """Execute one effect that is not stored, after the step's commit."""
        match effect:
            case StartTimer(kind=kind, seconds=seconds, connector_id=cid):
                self.timers.start(kind, cid, seconds)
            case CancelTimer(kind=kind, connector_id=cid):
                self.timers.cancel(kind, cid)
            case ShowMessage(connector_id=cid, key=key):
                _LOGGER.info("message %s", kv(connector=cid, key=key.value))
                if key is MessageKey.SESSION_ENDED and cid in final_screens:
                    return  # the final receipt screen of this step says it
                if self.options.ui_screens and not self._stopping:
                    self.terminal_actor.queue.put_nowait(effect)
            case StartCardRead():
                if self._stopping:
                    _LOGGER.info("stopping: card read not started")
                    return
                self.terminal_actor.queue.put_nowait(effect)
            case CancelCardRead():
                self.terminal_actor.queue.put_nowait(effect)
            case (
                Authorize()
                | Commit()
                | Void()
                | UpdateAuthorization()
                | RequestBackendAuthorization()
                | EnableEnergy()
                | DisableEnergy()
            ):
                self.actors[effect.connector_id].queue.put_nowait(effect)
            case _:
                raise AssertionError(f"a stored effect outside the transaction: {effect!r}")

    # -- tariff (set_tariff; the engine keeps a running session's tariff) --------------------------

    def set_tariff(self, tariff: Tariff) -> asyncio.Future[bool]:
        """``set_tariff``: the engine prices sessions that start from now on with ``tariff``; the
        step that applies it journals it as the station's tariff (it survives a restart). The
        future says, once that step ran, whether it committed (the command answers after it)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.post(_SetTariff(TariffChanged(self.clock(), tariff), done))
        return done

    def _bind_session_tariff(self, cid: int, session_ref: str) -> None:
        """Journal the tariff pricing the session ``session_ref`` (the connector's, which the
        engine keeps for the whole session), so that a restart prices it the same (STOP-8)."""
        pricer = self.station.connectors[cid].pricer
        stored = self.stored_tariff if pricer is self.tariff else stored_tariff(pricer)
        self.journal.bind_session_tariff(session_ref, stored)

    def _apply_tariff(self, tariff: Tariff) -> None:
        self.tariff = tariff
        self.stored_tariff = stored_tariff(tariff)  # journaled by this step (_store)
        self.screens = screens.ScreenSettings(
            connector_ids=self.screens.connector_ids,
            labels=self.screens.labels,
            tariff_text=tariff.describe(),
            currency=tariff.currency,
            minor_unit_digits=tariff.minor_unit_digits,
            ui_start=self.screens.ui_start,
            ui_stop=self.screens.ui_stop,
            cap_choices_minor=self.screens.cap_choices_minor,
        )
        busy = [cid for cid, m in self.station.connectors.items() if m.session is not None]
        _LOGGER.info(
            "tariff set %s",
            kv(
                currency=tariff.currency,
                fingerprint=self.stored_tariff.fingerprint[:12],
                next_session=",".join(map(str, busy)) or None,
            ),
        )
        self._home_sig = None  # the home screen shows the new tariff

    # -- alarms and possible orphan approvals -----------------------------------------------------

    def _raise_alarm(self, alarm: ShellAlarm) -> None:
        """A shell alarm in a transaction of its own (never raises into the caller)."""
        try:
            with self.store.atomic():
                self.publisher.alarm(alarm)
        except (StoreError, OutboxError) as exc:
            _LOGGER.error("alarm not stored %s", kv(alarm=type(alarm).__name__, error=str(exc)))

    def clear_orphan(self, session_ref: str, resolution: str, *, note: str | None = None) -> PaymentRow:
        """An operator accounted for a possible orphan approval (``clear_discrepancy``): journaled
        and the alarm cleared, in one transaction. Raises ``KeyError`` (unknown session) or
        ``ValueError`` (not an open possible orphan approval)."""
        with self.store.atomic():
            row = self.journal.clear_orphan(session_ref, resolution, note=note)
            self.publisher.orphan_cleared(OrphanCleared(row.connector_id, session_ref, resolution))
        _LOGGER.warning("possible orphan approval cleared %s", kv(session=session_ref, resolution=resolution))
        return row

    # -- upstream retained state (agent/upstream/publisher.py; ERR-6: never raises into the engine) --

    def connector_snapshot(self, cid: int) -> ConnectorSnapshot | None:
        """Connector ``cid`` as the engine sees it now (``None``: no such connector); what the
        retained ``connectors/{id}/state`` and ``evpay-agent status`` show."""
        machine = self.station.connectors.get(cid)
        if machine is None:
            return None
        session, payment = machine.session, machine.payment
        power = session.power_w if session is not None else None
        return ConnectorSnapshot(
            connector_id=cid,
            state=machine.state,
            plugged=machine.plugged,
            available=machine.enabled,
            session_id=session.ref if session is not None else None,
            terminal_session_id=payment.session_id if payment is not None else None,
            method=payment.method if payment is not None else None,
            energy_wh=session.usage.energy_wh if session is not None else 0,
            power_w=round(power) if power is not None else None,
            cost_minor=machine.running_cost_minor,
            authorized_minor=machine.authorized_minor,
        )

    def _publish_connector_state(self, cid: int) -> None:
        try:
            snapshot = self.connector_snapshot(cid)
            if snapshot is not None:
                self.publisher.connector_state(snapshot)
        except Exception:
            _LOGGER.exception("upstream: connector %s state not published", cid)

    def _publish_terminal_state(self, state: TerminalLinkState) -> None:
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

    # -- actors ----------------------------------------------------------------------------------

    async def _execute_connector(self, effect: ConnectorEffect) -> None:
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
                self.post(await self._authorizer(cid, card))
            case EnableEnergy(connector_id=cid):
                await self._energy(cid, enable=True)
            case DisableEnergy(connector_id=cid):
                await self._energy(cid, enable=False)
            case _:
                assert_never(effect)

    async def _backend_unavailable(self, cid: int, card: CardToken) -> BackendAuthorizationResult:
        """The authorizer when none is configured: every RFID token is ``unavailable``."""
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
            case PartiallyApproved(session_id=sid, amount_minor=amount, card=card, host_reference=host_ref):
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
                    host_reference=host_ref,
                    brand=card.brand,
                )
            case Approved(session_id=sid, amount_minor=amount, card=card, host_reference=host_ref):
                _LOGGER.info(
                    "approved %s", kv(connector=cid, session_id=sid, amount_minor=amount, pan=card.masked_pan)
                )
                return AuthorizationResult(
                    cid,
                    at,
                    AuthorizationOutcome.APPROVED,
                    session_id=str(sid),
                    authorized_minor=amount,
                    host_reference=host_ref,
                    brand=card.brand,
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
        action: Literal["enable", "disable"] = "enable" if enable else "disable"
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
        self._raise_alarm(ChargerCommandFailed(cid, action))

    async def _execute_terminal(self, item: TerminalItem) -> None:
        match item:
            case StartCardRead():
                await self._start_read(item)
            case CancelCardRead():
                try:
                    await self.terminal.cancel_read()
                except DriverError as exc:
                    _LOGGER.warning("cancel read failed %s", kv(error=type(exc).__name__))
            case ShowMessage() | screens.HomeScreen() | screens.PrebuiltScreen() | screens.OperatorMessage():
                await self._show(item)
            case _:
                assert_never(item)

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
        """Queue one home screen render (coalesced: at most one queued at a time). Not before the
        start-up recovery has opened the terminal to the drivers: a choice made on a home screen
        shown earlier would only be answered "Terminal busy" (HIL scenario stop-ui)."""
        if not (self.options.ui_screens and self.screens.home_enabled) or self._stopping:
            return
        if not self._terminal_gate_open:
            return
        if not self._home_pending:
            self._home_pending = True
            self.terminal_actor.queue.put_nowait(screens.HomeScreen())

    def show_operator_message(self, message: screens.OperatorMessage) -> None:
        """``display_message`` (Apollo): queued on the terminal actor; never blocks."""
        self.terminal_actor.queue.put_nowait(message)

    async def _show(self, request: screens.ScreenRequest) -> None:
        """Terminal actor: a screen request as a UI Request, fitted to what the terminal's current
        block format can carry (psp-reference §2.2, §2.3): optional lines and the QR code dropped
        first, then texts shortened; a screen that cannot fit is skipped with one WARNING per
        screen kind (integrity issue E) — never a traceback."""
        screen: screens.Screen | None
        match request:
            case screens.PrebuiltScreen(screen_type=screen_type, properties=properties):
                screen = screen_type, dict(properties)
            case screens.OperatorMessage():
                screen = screens.operator_screen(self.screens, request)
            case screens.HomeScreen():
                self._home_pending = False
                if asyncio.get_running_loop().time() < self._hold_until:
                    return  # a message is up; the hold timer brings the home screen back
                screen = screens.home_screen(self.screens, self.station.views())
            case ShowMessage():
                if not self.screens.home_enabled:
                    screen = screens.notification(self.screens, request)
                else:
                    screen = screens.message_screen(self.screens, request)
                    if screen is None:
                        self._request_home()
                        return
        kind = screens.screen_kind(request)
        fitted = screens.fit(screen, self.terminal.screen_fits)
        if fitted is None:
            if kind not in self._unfit_warned:
                self._unfit_warned.add(kind)
                _LOGGER.warning(
                    "screen does not fit the terminal's block format; not shown %s",
                    kv(kind=kind, type=screen[0], properties=len(screen[1])),
                )
            return
        if fitted is not screen:
            _LOGGER.debug("screen fitted %s", kv(kind=kind, dropped=len(screen[1]) - len(fitted[1])))
        try:
            await self.terminal.show_screen(*fitted)
        except DriverError as exc:
            _LOGGER.info("screen not shown %s", kv(kind=kind, error=type(exc).__name__))
            return
        _LOGGER.debug("screen shown %s", kv(kind=kind, type=fitted[0]))
        if self.screens.home_enabled and not isinstance(request, screens.HomeScreen):
            hold = (
                request.duration_s if isinstance(request, screens.OperatorMessage) else screens.MESSAGE_HOLD_S
            )
            loop = asyncio.get_running_loop()
            self._hold_until = loop.time() + hold
            if self._hold_handle is not None:
                self._hold_handle.cancel()
            self._hold_handle = loop.call_later(hold, self._hold_over)

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
        price: dict[str, str] = {}
        texts = screens.payment_screen_texts(self.screens) if self.options.price_on_payment_screen else None
        if texts is not None:  # START-8: the payment screen hides every UI screen (§3.3)
            price = {"reference_string": texts[0], "second_reference_string": texts[1]}
        error = ""
        for attempt in range(1, READ_START_ATTEMPTS + 1):
            outcomes = self._read_outcomes
            try:
                if purpose is ReadPurpose.UI_STOP:
                    await self.terminal.read_card(effect.reference)  # Apollo Read Card (STOP-4)
                else:
                    await self.terminal.start_card_read(amount, effect.reference, **price)
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
        """Poll Get Status (bounded) until the terminal is ENABLED: no transaction of its own.

        Still WAIT_CARD / WAIT_AUTH after ``READ_IDLE_WAIT_S``: a transaction nobody will finish —
        e.g. a read started before the link was reset (the engine starts no read while an Auth
        Session of its own may still run): it is cancelled (Cancel Session, psp-reference §5.13)
        so that the next Start Session is taken, instead of being refused for ever (fuzzer seed 19)."""
        try:
            async with asyncio.timeout(READ_IDLE_WAIT_S):
                while True:
                    state = await self.terminal.status()
                    if state == "ENABLED":
                        return True
                    if state not in ("WAIT_CARD", "WAIT_AUTH"):
                        return False  # offline / disabled: the link recovery deals with it
                    await asyncio.sleep(READ_IDLE_POLL_S)
        except DriverError:
            return False
        except TimeoutError:
            pass
        try:
            cancelled = await self.terminal.cancel_read()
        except DriverError as exc:
            _LOGGER.warning("stale transaction not cancelled %s", kv(error=type(exc).__name__))
            return False
        _LOGGER.warning(
            "card read: a stale transaction held the terminal; cancelled %s", kv(cancelled=cancelled)
        )
        return True

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
                    self.terminal_actor.queue.put_nowait(CancelCardRead())  # TERM-3: answer it
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

    # -- journal retention (issue 12) -----------------------------------------------------------

    async def _retention(self) -> None:
        """After the recovery, prune settled sessions older than ``retention_days``, one bounded
        batch per dispatcher item (the dispatcher stays the journal's one writer), then hourly."""
        await self.recovered.wait()
        while True:
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self.post(_Prune(done))
            more = await done
            await asyncio.sleep(0 if more else PRUNE_INTERVAL_S)

    def _prune(self) -> bool:
        days = self.options.retention_days
        assert days is not None
        try:
            result = self.journal.prune(self.clock() - timedelta(days=days))
        except JournalError as exc:
            _LOGGER.error("journal retention: prune failed %s", kv(error=str(exc)))
            return False
        if result.payments or result.events:
            _LOGGER.info(
                "journal retention: pruned %s",
                kv(payments=result.payments, events=result.events, retention_days=days),
            )
        return result.more

    # -- restart recovery (ERR-5) ----------------------------------------------------------------

    async def _recovery(self) -> None:
        """ERR-5: close card reads without an outcome (alarming possible orphan approvals), wait
        until the charger's retained state is applied, restore open payments, reconcile a P6X's
        open sessions, and only then let the terminal read cards (integrity issue E)."""
        rows = self.journal.open_payments()
        self._close_unapproved([r for r in rows if not r.approved])
        restorable = [r for r in rows if r.approved]
        await self._wait_for_charger_state()
        try:  # docs/ocpp21.md: a settlement journaled but perhaps never published reaches the charger
            self._offer_payments(self.payment_feed.last_settlements())
        except JournalError as exc:
            _LOGGER.error("recovery: charger settlements not read %s", kv(error=str(exc)))
        if restorable:
            _LOGGER.info("recovery: restoring open payments %s", kv(count=len(restorable)))
        tariffs = session_tariffs(self.journal, restorable)  # STOP-8: each its own tariff
        self.post(_RestoreNow(restore_events(restorable, self.facts, self.clock(), tariffs)))
        await self.recovered.wait()
        if self.options.list_sessions:
            await self._reconcile_when_ready()
        self._terminal_gate_open = True
        self._request_home()
        self._feed_link_state()

    async def _wait_for_charger_state(self) -> None:
        """Until the charger is online and every connector's plug state is known (bounded by
        ``recovery_wait_s``): a card must not be routed on stale plug facts (defect 5)."""
        wanted = set(self.connector_ids)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.options.recovery_wait_s):
                await self.facts.wait_known(wanted)
        except TimeoutError:
            missing = sorted(wanted - set(self.facts.plugged))
            _LOGGER.warning(
                "recovery: charger state incomplete; using what is known %s",
                kv(
                    waited_s=round(loop.time() - started, 3),
                    online=self.facts.online,
                    plug_unknown=",".join(map(str, missing)) or None,
                ),
            )
            return
        _LOGGER.info("recovery: charger state applied %s", kv(waited_s=round(loop.time() - started, 3)))

    def _close_unapproved(self, rows: Sequence[PaymentRow]) -> None:
        """Card reads journaled without an outcome (the agent stopped in between): closed; an EMV
        one may have been approved by the terminal after the journal saw it (psp-reference §10.4)
        and raises ``possible_orphan_approval`` (masked PAN, amount, time, session reference) in
        the same transaction; it stays a reconciliation discrepancy until cleared."""
        for row in rows:
            emv = row.card_kind != CardKind.RFID.value
            alarm = PossibleOrphanApproval(
                row.connector_id,
                row.payment_id,
                row.masked_pan,
                row.brand,
                row.requested_minor,
                row.started_at,
            )
            try:
                with self.store.atomic():
                    self.journal.close_unapproved(row, orphan_suspected=emv)
                    if emv:
                        self.publisher.alarm(alarm)
            except (JournalError, StoreError, OutboxError) as exc:
                _LOGGER.error("recovery: card read not closed %s", kv(payment=row.payment_id, error=str(exc)))
                continue
            if emv:
                _LOGGER.warning(
                    "recovery: possible orphan approval %s",
                    kv(payment=row.payment_id, pan=row.masked_pan, amount_minor=row.requested_minor),
                )
            else:
                _LOGGER.info("recovery: unanswered card read closed %s", kv(payment=row.payment_id))

    async def _reconcile_when_ready(self) -> None:
        """P6X: void approvals the journal never saw, once, before any new card is read; the terminal
        then holds no approval the journal does not know, so possible orphans are accounted for."""
        while True:
            try:
                await self.terminal.wait_ready(None)
                voided = await reconcile_terminal_sessions(self.journal, self.terminal)
                break
            except DriverError as exc:
                _LOGGER.warning("recovery: List Sessions failed; retrying %s", kv(error=type(exc).__name__))
                await asyncio.sleep(READ_RETRY_S)
        resolution = "voided_by_list_sessions" if voided else "not_on_terminal"
        for row in self.journal.open_orphans():
            try:
                self.clear_orphan(row.payment_id, resolution, note="P6X List Sessions")
            except (KeyError, ValueError, JournalError, StoreError, OutboxError) as exc:
                _LOGGER.error("recovery: orphan not cleared %s", kv(payment=row.payment_id, error=str(exc)))


class _Internal:
    """A message for the dispatcher itself (not an engine event)."""

    def apply(self, runtime: Runtime) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _SetTariff(_Internal):
    """A ``TariffChanged`` whose sender waits for its step's commit (``set_tariff``)."""

    event: TariffChanged[Tariff]
    done: asyncio.Future[bool]

    def apply(self, runtime: Runtime) -> None:
        committed = False
        try:
            committed = runtime.step(self.event)
        finally:
            if not self.done.done():
                self.done.set_result(committed)


@dataclass(frozen=True, slots=True)
class _Prune(_Internal):
    """One batch of the journal retention rule; ``done``: whether another batch is due."""

    done: asyncio.Future[bool]

    def apply(self, runtime: Runtime) -> None:
        more = False
        try:
            more = runtime._prune()
        finally:
            if not self.done.done():
                self.done.set_result(more)


@dataclass(frozen=True, slots=True)
class _RestoreNow(_Internal):
    events: list[Event]

    def apply(self, runtime: Runtime) -> None:
        # counts only the open payments whose restore step committed (the leading ChargerLost and
        # the buffered charger events are no restore); a fresh journal says there was nothing to do
        wanted = restored = 0
        for event in self.events:
            committed = runtime.step(event)
            if isinstance(event, PaymentRestored):
                wanted += 1
                restored += committed
        buffered, runtime._buffered = runtime._buffered, []
        for event in buffered:
            runtime.step(event)
        runtime.recovered.set()
        if wanted:
            counts = {"restored": restored, "failed": wanted - restored} if restored < wanted else {}
            _LOGGER.info(
                "recovery: restore done %s",
                kv(counts or {"restored": restored}, charger_events=len(buffered)),
            )
        else:
            _LOGGER.info("recovery: no open payment to restore %s", kv(charger_events=len(buffered)))


def _is_stored(effect: Effect) -> bool:
    """Whether ``effect`` is written in the step's transaction (journal, outbox)."""
    return isinstance(effect, _STORED)


_STORED: Final = (
    RecordCardRead,
    RecordPaymentDeclined,
    RecordPaymentApproved,
    RecordPaymentIncremented,
    RecordEnergyOn,
    RecordMeter,
    RecordLimitReached,
    RecordStop,
    RecordCommitDecided,
    RecordVoidDecided,
    RecordCommitConfirmed,
    RecordVoidConfirmed,
    RecordSessionEnded,
    RecordPaymentRestored,
    PublishSessionStarted,
    PublishSessionUpdated,
    PublishSessionEnded,
    PublishPaymentAuthorized,
    PublishPaymentPartiallyApproved,
    PublishPaymentDeclined,
    PublishPaymentIncremented,
    PublishPaymentCaptured,
    PublishPaymentVoided,
    IssueReceipt,
    RaiseUndisposedPayment,
)


def _writes(effects: Sequence[Effect], event: Event | TariffChanged[Tariff]) -> bool:
    """Whether the step stores anything (a ``TariffChanged`` always journals the station's tariff)."""
    return isinstance(event, TariffChanged) or any(_is_stored(e) for e in effects)


def _durable(effects: Sequence[Effect], event: Event | TariffChanged[Tariff]) -> bool:
    """Whether the step's transaction needs its fsync: everything but periodic meter values (docs/runtime.md
    "Journal durability")."""
    if isinstance(event, TariffChanged):
        return True
    return not all(isinstance(e, RecordMeter) and e.periodic for e in effects if _is_stored(e))


def _is_charger_event(event: Event | TariffChanged[Tariff]) -> bool:
    return isinstance(event, Plugged | Unplugged | ChargerStatus | MeterReading | ChargerLost | ChargerBack)


def map_charger_event(event: charger.ChargerEvent) -> Event | None:
    match event:
        case charger.PlugChanged(connector_id=cid, plugged=plugged, at=at):
            return Plugged(cid, at) if plugged else Unplugged(cid, at)
        case charger.StatusChanged(connector_id=cid, state=state, fault=fault, at=at):
            return ChargerStatus(cid, at, ChargerState(state.value), fault)
        case charger.MeterReading(connector_id=cid, energy_wh=wh, power_w=w, at=at, retained=retained):
            return MeterReading(cid, at, wh, w, current_a=event.current_a, retained=retained)
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
