"""Hypothesis state machine over random event sequences on a 3-connector station (issue 3 acceptance 2).

The harness plays terminal, charger, backend and timers consistently with the effects the station
asked for, and checks the money and safety invariants after every event:

1. energy is enabled only on a connector that is plugged and authorized;
2. every approved payment ends in exactly one confirmed Commit or one confirmed Void (STOP-7);
3. no Commit above the authorized amount unless over-capture is configured (AMT-4);
4. the running cost never exceeds the authorized amount while energy flows (AMT-2);
5. a card read is never authorized while the card owns an active session;
6. no card stops a session it does not own (STOP-1, STOP-4);
7. the terminal never has two reads in progress (TERM-3);
8. write-ahead (DESIGN.md §2, :class:`tests.support.station.WriteAhead`) over the whole run;
9. per session (``session_ref``): it begins with a card read or an unpaid approval under a ref never
   used before; ``PublishSessionStarted`` at most once and only once its payment exists, with
   ``RecordEnergyOn.first`` on exactly that energy-on; ``PublishSessionEnded`` at most once and only
   after its ``PublishSessionStarted``; one ``IssueReceipt`` at its end (after the confirmation or
   ``RecordSessionEnded``, or after the decline), quoting the final amount;
10. every record that carries a usage prices it with the tariff in effect when its session began
    (STOP-8): energy and cost of meter/stop/commit/session-ended records, the commit amount (the
    cost, capped by the terminal's authorized amount unless over-capture), ``PublishSessionEnded``
    and the receipt agree; a void only when nothing was delivered at a cost; at most one
    commit/void decision per payment.

Random sequences rarely drive a card payment to its cap on their own, so besides the single-event
rules there are *directed* rules: ``card_session`` presents a card and answers its authorization in
one step (often a small partial approval), ``approach_cap`` charges to just below the cap,
``refuse_increment_and_charge`` declines an increment and charges on, ``push_to_cap`` feeds a large
meter jump or a long stretch at high power, ``meter_after_stop`` delivers a final meter value larger
than the one at energy-off, ``idle_time`` lets the idle fee run past the cap, and
``present_owner_card`` / ``ui_stop`` present cards that own sessions. The initial rule picks the
authorization strategy, terminal family, routing and over-capture; half of the runs start with
connector 1 charging on an approved card. Invariants 3 and 4 compare against the amount the
*terminal* approved (the harness's ledger), not the machine's own belief. ``hypothesis.event``
labels count how often each critical situation is reached (``--hypothesis-show-statistics``).
Event times grow by a microsecond per event, so that two sessions never share a ``session_ref``.
``test_tariff_change.py`` runs the same harness with ``TariffChanged`` at random points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import event as reached
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from statemachines.authorization import AuthorizationPolicy, AuthorizationStrategy
from statemachines.config import (
    APOLLO,
    P6X,
    ConnectorConfig,
    OfflinePolicy,
    Routing,
    StationConfig,
    TerminalCapabilities,
)
from statemachines.connector import ENERGY_STATES, ConnectorMachine, ConnectorMachineState
from statemachines.effects import (
    Authorize,
    CancelCardRead,
    CancelTimer,
    Commit,
    DisableEnergy,
    Effect,
    EnableEnergy,
    IssueReceipt,
    LimitKind,
    PublishSessionEnded,
    PublishSessionStarted,
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordLimitReached,
    RecordMeter,
    RecordPaymentApproved,
    RecordPaymentDeclined,
    RecordSessionEnded,
    RecordStop,
    RecordVoidConfirmed,
    RecordVoidDecided,
    RequestBackendAuthorization,
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
    DeclineOutcome,
    Disposal,
    Event,
    MeterReading,
    PaymentMethod,
    Plugged,
    RemoteStart,
    SettlementOutcome,
    StopRequest,
    StopSource,
    TariffChanged,
    TerminalLinkDown,
    TerminalLinkUp,
    TimerFired,
    TimerKind,
    UiAction,
    UiSelection,
    Unplugged,
    UpdateAuthorizationResult,
    UpdateOutcome,
    VoidResult,
)
from statemachines.pricing import Usage
from statemachines.station import Station
from tests.support.pricing import LinearPricer
from tests.support.station import T0, WriteAhead

State = ConnectorMachineState
IDS = (1, 2, 3)
CARDS = (
    CardToken(CardKind.EMV, "h1", "****0001"),
    CardToken(CardKind.EMV, "h2", "****0002"),
    CardToken(CardKind.EMV, "h3", "****0003"),
    CardToken(CardKind.EMV, "h5", "****0005"),
    CardToken(CardKind.EMV, "h6", "****0006"),
    CardToken(CardKind.RFID, "uid4"),
)
PRICER = LinearPricer(per_kwh_minor=500, per_minute_minor=2, idle_per_minute_minor=5)
POLICIES = (
    AuthorizationPolicy(AuthorizationStrategy.INCREMENTAL, 1000, 500, 2500),
    AuthorizationPolicy(AuthorizationStrategy.FIXED, 800),
    AuthorizationPolicy(AuthorizationStrategy.MAXIMUM, maximum_minor=1500),
    AuthorizationPolicy(AuthorizationStrategy.DRIVER_CAP, driver_cap_choices_minor=(300, 600)),
)
SETTLED_STATES = (
    State.STOPPING,
    State.SETTLING,
    State.IDLE_FEE,
    State.FINISHING,
    State.AVAILABLE,
    State.UNAVAILABLE,
)
UNPAID_METHODS = (PaymentMethod.REMOTE, PaymentMethod.FREE_VEND)
connector_ids = st.sampled_from(IDS)
# mostly small partial approvals: they put the cap within one meter interval of the session start
partial_amounts = st.one_of(st.integers(1, 150), st.integers(1, 1000))
# a meter jump: ordinary, or large enough to pass any authorized amount in one reading
meter_jumps = st.one_of(st.integers(0, 3000), st.sampled_from([5000, 20000]))


@dataclass
class Ledger:
    """One terminal payment as the terminal (played by the harness) sees it."""

    authorized_minor: int  # what the terminal approved, not what the machine believes
    disposal: Disposal | None = None  # from the first Commit/Void sent
    answered_ok: bool = False  # the harness answered that disposal OK/NOT_FOUND
    confirmed: int = 0  # RecordCommitConfirmed / RecordVoidConfirmed journal records


@dataclass
class SessionLog:
    """One session (``session_ref``) as its effects tell it."""

    connector_id: int
    pricer: LinearPricer  # the tariff in effect when the session began (the harness's view)
    approved: RecordPaymentApproved | None = None
    declined: DeclineOutcome | None = None
    started: int = 0  # PublishSessionStarted
    ended: int = 0  # PublishSessionEnded
    closed: bool = False  # RecordCommitConfirmed / RecordVoidConfirmed / RecordSessionEnded
    usage: Usage = field(default_factory=Usage)  # the last usage journaled
    final_minor: int | None = None  # the decided Commit amount, 0 for a Void, the cost if unpaid
    receipts: list[IssueReceipt] = field(default_factory=list)


class StationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tariff = PRICER  # the tariff the station was last given
        self.station = self._build(POLICIES[0], APOLLO, Routing.EARLIEST_PLUG_IN, over_capture=False)
        self.now_s = 0
        self.tick_us = 0
        self.register = dict.fromkeys(IDS, 0)
        self.plugged = dict.fromkeys(IDS, False)
        self.energy = dict.fromkeys(IDS, False)
        self.link_up = True
        self.read_busy = False
        self.card_shown = False
        self.auth_for: int | None = None
        self.backend: list[RequestBackendAuthorization] = []
        self.updates: list[UpdateAuthorization] = []
        self.settlements: list[Commit | Void] = []
        self.timers: dict[tuple[TimerKind, int | None], int] = {}
        self.payments: dict[str, Ledger] = {}  # terminal session id -> ledger
        self.sessions: dict[str, SessionLog] = {}  # session_ref -> what its effects said
        self.write_ahead = WriteAhead()
        self.requested: dict[int, int] = {}  # connector -> amount of its Auth Session in flight
        self.next_session = 0

    def _build(
        self,
        policy: AuthorizationPolicy,
        terminal: TerminalCapabilities,
        routing: Routing,
        over_capture: bool,
    ) -> Station[LinearPricer]:
        self.over_capture = over_capture
        config = StationConfig(
            connectors=(ConnectorConfig(1), ConnectorConfig(2, idle_fee_enabled=True), ConnectorConfig(3)),
            terminal=terminal,
            authorization=AuthorizationPolicy(
                strategy=policy.strategy,
                amount_minor=policy.amount_minor,
                increment_minor=policy.increment_minor,
                maximum_minor=policy.maximum_minor,
                driver_cap_choices_minor=policy.driver_cap_choices_minor,
                allow_over_capture=over_capture,
            ),
            offline_policy=OfflinePolicy.FREE_VEND,
            routing=routing,
        )
        return Station(config, self.tariff)

    @initialize(
        policy=st.sampled_from([POLICIES[0], *POLICIES]),  # incremental is the richest: twice as often
        terminal=st.sampled_from([APOLLO, APOLLO, APOLLO, P6X]),
        routing=st.sampled_from(Routing),
        over_capture=st.sampled_from([False, False, False, True]),
        head_start=st.booleans(),
    )
    def configure(
        self,
        policy: AuthorizationPolicy,
        terminal: TerminalCapabilities,
        routing: Routing,
        over_capture: bool,
        head_start: bool,
    ) -> None:
        """Pick the configuration; with ``head_start`` connector 1 starts charging on an approved
        card payment, so that more of the step budget goes to caps, increments and settlement."""
        self.station = self._build(policy, terminal, routing, over_capture)
        if head_start:
            self.plug_or_unplug(1)
            self.card_session(CARDS[0], AuthorizationOutcome.APPROVED, 1)

    # --- plumbing ------------------------------------------------------------------------------------

    def at(self) -> datetime:
        """The time of the next event: ``now_s``, plus a microsecond per event (unique session refs)."""
        self.tick_us += 1
        return T0 + timedelta(seconds=self.now_s, microseconds=self.tick_us)

    def machine(self, c: int) -> ConnectorMachine[LinearPricer]:
        return self.station.connectors[c]

    def connectors_in(self, *states: ConnectorMachineState) -> list[int]:
        return [c for c in IDS if self.machine(c).state in states]

    def step(self, event: Event | TariffChanged[LinearPricer]) -> list[Effect]:
        owners = {v.card_token: v.connector_id for v in self.station.views() if v.card_token is not None}
        active_before = {
            c: m.energy_on or m.state is State.AWAITING_PLUG for c, m in self.station.connectors.items()
        }
        # the read ends with its authorization's answer — unless the link went down meanwhile and a
        # new read runs by now (the late answer then only concerns its connector)
        authorizing = self.station.arbiter.state == "authorizing"
        if isinstance(event, CardReadEnded | TerminalLinkDown) or (
            isinstance(event, AuthorizationResult) and authorizing
        ):
            self.read_busy = self.card_shown = False
        if isinstance(event, AuthorizationResult):
            # a link-down does not end an Auth Session in flight: its actor always answers
            self.auth_for = None
        effects = self.station.handle(event)
        self.write_ahead.feed(effects)  # (8)
        for effect in effects:
            self.apply(effect, event, owners)
        if isinstance(event, CardRead):  # (6) no card stops a session it does not own (STOP-2)
            for c, m in self.station.connectors.items():
                if active_before[c] and m.state in SETTLED_STATES:
                    assert owners.get(event.card.token) == c, f"{event.card} stopped connector {c}"
                    reached("tap stopped its own session")
        self.assert_invariants()
        return effects

    def apply(self, effect: Effect, event: object, owners: dict[str, int]) -> None:
        match effect:
            case StartCardRead():  # (7)
                assert not self.read_busy, "two card reads in progress"
                self.read_busy, self.card_shown = True, False
            case CancelCardRead():
                self.read_busy = self.card_shown = False
            case Authorize(connector_id=c) | RequestBackendAuthorization(connector_id=c):  # (5)
                assert isinstance(event, CardRead | UiSelection)
                card = self.machine(c).card
                assert card is not None
                assert card.token not in owners, "authorized a card owning a session"
                if owners:
                    reached("card authorized while other sessions active")
                if isinstance(effect, Authorize):
                    self.auth_for = c
                    self.requested[c] = effect.amount_minor
                else:
                    self.backend.append(effect)
            case UpdateAuthorization():
                self.updates.append(effect)
            case EnableEnergy(connector_id=c):
                self.energy[c] = True
                reached(
                    "energy enabled for a card or token"
                    if self.machine(c).card
                    else "energy enabled (free vend)"
                )
            case DisableEnergy(connector_id=c):
                self.energy[c] = False
            case StartTimer(kind=kind, connector_id=c, seconds=s):
                self.timers[(kind, c)] = s
            case CancelTimer(kind=kind, connector_id=c):
                self.timers.pop((kind, c), None)
            case RecordLimitReached(limit=LimitKind.COST_CAP):
                reached("energy stopped at the authorized amount")
            case RecordCommitConfirmed(session_id=sid) | RecordVoidConfirmed(session_id=sid):  # (2)
                ledger = self.payments[sid]
                assert ledger.answered_ok, "disposal confirmed without a successful answer"
                ledger.confirmed += 1
                assert ledger.confirmed == 1, "payment disposed twice (or committed and voided)"
            case _:
                pass
        if isinstance(effect, Commit | Void):  # (2), (3)
            ledger = self.payments[effect.session_id]
            disposal = Disposal.COMMIT if isinstance(effect, Commit) else Disposal.VOID
            assert (ledger.disposal or disposal) is disposal, "commit and void for one payment"
            ledger.disposal = disposal
            assert ledger.confirmed == 0, "settlement sent after confirmation"
            if isinstance(effect, Commit):
                assert effect.amount_minor > 0
                if not self.over_capture:
                    assert effect.amount_minor <= ledger.authorized_minor, "commit above authorized"
            if effect not in self.settlements:
                self.settlements.append(effect)
        self.follow_session(effect)

    def follow_session(self, effect: Effect) -> None:
        """(9), (10): the life of one session and the prices its records quote."""
        sref = getattr(effect, "session_ref", None)
        if sref is None:
            return
        if isinstance(effect, RecordCardRead):
            assert sref not in self.sessions, f"session ref {sref} used twice"
            self.sessions[sref] = SessionLog(effect.connector_id, self.tariff)
            return
        if isinstance(effect, RecordPaymentApproved) and sref not in self.sessions:
            assert effect.method in UNPAID_METHODS, f"{effect} without a card read"
            assert effect.session_id is None
            self.sessions[sref] = SessionLog(effect.connector_id, self.tariff)
        log = self.sessions.get(sref)
        assert log is not None, f"{effect} of a session that never began"
        assert log.receipts == [], f"{effect} after the receipt of its session"
        pricer = log.pricer
        match effect:
            case RecordPaymentApproved():
                assert log.approved is None, f"{effect}: approved twice"
                assert log.declined is None, f"{effect} after the decline"
                log.approved = effect
                if effect.session_id is not None:
                    assert effect.session_id in self.payments, f"{effect}: the terminal approved nothing"
            case RecordPaymentDeclined(outcome=outcome):
                assert log.approved is None, f"{effect} after the approval"
                assert log.declined is None, f"{effect}: declined twice"
                log.declined = outcome
            case RecordEnergyOn(first=first):
                assert log.approved is not None, f"{effect} without a payment"
                assert first == (log.started == 0), f"{effect}: first is {first}, started {log.started}"
            case PublishSessionStarted():
                assert log.approved is not None, f"{effect} without a payment"
                assert log.started == 0, f"{effect}: session started twice"
                log.started += 1
            case (
                RecordMeter(energy_wh=wh, cost_minor=cost, usage=usage)
                | RecordStop(energy_wh=wh, cost_minor=cost, usage=usage)
            ):
                self.assert_priced(effect, pricer, usage, wh, cost)
                log.usage = usage
            case RecordCommitDecided(amount_minor=amount, energy_wh=wh, cost_minor=cost, usage=usage):
                self.assert_priced(effect, pricer, usage, wh, cost)
                assert log.final_minor is None, f"{effect}: decided twice"
                authorized = self.payments[effect.session_id].authorized_minor
                wanted = cost if self.over_capture else min(cost, authorized)
                assert amount == wanted > 0, f"{effect}: amount should be {wanted} (STOP-8, AMT-4)"
                log.usage, log.final_minor = usage, amount
            case RecordVoidDecided(usage=usage):
                assert log.final_minor is None, f"{effect}: decided twice"
                assert pricer.cost_minor(usage) == 0, f"{effect} of a session that cost something"
                log.usage, log.final_minor = usage, 0
            case RecordSessionEnded(energy_wh=wh, cost_minor=cost, usage=usage):
                self.assert_priced(effect, pricer, usage, wh, cost)
                assert log.approved is not None, f"{effect} without a payment"
                assert log.approved.session_id is None, f"{effect} of a terminal payment"
                assert log.final_minor is None, f"{effect} after a decision"
                assert not log.closed, f"{effect}: ended twice"
                log.usage, log.final_minor, log.closed = usage, cost, True
            case RecordCommitConfirmed() | RecordVoidConfirmed():
                assert log.final_minor is not None, f"{effect}: nothing decided"
                assert not log.closed, f"{effect}: confirmed twice"
                log.closed = True
            case PublishSessionEnded(cost_minor=cost, amount_minor=amount, energy_wh=wh):
                assert log.started == 1, f"{effect} of a session that never started"
                assert log.ended == 0, f"{effect}: session ended twice"
                assert log.closed, f"{effect} before its payment is settled"
                log.ended += 1
                self.assert_priced(effect, pricer, log.usage, wh, cost)
                assert amount == log.final_minor, f"{effect}: amount differs from {log.final_minor}"
            case IssueReceipt():
                if log.declined is not None:
                    assert effect.declined is log.declined, f"{effect}: declined {log.declined}"
                    assert effect.amount_minor == 0, effect
                else:
                    assert effect.declined is None, effect
                    assert log.closed, f"{effect} before the session is over"
                    assert effect.amount_minor == log.final_minor, f"{effect}: final is {log.final_minor}"
                    assert log.ended == log.started, f"{effect}: session.ended missing"
                log.receipts.append(effect)
            case _:
                pass

    @staticmethod
    def assert_priced(effect: Effect, pricer: LinearPricer, usage: Usage, wh: int, cost: int) -> None:
        """STOP-8: the record's energy and cost are its usage priced by the session's tariff."""
        assert wh == usage.energy_wh, f"{effect}: energy differs from its usage"
        assert cost == pricer.cost_minor(usage), f"{effect}: cost is not {pricer} applied to its usage"

    # --- rules: charger --------------------------------------------------------------------------------

    def meter(self, c: int, seconds: int, wh: int, power: float | None) -> None:
        self.now_s += seconds
        self.register[c] += wh
        self.step(MeterReading(c, self.at(), self.register[c], power))

    @rule(
        c=connector_ids,
        seconds=st.integers(1, 900),
        wh=st.integers(0, 3000),
        power=st.sampled_from([None, 0.0, 7200.0, 22000.0]),  # None: a meter without power
    )
    def meter_any(self, c: int, seconds: int, wh: int, power: float | None) -> None:
        self.meter(c, seconds, wh, power)

    @precondition(lambda self: any(self.energy.values()))
    @rule(i=st.integers(0, 2), seconds=st.integers(1, 900), wh=st.integers(0, 3000))
    def meter_while_charging(self, i: int, seconds: int, wh: int) -> None:
        charging = [c for c in IDS if self.energy[c]]
        self.meter(charging[i % len(charging)], seconds, wh, 7200.0)

    @precondition(lambda self: any(self.energy.values()))
    @rule(
        i=st.integers(0, 2),
        seconds=st.sampled_from([60, 600, 3600, 20000]),
        wh=meter_jumps,
        power=st.sampled_from([0.0, 22000.0, 50000.0]),
    )
    def push_to_cap(self, i: int, seconds: int, wh: int, power: float) -> None:
        """A large meter jump, a long stretch or high power on a charging connector (AMT-2, AMT-4)."""
        charging = [c for c in IDS if self.energy[c]]
        self.meter(charging[i % len(charging)], seconds, wh, power)

    @precondition(lambda self: any(self.energy.values()))
    @rule(i=st.integers(0, 2), margin=st.integers(0, 400), seconds=st.integers(1, 120))
    def approach_cap(self, i: int, margin: int, seconds: int) -> None:
        """Charge a connector to just below its cap (``margin`` short, in minor units), the zone
        where an increment is requested (AMT-1) or energy must stop (AMT-2)."""
        charging = [c for c in IDS if self.energy[c]]
        self.charge_near_cap(charging[i % len(charging)], margin, seconds)

    def charge_near_cap(self, c: int, margin: int, seconds: int) -> None:
        m = self.machine(c)
        limit = m.authorized_minor
        if limit is None:
            return
        wh = max(0, (limit - margin - m.running_cost_minor) * 1000 // m.pricer.per_kwh_minor)
        self.meter(c, seconds, wh, 7200.0)

    @precondition(lambda self: bool(self.connectors_in(State.STOPPING)))
    @rule(i=st.integers(0, 2), wh=meter_jumps)
    def meter_after_stop(self, i: int, wh: int) -> None:
        """The final meter value after energy-off, possibly well past the last one (AMT-4)."""
        stopping = self.connectors_in(State.STOPPING)
        self.meter(stopping[i % len(stopping)], 5, wh, 0.0)

    @precondition(lambda self: bool(self.connectors_in(State.IDLE_FEE)))
    @rule(seconds=st.sampled_from([600, 7200, 86400]))
    def idle_time(self, seconds: int) -> None:
        """The idle fee runs (STOP-9), possibly past the authorized amount (AMT-4)."""
        self.meter(self.connectors_in(State.IDLE_FEE)[0], seconds, 0, 0.0)

    @precondition(lambda self: any(self.energy.values()))
    @rule(
        i=st.integers(0, 2),
        how=st.sampled_from(["remote", "local", "ev_finished", "unplug", "fault", "charger_lost"]),
    )
    def end_charging(self, i: int, how: str) -> None:
        charging = [c for c in IDS if self.energy[c]]
        c = charging[i % len(charging)]
        match how:
            case "remote" | "local":
                self.step(StopRequest(c, self.at(), StopSource(how)))
            case "ev_finished":
                self.step(ChargerStatus(c, self.at(), ChargerState.IDLE))
            case "unplug":
                self.plug_or_unplug(c)
            case "fault":
                self.step(ChargerStatus(c, self.at(), ChargerState.FAULT, "E1"))
            case _:
                self.step(ChargerLost(self.at()))

    @rule(c=connector_ids)
    def plug_or_unplug(self, c: int) -> None:
        self.now_s += 1
        self.plugged[c] = not self.plugged[c]
        self.step(Plugged(c, self.at()) if self.plugged[c] else Unplugged(c, self.at()))
        if self.plugged[c]:  # the charger reports the meter register at plug-in
            self.step(MeterReading(c, self.at(), self.register[c], 0.0))

    @rule(
        kind=st.sampled_from(["status", "charger_link", "terminal_link", "ui", "remote", "stop", "read_end"]),
        c=connector_ids,
        state=st.sampled_from(ChargerState),
        flag=st.booleans(),
        cap=st.sampled_from([None, 300, 2000, 5000]),
    )
    def disturbance(self, kind: str, c: int, state: ChargerState, flag: bool, cap: int | None) -> None:
        """Less frequent events, folded into one rule so that the main flow gets most steps."""
        match kind:
            case "status":
                self.step(ChargerStatus(c, self.at(), state, "E1" if state is ChargerState.FAULT else None))
            case "charger_link":
                self.step(ChargerLost(self.at()) if flag else ChargerBack(self.at()))
            case "terminal_link":
                self.link_up = flag
                self.step(TerminalLinkUp(self.at()) if flag else TerminalLinkDown(self.at()))
            case "ui":
                self.step(UiSelection(self.at(), c, UiAction.START if flag else UiAction.STOP, cap))
            case "remote":
                self.step(RemoteStart(c, self.at(), f"tok{c}", cap))
            case "stop":
                self.step(StopRequest(c, self.at(), StopSource.REMOTE if flag else StopSource.LOCAL))
            case _:
                if self.read_busy and self.auth_for is None:
                    self.step(CardReadEnded(self.at()))

    def owned_cards(self) -> list[CardToken]:
        return [m.card for m in self.station.connectors.values() if m.card is not None]

    @precondition(lambda self: bool(self.owned_cards()))
    @rule(i=st.integers(0, 2), j=st.integers(0, 2), card=st.sampled_from(CARDS), own=st.booleans())
    def ui_stop(self, i: int, j: int, card: CardToken, own: bool) -> None:
        """Apollo UI stop on a connector with a session, then a card owning a session (this or
        another one) or any card (STOP-4)."""
        owned = [c for c, m in self.station.connectors.items() if m.card is not None]
        self.step(UiSelection(self.at(), owned[i % len(owned)], UiAction.STOP))
        cards = self.owned_cards()
        if self.read_busy and not self.card_shown and self.auth_for is None:
            self.present_card(cards[j % len(cards)] if own and cards else card)

    @precondition(
        lambda self: self.read_busy and not self.card_shown and self.auth_for is None and self.owned_cards()
    )
    @rule(i=st.integers(0, 2))
    def present_owner_card(self, i: int) -> None:
        """A card that owns a session (charging, waiting for the plug or still being authorized)
        is presented again: tap-to-stop, never a second authorization (STOP-1, §4.2)."""
        cards = self.owned_cards()
        self.present_card(cards[i % len(cards)])

    # --- rules: terminal -------------------------------------------------------------------------------

    @precondition(lambda self: self.read_busy and not self.card_shown and self.auth_for is None)
    @rule(card=st.sampled_from(CARDS))
    def present_card(self, card: CardToken) -> None:
        self.card_shown = True
        self.step(CardRead(self.at(), card))

    @precondition(lambda self: self.read_busy and not self.card_shown and self.auth_for is None)
    @rule(
        card=st.sampled_from(CARDS),
        outcome=st.sampled_from(
            [AuthorizationOutcome.APPROVED, AuthorizationOutcome.PARTIALLY_APPROVED] * 3
            + [AuthorizationOutcome.DECLINED]
        ),
        partial=partial_amounts,
    )
    def card_session(self, card: CardToken, outcome: AuthorizationOutcome, partial: int) -> None:
        """A card is presented and, if the terminal authorizes it, answered in the same rule."""
        self.present_card(card)
        if self.auth_for is not None:
            self.answer_authorization(outcome, partial)
        elif self.backend:
            self.answer_backend(BackendAuthorizationStatus.ACCEPTED, 500)

    @precondition(lambda self: self.auth_for is not None)
    @rule(
        outcome=st.sampled_from([*[AuthorizationOutcome.APPROVED] * 4, *AuthorizationOutcome]),
        partial=partial_amounts,
    )
    def answer_authorization(self, outcome: AuthorizationOutcome, partial: int) -> None:
        assert self.auth_for is not None
        self.next_session += 1
        sid = f"S{self.next_session}"
        requested = self.requested.pop(self.auth_for)
        if outcome is AuthorizationOutcome.APPROVED:
            self.payments[sid] = Ledger(requested)
        elif outcome is AuthorizationOutcome.PARTIALLY_APPROVED:
            partial = min(partial, requested)
            self.payments[sid] = Ledger(partial)
        ok = sid in self.payments
        self.step(AuthorizationResult(self.auth_for, self.at(), outcome, sid if ok else None, partial))

    @precondition(lambda self: bool(self.settlements) and self.link_up)
    @rule(i=st.integers(0, 10), outcome=st.sampled_from([*[SettlementOutcome.OK] * 3, *SettlementOutcome]))
    def answer_settlement(self, i: int, outcome: SettlementOutcome) -> None:
        effect = self.settlements.pop(i % len(self.settlements))
        result = CommitResult if isinstance(effect, Commit) else VoidResult
        if outcome is not SettlementOutcome.FAILED:
            self.payments[effect.session_id].answered_ok = True
        self.step(result(effect.connector_id, self.at(), effect.session_id, outcome))

    @precondition(lambda self: bool(self.updates))
    @rule(outcome=st.sampled_from(UpdateOutcome), short=st.integers(0, 400), echo=st.booleans())
    def answer_update(self, outcome: UpdateOutcome, short: int, echo: bool = False) -> None:
        """Approved in full, partially (``short`` below the request, maybe not above the old
        total), declined or failed; a refusal may echo the requested total (``echo``)."""
        u = self.updates.pop(0)
        ledger = self.payments[u.session_id]
        amount: int | None = u.new_total_minor if echo else None
        if outcome is UpdateOutcome.APPROVED:
            amount = u.new_total_minor
        elif outcome is UpdateOutcome.PARTIALLY_APPROVED:
            amount = max(1, u.new_total_minor - short)
        if outcome in (UpdateOutcome.APPROVED, UpdateOutcome.PARTIALLY_APPROVED):
            assert amount is not None
            ledger.authorized_minor = max(ledger.authorized_minor, amount)
        reached(f"increment answered: {outcome.value}")
        self.step(UpdateAuthorizationResult(u.connector_id, self.at(), u.session_id, outcome, amount))

    @precondition(lambda self: bool(self.updates))
    @rule(
        outcome=st.sampled_from([UpdateOutcome.DECLINED, UpdateOutcome.FAILED]),
        echo=st.booleans(),
        margin=st.integers(0, 120),
    )
    def refuse_increment_and_charge(self, outcome: UpdateOutcome, echo: bool, margin: int) -> None:
        """An increment is refused (AMT-2: stop at the cap instead), then the connector charges on
        towards the amount it believes authorized."""
        c = self.updates[0].connector_id
        self.answer_update(outcome, 0, echo)
        if self.energy[c]:
            self.charge_near_cap(c, margin, 30)

    # --- rules: backend and timers ---------------------------------------------------------------------

    @precondition(lambda self: bool(self.backend))
    @rule(status=st.sampled_from(BackendAuthorizationStatus), limit=st.sampled_from([None, 100, 500, 3000]))
    def answer_backend(self, status: BackendAuthorizationStatus, limit: int | None) -> None:
        r = self.backend.pop(0)
        self.step(BackendAuthorizationResult(r.connector_id, self.at(), r.card.token, status, limit))

    @precondition(lambda self: bool(self.timers))
    @rule(i=st.integers(0, 10))
    def fire_timer(self, i: int) -> None:
        (kind, c), seconds = sorted(self.timers.items(), key=str)[i % len(self.timers)]
        del self.timers[(kind, c)]
        self.now_s += seconds
        self.step(TimerFired(kind, c, self.at()))

    # --- invariants (also checked after every event of a multi-event rule) ----------------------------

    def true_limit(self, m: ConnectorMachine[LinearPricer]) -> int | None:
        if m.payment is not None and m.payment.session_id is not None:
            return self.payments[m.payment.session_id].authorized_minor
        return m.authorized_minor

    def assert_invariants(self) -> None:
        for c, m in self.station.connectors.items():
            # (1) energy only on a plugged, authorized connector
            assert self.energy[c] == m.energy_on, f"EnableEnergy/DisableEnergy out of step on {c}"
            if self.energy[c]:
                assert self.plugged[c], f"energy on unplugged connector {c}"
                assert m.payment is not None, f"energy without authorization on {c}"
            # (4) AMT-2: the running cost within the authorized amount while energy flows (for a
            # terminal payment the amount the terminal approved; else the backend/remote limit)
            limit = self.true_limit(m)
            if m.energy_on and limit is not None:
                assert m.running_cost_minor <= limit, f"cost above authorized on {c}"
                if m.running_cost_minor * 10 >= limit * 9:
                    reached("charging within 10% of the authorized amount")
        # (7) the harness's view of the one terminal read matches the arbiter's
        assert self.read_busy == self.station.arbiter.read_in_progress

    @invariant()
    def invariants_hold(self) -> None:
        self.assert_invariants()

    def teardown(self) -> None:
        """Drain: every approved payment ends in exactly one confirmed Commit or Void (2), every
        session with its receipt (9)."""
        self.step(TerminalLinkUp(self.at()))
        self.link_up = True
        self.step(ChargerBack(self.at()))
        for c in IDS:
            if self.plugged[c]:
                self.plug_or_unplug(c)
        for _ in range(100):
            if self.auth_for is not None:
                self.answer_authorization(AuthorizationOutcome.DECLINED, 1)
            while self.backend:
                self.answer_backend(BackendAuthorizationStatus.REJECTED, None)
            while self.updates:
                self.answer_update(UpdateOutcome.DECLINED, 0)
            while self.settlements:
                self.answer_settlement(0, SettlementOutcome.OK)
            timers = [k for k in self.timers if k[0] is not TimerKind.UNDISPOSED_PAYMENT]
            if not timers and all(p.confirmed for p in self.payments.values()):
                break
            for kind, cid in timers:
                self.timers.pop((kind, cid), None)
                self.now_s += 1
                self.step(TimerFired(kind, cid, self.at()))
        undisposed = [sid for sid, p in self.payments.items() if p.confirmed != 1]
        assert not undisposed, f"approved payments never disposed: {undisposed}"
        for c, m in self.station.connectors.items():
            assert m.payment is None, (c, m.state)
            assert m.session is None, (c, m.state)
            assert m.state not in ENERGY_STATES, (c, m.state)
        # (9) every session is over: one receipt, and session.ended for every session.started
        unreceipted = [sref for sref, log in self.sessions.items() if len(log.receipts) != 1]
        assert not unreceipted, f"sessions without their receipt: {unreceipted}"
        unended = [sref for sref, log in self.sessions.items() if log.ended != log.started]
        assert not unended, f"sessions started and never ended: {unended}"
        for log in self.sessions.values():
            reached("session declined" if log.declined else "session started" if log.started else "no energy")


# about 13 s; every invariant is reached (see the mutation table in the issue 3 report)
StationMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_station_invariants = StationMachine.TestCase
