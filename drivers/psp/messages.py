"""PSP messages, sans-IO (psp-reference §4 to §6).

Every message is a frozen dataclass with a class-level ``HEADER``, ``payload(wire)`` and
``from_payload(payload, wire)``; ``to_bytes(wire)`` gives the whole block. Headers are reused in
opposite directions (0x33 is Void Session *and* Session Cancelled), so decoding is per direction:
:func:`decode_request` (what a terminal receives) and :func:`decode_response` (what a host receives).

Documented inconsistencies (§4.3, §5.17) are settled by :class:`WireFormat`, which the family
profile builds from the configured quirk switches. Malformed payloads raise :class:`MessageError`
(a ``DriverError``); nothing else escapes the decoders.

Multi-byte integers are big-endian (§2.4); amounts are 4-byte minor units; strings are
NUL-terminated UTF-8.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from enum import IntEnum, IntFlag, StrEnum
from typing import ClassVar, Self

from drivers.errors import DriverError
from drivers.psp.codec import PREAMBLE_HOST, PREAMBLE_TERMINAL, Frame

U32_MAX = 0xFFFFFFFF  # §2.4: amounts and ids are 4-byte unsigned


class MessageError(DriverError):
    """A frame whose payload does not fit the message its header names."""


class Family(StrEnum):
    P6X = "p6x"
    APOLLO = "apollo"


class CommitOrder(StrEnum):
    """Field order of Commit Session, a [GAP] (§5.17); session-then-amount is the default."""

    SESSION_AMOUNT = "session_amount"
    AMOUNT_SESSION = "amount_session"


class RequestHeader(IntEnum):
    """Host → terminal headers (§4.1)."""

    DISABLE = 0x11
    ENABLE = 0x12
    PROTOCOL = 0x13
    SETUP = 0x23
    SYNCHRONIZE = 0x24
    GET_STATUS = 0x26
    REQUEST_IDS = 0x27
    UI_REQUEST = 0x28
    LIST_SESSIONS = 0x30
    VOID_SESSION = 0x33
    START_SESSION = 0x34
    COMMIT_SESSION = 0x35
    AUTH_SESSION = 0x36
    CANCEL_SESSION = 0x37
    PROP_CARD_EXCHANGE = 0x38
    READ_CARD = 0x41  # §4.3: 0x41 per its own page (0x40 per S6); switchable in WireFormat
    UPDATE_SESSION = 0x42
    ADD_TRANSACTION_CONTEXT = 0x47
    CONTROL = 0x48
    RESET = 0x55


class ResponseHeader(IntEnum):
    """Terminal → host headers (§4.2)."""

    RESULT = 0x00  # also Get Status Response (§4.4)
    PROTOCOL = 0x13
    SYNCHRONIZE = 0x24
    GET_STATUS_ALT = 0x26  # §4.3: T1 expects Get Status Response under 0x26
    REQUEST_IDS = 0x27
    UI_EVENT = 0x29
    LIST_SESSIONS = 0x30
    SESSION_APPROVED = 0x31
    SESSION_DECLINED = 0x32
    SESSION_CANCELLED = 0x33
    CARD_READ = 0x34
    SESSION_PARTIALLY_APPROVED = 0x35
    TRANSACTION_EVENT = 0x38
    PROP_CARD_READ = 0x40
    UPDATE_SESSION_RESULT = 0x43


class PspState(IntEnum):
    """One-hot PSP states of Get Status Response (§3.1)."""

    OFFLINE = 0x01
    ONLINE = 0x02
    DISABLED = 0x04
    ENABLED = 0x08
    WAIT_CARD = 0x10
    WAIT_AUTH = 0x20


class ResultCode(IntEnum):
    """Result byte 0, and the detailed reason in byte 1 (§6.1, Apollo with option 0x08)."""

    OK = 0x00
    NOT_OK = 0x01
    UNKNOWN_COMMAND = 0x02
    INCORRECT_MESSAGE = 0x03
    INCORRECT_CHECKSUM = 0x04
    INCORRECT_PSP_STATE = 0x05
    UNKNOWN_CARD = 0x06
    TRANSACTION_CANCELLED = 0x07
    INCORRECT_UI_SCREEN = 0x08
    INTERNAL_ERROR = 0x09
    NO_TRANSACTION_RUNNING = 0x0A
    DUPLICATE_SESSION_ID = 0x0B
    SESSION_ID_NOT_FOUND = 0x0C
    SERVICE_NOT_SUPPORTED = 0x0D
    PAYMENT_APP_INVALID_STATE = 0x0E
    OVERFLOW = 0x0F
    ACCESS_DENIED = 0x10
    NOT_READY = 0x11


class DeclineReason(IntEnum):
    """Session Declined / Update Session Result reasons (§6.2)."""

    NOT_SET = 0x00
    CARD_READ_FAILURE = 0x01
    CARD_READ_TIMEOUT = 0x02
    HOST_ERROR = 0x03
    INVALID_MERCHANT = 0x04
    REFER_TO_ISSUER = 0x05
    INVALID_ACCOUNT = 0x06
    PIN_FAILURE = 0x07
    HOST_TIMEOUT = 0x08
    INSUFFICIENT_FUNDS = 0x09
    WITHDRAWAL_LIMIT_EXCEEDED = 0x0A
    WITHDRAWAL_FREQUENCY_EXCEEDED = 0x0B
    DATABASE_NOT_REACHABLE = 0x0C
    OTHER = 0xFF


class TransactionEventCode(IntEnum):
    """Transaction Event payload (§5.19)."""

    STARTED = 0x00
    READING_CARD = 0x01
    CARD_READ_COMPLETE = 0x02
    TRANSACTION_COMPLETE = 0x03
    UNKNOWN = 0xFF


class UpdateResult(IntEnum):
    """Update Session Result byte 0 (§5.20)."""

    APPROVED = 0x00
    PARTIALLY_APPROVED = 0x01
    DECLINED = 0x02


class ProtocolOption(IntFlag):
    """Protocol option bits (§5.3)."""

    NONE = 0
    TRANSACTION_EVENTS = 0x01
    AUTH_DOL = 0x02
    EXTENDED_BLOCK = 0x04  # Apollo only
    DETAILED_RESULTS = 0x08  # Apollo only
    DECLINED_DOL = 0x10  # Apollo only


APOLLO_ONLY_OPTIONS = (
    ProtocolOption.EXTENDED_BLOCK | ProtocolOption.DETAILED_RESULTS | ProtocolOption.DECLINED_DOL
)
KNOWN_OPTIONS = ProtocolOption(0x1F)  # §5.3: bits 0x01…0x10; other bits are reserved


class TimeoutAction(IntEnum):
    """Setup timeout action (§5.4)."""

    COMMIT = 0x00
    VOID = 0x01


class Tag(IntEnum):
    """DOL tags with known meaning (§6.4)."""

    ACQUIRER_DATA = 0xDFAA01
    GATEWAY_DATA = 0xDFAA02
    HOST_RESPONSE_CODE = 0xDFCA02
    HOST_TRANSACTION_REFERENCE = 0xDFCA03
    BRAND_ID = 0xDFCA07
    ACQUIRER_ID = 0xDFCA08
    ITEM_REFERENCE = 0xDFCA09
    BRAND_NAME = 0xDFCA0A
    MASKED_PAN = 0xDFCA0B
    DFF002 = 0xDFF002  # [GAP] meaning; in the default set
    DFF003 = 0xDFF003  # [GAP] meaning; in the default set
    CARD_HASH = 0xDFF006


# §5.11: the default DOL set when the host requests none
DEFAULT_DOL_TAGS: tuple[int, ...] = (0xDFF006, 0xDFCA0B, 0xDFCA09, 0xDFF002, 0xDFF003, 0xDFCA03)


@dataclass(frozen=True, slots=True)
class WireFormat:
    """Per-deployment wire choices: block format and the quirk switches of §4.3 and §5.17."""

    family: Family = Family.APOLLO
    extended: bool = False  # §2.2: after Protocol option 0x04 is confirmed
    commit_order: CommitOrder = CommitOrder.SESSION_AMOUNT
    read_card_header: int = 0x41  # §4.3: 0x41 (default) or 0x40
    status_response_header: int = 0x00  # §4.3: 0x00 (docs) or 0x26 (T1); the host accepts both
    # §6.4: which DOL tag carries an RFID UID is a [GAP]; candidates are DFF002, DFF003, DFF006
    rfid_uid_tag: int = 0xDFF006

    @property
    def dol_length_size(self) -> int:
        return 2 if self.extended else 1  # §2.2: inner DOL length widens in extended mode


DEFAULT_WIRE = WireFormat()


# ---------------------------------------------------------------------------------------------
# Payload helpers


class _Reader:
    """Cursor over a payload; every shortfall is a :class:`MessageError`."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise MessageError(f"{self._what}: need {n} more byte(s), {self.remaining} left")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def u32(self) -> int:
        return self.uint(4)

    def cstring(self) -> str:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            raise MessageError(f"{self._what}: string without NUL terminator")
        raw = self._data[self._pos : end]
        self._pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"{self._what}: string is not UTF-8") from exc

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def end(self) -> None:
        if self.remaining:
            raise MessageError(f"{self._what}: {self.remaining} unexpected trailing byte(s)")


