"""The aiomqtt internals of drivers/mqtt_internals.py still exist with the shape it relies on (issue 11).

These tests fail when an aiomqtt or paho-mqtt release removes or changes what the marked module
uses; the versions in ``pyproject.toml`` are the ones they passed with. The module's helpers are
exercised against a silent TCP server (no CONNACK) and a real Mosquitto. No test here names a
private attribute: they come from :data:`drivers.mqtt_internals.PRIVATE_ATTRIBUTES` (acceptance 4's
``git grep`` finds them in the marked module only).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import random
import socket
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho_mqtt
import paho.mqtt.publish as publish
import pytest
from packaging.requirements import Requirement

from agent.upstream.client import UpstreamClient
from drivers import mqtt_internals
from drivers.mqtt_internals import (
    ACCEPTANCE_GREP,
    ACCEPTANCE_NEEDLES,
    PRIVATE_ATTRIBUTES,
    DirectPublisher,
    close_socket,
    disconnect_future,
    mqtt_socket,
    paho_client,
    read_available,
    retrieve_disconnect_error,
)
from tests.mosquitto import Broker

ROOT = Path(__file__).resolve().parents[2]
MARKED = "drivers/mqtt_internals.py"


def declared(name: str) -> Requirement:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        dependencies = tomllib.load(fh)["project"]["dependencies"]
    found = [Requirement(line) for line in dependencies if Requirement(line).name == name]
    assert len(found) == 1, f"{name} is declared {len(found)} times in pyproject.toml"
    return found[0]


@pytest.mark.parametrize("distribution", ["aiomqtt", "paho-mqtt"])
def test_the_installed_version_is_in_the_pinned_range(distribution: str) -> None:
    requirement = declared(distribution)
    assert requirement.specifier, f"{distribution}: no version range (the internals need a pin)"
    assert any(spec.operator == "<" for spec in requirement.specifier), f"{distribution}: no upper bound"
    assert requirement.specifier.contains(version(distribution)), (
        f"{distribution} {version(distribution)} is outside {requirement.specifier}: run these tests "
        f"and {MARKED} against it before widening the range"
    )


async def test_the_private_attributes_exist_with_the_expected_types() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)  # never connected
    for name, expected in PRIVATE_ATTRIBUTES.items():
        assert hasattr(client, name), f"aiomqtt {version('aiomqtt')} has no Client.{name} ({MARKED})"
        assert isinstance(getattr(client, name), expected), f"Client.{name}: not a {expected.__name__}"
    assert isinstance(paho_client(client), paho_mqtt.Client)
    future = disconnect_future(client)
    assert isinstance(future, asyncio.Future)
    assert not future.done()
    retrieve_disconnect_error(client)  # not done: nothing to retrieve, no error


async def test_the_public_paho_api_the_module_uses_has_the_expected_shape() -> None:
    paho = paho_client(aiomqtt.Client("127.0.0.1", 1, protocol=aiomqtt.ProtocolVersion.V5))
    assert paho.socket() is None  # public accessor; None while not connected
    loop_read = inspect.signature(paho.loop_read)
    assert list(loop_read.parameters) == ["max_packets"]
    assert paho.loop_read() == paho_mqtt.MQTT_ERR_NO_CONN
    assert paho.protocol == paho_mqtt.MQTTv5


def test_the_marked_module_is_the_only_place_git_grep_finds() -> None:
    try:
        found = subprocess.run(
            ["git", "grep", "-n", ACCEPTANCE_GREP],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if found.returncode not in (0, 1):
        pytest.skip(f"not a git checkout: {found.stderr.strip()}")
    outside = [line for line in found.stdout.splitlines() if not line.startswith(f"{MARKED}:")]
    assert outside == []
    # untracked new files too (git grep sees tracked files only)
    for path in (ROOT / d for d in ("agent", "drivers", "statemachines", "hil", "tests")):
        for py in path.rglob("*.py"):
            if py.relative_to(ROOT).as_posix() == MARKED:
                continue
            text = py.read_text(encoding="utf-8")
            for needle in ACCEPTANCE_NEEDLES:
                assert needle not in text, f"{py.relative_to(ROOT)} contains {needle}"


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP server that accepts and never answers (no CONNACK); the event is set at the client's EOF."""
    eof = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        eof.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, eof
    finally:
        server.close()
        await server.wait_closed()


def misc_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "_misc_loop" in t.get_coro().__qualname__]  # type: ignore[union-attr]


async def test_close_socket_closes_what_a_timed_out_connect_left_open(
    silent_server: tuple[int, asyncio.Event],
) -> None:
    port, eof = silent_server
    client = aiomqtt.Client("127.0.0.1", port, timeout=60)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await client.__aenter__()  # CONNECT sent, no CONNACK
    sock = mqtt_socket(client)
    assert isinstance(sock, socket.socket)  # left open by aiomqtt: what close_socket is for
    await asyncio.sleep(0)  # aiomqtt's call_soon_threadsafe: reader added, misc task created
    assert misc_tasks()
    close_socket(client)
    assert mqtt_socket(client) is None  # synchronously
    assert sock.fileno() == -1
    async with asyncio.timeout(2):
        await eof.wait()  # the server saw the connection end
        await asyncio.gather(*misc_tasks(), return_exceptions=True)  # aiomqtt's loop_misc task ends
    assert misc_tasks() == []
    retrieve_disconnect_error(client)
    close_socket(client)  # idempotent


