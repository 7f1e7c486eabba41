"""The local MQTT bridge charger driver (DESIGN.md §3.3); see docs/charger-bridge.md.

The charger firmware and the agent share a local broker. The driver subscribes to the charger's
``alive``, ``plug``, ``status`` and ``meter`` topics, validates every payload (bad payloads are
counted in :attr:`MqttBridgeDriver.stats` and logged at WARNING with the topic, never raised), turns
them into the typed events of :mod:`drivers.charger.base`, and publishes ``cmd`` messages (QoS 1).

Loss of contact: the charger publishes ``{"online": true}`` retained on ``alive`` and sets
``{"online": false}`` (retained) as its MQTT will. ``online: false`` (or the retained message being
cleared) → :class:`ChargerLost`; ``online: true`` → :class:`ChargerBack`. When the driver's own broker
connection is lost it cannot see the charger either: it emits :class:`ChargerLost` at once, reconnects
with capped exponential backoff and jitter (a fresh ``aiomqtt.Client`` per attempt), subscribes to
``alive`` first and then to the connector topics, so that the retained ``alive`` (→ :class:`ChargerBack`)
arrives before the retained plug/status/meter messages that form the fresh state.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import secrets
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiomqtt
import msgspec

from drivers.charger.base import (
    ChargerBack,
    ChargerDriver,
    ChargerError,
    ChargerErrorCode,
    ChargerEvent,
    ChargerLost,
    ChargingState,
    MeterReading,
    PlugChanged,
    StatusChanged,
)
from drivers.charger.payloads import (
    MAX_CURRENT_A,
    AlivePayload,
    CommandPayload,
    MeterPayload,
    PaymentPayload,
    PlugPayload,
    StatusPayload,
    parse_ts,
)
from drivers.charger.topics import CHARGER_TO_AGENT, DEFAULT_PREFIX, TopicMap, parse_connector
from drivers.mqtt_internals import mqtt_socket, read_available, retrieve_disconnect_error

_LOGGER = logging.getLogger(__name__)

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
DEFAULT_KEEPALIVE_S = 30  # a dead broker link is noticed within 1.5 x keepalive
DEFAULT_RECONNECT_MIN_S = 0.5
DEFAULT_RECONNECT_MAX_S = 30.0
DEFAULT_COMMAND_TIMEOUT_S = 5.0  # PUBACK of a cmd publish on a local broker
# TCP_NODELAY on the client socket: no Nagle delay behind an unacknowledged packet (agent.upstream)
NO_DELAY: tuple[tuple[int, int, int], ...] = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024  # a meter payload with OCMF signed data is ~2 KiB
DEFAULT_EVENT_QUEUE = 10_000
READ_BURST = 64  # packets read per message at most (a burst of 64 connectors joins one turn)
SUBSCRIBE_QOS = 1
COMMAND_QOS = 1
PAYMENT_QOS = 1  # payment: QoS 1 and retained (docs/charger-bridge.md "payment")
PAYMENT_RETRY_S = 1.0  # a payment publish without PUBACK in command_timeout_s is retried after this


class InvalidReason:
    """Why a received payload was dropped (keys of :attr:`BridgeStats.invalid_by_reason`)."""

    OVERSIZE = "oversize"
    EMPTY = "empty"
    ENCODING = "encoding"  # not UTF-8
    JSON = "json"  # not JSON
    SCHEMA = "schema"  # JSON, but a field is missing or has the wrong type or range
    UNKNOWN_CONNECTOR = "unknown_connector"
    UNKNOWN_TOPIC = "unknown_topic"


@dataclass
class BridgeStats:
    """Counters of one driver instance (monotonic over its lifetime)."""

    received: int = 0
    invalid: int = 0
    invalid_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    ts_fallbacks: int = 0  # payloads whose ts was absent or invalid: receive time used
    connects: int = 0
    connection_losses: int = 0
    events_dropped: int = 0  # oldest events dropped because the consumer fell behind
    commands_sent: int = 0
    payments_offered: int = 0  # offer_payment calls
    payments_sent: int = 0  # payment publishes acknowledged (republishes after a reconnect included)
    payment_failures: int = 0  # payment publishes not acknowledged in time (retried)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsOptions:
    """TLS for ``mqtts://``: CA file (system CAs when ``None``), client certificate and key, and
    whether to verify the broker's certificate and host name."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    verify: bool = True