def _u32(value: int, name: str) -> bytes:
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"{name} {value} out of range 0..{U32_MAX}")
    return value.to_bytes(4, "big")


def _u8(value: int, name: str) -> bytes:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} {value} out of range 0..255")
    return bytes((value,))


def _cstring(value: str, name: str, max_len: int | None = None) -> bytes:
    raw = value.encode("utf-8")
    if b"\x00" in raw:
        raise ValueError(f"{name} must not contain NUL")
    if max_len is not None and len(raw) + 1 > max_len:
        raise ValueError(f"{name} longer than {max_len - 1} bytes")
    return raw + b"\x00"


def _is_one_hot_state(value: int) -> bool:
    return value in PspState._value2member_map_


# ---------------------------------------------------------------------------------------------
# BER-TLV DOL data (§6.4)


def _encode_tag(tag: int) -> bytes:
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def _encode_ber_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    if n <= 0xFFFF:
        return bytes((0x82,)) + n.to_bytes(2, "big")
    raise ValueError(f"TLV value of {n} bytes too long")


def _read_tag(r: _Reader) -> int:
    first = r.u8()
    tag = first
    if first & 0x1F == 0x1F:  # BER: multi-byte tag, continuation bytes have bit 8 set
        for _ in range(3):
            b = r.u8()
            tag = (tag << 8) | b
            if not b & 0x80:
                break
        else:
            raise MessageError("DOL: tag longer than 4 bytes")
    return tag


def _read_ber_length(r: _Reader) -> int:
    first = r.u8()
    if first < 0x80:
        return first
    if first in (0x81, 0x82):
        return r.uint(first & 0x7F)
    raise MessageError(f"DOL: unsupported BER length form 0x{first:02X}")


