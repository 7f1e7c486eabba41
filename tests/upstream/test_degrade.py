"""Degrading a payload to fit its contract schema (agent/upstream/degrade.py; integrity issue A).

A message of the session/payment stream is never dropped for not fitting its schema: the publisher
(:mod:`agent.upstream.publisher`) publishes it degraded by :func:`conform` and logs an ERROR.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.money.tariff import Tariff, TariffConfig
from agent.store.db import Store
from agent.store.journal import Journal
from agent.store.outbox import Outbox, OutboxError
from agent.upstream.asyncapi import EXAMPLES
from agent.upstream.contract import (
    EVENT_TYPES,
    Alarm,
    ConnectorMachineState,
    ConnectorState,
    MeterValue,
    PaymentAuthorized,
    Receipt,
    Topics,
    encode,
)
from agent.upstream.degrade import conform, valid
from agent.upstream.publisher import ConnectorSnapshot, Publisher
from statemachines.effects import (
    IssueReceipt,
    PublishPaymentAuthorized,
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordMeter,
    RecordPaymentApproved,
)
from statemachines.events import CardKind, CardToken, PaymentMethod, SettlementOutcome
from statemachines.pricing import Usage, UsageKind
from tests.upstream.strategies import for_type

# every payload type the publisher builds and conforms before it publishes (the session events:
# all of the contract's, payment.failed included although the engine has no effect for it yet)
PUBLISHED: tuple[type[msgspec.Struct], ...] = (
    *EVENT_TYPES.values(),
    MeterValue,
    Alarm,
    ConnectorState,
    Receipt,
)
# Required, pattern-constrained strings are never handed in from outside: the publisher makes them
# (a fresh msg_id, its clock's timestamps) or takes them from the validated configuration (the
# tariff's currency and VAT rate). They are drawn valid; every other field is drawn arbitrary.
MADE_BY_THE_AGENT: dict[str, set[str]] = {
    **{cls.__name__: {"msg_id", "ts"} for cls in EVENT_TYPES.values()},
    "MeterValue": {"msg_id", "ts"},
    "Alarm": {"msg_id", "ts"},
    "ConnectorState": {"since", "ts"},
    "Receipt": {"msg_id", "issued_at", "started_at", "currency", "vat_rate_percent"},
}
# Required strings with a minimum length and no pattern (the session reference, a terminal session
# id where the event needs one, the receipt and station ids) are drawn non-empty — the engine never
# has an empty one — but otherwise arbitrary (over-long included). An empty one cannot be repaired
# (see test_an_unrepairable_field_is_named_and_left_as_it_is).
NON_EMPTY: dict[str, set[str]] = {
    **{cls.__name__: {"session_id"} for cls in EVENT_TYPES.values()},
    **{
        name: {"session_id", "terminal_session_id"}
        for name in ("PaymentPartiallyApproved", "PaymentIncremented", "PaymentCaptured", "PaymentVoided")
    },
    "MeterValue": {"session_id"},
    "Alarm": set(),
    "ConnectorState": set(),
    "Receipt": {"receipt_id", "station_id", "session_id"},
}
_ODD_TEXT = [
    "",
    " ",
    "4111111111111111",  # a full PAN where a masked one belongs
    "411111******1111",
    "41111111***11111",
    "x" * 300,
    "\x00",
    "2026-03-01T10:00:00Z",
    "NaN",
    "é" * 70,
]
_AT = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def _unwrap(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _arbitrary(t: mi.Type) -> st.SearchStrategy[Any]:
    """Any value of the field's Python type, in or (mostly) out of its contract constraints."""
    t = _unwrap(t)
    match t:
        case mi.IntType():
            return (
                for_type(t)
                | st.integers(-(2**70), 2**70)
                | st.sampled_from([-1, 0, 256, 2**63, -(2**63) - 1])
            )
        case mi.StrType():
            return for_type(t) | st.text(max_size=300) | st.sampled_from(_ODD_TEXT)
        case mi.UnionType():
            return st.one_of([_arbitrary(option) for option in t.types])
        case mi.VarTupleType() | mi.ListType():
            items = st.lists(_arbitrary(t.item_type), max_size=2)
            return items.map(tuple) if isinstance(t, mi.VarTupleType) else items
        case mi.DictType():
            values = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=300)
            return st.dictionaries(st.text(max_size=8), values, max_size=3)
        case mi.StructType():
            return _payloads(t.cls)
    return for_type(t)  # None, bool, Literal, enum: the Python type allows nothing else


