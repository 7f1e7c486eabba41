"""``evpay-agent run`` / ``sessions`` as real processes: READY/STOPPING, SIGTERM drain, config errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.store.journal import read_payments
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


COMMIT_HELD_S = 2.0  # the terminal books the Commit at once but holds its Result this long


class NotifySocket:
    """A fake ``$NOTIFY_SOCKET``: a datagram socket that keeps every sd_notify message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.seen: list[bytes] = []

    async def expect(self, state: bytes, timeout_s: float) -> None:
        """Wait for ``state``, keeping (and skipping) whatever comes first, e.g. ``WATCHDOG=1``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while True:
                message = await loop.sock_recv(self.sock, 256)
                self.seen.append(message)
                if message == state:
                    return

    def close(self) -> None:
        self.sock.close()


async def _start_agent(rig: Rig, notify: NotifySocket, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    env.pop("EVPAY_CRASH_AT", None)
    env.pop("WATCHDOG_PID", None)
    return await asyncio.create_subprocess_exec(
        *_agent("run", "-c", str(rig.config_path), *args),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def _charge_then_unplug_with_commit_held(rig: Rig, held_s: float) -> float:
    """Tap, charge, unplug; returns (monotonic) when the Commit reached the terminal, its Result held."""
    rig.charger.set_power(1, 11000.0)
    rig.charger.plug(1)
    # The terminal already scans for tap-to-start, so a tap can beat the agent's view of the
    # plug-in and be refused ("plug in first", no payment made): tap again until energy flows.
    for attempt in range(5):
        await eventually(lambda: rig.psp.state.name == "WAIT_CARD", 10, "card read")
        rig.psp.tap(Card.emv())
        try:
            await eventually(lambda: rig.charger.state(1).enabled, 3, "energy enabled")
            break
        except TimeoutError:
            if attempt == 4:
                raise
    assert len(rig.sessions()) == 1  # refused taps made no payment
    await asyncio.sleep(0.3)
    rig.psp.faults.delay_replies(held_s, n=1, only="CommitSession")
    rig.charger.unplug(1)
    await eventually(lambda: _commits_received(rig) == 1, 10, "Commit at the terminal")
    assert [s["status"] for s in rig.sessions()] == ["committed"]  # booked; its Result is held
    return time.monotonic()


def _commits_received(rig: Rig) -> int:
    return sum(1 for request in rig.psp.received if request.name == "CommitSession")


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    return (await proc.stderr.read()).decode() if proc.stderr else ""


@pytest.mark.req("OPS-1", "STOP-7")
async def test_req_ops_1_sigterm_finishes_the_settlement_in_flight(apollo_rig: Rig, tmp_path: Path) -> None:
    """SIGTERM while the Commit is outstanding at the terminal: the agent stays until its Result."""
    rig = apollo_rig
    state_dir = rig.loaded.config.state_dir
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = await _start_agent(rig, notify)
    try:
        await notify.expect(b"READY=1", 10)
        commit_at = await _charge_then_unplug_with_commit_held(rig, COMMIT_HELD_S)
        proc.send_signal(signal.SIGTERM)
        await notify.expect(b"STOPPING=1", 5)
        # the Result is still held at the terminal: the agent must still be there, waiting for it
        await asyncio.sleep(COMMIT_HELD_S / 2)
        assert proc.returncode is None, "the agent left before the Commit's Result arrived"
        assert read_payments(state_dir)[0].state == "settling"
        code = await asyncio.wait_for(proc.wait(), 15)
        waited = time.monotonic() - commit_at
        stderr = await _stderr(proc)
        assert code == 0, stderr[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
    assert waited >= COMMIT_HELD_S - 0.1, f"exited {waited:.2f} s after the Commit was sent"
    assert _commits_received(rig) == 1  # sent once, answered once, not re-sent
    assert [s["status"] for s in rig.sessions()] == ["committed"]
    assert b"WATCHDOG=1" in notify.seen  # WATCHDOG_USEC set: pinged while healthy
    assert "drained: no settlement in flight" in stderr
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


@pytest.mark.req("OPS-1", "ERR-5")
async def test_req_ops_1_drain_is_bounded_when_the_terminal_never_answers(
    apollo_rig: Rig, tmp_path: Path
) -> None:
    """The Commit's Result never comes: the drain gives up after --drain-timeout, exit 0, and the
    payment stays open in the journal; the next start settles it (once at the terminal)."""
    rig = apollo_rig
    state_dir = rig.loaded.config.state_dir
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = await _start_agent(rig, notify, "--drain-timeout", "1")
    try:
        await notify.expect(b"READY=1", 10)
        await _charge_then_unplug_with_commit_held(rig, 60.0)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
        took = time.monotonic() - signalled
        stderr = await _stderr(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, stderr[-3000:]
    assert 0.9 <= took < 5.0, f"stopped {took:.2f} s after SIGTERM (drain timeout 1 s)"
    assert "drain timed out" in stderr
    (row,) = _sessions_json(rig.config_path)
    assert (row["state"], row["disposal"], row["disposal_confirmed"]) == ("settling", "commit", False)
    # next start: the journaled Commit is sent again; the terminal already booked it (0x0C)
    proc = await _start_agent(rig, notify)
    try:
        await notify.expect(b"READY=1", 10)
        await eventually(lambda: read_payments(state_dir)[0].state != "settling", 10, "settled")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
    (after,) = _sessions_json(rig.config_path)
    assert after["disposal_confirmed"] is True
    assert after["recovered"] is True
    assert _commits_received(rig) == 2
    (session,) = rig.sessions()
    assert session["status"] == "committed"
    assert session["committed_minor"] == after["final_minor"]  # charged once, the journaled total


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
