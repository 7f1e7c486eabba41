"""Arbitration of the one terminal among all connectors (DESIGN.md §4.2, TERM-3, TERM-5).

The arbiter owns the terminal's card read: what it is for (``scan`` for plug-in/tap-to-start and
tap-to-stop, ``ui_start``/``ui_stop`` for an Apollo UI selection), where a read card goes, and the
queue of Commit/Void/Update requests while the terminal link is down. It never authorizes a card
that owns an active session and never lets a card stop a session it does not own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from transitions import Machine

from statemachines.authorization import start_amount_minor
from statemachines.config import Routing, StartMode, StationConfig, StopMode
from statemachines.connector import ConnectorMachineState
from statemachines.effects import (
    CancelCardRead,
    CancelTimer,
    Commit,
    Effect,
    MessageKey,
    ReadPurpose,
    ShowMessage,
    StartCardRead,
    StartTimer,
    UpdateAuthorization,
    Void,
)
from statemachines.events import (
    AuthorizationResult,
    CardAssigned,
    CardKind,
    CardRead,
    CardReadEnded,
    CardToken,
    StopRequest,
    StopSource,
    TerminalLinkDown,
    TerminalLinkUp,
    TimerFired,
    TimerKind,
    UiAction,
    UiSelection,
)

STATES: tuple[str, ...] = (
    "offline",  # PSP link down: no reads; Commit/Void/Update are queued
    "idle",  # no read in progress
    "reading",  # Start Session sent; waiting for a card
    "holding",  # card read, waiting for the driver's connector selection (decision deadline running)
    "authorizing",  # Auth Session in flight for one connector
)
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "link_up", "source": "offline", "dest": "idle"},
    {"trigger": "link_down", "source": ["idle", "reading", "holding", "authorizing"], "dest": "offline"},
    {"trigger": "start_read", "source": "idle", "dest": "reading"},
    {"trigger": "end_read", "source": ["reading", "holding"], "dest": "idle"},
    {"trigger": "hold", "source": "reading", "dest": "holding"},
    {"trigger": "authorize", "source": ["reading", "holding"], "dest": "authorizing"},
    {"trigger": "authorized", "source": "authorizing", "dest": "idle"},
]

SCAN, UI_START, UI_STOP = ReadPurpose.SCAN, ReadPurpose.UI_START, ReadPurpose.UI_STOP
FREE = (ConnectorMachineState.AVAILABLE, ConnectorMachineState.AWAITING_CARD)
CardRoute = CardAssigned | StopRequest | AuthorizationResult


@dataclass(frozen=True, slots=True)
class ConnectorView:
    """What the arbiter needs to know of a connector (taken after every step)."""

    connector_id: int
    state: ConnectorMachineState
    operative: bool
    plugged_at: datetime | None = None
    card_token: str | None = None  # card owning the connector's session, if any


@dataclass(frozen=True, slots=True)
class ReadRequest:
    purpose: ReadPurpose
    connector_id: int | None
    amount_minor: int


class TerminalArbiter:
    state: str  # maintained by ``transitions``

    def __init__(self, config: StationConfig, *, online: bool = True) -> None:
        self._cfg = config
        self._reference = 0  # Start Session reference numbers, deterministic
        self.read: ReadRequest | None = None
        self.authorizing_connector: int | None = None
        self._auth_in_flight: set[int] = set()  # Auth Sessions sent and not yet answered
        self._held: CardToken | None = None
        self._ui_request: ReadRequest | None = None
        self._queue: list[Commit | Void | UpdateAuthorization] = []
        self._out: list[Effect] = []
        self._routes: list[CardRoute] = []
        self._machine = Machine(
            model=self,
            states=list(STATES),
            transitions=TRANSITIONS,
            initial="idle" if online else "offline",
            auto_transitions=False,
            queued=True,
            ignore_invalid_triggers=True,
        )

    @property
    def read_in_progress(self) -> bool:
        return self.state in ("reading", "holding", "authorizing")

    def _fire(self, trigger: str) -> bool:
        return self._machine.events[trigger].trigger(self)

    # --- events --------------------------------------------------------------------------------------

    def handle(self, event: Any, views: Sequence[ConnectorView]) -> tuple[list[Effect], list[CardRoute]]:
        """Returns the terminal effects and the events to hand to connectors, in order."""
        self._out, self._routes = [], []
        match event:
            case TerminalLinkUp():
                if self._fire("link_up"):
                    queued, self._queue = self._queue, []
                    self._out.extend(queued)
            case TerminalLinkDown(at=at):
                self._on_link_down(at)
            case CardRead():
                self._on_card(event, views)
            case CardReadEnded():
                if self.state == "holding":
                    self._emit(CancelTimer(TimerKind.CARD_DECISION, None))
                self._end_read()
            case UiSelection():
                self._on_ui(event, views)
            case TimerFired(kind=TimerKind.CARD_DECISION) if self.state == "holding":
                self._emit(CancelCardRead(), ShowMessage(None, MessageKey.SELECTION_TIMEOUT))
                self._end_read()
            case _:
                pass
        return self._out, self._routes

    def restart_read(self) -> list[Effect]:
        """A new tariff while a read waits for a card: cancel it, so that :meth:`sync` starts it
        again with the new price on the screen (START-8: the driver pays the price shown). A card
        already read keeps the price it was read under."""
        if self.state != "reading":
            return []
        self._out = [CancelCardRead()]
        self._end_read()
        return self._out

    def authorization_done(self, connector_id: int) -> None:
        self._auth_in_flight.discard(connector_id)
        if self.state == "authorizing" and self.authorizing_connector == connector_id:
            self.authorizing_connector = None
            self._fire("authorized")

    def pass_settlements(self, effects: list[Effect]) -> list[Effect]:
        """TERM-5, ERR-3: Commit/Void/Update go out at once while the link is up (also during a
        read, psp-reference §3.3) and are queued, de-duplicated, while it is down."""
        if self.state != "offline":
            return effects
        kept: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Commit | Void | UpdateAuthorization):
                if effect not in self._queue:
                    self._queue.append(effect)
            else:
                kept.append(effect)
        return kept

    def sync(self, views: Sequence[ConnectorView]) -> list[Effect]:
        """Keep the read in line with what the connectors need (always scanning, START-1/2)."""
        self._out = []
        if (
            self.state == "reading"
            and self.read is not None
            and not self._read_still_wanted(self.read, views)
        ):
            self._emit(CancelCardRead())
            self._end_read()
        # no new read while an Auth Session of ours may still be on the terminal (its link went down
        # and came back meanwhile): the terminal runs one transaction at a time
        if self.state == "idle" and not self._auth_in_flight:
            request = self._ui_request
            self._ui_request = None
            if request is not None and not self._read_still_wanted(request, views):
                request = None
            if request is None and self._scan_wanted(views):
                request = ReadRequest(SCAN, None, start_amount_minor(self._cfg.authorization))
            if request is not None:
                self._start_read(request)
        return self._out

    # --- helpers -------------------------------------------------------------------------------------

    def _emit(self, *effects: Effect) -> None:
        self._out.extend(effects)

    def _start_read(self, request: ReadRequest) -> None:
        self._reference += 1
        self.read = request
        self._emit(
            ShowMessage(request.connector_id, MessageKey.TARIFF),  # START-8: price shown before payment
            StartCardRead(request.amount_minor, self._reference, request.purpose, request.connector_id),
        )
        self._fire("start_read")

    def _end_read(self) -> None:
        self.read = None
        self._held = None
        self._fire("end_read")

    def _on_link_down(self, at: datetime) -> None:
        if self.state == "holding":
            self._emit(CancelTimer(TimerKind.CARD_DECISION, None))
        # An Auth Session in flight is not failed here: the link may only be re-set up (a command
        # timed out, Reset + setup) and its answer still come — an approval the engine would then
        # ignore is an orphan hold (found by the fuzzer, seed 19). The connector keeps waiting for
        # the outcome its actor always posts (FAILED when the driver gives up, psp-reference §10.4).
        self.authorizing_connector = None
        self.read, self._held, self._ui_request = None, None, None
        self._fire("link_down")

    def _scan_wanted(self, views: Sequence[ConnectorView]) -> bool:
        starts, stops = self._cfg.start_modes, self._cfg.stop_modes
        if any(v.state is ConnectorMachineState.AWAITING_CARD and v.operative for v in views) and (
            StartMode.PLUG_IN in starts or StartMode.TAP in starts
        ):
            return True
        if StartMode.TAP in starts and any(
            v.state is ConnectorMachineState.AVAILABLE and v.operative for v in views
        ):
            return True
        return StopMode.TAP in stops and any(
            v.card_token is not None and v.state is not ConnectorMachineState.AUTHORIZING for v in views
        )

    def _read_still_wanted(self, read: ReadRequest, views: Sequence[ConnectorView]) -> bool:
        if read.purpose == SCAN:
            return self._scan_wanted(views)
        view = next((v for v in views if v.connector_id == read.connector_id), None)
        if view is None:
            return False
        if read.purpose == UI_START:
            return view.state in FREE and view.operative
        return view.card_token is not None

    # --- card routing (DESIGN.md §4.2) -----------------------------------------------------------------

    def _on_card(self, event: CardRead, views: Sequence[ConnectorView]) -> None:
        if self.state != "reading" or self.read is None:
            if self.state == "idle":
                self._emit(CancelCardRead())  # a read we did not ask for: answer it (TERM-3)
            return
        card, read = event.card, self.read
        owner = next((v for v in views if v.card_token == card.token), None)
        if read.purpose == UI_STOP:  # STOP-4: the selected session's own card only
            if (
                owner is not None
                and owner.connector_id == read.connector_id
                and owner.state is not ConnectorMachineState.AUTHORIZING
            ):
                self._release()
                self._routes.append(StopRequest(owner.connector_id, event.at, StopSource.UI))
            else:
                self._release(ShowMessage(read.connector_id, MessageKey.CARD_MISMATCH))
            return
        if owner is not None:  # STOP-1 tap-to-stop first; never authorize it again
            if StopMode.TAP in self._cfg.stop_modes and owner.state is not ConnectorMachineState.AUTHORIZING:
                self._release()
                self._routes.append(StopRequest(owner.connector_id, event.at, StopSource.TAP))
            else:
                self._release(ShowMessage(owner.connector_id, MessageKey.CARD_IN_USE))
            return
        if read.purpose == UI_START:
            target = next((v for v in views if v.connector_id == read.connector_id), None)
            if target is not None and target.state in FREE and target.operative:
                self._assign(target.connector_id, card, event.at)
            else:
                self._release(ShowMessage(read.connector_id, MessageKey.CONNECTOR_UNAVAILABLE))
            return
        waiting = sorted(
            (v for v in views if v.state is ConnectorMachineState.AWAITING_CARD and v.operative),
            key=lambda v: (v.plugged_at or event.at, v.connector_id),
        )
        ui_routing = self._cfg.routing is Routing.UI_SELECTION and self._cfg.terminal.supports_ui
        if waiting:
            if len(waiting) == 1 or not ui_routing:
                self._assign(waiting[0].connector_id, card, event.at)
            else:
                self._hold(card, [v.connector_id for v in waiting])
            return
        if StartMode.TAP in self._cfg.start_modes:  # tap first: authorized session waits for a plug-in
            free = [
                v.connector_id for v in views if v.state is ConnectorMachineState.AVAILABLE and v.operative
            ]
            if len(free) == 1:
                self._assign(free[0], card, event.at)
                return
            if free and ui_routing:
                self._hold(card, free)
                return
            if free:  # ambiguous without plug-in or selection (payter-ev-guide §7)
                self._release(ShowMessage(None, MessageKey.PLUG_IN_FIRST))
                return
        self._release(ShowMessage(None, MessageKey.CARD_NOT_ACCEPTED))

    def _release(self, *feedback: Effect) -> None:
        self._emit(CancelCardRead(), *feedback)
        self._end_read()

    def _assign(self, connector_id: int, card: CardToken, at: datetime) -> None:
        read = self.read
        assert read is not None
        if self.state == "holding":
            self._emit(CancelTimer(TimerKind.CARD_DECISION, None))
        self._routes.append(CardAssigned(connector_id, at, card, read.amount_minor))
        if card.kind is CardKind.RFID:  # the backend decides; release the terminal (psp-reference §7.6)
            self._emit(CancelCardRead())
            self._end_read()
        else:
            self.authorizing_connector = connector_id
            self._auth_in_flight.add(connector_id)
            self.read = None
            self._held = None
            self._fire("authorize")

    def _hold(self, card: CardToken, choices: list[int]) -> None:
        """Wait for the driver's connector selection, within the Card Read deadline (TERM-3)."""
        self._held = card
        self._emit(
            StartTimer(TimerKind.CARD_DECISION, self._cfg.card_decision_s, None),
            ShowMessage(None, MessageKey.SELECT_CONNECTOR, connectors=tuple(choices)),
        )
        self._fire("hold")

    def _on_ui(self, event: UiSelection, views: Sequence[ConnectorView]) -> None:
        if not self._cfg.terminal.supports_ui:
            return
        view = next((v for v in views if v.connector_id == event.connector_id), None)
        if event.action is UiAction.START:
            usable = view is not None and view.state in FREE and view.operative
            if StartMode.UI not in self._cfg.start_modes or not usable:
                self._emit(ShowMessage(event.connector_id, MessageKey.CONNECTOR_UNAVAILABLE))  # START-3
                return
            if self.state == "holding" and self._held is not None:
                self._assign(event.connector_id, self._held, event.at)
                return
            amount = start_amount_minor(self._cfg.authorization, event.cap_minor)
            request = ReadRequest(UI_START, event.connector_id, amount)
        else:
            if StopMode.UI not in self._cfg.stop_modes or view is None or view.card_token is None:
                self._emit(ShowMessage(event.connector_id, MessageKey.NO_SESSION))
                return
            request = ReadRequest(UI_STOP, event.connector_id, 0)
        if self.state == "reading":
            self._emit(CancelCardRead())
            self._end_read()
        if self.state == "idle":
            self._ui_request = request  # started by sync() after this step
        else:
            self._emit(ShowMessage(event.connector_id, MessageKey.TERMINAL_BUSY))
