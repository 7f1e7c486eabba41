"""Rig mode without hardware (HIL-1, issue 9 acceptance 3).

The simulators stand in for a rig's real terminal and charger: they are started here as if they were
the hardware on the bench (the charger's bridge on its own Mosquitto, the terminal on TCP), and the
runner gets only what a ``rig.yaml`` gives it — no fault-injection channel. What a person would do
at the rig (tap a card, plug a vehicle in, look at the screen) reaches the test as operator prompts
through :class:`~hil.scenario.operator.ScriptedOperator`, which performs them on the simulators.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.rig.broker import Mosquitto
from hil.rig.procs import ChargerSim, PspSim
from hil.scenario import SCENARIO_DIR
from hil.scenario.cards import BUILTIN_CARDS, tap_command
from hil.scenario.engine import ScenarioResult, run_scenario
from hil.scenario.junit import validate
from hil.scenario.operator import Prompt, ScriptedOperator
from hil.scenario.rig import RigConfig, load_rig
from hil.scenario.schema import Scenario, load_scenario

pytestmark = pytest.mark.req("HIL-1")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Bench:
    """The "hardware" on the bench: a terminal and a charger the runner reaches only by address."""

    psp: PspSim
    charger: ChargerSim
    broker: Mosquitto
    workdir: Path

    def rig_yaml(
        self,
        *,
        cards: dict[str, str] | None = None,
        prompt_timeout_s: float = 20.0,
        test_serials: tuple[str, ...] = ("SIM-TEST-1",),
    ) -> Path:
        if cards is None:
            cards = {"visa": "VISA test card ending 0001", "visa-2": "second VISA card"}
        path = self.workdir / "rig.yaml"
        path.write_text(
            textwrap.dedent(
                f"""\
                terminal:
                  url: {self.psp.url}
                  family: {self.psp.family}
                  test_serials: {json.dumps(list(test_serials))}
                charger:
                  broker_url: {self.broker.url}
                  prefix: bench/charger-1
                connectors: 1
                cards: {json.dumps(cards)}
                prompt_timeout_s: {prompt_timeout_s}
                """
            ),
            encoding="utf-8",
        )
        return path


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    hw = tmp_path / "hardware"
    hw.mkdir()
    broker = Mosquitto(hw, name="charger-broker")
    await broker.start()
    psp = PspSim(hw, family="apollo")
    charger = ChargerSim(hw, broker.url, connectors=1, prefix="bench/charger-1")
    try:
        await asyncio.gather(psp.start(), charger.start())
        await charger.power(1, 360_000)
        yield Bench(psp, charger, broker, hw)
    finally:
        await asyncio.gather(psp.close(), charger.close(), return_exceptions=True)
        await broker.stop()


def hands(
    bench: Bench, *, refuse: str | None = None, never: str | None = None
) -> Callable[[Prompt], Awaitable[bool]]:
    """What a person at the bench does for each prompt (``refuse``: answers "cannot";
    ``never``: walks away — the prompt times out)."""

    async def act(prompt: Prompt) -> bool:
        if prompt.action == refuse:
            return False
        if prompt.action == never:
            await asyncio.Event().wait()
        match prompt.action:
            case "tap":
                await bench.psp.command(tap_command(BUILTIN_CARDS[str(prompt.args["card"])]))
            case "plug":
                await bench.charger.plug(int(str(prompt.args["connector"])))
            case "unplug":
                await bench.charger.unplug(int(str(prompt.args["connector"])))
            case "screen":
                screen = await bench.psp.screen()
                return str(prompt.args["text"]) in json.dumps(screen, ensure_ascii=False)
            case "terminal_reboot":
                await bench.psp.command("reboot keep")
            case other:
                raise AssertionError(f"unexpected prompt {other}: {prompt.text}")
        return True

    return act


def scenario_file(tmp_path: Path, name: str, body: str) -> Scenario:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return load_scenario(path)


async def run_on_rig(
    bench: Bench, scenario: Scenario, tmp_path: Path, operator: ScriptedOperator
) -> ScenarioResult:
    rig: RigConfig = load_rig(bench.rig_yaml())
    return await run_scenario(scenario, tmp_path / "run", rig=rig, operator=operator)


async def test_a_paid_session_on_the_rig_prompts_the_operator(bench: Bench, tmp_path: Path) -> None:
    """START-1/STOP-3 on the "rig": every physical action is a prompt, in the scenario's order; the
    simulator-only checks are reported as not checked, never as passed; the money path is checked
    from the journal and the upstream stream (both exist on a rig)."""
    operator = ScriptedOperator(hands(bench))
    result = await run_on_rig(bench, load_scenario(SCENARIO_DIR / "start-tap.yaml"), tmp_path, operator)

    assert result.status == "passed", "\n".join([result.message, *result.log])
    assert (result.mode, result.family) == ("rig", "apollo")
    assert [(p.action, dict(p.args)) for p in operator.shown] == [
        ("tap", {"card": "visa"}),
        ("plug", {"connector": 1}),
        ("unplug", {"connector": 1}),
    ]
    assert operator.shown[0].text == "Tap the VISA test card ending 0001 (visa) on the terminal"
    assert "  (rig) expect_charger not checked: only the simulators can answer it" in result.log
    assert "  (rig) expect_terminal not checked: only the simulators can answer it" in result.log
    # the "hardware" really did it: one Commit on the terminal, for the price the agent published
    sessions = await bench.psp.sessions()
    assert [s["status"] for s in sessions] == ["committed"]
    # on Apollo each prompt is also shown on the terminal screen
    shown = await bench.psp.control.json("screens")
    assert any("Tap the VISA test card ending 0001" in json.dumps(x) for x in shown)


async def test_fault_injection_is_skipped_on_the_rig_not_passed(bench: Bench, tmp_path: Path) -> None:
    """ERR-7 needs the simulator's fault channel: on a rig the scenario is skipped with the reason,
    and nothing ran (no prompt, no agent)."""
    scenario = load_scenario(SCENARIO_DIR / "start-tap.yaml")
    faulty = scenario_file(
        tmp_path,
        "frames",
        """\
        title: corrupted frames
        requirements: [ERR-7]
        steps:
          - tap: visa
          - terminal_fault: {kind: corrupt, count: 3}
          - wait_settled
        """,
    )
    operator = ScriptedOperator(hands(bench))
    result = await run_on_rig(bench, faulty, tmp_path, operator)
    assert result.status == "skipped"
    assert result.message == (
        "not applicable on the rig: terminal_fault (line 5) needs terminal fault injection "
        "(frames dropped, corrupted, split, delayed)"
    )
    assert operator.shown == []
    assert not (tmp_path / "run").exists()
    assert scenario.requirements  # the real scenario still loads next to it


async def test_an_operator_who_cannot_fails_the_step_clearly(bench: Bench, tmp_path: Path) -> None:
    operator = ScriptedOperator(hands(bench, refuse="plug"))
    result = await run_on_rig(bench, load_scenario(SCENARIO_DIR / "start-tap.yaml"), tmp_path, operator)
    assert result.status == "failed"
    assert "(plug, " in result.message
    assert "the operator could not: Plug a vehicle into connector 1" in result.message
    assert [p.action for p in operator.shown] == ["tap", "plug"]
    # the approval the failed run left is released before the run ends: a real terminal would hold
    # the driver's money until its session timeout otherwise
    assert [s["status"] for s in await bench.psp.sessions()] == ["voided"]
    assert not any("payments left open" in line for line in result.log)


async def test_an_unanswered_prompt_times_out_and_never_hangs(bench: Bench, tmp_path: Path) -> None:
    scenario = scenario_file(
        tmp_path,
        "screen",
        """\
        title: the operator confirms a screen
        requirements: [START-8]
        family: apollo
        steps:
          - wait_screen: {contains: "EUR"}
        """,
    )
    rig = load_rig(bench.rig_yaml(prompt_timeout_s=1.5))
    operator = ScriptedOperator(hands(bench, never="screen"))
    result = await run_scenario(scenario, tmp_path / "run", rig=rig, operator=operator)
    assert result.status == "failed"
    assert "no answer to \"Does the terminal screen show 'EUR'?\" within 1.5 s" in result.message
    assert result.duration_s < 60


async def test_a_card_the_rig_does_not_have_fails_with_the_cards_it_has(bench: Bench, tmp_path: Path) -> None:
    scenario = scenario_file(
        tmp_path,
        "mc",
        """\
        title: a Mastercard
        requirements: [START-1]
        steps:
          - tap: mastercard
        """,
    )
    operator = ScriptedOperator(hands(bench))
    result = await run_on_rig(bench, scenario, tmp_path, operator)
    assert result.status == "failed"
    assert "card 'mastercard' is not in" in result.message
    assert "rig.yaml cards (it has: visa, visa-2)" in result.message
    assert operator.shown == []


# -- the runner's command line on the "rig": what an operator at the console sees ------------------


@dataclass
class ConsoleRun:
    code: int
    stdout: str
    stderr: str
    prompts: list[str]


async def run_cli_at_the_bench(bench: Bench, args: list[str], *, within: float = 120.0) -> ConsoleRun:
    """``python -m hil.run ARGS`` as a process, its console answered like a person at the bench
    would: read the ``>>> OPERATOR:`` prompt, do it on the "hardware", press Enter."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil.run",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: list[str] = []
    prompts: list[str] = []
    try:
        async with asyncio.timeout(within):
            while line := (await proc.stdout.readline()).decode():
                lines.append(line)
                if not line.startswith(">>> OPERATOR: "):
                    continue
                prompts.append(line.removeprefix(">>> OPERATOR: ").split("  (")[0])
                text = prompts[-1]
                if text.startswith("Tap the "):
                    await bench.psp.command(tap_command(BUILTIN_CARDS["visa"]))
                elif text.startswith("Plug a vehicle into connector "):
                    await bench.charger.plug(int(text.rsplit(" ", 1)[1]))
                elif text.startswith("Unplug the vehicle from connector "):
                    await bench.charger.unplug(int(text.rsplit(" ", 1)[1]))
                else:
                    raise AssertionError(f"unexpected prompt: {text}")
                proc.stdin.write(b"\n")
                await proc.stdin.drain()
            stderr = (await proc.stderr.read()).decode()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return ConsoleRun(code, "".join(lines), stderr, prompts)


