"""HIL scenarios: files in ``hil/scenarios/`` run in simulation and on a rig (docs/hil-rig.md).

* :mod:`hil.scenario.schema` — the file format and its loader (``FILE:LINE: PATH: REASON``);
* :mod:`hil.scenario.cards` — the built-in test cards;
* :mod:`hil.scenario.station` — the station: simulators or ``rig.yaml`` hardware, the agent, a back office;
* :mod:`hil.scenario.engine` — runs a scenario, end-of-run checks, results;
* :mod:`hil.scenario.operator` — operator prompts (console, scripted);
* :mod:`hil.scenario.rig` — ``rig.yaml``;
* :mod:`hil.scenario.junit` — JUnit XML.

``python -m hil.run`` is the runner's command line.
"""

from pathlib import Path

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
