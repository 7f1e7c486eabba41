"""A Mosquitto that can go down and come back on the same port, and a TCP gate in front of it.

:class:`Mosquitto` is the rig's broker (asyncio: start/stop/kill never block the loop): its own
config, 127.0.0.1 only, anonymous, no persistence (a restart forgets retained messages and
sessions, like a broker that lost power), log in the rig's directory. The richer test fixture (TLS,
passwords) is ``tests/mosquitto.py``; this one is for rigs that outlive a pytest run (the fuzzer,
the HIL runner).

:class:`TcpGate` relays one client population (e.g. the agent's upstream connection) to the broker
and can be shut: :meth:`TcpGate.shut` drops every relayed connection and refuses new ones (accepted
and closed at once) until :meth:`TcpGate.open`. A harness that takes the broker down and brings it
back uses it to let its own observers (the upstream capture) reconnect *before* the agent does, so
that nothing the agent publishes after the outage escapes the observers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final

from hil.broker import find_mosquitto, free_port
from hil.rig.procs import HarnessError

__all__ = ["Mosquitto", "TcpGate"]

START_TIMEOUT_S: Final = 5.0
STOP_TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.02
UPSTREAM_CONNECT_TIMEOUT_S: Final = 2.0
CHUNK: Final = 65536


class Mosquitto:
    """One mosquitto process on ``127.0.0.1:port``; the port survives :meth:`stop` / :meth:`start`."""

    def __init__(self, workdir: Path, *, name: str = "mosquitto", port: int | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise HarnessError("mosquitto is not installed (/usr/sbin/mosquitto or PATH)")
        self.binary = binary
        self.name = name
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.config_path = workdir / f"{name}.conf"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            encoding="utf-8",
        )
        self._proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Start and wait until the port accepts connections (raises :class:`HarnessError`)."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            log.write(f"=== rig: start #{self.starts + 1}\n".encode())
            log.flush()
            self._proc = proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.returncode is not None:
                raise HarnessError(f"{self.name} exited with {proc.returncode}: {self.log_tail()}")
            try:
                async with asyncio.timeout(0.2):
                    _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    await self.kill()
                    raise HarnessError(
                        f"{self.name} did not listen on {self.port}: {self.log_tail()}"
                    ) from None
                await asyncio.sleep(POLL_S)

    async def stop(self) -> None:
        """SIGTERM and wait for the exit (SIGKILL after :data:`STOP_TIMEOUT_S`)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def kill(self) -> None:
        """SIGKILL: no clean shutdown of the client connections."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


class TcpGate:
    """``127.0.0.1:port`` relayed to ``target``; :meth:`shut` / :meth:`open` (open at start),
    :meth:`hold` / :meth:`release` (flowing at start)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.is_open = True
        self.accepted = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()  # cleared by hold(): connections stay open, no byte moves
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def shut(self) -> None:
        """Drop every relayed connection (both sides aborted, no FIN) and refuse new ones."""
        self.is_open = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def open(self) -> None:
        self.is_open = True

    def hold(self) -> None:
        """A hung broker: every relayed connection stays open and new ones are accepted, but no
        byte moves in either direction until :meth:`release` (what was held is delivered then)."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.shut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_open:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
                up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        if not self.is_open:  # shut while connecting
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))
        self._spawn(f"tcp-gate-{self.port}-up", self._pump(reader, up_writer, writer))
        self._spawn(f"tcp-gate-{self.port}-down", self._pump(up_reader, writer, up_writer))

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await src.read(CHUNK):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            for w in (dst, other):  # one side gone: the relayed connection is over
                self._writers.discard(w)
                w.transport.abort()
