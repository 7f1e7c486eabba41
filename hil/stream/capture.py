"""Record everything a station publishes upstream into a capture file (:mod:`hil.stream.lines`).

``python -m hil.capture --broker mqtt://HOST:PORT --prefix PREFIX --out FILE [--duration S]`` or::

    async with StreamCapture("127.0.0.1", 1883, "evpay/v1/ST-1", path) as cap:
        cap.mark("broker_down")                      # a harness notes an outage it causes
        line = await cap.wait_for(lambda m: m.topic.endswith("/receipts"), timeout=5)
    cap.messages                                     # every message received, in arrival order

The capture subscribes ``{prefix}/#`` with QoS 1 over MQTT 5 under a fresh client id (one per
:class:`StreamCapture`) and appends each message as one JSON line, timestamped on arrival.
It is a back office, not the agent: it imports nothing of ``agent``.

* **Reconnection**: after a lost connection (a broker restart) it reconnects with a short capped
  backoff (:data:`BACKOFF_MIN_S` doubling to :data:`BACKOFF_MAX_S`; shorter than the agent's 0.5 s
  doubling to 30 s, so the capture is usually back before the agent drains its outbox) and
  subscribes again. Its own connection is in the file as markers: ``capture_up`` after every
  accepted subscription (the first included: where coverage begins) and ``capture_down`` when a
  connection is lost. The first connection starts clean; later ones resume the session (session
  expiry :data:`SESSION_EXPIRY_S`), so a broker that stayed up queues what arrived meanwhile (a
  restarted Mosquitto without persistence has forgotten it: what the agent published before the
  capture was back is not in the file — the markers say when that could have happened).
* **Markers**: :meth:`StreamCapture.mark` writes ``{"t": …, "marker": name}``; names the checker
  understands are ``broker_down``, ``broker_up``, ``agent_killed``, ``agent_started``.
* **Durability**: each line is one ``write(2)`` on an ``O_APPEND`` file (no partial interleaving
  with :func:`hil.stream.lines.append_marker` from another process); fsync'd on close.

Python 3.11 note (as in the agent): aiomqtt wraps its waits in ``asyncio.wait_for``, which can
swallow a cancellation (cpython gh-86296); every aiomqtt call is made with ``timeout=math.inf``
inside our own ``asyncio.timeout()``, and :meth:`StreamCapture.close` repeats a lost cancellation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.mqtt_internals import close_socket, retrieve_disconnect_error
from hil.stream.lines import (
    CAPTURE_DOWN,
    CAPTURE_UP,
    Line,
    MarkerLine,
    MessageLine,
    append_line,
    decode_payload,
)

__all__ = ["CaptureError", "StreamCapture", "main", "parse_broker_url"]

_LOGGER = logging.getLogger(__name__)

BACKOFF_MIN_S: Final = 0.05
BACKOFF_MAX_S: Final = 1.0
CONNECT_TIMEOUT_S: Final = 5.0
CLOSE_TIMEOUT_S: Final = 1.0
KEEPALIVE_S: Final = 10
SESSION_EXPIRY_S: Final = 60  # MQTT 5 session expiry interval: messages queued while we reconnect
START_TIMEOUT_S: Final = 10.0
CANCEL_RETRY_S: Final = 0.1


class CaptureError(RuntimeError):
    """The capture could not subscribe in time (``last_error`` says why)."""


class _SubscribeRefused(Exception):
    pass


class StreamCapture:
    """An async context manager recording ``{prefix}/#`` into ``path`` (appended to)."""

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        path: Path | str,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        keepalive_s: int = KEEPALIVE_S,
        session_expiry_s: int = SESSION_EXPIRY_S,
        start_timeout_s: float | None = START_TIMEOUT_S,
    ) -> None:
        """``start_timeout_s``: entering waits until the first subscription is accepted (raises
        :class:`CaptureError` after that long); ``None``: do not wait (keep retrying)."""
        self.host = host
        self.port = port
        self.prefix = prefix.replace("{station_id}", "+").rstrip("/")
        self.topic_filter = f"{self.prefix}/#"
        self.path = Path(path)
        self.client_id = client_id or f"evpay-capture-{uuid.uuid4().hex[:12]}"
        self._username = username
        self._password = password
        self._tls_context = tls_context
        self._clock = clock
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._start_timeout_s = start_timeout_s
        self.lines: list[Line] = []
        self.messages: list[MessageLine] = []
        self.connected = False
        self.connects = 0
        self.losses = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._resume = False  # clean start on the first successful connection only
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._task = asyncio.create_task(self._run(), name=f"stream-capture[{self.client_id}]")
        if self._start_timeout_s is not None:
            try:
                await self.wait_marker(CAPTURE_UP, timeout=self._start_timeout_s)
            except TimeoutError:
                await self.close()
                raise CaptureError(
                    f"no subscription to {self.topic_filter} on {self.host}:{self.port} within "
                    f"{self._start_timeout_s} s: {self.last_error or 'no answer'}"
                ) from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop capturing (disconnects cleanly) and close the file; idempotent."""
        task, self._task = self._task, None
        self.connected = False
        if task is not None:
            while not task.done():  # repeat a cancellation that aiomqtt's wait_for swallowed
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_RETRY_S)
            if not task.cancelled() and task.exception() is not None:
                _LOGGER.error("capture task failed", exc_info=task.exception())
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)

    # -- the file ------------------------------------------------------------------------------------

    def _write(self, line: Line) -> None:
        self.lines.append(line)
        if isinstance(line, MessageLine):
            self.messages.append(line)
        if self._fd is not None:
            try:
                append_line(self._fd, line)
            except OSError as exc:
                self.write_errors += 1
                _LOGGER.error("capture: %s not written: %s", self.path, exc)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def mark(self, name: str) -> MarkerLine:
        """Write a marker line (``broker_down``, ``broker_up``, ``agent_killed``, ``agent_started``
        or free text) stamped now; the checker reads the first four as outage evidence."""
        if not isinstance(name, str) or not name:
            raise ValueError("a marker is a non-empty string")
        line = MarkerLine(self._clock(), name)
        self._write(line)
        return line

    async def wait_for(
        self,
        predicate: Callable[[MessageLine], bool],
        timeout: float,  # noqa: ASYNC109 - the harness API: a deadline per wait
    ) -> MessageLine:
        """The first captured message (already received or to come) for which ``predicate`` is
        true; raises ``TimeoutError`` after ``timeout`` seconds."""
        index = 0
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                while index < len(self.messages):
                    message = self.messages[index]
                    index += 1
                    if predicate(message):
                        return message
                await changed.wait()

    async def wait_marker(
        self,
        name: str,
        *,
        count: int = 1,
        timeout: float,  # noqa: ASYNC109 - as wait_for
    ) -> MarkerLine:
        """The ``count``-th marker ``name`` in the capture (e.g. the second ``capture_up``: back
        after the first loss); raises ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                found = [line for line in self.lines if isinstance(line, MarkerLine) and line.marker == name]
                if len(found) >= count:
                    return found[count - 1]
                await changed.wait()

    # -- the connection ------------------------------------------------------------------------------

    def backoff_s(self, attempt: int) -> float:
        return float(min(self._backoff_max_s, self._backoff_min_s * 2 ** min(attempt, 30)))

    def _new_client(self) -> aiomqtt.Client:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self._username,
            password=self._password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not self._resume,
            properties=properties,
            keepalive=self._keepalive_s,
            tls_context=self._tls_context,
            timeout=math.inf,  # our own asyncio.timeout() everywhere (see the module docstring)
        )

    async def _run(self) -> None:
        attempt = 0
        while True:
            client = self._new_client()
            try:
                await self._session(client)
            except (aiomqtt.MqttError, OSError, TimeoutError, _SubscribeRefused) as exc:
                self.last_error = str(exc) or type(exc).__name__
            finally:
                close_socket(client)  # then retrieve what the close may report
                retrieve_disconnect_error(client)
            if self.connected:
                self.connected = False
                self.losses += 1
                attempt = 0
                self._write(MarkerLine(self._clock(), CAPTURE_DOWN))
                _LOGGER.info("capture: lost %s:%s: %s", self.host, self.port, self.last_error)
            delay = self.backoff_s(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        async with asyncio.timeout(self._connect_timeout_s):
            await client.__aenter__()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                granted = await client.subscribe(self.topic_filter, qos=1, timeout=math.inf)
            codes = [getattr(code, "value", code) for code in granted]
            if any(not isinstance(code, int) or code >= 0x80 for code in codes):
                raise _SubscribeRefused(f"subscription to {self.topic_filter} refused: {granted}")
            self._resume = True
            self.connected = True
            self.connects += 1
            self._write(MarkerLine(self._clock(), CAPTURE_UP))
            _LOGGER.info("capture: subscribed %s on %s:%s", self.topic_filter, self.host, self.port)
            async for message in client.messages:
                self._on_message(message)
        finally:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await client.__aexit__(None, None, None)

    def _on_message(self, message: aiomqtt.Message) -> None:
        raw = message.payload
        data = bytes(raw) if isinstance(raw, bytes | bytearray) else str("" if raw is None else raw).encode()
        at = self._clock()
        self._write(
            MessageLine(at, message.topic.value, bool(message.retain), int(message.qos), decode_payload(data))
        )


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def parse_broker_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """``mqtt://[user[:password]@]host[:port]`` (or ``mqtts://``) → host, port, TLS, user, password."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}")
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, user, password


async def _capture(args: argparse.Namespace, host: str, port: int, tls: ssl.SSLContext | None,
                   user: str | None, password: str | None) -> StreamCapture:  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    capture = StreamCapture(
        host, port, args.prefix, args.out, client_id=args.client_id, username=user, password=password,
        tls_context=tls, start_timeout_s=None,
    )  # fmt: skip
    async with capture:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration):
                await stop.wait()
    return capture


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hil.capture``: record until ``--duration`` elapses or SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m hil.capture", description="Record a station's upstream MQTT stream as JSON lines."
    )
    parser.add_argument("--broker", required=True, help="mqtt://HOST:PORT (or mqtts://; user:password@ too)")
    parser.add_argument(
        "--prefix", default="evpay/v1/+", help="topic prefix; {station_id} = + (default: evpay/v1/+)"
    )
    parser.add_argument("--out", required=True, type=Path, help="capture file (appended to)")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--client-id", default=None, help="MQTT client id (default: a fresh one)")
    parser.add_argument("--ca-file", default=None, help="CA file for mqtts:// (default: system CAs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connection changes")
    args = parser.parse_args(argv)
    try:
        host, port, use_tls, user, password = parse_broker_url(args.broker)
    except ValueError as exc:
        parser.error(str(exc))
    if args.duration is not None and not args.duration > 0:
        parser.error("--duration must be > 0")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    tls = ssl.create_default_context(cafile=args.ca_file) if use_tls else None
    try:
        capture = asyncio.run(_capture(args, host, port, tls, user, password))
    except OSError as exc:
        print(f"capture: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    markers = len(capture.lines) - len(capture.messages)
    print(
        f"capture: {len(capture.messages)} message(s), {markers} marker(s), "
        f"{capture.losses} connection loss(es) -> {args.out}",
        file=sys.stderr,
    )
    return 0
