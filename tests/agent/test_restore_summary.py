"""The restart recovery's summary counts what it restored (issue 11: ``restore done restored=1`` was
logged on a new, empty journal): a first start says there was nothing to restore; a restart with an
open payment says ``restored=1``."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hil.psp_sim import Card
from tests.agent.rig import Rig, eventually, running_agent

SHELL = "agent.runtime.shell"


def _recovery_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SHELL and "restore" in r.getMessage()]


@pytest.mark.req("ERR-5")
async def test_first_start_restores_nothing_and_a_restart_counts_the_open_payment(
    apollo_rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = apollo_rig
    caplog.set_level(logging.INFO, logger=SHELL)
    async with running_agent(rig.loaded) as agent:
        runtime = agent.runtime
        await eventually(
            lambda: runtime.recovered.is_set() and runtime.station.arbiter.state != "offline", 10
        )
        first = _recovery_lines(caplog)
        (line,) = first
        assert line.startswith("recovery: no open payment to restore"), line
        assert "restored" not in line
        rig.charger.set_power(1, 11000.0)
        rig.charger.plug(1)
        await eventually(lambda: runtime.station.connectors[1].state == "awaiting_card", 5)
        await eventually(lambda: rig.psp.state.name == "WAIT_CARD", 10, "card read started")
        rig.psp.tap(Card.emv())
        await eventually(lambda: runtime.station.connectors[1].state == "charging", 5)
        await asyncio.sleep(0.2)
    caplog.clear()
    async with running_agent(rig.loaded) as agent:
        await eventually(lambda: agent.runtime.recovered.is_set(), 10)
        (line,) = _recovery_lines(caplog)
        assert line.startswith("recovery: restore done restored=1 "), line
        assert "failed=" not in line
