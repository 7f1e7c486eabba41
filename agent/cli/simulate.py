"""``evpay-agent simulate``: the whole station without hardware (DESIGN.md §5.7; docs/runtime.md).

The real agent process, the PSP terminal simulator, the charger simulator and a throwaway Mosquitto,
driven from an interactive console (``evpay> plug 1``, ``tap visa``, ``status`` …) or by a scenario
file (``--script FILE``, the HIL rig's format: docs/hil-rig.md).

The work is done by ``hil.simulate``: the agent must not import ``hil`` (DESIGN.md §1), so this
command only parses its options (for ``--help`` and early errors) and replaces itself with
``python -m hil.simulate ARGS`` on the same interpreter. Without the ``hil`` package (an agent
installed without its simulators) it exits 2 with a clear message. ``hil.simulate`` reads the
same options from :func:`add_arguments`, so there is one definition of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

MODULE = "hil.simulate"
MAX_CONNECTORS = 8  # the charger simulator's (and a scenario's) limit
EXIT_NO_HIL = 2


def _connectors(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_CONNECTORS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_CONNECTORS}, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``evpay-agent simulate`` (also ``python -m hil.simulate``'s)."""
    parser.add_argument(
        "--connectors",
        type=_connectors,
        metavar="N",
        help=f"connectors of the simulated charger, 1..{MAX_CONNECTORS} "
        "(default: as many as --config lists, else 1; with --script: the scenario's)",
    )
    parser.add_argument(
        "--family",
        choices=("apollo", "p6x"),
        help="the simulated terminal (default: --config's terminal.family, else apollo; "
        "with --script: the scenario's)",
    )
    parser.add_argument(
        "--script",
        type=Path,
        metavar="FILE",
        help="run this scenario file (hil/scenarios/*.yaml, docs/hil-rig.md) instead of the console; "
        "exit 0 passed, 1 failed, 2 unreadable file",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="new or empty directory for the agent's config, state and every log "
        "(default: a new temporary directory, kept)",
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="an agent config to try: its session, authorization, tariff, connectors, receipts, "
        "rfid and terminal settings are used; the wiring (station_id, state_dir, terminal.url, "
        "charger, upstream) is the simulated station's",
    )


def forward(args: argparse.Namespace) -> list[str]:
    """The ``python -m hil.simulate`` arguments for the parsed options."""
    argv = ["-v"] * int(getattr(args, "verbose", 0) or 0)
    for option, value in (
        ("--connectors", args.connectors),
        ("--family", args.family),
        ("--script", args.script),
        ("--workdir", args.workdir),
        ("--config", args.config),
    ):
        if value is not None:
            argv += [option, str(value)]
    return argv


def _hil_installed() -> bool:
    try:
        return importlib.util.find_spec(MODULE) is not None
    except ImportError:  # the parent package ``hil`` is missing
        return False


def _simulate(args: argparse.Namespace) -> int:
    from agent.cli import CliError

    if not _hil_installed():
        raise CliError(
            f"simulate needs the simulators ({MODULE}, the 'hil' package of the evpay-agent source "
            "tree), which are not installed with this agent; install evpay-agent from its source tree "
            "(pip install -e .) on a development machine",
            EXIT_NO_HIL,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", MODULE, *forward(args)])
    return 0  # pragma: no cover - execv does not return


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="the whole station without hardware: the agent, terminal and charger simulators, a broker",
        description=(
            "Run the real agent with the PSP terminal simulator, the charger simulator and a "
            "throwaway Mosquitto, driven from an interactive console (evpay> help) or by a scenario "
            "file (--script). Needs the hil package (the source tree)."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=_simulate)
