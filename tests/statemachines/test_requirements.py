"""One table-driven test per requirement scenario, on a 1- and a 3-connector station (issue 3 acceptance 1).

Each case: initial setup events (effects not asserted) + events + the exact expected effect list.
"""

from __future__ import annotations

from typing import Any

import pytest

from statemachines.config import StationConfig
from statemachines.connector import ConnectorMachineState
from statemachines.effects import (
    Commit,
    Effect,
    IssueReceipt,
    PublishPaymentCaptured,
    PublishPaymentDeclined,
    PublishPaymentIncremented,
    PublishSessionEnded,
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordMeter,
    RecordPaymentApproved,
    RecordPaymentDeclined,
    RecordPaymentIncremented,
    RecordSessionEnded,
    StartCardRead,
    UpdateAuthorization,
    Void,
)
from statemachines.events import (
    AuthorizationOutcome,
    AuthorizationResult,
    CardRead,
    ChargerBack,
    ChargerLost,
    ChargerState,
    ChargerStatus,
    CommitResult,
    Event,
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
    Unplugged,
    UpdateAuthorizationResult,
    UpdateOutcome,
)
from tests.statemachines.expected import EXPECTED
from tests.statemachines.scenarios import CHARGING, PLUG_ONLY, SPECS
from tests.support.pricing import LinearPricer
from tests.support.station import CARD_A, REF, assert_write_ahead, flatten, make_station, run, state, t


def _params() -> list[Any]:
    params = []
    for req, name, config, pricer, setup, events, differs in SPECS:
        for n in (1, 3):
            key = f"{name}@3" if differs and n == 3 else name
            params.append(
                pytest.param(
                    config,
                    pricer,
                    setup,
                    events,
                    flatten(EXPECTED[key]),
                    n,
                    id=f"{req}-{name}-{n}c",
                    marks=pytest.mark.req(req),
                )
            )
    return params


@pytest.mark.parametrize(("config", "pricer", "setup", "events", "expected", "n"), _params())
def test_req_scenario(
    config: StationConfig,
    pricer: LinearPricer | None,
    setup: list[Event],
    events: list[Event],
    expected: list[Effect],
    n: int,
) -> None:
    station = make_station(n, config, pricer)
    before = run(station, setup)
    effects = run(station, events)
    assert effects == expected
    assert_write_ahead(before + effects)


def test_every_acceptance_requirement_has_a_scenario() -> None:
    wanted = {f"START-{i}" for i in range(1, 9)} | {f"AMT-{i}" for i in range(1, 5)}
    wanted |= {f"STOP-{i}" for i in range(1, 10)} | {f"ERR-{i}" for i in (1, 2, 3, 4, 8)}
    assert wanted <= {spec[0] for spec in SPECS}


@pytest.mark.req("ERR-3")
@pytest.mark.parametrize("n", [1, 3])
def test_req_err_3_commit_held_while_offline_and_sent_on_link_up(n: int) -> None:
    station = make_station(n)
    run(station, CHARGING)
    run(station, [TerminalLinkDown(t(100)), Unplugged(1, t(600))])
    during_outage = station.handle(MeterReading(1, t(601), 104_000, 0.0))
    assert not any(isinstance(e, Commit) for e in during_outage)
    on_link_up = station.handle(TerminalLinkUp(t(700)))
    assert on_link_up[0] == Commit(1, "S1", 160)  # before any new card read (TERM-5)
    confirmed = station.handle(CommitResult(1, t(701), "S1", SettlementOutcome.OK))
    assert RecordCommitConfirmed(1, REF, "S1", SettlementOutcome.OK) in confirmed
    assert PublishPaymentCaptured(1, REF, "S1", 160) in confirmed
    assert IssueReceipt(1, REF, 160) in confirmed
    assert state(station, 1) is ConnectorMachineState.AVAILABLE


@pytest.mark.req("START-2")
def test_req_start_2_earliest_plug_in_gets_the_card() -> None:
    station = make_station(3)
    run(station, [Plugged(2, t(0)), Plugged(1, t(1))])
    effects = station.handle(CardRead(t(5), CARD_A))
    assert state(station, 2) is ConnectorMachineState.AUTHORIZING
    assert state(station, 1) is ConnectorMachineState.AWAITING_CARD
    assert [e.connector_id for e in effects if isinstance(e, RecordCardRead)] == [2]
    run(station, [AuthorizationResult(2, t(6), AuthorizationOutcome.APPROVED, "S9")])
    assert state(station, 2) is ConnectorMachineState.CHARGING
    assert not any(isinstance(e, StartCardRead) for e in effects)


