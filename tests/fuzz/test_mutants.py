"""The fuzzer's mutants still apply to the current tree, and a mutant tree runs its own agent code;
``hil`` (the fuzzer included) never imports ``tests``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from hil.fuzz import mutants
from hil.rig.procs import REPO, child_env

EXPECTED = ["defect1", "defect2", "defect3"]


def test_the_three_mutants_exist() -> None:
    assert mutants.names() == EXPECTED
    for name in EXPECTED:
        text = mutants.patch_path(name).read_text(encoding="utf-8")
        assert "--- a/" in text
        assert "+++ b/" in text
        assert "mutant " + name in text


@pytest.mark.parametrize("name", EXPECTED)
def test_each_mutant_patch_applies_to_the_working_tree(name: str) -> None:
    mutants.check(name)  # git apply --check on a copy of the working tree; raises with git's answer


def test_unknown_mutant_is_refused() -> None:
    with pytest.raises(mutants.MutantError, match="unknown mutant"):
        mutants.check("defect9")


def test_a_mutant_tree_runs_its_own_agent(tmp_path: Path) -> None:
    tree = mutants.build("defect1", tmp_path / "tree")
    assert "mutant defect1" in (tree / "statemachines" / "connector.py").read_text(encoding="utf-8")
    assert "mutant defect1" not in (REPO / "statemachines" / "connector.py").read_text(encoding="utf-8")
    probe = "import agent, statemachines.connector as c; print(agent.__file__); print(c.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tree,
        env=child_env(tree=tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(tree) for p in out), out


def test_hil_never_imports_tests() -> None:
    offenders = []
    for path in sorted((REPO / "hil").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            offenders += [f"{where} {n}" for n in names if n.split(".")[0] == "tests"]
    assert offenders == []
