"""RFID/CUG backend authorization (agent/upstream/rfid.py; START-5, DESIGN.md §5.3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.upstream.client import UpstreamClient, UpstreamNotConnected
from agent.upstream.contract import LocalAuthEntry, SetLocalAuthList, Topics
from agent.upstream.rfid import (
    AuthCache,
    BackendAuthorizer,
    LocalAuthList,
    LocalAuthListConflict,
    OfflinePolicy,
    local_list_path,
)
from statemachines.events import BackendAuthorizationStatus as S
from statemachines.events import CardKind, CardToken
from tests.mosquitto import Broker, find_mosquitto

STATION = "st-auth"
TOPICS = Topics(STATION)
UID = "04A1B2C3D4E5F6"
OTHER = "0A0B0C0D"
NOW = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)

pytestmark = pytest.mark.req("START-5")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class FakeBackend:
    """A ``publish`` that records requests and answers them through ``authorizer.on_response``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []
        self.properties: list[tuple[str | None, bytes | None]] = []
        self.answer: Callable[[dict[str, object]], dict[str, object] | None] = lambda _r: None
        self.authorizer: BackendAuthorizer | None = None
        self.fail: Exception | None = None

    async def __call__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        assert topic == TOPICS.auth_request
        if self.fail is not None:
            raise self.fail
        request = json.loads(payload)
        self.requests.append(request)
        self.properties.append((response_topic, correlation_data))
        reply = self.answer(request)
        if reply is not None:
            assert self.authorizer is not None
            loop = asyncio.get_running_loop()
            loop.call_soon(self.authorizer.on_response, json.dumps(reply).encode())


def make(
    tmp_path: Path,
    *,
    policy: OfflinePolicy = OfflinePolicy.LOCAL_LIST_AND_CACHE,
    timeout_s: float = 0.2,
    connected: bool = True,
    **kwargs: object,
) -> tuple[BackendAuthorizer, FakeBackend, Clock]:
    backend = FakeBackend()
    clock = Clock()
    authorizer = BackendAuthorizer(
        backend,
        topics=TOPICS,
        local_list=LocalAuthList.load(local_list_path(tmp_path)),
        cache=AuthCache(ttl_s=3600),
        offline_policy=policy,
        timeout_s=timeout_s,
        connected=lambda: connected,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )
    backend.authorizer = authorizer
    return authorizer, backend, clock


def answer(status: str, **extra: object) -> Callable[[dict[str, object]], dict[str, object]]:
    return lambda request: {"request_id": request["request_id"], "status": status, **extra}


def card(uid: str = UID) -> CardToken:
    return CardToken(CardKind.RFID, uid)


def entries(*items: tuple[str, str, int | None]) -> tuple[LocalAuthEntry, ...]:
    return tuple(LocalAuthEntry(uid=u, status=s, limit_minor=limit) for u, s, limit in items)  # type: ignore[arg-type]


def set_list(version: int, update: str, *items: tuple[str, str, int | None]) -> SetLocalAuthList:
    return SetLocalAuthList(
        correlation_id=f"c{version}",
        version=version,
        update=update,  # type: ignore[arg-type]
        entries=entries(*items),
    )


# --------------------------------------------------------------------------------------------------
# backend answers
# --------------------------------------------------------------------------------------------------


async def test_accepted_with_limit_and_balance_caps_at_the_smaller(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path)
    backend.answer = answer("accepted", limit_minor=3000, balance_minor=1250)
    decision = await authorizer.authorize(card(), 2)
    assert (decision.status, decision.limit_minor, decision.source) == (S.ACCEPTED, 1250, "backend")
    request = backend.requests[0]
    assert request["uid"] == UID
    assert request["connector_id"] == 2
    assert request["token_type"] == "iso14443"
    uuid.UUID(str(request["request_id"]))
    # MQTT 5: response topic + correlation data (the request id)
    assert backend.properties[0] == (TOPICS.auth_response, str(request["request_id"]).encode())
    event = decision.to_event(2, NOW)
    assert (event.connector_id, event.token, event.status, event.limit_minor) == (2, UID, S.ACCEPTED, 1250)
    assert authorizer.pending == 0


