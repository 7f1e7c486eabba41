"""The control socket (agent/runtime/control.py, OPS-3): creation, replacement, the line protocol."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import msgspec
import pytest

from agent.runtime.control import (
    IDLE_TIMEOUT_S,
    MAX_CLIENTS,
    MAX_PATH_BYTES,
    MAX_REQUEST_BYTES,
    ControlError,
    ControlSocket,
    ControlSocketInUse,
    DaemonNotRunning,
    request,
    socket_path,
)

pytestmark = pytest.mark.req("OPS-3")


def _doc() -> Mapping[str, object]:
    return {"hello": "world", "n": 1}


def _boom() -> Mapping[str, object]:
    raise RuntimeError("handler bug")


def _server(
    path: Path, *, idle_timeout_s: float = IDLE_TIMEOUT_S, max_clients: int = MAX_CLIENTS
) -> ControlSocket:
    return ControlSocket(
        path, {"status": _doc, "boom": _boom}, idle_timeout_s=idle_timeout_s, max_clients=max_clients
    )


@contextlib.asynccontextmanager
async def serving(server: ControlSocket) -> AsyncIterator[ControlSocket]:
    server.open()
    task = asyncio.create_task(server.serve(), name="control")
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()


async def ask(path: Path, data: bytes, lines: int = 1) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        out = []
        for _ in range(lines):
            line = await reader.readline()
            assert line.endswith(b"\n"), line
            value = msgspec.json.decode(line)
            assert isinstance(value, dict)
            out.append(value)
        return out
    finally:
        writer.close()
        await writer.wait_closed()


def _stale(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # bound, never listening, closed: what a killed daemon leaves


async def test_socket_is_owner_only_and_removed_on_close(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    async with serving(_server(path)):
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert await ask(path, b"status\n") == [{"hello": "world", "n": 1}]
        assert os.listdir(tmp_path) == ["control.sock"]  # no temporary name left
    assert not path.exists()


async def test_a_stale_socket_or_file_is_replaced(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    _stale(path)
    with pytest.raises(DaemonNotRunning, match="nothing listens"):
        request(path, "status")
    async with serving(_server(path)):
        assert await asyncio.to_thread(request, path, "status") == {"hello": "world", "n": 1}
    path.write_text("not a socket")
    async with serving(_server(path)):
        assert await asyncio.to_thread(request, path, "status") == {"hello": "world", "n": 1}


async def test_a_second_server_on_a_listening_socket_fails_and_leaves_it_alone(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    async with serving(_server(path)):
        second = _server(path)
        with pytest.raises(ControlSocketInUse, match="another evpay-agent is running"):
            second.open()
        assert not second.is_open
        second.close()  # not ours: nothing removed
        assert await ask(path, b"status\n") == [{"hello": "world", "n": 1}]


async def test_close_does_not_remove_a_socket_another_daemon_put_there(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    server = _server(path)
    server.open()
    path.unlink()
    _stale(path)  # replaced behind our back
    server.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


async def test_bad_requests_get_an_error_line_and_the_server_keeps_serving(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    async with serving(_server(path)) as server:
        replies = await ask(path, b"\n" + b"reboot\n" + b"\xff\xfe\n" + b"boom\n" + b"status\n", lines=5)
        assert [set(r) for r in replies[:4]] == [{"error"}] * 4
        assert str(replies[0]["error"]).startswith("empty request; known: boom, status")
        assert str(replies[1]["error"]).startswith("unknown request 'reboot'")
        assert replies[2] == {"error": "request is not UTF-8 text"}
        assert replies[3] == {"error": "internal error: RuntimeError"}
        assert replies[4] == {"hello": "world", "n": 1}

        (too_long,) = await ask(path, b"s" * (MAX_REQUEST_BYTES * 10) + b"\n")
        assert too_long == {"error": f"request too long (at most {MAX_REQUEST_BYTES} bytes)"}
        no_newline = b"s" * (MAX_REQUEST_BYTES * 10)  # never a newline: the same, not a hang
        assert await ask(path, no_newline) == [too_long]

        for data in (b"", b"stat", b"\x00" * 100):  # said something or nothing, then went away
            _reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(data)
            writer.close()
            await writer.wait_closed()
        assert await ask(path, b"status\n") == [{"hello": "world", "n": 1}]
        assert server.served >= 8


async def test_an_idle_client_is_dropped_and_a_full_server_says_busy(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    async with serving(_server(path, idle_timeout_s=0.05, max_clients=1)):
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await reader.read() == b""  # the idle connection is closed by the server
        writer.close()
        await writer.wait_closed()
    async with serving(_server(path, max_clients=1)):
        reader, writer = await asyncio.open_unix_connection(str(path))  # holds the one slot
        try:
            writer.write(b"status\n")
            assert msgspec.json.decode(await reader.readline()) == {"hello": "world", "n": 1}
            (busy,) = await ask(path, b"status\n")
            assert busy == {"error": "busy: too many control connections"}
        finally:
            writer.close()
            await writer.wait_closed()


async def test_a_path_too_long_for_a_unix_socket_disables_the_control_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (MAX_PATH_BYTES - len(os.fsencode(tmp_path))))
    deep.mkdir()
    path = socket_path(deep)
    server = _server(path)
    server.open()  # logged, not raised: the daemon charges without a control socket
    assert not server.is_open
    assert not path.exists()
    with pytest.raises(ControlError, match="too long"):
        request(path, "status")
    task = asyncio.create_task(server.serve(), name="control")
    await asyncio.sleep(0)
    assert not task.done()  # nothing to serve, but the supervised task does not end
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_request_without_a_daemon(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    with pytest.raises(DaemonNotRunning, match=f"no control socket at {path}"):
        request(path, "status")
