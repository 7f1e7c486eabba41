"""Mutants: patches that deliberately re-introduce the integrity defects, to prove the fuzzer sees them.

Each ``NAME.patch`` here is a unified diff against the repository (``git apply`` format, a few lines of
context so that unrelated edits around it do not break it), preceded by a description:

* ``defect1`` — a session that starts while the meter register is unknown publishes no
  ``session.started``;
* ``defect2`` — a step's upstream events are written to the outbox in their own transactions after the
  journal's commit, so a kill in between loses them;
* ``defect3`` — a resumed session publishes a second ``session.started``.

:func:`build` makes a temporary copy of the working tree's agent packages (``agent``, ``drivers``,
``statemachines``: the files ``git ls-files`` lists there, tracked or untracked but not ignored, as they
are on disk now) and applies the patch to it; ``python -m hil.fuzz
--mutant NAME`` runs only the agent process from that copy (``PYTHONPATH`` and working directory), the
rig and the simulators stay in this checkout. :func:`check` is ``git apply --check`` on such a copy
(tests/fuzz keeps the patches applicable as the tree moves on).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from hil.rig.procs import REPO

__all__ = ["MUTANTS_DIR", "MutantError", "build", "check", "copy_tree", "names", "patch_path"]

MUTANTS_DIR: Final = Path(__file__).resolve().parent
AGENT_PACKAGES: Final = ("agent", "drivers", "statemachines")  # what `evpay-agent run` imports
GIT_TIMEOUT_S: Final = 30.0


class MutantError(RuntimeError):
    """A mutant that does not exist or whose patch does not apply (the message has git's answer)."""


def names() -> list[str]:
    return sorted(p.stem for p in MUTANTS_DIR.glob("*.patch"))


def patch_path(name: str) -> Path:
    path = MUTANTS_DIR / f"{name}.patch"
    if not path.is_file():
        raise MutantError(f"unknown mutant {name!r}; known: {', '.join(names()) or 'none'}")
    return path


def _git(*args: str, cwd: Path, outside: bool = False) -> subprocess.CompletedProcess[str]:
    """``outside``: ``cwd`` is a plain directory; git must not find a repository above it (``git
    apply`` in a repository's subdirectory would skip the paths outside it)."""
    env = dict(os.environ)
    if outside:
        env["GIT_CEILING_DIRECTORIES"] = str(cwd.resolve().parent)
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
    )


def copy_tree(dest: Path, repo: Path = REPO, packages: tuple[str, ...] = AGENT_PACKAGES) -> int:
    """Copy the working-tree files of ``repo`` that git lists (tracked, or untracked and not ignored)
    under ``packages`` into ``dest``; returns how many. Files listed but deleted on disk are skipped.
    Only what the agent process imports is copied (not the tests, whose card-like test data the
    suite's PAN guard would find in a temporary directory)."""
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *packages, cwd=repo)
    if listed.returncode != 0:
        raise MutantError(f"git ls-files failed in {repo}: {listed.stderr.strip()}")
    count = 0
    for rel in sorted(set(filter(None, listed.stdout.split("\0")))):
        source = repo / rel
        if not source.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        count += 1
    return count


def _apply(name: str, dest: Path, *, check_only: bool) -> None:
    patch = patch_path(name)
    args = ["apply", "--check", str(patch)] if check_only else ["apply", str(patch)]
    result = _git(*args, cwd=dest, outside=True)
    if result.returncode != 0:
        raise MutantError(f"mutant {name}: {patch.name} does not apply: {result.stderr.strip()}")


def check(name: str, repo: Path = REPO) -> None:
    """``git apply --check`` of the mutant on a copy of ``repo``'s working tree (raises
    :class:`MutantError` with git's answer)."""
    with tempfile.TemporaryDirectory(prefix=f"evpay-mutant-{name}-") as tmp:
        copy_tree(Path(tmp), repo)
        _apply(name, Path(tmp), check_only=True)


def build(name: str, dest: Path, repo: Path = REPO) -> Path:
    """A copy of ``repo``'s working tree in ``dest`` with the mutant applied; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_tree(dest, repo)
    _apply(name, dest, check_only=False)
    return dest