async def test_close_socket_on_a_connected_client_leaves_no_unretrieved_error(mosquitto: Broker) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        client = aiomqtt.Client(mosquitto.host, mosquitto.port)
        await client.__aenter__()
        # the race close_socket may meet in a reconnect loop: connected, __aexit__ never called
        close_socket(client)
        assert mqtt_socket(client) is None
        future = disconnect_future(client)
        assert future.done()  # paho's "connection lost" path told aiomqtt
        retrieve_disconnect_error(client)
        del client, future
        gc.collect()
        await asyncio.sleep(0.05)
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert [c for c in reported if "never retrieved" in str(c.get("message"))] == []


async def test_direct_publishes_and_aiomqtt_publishes_share_one_connection(
    mosquitto: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """DirectPublisher chains paho's on_publish: its own PUBACKs reach its callbacks, aiomqtt's
    reach aiomqtt (its publish() still returns), a raising callback is logged and the connection
    lives on, and detach() gives the callback back."""
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, timeout=5) as client:
        paho = paho_client(client)
        original = paho.on_publish
        publisher = DirectPublisher(client)
        acks: list[bool] = []
        for n in range(5):
            publisher.publish("t/direct", f"{n}".encode(), qos=1, retain=False, on_ack=acks.append)
        assert publisher.in_flight == 5

        def broken(_accepted: bool) -> None:
            raise RuntimeError("callback bug")

        publisher.publish("t/direct", b"x", qos=1, retain=False, on_ack=broken)
        await client.publish("t/aiomqtt", b"y", qos=1)  # hangs if aiomqtt's callback were lost
        async with asyncio.timeout(5):
            while publisher.in_flight:  # noqa: ASYNC110 - a plain counter
                await asyncio.sleep(0.01)
        assert acks == [True] * 5
        assert "PUBACK callback failed" in caplog.text
        publisher.publish("t/direct", b"z", qos=0, retain=False, on_ack=acks.append)
        assert acks[-1] is True  # QoS 0: no PUBACK, reported once handed over
        publisher.detach()
        assert paho.on_publish == original
        await client.publish("t/aiomqtt", b"w", qos=1)


async def test_read_available_queues_a_burst_that_has_already_arrived(mosquitto: Broker) -> None:
    """Issue 12: what sits in the socket reaches aiomqtt's queue in one call (bounded), instead of
    one packet per event-loop iteration."""
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, timeout=5) as client:
        await client.subscribe("burst/#", qos=1)
        # published synchronously from here: the loop is blocked, so aiomqtt's reader cannot run
        publish.multiple(
            [{"topic": f"burst/{n}", "payload": f"{n}", "qos": 1} for n in range(20)],
            hostname=mosquitto.host,
            port=mosquitto.port,
        )
        time.sleep(0.3)  # noqa: ASYNC251 - on purpose: the broker fills our socket, nothing reads it
        assert len(client.messages) == 0
        assert read_available(client, 5) == 5
        assert len(client.messages) == 5  # one packet per read: bounded by max_packets
        read_available(client, 64)
        assert len(client.messages) == 20
        assert read_available(client, 64) == 0  # nothing left: no read, no blocking
        topics = []
        async with asyncio.timeout(5):
            async for message in client.messages:
                topics.append(message.topic.value)
                if len(topics) == 20:
                    break
        assert topics == [f"burst/{n}" for n in range(20)]


def test_the_module_docstring_names_the_pins() -> None:
    doc = mqtt_internals.__doc__ or ""
    for distribution in ("aiomqtt", "paho-mqtt"):
        for spec in declared(distribution).specifier:
            assert f"{spec.operator} {spec.version}" in doc, f"{MARKED} does not state {distribution} {spec}"


async def test_the_upstream_client_closes_every_timed_out_attempt(
    silent_server: tuple[int, asyncio.Event],
) -> None:
    port, eof = silent_server
    client = UpstreamClient(
        broker_url=f"mqtt://127.0.0.1:{port}",
        station_id="st-1",
        client_id="agent-silent",
        backoff_min_s=0.05,
        backoff_max_s=0.1,
        connect_timeout_s=0.3,
        rng=random.Random(7),
    )
    await client.start()
    try:
        async with asyncio.timeout(5):
            while client.stats.connect_attempts < 3:  # noqa: ASYNC110 (a counter, no event)
                await asyncio.sleep(0.05)
        await eof.wait()  # the first attempt's socket was closed, not left to paho's keepalive
        assert len(misc_tasks()) <= 1  # only the attempt under way, if any
        assert client.last_error is not None
        assert client.stats.connects == 0
    finally:
        await client.close()
    await asyncio.sleep(0)
    assert misc_tasks() == []