async def test_accepted_without_limit_and_fresh_request_ids(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path)
    backend.answer = answer("accepted")
    first = await authorizer.authorize(card(), 1)
    second = await authorizer.authorize(card(), 1)
    assert first.status is S.ACCEPTED
    assert first.limit_minor is None
    assert second.accepted
    assert backend.requests[0]["request_id"] != backend.requests[1]["request_id"]


async def test_accepted_with_zero_balance_is_no_credit(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path)
    backend.answer = answer("accepted", balance_minor=0)
    decision = await authorizer.authorize(card(), 1)
    assert decision.status is S.NO_CREDIT
    assert decision.limit_minor is None


@pytest.mark.parametrize("status", ["rejected", "blocked", "expired", "no_credit"])
async def test_refusals_pass_through_and_evict_the_cache(tmp_path: Path, status: str) -> None:
    authorizer, backend, _ = make(tmp_path)
    backend.answer = answer("accepted", limit_minor=500)
    assert (await authorizer.authorize(card(), 1)).accepted
    assert len(authorizer.cache) == 1
    backend.answer = answer(status, reason="card stolen")
    decision = await authorizer.authorize(card(), 1)
    assert decision.status.value == status
    assert decision.limit_minor is None
    assert decision.reason == "card stolen"
    assert len(authorizer.cache) == 0  # a refused card is not accepted offline from the cache


async def test_concurrent_requests_get_their_own_answers(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path, timeout_s=1.0)
    backend.answer = lambda r: {
        "request_id": r["request_id"],
        "status": "accepted" if r["uid"] == UID else "blocked",
    }
    a, b = await asyncio.gather(authorizer.authorize(card(), 1), authorizer.authorize(card(OTHER), 2))
    assert a.status is S.ACCEPTED
    assert b.status is S.BLOCKED


async def test_invalid_uid_is_rejected_without_asking(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path)
    decision = await authorizer.authorize(card("not-a-uid"), 1)
    assert decision.status is S.REJECTED
    assert decision.source == "invalid_uid"
    assert backend.requests == []


# --------------------------------------------------------------------------------------------------
# backend silent / offline → policy
# --------------------------------------------------------------------------------------------------


async def test_silent_backend_reject_policy(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path, policy=OfflinePolicy.REJECT)
    await authorizer.local_list.apply(set_list(1, "full", (UID, "accepted", None)), now=NOW)
    decision = await authorizer.authorize(card(), 1)
    assert decision.status is S.UNAVAILABLE
    assert decision.source == "policy"
    assert authorizer.stats.timeouts == 1
    assert authorizer.stats.offline_decisions == 1
    assert len(backend.requests) == 1
    assert authorizer.pending == 0


async def test_silent_backend_local_list_policy(tmp_path: Path) -> None:
    authorizer, _, _ = make(tmp_path, policy=OfflinePolicy.LOCAL_LIST)
    await authorizer.local_list.apply(
        set_list(1, "full", (UID, "accepted", 2000), (OTHER, "blocked", None)), now=NOW
    )
    listed = await authorizer.authorize(card(), 1)
    assert (listed.status, listed.limit_minor, listed.source) == (S.ACCEPTED, 2000, "local_list")
    blocked = await authorizer.authorize(card(OTHER), 1)
    assert blocked.status is S.BLOCKED
    assert blocked.source == "local_list"
    unknown = await authorizer.authorize(card("DEADBEEF"), 1)
    assert unknown.status is S.UNAVAILABLE


async def test_silent_backend_local_list_and_cache_policy(tmp_path: Path) -> None:
    authorizer, backend, clock = make(tmp_path, policy=OfflinePolicy.LOCAL_LIST_AND_CACHE)
    backend.answer = answer("accepted", limit_minor=4000)
    assert (await authorizer.authorize(card(), 1)).accepted  # cached
    backend.answer = lambda _r: None  # the back office goes silent
    cached = await authorizer.authorize(card(), 1)
    assert (cached.status, cached.limit_minor, cached.source) == (S.ACCEPTED, 4000, "cache")
    assert (await authorizer.authorize(card(OTHER), 1)).status is S.UNAVAILABLE
    clock.now += timedelta(hours=2)  # past the cache TTL (1 h)
    assert (await authorizer.authorize(card(), 1)).status is S.UNAVAILABLE


