"""The upstream MQTT client against a real Mosquitto (agent/upstream/client.py; DESIGN.md §5.3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.store.outbox import Outbox
from agent.upstream.client import InboundMessage, UpstreamClient, UpstreamNotConnected
from drivers.mqtt_internals import paho_client
from tests.mosquitto import (
    Broker,
    TlsMaterial,
    find_mosquitto,
    find_mosquitto_passwd,
    find_openssl,
    make_ca,
    make_password_file,
    make_tls_material,
)

STATION = "st-1"
PREFIX = f"evpay/v1/{STATION}"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


def make_client(broker: Broker, outbox: Outbox | None = None, **kwargs: Any) -> UpstreamClient:
    options: dict[str, Any] = {
        "broker_url": broker.url,
        "station_id": STATION,
        "outbox": outbox,
        "client_id": f"agent-{uuid.uuid4().hex[:8]}",
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.3,
        "connect_timeout_s": 3.0,
        "publish_timeout_s": 3.0,
        "rng": random.Random(7),
    }
    options.update(kwargs)
    return UpstreamClient(**options)


@contextlib.asynccontextmanager
async def running(client: UpstreamClient) -> AsyncIterator[UpstreamClient]:
    await client.start()
    try:
        yield client
    finally:
        await client.close()


class Collector:
    """A plain aiomqtt subscriber recording what the broker delivers."""

    def __init__(self, broker: Broker, topic_filter: str = f"{PREFIX}/#", **client_kwargs: Any) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.client_kwargs = client_kwargs
        self.messages: list[tuple[str, bytes, bool]] = []
        self._changed = asyncio.Event()
        self._mqtt: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._mqtt = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=f"collector-{uuid.uuid4().hex[:8]}",
            **self.client_kwargs,
        )
        await self._mqtt.__aenter__()
        await self._mqtt.subscribe(self.topic_filter, qos=1)
        self._task = asyncio.create_task(self._collect(self._mqtt), name="test-collector")
        return self

    async def _collect(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                self.messages.append((message.topic.value, payload, bool(message.retain)))
                self._changed.set()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._mqtt is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._mqtt.__aexit__(None, None, None)

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


async def retained_now(broker: Broker, topic: str, **client_kwargs: Any) -> bytes | None:
    """The retained message of ``topic`` as a new subscriber sees it (None when there is none)."""
    async with Collector(broker, topic, **client_kwargs) as collector:
        with contextlib.suppress(TimeoutError):
            await collector.wait_for(lambda: bool(collector.messages), 1.0)
    retained = [p for _, p, r in collector.messages if r]
    return retained[-1] if retained else None


async def poll(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls plain attributes (stats, outbox count)
            await asyncio.sleep(0.01)


def event(n: int, *, offline: bool = False) -> bytes:
    return json.dumps({"msg_id": str(uuid.UUID(int=n)), "n": n, "seq": n, "offline": offline}).encode()


def check_in_order_without_gaps(payloads: list[bytes], total: int) -> None:
    """Every message arrived; first arrivals in order; a repeat is the same bytes (same msg_id)."""
    seen: dict[str, bytes] = {}
    order: list[int] = []
    for raw in payloads:
        body = json.loads(raw)
        if body["msg_id"] in seen:
            assert seen[body["msg_id"]] == raw
            continue
        seen[body["msg_id"]] = raw
        order.append(body["n"])
    assert order == list(range(total))


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "agent.db")
    yield box
    box.close()


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    if find_openssl() is None:
        pytest.skip("openssl CLI not installed")
    return make_tls_material(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------------------------------


@pytest.mark.req("UP-1")
async def test_birth_retained_and_retained_state_published(mosquitto: Broker) -> None:
    client = make_client(mosquitto, version="9.9.9")
    client.set_retained(f"{PREFIX}/connectors/1/state", b'{"state":"available"}')
    async with running(client):
        await client.wait_connected(5)
        client.set_retained(f"{PREFIX}/terminal", b'{"link":"ready"}')
        await poll(lambda: client.stats.retained_published >= 2)
        status = await retained_now(mosquitto, f"{PREFIX}/status")
        assert status is not None
        body = json.loads(status)
        assert body["state"] == "online"
        assert body["version"] == "9.9.9"
        assert body["started_at"].endswith("Z")
        assert await retained_now(mosquitto, f"{PREFIX}/connectors/1/state") == b'{"state":"available"}'
        assert await retained_now(mosquitto, f"{PREFIX}/terminal") == b'{"link":"ready"}'
    # a clean stop leaves the retained status offline too
    assert await retained_now(mosquitto, f"{PREFIX}/status") == b'{"state":"offline"}'


_LWT_SCRIPT = """
import asyncio, sys
from agent.upstream.client import UpstreamClient
async def main():
    client = UpstreamClient(broker_url=sys.argv[1], station_id="st-1", client_id="lwt-agent", keepalive_s=5)
    await client.start()
    await client.wait_connected(5)
    print("ready", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.mark.req("UP-1")
async def test_last_will_turns_status_offline_when_the_agent_is_killed(mosquitto: Broker) -> None:
    proc = subprocess.Popen(  # noqa: ASYNC220 - a quick fork; the test reads its pipe in a thread
        [sys.executable, "-c", _LWT_SCRIPT, mosquitto.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
        assert line.strip() == b"ready"
        async with Collector(mosquitto, f"{PREFIX}/status") as collector:
            await collector.wait_for(lambda: bool(collector.messages))
            assert json.loads(collector.messages[-1][1])["state"] == "online"
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
            await collector.wait_for(lambda: collector.messages[-1][1] == b'{"state":"offline"}')
        assert await retained_now(mosquitto, f"{PREFIX}/status") == b'{"state":"offline"}'
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.req("UP-1", "ERR-6")
async def test_retained_state_republished_after_broker_restart(mosquitto: Broker) -> None:
    client = make_client(mosquitto)
    async with running(client):
        client.set_retained(f"{PREFIX}/connectors/1/state", b'{"state":"charging"}')
        await client.wait_connected(5)
        await poll(lambda: client.stats.retained_published >= 1)
        mosquitto.restart()  # persistence off: the broker forgets every retained message
        await client.connected.wait_for(lambda c: not c, 5)
        await client.wait_connected(5)
        await poll(lambda: client.stats.retained_published >= 2)
        assert await retained_now(mosquitto, f"{PREFIX}/connectors/1/state") == b'{"state":"charging"}'
        status = await retained_now(mosquitto, f"{PREFIX}/status")
        assert status is not None
        assert json.loads(status)["state"] == "online"
        assert client.stats.connects == 2
        assert client.stats.connection_losses == 1


@pytest.mark.req("UP-2", "ERR-6")
async def test_outage_delivers_every_message_in_order(mosquitto: Broker, outbox: Outbox) -> None:
    gate = asyncio.Event()
    gate.set()

    async def gated_sleep(delay: float) -> None:  # the test decides when the agent may reconnect
        await gate.wait()
        await asyncio.sleep(delay)

    topic = f"{PREFIX}/connectors/1/events"
    client = make_client(mosquitto, outbox, sleep=gated_sleep, drain_batch=16)
    received: list[bytes] = []
    async with running(client):
        await client.wait_connected(5)
        async with Collector(mosquitto, topic) as collector:
            for n in range(40):
                outbox.append(topic, event(n), kind="event", connector_id=1)
                if n % 10 == 0:
                    await asyncio.sleep(0)
            await collector.wait_for(lambda: len(collector.messages) >= 40)
            received += collector.payloads(topic)
        gate.clear()
        mosquitto.stop()
        await client.connected.wait_for(lambda c: not c, 5)
        for n in range(40, 200):  # appended while the broker is unreachable
            outbox.append(topic, event(n, offline=True), kind="event", connector_id=1)
        assert outbox.count() >= 160
        mosquitto.start()
        async with Collector(mosquitto, topic) as collector:
            gate.set()
            await poll(lambda: outbox.count() == 0 and len(collector.messages) >= 160, 10)
            received += collector.payloads(topic)
    check_in_order_without_gaps(received, 200)
    assert client.stats.drained == 200


@pytest.mark.req("UP-2")
async def test_publish_now_subscribe_and_resubscribe(mosquitto: Broker) -> None:
    got: list[InboundMessage] = []
    client = make_client(mosquitto)
    with pytest.raises(UpstreamNotConnected):
        await client.publish_now(f"{PREFIX}/auth/request", b"{}")
    async with running(client):
        await client.subscribe(f"{PREFIX}/cmd/+", got.append)
        await client.wait_connected(5)
        async with Collector(mosquitto, f"{PREFIX}/cmd/+/result") as collector:
            await client.publish_now(f"{PREFIX}/cmd/stop/result", b'{"result":"accepted"}')
            await collector.wait_for(lambda: bool(collector.messages))
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as backend:
            await backend.publish(f"{PREFIX}/cmd/stop", b'{"correlation_id":"c1"}', qos=1)
            await poll(lambda: len(got) == 1)
        mosquitto.restart()
        await client.connected.wait_for(lambda c: not c, 5)
        await client.wait_connected(5)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as backend:
            await backend.publish(f"{PREFIX}/cmd/start", b'{"correlation_id":"c2"}', qos=1)
            await poll(lambda: len(got) == 2)
    assert [m.topic for m in got] == [f"{PREFIX}/cmd/stop", f"{PREFIX}/cmd/start"]


@pytest.mark.req("UP-2")
async def test_mqtt_311_mode(mosquitto: Broker, outbox: Outbox) -> None:
    topic = f"{PREFIX}/receipts"
    client = make_client(mosquitto, outbox, protocol="3.1.1")
    async with (
        running(client),
        Collector(mosquitto, topic, protocol=aiomqtt.ProtocolVersion.V311) as collector,
    ):
        await client.wait_connected(5)
        for n in range(20):
            outbox.append(topic, event(n), kind="receipt", connector_id=None)
        await collector.wait_for(lambda: len(collector.messages) >= 20)
        check_in_order_without_gaps(collector.payloads(topic), 20)
        assert client._mqtt is not None
        assert paho_client(client._mqtt).protocol == 4  # MQTTv311


@pytest.mark.req("UP-4")
async def test_tls_with_verification_and_client_certificate(
    tls_material: TlsMaterial, outbox: Outbox
) -> None:
    m = tls_material
    with Broker(tls=m, require_certificate=True) as broker:
        assert broker.url.startswith("mqtts://")
        client = make_client(
            broker, outbox, ca_file=m.ca_cert, cert_file=m.client_cert, key_file=m.client_key
        )
        async with running(client):
            await client.wait_connected(5)
            outbox.append(f"{PREFIX}/alarms", event(0), kind="alarm", connector_id=None)
            await poll(lambda: outbox.count() == 0)
            assert client.last_error is None


@pytest.mark.req("UP-4")
async def test_wrong_ca_is_refused_with_a_clear_error(
    tls_material: TlsMaterial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_ca, _ = make_ca(tmp_path, "other-ca")
    m = tls_material
    with Broker(tls=m, require_certificate=True) as broker:
        client = make_client(broker, ca_file=wrong_ca, cert_file=m.client_cert, key_file=m.client_key)
        with caplog.at_level(logging.WARNING, logger="agent.upstream.client"):
            async with running(client):
                await poll(lambda: client.stats.connect_attempts >= 3)  # keeps retrying with backoff
                assert not client.is_connected
    assert client.last_error is not None
    assert f"TLS verification of broker {broker.url} failed" in client.last_error
    assert str(wrong_ca) in client.last_error
    assert "certificate" in client.last_error
    assert any("TLS verification" in r.getMessage() for r in caplog.records)


@pytest.mark.req("UP-4")
async def test_no_client_certificate_is_refused(tls_material: TlsMaterial) -> None:
    with Broker(tls=tls_material, require_certificate=True) as broker:
        client = make_client(broker, ca_file=tls_material.ca_cert)
        async with running(client):
            await poll(lambda: client.stats.connect_attempts >= 2 and client.last_error is not None)
            assert not client.is_connected


@pytest.mark.req("UP-4")
async def test_password_from_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if find_mosquitto_passwd() is None:
        pytest.skip("mosquitto_passwd not installed")
    secret = "s3cret-Pa55"
    password_file = make_password_file(tmp_path / "passwd", {"station": secret})
    (tmp_path / "password").write_text(secret + "\n", encoding="utf-8")
    password = (tmp_path / "password").read_text(encoding="utf-8").rstrip("\r\n")  # as the agent reads it
    with Broker(password_file=password_file, workdir=tmp_path) as broker, caplog.at_level(logging.DEBUG):
        good = make_client(broker, username="station", password=password)
        async with running(good):
            await good.wait_connected(5)
        bad = make_client(broker, username="station", password="wrong-" + secret)
        async with running(bad):
            await poll(lambda: bad.last_error is not None)
            assert not bad.is_connected
        assert bad.last_error is not None
        assert "cannot connect" in bad.last_error
    assert secret not in caplog.text
