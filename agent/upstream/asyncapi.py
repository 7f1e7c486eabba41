"""The AsyncAPI 3.1.0 document of the upstream contract, generated from :mod:`agent.upstream.contract`.

``python -m agent.upstream.contract --asyncapi > docs/asyncapi.yaml`` writes it; a test fails when the
checked-in file is stale and validates every example below against the document's own schemas.
The JSON Schemas come from ``msgspec.json.schema_components``; channels, operations (``send`` =
the agent publishes, ``receive`` = the agent subscribes), retain flags and QoS come from
:data:`agent.upstream.contract.TOPICS`.
"""

from __future__ import annotations

import ast
import copy
import inspect
import re
import sys
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import msgspec
import yaml

from agent.money.tariff import TariffBand, TariffConfig
from agent.upstream.contract import (
    CONTRACT_VERSION,
    DEFAULT_PREFIX,
    TOPICS,
    Alarm,
    AuthRequest,
    AuthResponse,
    ClearDiscrepancy,
    CommandErrorCode,
    CommandResult,
    ConnectorState,
    Discrepancy,
    DisplayMessage,
    GetSessions,
    LocalAuthEntry,
    MeterValue,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentFailed,
    PaymentIncremented,
    PaymentPartiallyApproved,
    PaymentVoided,
    Receipt,
    ReceiptLine,
    Reconcile,
    ReconciledPayment,
    ReconciliationReport,
    ReconciliationTotals,
    SessionEnded,
    SessionStarted,
    SessionSummary,
    SessionSummaryState,
    SessionUpdated,
    SetAvailability,
    SetLocalAuthList,
    SetTariff,
    SignedMeterData,
    Start,
    StatusOffline,
    StatusOnline,
    Stop,
    TerminalState,
    TopicSpec,
)
from statemachines.connector import ConnectorMachineState as MachineState
from statemachines.effects import UpdateReason
from statemachines.events import DeclineOutcome, PaymentMethod, RestoreResolution, StopSource

__all__ = ["EXAMPLES", "asyncapi_document", "render_asyncapi"]

_BINDING_VERSION: Final = "0.2.0"
_STATION: Final = "ST-0001"
_MSG = "6f1c2a9e-0b1d-4c55-9a43-2f7d3e8b1c01"
_MSG2 = "0b8e4f53-6a2c-4d0e-8f19-7c3a5b2d9e12"
_TS = "2026-03-01T10:00:00.000Z"
_REF = "1-20260301T100000000000"
_SID = "305419896"
_OCPI_TARIFF: Final[dict[str, Any]] = {  # OCPI 2.2.1 §Tariffs 4.3.1: 0.30 EUR/kWh excl. 21 % VAT
    "country_code": "NL",
    "party_id": "EVP",
    "id": "t1",
    "currency": "EUR",
    "last_updated": "2026-01-01T00:00:00Z",
    "elements": [{"price_components": [{"type": "ENERGY", "price": "0.30", "vat": 21, "step_size": 1}]}],
}


_RECEIPT = Receipt(
    msg_id=_MSG,
    receipt_id="R-ST-0001-000042",
    station_id=_STATION,
    connector_id=1,
    session_id=_REF,
    status="captured",
    method=PaymentMethod.EMV,
    issued_at="2026-03-01T11:10:02.120Z",
    started_at="2026-03-01T10:00:00.000Z",
    stopped_at="2026-03-01T11:00:00.000Z",
    duration_s=3600,
    meter_start_wh=1_234_567,
    meter_stop_wh=1_256_567,
    energy_wh=22_000,
    currency="EUR",
    minor_unit_digits=2,
    prices_include_vat=True,
    vat_rate_percent="21",
    lines=(
        ReceiptLine(
            kind="energy",
            quantity=22_000,
            unit="Wh",
            unit_price="0.39",
            price_unit="kWh",
            net_minor=709,
            vat_minor=149,
            gross_minor=858,
        ),
        ReceiptLine(
            kind="idle_fee",
            quantity=600_000,
            unit="ms",
            unit_price="0.20",
            price_unit="min",
            net_minor=165,
            vat_minor=35,
            gross_minor=200,
        ),
    ),
    net_minor=874,
    vat_minor=184,
    total_minor=1058,
    authorized_minor=5000,
    captured_minor=1058,
    masked_pan="411111******1111",
    brand="VISA",
    terminal_session_id=_SID,
    host_reference="A1B2C3",
    qr_url="https://receipts.example.com/r/ST-0001/R-ST-0001-000042",
)

