"""The README's first command runs ``python -m hil.demo``: it must show a complete paid session."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("family", ["apollo", "p6x"])
def test_demo_completes_a_paid_session(family: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--driver-only", "--family", family],
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


@pytest.mark.req("START-2", "STOP-3", "STOP-8")
def test_agent_demo_charges_and_commits_the_tariff_price() -> None:
    """The README's first command: Mosquitto, both simulators and the real daemon, one paid session."""
    proc = subprocess.run([sys.executable, "-m", "hil.demo"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for state in ("new=awaiting_card", "new=authorizing", "new=charging", "new=settling", "new=available"):
        assert state in out
    assert "paid session complete: one commit of" in out
    assert "agent stopped with SIGTERM, exit code 0" in out
    assert "transitions.core" not in out  # library internals stay out of the agent's log
