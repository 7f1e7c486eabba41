"""``evpay-agent psp decode`` shows every §16 frame as the library decodes it (issue 2, AC 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from drivers.psp import messages as m
from tests.psp.test_golden_vectors import REQUESTS, RESPONSES

EVPAY = Path(sys.executable).with_name("evpay-agent")


def _decode(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["psp", "decode", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(("name", "msg", "wire", "frame"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_decode_cli_requests(
    capsys: pytest.CaptureFixture[str], name: str, msg: m.Request, wire: m.WireFormat, frame: str
) -> None:
    args = ["--family", wire.family.value, "--commit-order", wire.commit_order.value]
    (record,) = _decode(capsys, *args, frame)
    assert record["direction"] == "host->terminal"
    assert record["checksum_ok"] is True
    assert record["message"] == msg.name
    assert record["fields"] == json.loads(json.dumps(m.describe(msg)))


@pytest.mark.parametrize(
    ("name", "msg", "wire", "frame", "expecting"), RESPONSES, ids=[r[0] for r in RESPONSES]
)
def test_decode_cli_responses(
    capsys: pytest.CaptureFixture[str],
    name: str,
    msg: m.Response,
    wire: m.WireFormat,
    frame: str,
    expecting: m.Request | None,
) -> None:
    # a capture carries the request before its reply: that is how 0x00 replies are told apart (§4.4)
    prefix = [expecting.to_bytes().hex()] if expecting is not None else []
    records = _decode(capsys, *prefix, frame)
    record = records[-1]
    assert record["direction"] == "terminal->host"
    assert record["checksum_ok"] is True
    assert record["message"] == msg.name
    assert record["fields"] == json.loads(json.dumps(m.describe(msg)))


def test_decode_cli_real_process_mixed_split_capture() -> None:
    """The console script on a capture with garbage, a corrupted frame and both directions."""
    capture = (
        "ff 00 CC 02 3C 26 | 30 AA 04 3C 00 08 00 F2 CC 0A 3C 35 00 00 00 0B 00 00 04 D2 29 AA 03 3C 00 00 E9"
    )
    chunks = capture.replace("|", "").split(" ")
    out = subprocess.run(
        [str(EVPAY), "psp", "decode", *chunks], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0] == {"offset": 0, "unparsed": "ff 00"}
    assert [r.get("message") for r in records[1:]] == [
        "GetStatus",
        "GetStatusResponse",
        "CommitSession",
        "Result",
    ]
    assert [r.get("checksum_ok") for r in records[1:]] == [True, True, False, True]
    assert records[3]["fields"] == {"session_id": 11, "amount_minor": 1234}


def test_decode_cli_rejects_bad_hex() -> None:
    proc = subprocess.run([str(EVPAY), "psp", "decode", "CC0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "hexadecimal" in proc.stderr
