"""The upstream MQTT client (DESIGN.md §5.3; requirements UP-1, UP-2, UP-4, ERR-6).

:class:`UpstreamClient` keeps one connection to the operator's broker:

- **Connection**: a fresh :class:`aiomqtt.Client` per attempt, capped exponential backoff with jitter
  (uniform in ``[0.5, 1] x min(max, min x 2**attempt)``; asyncio's monotonic clock), MQTT 5 by default
  or 3.1.1, TLS with server verification (CA file) and a client certificate, username/password (the
  caller reads the password from its file; it is never logged). A failed attempt is logged and kept
  in :attr:`UpstreamClient.last_error` — a TLS verification failure names the broker and says so.
- **Birth and will**: ``{prefix}/status`` retained ``{"state":"online","version":…,"started_at":…}``
  after every connect; the will (and a clean :meth:`close`) leave ``{"state":"offline"}`` retained.
- **Retained state**: :meth:`set_retained` keeps the latest payload per topic and publishes it
  (QoS 1, retained) at once when connected — every changed topic in flight together, at most one
  publish per topic in flight, the newest payload sent when its predecessor is acknowledged — and
  again after every reconnection.
- **Outbox drainer**: publishes the :class:`~agent.store.outbox.Outbox` rows QoS 1 strictly in insertion
  order, up to ``drain_batch`` in flight on one connection, and deletes a row only once its PUBACK
  has arrived (acknowledged rows are deleted in batches, ``synchronous=NORMAL``: a power cut may
  send a few again, a process crash loses no delete). A committed append is published in the same
  turn as its commit (the outbox listener), not when a drainer task next runs (issue 12). The
  publishes go through :class:`drivers.mqtt_internals.DirectPublisher` (paho directly: no task, no
  ``asyncio.Event`` per message). On a disconnection it stops; after the reconnection it starts
  again from the oldest unacknowledged row, so a message may arrive twice, always as the same bytes
  (same ``msg_id``). Order per connector follows from the single drainer and the single connection.
  A connection whose PUBACKs stop for ``publish_timeout_s`` is dropped and reconnected.
- **Inbound**: :meth:`subscribe` registers a topic filter and a *synchronous* handler (put the
  message on your own queue; a handler never blocks the receive loop); subscriptions are renewed
  after every reconnection.
- **Direct publishing**: :meth:`publish_now` for messages that do not go through the outbox
  (command results, auth requests); it fails fast with :class:`UpstreamNotConnected` when offline.

Python 3.11 note (see ``drivers/charger/mqtt_bridge.py``): ``asyncio.wait_for`` — used by aiomqtt
for its own timeouts — can swallow a cancellation (cpython gh-86296). Every aiomqtt call here is made
with ``timeout=math.inf`` (no ``wait_for`` timeout) inside our own ``asyncio.timeout()``, and
:meth:`close` cancels with :func:`cancel_and_wait`, which repeats a lost cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import AgentError
from agent.store.outbox import Outbox
from agent.timefmt import utc_timestamp
from drivers.charger.mqtt_bridge import cancel_and_wait
from drivers.mqtt_internals import DirectPublisher, close_socket, retrieve_disconnect_error
from drivers.psp.session import Watch

__all__ = [
    "InboundMessage",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamNotConnected",
    "UpstreamStats",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_MQTT_PORT: Final = 1883
DEFAULT_MQTTS_PORT: Final = 8883
DEFAULT_KEEPALIVE_S: Final = 30  # a dead link is noticed within 1.5 x keepalive
DEFAULT_BACKOFF_MIN_S: Final = 0.5
DEFAULT_BACKOFF_MAX_S: Final = 30.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_PUBLISH_TIMEOUT_S: Final = 10.0  # PUBACK(s) of one publish call or one drained batch
DEFAULT_DRAIN_BATCH: Final = 64  # outbox publishes in flight (sliding window); rows per delete
MAX_INFLIGHT: Final = 256  # paho's QoS>0 window (the broker's Receive Maximum still applies)
CLOSE_PUBLISH_TIMEOUT_S: Final = 1.0
WATCHDOG_FRACTION: Final = 4  # the PUBACK watchdog looks every publish_timeout_s / 4
STATUS_QOS: Final = 1
SUBSCRIBE_QOS: Final = 1

Handler = Callable[["InboundMessage"], None]


class UpstreamError(AgentError):
    """A configuration error or a failed upstream publish."""


class UpstreamNotConnected(UpstreamError):
    """:meth:`UpstreamClient.publish_now` while there is no broker connection."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message received on a subscribed topic (commands, auth responses)."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None  # MQTT 5 request/response
    correlation_data: bytes | None = None  # MQTT 5 request/response


