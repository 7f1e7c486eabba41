"""``python -m hil.bench [--only NAME …] [--quick]``: print one JSON object of measured figures.

``python -m hil.bench fleet --stations N [--outage S]``: the fleet bench (:mod:`hil.bench.fleet`).
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

# name -> module with ``run(quick: bool) -> dict``
BENCHMARKS: dict[str, str] = {
    "psp_codec": "hil.bench.codec",
    "agent": "hil.bench.agent",
    "outbox": "hil.bench.outbox",
    "upstream": "hil.bench.upstream",
    "scaling": "hil.bench.scaling",
}


def _compile_sources() -> None:
    """Byte-compile the project's sources first: an installed agent runs from byte code (the .deb's
    postinst and hil/bootstrap.sh compile it), so start -> READY is measured the same way."""
    root = Path(__file__).resolve().parents[2]
    for package in ("agent", "drivers", "statemachines", "hil"):
        compileall.compile_dir(root / package, quiet=1, workers=0)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["fleet"]:  # python -m hil.bench fleet --stations N (not part of the default run)
        _compile_sources()
        from hil.bench import fleet

        return fleet.main(words[1:])
    parser = argparse.ArgumentParser(prog="python -m hil.bench", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--quick", action="store_true", help="shorter runs (CI smoke test)")
    args = parser.parse_args(words)
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _compile_sources()
    for name in args.only or list(BENCHMARKS):
        result[name] = importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