@pytest.mark.req("START-2")
def test_req_start_2_a_re_delivered_plug_in_keeps_its_place() -> None:
    """The charger reports connector 1's plug-in again (a status re-sent after a reconnect): it
    still plugged in first, so the card is its own, not connector 2's."""
    station = make_station(2, PLUG_ONLY)
    run(station, [Plugged(1, t(0)), Plugged(2, t(1)), Plugged(1, t(2))])
    assert station.connectors[1].plugged_at == t(0)
    effects = station.handle(CardRead(t(5), CARD_A))
    assert [e for e in effects if isinstance(e, RecordCardRead)] == [RecordCardRead(1, REF, CARD_A, 5000)]
    assert state(station, 1) is ConnectorMachineState.AUTHORIZING
    assert state(station, 2) is ConnectorMachineState.AWAITING_CARD


@pytest.mark.req("STOP-7", "ERR-1")
def test_req_stop_7_a_void_before_energy_ends_no_session_upstream() -> None:
    """A payment voided before energy ever flowed: no session.started, so no session.ended either;
    the payment still gets its receipt."""
    (spec,) = [s for s in SPECS if s[1] == "authorized_then_driver_aborts"]
    effects = run(make_station(1, spec[2]), spec[5])
    assert not any(isinstance(e, PublishSessionEnded) for e in effects)
    assert [e for e in effects if isinstance(e, IssueReceipt)] == [IssueReceipt(1, REF, 0)]


@pytest.mark.req("STOP-7", "ERR-1", "START-6")
@pytest.mark.parametrize("spec_name", ["plug_in_timeout_voids", "authorized_then_driver_aborts"])
def test_req_stop_7_nothing_is_charged_for_a_session_that_never_started(spec_name: str) -> None:
    """A tariff with a flat session fee prices even an empty usage; a payment whose session never
    started (no energy was ever enabled) is voided all the same — no fee is captured (found by the
    randomized-world fuzzer: seeds 15, 28, 30 committed the session fee)."""
    (spec,) = [s for s in SPECS if s[1] == spec_name]
    fee = LinearPricer(session_fee_minor=100)
    effects = run(make_station(1, spec[2], fee), spec[5])
    assert any(isinstance(e, Void) for e in effects)
    assert not any(isinstance(e, Commit | RecordCommitDecided) for e in effects)
    assert [e for e in effects if isinstance(e, IssueReceipt)] == [IssueReceipt(1, REF, 0)]


@pytest.mark.req("START-4", "STOP-8")
def test_req_start_4_an_unpaid_session_that_never_started_owes_nothing() -> None:
    station = make_station(1, StationConfig(), LinearPricer(session_fee_minor=100))
    effects = run(
        station,
        [
            RemoteStart(1, t(5), "TOKEN-1"),  # authorized first, the vehicle never comes
            TimerFired(TimerKind.PLUG_IN, 1, t(400)),
        ],
    )
    (ended,) = [e for e in effects if isinstance(e, RecordSessionEnded)]
    assert ended.cost_minor == 0
    assert [e.amount_minor for e in effects if isinstance(e, IssueReceipt)] == [0]


@pytest.mark.req("ERR-3", "ERR-7", "TERM-5")
def test_req_err_3_an_approval_that_arrives_after_a_link_reset_is_honoured() -> None:
    """The link is re-set up (a command timed out: Reset + setup) while an Auth Session is in flight,
    and its approval still comes: the engine waited for it and the payment goes on — it is not
    failed at the link-down and then ignored, which left an orphan hold (fuzzer seed 19)."""
    station = make_station(2, PLUG_ONLY)  # connector 2 waits for a card too: a read would be wanted
    run(station, [TerminalLinkUp(t(0)), Plugged(1, t(1)), CardRead(t(5), CARD_A), Plugged(2, t(5))])
    assert state(station, 1) is ConnectorMachineState.AUTHORIZING

    during = run(station, [TerminalLinkDown(t(6)), TerminalLinkUp(t(7))])
    assert not any(isinstance(e, RecordPaymentDeclined | PublishPaymentDeclined) for e in during)
    # and no new card read while that Auth Session may still be on the terminal
    assert not any(isinstance(e, StartCardRead) for e in during)
    effects = station.handle(AuthorizationResult(1, t(8), AuthorizationOutcome.APPROVED, "S1", 5000))
    assert state(station, 1) is ConnectorMachineState.CHARGING
    assert any(isinstance(e, RecordPaymentApproved) for e in effects)
    # an answer that did fail is a decline as before (nothing to dispose of)
    station = make_station(1, PLUG_ONLY)
    run(station, [TerminalLinkUp(t(0)), Plugged(1, t(1)), CardRead(t(5), CARD_A), TerminalLinkDown(t(6))])
    failed = station.handle(AuthorizationResult(1, t(9), AuthorizationOutcome.FAILED, reason="LinkLost"))
    assert any(isinstance(e, RecordPaymentDeclined) for e in failed)
    assert state(station, 1) is ConnectorMachineState.AWAITING_CARD