@dataclass(slots=True)
class UpstreamStats:
    """Counters since construction."""

    connect_attempts: int = 0
    connects: int = 0
    connection_losses: int = 0
    drained: int = 0  # outbox rows acknowledged and deleted
    retained_published: int = 0
    received: int = 0
    handler_errors: int = 0
    refused: int = 0  # PUBACKs with an MQTT 5 failure reason code (logged; the row is not resent)


@dataclass(slots=True)
class _Drain:
    """One connection's outbox drain: what is in flight, what is acknowledged and not deleted."""

    publisher: DirectPublisher
    outbox: Outbox
    window: int
    last_id: int = 0  # the newest row handed to paho on this connection
    in_flight: int = 0
    acked: list[int] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def sent(self, row_id: int) -> None:
        self.in_flight += 1
        self.last_id = row_id

    def acknowledged(self, row_id: int) -> None:
        self.in_flight -= 1
        self.acked.append(row_id)
        self.wake.set()

    def take_acked(self) -> list[int]:
        acked, self.acked = self.acked, []
        return acked


class _SubscribeRefused(Exception):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    """The most useful text of a connection error (aiomqtt hides the OSError as ``__context__``)."""
    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, ssl.SSLCertVerificationError):
        return inner.verify_message or str(inner)
    text = str(exc)
    return text or type(exc).__name__


def _is_tls_verification_failure(exc: BaseException) -> bool:
    inner = exc.__cause__ or exc.__context__
    return isinstance(inner, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc)


