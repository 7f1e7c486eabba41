"""The commands: ``python -m hil.check_stream`` exit codes 0/1/2 and output, ``python -m hil.capture``
recording until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from hil.stream import MarkerLine, MessageLine, parse_line
from hil.stream.capture import parse_broker_url
from tests.hil.streams import PREFIX, valid_stream
from tests.mosquitto import Broker

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0


def check_stream(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.check_stream", *args],
        cwd=ROOT,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_a_valid_capture_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.jsonl", valid_stream().lines)
    result = check_stream(str(path), "--complete", "--prefix", PREFIX)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "0 finding(s)" in result.stderr


def test_findings_exit_1_one_per_line_and_as_json(tmp_path: Path) -> None:
    s = valid_stream()
    lines = [line for line in s.lines if line.get("payload", {}).get("event") != "payment.incremented"]
    path = write(tmp_path / "gap.jsonl", lines)
    result = check_stream(str(path), "--complete")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "seq: events seq 2 missing (of 0-4): lost event(s) [session=S-A "
        "topic=evpay/v1/ST-1/connectors/1/events msg_id=00000007-0000-4000-8000-000000000007 line=8]"
    ]
    result = check_stream(str(path), "--json")
    assert result.returncode == 1
    (finding,) = [json.loads(text) for text in result.stdout.splitlines()]
    assert finding["rule"] == "seq"
    assert finding["session_id"] == "S-A"


def test_complete_and_lenient_sessions_flags(tmp_path: Path) -> None:
    s = valid_stream()
    open_session = [line for line in s.lines if line.get("payload", {}).get("session_id") != "S-B"]
    open_session += [line for line in s.lines if line.get("payload", {}).get("session_id") == "S-B"][:2]
    path = write(tmp_path / "open.jsonl", open_session)
    assert check_stream(str(path)).returncode == 0
    assert check_stream(str(path), "--complete").returncode == 1
    v10 = write(tmp_path / "v10.jsonl", valid_stream("1.0").lines).as_posix()
    strict = check_stream(v10, "--complete")
    assert strict.returncode == 1
    assert all(line.startswith("session: ") for line in strict.stdout.splitlines())
    assert check_stream(v10, "--complete", "--lenient-sessions").returncode == 0


def test_a_malformed_line_is_a_finding_exit_1(tmp_path: Path) -> None:
    path = write(tmp_path / "some.jsonl", valid_stream().lines)
    with path.open("ab") as file:
        file.write(b'{"t": 1.0, "topic": "evpay/v1/ST-1/receipts", "ret')  # a capture killed mid-write
    result = check_stream(str(path))
    assert result.returncode == 1
    assert result.stdout.startswith("input: line 51: not JSON")


def test_standard_input(tmp_path: Path) -> None:
    data = "".join(json.dumps(line) + "\n" for line in valid_stream().lines).encode()
    assert check_stream("-", "--complete", stdin=data).returncode == 0


@pytest.mark.parametrize("content", [None, b"\x00\x01\x02\xff" * 100, b"hello\nworld\n"])
def test_unreadable_input_exits_2(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "capture.jsonl"
    if content is not None:
        path.write_bytes(content)
    result = check_stream(str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert "check_stream:" in result.stderr


def test_a_directory_and_bad_arguments_exit_2(tmp_path: Path) -> None:
    assert check_stream(str(tmp_path)).returncode == 2
    assert check_stream().returncode == 2
    assert check_stream(str(tmp_path / "x"), "--tolerance", "-1").returncode == 2
    assert check_stream(str(tmp_path / "x"), "--bogus").returncode == 2


def test_an_empty_file_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert check_stream(str(path)).returncode == 0


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, False, None, None)
    assert parse_broker_url("mqtts://u:p%40ss@broker") == ("broker", 8883, True, "u", "p@ss")
    with pytest.raises(ValueError, match="expected mqtt://"):
        parse_broker_url("http://x:1")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


async def _wait_for_file(path: Path, predicate: str, proc: asyncio.subprocess.Process) -> None:
    """Until ``predicate`` appears in the file (the capture writes a line per message at once)."""
    deadline = time.monotonic() + WAIT_S
    while predicate not in await asyncio.to_thread(_text, path):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise AssertionError(f"{predicate!r} not captured; exit {proc.returncode}")
        await asyncio.sleep(0.02)


async def test_capture_command_records_until_sigterm(mosquitto: Broker, tmp_path: Path) -> None:
    out = tmp_path / "capture.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.capture", "--broker", mosquitto.url, "--prefix", PREFIX,
        "--out", str(out), "--duration", "60",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await _wait_for_file(out, '"capture_up"', proc)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="cli-publisher") as client:
            await client.publish(f"{PREFIX}/alarms", b'{"n": 1}', qos=1)
            await client.publish(f"{PREFIX}/alarms", b'{"n": 2}', qos=1)
        await _wait_for_file(out, '{"n":2}', proc)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr
    assert b"2 message(s), 1 marker(s)" in stderr
    lines = [parse_line(text) for text in out.read_text(encoding="utf-8").splitlines()]
    assert [line.marker for line in lines if isinstance(line, MarkerLine)] == ["capture_up"]
    assert [line.payload for line in lines if isinstance(line, MessageLine)] == [{"n": 1}, {"n": 2}]


def test_capture_command_bad_url_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil.capture", "--broker", "tcp://x", "--out", str(tmp_path / "c")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "expected mqtt://" in result.stderr
