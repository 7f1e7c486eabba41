"""``python -m hil.run``: run the HIL scenarios in simulation or on a rig, with a JUnit report.

```
python -m hil.run [SCENARIO …] [--rig rig.yaml] [--production] [--junit FILE] [--list]
                  [--family apollo|p6x] [--workdir DIR] [-v]
```

A SCENARIO is a file or the id of one in ``hil/scenarios/`` (its file name without ``.yaml``); none
means every scenario there. *sim* mode (the default) starts, per scenario, a Mosquitto, the PSP and
charger simulators and the real ``evpay-agent run``; ``--rig`` runs on the terminal and charger that
``rig.yaml`` names, with operator prompts on the console (docs/hil-rig.md). Before a rig run the
terminal is probed once and refused unless its serial number is one of ``test_serials`` (or
``--production`` is given): a rig run must never take real money by accident.

Exit status: 0 nothing failed (skips are not failures), 1 a scenario failed, 2 a scenario file or
``rig.yaml`` cannot be read, an unknown scenario, or a refused terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from hil.scenario import SCENARIO_DIR
from hil.scenario.engine import ScenarioResult, run_scenario
from hil.scenario.junit import BrokenScenario, write_junit
from hil.scenario.operator import ConsoleOperator, Operator
from hil.scenario.rig import RigConfig, load_rig
from hil.scenario.schema import Scenario, ScenarioError, load_scenario

__all__ = ["Selection", "main", "production_refusal", "run", "select"]

PROBE_TIMEOUT_S: Final = (
    15.0  # the rig's one-off terminal probe (connect + setup sequence, psp-reference §7.1)
)
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_UNUSABLE: Final = 2


class UsageError(Exception):
    """Nothing can run: an unknown scenario, an unreadable ``rig.yaml``, a refused terminal."""


@dataclass
class Selection:
    """The scenarios a run takes: the readable ones and the files that cannot be read."""

    scenarios: list[Scenario] = field(default_factory=list)
    broken: list[BrokenScenario] = field(default_factory=list)


def _scenario_files(names: Sequence[str], directory: Path) -> list[Path]:
    if not names:
        return sorted(directory.glob("*.yaml"))
    files: list[Path] = []
    for name in names:
        path = Path(name)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise UsageError(f"{name}: no such scenario file")
            files.append(path)
            continue
        candidate = directory / f"{name}.yaml"
        if not candidate.is_file():
            known = ", ".join(p.stem for p in sorted(directory.glob("*.yaml")))
            raise UsageError(f"unknown scenario {name!r} (scenarios in {directory}: {known})")
        files.append(candidate)
    return files


def select(names: Sequence[str], directory: Path = SCENARIO_DIR) -> Selection:
    """Load the named scenarios (all of ``directory`` when none); an unreadable file is *broken*."""
    selection = Selection()
    seen: set[str] = set()
    for path in _scenario_files(names, directory):
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            selection.broken.append(BrokenScenario(str(path), str(exc)))
            continue
        if scenario.id in seen:
            selection.broken.append(BrokenScenario(str(path), f"{path}: id: {scenario.id!r} is taken"))
            continue
        seen.add(scenario.id)
        selection.scenarios.append(scenario)
    return selection


def production_refusal(
    probe_result: Mapping[str, Any] | None, rig: RigConfig, *, production: bool
) -> str | None:
    """Why a rig run must not go on with the probed terminal (``None``: it may).

    PSP does not say whether a terminal belongs to the test or the production MyPayter portal
    (psp-reference: a documented gap), so the rig's ``terminal.test_serials`` is the record: any
    other serial number, or none, counts as a production terminal.
    """
    if production:
        return None
    ids = (probe_result or {}).get("ids") or {}
    serial = str(ids.get("serial_number") or "").strip()
    where = rig.file or "rig.yaml"
    if not serial:
        return (
            f"the terminal at {rig.terminal.url} reported no serial number, so it cannot be shown to be a "
            f"test terminal; refusing to run (give --production to run on it anyway)"
        )
    if serial not in rig.terminal.test_serials:
        listed = ", ".join(rig.terminal.test_serials) or "none"
        return (
            f"the terminal at {rig.terminal.url} (serial {serial}) is not one of the test terminals of "
            f"{where} (terminal.test_serials: {listed}); it may be registered in the production MyPayter "
            f"portal and take real money — refusing to run (give --production to run on it anyway)"
        )
    return None


async def probe_terminal(rig: RigConfig) -> dict[str, Any]:
    """``evpay-agent terminal probe`` once against the rig's terminal (serial or TCP)."""
    from agent.cli.terminal import ProbeFailed, probe
    from drivers.psp.profile import profile_for

    try:
        return dict(
            await probe(rig.terminal.url, profile_for(rig.terminal.family), timeout_s=PROBE_TIMEOUT_S)
        )
    except ProbeFailed as exc:
        raise UsageError(f"the rig's terminal cannot be probed: {exc}") from None