@pytest.mark.req("STOP-8")
def test_req_stop_8_a_register_read_while_energy_flowed_is_not_the_next_session_start() -> None:
    """Session 1 ends without a reading at rest (the final-meter wait timed out), so its last
    register was read while energy still flowed. Session 2 must not start from it — that billed
    session 1's last minutes to the next driver (fuzzer seed 9). Its first reading is its start."""
    station = make_station(1, PLUG_ONLY)
    run(
        station,
        [
            Plugged(1, t(0)),
            CardRead(t(5), CARD_A),
            AuthorizationResult(1, t(6), AuthorizationOutcome.APPROVED, "S1"),
            MeterReading(1, t(7), 100_000, 0.0),
            MeterReading(1, t(300), 102_000, 7200.0),  # mid-charge: energy flows on after this
            Unplugged(1, t(600)),
            TimerFired(TimerKind.FINAL_METER, 1, t(630)),  # no reading at rest ever came
            CommitResult(1, t(631), "S1", SettlementOutcome.OK),
        ],
    )
    assert state(station, 1) is ConnectorMachineState.AVAILABLE
    effects = run(
        station,
        [
            Plugged(1, t(700)),
            CardRead(t(705), CARD_A),
            AuthorizationResult(1, t(706), AuthorizationOutcome.APPROVED, "S2"),
        ],
    )
    (on,) = [e for e in effects if isinstance(e, RecordEnergyOn)]
    assert on.meter_wh is None  # unknown: the next reading is the start
    station.handle(MeterReading(1, t(707), 103_000, 0.0))  # the register after session 1's tail
    station.handle(MeterReading(1, t(900), 104_000, 7200.0))
    assert station.connectors[1].running_cost_minor == 40  # 1 kWh at 0.40, not 2 kWh


@pytest.mark.req("STOP-8")
def test_req_stop_8_a_register_read_at_rest_is_the_session_start() -> None:
    """A reading taken while the connector waited (no energy flowing) is a fair start register."""
    station = make_station(1, PLUG_ONLY)
    run(station, [Plugged(1, t(0)), MeterReading(1, t(1), 100_000, 0.0), CardRead(t(5), CARD_A)])
    effects = station.handle(AuthorizationResult(1, t(6), AuthorizationOutcome.APPROVED, "S1"))
    (on,) = [e for e in effects if isinstance(e, RecordEnergyOn)]
    assert on.meter_wh == 100_000
    station.handle(MeterReading(1, t(300), 101_000, 7200.0))
    assert station.connectors[1].running_cost_minor == 40  # 1 kWh at 0.40


def _asking_for_an_increment() -> tuple[Any, list[Effect]]:
    """A session that has just asked for an increment (2000 held, 3000 asked; 1 minor per Wh)."""
    (spec,) = [s for s in SPECS if s[1] == "increment_before_cap_then_stop_at_maximum"]
    config, pricer = spec[2], spec[3]
    assert pricer is not None
    station = make_station(1, config, pricer)
    asked = run(
        station,
        [
            *CHARGING,
            MeterReading(1, t(607), 101_000, 7200.0),
            MeterReading(1, t(907), 101_500, 7200.0),  # asks for 3000
        ],
    )
    return station, asked


@pytest.mark.req("AMT-2", "AMT-4", "STOP-8")
def test_req_amt_2_a_session_ending_while_an_increment_is_in_flight_settles_after_its_result() -> None:
    """The driver unplugs while an Update Authorization is in flight. The commit waits for its
    result, so the incremented event precedes the capture and the commit is capped at the hold
    the terminal really has (a payment.incremented after the commit contradicted the stream)."""
    station, asked = _asking_for_an_increment()
    assert any(isinstance(e, UpdateAuthorization) for e in asked)
    ended = run(station, [Unplugged(1, t(910)), MeterReading(1, t(911), 101_600, 0.0)])
    assert not any(isinstance(e, Commit | Void | RecordCommitDecided) for e in ended)
    assert state(station, 1) is ConnectorMachineState.SETTLING
    granted = station.handle(UpdateAuthorizationResult(1, t(912), "S1", UpdateOutcome.APPROVED, 3000))
    kinds = [type(e) for e in granted]
    assert kinds.index(RecordPaymentIncremented) < kinds.index(PublishPaymentIncremented)
    assert kinds.index(PublishPaymentIncremented) < kinds.index(RecordCommitDecided) < kinds.index(Commit)
    (commit,) = [e for e in granted if isinstance(e, Commit)]
    assert commit.amount_minor == 1600
    assert_write_ahead(granted)

    station, _ = _asking_for_an_increment()
    run(station, [Unplugged(1, t(910)), MeterReading(1, t(911), 101_600, 0.0)])
    failed = station.handle(UpdateAuthorizationResult(1, t(921), "S1", UpdateOutcome.FAILED))
    assert not any(isinstance(e, PublishPaymentIncremented) for e in failed)
    (commit,) = [e for e in failed if isinstance(e, Commit)]
    assert commit.amount_minor == 1600


