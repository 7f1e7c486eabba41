"""The upstream contract: topics, payload round trips, strict command decoding."""

from __future__ import annotations

import json
import tempfile
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_type_hints

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.money.tariff import TariffConfigError, tariff_from_builtins
from agent.store.outbox import Outbox
from agent.upstream import contract
from agent.upstream.asyncapi import EXAMPLES
from agent.upstream.contract import (
    COMMANDS,
    CONTRACT_VERSION,
    DEFAULT_MAX_COMMAND_BYTES,
    EVENT_TYPES,
    TOPICS,
    AuthResponse,
    CommandError,
    CommandErrorCode,
    ContractError,
    PaymentFailed,
    SessionEvent,
    SessionSummaryState,
    SetTariff,
    Start,
    Status,
    StatusOffline,
    StatusOnline,
    Stop,
    Topics,
    decode_auth_response,
    decode_command,
    encode,
    masked_pan_ok,
    tariff_error,
    utc_timestamp,
)
from agent.upstream.publisher import Publisher
from statemachines.connector import TRANSITIONS, ConnectorMachineState
from statemachines.effects import (
    PublishPaymentAuthorized,
    PublishPaymentCaptured,
    PublishPaymentDeclined,
    PublishPaymentIncremented,
    PublishPaymentPartiallyApproved,
    PublishPaymentVoided,
    PublishSessionEnded,
    PublishSessionStarted,
    PublishSessionUpdated,
    UpdateReason,
    UpstreamEvent,
)
from statemachines.events import (
    BackendAuthorizationStatus,
    DeclineOutcome,
    PaymentMethod,
    RestoreResolution,
    StopSource,
)
from tests.upstream.strategies import structs

C = CommandErrorCode
PAYLOAD_TYPES = sorted(EXAMPLES, key=lambda t: t.__name__)
_MSG = "6f1c2a9e-0b1d-4c55-9a43-2f7d3e8b1c01"


def _j(**fields: object) -> bytes:
    return json.dumps(fields).encode()


# --------------------------------------------------------------------------------------------------
# topics (UP-1)
# --------------------------------------------------------------------------------------------------


@pytest.mark.req("UP-1")
def test_topic_table_is_design_5_3() -> None:
    rows = {(t.suffix, t.direction, t.retained, t.via_outbox, t.qos) for t in TOPICS}
    expected_fixed = {
        ("status", "send", True, False, 1),
        ("terminal", "send", True, False, 1),
        ("connectors/{connector_id}/state", "send", True, False, 1),
        ("connectors/{connector_id}/meter", "send", False, True, 1),
        ("connectors/{connector_id}/events", "send", False, True, 1),
        ("receipts", "send", False, True, 1),
        ("reports/reconciliation", "send", False, True, 1),
        ("alarms", "send", False, True, 1),
        ("auth/request", "send", False, False, 1),
        ("auth/response", "receive", False, False, 1),
    }
    assert expected_fixed <= rows
    names = {"start", "stop", "set_availability", "set_tariff", "set_local_auth_list", "display_message"}
    names |= {"reconcile", "clear_discrepancy", "get_sessions"}
    assert set(COMMANDS) == names
    for name in names:
        assert (f"cmd/{name}", "receive", False, False, 1) in rows
        assert (f"cmd/{name}/result", "send", False, False, 1) in rows
    assert len(rows) == len(expected_fixed) + 2 * len(names)