@dataclass(frozen=True, slots=True)
class Dol:
    """BER-TLV data object list, in wire order."""

    items: tuple[tuple[int, bytes], ...] = ()

    def get(self, tag: int) -> bytes | None:
        for t, value in self.items:
            if t == tag:
                return value
        return None

    def text(self, tag: int) -> str | None:
        value = self.get(tag)
        return None if value is None else value.decode("utf-8", errors="replace")

    @property
    def card_hash(self) -> str | None:
        """DFF006: 40 ASCII hex characters on EMV cards (§5.14, [C-3p])."""
        return self.text(Tag.CARD_HASH)

    @property
    def masked_pan(self) -> str | None:
        return self.text(Tag.MASKED_PAN)

    @property
    def brand(self) -> str | None:
        return self.text(Tag.BRAND_NAME)

    @property
    def host_reference(self) -> str | None:
        value = self.get(Tag.HOST_TRANSACTION_REFERENCE)
        return None if value is None else value.hex()

    def to_bytes(self) -> bytes:
        return b"".join(_encode_tag(t) + _encode_ber_length(len(v)) + v for t, v in self.items)

    @classmethod
    def from_bytes(cls, data: bytes) -> Dol:
        r = _Reader(data, "DOL")
        items: list[tuple[int, bytes]] = []
        while r.remaining:
            tag = _read_tag(r)
            items.append((tag, r.take(_read_ber_length(r))))
        return cls(tuple(items))

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return iter(self.items)

    def to_json(self) -> dict[str, str]:
        """Tag → value for display: text tags as text, others as hex."""
        text_tags = {Tag.CARD_HASH, Tag.MASKED_PAN, Tag.BRAND_NAME, Tag.HOST_RESPONSE_CODE}
        out: dict[str, str] = {}
        for tag, value in self.items:
            key = f"{tag:06X}"
            out[key] = value.decode("utf-8", "replace") if tag in text_tags else value.hex()
        return out


def _encode_dol(dol: Dol, wire: WireFormat) -> bytes:
    data = dol.to_bytes()
    return len(data).to_bytes(wire.dol_length_size, "big") + data


def _read_dol(r: _Reader, wire: WireFormat) -> Dol:
    if not r.remaining:
        return Dol()  # §5.14: DOL length absent = 0
    return Dol.from_bytes(r.take(r.uint(wire.dol_length_size)))


# ---------------------------------------------------------------------------------------------
# Base classes


@dataclass(frozen=True, slots=True)
class Message:
    HEADER: ClassVar[int]
    PREAMBLE: ClassVar[int]

    def header(self, wire: WireFormat = DEFAULT_WIRE) -> int:
        return self.HEADER

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        _Reader(payload, cls.__name__).end()
        return cls()

    def to_frame(self, wire: WireFormat = DEFAULT_WIRE) -> Frame:
        return Frame(self.header(wire), self.payload(wire), preamble=self.PREAMBLE, extended=wire.extended)

    def to_bytes(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return self.to_frame(wire).to_bytes()

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class Request(Message):
    PREAMBLE: ClassVar[int] = PREAMBLE_HOST


@dataclass(frozen=True, slots=True)
class Response(Message):
    PREAMBLE: ClassVar[int] = PREAMBLE_TERMINAL


# ---------------------------------------------------------------------------------------------
# Requests (host → terminal), §4.1 and §5


@dataclass(frozen=True, slots=True)
class Disable(Request):
    HEADER: ClassVar[int] = RequestHeader.DISABLE


@dataclass(frozen=True, slots=True)
class Enable(Request):
    HEADER: ClassVar[int] = RequestHeader.ENABLE


@dataclass(frozen=True, slots=True)
class Synchronize(Request):
    HEADER: ClassVar[int] = RequestHeader.SYNCHRONIZE


@dataclass(frozen=True, slots=True)
class GetStatus(Request):
    HEADER: ClassVar[int] = RequestHeader.GET_STATUS


@dataclass(frozen=True, slots=True)
class RequestIds(Request):
    HEADER: ClassVar[int] = RequestHeader.REQUEST_IDS  # §5.7: payload assumed empty [I]


@dataclass(frozen=True, slots=True)
class AuthSession(Request):
    HEADER: ClassVar[int] = RequestHeader.AUTH_SESSION  # §5.12: no payload [C-3p]


@dataclass(frozen=True, slots=True)
class CancelSession(Request):
    HEADER: ClassVar[int] = RequestHeader.CANCEL_SESSION


@dataclass(frozen=True, slots=True)
class Reset(Request):
    HEADER: ClassVar[int] = RequestHeader.RESET  # §5.27 [C-3p]


@dataclass(frozen=True, slots=True)
class Protocol(Request):
    """§5.3: version (1 byte) + option bitfield (u32)."""

    HEADER: ClassVar[int] = RequestHeader.PROTOCOL
    version: int = 3  # §5.3: 0x03 default, recommended
    options: ProtocolOption = ProtocolOption.NONE

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u8(self.version, "version") + _u32(int(self.options), "options")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.u8(), ProtocolOption(r.u32()))
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Setup(Request):
    """§5.4: session timeout in seconds (u32) + timeout action (1 byte)."""

    HEADER: ClassVar[int] = RequestHeader.SETUP
    session_timeout_s: int = 172_800  # 48 h, requirements TERM-2 default
    timeout_action: TimeoutAction = TimeoutAction.VOID  # §5.4 recommendation, TERM-2

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u32(self.session_timeout_s, "session timeout") + _u8(int(self.timeout_action), "action")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        timeout = r.u32()
        action = r.u8()
        r.end()
        if action not in TimeoutAction._value2member_map_:
            raise MessageError(f"Setup: unknown timeout action 0x{action:02X}")
        return cls(timeout, TimeoutAction(action))


