"""The agent's upstream as the back office sees it: the real ``evpay-agent run`` process (the e2e
harness: PSP and charger simulators as processes) publishing to its **own** Mosquitto, separate
from the charger's broker, so that a test can stop the upstream broker while charging goes on.

Covers UP-1 (birth/LWT, retained state, every payload valid against docs/asyncapi.yaml), UP-2 and
ERR-6 (outbox, ``msg_id``/``seq``/``offline``, an outage with an agent crash in the middle), UP-4
(TLS with a client certificate; a wrong CA refused with a clear log line) and RCPT-1 (receipts).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import msgspec
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from agent.upstream import contract
from tests.e2e.harness import ACTIVE_STATIONS, Station, StationOptions, agent_missing_reason, wait_until
from tests.mosquitto import Broker, TlsMaterial, find_mosquitto, find_openssl, make_ca, make_tls_material

pytestmark = [pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
POWER_W = 360_000  # 100 Wh/s
_URI = "urn:evpay:asyncapi"
_PAN_LIKE = re.compile(rb"(?<![0-9])[0-9]{13,19}(?![0-9])")


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def charger_broker() -> Iterator[Broker]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    reason = agent_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    broker = Broker()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def upstream_broker() -> Iterator[Broker]:
    broker = Broker()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="module")
def asyncapi() -> Any:
    return yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"))


@contextlib.asynccontextmanager
async def station(
    workdir: Path,
    charger_broker: Broker,
    upstream_url: str,
    *,
    connectors: int = 1,
    check_stream: bool = True,
    **config: Any,
) -> AsyncIterator[Station]:
    """A station whose agent publishes to ``upstream_url``; its stream is captured and checked
    (``check_stream``: False only where the agent cannot reach the broker by design)."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (test setup, instant)
    merged: dict[str, Any] = {"upstream": {"broker_url": upstream_url}, **config}
    if "upstream_extra" in merged:
        merged["upstream"].update(merged.pop("upstream_extra"))
    options = StationOptions(connectors=connectors, config=merged, check_stream=check_stream)
    st = Station(workdir, charger_broker, options)
    ACTIVE_STATIONS.append(st)
    try:
        async with st:
            yield st
    finally:
        ACTIVE_STATIONS.remove(st)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.time() at arrival


@dataclass
class Subscriber:
    """Subscribes ``{prefix}/#`` and keeps every message; reconnects (clean) after broker restarts."""

    broker: Broker
    prefix: str
    tls: ssl.SSLContext | None = None
    messages: list[Received] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    tls_context=self.tls,
                    identifier=f"backoffice-{id(self)}",
                ) as client:
                    await client.subscribe(f"{self.prefix}/#", qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes | bytearray)
                        self.messages.append(
                            Received(message.topic.value, bytes(payload), bool(message.retain), time.time())
                        )
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.02)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic == f"{self.prefix}/{suffix}"]

    def json(self, suffix: str) -> list[dict[str, Any]]:
        return [msgspec.json.decode(m.payload) for m in self.on(suffix)]

    def events(self, connector: int) -> list[dict[str, Any]]:
        return self.json(f"connectors/{connector}/events")


@contextlib.asynccontextmanager
async def subscribed(
    broker: Broker, prefix: str, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Subscriber]:
    sub = Subscriber(broker, prefix, tls)
    task = asyncio.create_task(sub.run(), name="test-backoffice-subscriber")
    try:
        await asyncio.wait_for(sub.connected.wait(), 5)
        yield sub
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def prefix_of(st: Station) -> str:
    return f"e2e/{st.station_id}"


async def until(pred: Any, what: str, st: Station | None = None, within: float = 15.0) -> None:
    async def fetch() -> bool:
        return bool(pred())

    await wait_until(fetch, bool, what=what, within=within, check=st.agent.check_alive if st else None)


async def charge(st: Station, c: int, card: int) -> None:
    """Plug in, tap card ``card``, wait until energy flows."""
    before = {s["session_id"] for s in await st.psp.sessions()}
    await st.charger.power(c, POWER_W)
    await st.charger.plug(c)
    await st.wait_connector(c, ("awaiting_card",), within=10)  # the agent saw the plug-in
    await st.wait_terminal(("WAIT_CARD",), within=10)
    await st.psp.tap_emv(hash=f"{card:040X}", pan=f"476173******{card:04d}")
    await st.wait_sim_sessions(lambda ss: any(s["session_id"] not in before for s in ss), what="approved")
    await st.wait_energy(c, 100)


# --- checks ------------------------------------------------------------------------------------------