class UpstreamClient:
    """The station's connection to the operator broker (see the module docstring).

    ``broker_url``: ``mqtt://host[:1883]`` or ``mqtts://host[:8883]``; ``prefix`` may contain
    ``{station_id}``. ``password`` is the content of the password file (the caller reads it). TLS
    files apply to ``mqtts://`` only; without ``ca_file`` the system CAs verify the broker.
    """

    def __init__(
        self,
        *,
        broker_url: str,
        station_id: str,
        prefix: str = "evpay/v1/{station_id}",
        outbox: Outbox | None = None,
        protocol: Literal["5", "3.1.1", 5] = "5",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        version: str = "0.1.0",
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        backoff_min_s: float = DEFAULT_BACKOFF_MIN_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        publish_timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        drain_batch: int = DEFAULT_DRAIN_BATCH,
        wall_clock: Callable[[], datetime] = _utcnow,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        try:
            parts = urlsplit(broker_url)
            port = parts.port
        except ValueError as exc:
            raise UpstreamError(f"broker_url {broker_url!r}: {exc}") from None
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise UpstreamError(f"broker_url {broker_url!r}: use mqtt://host[:1883] or mqtts://host[:8883]")
        if parts.username or parts.password:
            raise UpstreamError("broker_url: no credentials in the URL; use username and password_file")
        use_tls = parts.scheme == "mqtts"
        if not use_tls and (ca_file or cert_file or key_file):
            raise UpstreamError(f"broker_url {broker_url!r}: TLS files need an mqtts:// URL")
        if (cert_file is None) != (key_file is None):
            raise UpstreamError("cert_file and key_file go together")
        for name, value in (
            ("keepalive_s", keepalive_s),
            ("backoff_min_s", backoff_min_s),
            ("backoff_max_s", backoff_max_s),
            ("connect_timeout_s", connect_timeout_s),
            ("publish_timeout_s", publish_timeout_s),
            ("drain_batch", drain_batch),
        ):
            if not value > 0 or not math.isfinite(value):
                raise UpstreamError(f"{name}: {value!r} must be > 0")
        if backoff_max_s < backoff_min_s:
            raise UpstreamError("backoff_max_s < backoff_min_s")
        self.broker_url = broker_url
        self._host = parts.hostname
        self._port = port or (DEFAULT_MQTTS_PORT if use_tls else DEFAULT_MQTT_PORT)
        self._tls_context = self._make_tls_context(ca_file, cert_file, key_file) if use_tls else None
        self._ca_file = ca_file
        self.station_id = station_id
        self.prefix = prefix.format(station_id=station_id)
        self.status_topic = f"{self.prefix}/status"
        self._protocol = aiomqtt.ProtocolVersion.V311 if protocol == "3.1.1" else aiomqtt.ProtocolVersion.V5
        self.client_id = client_id or f"evpay-agent-{station_id}"
        self._username = username
        self._password = password
        self._outbox = outbox
        self._keepalive_s = int(keepalive_s)
        self._backoff_min_s = float(backoff_min_s)
        self._backoff_max_s = float(backoff_max_s)
        self._connect_timeout_s = float(connect_timeout_s)
        self._publish_timeout_s = float(publish_timeout_s)
        self._drain_batch = int(drain_batch)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.version = version
        self.started_at = utc_timestamp(wall_clock())
        self._birth = json.dumps(
            {"state": "online", "version": version, "started_at": self.started_at}, separators=(",", ":")
        ).encode()
        self._will_payload = b'{"state":"offline"}'
        self._mqtt: aiomqtt.Client | None = None
        self._publisher: DirectPublisher | None = None  # while connected
        self._retained: dict[str, bytes] = {}
        self._retained_dirty: dict[str, None] = {}  # ordered set of topics to (re)publish
        self._retained_in_flight: dict[str, bytes] = {}  # topic -> the payload awaiting its PUBACK
        self._drain: _Drain | None = None  # while connected (with an outbox)
        self._subscriptions: dict[str, tuple[Handler, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected: Watch[bool] = Watch(False)
        self.last_error: str | None = None  # the latest failure (kept after a reconnection)
        self.stats = UpstreamStats()
        self._connected_once_in_attempt = False
        if outbox is not None:
            outbox.add_listener(self.notify_outbox)

    # -- configuration helpers -------------------------------------------------------------------

    @staticmethod
    def _make_tls_context(
        ca_file: str | Path | None, cert_file: str | Path | None, key_file: str | Path | None
    ) -> ssl.SSLContext:
        """Server verification always on (host name included); client certificate when given."""
        try:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if cert_file:
                context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"TLS files: {exc}") from None
        return context

    def topic(self, *levels: object) -> str:
        """``{prefix}/level/…``, e.g. ``topic("connectors", 1, "meter")``."""
        return "/".join([self.prefix, *(str(level) for level in levels)])

    @property
    def is_connected(self) -> bool:
        return self.connected.value

    @property
    def in_flight(self) -> int:
        """Outbox and retained-state publishes handed to the broker connection and not acknowledged."""
        return 0 if self._publisher is None else self._publisher.in_flight

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until connected (birth published, subscriptions renewed); ``TimeoutError``."""
        await self.connected.wait_for(bool, timeout_s)

    # -- public API ------------------------------------------------------------------------------

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Keep ``payload`` as the retained state of ``topic``; published now (when connected) and
        after every reconnection. An unchanged payload is not published again."""
        if self._retained.get(topic) == payload and topic not in self._retained_dirty:
            return
        self._retained[topic] = bytes(payload)
        self._retained_dirty[topic] = None
        self._pump_retained()

    def retained(self) -> dict[str, bytes]:
        return dict(self._retained)

    def notify_outbox(self) -> None:
        """Publish what was committed to the outbox (the outbox listener calls this after every
        committed append, so a message leaves in the turn that stored it)."""
        if self._drain is not None:
            try:
                self._pump_outbox(self._drain)
            except aiomqtt.MqttError as exc:  # the connection is going down: resent after it
                _LOGGER.debug("upstream publish from the outbox deferred: %s", exc)
                self._drain.wake.set()
            except Exception:  # never into the commit that called us; the drain task retries
                _LOGGER.exception("upstream publish from the outbox failed; the drainer retries")
                self._drain.wake.set()

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = SUBSCRIBE_QOS) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler`` (called synchronously on the
        receive loop; exceptions are logged). Renewed after every reconnection."""
        self._subscriptions[topic_filter] = (handler, qos)
        client = self._mqtt
        if client is not None:
            try:
                async with asyncio.timeout(self._publish_timeout_s):
                    await client.subscribe(topic_filter, qos=qos, timeout=math.inf)
            except (aiomqtt.MqttError, TimeoutError) as exc:  # renewed after the reconnection
                _LOGGER.info("upstream subscribe %s deferred: %s", topic_filter, exc or "timeout")

    async def publish_now(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Publish outside the outbox; returns after the PUBACK (QoS 1). Raises
        :class:`UpstreamNotConnected` when offline, :class:`UpstreamError` when it fails."""
        client = self._mqtt
        if client is None:
            raise UpstreamNotConnected(f"not connected to {self.broker_url}; {topic} not published")
        properties = None
        if self._protocol is aiomqtt.ProtocolVersion.V5 and (response_topic or correlation_data):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                properties.ResponseTopic = response_topic
            if correlation_data:
                properties.CorrelationData = correlation_data
        try:
            async with asyncio.timeout(timeout_s or self._publish_timeout_s):
                await client.publish(
                    topic, payload, qos=qos, retain=retain, properties=properties, timeout=math.inf
                )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise UpstreamError(f"publish to {topic} failed: {exc or 'timeout'}") from exc

    async def start(self) -> None:
        """Run :meth:`run` in a task of its own (stop it with :meth:`close`)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"upstream[{self.client_id}]")

    async def close(self) -> None:
        """Publish the retained offline status (best effort), disconnect, stop the task."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._outbox is not None:
            self._outbox.remove_listener(self.notify_outbox)

    # -- connection loop -------------------------------------------------------------------------

    def backoff_s(self, attempt: int) -> float:
        """Capped exponential backoff with jitter: uniform in [0.5, 1] x min(max, min x 2**attempt)."""
        ceiling = min(self._backoff_max_s, self._backoff_min_s * 2 ** min(attempt, 30))
        return float(ceiling * (0.5 + 0.5 * self._rng.random()))

    def _new_client(self) -> aiomqtt.Client:
        v311 = self._protocol is aiomqtt.ProtocolVersion.V311
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            identifier=self.client_id,
            protocol=self._protocol,
            keepalive=self._keepalive_s,
            timeout=math.inf,  # our own asyncio.timeout() everywhere (3.11 wait_for note above)
            tls_context=self._tls_context,
            will=aiomqtt.Will(self.status_topic, self._will_payload, qos=STATUS_QOS, retain=True),
            clean_session=True if v311 else None,
            max_inflight_messages=MAX_INFLIGHT,
            # no Nagle delay behind an unacknowledged publish (meter → broker latency budget)
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        client.pending_calls_threshold = self._drain_batch + 64  # a pipelined batch is expected
        return client

    async def run(self) -> None:
        """Connect, serve, reconnect — until cancelled."""
        attempt = 0
        while True:
            client = self._new_client()
            self.stats.connect_attempts += 1
            try:
                await self._session(client)
            except (aiomqtt.MqttError, TimeoutError, OSError, _SubscribeRefused) as exc:
                self._record_failure(exc)
            finally:
                close_socket(client)  # a failed attempt may have left it open; then retrieve
                retrieve_disconnect_error(client)  # what aiomqtt (or the close) set on its future
            if self.stats.connects and self._connected_once_in_attempt:
                attempt = 0
            self._connected_once_in_attempt = False
            delay = self.backoff_s(attempt)
            attempt += 1
            _LOGGER.debug("upstream reconnect to %s in %.2f s", self.broker_url, delay)
            await self._sleep(delay)

    def _record_failure(self, exc: BaseException) -> None:
        was_connected = self._connected_once_in_attempt
        detail = _describe(exc)
        if _is_tls_verification_failure(exc):
            ca = f" with CA file {self._ca_file}" if self._ca_file else " with the system CAs"
            message = f"TLS verification of broker {self.broker_url} failed{ca}: {detail}"
        elif was_connected:
            message = f"lost the connection to broker {self.broker_url}: {detail}"
        else:
            message = f"cannot connect to broker {self.broker_url}: {detail}"
        if was_connected:
            self.stats.connection_losses += 1
        if message != self.last_error or was_connected:
            _LOGGER.warning("upstream %s", message)
        else:
            _LOGGER.debug("upstream %s", message)
        self.last_error = message

    async def _session(self, client: aiomqtt.Client) -> None:
        async with asyncio.timeout(self._connect_timeout_s):
            await client.__aenter__()
        try:
            self._connected_once_in_attempt = True
            self.stats.connects += 1
            async with asyncio.timeout(self._connect_timeout_s):
                await client.publish(
                    self.status_topic, self._birth, qos=STATUS_QOS, retain=True, timeout=math.inf
                )
                await self._subscribe_all(client)
            publisher = DirectPublisher(client)
            self._mqtt = client
            self._publisher = publisher
            self._retained_dirty = dict.fromkeys(self._retained)
            self._retained_in_flight = {}
            drain = None
            if self._outbox is not None:  # appends from now on are published as they commit
                drain = _Drain(publisher=publisher, outbox=self._outbox, window=self._drain_batch)
            self._drain = drain
            self.connected.set(True)
            _LOGGER.info("upstream connected to %s as %s", self.broker_url, self.client_id)
            try:
                self._pump_retained()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(client), name=f"upstream-receive[{self.client_id}]")
                    tg.create_task(self._watchdog(publisher), name=f"upstream-watchdog[{self.client_id}]")
                    if drain is not None:
                        tg.create_task(
                            self._drain_outbox(drain),
                            name=f"upstream-drain[{self.client_id}]",
                        )
            except BaseExceptionGroup as group:
                # a lost connection ends every child; report the first connection error, keep bugs
                lost, rest = group.split((aiomqtt.MqttError, TimeoutError, OSError))
                if rest is not None:
                    raise
                assert lost is not None
                first = lost.exceptions[0]
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from None
        except asyncio.CancelledError:
            await self._say_offline(client)
            raise
        finally:
            self._mqtt = None
            if self._publisher is not None:
                self._publisher.detach()
            self._publisher = None
            self._drain = None
            self.connected.set(False)
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
                async with asyncio.timeout(CLOSE_PUBLISH_TIMEOUT_S):
                    await client.__aexit__(None, None, None)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """On a clean stop, leave the retained status offline (the will only fires on a crash)."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
            async with asyncio.timeout(CLOSE_PUBLISH_TIMEOUT_S):
                await client.publish(
                    self.status_topic, self._will_payload, qos=STATUS_QOS, retain=True, timeout=math.inf
                )

    async def _subscribe_all(self, client: aiomqtt.Client) -> None:
        if not self._subscriptions:
            return
        filters = [(topic_filter, qos) for topic_filter, (_, qos) in self._subscriptions.items()]
        granted = await client.subscribe(filters, timeout=math.inf)
        codes = [getattr(code, "value", code) for code in granted]
        if any(not isinstance(code, int) or code >= 0x80 for code in codes):
            raise _SubscribeRefused(f"subscription refused for {filters}: {granted}")

    # -- per-connection tasks --------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.stats.received += 1
            topic = message.topic.value
            raw = message.payload
            payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
            props = message.properties
            inbound = InboundMessage(
                topic=topic,
                payload=payload,
                retain=bool(message.retain),
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=getattr(props, "CorrelationData", None),
            )
            for topic_filter, (handler, _) in list(self._subscriptions.items()):
                if message.topic.matches(topic_filter):
                    try:
                        handler(inbound)
                    except Exception:  # a handler bug must not end the connection
                        self.stats.handler_errors += 1
                        _LOGGER.exception("upstream handler for %s failed on %s", topic_filter, topic)

    async def _watchdog(self, publisher: DirectPublisher) -> None:
        """End the connection when PUBACKs stop for ``publish_timeout_s`` while publishes are in
        flight (a half-open link the keepalive has not noticed yet)."""
        while True:
            await asyncio.sleep(self._publish_timeout_s / WATCHDOG_FRACTION)
            if publisher.stalled_for(time.monotonic()) >= self._publish_timeout_s:
                raise TimeoutError(f"no PUBACK within {self._publish_timeout_s} s")

    # -- retained state --------------------------------------------------------------------------

    def _pump_retained(self) -> None:
        """Publish every dirty topic that has no publish in flight (synchronous; when connected)."""
        publisher = self._publisher
        if publisher is None or not self._retained_dirty:
            return
        for topic in [t for t in self._retained_dirty if t not in self._retained_in_flight]:
            payload = self._retained[topic]
            del self._retained_dirty[topic]
            self._retained_in_flight[topic] = payload
            try:
                publisher.publish(
                    topic,
                    payload,
                    qos=1,
                    retain=True,
                    on_ack=functools.partial(self._retained_acked, topic, payload),
                )
            except aiomqtt.MqttError as exc:  # connection going down: everything is resent after it
                _LOGGER.debug("upstream retained %s deferred: %s", topic, exc)
                self._retained_dirty[topic] = None
                del self._retained_in_flight[topic]
                return

    def _retained_acked(self, topic: str, payload: bytes, accepted: bool) -> None:
        if self._retained_in_flight.get(topic) is payload:
            del self._retained_in_flight[topic]
        self.stats.retained_published += 1
        if not accepted:
            self._refused(topic)
        self._pump_retained()  # a newer payload of this topic waited for this PUBACK

    def _refused(self, topic: str) -> None:
        self.stats.refused += 1
        _LOGGER.warning("upstream broker %s refused a publish to %s", self.broker_url, topic)

    # -- outbox ------------------------------------------------------------------------------------

    def _pump_outbox(self, drain: _Drain) -> None:
        """Hand the next committed rows to paho, up to the window (synchronous)."""
        room = drain.window - drain.in_flight
        if room <= 0:
            return
        for row in drain.outbox.pending(room, after_id=drain.last_id):
            drain.publisher.publish(
                row.topic,
                row.payload,
                qos=row.qos,
                retain=False,
                on_ack=functools.partial(self._outbox_acked, drain, row.id, row.topic),
            )
            drain.sent(row.id)

    def _outbox_acked(self, drain: _Drain, row_id: int, topic: str, accepted: bool) -> None:
        drain.acknowledged(row_id)
        if not accepted:
            self._refused(topic)

    async def _drain_outbox(self, drain: _Drain) -> None:
        """Refill the window as PUBACKs arrive and delete acknowledged rows in batches (when a
        window's worth is acknowledged, or nothing is in flight any more). Acknowledged rows are
        deleted also when the connection fails half-way."""
        try:
            while True:
                drain.wake.clear()
                if drain.acked and (len(drain.acked) >= drain.window or not drain.in_flight):
                    self._delete(drain)
                self._pump_outbox(drain)
                await drain.wake.wait()
        finally:
            self._drain = None
            self._delete(drain)

    def _delete(self, drain: _Drain) -> None:
        acked = drain.take_acked()
        if acked:
            self.stats.drained += drain.outbox.delete(acked, durable=False)
