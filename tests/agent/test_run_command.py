"""``evpay-agent run`` / ``sessions`` as real processes: READY/STOPPING, SIGTERM drain, config errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.journal import read_payments
from hil.psp_sim import Card
from tests.agent.rig import Rig, eventually


def _agent(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def _sessions_json(config: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        _agent("sessions", "-c", str(config), "--json"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    data = json.loads(out.stdout)
    assert isinstance(data, list)
    return data


@pytest.mark.req("OPS-1", "STOP-7")
async def test_req_ops_1_sigterm_finishes_the_settlement_in_flight(apollo_rig: Rig, tmp_path: Path) -> None:
    rig = apollo_rig
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    env.pop("EVPAY_CRASH_AT", None)
    proc = await asyncio.create_subprocess_exec(
        *_agent("run", "-c", str(rig.config_path)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    try:
        ready = await asyncio.wait_for(loop.sock_recv(notify, 256), 10)
        assert ready == b"READY=1"
        rig.charger.set_power(1, 11000.0)
        rig.charger.plug(1)
        await eventually(lambda: rig.psp.state.name == "WAIT_CARD", 10, "card read")
        rig.psp.tap(Card.emv())
        await eventually(lambda: rig.charger.state(1).enabled, 10, "energy enabled")
        await asyncio.sleep(0.3)
        rig.psp.faults.delay_replies(1.0, n=5)  # the Commit's Result comes late
        rig.charger.unplug(1)
        await eventually(lambda: not rig.charger.state(1).enabled, 5, "energy disabled")
        proc.send_signal(signal.SIGTERM)
        stopping = await asyncio.wait_for(loop.sock_recv(notify, 256), 5)
        assert stopping == b"STOPPING=1"
        code = await asyncio.wait_for(proc.wait(), 15)
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert code == 0, stderr[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
    assert [s["status"] for s in rig.sessions()] == ["committed"]
    assert "<6>" in stderr  # journald priorities
    assert "476173******0010" in stderr
    (row,) = _sessions_json(rig.config_path)
    assert row["state"] == "committed"
    assert row["disposal"] == "commit"
    assert row["disposal_confirmed"] is True
    assert row["final_minor"] == rig.sessions()[0]["committed_minor"]
    assert row["method"] == "emv"
    assert isinstance(row["terminal_session_id"], int)
    for key in (
        "payment_id",
        "connector_id",
        "authorized_minor",
        "energy_wh",
        "masked_pan",
        "started_at",
        "ended_at",
        "recovered",
    ):
        assert key in row


def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("station_id: X\nterminal:\n  url: tcp://127.0.0.1:1\n  family: nope\n")
    out = subprocess.run(_agent("run", "-c", str(bad)), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"{bad}:4: terminal.family" in out.stderr


@pytest.mark.req("ERR-5", "STOP-7")
async def test_req_err_5_crash_point_after_commit_sent_then_restart_resends(apollo_rig: Rig) -> None:
    """EVPAY_CRASH_AT=psp_sent:CommitSession SIGKILLs the agent; the restarted agent re-sends it."""
    rig = apollo_rig
    env = {**os.environ, "EVPAY_CRASH_AT": "psp_sent:CommitSession"}
    env.pop("NOTIFY_SOCKET", None)
    proc = await asyncio.create_subprocess_exec(
        *_agent("run", "-c", str(rig.config_path)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        rig.charger.set_power(1, 11000.0)
        rig.charger.plug(1)
        await eventually(lambda: rig.psp.state.name == "WAIT_CARD", 10, "card read")
        rig.psp.tap(Card.emv())
        await eventually(lambda: rig.charger.state(1).enabled, 10, "energy enabled")
        await asyncio.sleep(0.3)
        rig.charger.unplug(1)
        code = await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == -signal.SIGKILL
    (before,) = _sessions_json(rig.config_path)
    assert before["state"] == "settling"
    assert before["disposal"] == "commit"
    assert before["disposal_confirmed"] is False
    env.pop("EVPAY_CRASH_AT")
    proc = await asyncio.create_subprocess_exec(
        *_agent("run", "-c", str(rig.config_path)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        # the terminal had the Commit before the crash; the journal did not see its Result
        assert _committed_once(rig)
        state_dir = rig.loaded.config.state_dir
        await eventually(lambda: read_payments(state_dir)[0].state == "committed", 15, "commit re-sent")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    (after,) = _sessions_json(rig.config_path)
    assert after["state"] == "committed"
    assert after["recovered"] is True
    assert after["final_minor"] == before["final_minor"] == rig.sessions()[0]["committed_minor"]


def _committed_once(rig: Rig) -> bool:
    return [s["status"] for s in rig.sessions()] == ["committed"]
