"""Every schema and enum of docs/asyncapi.yaml has a title, so generated models are all named (issue 11).

Code generators (``@asyncapi/modelina``) make a model of every object schema and every enum and
name it after its ``title``; without one it becomes ``AnonymousSchema_N``. The walk below covers
every place a schema can nest (properties, items, map values, ``anyOf``/``oneOf``/``allOf``…), in
the checked-in document and in the generated one.

The generator itself runs only when a cached npm install exists (CI does not depend on npm)::

    npm install --prefix ~/.cache/evpay-agent/modelina @asyncapi/parser @asyncapi/modelina

or ``EVPAY_MODELINA_DIR=<a directory with node_modules>``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.upstream.asyncapi import asyncapi_document

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "asyncapi.yaml"
COUNT_SCRIPT = Path(__file__).with_name("modelina_count.js")
PASCAL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_NESTED_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_NESTED_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_NESTED_MAP = ("properties", "patternProperties", "$defs", "definitions")


def schema_nodes(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object at and under ``node`` (a JSON Schema), with its JSON pointer."""
    if not isinstance(node, dict):
        return
    yield path, node
    for key in _NESTED_ONE:
        if isinstance(node.get(key), dict):
            yield from schema_nodes(node[key], f"{path}/{key}")
    for key in _NESTED_LIST:
        for i, item in enumerate(node.get(key) or ()):
            yield from schema_nodes(item, f"{path}/{key}/{i}")
    for key in _NESTED_MAP:
        for name, item in (node.get(key) or {}).items():
            yield from schema_nodes(item, f"{path}/{key}/{name}")


def document_schemas(doc: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, schema in doc["components"]["schemas"].items():
        yield from schema_nodes(schema, f"#/components/schemas/{name}")
    for name, message in doc["components"]["messages"].items():  # payloads are $refs today
        yield from schema_nodes(message["payload"], f"#/components/messages/{name}/payload")
    for key, channel in doc["channels"].items():
        for name, parameter in (channel.get("parameters") or {}).items():
            assert "schema" not in parameter, f"#/channels/{key}/parameters/{name}: 3.x has no schema"


def becomes_a_model(schema: dict[str, Any]) -> bool:
    """What a generator names: an object (or a schema with properties) or an enum; not a $ref."""
    if "$ref" in schema:
        return False
    types = schema.get("type")
    return (
        "object" in (types if isinstance(types, list) else [types])
        or "enum" in schema
        or "properties" in schema
    )


@pytest.fixture(scope="module", params=["checked-in", "generated"])
def doc(request: pytest.FixtureRequest) -> Any:
    if request.param == "checked-in":
        return yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    return asyncapi_document()


def test_the_document_is_asyncapi_3_1(doc: Any) -> None:
    assert doc["asyncapi"] == "3.1.0"


def test_every_object_and_enum_schema_has_a_pascal_case_title(doc: Any) -> None:
    untitled = [
        path for path, schema in document_schemas(doc) if becomes_a_model(schema) and "title" not in schema
    ]
    assert untitled == []
    bad = [
        f"{path}: {schema['title']!r}"
        for path, schema in document_schemas(doc)
        if "title" in schema and not PASCAL.match(schema["title"])
    ]
    assert bad == []


def test_every_component_schema_is_titled_with_its_name(doc: Any) -> None:
    assert {name: s.get("title") for name, s in doc["components"]["schemas"].items()} == {
        name: name for name in doc["components"]["schemas"]
    }


def test_a_title_names_one_schema(doc: Any) -> None:
    """Two inline schemas with one title (a shared ``Literal`` alias) must be the same type."""
    by_title: dict[str, set[str]] = {}
    for _, schema in document_schemas(doc):
        if "title" in schema and becomes_a_model(schema):
            shape = {k: v for k, v in schema.items() if k not in ("description", "default", "title")}
            by_title.setdefault(schema["title"], set()).add(json.dumps(shape, sort_keys=True))
    clashes = {title: sorted(shapes) for title, shapes in by_title.items() if len(shapes) > 1}
    assert clashes == {}


def test_enums_take_the_name_of_their_literal_alias() -> None:
    doc = asyncapi_document()
    schemas = doc["components"]["schemas"]
    assert schemas["AuthResponse"]["properties"]["status"]["title"] == "AuthStatus"
    assert schemas["LocalAuthEntry"]["properties"]["status"]["title"] == "AuthStatus"
    assert schemas["Receipt"]["properties"]["status"]["title"] == "ReceiptStatus"
    assert schemas["Alarm"]["properties"]["alarm"]["title"] == "AlarmName"
    assert schemas["TariffBand"]["properties"]["weekdays"]["anyOf"][0]["items"]["title"] == "Weekday"
    # an inline Literal: struct + field
    assert schemas["ReceiptLine"]["properties"]["unit"]["title"] == "ReceiptLineUnit"
    assert schemas["PaymentCaptured"]["properties"]["event"]["title"] == "PaymentCapturedEvent"


def _modelina_dir() -> Path | None:
    configured = os.environ.get("EVPAY_MODELINA_DIR")
    candidates = [Path(configured)] if configured else [Path.home() / ".cache" / "evpay-agent" / "modelina"]
    for directory in candidates:
        modules = directory / "node_modules"
        if (modules / "@asyncapi" / "modelina").is_dir() and (modules / "@asyncapi" / "parser").is_dir():
            return modules
    return None


def test_modelina_names_every_model(tmp_path: Path) -> None:
    node = shutil.which("node")
    modules = _modelina_dir()
    if node is None or modules is None:
        pytest.skip(
            "no cached @asyncapi/modelina + @asyncapi/parser install (see the module docstring) or node"
        )
    source = tmp_path / "asyncapi.json"
    source.write_text(json.dumps(yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))), encoding="utf-8")
    done = subprocess.run(
        [node, str(COUNT_SCRIPT), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result["errors"]  # @asyncapi/parser validates the 3.1.0 document
    assert result["total"] >= len(asyncapi_document()["components"]["schemas"])
    assert result["anonymous"] == []
    assert result["duplicates"] == []