def _payloads(cls: type[msgspec.Struct]) -> st.SearchStrategy[msgspec.Struct]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    made = MADE_BY_THE_AGENT.get(cls.__name__, set())
    non_empty = NON_EMPTY.get(cls.__name__, set())
    fields = {f.name: _arbitrary(f.type) for f in info.fields}
    fields |= {name: for_type(_field(info, name).type) for name in made}
    fields |= {name: _arbitrary(_field(info, name).type).filter(bool) for name in non_empty}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


def _field(info: mi.StructType, name: str) -> mi.Field:
    return next(f for f in info.fields if f.name == name)


def _fits(value: object, annotation: Any) -> bool:
    try:
        msgspec.json.decode(msgspec.json.encode(value), type=annotation)
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError, OverflowError):
        return False
    return True


def _required_constrained_strings(cls: type[msgspec.Struct], *, pattern: bool) -> set[str]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    found = set()
    for f in info.fields:
        t = _unwrap(f.type)
        if not (f.required and isinstance(t, mi.StrType)):
            continue
        if (pattern and t.pattern is not None) or (not pattern and t.pattern is None and t.min_length):
            found.add(f.name)
    return found


def test_the_restricted_fields_are_exactly_the_ones_conform_cannot_repair() -> None:
    """The restrictions above are the required strings with a pattern or a minimum length, no
    more: a new such field (which :func:`conform` cannot repair) must be added knowingly."""
    for cls in PUBLISHED:
        name = cls.__name__
        assert _required_constrained_strings(cls, pattern=True) == MADE_BY_THE_AGENT[name], name
        assert _required_constrained_strings(cls, pattern=False) == NON_EMPTY[name], name


@pytest.mark.req("UP-1")
@pytest.mark.parametrize("cls", PUBLISHED, ids=lambda c: c.__name__)
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(data=st.data())
def test_conform_makes_any_payload_fit_and_keeps_what_fitted(
    cls: type[msgspec.Struct], data: st.DataObject
) -> None:
    payload = data.draw(_payloads(cls))
    fitted, problems = conform(payload)  # never raises
    assert type(fitted) is cls
    decoded = msgspec.json.decode(encode(fitted), type=cls)  # it decodes as its own type
    assert decoded == fitted
    annotations = {f.name: f.type for f in msgspec.structs.fields(cls)}
    misfits = [
        name for name, annotation in annotations.items() if not _fits(getattr(payload, name), annotation)
    ]
    assert problems == misfits  # every field that did not fit, named, in field order; no "(unrepairable)"
    for name in annotations:
        if name in misfits:
            assert _fits(getattr(fitted, name), annotations[name]), name
        else:
            assert getattr(fitted, name) == getattr(payload, name), name  # fitted fields are unchanged
    assert conform(fitted) == (fitted, [])  # idempotent


@pytest.mark.parametrize("cls", PUBLISHED, ids=lambda c: c.__name__)
def test_a_payload_that_fits_is_returned_as_it_is(cls: type[msgspec.Struct]) -> None:
    for _, example in EXAMPLES[cls]:
        assert valid(example)
        fitted, problems = conform(example)
        assert fitted is example
        assert problems == []