def _print_list(selection: Selection, out: TextIO) -> None:
    width = max((len(s.id) for s in selection.scenarios), default=10)
    for scenario in selection.scenarios:
        requirements = ",".join(scenario.requirements)
        out.write(f"{scenario.id:<{width}}  {scenario.family:<6}  {requirements:<28}  {scenario.title}\n")
    covered = sorted({r for s in selection.scenarios for r in s.requirements}, key=_requirement_order)
    out.write(
        f"\n{len(selection.scenarios)} scenarios showing {len(covered)} requirement ids: "
        f"{' '.join(covered)}\n"
    )


def _requirement_order(rid: str) -> tuple[str, int]:
    prefix, _, number = rid.partition("-")
    return prefix, int(number)


def _report(result: ScenarioResult, out: TextIO, *, verbose: bool) -> None:
    scenario = result.scenario
    label = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[result.status]
    line = f"{label} {scenario.id} [{result.mode}, {result.family}] {result.duration_s:.1f} s"
    if result.status != "passed":
        line += f": {result.message}"
    out.write(line + "\n")
    if verbose or result.status == "failed":
        for text in result.log:
            out.write(f"    {text}\n")
        if result.capture_path is not None:
            out.write(f"    work directory: {result.capture_path.parent}\n")
    out.flush()


async def run(
    selection: Selection,
    workdir: Path,
    *,
    rig: RigConfig | None = None,
    operator: Operator | None = None,
    family: str | None = None,
    out: TextIO = sys.stdout,
    verbose: bool = False,
) -> list[ScenarioResult]:
    """Run every scenario of ``selection`` one after another, each in ``workdir/ID``."""
    results: list[ScenarioResult] = []
    for scenario in selection.scenarios:
        out.write(f"---- {scenario.id}: {scenario.title}\n")
        out.flush()
        result = await run_scenario(
            scenario, workdir / scenario.id, rig=rig, operator=operator, family=family
        )
        results.append(result)
        _report(result, out, verbose=verbose)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hil.run",
        description="Run the HIL scenarios (hil/scenarios/*.yaml) in simulation or on a rig "
        "(docs/hil-rig.md).",
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help="a scenario file or id (default: all)"
    )
    parser.add_argument("--rig", type=Path, metavar="RIG_YAML", help="run on the hardware rig.yaml names")
    parser.add_argument(
        "--production",
        action="store_true",
        help="run on a terminal that is not in rig.yaml's test_serials (it may take real money)",
    )
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    parser.add_argument("--list", action="store_true", help="list the scenarios and the ids they show")
    parser.add_argument(
        "--family", choices=("apollo", "p6x"), help="sim mode: the terminal family for 'any' scenarios"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the work directories go (default: a new temporary one)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every scenario's step log")
    return parser


def main(argv: Sequence[str] | None = None, *, operator: Operator | None = None) -> int:
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        selection = select(args.scenarios)
        rig = load_rig(args.rig) if args.rig is not None else None
    except (UsageError, ScenarioError) as exc:
        err.write(f"hil.run: {exc}\n")
        return EXIT_UNUSABLE
    for broken in selection.broken:
        err.write(f"{broken.error}\n")
    if args.list:
        _print_list(selection, out)
        return EXIT_UNUSABLE if selection.broken else EXIT_OK
    started = time.monotonic()
    try:
        results = asyncio.run(_run_mode(args, selection, rig, operator, out))
    except UsageError as exc:
        err.write(f"hil.run: {exc}\n")
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        err.write("hil.run: interrupted\n")
        return EXIT_FAILED
    mode = "sim" if rig is None else "rig"
    if args.junit is not None:
        write_junit(args.junit, results, broken=selection.broken, mode=mode)
    counts = {
        status: sum(1 for r in results if r.status == status) for status in ("passed", "failed", "skipped")
    }
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    if selection.broken:
        summary += f", {len(selection.broken)} unreadable"
    out.write(f"\n{summary} ({mode} mode, {time.monotonic() - started:.0f} s)\n")
    for result in results:
        if result.status == "failed":
            out.write(f"  FAILED {result.scenario.id}: {result.message}\n")
    for broken in selection.broken:
        out.write(f"  UNREADABLE {broken.error}\n")
    if args.junit is not None:
        out.write(f"JUnit report: {args.junit}\n")
    if selection.broken:
        return EXIT_UNUSABLE
    return EXIT_FAILED if counts["failed"] else EXIT_OK


async def _run_mode(
    args: argparse.Namespace,
    selection: Selection,
    rig: RigConfig | None,
    operator: Operator | None,
    out: TextIO,
) -> list[ScenarioResult]:
    if rig is not None:
        refusal = production_refusal(await probe_terminal(rig), rig, production=args.production)
        if refusal is not None:
            raise UsageError(refusal)
        operator = operator or ConsoleOperator()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hil-run-"))
    out.write(f"work directories under {workdir}\n")
    return await run(
        selection, workdir, rig=rig, operator=operator, family=args.family, out=out, verbose=args.verbose
    )


if __name__ == "__main__":
    sys.exit(main())