async def test_cache_honours_the_answers_expiry(tmp_path: Path) -> None:
    authorizer, backend, clock = make(tmp_path)
    backend.answer = answer("accepted", expires_at="2026-03-01T10:10:00.000Z")
    assert (await authorizer.authorize(card(), 1)).accepted
    backend.answer = lambda _r: None
    clock.now += timedelta(minutes=5)
    assert (await authorizer.authorize(card(), 1)).source == "cache"
    clock.now += timedelta(minutes=6)
    assert (await authorizer.authorize(card(), 1)).status is S.UNAVAILABLE


async def test_local_list_entry_wins_over_the_cache(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path)
    backend.answer = answer("accepted")
    assert (await authorizer.authorize(card(), 1)).accepted
    await authorizer.local_list.apply(set_list(3, "full", (UID, "blocked", None)), now=NOW)
    backend.answer = lambda _r: None
    assert (await authorizer.authorize(card(), 1)).status is S.BLOCKED


async def test_expired_local_entry_is_expired(tmp_path: Path) -> None:
    authorizer, _, _ = make(tmp_path, policy=OfflinePolicy.LOCAL_LIST)
    entry = LocalAuthEntry(uid=UID, status="accepted", expires_at="2026-02-01T00:00:00Z")
    await authorizer.local_list.apply(
        SetLocalAuthList(correlation_id="c", version=1, update="full", entries=(entry,)), now=NOW
    )
    assert (await authorizer.authorize(card(), 1)).status is S.EXPIRED


async def test_accept_policy_accepts_unknown_tokens_with_the_configured_limit(tmp_path: Path) -> None:
    authorizer, _, _ = make(tmp_path, policy=OfflinePolicy.ACCEPT, accept_limit_minor=1500)
    await authorizer.local_list.apply(set_list(1, "full", (OTHER, "blocked", None)), now=NOW)
    unknown = await authorizer.authorize(card(), 1)
    assert (unknown.status, unknown.limit_minor, unknown.source) == (S.ACCEPTED, 1500, "policy")
    assert (await authorizer.authorize(card(OTHER), 1)).status is S.BLOCKED


async def test_offline_upstream_applies_the_policy_at_once(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path, policy=OfflinePolicy.LOCAL_LIST, timeout_s=30, connected=False)
    await authorizer.local_list.apply(set_list(1, "full", (UID, "accepted", 900)), now=NOW)
    async with asyncio.timeout(1):  # no 30 s wait
        decision = await authorizer.authorize(card(), 1)
    assert (decision.status, decision.limit_minor) == (S.ACCEPTED, 900)
    assert backend.requests == []
    assert authorizer.stats.requests == 0


async def test_publish_failure_applies_the_policy(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path, policy=OfflinePolicy.REJECT, timeout_s=30)
    backend.fail = UpstreamNotConnected("offline")
    async with asyncio.timeout(1):
        decision = await authorizer.authorize(card(), 1)
    assert decision.status is S.UNAVAILABLE
    assert authorizer.stats.publish_failures == 1


# --------------------------------------------------------------------------------------------------
# late, unknown and malformed responses
# --------------------------------------------------------------------------------------------------


async def test_late_response_is_counted_and_ignored(tmp_path: Path) -> None:
    authorizer, backend, _ = make(tmp_path, policy=OfflinePolicy.REJECT, timeout_s=0.05)
    decision = await authorizer.authorize(card(), 1)
    assert decision.status is S.UNAVAILABLE
    late = {"request_id": backend.requests[0]["request_id"], "status": "accepted"}
    authorizer.on_response(json.dumps(late).encode())
    assert authorizer.stats.late_responses == 1
    assert len(authorizer.cache) == 0  # a late accept is not cached either
    # the next request still works
    backend.answer = answer("accepted")
    assert (await authorizer.authorize(card(), 1)).accepted