@dataclass(frozen=True, slots=True)
class ListSessions(Request):
    """§5.8 (P6X): 1-byte offset."""

    HEADER: ClassVar[int] = RequestHeader.LIST_SESSIONS
    offset: int = 0

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u8(self.offset, "offset")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.u8())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class _SessionIdRequest(Request):
    session_id: int = 0

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u32(self.session_id, "session id")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.u32())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class VoidSession(_SessionIdRequest):
    """§5.16: 4-byte session id."""

    HEADER: ClassVar[int] = RequestHeader.VOID_SESSION


@dataclass(frozen=True, slots=True)
class CommitSession(Request):
    """§5.17: session id and final amount; the order is a [GAP], see :class:`CommitOrder`."""

    HEADER: ClassVar[int] = RequestHeader.COMMIT_SESSION
    session_id: int = 0
    amount_minor: int = 0

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        sid = _u32(self.session_id, "session id")
        amount = _u32(self.amount_minor, "amount")
        return sid + amount if wire.commit_order is CommitOrder.SESSION_AMOUNT else amount + sid

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        first, second = r.u32(), r.u32()
        r.end()
        if wire.commit_order is CommitOrder.SESSION_AMOUNT:
            return cls(first, second)
        return cls(second, first)


@dataclass(frozen=True, slots=True)
class UpdateSession(Request):
    """§5.20 (Apollo): session id + new total amount (not a delta)."""

    HEADER: ClassVar[int] = RequestHeader.UPDATE_SESSION
    session_id: int = 0
    new_total_minor: int = 0

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u32(self.session_id, "session id") + _u32(self.new_total_minor, "amount")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.u32(), r.u32())
        r.end()
        return msg


def _encode_tag_list(tags: tuple[int, ...]) -> bytes:
    data = b"".join(_encode_tag(t) for t in tags)
    return _u8(len(data), "DOL list length") + data


def _read_tag_list(r: _Reader) -> tuple[int, ...]:
    sub = _Reader(r.take(r.u8()), "DOL tag list")
    tags: list[int] = []
    while sub.remaining:
        tags.append(_read_tag(sub))
    return tuple(tags)


# Defaults written for an absent optional field that a later present field forces onto the wire.
_NO_TAGS = b"\x00"
_EMPTY_STRING = b"\x00"


def _fill_tail(values: list[bytes | None], defaults: list[bytes]) -> bytes:
    """Optional trailing fields; absent fields before the last present one get their default."""
    last = max((i for i, v in enumerate(values) if v is not None), default=-1)
    return b"".join(v if v is not None else defaults[i] for i, v in enumerate(values[: last + 1]))


@dataclass(frozen=True, slots=True)
class StartSession(Request):
    """§5.9: amount to reserve, host reference, then optional fields (Apollo from payment methods on).

    ``None`` means "not sent". When a later field is set, earlier absent fields are sent with their
    documented default ("0x00 = use the default"), and decode back as that default.
    """

    HEADER: ClassVar[int] = RequestHeader.START_SESSION
    amount_minor: int = 0
    reference: int = 0
    dol_tags: tuple[int, ...] | None = None  # () = default DOL set (length byte 0x00)
    payment_methods: int | None = None  # bitfield; 0x02 = EMV; 0x00/0xFF = all cards
    custom_logo: str | None = None  # ≤ 0x40 bytes incl. NUL
    hide_amount: bool | None = None
    qr_url: str | None = None  # ≤ 0x10C9 bytes incl. NUL (§5.9)
    reference_string: str | None = None  # ≤ 0x40 bytes incl. NUL
    second_reference_string: str | None = None  # ≤ 0x40 bytes incl. NUL

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        head = _u32(self.amount_minor, "amount") + _u32(self.reference, "reference")
        return head + _fill_tail(
            [
                None if self.dol_tags is None else _encode_tag_list(self.dol_tags),
                None if self.payment_methods is None else _u8(self.payment_methods, "payment methods"),
                None if self.custom_logo is None else _cstring(self.custom_logo, "custom logo", 0x40),
                None if self.hide_amount is None else bytes((1 if self.hide_amount else 0,)),
                None if self.qr_url is None else _cstring(self.qr_url, "QR URL", 0x10C9),
                None if self.reference_string is None else _cstring(self.reference_string, "reference", 0x40),
                None
                if self.second_reference_string is None
                else _cstring(self.second_reference_string, "second reference", 0x40),
            ],
            [_NO_TAGS, b"\x00", _EMPTY_STRING, b"\x00", _EMPTY_STRING, _EMPTY_STRING, _EMPTY_STRING],
        )

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        amount, reference = r.u32(), r.u32()
        dol_tags = _read_tag_list(r) if r.remaining else None
        methods = r.u8() if r.remaining else None
        logo = r.cstring() if r.remaining else None
        hide = bool(r.u8()) if r.remaining else None
        qr = r.cstring() if r.remaining else None
        ref1 = r.cstring() if r.remaining else None
        ref2 = r.cstring() if r.remaining else None
        r.rest()  # §5.9: later fields (Present Card message …) are a [GAP]; tolerated, ignored
        return cls(amount, reference, dol_tags, methods, logo, hide, qr, ref1, ref2)


