"""The unit's device access and hardening (OPS-1, docs/systemd.md): the serial classes it allows, the
``unit-dropin`` drop-in for any other device, exposure at most 1.5 and a clean ``verify``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.cli import CliError, main
from agent.cli.unit_dropin import render_dropin, user_namespaces_problem
from tests.agent.rig import write_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "evpay-agent.service"
DOC = ROOT / "docs" / "systemd.md"
MAX_EXPOSURE = 1.5
EXPOSURE_LINE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def _settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def _unit_classes() -> list[str]:
    allowed = _settings(UNIT.read_text())["DeviceAllow"]
    return [value.removeprefix("char-").removesuffix(" rw") for value in allowed if value.startswith("char-")]


def _documented_classes() -> list[str]:
    section = DOC.read_text().split("## Serial devices", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    return analyze


def _unit_copy(directory: Path, dropin: str | None = None) -> Path:
    """The unit with a binary that exists (verify wants one), and ``dropin`` as its 10-device.conf."""
    unit = directory / "evpay-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/evpay-agent/venv/bin/evpay-agent", "/bin/true"))
    if dropin is not None:
        (directory / "evpay-agent.service.d").mkdir()
        (directory / "evpay-agent.service.d" / "10-device.conf").write_text(dropin)
    return unit


def _exposure(unit: Path) -> float:
    proc = subprocess.run(
        [_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin", "SYSTEMD_COLORS": "0"},
    )
    if "offline" in proc.stderr and ("unrecognized" in proc.stderr or "Unknown" in proc.stderr):
        pytest.skip(f"systemd-analyze too old for --offline (needs systemd 250): {proc.stderr.strip()}")
    match = EXPOSURE_LINE.search(proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


def _verify_problems(unit: Path) -> list[str]:
    proc = subprocess.run(
        [_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"},
    )
    return [line for line in proc.stderr.splitlines() if "evpay-agent.service" in line]


@pytest.mark.req("OPS-1")
def test_the_documented_uart_classes_are_the_units() -> None:
    unit = _unit_classes()
    assert unit == _documented_classes()
    assert len(unit) == len(set(unit))
    for name in ("ttyS", "ttyUSB", "ttyACM", "ttymxc", "ttyAMA", "ttyO", "ttySAC", "ttyPS", "ttyLP"):
        assert name in unit, name
    for name in ("ttySTM", "ttyTHS", "ttyMSM"):
        assert name in unit, name


@pytest.mark.req("OPS-1")
def test_the_free_hardening_is_there_and_the_reasons_stay() -> None:
    s = _settings(UNIT.read_text())
    for key in (
        "PrivateMounts",
        "RemoveIPC",
        "ProtectClock",
        "ProtectHostname",
        "ProtectKernelLogs",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "RestrictNamespaces",
        "NoNewPrivileges",
    ):
        assert s[key] == ["yes"], key
    assert s["UMask"] == ["0077"]
    assert s["ProtectProc"] == ["invisible"]
    assert s["ProcSubset"] == ["pid"]
    assert s["SystemCallArchitectures"] == ["native"]
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["AmbientCapabilities"] == [""]
    # what the agent needs: notify + watchdog, its state directory, the serial group, the network
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] == ["20"]
    assert s["StateDirectory"] == ["evpay-agent"]
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["DevicePolicy"] == ["closed"]
    # left out on purpose (docs/systemd.md): each would stop the agent on some real site
    for key in ("PrivateUsers", "PrivateDevices", "PrivateNetwork", "IPAddressDeny", "DynamicUser"):
        assert key not in s, key


@pytest.mark.req("OPS-1")
def test_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    exposure = _exposure(_unit_copy(tmp_path))
    assert exposure <= MAX_EXPOSURE
    assert f"exposure **{exposure}**" in DOC.read_text()  # the documented figure is the real one


def _proc_with_user_namespaces(directory: Path) -> Path:
    (directory / "self" / "ns").mkdir(parents=True)
    (directory / "self" / "ns" / "user").write_text("")
    return directory


@pytest.mark.req("OPS-1")
def test_the_unit_with_the_generated_dropin_verifies_and_scores_lower(tmp_path: Path) -> None:
    proc = _proc_with_user_namespaces(tmp_path / "proc")
    dropin = render_dropin("/etc/evpay-agent/agent.yaml", "serial:///dev/null", private_users=True, proc=proc)
    (tmp_path / "site").mkdir()
    (tmp_path / "plain").mkdir()
    unit = _unit_copy(tmp_path / "site", dropin)
    assert not _verify_problems(unit)
    assert _exposure(unit) < _exposure(_unit_copy(tmp_path / "plain"))


@pytest.mark.req("OPS-1")
def test_unit_dropin_allows_the_configured_serial_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, psp_port=1, broker_url="mqtt://127.0.0.1:1")
    config.write_text(
        config.read_text().replace("url: tcp://127.0.0.1:1", "url: serial:///dev/null?baudrate=57600")
    )
    assert main(["unit-dropin", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "[Service]\nDeviceAllow=/dev/null rw\n" in out
    assert "/etc/systemd/system/evpay-agent.service.d/10-device.conf" in out
    assert "PrivateUsers" not in out


def test_unit_dropin_resolves_a_symlink_to_the_real_device(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-FTDI_FT232R_A1%-if00-port0"
    link.parent.mkdir()
    link.symlink_to("/dev/null")
    out = render_dropin("agent.yaml", f"serial://{link.as_posix().replace('%', '%25')}")
    assert f"# terminal.url serial://{link.as_posix().replace('%', '%25')}: {link} -> /dev/null\n" in out
    # only paths under /dev are DeviceAllow= paths; a /dev symlink would be listed too
    assert [line for line in out.splitlines() if line.startswith("DeviceAllow=")] == [
        "DeviceAllow=/dev/null rw"
    ]


def test_unit_dropin_escapes_specifiers_and_refuses_what_a_unit_cannot_hold() -> None:
    assert "DeviceAllow=/dev/tty%%1 rw" in render_dropin("agent.yaml", "serial:///dev/tty%251")
    with pytest.raises(CliError, match="whitespace"):
        render_dropin("agent.yaml", "serial:///dev/tty%20USB0")
    with pytest.raises(CliError, match="not a device under /dev"):
        render_dropin("agent.yaml", "serial:///tmp/ttyUSB0")


def test_unit_dropin_for_a_network_terminal_allows_no_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, psp_port=3201, broker_url="mqtt://127.0.0.1:1")
    assert main(["unit-dropin", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "DeviceAllow" not in out
    assert "# terminal.url tcp://127.0.0.1:3201: a network terminal, no serial device to allow\n" in out
    assert out.endswith("[Service]\n")


def test_unit_dropin_reports_a_bad_config_as_check_config_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("station_id: [\n")
    assert main(["unit-dropin", "-c", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(bad) in captured.err


def test_private_users_only_where_the_kernel_has_user_namespaces(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "sys" / "user").mkdir(parents=True)
    assert user_namespaces_problem(proc) == "this kernel has no user namespaces (CONFIG_USER_NS)"
    with pytest.raises(CliError, match="systemd would not start the service"):
        render_dropin("agent.yaml", "serial:///dev/null", private_users=True, proc=proc)
    _proc_with_user_namespaces(proc)
    (proc / "sys" / "user" / "max_user_namespaces").write_text("0\n")
    assert user_namespaces_problem(proc) == "user.max_user_namespaces is 0"
    (proc / "sys" / "user" / "max_user_namespaces").write_text("15000\n")
    assert user_namespaces_problem(proc) is None
    out = render_dropin("agent.yaml", "serial:///dev/null", private_users=True, proc=proc)
    assert out.endswith("DeviceAllow=/dev/null rw\nPrivateUsers=yes\n")