@pytest.mark.parametrize(
    ("payload", "counter"),
    [
        (b"{not json", "malformed_responses"),
        (b"[]", "malformed_responses"),
        (b'{"request_id": "x", "status": "accepted"}', "malformed_responses"),
        (
            json.dumps({"request_id": "7d2b6c1e-0d1a-4f1e-9a55-3f0c2b8e6a01", "status": "maybe"}).encode(),
            "malformed_responses",
        ),
        (
            json.dumps(
                {"request_id": "7d2b6c1e-0d1a-4f1e-9a55-3f0c2b8e6a02", "status": "accepted", "extra": 1}
            ).encode(),
            "malformed_responses",
        ),
        (
            json.dumps({"request_id": "7d2b6c1e-0d1a-4f1e-9a55-3f0c2b8e6a03", "status": "accepted"}).encode(),
            "unknown_responses",
        ),
    ],
    ids=["not-json", "array", "bad-request-id", "bad-status", "extra-field", "unknown-request"],
)
async def test_bad_responses_are_counted_and_do_not_disturb_a_pending_request(
    tmp_path: Path, payload: bytes, counter: str
) -> None:
    authorizer, backend, _ = make(tmp_path, timeout_s=1.0)
    backend.answer = lambda _r: None
    task = asyncio.create_task(authorizer.authorize(card(), 1), name="test-authorize")
    async with asyncio.timeout(1):
        while not backend.requests:  # noqa: ASYNC110 - waits for the fake's list
            await asyncio.sleep(0)
    authorizer.on_response(payload)
    assert getattr(authorizer.stats, counter) == 1
    authorizer.on_response(
        json.dumps({"request_id": backend.requests[0]["request_id"], "status": "accepted"}).encode()
    )
    decision = await task
    assert decision.accepted
    assert decision.source == "backend"


