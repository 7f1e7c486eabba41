"""``python -m hil.run``: the list, broken files, failures that never hang the runner, JUnit (issue 9).

HIL-1. Acceptance 1 (``--list`` covers every station-level requirement id with ≥ 40 scenarios),
2 (the JUnit report validates; sim mode itself is ``test_scenarios.py``) and 4 (a broken file is
``FILE:LINE: PATH: REASON``; an unknown step name, a missing card and a timeout each fail their
scenario with a clear message while the runner goes on).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.reqcov import REQUIREMENTS, requirements
from hil.run import select
from hil.scenario import SCENARIO_DIR
from hil.scenario.junit import validate

pytestmark = pytest.mark.req("HIL-1")
REPO = Path(__file__).resolve().parents[2]
# the ids a station-level run can show: every TERM, START, AMT, STOP, ERR, RCPT and REC requirement
STATION_PREFIXES = ("TERM", "START", "AMT", "STOP", "ERR", "RCPT", "REC")
STATION_IDS = [
    *(f"TERM-{n}" for n in range(1, 7)),
    *(f"START-{n}" for n in range(1, 9)),
    *(f"AMT-{n}" for n in range(1, 5)),
    *(f"STOP-{n}" for n in range(1, 10)),
    *(f"ERR-{n}" for n in range(1, 9)),
    "RCPT-1",
    "RCPT-2",
    "REC-1",
]


def hil_run(*args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def write(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def test_the_station_ids_are_the_requirements_of_requirements_md() -> None:
    if not REQUIREMENTS.exists():
        pytest.skip(f"{REQUIREMENTS} is not beside this checkout")
    listed = [rid for rid, _ in requirements() if rid.split("-")[0] in STATION_PREFIXES]
    assert listed == STATION_IDS


def test_list_shows_40_scenarios_covering_every_station_requirement() -> None:
    run = hil_run("--list", timeout=60)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if re.match(r"^[a-z0-9-]+ {2,}(any|apollo|p6x) ", line)]
    assert len(rows) == len(list(SCENARIO_DIR.glob("*.yaml"))) >= 40
    shown = {rid for row in rows for rid in row.split()[2].split(",")}
    missing = [rid for rid in STATION_IDS if rid not in shown]
    assert missing == [], f"no scenario shows {missing}"
    assert f"{len(rows)} scenarios showing" in run.stdout


def test_scenario_files_name_their_ids_and_a_title() -> None:
    selection = select([])
    assert selection.broken == []
    for scenario in selection.scenarios:
        assert scenario.id == Path(scenario.file).stem
        assert scenario.requirements[0].split("-")[0] in STATION_PREFIXES, scenario.id
        assert len(scenario.title) >= 20, scenario.id


def test_broken_files_are_named_file_line_path_reason(tmp_path: Path) -> None:
    unknown_step = write(
        tmp_path,
        "unknown-step.yaml",
        """\
        title: a step that does not exist
        requirements: [START-1]
        steps:
          - tap: visa
          - teleport: 1
        """,
    )
    bad_value = write(
        tmp_path,
        "bad-value.yaml",
        """\
        title: a wait with a negative timeout
        requirements: [START-1]
        steps:
          - wait_connector: {connector: 1, state: [charging], within: -3}
        """,
    )
    bad_yaml = write(tmp_path, "bad-yaml.yaml", "title: [unclosed\nrequirements: [START-1]\n")
    no_title = write(tmp_path, "no-title.yaml", "requirements: [START-1]\nsteps: [wait_settled]\n")
    run = hil_run("--list", str(unknown_step), str(bad_value), str(bad_yaml), str(no_title))
    assert run.returncode == 2
    errors = run.stderr.splitlines()
    assert errors[0].startswith(f"{unknown_step}:5: steps[1].teleport: unknown step 'teleport'")
    assert "wait_settled" in errors[0]  # it names the steps there are
    assert errors[1].startswith(f"{bad_value}:4: steps[0].wait_connector.within: ")
    assert errors[2].startswith(f"{bad_yaml}:")
    assert errors[3].startswith(f"{no_title}:1: ")
    assert "title" in errors[3]
    assert "0 scenarios showing" in run.stdout


def test_an_unknown_scenario_name_is_refused_with_the_list() -> None:
    run = hil_run("start-tapp")
    assert run.returncode == 2
    assert "unknown scenario 'start-tapp'" in run.stderr
    assert "start-tap" in run.stderr


def test_failures_each_fail_their_scenario_clearly_and_the_runner_goes_on(tmp_path: Path) -> None:
    """A broken file, a missing card, a wait that times out, a scenario over its timeout_s and a
    failing expectation: each is reported with its reason, the good scenario after them still runs
    and passes, the run ends in bounded time, exit 2 (a file was unreadable) and the JUnit report
    validates, with the agent log and the upstream capture attached to the failures."""
    files = [
        write(tmp_path, "aa-unknown-step.yaml", "title: t\nrequirements: [START-1]\nsteps: [{fly: 1}]\n"),
        write(
            tmp_path,
            "ab-missing-card.yaml",
            """\
            title: a card that no one has
            requirements: [START-1]
            steps:
              - tap: amex-gold
            """,
        ),
        write(
            tmp_path,
            "ac-wait-timeout.yaml",
            """\
            title: a session that never starts
            requirements: [START-1]
            steps:
              - wait_connector: {connector: 1, state: [charging], within: 1}
            """,
        ),
        write(
            tmp_path,
            "ad-scenario-timeout.yaml",
            """\
            title: longer than the scenario may take
            requirements: [START-1]
            timeout_s: 6
            steps:
              - sleep: 30
            """,
        ),
        write(
            tmp_path,
            "ae-wrong-expectation.yaml",
            """\
            title: expects a commit that never happened
            requirements: [STOP-7]
            steps:
              - expect_terminal: {sessions: {committed: 1}}
            """,
        ),
        SCENARIO_DIR / "start-tap.yaml",
    ]
    junit = tmp_path / "out.xml"
    started = time.monotonic()
    run = hil_run(*map(str, files), "--junit", str(junit), "--workdir", str(tmp_path / "w"))
    assert time.monotonic() - started < 200
    out = run.stdout
    assert run.returncode == 2, out + run.stderr
    assert f"{files[0]}:3: steps[0].fly: unknown step 'fly'" in run.stderr
    assert "FAIL ab-missing-card [sim, apollo]" in out
    assert "unknown card 'amex-gold' (cards: declined, mastercard," in out
    assert "FAIL ac-wait-timeout" in out
    assert "timed out after 1.0 s waiting for" in out
    assert "FAIL ad-scenario-timeout" in out
    assert "the scenario took longer than its timeout_s (6 s)" in out
    assert "FAIL ae-wrong-expectation" in out
    assert "terminal sessions: expected {'committed': 1}, got {}" in out
    assert "PASS start-tap [sim, apollo]" in out
    assert "1 passed, 4 failed, 0 skipped, 1 unreadable (sim mode" in out

    report = junit.read_bytes()
    assert validate(report) == []
    suite = ET.fromstring(report).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "4", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["aa-unknown-step"].find("error") is not None
    wrong = cases["ae-wrong-expectation"]
    failure = wrong.find("failure")
    assert failure is not None
    assert "terminal sessions: expected" in str(failure.get("message"))
    attached = wrong.findtext("system-out") or ""
    assert "===== agent log" in attached
    assert "agent started" in attached or "evpay-agent" in attached
    assert "===== upstream capture (upstream.jsonl" in attached
    passed = cases["start-tap"]
    assert passed.get("classname") == "hil.sim.apollo"
    assert passed.find("failure") is None
    properties = {(p.get("name"), p.get("value")) for p in passed.iter("property")}
    assert {("requirement", "START-1"), ("requirement", "STOP-7"), ("mode", "sim")} <= properties


def test_the_junit_schema_rejects_what_is_not_a_junit_report() -> None:
    good = (
        b'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="hil" tests="1"'
        b' failures="0" errors="0">'
        b'<testcase name="a" classname="hil.sim.apollo" time="1.0"/></testsuite></testsuites>'
    )
    assert validate(good) == []
    nameless = good.replace(b' name="a"', b"")
    assert validate(nameless) != []
    unknown_element = good.replace(b"<testcase ", b"<testcas ")
    assert validate(unknown_element) != []
    truncated = validate(good[:80])
    assert len(truncated) == 1
    assert truncated[0].startswith("not readable as XML")


def test_every_step_is_documented_in_the_rig_guide() -> None:
    from hil.scenario.schema import STEP_TYPES

    guide = (REPO / "docs" / "hil-rig.md").read_text(encoding="utf-8")
    table = {m.group(1) for m in re.finditer(r"^\| `([a-z_]+)`", guide, re.M)}
    table |= {m.group(1) for m in re.finditer(r"^\| `[a-z_]+` / `([a-z_]+)`", guide, re.M)}
    assert sorted(set(STEP_TYPES) - table) == []


def test_the_rig_yaml_of_the_guide_loads_and_a_broken_one_is_located(tmp_path: Path) -> None:
    from hil.scenario.rig import load_rig
    from hil.scenario.schema import ScenarioError

    guide = (REPO / "docs" / "hil-rig.md").read_text(encoding="utf-8")
    example = guide.split("## `rig.yaml`", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    good = write(tmp_path, "rig.yaml", example)
    rig = load_rig(good)
    assert (rig.terminal.family, rig.terminal.tcp, rig.connectors) == ("apollo", ("192.168.1.40", 3201), 2)
    assert rig.terminal.test_serials == ["APO1234567"]
    broken = write(tmp_path, "broken.yaml", example.replace("family: apollo", "family: apolo"))
    with pytest.raises(ScenarioError) as caught:
        load_rig(broken)
    assert str(caught.value).startswith(f"{broken}:3: terminal.family: ")
    run = hil_run("--rig", str(broken), "start-tap", timeout=60)
    assert run.returncode == 2
    assert f"{broken}:3: terminal.family: " in run.stderr
