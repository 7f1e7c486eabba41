"""The capture file format: one JSON object per line (sans-IO; no asyncio, no MQTT).

Two kinds of line, in arrival order:

* a **message** as the capture received it::

      {"t": 1767261600.123456, "topic": "evpay/v1/ST-1/connectors/1/events",
       "retain": false, "qos": 1, "payload": {...}}

  ``t`` is the capture's wall clock (epoch seconds, float) at arrival. ``retain`` is the flag as
  delivered: MQTT sets it only on a retained message sent because of a (re)subscription, never on
  a live publish (retain-as-published is off), so ``retain: true`` means "state at subscribe time"
  and ``retain: false`` means "published just now". ``payload`` is the parsed JSON value, or
  ``{"_raw_b64": "<base64>"}`` when the bytes are not UTF-8 JSON (``NaN``/``Infinity`` count as
  not JSON: they are not JSON).

* a **marker**: ``{"t": 1767261601.5, "marker": "broker_down"}``. Written by a harness about an
  outage it caused (:data:`HARNESS_MARKERS`), by the capture about its own connection
  (:data:`CAPTURE_MARKERS`), or any free text (ignored by the checker).

A marker may also be appended by another process (:func:`append_marker`): every line is written
with a single ``write(2)`` on an ``O_APPEND`` descriptor, so lines of two writers never interleave.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

__all__ = [
    "AGENT_KILLED",
    "AGENT_STARTED",
    "BROKER_DOWN",
    "BROKER_HANG",
    "BROKER_HANG_OVER",
    "BROKER_UP",
    "CAPTURE_DOWN",
    "CAPTURE_MARKERS",
    "CAPTURE_UP",
    "HARNESS_MARKERS",
    "RAW_KEY",
    "JsonValue",
    "Line",
    "LineError",
    "MarkerLine",
    "MessageLine",
    "append_line",
    "append_marker",
    "canonical",
    "decode_payload",
    "parse_line",
    "raw_payload",
]

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None

RAW_KEY: Final = "_raw_b64"

BROKER_DOWN: Final = "broker_down"
BROKER_UP: Final = "broker_up"
AGENT_KILLED: Final = "agent_killed"
AGENT_STARTED: Final = "agent_started"
BROKER_HANG: Final = "broker_hang"  # the harness holds every byte between agent and broker
BROKER_HANG_OVER: Final = "broker_hang_over"  # … and lets them flow again
CAPTURE_DOWN: Final = "capture_down"
CAPTURE_UP: Final = "capture_up"
HARNESS_MARKERS: Final = frozenset(
    {BROKER_DOWN, BROKER_UP, AGENT_KILLED, AGENT_STARTED, BROKER_HANG, BROKER_HANG_OVER}
)
CAPTURE_MARKERS: Final = frozenset({CAPTURE_DOWN, CAPTURE_UP})
MAX_MARKER_CHARS: Final = 256


class LineError(ValueError):
    """A line that is not a message or a marker; the text says why (never the whole line)."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def decode_payload(raw: bytes) -> JsonValue:
    """The parsed JSON value of an MQTT payload, or ``{"_raw_b64": …}`` when it is not JSON."""
    try:
        value: JsonValue = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {RAW_KEY: base64.b64encode(raw).decode("ascii")}
    return value


def raw_payload(payload: JsonValue) -> bytes | None:
    """The bytes of a ``{"_raw_b64": …}`` payload, else ``None`` (a JSON payload)."""
    if isinstance(payload, dict) and set(payload) == {RAW_KEY} and isinstance(payload[RAW_KEY], str):
        try:
            return base64.b64decode(payload[RAW_KEY], validate=True)
        except (binascii.Error, ValueError):
            return b""
    return None


def canonical(value: JsonValue) -> str:
    """A compact JSON text that keeps key order and the int/float distinction: two payloads are
    the same bytes (up to insignificant whitespace) exactly when their texts are equal."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _dumps(obj: Mapping[str, object]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n").encode()


@dataclass(frozen=True, slots=True)
class MessageLine:
    """One received MQTT message."""

    t: float
    topic: str
    retain: bool
    qos: int
    payload: JsonValue

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "t": self.t,
            "topic": self.topic,
            "retain": self.retain,
            "qos": self.qos,
            "payload": self.payload,
        }

    def to_bytes(self) -> bytes:
        return _dumps(self.to_json())


@dataclass(frozen=True, slots=True)
class MarkerLine:
    """A note in the stream: a harness outage, the capture's own connection, or free text."""

    t: float
    marker: str

    def to_json(self) -> dict[str, JsonValue]:
        return {"t": self.t, "marker": self.marker}

    def to_bytes(self) -> bytes:
        return _dumps(self.to_json())


Line: TypeAlias = MessageLine | MarkerLine


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_line(text: str | bytes | Mapping[str, object]) -> Line:
    """A line of a capture file (text, bytes or the already parsed object) → its typed form.

    Raises :class:`LineError` and nothing else, whatever the input.
    """
    obj: object = text
    parsed = isinstance(text, str | bytes)  # then a JSON value by construction
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LineError(f"not UTF-8 at byte {exc.start}") from None
    if isinstance(text, str):
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise LineError(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, Mapping):
        raise LineError(f"not a JSON object but {type(obj).__name__}")
    t = _number(obj.get("t"))
    if t is None:
        raise LineError("`t` is missing or not a finite number")
    if "marker" in obj:
        marker = obj["marker"]
        if not isinstance(marker, str) or not marker:
            raise LineError("`marker` is not a non-empty string")
        return MarkerLine(t, marker[:MAX_MARKER_CHARS])
    topic, retain, qos = obj.get("topic"), obj.get("retain"), obj.get("qos")
    if not isinstance(topic, str) or not topic:
        raise LineError("`topic` is missing or not a non-empty string")
    if not isinstance(retain, bool):
        raise LineError("`retain` is missing or not a boolean")
    if isinstance(qos, bool) or not isinstance(qos, int) or not 0 <= qos <= 2:
        raise LineError("`qos` is missing or not 0, 1 or 2")
    if "payload" not in obj:
        raise LineError("`payload` is missing")
    payload = obj["payload"]
    if not parsed:
        try:
            canonical(payload)  # type: ignore[arg-type,unused-ignore]  # proves it is a JSON value
        except (TypeError, ValueError, RecursionError):
            raise LineError("`payload` is not a JSON value") from None
    return MessageLine(t, topic, retain, qos, payload)  # type: ignore[arg-type,unused-ignore]


def append_line(fd: int, line: Line) -> None:
    """Append one line with one ``write(2)`` (``fd`` opened with ``O_APPEND``)."""
    data = line.to_bytes()
    while data:
        written = os.write(fd, data)
        data = data[written:]


def append_marker(path: Path, marker: str, *, t: float) -> None:
    """Append a marker line to a capture file from another process (e.g. a harness that runs
    ``python -m hil.capture`` as a child); ``t`` is the epoch time of the marked moment."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        append_line(fd, MarkerLine(t, marker))
    finally:
        os.close(fd)
