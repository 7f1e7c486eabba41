"""Every HIL scenario file passes in sim mode (issue 9: a scenario that stops passing fails CI).

Each file of ``hil/scenarios/`` runs as its own test, marked with the requirement ids the file
names, against the real ``evpay-agent run`` process, the PSP and charger simulators and a Mosquitto
of its own (``hil.scenario.engine.run_scenario``, the runner ``python -m hil.run`` uses). The
end-of-run checks (everything settled, terminal = journal, the stream checker, no traceback) are
part of every run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.scenario import SCENARIO_DIR
from hil.scenario.engine import run_scenario
from hil.scenario.schema import Scenario, load_scenario

FILES = sorted(SCENARIO_DIR.glob("*.yaml"))


def _params() -> list[object]:
    params: list[object] = []
    for path in FILES:
        scenario = load_scenario(path)  # an unreadable file fails collection, naming FILE:LINE
        params.append(
            pytest.param(
                scenario,
                id=scenario.id,
                marks=[
                    pytest.mark.req(*scenario.requirements),
                    pytest.mark.timeout(scenario.timeout_s + 60),
                ],
            )
        )
    return params


@pytest.mark.parametrize("scenario", _params())
async def test_scenario_passes_in_sim_mode(scenario: Scenario, tmp_path: Path) -> None:
    result = await run_scenario(scenario, tmp_path / scenario.id)
    assert result.status == "passed", "\n".join(
        [result.message, *result.log, "---- agent log (tail) ----", result.agent_log[-6000:]]
    )
