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
230 V * phases when a limit was given. ``session_energy_wh`` in :class:`ConnectorSnapshot` is the
register now minus the register at the last plug-in (both as the integer the meter reports), i.e.
what the charger delivered in the current (or, after unplug, the last) session.

Habits (:mod:`hil.charger_sim.habits`, one :class:`ChargerHabits` profile): when ``meter`` is
published (``meter_mode``: ``always``, ``flowing``, ``periodic``) and whether retained, whether it
carries ``power_w``, the order of ``plug`` and ``status`` on a plug change and whether an unchanged
``status`` goes with it, and duplicated deliveries (seeded). At run time: ``redeliver`` republishes
the retained messages unchanged (a broker session resume, a firmware restart replaying its state),
``reconnect`` disconnects cleanly (no will) and connects again with a fresh state, ``lose`` /
``restore`` drop the link uncleanly (the broker publishes the will) and bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiomqtt
import msgspec

from drivers.charger.base import ChargingState
from drivers.charger.mqtt_bridge import NO_DELAY, cancel_and_wait
from drivers.charger.payloads import (
    AlivePayload,
    CommandPayload,
    PaymentPayload,
    PlugPayload,
    StatusPayload,
    format_ts,
)
from drivers.charger.topics import DEFAULT_PREFIX, TopicMap, parse_connector
from drivers.mqtt_internals import mqtt_socket, retrieve_disconnect_error
from hil.charger_sim.habits import (
    DEFAULT_METER_INTERVAL_S,
    ChargerHabits,
    MeterMode,
    PlugOrder,
    as_meter_mode,
    as_plug_order,
)

_LOGGER = logging.getLogger(__name__)

DEFAULT_POWER_W = 7200.0  # EV demand after plug-in (about 32 A single phase)
DEFAULT_RECONNECT_DELAY_S = 0.2
NOMINAL_VOLTAGE_V = 230.0
DEFAULT_PHASES = 3
CONTROL_LINE_LIMIT = 1024
QOS = 1
CLOSE_TIMEOUT_S = 2.0
# QoS 1 messages published and not yet acknowledged at once: a charger's MQTT client pipelines its
# publishes (issue 12; docs/performance.md §3.1); as many as the bench's largest meter burst (64).
PUBLISH_WINDOW = 64

HELP = """commands:
  help              this text
  state [C]         JSON state of connector C (or a list of all): plugged, enabled, status,
                    energy_wh (the register), session_energy_wh (delivered since the last plug-in),
                    session_start_wh (the register then), power_w, demand_w, commands, ...
  plug C            plug an EV into connector C
  unplug C          unplug connector C (ends the session, clears the enable)
  power C W         the EV on C draws W watts (meter ramp; 0 = draws nothing)
  pause C           the EV on C pauses (suspended_ev)
  resume C          the EV on C resumes
  fault C CODE      fault connector C with CODE
  clear C           clear the fault of connector C
  lose              lose contact: drop the MQTT link uncleanly (the broker publishes the will)
  restore           restore contact (reconnect, publish alive and the full state)
  reconnect [S]     disconnect cleanly (no will, no alive offline), stay away S seconds (default
                    0; commands sent meanwhile are lost) and connect again, publishing alive and
                    the state as after any connect
  payments [C]      JSON list of the payment messages received (of connector C), in order: each
                    {"connector_id", "retained", "payload"} (docs/charger-bridge.md "payment")
  redeliver         republish the last retained alive, plug and status (and meter when retained)
                    of every connector, byte for byte, retained (a broker session resume)
  habits            JSON of the habits in effect
  habit NAME VALUE  change a habit at run time: meter_mode always|flowing|periodic,
                    meter_interval_s S, meter_retain on|off, report_power on|off, report_current on|off,
                    plug_order plug_first|status_first, status_on_plug on|off,
                    duplicate_rate P (0..1), seed N (reseeds the duplicate RNG)
  quit              stop the simulator"""


class _MeterOut(msgspec.Struct, kw_only=True):
    """The ``meter`` payload as the simulator sends it: like ``MeterPayload``, but ``power_w`` can be
    left out entirely (``report_power=False``: a meter with only an energy register)."""

    energy_wh: int
    power_w: float | msgspec.UnsetType = msgspec.UNSET
    current_a: float | msgspec.UnsetType = msgspec.UNSET  # report_current: the per-phase current
    ts: str | None = None
    signed: str | None = None