@dataclass(frozen=True, slots=True)
class ReadCard(Request):
    """§5.10 (Apollo): a card read without an amount (RFID, tap-to-stop)."""

    HEADER: ClassVar[int] = RequestHeader.READ_CARD
    reference: int = 0
    dol_tags: tuple[int, ...] | None = None
    payment_methods: int | None = None
    custom_logo: str | None = None
    qr_url: str | None = None  # ≤ 4279 bytes per its page (§5.10)
    reference_string: str | None = None
    second_reference_string: str | None = None
    present_card_message: str | None = None  # ≤ 128 bytes incl. NUL (§5.10)

    def header(self, wire: WireFormat = DEFAULT_WIRE) -> int:
        return wire.read_card_header

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u32(self.reference, "reference") + _fill_tail(
            [
                None if self.dol_tags is None else _encode_tag_list(self.dol_tags),
                None if self.payment_methods is None else _u8(self.payment_methods, "payment methods"),
                None if self.custom_logo is None else _cstring(self.custom_logo, "custom logo", 0x40),
                None if self.qr_url is None else _cstring(self.qr_url, "QR URL", 4280),
                None if self.reference_string is None else _cstring(self.reference_string, "reference", 0x40),
                None
                if self.second_reference_string is None
                else _cstring(self.second_reference_string, "second reference", 0x40),
                None
                if self.present_card_message is None
                else _cstring(self.present_card_message, "present card message", 128),
            ],
            [_NO_TAGS, b"\x00", _EMPTY_STRING, _EMPTY_STRING, _EMPTY_STRING, _EMPTY_STRING, _EMPTY_STRING],
        )

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        reference = r.u32()
        dol_tags = _read_tag_list(r) if r.remaining else None
        methods = r.u8() if r.remaining else None
        logo = r.cstring() if r.remaining else None
        qr = r.cstring() if r.remaining else None
        ref1 = r.cstring() if r.remaining else None
        ref2 = r.cstring() if r.remaining else None
        present = r.cstring() if r.remaining else None
        r.rest()  # later fields are a [GAP]
        return cls(reference, dol_tags, methods, logo, qr, ref1, ref2, present)


@dataclass(frozen=True, slots=True)
class UiRequest(Request):
    """§5.21 (Apollo): a screen as string pairs.

    Sent in the recommended form (``type`` as the first key/value pair); both forms decode.
    """

    HEADER: ClassVar[int] = RequestHeader.UI_REQUEST
    screen_type: str = "notification"
    properties: tuple[tuple[str, str], ...] = ()

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        pairs = (("type", self.screen_type), *self.properties)
        return b"".join(_cstring(k, "UI key") + _cstring(v, "UI value") for k, v in pairs)

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        strings: list[str] = []
        while r.remaining:
            strings.append(r.cstring())
        if not strings:
            raise MessageError("UiRequest: empty")
        if strings[0] == "type":  # Payter's template example form: everything is pairs
            if len(strings) % 2:
                raise MessageError("UiRequest: odd number of key/value strings")
            screen_type, rest = strings[1], strings[2:]
        else:  # the request page's form: type string, then pairs
            if len(strings) % 2 == 0:
                raise MessageError("UiRequest: odd number of key/value strings")
            screen_type, rest = strings[0], strings[1:]
        return cls(screen_type, tuple(zip(rest[::2], rest[1::2], strict=True)))

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.properties if k == key), None)


@dataclass(frozen=True, slots=True)
class AddTransactionContext(Request):
    """§5.25 (Apollo): session id + NUL-terminated UTF-8 context (e.g. CDR data)."""

    HEADER: ClassVar[int] = RequestHeader.ADD_TRANSACTION_CONTEXT
    session_id: int = 0
    data: str = ""

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u32(self.session_id, "session id") + _cstring(self.data, "context")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.u32(), r.cstring())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Control(Request):
    """§5.26 (Apollo): 0x00 = reboot (the only action)."""

    HEADER: ClassVar[int] = RequestHeader.CONTROL
    action: int = 0x00

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u8(self.action, "action")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.u8())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class PropCardExchange(Request):
    """§5.23: a raw ISO 7816-4 command APDU [C-3p]."""

    HEADER: ClassVar[int] = RequestHeader.PROP_CARD_EXCHANGE
    apdu: bytes = b""

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return self.apdu

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        return cls(payload)


# ---------------------------------------------------------------------------------------------
# Responses and events (terminal → host), §4.2 and §5


@dataclass(frozen=True, slots=True)
class Result(Response):
    """§5.1: OK / Not OK, plus a detailed reason with Protocol option 0x08 (Apollo)."""

    HEADER: ClassVar[int] = ResponseHeader.RESULT
    ok: bool = True
    reason: int | None = None  # detailed code (§6.1), raw so unknown codes survive

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        code = bytes((ResultCode.OK if self.ok else ResultCode.NOT_OK,))
        return code if self.reason is None else code + _u8(self.reason, "reason")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        code = r.u8()
        if code not in (ResultCode.OK, ResultCode.NOT_OK):
            raise MessageError(f"Result: byte 0 is 0x{code:02X}, not 0x00/0x01")
        reason = r.u8() if r.remaining else None
        r.end()
        return cls(code == ResultCode.OK, reason)

    @property
    def reason_code(self) -> ResultCode | None:
        if self.reason is None:
            return None
        return ResultCode(self.reason) if self.reason in ResultCode._value2member_map_ else ResultCode.NOT_OK


@dataclass(frozen=True, slots=True)
class GetStatusResponse(Response):
    """§5.6: state (one-hot) + transaction-running flag; header 0x00 or 0x26 (§4.3)."""

    HEADER: ClassVar[int] = ResponseHeader.RESULT
    state: PspState = PspState.OFFLINE
    transaction_running: bool = False

    def header(self, wire: WireFormat = DEFAULT_WIRE) -> int:
        return wire.status_response_header

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return bytes((int(self.state), 1 if self.transaction_running else 0))

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        state, running = r.u8(), r.u8()
        r.end()
        if not _is_one_hot_state(state):
            raise MessageError(f"GetStatusResponse: state 0x{state:02X} is not a PSP state")
        return cls(PspState(state), running == 0x01)