@pytest.mark.req("AMT-2", "AMT-3", "AMT-4", "STOP-6")
def test_req_amt_2_a_cap_stop_with_an_increment_in_flight_commits_within_the_granted_hold() -> None:
    """The cost passes the hold before the increment's answer is back: the session stops at the
    cap (STOP-6), and the commit is capped at the hold the terminal ends up with — the granted
    one, or the old one when refused (fuzzer seed 141: a 50 partial approval, 100 owed, 300
    granted, and 50 was committed)."""
    for outcome, hold, expected in (
        (UpdateOutcome.APPROVED, 3000, 2150),
        (UpdateOutcome.DECLINED, None, 2000),
    ):
        station, _ = _asking_for_an_increment()
        stopped = station.handle(MeterReading(1, t(1000), 102_100, 7200.0))  # 2100 > 2000 held
        assert state(station, 1) is ConnectorMachineState.STOPPING
        assert not any(isinstance(e, UpdateAuthorization) for e in stopped)  # one in flight
        run(station, [MeterReading(1, t(1001), 102_150, 0.0)])
        assert state(station, 1) is ConnectorMachineState.SETTLING
        result = station.handle(UpdateAuthorizationResult(1, t(1002), "S1", outcome, hold))
        (commit,) = [e for e in result if isinstance(e, Commit)]
        assert commit.amount_minor == expected


@pytest.mark.req("STOP-8")
def test_req_stop_8_a_retained_register_is_not_the_session_start() -> None:
    """A retained meter value (kept by the broker, delivered at the agent's (re)subscribe) may be
    minutes old — taken mid-charge of the previous vehicle. It is no start register (fuzzer
    seed 117: 30 Wh of the previous plug cycle billed to the next driver)."""
    station = make_station(1, PLUG_ONLY)
    run(
        station,
        [
            Plugged(1, t(0)),
            MeterReading(1, t(1), 100_000, 0.0, retained=True),
            CardRead(t(5), CARD_A),
        ],
    )
    effects = station.handle(AuthorizationResult(1, t(6), AuthorizationOutcome.APPROVED, "S1"))
    (on,) = [e for e in effects if isinstance(e, RecordEnergyOn)]
    assert on.meter_wh is None
    station.handle(MeterReading(1, t(7), 100_750, 0.0))  # the real register: the start
    station.handle(MeterReading(1, t(300), 101_750, 7200.0))
    assert station.connectors[1].running_cost_minor == 40  # 1 kWh, not 1.75


@pytest.mark.req("STOP-8", "ERR-5")
def test_req_stop_8_a_retained_register_during_a_session_is_not_its_start_nor_a_step_back() -> None:
    """A retained meter value delivered while a session runs (a resubscribe: the agent restarted,
    or its charger connection came back) may be from before the session — the previous vehicle's
    plug cycle — or behind its last reading. It is neither the start register nor a new baseline
    (fuzzer seed 28: a restored session took a 15 s old retained register as its start and billed
    53 Wh for 48 delivered)."""
    for retained_wh in (100_000, 100_700):  # before the session; behind its last reading
        station = make_station(1, PLUG_ONLY)
        run(
            station,
            [
                Plugged(1, t(0)),
                MeterReading(1, t(1), 100_000, 0.0, retained=True),
                CardRead(t(5), CARD_A),
                AuthorizationResult(1, t(6), AuthorizationOutcome.APPROVED, "S1"),
            ],
        )
        if retained_wh == 100_000:  # the start is still unknown
            ignored = station.handle(MeterReading(1, t(6.5), retained_wh, 0.0, retained=True))
            assert not [e for e in ignored if isinstance(e, RecordMeter)]
        station.handle(MeterReading(1, t(7), 100_750, 0.0))  # the real register: the start
        if retained_wh == 100_700:
            ignored = station.handle(MeterReading(1, t(8), retained_wh, 0.0, retained=True))
            assert not [e for e in ignored if isinstance(e, RecordMeter)]
        station.handle(MeterReading(1, t(300), 101_750, 7200.0))
        assert station.connectors[1].running_cost_minor == 40, retained_wh  # 1 kWh, not 1.75 or 1.05
        newer = station.handle(MeterReading(1, t(301), 101_850, 7200.0, retained=True))  # ahead: counts
        assert [e.energy_wh for e in newer if isinstance(e, RecordMeter)] == [1100]