def test_the_repair_rules() -> None:
    """null where the field may be null; an integer clamped into its bounds; a string cut to its
    maximum length; else the field's default."""
    (_, example), *_ = EXAMPLES[MeterValue]
    assert isinstance(example, MeterValue)
    odd = msgspec.structs.replace(
        example, connector_id=300, session_id="r" * 80, seq=-3, meter_wh=-1, power_w=-5, cost_minor=-1
    )
    fitted, problems = conform(odd)
    assert problems == ["connector_id", "session_id", "seq", "meter_wh", "power_w", "cost_minor"]
    assert (fitted.connector_id, fitted.session_id, fitted.seq, fitted.meter_wh) == (255, "r" * 64, 0, 0)
    assert (fitted.power_w, fitted.cost_minor) == (None, None)
    (_, receipt), *_ = EXAMPLES[Receipt]
    assert isinstance(receipt, Receipt)
    assert receipt.lines
    bad_line = msgspec.structs.replace(receipt.lines[0], unit_price="0,40")
    fitted_receipt, problems = conform(
        msgspec.structs.replace(receipt, masked_pan="4111111111111111", lines=(bad_line, *receipt.lines[1:]))
    )
    assert problems == ["lines", "masked_pan"]
    assert (fitted_receipt.masked_pan, fitted_receipt.lines) == (None, ())


def test_an_unrepairable_field_is_named_and_left_as_it_is() -> None:
    """A field the schema cannot hold another way (a required pattern or minimum length, no null,
    no default) is reported ``(unrepairable)``; :func:`conform` still returns, it never raises."""
    (_, example), *_ = EXAMPLES[MeterValue]
    odd = msgspec.structs.replace(example, msg_id="not-a-uuid", session_id="", seq=-1)
    fitted, problems = conform(odd)
    assert problems == ["msg_id (unrepairable)", "session_id (unrepairable)", "seq"]
    assert isinstance(fitted, MeterValue)
    assert (fitted.msg_id, fitted.session_id, fitted.seq) == ("not-a-uuid", "", 0)
    assert not valid(fitted)


# --------------------------------------------------------------------------------------------------
# the publisher: degraded and published, never dropped; database errors propagate
# --------------------------------------------------------------------------------------------------


class _Client:
    def __init__(self) -> None:
        self.is_connected = True
        self.retained: list[tuple[str, bytes]] = []

    def set_retained(self, topic: str, payload: bytes) -> None:
        self.retained.append((topic, payload))


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "agent.upstream.publisher" and r.levelno == logging.ERROR
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path)
    yield s
    s.close()


def _publisher(store: Store, client: _Client, journal: Journal | None = None) -> Publisher:
    return Publisher(Outbox(store), client, Topics("ST-1"), "ST-1", clock=lambda: _AT, journal=journal)


