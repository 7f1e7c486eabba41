"""The simulator's line-based control channel (in-process, over TCP) and ``python -m hil.psp_sim``."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from drivers.psp import messages as m
from drivers.transport import open_transport
from hil.psp_sim import Simulator
from tests.sim.helpers import HASH, PAN, RawHost, connected, fast_config, until

ROOT = Path(__file__).resolve().parents[2]

MALFORMED = [
    "",
    "frobnicate",
    "tap",
    "tap emv hash=XYZ",
    "tap emv decline=not_a_reason",
    "tap rfid",
    "fault delay",
    "fault delay 1 only=NoSuchRequest",
    "fault delay only=CommitSession",
    "fault delay 1 2 3 only=CommitSession",
    "fault split 0",
    "reboot sometimes",
    "press",
    "tap emv pan=4761731234560010",  # an unmasked PAN is refused
    "state extra",
    "\x00\xff garbage",
]


async def test_control_in_process_flow() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(m.ProtocolOption.DETAILED_RESULTS)
        assert "tap emv" in sim.control("help")
        assert json.loads(sim.control("state"))["state"] == "ENABLED"
        await host.send(m.StartSession(2500, 10))
        await until(lambda: sim.state is m.PspState.WAIT_CARD)
        assert sim.control(f"tap emv hash={HASH} pan={PAN} brand=MC decline=insufficient_funds") == "ok read"
        assert isinstance(await host.message(), m.CardRead)
        assert await host.call(m.AuthSession()) == m.SessionDeclined(0x09)
        assert sim.control("tap emv partial=1000") == "ok queued"
        await host.send(m.StartSession(2500, 11))
        assert isinstance(await host.message(), m.CardRead)
        reply = await host.call(m.AuthSession())
        assert isinstance(reply, m.SessionPartiallyApproved)
        [row] = json.loads(sim.control("sessions"))
        assert (row["session_id"], row["authorized_minor"], row["status"]) == (
            reply.session_id,
            1000,
            "approved",
        )
        assert sim.control("fault delay 2.5 1 only=CommitSession") == "ok"
        faults = json.loads(sim.control("faults"))
        assert (faults["delay"], faults["delay_s"], faults["delay_only"]) == (1, 2.5, "CommitSession")
        assert sim.control("fault delay 0.5") == "ok"  # the untargeted form still works
        assert json.loads(sim.control("faults"))["delay_only"] is None
        assert sim.control("fault drop 1") == "ok"
        assert json.loads(sim.control("faults"))["drop"] == 1
        assert sim.control("fault clear") == "ok"
        assert json.loads(sim.control("screen")) == {"visible": False, "hidden_screen": False}
        assert sim.control("reboot lose") == "ok"
        assert json.loads(sim.control("sessions")) == []
        assert sim.control("press ok").startswith("error: ")
        assert sim.control("quit") == "ok bye"
        assert sim.quit_requested.is_set()


async def test_control_over_tcp_with_malformed_commands() -> None:
    async with Simulator(fast_config("apollo")) as sim:
        psp_port = await sim.serve_tcp("127.0.0.1", 0)
        control_port = await sim.serve_control("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", control_port)
        try:

            async def ask(line: str | bytes) -> str:
                raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
                writer.write(raw + b"\n")
                await writer.drain()
                async with asyncio.timeout(1.0):
                    return (await reader.readline()).decode().rstrip("\n")

            for line in MALFORMED:
                reply = await ask(line)
                assert reply.startswith("error: "), (line, reply)
            assert (await ask(b"x" * 5000)).startswith("error: ")  # an over-long line
            assert json.loads(await ask("state"))["state"] == "OFFLINE"
            transport = await open_transport(f"tcp://127.0.0.1:{psp_port}")
            try:
                host = RawHost(transport, sim.wire())
                await host.setup()
                await host.send(m.StartSession(500, 1))
                await until(lambda: sim.state is m.PspState.WAIT_CARD)
                assert await ask("tap rfid uid=04A2B3C4D5E6F7") == "ok read"
                assert isinstance(await host.message(), m.PropCardRead)
                await host.send(m.UiRequest("dialog", (("buttons.stop", ""), ("buttons.stop.label", "Stop"))))
                assert await host.message() == m.Result(True)  # allowed in WAIT_AUTH (§3.3) …
                assert sim.current_screen is None  # … but hidden while the card is held
                assert (await ask("press stop")).startswith("error: ")
                assert json.loads(await ask("screen")) == {
                    "visible": False,
                    "hidden_screen": True,
                    "payment": {  # the payment flow's own screen (§3.3, §5.9)
                        "amount_minor": 500,
                        "reference": "1",
                        "second_reference": None,
                        "qr_url": None,
                    },
                }
            finally:
                await transport.close()
            await until(lambda: sim.state is m.PspState.OFFLINE)  # the TCP client left
            assert json.loads(await ask("state"))["state"] == "OFFLINE"
            assert await ask("quit") == "ok bye"
            assert await reader.readline() == b""  # the control server closes after quit
        finally:
            writer.close()
            await writer.wait_closed()


async def test_cli_subprocess_start_connect_quit() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil.psp_sim",
        "--family",
        "p6x",
        "--tcp",
        "127.0.0.1:0",
        "--pty",
        "--control-port",
        "0",
        "--idle-close",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            where = json.loads(await proc.stdout.readline())
        assert where["pty"].startswith("/dev/")
        host_name, port = where["control"].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host_name, int(port))
        transport = await open_transport(f"tcp://{where['tcp']}")
        try:
            host = RawHost(transport, m.WireFormat(family=m.Family.P6X))
            assert await host.call(m.Synchronize()) == m.SynchronizeEcho()
        finally:
            await transport.close()
        # §1.3: the simulator sees the TCP close on its own time and goes OFFLINE then; wait for
        # that, or it could land after the pty's Synchronize below (the CI failure of stop 14).
        async with asyncio.timeout(10):
            while True:
                writer.write(b"state\n")
                await writer.drain()
                state = json.loads(await reader.readline())
                if state["state"] == "OFFLINE":
                    break
                await asyncio.sleep(0.01)
        serial = await open_transport(f"serial://{where['pty']}")
        try:
            host = RawHost(serial, m.WireFormat(family=m.Family.P6X))
            assert await host.call(m.Synchronize()) == m.SynchronizeEcho()  # the same terminal on a pty
            assert (await host.status()).state is m.PspState.ONLINE
        finally:
            await serial.close()
        writer.write(b"quit\n")
        await writer.drain()
        assert await reader.readline() == b"ok bye\n"
        writer.close()
        await writer.wait_closed()
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("line", MALFORMED)
def test_malformed_commands_never_raise(line: str) -> None:
    sim = Simulator(fast_config("p6x"))
    assert sim.control(line).startswith("error: ")
    assert "\n" not in sim.control(line)
