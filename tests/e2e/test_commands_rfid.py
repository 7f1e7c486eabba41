"""Back-office commands and RFID authorization against the real agent process (UP-3, START-4,
START-5, STOP-5; docs/commands.md).

A test back office (aiomqtt, MQTT 5) on the harness's Mosquitto publishes commands on
``{prefix}/cmd/{name}`` with a response topic outside the station's tree and its own correlation
data, so every result — even of a command whose ``correlation_id`` cannot be read — comes back to
it. It also answers (or ignores) ``{prefix}/auth/request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.e2e.conftest import StationFactory
from tests.e2e.harness import Station, expected_cost_minor, wait_until

pytestmark = [pytest.mark.usefixtures("requires_agent"), pytest.mark.timeout(90)]

POWER_W = 360_000  # 100 Wh per second
RESULT_TIMEOUT_S = 5.0
UID_OK = "04A1B2C3D4E5F6"
UID_BAD = "04FFEEDDCCBBAA"
UID_LISTED = "04AABBCCDDEEF1"  # NB: a digit-heavy 10-byte UID trips the journal PAN guard (report)
UID_UNKNOWN = "DEADBEEF"

REMOTE = {
    "session": {
        "start_modes": ["tap", "plug_in", "remote"],
        "stop_modes": ["tap", "unplug", "remote"],
    }
}


class BackOffice:
    """The operator's side of the contract on the test broker."""

    def __init__(self, st: Station) -> None:
        self.st = st
        prefix = st.config["upstream"]["prefix"].format(station_id=st.station_id)
        self.prefix = prefix
        self.replies = f"e2e-backoffice/{st.station_id}/replies"
        self._mqtt = aiomqtt.Client(
            st.broker.host,
            st.broker.port,
            protocol=aiomqtt.ProtocolVersion.V5,
            identifier=f"bo-{uuid.uuid4()}",
        )
        self._waiting: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self.auth_requests: list[dict[str, Any]] = []
        self.auth_answers: dict[str, dict[str, Any] | None] = {}  # uid → response (None: silent)
        self.reports: list[dict[str, Any]] = []
        self.anonymous_results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BackOffice:
        await self._mqtt.__aenter__()
        await self._mqtt.subscribe(self.replies, qos=1)
        await self._mqtt.subscribe(f"{self.prefix}/auth/request", qos=1)
        await self._mqtt.subscribe(f"{self.prefix}/reports/reconciliation", qos=1)
        await self._mqtt.subscribe(f"{self.prefix}/cmd/+/result", qos=1)
        self._task = asyncio.create_task(self._receive(), name="backoffice")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._mqtt.__aexit__(None, None, None)

    async def _receive(self) -> None:
        async for message in self._mqtt.messages:
            topic = str(message.topic)
            payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
            if topic == self.replies:
                correlation = getattr(message.properties, "CorrelationData", None)
                future = self._waiting.get(bytes(correlation or b""))
                if future is not None and not future.done():
                    future.set_result(json.loads(payload))
            elif topic.endswith("/auth/request"):
                request = json.loads(payload)
                self.auth_requests.append(request)
                answer = self.auth_answers.get(request["uid"])
                if answer is not None:
                    body = {"request_id": request["request_id"], **answer}
                    await self._mqtt.publish(f"{self.prefix}/auth/response", json.dumps(body), qos=1)
            elif topic.endswith("/result"):
                result = json.loads(payload)
                if result.get("correlation_id") is None:
                    self.anonymous_results.put_nowait(result)
            elif topic.endswith("/reports/reconciliation"):
                self.reports.append(json.loads(payload))

    async def wait_connected(self) -> None:
        """The agent's upstream client is up and subscribed (a get_sessions is answered)."""
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            with contextlib.suppress(TimeoutError):
                await self.raw("get_sessions", json.dumps({"correlation_id": "hello"}).encode(), within=0.5)
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the agent never answered a command")
            self.st.agent.check_alive()

    async def anonymous(self, name: str, payload: bytes) -> dict[str, Any]:
        """Send without MQTT 5 correlation data (it would stand in for a missing
        ``correlation_id``); the result comes on ``…/cmd/{name}/result`` with ``correlation_id``
        null."""
        while not self.anonymous_results.empty():  # earlier unreadable commands' results
            self.anonymous_results.get_nowait()
        await self._mqtt.publish(f"{self.prefix}/cmd/{name}", payload, qos=1)
        async with asyncio.timeout(RESULT_TIMEOUT_S):
            return await self.anonymous_results.get()

    async def raw(
        self, name: str, payload: bytes, *, retain: bool = False, within: float = RESULT_TIMEOUT_S
    ) -> dict[str, Any]:
        correlation = uuid.uuid4().hex.encode()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = self.replies
        properties.CorrelationData = correlation
        try:
            await self._mqtt.publish(
                f"{self.prefix}/cmd/{name}", payload, qos=1, retain=retain, properties=properties
            )
            async with asyncio.timeout(within):
                return await future
        finally:
            del self._waiting[correlation]
            if retain:  # never leave a retained command behind
                await self._mqtt.publish(f"{self.prefix}/cmd/{name}", b"", qos=1, retain=True)

    async def command(self, name: str, **fields: object) -> dict[str, Any]:
        fields.setdefault("correlation_id", f"{name}-{uuid.uuid4().hex[:8]}")
        return await self.raw(name, json.dumps(fields).encode())

    async def ok(self, name: str, **fields: object) -> dict[str, Any]:
        result = await self.command(name, **fields)
        assert result["status"] == "accepted", result
        return result