def _schema_and_type(prefix: str, topic: str, body: dict[str, Any]) -> tuple[str, type[msgspec.Struct]]:
    suffix = topic[len(prefix) + 1 :]
    parts = suffix.split("/")
    if suffix == "status":
        return (
            ("StatusOnline", contract.StatusOnline)
            if body["state"] == "online"
            else (
                "StatusOffline",
                contract.StatusOffline,
            )
        )
    if suffix == "terminal":
        return "TerminalState", contract.TerminalState
    if suffix == "receipts":
        return "Receipt", contract.Receipt
    if suffix == "alarms":
        return "Alarm", contract.Alarm
    if parts[0] == "connectors" and parts[2] == "state":
        return "ConnectorState", contract.ConnectorState
    if parts[0] == "connectors" and parts[2] == "meter":
        return "MeterValue", contract.MeterValue
    if parts[0] == "connectors" and parts[2] == "events":
        cls = contract.EVENT_TYPES[body["event"]]
        return cls.__name__, cls
    raise AssertionError(f"unexpected topic {topic}")


def assert_contract(sub: Subscriber, doc: Any) -> None:
    """Every payload decodes as its agent.contract type and validates against docs/asyncapi.yaml; no
    PAN-like digit run anywhere."""
    registry: Registry[Any] = Registry().with_resource(_URI, DRAFT202012.create_resource(doc))
    assert sub.messages
    for m in sub.messages:
        assert not _PAN_LIKE.search(m.payload), m.topic
        body = msgspec.json.decode(m.payload)
        name, cls = _schema_and_type(sub.prefix, m.topic, body)
        msgspec.json.decode(m.payload, type=cls)
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"{_URI}#/components/schemas/{name}"}, registry=registry
        )
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (m.topic, errors, body)


def dedupe(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First arrival of every ``msg_id``; a repeat must be the very same message."""
    seen: dict[str, dict[str, Any]] = {}
    out = []
    for item in items:
        first = seen.get(item["msg_id"])
        if first is None:
            seen[item["msg_id"]] = item
            out.append(item)
        else:
            assert first == item, (first, item)
    return out


def assert_sequences(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per session: ``seq`` 0, 1, 2, … in arrival order (after de-duplication), no gap."""
    by_session: dict[str, list[dict[str, Any]]] = {}
    for item in dedupe(items):
        by_session.setdefault(item["session_id"], []).append(item)
    for sid, seq_items in by_session.items():
        assert [i["seq"] for i in seq_items] == list(range(len(seq_items))), (sid, seq_items)
    return by_session


# --- tests -------------------------------------------------------------------------------------------


@pytest.mark.req("UP-1", "UP-2", "RCPT-1")
async def test_birth_retained_state_session_events_receipt_and_lwt(
    tmp_path: Path, charger_broker: Broker, upstream_broker: Broker, asyncapi: Any
) -> None:
    config: dict[str, Any] = {"session": {"start_modes": ["tap", "plug_in"], "stop_modes": ["tap", "unplug"]}}
    async with station(tmp_path / "st", charger_broker, upstream_broker.url, **config) as st:
        prefix = prefix_of(st)
        async with subscribed(upstream_broker, prefix) as sub:
            await until(
                lambda: sub.json("status")[-1:] and sub.json("status")[-1]["state"] == "online", "birth"
            )
            await until(lambda: any(t["link"] == "ready" for t in sub.json("terminal")), "terminal ready", st)
            await until(lambda: sub.json("connectors/1/state"), "connector state", st)
            await charge(st, 1, 1)
            await until(lambda: len(sub.json("connectors/1/meter")) >= 2, "meter values", st)
            await st.charger.unplug(1)
            await until(
                lambda: any(e["event"] == "session.ended" for e in sub.events(1)) and sub.json("receipts"),
                "session.ended and the receipt",
                st,
            )
            events = sub.events(1)
            (session,) = assert_sequences(events).values()
            names = [e["event"] for e in session]
            assert names == ["payment.authorized", "session.started", "payment.captured", "session.ended"]
            assert all(not e["offline"] for e in session)
            assert_sequences(sub.json("connectors/1/meter"))
            (receipt,) = sub.json("receipts")
            captured = session[2]
            assert receipt["status"] == "captured"
            assert receipt["session_id"] == session[0]["session_id"]
            assert receipt["captured_minor"] == captured["amount_minor"] == receipt["total_minor"] > 0
            assert receipt["masked_pan"] == "476173******0001"
            assert receipt["energy_wh"] == session[3]["energy_wh"] > 0
            await until(lambda: sub.json("connectors/1/state")[-1]["state"] == "available", "available", st)
            # retained state: a new subscriber gets status, terminal and connector state at once
            async with subscribed(upstream_broker, prefix) as late:
                await until(
                    lambda: (
                        {m.topic.rsplit("/", 1)[-1] for m in late.messages if m.retain}
                        >= {"status", "terminal", "state"}
                    ),
                    "retained status, terminal and connector state",
                )
            assert_contract(sub, asyncapi)
            # LWT: SIGKILL → the broker publishes the will; the retained status turns offline
            await st.agent.kill()
            await until(lambda: sub.json("status")[-1]["state"] == "offline", "the last will")
            async with subscribed(upstream_broker, prefix) as after:
                await until(lambda: after.json("status"), "retained status")
                assert after.json("status") == [{"state": "offline"}]


@pytest.mark.req("UP-2", "ERR-6", "RCPT-1")
async def test_outage_with_agent_crash_delivers_everything_in_order(
    tmp_path: Path, charger_broker: Broker, upstream_broker: Broker, asyncapi: Any
) -> None:
    config: dict[str, Any] = {"session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"]}}
    async with station(tmp_path / "st", charger_broker, upstream_broker.url, connectors=2, **config) as st:
        prefix = prefix_of(st)
        async with subscribed(upstream_broker, prefix) as sub:
            await charge(st, 1, 11)
            await charge(st, 2, 12)
            await until(lambda: len(sub.json("connectors/2/meter")) >= 1, "meter values online", st)
            # outage: the broker goes away; charging goes on; the agent crashes and restarts
            outage_start = time.time()
            upstream_broker.stop()
            await asyncio.sleep(1.5)
            await st.agent.kill()
            await st.agent.start()
            await st.wait_energy(1, 100)  # resumed (ERR-5) while the broker is still down
            await st.charger.unplug(1)  # settles during the outage
            await st.wait_session_status("committed", count=1, within=15)
            await asyncio.sleep(1.0)
            outage_end = time.time()
            upstream_broker.start()
            await asyncio.wait_for(sub.connected.wait(), 5)
            await st.charger.unplug(2)
            await st.wait_session_status("committed", count=2, within=15)
            await until(
                lambda: (
                    sum(e["event"] == "session.ended" for c in (1, 2) for e in sub.events(c)) == 2
                    and len(sub.json("receipts")) >= 2
                ),
                "both sessions ended and their receipts",
                st,
                within=40,  # the agent's reconnect backoff after the outage
            )
        journal = {p["payment_id"]: p for p in await st.agent.sessions()}
        for c in (1, 2):
            (session,) = assert_sequences(sub.events(c)).values()
            names = [e["event"] for e in session]
            assert names[:2] == ["payment.authorized", "session.started"], names
            assert "session.updated" in names  # the restart said so (ERR-5)
            assert names[-2:] == ["payment.captured", "session.ended"], names
            meters = assert_sequences(sub.json(f"connectors/{c}/meter"))
            (values,) = meters.values()
            # every meter value, in order: the register only grows; the last one is the journal's
            registers = [v["meter_wh"] for v in values]
            assert registers == sorted(registers)
            assert values[-1]["energy_wh"] == journal[session[0]["session_id"]]["energy_wh"]
            for item in [*session, *values]:
                ts = contract_time(item["ts"])
                if outage_start + 0.5 < ts < outage_end:
                    assert item["offline"] is True, item
                elif ts < outage_start - 0.5:
                    assert item["offline"] is False, item
        ended_offline = [e for e in sub.events(1) if e["event"] == "session.ended"]
        assert ended_offline[0]["offline"] is True
        offline_meters = [v for c in (1, 2) for v in sub.json(f"connectors/{c}/meter") if v["offline"]]
        assert len(offline_meters) >= 4, offline_meters  # ≥ 1 s of outage on two connectors at 1 Hz
        receipts = dedupe(sub.json("receipts"))
        assert sorted(r["connector_id"] for r in receipts) == [1, 2]
        assert all(r["status"] == "captured" for r in receipts)
        assert_contract(sub, asyncapi)


