"""A PSP transport wrapper that calls the crash points ``psp_sent:*`` / ``psp_received:*``.

Wrapped around the real transport through ``PspTerminal(..., opener=crashpoint_opener(wire))``
only when ``EVPAY_CRASH_AT`` is set (zero cost otherwise). Bytes are decoded with the driver's own
codec, as ``hil/demo.py``'s ``TappingTransport`` does:

* ``psp_sent:<RequestClass>`` after the request's bytes were written, before its reply;
* ``psp_received:<MessageClass>`` after a reply/event frame was read, before the driver acts on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent import crashpoints
from drivers.psp import messages as m
from drivers.psp.codec import PREAMBLE_HOST, FrameDecoder
from drivers.transport import Transport, open_transport

Opener = Callable[[str], Awaitable[Transport]]


class CrashPointTransport:
    def __init__(self, inner: Transport, wire: m.WireFormat) -> None:
        self._inner = inner
        self._wire = wire
        self._tx = FrameDecoder(preambles=frozenset({PREAMBLE_HOST}))
        self._rx = FrameDecoder()
        self._last_request: m.Request | None = None

    @property
    def description(self) -> str:
        return self._inner.description

    async def read(self) -> bytes:
        data = await self._inner.read()
        for frame in self._rx.feed(data):
            try:
                message = m.decode_response(frame, self._wire, expecting=self._last_request)
            except Exception:  # undecodable here: the driver counts it; no crash point
                continue
            crashpoints.reached(f"psp_received:{type(message).__name__}")
        return data

    async def write(self, data: bytes) -> None:
        names = []
        for frame in self._tx.feed(data):
            try:
                request = m.decode_request(frame, self._wire)
            except Exception:
                continue
            self._last_request = request if isinstance(request, m.Request) else None
            names.append(type(request).__name__)
        await self._inner.write(data)
        for name in names:
            crashpoints.reached(f"psp_sent:{name}")

    async def close(self) -> None:
        await self._inner.close()


def crashpoint_opener(wire: m.WireFormat, inner: Opener = open_transport) -> Opener:
    async def opener(url: str) -> Transport:
        return CrashPointTransport(await inner(url), wire)

    return opener
