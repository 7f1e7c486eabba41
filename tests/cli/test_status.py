"""``evpay-agent status`` without a daemon, its exit codes and its human view (OPS-3).

With a running daemon: tests/e2e/test_status.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli import status as status_cli
from agent.runtime.control import ControlPermissionDenied, socket_path
from tests.agent.rig import write_config

pytestmark = pytest.mark.req("OPS-3")


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_no_daemon_no_socket_exits_3_with_one_clear_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, psp_port=1, broker_url="mqtt://127.0.0.1:1")
    done = _status("-c", str(config))
    expected = socket_path(tmp_path / "state")
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr == f"evpay-agent: the daemon is not running (no control socket at {expected})\n"
    assert _status("--state-dir", str(tmp_path / "state"), "--json").returncode == 3


def test_a_stale_socket_is_not_a_running_daemon(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    done = _status("--state-dir", str(tmp_path))
    assert done.returncode == 3
    assert (
        done.stderr
        == f"evpay-agent: the daemon is not running (nothing listens on the control socket {path})\n"
    )


def test_a_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("station_id: [\n")
    done = _status("-c", str(bad))
    assert done.returncode == 2
    assert done.stderr.startswith(f"evpay-agent: error: {bad}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root connects to a 0600 socket of anyone")
def test_permission_denied_exits_4(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen(1)
        os.chmod(path, 0)
        done = _status("--state-dir", str(tmp_path))
    assert done.returncode == 4
    assert "permission denied on the control socket" in done.stderr


def test_permission_denied_maps_to_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(path: Path, name: str, *, timeout_s: float) -> dict[str, object]:
        raise ControlPermissionDenied(f"permission denied on the control socket {path}")

    monkeypatch.setattr(status_cli, "request", denied)
    assert main(["status", "--state-dir", str(tmp_path)]) == 4
    assert capsys.readouterr().err == (
        f"evpay-agent: error: permission denied on the control socket {socket_path(tmp_path)}\n"
    )


def test_an_error_reply_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(path: Path, name: str, *, timeout_s: float) -> dict[str, object]:
        return {"error": "busy: too many control connections"}

    monkeypatch.setattr(status_cli, "request", error)
    assert main(["status", "--state-dir", str(tmp_path), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "busy: too many control connections" in captured.err


DOC: dict[str, Any] = {
    "status_format": 1,
    "station_id": "ST-1",
    "version": "1.2.3",
    "started_at": "2026-03-01T10:00:00.000Z",
    "pid": 42,
    "ts": "2026-03-01T11:02:05.000Z",
    "ready": True,
    "recovered": True,
    "stopping": False,
    "health": None,
    "currency": "KWD",
    "minor_unit_digits": 3,
    "terminal": {
        "link": "down",
        "psp_state": None,
        "since": "2026-03-01T11:00:00.000Z",
        "last_error": "timeout",
    },
    "upstream": {"connected": False, "outbox_depth": 17, "outbox_near_full": False},
    "connectors": [
        {
            "connector_id": 1,
            "state": "charging",
            "plugged": True,
            "available": True,
            "session_id": "1-a",
            "method": "emv",
            "energy_wh": 1234,
            "power_w": 7200,
            "cost_minor": 1005,
            "authorized_minor": 50000,
            "currency": "KWD",
            "session": {
                "started_at": "2026-03-01T11:00:00.000Z",
                "elapsed_s": 3725,
                "payment_state": "charging",
            },
        },
        {"connector_id": 2, "state": "available", "plugged": False, "available": False, "session_id": None},
    ],
    "pending_settlements": [
        {
            "session_id": "2-b",
            "connector_id": 2,
            "disposal": "commit",
            "amount_minor": 7,
            "terminal_session_id": "9",
            "decided_at": "2026-03-01T10:59:00.000Z",
            "sent": True,
            "attempts": 2,
        }
    ],
    "alarms": [
        {
            "alarm": "terminal_offline",
            "severity": "warning",
            "connector_id": None,
            "session_id": None,
            "message": "payment terminal offline",
            "ts": "2026-03-01T11:01:00.000Z",
        }
    ],
    "journal_error": None,
}


def test_the_human_view() -> None:
    assert status_cli.render(DOC).splitlines() == [
        "station ST-1  evpay-agent 1.2.3  pid 42  up 1:02:05  ready",
        "terminal   down  psp -  since 2026-03-01T11:00:00.000Z  last error: timeout",
        "upstream   NOT connected  outbox 17 unsent",
        "connector 1  charging  plugged",
        "  session 1-a  emv  payment charging  1234 Wh  1.005 KWD  elapsed 1:02:05  "
        "authorized 50.000 KWD  7200 W",
        "connector 2  available  disabled unplugged",
        "pending settlements  1",
        "  2-b  connector 2  commit 0.007 KWD  sent, attempts 2, decided 2026-03-01T10:59:00.000Z",
        "alarms  1",
        "  [warning] terminal_offline: payment terminal offline (2026-03-01T11:01:00.000Z)",
    ]


@pytest.mark.parametrize(
    ("minor", "digits", "text"),
    [
        (0, 2, "0.00 EUR"),
        (5, 2, "0.05 EUR"),
        (123456, 2, "1234.56 EUR"),
        (1500, 0, "1500 EUR"),
        (-7, 2, "-0.07 EUR"),
    ],
)
def test_money_is_shown_with_integer_arithmetic(minor: int, digits: int, text: str) -> None:
    assert status_cli.money(minor, digits, "EUR") == text
