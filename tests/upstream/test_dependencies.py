"""Every third-party distribution the shipped code imports is declared; ``pip check`` is clean (issue 11).

The rule (what the wheel and the .deb ship: the packages ``agent``, ``drivers``, ``statemachines``
and ``hil``):

- **Runtime code** is every module of ``agent``, ``drivers`` and ``statemachines``, plus every
  module they import, directly or through other modules, including the ``hil`` modules the agent
  reaches (``evpay-agent simulate`` runs ``hil.simulate``) and modules named in import strings
  (the CLI's command modules, the driver registries: ``"pkg.module"`` / ``"pkg.module:Class"``).
  Each distribution runtime code imports must be in ``[project] dependencies``.
- **The rest of ``hil``** (benches, the scenario runner, the fuzzer, reqcov, the stream capture)
  runs from a checkout with the ``dev`` extra installed. It may also import distributions of
  ``[project.optional-dependencies] dev`` and the checkout's ``tests`` package (not shipped);
  anything else must be declared too. Runtime code must not import ``tests``.

Imports are read with :mod:`ast` (no module is imported), including imports inside functions
(a lazy ``import xmlschema`` counts where it is written) and ``if TYPE_CHECKING:`` blocks are
skipped (they never run). A top-level module name maps to its distribution through
:func:`importlib.metadata.packages_distributions` (``yaml`` → ``PyYAML``, ``paho`` → ``paho-mqtt``).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("agent", "drivers", "statemachines", "hil")
CHECKOUT_ONLY = ("tests",)  # in the checkout, not in the wheel or the .deb
RUNTIME_ROOTS = ("agent", "drivers", "statemachines")
_IMPORT_STRING = re.compile(r"^(?:agent|drivers|statemachines|hil)(?:\.\w+)+(?::\w+)?$")


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def requirements(kind: str) -> dict[str, Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    lines = project["dependencies"] if kind == "runtime" else project["optional-dependencies"][kind]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


@cache
def imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(first-party modules, third-party top-level names) that ``module`` imports."""
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # from pkg import module
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _IMPORT_STRING.match(node.value)
        ):
            names.add(node.value.partition(":")[0])
    first = frozenset(n for n in names if n in modules())
    third = frozenset(
        top
        for n in names
        if (top := n.split(".")[0]) and top not in FIRST_PARTY and top != "__future__"
        if top not in sys.stdlib_module_names
    )
    return first, third


def runtime_modules() -> set[str]:
    todo = [m for m in modules() if m.split(".")[0] in RUNTIME_ROOTS]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imports(module)[0])
        parts = module.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__
        todo.extend(p for i in range(1, len(parts)) if (p := ".".join(parts[:i])) in modules())
    return seen


def distributions(top: str) -> list[str]:
    return [canonicalize_name(d) for d in packages_distributions().get(top, [])]


def third_party(selected: set[str]) -> Iterator[tuple[str, str]]:
    for module in sorted(selected):
        for top in sorted(imports(module)[1]):
            yield module, top


def test_the_rule_sees_the_agent_and_the_hil_modules_it_reaches() -> None:
    runtime = runtime_modules()
    assert {
        "agent.cli",
        "agent.upstream.client",
        "drivers.mqtt_internals",
        "statemachines.connector",
    } <= runtime
    assert "hil.simulate" in runtime  # evpay-agent simulate (an import string in agent/cli)
    assert "hil.reqcov" not in runtime  # pytest: a development tool


def test_runtime_code_imports_only_declared_runtime_dependencies() -> None:
    declared = requirements("runtime")
    missing = []
    for module, top in third_party(runtime_modules()):
        dists = distributions(top)
        if top in CHECKOUT_ONLY:
            missing.append(f"{module}: {top} (the checkout's test suite is not installed)")
        elif not dists:
            missing.append(f"{module}: {top} (no installed distribution provides it)")
        elif not any(d in declared for d in dists):
            missing.append(f"{module}: {top} ({', '.join(dists)} is not in [project] dependencies)")
    assert missing == []


def test_development_hil_modules_import_only_declared_dependencies() -> None:
    declared = requirements("runtime") | requirements("dev")
    rest = set(modules()) - runtime_modules()
    missing = [
        f"{module}: {top} ({', '.join(distributions(top)) or 'not installed'})"
        for module, top in third_party(rest)
        if top not in CHECKOUT_ONLY and not any(d in declared for d in distributions(top))
    ]
    assert missing == []


def test_the_installed_versions_satisfy_the_declared_ranges() -> None:
    wrong = []
    for name, requirement in requirements("runtime").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            wrong.append(f"{requirement}: {installed} installed")
    for name, requirement in requirements("dev").items():  # when the dev extra is installed
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            wrong.append(f"{requirement} (dev): {installed} installed")
    assert wrong == []


def test_pip_check_is_clean() -> None:
    try:
        import pip  # noqa: F401
    except ImportError:
        pytest.skip("pip is not installed in this environment")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
