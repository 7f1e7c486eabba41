"""DESIGN.md §1 import rules, checked on the source with an AST walk (no imports executed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"agent", "drivers", "statemachines", "hil"}

# package -> our packages it must not import
FORBIDDEN = {
    "statemachines": {"agent", "drivers", "hil"},
    "drivers": {"agent", "statemachines", "hil"},
    "agent": {"hil"},
}
# statemachines is pure: no I/O, no asyncio, no clock reads (DESIGN.md §1, §4)
IMPURE_MODULES = {
    "asyncio",
    "socket",
    "selectors",
    "threading",
    "subprocess",
    "os",
    "io",
    "time",
    "sqlite3",
    "serial",
    "serial_asyncio_fast",
    "aiomqtt",
    "paho",
    "logging",
    "random",
    "pathlib",
    "shutil",
    "tempfile",
    "signal",
    "multiprocessing",
    "concurrent",
    "urllib",
    "http",
    "ssl",
    "uuid",
}
IMPURE_CALLS = {"open", "print", "input"}
IMPURE_ATTRS = {("datetime", "now"), ("datetime", "utcnow"), ("date", "today"), ("datetime", "today")}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering_rules(package: str) -> None:
    files = _files(package)
    assert files, f"{package}/ has no Python files"
    violations = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in files
        for line, name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not violations, "\n".join(violations)


def test_statemachines_is_pure() -> None:
    """statemachines imports no I/O, no asyncio, no clock, and only ``statemachines`` of ours."""
    violations: list[str] = []
    for path in _files("statemachines"):
        rel = path.relative_to(ROOT)
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in IMPURE_MODULES:
                violations.append(f"{rel}:{line}: imports {name} (I/O, clock or randomness)")
            if top in OURS and top != "statemachines":
                violations.append(f"{rel}:{line}: imports {name}")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in IMPURE_CALLS:
                    violations.append(f"{rel}:{node.lineno}: calls {func.id}()")
                if (
                    isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name)
                    and (func.value.id, func.attr) in IMPURE_ATTRS
                ):
                    violations.append(f"{rel}:{node.lineno}: reads the clock ({func.value.id}.{func.attr})")
    assert not violations, "\n".join(violations)


def test_tariff_is_pure() -> None:
    """agent/money/tariff.py is money logic: it may live in agent/ but imports no I/O (issue 3)."""
    path = ROOT / "agent" / "money" / "tariff.py"
    assert path.exists(), path  # moved? then move this check with it
    bad = [f"{line}: {name}" for line, name in _imports(path) if name.split(".")[0] in IMPURE_MODULES]
    assert not bad, bad


def test_layering_check_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself fails on a forbidden import (a test that can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom agent.cli import main\n", encoding="utf-8")
    names = [name for _, name in _imports(bad)]
    assert names == ["asyncio", "agent.cli"]
    assert any(n.split(".")[0] in FORBIDDEN["statemachines"] for n in names)
    assert any(n.split(".")[0] in IMPURE_MODULES for n in names)