@contextlib.asynccontextmanager
async def rig(station_factory: StationFactory, **config: Any) -> AsyncIterator[tuple[Station, BackOffice]]:
    async with station_factory(config={**REMOTE, **config}) as st, BackOffice(st) as bo:
        await bo.wait_connected()
        yield st, bo


async def connector_state(bo: BackOffice, c: int = 1) -> str | None:
    result = await bo.ok("get_sessions", scope="open")
    for s in result["sessions"] or ():
        if s["connector_id"] == c:
            return str(s["state"])
    return None


async def wait_no_session(st: Station, bo: BackOffice, *, within: float = 10.0) -> None:
    await wait_until(
        lambda: bo.ok("get_sessions", scope="open"),
        lambda r: not r["sessions"],
        what="no open session",
        within=within,
        check=st.agent.check_alive,
    )


async def remote_session(st: Station, bo: BackOffice, *, token: str = "REMOTE-1", **extra: object) -> None:
    await st.charger.power(1, POWER_W)
    await st.charger.plug(1)
    await bo.ok("start", connector_id=1, id_token=token, **extra)
    await st.wait_energy(1, 150)


async def stop_and_unplug(st: Station, bo: BackOffice) -> None:
    await bo.ok("stop", connector_id=1)
    await st.wait_charger(1, lambda s: not s["enabled"], what="energy off")
    await st.charger.unplug(1)
    await wait_no_session(st, bo)


async def wait_screen_shown(st: Station, text: str, *, within: float = 5.0) -> None:
    """The terminal simulator received a UI Request showing ``text`` (a notification may be
    replaced by the next screen before a poll sees it, so its log is the record)."""

    async def ui_requests() -> list[str]:
        return [line for line in st.psp.proc.log_text().splitlines() if "rx UiRequest" in line]

    await wait_until(
        ui_requests,
        lambda lines: any(text.lower() in line.lower() for line in lines),
        what=f"a screen showing {text!r}",
        within=within,
        check=st.agent.check_alive,
    )


def last_payment(payments: list[dict[str, Any]]) -> dict[str, Any]:
    return max(payments, key=lambda p: p["started_at"])


# --- every command end to end ------------------------------------------------------------------


