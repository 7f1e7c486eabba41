"""A transport wrapper that decodes what passes through it, for observers (sans decisions).

``TappedTransport(inner, wire, on_frame)`` forwards every byte unchanged and calls
``on_frame(direction, message, raw)`` for each complete frame: ``"sent"`` right after the bytes of a
request were written (before its reply can arrive), ``"received"`` right after a frame was read
(before the driver acts on it). Frames that do not decode are skipped here; the driver's own link
counts them. Used by the agent's crash points and the demo's live frame log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Literal

from drivers.psp import messages as m
from drivers.psp.codec import PREAMBLE_HOST, Frame, FrameDecoder
from drivers.transport import Transport

_LOGGER = logging.getLogger(__name__)

Direction = Literal["sent", "received"]
FrameObserver = Callable[[Direction, m.Message, bytes], None]
Opener = Callable[[str], Awaitable[Transport]]


class TappedTransport:
    def __init__(self, inner: Transport, wire: m.WireFormat, on_frame: FrameObserver) -> None:
        self._inner = inner
        self._wire = wire
        self._on_frame = on_frame
        self._tx = FrameDecoder(preambles=frozenset({PREAMBLE_HOST}))
        self._rx = FrameDecoder()
        self._last_request: m.Request | None = None  # tells 0x00 replies apart (§4.4)

    @property
    def description(self) -> str:
        return self._inner.description

    async def read(self) -> bytes:
        data = await self._inner.read()
        for frame in self._rx.feed(data):
            try:
                message = m.decode_response(frame, self._frame_wire(frame), expecting=self._last_request)
            except m.MessageError:
                continue
            self._notify("received", message, frame.to_bytes())
        return data

    async def write(self, data: bytes) -> None:
        sent: list[tuple[m.Message, bytes]] = []
        for frame in self._tx.feed(data):
            try:
                request = m.decode_request(frame, self._frame_wire(frame))
            except m.MessageError:
                continue
            self._last_request = request if isinstance(request, m.Request) else None
            sent.append((request, frame.to_bytes()))
        await self._inner.write(data)
        for message, raw in sent:
            self._notify("sent", message, raw)

    def _frame_wire(self, frame: Frame) -> m.WireFormat:
        """The wire format of this frame: inner lengths widen in the extended block format (§2.2)."""
        return (
            self._wire
            if frame.extended == self._wire.extended
            else replace(self._wire, extended=frame.extended)
        )

    def _notify(self, direction: Direction, message: m.Message, raw: bytes) -> None:
        """An observer's failure never breaks the link it watches."""
        try:
            self._on_frame(direction, message, raw)
        except Exception:
            _LOGGER.warning("frame observer failed on %s %s", direction, message.name, exc_info=True)

    async def close(self) -> None:
        await self._inner.close()


def tapped_opener(inner: Opener, wire: m.WireFormat, on_frame: FrameObserver) -> Opener:
    """An opener for ``TerminalSession``/``PspTerminal`` that wraps each new link."""

    async def opener(url: str) -> Transport:
        return TappedTransport(await inner(url), wire, on_frame)

    return opener
