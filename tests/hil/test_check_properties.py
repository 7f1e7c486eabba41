"""Properties of the checker: a valid stream stays valid under any reordering and any identical
re-delivery (at least once, repeats out of order), and loses its validity when any single event
is lost; no input makes it raise."""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.stream import check
from tests.hil.streams import PREFIX, valid_stream

VALID: Final = valid_stream().lines
OUTBOX: Final = [
    i for i, line in enumerate(VALID) if "payload" in line and not line["topic"].endswith("/status")
]
EVENT_IDS: Final = sorted(
    {VALID[i]["payload"]["msg_id"] for i in OUTBOX if VALID[i]["topic"].endswith("/events")}
)
T_MIN: Final = min(line["t"] for line in VALID)
T_MAX: Final = max(line["t"] for line in VALID)


@st.composite
def redelivered(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The valid stream with its outbox messages arriving in any order, some of them again (same
    bytes) at any time; the status messages and markers stay where they were."""
    lines = copy.deepcopy(VALID)
    order = draw(st.permutations(OUTBOX))
    for t, index in zip(sorted(lines[i]["t"] for i in OUTBOX), order, strict=True):
        lines[index]["t"] = t
    repeats = draw(st.lists(st.tuples(st.sampled_from(OUTBOX), st.floats(T_MIN, T_MAX + 60)), max_size=25))
    lines += [copy.deepcopy(lines[i]) | {"t": t} for i, t in repeats]
    return draw(st.permutations(lines))  # the file order does not matter: t does


def without_event(lines: list[dict[str, Any]], msg_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("payload", {}).get("msg_id") != msg_id]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=redelivered(), victim=st.sampled_from(EVENT_IDS))
def test_reordered_and_redelivered_stream_passes_and_any_lost_event_fails(
    lines: list[dict[str, Any]], victim: str
) -> None:
    assert check(lines, complete=True) == []
    assert check(lines, complete=False) == []
    assert check(without_event(lines, victim), complete=True) != []


def test_deleting_each_single_event_is_found() -> None:
    assert len(EVENT_IDS) > 20
    for msg_id in EVENT_IDS:
        for complete in (True, False):
            assert check(without_event(VALID, msg_id), complete=complete), (msg_id, complete)


# --------------------------------------------------------------------------------------------------
# robustness: whatever comes in, findings come out
# --------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
TOPICS: Final = [
    f"{PREFIX}/{suffix}"
    for suffix in (
        "status", "terminal", "connectors/1/state", "connectors/1/meter", "connectors/1/events",
        "connectors/0/events", "receipts", "reports/reconciliation", "alarms", "cmd/stop", "auth/request",
        "unknown/topic",
    )
]  # fmt: skip
FIELDS: Final = sorted({key for i in OUTBOX for key in VALID[i]["payload"]} | {"lines", "event", "state"})


@st.composite
def mutated(draw: st.DrawFn) -> list[Any]:
    """The valid stream with random fields replaced by random JSON, random lines added."""
    lines: list[Any] = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(0, 8))):
        index = draw(st.sampled_from(OUTBOX))
        lines[index]["payload"][draw(st.sampled_from(FIELDS))] = draw(json_values)
    extra = st.one_of(
        st.builds(
            lambda t, topic, retain, payload: {
                "t": t,
                "topic": topic,
                "retain": retain,
                "qos": 1,
                "payload": payload,
            },
            st.floats(T_MIN, T_MAX),
            st.sampled_from(TOPICS),
            st.booleans(),
            json_values,
        ),
        st.builds(lambda t, name: {"t": t, "marker": name}, st.floats(T_MIN, T_MAX), st.text(max_size=12)),
        json_values,
        st.binary(max_size=30),
        st.text(max_size=30),
    )
    for item in draw(st.lists(extra, max_size=8)):
        lines.insert(draw(st.integers(0, len(lines))), item)
    return [json.dumps(line) if not isinstance(line, bytes | str) else line for line in lines]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=mutated(), complete=st.booleans(), lenient=st.booleans())
def test_the_checker_never_raises(lines: list[Any], complete: bool, lenient: bool) -> None:
    findings = check(lines, complete=complete, lenient_sessions=lenient)
    assert all(f.rule and f.message for f in findings)
    for finding in findings:
        str(finding)
        json.dumps(finding.to_json())
