"""The defects of the integrity issue, each shown against the real ``evpay-agent run`` process.

1. ``session.started`` is published when the charger sent no meter value before the session started
   (a charger that reports energy only once it flows: the meter register at start is unknown).
2. ``payment.authorized`` survives a kill right after the approval was journaled (journal row and
   outbox row of one step are one transaction).
3. A resumed session publishes no second ``session.started``; the restart is a ``session.updated``
   with reason ``resumed``, after the start and before the end.
4. An Apollo screen longer than the normal block format (home screen with the tariff) is shown.
5. A card tapped just after a restart, while the charger's retained plug state is still on its way,
   is not refused with "plug in first": card reads wait until the charger's state is applied.
6. An approval the journal never saw (killed between Session Approved and the journal write) raises
   an alarm with the masked PAN, amount, time and session reference, and is a reconciliation
   discrepancy until an operator clears it.

(Defect 7, an undecodable reply, is shown at the driver level: tests/psp/test_defect_undecodable_reply.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest

from tests.e2e.conftest import StationFactory
from tests.e2e.harness import Station, wait_until
from tests.e2e.test_commands_rfid import BackOffice
from tests.mosquitto import Broker

pytestmark = [pytest.mark.usefixtures("requires_agent"), pytest.mark.timeout(90)]

POWER_W = 360_000  # 100 Wh per second


def card(n: int) -> dict[str, str]:
    return {"hash": f"{n:040X}", "pan": f"476173******{n:04d}", "brand": "VISA"}


# --- the back office's view: everything the agent publishes ------------------------------------------


@dataclass
class Recorder:
    """Subscribes ``{prefix}/#`` on the station's broker and keeps every message (JSON payloads)."""

    broker: Broker
    prefix: str
    messages: list[tuple[str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run(), name="recorder")
        async with asyncio.timeout(5):
            await self._ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    identifier=f"recorder-{uuid.uuid4()}",
                ) as client:
                    await client.subscribe(f"{self.prefix}/#", qos=1)
                    self._ready.set()
                    async for message in client.messages:
                        raw = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                        try:
                            payload = json.loads(raw) if raw else None
                        except ValueError:
                            payload = None
                        self.messages.append((str(message.topic), payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def events(self, session_id: str | None = None) -> list[dict[str, Any]]:
        out = [
            p
            for t, p in self.messages
            if "/events" in t
            and isinstance(p, dict)
            and (session_id is None or p.get("session_id") == session_id)
        ]
        return out

    def names(self, session_id: str) -> list[str]:
        unique: dict[str, dict[str, Any]] = {}
        for e in self.events(session_id):
            unique.setdefault(str(e.get("msg_id")), e)
        return [str(e["event"]) for e in sorted(unique.values(), key=lambda e: int(e["seq"]))]

    def alarms(self, name: str) -> list[dict[str, Any]]:
        return [
            p
            for t, p in self.messages
            if t.endswith("/alarms") and isinstance(p, dict) and p.get("alarm") == name
        ]


def prefix_of(st: Station) -> str:
    return str(st.config["upstream"]["prefix"]).format(station_id=st.station_id)


@contextlib.asynccontextmanager
async def recording(st: Station) -> AsyncIterator[Recorder]:
    async with Recorder(st.broker, prefix_of(st)) as rec:
        yield rec


def session_ids(rec: Recorder) -> list[str]:
    seen: list[str] = []
    for e in rec.events():
        sid = str(e.get("session_id"))
        if sid not in seen:
            seen.append(sid)
    return seen


async def wait_event(rec: Recorder, st: Station, name: str, *, within: float = 10.0) -> dict[str, Any]:
    async def fetch() -> list[dict[str, Any]]:
        return [e for e in rec.events() if e.get("event") == name]

    found = await wait_until(fetch, bool, what=f"upstream {name}", within=within, check=st.agent.check_alive)
    return found[0]


# --- a charger that follows only docs/charger-bridge.md and reports energy only once it flows --------


class FlowOnlyCharger:
    """A minimal charger firmware: retained alive/plug/status, meter values only while energy flows."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.broker = broker
        self.prefix = prefix
        self.energy_wh = 1_000_000
        self.plugged = False
        self.enabled = False
        self._mqtt: aiomqtt.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> FlowOnlyCharger:
        will = aiomqtt.Will(f"{self.prefix}/alive", json.dumps({"online": False}), qos=1, retain=True)
        self._mqtt = aiomqtt.Client(
            self.broker.host, self.broker.port, identifier=f"flow-charger-{uuid.uuid4()}", will=will
        )
        await self._mqtt.__aenter__()
        await self._mqtt.subscribe(f"{self.prefix}/+/cmd", qos=1)
        await self._pub("alive", {"online": True}, retain=True)
        await self._pub("1/plug", {"plugged": False}, retain=True)
        await self._pub("1/status", {"state": "idle", "fault": None}, retain=True)
        self._tasks = [
            asyncio.create_task(self._commands(), name="flow-charger-cmd"),
            asyncio.create_task(self._meter(), name="flow-charger-meter"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert self._mqtt is not None
        for topic in ("alive", "1/plug", "1/status"):
            await self._mqtt.publish(f"{self.prefix}/{topic}", b"", qos=1, retain=True)
        await self._mqtt.__aexit__(None, None, None)

    async def _pub(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        assert self._mqtt is not None
        await self._mqtt.publish(f"{self.prefix}/{topic}", json.dumps(payload), qos=1, retain=retain)

    async def plug(self, plugged: bool) -> None:
        self.plugged = plugged
        if not plugged:
            self.enabled = False
        await self._pub("1/plug", {"plugged": plugged}, retain=True)
        await self._pub("1/status", {"state": "idle", "fault": None}, retain=True)

    async def _commands(self) -> None:
        assert self._mqtt is not None
        async for message in self._mqtt.messages:
            raw = message.payload if isinstance(message.payload, bytes | bytearray) else b"{}"
            action = json.loads(raw).get("action")
            flowing = self.enabled and self.plugged
            self.enabled = action == "enable"
            if self.enabled and self.plugged:
                await self._pub("1/status", {"state": "charging", "fault": None}, retain=True)
            elif flowing:
                await self._pub("1/status", {"state": "suspended_evse", "fault": None}, retain=True)
                await self._pub("1/meter", {"energy_wh": self.energy_wh, "power_w": 0.0})

    async def _meter(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self.enabled and self.plugged:
                self.energy_wh += 10
                await self._pub("1/meter", {"energy_wh": self.energy_wh, "power_w": 360.0})


# --- a slow broker link: broker → client MQTT packets paced apart -------------------------------------


def _mqtt_packets(buffer: bytearray) -> list[bytes]:
    """Cut complete MQTT control packets off the front of ``buffer`` (fixed header: type byte and a
    variable-length "remaining length", MQTT 5 §2.1)."""
    packets: list[bytes] = []
    while len(buffer) >= 2:
        length, multiplier, pos = 0, 1, 1
        while True:
            if pos >= len(buffer):
                return packets
            byte = buffer[pos]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            pos += 1
            if not byte & 0x80:
                break
        end = pos + length
        if len(buffer) < end:
            return packets
        packets.append(bytes(buffer[:end]))
        del buffer[:end]
    return packets


class SlowLink:
    """A TCP relay in front of the broker that delivers the broker's MQTT packets at least
    ``gap_s`` apart (a congested link): the retained ``alive`` arrives well before the plug states."""

    def __init__(self, broker: Broker, gap_s: float) -> None:
        self.broker = broker
        self.gap_s = gap_s
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SlowLink:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro, name="slow-link")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.broker.host, self.broker.port)
        except OSError:
            writer.close()
            return
        self._spawn(self._forward(reader, up_w))
        self._spawn(self._paced(up_r, writer))

    async def _forward(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def _paced(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                buffer += data
                for packet in _mqtt_packets(buffer):
                    await asyncio.sleep(self.gap_s)
                    dst.write(packet)
                    await dst.drain()
        dst.close()


# --- the tests -----------------------------------------------------------------------------------------


@pytest.mark.req("UP-2", "START-2")
async def test_defect1_session_started_without_a_meter_value_before_the_start(
    station_factory: StationFactory, e2e_broker: Broker
) -> None:
    prefix = f"flow{os.getpid()}x{uuid.uuid4().hex[:6]}"
    config = {
        "charger": {"prefix": prefix},
        "session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]},
    }
    async with (
        FlowOnlyCharger(e2e_broker, prefix) as charger,
        station_factory(config=config) as st,
        recording(st) as rec,
    ):
        await charger.plug(True)
        await st.wait_connector(1, ("awaiting_card",))
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(1))
        await st.wait_connector(1, ("charging",))
        await asyncio.sleep(0.5)  # some energy flows
        await charger.plug(False)
        await wait_event(rec, st, "payment.captured")
        await wait_event(rec, st, "session.ended")
        (sid,) = session_ids(rec)
        names = rec.names(sid)
        assert names.count("session.started") == 1, names
        started = next(e for e in rec.events(sid) if e["event"] == "session.started")
        assert started["meter_wh"] is None  # the register was unknown at the start
        assert "upstream event not built" not in st.agent.proc.log_text()


@pytest.mark.req("UP-2", "ERR-5")
async def test_defect2_payment_authorized_survives_a_kill_after_the_approval(
    station_factory: StationFactory,
) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station_factory(config=config, start_agent=False) as st, recording(st) as rec:
        await st.agent.start(crash_at="journal:payment_approved")
        await st.wait_ready()
        await st.charger.power(1, POWER_W)
        await st.charger.plug(1)
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(2))
        await st.agent.wait_exit(10.0)  # killed right after the approval was journaled
        await st.agent.start()
        await st.wait_connector(1, ("charging",), within=10.0)
        await st.wait_energy(1, 100)
        await st.charger.unplug(1)
        await wait_event(rec, st, "session.ended", within=15.0)
        (sid,) = session_ids(rec)
        names = rec.names(sid)
        assert names[0] == "payment.authorized", names
        assert names.count("payment.authorized") == 1, names


@pytest.mark.req("UP-2", "ERR-5")
async def test_defect3_a_resumed_session_is_updated_not_started_again(
    station_factory: StationFactory,
) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station_factory(config=config) as st, recording(st) as rec:
        await st.charger.power(1, POWER_W)
        await st.charger.plug(1)
        await st.wait_connector(1, ("awaiting_card",))
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(3))
        await wait_event(rec, st, "session.started")
        await st.wait_energy(1, 100)
        await st.agent.kill()
        await st.agent.start()
        await st.wait_connector(1, ("charging",), within=10.0)
        await st.wait_energy(1, 100)
        await st.charger.unplug(1)
        await wait_event(rec, st, "session.ended", within=15.0)
        (sid,) = session_ids(rec)
        names = rec.names(sid)
        assert names.count("session.started") == 1, names
        updated = [e for e in rec.events(sid) if e["event"] == "session.updated"]
        assert [e["reason"] for e in updated] == ["resumed"], updated
        assert names.index("session.started") < names.index("session.updated") < names.index("session.ended")


LONG_TARIFF = {
    "currency": "EUR",
    "minor_unit_digits": 2,
    "prices_include_vat": True,
    "vat_rate_percent": "21",
    "energy_per_kwh": "0.39",
    "time_per_minute": "0.05",
    "session_fee": "0.50",
    "idle_fee_per_minute": "0.20",
    "idle_grace_minutes": 15,
    "timezone": "Europe/Amsterdam",
    "bands": [
        {
            "name": "peak",
            "start": "17:00",
            "end": "21:00",
            "weekdays": ["mon", "tue"],
            "energy_per_kwh": "0.49",
        },
        {"name": "night", "start": "23:00", "end": "06:00", "energy_per_kwh": "0.29", "time_per_minute": "0"},
    ],
}


@pytest.mark.req("START-3", "START-8")
async def test_defect4_a_long_apollo_home_screen_is_shown(station_factory: StationFactory) -> None:
    config = {
        "session": {"start_modes": ["ui", "plug_in"], "stop_modes": ["ui", "unplug"]},
        "tariff": LONG_TARIFF,
    }
    async with station_factory(config=config, connectors=3) as st:
        screen = await st.wait_for_screen(
            lambda s: s.get("screen_type") == "selection" or "selection" in json.dumps(s), within=10.0
        )
        text = json.dumps(screen)
        assert "0.39 EUR/kWh" in text  # the tariff is on the home screen (START-8)
        for c in (1, 2, 3):
            assert f"start_{c}" in text
        assert "Traceback" not in st.agent.proc.log_text()


@pytest.mark.req("START-3", "START-8")
async def test_defect4_without_the_extended_format_the_home_screen_is_fitted(
    station_factory: StationFactory,
) -> None:
    """An Apollo that does not grant the extended block format (0x04, psp-reference §5.3): the
    long home screen is fitted into the standard format — the start buttons stay — instead of
    being refused by the terminal; no traceback and at most one WARNING per kind."""
    config = {
        "session": {"start_modes": ["ui", "plug_in"], "stop_modes": ["ui", "unplug"]},
        "tariff": LONG_TARIFF,
    }
    async with station_factory(config=config, connectors=3, psp_args=("--grant-options", "0x1B")) as st:
        screen = await st.wait_for_screen(
            lambda s: s.get("screen_type") == "selection" or "selection" in json.dumps(s), within=10.0
        )
        text = json.dumps(screen)
        for c in (1, 2, 3):
            assert f"start_{c}" in text
        # and a whole paid session shows its screens in the standard format too
        async with recording(st) as rec:
            await st.charger.plug(1)
            await st.wait_connector(1, ("awaiting_card",))
            await st.wait_terminal(("WAIT_CARD",))
            await st.psp.tap_emv(**card(1))
            await st.wait_connector(1, ("charging",))
            await asyncio.sleep(0.5)
            await st.charger.unplug(1)
            await wait_event(rec, st, "payment.captured")
            await wait_event(rec, st, "session.ended")
        log = st.agent.proc.log_text()
        assert "Traceback" not in log
        warnings = [line[3:] for line in log.splitlines() if line.startswith("<4>")]  # agent/logs.py
        kinds = [" ".join(w for w in line.split() if "=" not in w) for line in warnings]
        assert len(kinds) == len(set(kinds)), warnings
        assert not any(line.startswith(("<3>", "<2>")) for line in log.splitlines()), log


@pytest.mark.req("START-1", "ERR-5")
async def test_defect5_a_card_tapped_right_after_a_restart_is_not_refused(
    station_factory: StationFactory, e2e_broker: Broker
) -> None:
    async with SlowLink(e2e_broker, gap_s=0.3) as slow:
        config = {
            "charger": {"broker_url": slow.url},
            "session": {"start_modes": ["tap", "plug_in"], "stop_modes": ["tap", "unplug"]},
        }
        async with station_factory(config=config, connectors=2) as st:
            await st.charger.power(1, POWER_W)
            await st.charger.plug(1)
            await st.wait_connector(1, ("awaiting_card",), within=10.0)
            await st.agent.kill()
            # the simulator sees the link close (a loaded machine may take a moment) …
            await wait_until(st.psp.state, lambda s: not s["connected"], what="the link closed", within=5.0)
            assert await st.psp.tap_emv(**card(5)) == "ok queued"  # … the card waits on the reader
            await st.agent.start()
            await st.wait_connector(1, ("charging",), within=15.0)
            assert "plug_in_first" not in st.agent.proc.log_text()


@pytest.mark.req("ERR-5", "REC-1")
async def test_defect6_an_approval_the_journal_never_saw_raises_an_alarm(
    station_factory: StationFactory,
) -> None:
    config = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station_factory(config=config, start_agent=False) as st, recording(st) as rec:
        await st.agent.start(crash_at="psp_received:SessionApproved")
        await st.wait_ready()
        await st.charger.plug(1)
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_emv(**card(6))
        await st.agent.wait_exit(10.0)
        await st.agent.start()
        await st.wait_ready()

        async def alarms() -> list[dict[str, Any]]:
            return rec.alarms("possible_orphan_approval")

        raised = await wait_until(alarms, bool, what="possible_orphan_approval alarm", within=10.0)
        alarm = raised[0]
        assert alarm["state"] == "raised"
        assert alarm["data"]["masked_pan"] == card(6)["pan"]
        assert alarm["data"]["amount_minor"] == 5000
        assert alarm["session_id"]
        assert alarm["data"]["card_read_at"]
        async with BackOffice(st) as bo:
            await bo.wait_connected()
            await bo.ok("reconcile", correlation_id="rec-1")

            async def reports() -> list[dict[str, Any]]:
                return bo.reports

            (report,) = await wait_until(reports, bool, what="a reconciliation report", within=10.0)
            kinds = [d["kind"] for d in report["discrepancies"]]
            assert "possible_orphan_approval" in kinds, report["discrepancies"]
            # it stays a discrepancy until an operator clears it
            result = await bo.command(
                "clear_discrepancy", session_id=alarm["session_id"], note="voided in portal"
            )
            assert result["status"] == "accepted", result
            again = await bo.command("clear_discrepancy", session_id=alarm["session_id"])
            assert again["status"] == "rejected", again  # already cleared
            bo.reports.clear()
            await bo.ok("reconcile", correlation_id="rec-2")
            (report,) = await wait_until(reports, bool, what="a second reconciliation report", within=10.0)
            assert "possible_orphan_approval" not in [d["kind"] for d in report["discrepancies"]]
            cleared = await wait_until(
                alarms,
                lambda a: any(x["state"] == "cleared" for x in a),
                what="the alarm cleared",
                within=5.0,
            )
            assert cleared[-1]["session_id"] == alarm["session_id"]
