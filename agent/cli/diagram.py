"""``evpay-agent diagram {connector,terminal}``: print the Mermaid state diagram (OPS-3)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from statemachines.diagram import MACHINES, mermaid


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "diagram",
        help="print a state machine as a Mermaid diagram",
        description="Print the Mermaid stateDiagram-v2 generated from the state machine definitions.",
    )
    parser.add_argument("machine", choices=sorted(MACHINES), help="which machine")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(mermaid(args.machine))
    return 0
