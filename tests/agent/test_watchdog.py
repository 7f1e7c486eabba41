"""systemd watchdog (DESIGN.md §5.7, OPS-1): ``WATCHDOG=1`` only while the runtime is healthy.

A fake ``$NOTIFY_SOCKET`` (a datagram socket here) and a short ``WATCHDOG_USEC``-style interval;
the real agent process pings too (``test_run_command.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.cli.run import watchdog
from agent.runtime import sdnotify
from agent.runtime.shell import Runtime, _Internal
from tests.agent.rig import Rig, eventually, running_agent

INTERVAL_S = 0.2  # pings every 0.1 s; the dispatcher counts as stalled after 0.1 s


class _Noop(_Internal):
    def apply(self, runtime: Runtime) -> None:
        pass


class _Crash(_Internal):
    def apply(self, runtime: Runtime) -> None:
        raise RuntimeError("injected dispatcher crash")


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


async def _pings(sock: socket.socket, duration_s: float) -> int:
    """Drop what was sent so far, then count the WATCHDOG=1 datagrams for ``duration_s``."""
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(256)
    await asyncio.sleep(duration_s)
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            assert sock.recv(256) == b"WATCHDOG=1"
            count += 1
    return count


@contextlib.asynccontextmanager
async def _pinging(rig: Rig) -> AsyncIterator[Runtime]:
    journal = rig.open_journal()
    try:
        async with running_agent(rig.loaded) as agent:
            task = asyncio.create_task(watchdog(agent.runtime, INTERVAL_S), name="sd-watchdog-under-test")
            try:
                yield agent.runtime
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        journal.close()


@pytest.mark.req("OPS-1")
async def test_req_ops_1_watchdog_stops_while_the_dispatcher_is_stalled(
    apollo_rig: Rig, notify_socket: socket.socket
) -> None:
    async with _pinging(apollo_rig) as runtime:
        assert await _pings(notify_socket, 0.5) >= 3  # healthy: every 0.1 s
        # stall the dispatcher: it keeps waiting on the old inbox while events queue in a new one
        stalled, runtime.inbox = runtime.inbox, asyncio.Queue()
        runtime.post(_Noop())
        await eventually(lambda: runtime.health(stall_s=INTERVAL_S / 2) is not None, 2, "stall seen")
        assert "dispatcher stalled" in (runtime.health(stall_s=INTERVAL_S / 2) or "")
        assert await _pings(notify_socket, 0.5) == 0  # withheld: systemd would restart the agent
        # release it: the queued events are processed and the pings come back
        queued, runtime.inbox = runtime.inbox, stalled
        while not queued.empty():
            runtime.post(queued.get_nowait())
        await eventually(lambda: runtime.inbox.empty(), 2, "backlog processed")
        assert runtime.health() is None
        assert await _pings(notify_socket, 0.5) >= 3


@pytest.mark.req("OPS-1")
async def test_req_ops_1_watchdog_stops_on_a_crash_restart_loop(
    apollo_rig: Rig, notify_socket: socket.socket
) -> None:
    async with _pinging(apollo_rig) as runtime:
        assert await _pings(notify_socket, 0.3) >= 2
        for _ in range(3):  # the dispatcher crashes on each: restarted after 0.1, 0.2, 0.4 s
            runtime.post(_Crash())
        await eventually(lambda: runtime.restarts.get("dispatcher", 0) >= 3, 5, "three restarts")
        assert "crash-restart loop" in (runtime.health() or "")
        assert await _pings(notify_socket, 0.4) == 0


def test_watchdog_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert sdnotify.watchdog_interval() == 20.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 20.0
    for bad in ("0", "-5", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None