@pytest.mark.req("UP-1")
def test_topics_under_the_versioned_prefix() -> None:
    t = Topics("ST-0001")
    assert t.status == "evpay/v1/ST-0001/status"
    assert t.terminal == "evpay/v1/ST-0001/terminal"
    assert t.connector_state(2) == "evpay/v1/ST-0001/connectors/2/state"
    assert t.meter(2) == "evpay/v1/ST-0001/connectors/2/meter"
    assert t.events(2) == "evpay/v1/ST-0001/connectors/2/events"
    assert t.receipts == "evpay/v1/ST-0001/receipts"
    assert t.reconciliation == "evpay/v1/ST-0001/reports/reconciliation"
    assert t.alarms == "evpay/v1/ST-0001/alarms"
    assert (t.auth_request, t.auth_response) == (
        "evpay/v1/ST-0001/auth/request",
        "evpay/v1/ST-0001/auth/response",
    )
    assert t.command("start") == "evpay/v1/ST-0001/cmd/start"
    assert t.command_result("start") == "evpay/v1/ST-0001/cmd/start/result"
    assert t.command_filter == "evpay/v1/ST-0001/cmd/+"
    assert t.command_name("evpay/v1/ST-0001/cmd/stop") == "stop"
    assert t.command_name("evpay/v1/ST-0001/cmd/stop/result") is None
    assert t.command_name("evpay/v1/ST-0002/cmd/stop") is None
    assert Topics("x", "acme/{station_id}/ev/").status == "acme/x/ev/status"


@pytest.mark.req("UP-1")
def test_birth_and_last_will_payloads() -> None:
    assert encode(StatusOffline()) == b'{"state":"offline"}'
    birth = json.loads(encode(StatusOnline(version="0.1.0", started_at="2026-03-01T10:00:00.000Z")))
    assert birth == {
        "state": "online",
        "version": "0.1.0",
        "contract": "1.2.0",
        "started_at": "2026-03-01T10:00:00.000Z",
    }
    assert isinstance(msgspec.json.decode(b'{"state":"offline"}', type=Status), StatusOffline)
    assert CONTRACT_VERSION == "1.2.0"


# --------------------------------------------------------------------------------------------------
# enums: the engine's are the contract's (types end to end)
# --------------------------------------------------------------------------------------------------

# every enum-typed field of every payload the agent sends or receives, and the enum it uses
ENUM_FIELDS: dict[str, type[Enum]] = {
    "ConnectorState.state": ConnectorMachineState,
    "ConnectorState.method": PaymentMethod,
    "SessionStarted.method": PaymentMethod,
    "PaymentAuthorized.method": PaymentMethod,
    "SessionUpdated.reason": UpdateReason,
    "SessionUpdated.resolution": RestoreResolution,
    "SessionUpdated.method": PaymentMethod,
    "SessionEnded.reason": StopSource,
    "PaymentDeclined.outcome": DeclineOutcome,
    "Receipt.method": PaymentMethod,
    "ReconciledPayment.method": PaymentMethod,
    "SessionSummary.state": SessionSummaryState,
    "SessionSummary.method": PaymentMethod,
    "CommandResult.code": CommandErrorCode,
}
ENGINE_ENUMS: tuple[type[Enum], ...] = (
    PaymentMethod,
    ConnectorMachineState,
    StopSource,
    DeclineOutcome,
    RestoreResolution,
    UpdateReason,
)


def _enums(t: mi.Type) -> Iterator[type[Enum]]:
    match t:
        case mi.Metadata():
            yield from _enums(t.type)
        case mi.EnumType():
            yield t.cls
        case mi.UnionType():
            for option in t.types:
                yield from _enums(option)
        case mi.VarTupleType() | mi.ListType():
            yield from _enums(t.item_type)


def _enum_fields(cls: type[msgspec.Struct], seen: set[type[Any]]) -> Iterator[tuple[str, type[Enum]]]:
    if cls in seen:
        return
    seen.add(cls)
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    for f in info.fields:
        for enum in _enums(f.type):
            yield f"{cls.__name__}.{f.name}", enum
        for nested in _structs(f.type):
            yield from _enum_fields(nested, seen)


def _structs(t: mi.Type) -> Iterator[type[msgspec.Struct]]:
    match t:
        case mi.Metadata():
            yield from _structs(t.type)
        case mi.StructType():
            yield t.cls
        case mi.UnionType():
            for option in t.types:
                yield from _structs(option)
        case mi.VarTupleType() | mi.ListType():
            yield from _structs(t.item_type)


