"""Byte transports by URL (DESIGN.md §3.1): the only module that knows about serial libraries.

``open_transport(url)`` understands:

- ``serial:///dev/ttyUSB0?baudrate=57600`` — 8N1, no flow control (psp-reference §1.2), through
  ``pyserial-asyncio-fast``; a pty slave path works the same way;
- ``tcp://host:3201`` — Apollo PSP over LAN (psp-reference §1.3); ``tls://host:port`` adds TLS
  (``?cafile=…&certfile=…&keyfile=…&verify=false``);
- ``memory://NAME`` — one end of a pair registered with :func:`memory_pair` (tests, simulator).

:func:`pty_pair` opens a pseudo-terminal for tests: the simulator serves the master side through
:class:`FdTransport`, the driver opens the slave as ``serial://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from drivers.errors import TransportError

_LOGGER = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 57600  # psp-reference §1.2: default for both families
SUPPORTED_BAUDRATES = (9600, 19200, 38400, 57600, 115200)  # psp-reference §1.2 / §11
DEFAULT_TCP_PORT = 3201  # psp-reference §1.3
READ_CHUNK = 4096
EIO_RETRY_S = 0.05  # pty master with no slave open: poll again after this long


class Transport(Protocol):
    """A connected byte link. ``read`` returns ``b""`` once the link is closed."""

    @property
    def description(self) -> str: ...

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class StreamTransport:
    """An asyncio stream pair (TCP, TLS, serial)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, description: str) -> None:
        self._reader = reader
        self._writer = writer
        self._description = description

    @property
    def description(self) -> str:
        return self._description

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_CHUNK)
        except (ConnectionError, OSError) as exc:
            _LOGGER.info("%s: read failed: %s", self._description, exc)
            return b""

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            raise TransportError(f"{self._description}: write failed: {exc}") from exc

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self._writer.wait_closed()


class FdTransport:
    """A non-blocking file descriptor (the master side of a pty), owned by this object."""

    def __init__(self, fd: int, description: str) -> None:
        self._fd = fd
        self._description = description
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)
        self._closed = False

    @property
    def description(self) -> str:
        return self._description

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            # EIO while no process holds the slave side open: not an end for a pty master. The fd
            # stays readable, so pause the reader briefly instead of spinning on it.
            self._loop.remove_reader(self._fd)
            self._loop.call_later(EIO_RETRY_S, self._resume_reader)
            return
        if data:
            self._queue.put_nowait(data)

    def _resume_reader(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._fd, self._on_readable)

    async def read(self) -> bytes:
        if self._closed:
            return b""
        return await self._queue.get()

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise TransportError(f"{self._description}: closed")
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            except OSError as exc:
                raise TransportError(f"{self._description}: write failed: {exc}") from exc
            view = view[written:]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._queue.put_nowait(b"")


@dataclass
class LinkFaults:
    """Fault injection for one direction of a :class:`MemoryTransport` pair (style.md: null modem).

    ``chunk``: deliver writes in pieces of at most this many bytes (1 = byte by byte);
    ``delay_s``: delay every delivery; ``mangle``: a function applied to each write (corrupt, drop).
    """

    chunk: int | None = None
    delay_s: float = 0.0
    mangle: Callable[[bytes], bytes] | None = None


class MemoryTransport:
    """One end of an in-memory byte pipe; see :func:`memory_pair`."""

    def __init__(self, description: str) -> None:
        self._description = description
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: MemoryTransport | None = None
        self.faults = LinkFaults()  # applied to what this end writes
        self._closed = False

    @property
    def description(self) -> str:
        return self._description

    async def read(self) -> bytes:
        if self._closed:
            return b""
        data = await self._inbox.get()
        if not data:
            self._closed = True
        return data

    async def write(self, data: bytes) -> None:
        peer = self.peer
        if self._closed or peer is None or peer._closed:
            raise TransportError(f"{self._description}: closed")
        faults = self.faults
        if faults.mangle is not None:
            data = faults.mangle(data)
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        step = faults.chunk or len(data) or 1
        for i in range(0, len(data), step):
            peer._inbox.put_nowait(data[i : i + step])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put_nowait(b"")
        if self.peer is not None and not self.peer._closed:
            self.peer._inbox.put_nowait(b"")


_MEMORY_ENDPOINTS: dict[str, MemoryTransport] = {}


def memory_pair(name: str = "pair") -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends. The second is also reachable once as ``memory://NAME``."""
    a, b = MemoryTransport(f"memory://{name}#a"), MemoryTransport(f"memory://{name}#b")
    a.peer, b.peer = b, a
    _MEMORY_ENDPOINTS[name] = b
    return a, b


def pty_pair() -> tuple[int, str]:
    """Open a pseudo-terminal in raw mode: returns (master fd, slave path).

    The slave stays openable by path (``serial:///dev/pts/N``); the caller owns the master fd.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    return master, path


async def open_transport(url: str, *, timeout_s: float = 10.0) -> Transport:
    """Open the link named by ``url``; raises :class:`TransportError` with the reason."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    scheme = parts.scheme.lower()
    try:
        async with asyncio.timeout(timeout_s):
            if scheme in ("tcp", "tls"):
                host = parts.hostname
                if not host:
                    raise TransportError(f"{url}: no host")
                port = parts.port or DEFAULT_TCP_PORT
                context = _tls_context(query) if scheme == "tls" else None
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
                return StreamTransport(reader, writer, f"{scheme}://{host}:{port}")
            if scheme == "serial":
                return await _open_serial(unquote(parts.path), query, url)
            if scheme == "memory":
                endpoint = _MEMORY_ENDPOINTS.pop(parts.netloc, None)
                if endpoint is None:
                    raise TransportError(f"{url}: no such memory pair")
                return endpoint
    except TimeoutError as exc:
        raise TransportError(f"{url}: connect timed out after {timeout_s} s") from exc
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise TransportError(f"{url}: {exc}") from exc
    raise TransportError(f"{url}: unsupported scheme {scheme!r} (serial, tcp, tls, memory)")


async def _open_serial(path: str, query: dict[str, str], url: str) -> Transport:
    import serial_asyncio_fast  # imported lazily: only serial deployments need it

    baudrate = int(query.get("baudrate", DEFAULT_BAUDRATE))
    if baudrate not in SUPPORTED_BAUDRATES:
        raise TransportError(f"{url}: baud rate {baudrate} not one of {SUPPORTED_BAUDRATES}")
    if not path:
        raise TransportError(f"{url}: no device path")
    reader, writer = await serial_asyncio_fast.open_serial_connection(
        url=path, baudrate=baudrate, bytesize=8, parity="N", stopbits=1, rtscts=False, xonxoff=False
    )
    return StreamTransport(reader, writer, f"serial://{path}?baudrate={baudrate}")


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.get("cafile"))
    if query.get("certfile"):
        context.load_cert_chain(query["certfile"], query.get("keyfile"))
    if query.get("verify", "true").lower() == "false":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
