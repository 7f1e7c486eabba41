"""The charger simulator: connector physics, the MQTT link (charger side) and a control channel.

State semantics (what AC chargers do, OCPP 1.6 status names in brackets):

* unplugged → ``idle`` [Available];
* plugged, not enabled in this session → ``idle`` [Preparing];
* plugged and enabled, the EV draws power → ``charging`` [Charging];
* plugged and enabled, the EV paused (or draws 0 W) → ``suspended_ev`` [SuspendedEV];
* plugged, enabled with a 0 A limit, or disabled after having been enabled in this session →
  ``suspended_evse`` [SuspendedEVSE];
* a fault → ``fault`` with its code [Faulted]; a fault also withdraws the enable (the contactor
  opens and the energy transfer ends; resuming needs a fresh ``enable``); ``enable`` while faulted is
  recorded but refused.

An ``enable`` before plug-in (authorize first) is kept until the EV plugs in; unplugging ends the
session and clears the enable. Energy flows only while enabled AND plugged AND not EV-paused AND
not faulted; the meter register then counts up at the EV's power, capped by ``max_current_a`` *
230 V * phases when a limit was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiomqtt
import msgspec

from drivers.charger.base import ChargingState
from drivers.charger.mqtt_bridge import NO_DELAY, cancel_and_wait, retrieve_disconnect_error
from drivers.charger.payloads import (
    AlivePayload,
    CommandPayload,
    MeterPayload,
    PlugPayload,
    StatusPayload,
    format_ts,
)
from drivers.charger.topics import DEFAULT_PREFIX, TopicMap, parse_connector

_LOGGER = logging.getLogger(__name__)

DEFAULT_METER_INTERVAL_S = 1.0
DEFAULT_POWER_W = 7200.0  # EV demand after plug-in (about 32 A single phase)
DEFAULT_RECONNECT_DELAY_S = 0.2
NOMINAL_VOLTAGE_V = 230.0
DEFAULT_PHASES = 3
CONTROL_LINE_LIMIT = 1024
QOS = 1
CLOSE_TIMEOUT_S = 2.0

HELP = """commands:
  help              this text
  state [C]         JSON state of connector C (or of all)
  plug C            plug an EV into connector C
  unplug C          unplug connector C (ends the session, clears the enable)
  power C W         the EV on C draws W watts (meter ramp; 0 = draws nothing)
  pause C           the EV on C pauses (suspended_ev)
  resume C          the EV on C resumes
  fault C CODE      fault connector C with CODE
  clear C           clear the fault of connector C
  lose              lose contact: drop the MQTT link uncleanly (the broker publishes the will)
  restore           restore contact
  quit              stop the simulator"""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A ``cmd`` the simulator received, in order; ``accepted`` is false for enable while faulted."""

    action: str
    max_current_a: int | None
    correlation_id: str
    accepted: bool


@dataclass(frozen=True, slots=True)
class ConnectorSnapshot:
    """What :meth:`ChargerSimulator.state` returns; ``power_w`` is the power flowing now."""

    connector_id: int
    plugged: bool
    enabled: bool
    ev_paused: bool
    fault: str | None
    status: ChargingState
    energy_wh: int
    power_w: float
    demand_w: float
    max_current_a: int | None
    commands: tuple[CommandRecord, ...]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


@dataclass
class _Connector:
    connector_id: int
    demand_w: float = DEFAULT_POWER_W
    plugged: bool = False
    enabled: bool = False
    was_enabled: bool = False
    max_current_a: int | None = None
    ev_paused: bool = False
    fault: str | None = None
    energy_wh: float = 0.0
    last_accrual: float = 0.0
    status: ChargingState = ChargingState.IDLE
    commands: list[CommandRecord] = field(default_factory=list)


