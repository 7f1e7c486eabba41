"""Mermaid ``stateDiagram-v2`` text generated from the machines' ``transitions`` definitions.

Deterministic: states and transitions appear in definition order. Condition labels drop the
leading underscore of the predicate name; ``unless`` predicates are shown as ``not …``.
"""

from __future__ import annotations

from typing import Any

from transitions import Machine

from statemachines import connector, terminal

MACHINES: dict[str, tuple[tuple[str, ...], list[dict[str, Any]], str]] = {
    "connector": (connector.STATES, connector.TRANSITIONS, "available"),
    "terminal": (terminal.STATES, terminal.TRANSITIONS, "idle"),
}


def mermaid(name: str) -> str:
    """The diagram of machine ``name`` (``connector`` or ``terminal``), newline-terminated."""
    states, transitions, initial = MACHINES[name]
    machine = Machine(
        model=None,
        states=list(states),
        transitions=transitions,
        initial=initial,
        auto_transitions=False,
    )
    lines = ["stateDiagram-v2", f"    [*] --> {initial}"]
    seen: set[str] = set()
    for trigger, event in machine.events.items():
        for source, source_transitions in event.transitions.items():
            for transition in source_transitions:
                guards = [
                    (c.func if isinstance(c.func, str) else getattr(c.func, "__name__", "?")).lstrip("_")
                    if c.target
                    else "not " + str(c.func).lstrip("_")
                    for c in transition.conditions
                ]
                label = trigger + (f" [{' and '.join(guards)}]" if guards else "")
                line = f"    {source} --> {transition.dest} : {label}"
                if line not in seen:
                    seen.add(line)
                    lines.append(line)
    return "\n".join(lines) + "\n"