_END = object()


class _EventStream:
    """The async iterator over the driver's event queue; ends at the close sentinel."""

    def __init__(self, queue: asyncio.Queue[object]) -> None:
        self._queue = queue
        self._ended = False

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> ChargerEvent:
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._ended = True
            self._queue.put_nowait(_END)  # for any other iterator over the same queue
            raise StopAsyncIteration
        assert isinstance(item, PlugChanged | StatusChanged | MeterReading | ChargerLost | ChargerBack)
        return item


class _SubscribeRefused(Exception):
    pass


async def cancel_and_wait(task: asyncio.Task[None], *, retry_s: float = 0.1) -> None:
    """Cancel ``task`` and wait for it, cancelling again if the cancellation was swallowed.

    Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt) can swallow a cancellation that races
    with the completion of the awaited operation (cpython gh-86296); one ``cancel()`` is then lost.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("task %s failed", task.get_name(), exc_info=task.exception())


def _utcnow() -> datetime:
    return datetime.now(UTC)


def ack_now(client: aiomqtt.Client) -> None:
    """Send the TCP ACK of what was just received (a PUBACK) now instead of up to 40 ms later.

    A broker socket has Nagle on unless configured otherwise (Mosquitto: ``set_tcp_nodelay false``
    by default), so the broker holds its next small segment to us — e.g. the charger's unplug —
    until our ACK of its previous one arrives. A PUBACK gets no MQTT answer, so our kernel delays
    that ACK (delayed ACK, 40 ms on Linux): measured as ~40 ms unplug → agent right after an
    enable/disable command. ``TCP_QUICKACK`` sends a pending delayed ACK at once (Linux; a no-op
    elsewhere and when nothing is pending).
    """
    if _TCP_QUICKACK is None:
        return
    sock = mqtt_socket(client)  # aiomqtt has no public accessor for the socket
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            pass


def _connector_ids(connectors: int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(connectors, bool):
        raise ChargerError(ChargerErrorCode.INVALID_CONFIG, "connectors: expected a count or ids")
    if isinstance(connectors, int):
        if connectors < 1:
            raise ChargerError(ChargerErrorCode.INVALID_CONFIG, f"connectors: {connectors} < 1")
        return tuple(range(1, connectors + 1))
    ids = tuple(sorted(set(connectors)))
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in ids):
        raise ChargerError(ChargerErrorCode.INVALID_CONFIG, f"connectors: {ids!r}: need positive int ids")
    return ids


class MqttBridgeDriver(ChargerDriver):
    """Charger driver over a local MQTT broker shared with the charger firmware.

    ``broker_url``: ``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (a user name may be given in
    the URL, a password never: use ``password_file``). ``connectors``: a count N (ids 1..N) or the
    ids. ``topics``: template overrides by name (see :mod:`drivers.charger.topics`). Every argument
    is validated here; configuration errors raise :class:`ChargerError` ``INVALID_CONFIG``.
    """

    def __init__(
        self,
        *,
        broker_url: str = "mqtt://127.0.0.1:1883",
        connectors: int | Iterable[int],
        prefix: str = DEFAULT_PREFIX,
        topics: Mapping[str, str] | None = None,
        client_id: str | None = None,
        username: str | None = None,
        password_file: str | Path | None = None,
        tls: TlsOptions | None = None,
        protocol: Literal["3.1.1", "5"] = "5",
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        reconnect_min_s: float = DEFAULT_RECONNECT_MIN_S,
        reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        event_queue_size: int = DEFAULT_EVENT_QUEUE,
        clock: Callable[[], datetime] = _utcnow,
        correlation_ids: Callable[[], str] = lambda: str(uuid.uuid4()),
        rng: random.Random | None = None,
    ) -> None:
        self._connector_ids = _connector_ids(connectors)
        self._known = frozenset(self._connector_ids)
        self._topics = TopicMap(prefix, topics)
        self._host, self._port, url_user, use_tls = self._parse_url(broker_url)
        self._broker_url = broker_url
        self._username = username if username is not None else url_user
        self._password = self._read_password(password_file)
        if tls is not None and not use_tls:
            raise ChargerError(ChargerErrorCode.INVALID_CONFIG, f"{broker_url}: TLS options need mqtts://")
        self._tls_context = self._make_tls_context(tls or TlsOptions()) if use_tls else None
        for name, value in (
            ("keepalive_s", keepalive_s),
            ("reconnect_min_s", reconnect_min_s),
            ("reconnect_max_s", reconnect_max_s),
            ("connect_timeout_s", connect_timeout_s),
            ("command_timeout_s", command_timeout_s),
            ("max_payload_bytes", max_payload_bytes),
            ("event_queue_size", event_queue_size),
        ):
            if not value > 0 or not math.isfinite(value):
                raise ChargerError(ChargerErrorCode.INVALID_CONFIG, f"{name}: {value!r} must be > 0")
        if reconnect_max_s < reconnect_min_s:
            raise ChargerError(ChargerErrorCode.INVALID_CONFIG, "reconnect_max_s < reconnect_min_s")
        self._protocol = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
        self._identifier = client_id or f"evpay-agent-charger-{secrets.token_hex(4)}"
        self._keepalive_s = keepalive_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._max_payload_bytes = max_payload_bytes
        self._clock = clock
        self._correlation_ids = correlation_ids
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._queue_limit = event_queue_size
        self._plug_decoder = msgspec.json.Decoder(PlugPayload)
        self._status_decoder = msgspec.json.Decoder(StatusPayload)
        self._meter_decoder = msgspec.json.Decoder(MeterPayload)
        self._alive_decoder = msgspec.json.Decoder(AlivePayload)
        self._encoder = msgspec.json.Encoder()
        self._task: asyncio.Task[None] | None = None
        self._mqtt: aiomqtt.Client | None = None
        self._online = False
        self._closed = False
        self._connected = asyncio.Event()
        self.stats = BridgeStats()
        # payment (agent → charger): the latest payload per connector, republished after every
        # (re)connect; ``_payments_due``: not yet acknowledged on the current connection
        self._payments: dict[int, bytes] = {}
        self._payments_due: set[int] = set()
        self._payment_wake = asyncio.Event()

    # -- configuration helpers -------------------------------------------------------------------

    @staticmethod
    def _parse_url(url: str) -> tuple[str, int, str | None, bool]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ChargerError(ChargerErrorCode.INVALID_CONFIG, f"broker_url {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("mqtt", "mqtts"):
            raise ChargerError(
                ChargerErrorCode.INVALID_CONFIG, f"broker_url {url!r}: use mqtt:// or mqtts://"
            )
        if not parts.hostname:
            raise ChargerError(ChargerErrorCode.INVALID_CONFIG, f"broker_url {url!r}: no host")
        if parts.password is not None:
            raise ChargerError(
                ChargerErrorCode.INVALID_CONFIG, "broker_url: no password in the URL; use password_file"
            )
        use_tls = scheme == "mqtts"
        default_port = DEFAULT_MQTTS_PORT if use_tls else DEFAULT_MQTT_PORT
        user = unquote(parts.username) if parts.username else None
        return parts.hostname, port or default_port, user, use_tls

    @staticmethod
    def _read_password(path: str | Path | None) -> str | None:
        if path is None:
            return None
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChargerError(ChargerErrorCode.INVALID_CONFIG, f"password_file {path}: {exc}") from None

    @staticmethod
    def _make_tls_context(tls: TlsOptions) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            if tls.cert_file:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ChargerError(ChargerErrorCode.INVALID_CONFIG, f"TLS: {exc}") from None
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    # -- contract --------------------------------------------------------------------------------

    @property
    def connector_ids(self) -> tuple[int, ...]:
        return self._connector_ids

    @property
    def online(self) -> bool:
        return self._online

    @property
    def connected(self) -> bool:
        """Whether the driver is connected to the broker and subscribed."""
        return self._mqtt is not None

    @property
    def topics(self) -> TopicMap:
        return self._topics

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until connected and subscribed (tests, diagnostics); raises ``TimeoutError``."""
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    async def start(self) -> None:
        if self._closed:
            raise ChargerError(ChargerErrorCode.CLOSED, "driver closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"charger-mqtt-bridge[{self._identifier}]")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self._mqtt = None
        self._queue.put_nowait(_END)

    def events(self) -> AsyncIterator[ChargerEvent]:
        return _EventStream(self._queue)

    async def enable_energy(self, connector_id: int, *, max_current_a: int | None = None) -> None:
        if max_current_a is not None and (
            isinstance(max_current_a, bool)
            or not isinstance(max_current_a, int)
            or not 0 <= max_current_a <= MAX_CURRENT_A
        ):
            raise ChargerError(
                ChargerErrorCode.INVALID_ARGUMENT,
                f"max_current_a {max_current_a!r}: expected an int 0..{MAX_CURRENT_A}",
                connector_id=connector_id,
            )
        await self._command(connector_id, "enable", max_current_a)

    async def disable_energy(self, connector_id: int) -> None:
        await self._command(connector_id, "disable", None)

    def offer_payment(self, connector_id: int, payload: PaymentPayload) -> None:
        """Publish ``payload`` on ``payment`` of ``connector_id`` (QoS 1, retained) as soon as the
        broker is reachable; a newer payload of the same connector replaces one not yet sent. The
        latest payload of every connector is published again after each (re)connect (a broker
        without persistence forgets retained messages). Never raises, never blocks."""
        if connector_id not in self._known or isinstance(connector_id, bool):
            _LOGGER.warning("charger payment for unknown connector %r dropped", connector_id)
            return
        self.stats.payments_offered += 1
        self._payments[connector_id] = self._encoder.encode(payload)
        self._payments_due.add(connector_id)
        self._payment_wake.set()

    async def _send_payments(self, client: aiomqtt.Client) -> None:
        """While connected: publish every due payment payload (retained, QoS 1), in connector order."""
        self._payments_due.update(self._payments)  # a fresh connection: republish the latest
        self._payment_wake.set()
        while True:
            await self._payment_wake.wait()
            self._payment_wake.clear()
            while self._payments_due:
                connector_id = min(self._payments_due)
                self._payments_due.discard(connector_id)
                data = self._payments[connector_id]
                topic = self._topics.topic("payment", connector_id)
                try:
                    async with asyncio.timeout(self._command_timeout_s):
                        await client.publish(topic, data, qos=PAYMENT_QOS, retain=True, timeout=math.inf)
                except TimeoutError:
                    self.stats.payment_failures += 1
                    _LOGGER.warning("charger payment on %s not acknowledged; retrying", topic)
                    if self._payments.get(connector_id) == data:
                        self._payments_due.add(connector_id)
                    await asyncio.sleep(PAYMENT_RETRY_S)
                    continue
                except aiomqtt.MqttError as exc:  # the connection is going: resent after the reconnect
                    _LOGGER.info("charger payment on %s not sent: %s", topic, exc)
                    return
                ack_now(client)
                self.stats.payments_sent += 1
                _LOGGER.debug("charger payment published %s (%d bytes)", topic, len(data))

    async def _command(
        self, connector_id: int, action: Literal["enable", "disable"], max_current_a: int | None
    ) -> None:
        if connector_id not in self._known or isinstance(connector_id, bool):
            raise ChargerError(
                ChargerErrorCode.UNKNOWN_CONNECTOR,
                f"known connectors: {list(self._connector_ids)}",
                connector_id=connector_id,
            )
        if self._closed:
            raise ChargerError(ChargerErrorCode.CLOSED, "driver closed", connector_id=connector_id)
        if self._task is None:
            raise ChargerError(ChargerErrorCode.NOT_STARTED, "call start() first", connector_id=connector_id)
        client = self._mqtt
        if client is None:
            raise ChargerError(
                ChargerErrorCode.NOT_CONNECTED,
                f"no connection to {self._broker_url}",
                connector_id=connector_id,
            )
        # Disable is the safe direction and is sent even while the charger is offline (a persistent
        # firmware session receives it on reconnect); enable to an absent charger is refused.
        if action == "enable" and not self._online:
            raise ChargerError(
                ChargerErrorCode.CHARGER_OFFLINE, "charger is offline", connector_id=connector_id
            )
        correlation_id = self._correlation_ids()
        payload = self._encoder.encode(
            CommandPayload(action=action, max_current_a=max_current_a, correlation_id=correlation_id)
        )
        topic = self._topics.topic("cmd", connector_id)
        try:
            async with asyncio.timeout(self._command_timeout_s):
                await client.publish(topic, payload, qos=COMMAND_QOS, timeout=math.inf)
            ack_now(client)  # the broker's next message to us must not wait for our delayed ACK
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise ChargerError(
                ChargerErrorCode.SEND_FAILED,
                f"{action} on {topic}: {exc or type(exc).__name__}",
                connector_id=connector_id,
                correlation_id=correlation_id,
            ) from exc
        self.stats.commands_sent += 1
        _LOGGER.info(
            "charger cmd %s connector=%s max_current_a=%s correlation_id=%s",
            action,
            connector_id,
            max_current_a,
            correlation_id,
        )

    # -- connection ------------------------------------------------------------------------------

    def _backoff_s(self, attempt: int) -> float:
        """Capped exponential backoff with jitter: uniform in [0.5, 1] * min(max, min * 2**attempt)."""
        ceiling = min(self._reconnect_max_s, self._reconnect_min_s * 2 ** min(attempt, 30))
        return float(ceiling * (0.5 + 0.5 * self._rng.random()))

    async def _run(self) -> None:
        attempt = 0
        while True:
            client = aiomqtt.Client(
                self._host,
                self._port,
                username=self._username,
                password=self._password,
                identifier=self._identifier,
                protocol=self._protocol,
                keepalive=self._keepalive_s,
                timeout=self._connect_timeout_s,
                tls_context=self._tls_context,
                clean_session=True if self._protocol is aiomqtt.ProtocolVersion.V311 else None,
                # paho leaves Nagle on: a cmd publish sent while an earlier packet is unacknowledged
                # would wait for the broker's delayed ACK (~40 ms) before it leaves (DESIGN.md §7)
                socket_options=NO_DELAY,
            )
            try:
                async with client:
                    self.stats.connects += 1
                    await self._subscribe(client)
                    attempt = 0
                    self._mqtt = client
                    self._connected.set()
                    _LOGGER.info("charger bridge connected to %s as %s", self._broker_url, self._identifier)
                    payments = asyncio.create_task(
                        self._send_payments(client), name=f"charger-payments[{self._identifier}]"
                    )
                    try:
                        async for message in client.messages:
                            # the rest of a burst that already arrived joins this one: the runtime
                            # steps and stores them in one turn (issue 12, group commit)
                            read_available(client, READ_BURST)
                            try:
                                self._on_message(message)
                            except Exception:  # a bug here must not end the bridge
                                self.stats.invalid += 1
                                self.stats.invalid_by_reason["internal_error"] += 1
                                _LOGGER.exception(
                                    "charger bridge failed on a message on %s", message.topic.value
                                )
                    finally:
                        await cancel_and_wait(payments)
            except (aiomqtt.MqttError, _SubscribeRefused) as exc:
                retrieve_disconnect_error(client)
                was_connected = self._mqtt is not None
                self._mqtt = None
                self._connected.clear()
                if was_connected:
                    self.stats.connection_losses += 1
                    _LOGGER.warning("charger bridge lost the broker %s: %s", self._broker_url, exc)
                else:
                    _LOGGER.info("charger bridge cannot connect to %s: %s", self._broker_url, exc)
                self._set_online(False, "broker_connection_lost")
            delay = self._backoff_s(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        # alive first, on its own: its retained message (→ ChargerBack) precedes the fresh state
        batches = [[CHARGER_TO_AGENT[0]], list(CHARGER_TO_AGENT[1:])]
        for batch in batches:
            filters = [(self._topics.subscription(name), SUBSCRIBE_QOS) for name in batch]
            granted = await client.subscribe(filters, timeout=self._connect_timeout_s)
            codes = [getattr(code, "value", code) for code in granted]
            if any(not isinstance(code, int) or code >= 0x80 for code in codes):
                raise _SubscribeRefused(f"subscription refused for {filters}: {granted}")

    # -- received messages -----------------------------------------------------------------------

    def _invalid(self, topic: str, reason: str, detail: str) -> None:
        self.stats.invalid += 1
        self.stats.invalid_by_reason[reason] += 1
        _LOGGER.warning("charger bridge dropped a payload on %s: %s: %s", topic, reason, detail)

    def _emit(self, event: ChargerEvent) -> None:
        if self._queue.qsize() >= self._queue_limit:
            self._queue.get_nowait()
            self.stats.events_dropped += 1
            _LOGGER.warning("charger event queue full (%d): dropped the oldest event", self._queue_limit)
        self._queue.put_nowait(event)

    def _set_online(self, online: bool, reason: str) -> None:
        if online == self._online:
            return
        self._online = online
        at = self._clock()
        if online:
            _LOGGER.info("charger is back")
            self._emit(ChargerBack(at=at))
        else:
            _LOGGER.warning("charger lost: %s", reason)
            self._emit(ChargerLost(at=at, reason=reason))

    def _timestamp(self, value: object, received: datetime) -> datetime:
        parsed = parse_ts(value)
        if parsed is None:
            self.stats.ts_fallbacks += 1
            if value is not None:
                _LOGGER.debug("charger bridge: invalid ts %.80r, using the receive time", value)
            return received
        return parsed

    def _on_message(self, message: aiomqtt.Message) -> None:
        self.stats.received += 1
        topic = message.topic.value
        raw = message.payload
        data = raw if isinstance(raw, bytes | bytearray) else b"" if raw is None else str(raw).encode()
        if len(data) > self._max_payload_bytes:
            self._invalid(topic, InvalidReason.OVERSIZE, f"{len(data)} bytes > {self._max_payload_bytes}")
            return
        matched = self._topics.match(topic, CHARGER_TO_AGENT)
        if matched is None:
            self._invalid(topic, InvalidReason.UNKNOWN_TOPIC, "matches no charger topic")
            return
        name, connector_text = matched
        if name == "alive":
            self._on_alive(topic, bytes(data))
            return
        connector_id = parse_connector(connector_text, self._known)
        if connector_id is None:
            self._invalid(
                topic, InvalidReason.UNKNOWN_CONNECTOR, f"{connector_text!r} not in {list(self._known)}"
            )
            return
        if not data:
            self._invalid(topic, InvalidReason.EMPTY, "empty payload (retained message cleared?)")
            return
        text = self._decode_text(topic, bytes(data))
        if text is None:
            return
        received = self._clock()
        try:
            if name == "plug":
                plug = self._plug_decoder.decode(text)
                self._emit(
                    PlugChanged(
                        connector_id=connector_id, plugged=plug.plugged, at=self._timestamp(plug.ts, received)
                    )
                )
            elif name == "status":
                status = self._status_decoder.decode(text)
                fault = status.fault if status.state is ChargingState.FAULT else None
                self._emit(
                    StatusChanged(
                        connector_id=connector_id,
                        state=status.state,
                        fault=fault,
                        at=self._timestamp(status.ts, received),
                    )
                )
            else:
                meter = self._meter_decoder.decode(text)
                if meter.power_w is not None and not math.isfinite(meter.power_w):
                    self._invalid(topic, InvalidReason.SCHEMA, f"power_w {meter.power_w} is not finite")
                    return
                if meter.current_a is not None and not (
                    math.isfinite(meter.current_a) and meter.current_a >= 0
                ):
                    self._invalid(
                        topic,
                        InvalidReason.SCHEMA,
                        f"current_a {meter.current_a} is not a finite number >= 0",
                    )
                    return
                self._emit(
                    MeterReading(
                        connector_id=connector_id,
                        energy_wh=meter.energy_wh,
                        power_w=meter.power_w,
                        at=self._timestamp(meter.ts, received),
                        signed=meter.signed,
                        retained=bool(message.retain),
                        current_a=meter.current_a,
                    )
                )
        except msgspec.ValidationError as exc:
            self._invalid(topic, InvalidReason.SCHEMA, str(exc))
        except msgspec.DecodeError as exc:
            self._invalid(topic, InvalidReason.JSON, str(exc))

    def _decode_text(self, topic: str, data: bytes) -> str | None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._invalid(topic, InvalidReason.ENCODING, str(exc))
            return None

    def _on_alive(self, topic: str, data: bytes) -> None:
        if not data:  # the retained alive was cleared: nobody vouches for the charger any more
            self._set_online(False, "alive_cleared")
            return
        text = self._decode_text(topic, data)
        if text is None:
            return
        try:
            alive = self._alive_decoder.decode(text)
        except msgspec.ValidationError as exc:
            self._invalid(topic, InvalidReason.SCHEMA, str(exc))
            return
        except msgspec.DecodeError as exc:
            self._invalid(topic, InvalidReason.JSON, str(exc))
            return
        self._set_online(alive.online, "offline")
