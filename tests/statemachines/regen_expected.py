"""Print expected.py from scenarios.py (run by hand; review the diff before checking in)."""

from __future__ import annotations

import sys
from dataclasses import fields

from statemachines.effects import (
    CancelTimer,
    JournalRecord,
    RequestBackendAuthorization,
    ShowMessage,
    StartCardRead,
    StartTimer,
    UpstreamEvent,
)
from tests.statemachines.scenarios import SPECS
from tests.support.station import REF, RFID_A, make_station, run


def kw(data):
    return "".join(f", {k}={v!r}" for k, v in data.items())


def fmt(effects):
    out, i = [], 0
    while i < len(effects):
        e = effects[i]
        nxt = effects[i + 1] if i + 1 < len(effects) else None
        if isinstance(e, ShowMessage) and e.key == "tariff" and isinstance(nxt, StartCardRead):
            args = [str(nxt.reference)]
            if nxt.amount_minor != 5000 or nxt.purpose != "scan" or nxt.connector_id is not None:
                args.append(str(nxt.amount_minor))
            if nxt.purpose != "scan" or nxt.connector_id is not None:
                args.append(repr(nxt.purpose))
            if nxt.connector_id is not None:
                args.append(str(nxt.connector_id))
            out.append(f"Read({', '.join(args)})")
            i += 2
            continue
        if isinstance(e, JournalRecord | UpstreamEvent):
            d = dict(e.data)
            sref = d.pop("session_ref")
            name = "J" if isinstance(e, JournalRecord) else "Up"
            first = e.kind if isinstance(e, JournalRecord) else e.name
            extra = "" if e.connector_id == 1 else f", {e.connector_id}"
            extra += "" if sref == REF else f", sref={sref!r}"
            out.append(f"{name}({first!r}{extra}{kw(d)})")
        elif isinstance(e, ShowMessage):
            extra = "" if e.connector_id == 1 else f", {e.connector_id}"
            out.append(f"Msg({e.key!r}{extra}{kw(dict(e.data))})")
        elif isinstance(e, StartTimer):
            extra = "" if e.connector_id == 1 else f", {e.connector_id}"
            out.append(f"Timer(TimerKind.{e.kind.name}, {e.seconds}{extra})")
        elif isinstance(e, CancelTimer):
            extra = "" if e.connector_id == 1 else f", {e.connector_id}"
            out.append(f"Cancel(TimerKind.{e.kind.name}{extra})")
        elif isinstance(e, RequestBackendAuthorization):
            assert e.card == RFID_A
            out.append(f"RequestBackendAuthorization({e.connector_id}, RFID_A)")
        else:
            args = ", ".join(repr(getattr(e, f.name)) for f in fields(e))
            out.append(f"{type(e).__name__}({args})")
        i += 1
    return out


HEADER = '''"""Exact expected effects per scenario of scenarios.py (regen_expected.py output, reviewed)."""

from __future__ import annotations

from statemachines.effects import (
    Alarm,
    Authorize,
    CancelCardRead,
    Commit,
    DisableEnergy,
    Effect,
    EnableEnergy,
    RequestBackendAuthorization,
    UpdateAuthorization,
    Void,
)
from statemachines.events import TimerKind
from tests.support.station import RFID_A, Cancel, J, Msg, Read, Timer, Up

EXPECTED: dict[str, list[Effect | list[Effect]]] = {
'''


def main() -> None:
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
        lines += [f"        {x}," for x in fmt(results[1])]
        lines.append("    ],")
        if differs:
            lines.append(f"    {name + '@3'!r}: [")
            lines += [f"        {x}," for x in fmt(results[3])]
            lines.append("    ],")
    print(HEADER + "\n".join(lines) + "\n}")


if __name__ == "__main__":
    main()