_CONTRACT_TYPES = tuple({cls for spec in TOPICS for cls in spec.payload})


def test_contract_enums_are_the_engines() -> None:
    assert contract.PaymentMethod is PaymentMethod
    assert contract.ConnectorMachineState is ConnectorMachineState
    assert contract.StopReason is StopSource
    assert contract.DeclineOutcome is DeclineOutcome
    assert contract.RestoreResolution is RestoreResolution  # type: ignore[attr-defined]
    assert contract.UpdateReason is UpdateReason  # type: ignore[attr-defined]


def test_every_enum_field_uses_the_engines_enum() -> None:
    """No payload field re-spells an engine enum as its own Literal or str: mypy then checks that a
    value the engine produces is one the contract accepts."""
    seen: set[type[Any]] = set()
    found = dict(f for cls in _CONTRACT_TYPES for f in _enum_fields(cls, seen))
    found = {k: v for k, v in found.items() if not k.startswith(("TariffConfig.", "TariffBand."))}
    assert found == ENUM_FIELDS


def test_the_published_schemas_list_exactly_the_engines_values() -> None:
    _, schemas = msgspec.json.schema_components(list(_CONTRACT_TYPES))
    for enum in {*ENGINE_ENUMS, SessionSummaryState, CommandErrorCode}:
        assert set(schemas[enum.__name__]["enum"]) == {m.value for m in enum}, enum.__name__  # type: ignore[attr-defined]


def test_connector_states_are_the_rulebooks() -> None:
    """Every state the connector machine's rulebook (``transitions``) names is a contract value,
    and every contract value is a state of the rulebook."""
    named: set[str] = set()
    for t in TRANSITIONS:
        source = t["source"]
        named |= {source} if isinstance(source, str) else set(source)
        if t.get("dest") is not None:
            named.add(t["dest"])
    named -= {"*", "="}
    assert named == {s.value for s in contract.ConnectorMachineState}
    assert {s.value for s in SessionSummaryState} == named | {"ended"}


@pytest.mark.parametrize(("field", "enum"), list(ENUM_FIELDS.items()), ids=list(ENUM_FIELDS))
def test_every_enum_value_round_trips_and_nothing_else_decodes(field: str, enum: type[Enum]) -> None:
    cls_name, name = field.split(".")
    candidates: list[type[msgspec.Struct]] = [*EXAMPLES, contract.SessionSummary, contract.ReconciledPayment]
    cls = next(c for c in candidates if c.__name__ == cls_name)
    base = msgspec.json.decode(encode(next(iter(_example_of(cls)))))
    for member in enum:
        payload = json.dumps({**base, name: member.value}).encode()
        assert getattr(msgspec.json.decode(payload, type=cls), name) is member
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps({**base, name: "bogus"}).encode(), type=cls)


def _example_of(cls: type[msgspec.Struct]) -> Iterator[msgspec.Struct]:
    if cls in EXAMPLES:
        yield from (example for _, example in EXAMPLES[cls])
    for examples in EXAMPLES.values():  # nested in another example
        for _, example in examples:
            for value in msgspec.structs.asdict(example).values():
                for item in value if isinstance(value, tuple) else (value,):
                    if isinstance(item, cls):
                        yield item


def test_auth_statuses_are_the_engines_but_unavailable() -> None:
    statuses = {s.value for s in BackendAuthorizationStatus} - {"unavailable"}
    assert set(get_args(contract.AuthStatus)) == statuses


def test_utc_timestamp() -> None:
    at = datetime(2026, 3, 1, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert utc_timestamp(at) == "2026-03-01T10:00:00.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        utc_timestamp(datetime(2026, 3, 1))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("411111******1111", True),
        ("************1111", True),
        ("4111 11** **** 1111", True),
        ("4111111111111111", False),  # a full PAN
        ("41111111***11111", False),  # 8 + 5 visible
        ("1234", True),
        ("12", False),
    ],
)
def test_masked_pan_allows_at_most_6_plus_4_digits(text: str, ok: bool) -> None:
    assert masked_pan_ok(text) is ok


