"""``evpay-agent terminal probe`` (issue 2): setup against a (simulated) terminal, JSON out, clear errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

import pytest

from agent.cli import CliError
from agent.cli import terminal as terminal_command
from hil.psp_sim import SimConfig, Simulator


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="evpay-agent")
    terminal_command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.req("TERM-1", "TERM-2")
@pytest.mark.parametrize("family", ["apollo", "p6x"])
async def test_probe_prints_ids_and_status(family: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with Simulator(SimConfig(family=family, serial_number="SIM-PROBE-1")) as sim:
        port = await sim.serve_tcp("127.0.0.1", 0)
        args = parse(
            "terminal", "probe", "--url", f"tcp://127.0.0.1:{port}", "--family", family, "--timeout", "5"
        )
        code = await asyncio.to_thread(args.func, args)  # the command runs its own event loop
        assert sim.session_timeout == (172_800, 1)  # Setup with action void (TERM-2)
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["url"] == f"tcp://127.0.0.1:{port}"
    assert out["family"] == family
    assert out["ids"]["serial_number"] == "SIM-PROBE-1"
    assert out["status"] == {"state": "ENABLED", "transaction_running": False}
    assert out["protocol"]["version"] == 3


def test_probe_connection_refused() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    args = parse("terminal", "probe", "--url", url, "--timeout", "2")
    with pytest.raises(CliError) as info:
        args.func(args)
    assert info.value.exit_code == 1
    assert str(info.value).startswith(f"cannot connect to terminal at {url}")


async def test_probe_silent_terminal() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(100):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    async with server:
        url = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        args = parse("terminal", "probe", "--url", url, "--timeout", "0.5")
        with pytest.raises(CliError) as info:
            await asyncio.to_thread(args.func, args)
    assert info.value.exit_code == 1
    assert str(info.value) == f"terminal at {url} did not answer Synchronize within 0.5 s"
