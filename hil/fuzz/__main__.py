"""``python -m hil.fuzz``: the real agent process in seeded random worlds; see :mod:`hil.fuzz`.

    python -m hil.fuzz --seeds N [--seed S] [--jobs J] [--out DIR] [--keep] [--mutant NAME]
                       [--size small|normal] [--json FILE] [--list-mutants]

Seeds S, S+1, … S+N-1 (``--seed S`` alone: exactly seed S, the replay). Each seed prints its world,
then PASS or FAIL with the findings and the one command that replays it. The exit status is 0 only
when no seed had a finding (2: bad arguments or a mutant that does not apply).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hil.fuzz import mutants
from hil.fuzz.runner import Figures, SeedResult, run_seed
from hil.fuzz.world import Size, generate
from hil.rig.procs import REPO

FINDINGS_SHOWN = 25


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hil.fuzz",
        description="Run the real evpay-agent against the simulators in seeded random worlds.",
    )
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help="how many seeds (default 1)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="first seed (default 1)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J", help="seeds run at once (default 1)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="where seeds keep their files")
    parser.add_argument("--keep", action="store_true", help="keep the files of passing seeds too")
    parser.add_argument(
        "--mutant", default=None, metavar="NAME", help="run the agent with hil/fuzz/mutants/NAME.patch"
    )
    parser.add_argument(
        "--size", choices=[s.value for s in Size], default=Size.NORMAL.value, help="world size (CI: small)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--list-mutants", action="store_true", help="print the mutant names and exit")
    return parser


def _print(text: str) -> None:
    print(text, flush=True)


def _report(result: SeedResult) -> None:
    tag = f"seed {result.seed}" + (f" [{result.mutant}]" if result.mutant else "")
    f = result.figures
    stats = (
        f"{f.sessions} session(s), {f.kills} kill(s), {f.crashes} crash point(s), {f.broker_outages} broker "
        f"outage(s), {f.broker_hangs} broker hang(s), {f.terminal_faults} terminal fault(s), "
        f"{f.charger_faults} charger fault(s); "
        f"{result.wall_s:.1f} s"
    )
    if result.passed:
        _print(f"{tag}: PASS — {stats}")
        return
    _print(f"{tag}: FAIL — {len(result.findings)} finding(s); {stats}")
    for finding in result.findings[:FINDINGS_SHOWN]:
        _print(f"  {finding}")
    if len(result.findings) > FINDINGS_SHOWN:
        _print(f"  … {len(result.findings) - FINDINGS_SHOWN} more")
    _print(f"  files: {result.workdir}")
    _print(f"  replay: {result.replay}")


async def _run(args: argparse.Namespace, seeds: list[int], out: Path, tree: Path) -> list[SeedResult]:
    gate = asyncio.Semaphore(args.jobs)

    async def one(seed: int) -> SeedResult:
        async with gate:
            world = generate(seed, args.size)
            tag = f"seed {seed}" + (f" [{args.mutant}]" if args.mutant else "")
            _print("\n".join(f"{tag}: {line}" for line in world.summary()))
            result = await run_seed(
                world, out / f"seed-{seed}", tree=tree, mutant=args.mutant, keep=args.keep
            )
            _report(result)
            return result

    tasks = [asyncio.create_task(one(seed), name=f"fuzz-seed-{seed}") for seed in seeds]
    return list(await asyncio.gather(*tasks))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="hil.fuzz: %(name)s: %(message)s")
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)  # paho under the capture: broker outages are ours
    if args.list_mutants:
        _print("\n".join(mutants.names()))
        return 0
    count = args.seeds if args.seeds is not None else 1
    if count < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    first = args.seed if args.seed is not None else 1
    seeds = list(range(first, first + count))
    out = args.out or Path(tempfile.mkdtemp(prefix="evpay-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    tree = REPO
    if args.mutant is not None:
        try:
            tree = mutants.build(args.mutant, out / f"tree-{args.mutant}")
        except mutants.MutantError as exc:
            print(f"hil.fuzz: {exc}", file=sys.stderr)
            return 2
        _print(f"mutant {args.mutant}: agent runs from {tree}")
    started = time.monotonic()
    results = asyncio.run(_run(args, seeds, out, tree))
    wall = time.monotonic() - started
    total = Figures()
    for result in results:
        total.add(result.figures)
    failed = [r for r in results if not r.passed]
    _print(
        f"\n{total.seeds} seed(s), {total.sessions} session(s), {total.kills} kill(s), {total.crashes} crash "
        f"point(s), {total.broker_outages} broker outage(s), {total.broker_hangs} broker hang(s), "
        f"{total.terminal_faults} terminal fault(s), "
        f"{total.charger_faults} charger fault(s), {total.findings} finding(s) in {len(failed)} seed(s); "
        f"{wall:.0f} s wall"
    )
    _print(
        f"  covered: {total.plans} driver(s), {total.taps} tap(s), {total.captured} captured, {total.voided} "
        f"voided, {total.declined} declined, {total.capped} capped at the authorization, {total.resumed} "
        f"restored after a restart, {total.orphan_alarms} possible orphan approval(s), "
        f"{total.tariff_commands} set_tariff(s) ({total.tariff_accepted} accepted), "
        f"{total.ocpi_tariffs} OCPI tariff(s), {total.current_reported} seed(s) with current_a; captured "
        f"sessions priced by a set_tariff's tariff {total.priced_by_set_tariff}, by an OCPI tariff "
        f"{total.priced_by_ocpi}"
    )
    for result in failed:
        _print(f"  FAIL seed {result.seed}: {result.replay}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "figures": total.to_json(),
                    "wall_s": round(wall, 1),
                    "jobs": args.jobs,
                    "size": args.size,
                    "mutant": args.mutant,
                    "seeds": [r.to_json() for r in results],
                },
                indent=1,
            ),
            encoding="utf-8",
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
