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


# --- systemd/install.sh: prerequisites checked first, with what to do about them ------------------

INSTALL = ROOT / "systemd" / "install.sh"


def _fake_bin(tmp_path: Path, version: str, *, venv: bool = True) -> Path:
    """python3 reporting ``version`` (and whether venv/ensurepip import), a non-root ``id``, and
    systemd tools that do nothing: install.sh must stop at its checks, never install anything."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    scripts = {
        "python3": f"""#!/bin/sh
case "$*" in
  *version_info*) echo {version};;
  *ensurepip*) exit {0 if venv else 1};;
  *) echo "unexpected python3 call: $*" >&2; exit 99;;
esac
""",
        "id": "#!/bin/sh\necho 1000\n",
        **{tool: "#!/bin/sh\nexit 99\n" for tool in ("systemd-sysusers", "systemd-tmpfiles", "systemctl")},
    }
    for name, text in scripts.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return bindir


def _install(bindir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": f"{bindir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )


@pytest.mark.parametrize("version", ["3.9", "3.10", "2.7"])
def test_install_sh_refuses_an_old_python_and_says_what_to_do(tmp_path: Path, version: str) -> None:
    proc = _install(_fake_bin(tmp_path, version))
    assert proc.returncode == 1
    assert f"needs Python >= 3.11, but python3 is Python {version}" in proc.stderr
    assert "Debian 11 (bullseye) has 3.9" in proc.stderr
    assert "EVPAY_PYTHON" in proc.stderr
    assert "run as root" not in proc.stderr  # stopped at the first check


def test_install_sh_needs_the_venv_module(tmp_path: Path) -> None:
    proc = _install(_fake_bin(tmp_path, "3.11", venv=False))
    assert proc.returncode == 1
    assert "no venv module or no ensurepip" in proc.stderr
    assert "apt-get install python3-venv" in proc.stderr


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13", "3.20"])
def test_install_sh_accepts_python_3_11_and_later(tmp_path: Path, version: str) -> None:
    bindir = _fake_bin(tmp_path, version)
    checked = _install(bindir, "--check")
    assert checked.returncode == 0, checked.stderr
    assert f"prerequisites met (Python {version}, venv; from the checkout" in checked.stderr
    real = _install(bindir)  # every check passes: only then does it want root
    assert real.returncode == 1
    assert "run as root" in real.stderr


def test_install_sh_offline_from_a_wheelhouse(tmp_path: Path) -> None:
    bindir = _fake_bin(tmp_path, "3.11")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    empty = _install(bindir, "--check", "--wheels", str(wheels))
    assert empty.returncode == 1
    assert "holds no evpay_agent-*.whl" in empty.stderr
    assert "hil/bootstrap.sh release" in empty.stderr
    (wheels / "evpay_agent-0.1.0-py3-none-any.whl").touch()
    ok = _install(bindir, "--check", "--wheels", str(wheels))
    assert ok.returncode == 0, ok.stderr
    assert f"from {wheels}" in ok.stderr
    missing = _install(bindir, "--check", "--wheels", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert "no such directory" in missing.stderr
