"""STOP-8, START-8: a session is priced by the tariff in effect when it began (``set_tariff`` →
``TariffChanged``), never by one set while it ran; a connector without a session takes a new tariff
at once, so its next session is priced by it.

The property test runs the harness of ``test_properties.py`` (every rule and invariant there) with
one more rule, ``change_tariff``, that hands the station one of several tariffs at random points.
The harness binds every session to the tariff it last gave the station when the session's first
record appeared (the card read, or the approval of a remote start / free vend) and checks each
priced record (meter, stop, commit with its amount, session ended, ``PublishSessionEnded``, the
receipt) against that tariff applied to the record's usage. After each change it checks the public
view: a connector without a session prices with the new tariff, one with a session keeps its own
and holds the new one as ``pending_pricer``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as reached
from hypothesis import strategies as st
from hypothesis.stateful import rule

from statemachines.config import StationConfig
from statemachines.effects import (
    CancelCardRead,
    Effect,
    IssueReceipt,
    MessageKey,
    PublishSessionEnded,
    RecordCommitDecided,
    RecordMeter,
    RecordSessionEnded,
    ShowMessage,
    StartCardRead,
)
from statemachines.events import (
    AuthorizationOutcome,
    AuthorizationResult,
    CardKind,
    CardRead,
    CardToken,
    CommitResult,
    MeterReading,
    PaymentMethod,
    PaymentRestored,
    Plugged,
    RestoredPayment,
    SettlementOutcome,
    StopRequest,
    StopSource,
    TariffChanged,
    TerminalLinkUp,
    TimerFired,
    TimerKind,
    Unplugged,
)
from statemachines.pricing import Usage, UsageKind
from tests.statemachines.scenarios import CHARGING, PLUG_ONLY
from tests.statemachines.test_properties import PRICER, StationMachine
from tests.support.pricing import LinearPricer
from tests.support.station import CARD_A, CARD_B, make_station, ref, run, t

# pairwise different prices for energy, time and idle time
TARIFFS = (
    PRICER,
    LinearPricer(per_kwh_minor=900, per_minute_minor=0, idle_per_minute_minor=10),
    LinearPricer(per_kwh_minor=200, per_minute_minor=7, idle_per_minute_minor=1),
)


class TariffChangeMachine(StationMachine):
    @rule(tariff=st.sampled_from(TARIFFS))
    def change_tariff(self, tariff: LinearPricer) -> None:
        running = {c: m.session.ref for c, m in self.station.connectors.items() if m.session is not None}
        self.tariff = tariff
        self.step(TariffChanged(self.at(), tariff))
        for c, m in self.station.connectors.items():
            if c in running:  # STOP-8: keeps the tariff it began with, the new one is for the next
                assert m.session is not None
                assert m.session.ref == running[c]
                assert m.pricer == self.sessions[running[c]].pricer, f"connector {c} changed tariff"
                assert m.pending_pricer == tariff, f"connector {c} lost the new tariff"
                reached("tariff changed during a session")
            else:  # START-8: a connector without a session takes it at once
                assert m.pricer == tariff, f"idle connector {c} did not take the new tariff"
                assert m.pending_pricer is None

    def follow_session(self, effect: Effect) -> None:
        super().follow_session(effect)
        if isinstance(effect, RecordCommitDecided | RecordSessionEnded):
            own = self.sessions[effect.session_ref].pricer.cost_minor(effect.usage)
            if own != self.tariff.cost_minor(effect.usage):
                reached("session settled by a tariff since replaced, which would price it differently")

    def assert_invariants(self) -> None:
        super().assert_invariants()
        for c, m in self.station.connectors.items():
            if m.session is not None:
                assert m.pricer == self.sessions[m.session.ref].pricer, f"session on {c} repriced"


TariffChangeMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_req_stop_8_start_8_sessions_keep_the_tariff_they_began_with = pytest.mark.req("STOP-8", "START-8")(
    TariffChangeMachine.TestCase
)


# --- the same rule on examples ------------------------------------------------------------------------

CARD_C = CardToken(CardKind.EMV, "hashC", "****3333")
OLD = LinearPricer(per_kwh_minor=1000)  # 10.00 per kWh
NEW = LinearPricer(per_kwh_minor=2000)


@pytest.mark.req("STOP-8", "START-8")
def test_req_stop_8_a_running_session_keeps_its_tariff_and_the_next_one_takes_the_new() -> None:
    station = make_station(1, StationConfig(), OLD)
    run(station, CHARGING)  # card at t(5), 0 Wh so far
    # the tap-to-stop scan waiting for a card is restarted: the new price is on the screen (START-8)
    restarted = station.handle(TariffChanged(t(100), NEW))
    assert [type(e).__name__ for e in restarted] == ["CancelCardRead", "ShowMessage", "StartCardRead"]
    assert (station.connectors[1].pricer, station.connectors[1].pending_pricer) == (OLD, NEW)
    effects = run(
        station,
        [
            MeterReading(1, t(300), 101_000, 7200.0),
            Unplugged(1, t(400)),
            MeterReading(1, t(401), 101_500, 0.0),
            CommitResult(1, t(402), "S1", SettlementOutcome.OK),
        ],
    )
    (commit,) = [e for e in effects if isinstance(e, RecordCommitDecided)]
    (ended,) = [e for e in effects if isinstance(e, PublishSessionEnded)]
    (receipt,) = [e for e in effects if isinstance(e, IssueReceipt)]
    assert (commit.amount_minor, commit.cost_minor) == (1500, 1500)  # 1.5 kWh at 10.00, not 20.00
    assert (ended.cost_minor, ended.amount_minor, receipt.amount_minor) == (1500, 1500, 1500)
    # the connector's next session begins: priced by the new tariff
    effects = run(
        station,
        [
            Plugged(1, t(500)),
            CardRead(t(505), CARD_B),
            AuthorizationResult(1, t(506), AuthorizationOutcome.APPROVED, "S2"),
            MeterReading(1, t(507), 101_500, 0.0),
            MeterReading(1, t(600), 102_000, 7200.0),
        ],
    )
    meters = [e for e in effects if isinstance(e, RecordMeter)]
    assert [(m.session_ref, m.energy_wh, m.cost_minor) for m in meters][-1] == (ref(505), 500, 1000)
    assert (station.connectors[1].pricer, station.connectors[1].pending_pricer) == (NEW, None)


@pytest.mark.req("START-8")
def test_req_start_8_a_connector_without_a_session_takes_a_new_tariff_at_once() -> None:
    """Connector 1 charges under the old tariff; connector 2, plugged and waiting for a card, has
    no session yet: its session is priced by the new tariff."""
    station = make_station(2, PLUG_ONLY, OLD)
    run(station, CHARGING)
    run(station, [Plugged(2, t(50)), TariffChanged(t(60), NEW)])
    assert (station.connectors[2].pricer, station.connectors[2].pending_pricer) == (NEW, None)
    assert (station.connectors[1].pricer, station.connectors[1].pending_pricer) == (OLD, NEW)
    effects = run(
        station,
        [
            CardRead(t(65), CARD_C),
            AuthorizationResult(2, t(66), AuthorizationOutcome.APPROVED, "S2"),
            MeterReading(2, t(67), 50_000, 0.0),
            MeterReading(2, t(300), 51_000, 7200.0),
            MeterReading(1, t(300), 101_000, 7200.0),
            StopRequest(1, t(301), StopSource.LOCAL),
            TimerFired(TimerKind.FINAL_METER, 1, t(311)),
        ],
    )
    costs = {(m.connector_id, m.energy_wh): m.cost_minor for m in effects if isinstance(m, RecordMeter)}
    assert costs[(2, 1000)] == 2000  # new tariff
    assert costs[(1, 1000)] == 1000  # the running session's own tariff
    (commit,) = [e for e in effects if isinstance(e, RecordCommitDecided)]
    assert (commit.connector_id, commit.amount_minor) == (1, 1000)


@pytest.mark.req("START-8")
def test_req_start_8_a_tariff_set_during_a_card_read_is_shown_before_the_card_is_taken() -> None:
    """A read waiting for a card showed the old price; a new tariff restarts it (the new price shown
    first), and the session of the card then read is priced by the tariff that was shown."""
    station = make_station(1, PLUG_ONLY, OLD)
    first = run(station, [TerminalLinkUp(t(0)), Plugged(1, t(1))])
    assert [e.key for e in first if isinstance(e, ShowMessage)] == [MessageKey.TARIFF]
    restarted = station.handle(TariffChanged(t(2), NEW))
    assert restarted[0] == CancelCardRead()
    assert [e.key for e in restarted if isinstance(e, ShowMessage)] == [MessageKey.TARIFF]
    assert [e for e in restarted if isinstance(e, StartCardRead)]
    run(station, [CardRead(t(5), CARD_A), AuthorizationResult(1, t(6), AuthorizationOutcome.APPROVED, "S1")])
    assert station.connectors[1].pricer is NEW


# --- a session restored after a restart keeps its own tariff (issue 10) ---------------------------------


def _restored_payment(energy_wh: int) -> RestoredPayment:
    """A journaled EMV payment (``energy_wh`` charged by t(600)) still charging at the restart."""
    usage = OLD.accumulate(Usage(), t(0), t(600), energy_wh, UsageKind.CHARGING)
    return RestoredPayment(
        method=PaymentMethod.EMV,
        session_ref="1-restored",
        session_id="S7",
        card=CARD_A,
        authorized_minor=5000,
        usage=usage,
        last_meter_wh=100_000 + energy_wh,
        last_meter_at=t(600),
        energy_on=True,
        started=True,
    )


@pytest.mark.req("STOP-8", "ERR-5")
def test_req_stop_8_a_restored_session_is_priced_by_its_own_tariff_and_the_next_by_the_stations() -> None:
    """After a restart the station's tariff is NEW (a journaled set_tariff) and the journal says the
    open session started with OLD: ``PaymentRestored`` carries OLD; the session's meter values,
    commit, ``session.ended`` and receipt amount are OLD's; the connector's next session is NEW's."""
    station = make_station(1, StationConfig(), NEW)
    restore = PaymentRestored(1, t(700), _restored_payment(1000), plugged=True, pricer=OLD)
    run(station, [restore])
    machine = station.connectors[1]
    assert (machine.pricer, machine.pending_pricer) == (OLD, NEW)
    assert machine.running_cost_minor == 1000  # 1 kWh at 10.00, not at 20.00
    effects = run(
        station,
        [
            MeterReading(1, t(760), 101_500, 7200.0),
            Unplugged(1, t(800)),
            MeterReading(1, t(801), 101_500, 0.0),
            CommitResult(1, t(802), "S7", SettlementOutcome.OK),
        ],
    )
    (commit,) = [e for e in effects if isinstance(e, RecordCommitDecided)]
    (ended,) = [e for e in effects if isinstance(e, PublishSessionEnded)]
    (receipt,) = [e for e in effects if isinstance(e, IssueReceipt)]
    assert commit.amount_minor == ended.amount_minor == receipt.amount_minor == 1500  # OLD: 1.5 kWh
    assert OLD.cost_minor(commit.usage) == 1500 != NEW.cost_minor(commit.usage)
    run(
        station,
        [
            Plugged(1, t(900)),
            CardRead(t(905), CARD_B),
            AuthorizationResult(1, t(906), AuthorizationOutcome.APPROVED, "S8"),
        ],
    )
    assert (machine.pricer, machine.pending_pricer) == (NEW, None)


@pytest.mark.req("ERR-5")
def test_req_err_5_a_restored_session_without_a_journaled_tariff_keeps_the_stations() -> None:
    """A payment journaled before tariffs were (schema 2): no pricer, the station's tariff prices it."""
    station = make_station(1, StationConfig(), NEW)
    run(station, [PaymentRestored(1, t(700), _restored_payment(1000), plugged=True)])
    assert (station.connectors[1].pricer, station.connectors[1].pending_pricer) == (NEW, None)
    assert station.connectors[1].running_cost_minor == 2000
