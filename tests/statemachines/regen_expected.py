"""Print expected.py from scenarios.py (run by hand; review the diff before checking in):

    python -m tests.statemachines.regen_expected > tests/statemachines/expected.py
    ruff format tests/statemachines/expected.py

Effects are written with their own constructors: ``connector_id`` and ``session_ref`` positionally
(``REF`` for the usual session), the other fields by keyword, fields at their default left out,
``Usage`` as ``ANY_USAGE``; a tariff message followed by its Start Session as ``Read(…)``, timers as
``Timer``/``Cancel``.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum

from statemachines.effects import (
    CancelTimer,
    Effect,
    MessageKey,
    ReadPurpose,
    ShowMessage,
    StartCardRead,
    StartTimer,
)
from statemachines.events import CardToken
from statemachines.pricing import Usage
from tests.statemachines.scenarios import SPECS
from tests.support.station import CARD_A, CARD_B, REF, RFID_A, make_station, run

CARDS = {CARD_A: "CARD_A", CARD_B: "CARD_B", RFID_A: "RFID_A"}
HELPERS = "tests.support.station"


class Writer:
    """Formats effects and remembers which names the output needs to import."""

    def __init__(self) -> None:
        self.imports: dict[str, set[str]] = defaultdict(set)

    def name(self, cls: type) -> str:
        self.imports[cls.__module__].add(cls.__name__)
        return cls.__name__

    def helper(self, name: str) -> str:
        self.imports[HELPERS].add(name)
        return name

    def value(self, v: object) -> str:
        if isinstance(v, Enum):
            return f"{self.name(type(v))}.{v.name}"
        if isinstance(v, Usage):
            return self.helper("ANY_USAGE")
        if isinstance(v, CardToken):
            if v in CARDS:
                return self.helper(CARDS[v])
            return self.constructor(v, positional=sum(f.default is MISSING for f in fields(v)))
        if isinstance(v, str) and v == REF:
            return self.helper("REF")
        return repr(v)

    def constructor(self, obj: object, positional: int) -> str:
        """``Type(a, b, c=…)``: the first ``positional`` fields by position, the rest by keyword
        unless at their default."""
        assert is_dataclass(obj)
        args = []
        for i, f in enumerate(fields(obj)):
            v = getattr(obj, f.name)
            if i < positional:
                args.append(self.value(v))
            elif f.default is MISSING or v != f.default:
                args.append(f"{f.name}={self.value(v)}")
        return f"{self.name(type(obj))}({', '.join(args)})"

    def effect(self, e: Effect) -> str:
        names = [f.name for f in fields(e)]
        if isinstance(e, StartTimer):
            extra = "" if e.connector_id == 1 else f", {e.connector_id}"
            return f"{self.helper('Timer')}({self.value(e.kind)}, {e.seconds}{extra})"
        if isinstance(e, CancelTimer):
            extra = "" if e.connector_id == 1 else f", {e.connector_id}"
            return f"{self.helper('Cancel')}({self.value(e.kind)}{extra})"
        if isinstance(e, ShowMessage):
            return self.constructor(e, positional=2)
        if names[:2] == ["connector_id", "session_ref"]:
            return self.constructor(e, positional=2)
        return self.constructor(e, positional=len(names))

    def read(self, read: StartCardRead) -> str:
        args = [str(read.reference)]
        if read.amount_minor != 5000 or read.purpose is not ReadPurpose.SCAN or read.connector_id is not None:
            args.append(str(read.amount_minor))
        if read.purpose is not ReadPurpose.SCAN or read.connector_id is not None:
            args.append(self.value(read.purpose))
        if read.connector_id is not None:
            args.append(str(read.connector_id))
        return f"{self.helper('Read')}({', '.join(args)})"

    def effects(self, effects: list[Effect]) -> list[str]:
        out, i = [], 0
        while i < len(effects):
            e = effects[i]
            nxt = effects[i + 1] if i + 1 < len(effects) else None
            if (
                isinstance(e, ShowMessage)
                and e.key is MessageKey.TARIFF
                and isinstance(nxt, StartCardRead)
                and nxt.connector_id == e.connector_id
            ):
                out.append(self.read(nxt))
                i += 2
                continue
            out.append(self.effect(e))
            i += 1
        return out

    def import_lines(self) -> list[str]:
        self.imports["statemachines.effects"].add("Effect")
        lines = []
        for module in sorted(self.imports):
            names = sorted(self.imports[module], key=_isort_key)
            lines.append(f"from {module} import (")
            lines += [f"    {n}," for n in names]
            lines.append(")")
        return lines


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's (isort's) order within one import: CONSTANTS, Classes, functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


DOC = '"""Exact expected effects per scenario of scenarios.py (regen_expected.py output, reviewed)."""'


def main() -> None:
    writer = Writer()
    lines = []
    for req, name, config, pricer, setup, events, differs in SPECS:
        results = {}
        for n in (1, 3):
            station = make_station(n, config, pricer)
            run(station, setup)
            results[n] = run(station, events)
        if (results[1] != results[3]) != differs:
            print(
                f"# {req} {name}: differs={results[1] != results[3]} but spec says {differs}", file=sys.stderr
            )
        lines.append(f"    # {req}")
        lines.append(f"    {name!r}: [")
        lines += [f"        {x}," for x in writer.effects(results[1])]
        lines.append("    ],")
        if differs:
            lines.append(f"    {name + '@3'!r}: [")
            lines += [f"        {x}," for x in writer.effects(results[3])]
            lines.append("    ],")
    header = [DOC, "", "from __future__ import annotations", "", *writer.import_lines(), ""]
    header.append("EXPECTED: dict[str, list[Effect | list[Effect]]] = {")
    print("\n".join([*header, *lines, "}"]))


if __name__ == "__main__":
    main()
