"""The connector machine (DESIGN.md §4.1): one per connector, pure, driven by typed events.

``ConnectorMachine.handle(event)`` returns the effects of that event, in execution order. The
``transitions`` machine is a rulebook used synchronously (``queued=True``, no auto transitions):
conditions are pure predicates over the machine's facts, callbacks only append effects and update
the session/payment records. Time and meter values come in events; nothing reads a clock.

A *session* runs from plug-in (or authorization first) to the end of energy delivery; a *payment*
from authorization to a confirmed Commit/Void (STOP-7). Both live in this machine because the
session is priced and capped by its payment (AMT-2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic

from transitions import Machine

from statemachines.authorization import (
    AuthorizationStrategy,
    capture_amount_minor,
    increment_total_minor,
    must_stop_for_cap,
    partial_cap_minor,
)
from statemachines.config import ConnectorConfig, OfflinePolicy, StartMode, StationConfig, StopMode
from statemachines.effects import (
    Authorize,
    CancelTimer,
    Commit,
    DisableEnergy,
    Effect,
    EnableEnergy,
    IssueReceipt,
    LimitKind,
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
    StartTimer,
    UpdateAuthorization,
    UpdateReason,
    Void,
)
from statemachines.events import (
    AuthorizationOutcome,
    AuthorizationResult,
    BackendAuthorizationResult,
    BackendAuthorizationStatus,
    CardAssigned,
    CardKind,
    CardToken,
    ChargerBack,
    ChargerLost,
    ChargerState,
    ChargerStatus,
    CommitResult,
    DeclineOutcome,
    Disposal,
    MeterReading,
    P,
    PaymentMethod,
    PaymentRestored,
    Plugged,
    RemoteStart,
    RestoreResolution,
    SetAvailability,
    SettlementOutcome,
    StopRequest,
    StopSource,
    TariffChanged,
    TerminalLinkDown,
    TerminalLinkUp,
    TimerFired,
    TimerKind,
    Unplugged,
    UpdateAuthorizationResult,
    UpdateOutcome,
    VoidResult,
)
from statemachines.pricing import Usage, UsageKind, seconds_until_cost_reaches


class ConnectorMachineState(StrEnum):
    """The connector machine's states (DESIGN.md §4.1); the values are the upstream contract's."""

    UNAVAILABLE = "unavailable"  # disabled, faulted or charger lost
    AVAILABLE = "available"  # free, no vehicle
    AWAITING_CARD = "awaiting_card"  # plugged, no authorization; the terminal reads for this connector
    AUTHORIZING = "authorizing"  # card handed to the terminal (Auth Session) or the backend (RFID)
    AWAITING_PLUG = "awaiting_plug"  # authorized first; plug-in timeout → void
    CHARGING = "charging"  # energy enabled
    SUSPENDED_EV = "suspended_ev"  # energy enabled, the EV paused
    SUSPENDED_EVSE = "suspended_evse"  # energy enabled, the charger paused
    STOPPING = "stopping"  # energy off requested, waiting for the final meter value
    IDLE_FEE = "idle_fee"  # charging over, vehicle still plugged, idle fee running, commit deferred
    SETTLING = "settling"  # Commit or Void in flight, retried until confirmed
    FINISHING = "finishing"  # session over, vehicle still plugged; waits for unplug


# the rulebook below names states by their values (the ``transitions`` library keeps strings)
STATES: tuple[str, ...] = tuple(state.value for state in ConnectorMachineState)
ENERGY_STATES: frozenset[ConnectorMachineState] = frozenset(
    {ConnectorMachineState.CHARGING, ConnectorMachineState.SUSPENDED_EV, ConnectorMachineState.SUSPENDED_EVSE}
)
FREE_STATES = ["available", "awaiting_card"]
_ENERGY = sorted(state.value for state in ENERGY_STATES)

# Each trigger's transitions are tried in order; the first whose conditions hold is taken.
TRANSITIONS: list[dict[str, Any]] = [
    # vehicle
    {"trigger": "plug", "source": "available", "dest": "awaiting_card"},
    {
        "trigger": "plug",
        "source": "awaiting_plug",
        "dest": "charging",
        "conditions": "_operative",
        "after": "_energize",
    },
    {"trigger": "unplug", "source": ["awaiting_card", "finishing"], "dest": "available"},
    {"trigger": "unplug", "source": _ENERGY, "dest": "stopping", "after": "_begin_stop"},
    {"trigger": "unplug", "source": "idle_fee", "dest": "settling", "after": "_settle"},
    # authorization
    {
        "trigger": "assign_card",
        "source": FREE_STATES,
        "dest": "authorizing",
        "after": "_request_authorization",
    },
    {
        "trigger": "approve",
        "source": "authorizing",
        "dest": "settling",
        "conditions": "_has_terminal_payment",
        "unless": "_operative",
        "after": "_settle",
    },
    {
        "trigger": "approve",
        "source": "authorizing",
        "dest": "unavailable",
        "unless": "_operative",
        "after": "_end_unpaid",
    },
    {
        "trigger": "approve",
        "source": "authorizing",
        "dest": "charging",
        "conditions": "_plugged",
        "after": "_energize",
    },
    {"trigger": "approve", "source": "authorizing", "dest": "awaiting_plug", "after": "_await_plug"},
    {"trigger": "reject", "source": "authorizing", "dest": "unavailable", "unless": "_operative"},
    {"trigger": "reject", "source": "authorizing", "dest": "awaiting_card", "conditions": "_plugged"},
    {"trigger": "reject", "source": "authorizing", "dest": "available"},
    {
        "trigger": "start_unpaid",
        "source": FREE_STATES,
        "dest": "charging",
        "conditions": ["_plugged", "_operative"],
        "after": "_energize",
    },
    {
        "trigger": "start_unpaid",
        "source": "available",
        "dest": "awaiting_plug",
        "conditions": "_operative",
        "after": "_await_plug",
    },
    # energy flow as the charger reports it
    {"trigger": "ev_suspended", "source": ["charging", "suspended_evse"], "dest": "suspended_ev"},
    {"trigger": "evse_suspended", "source": ["charging", "suspended_ev"], "dest": "suspended_evse"},
    {"trigger": "ev_charging", "source": ["suspended_ev", "suspended_evse"], "dest": "charging"},
    # stop
    {"trigger": "stop", "source": _ENERGY, "dest": "stopping", "after": "_begin_stop"},
    {
        "trigger": "stop",
        "source": "awaiting_plug",
        "dest": "settling",
        "conditions": "_has_terminal_payment",
        "after": "_settle",
    },
    {"trigger": "stop", "source": "awaiting_plug", "dest": "available", "after": "_end_unpaid"},
    {
        "trigger": "conclude",
        "source": ["stopping", "idle_fee"],
        "dest": "settling",
        "conditions": "_has_terminal_payment",
        "unless": "_idle_fee_applies",
        "after": "_settle",
    },
    {
        "trigger": "conclude",
        "source": "stopping",
        "dest": "idle_fee",
        "conditions": "_idle_fee_applies",
        "after": "_enter_idle_fee",
    },
    {
        "trigger": "conclude",
        "source": "stopping",
        "dest": "unavailable",
        "unless": "_operative",
        "after": "_end_unpaid",
    },
    {
        "trigger": "conclude",
        "source": "stopping",
        "dest": "finishing",
        "conditions": "_plugged",
        "after": "_end_unpaid",
    },
    {"trigger": "conclude", "source": "stopping", "dest": "available", "after": "_end_unpaid"},
    {"trigger": "settled", "source": "settling", "dest": "unavailable", "unless": "_operative"},
    {"trigger": "settled", "source": "settling", "dest": "finishing", "conditions": "_plugged"},
    {"trigger": "settled", "source": "settling", "dest": "available"},
    # availability (fault, charger lost, operator)
    {
        "trigger": "go_unavailable",
        "source": ["available", "awaiting_card", "finishing"],
        "dest": "unavailable",
    },
    {
        "trigger": "recover",
        "source": "unavailable",
        "dest": "awaiting_card",
        "conditions": ["_operative", "_plugged"],
    },
    {"trigger": "recover", "source": "unavailable", "dest": "available", "conditions": "_operative"},
    # restart recovery (ERR-5)
    {
        "trigger": "restore",
        "source": ["unavailable", *FREE_STATES],
        "dest": "settling",
        "conditions": "_restored_disposal",
        "after": "_resume_disposal",
    },
    {
        "trigger": "restore",
        "source": ["unavailable", *FREE_STATES],
        "dest": "charging",
        "conditions": ["_plugged", "_operative"],
        "after": "_energize",
    },
    {
        "trigger": "restore",
        "source": ["unavailable", *FREE_STATES],
        "dest": "settling",
        "conditions": "_has_terminal_payment",
        "after": "_settle",
    },
    {
        "trigger": "restore",
        "source": ["unavailable", *FREE_STATES],
        "dest": "unavailable",
        "unless": "_operative",
        "after": "_end_unpaid",
    },
    {
        "trigger": "restore",
        "source": ["unavailable", *FREE_STATES],
        "dest": "available",
        "after": "_end_unpaid",
    },
]


@dataclass(slots=True)
class Payment:
    """A payment from authorization to settlement. ``authorized_minor`` None = no limit."""

    method: PaymentMethod
    session_id: str | None = None  # terminal session id (EMV only)
    card: CardToken | None = None
    requested_minor: int = 0
    authorized_minor: int | None = None
    increment_pending: bool = False
    increments_exhausted: bool = False
    settle_after_increment: bool = False  # the session ended while an increment was in flight
    disposal: Disposal | None = None
    final_minor: int = 0
    attempts: int = 0


@dataclass(slots=True)
class Session:
    ref: str
    usage: Usage = field(default_factory=Usage)
    last_at: datetime | None = None
    last_meter_wh: int | None = None
    power_w: float | None = None
    stop_reason: StopSource | None = None
    energy_on: bool = False
    started: bool = False  # session.started published (energy was enabled once)


class ConnectorMachine(Generic[P]):
    """One connector. Pre: events of one connector are handled one at a time, in arrival order.

    ``P`` is the pricer type (``agent.money.tariff.Tariff`` in the agent): :attr:`pricer` prices the
    current session; a :class:`TariffChanged` while a session runs is kept pending and becomes
    :attr:`pricer` when the connector's next session begins. A session restored after a restart
    (:class:`PaymentRestored` with a ``pricer``) is priced by that tariff in the same way, the
    connector's tariff until then pending.
    """

    _fsm_state: str  # maintained by ``transitions`` (see :attr:`state`)

    def __init__(self, connector: ConnectorConfig, station: StationConfig, pricer: P) -> None:
        self.connector_id = connector.connector_id
        self._cfg = connector
        self._station = station
        self._policy = station.authorization
        self._pricer: P = pricer
        self._pending_pricer: P | None = None
        # facts
        self.plugged = False
        self.plugged_at: datetime | None = None
        self.charger_online = True
        self.faulted = False
        self.enabled = True
        self.terminal_online = True
        self.meter_wh: int | None = None
        # the last meter value was taken with no energy flowing since: a valid start register for
        # the next session (one taken while energy flowed may be behind the register by the energy
        # delivered after it, which belongs to the previous session). At rest means: live (not a
        # retained, possibly old, message), no session energized, the charger not reporting
        # `charging` and no power. The charger's own word counts, not only ours: a charger that
        # lost contact may have gone on delivering (fuzzer seeds 117, 138).
        self._meter_at_rest = False
        self._charger_charging = False  # the charger's last status was `charging` (or unknown)
        # records
        self.session: Session | None = None
        self.payment: Payment | None = None
        self._pending_card: CardToken | None = None
        self._pending_amount_minor = 0
        self._restored: PaymentRestored[P] | None = None
        self._plug_timer_running = False
        self._at: datetime | None = None
        self._out: list[Effect] = []
        # the running cost of (pricer, usage): Usage is immutable, so one tariff evaluation per
        # change of usage serves the meter record, the limit check and every snapshot after it
        self._cost_memo: tuple[Usage, P, int] | None = None
        self._machine = Machine(
            model=self,
            states=list(STATES),
            transitions=TRANSITIONS,
            initial=ConnectorMachineState.AVAILABLE.value,
            auto_transitions=False,
            queued=True,
            ignore_invalid_triggers=True,
            model_attribute="_fsm_state",
        )

    # --- public view ---------------------------------------------------------------------------

    @property
    def state(self) -> ConnectorMachineState:
        return ConnectorMachineState(self._fsm_state)

    @property
    def pricer(self) -> P:
        """The tariff pricing the current (or, between sessions, the last) session."""
        return self._pricer

    @property
    def pending_pricer(self) -> P | None:
        """A tariff set while a session runs; it prices the connector's next session."""
        return self._pending_pricer

    @property
    def energy_on(self) -> bool:
        return self.session is not None and self.session.energy_on

    @property
    def running_cost_minor(self) -> int:
        session = self.session
        if session is None:
            return 0
        memo = self._cost_memo
        if memo is not None and memo[0] is session.usage and memo[1] is self._pricer:
            return memo[2]
        cost = self._pricer.cost_minor(session.usage)
        self._cost_memo = (session.usage, self._pricer, cost)
        return cost

    @property
    def authorized_minor(self) -> int | None:
        return self.payment.authorized_minor if self.payment else None

    @property
    def card(self) -> CardToken | None:
        """The card owning this connector's session (or being authorized for it)."""
        if self.state is ConnectorMachineState.AUTHORIZING:
            return self._pending_card
        if self.payment is not None and self.state not in (
            ConnectorMachineState.FINISHING,
            ConnectorMachineState.AVAILABLE,
            ConnectorMachineState.UNAVAILABLE,
        ):
            return self.payment.card
        return None

    @property
    def operative(self) -> bool:
        return self.charger_online and not self.faulted and self.enabled

    @property
    def session_active(self) -> bool:
        return self.state in ENERGY_STATES or self.state in (
            ConnectorMachineState.AWAITING_PLUG,
            ConnectorMachineState.STOPPING,
            ConnectorMachineState.IDLE_FEE,
        )

    # --- event entry -----------------------------------------------------------------------------

    def handle(self, event: Any) -> list[Effect]:
        self._out = []
        self._at = getattr(event, "at", None)
        self._dispatch(event)
        out, self._out = self._out, []
        return out

    def _fire(self, trigger: str) -> bool:
        return bool(self._machine.events[trigger].trigger(self))

    def _dispatch(self, event: Any) -> None:
        match event:
            case Plugged(at=at):
                if not self.plugged:  # a re-delivered plug-in keeps the first one's time (routing)
                    self.plugged_at = at
                self.plugged = True
                self._fire("plug")
                self._maybe_offline_start()
            case Unplugged():
                self.plugged, self.plugged_at = False, None
                if self.state is ConnectorMachineState.IDLE_FEE:
                    self._accumulate(event.at, None, UsageKind.IDLE)
                self._stop_reason(StopSource.UNPLUG)
                self._fire("unplug")
            case ChargerStatus():
                self._on_charger_status(event)
            case MeterReading():
                self._on_meter(event)
            case ChargerLost():
                self._on_charger_lost()
            case ChargerBack():
                self.charger_online = True
                self._fire("recover")
            case SetAvailability(available=available):
                self.enabled = available
                self._fire("recover" if available else "go_unavailable")
            case TerminalLinkDown():
                self.terminal_online = False
                self._maybe_offline_start()
            case TerminalLinkUp():
                self.terminal_online = True
            case CardAssigned():
                self._pending_card, self._pending_amount_minor = event.card, event.amount_minor
                self._fire("assign_card")
            case AuthorizationResult():
                self._on_authorization(event)
            case BackendAuthorizationResult():
                self._on_backend_authorization(event)
            case RemoteStart():
                self._on_remote_start(event)
            case StopRequest():
                self._on_stop_request(event)
            case TimerFired():
                self._on_timer(event)
            case CommitResult() | VoidResult():
                self._on_settlement_result(event)
            case UpdateAuthorizationResult():
                self._on_update_result(event)
            case PaymentRestored():
                self._on_restored(event)
            case TariffChanged(pricer=pricer):
                self._on_tariff(pricer)
            case _:
                pass

    def _on_tariff(self, pricer: P) -> None:
        """START-8 / STOP-8: a running session keeps the tariff it started with."""
        if self.session is None:
            self._pricer, self._pending_pricer = pricer, None
        else:
            self._pending_pricer = pricer

    # --- conditions (pure) -----------------------------------------------------------------------

    def _plugged(self) -> bool:
        return self.plugged

    def _operative(self) -> bool:
        return self.operative

    def _has_terminal_payment(self) -> bool:
        return self.payment is not None and self.payment.session_id is not None

    def _idle_fee_applies(self) -> bool:
        return (
            self._cfg.idle_fee_enabled
            and self.plugged
            and self.state is ConnectorMachineState.STOPPING
            and self._has_terminal_payment()
            and (self.session is None or self.session.stop_reason is not StopSource.CHARGER_LOST)
        )

    def _restored_disposal(self) -> bool:
        return self._restored is not None and self._restored.payment.disposal is not None

    # --- helpers -----------------------------------------------------------------------------------

    def _emit(self, *effects: Effect) -> None:
        self._out.extend(effects)

    def _ref(self) -> str:
        return self.session.ref if self.session else ""

    def _usage(self) -> Usage:
        return self.session.usage if self.session is not None else Usage()

    def _new_session(self, at: datetime) -> None:
        if self._pending_pricer is not None:  # a tariff set during the previous session applies now
            self._pricer, self._pending_pricer = self._pending_pricer, None
        ref = f"{self.connector_id}-{at.strftime('%Y%m%dT%H%M%S%f')}"
        self.session = Session(ref=ref, last_at=at, last_meter_wh=self.meter_wh)

    def _stop_reason(self, reason: StopSource) -> None:
        if self.session is not None and self.session.stop_reason is None and self.session_active:
            self.session.stop_reason = reason

    def _session_cost_minor(self) -> int:
        """What the session costs at its end: the tariff's price, or 0 when it never started
        (energy was never enabled: nothing was delivered, not even a flat fee is owed)."""
        session = self.session
        return self.running_cost_minor if session is not None and session.started else 0

    def _session_energy_wh(self) -> int:
        return self.session.usage.energy_wh if self.session else 0

    def _accumulate(
        self,
        at: datetime,
        meter_wh: int | None,
        kind: UsageKind,
        *,
        power_w: float | None = None,
        current_a: float | None = None,
    ) -> None:
        """Add the stretch since the last reading; ``power_w``/``current_a``: what the reading that
        ends it reports (``None``: not reported; the tariff then uses the stretch's average power)."""
        session = self.session
        if session is None:
            return
        start = session.last_at or at
        end = at if at > start else start
        delta_wh = 0
        if meter_wh is not None:
            if session.last_meter_wh is not None:
                delta_wh = max(0, meter_wh - session.last_meter_wh)  # a meter reset counts as 0
            session.last_meter_wh = meter_wh
        session.usage = self._pricer.accumulate(
            session.usage, start, end, delta_wh, kind, power_w=power_w, current_a=current_a
        )
        session.last_at = end

    # --- callbacks: authorization ---------------------------------------------------------------------

    def _request_authorization(self) -> None:
        card = self._pending_card
        assert card is not None
        assert self._at is not None
        self._new_session(self._at)
        self._emit(RecordCardRead(self.connector_id, self._ref(), card, self._pending_amount_minor))
        if card.kind is CardKind.RFID:
            self._emit(RequestBackendAuthorization(self.connector_id, card))
        else:
            self._emit(Authorize(self.connector_id, self._pending_amount_minor))

    def _decline(self, outcome: DeclineOutcome, reason: str | None, message: ShowMessage) -> None:
        """The card got no payment: journal it, tell the back office and the driver; no session."""
        ref = self._ref()
        self._emit(
            RecordPaymentDeclined(self.connector_id, ref, outcome, reason),
            PublishPaymentDeclined(self.connector_id, ref, outcome, reason),
            IssueReceipt(self.connector_id, ref, declined=outcome, decline_reason=reason),
            message,
        )
        self._pending_card = None
        self.session = None
        self._fire("reject")

    def _on_authorization(self, event: AuthorizationResult) -> None:
        card = self._pending_card
        if (
            self.state is not ConnectorMachineState.AUTHORIZING
            or card is None
            or card.kind is not CardKind.EMV
        ):
            return
        approved = event.outcome in (AuthorizationOutcome.APPROVED, AuthorizationOutcome.PARTIALLY_APPROVED)
        if not approved or event.session_id is None:
            outcome = _DECLINE_OUTCOMES.get(event.outcome, DeclineOutcome.FAILED)
            self._decline(outcome, event.reason, ShowMessage(self.connector_id, MessageKey.DECLINED))
            self._maybe_offline_start()
            return
        partial = event.outcome is AuthorizationOutcome.PARTIALLY_APPROVED
        learned_brand = event.brand if event.brand and not card.brand else None
        if learned_brand is not None:  # RCPT-1: the approval names the brand the card read did not
            card = dataclasses.replace(card, brand=learned_brand)
        authorized = self._pending_amount_minor
        if partial:  # AMT-3
            authorized = partial_cap_minor(self._pending_amount_minor, event.authorized_minor or 0)
        self.payment = Payment(
            method=PaymentMethod.EMV,
            session_id=event.session_id,
            card=card,
            requested_minor=self._pending_amount_minor,
            authorized_minor=authorized,
        )
        ref = self._ref()
        self._emit(
            RecordPaymentApproved(
                self.connector_id,
                ref,
                PaymentMethod.EMV,
                event.session_id,
                authorized,
                partial=partial,
                host_reference=event.host_reference,
                card_brand=learned_brand,
            )
        )
        if partial:
            self._emit(PublishPaymentPartiallyApproved(self.connector_id, ref, event.session_id, authorized))
        else:
            self._emit(
                PublishPaymentAuthorized(
                    self.connector_id, ref, PaymentMethod.EMV, event.session_id, authorized
                )
            )
        self._fire("approve")

    def _on_backend_authorization(self, event: BackendAuthorizationResult) -> None:
        card = self._pending_card
        if self.state is not ConnectorMachineState.AUTHORIZING or card is None or card.token != event.token:
            return
        if event.status is not BackendAuthorizationStatus.ACCEPTED:
            outcome = DeclineOutcome(event.status.value)
            message = ShowMessage(self.connector_id, MessageKey.RFID_REJECTED, status=event.status.value)
            self._decline(outcome, None, message)
            return
        self.payment = Payment(method=PaymentMethod.RFID, card=card, authorized_minor=event.limit_minor)
        ref = self._ref()
        self._emit(
            RecordPaymentApproved(self.connector_id, ref, PaymentMethod.RFID, None, event.limit_minor),
            PublishPaymentAuthorized(self.connector_id, ref, PaymentMethod.RFID, None, event.limit_minor),
            ShowMessage(self.connector_id, MessageKey.RFID_ACCEPTED),
        )
        self._fire("approve")

    def _on_remote_start(self, event: RemoteStart) -> None:
        if StartMode.REMOTE not in self._station.start_modes or self.state not in FREE_STATES:
            return
        token = CardToken(CardKind.RFID, event.id_token)
        self._start_unpaid(event.at, PaymentMethod.REMOTE, token, event.limit_minor)

    def _maybe_offline_start(self) -> None:
        """ERR-3: while the terminal is offline a plugged vehicle gets free vend or is refused."""
        if (
            self.state is not ConnectorMachineState.AWAITING_CARD
            or self.terminal_online
            or not self.operative
        ):
            return
        if self._station.offline_policy is OfflinePolicy.FREE_VEND:
            assert self._at is not None
            self._start_unpaid(self._at, PaymentMethod.FREE_VEND, None, None)
        else:
            self._emit(ShowMessage(self.connector_id, MessageKey.TERMINAL_OFFLINE))

    def _start_unpaid(
        self, at: datetime, method: PaymentMethod, card: CardToken | None, limit: int | None
    ) -> None:
        if not self.operative:
            return
        self._new_session(at)
        self.payment = Payment(method=method, card=card, authorized_minor=limit)
        self._emit(RecordPaymentApproved(self.connector_id, self._ref(), method, None, limit, card=card))
        self._fire("start_unpaid")

    def _await_plug(self) -> None:
        self._plug_timer_running = True
        self._emit(
            StartTimer(TimerKind.PLUG_IN, self._station.plug_in_timeout_s, self.connector_id),
            ShowMessage(self.connector_id, MessageKey.PLUG_IN),
        )

    def _energize(self) -> None:
        """Write-ahead: energy_on is journaled before EnableEnergy (DESIGN.md §2). The first time
        in a session this is the session's start (``session.started``, exactly once)."""
        session, payment = self.session, self.payment
        assert session is not None
        assert payment is not None
        assert self._at is not None
        if self._restored is None:
            # Only a reading taken while no energy flowed is a fair start register; otherwise
            # (None) the next reading is the start, so no earlier session's energy is billed.
            start_wh = self.meter_wh if self._meter_at_rest else None
            session.last_at = self._at
            session.last_meter_wh = start_wh
        else:
            start_wh = session.last_meter_wh  # ERR-5: continue from the journaled register
        session.energy_on = True
        self._meter_at_rest = False
        first = not session.started
        session.started = True
        self._cancel_plug_timer()
        ref = self._ref()
        self._emit(
            RecordEnergyOn(self.connector_id, ref, payment.method, start_wh, first, session.usage),
            EnableEnergy(self.connector_id),
        )
        if first:
            self._emit(PublishSessionStarted(self.connector_id, ref, payment.method, start_wh))
        self._emit(ShowMessage(self.connector_id, MessageKey.CHARGING))
        self._pending_card = None

    def _cancel_plug_timer(self) -> None:
        if self._plug_timer_running:
            self._plug_timer_running = False
            self._emit(CancelTimer(TimerKind.PLUG_IN, self.connector_id))

    # --- energy flow, meter, limits ------------------------------------------------------------------

    def _on_charger_status(self, event: ChargerStatus) -> None:
        self._charger_charging = event.state is ChargerState.CHARGING
        if self._charger_charging:
            self._meter_at_rest = False
        match event.state:
            case ChargerState.FAULT:
                self.faulted = True
                self._stop_reason(StopSource.FAULT)
                self._stop_or_unavailable()
            case ChargerState.CHARGING:
                self.faulted = False
                self._fire("ev_charging")
                self._fire("recover")
            case ChargerState.SUSPENDED_EV:
                self.faulted = False
                self._fire("ev_suspended")
                self._fire("recover")
            case ChargerState.SUSPENDED_EVSE:
                self.faulted = False
                self._fire("evse_suspended")
                self._fire("recover")
            case ChargerState.IDLE:
                self.faulted = False
                if self.state in ENERGY_STATES and self._session_energy_wh() > 0:
                    self._stop_reason(StopSource.EV)  # the EV finished charging (STOP-9 trigger)
                    self._fire("stop")
                else:
                    self._fire("ev_suspended")
                self._fire("recover")

    def _stop_or_unavailable(self) -> None:
        if self.state in ENERGY_STATES or self.state is ConnectorMachineState.AWAITING_PLUG:
            self._fire("stop")
        else:
            self._fire("go_unavailable")

    def _on_charger_lost(self) -> None:
        """ERR-2: stop and commit the last known total (no final meter value will come)."""
        self.charger_online = False
        self._charger_charging = True  # unknown until the charger reports again
        self._meter_at_rest = False
        self._stop_reason(StopSource.CHARGER_LOST)
        if self.state in ENERGY_STATES:
            self._fire("stop")
            self._fire("conclude")
        elif self.state in (ConnectorMachineState.STOPPING, ConnectorMachineState.IDLE_FEE):
            if self.state is ConnectorMachineState.STOPPING:
                self._emit(CancelTimer(TimerKind.FINAL_METER, self.connector_id))
            self._fire("conclude")
        else:
            self._stop_or_unavailable()

    def _usage_kind(self) -> UsageKind:
        if self.state is ConnectorMachineState.STOPPING:  # the stop goes on with what was happening
            session = self.session
            periods = session.usage.periods if session is not None else ()
            return (
                periods[-1].kind if periods and periods[-1].kind is not UsageKind.IDLE else UsageKind.CHARGING
            )
        if self.state is ConnectorMachineState.CHARGING:
            return UsageKind.CHARGING
        if self.state is ConnectorMachineState.IDLE_FEE:
            return UsageKind.IDLE
        return UsageKind.SUSPENDED

    def _on_meter(self, event: MeterReading) -> None:
        in_session = self.state in ENERGY_STATES or self.state in (
            ConnectorMachineState.STOPPING,
            ConnectorMachineState.IDLE_FEE,
        )
        session = self.session
        stale = (  # STOP-8: a retained value may predate the session, or lag behind its last reading
            session is not None
            and event.retained
            and (session.last_meter_wh is None or event.energy_wh < session.last_meter_wh)
        )
        if in_session and not stale:
            assert session is not None
            self._accumulate(
                event.at,
                event.energy_wh,
                self._usage_kind(),
                power_w=event.power_w,
                current_a=event.current_a,
            )
            if event.power_w is not None:
                session.power_w = event.power_w
            self._emit(
                RecordMeter(
                    self.connector_id,
                    session.ref,
                    meter_wh=event.energy_wh,
                    energy_wh=self._session_energy_wh(),
                    cost_minor=self.running_cost_minor,
                    power_w=event.power_w,
                    periodic=self.state in ENERGY_STATES,
                    usage=session.usage,
                )
            )
        self.meter_wh = event.energy_wh
        self._meter_at_rest = (
            self.state not in ENERGY_STATES
            and not self._charger_charging
            and not event.retained
            and not (event.power_w is not None and event.power_w > 0)
        )
        if self.state in ENERGY_STATES:
            self._check_limits(event.at)
        elif self.state is ConnectorMachineState.STOPPING and not self._may_still_flow(event):
            self._emit(CancelTimer(TimerKind.FINAL_METER, self.connector_id))
            self._fire("conclude")

    def _may_still_flow(self, event: MeterReading) -> bool:
        """STOP-8: a reading the charger sent while it still said ``charging`` and drew power (or
        did not say) may predate its acting on ``disable`` — a periodic value already on its way.
        It is recorded, but the final value is the next one (docs/charger-bridge.md: ``status``
        changes on disable, and a ``meter`` follows every status change), or the last one known
        when the final-meter wait runs out."""
        return self._charger_charging and not (event.power_w is not None and event.power_w == 0)

    def _check_limits(self, at: datetime) -> None:
        """AMT-2, STOP-6: increment before the cap, or stop before the cost would exceed it."""
        session, payment = self.session, self.payment
        assert session is not None
        assert payment is not None
        if self._cfg.max_energy_wh is not None and session.usage.energy_wh >= self._cfg.max_energy_wh:
            self._limit_stop(LimitKind.ENERGY)
            return
        if self._cfg.max_duration_s is not None:
            charged_ms = sum(
                session.usage.duration_ms(kind) for kind in (UsageKind.CHARGING, UsageKind.SUSPENDED)
            )
            if charged_ms >= self._cfg.max_duration_s * 1000:
                self._limit_stop(LimitKind.DURATION)
                return
        if payment.authorized_minor is None:
            return
        # the last reported power (a meter without power: the time components alone)
        power_w = session.power_w if session.power_w is not None else 0.0
        # the decisions below only compare the projection with these two thresholds: projecting no
        # farther than the larger one gives the same decisions at a fraction of the cost
        horizon_s = self._station.meter_interval_s
        if self._policy.strategy is AuthorizationStrategy.INCREMENTAL:
            horizon_s = max(horizon_s, self._policy.increment_headroom_s)
        seconds = seconds_until_cost_reaches(
            self._pricer,
            session.usage,
            at,
            power_w,
            payment.authorized_minor,
            horizon_s=horizon_s,
            cost_minor=self.running_cost_minor,
        )
        if (
            payment.session_id is not None
            and not payment.increment_pending
            and not payment.increments_exhausted
        ):
            new_total = increment_total_minor(
                self._policy,
                payment.authorized_minor,
                seconds,
                self._station.terminal.supports_update_session,
            )
            if new_total is not None:
                payment.increment_pending = True
                self._emit(UpdateAuthorization(self.connector_id, payment.session_id, new_total))
        if must_stop_for_cap(seconds, self._station.meter_interval_s):
            self._limit_stop(LimitKind.COST_CAP)

    def _limit_stop(self, limit: LimitKind) -> None:
        self._stop_reason(StopSource.LIMIT)
        self._emit(RecordLimitReached(self.connector_id, self._ref(), limit))
        self._fire("stop")

    def _on_update_result(self, event: UpdateAuthorizationResult) -> None:
        payment = self.payment
        if payment is None or payment.session_id != event.session_id or not payment.increment_pending:
            return
        payment.increment_pending = False  # (``_settle`` decides nothing while it is set)
        old = payment.authorized_minor or 0
        granted = event.outcome in (UpdateOutcome.APPROVED, UpdateOutcome.PARTIALLY_APPROVED)
        if not granted or event.authorized_minor is None or event.authorized_minor <= old:
            payment.increments_exhausted = True  # stop at the cap instead (AMT-2)
        else:
            payment.authorized_minor = event.authorized_minor
            ref = self._ref()
            self._emit(
                RecordPaymentIncremented(self.connector_id, ref, event.session_id, event.authorized_minor),
                PublishPaymentIncremented(self.connector_id, ref, event.session_id, event.authorized_minor),
            )
        if payment.settle_after_increment:
            payment.settle_after_increment = False
            self._settle()

    # --- stop and settle ---------------------------------------------------------------------------

    def _on_stop_request(self, event: StopRequest) -> None:
        allowed = {
            StopSource.REMOTE: StopMode.REMOTE,
            StopSource.TAP: StopMode.TAP,
            StopSource.UI: StopMode.UI,
        }
        mode = allowed.get(event.source)
        if mode is not None and mode not in self._station.stop_modes:
            return
        self._stop_reason(event.source)
        self._fire("stop")

    def _begin_stop(self) -> None:
        session = self.session
        assert session is not None
        session.energy_on = False
        self._meter_at_rest = False  # energy flowed after the last meter value
        reason = session.stop_reason or StopSource.LOCAL
        session.stop_reason = reason
        self._emit(
            RecordStop(
                self.connector_id,
                session.ref,
                reason,
                self._session_energy_wh(),
                self.running_cost_minor,
                session.usage,
            ),
            DisableEnergy(self.connector_id),
        )
        if reason is not StopSource.CHARGER_LOST:
            self._emit(
                StartTimer(TimerKind.FINAL_METER, self._station.final_meter_timeout_s, self.connector_id)
            )

    def _enter_idle_fee(self) -> None:
        self._emit(ShowMessage(self.connector_id, MessageKey.IDLE_FEE))

    def _settle(self) -> None:
        """STOP-7, STOP-8, AMT-4: decide Commit (amount > 0) or Void; journal before sending."""
        payment = self.payment
        assert payment is not None
        assert payment.session_id is not None
        self._cancel_plug_timer()
        if payment.increment_pending:
            # AMT-2, AMT-4: the hold the commit is capped at is the one the terminal ends up with.
            # The shell answers every Update Authorization (a failure too), so this waits at most
            # one request timeout. Deciding now capped a session at the old hold while the terminal
            # granted more (fuzzer seed 141: 50 committed, 100 owed, 300 held).
            payment.settle_after_increment = True
            return
        # nothing is charged for a session that never started (STOP-7: Void when nothing was
        # delivered), not even a flat session fee
        cost = self._session_cost_minor()
        amount = capture_amount_minor(self._policy, cost, payment.authorized_minor)
        payment.final_minor = amount
        payment.disposal = Disposal.COMMIT if amount > 0 else Disposal.VOID
        ref = self._ref()
        if payment.disposal is Disposal.COMMIT:
            self._emit(
                RecordCommitDecided(
                    self.connector_id,
                    ref,
                    payment.session_id,
                    amount,
                    self._session_energy_wh(),
                    cost,
                    self._usage(),
                )
            )
        else:
            self._emit(RecordVoidDecided(self.connector_id, ref, payment.session_id, self._usage()))
        self._emit(
            StartTimer(TimerKind.UNDISPOSED_PAYMENT, self._station.undisposed_alarm_s, self.connector_id)
        )
        self._send_disposal()

    def _resume_disposal(self) -> None:
        self._emit(
            StartTimer(TimerKind.UNDISPOSED_PAYMENT, self._station.undisposed_alarm_s, self.connector_id)
        )
        self._send_disposal()

    def _send_disposal(self) -> None:
        payment = self.payment
        assert payment is not None
        assert payment.session_id is not None
        if payment.disposal is Disposal.COMMIT:
            self._emit(Commit(self.connector_id, payment.session_id, payment.final_minor))
        else:
            self._emit(Void(self.connector_id, payment.session_id))

    def _on_settlement_result(self, event: CommitResult | VoidResult) -> None:
        payment = self.payment
        if (
            self.state is not ConnectorMachineState.SETTLING
            or payment is None
            or payment.session_id != event.session_id
        ):
            return
        expected = Disposal.COMMIT if isinstance(event, CommitResult) else Disposal.VOID
        if payment.disposal is not expected:
            return
        if event.outcome is SettlementOutcome.FAILED:
            schedule = self._station.settlement_retry_s
            delay = schedule[min(payment.attempts, len(schedule) - 1)]
            payment.attempts += 1
            self._emit(StartTimer(TimerKind.SETTLEMENT_RETRY, delay, self.connector_id))
            return
        # OK, or NOT_FOUND after our send: disposed (psp-reference §10.3)
        ref, sid = self._ref(), payment.session_id
        if expected is Disposal.COMMIT:
            self._emit(
                RecordCommitConfirmed(self.connector_id, ref, sid, event.outcome),
                CancelTimer(TimerKind.UNDISPOSED_PAYMENT, self.connector_id),
                PublishPaymentCaptured(self.connector_id, ref, sid, payment.final_minor),
            )
        else:
            self._emit(
                RecordVoidConfirmed(self.connector_id, ref, sid, event.outcome),
                CancelTimer(TimerKind.UNDISPOSED_PAYMENT, self.connector_id),
                PublishPaymentVoided(self.connector_id, ref, sid),
            )
        self._end_session(payment.final_minor)
        self._fire("settled")

    def _end_unpaid(self) -> None:
        """End a session that has nothing to settle on the terminal (RFID, remote, free vend)."""
        session = self.session
        if session is None:
            return
        cost = self._session_cost_minor()
        self._cancel_plug_timer()
        self._emit(
            RecordSessionEnded(self.connector_id, session.ref, self._session_energy_wh(), cost, session.usage)
        )
        self._end_session(cost)

    def _end_session(self, amount_minor: int) -> None:
        """The end of the session (``session.ended`` when it started) and of its payment (receipt)."""
        session = self.session
        assert session is not None
        reason = session.stop_reason or StopSource.LOCAL
        if session.started:
            self._emit(
                PublishSessionEnded(
                    self.connector_id,
                    session.ref,
                    reason,
                    self._session_energy_wh(),
                    self.running_cost_minor,
                    amount_minor,
                )
            )
        self._emit(
            IssueReceipt(self.connector_id, session.ref, amount_minor),
            ShowMessage(self.connector_id, MessageKey.SESSION_ENDED, amount_minor=amount_minor),
        )
        self.session = None
        self.payment = None
        self._restored = None

    # --- timers --------------------------------------------------------------------------------------

    def _on_timer(self, event: TimerFired) -> None:
        match event.kind:
            case TimerKind.PLUG_IN if self.state is ConnectorMachineState.AWAITING_PLUG:
                self._plug_timer_running = False
                self._stop_reason(StopSource.TIMEOUT)
                self._fire("stop")
            case TimerKind.FINAL_METER if self.state is ConnectorMachineState.STOPPING:
                self._fire("conclude")
            case TimerKind.SETTLEMENT_RETRY if self.state is ConnectorMachineState.SETTLING:
                self._send_disposal()
            case TimerKind.UNDISPOSED_PAYMENT if (
                self.state is ConnectorMachineState.SETTLING and self.payment
            ):
                payment = self.payment
                if payment.session_id is not None and payment.disposal is not None:
                    self._emit(
                        RaiseUndisposedPayment(
                            self.connector_id,
                            self._ref(),
                            payment.session_id,
                            payment.disposal,
                            payment.attempts,
                        )
                    )
            case _:
                pass

    # --- restart recovery (ERR-5) ----------------------------------------------------------------------

    def _on_restored(self, event: PaymentRestored[P]) -> None:
        if self.state not in (ConnectorMachineState.UNAVAILABLE, *FREE_STATES) or self.session is not None:
            return
        if event.pricer is not None:  # STOP-8: the session's own tariff; the current one comes next
            if self._pending_pricer is None:
                self._pending_pricer = self._pricer
            self._pricer = event.pricer
        p = event.payment
        self.plugged = event.plugged
        self.charger_online = event.charger_online
        self.plugged_at = event.at if event.plugged else None
        self._restored = event
        stop_reason = p.stop_reason
        if stop_reason is None and not event.charger_online:
            stop_reason = StopSource.CHARGER_LOST  # ERR-2: the charger is gone at the restart
        elif stop_reason is None and not event.plugged:
            stop_reason = StopSource.UNPLUG  # unplugged while the agent was down
        self.session = Session(
            ref=p.session_ref,
            usage=p.usage,
            last_at=p.last_meter_at or event.at,
            last_meter_wh=p.last_meter_wh,
            stop_reason=stop_reason,
            started=p.started,
        )
        self.meter_wh = p.last_meter_wh
        self.payment = Payment(
            method=p.method,
            session_id=p.session_id,
            card=p.card,
            authorized_minor=p.authorized_minor,
            disposal=p.disposal,
            final_minor=p.final_minor,
        )
        ref = self._ref()
        mark = len(self._out)
        self._fire("restore")
        resolution = self._restore_resolution(p.disposal)
        # DESIGN.md §5.2 "an upstream event says so": the journal record and session.updated come
        # before anything the restore did (a session.started of a session that never started, a
        # Commit, session.ended), so the back office reads the stream in order
        self._out[mark:mark] = [
            RecordPaymentRestored(
                self.connector_id, ref, p.session_id, event.plugged, p.energy_on, resolution
            ),
            PublishSessionUpdated(
                self.connector_id,
                ref,
                UpdateReason.RESUMED,
                resolution,
                p.session_id,
                p.method,
                event.plugged,
                p.authorized_minor,
            ),
        ]

    def _restore_resolution(self, decided: Disposal | None) -> RestoreResolution:
        """What the restore did: ``resumed`` charging, ``resent`` a decided Commit/Void, decided a
        ``commit`` or ``void`` now, or ``ended`` a session with nothing to settle on the terminal."""
        if self.state is ConnectorMachineState.CHARGING:
            return RestoreResolution.RESUMED
        if (
            self.state is ConnectorMachineState.SETTLING
            and self.payment is not None
            and self.payment.disposal
        ):
            if decided is not None:
                return RestoreResolution.RESENT
            return RestoreResolution(self.payment.disposal.value)
        return RestoreResolution.ENDED


_DECLINE_OUTCOMES: dict[AuthorizationOutcome, DeclineOutcome] = {
    AuthorizationOutcome.DECLINED: DeclineOutcome.DECLINED,
    AuthorizationOutcome.CANCELLED: DeclineOutcome.CANCELLED,
    AuthorizationOutcome.FAILED: DeclineOutcome.FAILED,
}
