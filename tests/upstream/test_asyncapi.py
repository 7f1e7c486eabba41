"""docs/asyncapi.yaml: generated from the contract module, current, and its schemas accept the examples."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from operator import attrgetter
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from agent.upstream.asyncapi import EXAMPLES, render_asyncapi
from agent.upstream.contract import COMMANDS, CONTRACT_VERSION, TOPICS, Receipt, encode
from tests.upstream.strategies import structs

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "asyncapi.yaml"
_URI = "urn:evpay:asyncapi"


@pytest.fixture(scope="module")
def doc() -> Any:
    return yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))


def _validator(doc: Any, schema_name: str) -> jsonschema.Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(_URI, DRAFT202012.create_resource(doc))
    return jsonschema.Draft202012Validator(
        {"$ref": f"{_URI}#/components/schemas/{schema_name}"}, registry=registry
    )


def _name(cls: type[Any]) -> str:
    return cls.__name__


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@pytest.mark.req("UP-1")
def test_checked_in_document_is_current() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render_asyncapi(), (
        "docs/asyncapi.yaml is stale: python -m agent.upstream.contract --asyncapi > docs/asyncapi.yaml"
    )


def test_cli_prints_the_document() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.upstream.contract", "--asyncapi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == DOC_PATH.read_text(encoding="utf-8")


@pytest.mark.req("UP-1")
def test_document_shape(doc: Any) -> None:
    assert doc["asyncapi"] == "3.1.0"
    assert doc["info"]["version"] == CONTRACT_VERSION == "1.2.0"
    assert set(doc["channels"]) == {t.key for t in TOPICS}
    for spec in TOPICS:
        channel = doc["channels"][spec.key]
        assert channel["address"] == f"evpay/v1/{{station_id}}/{spec.suffix}"
        assert set(channel["parameters"]) == {
            "station_id",
            *(["connector_id"] if "connector_id" in spec.suffix else []),
        }
        assert channel["description"]
        operation = doc["operations"][f"{spec.direction}_{spec.key}"]
        assert operation["action"] == spec.direction
        assert operation["bindings"]["mqtt"] == {"qos": 1, "retain": spec.retained, "bindingVersion": "0.2.0"}
        assert set(channel["messages"]) == {cls.__name__ for cls in spec.payload}
    retained = {
        channel["address"].removeprefix("evpay/v1/{station_id}/")
        for key, channel in doc["channels"].items()
        if any(
            op["channel"]["$ref"] == f"#/channels/{key}" and op["bindings"]["mqtt"]["retain"]
            for op in doc["operations"].values()
        )
    }
    assert retained == {"status", "terminal", "connectors/{connector_id}/state"}
    for name in COMMANDS:  # request/reply
        reply = doc["operations"][f"receive_cmd_{name}"]["reply"]["channel"]["$ref"]
        assert reply == f"#/channels/cmd_{name}_result"
    assert doc["operations"]["send_auth_request"]["reply"]["channel"]["$ref"] == "#/channels/auth_response"


def test_every_ref_resolves(doc: Any) -> None:
    dangling = []
    for ref in sorted(set(_refs(doc))):
        try:
            _resolve(doc, ref)
        except KeyError:
            dangling.append(ref)
    assert dangling == []


def test_every_published_or_received_payload_is_a_documented_message(doc: Any) -> None:
    messages = doc["components"]["messages"]
    published = {cls.__name__ for spec in TOPICS for cls in spec.payload}
    assert published == set(messages) == {cls.__name__ for cls in EXAMPLES}


@pytest.mark.req("UP-1")
def test_every_message_has_an_example_that_its_schema_accepts(doc: Any) -> None:
    messages = doc["components"]["messages"]
    assert set(messages) == {cls.__name__ for cls in EXAMPLES}
    for name, message in messages.items():
        assert message["examples"], name
        schema_name = message["payload"]["$ref"].rsplit("/", 1)[1]
        validator = _validator(doc, schema_name)
        for example in message["examples"]:
            errors = list(validator.iter_errors(example["payload"]))
            assert not errors, f"{name} example {example['name']!r}: {errors[0].message}"


@pytest.mark.parametrize(
    ("schema", "payload"),
    [
        ("Start", {"correlation_id": "c", "connector_id": 1, "id_token": "A", "priority": 1}),  # extra field
        ("Start", {"correlation_id": "c", "connector_id": 0, "id_token": "A"}),  # out of range
        ("Start", {"connector_id": 1, "id_token": "A"}),  # no correlation id
        ("MeterValue", {"energy_wh": 1.5}),
        ("StatusOffline", {"state": "online"}),
        ("PaymentCaptured", {"event": "payment.captured", "amount_minor": -1}),
        ("Receipt", {"masked_pan": "4111111111111111"}),
        ("AuthResponse", {"request_id": "6f1c2a9e-0b1d-4c55-9a43-2f7d3e8b1c01", "status": "ok"}),
        ("AuthRequest", {"request_id": "x", "uid": "4111111111111111", "ts": "2026-03-01T10:00:00Z"}),
        ("SessionUpdated", {"event": "session.updated", "reason": "restored"}),  # 1.0.0's reason
        ("Alarm", {"alarm": "outbox_full"}),
        pytest.param(
            "ClearDiscrepancy",
            {"correlation_id": "c", "session_id": "1-a", "kind": "undisposed_payment"},
        ),
    ],
)
def test_schemas_reject_invalid_payloads(doc: Any, schema: str, payload: dict[str, object]) -> None:
    assert not _validator(doc, schema).is_valid(payload)


def _example(cls_name: str) -> dict[str, Any]:
    cls = next(c for c in EXAMPLES if c.__name__ == cls_name)
    payload: dict[str, Any] = msgspec.json.decode(encode(EXAMPLES[cls][0][1]))
    return payload


@pytest.mark.parametrize(
    ("schema", "changes"),
    [
        ("SessionStarted", {"meter_wh": None}),  # 1.1.0: the meter register may be unknown at the start
        ("MeterValue", {"power_w": None}),
        ("ConnectorState", {"power_w": None}),
        ("SessionUpdated", {"reason": "resumed"}),
        ("Alarm", {"alarm": "charger_command_failed"}),
        ("Alarm", {"alarm": "possible_orphan_approval"}),
    ],
)
def test_contract_1_1_0_payloads_are_accepted(doc: Any, schema: str, changes: dict[str, object]) -> None:
    assert _validator(doc, schema).is_valid({**_example(schema), **changes})


def test_receipt_schema_rejects_a_full_pan_even_in_an_otherwise_valid_receipt(doc: Any) -> None:
    receipt = msgspec.json.decode(encode(EXAMPLES[Receipt][0][1]))
    assert _validator(doc, "Receipt").is_valid(receipt)
    assert not _validator(doc, "Receipt").is_valid({**receipt, "masked_pan": "4111111111111111"})


@pytest.mark.req("UP-1")
@pytest.mark.parametrize("cls", sorted(EXAMPLES, key=attrgetter("__name__")), ids=_name)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_what_msgspec_accepts_the_published_schema_accepts(
    doc: Any, cls: type[msgspec.Struct], data: st.DataObject
) -> None:
    value = data.draw(structs(cls))
    payload = msgspec.json.decode(encode(value))
    errors = list(_validator(doc, cls.__name__).iter_errors(payload))
    assert not errors, errors[0].message