#: Example payloads per message type: documentation and test vectors (each is validated against
#: the schemas of the generated document by ``tests/upstream/test_asyncapi.py``).
EXAMPLES: Final[Mapping[type[msgspec.Struct], tuple[tuple[str, msgspec.Struct], ...]]] = {
    StatusOnline: (("birth", StatusOnline(version="0.1.0", started_at="2026-03-01T09:59:58.412Z")),),
    StatusOffline: (("last will", StatusOffline()),),
    TerminalState: (
        (
            "ready",
            TerminalState(
                link="ready",
                psp_state="enabled",
                family="apollo",
                model="APOLLO",
                serial="AP00012345",
                software_version="2.4.1",
                since="2026-03-01T09:59:59.020Z",
                ts=_TS,
            ),
        ),
        (
            "down",
            TerminalState(link="down", since=_TS, last_error="connection refused", ts=_TS),
        ),
    ),
    ConnectorState: (
        (
            "charging",
            ConnectorState(
                connector_id=1,
                state=MachineState.CHARGING,
                plugged=True,
                session_id=_REF,
                terminal_session_id=_SID,
                method=PaymentMethod.EMV,
                energy_wh=7_400,
                power_w=11_000,
                cost_minor=289,
                authorized_minor=5000,
                currency="EUR",
                since=_TS,
                ts="2026-03-01T10:40:00.000Z",
            ),
        ),
        (
            "available",
            ConnectorState(connector_id=2, state=MachineState.AVAILABLE, plugged=False, since=_TS, ts=_TS),
        ),
    ),
    MeterValue: (
        (
            "meter",
            MeterValue(
                msg_id=_MSG,
                connector_id=1,
                session_id=_REF,
                seq=7,
                ts="2026-03-01T10:07:00.000Z",
                meter_wh=1_235_850,
                energy_wh=1_283,
                power_w=11_000,
                cost_minor=50,
            ),
        ),
    ),
    SessionStarted: (
        (
            "emv",
            SessionStarted(
                msg_id=_MSG,
                seq=1,
                method=PaymentMethod.EMV,
                meter_wh=1_234_567,
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
    ),
    SessionUpdated: (
        (
            "resumed after a restart: committed",
            SessionUpdated(
                msg_id=_MSG,
                seq=4,
                reason=UpdateReason.RESUMED,
                resolution=RestoreResolution.COMMIT,
                terminal_session_id=_SID,
                method=PaymentMethod.EMV,
                plugged=False,
                authorized_minor=5000,
                offline=True,
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
    ),
    SessionEnded: (
        (
            "unplugged",
            SessionEnded(
                msg_id=_MSG,
                seq=5,
                reason=StopSource.UNPLUG,
                energy_wh=22_000,
                cost_minor=1058,
                amount_minor=1058,
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
    ),
    PaymentAuthorized: (
        (
            "emv",
            PaymentAuthorized(
                msg_id=_MSG,
                seq=0,
                terminal_session_id=_SID,
                authorized_minor=5000,
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
        (
            "rfid without limit",
            PaymentAuthorized(msg_id=_MSG2, seq=0, connector_id=1, session_id=_REF, ts=_TS),
        ),
    ),
    PaymentPartiallyApproved: (
        (
            "partial",
            PaymentPartiallyApproved(
                msg_id=_MSG,
                seq=0,
                terminal_session_id=_SID,
                authorized_minor=2500,
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
    ),
    PaymentDeclined: (
        (
            "emv",
            PaymentDeclined(
                msg_id=_MSG,
                seq=0,
                outcome=DeclineOutcome.DECLINED,
                reason="51 insufficient funds",
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
        (
            "rfid",
            PaymentDeclined(
                msg_id=_MSG2, seq=0, outcome=DeclineOutcome.BLOCKED, connector_id=1, session_id=_REF, ts=_TS
            ),
        ),
    ),
    PaymentIncremented: (
        (
            "increment",
            PaymentIncremented(
                msg_id=_MSG,
                seq=2,
                terminal_session_id=_SID,
                authorized_minor=7500,
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
    ),
    PaymentCaptured: (
        (
            "captured",
            PaymentCaptured(
                msg_id=_MSG,
                seq=4,
                terminal_session_id=_SID,
                amount_minor=1058,
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
    ),
    PaymentVoided: (
        (
            "voided",
            PaymentVoided(
                msg_id=_MSG, seq=3, terminal_session_id=_SID, connector_id=1, session_id=_REF, ts=_TS
            ),
        ),
    ),
    PaymentFailed: (
        (
            "commit refused",
            PaymentFailed(
                msg_id=_MSG,
                seq=4,
                terminal_session_id=_SID,
                stage="capture",
                reason="commit not confirmed after 5 attempts",
                connector_id=1,
                session_id=_REF,
                ts=_TS,
            ),
        ),
    ),
    Receipt: (
        ("captured EMV with idle fee", _RECEIPT),
        (
            "declined",
            Receipt(
                msg_id=_MSG2,
                receipt_id="R-ST-0001-000043",
                station_id=_STATION,
                connector_id=2,
                session_id="2-20260301T120000000000",
                status="declined",
                method=PaymentMethod.EMV,
                issued_at="2026-03-01T12:00:03.000Z",
                started_at="2026-03-01T12:00:00.000Z",
                currency="EUR",
                minor_unit_digits=2,
                prices_include_vat=True,
                vat_rate_percent="21",
                masked_pan="************4242",
                brand="MASTERCARD",
                decline_reason="51 insufficient funds",
                qr_url="https://receipts.example.com/r/ST-0001/R-ST-0001-000043",
            ),
        ),
    ),
    ReconciliationReport: (
        (
            "daily",
            ReconciliationReport(
                msg_id=_MSG,
                report_id="REC-ST-0001-2026-03-01",
                station_id=_STATION,
                trigger="daily",
                date="2026-03-01",
                period_start="2026-03-01T00:00:00.000Z",
                period_end="2026-03-02T00:00:00.000Z",
                generated_at="2026-03-02T00:05:00.000Z",
                currency="EUR",
                payments=(
                    ReconciledPayment(
                        session_id=_REF,
                        connector_id=1,
                        method=PaymentMethod.EMV,
                        terminal_session_id=_SID,
                        status="captured",
                        started_at=_TS,
                        ended_at="2026-03-01T11:10:00.000Z",
                        energy_wh=22_000,
                        computed_minor=1058,
                        authorized_minor=5000,
                        captured_minor=1058,
                    ),
                    ReconciledPayment(
                        session_id="2-20260301T140000000000",
                        connector_id=2,
                        method=PaymentMethod.FREE_VEND,
                        status="free_vend",
                        started_at="2026-03-01T14:00:00.000Z",
                        ended_at="2026-03-01T14:30:00.000Z",
                        energy_wh=5_000,
                        computed_minor=195,
                    ),
                ),
                totals=ReconciliationTotals(
                    payments=2,
                    authorized_minor=5000,
                    captured_minor=1058,
                    voided=0,
                    energy_wh=27_000,
                    computed_minor=1253,
                ),
                discrepancies=(
                    Discrepancy(
                        kind="free_vend",
                        session_id="2-20260301T140000000000",
                        connector_id=2,
                        amount_minor=195,
                        detail="energy delivered without a payment (terminal offline)",
                    ),
                ),
            ),
        ),
    ),
    Alarm: (
        (
            "undisposed payment",
            Alarm(
                msg_id=_MSG,
                alarm="undisposed_payment",
                state="raised",
                severity="critical",
                connector_id=1,
                session_id=_REF,
                terminal_session_id=_SID,
                message="payment not settled 15 min after the session ended",
                data={"attempts": 5},
                ts=_TS,
            ),
        ),
        (
            "terminal back",
            Alarm(
                msg_id=_MSG2,
                alarm="terminal_offline",
                state="cleared",
                severity="warning",
                message="terminal link is up again",
                ts=_TS,
            ),
        ),
    ),
    AuthRequest: (
        (
            "rfid",
            AuthRequest(request_id=_MSG, connector_id=1, uid="04A1B2C3D4E5F6", ts=_TS),
        ),
    ),
    AuthResponse: (
        ("accepted with limit", AuthResponse(request_id=_MSG, status="accepted", limit_minor=3000)),
        ("no credit", AuthResponse(request_id=_MSG, status="no_credit", balance_minor=0, reason="balance 0")),
    ),
    Start: (
        (
            "remote start",
            Start(correlation_id="c-1001", connector_id=1, id_token="04A1B2C3", limit_minor=2000),
        ),
    ),
    Stop: (("remote stop", Stop(correlation_id="c-1002", connector_id=1, session_id=_REF)),),
    SetAvailability: (
        ("disable", SetAvailability(correlation_id="c-1003", connector_id=2, available=False)),
    ),
    SetTariff: (
        (
            "tariff",
            SetTariff(
                correlation_id="c-1004",
                tariff={
                    "currency": "EUR",
                    "prices_include_vat": True,
                    "vat_rate_percent": "21",
                    "energy_per_kwh": "0.39",
                    "idle_fee_per_minute": "0.20",
                    "idle_grace_minutes": 15,
                },
            ),
        ),
        (
            "OCPI 2.2.1 tariff",
            SetTariff(
                correlation_id="c-1009",
                tariff={"ocpi": _OCPI_TARIFF, "timezone": "Europe/Amsterdam", "minor_unit_digits": 2},
            ),
        ),
        (
            "bare OCPI 2.2.1 tariff (the current tariff's timezone)",
            SetTariff(correlation_id="c-1010", tariff=_OCPI_TARIFF),
        ),
    ),
    SetLocalAuthList: (
        (
            "differential",
            SetLocalAuthList(
                correlation_id="c-1005",
                version=12,
                update="differential",
                entries=(
                    LocalAuthEntry(uid="04A1B2C3D4E5F6", status="accepted", limit_minor=5000),
                    LocalAuthEntry(uid="DEADBEEF", status="blocked"),
                ),
            ),
        ),
    ),
    DisplayMessage: (
        (
            "notice",
            DisplayMessage(correlation_id="c-1006", title="Maintenance", message="Closed 22:00-23:00"),
        ),
    ),
    Reconcile: (("day", Reconcile(correlation_id="c-1007", date="2026-03-01")),),
    ClearDiscrepancy: (
        (
            "orphan checked",
            ClearDiscrepancy(correlation_id="c-1009", session_id=_REF, note="no hold in the portal"),
        ),
    ),
    GetSessions: (("open", GetSessions(correlation_id="c-1008")),),
    CommandResult: (
        ("accepted", CommandResult(correlation_id="c-1001", command="start", status="accepted", ts=_TS)),
        (
            "get_sessions",
            CommandResult(
                correlation_id="c-1008",
                command="get_sessions",
                status="accepted",
                sessions=(
                    SessionSummary(
                        session_id=_REF,
                        connector_id=1,
                        state=SessionSummaryState.CHARGING,
                        method=PaymentMethod.EMV,
                        terminal_session_id=_SID,
                        started_at=_TS,
                        energy_wh=7_400,
                        cost_minor=289,
                        authorized_minor=5000,
                    ),
                ),
                ts=_TS,
            ),
        ),
        (
            "malformed",
            CommandResult(
                correlation_id="c-1009",
                command="start",
                status="error",
                code=CommandErrorCode.INVALID_VALUE,
                reason="limit_minor: Expected int >= 0",
                ts=_TS,
            ),
        ),
        (
            "busy",
            CommandResult(
                correlation_id="c-1010",
                command="start",
                status="rejected",
                code=CommandErrorCode.CONFLICT,
                reason="connector 1 is charging",
                ts=_TS,
            ),
        ),
    ),
}

_EXTRA_SCHEMAS: Final = (SignedMeterData, TariffConfig)  # SignedMeterData: reachable already

# ``SetTariff.tariff`` is a mapping in one of the tariff's forms (msgspec has no untagged union of
# Structs; agent.money.tariff.tariff_from_builtins tells them apart): the document names the forms.
# The OCPI object is described by its required fields only; the agent checks it field by field
# (OCPI 2.2.1 §Tariffs 4.3.1, agent/money/ocpi.py) and answers a bad one with the field's path.
_OCPI_SCHEMAS: Final[dict[str, Any]] = {
    "OcpiTariff": {
        "title": "OcpiTariff",
        "description": (
            "An OCPI 2.2.1 Tariff object (OCPI 2.2.1 §Tariffs 4.3.1), as a CPO's back office holds it. "
            "Prices are excl. VAT; `vat` is the percentage. Local-time restrictions are read in the "
            "tariff's timezone."
        ),
        "type": "object",
        "required": ["country_code", "party_id", "id", "currency", "elements", "last_updated"],
        "properties": {
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "elements": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["price_components"],
                    "properties": {"price_components": {"type": "array", "minItems": 1}},
                },
            },
        },
    },
    "OcpiTariffForm": {
        "title": "OcpiTariffForm",
        "description": (
            "A tariff as an OCPI 2.2.1 Tariff object with the station's IANA `timezone` (for the "
            "local-time restrictions; null = UTC) and the currency's ISO 4217 `minor_unit_digits` "
            "(default 2)."
        ),
        "type": "object",
        "required": ["ocpi"],
        "additionalProperties": False,
        "properties": {
            "ocpi": {"$ref": "#/components/schemas/OcpiTariff"},
            "timezone": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "minor_unit_digits": {"type": "integer", "minimum": 0, "maximum": 4, "default": 2},
        },
    },
}
_TARIFF_FORMS: Final[list[dict[str, str]]] = [
    {"$ref": "#/components/schemas/TariffConfig"},
    {"$ref": "#/components/schemas/OcpiTariffForm"},
    {"$ref": "#/components/schemas/OcpiTariff"},
]

_INFO_DESCRIPTION: Final = f"""\
The MQTT contract between **evpay-agent** (the charger-side payment agent for Payter terminals)
and the operator's back office (DESIGN.md §5.3, requirements UP-1…UP-3).

* **Topics** live under a configurable prefix, default `{DEFAULT_PREFIX}` (`upstream.prefix`).
  The prefix carries the contract's major version (`v1`); this document is contract
  {CONTRACT_VERSION}. Channel addresses below show the default prefix.
* **Direction**: operations are written from the agent's view: `send` = the agent publishes,
  `receive` = the agent subscribes (the back office does the opposite).
* **QoS 1** everywhere. `status`, `terminal` and `connectors/{{connector_id}}/state` are
  **retained** (latest value); everything else is not.
* **Delivery**: meter values, events, receipts, reports and alarms go through the agent's
  persistent outbox: at-least-once and in order per connector, also across agent restarts and
  broker outages. De-duplicate on `msg_id`; session events carry a per-session `seq` from 0 and
  `offline: true` when created while the broker was unreachable.
* **Units**: money in integer minor units of the tariff currency (`*_minor`), energy in Wh,
  power in W, durations in seconds, timestamps ISO 8601 UTC with `Z`.
* **Ids**: `session_id` is the agent's session id (every session, any payment method);
  `terminal_session_id` is the Payter session id of a card payment.
* **Commands**: publish a JSON object with a `correlation_id` to `cmd/{{name}}`; the agent answers
  every command, malformed ones included, on `cmd/{{name}}/result` (or, with MQTT 5, on the
  request's response topic with its correlation data). Unknown fields are rejected.
* **Card data**: no payload ever carries a full PAN; receipts carry the terminal's masked PAN.
  `auth/request` carries the RFID UID in clear (the back office needs it to authorize the token).
"""


def _clean(node: Any) -> Any:
    """Dedent docstring descriptions and turn reST ``code`` into Markdown `code`."""
    if isinstance(node, dict):
        return {
            key: (
                re.sub(r"``([^`]+)``", r"`\1`", inspect.cleandoc(value))
                if key == "description" and isinstance(value, str)
                else _clean(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_clean(item) for item in node]
    return node


def _pascal(name: str) -> str:
    """``price_unit`` → ``PriceUnit``, ``payment.captured`` → ``PaymentCaptured``."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def _structs(types: Iterable[Any]) -> dict[str, type[msgspec.Struct]]:
    """Every Struct class reachable from ``types``, by name (= its schema's name)."""
    found: dict[str, type[msgspec.Struct]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, msgspec.inspect.StructType):
            if node.cls.__name__ in found:
                return
            found[node.cls.__name__] = node.cls
        if isinstance(node, tuple | list):
            for item in node:
                walk(item)
        elif isinstance(node, msgspec.Struct):
            for name in node.__struct_fields__:
                walk(getattr(node, name))

    walk(msgspec.inspect.multi_type_info(list(types)))
    return found


def _literal_aliases(cls: type[msgspec.Struct], attribute: str) -> dict[frozenset[Any], str]:
    """The ``Literal`` aliases the annotation of ``cls.attribute`` names (``status: AuthStatus``),
    by their set of values. Annotations are strings here (``from __future__ import annotations``)."""
    for base in cls.__mro__:
        annotation = inspect.get_annotations(base).get(attribute)
        if annotation is None:
            continue
        if not isinstance(annotation, str):
            return {}
        namespace = vars(sys.modules[base.__module__])
        aliases: dict[frozenset[Any], str] = {}
        for node in ast.walk(ast.parse(annotation, mode="eval")):
            name = node.id if isinstance(node, ast.Name) else None
            value = namespace.get(name) if name else None
            if name and typing.get_origin(value) is Literal:
                aliases[frozenset(typing.get_args(value))] = name
        return aliases
    return {}


def _needs_title(node: Mapping[str, Any]) -> bool:
    """A schema a code generator turns into a model of its own: an object or an enum."""
    return "$ref" not in node and (node.get("type") == "object" or "enum" in node or "properties" in node)


def _title_nested(node: Any, name: str, aliases: Mapping[frozenset[Any], str]) -> None:
    """Give every inline object and enum under ``node`` a title: the ``Literal`` alias the field is
    declared with, else ``name`` (struct + field, + ``Item``/``Value`` for items and map values)."""
    if isinstance(node, list):
        for item in node:
            _title_nested(item, name, aliases)
        return
    if not isinstance(node, dict):
        return
    if _needs_title(node) and "title" not in node:
        node["title"] = aliases.get(frozenset(node.get("enum", ())), name)
    for key, value in node.items():
        if key in ("anyOf", "oneOf", "allOf"):
            _title_nested(value, name, aliases)
        elif key == "items":
            _title_nested(value, f"{name}Item", aliases)
        elif key == "additionalProperties":
            _title_nested(value, f"{name}Value", aliases)
        elif key == "properties" and isinstance(value, dict):
            for prop, schema in value.items():
                _title_nested(schema, f"{name}{_pascal(prop)}", aliases)


def _add_titles(schemas: dict[str, Any], structs: Mapping[str, type[msgspec.Struct]]) -> None:
    """Title every schema and enum (code generators such as ``@asyncapi/modelina`` name their models
    after it; an untitled inline enum becomes ``AnonymousSchema_N``). Struct fields take the name of
    their ``Literal`` alias (``AuthStatus``) or struct + field in PascalCase (``ReceiptLineUnit``)."""
    for schema_name, schema in schemas.items():
        schema.setdefault("title", schema_name)
        cls = structs.get(schema_name)
        fields = {f.encode_name: f.name for f in msgspec.structs.fields(cls)} if cls else {}
        for prop, prop_schema in schema.get("properties", {}).items():
            aliases = _literal_aliases(cls, fields[prop]) if cls and prop in fields else {}
            _title_nested(prop_schema, f"{schema_name}{_pascal(prop)}", aliases)


def _message_name(cls: type[msgspec.Struct]) -> str:
    return cls.__name__


def _address(spec: TopicSpec) -> str:
    return f"{DEFAULT_PREFIX}/{spec.suffix}"


def _parameters(spec: TopicSpec) -> dict[str, Any]:
    params: dict[str, Any] = {
        "station_id": {
            "description": "station id (`station_id` of the agent's configuration)",
            "examples": [_STATION],
        }
    }
    if "{connector_id}" in spec.suffix:
        params["connector_id"] = {"description": "connector number (1…255)", "examples": ["1"]}
    return params


def _operation_id(spec: TopicSpec) -> str:
    return f"{spec.direction}_{spec.key}"


def asyncapi_document() -> Any:
    """The AsyncAPI 3.1.0 document as plain data."""
    types = list(EXAMPLES)
    _, schemas = msgspec.json.schema_components(
        [*types, *_EXTRA_SCHEMAS], ref_template="#/components/schemas/{name}"
    )
    schemas = _clean(schemas)
    inbound: list[type[msgspec.Struct]] = [LocalAuthEntry, TariffConfig, TariffBand]
    inbound += [t for t in types if t.__struct_config__.forbid_unknown_fields]
    for inbound_type in inbound:  # unknown fields are errors
        schemas[inbound_type.__name__]["additionalProperties"] = False
    schemas.update(copy.deepcopy(_OCPI_SCHEMAS))
    tariff = schemas[SetTariff.__name__]["properties"]["tariff"]
    schemas[SetTariff.__name__]["properties"]["tariff"] = {
        "description": tariff["description"],
        "anyOf": _TARIFF_FORMS,
    }
    _add_titles(schemas, _structs([*types, *_EXTRA_SCHEMAS]))
    messages: dict[str, Any] = {}
    for cls, examples in EXAMPLES.items():
        schema = schemas[cls.__name__]
        messages[_message_name(cls)] = {
            "name": cls.__name__,
            "title": cls.__name__,
            "summary": schema.get("description", cls.__name__).split("\n\n")[0].replace("\n", " "),
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
            "examples": [
                {"name": name, "payload": msgspec.to_builtins(example)} for name, example in examples
            ],
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in TOPICS:
        channels[spec.key] = {
            "address": _address(spec),
            "title": spec.title,
            "description": spec.description
            + f"\n\nRetained: {'yes' if spec.retained else 'no'}. QoS {spec.qos}. "
            + f"Through the outbox: {'yes' if spec.via_outbox else 'no'}. "
            + ("Published by the agent." if spec.direction == "send" else "Subscribed to by the agent."),
            "parameters": _parameters(spec),
            "messages": {
                _message_name(cls): {"$ref": f"#/components/messages/{_message_name(cls)}"}
                for cls in spec.payload
            },
        }
        operation: dict[str, Any] = {
            "action": spec.direction,
            "channel": {"$ref": f"#/channels/{spec.key}"},
            "title": spec.title,
            "summary": ("The agent publishes: " if spec.direction == "send" else "The agent receives: ")
            + spec.title.lower(),
            "messages": [
                {"$ref": f"#/channels/{spec.key}/messages/{_message_name(cls)}"} for cls in spec.payload
            ],
            "bindings": {
                "mqtt": {"qos": spec.qos, "retain": spec.retained, "bindingVersion": _BINDING_VERSION}
            },
            "x-evpay-outbox": spec.via_outbox,
        }
        operations[_operation_id(spec)] = operation
    for spec in TOPICS:  # request/reply pairs: the request's operation names the reply channel
        if spec.reply_to is not None:
            request = next(s for s in TOPICS if s.key == spec.reply_to)
            operations[_operation_id(request)]["reply"] = {"channel": {"$ref": f"#/channels/{spec.key}"}}
    return _clean(
        {
            "asyncapi": "3.1.0",
            "info": {
                "title": "evpay-agent upstream MQTT contract",
                "version": CONTRACT_VERSION,
                "description": _INFO_DESCRIPTION,
                "license": {"name": "Apache-2.0"},
            },
            "defaultContentType": "application/json",
            "servers": {
                "backoffice": {
                    "host": "broker.example.com:8883",
                    "protocol": "secure-mqtt",
                    "protocolVersion": "5",
                    "description": (
                        "The operator's broker (`upstream.broker_url`). TLS with server verification and, "
                        "optionally, a client certificate; username/password (UP-4). MQTT 5 by default, "
                        '3.1.1 selectable. Last will: `status` = `{"state": "offline"}`, retained, QoS 1.'
                    ),
                    "bindings": {
                        "mqtt": {
                            "cleanSession": True,
                            "lastWill": {
                                "topic": f"{DEFAULT_PREFIX}/status",
                                "qos": 1,
                                "message": '{"state":"offline"}',
                                "retain": True,
                            },
                            "bindingVersion": _BINDING_VERSION,
                        }
                    },
                }
            },
            "channels": channels,
            "operations": operations,
            "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
        }
    )


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def render_asyncapi() -> str:
    """The document as YAML, exactly as checked in at ``docs/asyncapi.yaml``."""
    header = (
        "# Generated by `python -m agent.upstream.contract --asyncapi > docs/asyncapi.yaml`; do not edit.\n"
    )
    return header + yaml.dump(
        asyncapi_document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
    )
