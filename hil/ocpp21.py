"""OCPP 2.1 messages from the agent's events: the reference mapping of docs/ocpp21.md.

For a charger firmware team whose OCPP 2.1 stack reports the session to the CSMS: this module
turns what the charger receives on the bridge's ``payment`` topic (docs/charger-bridge.md) — and,
for the session's start and end, what the agent publishes upstream (docs/upstream.md) — into
``TransactionEvent`` (Started / Updated / Ended) and ``NotifySettlement`` requests built with the
``ocpp`` library's v21 dataclasses, as the camelCase JSON the library sends, and validates them
against the library's JSON schemas. ``tests/ocpp21`` runs it on a real session.

The ``ocpp`` library is a development dependency only: nothing in ``agent``, ``drivers`` or
``statemachines`` imports this module. Inputs are plain JSON objects (dicts), as received.

What the charger's stack owns itself, and this module only stands in for: ``evse`` (EVSE and
connector numbering of the station), ``seqNo`` (per transaction, from 0), ``transactionId``
(here the agent's ``session_id``, ≤ 36 characters: a stack may use its own and keep a map), the
``timestamp`` of its own events and the meter values (here the agent's view of them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, Final

from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.v21 import call, datatypes, enums

__all__ = [
    "STOP_REASONS",
    "Transaction",
    "notify_settlement",
    "schema_errors",
    "to_json",
    "transaction_events",
]

# session.ended ``reason`` (docs/upstream.md) → (TransactionEvent triggerReason, stoppedReason)
STOP_REASONS: Final[Mapping[str, tuple[str, str]]] = {
    "tap": ("StopAuthorized", "Local"),
    "ui": ("StopAuthorized", "Local"),
    "local": ("StopAuthorized", "Local"),
    "unplug": ("EVDeparted", "EVDisconnected"),
    "remote": ("RemoteStop", "Remote"),
    "limit": ("EnergyLimitReached", "EnergyLimitReached"),
    "ev": ("ChargingStateChanged", "StoppedByEV"),
    "fault": ("AbnormalCondition", "Other"),
    "charger_lost": ("AbnormalCondition", "PowerLoss"),
    "timeout": ("EVConnectTimeout", "Timeout"),
}
# OCPI CDR dimensions of session.ended charging_periods → OCPP CostDimensionEnumType, unit factor
_DIMENSIONS: Final[Mapping[str, tuple[str, Decimal]]] = {
    "ENERGY": ("Energy", Decimal(1000)),  # kWh → Wh
    "TIME": ("ChargingTime", Decimal(3600)),  # h → s
    "PARKING_TIME": ("IdleTIme", Decimal(3600)),  # h → s (the 2.1 enum spells it "IdleTIme")
    "MAX_POWER": ("MaxPower", Decimal(1000)),  # kW → W
    "MAX_CURRENT": ("MaxCurrent", Decimal(1)),  # A
}


# ocpp 2.1.0's snake_to_camel_case writes every ``*_url`` key as ``…URL`` (for 1.6/2.0.1 names such
# as ``responderURL``); the 2.1 schemas spell these ``…Url``: a NotifySettlementRequest with a
# ``receiptURL`` fails the library's own schema (additionalProperties: false). Put right here.
_KEY_FIXES: Final[Mapping[str, str]] = {"receiptURL": "receiptUrl"}


def _fix_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_KEY_FIXES.get(k, k): _fix_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_keys(v) for v in value]
    return value


def to_json(message: object) -> dict[str, Any]:
    """A ``ocpp.v21.call`` dataclass as the JSON object the library sends (camelCase, no nulls),
    with the key spellings of the 2.1 schemas (see ``_KEY_FIXES``)."""
    payload = remove_nones(snake_to_camel_case(serialize_as_dict(message)))
    assert isinstance(payload, dict)
    # enum members → their values (what json.dumps of a StrEnum gives anyway)
    loaded = _fix_keys(json.loads(json.dumps(payload)))
    assert isinstance(loaded, dict)
    return loaded


def _schema(action: str) -> dict[str, Any]:
    text = resources.files("ocpp.v21.schemas").joinpath(f"{action}Request.json").read_text("utf-8")
    loaded = json.loads(text)
    assert isinstance(loaded, dict)
    return loaded


def schema_errors(action: str, payload: Mapping[str, Any]) -> list[str]:
    """Every violation of the ``{action}Request`` schema of OCPP 2.1 (the draft the schema declares,
    formats checked), as ``path: message`` lines; empty when ``payload`` is valid."""
    import jsonschema

    schema = _schema(action)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    checker = jsonschema.FormatChecker()
    checker.checks("date-time", raises=ValueError)(_is_date_time)  # without rfc3339-validator too
    validator = validator_class(schema, format_checker=checker)
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(payload)
    )


def _is_date_time(value: object) -> bool:
    """RFC 3339 ``date-time`` (a string that is not one passes: ``type`` reports it)."""
    if not isinstance(value, str):
        return True
    if "T" not in value.upper() or not value[:4].isdigit():
        return False
    parsed = datetime.fromisoformat(value)  # ValueError: not a date-time
    return parsed.tzinfo is not None  # RFC 3339 requires the offset


def _when(ts: object) -> datetime:
    return datetime.fromisoformat(str(ts)).astimezone(UTC)


def _amount(text: object) -> float:
    return float(Decimal(str(text)))


def _total_cost(currency: str, amount: object) -> datatypes.TotalCostType:
    return datatypes.TotalCostType(
        currency=currency,
        type_of_cost=enums.TariffCostEnumType.normal_cost,
        total=datatypes.TotalPriceType(incl_tax=_amount(amount)),
    )


def _charging_periods(periods: Iterable[Mapping[str, Any]]) -> list[datatypes.ChargingPeriodType] | None:
    out = []
    for period in periods:
        dimensions = []
        for dim in period.get("dimensions", ()):
            mapped = _DIMENSIONS.get(str(dim.get("type")))
            if mapped is not None:
                kind, factor = mapped
                volume = float(Decimal(str(dim.get("volume", 0))) * factor)
                dimensions.append(datatypes.CostDimensionType(type=kind, volume=volume))
        out.append(
            datatypes.ChargingPeriodType(
                start_period=str(period["start_date_time"]), dimensions=dimensions or None
            )
        )
    return out or None


def _meter(
    ts: str, wh: object, context: enums.ReadingContextEnumType
) -> list[datatypes.MeterValueType] | None:
    if not isinstance(wh, int):
        return None
    sample = datatypes.SampledValueType(value=float(wh), context=context)
    return [datatypes.MeterValueType(sampled_value=[sample], timestamp=ts)]


@dataclass
class Transaction:
    """The TransactionEvent sequence of one session on ``evse_id`` (a stand-in for the charger's
    OCPP stack: it owns ``seq_no`` and the transaction id)."""

    evse_id: int
    connector_id: int = 1
    transaction_id: str | None = None
    seq_no: int = 0
    messages: list[call.TransactionEvent] = field(default_factory=list)
    _id_token: datatypes.IdTokenType | None = None
    _currency: str | None = None
    _max_cost: float | None = None  # the authorized amount: transactionLimit.maxCost

    def _next(self, **fields: Any) -> call.TransactionEvent:
        assert self.transaction_id is not None
        message = call.TransactionEvent(
            seq_no=self.seq_no,
            evse=datatypes.EVSEType(id=self.evse_id, connector_id=self.connector_id)
            if self.seq_no == 0
            else None,
            **fields,
        )
        self.seq_no += 1
        self.messages.append(message)
        return message

    def authorized(self, payment: Mapping[str, Any]) -> call.TransactionEvent | None:
        """A ``payment`` message with ``event: authorized``: the idToken and the limit
        (``transactionLimit.maxCost`` = the authorized amount) of the transaction; a new amount
        once the transaction runs (incremental authorization) → Updated, ``LimitSet``."""
        self._id_token = datatypes.IdTokenType(
            id_token=str(payment["psp_ref"]), type=str(payment.get("id_token_type", "DirectPayment"))
        )
        self._currency = str(payment["currency"])
        amount = payment.get("authorized")
        limit = _amount(amount) if amount is not None else None
        changed = limit != self._max_cost
        self._max_cost = limit
        if self.transaction_id is None or not changed or limit is None:
            return None
        return self._next(
            event_type=enums.TransactionEventEnumType.updated,
            timestamp=str(payment["ts"]),
            trigger_reason=enums.TriggerReasonEnumType.limit_set,
            transaction_info=datatypes.TransactionType(
                transaction_id=self.transaction_id,
                transaction_limit=datatypes.TransactionLimitType(max_cost=limit),
            ),
        )

    def started(self, event: Mapping[str, Any]) -> call.TransactionEvent:
        """``session.started`` (energy enabled for the first time) → ``TransactionEvent`` Started
        with the DirectPayment idToken (TxStartPoint: energy transfer)."""
        self.transaction_id = self.transaction_id or str(event["session_id"])
        ts = str(event["ts"])
        return self._next(
            event_type=enums.TransactionEventEnumType.started,
            timestamp=ts,
            trigger_reason=enums.TriggerReasonEnumType.charging_state_changed,
            transaction_info=datatypes.TransactionType(
                transaction_id=self.transaction_id,
                charging_state=enums.ChargingStateEnumType.charging,
                transaction_limit=datatypes.TransactionLimitType(max_cost=self._max_cost)
                if self._max_cost is not None
                else None,
            ),
            id_token=self._id_token,
            meter_value=_meter(ts, event.get("meter_wh"), enums.ReadingContextEnumType.transaction_begin),
        )

    def resumed(self, event: Mapping[str, Any]) -> call.TransactionEvent:
        """``session.updated`` (reason ``resumed``) → Updated with triggerReason ``TxResumed``."""
        self.transaction_id = self.transaction_id or str(event["session_id"])
        return self._next(
            event_type=enums.TransactionEventEnumType.updated,
            timestamp=str(event["ts"]),
            trigger_reason=enums.TriggerReasonEnumType.tx_resumed,
            transaction_info=datatypes.TransactionType(transaction_id=self.transaction_id),
        )

    def cost(self, payment: Mapping[str, Any]) -> call.TransactionEvent | None:
        """A ``payment`` message with ``event: cost`` → Updated, triggerReason ``RunningCost``,
        ``costDetails`` with the running total (None before the transaction started)."""
        if self.transaction_id is None:
            return None
        currency = str(payment["currency"])
        return self._next(
            event_type=enums.TransactionEventEnumType.updated,
            timestamp=str(payment["ts"]),
            trigger_reason=enums.TriggerReasonEnumType.running_cost,
            transaction_info=datatypes.TransactionType(transaction_id=self.transaction_id),
            cost_details=datatypes.CostDetailsType(
                total_cost=_total_cost(currency, payment["cost"]),
                total_usage=datatypes.TotalUsageType(
                    energy=float(payment["energy_wh"]),
                    charging_time=int(payment.get("charging_s", 0)),
                    idle_time=int(payment.get("idle_s", 0)),
                ),
            ),
        )

    def ended(
        self, event: Mapping[str, Any], *, currency: str | None = None, digits: int = 2
    ) -> call.TransactionEvent:
        """``session.ended`` → Ended: triggerReason / stoppedReason from ``reason``, the final
        ``costDetails`` (``totalCost.total`` = ``amount_minor``, what was captured; the
        ``chargingPeriods`` from the OCPI charging periods)."""
        self.transaction_id = self.transaction_id or str(event["session_id"])
        trigger, stopped = STOP_REASONS.get(str(event.get("reason")), ("AbnormalCondition", "Other"))
        periods = list(event.get("charging_periods") or ())
        seconds = {"TIME": 0.0, "PARKING_TIME": 0.0}
        for period in periods:
            for dim in period.get("dimensions", ()):
                if dim.get("type") in seconds:
                    seconds[str(dim["type"])] += float(dim.get("volume", 0)) * 3600
        amount = Decimal(int(event["amount_minor"])).scaleb(-digits)
        return self._next(
            event_type=enums.TransactionEventEnumType.ended,
            timestamp=str(event["ts"]),
            trigger_reason=trigger,
            transaction_info=datatypes.TransactionType(
                transaction_id=self.transaction_id, stopped_reason=stopped
            ),
            cost_details=datatypes.CostDetailsType(
                total_cost=_total_cost(currency or self._currency or "EUR", amount),
                total_usage=datatypes.TotalUsageType(
                    energy=float(event["energy_wh"]),
                    charging_time=round(seconds["TIME"]),
                    idle_time=round(seconds["PARKING_TIME"]),
                ),
                charging_periods=_charging_periods(periods),
            ),
        )


def notify_settlement(
    payment: Mapping[str, Any], *, transaction_id: str | None = None
) -> call.NotifySettlement:
    """A ``payment`` message with ``event: settled`` → ``NotifySettlementRequest``: ``pspRef``,
    ``status`` (``Settled`` / ``Canceled``), ``settlementAmount`` (what was captured; 0 for a
    void), ``settlementTime``, ``receiptId`` / ``receiptUrl`` when the agent issued them, and the
    ``transactionId`` — absent when the payment was voided before any transaction started."""
    if payment.get("event") != "settled":
        raise ValueError(f"not a settlement: event {payment.get('event')!r}")
    return call.NotifySettlement(
        psp_ref=str(payment["psp_ref"]),
        settlement_amount=_amount(payment["settlement_amount"]),
        settlement_time=str(payment["settlement_time"]),
        status=enums.PaymentStatusEnumType(str(payment["status"])),
        receipt_id=payment.get("receipt_id"),
        receipt_url=payment.get("receipt_url"),
        transaction_id=transaction_id,
    )


def transaction_events(
    events: Sequence[Mapping[str, Any]],
    payments: Sequence[Mapping[str, Any]],
    *,
    evse_id: int,
    connector_id: int = 1,
) -> Transaction:
    """The TransactionEvents of one session from its upstream events (``session.*``) and its
    ``payment`` messages, merged in time order (``ts``; payment messages first on a tie)."""
    tx = Transaction(evse_id, connector_id)
    merged = sorted(
        [(_when(p["ts"]), 0, "payment", p) for p in payments]
        + [(_when(e["ts"]), 1, "event", e) for e in events],
        key=lambda item: (item[0], item[1]),
    )
    digits = next((int(p["minor_unit_digits"]) for p in payments if "minor_unit_digits" in p), 2)
    currency = next((str(p["currency"]) for p in payments if "currency" in p), None)
    for _, _, kind, item in merged:
        name = item.get("event")
        if kind == "payment" and name == "authorized":
            tx.authorized(item)
        elif kind == "payment" and name == "cost":
            tx.cost(item)
        elif name == "session.started":
            tx.started(item)
        elif name == "session.updated":
            tx.resumed(item)
        elif name == "session.ended":
            tx.ended(item, currency=currency, digits=digits)
    return tx
