"""Packaging metadata (pyproject.toml, MANIFEST.in): SPDX licence, LICENSE, an sdist with the whole
test suite, ``evpay-agent --version`` from the installed distribution's metadata."""

from __future__ import annotations

import email
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

from agent.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"evpay-agent {metadata.version('evpay-agent')}\n"


def test_licence_file_is_the_apache_2_0_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def _tracked(*paths: str) -> set[str]:
    proc = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", *paths], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    return {line for line in proc.stdout.splitlines() if (ROOT / line).exists()}


@pytest.mark.timeout(300)
def test_sdist_holds_the_whole_test_suite_and_the_metadata(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,) = tmp_path.glob("evpay_agent-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        pkg_info = tar.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/PKG-INFO")
        assert pkg_info is not None
        info = email.message_from_bytes(pkg_info.read())
    # all of tests/ (and what the tests read: docs/, systemd/), not just setuptools' tests/test*.py
    missing = _tracked("tests", "docs", "systemd") - members
    assert not missing, sorted(missing)
    assert not [m for m in members if m.endswith((".pyc", ".pyo")) or "__pycache__" in m]
    assert "LICENSE" in members
    assert info["License-Expression"] == "Apache-2.0"
    assert info.get_all("License-File") == ["LICENSE"]
    assert info["License"] is None  # the deprecated free-text field is gone
    classifiers = info.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # superseded by the expression
    assert {u.split(",")[0] for u in info.get_all("Project-URL") or []} >= {"Homepage", "Source"}
