"""The upstream stream as a back office sees it: capture (:mod:`hil.stream.capture`) and an
independent contract check (:mod:`hil.stream.rules`) of what a station publishes over MQTT.

Nothing here imports the agent: the checker is a second reading of the public contract
(docs/upstream.md, docs/asyncapi.yaml), so it cannot share a bug with the agent's own contract module.
"""

from __future__ import annotations

from hil.stream.capture import CaptureError, StreamCapture
from hil.stream.lines import Line, LineError, MarkerLine, MessageLine, append_marker, parse_line
from hil.stream.rules import DEFAULT_TOLERANCE_S, RULES, Finding, check, check_file

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "RULES",
    "CaptureError",
    "Finding",
    "Line",
    "LineError",
    "MarkerLine",
    "MessageLine",
    "StreamCapture",
    "append_marker",
    "check",
    "check_file",
    "parse_line",
]