# --------------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.req("UP-1")
@pytest.mark.parametrize("cls", PAYLOAD_TYPES, ids=lambda c: c.__name__)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(data=st.data())
def test_every_payload_round_trips(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    value = data.draw(structs(cls))
    assert msgspec.json.decode(encode(value), type=cls) == value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=st.one_of([structs(t) for t in EVENT_TYPES.values()]))
def test_session_events_decode_through_their_tag(event: msgspec.Struct) -> None:
    decoded = msgspec.json.decode(encode(event), type=SessionEvent)
    assert decoded == event
    assert json.loads(encode(event))["event"] == type(event).__struct_config__.tag


# --------------------------------------------------------------------------------------------------
# engine events → contract events (agent/upstream/publisher.py)
# --------------------------------------------------------------------------------------------------

_AT = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
_COMMON = {"msg_id", "connector_id", "session_id", "seq", "ts", "offline"}
# engine field → contract field (the engine's ``session_ref`` is the contract's ``session_id``,
# the engine's ``session_id`` the terminal's: ``terminal_session_id``); other names are equal
_RENAMED = {"session_ref": "session_id", "session_id": "terminal_session_id"}
PUBLISH_TYPES: tuple[type[Any], ...] = get_args(UpstreamEvent)
# engine fields the contract event does not carry (none: every engine fact reaches the back office)
_NOT_IN_CONTRACT: dict[type[Any], set[str]] = {}
# contract fields the publisher reads from the journal row the same step wrote (not engine fields)
_FROM_JOURNAL: dict[type[Any], set[str]] = {PublishSessionEnded: {"charging_periods"}}


class _Client:
    def __init__(self, *, connected: bool) -> None:
        self.is_connected = connected

    def set_retained(self, topic: str, payload: bytes) -> None:
        raise AssertionError("events never go to retained state")


def _field_strategy(name: str, hint: Any) -> st.SearchStrategy[Any]:
    """Values the engine can produce that fit the contract (degrading is tests/upstream/test_degrade.py)."""
    options = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in options:
        (inner,) = (o for o in options if o is not type(None))
        return st.none() | _field_strategy(name, inner)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return st.sampled_from(list(hint))
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(1, 255) if name == "connector_id" else st.integers(0, 2**53)
    assert hint is str, (name, hint)
    return st.text(min_size=1, max_size={"session_ref": 64, "session_id": 32}.get(name, 256))


def _effects(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = get_type_hints(cls)
    return st.builds(cls, **{name: _field_strategy(name, hint) for name, hint in hints.items()})


def _vars_of(effect: Any) -> dict[str, Any]:
    return {name: getattr(effect, name) for name in get_type_hints(type(effect))}


def _publish(effect: Any, *, connected: bool) -> tuple[Publisher, msgspec.Struct, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp))
        try:
            publisher = Publisher(
                outbox, _Client(connected=connected), Topics("ST-1"), "ST-1", clock=lambda: _AT
            )
            publisher.event(effect)
            (row,) = outbox.pending()
        finally:
            outbox.close()
    assert (row.kind, row.topic) == ("event", Topics("ST-1").events(effect.connector_id))
    return publisher, msgspec.json.decode(row.payload, type=SessionEvent), row


