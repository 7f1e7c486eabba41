"""The README's first command runs ``python -m hil.demo``: it must show a complete paid session."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("family", ["apollo", "p6x"])
def test_demo_completes_a_paid_session(family: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--family", family],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in (
        "Synchronize",
        "Setup",
        "Enable",
        "StartSession",
        "CardRead",
        "SessionApproved",
        "CommitSession",
    ):
        assert name in out
    assert "paid session complete" in out
    assert '"committed_minor": 1234' in out
