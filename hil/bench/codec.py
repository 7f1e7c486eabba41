"""PSP decoder throughput against the serial line rate (issue 2, AC 5)."""

from __future__ import annotations

import time
from typing import Any

from drivers.psp import messages as m
from drivers.psp.codec import FrameDecoder

LINE_RATE_BAUD = 57600  # psp-reference §1.2: default baud rate of both families
BITS_PER_BYTE_8N1 = 10  # 1 start + 8 data + 1 stop bit (psp-reference §1.2)
LINE_RATE_BYTES_S = LINE_RATE_BAUD / BITS_PER_BYTE_8N1


def _traffic() -> bytes:
    """A realistic terminal → host mix: status polls, results, card reads and approvals."""
    dol = m.Dol(((0xDFF006, b"0123456789ABCDEF0123456789ABCDEF01234567"), (0xDFCA0B, b"476173******0010")))
    frames = [
        m.GetStatusResponse(m.PspState.WAIT_CARD, True),
        m.Result(True),
        m.CardRead(dol),
        m.SessionApproved(0x1234ABCD, dol),
        m.TransactionEvent(1),
        m.Result(True),
    ]
    return b"".join(f.to_bytes() for f in frames)


def _measure(stream: bytes, chunk: int, min_seconds: float) -> tuple[float, int]:
    rounds = 0
    frames = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < min_seconds:
        decoder = FrameDecoder()
        for i in range(0, len(stream), chunk):
            for frame in decoder.feed(stream[i : i + chunk]):
                m.decode_response(frame)
                frames += 1
        rounds += 1
        elapsed = time.perf_counter() - start
    return len(stream) * rounds / elapsed, frames


def run(quick: bool = False) -> dict[str, Any]:
    stream = _traffic() * 200
    seconds = 0.3 if quick else 1.0
    bulk_bps, frames = _measure(stream, 4096, seconds)
    byte_bps, _ = _measure(stream[: len(stream) // 10], 1, seconds)
    return {
        "decoder_bytes_per_s": round(bulk_bps),
        "decoder_x_line_rate_57600": round(bulk_bps / LINE_RATE_BYTES_S, 1),
        "decoder_byte_at_a_time_bytes_per_s": round(byte_bps),
        "decoder_byte_at_a_time_x_line_rate_57600": round(byte_bps / LINE_RATE_BYTES_S, 1),
        "frames_decoded": frames,
        "note": "decode = frame codec + message decoding; 57600 baud 8N1 = 5760 bytes/s",
    }