async def test_the_runner_refuses_a_terminal_not_in_test_serials(bench: Bench, tmp_path: Path) -> None:
    """HIL-1: a rig run must never take real money by accident — the simulator's serial SIM0000001
    is not in test_serials, so nothing runs (no prompt, no session) and the exit status is 2."""
    rig = bench.rig_yaml(test_serials=("APO-TEST-9",))
    run = await run_cli_at_the_bench(
        bench, ["--rig", str(rig), "start-tap", "--workdir", str(tmp_path / "w")]
    )
    assert run.code == 2, run.stdout + run.stderr
    assert "(serial SIM0000001) is not one of the test terminals of" in run.stderr
    assert "terminal.test_serials: APO-TEST-9" in run.stderr
    assert "give --production to run on it anyway" in run.stderr
    assert run.prompts == []
    assert await bench.psp.sessions() == []
    assert not (tmp_path / "w").exists()


async def test_the_runner_on_the_rig_prompts_skips_and_reports_junit(bench: Bench, tmp_path: Path) -> None:
    """HIL-1 (issue 9 acceptance 3) through the command line an operator uses: the console prompts
    in order, a fault-injection scenario reported as skipped (never passed), a JUnit report with the
    rig mode; ``--production`` lets the same non-test terminal run."""
    faulty = tmp_path / "frames.yaml"
    faulty.write_text(
        "title: corrupted frames\nrequirements: [ERR-7]\nsteps:\n  - terminal_fault: {kind: corrupt}\n",
        encoding="utf-8",
    )
    junit = tmp_path / "rig.xml"
    rig = bench.rig_yaml(test_serials=("APO-TEST-9",))
    args = ["--rig", str(rig), "--production", "start-tap", str(faulty), "--junit", str(junit)]
    run = await run_cli_at_the_bench(bench, [*args, "--workdir", str(tmp_path / "w")])

    assert run.code == 0, run.stdout + run.stderr
    assert run.prompts == [
        "Tap the VISA test card ending 0001 (visa) on the terminal",
        "Plug a vehicle into connector 1",
        "Unplug the vehicle from connector 1",
    ]
    assert "PASS start-tap [rig, apollo]" in run.stdout
    assert "SKIP frames [rig, apollo] 0.0 s: not applicable on the rig: terminal_fault (line 4)" in run.stdout
    assert "1 passed, 0 failed, 1 skipped (rig mode" in run.stdout
    assert [s["status"] for s in await bench.psp.sessions()] == ["committed"]
    report = junit.read_bytes()
    assert validate(report) == []
    cases = {c.get("name"): c for c in ET.fromstring(report).iter("testcase")}
    assert cases["start-tap"].get("classname") == "hil.rig.apollo"
    assert cases["start-tap"].find("failure") is None
    assert cases["start-tap"].find("skipped") is None
    skipped = cases["frames"].find("skipped")
    assert skipped is not None
    assert "not applicable on the rig" in str(skipped.get("message"))
