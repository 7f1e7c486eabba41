"""``evpay-agent psp decode HEX…``: decode captured PSP bytes into one JSON object per frame.

The field tool for a logic-analyser or serial capture: any split of the bytes, both directions
mixed (told apart by the preamble, psp-reference §2.1), corrupted frames shown with
``"checksum_ok": false``, stray bytes shown as ``"unparsed"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from typing import Any

from drivers.psp.codec import PREAMBLE_HOST, scan_capture
from drivers.psp.messages import (
    CommitOrder,
    Family,
    Message,
    MessageError,
    Request,
    WireFormat,
    decode_request,
    decode_response,
    describe,
)


def register(subparsers: Any) -> None:
    psp = subparsers.add_parser("psp", help="Payter Session Protocol field tools")
    psp_sub = psp.add_subparsers(dest="psp_command", metavar="SUBCOMMAND")
    psp_sub.required = True
    decode = psp_sub.add_parser(
        "decode",
        help="decode captured bytes into one JSON object per frame",
        description="Decode captured PSP bytes (hex; spaces, colons and 0x prefixes allowed; "
        "several arguments are concatenated; '-' reads hex from standard input).",
    )
    decode.add_argument("hex", nargs="+", metavar="HEX")
    decode.add_argument("--family", choices=[f.value for f in Family], default=Family.APOLLO.value)
    decode.add_argument(
        "--commit-order", choices=[c.value for c in CommitOrder], default=CommitOrder.SESSION_AMOUNT
    )
    decode.add_argument("--read-card-header", choices=["0x40", "0x41"], default="0x41")
    decode.add_argument("--pretty", action="store_true", help="indent the JSON")
    decode.set_defaults(func=run_decode)


def parse_hex(chunks: list[str]) -> bytes:
    """Hex from arguments: whitespace, ':' '-' separators and 0x prefixes are ignored."""
    text = "".join(sys.stdin.read() if c == "-" else c for c in chunks)
    text = re.sub(r"0[xX]", "", text)
    text = re.sub(r"[\s:,\-]", "", text)
    if len(text) % 2 or re.search(r"[^0-9a-fA-F]", text):
        from agent.cli import CliError

        raise CliError("HEX must be pairs of hexadecimal digits")
    return bytes.fromhex(text)


def decode_capture(data: bytes, wire: WireFormat) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    last_request: Request | None = None
    for item in scan_capture(data):
        if item.frame is None:
            out.append({"offset": item.offset, "unparsed": item.raw.hex(" ")})
            continue
        frame = item.frame
        to_terminal = frame.preamble == PREAMBLE_HOST
        record: dict[str, Any] = {
            "offset": item.offset,
            "direction": "host->terminal" if to_terminal else "terminal->host",
            "preamble": f"0x{frame.preamble:02X}",
            "format": "extended" if frame.extended else "normal",
            "header": f"0x{frame.header:02X}",
            "checksum_ok": item.checksum_ok,
            "payload": frame.payload.hex(" "),
        }
        frame_wire = dataclasses.replace(wire, extended=frame.extended)
        message: Message
        try:
            if to_terminal:
                message = decode_request(frame, frame_wire)
                last_request = message if isinstance(message, Request) else None
            else:
                message = decode_response(frame, frame_wire, expecting=last_request)
            record["message"] = message.name
            record["fields"] = describe(message)
        except (MessageError, ValueError) as exc:
            record["message"] = None
            record["error"] = str(exc)
        out.append(record)
    return out


def run_decode(args: argparse.Namespace) -> int:
    data = parse_hex(args.hex)
    wire = WireFormat(
        family=Family(args.family),
        commit_order=CommitOrder(args.commit_order),
        read_card_header=int(args.read_card_header, 16),
    )
    for record in decode_capture(data, wire):
        print(json.dumps(record, indent=2 if args.pretty else None))
    return 0
