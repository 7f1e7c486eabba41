"""The upstream payloads' shapes, written down from docs/asyncapi.yaml — not imported from the agent.

An independent reading of the public contract (so the checker cannot share a bug with the agent's
contract module, ``agent/upstream/contract.py``): for each payload the fields a back office
relies on, whether each is required (the AsyncAPI ``required`` list: fields without a default)
and its JSON type and range.
Unknown fields are allowed (a back office must tolerate additions). Contract 1.0.0 (the
generated docs/asyncapi.yaml), 1.1.0 and 1.2.0 are all accepted:

* ``session.started.meter_wh`` may be ``null`` or absent (an unknown meter register at the start);
* ``session.updated.reason`` may be any string (1.0.0 ``restored``, 1.1.0 ``resumed``, more to come);
* a meter value's ``power_w`` may be ``null`` or absent (the meter reports no power);
* alarms ``charger_command_failed`` and ``possible_orphan_approval`` (1.1.0);
* ``charging_periods`` on ``session.ended`` and the receipt, receipt line ``price_unit`` ``h`` (1.2.0).

Pure and sans-IO: :func:`validate` returns the problems as text, it never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeAlias

__all__ = [
    "ALARM",
    "EVENTS",
    "EVENT_COMMON",
    "METER",
    "RECEIPT",
    "RECONCILIATION",
    "STATUS",
    "Field",
    "Schema",
    "is_int",
    "parse_ts",
    "validate",
]

Check: TypeAlias = Callable[[object], str | None]  # None when the value fits, else what is wrong

_TS_RE: Final = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$")
_UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def is_int(value: object) -> bool:
    """A JSON integer (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_ts(value: object) -> float | None:
    """Epoch seconds of a contract timestamp (``2026-03-01T10:00:00.000Z``), else ``None``."""
    if not isinstance(value, str) or _TS_RE.match(value) is None:
        return None
    try:
        return datetime.fromisoformat(value[:-1] + "+00:00").timestamp()
    except ValueError:  # e.g. month 13
        return None


def integer(ge: int | None = 0, le: int | None = None) -> Check:
    def check(value: object) -> str | None:
        if not is_int(value):
            return f"expected an integer, got {_json_type(value)}"
        assert isinstance(value, int)
        if ge is not None and value < ge:
            return f"expected an integer >= {ge}, got {value}"
        if le is not None and value > le:
            return f"expected an integer <= {le}, got {value}"
        return None

    return check


def string(min_length: int = 0, max_length: int | None = None, pattern: str | None = None) -> Check:
    compiled = re.compile(pattern) if pattern is not None else None

    def check(value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected a string, got {_json_type(value)}"
        if len(value) < min_length:
            return "expected a non-empty string" if min_length == 1 else f"shorter than {min_length}"
        if max_length is not None and len(value) > max_length:
            return f"longer than {max_length} characters"
        if compiled is not None and compiled.match(value) is None:
            return f"{value[:40]!r} does not match {compiled.pattern}"
        return None

    return check


def enum(*values: str) -> Check:
    allowed = frozenset(values)

    def check(value: object) -> str | None:
        if isinstance(value, str) and value in allowed:
            return None
        shown = repr(value)[:40] if isinstance(value, str) else _json_type(value)
        return f"{shown} is not one of {', '.join(sorted(allowed))}"

    return check


def boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else f"expected a boolean, got {_json_type(value)}"


def timestamp(value: object) -> str | None:
    if parse_ts(value) is not None:
        return None
    if isinstance(value, str):
        return f"{value[:40]!r} is not an ISO 8601 UTC timestamp ending in Z"
    return f"expected a timestamp string, got {_json_type(value)}"


def non_negative_number(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number, got {_json_type(value)}"
    if not math.isfinite(value) or value < 0:
        return f"expected a finite number >= 0, got {value}"
    return None


def nullable(inner: Check) -> Check:
    def check(value: object) -> str | None:
        return None if value is None else inner(value)

    return check


def json_object(value: object) -> str | None:
    return None if isinstance(value, dict) else f"expected an object, got {_json_type(value)}"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    check: Check
    required: bool = True


Schema: TypeAlias = tuple[Field, ...]


def array_of(schema: Schema) -> Check:
    def check(value: object) -> str | None:
        if not isinstance(value, list):
            return f"expected an array, got {_json_type(value)}"
        for index, item in enumerate(value):
            problems = validate(schema, item)
            if problems:
                return f"[{index}]{problems[0] if problems[0].startswith('.') else ': ' + problems[0]}"
        return None

    return check


def validate(schema: Schema, payload: object) -> list[str]:
    """What is wrong with ``payload`` against ``schema`` (empty when it fits)."""
    if not isinstance(payload, Mapping):
        return [f"expected a JSON object, got {_json_type(payload)}"]
    problems: list[str] = []
    for field in schema:
        if field.name not in payload:
            if field.required:
                problems.append(f".{field.name}: required field missing")
            continue
        problem = field.check(payload[field.name])
        if problem is not None:
            problems.append(f".{field.name}: {problem}")
    return problems


# -- field types of the contract ---------------------------------------------------------------------

MSG_ID: Final = string(pattern=_UUID_RE.pattern)
CONNECTOR_ID: Final = integer(ge=1, le=255)
SESSION_ID: Final = string(min_length=1, max_length=64)
TERMINAL_SESSION_ID: Final = string(min_length=1, max_length=32)
MINOR: Final = integer(ge=0)
WH: Final = integer(ge=0)
SEQ: Final = integer(ge=0)
METHOD: Final = enum("emv", "rfid", "remote", "free_vend")
CURRENCY: Final = string(pattern=r"^[A-Z]{3}$")
TEXT: Final = string(max_length=256)

STOP_REASONS: Final = (
    "tap", "unplug", "ui", "remote", "local", "limit", "ev", "fault", "charger_lost", "timeout",
)  # fmt: skip
DECLINE_OUTCOMES: Final = (
    "declined", "cancelled", "failed", "rejected", "blocked", "expired", "no_credit", "unavailable",
)  # fmt: skip
RESOLUTIONS: Final = ("resumed", "resent", "commit", "void", "ended")
RECEIPT_STATUSES: Final = ("captured", "voided", "declined", "failed", "account", "free_vend")
ALARM_NAMES: Final = (
    "terminal_offline", "undisposed_payment", "commit_failing", "outbox_near_full", "journal_error",
    "charger_command_failed", "possible_orphan_approval",  # contract 1.1.0
)  # fmt: skip

CDR_DIMENSION: Final[Schema] = (
    Field("type", enum("ENERGY", "TIME", "PARKING_TIME", "MAX_POWER", "MAX_CURRENT")),
    Field("volume", non_negative_number),
)

CHARGING_PERIOD: Final[Schema] = (  # OCPI 2.2.1 §CDRs 10.4.6 (contract 1.2.0)
    Field("start_date_time", timestamp),
    Field("dimensions", array_of(CDR_DIMENSION)),
)

EVENT_COMMON: Final[Schema] = (
    Field("event", string(min_length=1)),
    Field("msg_id", MSG_ID),
    Field("connector_id", CONNECTOR_ID),
    Field("session_id", SESSION_ID),
    Field("seq", SEQ),
    Field("ts", timestamp),
    Field("offline", boolean, required=False),  # default false
)

EVENTS: Final[Mapping[str, Schema]] = {
    "session.started": (
        *EVENT_COMMON,
        Field("method", METHOD),
        Field("meter_wh", nullable(WH), required=False),  # null: register unknown (contract 1.1.0)
    ),
    "session.updated": (
        *EVENT_COMMON,
        Field("reason", string()),  # any string: 1.0.0 has "restored", 1.1.0 "resumed", more to come
        Field("resolution", enum(*RESOLUTIONS)),
        Field("terminal_session_id", nullable(TERMINAL_SESSION_ID), required=False),
        Field("method", METHOD),
        Field("plugged", boolean),
        Field("authorized_minor", nullable(MINOR), required=False),
    ),
    "session.ended": (
        *EVENT_COMMON,
        Field("reason", enum(*STOP_REASONS)),
        Field("energy_wh", WH),
        Field("cost_minor", MINOR),
        Field("amount_minor", MINOR),
        Field("charging_periods", array_of(CHARGING_PERIOD), required=False),
    ),
    "payment.authorized": (
        *EVENT_COMMON,
        Field("terminal_session_id", nullable(TERMINAL_SESSION_ID), required=False),
        Field("authorized_minor", nullable(MINOR), required=False),  # null: RFID without a limit
    ),
    "payment.partially_approved": (
        *EVENT_COMMON,
        Field("terminal_session_id", TERMINAL_SESSION_ID),
        Field("authorized_minor", MINOR),
    ),
    "payment.declined": (
        *EVENT_COMMON,
        Field("outcome", enum(*DECLINE_OUTCOMES)),
        Field("reason", nullable(TEXT), required=False),
    ),
    "payment.incremented": (
        *EVENT_COMMON,
        Field("terminal_session_id", TERMINAL_SESSION_ID),
        Field("authorized_minor", MINOR),
    ),
    "payment.captured": (
        *EVENT_COMMON,
        Field("terminal_session_id", TERMINAL_SESSION_ID),
        Field("amount_minor", MINOR),
    ),
    "payment.voided": (
        *EVENT_COMMON,
        Field("terminal_session_id", TERMINAL_SESSION_ID),
    ),
    "payment.failed": (
        *EVENT_COMMON,
        Field("terminal_session_id", nullable(TERMINAL_SESSION_ID), required=False),
        Field("stage", enum("authorization", "capture", "void", "increment")),
        Field("reason", TEXT),
    ),
}

METER: Final[Schema] = (
    Field("msg_id", MSG_ID),
    Field("connector_id", CONNECTOR_ID),
    Field("session_id", SESSION_ID),
    Field("seq", SEQ),
    Field("ts", timestamp),
    Field("meter_wh", WH),
    Field("energy_wh", WH),
    Field("power_w", nullable(integer(ge=0)), required=False),  # null: not reported (contract 1.1.0)
    Field("cost_minor", nullable(MINOR), required=False),
    Field("offline", boolean, required=False),
)

LINE_KINDS: Final = (
    "energy", "time", "session_fee", "idle_fee", "minimum_adjustment", "maximum_adjustment",
    "cap_adjustment",
)  # fmt: skip

RECEIPT_LINE: Final[Schema] = (
    Field("kind", enum(*LINE_KINDS)),
    Field("band", string(max_length=64), required=False),
    Field("quantity", integer(ge=None)),
    Field("unit", enum("Wh", "ms", "session")),
    Field("unit_price", string(pattern=r"^-?[0-9]+(\.[0-9]+)?$")),
    Field("price_unit", enum("kWh", "min", "h", "session")),  # "h": OCPI tariffs (contract 1.2.0)
    Field("net_minor", integer(ge=None)),
    Field("vat_minor", integer(ge=None)),
    Field("gross_minor", integer(ge=None)),  # negative on adjustment lines (cap_adjustment)
)

RECEIPT: Final[Schema] = (
    Field("msg_id", MSG_ID),
    Field("receipt_id", string(min_length=1, max_length=64)),
    Field("station_id", string(min_length=1, max_length=64)),
    Field("connector_id", CONNECTOR_ID),
    Field("session_id", SESSION_ID),
    Field("status", enum(*RECEIPT_STATUSES)),
    Field("method", METHOD),
    Field("issued_at", timestamp),
    Field("started_at", timestamp),
    Field("stopped_at", nullable(timestamp), required=False),
    Field("duration_s", integer(ge=0), required=False),
    Field("meter_start_wh", nullable(WH), required=False),
    Field("meter_stop_wh", nullable(WH), required=False),
    Field("energy_wh", WH, required=False),
    Field("currency", CURRENCY),
    Field("minor_unit_digits", integer(ge=0, le=4)),
    Field("prices_include_vat", boolean),
    Field("vat_rate_percent", string(pattern=r"^[0-9]+(\.[0-9]+)?$")),
    Field("lines", array_of(RECEIPT_LINE), required=False),
    Field("charging_periods", array_of(CHARGING_PERIOD), required=False),
    Field("net_minor", integer(ge=None), required=False),
    Field("vat_minor", integer(ge=None), required=False),
    Field("total_minor", MINOR, required=False),
    Field("authorized_minor", nullable(MINOR), required=False),
    Field("captured_minor", nullable(MINOR), required=False),
    Field("terminal_session_id", nullable(TERMINAL_SESSION_ID), required=False),
)

ALARM: Final[Schema] = (
    Field("msg_id", MSG_ID),
    Field("alarm", enum(*ALARM_NAMES)),
    Field("state", enum("raised", "cleared")),
    Field("severity", enum("warning", "critical")),
    Field("connector_id", nullable(CONNECTOR_ID), required=False),
    Field("session_id", nullable(SESSION_ID), required=False),
    Field("message", TEXT),
    Field("data", json_object, required=False),
    Field("ts", timestamp),
)

RECONCILIATION: Final[Schema] = (
    Field("msg_id", MSG_ID),
    Field("report_id", string(min_length=1, max_length=64)),
    Field("station_id", string(min_length=1, max_length=64)),
    Field("trigger", enum("daily", "command", "cli")),
    Field("period_start", timestamp),
    Field("period_end", timestamp),
    Field("generated_at", timestamp),
    Field("currency", CURRENCY),
    Field("totals", json_object),
)

STATUS: Final[Schema] = (Field("state", enum("online", "offline")),)