@pytest.mark.req("UP-1", "UP-2")
@pytest.mark.parametrize("cls", PUBLISH_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_engine_event_is_published_as_its_contract_event(cls: type[Any], data: st.DataObject) -> None:
    """Each engine ``Publish*`` effect becomes one contract event through the publisher, every
    engine field carried (renamed by ``_RENAMED`` only), nothing degraded."""
    effect = data.draw(_effects(cls))
    connected = data.draw(st.booleans())
    publisher, event, _ = _publish(effect, connected=connected)
    assert publisher.errors == 0
    assert (event.connector_id, event.session_id, event.seq, event.ts, event.offline) == (  # type: ignore[attr-defined]
        effect.connector_id,
        effect.session_ref,
        0,
        utc_timestamp(_AT),
        not connected,
    )
    dropped = _NOT_IN_CONTRACT.get(cls, set())
    carried = {_RENAMED.get(n, n): v for n, v in _vars_of(effect).items() if n not in dropped}
    del carried["connector_id"]
    fields = {f.name for f in msgspec.structs.fields(type(event))} - _COMMON - _FROM_JOURNAL.get(cls, set())
    assert fields == set(carried) - {"session_id"}  # no contract field without its engine field
    for name, value in carried.items():
        assert getattr(event, name) == value, name


_SAMPLES: dict[type[Any], Any] = {
    PublishSessionStarted: PublishSessionStarted(1, "1-a", PaymentMethod.EMV, meter_wh=None),
    PublishSessionUpdated: PublishSessionUpdated(
        1,
        "1-a",
        reason=UpdateReason.RESUMED,
        resolution=RestoreResolution.VOID,
        session_id="77",
        method=PaymentMethod.EMV,
        plugged=False,
        authorized_minor=5000,
    ),
    PublishSessionEnded: PublishSessionEnded(
        1, "1-a", reason=StopSource.UNPLUG, energy_wh=5, cost_minor=2, amount_minor=2
    ),
    PublishPaymentAuthorized: PublishPaymentAuthorized(
        1, "1-a", PaymentMethod.RFID, session_id=None, authorized_minor=None
    ),
    PublishPaymentPartiallyApproved: PublishPaymentPartiallyApproved(1, "1-a", "77", authorized_minor=2000),
    PublishPaymentDeclined: PublishPaymentDeclined(1, "1-a", DeclineOutcome.NO_CREDIT, reason=None),
    PublishPaymentIncremented: PublishPaymentIncremented(1, "1-a", "77", authorized_minor=7000),
    PublishPaymentCaptured: PublishPaymentCaptured(1, "1-a", "77", amount_minor=60),
    PublishPaymentVoided: PublishPaymentVoided(1, "1-a", "77"),
}


@pytest.mark.req("UP-1")
def test_every_engine_event_type_maps_to_exactly_one_contract_event_class() -> None:
    assert set(_SAMPLES) == set(PUBLISH_TYPES)
    mapped = {cls: type(_publish(effect, connected=True)[1]) for cls, effect in _SAMPLES.items()}
    assert len(set(mapped.values())) == len(mapped)  # one contract class per engine type
    assert set(mapped.values()) <= set(EVENT_TYPES.values())
    # the contract's only event the engine does not produce (the runtime has no payment.failed)
    assert set(EVENT_TYPES.values()) - set(mapped.values()) == {PaymentFailed}
    names = {cls.__name__.removeprefix("Publish"): event.__name__ for cls, event in mapped.items()}
    assert all(engine == contract_name for engine, contract_name in names.items())


# --------------------------------------------------------------------------------------------------
# commands (UP-3)
# --------------------------------------------------------------------------------------------------

_TARIFF = {"currency": "EUR", "prices_include_vat": True, "vat_rate_percent": "21", "energy_per_kwh": "0.39"}
_OK_START = {"correlation_id": "c-1", "connector_id": 1, "id_token": "04A1B2C3"}

MALFORMED: list[tuple[str, str, bytes, CommandErrorCode]] = [
    ("empty payload", "start", b"", C.INVALID_JSON),
    ("not json", "start", b"start please", C.INVALID_JSON),
    ("truncated json", "start", b'{"correlation_id": "c-1",', C.INVALID_JSON),
    ("trailing garbage", "start", b'{"correlation_id": "c-1"} x', C.INVALID_JSON),
    ("nested too deeply", "start", b"[" * 5000 + b"]" * 5000, C.INVALID_JSON),
    ("number out of range", "start", b'{"correlation_id": "c-1", "connector_id": 1e999}', C.INVALID_JSON),
    ("non-UTF-8 bytes", "start", b"\xff\xfe{}", C.INVALID_ENCODING),
    ("invalid UTF-8 in a string", "start", b'{"correlation_id": "\xc3\x28"}', C.INVALID_ENCODING),
    ("array", "start", b"[1, 2]", C.NOT_AN_OBJECT),
    ("string", "start", b'"start"', C.NOT_AN_OBJECT),
    ("null", "start", b"null", C.NOT_AN_OBJECT),
    ("missing correlation id", "start", _j(connector_id=1, id_token="04A1B2C3"), C.MISSING_CORRELATION_ID),
    ("null correlation id", "stop", _j(correlation_id=None, connector_id=1), C.MISSING_CORRELATION_ID),
    ("numeric correlation id", "stop", _j(correlation_id=42, connector_id=1), C.MISSING_CORRELATION_ID),
    ("empty correlation id", "stop", _j(correlation_id="", connector_id=1), C.MISSING_CORRELATION_ID),
    (
        "oversized correlation id",
        "stop",
        _j(correlation_id="x" * 129, connector_id=1),
        C.MISSING_CORRELATION_ID,
    ),
    ("unknown command", "reboot", _j(correlation_id="c-1"), C.UNKNOWN_COMMAND),
    ("empty command name", "", _j(correlation_id="c-1"), C.UNKNOWN_COMMAND),
    ("result topic as command", "start/result", _j(correlation_id="c-1"), C.UNKNOWN_COMMAND),
    ("extra field", "start", _j(**_OK_START, priority="high"), C.UNKNOWN_FIELD),
    (
        "connector-like field",
        "start",
        _j(correlation_id="c-1", connector=1, id_token="04A1B2C3"),
        C.UNKNOWN_FIELD,
    ),
    ("missing id_token", "start", _j(correlation_id="c-1", connector_id=1), C.MISSING_FIELD),
    ("missing available", "set_availability", _j(correlation_id="c-1", connector_id=1), C.MISSING_FIELD),
    ("connector id as string", "start", _j(**{**_OK_START, "connector_id": "1"}), C.INVALID_TYPE),
    ("connector id as float", "start", _j(**{**_OK_START, "connector_id": 1.0}), C.INVALID_TYPE),
    ("null connector id", "stop", _j(correlation_id="c-1", connector_id=None), C.INVALID_TYPE),
    ("boolean as string", "set_availability", _j(correlation_id="c-1", available="yes"), C.INVALID_TYPE),
    ("fractional amount", "start", _j(**_OK_START, limit_minor=12.5), C.INVALID_TYPE),
    ("amount as string", "start", _j(**_OK_START, limit_minor="10.00"), C.INVALID_TYPE),
    ("connector id 0", "start", _j(**{**_OK_START, "connector_id": 0}), C.INVALID_VALUE),
    ("connector id 256", "stop", _j(correlation_id="c-1", connector_id=256), C.INVALID_VALUE),
    ("negative amount", "start", _j(**_OK_START, limit_minor=-1), C.INVALID_VALUE),
    ("empty id token", "start", _j(**{**_OK_START, "id_token": ""}), C.INVALID_VALUE),
    ("id token with spaces", "start", _j(**{**_OK_START, "id_token": "a b"}), C.INVALID_VALUE),
    (
        "huge integer",
        "get_sessions",
        b'{"correlation_id": "c-1", "limit": 100000000000000000000000}',
        C.INVALID_VALUE,
    ),
    ("unknown enum value", "get_sessions", _j(correlation_id="c-1", scope="some"), C.INVALID_VALUE),
    ("zero duration", "display_message", _j(correlation_id="c-1", title="t", duration_s=0), C.INVALID_VALUE),
    ("bad date", "reconcile", _j(correlation_id="c-1", date="2026/03/01"), C.INVALID_VALUE),
    (
        "lower-case UID",
        "set_local_auth_list",
        _j(
            correlation_id="c-1",
            version=1,
            update="full",
            entries=[{"uid": "deadbeef", "status": "accepted"}],
        ),
        C.INVALID_VALUE,
    ),
    (
        "unknown field in a list item",
        "set_local_auth_list",
        _j(
            correlation_id="c-1",
            version=1,
            update="full",
            entries=[{"uid": "DEADBEEF", "status": "accepted", "x": 1}],
        ),
        C.UNKNOWN_FIELD,
    ),
    ("tariff not an object", "set_tariff", _j(correlation_id="c-1", tariff=["EUR"]), C.INVALID_TYPE),
    ("oversized payload", "start", b" " * (DEFAULT_MAX_COMMAND_BYTES + 1), C.PAYLOAD_TOO_LARGE),
]


@pytest.mark.req("UP-3")
@pytest.mark.parametrize(
    ("name", "payload", "code"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_command_gets_a_specific_error(name: str, payload: bytes, code: CommandErrorCode) -> None:
    with pytest.raises(CommandError) as info:
        decode_command(name, payload)
    error = info.value
    assert error.code is code, str(error)
    # the error result is a valid contract message and keeps the correlation id when there was one
    result = error.result(name, "2026-03-01T10:00:00.000Z")
    assert result.status == "error"
    assert result.code is code
    assert msgspec.json.decode(encode(result), type=type(result)) == result
    if code not in (
        C.PAYLOAD_TOO_LARGE,
        C.INVALID_ENCODING,
        C.INVALID_JSON,
        C.NOT_AN_OBJECT,
        C.MISSING_CORRELATION_ID,
    ):
        assert error.correlation_id == "c-1"


def test_the_malformed_table_covers_every_decoder_code() -> None:
    assert len(MALFORMED) >= 25
    decoder_codes = set(C) - {C.NOT_SUPPORTED, C.CONFLICT, C.INTERNAL}
    assert {m[3] for m in MALFORMED} == decoder_codes


@pytest.mark.req("UP-3")
def test_valid_commands_decode_to_typed_commands() -> None:
    assert decode_command("start", _j(**_OK_START, limit_minor=2000)) == Start(
        correlation_id="c-1", connector_id=1, id_token="04A1B2C3", limit_minor=2000
    )
    assert decode_command("stop", _j(correlation_id="c-2", connector_id=2, session_id=None)) == Stop(
        correlation_id="c-2", connector_id=2
    )
    command = decode_command("set_tariff", _j(correlation_id="c-3", tariff=_TARIFF))
    assert isinstance(command, SetTariff)
    assert command.tariff == _TARIFF  # any tariff form: checked when executed (tariff_error)
    for cls, examples in EXAMPLES.items():
        if cls in COMMANDS.values():
            for _, example in examples:
                assert decode_command(cls.name, encode(example)) == example  # type: ignore[attr-defined]


@pytest.mark.req("UP-3")
def test_mqtt5_correlation_data_stands_in_for_a_missing_correlation_id() -> None:
    command = decode_command("stop", _j(connector_id=1), correlation_data="mqtt5-corr")
    assert command == Stop(correlation_id="mqtt5-corr", connector_id=1)
    # an explicit correlation_id wins
    assert (
        decode_command("stop", _j(correlation_id="c-1", connector_id=1), correlation_data="x").correlation_id
        == "c-1"
    )


def test_max_bytes_is_configurable() -> None:
    payload = _j(**_OK_START)
    assert decode_command("start", payload, max_bytes=len(payload)).correlation_id == "c-1"
    with pytest.raises(CommandError) as info:
        decode_command("start", payload, max_bytes=len(payload) - 1)
    assert info.value.code is C.PAYLOAD_TOO_LARGE


def test_error_text_never_echoes_a_card_number() -> None:
    pan = "4111111111111111"
    with pytest.raises(CommandError) as info:
        decode_command("get_sessions", _j(correlation_id="c-1", scope=pan))
    assert pan not in str(info.value)
    assert pan not in info.value.reason


@pytest.mark.req("UP-3")
@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(st.sampled_from(sorted(COMMANDS)), st.text(max_size=20)), payload=st.binary(max_size=300)
)
def test_arbitrary_bytes_raise_only_command_error(name: str, payload: bytes) -> None:
    try:
        decode_command(name, payload, max_bytes=200)
    except CommandError:
        pass


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@pytest.mark.req("UP-3")
@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(COMMANDS)),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "correlation_id",
                "connector_id",
                "id_token",
                "limit_minor",
                "session_id",
                "available",
                "tariff",
                "version",
                "update",
                "entries",
                "title",
                "message",
                "duration_s",
                "date",
                "scope",
                "limit",
                "x",
            ]
        ),
        _JSON,
        max_size=6,
    ),
    correlation_id=st.one_of(st.none(), st.text(max_size=5)),
)
def test_arbitrary_json_objects_raise_only_command_error(
    name: str, fields: dict[str, object], correlation_id: str | None
) -> None:
    if correlation_id is not None:
        fields["correlation_id"] = correlation_id
    try:
        command = decode_command(name, json.dumps(fields).encode())
    except CommandError:
        return
    assert type(command).name == name


