"""The systemd unit (DESIGN.md §5.7, OPS-1): notify service, dedicated user, hardening, verified."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "evpay-agent.service"


def _settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.req("OPS-1")
def test_unit_is_a_hardened_notify_service() -> None:
    s = _settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] == ["20"]  # WATCHDOG=1 every 10 s while healthy (agent/cli/run.py)
    assert s["Restart"] == ["always"]  # a withheld watchdog ends in a restart
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/opt/evpay-agent/venv/bin/evpay-agent run -c /etc/evpay-agent/agent.yaml"]
    assert s["User"] == ["evpay-agent"]
    assert s["StateDirectory"] == ["evpay-agent"]
    assert s["SupplementaryGroups"] == ["dialout"]  # the serial device, nothing more
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictNamespaces", "LockPersonality"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["DevicePolicy"] == ["closed"]


@pytest.mark.req("OPS-1")
def test_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # the installed venv does not exist here: point the commands at a binary that does
    unit = tmp_path / "evpay-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/evpay-agent/venv/bin/evpay-agent", "/bin/true"))
    proc = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"},
    )
    problems = [line for line in proc.stderr.splitlines() if "evpay-agent.service" in line]
    assert not problems, proc.stderr


def test_sysusers_and_tmpfiles_agree_with_the_unit() -> None:
    sysusers = (ROOT / "systemd" / "evpay-agent.sysusers").read_text()
    tmpfiles = (ROOT / "systemd" / "evpay-agent.tmpfiles").read_text()
    assert "u evpay-agent " in sysusers
    assert "m evpay-agent dialout" in sysusers
    assert "/var/lib/evpay-agent 0750 evpay-agent evpay-agent" in tmpfiles