@pytest.mark.req("UP-2")
def test_the_publisher_publishes_a_degraded_event_and_logs_an_error(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    publisher = _publisher(store, _Client())
    ref = "1-" + "r" * 80  # longer than the contract's session id
    publisher.event(
        PublishPaymentAuthorized(1, ref, PaymentMethod.EMV, session_id="7" * 40, authorized_minor=-5)
    )
    (row,) = publisher.outbox.pending()
    event = msgspec.json.decode(row.payload, type=PaymentAuthorized)  # it fits
    assert (event.session_id, event.terminal_session_id, event.authorized_minor) == (ref[:64], None, None)
    assert (row.kind, row.topic, event.seq) == ("event", Topics("ST-1").events(1), 0)
    assert publisher.outbox.next_seq(f"events:{ref}") == 1  # the stream moved on: no gap follows
    assert publisher.errors == 1
    (error,) = _errors(caplog)
    assert "degraded" in error
    assert "PaymentAuthorized" in error
    assert "session_id,terminal_session_id,authorized_minor" in error


def test_the_publisher_degrades_meter_values_and_retained_state(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    client = _Client()
    publisher = _publisher(store, client)
    value = RecordMeter(
        1, "1-a", meter_wh=-20, energy_wh=-20, cost_minor=-1, power_w=-5.0, periodic=True, usage=Usage()
    )
    publisher.meter(value, at=_AT)
    (row,) = publisher.outbox.pending()
    meter = msgspec.json.decode(row.payload, type=MeterValue)
    assert (meter.meter_wh, meter.energy_wh, meter.cost_minor, meter.power_w) == (0, 0, None, 0)
    publisher.connector_state(
        ConnectorSnapshot(1, ConnectorMachineState.CHARGING, plugged=True, session_id="1-a", power_w=-5)
    )
    ((topic, payload),) = client.retained
    state = msgspec.json.decode(payload, type=ConnectorState)
    assert (topic, state.power_w, state.session_id) == (Topics("ST-1").connector_state(1), None, "1-a")
    assert publisher.errors == 2
    assert len(_errors(caplog)) == 2


def test_the_publisher_degrades_a_receipt(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(store)
    publisher = _publisher(store, _Client(), journal)
    ref, sid = "1-a", "577090037"
    usage = Usage(_AT).add(UsageKind.CHARGING, 1000, 60_000)
    card = CardToken(CardKind.EMV, "0123456789ABCDEF0123456789ABCDEF01234567", "476173******0010", "B" * 40)
    journal.record(RecordCardRead(1, ref, card=card, amount_minor=5000), at=_AT)
    journal.record(
        RecordPaymentApproved(
            1, ref, PaymentMethod.EMV, session_id=sid, authorized_minor=5000, host_reference="H" * 80
        ),
        at=_AT,
    )
    journal.record(RecordEnergyOn(1, ref, PaymentMethod.EMV, meter_wh=1000, first=True, usage=usage), at=_AT)
    journal.record(
        RecordCommitDecided(
            1, ref, session_id=sid, amount_minor=40, energy_wh=1000, cost_minor=40, usage=usage
        ),
        at=_AT,
    )
    journal.record(RecordCommitConfirmed(1, ref, session_id=sid, outcome=SettlementOutcome.OK), at=_AT)
    tariff = Tariff(
        TariffConfig(currency="EUR", prices_include_vat=True, vat_rate_percent="21", energy_per_kwh="0.40")
    )
    with store.atomic():
        receipt = publisher.receipt(IssueReceipt(1, ref, amount_minor=40), tariff)
    assert receipt is not None
    (row,) = publisher.outbox.pending()
    published = msgspec.json.decode(row.payload, type=Receipt)
    assert (published.brand, published.host_reference) == (None, None)  # 40 > 32, 80 > 64 characters
    assert (published.status, published.captured_minor, published.masked_pan) == (
        "captured",
        40,
        "476173******0010",
    )
    assert publisher.errors == 1
    (error,) = _errors(caplog)
    assert "Receipt" in error
    assert "brand" in error


def test_the_publisher_does_not_swallow_database_errors(store: Store) -> None:
    """An outbox (database) error propagates: the runtime rolls the step back, so a fact is never
    committed without its messages."""
    journal = Journal(store)
    publisher = _publisher(store, _Client())
    store.conn.execute(
        "CREATE TRIGGER outbox_broken BEFORE INSERT ON outbox "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    card = CardToken(CardKind.RFID, "04A1B2C3")

    def step() -> None:
        with store.atomic():
            journal.record(RecordCardRead(1, "1-a", card=card, amount_minor=0))
            publisher.event(
                PublishPaymentAuthorized(1, "1-a", PaymentMethod.RFID, session_id=None, authorized_minor=None)
            )

    with pytest.raises(OutboxError, match="disk is full"):
        step()
    assert journal.events() == []
    value = RecordMeter(
        1, "1-a", meter_wh=1, energy_wh=1, cost_minor=0, power_w=None, periodic=True, usage=Usage()
    )
    with pytest.raises(OutboxError):
        publisher.meter(value, at=_AT)
    assert publisher.outbox.count() == 0
