"""The integrity issue's structural rules, checked on the source (AST, no code executed) and on the
types: typed effects end to end, one composition root, agent/ grouped by job (style.md)."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from statemachines import effects

ROOT = Path(__file__).resolve().parent.parent

# the object graph's classes: built in agent/app.py only (plus the unit tests of each class)
GRAPH_CLASSES = {
    "Runtime",
    "Publisher",
    "UpstreamClient",
    "BackendAuthorizer",
    "CommandHandler",
    "RuntimeAdapter",
    "DailyReconciliation",
    "PspTerminal",
    "MqttBridgeDriver",
    "StatusView",
    "ControlSocket",
}
COMPOSITION_ROOT = ROOT / "agent" / "app.py"


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _effect_types() -> list[type]:
    return list(typing.get_args(effects.Effect))


@pytest.mark.req("UP-2")
def test_every_effect_is_a_frozen_type_with_typed_fields_and_no_loose_data() -> None:
    """No ``kind: str`` plus a ``Mapping`` the shell re-reads with ``.get()``: an effect's fields
    are values, tokens, enums and the usage — never a mapping, ``Any`` or ``object``."""
    found = _effect_types()
    assert len(found) == len(set(found)) >= 30
    hints_forbidden = ("Mapping", "dict", "Any", "object", "Data")
    for cls in found:
        assert dataclasses.is_dataclass(cls), cls
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen, f"{cls.__name__} is not frozen"
        for f in dataclasses.fields(cls):
            text = str(f.type)
            assert not any(word in text for word in hints_forbidden), f"{cls.__name__}.{f.name}: {text}"


def test_every_journal_record_has_its_own_kind() -> None:
    kinds = [cls.KIND for cls in effects.JOURNAL_RECORDS]
    assert len(kinds) == len(set(kinds))
    assert set(effects.JOURNAL_RECORDS) == set(typing.get_args(effects.JournalRecord))


def _constructions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in GRAPH_CLASSES:
                found.append((node.lineno, name))
    return found


def test_one_composition_root() -> None:
    """The daemon's object graph is built in agent/app.py (build_app) only; the CLI, the demo, the
    benchmarks, hil/ and the test rigs call build_app."""
    outside = [
        f"{path.relative_to(ROOT)}:{line}: {name}(...)"
        for path in _sources("agent", "hil")
        if path != COMPOSITION_ROOT
        for line, name in _constructions(path)
        # a driver's own field tool builds a terminal to probe it; the demo's driver-only part
        # shows the PSP driver alone (no agent); the outbox drain benchmark measures the drainer
        # alone against plain aiomqtt
        if not (name == "PspTerminal" and path.name in ("terminal.py", "demo.py"))
        and not (name == "UpstreamClient" and path.relative_to(ROOT).as_posix() == "hil/bench/outbox.py")
    ]
    assert outside == []
    assert {name for _, name in _constructions(COMPOSITION_ROOT)} >= GRAPH_CLASSES - {"MqttBridgeDriver"}


def _assignments_to_foreign_attributes(path: Path) -> list[str]:
    """``x.attr = value`` where ``x`` is not ``self``/``cls``: patching an object after it was built."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        for target in targets:
            if isinstance(target, ast.Attribute) and not (
                isinstance(target.value, ast.Name) and target.value.id in ("self", "cls")
            ):
                found.append(f"{path.relative_to(ROOT)}:{target.lineno}: {ast.unparse(target)} = …")
    return found


# third-party APIs configured by attribute: argparse sub-parsers, paho MQTT 5 properties, the
# paho client behind aiomqtt
THIRD_PARTY_ATTRIBUTES = {"required", "ResponseTopic", "CorrelationData", "pending_calls_threshold"}


def test_nothing_is_patched_after_construction_in_the_agent() -> None:
    found = [
        line
        for path in _sources("agent")
        for line in _assignments_to_foreign_attributes(path)
        if line.split(": ", 1)[1].split(" = ")[0].rsplit(".", 1)[-1] not in THIRD_PARTY_ATTRIBUTES
    ]
    assert found == []


def test_no_get_on_effect_data_in_the_agent() -> None:
    """Effects carry no mappings (above), so the shell never re-reads one with ``.get()``: no
    ``effect.<field>.get(`` / ``record.<field>.get(`` survives in agent/."""
    found = []
    for path in _sources("agent"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Attribute)
                and isinstance(node.func.value.value, ast.Name)
                and node.func.value.value.id in ("effect", "record", "message", "event")
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_agent_folders_show_the_architecture() -> None:
    """DESIGN.md §2 in the folder list (style.md "folders show the architecture")."""
    folders = {p.name for p in (ROOT / "agent").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"cli", "config", "money", "runtime", "store", "upstream"}
    loose = {p.name for p in (ROOT / "agent").glob("*.py")}
    assert loose == {
        "__init__.py",
        "__main__.py",
        "app.py",
        "crashpoints.py",
        "errors.py",
        "logs.py",
        "timefmt.py",
    }