@pytest.mark.req("UP-3", "START-4", "STOP-5")
async def test_every_command_end_to_end(station_factory: StationFactory) -> None:
    async with rig(station_factory) as (st, bo):
        # start (START-4) → energy; get_sessions lists it; stop (STOP-5) → ended
        await remote_session(st, bo)
        sessions = (await bo.ok("get_sessions", scope="open"))["sessions"]
        assert [s["method"] for s in sessions] == ["remote"], sessions
        sid = sessions[0]["session_id"]
        conflict = await bo.command("start", connector_id=1, id_token="REMOTE-2")
        assert (conflict["status"], conflict["code"]) == ("rejected", "conflict"), conflict
        stopped = await bo.ok("stop", connector_id=1, session_id=sid)
        assert stopped["data"]["session_id"] == sid
        await st.wait_charger(1, lambda s: not s["enabled"], what="energy off after a remote stop")
        await st.charger.unplug(1)
        await wait_no_session(st, bo)
        everything = await bo.ok("get_sessions", scope="all", limit=10)
        assert any(s["session_id"] == sid and s["state"] == "ended" for s in everything["sessions"])

        # set_availability: unavailable, a start is refused, available again
        await bo.ok("set_availability", connector_id=1, available=False)
        await wait_until(
            lambda: bo.command("start", connector_id=1, id_token="R3"),
            lambda r: r["status"] == "rejected" and "unavailable" in (r["reason"] or ""),
            what="connector unavailable",
            within=5,
        )
        await bo.ok("set_availability", connector_id=None, available=True)

        # set_tariff → the next session is priced with it
        tariff = {**st.tariff(), "energy_per_kwh": "0.99"}
        assert (await bo.ok("set_tariff", tariff=tariff))["data"]["currency"] == "EUR"
        await wait_until(lambda: st.charger.state(1), lambda s: not s["enabled"], what="idle", within=5)
        await remote_session(st, bo, token="REMOTE-4")
        await stop_and_unplug(st, bo)
        payment = last_payment(await st.wait_until_journal_closed())
        assert payment["energy_wh"] > 0
        assert payment["cost_minor"] == expected_cost_minor(tariff, payment["energy_wh"]), payment
        assert payment["cost_minor"] != st.expected_cost(payment["energy_wh"])

        # set_local_auth_list (persisted), version must increase
        entries = [{"uid": UID_LISTED, "status": "accepted", "limit_minor": 100}]
        listed = await bo.ok("set_local_auth_list", version=3, update="full", entries=entries)
        assert listed["data"] == {"version": 3, "entries": 1}
        again = await bo.command("set_local_auth_list", version=3, update="full", entries=[])
        assert (again["status"], again["code"]) == ("rejected", "conflict")
        stored = json.loads((st.state_dir / "local_auth_list.json").read_text())
        assert stored["version"] == 3
        assert stored["entries"][0]["uid"] == UID_LISTED

        # display_message on Apollo → the simulator shows it
        await bo.ok("display_message", connector_id=1, title="Maintenance at 22:00", message="Back soon")
        await wait_screen_shown(st, "Maintenance at 22:00")

        # reconcile → a report for today, queued upstream with the command's correlation id
        rec = await bo.ok("reconcile", correlation_id="rec-1", date=None)
        assert rec["data"]["payments"] >= 2, rec
        report = await wait_until(
            lambda: asyncio.sleep(0, bo.reports),
            lambda rs: any(r.get("correlation_id") == "rec-1" for r in rs),
            what="the reconciliation report upstream",
            within=10,
        )
        assert next(r for r in report if r["correlation_id"] == "rec-1")["trigger"] == "command"
        assert st.agent.running


# --- malformed commands ------------------------------------------------------------------------