def contract_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.req("UP-4")
async def test_tls_with_client_certificate_and_wrong_ca_refused(
    tmp_path: Path, charger_broker: Broker
) -> None:
    if find_openssl() is None:
        pytest.skip("openssl CLI not found")
    material: TlsMaterial = make_tls_material(tmp_path / "pki")
    other_ca, _ = make_ca(tmp_path / "other", "other")
    broker = Broker(tls=material, require_certificate=True)
    broker.start()
    try:
        context = ssl.create_default_context(cafile=str(material.ca_cert))
        context.load_cert_chain(str(material.client_cert), str(material.client_key))
        good = {"ca_file": str(material.ca_cert), "cert_file": str(material.client_cert),
                "key_file": str(material.client_key)}  # fmt: skip
        bad = {**good, "ca_file": str(other_ca)}
        good_station = station(tmp_path / "good", charger_broker, broker.url, upstream_extra={"tls": good})
        async with good_station as st, subscribed(broker, prefix_of(st), tls=context) as sub:
            await until(
                lambda: sub.json("status")[-1:] and sub.json("status")[-1]["state"] == "online",
                "birth over TLS",
                st,
            )
        # no capture: with the wrong CA the agent never reaches the broker, and a back office with the
        # agent's (wrong) CA could not either
        bad_station = station(
            tmp_path / "bad", charger_broker, broker.url, check_stream=False, upstream_extra={"tls": bad}
        )
        async with bad_station as st:
            await until(
                lambda: "TLS verification of broker" in st.agent.proc.log_text(),
                "a clear TLS verification error in the log",
                st,
            )
            assert str(other_ca) in st.agent.proc.log_text()
            await st.wait_ready()  # the terminal side is not affected (ERR-6)
    finally:
        broker.close()
