"""Registry, topic templates and overrides, configuration validation, backoff."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from drivers.charger import CHARGER_DRIVERS, load_driver
from drivers.charger.base import ChargerBack, ChargerDriver, ChargerError, ChargerErrorCode, PlugChanged
from drivers.charger.mqtt_bridge import MqttBridgeDriver, TlsOptions
from drivers.charger.topics import DEFAULT_TOPICS, TopicMap
from hil.charger_sim import ChargerSimulator
from tests.charger.conftest import make_driver
from tests.charger.support import EventWaiter, eventually, raw_client
from tests.mosquitto import Broker


def test_registry_loads_by_name() -> None:
    assert CHARGER_DRIVERS == {"mqtt_bridge": "drivers.charger.mqtt_bridge:MqttBridgeDriver"}
    cls = load_driver("mqtt_bridge")
    assert cls is MqttBridgeDriver
    assert issubclass(cls, ChargerDriver)


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(ChargerError) as info:
        load_driver("everest")
    assert info.value.code is ChargerErrorCode.UNKNOWN_DRIVER
    assert "mqtt_bridge" in str(info.value)
    assert "'everest'" in str(info.value)


def test_default_topics() -> None:
    topics = TopicMap()
    assert dict(topics.templates) == {
        name: t.replace("{prefix}", "charger") for name, t in DEFAULT_TOPICS.items()
    }
    assert topics.topic("plug", 2) == "charger/2/plug"
    assert topics.topic("alive") == "charger/alive"
    assert topics.subscription("meter") == "charger/+/meter"
    assert topics.match("charger/12/status") == ("status", "12")
    assert topics.match("charger/alive") == ("alive", None)
    assert topics.match("charger/1/plug/extra") is None


def test_override_with_text_around_the_connector() -> None:
    topics = TopicMap("site7/evse", {"plug": "{prefix}/cp{connector}/plug_state", "alive": "{prefix}/lwt"})
    assert topics.topic("plug", 3) == "site7/evse/cp3/plug_state"
    assert topics.subscription("plug") == "site7/evse/+/plug_state"
    assert topics.match("site7/evse/cp3/plug_state") == ("plug", "3")
    assert topics.match("site7/evse/3/plug_state") is None
    assert topics.topic("status", 1) == "site7/evse/1/status"  # not overridden: the default


@pytest.mark.parametrize(
    ("prefix", "overrides", "message"),
    [
        ("charger", {"plugs": "{prefix}/{connector}/plug"}, "unknown name"),
        ("charger", {"plug": "{prefix}/plug"}, "exactly once"),
        ("charger", {"plug": "{prefix}/{connector}/{connector}"}, "exactly once"),
        ("charger", {"alive": "{prefix}/{connector}/alive"}, "must not contain"),
        ("charger", {"meter": "{prefix}/+/{connector}"}, "wildcard"),
        ("charger", {"meter": "{prefix}/#/{connector}"}, "wildcard"),
        ("charger", {"meter": "{prefix}/{station}/{connector}"}, "unknown placeholder"),
        ("charger", {"meter": "{prefix}/{connector:02d}"}, "format spec"),
        ("charger", {"meter": "{prefix}/{connector"}, "topics.meter"),
        ("charger", {"status": "{prefix}/{connector}/plug"}, "overlap"),
        ("charger", {"cmd": 5}, "expected a string"),
        ("char+ger", None, "wildcard"),
        ("", None, "empty"),
        ("$SYS", None, "reserved"),
        ("a{b}", None, "braces"),
    ],
)
def test_invalid_topic_configuration(prefix: str, overrides: dict[str, object] | None, message: str) -> None:
    with pytest.raises(ChargerError) as info:
        TopicMap(prefix, overrides)  # type: ignore[arg-type]
    assert info.value.code is ChargerErrorCode.INVALID_CONFIG
    assert message in str(info.value)


async def test_topic_overrides_end_to_end(mosquitto: Broker) -> None:
    overrides = {
        "plug": "{prefix}/cp{connector}/plug_state",
        "status": "{prefix}/cp{connector}/state",
        "meter": "{prefix}/meters/{connector}",
        "alive": "{prefix}/lwt",
        "cmd": "{prefix}/cp{connector}/set",
    }
    driver = make_driver(mosquitto, prefix="site7", topics=overrides)
    sim = ChargerSimulator(
        mosquitto.url, connectors=2, prefix="site7", topics=overrides, meter_interval_s=0.05
    )
    async with raw_client(mosquitto) as spy, driver, sim:
        await spy.subscribe("#", qos=1)
        events = EventWaiter(driver)
        await events.next(ChargerBack)
        sim.plug(2)
        assert (await events.next(PlugChanged, lambda e: e.connector_id == 2 and e.plugged)).plugged
        await driver.enable_energy(2)
        await eventually(lambda: sim.state(2).enabled)
        wanted = {"site7/lwt", "site7/cp2/plug_state", "site7/cp2/state", "site7/meters/2", "site7/cp2/set"}
        seen: set[str] = set()
        async with asyncio.timeout(3):
            while not wanted <= seen:
                seen.add((await anext(spy.messages)).topic.value)
    assert not any(topic.startswith("charger/") for topic in seen)


def test_driver_configuration_errors(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"broker_url": "tcp://127.0.0.1:1883"}, "mqtt://"),
        ({"broker_url": "mqtt://"}, "no host"),
        ({"broker_url": "mqtt://user:secret@127.0.0.1"}, "password_file"),
        ({"broker_url": "mqtt://127.0.0.1:99999"}, "broker_url"),
        ({"connectors": 0}, "connectors"),
        ({"connectors": [1, -2]}, "connectors"),
        ({"password_file": tmp_path / "missing"}, "password_file"),
        ({"tls": TlsOptions()}, "mqtts://"),
        ({"broker_url": "mqtts://127.0.0.1", "tls": TlsOptions(ca_file=tmp_path / "no-ca.pem")}, "TLS"),
        ({"keepalive_s": 0}, "keepalive_s"),
        ({"reconnect_min_s": 2.0, "reconnect_max_s": 1.0}, "reconnect_max_s"),
        ({"topics": {"alive": "{prefix}/{connector}"}}, "topics.alive"),
    ]
    for kwargs, message in cases:
        options: dict[str, object] = {"connectors": 2, **kwargs}
        with pytest.raises(ChargerError) as info:
            MqttBridgeDriver(**options)  # type: ignore[arg-type]
        assert info.value.code is ChargerErrorCode.INVALID_CONFIG, kwargs
        assert message in str(info.value), (kwargs, str(info.value))


def test_password_from_file_and_tls(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret\n", encoding="utf-8")
    driver = MqttBridgeDriver(
        broker_url="mqtts://agent@broker.local",
        connectors=[1, 3],
        password_file=secret,
        tls=TlsOptions(verify=False),
    )
    assert driver.connector_ids == (1, 3)
    assert driver._password == "s3cret"
    assert driver._username == "agent"
    assert driver._port == 8883
    assert driver._tls_context is not None
    assert "s3cret" not in repr(driver.__dict__.get("_broker_url"))


def test_backoff_is_capped_exponential_with_jitter() -> None:
    driver = MqttBridgeDriver(connectors=1, reconnect_min_s=0.5, reconnect_max_s=8.0, rng=random.Random(1))
    for attempt in range(12):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = {driver._backoff_s(attempt) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
