"""Back-office commands (agent/upstream/commands.py; UP-3, START-4, STOP-5; DESIGN.md §5.3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.money.tariff import Tariff, tariff_fingerprint, tariff_from_builtins
from agent.upstream.client import UpstreamClient
from agent.upstream.commands import ActiveSession, CommandHandler, RuntimePort, ScreenMessage
from agent.upstream.contract import (
    CommandResult,
    ReconciliationReport,
    ReconciliationTotals,
    SetLocalAuthList,
    Topics,
    decode_command,
)
from agent.upstream.rfid import AuthCache, BackendAuthorizer, LocalAuthList, OfflinePolicy, local_list_path
from statemachines.config import APOLLO, P6X, StartMode, StopMode, TerminalCapabilities
from statemachines.events import RemoteStart, SetAvailability, StopRequest, StopSource
from tests.mosquitto import Broker, find_mosquitto

STATION = "st-cmd"
TOPICS = Topics(STATION)
NOW = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
ALL_START = frozenset(StartMode)
ALL_STOP = frozenset(StopMode)
TARIFF = {"currency": "EUR", "prices_include_vat": True, "vat_rate_percent": "21", "energy_per_kwh": "0.39"}


# --------------------------------------------------------------------------------------------------
# fakes
# --------------------------------------------------------------------------------------------------


@dataclass
class FakePort:
    """Connector 1 available, 2 charging (session S-2), 3 unavailable, 4 stopping (S-4)."""

    connector_ids: tuple[int, ...] = (1, 2, 3, 4)
    states: dict[int, str] = field(
        default_factory=lambda: {1: "available", 2: "charging", 3: "unavailable", 4: "stopping"}
    )
    sessions: dict[int, ActiveSession] = field(
        default_factory=lambda: {
            2: ActiveSession("S-2", 2, "emv", NOW, terminal_session_id="77", energy_wh=1200, cost_minor=99),
            4: ActiveSession("S-4", 4, "rfid", NOW),
        }
    )
    calls: list[tuple[str, object]] = field(default_factory=list)
    payments: list[dict[str, object]] = field(default_factory=list)
    reconcile_wired: bool = True
    # the journal's payments (session refs) and, among them, the open possible orphan approvals
    known: set[str] = field(default_factory=lambda: {"S-2", "S-4", "1-orphan", "1-cleared"})
    orphans: set[str] = field(default_factory=lambda: {"1-orphan"})

    def post(self, event: RemoteStart | StopRequest | SetAvailability) -> None:
        self.calls.append(("post", event))

    def connector_state(self, connector_id: int) -> str:
        return self.states[connector_id]

    def active_session(self, connector_id: int) -> ActiveSession | None:
        return self.sessions.get(connector_id)

    async def set_tariff(self, tariff: Mapping[str, object]) -> Tariff:
        parsed = tariff_from_builtins(dict(tariff), default_timezone="Europe/Amsterdam")  # validates
        self.calls.append(("set_tariff", parsed))
        return parsed

    def display_message(self, message: ScreenMessage) -> None:
        self.calls.append(("display_message", message))

    def recent_payments(self, limit: int) -> Sequence[Mapping[str, object]]:
        return self.payments[:limit]

    def clear_orphan(self, session_id: str, *, note: str | None) -> None:
        if session_id not in self.known:
            raise KeyError(session_id)
        if session_id not in self.orphans:
            raise ValueError(f"{session_id} is not an open possible orphan approval")
        self.orphans.discard(session_id)
        self.calls.append(("clear_orphan", (session_id, note)))

    async def reconcile(self, day: date | None, *, correlation_id: str) -> ReconciliationReport:
        if not self.reconcile_wired:
            raise NotImplementedError
        self.calls.append(("reconcile", day))
        return ReconciliationReport(
            msg_id=str(uuid.uuid4()),
            report_id="R-1",
            station_id=STATION,
            trigger="command",
            correlation_id=correlation_id,
            date=day.isoformat() if day else None,
            period_start="2026-03-01T00:00:00Z",
            period_end="2026-03-02T00:00:00Z",
            generated_at="2026-03-01T10:00:00Z",
            currency="EUR",
            totals=ReconciliationTotals(
                payments=2, authorized_minor=0, captured_minor=0, voided=0, energy_wh=0, computed_minor=0
            ),
        )


class Published:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], bytes | None]] = []

    async def __call__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        self.messages.append((topic, json.loads(payload), correlation_data))


def make(
    tmp_path: Path,
    port: FakePort | None = None,
    *,
    capabilities: TerminalCapabilities = APOLLO,
    start_modes: frozenset[StartMode] = ALL_START,
    stop_modes: frozenset[StopMode] = ALL_STOP,
    publish: Any = None,
) -> tuple[CommandHandler, FakePort, Published]:
    port = port or FakePort()
    published = Published()
    authorizer = BackendAuthorizer(
        published,
        topics=TOPICS,
        local_list=LocalAuthList.load(local_list_path(tmp_path)),
        cache=AuthCache(),
        offline_policy=OfflinePolicy.LOCAL_LIST,
    )
    handler = CommandHandler(
        port,
        publish or published,
        topics=TOPICS,
        capabilities=capabilities,
        start_modes=start_modes,
        stop_modes=stop_modes,
        authorizer=authorizer,
        clock=lambda: NOW,
    )
    return handler, port, published


def cmd(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_fake_port_satisfies_the_protocol() -> None:
    assert isinstance(FakePort(), RuntimePort)


# --------------------------------------------------------------------------------------------------
# accepted commands
# --------------------------------------------------------------------------------------------------


@pytest.mark.req("START-4", "UP-3")
async def test_remote_start_posts_remote_start(tmp_path: Path) -> None:
    handler, port, published = make(tmp_path)
    result = await handler.handle(
        "start", cmd(correlation_id="c-1", connector_id=1, id_token="EMSP-123", limit_minor=2500)
    )
    assert result.status == "accepted"
    assert result.correlation_id == "c-1"
    assert port.calls == [("post", RemoteStart(1, NOW, "EMSP-123", 2500))]
    [(topic, body, _)] = published.messages
    assert topic == TOPICS.command_result("start")
    assert body["status"] == "accepted"
    assert body["correlation_id"] == "c-1"


@pytest.mark.req("START-4")
async def test_remote_start_on_a_plugged_waiting_connector(tmp_path: Path) -> None:
    handler, port, _ = make(tmp_path)
    port.states[1] = "awaiting_card"
    result = await handler.handle("start", cmd(correlation_id="c", connector_id=1, id_token="T"))
    assert result.status == "accepted"
    assert port.calls == [("post", RemoteStart(1, NOW, "T", None))]


@pytest.mark.req("STOP-5", "UP-3")
async def test_remote_stop_posts_a_remote_stop_request(tmp_path: Path) -> None:
    handler, port, _ = make(tmp_path)
    result = await handler.handle("stop", cmd(correlation_id="c-2", connector_id=2, session_id="S-2"))
    assert result.status == "accepted"
    assert result.data == {"connector_id": 2, "session_id": "S-2"}
    assert port.calls == [("post", StopRequest(2, NOW, StopSource.REMOTE))]
    result = await handler.handle("stop", cmd(correlation_id="c-3", connector_id=2))  # any session
    assert result.status == "accepted"


async def test_set_availability_one_and_all(tmp_path: Path) -> None:
    handler, port, _ = make(tmp_path)
    result = await handler.handle(
        "set_availability", cmd(correlation_id="a", connector_id=1, available=False)
    )
    assert result.status == "accepted"
    assert port.calls == [("post", SetAvailability(1, NOW, False))]
    port.calls.clear()
    result = await handler.handle("set_availability", cmd(correlation_id="b", available=False))
    assert result.status == "accepted"
    assert [c[1].connector_id for c in port.calls] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    assert result.data is not None
    assert result.data["pending"] == "2,4"  # running sessions end first


async def test_set_tariff_is_validated_and_handed_over(tmp_path: Path) -> None:
    handler, port, _ = make(tmp_path)
    result = await handler.handle("set_tariff", cmd(correlation_id="t", tariff=TARIFF))
    assert result.status == "accepted"
    [(name, tariff)] = port.calls
    assert name == "set_tariff"
    assert isinstance(tariff, Tariff)
    assert result.data == {"currency": "EUR", "fingerprint": tariff_fingerprint(tariff)}


OCPI_TARIFF = {  # OCPI 2.2.1 §Tariffs 4.3.1: 0.30 EUR/kWh excl. 21 % VAT
    "country_code": "NL",
    "party_id": "EVP",
    "id": "t1",
    "currency": "EUR",
    "last_updated": "2026-01-01T00:00:00Z",
    "elements": [{"price_components": [{"type": "ENERGY", "price": "0.30", "vat": 21, "step_size": 1}]}],
}


@pytest.mark.req("UP-3")
@pytest.mark.parametrize(
    "tariff",
    [{"ocpi": OCPI_TARIFF, "timezone": "Europe/Amsterdam", "minor_unit_digits": 2}, OCPI_TARIFF],
    ids=["ocpi-wrapper", "bare-ocpi"],
)
async def test_set_tariff_takes_the_ocpi_forms(tmp_path: Path, tariff: dict[str, object]) -> None:
    """The OCPI wrapper and a bare OCPI Tariff object (depends on the tariff rewrite's OCPI forms)."""
    handler, port, _ = make(tmp_path)
    result = await handler.handle("set_tariff", cmd(correlation_id="o", tariff=tariff))
    assert (result.status, result.code) == ("accepted", None), result.reason
    [(_, parsed)] = port.calls
    assert isinstance(parsed, Tariff)
    assert parsed.currency == "EUR"


def _ocpi_component(**component: object) -> dict[str, object]:
    return {**OCPI_TARIFF, "elements": [{"price_components": [component]}]}


BAD_TARIFFS = [
    pytest.param(
        {**TARIFF, "energy_per_kwh": 0.39},
        "invalid_type",
        "tariff.energy_per_kwh: expected a decimal string",
        id="price-as-number",
    ),
    pytest.param({**TARIFF, "fee": "1"}, "unknown_field", "unknown field 'tariff.fee'", id="unknown-field"),
    pytest.param({**TARIFF, "currency": "euro"}, "invalid_value", "tariff.currency: ", id="bad-currency"),
    pytest.param({**TARIFF, "vat_rate_percent": "100"}, "invalid_value", "tariff.vat_rate_percent", id="vat"),
    pytest.param(
        {"prices_include_vat": True, "vat_rate_percent": "21"},
        "missing_field",
        "missing field 'tariff.currency'",
        id="no-currency",
    ),
    pytest.param(
        {"ocpi": _ocpi_component(type="ENERGY", price="0.30")},
        "missing_field",
        "missing field 'tariff.ocpi.elements[0].price_components[0].step_size'",
        id="ocpi-no-step-size",
    ),
    pytest.param(
        _ocpi_component(type="LITRE", price="1", step_size=1),
        "invalid_value",
        "tariff.elements[0].price_components[0].type: ",
        id="bare-ocpi-bad-type",
    ),
]


@pytest.mark.req("UP-3")
@pytest.mark.parametrize(("tariff", "code", "reason"), BAD_TARIFFS)
async def test_invalid_set_tariff_is_answered_with_code_and_path_and_changes_nothing(
    tmp_path: Path, tariff: dict[str, object], code: str, reason: str
) -> None:
    """A bad tariff in any form: an error result with the offending field's path; the port (the
    runtime) is never handed anything (the OCPI cases depend on the tariff rewrite)."""
    handler, port, _ = make(tmp_path)
    result = await handler.handle("set_tariff", cmd(correlation_id="bad", tariff=tariff))
    assert (result.status, result.code, result.correlation_id) == ("error", code, "bad"), result.reason
    assert result.reason is not None
    assert result.reason.startswith(reason), result.reason
    assert port.calls == []


@pytest.mark.req("START-5")
async def test_set_local_auth_list_full_then_differential(tmp_path: Path) -> None:
    handler, _, _ = make(tmp_path)
    full = cmd(
        correlation_id="l1",
        version=1,
        update="full",
        entries=[{"uid": "04A1B2C3D4E5F6", "status": "accepted", "limit_minor": 1000}],
    )
    diff = cmd(
        correlation_id="l2",
        version=2,
        update="differential",
        entries=[{"uid": "0A0B0C0D", "status": "blocked"}],
    )
    assert (await handler.handle("set_local_auth_list", full)).status == "accepted"
    result = await handler.handle("set_local_auth_list", diff)
    assert result.status == "accepted"
    assert result.data == {"version": 2, "entries": 2}
    assert LocalAuthList.load(local_list_path(tmp_path)).version == 2


async def test_display_message_on_apollo(tmp_path: Path) -> None:
    handler, port, _ = make(tmp_path)
    result = await handler.handle(
        "display_message", cmd(correlation_id="d", title="Hello", message="Welcome")
    )
    assert result.status == "accepted"
    assert port.calls == [("display_message", ScreenMessage(None, "Hello", "Welcome", 30))]


async def test_reconcile_returns_the_report_id(tmp_path: Path) -> None:
    handler, port, _ = make(tmp_path)
    result = await handler.handle("reconcile", cmd(correlation_id="r", date="2026-02-28"))
    assert result.status == "accepted"
    assert result.data == {"report_id": "R-1", "date": "2026-02-28", "payments": 2, "discrepancies": 0}
    assert port.calls == [("reconcile", date(2026, 2, 28))]


@pytest.mark.req("REC-1", "ERR-5")
async def test_clear_discrepancy_clears_the_possible_orphan_approval(tmp_path: Path) -> None:
    handler, port, published = make(tmp_path)
    payload = cmd(correlation_id="cd", session_id="1-orphan", note="hold released in the portal")
    result = await handler.handle("clear_discrepancy", payload)
    assert (result.status, result.code) == ("accepted", None)
    assert result.data == {"session_id": "1-orphan", "kind": "possible_orphan_approval"}
    assert port.calls == [("clear_orphan", ("1-orphan", "hold released in the portal"))]
    assert port.orphans == set()
    [(topic, body, _)] = published.messages
    assert (topic, body["status"]) == (TOPICS.command_result("clear_discrepancy"), "accepted")
    # a QoS 1 redelivery is answered again, not executed again (it would now be a conflict)
    assert await handler.handle("clear_discrepancy", payload) == result
    assert len(port.calls) == 1
    # without a note
    port.orphans.add("1-cleared")
    result = await handler.handle("clear_discrepancy", cmd(correlation_id="cd2", session_id="1-cleared"))
    assert result.status == "accepted"
    assert port.calls[-1] == ("clear_orphan", ("1-cleared", None))


async def test_get_sessions_open_and_all(tmp_path: Path) -> None:
    handler, port, _ = make(tmp_path)
    result = await handler.handle("get_sessions", cmd(correlation_id="g"))
    assert result.status == "accepted"
    assert result.sessions is not None
    assert [(s.session_id, s.state) for s in result.sessions] == [("S-2", "charging"), ("S-4", "stopping")]
    port.payments = [
        {
            "payment_id": "S-2",
            "connector_id": 2,
            "method": "emv",
            "terminal_session_id": "77",
            "state": "charging",
            "energy_wh": 1200,
            "cost_minor": 99,
            "final_minor": None,
            "authorized_minor": 5000,
            "started_at": "2026-03-01T09:00:00.123456+00:00",
            "ended_at": None,
        },
        {
            "payment_id": "S-1",
            "connector_id": 1,
            "method": "rfid",
            "terminal_session_id": None,
            "state": "ended",
            "energy_wh": 5000,
            "cost_minor": 300,
            "final_minor": 300,
            "authorized_minor": None,
            "started_at": "2026-03-01T08:00:00+00:00",
            "ended_at": "2026-03-01T08:30:00+00:00",
        },
        {"payment_id": "S-0", "connector_id": 1, "method": None, "started_at": "x"},  # not listable
    ]
    result = await handler.handle("get_sessions", cmd(correlation_id="g2", scope="all", limit=10))
    assert result.sessions is not None
    assert [(s.session_id, s.state, s.started_at) for s in result.sessions] == [
        ("S-2", "charging", "2026-03-01T09:00:00.123Z"),
        ("S-1", "ended", "2026-03-01T08:00:00.000Z"),
    ]
    assert result.data == {"count": 2, "skipped": 1}


@pytest.mark.req("UP-3")
async def test_a_redelivered_command_is_answered_again_but_not_executed_twice(tmp_path: Path) -> None:
    handler, port, published = make(tmp_path)
    payload = cmd(correlation_id="dup", connector_id=1, id_token="T")
    first = await handler.handle("start", payload)
    second = await handler.handle("start", payload)
    assert first == second
    assert len(port.calls) == 1
    assert len(published.messages) == 2
    assert handler.stats.duplicates == 1


@pytest.mark.req("UP-3")
async def test_mqtt5_correlation_data_stands_in_for_the_correlation_id(tmp_path: Path) -> None:
    handler, _, published = make(tmp_path)
    result = await handler.handle(
        "start", cmd(connector_id=1, id_token="T"), response_topic="bo/replies/7", correlation_data=b"corr-7"
    )
    assert result.status == "accepted"
    assert result.correlation_id == "corr-7"
    assert [(t, c) for t, _, c in published.messages] == [
        (TOPICS.command_result("start"), None),
        ("bo/replies/7", b"corr-7"),
    ]


@pytest.mark.parametrize(
    "response_topic", ["bo/+/x", "bo/#", f"{TOPICS.prefix}/cmd/start", f"{TOPICS.prefix}/auth/response"]
)
async def test_unsafe_response_topics_are_not_used(tmp_path: Path, response_topic: str) -> None:
    handler, _, published = make(tmp_path)
    await handler.handle(
        "start", cmd(correlation_id="c", connector_id=1, id_token="T"), response_topic=response_topic
    )
    assert [t for t, _, _ in published.messages] == [TOPICS.command_result("start")]


async def test_a_failing_publish_does_not_break_the_handler(tmp_path: Path) -> None:
    from agent.upstream.client import UpstreamNotConnected

    async def broken(topic: str, payload: bytes, qos: int = 1, **_: object) -> None:
        raise UpstreamNotConnected("offline")

    handler, _port, _ = make(tmp_path, publish=broken)
    result = await handler.handle("start", cmd(correlation_id="c", connector_id=1, id_token="T"))
    assert result.status == "accepted"
    assert handler.stats.publish_failures == 1


async def test_a_port_failure_is_an_internal_error(tmp_path: Path) -> None:
    handler, port, _ = make(tmp_path)

    def boom(_connector_id: int) -> str:
        raise RuntimeError("bug")

    port.connector_state = boom  # type: ignore[method-assign, assignment]
    result = await handler.handle("start", cmd(correlation_id="c", connector_id=1, id_token="T"))
    assert (result.status, result.code) == ("error", "internal")
    assert port.calls == []


# --------------------------------------------------------------------------------------------------
# ≥ 25 malformed or invalid commands: each gets an error/rejected result, nothing changes
# --------------------------------------------------------------------------------------------------

BIG = b'{"correlation_id":"big","connector_id":1,"id_token":"' + b"A" * 300_000 + b'"}'
_UID = "04A1B2C3D4E5F6"

# (id, command name, payload, options, expected status, expected code, expected correlation id)
BAD: list[tuple[str, str, bytes, dict[str, Any], str, str, str | None]] = [
    ("bad-json", "start", b"{not json", {}, "error", "invalid_json", None),
    ("empty", "start", b"", {}, "error", "invalid_json", None),
    ("not-utf8", "start", b"\xff\xfe{}", {}, "error", "invalid_encoding", None),
    ("array", "start", b"[1, 2]", {}, "error", "not_an_object", None),
    ("null", "start", b"null", {}, "error", "not_an_object", None),
    ("oversized", "start", BIG, {}, "error", "payload_too_large", None),
    ("no-corr", "start", cmd(connector_id=1, id_token="T"), {}, "error", "missing_correlation_id", None),
    ("empty-corr", "start", cmd(correlation_id="", connector_id=1, id_token="T"), {}, "error",
     "missing_correlation_id", None),
    ("long-corr", "start", cmd(correlation_id="x" * 129, connector_id=1, id_token="T"), {}, "error",
     "missing_correlation_id", None),
    ("int-corr", "start", cmd(correlation_id=7, connector_id=1, id_token="T"), {}, "error",
     "missing_correlation_id", None),
    ("unknown-cmd", "reboot", cmd(correlation_id="c"), {}, "error", "unknown_command", "c"),
    ("str-connector", "start", cmd(correlation_id="c", connector_id="1", id_token="T"), {}, "error",
     "invalid_type", "c"),
    ("connector-0", "start", cmd(correlation_id="c", connector_id=0, id_token="T"), {}, "error",
     "invalid_value", "c"),
    ("unknown-connector", "start", cmd(correlation_id="c", connector_id=9, id_token="T"), {}, "error",
     "invalid_value", "c"),
    ("no-token", "start", cmd(correlation_id="c", connector_id=1), {}, "error", "missing_field", "c"),
    ("bad-token", "start", cmd(correlation_id="c", connector_id=1, id_token="a b"), {}, "error",
     "invalid_value", "c"),
    ("extra-field", "start", cmd(correlation_id="c", connector_id=1, id_token="T", station="x"), {}, "error",
     "unknown_field", "c"),
    ("negative-limit", "start", cmd(correlation_id="c", connector_id=1, id_token="T", limit_minor=-5), {},
     "error", "invalid_value", "c"),
    ("zero-limit", "start", cmd(correlation_id="c", connector_id=1, id_token="T", limit_minor=0), {}, "error",
     "invalid_value", "c"),
    ("start-busy", "start", cmd(correlation_id="c", connector_id=2, id_token="T"), {}, "rejected", "conflict",
     "c"),
    ("start-unavailable", "start", cmd(correlation_id="c", connector_id=3, id_token="T"), {}, "rejected",
     "conflict", "c"),
    ("start-disabled", "start", cmd(correlation_id="c", connector_id=1, id_token="T"),
     {"start_modes": frozenset({StartMode.TAP})}, "error", "not_supported", "c"),
    ("start-retained", "start", cmd(correlation_id="c", connector_id=1, id_token="T"), {"retain": True},
     "error", "invalid_value", "c"),
    ("stop-no-session", "stop", cmd(correlation_id="c", connector_id=1), {}, "rejected", "conflict", "c"),
    ("stop-wrong-session", "stop", cmd(correlation_id="c", connector_id=2, session_id="S-9"), {}, "rejected",
     "conflict", "c"),
    ("stop-unknown-connector", "stop", cmd(correlation_id="c", connector_id=9), {}, "error", "invalid_value",
     "c"),
    ("stop-already-stopping", "stop", cmd(correlation_id="c", connector_id=4), {}, "rejected", "conflict",
     "c"),
    ("stop-disabled", "stop", cmd(correlation_id="c", connector_id=2),
     {"stop_modes": frozenset({StopMode.UNPLUG})}, "error", "not_supported", "c"),
    ("availability-str", "set_availability", cmd(correlation_id="c", available="yes"), {}, "error",
     "invalid_type", "c"),
    ("availability-unknown", "set_availability", cmd(correlation_id="c", connector_id=9, available=True), {},
     "error", "invalid_value", "c"),
    ("tariff-not-object", "set_tariff", cmd(correlation_id="c", tariff=5), {}, "error", "invalid_type", "c"),
    ("tariff-bad-price", "set_tariff", cmd(correlation_id="c", tariff={**TARIFF, "energy_per_kwh": "-1"}), {},
     "error", "invalid_value", "c"),
    ("list-bad-uid", "set_local_auth_list", cmd(correlation_id="c", version=9, update="full",
     entries=[{"uid": "xyz", "status": "accepted"}]), {}, "error", "invalid_value", "c"),
    ("list-bad-update", "set_local_auth_list", cmd(correlation_id="c", version=9, update="partial",
     entries=[]), {}, "error", "invalid_value", "c"),
    ("list-old-version", "set_local_auth_list", cmd(correlation_id="c", version=5, update="differential",
     entries=[{"uid": _UID, "status": "blocked"}]), {}, "rejected", "conflict", "c"),
    ("display-on-p6x", "display_message", cmd(correlation_id="c", title="Hi"), {"capabilities": P6X}, "error",
     "not_supported", "c"),
    ("display-empty-title", "display_message", cmd(correlation_id="c", title=""), {}, "error",
     "invalid_value", "c"),
    ("display-unknown-connector", "display_message", cmd(correlation_id="c", connector_id=9, title="Hi"), {},
     "error", "invalid_value", "c"),
    ("reconcile-bad-date", "reconcile", cmd(correlation_id="c", date="2026-02-30"), {}, "error",
     "invalid_value", "c"),
    ("reconcile-future", "reconcile", cmd(correlation_id="c", date="2999-01-01"), {}, "error",
     "invalid_value", "c"),
    ("reconcile-unwired", "reconcile", cmd(correlation_id="c"), {"reconcile_wired": False}, "error",
     "not_supported", "c"),
    ("sessions-limit-0", "get_sessions", cmd(correlation_id="c", limit=0), {}, "error", "invalid_value", "c"),
    ("sessions-bad-scope", "get_sessions", cmd(correlation_id="c", scope="mine"), {}, "error",
     "invalid_value", "c"),
    ("clear-unknown-session", "clear_discrepancy", cmd(correlation_id="c", session_id="9-nowhere"), {},
     "error", "invalid_value", "c"),
    ("clear-not-an-orphan", "clear_discrepancy", cmd(correlation_id="c", session_id="1-cleared"), {},
     "rejected", "conflict", "c"),
    ("clear-other-kind", "clear_discrepancy", cmd(correlation_id="c", session_id="1-orphan",
     kind="undisposed_payment"), {}, "error", "invalid_value", "c"),
    ("clear-no-session", "clear_discrepancy", cmd(correlation_id="c"), {}, "error", "missing_field", "c"),
    ("clear-long-note", "clear_discrepancy", cmd(correlation_id="c", session_id="1-orphan", note="x" * 257),
     {}, "error", "invalid_value", "c"),
]  # fmt: skip


def test_the_table_is_big_enough() -> None:
    assert len(BAD) >= 25


@pytest.mark.req("UP-3")
@pytest.mark.parametrize(
    ("name", "payload", "options", "status", "code", "correlation_id"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
async def test_invalid_command_gets_an_error_result_and_changes_nothing(
    tmp_path: Path,
    name: str,
    payload: bytes,
    options: dict[str, Any],
    status: str,
    code: str,
    correlation_id: str | None,
) -> None:
    options = dict(options)
    retain = options.pop("retain", False)
    port = FakePort(reconcile_wired=options.pop("reconcile_wired", True))
    handler, port, published = make(tmp_path, port, **options)
    await handler.authorizer.local_list.apply(
        SetLocalAuthList(correlation_id="seed", version=5, update="full", entries=()), now=NOW
    )
    before = LocalAuthList.load(local_list_path(tmp_path))
    result = await handler.handle(name, payload, retain=retain)
    assert (result.status, result.code, result.correlation_id) == (status, code, correlation_id)
    assert result.reason
    assert result.command == name
    # nothing changed
    assert port.calls == []
    after = LocalAuthList.load(local_list_path(tmp_path))
    assert (after.version, after.entries()) == (before.version, before.entries())
    # the result was published on the command's result topic
    [(topic, body, _)] = published.messages
    assert topic == TOPICS.command_result(name)
    assert body["status"] == status
    # and the handler is healthy afterwards
    if "start_modes" not in options:
        ok = await handler.handle("start", cmd(correlation_id="after", connector_id=1, id_token="T"))
        assert ok.status == "accepted"


@pytest.mark.req("UP-3")
def test_every_contract_command_has_a_handler_case() -> None:
    from agent.upstream.contract import COMMANDS

    assert set(COMMANDS) == {
        "start",
        "stop",
        "set_availability",
        "set_tariff",
        "set_local_auth_list",
        "display_message",
        "reconcile",
        "clear_discrepancy",
        "get_sessions",
    }
    decode_command("get_sessions", cmd(correlation_id="c"))  # the default payload is valid


async def test_queue_overflow_is_counted_not_blocking(tmp_path: Path) -> None:
    from agent.upstream.client import InboundMessage

    handler, _, _ = make(tmp_path)
    message = InboundMessage(TOPICS.command("start"), cmd(correlation_id="c", connector_id=1, id_token="T"))
    for _ in range(handler.queue.maxsize + 3):
        handler.on_message(message)
    assert handler.stats.dropped == 3
    handler.on_message(InboundMessage(TOPICS.command_result("start"), b"{}"))  # not a command topic
    assert handler.queue.qsize() == handler.queue.maxsize


# --------------------------------------------------------------------------------------------------
# round trips over a real broker
# --------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def agent_side(broker: Broker, tmp_path: Path) -> AsyncIterator[tuple[CommandHandler, FakePort]]:
    upstream = UpstreamClient(
        broker_url=broker.url,
        station_id=STATION,
        client_id=f"agent-{uuid.uuid4().hex[:8]}",
        backoff_min_s=0.05,
        backoff_max_s=0.3,
        rng=random.Random(5),
    )
    handler, port, _ = make(tmp_path, publish=upstream.publish_now)
    await upstream.subscribe(TOPICS.command_filter, handler.on_message)
    await upstream.start()
    task = asyncio.create_task(handler.run(), name="commands")
    try:
        await upstream.wait_connected(5)
        yield handler, port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await upstream.close()


@contextlib.asynccontextmanager
async def back_office(
    broker: Broker, *filters: str
) -> AsyncIterator[tuple[aiomqtt.Client, asyncio.Queue[aiomqtt.Message]]]:
    client = aiomqtt.Client(
        broker.host, broker.port, identifier=f"bo-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5
    )
    await client.__aenter__()
    for topic_filter in filters:
        await client.subscribe(topic_filter, qos=1)
    queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()

    async def collect() -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                queue.put_nowait(message)

    task = asyncio.create_task(collect(), name="test-back-office")
    try:
        yield client, queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


async def next_result(queue: asyncio.Queue[aiomqtt.Message]) -> tuple[str, CommandResult, bytes | None]:
    import msgspec

    async with asyncio.timeout(5):
        message = await queue.get()
    assert isinstance(message.payload, bytes)
    result = msgspec.json.decode(message.payload, type=CommandResult)
    return message.topic.value, result, getattr(message.properties, "CorrelationData", None)


@pytest.mark.req("UP-3", "START-4", "STOP-5")
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
async def test_round_trip_with_correlation_id_over_mosquitto(mosquitto: Broker, tmp_path: Path) -> None:
    async with (
        agent_side(mosquitto, tmp_path) as (handler, port),
        back_office(mosquitto, f"{TOPICS.prefix}/cmd/+/result") as (client, results),
    ):
        payload = cmd(correlation_id="rt-1", connector_id=1, id_token="EMSP-1", limit_minor=900)
        await client.publish(TOPICS.command("start"), payload, qos=1)
        topic, result, _ = await next_result(results)
        assert topic == TOPICS.command_result("start")
        assert (result.status, result.correlation_id) == ("accepted", "rt-1")
        assert port.calls == [("post", RemoteStart(1, NOW, "EMSP-1", 900))]

        await client.publish(TOPICS.command("stop"), cmd(correlation_id="rt-2", connector_id=2), qos=1)
        topic, result, _ = await next_result(results)
        assert topic == TOPICS.command_result("stop")
        assert (result.status, result.correlation_id) == ("accepted", "rt-2")

        await client.publish(TOPICS.command("start"), b"{garbage", qos=1)
        topic, result, _ = await next_result(results)
        assert (topic, result.status, result.code) == (
            TOPICS.command_result("start"),
            "error",
            "invalid_json",
        )

        await client.publish(TOPICS.command("frobnicate"), cmd(correlation_id="rt-3"), qos=1)
        topic, result, _ = await next_result(results)
        assert topic == TOPICS.command_result("frobnicate")
        assert (result.status, result.code, result.correlation_id) == ("error", "unknown_command", "rt-3")
        assert handler.stats.received == 4


@pytest.mark.req("UP-3")
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
async def test_mqtt5_response_topic_and_correlation_data_over_mosquitto(
    mosquitto: Broker, tmp_path: Path
) -> None:
    reply_topic = f"backoffice/replies/{uuid.uuid4().hex[:8]}"
    async with (
        agent_side(mosquitto, tmp_path) as (_handler, port),
        back_office(mosquitto, reply_topic) as (client, replies),
    ):
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = b"req-42"
        # no correlation_id in the payload: the MQTT 5 correlation data stands in for it
        await client.publish(
            TOPICS.command("start"), cmd(connector_id=1, id_token="EMSP-2"), qos=1, properties=props
        )
        topic, result, correlation = await next_result(replies)
        assert topic == reply_topic
        assert correlation == b"req-42"
        assert (result.status, result.correlation_id) == ("accepted", "req-42")
        assert port.calls == [("post", RemoteStart(1, NOW, "EMSP-2", None))]

        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = b"req-43"
        await client.publish(TOPICS.command("display_message"), b"[]", qos=1, properties=props)
        topic, result, correlation = await next_result(replies)
        assert (topic, correlation, result.status, result.code) == (
            reply_topic,
            b"req-43",
            "error",
            "not_an_object",
        )
