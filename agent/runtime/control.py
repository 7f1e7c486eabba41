"""The local control socket (DESIGN.md §5.7, OPS-3): ``{state_dir}/control.sock``.

A Unix stream socket through which ``evpay-agent status`` reads the running daemon's live state.
Protocol: one request per line (ASCII, ``\\n``-terminated, at most ``MAX_REQUEST_BYTES``), one
JSON object per line in reply, in order; a client may send several requests on one connection.
``status`` → the status document (:mod:`agent.runtime.status`); anything else →
``{"error": "..."}``. A request line too long, not UTF-8 or empty gets an error line (a too-long
one also closes the connection: the rest of it is not read). A connection idle for
``IDLE_TIMEOUT_S``, or whose reply is not read within ``WRITE_TIMEOUT_S``, is closed; at most
``MAX_CLIENTS`` connections are served at once (one more gets ``{"error": "busy"}``). Whatever a
client sends, or however it goes away, the daemon is not disturbed: the handlers are synchronous
(one consistent snapshot, built on the event loop between two engine steps) and every client
error ends only that connection.

Creation (:meth:`ControlSocket.open`, before the event loop starts: a second daemon must fail
before it touches anything): an existing ``control.sock`` is probed with a connect — accepted
(another daemon listens there) → :class:`ControlSocketInUse`; refused or not a socket (stale,
left by a killed daemon) → replaced. The new socket is bound under a temporary name in the same
directory, ``chmod 0600`` **before** ``listen()`` (until then every connect is refused, so there
is no moment at which another user could connect), then renamed over ``control.sock`` (atomic:
a stale file is replaced without a gap). :meth:`ControlSocket.close` removes it on a clean exit,
unless it is no longer ours (another daemon replaced it). A state directory whose socket path
does not fit ``sockaddr_un`` (``MAX_PATH_BYTES``) runs without a control socket (one ERROR line):
charging does not depend on it.

:func:`request` is the client (synchronous; the CLI's).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import msgspec

from agent.errors import AgentError
from agent.logs import kv

_LOGGER = logging.getLogger(__name__)

CONTROL_SOCKET: Final = "control.sock"  # in the state directory
SOCKET_MODE: Final = 0o600  # owner only: the daemon's user (and root)
MAX_PATH_BYTES: Final = 107  # sockaddr_un.sun_path is 108 bytes on Linux, NUL included
MAX_REQUEST_BYTES: Final = 256  # a request line, newline included
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024  # the client's bound on one reply line
MAX_CLIENTS: Final = 8
IDLE_TIMEOUT_S: Final = 10.0  # a connection without a request for this long is closed
WRITE_TIMEOUT_S: Final = 5.0  # a client that does not read its reply is dropped after this
ACCEPT_RETRY_S: Final = 0.5  # accept() failed (e.g. out of file descriptors): pause, then again
BACKLOG: Final = 8
CLIENT_TIMEOUT_S: Final = 5.0  # request(): connect + reply

Handler = Callable[[], Mapping[str, object]]  # a JSON-encodable object (msgspec Structs allowed)

_ENCODER: Final = msgspec.json.Encoder()


class ControlError(AgentError):
    """The control socket cannot be created, or a request failed."""


class ControlSocketInUse(ControlError):
    """Another daemon listens on the control socket (the same state directory)."""


class DaemonNotRunning(ControlError):
    """No daemon listens: no control socket, or a stale one (connection refused)."""


class ControlPermissionDenied(ControlError):
    """The control socket is there but this user may not connect (it is 0600, the daemon's user)."""


def socket_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / CONTROL_SOCKET


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= MAX_PATH_BYTES


def _error_line(message: str) -> bytes:
    return _ENCODER.encode({"error": message}) + b"\n"


class ControlSocket:
    """The control socket at ``path`` answering the requests of ``handlers`` (name → handler).

    Built by :func:`agent.app.build_app`; :meth:`open` before the event loop (or at the start of
    :meth:`agent.app.App.run`), :meth:`serve` is the ``control`` task, :meth:`close` after it.
    """

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.idle_timeout_s = idle_timeout_s
        self.max_clients = max_clients
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._connections = 0
        self._numbers = itertools.count(1)
        self.served = 0  # requests answered (errors included)

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    # -- creation ----------------------------------------------------------------------------------

    def open(self) -> None:
        """Create and listen (see the module docstring); a no-op when already open. Raises
        :class:`ControlSocketInUse` (another daemon listens) or :class:`ControlError`."""
        if self._sock is not None:
            return
        path = self.path
        if not _fits(path):
            _LOGGER.error(
                "control socket disabled: path too long for a Unix socket %s",
                kv(path=str(path), max_bytes=MAX_PATH_BYTES),
            )
            return
        self._probe(path)
        tmp = path.with_name(f".{CONTROL_SOCKET}.{os.getpid()}")
        if not _fits(tmp):
            tmp = path.with_name(f".c{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, SOCKET_MODE)  # before listen(): until then every connect is refused
            sock.listen(BACKLOG)
            os.replace(tmp, path)
            info = os.lstat(path)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ControlError(f"cannot create the control socket {path}: {exc}") from exc
        self._sock = sock
        self._identity = (info.st_dev, info.st_ino)
        _LOGGER.info("control socket listening %s", kv(path=str(path)))

    @staticmethod
    def _probe(path: Path) -> None:
        """Raise :class:`ControlSocketInUse` when a daemon accepts on ``path``; a stale socket or
        any other file there is left for the rename to replace."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ControlError(f"cannot check the control socket {path}: {exc}") from exc
        if not stat.S_ISSOCK(info.st_mode):
            _LOGGER.warning("replacing a file that is not a socket %s", kv(path=str(path)))
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            code = probe.connect_ex(str(path))
        finally:
            probe.close()
        if code in (0, errno.EAGAIN, errno.EINPROGRESS):  # accepted, or a listener with a full backlog
            raise ControlSocketInUse(
                f"another evpay-agent is running with this state directory: {path} accepts connections"
            )
        if code in (errno.ECONNREFUSED, errno.ENOENT):
            _LOGGER.warning("replacing a stale control socket %s", kv(path=str(path)))
            return
        raise ControlError(f"cannot check the control socket {path}: {os.strerror(code)}")

    def close(self) -> None:
        """Stop listening and remove the socket file, unless another daemon replaced it meanwhile."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            _LOGGER.warning("control socket not removed %s", kv(path=str(self.path), error=str(exc)))

    # -- serving -----------------------------------------------------------------------------------

    async def serve(self) -> None:
        """The ``control`` task: accept until cancelled; each connection is a named child task."""
        sock = self._sock
        if sock is None:  # disabled (path too long) or never opened: nothing to serve
            await asyncio.Event().wait()
            return
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            while True:
                try:
                    conn, _ = await loop.sock_accept(sock)
                except OSError as exc:
                    _LOGGER.warning("control socket: accept failed %s", kv(error=str(exc)))
                    await asyncio.sleep(ACCEPT_RETRY_S)
                    continue
                tg.create_task(self._connection(conn), name=f"control-client-{next(self._numbers)}")

    async def _connection(self, conn: socket.socket) -> None:
        """One client; never raises (a client cannot end the ``control`` task)."""
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_REQUEST_BYTES)
        except OSError:
            conn.close()
            return
        self._connections += 1
        try:
            if self._connections > self.max_clients:
                await self._reply(writer, _error_line("busy: too many control connections"))
                return
            while await self._one(reader, writer):
                pass
        except (OSError, TimeoutError) as exc:  # the client went away or does not read
            _LOGGER.debug("control client dropped %s", kv(error=type(exc).__name__))
        except Exception:
            _LOGGER.exception("control client failed")
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; ``False`` when the connection is over."""
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return False  # EOF (a request without a newline is not answered)
        except asyncio.LimitOverrunError:
            await self._reply(writer, _error_line(f"request too long (at most {MAX_REQUEST_BYTES} bytes)"))
            return False
        except TimeoutError:
            return False
        await self._reply(writer, self.answer(line))
        return True

    async def _reply(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        self.served += 1
        writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()

    def answer(self, line: bytes) -> bytes:
        """The reply line (JSON object + ``\\n``) to one request line."""
        try:
            name = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            return _error_line("request is not UTF-8 text")
        if not name:
            return _error_line(f"empty request; known: {', '.join(sorted(self.handlers))}")
        handler = self.handlers.get(name)
        if handler is None:
            shown = name[:32] + ("…" if len(name) > 32 else "")
            return _error_line(f"unknown request {shown!r}; known: {', '.join(sorted(self.handlers))}")
        try:
            return _ENCODER.encode(handler()) + b"\n"
        except Exception as exc:
            _LOGGER.exception("control request failed %s", kv(request=name))
            return _error_line(f"internal error: {type(exc).__name__}")


# -- the client --------------------------------------------------------------------------------------


def request(path: Path, name: str, *, timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, object]:
    """Send request ``name`` to the daemon at ``path`` and return its reply object (an ``error``
    reply included). Raises :class:`DaemonNotRunning`, :class:`ControlPermissionDenied` or
    :class:`ControlError` (no answer in ``timeout_s``, a reply that is not a JSON object)."""
    if not _fits(path):
        raise ControlError(f"the control socket path is too long for a Unix socket: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise DaemonNotRunning(f"the daemon is not running (no control socket at {path})") from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(
                f"the daemon is not running (nothing listens on the control socket {path})"
            ) from None
        except PermissionError:
            raise ControlPermissionDenied(
                f"permission denied on the control socket {path} "
                "(it belongs to the agent's user: run as that user or root)"
            ) from None
        except TimeoutError:
            raise ControlError(f"no connection to the control socket {path} within {timeout_s:g} s") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to the control socket {path}: {exc}") from None
        try:
            sock.sendall(name.encode("utf-8") + b"\n")
            reply = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"the daemon did not answer within {timeout_s:g} s ({path})") from None
        except OSError as exc:
            raise ControlError(f"the control connection failed: {exc}") from None
    finally:
        sock.close()
    try:
        value = msgspec.json.decode(reply)
    except msgspec.DecodeError:
        raise ControlError("the daemon's reply is not JSON") from None
    if not isinstance(value, dict):
        raise ControlError("the daemon's reply is not a JSON object")
    return value


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ControlError("the daemon closed the connection without a reply")
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise ControlError(f"the daemon's reply exceeds {MAX_REPLY_BYTES} bytes")
