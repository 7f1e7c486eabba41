"""The upstream client's publish pipeline against a real Mosquitto (issue 12; DESIGN.md §5.3, UP-2).

What these tests pin down, each without a timing assertion:

- a committed outbox append is handed to the broker connection in the same turn as its commit
  (no drainer task has to run first): ``in_flight`` is 1 right after ``append`` returns;
- every changed retained topic is in flight at once, at most one publish per topic, and the newest
  payload is the one that is retained (an intermediate one is skipped, never sent after a newer);
- a broker that stops answering (SIGSTOP: the TCP connection stays open) is noticed by the PUBACK
  watchdog, the connection is replaced and the unacknowledged rows arrive after all;
- a PUBACK that refuses a message (MQTT 5 "not authorized" from an ACL) is counted and logged and
  does not wedge the drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.store.outbox import Outbox
from tests.mosquitto import Broker, find_mosquitto
from tests.upstream.test_mqtt_client import (
    PREFIX,
    Collector,
    check_in_order_without_gaps,
    event,
    make_client,
    poll,
    retained_now,
    running,
)

pytestmark = [
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
    pytest.mark.req("UP-2"),
]

EVENTS = f"{PREFIX}/connectors/1/events"


async def test_a_committed_append_is_handed_to_the_connection_in_the_same_turn(
    mosquitto: Broker, tmp_path: Path
) -> None:
    with Outbox(tmp_path / "agent.db") as outbox:
        client = make_client(mosquitto, outbox)
        async with running(client), Collector(mosquitto, EVENTS) as collector:
            await client.wait_connected(5)
            await poll(lambda: client.in_flight == 0)
            for n in range(3):
                outbox.append(EVENTS, event(n), kind="event", connector_id=1)
                assert client.in_flight == n + 1  # no await in between: published by the commit
            await collector.wait_for(lambda: len(collector.messages) >= 3)
            await poll(lambda: outbox.count() == 0)
        check_in_order_without_gaps(collector.payloads(EVENTS), 3)
        assert client.stats.drained == 3


async def test_retained_topics_are_in_flight_together_and_the_newest_payload_wins(
    mosquitto: Broker,
) -> None:
    client = make_client(mosquitto)
    topics = [f"{PREFIX}/connectors/{n}/state" for n in range(1, 11)]
    async with running(client):
        await client.wait_connected(5)
        await poll(lambda: client.in_flight == 0)
        for topic in topics:
            client.set_retained(topic, b'{"v":"a"}')
        assert client.in_flight == len(topics)  # all ten in flight together, none waited for
        client.set_retained(topics[0], b'{"v":"b"}')  # replaced before its predecessor's PUBACK
        client.set_retained(topics[0], b'{"v":"c"}')
        assert client.in_flight == len(topics)  # at most one publish per topic in flight
        await poll(lambda: client.stats.retained_published == len(topics) + 1 and client.in_flight == 0)
        assert await retained_now(mosquitto, topics[0]) == b'{"v":"c"}'
        assert await retained_now(mosquitto, topics[-1]) == b'{"v":"a"}'
    assert client.stats.retained_published == len(topics) + 1  # "b" was never sent


async def test_a_broker_that_stops_answering_is_replaced_and_nothing_is_lost(
    mosquitto: Broker, tmp_path: Path
) -> None:
    with Outbox(tmp_path / "agent.db") as outbox:
        client = make_client(mosquitto, outbox, publish_timeout_s=0.6, connect_timeout_s=1.0)
        async with running(client), Collector(mosquitto, EVENTS) as collector:
            await client.wait_connected(5)
            mosquitto.freeze()
            try:
                for n in range(5):
                    outbox.append(EVENTS, event(n), kind="event", connector_id=1)
                await client.connected.wait_for(lambda c: not c, 5)  # the watchdog, not keepalive
            finally:
                mosquitto.thaw()
            await poll(lambda: "no PUBACK" in (client.last_error or ""))
            await poll(lambda: outbox.count() == 0, 15)
            await collector.wait_for(lambda: len(collector.messages) >= 5, 15)
        check_in_order_without_gaps(collector.payloads(EVENTS), 5)
        assert client.stats.connection_losses >= 1


async def test_a_refused_publish_is_counted_and_the_drain_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {PREFIX}/status\ntopic readwrite {EVENTS}\n", encoding="utf-8")
    denied = f"{PREFIX}/connectors/2/events"
    with Broker(acl_file=acl) as broker, Outbox(tmp_path / "agent.db") as outbox:
        client = make_client(broker, outbox)
        caplog.set_level(logging.WARNING, logger="agent.upstream.client")
        async with running(client), Collector(broker, EVENTS) as collector:
            await client.wait_connected(5)
            outbox.append(EVENTS, event(0), kind="event", connector_id=1)
            outbox.append(denied, event(1), kind="event", connector_id=2)
            outbox.append(EVENTS, event(2), kind="event", connector_id=1)
            await poll(lambda: outbox.count() == 0)
            await collector.wait_for(lambda: len(collector.messages) >= 2)
        assert [json.loads(p)["n"] for p in collector.payloads(EVENTS)] == [0, 2]
        assert client.stats.refused == 1
        assert any("refused a publish to " + denied in r.getMessage() for r in caplog.records)


async def test_the_drain_window_is_never_exceeded(mosquitto: Broker, tmp_path: Path) -> None:
    with Outbox(tmp_path / "agent.db") as outbox:
        outbox.append_many((EVENTS, event(n), "event", 1, 1) for n in range(300))
        client = make_client(mosquitto, outbox, drain_batch=16)
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(client.in_flight)
                await asyncio.sleep(0)

        async with Collector(mosquitto, EVENTS) as collector, running(client):
            watcher = asyncio.create_task(watch(), name="watch-in-flight")
            try:
                await poll(lambda: outbox.count() == 0, 10)
            finally:
                watcher.cancel()
            await collector.wait_for(lambda: len(collector.messages) >= 300)
        check_in_order_without_gaps(collector.payloads(EVENTS), 300)
        assert max(seen) <= 16
        assert max(seen) > 1  # pipelined, not one after the other


async def test_a_failing_publish_from_the_commit_never_reaches_the_committer(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox listener runs inside the commit of an engine step: whatever goes wrong there is
    logged, the append returns normally and the drain task publishes the row afterwards."""
    with Outbox(tmp_path / "agent.db") as outbox:
        client = make_client(mosquitto, outbox)
        async with running(client), Collector(mosquitto, EVENTS) as collector:
            await client.wait_connected(5)
            real_pending = outbox.pending
            calls = 0

            def flaky_pending(limit: int = 100, *, after_id: int = 0) -> list[Any]:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise sqlite3.OperationalError("disk I/O error")
                return real_pending(limit, after_id=after_id)

            monkeypatch.setattr(outbox, "pending", flaky_pending)
            outbox.append(EVENTS, event(0), kind="event", connector_id=1)  # does not raise
            await collector.wait_for(lambda: len(collector.messages) >= 1)
        check_in_order_without_gaps(collector.payloads(EVENTS), 1)
        assert "upstream publish from the outbox failed" in caplog.text
