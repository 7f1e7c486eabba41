"""One table-driven test per requirement scenario, on a 1- and a 3-connector station (issue 3 acceptance 1).

Each case: initial setup events (effects not asserted) + events + the exact expected effect list.
"""

from __future__ import annotations

from typing import Any

import pytest

from statemachines.effects import Commit, StartCardRead
from statemachines.events import (
    AuthorizationOutcome,
    AuthorizationResult,
    CardRead,
    CommitResult,
    MeterReading,
    Plugged,
    SettlementOutcome,
    TerminalLinkDown,
    TerminalLinkUp,
    Unplugged,
)
from tests.statemachines.expected import EXPECTED
from tests.statemachines.scenarios import CHARGING, SPECS
from tests.support.station import CARD_A, assert_write_ahead, flatten, make_station, run, t


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
    config: Any, pricer: Any, setup: list[Any], events: list[Any], expected: list[Any], n: int
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
    assert station.handle(CommitResult(1, t(701), "S1", SettlementOutcome.OK))
    assert station.connectors[1].state == "available"


@pytest.mark.req("START-2")
def test_req_start_2_earliest_plug_in_gets_the_card() -> None:
    station = make_station(3)
    run(station, [Plugged(2, t(0)), Plugged(1, t(1))])
    effects = station.handle(CardRead(t(5), CARD_A))
    assert station.connectors[2].state == "authorizing"
    assert station.connectors[1].state == "awaiting_card"
    run(station, [AuthorizationResult(2, t(6), AuthorizationOutcome.APPROVED, "S9")])
    assert station.connectors[2].state == "charging"
    assert any(isinstance(e, StartCardRead) for e in effects) is False
