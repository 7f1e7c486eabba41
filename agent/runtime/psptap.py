"""The crash points ``psp_sent:*`` / ``psp_received:*`` on the terminal link (test only).

Installed through ``PspTerminal(..., opener=crashpoint_opener(wire))`` only when ``EVPAY_CRASH_AT``
is set (zero cost otherwise), on :class:`drivers.psp.tap.TappedTransport`:

* ``psp_sent:<RequestClass>`` after the request's bytes were written, before its reply;
* ``psp_received:<MessageClass>`` after a reply/event frame was read, before the driver acts on it.
"""

from __future__ import annotations

from agent import crashpoints
from drivers.psp import messages as m
from drivers.psp.tap import Direction, Opener, tapped_opener
from drivers.transport import open_transport


def _reached(direction: Direction, message: m.Message, raw: bytes) -> None:
    prefix = "psp_sent" if direction == "sent" else "psp_received"
    crashpoints.reached(f"{prefix}:{type(message).__name__}")


def crashpoint_opener(wire: m.WireFormat, inner: Opener = open_transport) -> Opener:
    return tapped_opener(inner, wire, _reached)
