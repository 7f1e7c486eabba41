"""The card-data guard finds PANs and ignores what the agent legitimately writes (OPS-2)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.pan_guard import find_pans, luhn_ok

REPO = Path(__file__).resolve().parent.parent
TEST_PAN = "4761739001010010"  # a public EMV test card number (Visa)


@pytest.mark.req("OPS-2")
def test_finds_a_pan_and_reports_it_masked() -> None:
    assert luhn_ok(TEST_PAN.encode())
    hits = find_pans(f"card={TEST_PAN} ok".encode())
    assert hits == ["476173******0010"]
    assert TEST_PAN not in "".join(hits)


@pytest.mark.req("OPS-2")
@pytest.mark.parametrize(
    "text",
    [
        "476173******0010",  # masked PAN
        "0123456789ABCDEF0123456789ABCDEF01234567",  # card hash
        "1795000000000",  # a millisecond timestamp
        "session 93509420 ref 1 amount 2500",
        "4761739001010011",  # right length and brand, wrong check digit
        # a session ref in a SQLite page, a record-header digit behind it (13 digits, Luhn-valid)
        "\x011-20261202T2015384715518\x1b",
    ],
)
def test_ignores_what_is_not_a_pan(text: str) -> None:
    assert find_pans(text.encode()) == []


@pytest.mark.req("OPS-2")
def test_a_pan_right_after_other_text_is_still_found() -> None:
    assert find_pans(b"T4761739001010010") == ["476173******0010"]
    assert find_pans(b"1202T4761739001010010") == ["476173******0010"]


@pytest.mark.req("OPS-2")
@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "xdist"])
def test_guard_fails_a_session_that_logs_a_pan(workers: str | None) -> None:
    """A real pytest session that logs a PAN fails. It runs outside this session's temporary
    directory, so the planted PAN is not found (again) by this session's own guard."""
    with tempfile.TemporaryDirectory(prefix="pan-guard-selftest-") as tmp:
        root = Path(tmp)
        (root / "conftest.py").write_text('pytest_plugins = ["tests.pan_guard"]\n')
        (root / "test_leak.py").write_text(
            "import logging\n\n"
            "def test_leaks(tmp_path):\n"
            f"    logging.getLogger('agent').warning('declined card %s', '{TEST_PAN}')\n\n"
            "def test_clean():\n"
            "    pass\n"
        )
        extra = ["-n", workers] if workers else []
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--basetemp",
                str(root / "bt"),
                *extra,
            ],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout + proc.stderr
    assert "card data found in test output" in proc.stdout
    assert "log agent: 476173******0010" in proc.stdout
    assert TEST_PAN not in proc.stdout