class ChargerSimulator:
    """A charger with N connectors on an MQTT broker, speaking the §3.3 bridge contract.

    The Python API (``plug``, ``unplug``, ``set_power``, ``ev_pause``, ``fault``, ``clear_fault``,
    ``lose_contact``, ``restore_contact``, ``state``, ``control``) is synchronous: it changes the state
    at once and queues the resulting MQTT messages, which a background task publishes in order.
    """

    def __init__(
        self,
        broker_url: str = "mqtt://127.0.0.1:1883",
        *,
        connectors: int | Iterable[int] = 1,
        prefix: str = DEFAULT_PREFIX,
        topics: Mapping[str, str] | None = None,
        meter_interval_s: float = DEFAULT_METER_INTERVAL_S,
        reconnect_delay_s: float = DEFAULT_RECONNECT_DELAY_S,
        phases: int = DEFAULT_PHASES,
        client_id: str | None = None,
        keepalive_s: int = 30,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        parts = urlsplit(broker_url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"broker_url {broker_url!r}: expected mqtt://host[:port]")
        self._host = parts.hostname
        self._port = parts.port or 1883
        ids = range(1, connectors + 1) if isinstance(connectors, int) else sorted(set(connectors))
        if not ids or any(i < 1 for i in ids):
            raise ValueError(f"connectors {connectors!r}: need positive ids")
        if not meter_interval_s > 0:
            raise ValueError("meter_interval_s must be > 0")
        self.broker_url = broker_url
        self.topics = TopicMap(prefix, topics)
        self._monotonic = monotonic
        self._clock = clock
        now = monotonic()
        self._connectors = {i: _Connector(i, last_accrual=now) for i in ids}
        self._known = frozenset(self._connectors)
        self._meter_interval_s = meter_interval_s
        self._reconnect_delay_s = reconnect_delay_s
        self._phases = phases
        self._client_id = client_id or f"charger-sim-{id(self):x}"
        self._keepalive_s = keepalive_s
        self._encoder = msgspec.json.Encoder()
        self._cmd_decoder = msgspec.json.Decoder(CommandPayload)
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._contact = asyncio.Event()
        self._contact.set()
        self._connected = asyncio.Event()
        self._quit = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._control_server: asyncio.Server | None = None
        self._control_clients: set[asyncio.Task[None]] = set()
        self._closed = False
        self.invalid_commands = 0
        self.connects = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._run_mqtt(), name=f"charger-sim-mqtt[{self._client_id}]"),
            asyncio.create_task(self._run_meter(), name=f"charger-sim-meter[{self._client_id}]"),
        ]

    async def close(self) -> None:
        """Flush queued messages, publish ``alive`` offline (a clean shutdown leaves no stale
        "online"), stop everything."""
        if self._closed:
            return
        self._closed = True
        if self._tasks:
            await cancel_and_wait(self._tasks[1])  # the meter: no new messages from here on
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._outbox.join()
                    await client.publish(self.topics.topic("alive"), self._alive(False), qos=QOS, retain=True)
        if self._control_server is not None:
            self._control_server.close()
        for task in self._tasks + list(self._control_clients):
            await cancel_and_wait(task)
        if self._control_server is not None:
            await self._control_server.wait_closed()
            self._control_server = None
        self._tasks = []

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_connected(self, timeout_s: float = 5.0) -> None:
        """Wait until connected with the full state published; raises ``TimeoutError``."""
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    async def wait_quit(self) -> None:
        """Wait until a ``quit`` control command."""
        await self._quit.wait()

    # -- the Python API --------------------------------------------------------------------------

    @property
    def connector_ids(self) -> tuple[int, ...]:
        return tuple(self._connectors)

    def _get(self, connector_id: int) -> _Connector:
        try:
            return self._connectors[connector_id]
        except KeyError:
            raise KeyError(f"unknown connector {connector_id}; known: {sorted(self._connectors)}") from None

    def plug(self, connector_id: int) -> None:
        self._update(connector_id, plugged=True)

    def unplug(self, connector_id: int) -> None:
        self._update(connector_id, plugged=False)

    def set_power(self, connector_id: int, watts: float) -> None:
        """The power the EV draws when energy is available (W, ≥ 0)."""
        if not (math.isfinite(watts) and watts >= 0):
            raise ValueError(f"power {watts!r}: expected a finite number >= 0")
        self._update(connector_id, demand_w=float(watts))

    def ev_pause(self, connector_id: int, paused: bool = True) -> None:
        self._update(connector_id, ev_paused=paused)

    def fault(self, connector_id: int, code: str) -> None:
        if not code or len(code) > 128 or any(ch.isspace() for ch in code):
            raise ValueError(f"fault code {code!r}: 1..128 non-blank characters")
        self._update(connector_id, fault=code)

    def clear_fault(self, connector_id: int) -> None:
        self._update(connector_id, fault=None)

    def lose_contact(self) -> None:
        """Drop the MQTT link uncleanly (no DISCONNECT): the broker publishes the will (alive offline).

        No reconnect until :meth:`restore_contact`. The connectors keep their state meanwhile.
        """
        self._contact.clear()
        client = self._client
        if client is None:
            return
        # aiomqtt has no API for an unclean drop; shutting the socket down makes paho see EOF and the
        # broker see a connection end without DISCONNECT, which is what a charger losing power does.
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore_contact(self) -> None:
        self._contact.set()

    def state(self, connector_id: int) -> ConnectorSnapshot:
        self._accrue_all()
        c = self._get(connector_id)
        return ConnectorSnapshot(
            connector_id=c.connector_id,
            plugged=c.plugged,
            enabled=c.enabled,
            ev_paused=c.ev_paused,
            fault=c.fault,
            status=c.status,
            energy_wh=int(c.energy_wh),
            power_w=self._flowing_w(c),
            demand_w=c.demand_w,
            max_current_a=c.max_current_a,
            commands=tuple(c.commands),
        )

    # -- physics ---------------------------------------------------------------------------------

    @staticmethod
    def _status_of(c: _Connector) -> ChargingState:
        if c.fault is not None:
            return ChargingState.FAULT
        if not c.plugged:
            return ChargingState.IDLE
        if c.enabled:
            if c.max_current_a == 0:
                return ChargingState.SUSPENDED_EVSE
            if c.ev_paused or c.demand_w <= 0:
                return ChargingState.SUSPENDED_EV
            return ChargingState.CHARGING
        return ChargingState.SUSPENDED_EVSE if c.was_enabled else ChargingState.IDLE

    def _flowing_w(self, c: _Connector) -> float:
        if c.status is not ChargingState.CHARGING:
            return 0.0
        if c.max_current_a is None:
            return c.demand_w
        return min(c.demand_w, c.max_current_a * NOMINAL_VOLTAGE_V * self._phases)

    def _accrue(self, c: _Connector, now: float) -> None:
        elapsed = max(0.0, now - c.last_accrual)
        c.last_accrual = now
        c.energy_wh += self._flowing_w(c) * elapsed / 3600.0

    def _accrue_all(self) -> None:
        now = self._monotonic()
        for c in self._connectors.values():
            self._accrue(c, now)

    def _update(self, connector_id: int, **changes: Any) -> None:
        c = self._get(connector_id)
        self._accrue(c, self._monotonic())
        was_plugged, was_status = c.plugged, c.status
        for name, value in changes.items():
            setattr(c, name, value)
        if "plugged" in changes and not c.plugged:  # unplug ends the session
            c.enabled = c.was_enabled = c.ev_paused = False
            c.max_current_a = None
        if changes.get("fault") is not None:  # the contactor opens; a fresh enable is needed
            c.enabled = False
        c.status = self._status_of(c)
        if c.plugged != was_plugged:
            self._queue_plug(c)
        if c.status != was_status:
            self._queue_status(c)
        self._queue_meter(c)

    # -- MQTT ------------------------------------------------------------------------------------

    def _alive(self, online: bool) -> bytes:
        if online:
            return self._encoder.encode(AlivePayload(online=True, ts=format_ts(self._clock())))
        return self._encoder.encode(AlivePayload(online=False))

    def _queue_plug(self, c: _Connector) -> None:
        payload = PlugPayload(plugged=c.plugged, ts=format_ts(self._clock()))
        self._outbox.put_nowait((self.topics.topic("plug", c.connector_id), self._encoder.encode(payload)))

    def _queue_status(self, c: _Connector) -> None:
        payload = StatusPayload(state=c.status, fault=c.fault, ts=format_ts(self._clock()))
        self._outbox.put_nowait((self.topics.topic("status", c.connector_id), self._encoder.encode(payload)))

    def _queue_meter(self, c: _Connector) -> None:
        payload = MeterPayload(
            energy_wh=int(c.energy_wh), power_w=self._flowing_w(c), ts=format_ts(self._clock()), signed=None
        )
        self._outbox.put_nowait((self.topics.topic("meter", c.connector_id), self._encoder.encode(payload)))

    async def _run_meter(self) -> None:
        while True:
            await asyncio.sleep(self._meter_interval_s)
            now = self._monotonic()
            for c in self._connectors.values():
                self._accrue(c, now)
                if c.plugged:
                    self._queue_meter(c)

    async def _run_mqtt(self) -> None:
        will = aiomqtt.Will(self.topics.topic("alive"), self._alive(False), qos=QOS, retain=True)
        while True:
            await self._contact.wait()
            client = aiomqtt.Client(
                self._host,
                self._port,
                identifier=self._client_id,
                will=will,
                keepalive=self._keepalive_s,
                clean_session=True,
                timeout=5,
                socket_options=NO_DELAY,  # like the bridge: no Nagle delay behind an unacked packet
            )
            try:
                async with client:
                    await client.subscribe(self.topics.subscription("cmd"), qos=QOS)
                    # a fresh state on every (re)connect, alive first; older queued messages are stale
                    while not self._outbox.empty():
                        self._outbox.get_nowait()
                        self._outbox.task_done()
                    self._accrue_all()
                    await client.publish(self.topics.topic("alive"), self._alive(True), qos=QOS, retain=True)
                    for c in self._connectors.values():
                        self._queue_plug(c)
                        self._queue_status(c)
                        self._queue_meter(c)
                    self._client = client
                    self.connects += 1
                    self._connected.set()
                    _LOGGER.info("charger simulator connected to %s", self.broker_url)
                    async with asyncio.TaskGroup() as group:
                        group.create_task(
                            self._publish(client), name=f"charger-sim-publish[{self._client_id}]"
                        )
                        async for message in client.messages:
                            self._on_command(message)
            except* aiomqtt.MqttError as group_error:
                _LOGGER.info("charger simulator link to %s down: %s", self.broker_url, group_error.exceptions)
            finally:
                retrieve_disconnect_error(client)
                self._client = None
                self._connected.clear()
            if self._contact.is_set():
                await asyncio.sleep(self._reconnect_delay_s)

    async def _publish(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload = await self._outbox.get()
            try:
                await client.publish(topic, payload, qos=QOS, retain=True)
            finally:
                self._outbox.task_done()
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a cancellation swallowed by wait_for (3.11)
                raise asyncio.CancelledError

    def _on_command(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        matched = self.topics.match(topic, ("cmd",))
        connector_id = parse_connector(matched[1], self._known) if matched else None
        raw = message.payload
        try:
            if connector_id is None:
                raise ValueError("unknown connector")
            if not isinstance(raw, bytes | bytearray):
                raise ValueError("payload is not bytes")
            cmd = self._cmd_decoder.decode(bytes(raw))
        except (ValueError, msgspec.DecodeError) as exc:  # msgspec errors are ValueErrors
            self.invalid_commands += 1
            _LOGGER.warning("charger simulator: invalid cmd on %s: %s", topic, exc)
            return
        c = self._connectors[connector_id]
        accepted = not (cmd.action == "enable" and c.fault is not None)
        c.commands.append(CommandRecord(cmd.action, cmd.max_current_a, cmd.correlation_id, accepted))
        _LOGGER.info(
            "charger simulator: connector %s cmd %s (accepted=%s)", connector_id, cmd.action, accepted
        )
        if not accepted:
            return
        if cmd.action == "enable":
            self._update(connector_id, enabled=True, was_enabled=True, max_current_a=cmd.max_current_a)
        else:
            self._update(connector_id, enabled=False)

    # -- control channel -------------------------------------------------------------------------

    def control(self, line: str) -> str:
        """Run one control command; returns the one-line (``state``: JSON; ``help``: multi-line) answer.

        Malformed commands answer ``error: …``; nothing here raises.
        """
        words = line.split()
        if not words:
            return "error: empty command (try help)"
        verb, args = words[0].lower(), words[1:]
        try:
            return self._control(verb, args)
        except (KeyError, ValueError) as exc:
            return f"error: {exc.args[0] if exc.args else exc}"

    def _connector_arg(self, verb: str, args: list[str], extra: str = "") -> int:
        want = 2 if extra else 1
        if len(args) != want:
            raise ValueError(f"usage: {verb} C{(' ' + extra) if extra else ''}")
        try:
            connector_id = int(args[0])
        except ValueError:
            raise ValueError(f"connector {args[0]!r}: expected an integer") from None
        self._get(connector_id)
        return connector_id

    def _control(self, verb: str, args: list[str]) -> str:
        if verb == "help":
            return HELP
        if verb == "state":
            if not args:
                return json.dumps([self.state(c).as_dict() for c in self._connectors], separators=(",", ":"))
            return json.dumps(self.state(self._connector_arg(verb, args)).as_dict(), separators=(",", ":"))
        if verb in ("plug", "unplug", "pause", "resume", "clear"):
            connector_id = self._connector_arg(verb, args)
            {
                "plug": self.plug,
                "unplug": self.unplug,
                "pause": lambda c: self.ev_pause(c, True),
                "resume": lambda c: self.ev_pause(c, False),
                "clear": self.clear_fault,
            }[verb](connector_id)
            return "ok"
        if verb == "power":
            connector_id = self._connector_arg(verb, args, "W")
            try:
                watts = float(args[1])
            except ValueError:
                raise ValueError(f"power {args[1]!r}: expected a number of watts") from None
            self.set_power(connector_id, watts)
            return "ok"
        if verb == "fault":
            connector_id = self._connector_arg(verb, args, "CODE")
            self.fault(connector_id, args[1])
            return "ok"
        if verb in ("lose", "restore", "quit"):
            if args:
                raise ValueError(f"usage: {verb}")
            if verb == "lose":
                self.lose_contact()
            elif verb == "restore":
                self.restore_contact()
            else:
                self._quit.set()
                return "ok: bye"
            return "ok"
        raise ValueError(f"unknown command {verb!r} (try help)")

    async def start_control_server(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Serve the control channel over TCP (one command per line); returns the bound address."""
        if self._control_server is not None:
            raise RuntimeError("control server already running")
        self._control_server = await asyncio.start_server(
            self._serve_control, host, port, limit=CONTROL_LINE_LIMIT
        )
        bound = self._control_server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name(f"charger-sim-control-client[{self._client_id}]")
        if self._closed:
            writer.close()
            return
        self._control_clients.add(task)
        try:
            await self.serve_control_stream(reader, writer)
        finally:
            self._control_clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def serve_control_stream(self, reader: asyncio.StreamReader, writer: Any) -> None:
        """Answer control lines from ``reader`` on ``writer`` until EOF or ``quit``."""
        while True:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):  # over-long line: drop the client
                writer.write(b"error: line too long\n")
                return
            except (ConnectionError, OSError):
                return
            if not raw:
                return
            answer = self.control(raw.decode("utf-8", errors="replace"))
            writer.write(answer.encode() + b"\n")
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            if answer == "ok: bye":
                return