@dataclass(frozen=True, slots=True)
class ProtocolEcho(Response):
    """§5.3: the accepted version and options; always in the default block format."""

    HEADER: ClassVar[int] = ResponseHeader.PROTOCOL
    version: int = 3
    options: ProtocolOption = ProtocolOption.NONE

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u8(self.version, "version") + _u32(int(self.options), "options")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.u8(), ProtocolOption(r.u32()))
        r.end()
        return msg

    def to_frame(self, wire: WireFormat = DEFAULT_WIRE) -> Frame:
        # §2.2: "the Protocol response itself is still sent in the default format"
        return Frame(self.HEADER, self.payload(wire), preamble=self.PREAMBLE, extended=False)


@dataclass(frozen=True, slots=True)
class SynchronizeEcho(Response):
    HEADER: ClassVar[int] = ResponseHeader.SYNCHRONIZE  # §5.2: echo, no payload


@dataclass(frozen=True, slots=True)
class SessionCancelled(Response):
    HEADER: ClassVar[int] = ResponseHeader.SESSION_CANCELLED  # §5.13: no payload [C-3p]


@dataclass(frozen=True, slots=True)
class ApolloIds(Response):
    """§5.7 Request IDs Response, Apollo layout: NUL-terminated strings."""

    HEADER: ClassVar[int] = ResponseHeader.REQUEST_IDS
    serial_number: str = ""
    model_id: str = ""
    platform: str = ""
    applications: tuple[str, ...] = ()

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        fields = (self.serial_number, self.model_id, self.platform, *self.applications)
        return b"".join(_cstring(f, "id string") for f in fields)

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        serial, model, platform = r.cstring(), r.cstring(), r.cstring()
        apps: list[str] = []
        while r.remaining:
            apps.append(r.cstring())
        return cls(serial, model, platform, tuple(apps))


# §5.7 P6X fixed layout: 15 serial, (1+8)x3 SAM, 6 MAC, 1 SIM status, 33 ICCID = 82 bytes
P6X_IDS_FIXED_LEN = 82
P6X_SERIAL_LEN = 15
# §5.7: offsets of the SAM0, SAM1, SAM2 and SIM status bytes (0x00 not installed, 0x01 installed)
_P6X_STATUS_OFFSETS = (15, 24, 33, 48)
_P6X_ICCID = slice(49, 82)  # §5.7: 33 bytes SIM serial (ICCID) closing the fixed part