_BIG = b'{"correlation_id":"big","x":"' + b"a" * 300_000 + b'"}'
# (command name, payload, expected code); every one sent with correlation data, except the
# missing_correlation_id case (ANONYMOUS), whose correlation data would stand in for the id
ANONYMOUS = frozenset({"missing_correlation_id"})
MALFORMED: list[tuple[str, bytes, str]] = [
    ("start", _BIG, "payload_too_large"),
    ("start", b"\xff\xfe\x00garbage", "invalid_encoding"),
    ("start", b"{not json", "invalid_json"),
    ("start", b"[1, 2, 3]", "not_an_object"),
    ("start", b'"just a string"', "not_an_object"),
    ("start", b'{"connector_id": 1, "id_token": "A"}', "missing_correlation_id"),
    ("start", b'{"correlation_id": "", "connector_id": 1, "id_token": "A"}', "missing_correlation_id"),
    ("launch_rocket", b'{"correlation_id": "m8"}', "unknown_command"),
    ("start", b'{"correlation_id": "m9", "connector_id": 1, "id_token": "A", "x": 1}', "unknown_field"),
    ("start", b'{"correlation_id": "m10", "connector_id": 1}', "missing_field"),
    ("start", b'{"correlation_id": "m11", "connector_id": "one", "id_token": "A"}', "invalid_type"),
    ("start", b'{"correlation_id": "m12", "connector_id": 0, "id_token": "A"}', "invalid_value"),
    ("start", b'{"correlation_id": "m13", "connector_id": 7, "id_token": "A"}', "invalid_value"),
    ("start", b'{"correlation_id": "m14", "connector_id": 1, "id_token": "bad token!"}', "invalid_value"),
    (
        "start",
        b'{"correlation_id": "m15", "connector_id": 1, "id_token": "A", "limit_minor": 0}',
        "invalid_value",
    ),
    (
        "start",
        b'{"correlation_id": "m16", "connector_id": 1, "id_token": "A", "limit_minor": -5}',
        "invalid_value",
    ),
    ("stop", b'{"correlation_id": "m17", "connector_id": 1}', "conflict"),
    ("stop", b'{"correlation_id": "m18", "connector_id": 9}', "invalid_value"),
    ("set_availability", b'{"correlation_id": "m19", "connector_id": 1, "available": "yes"}', "invalid_type"),
    ("set_availability", b'{"correlation_id": "m20", "connector_id": 3, "available": true}', "invalid_value"),
    ("set_tariff", b'{"correlation_id": "m21", "tariff": {"currency": "EURO"}}', "missing_field"),
    ("set_tariff", b'{"correlation_id": "m22"}', "missing_field"),
    (
        "set_local_auth_list",
        b'{"correlation_id": "m23", "version": -1, "update": "full", "entries": []}',
        "invalid_value",
    ),
    (
        "set_local_auth_list",
        b'{"correlation_id": "m24", "version": 1, "update": "partial", "entries": []}',
        "invalid_value",
    ),
    (
        "set_local_auth_list",
        b'{"correlation_id": "m25", "version": 1, "update": "full", '
        b'"entries": [{"uid": "XYZ", "status": "accepted"}]}',
        "invalid_value",
    ),
    ("display_message", b'{"correlation_id": "m26", "title": ""}', "invalid_value"),
    ("display_message", b'{"correlation_id": "m27", "title": "T", "duration_s": 0}', "invalid_value"),
    ("display_message", b'{"correlation_id": "m28", "connector_id": 4, "title": "T"}', "invalid_value"),
    ("reconcile", b'{"correlation_id": "m29", "date": "2026-02-30"}', "invalid_value"),
    ("reconcile", b'{"correlation_id": "m30", "date": "2999-01-01"}', "invalid_value"),
    ("get_sessions", b'{"correlation_id": "m31", "scope": "some"}', "invalid_value"),
    ("get_sessions", b'{"correlation_id": "m32", "limit": 5000}', "invalid_value"),
    ("get_sessions", b'{"correlation_id": "m33", "limit": true}', "invalid_type"),
]


@pytest.mark.req("UP-3")
async def test_malformed_commands_are_answered_and_harmless(station_factory: StationFactory) -> None:
    assert len(MALFORMED) >= 25
    async with rig(station_factory) as (st, bo):
        problems: list[str] = []
        for index, (name, payload, code) in enumerate(MALFORMED):
            result = await (bo.anonymous if code in ANONYMOUS else bo.raw)(name, payload)
            if result["status"] not in ("error", "rejected") or not result["reason"]:
                problems.append(f"#{index} {name}: {result}")
            elif result["code"] != code and not (
                code == "invalid_value" and result["code"] == "invalid_type"
            ):
                problems.append(
                    f"#{index} {name}: expected {code}, got {result['code']} ({result['reason']})"
                )
        assert problems == [], "\n".join(problems)
        # the agent is healthy: alive, and a normal session works
        assert st.agent.running
        await remote_session(st, bo)
        await stop_and_unplug(st, bo)
        assert st.agent.running