class _CleanReconnect(Exception):
    """Raised inside the connection's task group to leave it with a clean DISCONNECT."""


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    retain: bool


@dataclass(slots=True)
class _InFlight:
    """The copies of one queued message not yet acknowledged (or failed); see ``_publish``."""

    copies: int


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A ``cmd`` the simulator received, in order; ``accepted`` is false for enable while faulted."""

    action: str
    max_current_a: int | None
    correlation_id: str
    accepted: bool


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """A ``payment`` message the simulator received (``payload``: the decoded JSON object)."""

    connector_id: int
    retained: bool
    payload: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"connector_id": self.connector_id, "retained": self.retained, "payload": self.payload}


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
    session_energy_wh: int  # register now - register at the last plug-in (0 before the first)
    session_start_wh: int  # the register at the last plug-in

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
    session_start_wh: int = 0
    last_accrual: float = 0.0
    status: ChargingState = ChargingState.IDLE
    commands: list[CommandRecord] = field(default_factory=list)


class ChargerSimulator:
    """A charger with N connectors on an MQTT broker, speaking the §3.3 bridge contract.

    The Python API (``plug``, ``unplug``, ``set_power``, ``ev_pause``, ``fault``, ``clear_fault``,
    ``lose_contact``, ``restore_contact``, ``reconnect``, ``redeliver``, ``set_habits``, ``state``,
    ``control``) is synchronous: it changes the state at once and queues the resulting MQTT
    messages, which a background task publishes in order.

    The habit arguments (``meter_mode`` … ``seed``) are those of :class:`ChargerHabits` (the defaults
    are the simulator's historic behaviour); :attr:`habits` is the profile in effect, with the seed
    resolved (``seed=None`` draws one), so ``ChargerSimulator(url, **sim.habits.as_dict())``
    reproduces the world. ``initial_energy_wh`` is every connector's meter register at start (a
    meter in service for a while; default 0).
    """

    def __init__(
        self,
        broker_url: str = "mqtt://127.0.0.1:1883",
        *,
        connectors: int | Iterable[int] = 1,
        prefix: str = DEFAULT_PREFIX,
        topics: Mapping[str, str] | None = None,
        meter_interval_s: float = DEFAULT_METER_INTERVAL_S,
        meter_mode: MeterMode | str = MeterMode.ALWAYS,
        meter_retain: bool = True,
        report_power: bool = True,
        report_current: bool = False,
        plug_order: PlugOrder | str = PlugOrder.PLUG_FIRST,
        status_on_plug: bool = False,
        duplicate_rate: float = 0.0,
        seed: int | None = None,
        initial_energy_wh: int = 0,
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
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        self.habits = ChargerHabits(
            meter_mode=as_meter_mode(meter_mode),
            meter_interval_s=meter_interval_s,
            meter_retain=meter_retain,
            report_power=report_power,
            report_current=report_current,
            plug_order=as_plug_order(plug_order),
            status_on_plug=status_on_plug,
            duplicate_rate=duplicate_rate,
            seed=seed,
        )
        self._rng = random.Random(seed)
        self.broker_url = broker_url
        self.topics = TopicMap(prefix, topics)
        self._monotonic = monotonic
        self._clock = clock
        if (
            isinstance(initial_energy_wh, bool)
            or not isinstance(initial_energy_wh, int)
            or initial_energy_wh < 0
        ):
            raise ValueError(f"initial_energy_wh {initial_energy_wh!r}: expected an integer >= 0")
        self.initial_energy_wh = initial_energy_wh
        now = monotonic()
        self._connectors = {
            i: _Connector(
                i,
                energy_wh=float(initial_energy_wh),
                session_start_wh=initial_energy_wh,
                last_accrual=now,
            )
            for i in ids
        }
        self._known = frozenset(self._connectors)
        self._reconnect_delay_s = reconnect_delay_s
        self._phases = phases
        self._identifier = client_id or f"charger-sim-{id(self):x}"
        self._keepalive_s = keepalive_s
        self._encoder = msgspec.json.Encoder()
        self._cmd_decoder = msgspec.json.Decoder(CommandPayload)
        self._payment_decoder = msgspec.json.Decoder(PaymentPayload)
        self.payments: list[PaymentRecord] = []  # every payment message received, in order
        self.invalid_payments = 0
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._last: dict[str, _Outgoing] = {}  # the last alive/plug/status/meter queued, by topic
        self._contact = asyncio.Event()
        self._contact.set()
        self._reconnect = asyncio.Event()
        self._reconnect_gap_s = 0.0
        self._timer_changed = asyncio.Event()
        self._connected = asyncio.Event()
        self._quit = asyncio.Event()
        self._mqtt: aiomqtt.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._control_server: asyncio.Server | None = None
        self._control_clients: set[asyncio.Task[None]] = set()
        self._closed = False
        self.invalid_commands = 0
        self.connects = 0
        self.published = 0  # messages published, duplicates included
        self.duplicates = 0  # of which second copies (duplicate_rate)
        self.meter_ticks = 0  # runs of the meter timer (whether or not a meter was due)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._run_mqtt(), name=f"charger-sim-mqtt[{self._identifier}]"),
            asyncio.create_task(self._run_meter(), name=f"charger-sim-meter[{self._identifier}]"),
        ]

    async def close(self) -> None:
        """Flush queued messages, publish ``alive`` offline (a clean shutdown leaves no stale
        "online"), stop everything."""
        if self._closed:
            return
        self._closed = True
        if self._tasks:
            await cancel_and_wait(self._tasks[1])  # the meter: no new messages from here on
        client = self._mqtt
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._outbox.join()
                    await self._send(client, _Outgoing(self.topics.topic("alive"), self._alive(False), True))
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
        return self._mqtt is not None

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
        client = self._mqtt
        if client is None:
            return
        # aiomqtt has no API for an unclean drop; shutting the socket down makes paho see EOF and the
        # broker see a connection end without DISCONNECT, which is what a charger losing power does.
        sock = mqtt_socket(client)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore_contact(self) -> None:
        self._contact.set()

    def reconnect(self, gap_s: float = 0.0) -> bool:
        """Disconnect cleanly (DISCONNECT: no will, no ``alive`` offline) after publishing what is
        queued, stay disconnected ``gap_s`` seconds (the session is clean: a ``cmd`` sent meanwhile
        is lost, as with a firmware without a persistent session) and connect again, publishing
        ``alive`` and the state as after any connect (``meter_mode`` decides which meters).
        Returns ``False`` (nothing done) when not connected."""
        if not (math.isfinite(gap_s) and gap_s >= 0):
            raise ValueError(f"gap {gap_s!r}: expected seconds >= 0")
        if self._mqtt is None:
            return False
        self._reconnect_gap_s = gap_s
        self._reconnect.set()
        return True

    def redeliver(self) -> bool:
        """Republish the last ``alive``, then per connector the last ``plug`` and ``status`` (in
        ``plug_order``) and, when ``meter_retain``, the last ``meter``, retained and byte for byte
        (same ``ts``): what the agent sees on a broker session resume or a firmware restart that
        replays its state. A connector without a meter published yet gets none. Returns ``False``
        (nothing done) when not connected."""
        if self._mqtt is None:
            return False
        topics = [self.topics.topic("alive")]
        for c in self._connectors.values():
            topics += [self.topics.topic(name, c.connector_id) for name in self._plug_status_order()]
            if self.habits.meter_retain:
                topics.append(self.topics.topic("meter", c.connector_id))
        for topic in topics:
            last = self._last.get(topic)
            if last is not None:
                self._outbox.put_nowait(replace(last, retain=True))
        return True

    def set_habits(self, **changes: Any) -> ChargerHabits:
        """Change habits at run time (keyword arguments as in the constructor); returns the new
        profile. Giving ``seed`` reseeds the duplicate RNG (even with the same seed). Switching
        ``meter_retain`` off leaves an earlier retained ``meter`` on the broker."""
        return self._adopt(replace(self.habits, **changes), reseed="seed" in changes)

    def _adopt(self, habits: ChargerHabits, *, reseed: bool) -> ChargerHabits:
        if habits.seed is None:
            raise ValueError("seed: expected an integer")
        if reseed:
            self._rng.seed(habits.seed)
        if habits.meter_interval_s != self.habits.meter_interval_s:
            self._timer_changed.set()
        self.habits = habits
        return habits

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
            session_energy_wh=int(c.energy_wh) - c.session_start_wh,
            session_start_wh=c.session_start_wh,
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
        was_plugged, was_status, was_flowing = c.plugged, c.status, self._flowing_w(c) > 0
        for name, value in changes.items():
            setattr(c, name, value)
        if "plugged" in changes and not c.plugged:  # unplug ends the session
            c.enabled = c.was_enabled = c.ev_paused = False
            c.max_current_a = None
        if changes.get("fault") is not None:  # the contactor opens; a fresh enable is needed
            c.enabled = False
        c.status = self._status_of(c)
        plug_changed = c.plugged != was_plugged
        if plug_changed and c.plugged:
            c.session_start_wh = int(c.energy_wh)
        send_status = c.status != was_status or (plug_changed and self.habits.status_on_plug)
        for name in self._plug_status_order():
            if name == "plug" and plug_changed:
                self._queue_plug(c)
            elif name == "status" and send_status:
                self._queue_status(c)
        mode = self.habits.meter_mode
        if mode is MeterMode.ALWAYS or (
            mode is MeterMode.FLOWING and (was_flowing or self._flowing_w(c) > 0)  # incl. the final value
        ):
            self._queue_meter(c)

    # -- MQTT ------------------------------------------------------------------------------------

    def _alive(self, online: bool) -> bytes:
        if online:
            return self._encoder.encode(AlivePayload(online=True, ts=format_ts(self._clock())))
        return self._encoder.encode(AlivePayload(online=False))

    def _plug_status_order(self) -> tuple[str, str]:
        return ("plug", "status") if self.habits.plug_order is PlugOrder.PLUG_FIRST else ("status", "plug")

    def _queue(self, message: _Outgoing) -> None:
        self._last[message.topic] = message
        self._outbox.put_nowait(message)

    def _queue_plug(self, c: _Connector) -> None:
        payload = PlugPayload(plugged=c.plugged, ts=format_ts(self._clock()))
        self._queue(_Outgoing(self.topics.topic("plug", c.connector_id), self._encoder.encode(payload), True))

    def _queue_status(self, c: _Connector) -> None:
        payload = StatusPayload(state=c.status, fault=c.fault, ts=format_ts(self._clock()))
        self._queue(
            _Outgoing(self.topics.topic("status", c.connector_id), self._encoder.encode(payload), True)
        )

    def _queue_meter(self, c: _Connector) -> None:
        payload = _MeterOut(
            energy_wh=int(c.energy_wh),
            power_w=self._flowing_w(c) if self.habits.report_power else msgspec.UNSET,
            current_a=round(self._flowing_w(c) / (NOMINAL_VOLTAGE_V * self._phases), 2)
            if self.habits.report_current
            else msgspec.UNSET,
            ts=format_ts(self._clock()),
            signed=None,
        )
        topic = self.topics.topic("meter", c.connector_id)
        self._queue(_Outgoing(topic, self._encoder.encode(payload), self.habits.meter_retain))

    def _meter_due(self, c: _Connector, *, timer: bool) -> bool:
        """Whether ``c`` reports its meter on the timer (``timer``) or after a connect."""
        mode = self.habits.meter_mode
        if mode is MeterMode.FLOWING:
            return self._flowing_w(c) > 0
        if mode is MeterMode.PERIODIC:
            return timer and c.plugged
        return c.plugged or not timer  # always: every connector after a connect

    async def _run_meter(self) -> None:
        while True:
            self._timer_changed.clear()
            try:
                async with asyncio.timeout(self.habits.meter_interval_s):
                    await self._timer_changed.wait()
                continue  # a new meter_interval_s: start the wait again with it
            except TimeoutError:
                pass
            self.meter_ticks += 1
            now = self._monotonic()
            for c in self._connectors.values():
                self._accrue(c, now)
                if self._meter_due(c, timer=True):
                    self._queue_meter(c)

    async def _run_mqtt(self) -> None:
        will = aiomqtt.Will(self.topics.topic("alive"), self._alive(False), qos=QOS, retain=True)
        while True:
            await self._contact.wait()
            clean = False
            client = aiomqtt.Client(
                self._host,
                self._port,
                identifier=self._identifier,
                will=will,
                keepalive=self._keepalive_s,
                clean_session=True,
                timeout=5,
                socket_options=NO_DELAY,  # like the bridge: no Nagle delay behind an unacked packet
                max_inflight_messages=PUBLISH_WINDOW,  # paho's own limit (default 20) as wide
            )
            client.pending_calls_threshold = PUBLISH_WINDOW  # aiomqtt warns above it (default 10)
            try:
                async with client:
                    await client.subscribe(
                        [(self.topics.subscription("cmd"), QOS), (self.topics.subscription("payment"), QOS)]
                    )
                    # a fresh state on every (re)connect, alive first; older queued messages are stale.
                    # Queued in one synchronous step: no timer meter or control change gets in between.
                    while not self._outbox.empty():
                        self._outbox.get_nowait()
                        self._outbox.task_done()
                    self._reconnect.clear()
                    self._accrue_all()
                    self._queue(_Outgoing(self.topics.topic("alive"), self._alive(True), True))
                    for c in self._connectors.values():
                        for name in self._plug_status_order():
                            (self._queue_plug if name == "plug" else self._queue_status)(c)
                        if self._meter_due(c, timer=False):
                            self._queue_meter(c)
                    self._mqtt = client
                    self.connects += 1
                    _LOGGER.info("charger simulator connected to %s", self.broker_url)
                    async with asyncio.TaskGroup() as group:
                        group.create_task(
                            self._publish(client, group), name=f"charger-sim-publish[{self._identifier}]"
                        )
                        group.create_task(
                            self._announce_connected(), name=f"charger-sim-announce[{self._identifier}]"
                        )
                        group.create_task(
                            self._await_reconnect(), name=f"charger-sim-reconnect[{self._identifier}]"
                        )
                        async for message in client.messages:
                            if self.topics.match(message.topic.value, ("payment",)) is not None:
                                self._on_payment(message)
                            else:
                                self._on_command(message)
            except* _CleanReconnect:
                clean = True
                _LOGGER.info("charger simulator reconnects to %s (clean disconnect)", self.broker_url)
            except* aiomqtt.MqttError as group_error:
                _LOGGER.info("charger simulator link to %s down: %s", self.broker_url, group_error.exceptions)
            finally:
                retrieve_disconnect_error(client)
                self._mqtt = None
                self._connected.clear()
            if clean:
                await asyncio.sleep(self._reconnect_gap_s)
            elif self._contact.is_set():
                await asyncio.sleep(self._reconnect_delay_s)

    async def _announce_connected(self) -> None:
        """Set :meth:`wait_connected` once alive and the fresh state are published (acknowledged)."""
        await self._outbox.join()
        self._connected.set()

    async def _await_reconnect(self) -> None:
        """On :meth:`reconnect`: let the queue drain (bounded), then end the connection cleanly."""
        await self._reconnect.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._outbox.join()
        raise _CleanReconnect

    async def _send(self, client: aiomqtt.Client, message: _Outgoing) -> None:
        """Publish one message (QoS 1) and wait for its PUBACK; with probability ``duplicate_rate``
        publish the same message again (the last ``alive`` of :meth:`close`)."""
        await client.publish(message.topic, message.payload, qos=QOS, retain=message.retain)
        self.published += 1
        rate = self.habits.duplicate_rate
        if rate > 0 and self._rng.random() < rate:
            await client.publish(message.topic, message.payload, qos=QOS, retain=message.retain)
            self.published += 1
            self.duplicates += 1

    async def _publish(self, client: aiomqtt.Client, group: asyncio.TaskGroup) -> None:
        """Publish the queue in order (QoS 1), up to ``PUBLISH_WINDOW`` messages awaiting their
        PUBACK at once; with probability ``duplicate_rate`` a message is published twice in a row.

        Order: every copy is a task of the connection's ``group``, created here in queue order. Its
        first step is paho's ``publish`` (``aiomqtt.Client.publish`` calls it before it awaits
        anything), which writes the PUBLISH to the one connection — or, beyond paho's in-flight
        limit, queues it in call order — and first steps run in creation order (``call_soon`` is
        FIFO): the broker receives the messages in queue order, a duplicate right after its
        original. A message is done (``task_done``: :meth:`asyncio.Queue.join` waits for the
        acknowledgements) once each of its copies is acknowledged or failed. A failed publish (the
        client's 5 s timeout, the link down) raises out of ``group`` and ends the connection, as
        when the messages were published one after the other.
        """
        window = asyncio.Semaphore(PUBLISH_WINDOW)
        queued = 0
        while True:
            message = await self._outbox.get()
            try:
                await window.acquire()
            except BaseException:
                self._outbox.task_done()
                raise
            rate = self.habits.duplicate_rate
            copies = 2 if rate > 0 and self._rng.random() < rate else 1
            in_flight = _InFlight(copies)
            queued += 1
            for copy in range(copies):  # no await in between: the copies leave one after the other
                task = group.create_task(
                    client.publish(message.topic, message.payload, qos=QOS, retain=message.retain),
                    name=f"charger-sim-publish-{queued}.{copy}[{self._identifier}]",
                )
                task.add_done_callback(partial(self._acknowledged, window, in_flight, copy > 0))

    def _acknowledged(
        self, window: asyncio.Semaphore, in_flight: _InFlight, duplicate: bool, task: asyncio.Task[None]
    ) -> None:
        """A copy's publish ended: counted when acknowledged; the message is done with its last copy."""
        if not task.cancelled() and task.exception() is None:
            self.published += 1
            if duplicate:
                self.duplicates += 1
        in_flight.copies -= 1
        if in_flight.copies == 0:
            window.release()
            self._outbox.task_done()

    def _on_payment(self, message: aiomqtt.Message) -> None:
        """A ``payment`` message (agent → charger): validated and recorded as received (what the
        charger's OCPP stack would turn into TransactionEvent / NotifySettlement, docs/ocpp21.md)."""
        topic = message.topic.value
        matched = self.topics.match(topic, ("payment",))
        connector_id = parse_connector(matched[1], self._known) if matched else None
        raw = message.payload
        try:
            if connector_id is None:
                raise ValueError("unknown connector")
            if not isinstance(raw, bytes | bytearray):
                raise ValueError("payload is not bytes")
            payload = self._payment_decoder.decode(bytes(raw))
        except (ValueError, msgspec.DecodeError) as exc:  # msgspec errors are ValueErrors
            self.invalid_payments += 1
            _LOGGER.warning("charger simulator: invalid payment on %s: %s", topic, exc)
            return
        self.payments.append(PaymentRecord(connector_id, bool(message.retain), msgspec.to_builtins(payload)))
        _LOGGER.info(
            "charger simulator: connector %s payment %s session=%s psp_ref=%s retained=%s",
            connector_id,
            payload.event,
            payload.session_id,
            payload.psp_ref,
            bool(message.retain),
        )

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
        if verb == "payments":
            if len(args) > 1:
                raise ValueError("usage: payments [C]")
            wanted = self._connector_arg(verb, args) if args else None
            return json.dumps(
                [r.as_dict() for r in self.payments if wanted is None or r.connector_id == wanted],
                separators=(",", ":"),
            )
        if verb == "habits":
            if args:
                raise ValueError("usage: habits")
            return json.dumps(self.habits.as_dict(), separators=(",", ":"))
        if verb == "habit":
            if len(args) != 2:
                raise ValueError("usage: habit NAME VALUE (try habits)")
            reseed = args[0].replace("-", "_").lower() == "seed"
            self._adopt(self.habits.with_text(args[0], args[1]), reseed=reseed)
            return "ok"
        if verb == "reconnect":
            if len(args) > 1:
                raise ValueError("usage: reconnect [S]")
            try:
                gap_s = float(args[0]) if args else 0.0
            except ValueError:
                raise ValueError(f"gap {args[0]!r}: expected seconds") from None
            return "ok" if self.reconnect(gap_s) else "ok: not connected, nothing done"
        if verb in ("lose", "restore", "redeliver", "quit"):
            if args:
                raise ValueError(f"usage: {verb}")
            if verb == "lose":
                self.lose_contact()
            elif verb == "restore":
                self.restore_contact()
            elif verb == "redeliver":
                return "ok" if self.redeliver() else "ok: not connected, nothing done"
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
        task.set_name(f"charger-sim-control-client[{self._identifier}]")
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