def _fixed_str(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _pad(value: str, size: int, name: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) >= size:
        raise ValueError(f"{name} longer than {size - 1} bytes")
    return raw.ljust(size, b"\x00")


@dataclass(frozen=True, slots=True)
class SamSlot:
    installed: bool = False
    serial: bytes = bytes(8)


@dataclass(frozen=True, slots=True)
class P6xIds(Response):
    """§5.7 Request IDs Response, P6X fixed binary layout."""

    HEADER: ClassVar[int] = ResponseHeader.REQUEST_IDS
    serial_number: str = ""
    sams: tuple[SamSlot, SamSlot, SamSlot] = (SamSlot(), SamSlot(), SamSlot())
    mac: bytes = bytes(6)
    sim_installed: bool = False
    sim_serial: str = ""
    firmware: str = ""

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        if len(self.mac) != 6 or any(len(s.serial) != 8 for s in self.sams):
            raise ValueError("P6X ids: MAC must be 6 bytes and SAM serials 8 bytes")
        sam = b"".join(bytes((int(s.installed),)) + s.serial for s in self.sams)
        return (
            _pad(self.serial_number, 15, "serial number")
            + sam
            + self.mac
            + bytes((int(self.sim_installed),))
            + _pad(self.sim_serial, 33, "SIM serial")
            + _cstring(self.firmware, "firmware", 65)
        )

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        serial = _fixed_str(r.take(15))
        sams = tuple(SamSlot(r.u8() == 1, r.take(8)) for _ in range(3))
        mac = r.take(6)
        sim = r.u8() == 1
        iccid = _fixed_str(r.take(33))
        firmware = _fixed_str(r.rest()) if r.remaining else ""
        return cls(serial, (sams[0], sams[1], sams[2]), mac, sim, iccid, firmware)

    def to_json(self) -> dict[str, object]:
        return {
            "serial_number": self.serial_number,
            "sams": [{"installed": s.installed, "serial": s.serial.hex()} for s in self.sams],
            "mac": self.mac.hex(":"),
            "sim_installed": self.sim_installed,
            "sim_serial": self.sim_serial,
            "firmware": self.firmware,
        }


@dataclass(frozen=True, slots=True)
class UiEvent(Response):
    """§5.21: a button / selection item id, NUL-terminated (unsolicited)."""

    HEADER: ClassVar[int] = ResponseHeader.UI_EVENT
    button_id: str = ""

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _cstring(self.button_id, "button id")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.cstring())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class ListSessionsResponse(Response):
    """§5.8 (P6X): total open sessions, then session ids from the requested offset."""

    HEADER: ClassVar[int] = ResponseHeader.LIST_SESSIONS
    total: int = 0
    session_ids: tuple[int, ...] = ()

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u8(self.total, "total") + b"".join(_u32(s, "session id") for s in self.session_ids)

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        total = r.u8()
        if r.remaining % 4:
            raise MessageError("ListSessionsResponse: session ids are not a multiple of 4 bytes")
        return cls(total, tuple(r.u32() for _ in range(r.remaining // 4)))


@dataclass(frozen=True, slots=True)
class SessionApproved(Response):
    """§5.14: terminal-assigned session id + DOL data."""

    HEADER: ClassVar[int] = ResponseHeader.SESSION_APPROVED
    session_id: int = 0
    dol: Dol = field(default_factory=Dol)

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u32(self.session_id, "session id") + _encode_dol(self.dol, wire)

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        sid = r.u32()
        dol = _read_dol(r, wire)
        r.end()
        return cls(sid, dol)


@dataclass(frozen=True, slots=True)
class SessionPartiallyApproved(Response):
    """§5.15 (Apollo): session id + the (lower) authorised amount + DOL data."""

    HEADER: ClassVar[int] = ResponseHeader.SESSION_PARTIALLY_APPROVED
    session_id: int = 0
    amount_minor: int = 0
    dol: Dol = field(default_factory=Dol)

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        sid = _u32(self.session_id, "session id")
        return sid + _u32(self.amount_minor, "amount") + _encode_dol(self.dol, wire)

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        sid, amount = r.u32(), r.u32()
        dol = _read_dol(r, wire)
        r.end()
        return cls(sid, amount, dol)


@dataclass(frozen=True, slots=True)
class SessionDeclined(Response):
    """§5.18: no payload, or 1 reason byte with detailed codes (Apollo)."""

    HEADER: ClassVar[int] = ResponseHeader.SESSION_DECLINED
    reason: int | None = None

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return b"" if self.reason is None else _u8(self.reason, "reason")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        reason = r.u8() if r.remaining else None
        r.rest()  # §5.3 Declined DOL (option 0x10) layout is a [GAP]; tolerated
        return cls(reason)

    @property
    def reason_code(self) -> DeclineReason | None:
        if self.reason is None:
            return None
        known = self.reason in DeclineReason._value2member_map_
        return DeclineReason(self.reason) if known else DeclineReason.OTHER


@dataclass(frozen=True, slots=True)
class CardRead(Response):
    """§5.11: DOL data of a payment card (async, host must answer within 30 s)."""

    HEADER: ClassVar[int] = ResponseHeader.CARD_READ
    dol: Dol = field(default_factory=Dol)

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _encode_dol(self.dol, wire)

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        dol = _read_dol(r, wire)
        r.end()
        return cls(dol)


@dataclass(frozen=True, slots=True)
class PropCardRead(CardRead):
    """§5.22 (Apollo): a proprietary (RFID) card; the UID tag is a [GAP] (WireFormat.rfid_uid_tag)."""

    HEADER: ClassVar[int] = ResponseHeader.PROP_CARD_READ

    def uid(self, wire: WireFormat = DEFAULT_WIRE) -> str | None:
        for tag in (wire.rfid_uid_tag, Tag.DFF002, Tag.DFF003, Tag.CARD_HASH):
            value = self.dol.get(tag)
            if value:
                printable = all(0x20 <= b < 0x7F for b in value)
                return value.decode("ascii") if printable else value.hex().upper()
        return None


@dataclass(frozen=True, slots=True)
class TransactionEvent(Response):
    """§5.19: progress of the payment flow (Protocol option 0x01)."""

    HEADER: ClassVar[int] = ResponseHeader.TRANSACTION_EVENT
    event: int = TransactionEventCode.STARTED

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return _u8(self.event, "event")

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        msg = cls(r.u8())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class UpdateSessionResult(Response):
    """§5.20: result, session id, new authorised amount, change, decline reason (14 bytes)."""

    HEADER: ClassVar[int] = ResponseHeader.UPDATE_SESSION_RESULT
    result: UpdateResult = UpdateResult.APPROVED
    session_id: int = 0
    authorized_minor: int = 0
    updated_minor: int = 0
    decline_reason: int = DeclineReason.NOT_SET

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return (
            _u8(int(self.result), "result")
            + _u32(self.session_id, "session id")
            + _u32(self.authorized_minor, "amount")
            + _u32(self.updated_minor, "change")
            + _u8(self.decline_reason, "reason")
        )

    @classmethod
    def from_payload(cls, payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> Self:
        r = _Reader(payload, cls.__name__)
        result = r.u8()
        if result not in UpdateResult._value2member_map_:
            raise MessageError(f"UpdateSessionResult: unknown result 0x{result:02X}")
        msg = cls(UpdateResult(result), r.u32(), r.u32(), r.u32(), r.u8())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class UnknownMessage(Message):
    """A frame with a header this driver does not model (kept raw, never an error)."""

    PREAMBLE: ClassVar[int] = PREAMBLE_TERMINAL
    HEADER: ClassVar[int] = -1
    raw_header: int = 0
    raw_payload: bytes = b""

    def header(self, wire: WireFormat = DEFAULT_WIRE) -> int:
        return self.raw_header

    def payload(self, wire: WireFormat = DEFAULT_WIRE) -> bytes:
        return self.raw_payload


# ---------------------------------------------------------------------------------------------
# Decoding by direction

_REQUESTS: dict[int, type[Request]] = {
    cls.HEADER: cls
    for cls in (
        Disable,
        Enable,
        Protocol,
        Setup,
        Synchronize,
        GetStatus,
        RequestIds,
        UiRequest,
        ListSessions,
        VoidSession,
        StartSession,
        CommitSession,
        AuthSession,
        CancelSession,
        PropCardExchange,
        UpdateSession,
        AddTransactionContext,
        Control,
        Reset,
    )
}

_RESPONSES: dict[int, type[Response]] = {
    cls.HEADER: cls
    for cls in (
        ProtocolEcho,
        SynchronizeEcho,
        UiEvent,
        ListSessionsResponse,
        SessionApproved,
        SessionDeclined,
        SessionCancelled,
        CardRead,
        SessionPartiallyApproved,
        TransactionEvent,
        PropCardRead,
        UpdateSessionResult,
    )
}


def _printable_utf8(raw: bytes) -> bool:
    try:
        return raw.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        return False


def _plausible_apollo_ids(payload: bytes, wire: WireFormat) -> ApolloIds:
    """§5.7 Apollo layout, plausible: at least three NUL-terminated strings, every one printable
    UTF-8, the first three (serial number, model id, platform) non-empty.

    A well-formed P6X payload never passes: the NUL padding of its 15-byte serial field, or its
    SAM0 status byte (0x00/0x01) at offset 15, makes the second or third string empty or
    unprintable.
    """
    ids = ApolloIds.from_payload(payload, wire)  # MessageError: no NUL terminator, not UTF-8
    head = (ids.serial_number, ids.model_id, ids.platform)
    if not all(head):
        raise MessageError("ApolloIds: serial number, model id and platform must not be empty")
    if not all(s.isprintable() for s in (*head, *ids.applications)):
        raise MessageError("ApolloIds: a string is not printable")
    return ids


def _plausible_p6x_ids(payload: bytes, wire: WireFormat) -> P6xIds:
    """§5.7 P6X fixed layout, plausible: at least the 82-byte fixed part; SAM and SIM status bytes
    0x00/0x01; the serial number NUL-terminated inside its 15-byte field; serial number and ICCID
    (up to their first NUL) printable UTF-8. The firmware name after the fixed part is not checked."""
    if len(payload) < P6X_IDS_FIXED_LEN:
        raise MessageError(f"P6xIds: {len(payload)} byte(s), the fixed layout has {P6X_IDS_FIXED_LEN}")
    for offset in _P6X_STATUS_OFFSETS:
        if payload[offset] not in (0x00, 0x01):
            raise MessageError(f"P6xIds: status byte {offset} is 0x{payload[offset]:02X}, not 0x00/0x01")
    serial_field = payload[:P6X_SERIAL_LEN]
    if 0x00 not in serial_field:
        raise MessageError("P6xIds: serial number not NUL-terminated within its 15 bytes")
    iccid = payload[_P6X_ICCID]
    if not (
        _printable_utf8(serial_field.split(b"\x00", 1)[0]) and _printable_utf8(iccid.split(b"\x00", 1)[0])
    ):
        raise MessageError("P6xIds: serial number or ICCID is not printable")
    return P6xIds.from_payload(payload, wire)


def decode_request_ids(payload: bytes, wire: WireFormat = DEFAULT_WIRE) -> ApolloIds | P6xIds:
    """§5.7 Request IDs Response in either documented layout, the family's own first.

    A layout that does not decode, or decodes to something implausible (see
    :func:`_plausible_apollo_ids` and :func:`_plausible_p6x_ids`), gives way to the other one, so a
    terminal configured as the wrong family still identifies itself. Raises :class:`MessageError`
    with both reasons when neither layout fits.
    """
    layouts: tuple[Callable[[bytes, WireFormat], ApolloIds | P6xIds], ...] = (
        _plausible_apollo_ids,
        _plausible_p6x_ids,
    )
    if wire.family is Family.P6X:
        layouts = layouts[::-1]
    reasons: list[str] = []
    for parse in layouts:
        try:
            return parse(payload, wire)
        except MessageError as exc:
            reasons.append(str(exc))
    raise MessageError(f"Request IDs Response fits neither layout ({'; '.join(reasons)})")


def decode_request(frame: Frame, wire: WireFormat = DEFAULT_WIRE) -> Request | UnknownMessage:
    """Decode a host → terminal frame (the terminal's, or a capture's, point of view)."""
    if frame.header == wire.read_card_header:
        return ReadCard.from_payload(frame.payload, wire)
    cls = _REQUESTS.get(frame.header)
    if cls is None:
        return UnknownMessage(raw_header=frame.header, raw_payload=frame.payload)
    return cls.from_payload(frame.payload, wire)


def decode_response(
    frame: Frame, wire: WireFormat = DEFAULT_WIRE, *, expecting: Request | None = None
) -> Response | UnknownMessage:
    """Decode a terminal → host frame.

    Header 0x00 is Result or Get Status Response (§4.4): with Get Status outstanding (or no
    context, as in a capture) a 2-byte payload whose first byte is a one-hot state is a status.
    Header 0x26 is always a status (the T1 variant, §4.3). Header 0x27 is read in either layout, the
    family's first (:func:`decode_request_ids`).
    """
    header, payload = frame.header, frame.payload
    if header == ResponseHeader.GET_STATUS_ALT:
        return GetStatusResponse.from_payload(payload, wire)
    if header == ResponseHeader.RESULT:
        status_like = len(payload) == 2 and _is_one_hot_state(payload[0]) and payload[1] in (0, 1)
        # without context, byte 0 = 0x01 reads as Result Not OK rather than status OFFLINE
        if status_like and (isinstance(expecting, GetStatus) or (expecting is None and payload[0] > 1)):
            return GetStatusResponse.from_payload(payload, wire)
        return Result.from_payload(payload, wire)
    if header == ResponseHeader.REQUEST_IDS:
        return decode_request_ids(payload, wire)
    cls = _RESPONSES.get(header)
    if cls is None:
        return UnknownMessage(raw_header=header, raw_payload=payload)
    return cls.from_payload(payload, wire)


def describe(message: Message) -> dict[str, object]:
    """Field → JSON-friendly value, for logs and the ``psp decode`` field tool."""
    out: dict[str, object] = {}
    for f in fields(message):
        name = f.name
        value = getattr(message, name)
        if isinstance(value, Dol):
            out[name] = value.to_json()
        elif isinstance(value, bytes):
            out[name] = value.hex()
        elif isinstance(value, IntFlag):
            out[name] = int(value)
        elif isinstance(value, IntEnum):
            out[name] = value.name
        elif isinstance(value, tuple) and value and isinstance(value[0], SamSlot):
            out[name] = [{"installed": s.installed, "serial": s.serial.hex()} for s in value]
        elif isinstance(value, tuple):
            out[name] = [list(v) if isinstance(v, tuple) else v for v in value]
        else:
            out[name] = value
    return out
