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
    PublishSessionEnded,
    RecordCardRead,
    RecordCommitConfirmed,
    StartCardRead,
)
from statemachines.events import (
    AuthorizationOutcome,
    AuthorizationResult,
    CardRead,
    CommitResult,
    Event,
    MeterReading,
    Plugged,
    SettlementOutcome,
    TerminalLinkDown,
    TerminalLinkUp,
    Unplugged,
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