@settings(max_examples=100, deadline=None)
@given(
    tariff=st.fixed_dictionaries(
        {
            "currency": st.text(max_size=4),
            "prices_include_vat": st.booleans(),
            "vat_rate_percent": st.text(max_size=6),
        },
        optional={
            "energy_per_kwh": st.text(max_size=6),
            "minor_unit_digits": st.integers(-3, 9),
            "timezone": st.text(max_size=12),
            "minimum_price": st.text(max_size=6),
            "maximum_price": st.text(max_size=6),
            "idle_grace_minutes": st.integers(-5, 5),
            "bands": st.lists(
                st.fixed_dictionaries(
                    {"name": st.text(max_size=3), "start": st.text(max_size=5), "end": st.text(max_size=5)}
                ),
                max_size=2,
            ),
        },
    )
)
def test_arbitrary_tariffs_raise_only_command_error(tariff: dict[str, object]) -> None:
    """What the ``set_tariff`` handler does with any tariff: decode, then build it; a bad one is a
    ``TariffConfigError`` that :func:`tariff_error` turns into the command's error."""
    try:
        command = decode_command("set_tariff", _j(correlation_id="c", tariff=tariff))
    except CommandError:
        return
    assert isinstance(command, SetTariff)
    try:
        tariff_from_builtins(command.tariff)
    except TariffConfigError as exc:
        error = tariff_error(exc, correlation_id="c")
        assert error.code in (C.UNKNOWN_FIELD, C.MISSING_FIELD, C.INVALID_TYPE, C.INVALID_VALUE)
        assert error.reason.startswith(("tariff", "unknown field 'tariff", "missing field 'tariff"))


# --------------------------------------------------------------------------------------------------
# auth response (START-5)
# --------------------------------------------------------------------------------------------------


def test_auth_response_decodes_strictly() -> None:
    ok = decode_auth_response(_j(request_id=_MSG, status="accepted", limit_minor=3000))
    assert ok == AuthResponse(request_id=_MSG, status="accepted", limit_minor=3000)
    for payload, code in [
        (_j(request_id=_MSG, status="maybe"), C.INVALID_VALUE),
        (_j(request_id=_MSG, status="accepted", limit_minor=-5), C.INVALID_VALUE),
        (_j(request_id=_MSG, status="accepted", color="green"), C.UNKNOWN_FIELD),
        (_j(status="accepted"), C.MISSING_FIELD),
        (b"\x00", C.INVALID_JSON),
    ]:
        with pytest.raises(ContractError) as info:
            decode_auth_response(payload)
        assert info.value.code is code


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=100))
def test_auth_response_arbitrary_bytes_raise_only_contract_error(payload: bytes) -> None:
    try:
        decode_auth_response(payload)
    except ContractError:
        pass