# --- RFID (START-5) ----------------------------------------------------------------------------


async def tap_rfid_and_wait_request(st: Station, bo: BackOffice, uid: str) -> None:
    before = len(bo.auth_requests)
    await st.wait_terminal(("WAIT_CARD",))
    await st.psp.tap_rfid(uid)
    await wait_until(
        lambda: asyncio.sleep(0, bo.auth_requests),
        lambda rs: len(rs) > before,
        what=f"auth/request for {uid}",
        within=5,
        check=st.agent.check_alive,
    )
    assert bo.auth_requests[-1]["uid"] == uid


@pytest.mark.req("START-5")
async def test_rfid_backend_accept_with_limit_reject_and_tap_to_stop(station_factory: StationFactory) -> None:
    async with rig(station_factory) as (st, bo):
        expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        bo.auth_answers[UID_BAD] = {"status": "blocked", "reason": "stolen"}
        bo.auth_answers[UID_OK] = {"status": "accepted", "limit_minor": 30, "expires_at": expires}
        await st.charger.power(1, POWER_W)
        await st.charger.plug(1)

        # rejected: driver feedback, no energy
        await tap_rfid_and_wait_request(st, bo, UID_BAD)
        await wait_screen_shown(st, "not accepted")
        await asyncio.sleep(0.5)
        assert not (await st.charger.state(1))["enabled"]

        # accepted with a limit of 30 minor units: energy flows, then stops at the cap
        await tap_rfid_and_wait_request(st, bo, UID_OK)
        await st.wait_energy(1, 100)
        await st.wait_charger(1, lambda s: not s["enabled"], what="energy off at the limit", within=20)
        sessions = (await bo.ok("get_sessions", scope="all", limit=5))["sessions"]
        capped = next(s for s in sessions if s["method"] == "rfid")
        assert capped["authorized_minor"] == 30, capped
        assert capped["cost_minor"] <= 30 + 2, capped  # at most one meter interval over (AMT-2 margin)
        await st.charger.unplug(1)
        await wait_no_session(st, bo)

        # tap-to-stop with the same card (STOP-1 for RFID)
        bo.auth_answers[UID_OK] = {"status": "accepted"}
        await st.charger.plug(1)
        await st.wait_connector(1, ("awaiting_card",))  # the agent saw the new plug-in
        await tap_rfid_and_wait_request(st, bo, UID_OK)
        await st.wait_energy(1, 150)
        await st.wait_terminal(("WAIT_CARD",))
        await st.psp.tap_rfid(UID_OK)
        await st.wait_charger(1, lambda s: not s["enabled"], what="energy off after the tap-to-stop")
        await st.charger.unplug(1)
        await wait_no_session(st, bo)
        assert st.agent.running


@pytest.mark.req("START-5")
async def test_rfid_backend_silent_uses_the_local_list(station_factory: StationFactory) -> None:
    config = {"rfid": {"offline_policy": "local_list", "auth_timeout_s": 1}}
    async with rig(station_factory, **config) as (st, bo):
        entries = [{"uid": UID_LISTED, "status": "accepted", "limit_minor": 5000}]
        await bo.ok("set_local_auth_list", version=1, update="full", entries=entries)
        await st.charger.power(1, POWER_W)
        await st.charger.plug(1)
        # unknown card, back office silent → local_list policy: rejected, no energy
        await tap_rfid_and_wait_request(st, bo, UID_UNKNOWN)
        await wait_screen_shown(st, "not accepted")
        assert not (await st.charger.state(1))["enabled"]
        # listed card, back office silent → accepted from the local list
        await tap_rfid_and_wait_request(st, bo, UID_LISTED)
        await st.wait_energy(1, 150)
        sessions = (await bo.ok("get_sessions", scope="open"))["sessions"]
        assert sessions[0]["method"] == "rfid", sessions
        assert sessions[0]["authorized_minor"] == 5000, sessions
        await stop_and_unplug(st, bo)
        assert st.agent.running