async def test_uid_is_masked_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.upstream.rfid")
    authorizer, backend, _ = make(tmp_path, timeout_s=0.05)
    backend.answer = answer("accepted")
    await authorizer.authorize(card(), 1)
    backend.answer = lambda _r: None
    await authorizer.authorize(card(), 1)
    assert caplog.records
    assert all(UID not in record.getMessage() for record in caplog.records)
    assert any("…E5F6" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------------------------------
# the local list: persistence, replace/merge, version
# --------------------------------------------------------------------------------------------------


async def test_local_list_persists_across_a_restart(tmp_path: Path) -> None:
    path = local_list_path(tmp_path)
    first = LocalAuthList.load(path)
    assert first.version is None
    assert len(first) == 0
    await first.apply(set_list(4, "full", (UID, "accepted", 1000), (OTHER, "blocked", None)), now=NOW)
    await first.apply(
        set_list(5, "differential", ("DEADBEEF", "accepted", None), (UID, "accepted", 700)), now=NOW
    )
    reloaded = LocalAuthList.load(path)  # a new process
    assert reloaded.version == 5
    assert len(reloaded) == 3
    assert reloaded.get(UID) == LocalAuthEntry(uid=UID, status="accepted", limit_minor=700)
    other = reloaded.get(OTHER)
    assert other is not None
    assert other.status == "blocked"
    # a restarted authorizer uses it offline
    authorizer = BackendAuthorizer(
        FakeBackend(),
        topics=TOPICS,
        local_list=reloaded,
        cache=AuthCache(),
        offline_policy=OfflinePolicy.LOCAL_LIST,
        connected=lambda: False,
        clock=Clock(),
    )
    decision = await authorizer.authorize(card(), 1)
    assert (decision.status, decision.limit_minor, decision.source) == (S.ACCEPTED, 700, "local_list")


async def test_full_update_replaces_and_version_must_increase(tmp_path: Path) -> None:
    local = LocalAuthList.load(local_list_path(tmp_path))
    await local.apply(set_list(2, "full", (UID, "accepted", None), (OTHER, "accepted", None)), now=NOW)
    await local.apply(set_list(3, "full", ("DEADBEEF", "accepted", None)), now=NOW)
    assert local.get(UID) is None
    assert local.get("DEADBEEF") is not None
    assert len(local) == 1
    for version in (3, 1):
        with pytest.raises(LocalAuthListConflict, match="not above"):
            await local.apply(set_list(version, "differential", (UID, "accepted", None)), now=NOW)
    assert local.version == 3
    assert local.get(UID) is None
    assert LocalAuthList.load(local_list_path(tmp_path)).version == 3


async def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    local = LocalAuthList(blocker / "list.json")  # parent is a file: the write fails
    from agent.upstream.rfid import LocalAuthListError

    with pytest.raises(LocalAuthListError):
        await local.apply(set_list(1, "full", (UID, "accepted", None)), now=NOW)
    assert local.version is None
    assert len(local) == 0


def test_corrupt_file_loads_empty(tmp_path: Path) -> None:
    path = local_list_path(tmp_path)
    path.write_text("{garbage")
    local = LocalAuthList.load(path)
    assert local.version is None
    assert len(local) == 0


# --------------------------------------------------------------------------------------------------
# the round trip over a real broker
# --------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def back_office(
    broker: Broker, reply: Callable[[dict[str, object]], dict[str, object] | None]
) -> AsyncIterator[list[dict[str, object]]]:
    """An aiomqtt client answering ``auth/request`` on the response topic it names (MQTT 5)."""
    seen: list[dict[str, object]] = []
    client = aiomqtt.Client(
        broker.host, broker.port, identifier=f"bo-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5
    )
    await client.__aenter__()
    await client.subscribe(TOPICS.auth_request, qos=1)

    async def serve() -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                request = json.loads(message.payload)
                seen.append(request)
                answer_ = reply(request)
                if answer_ is None:
                    continue
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                correlation = getattr(message.properties, "CorrelationData", None)
                if correlation:
                    props.CorrelationData = correlation
                topic = getattr(message.properties, "ResponseTopic", None) or TOPICS.auth_response
                await client.publish(topic, json.dumps(answer_).encode(), qos=1, properties=props)

    task = asyncio.create_task(serve(), name="test-back-office")
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
async def test_round_trip_over_mosquitto(mosquitto: Broker, tmp_path: Path) -> None:
    upstream = UpstreamClient(
        broker_url=mosquitto.url,
        station_id=STATION,
        client_id=f"agent-{uuid.uuid4().hex[:8]}",
        backoff_min_s=0.05,
        backoff_max_s=0.3,
        rng=random.Random(3),
    )
    authorizer = BackendAuthorizer(
        upstream.publish_now,
        topics=TOPICS,
        local_list=LocalAuthList.load(local_list_path(tmp_path)),
        cache=AuthCache(),
        offline_policy=OfflinePolicy.LOCAL_LIST_AND_CACHE,
        timeout_s=2.0,
        connected=lambda: upstream.is_connected,
    )
    await upstream.subscribe(TOPICS.auth_response, authorizer.on_message)
    await upstream.start()
    try:
        await upstream.wait_connected(5)

        def reply(request: dict[str, object]) -> dict[str, object] | None:
            if request["uid"] == "DEADBEEF":
                return None  # silent for this one
            status = "accepted" if request["uid"] == UID else "blocked"
            return {"request_id": request["request_id"], "status": status, "limit_minor": 2500}

        async with back_office(mosquitto, reply) as seen:
            accepted = await authorizer.authorize(card(), 1)
            assert (accepted.status, accepted.limit_minor, accepted.source) == (S.ACCEPTED, 2500, "backend")
            blocked = await authorizer.authorize(card(OTHER), 2)
            assert blocked.status is S.BLOCKED
            assert blocked.limit_minor is None
            authorizer.timeout_s = 0.3
            silent = await authorizer.authorize(card("DEADBEEF"), 1)
            assert silent.status is S.UNAVAILABLE
            assert authorizer.stats.timeouts == 1
            cached = await authorizer.authorize(card(), 1)  # answered again by the back office
            assert cached.source == "backend"
            assert [r["uid"] for r in seen] == [UID, OTHER, "DEADBEEF", UID]
    finally:
        await upstream.close()
