"""PSP block (frame) codec, sans-IO (psp-reference §2).

A block is ``preamble | length | magic 0x3C | header | payload | checksum`` where ``length`` counts
magic + header + payload and the checksum is the 8-bit sum of every preceding byte (§2.1). The
extended format (Apollo, Protocol option 0x04) widens ``length`` to four big-endian bytes (§2.2).

The streaming :class:`FrameDecoder` never raises on bad input: it counts what it drops and
resynchronises by discarding one byte and searching again (§2.5). Its output depends only on the
concatenated byte stream, never on how the stream was split into chunks.

Format auto-detection: a normal length byte is at least 2 (magic + header), so a ``0x00`` right
after the preamble can only start an extended 4-byte length. The decoder therefore reads both
formats; ``allow_extended=False`` rejects extended candidates (a P6X never sends them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

_LOGGER = logging.getLogger(__name__)

MAGIC = 0x3C  # psp-reference §2.1: "magic/routing byte"
PREAMBLE_HOST = 0xCC  # §2.1: host → terminal
PREAMBLE_TERMINAL = 0xAA  # §2.1: Apollo → host (and what P6X units send in practice)

MIN_LENGTH = 2  # §2.1: length covers at least magic + header
MAX_NORMAL_LENGTH = 0xFF  # §2.3: 1-byte length; accept up to 0xFF when receiving
MAX_SEND_LENGTH = 0xFE  # §2.3: keep Length ≤ 0xFE when sending (frame ≤ 257 bytes)
# §2.3: the extended-format maximum is a [GAP]; 64 KiB covers the longest documented field
# (a 4297-byte QR URL, §5.9) many times over and bounds the decoder's buffer.
MAX_EXTENDED_LENGTH = 0x10000


def checksum(data: bytes | bytearray) -> int:
    """8-bit sum of ``data``, carry discarded (§2.1)."""
    return sum(data) & 0xFF


def max_payload(*, extended: bool, preamble: int = PREAMBLE_HOST) -> int:
    """The largest payload (magic and header excluded) one block can carry (§2.3, §2.2).

    Normal format: a host keeps Length ≤ 0xFE, i.e. 252 payload bytes; a terminal fills frames up
    to Length 0xFF (253 bytes, §5.8 List Sessions). Extended format: ``MAX_EXTENDED_LENGTH`` - 2.
    """
    if extended:
        body = MAX_EXTENDED_LENGTH
    else:
        body = MAX_SEND_LENGTH if preamble == PREAMBLE_HOST else MAX_NORMAL_LENGTH
    return body - 2  # Length counts magic + header + payload (§2.1)


class FrameTooLong(ValueError):
    """A payload of ``size`` bytes exceeds ``limit``, the most the chosen block format carries."""

    def __init__(self, size: int, limit: int, *, extended: bool) -> None:
        super().__init__(size, limit, extended)
        self.size = size
        self.limit = limit
        self.extended = extended

    def __str__(self) -> str:
        fmt = "extended" if self.extended else "normal"
        return f"payload of {self.size} bytes > {self.limit}, the {fmt} block format's limit"


@dataclass(frozen=True, slots=True)
class Frame:
    """One PSP block. ``payload`` excludes magic and header."""

    header: int
    payload: bytes = b""
    preamble: int = PREAMBLE_HOST
    magic: int = MAGIC
    extended: bool = False

    @property
    def length(self) -> int:
        return len(self.payload) + 2

    def to_bytes(self) -> bytes:
        # §2.3: hosts keep Length ≤ 0xFE; a terminal fills frames up to 0xFF (§5.8 List Sessions)
        limit = max_payload(extended=self.extended, preamble=self.preamble)
        if len(self.payload) > limit:
            raise FrameTooLong(len(self.payload), limit, extended=self.extended)
        body = bytes((self.magic, self.header)) + self.payload
        length = len(body).to_bytes(4, "big") if self.extended else bytes((len(body),))
        raw = bytes((self.preamble,)) + length + body
        return raw + bytes((checksum(raw),))


@dataclass(slots=True)
class DecoderStats:
    """What the decoder saw; bad input is counted, never raised (style.md §2)."""

    frames: int = 0
    bytes_dropped: int = 0
    checksum_errors: int = 0
    bad_lengths: int = 0
    bad_magic: int = 0


@dataclass(slots=True)
class FrameDecoder:
    """Streaming decoder: ``feed(data) -> list[Frame]``.

    ``preambles``: accepted preamble bytes, or ``None`` to accept any byte (P6X may put a
    configurable address byte there, §2.1). ``strict_magic``: drop candidates whose magic is not
    0x3C (Apollo always sends 0x3C; a P6X magic may differ, §2.1).
    """

    preambles: frozenset[int] | None = frozenset({PREAMBLE_TERMINAL})
    strict_magic: bool = True
    allow_extended: bool = True
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while self._buf:
            result = self._try_frame()
            if result is None:  # need more bytes
                break
            if isinstance(result, Frame):
                frames.append(result)
                self.stats.frames += 1
            else:  # result is the number of bytes to drop (resync)
                self._drop(result)
        return frames

    def discard_partial(self) -> list[Frame]:
        """Abandon a stale partial frame (§2.5 step 4): drop its first byte and rescan.

        Call after an inter-byte timeout. Returns the frames the rescan recovers (a real frame
        may have been buffered behind a bogus preamble); check :attr:`buffered` for what is left.
        """
        if not self._buf:
            return []
        self._drop(1)
        return self.feed(b"")

    def _drop(self, count: int) -> None:
        if _LOGGER.isEnabledFor(logging.DEBUG):
            _LOGGER.debug("dropping %d byte(s): %s", count, bytes(self._buf[:count]).hex(" "))
        del self._buf[:count]
        self.stats.bytes_dropped += count

    def _try_frame(self) -> Frame | int | None:
        """A frame, a count of bytes to drop, or ``None`` when more input is needed."""
        buf = self._buf
        if self.preambles is not None and buf[0] not in self.preambles:
            # skip straight to the next plausible preamble
            found = [i for i in (buf.find(p, 1) for p in self.preambles) if i > 0]
            return min(found) if found else len(buf)
        if len(buf) < 2:
            return None
        extended = buf[1] == 0x00
        if extended:
            if not self.allow_extended:
                self.stats.bad_lengths += 1
                return 1
            if len(buf) < 5:
                return None
            length = int.from_bytes(buf[1:5], "big")
            head = 5
            limit = MAX_EXTENDED_LENGTH
        else:
            length = buf[1]
            head = 2
            limit = MAX_NORMAL_LENGTH
        if length < MIN_LENGTH or length > limit:
            self.stats.bad_lengths += 1
            return 1
        total = head + length + 1
        if len(buf) < head + 1:
            return None
        if self.strict_magic and buf[head] != MAGIC:
            # checked early so garbage does not make us wait for a long bogus body
            self.stats.bad_magic += 1
            return 1
        if len(buf) < total:
            return None
        if checksum(buf[: total - 1]) != buf[total - 1]:
            self.stats.checksum_errors += 1
            return 1  # §2.5 step 3: drop only the preamble; a real frame may start inside
        frame = Frame(
            header=buf[head + 1],
            payload=bytes(buf[head + 2 : total - 1]),
            preamble=buf[0],
            magic=buf[head],
            extended=extended,
        )
        del buf[:total]
        return frame


@dataclass(frozen=True, slots=True)
class CaptureItem:
    """One element of a scanned capture: a frame (maybe with a bad checksum) or unparsed bytes."""

    offset: int
    raw: bytes
    frame: Frame | None = None
    checksum_ok: bool = False


def scan_capture(
    data: bytes, preambles: frozenset[int] = frozenset({PREAMBLE_HOST, PREAMBLE_TERMINAL})
) -> list[CaptureItem]:
    """Split a captured byte string into frames for a field engineer (``evpay-agent psp decode``).

    Unlike :class:`FrameDecoder` this keeps candidates whose checksum fails (magic 0x3C and a
    plausible length are required) so that a corrupted frame is shown, flagged, rather than
    silently skipped. Bytes that belong to no frame are reported as unparsed runs.
    """
    items: list[CaptureItem] = []
    pos = 0
    junk_start: int | None = None

    def flush_junk(end: int) -> None:
        nonlocal junk_start
        if junk_start is not None:
            items.append(CaptureItem(junk_start, data[junk_start:end]))
            junk_start = None

    while pos < len(data):
        candidate = _capture_candidate(data, pos, preambles)
        if candidate is None:
            if junk_start is None:
                junk_start = pos
            pos += 1
            continue
        flush_junk(pos)
        items.append(candidate)
        pos += len(candidate.raw)
    flush_junk(len(data))
    return items


def _capture_candidate(data: bytes, pos: int, preambles: frozenset[int]) -> CaptureItem | None:
    if data[pos] not in preambles or pos + 2 > len(data):
        return None
    extended = data[pos + 1] == 0x00
    head = 5 if extended else 2
    if pos + head > len(data):
        return None
    length = int.from_bytes(data[pos + 1 : pos + head], "big")
    limit = MAX_EXTENDED_LENGTH if extended else MAX_NORMAL_LENGTH
    total = head + length + 1
    if not MIN_LENGTH <= length <= limit or pos + total > len(data) or data[pos + head] != MAGIC:
        return None
    raw = data[pos : pos + total]
    frame = Frame(raw[head + 1], raw[head + 2 : -1], preamble=raw[0], magic=raw[head], extended=extended)
    return CaptureItem(pos, raw, frame, checksum(raw[:-1]) == raw[-1])