@pytest.mark.req("STOP-8", "ERR-2")
def test_req_stop_8_a_register_read_while_the_charger_says_charging_is_not_the_session_start() -> None:
    """After contact with the charger was lost, the agent ended the session, but the charger went
    on delivering and says so when it is back (`charging`). Its readings then are not at rest,
    whatever the connector's own state (fuzzer seed 138); once it reports idle, they are."""
    station = make_station(1, PLUG_ONLY)
    run(
        station,
        [
            Plugged(1, t(0)),
            CardRead(t(5), CARD_A),
            AuthorizationResult(1, t(6), AuthorizationOutcome.APPROVED, "S1"),
            MeterReading(1, t(7), 100_000, 0.0),
            MeterReading(1, t(50), 100_500, 7200.0),
            ChargerLost(t(100)),
            CommitResult(1, t(101), "S1", SettlementOutcome.OK),
            ChargerBack(t(200)),
            ChargerStatus(1, t(200), ChargerState.CHARGING),
            MeterReading(1, t(200), 101_000, 0.0),  # power unknown (0.0 reported), still flowing
        ],
    )
    assert station.connectors[1].session is None
    run(station, [ChargerStatus(1, t(210), ChargerState.IDLE), CardRead(t(220), CARD_A)])
    effects = station.handle(AuthorizationResult(1, t(221), AuthorizationOutcome.APPROVED, "S2"))
    (on,) = [e for e in effects if isinstance(e, RecordEnergyOn)]
    assert on.meter_wh is None  # 101_000 was read while the charger delivered

    station = make_station(1, PLUG_ONLY)
    run(
        station,
        [
            Plugged(1, t(0)),
            ChargerStatus(1, t(0), ChargerState.IDLE),
            MeterReading(1, t(1), 100_000, 0.0),
            CardRead(t(5), CARD_A),
        ],
    )
    effects = station.handle(AuthorizationResult(1, t(6), AuthorizationOutcome.APPROVED, "S1"))
    (on,) = [e for e in effects if isinstance(e, RecordEnergyOn)]
    assert on.meter_wh == 100_000  # idle, live, no power: at rest


@pytest.mark.req("STOP-8")
def test_req_stop_8_a_periodic_reading_sent_before_the_charger_acted_on_disable_is_not_final() -> None:
    """The charger's periodic meter value, already on its way when the agent sent ``disable``,
    still says ``charging`` at 7.2 kW: energy flowed after it. Concluding on it under-billed the
    driver (CI: 206 Wh committed, 207 Wh delivered). The final value is the one that follows the
    charger's status change; it is recorded and settled, the early one only recorded."""
    station = make_station(1, PLUG_ONLY)
    run(
        station,
        [
            *CHARGING,
            ChargerStatus(1, t(8), ChargerState.CHARGING),
            MeterReading(1, t(300), 102_000, 7200.0),
            StopRequest(1, t(400), StopSource.LOCAL),
        ],
    )
    early = station.handle(MeterReading(1, t(400), 102_200, 7200.0))
    assert not any(isinstance(e, Commit) for e in early)
    assert state(station, 1) is ConnectorMachineState.STOPPING
    final = run(
        station,
        [ChargerStatus(1, t(401), ChargerState.SUSPENDED_EVSE), MeterReading(1, t(401), 102_201, 7200.0)],
    )
    (commit,) = [e for e in final if isinstance(e, Commit)]
    assert commit.amount_minor == 88  # 2.201 kWh at 0.40 EUR/kWh = 88.04 cents

    # a reading of 0 W is final even while the status still says charging
    station = make_station(1, PLUG_ONLY)
    run(
        station,
        [*CHARGING, ChargerStatus(1, t(8), ChargerState.CHARGING), StopRequest(1, t(400), StopSource.LOCAL)],
    )
    (commit,) = [e for e in station.handle(MeterReading(1, t(401), 102_000, 0.0)) if isinstance(e, Commit)]
    assert commit.amount_minor == 80  # 2 kWh
