"""hil.stream.capture against a real Mosquitto: every message lands in the file, across a broker
restart, with the capture's own capture_down/capture_up markers and the harness's markers."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import aiomqtt
import pytest

from hil.stream import CaptureError, MarkerLine, MessageLine, StreamCapture, append_marker, check, parse_line
from hil.stream.lines import decode_payload
from tests.hil.streams import PREFIX, Stream
from tests.mosquitto import Broker, free_port

WAIT_S = 10.0


async def publish(broker: Broker, *messages: tuple[str, bytes, bool]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-publisher") as client:
        for topic, payload, retain in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


def read(path: Path) -> list[MessageLine | MarkerLine]:
    return [parse_line(text) for text in path.read_text(encoding="utf-8").splitlines()]


def markers(lines: list[MessageLine | MarkerLine]) -> list[str]:
    return [line.marker for line in lines if isinstance(line, MarkerLine)]


def event(n: int) -> bytes:
    return json.dumps({"event": "payment.declined", "n": n}).encode()


async def test_capture_records_everything_across_a_broker_restart(mosquitto: Broker, tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    topic = f"{PREFIX}/connectors/1/events"
    async with StreamCapture(mosquitto.host, mosquitto.port, PREFIX, path, backoff_max_s=0.2) as cap:
        await publish(
            mosquitto,
            (topic, event(1), False),
            (f"{PREFIX}/status", b'{"state":"online"}', True),
            (f"{PREFIX}/receipts", b"\xff\x00 not json", False),
            ("evpay/v1/OTHER/alarms", b"{}", False),  # another station: not subscribed
        )
        await cap.wait_for(lambda m: m.topic.endswith("/receipts"), timeout=WAIT_S)

        cap.mark("broker_down")
        await asyncio.to_thread(mosquitto.stop)
        await cap.wait_marker("capture_down", timeout=WAIT_S)
        await asyncio.to_thread(mosquitto.start)
        cap.mark("broker_up")
        await cap.wait_marker("capture_up", count=2, timeout=WAIT_S)

        await publish(mosquitto, (topic, event(2), False), (topic, event(3), False))
        last = await cap.wait_for(
            lambda m: m.payload == {"event": "payment.declined", "n": 3}, timeout=WAIT_S
        )
        assert cap.connects == 2
        assert cap.losses == 1
    lines = read(path)
    assert lines == cap.lines
    assert markers(lines) == ["capture_up", "broker_down", "capture_down", "broker_up", "capture_up"]
    messages = [line for line in lines if isinstance(line, MessageLine)]
    assert [(m.topic, m.payload) for m in messages] == [
        (topic, {"event": "payment.declined", "n": 1}),
        (f"{PREFIX}/status", {"state": "online"}),
        (f"{PREFIX}/receipts", {"_raw_b64": base64.b64encode(b"\xff\x00 not json").decode()}),
        (topic, {"event": "payment.declined", "n": 2}),
        (topic, {"event": "payment.declined", "n": 3}),
    ]
    assert all(m.qos == 1 and m.retain is False for m in messages)  # live publishes
    assert [line.t for line in lines] == sorted(line.t for line in lines)
    assert last == messages[-1]


async def test_retained_state_arrives_flagged_retained_on_subscription(
    mosquitto: Broker, tmp_path: Path
) -> None:
    await publish(mosquitto, (f"{PREFIX}/status", b'{"state":"offline"}', True))
    async with StreamCapture(mosquitto.host, mosquitto.port, PREFIX, tmp_path / "c.jsonl") as cap:
        status = await cap.wait_for(lambda m: m.topic.endswith("/status"), timeout=WAIT_S)
    assert status.retain is True
    assert status.payload == {"state": "offline"}


async def test_a_captured_stream_is_checked(mosquitto: Broker, tmp_path: Path) -> None:
    """A station's messages through the broker, captured and checked end to end."""
    s = Stream()
    s.birth().tick(3)
    s.event(1, "S-1", "payment.declined", outcome="declined", reason=None)
    s.receipt(1, "S-1", "declined")
    path = tmp_path / "capture.jsonl"
    async with StreamCapture(mosquitto.host, mosquitto.port, "evpay/v1/{station_id}", path) as cap:
        await publish(
            mosquitto, *((line["topic"], json.dumps(line["payload"]).encode(), False) for line in s.lines)
        )
        await cap.wait_for(lambda m: m.topic.endswith("/receipts"), timeout=WAIT_S)
    # published now, so ts (2026-01-01) lies before the capture's evidence: offline is not judged
    assert check(path.read_text(encoding="utf-8").splitlines(), complete=True, prefix=PREFIX) == []
    cap_lines = path.read_text(encoding="utf-8").splitlines()
    broken = [
        text.replace('"seq":0', '"seq":1') if "payment.declined" in text else text for text in cap_lines
    ]
    assert [f.rule for f in check(broken, complete=True)] == ["seq"]


async def test_another_process_may_append_markers(mosquitto: Broker, tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    async with StreamCapture(mosquitto.host, mosquitto.port, PREFIX, path) as cap:
        append_marker(path, "agent_killed", t=123.0)
        cap.mark("agent_started")
    assert markers(read(path)) == ["capture_up", "agent_killed", "agent_started"]


async def test_no_broker_no_subscription_in_time(tmp_path: Path) -> None:
    capture = StreamCapture("127.0.0.1", free_port(), PREFIX, tmp_path / "c.jsonl", start_timeout_s=0.3)
    with pytest.raises(CaptureError, match="no subscription"):
        async with capture:
            pass
    assert capture.lines == []


async def test_wait_for_times_out_and_marks_are_validated(mosquitto: Broker, tmp_path: Path) -> None:
    async with StreamCapture(mosquitto.host, mosquitto.port, PREFIX, tmp_path / "c.jsonl") as cap:
        with pytest.raises(TimeoutError):
            await cap.wait_for(lambda m: True, timeout=0.05)
        with pytest.raises(ValueError, match="non-empty"):
            cap.mark("")


def test_payload_decoding() -> None:
    assert decode_payload(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    assert decode_payload(b"") == {"_raw_b64": ""}
    assert decode_payload(b"NaN") == {"_raw_b64": base64.b64encode(b"NaN").decode()}
    assert decode_payload(b'"\xff"') == {"_raw_b64": base64.b64encode(b'"\xff"').decode()}
    assert decode_payload(b"[" * 100_000) == {"_raw_b64": base64.b64encode(b"[" * 100_000).decode()}
