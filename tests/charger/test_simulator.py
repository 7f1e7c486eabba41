"""The charger simulator's control channel (in process, TCP, stdin) and ``python -m hil.charger_sim``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from drivers.charger.base import ChargerBack, ChargerLost, ChargingState, PlugChanged, StatusChanged
from hil.charger_sim import ChargerSimulator
from tests.charger.conftest import Rig, make_driver
from tests.charger.support import EventWaiter
from tests.mosquitto import Broker

ROOT = Path(__file__).resolve().parents[2]


def test_control_commands_in_process() -> None:
    sim = ChargerSimulator("mqtt://127.0.0.1:1", connectors=2)  # never started: no broker needed
    assert "plug C" in sim.control("help")
    assert sim.control("plug 1") == "ok"
    assert sim.control("power 1 11000") == "ok"
    assert sim.control("pause 1") == "ok"
    state = json.loads(sim.control("state 1"))
    assert state["plugged"] is True
    assert state["ev_paused"] is True
    assert state["demand_w"] == 11000.0
    assert state["status"] == "idle"  # plugged, not enabled
    assert (state["energy_wh"], state["session_energy_wh"], state["session_start_wh"]) == (0, 0, 0)
    assert sim.control("resume 1") == "ok"
    assert sim.control("fault 2 E42") == "ok"
    assert json.loads(sim.control("state 2"))["status"] == "fault"
    assert sim.control("clear 2") == "ok"
    assert sim.control("unplug 1") == "ok"
    assert [s["connector_id"] for s in json.loads(sim.control("state"))] == [1, 2]
    assert sim.control("lose") == "ok"
    assert sim.control("restore") == "ok"
    malformed = [
        "",
        "   ",
        "fly 1",
        "plug",
        "plug x",
        "plug 9",
        "plug 1 2",
        "power 1",
        "power 1 lots",
        "power 1 -5",
        "power 1 nan",
        "fault 1",
        "state 7",
        "lose now",
        "\x00\xff",
    ]
    for line in malformed:
        answer = sim.control(line)
        assert answer.startswith("error: "), (line, answer)
    assert sim.control("quit") == "ok: bye"


async def test_control_channel_over_tcp(rig: Rig) -> None:
    host, port = await rig.sim.start_control_server()
    reader, writer = await asyncio.open_connection(host, port)
    try:

        async def ask(line: str) -> str:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            async with asyncio.timeout(2):
                return (await reader.readline()).decode().rstrip("\n")

        assert await ask("plug 2") == "ok"
        assert (await rig.events.next(PlugChanged, lambda e: e.connector_id == 2)).plugged
        assert (await ask("bogus")).startswith("error: unknown command")
        assert json.loads(await ask("state 2"))["plugged"] is True
        assert await ask("lose") == "ok"
        await rig.events.next(ChargerLost)
        assert await ask("restore") == "ok"
        await rig.events.next(ChargerBack)
        assert await ask("quit") == "ok: bye"
        async with asyncio.timeout(2):
            assert await reader.read() == b""  # quit closes the connection
    finally:
        writer.close()
        await writer.wait_closed()


async def _start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil.charger_sim",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def _first_line(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        line = await proc.stdout.readline()
    assert line, await proc.stderr.read() if proc.stderr else b""
    info = json.loads(line)
    assert isinstance(info, dict)
    return info


@pytest.mark.req("STOP-3")
async def test_cli_subprocess_tcp_control_and_quit(mosquitto: Broker) -> None:
    proc = await _start_cli("--broker", mosquitto.url, "--connectors", "2", "--meter-interval", "0.05")
    try:
        info = await _first_line(proc)
        assert info["connectors"] == [1, 2]
        assert info["prefix"] == "charger"
        control = info["control"]
        assert isinstance(control, dict)
        async with make_driver(mosquitto) as driver:
            events = EventWaiter(driver)
            await events.next(ChargerBack, timeout_s=5)
            reader, writer = await asyncio.open_connection(control["host"], control["port"])
            writer.write(b"plug 1\n")
            assert await reader.readline() == b"ok\n"
            await events.next(PlugChanged, lambda e: e.connector_id == 1 and e.plugged)
            await driver.enable_energy(1)
            await events.next(StatusChanged, lambda e: e.state is ChargingState.CHARGING)
            writer.write(b"unplug 1\nquit\n")
            assert await reader.readline() == b"ok\n"
            assert await reader.readline() == b"ok: bye\n"
            await events.next(StatusChanged, lambda e: e.state is ChargingState.IDLE)
            writer.close()
            await writer.wait_closed()
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
            lost = await events.next(ChargerLost)  # a clean shutdown publishes alive offline
            assert lost.reason == "offline"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_subprocess_stdin_control_and_sigterm(mosquitto: Broker) -> None:
    proc = await _start_cli("--broker", mosquitto.url, "--connectors", "1", "--control-stdin")
    try:
        info = await _first_line(proc)
        assert info["control"] == "stdin"
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"plug 1\nstate 1\nnonsense\n")
        await proc.stdin.drain()
        async with asyncio.timeout(5):
            assert await proc.stdout.readline() == b"ok\n"
            assert json.loads(await proc.stdout.readline())["plugged"] is True
            assert (await proc.stdout.readline()).startswith(b"error: ")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_rejects_a_bad_broker_url() -> None:
    proc = await _start_cli("--broker", "http://x", "--connectors", "1")
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 2
    assert b"broker_url" in stderr
