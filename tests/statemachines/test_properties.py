"""Hypothesis state machine over random event sequences on a 3-connector station (issue 3 acceptance 2).

The harness plays terminal, charger, backend and timers consistently with the effects the station
asked for, and checks the money and safety invariants after every event:

1. energy is enabled only on a connector that is plugged and authorized;
2. every approved payment ends in exactly one confirmed Commit or one confirmed Void (STOP-7);
3. no Commit above the authorized amount unless over-capture is configured (AMT-4);
4. the running cost never exceeds the authorized amount while energy flows (AMT-2);
5. a card read is never authorized while the card owns an active session;
6. no card stops a session it does not own (STOP-1, STOP-4);
7. the terminal never has two reads in progress (TERM-3).

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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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
from statemachines.connector import ENERGY_STATES, ConnectorMachine
from statemachines.effects import (
    Authorize,
    CancelCardRead,
    CancelTimer,
    Commit,
    DisableEnergy,
    Effect,
    EnableEnergy,
    JournalRecord,
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
    MeterReading,
    Plugged,
    RemoteStart,
    SettlementOutcome,
    StopRequest,
    StopSource,
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
from statemachines.station import Station
from tests.support.pricing import LinearPricer
from tests.support.station import T0

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
SETTLED_STATES = ("stopping", "settling", "idle_fee", "finishing", "available", "unavailable")
connector_ids = st.sampled_from(IDS)
# mostly small partial approvals: they put the cap within one meter interval of the session start
partial_amounts = st.one_of(st.integers(1, 150), st.integers(1, 1000))
# a meter jump: ordinary, or large enough to pass any authorized amount in one reading
meter_jumps = st.one_of(st.integers(0, 3000), st.sampled_from([5000, 20000]))


@dataclass
class Ledger:
    """One terminal payment as the terminal (played by the harness) sees it."""

    authorized_minor: int  # what the terminal approved, not what the machine believes
    disposal: str | None = None  # "commit" | "void", from the first Commit/Void sent
    answered_ok: bool = False  # the harness answered that disposal OK/NOT_FOUND
    confirmed: int = 0  # commit_confirmed / void_confirmed journal records


class StationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.station = self._build(POLICIES[0], APOLLO, Routing.EARLIEST_PLUG_IN, over_capture=False)
        self.now_s = 0
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
        self.requested: dict[int, int] = {}  # connector -> amount of its Auth Session in flight
        self.next_session = 0

    def _build(
        self,
        policy: AuthorizationPolicy,
        terminal: TerminalCapabilities,
        routing: Routing,
        over_capture: bool,
    ) -> Station:
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
        return Station(config, PRICER)

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

    def at(self) -> Any:
        return T0 + timedelta(seconds=self.now_s)

    def machine(self, c: int) -> ConnectorMachine:
        return self.station.connectors[c]

    def connectors_in(self, *states: str) -> list[int]:
        return [c for c in IDS if self.machine(c).state in states]

    def step(self, event: Any) -> list[Effect]:
        owners = {v.card_token: v.connector_id for v in self.station.views() if v.card_token is not None}
        active_before = {
            c: m.energy_on or m.state == "awaiting_plug" for c, m in self.station.connectors.items()
        }
        if isinstance(event, AuthorizationResult | CardReadEnded | TerminalLinkDown):
            self.read_busy = self.card_shown = False
        if isinstance(event, AuthorizationResult | TerminalLinkDown):
            self.auth_for = None
        effects = self.station.handle(event)
        for effect in effects:
            self.apply(effect, event, owners)
        if isinstance(event, CardRead):  # (6) no card stops a session it does not own (STOP-2)
            for c, m in self.station.connectors.items():
                if active_before[c] and m.state in SETTLED_STATES:
                    assert owners.get(event.card.token) == c, f"{event.card} stopped connector {c}"
                    reached("tap stopped its own session")
        self.assert_invariants()
        return effects

    def apply(self, effect: Effect, event: Any, owners: dict[str, int]) -> None:
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
            case JournalRecord(kind="commit", data=data):
                cost, amount = data["cost_minor"], data["amount_minor"]
                assert isinstance(cost, int)
                assert isinstance(amount, int)
                if cost > self.payments[str(data["session_id"])].authorized_minor:
                    reached("settled a payment whose cost passed the authorized amount")
            case JournalRecord(kind="limit_reached", data={"limit": "cost_cap", **_rest}):
                reached("energy stopped at the authorized amount")
            case JournalRecord(kind="commit_confirmed" | "void_confirmed", data=data):  # (2)
                ledger = self.payments[str(data["session_id"])]
                assert ledger.answered_ok, "disposal confirmed without a successful answer"
                ledger.confirmed += 1
                assert ledger.confirmed == 1, "payment disposed twice"
            case _:
                pass
        if isinstance(effect, Commit | Void):  # (2), (3)
            ledger = self.payments[effect.session_id]
            kind = "commit" if isinstance(effect, Commit) else "void"
            assert (ledger.disposal or kind) == kind, "commit and void for one payment"
            ledger.disposal = kind
            assert ledger.confirmed == 0, "settlement sent after confirmation"
            if isinstance(effect, Commit):
                assert effect.amount_minor > 0
                if not self.over_capture:
                    assert effect.amount_minor <= ledger.authorized_minor, "commit above authorized"
            if effect not in self.settlements:
                self.settlements.append(effect)

    # --- rules: charger --------------------------------------------------------------------------------

    def meter(self, c: int, seconds: int, wh: int, power: float) -> None:
        self.now_s += seconds
        self.register[c] += wh
        self.step(MeterReading(c, self.at(), self.register[c], power))

    @rule(
        c=connector_ids,
        seconds=st.integers(1, 900),
        wh=st.integers(0, 3000),
        power=st.sampled_from([0.0, 7200.0, 22000.0]),
    )
    def meter_any(self, c: int, seconds: int, wh: int, power: float) -> None:
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
        wh = max(0, (limit - margin - m.running_cost_minor) * 1000 // PRICER.per_kwh_minor)
        self.meter(c, seconds, wh, 7200.0)

    @precondition(lambda self: bool(self.connectors_in("stopping")))
    @rule(i=st.integers(0, 2), wh=meter_jumps)
    def meter_after_stop(self, i: int, wh: int) -> None:
        """The final meter value after energy-off, possibly well past the last one (AMT-4)."""
        stopping = self.connectors_in("stopping")
        self.meter(stopping[i % len(stopping)], 5, wh, 0.0)

    @precondition(lambda self: bool(self.connectors_in("idle_fee")))
    @rule(seconds=st.sampled_from([600, 7200, 86400]))
    def idle_time(self, seconds: int) -> None:
        """The idle fee runs (STOP-9), possibly past the authorized amount (AMT-4)."""
        self.meter(self.connectors_in("idle_fee")[0], seconds, 0, 0.0)

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

    def true_limit(self, m: ConnectorMachine) -> int | None:
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
        """Drain: every approved payment ends in exactly one confirmed Commit or Void (2)."""
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
            for kind, c in timers:
                self.timers.pop((kind, c), None)
                self.now_s += 1
                self.step(TimerFired(kind, c, self.at()))
        undisposed = [sid for sid, p in self.payments.items() if p.confirmed != 1]
        assert not undisposed, f"approved payments never disposed: {undisposed}"
        for c, m in self.station.connectors.items():
            assert m.payment is None, (c, m.state)
            assert m.state not in ENERGY_STATES, (c, m.state)


# about 13 s; every invariant is reached (see the mutation table in the issue 3 report)
StationMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_station_invariants = StationMachine.TestCase
