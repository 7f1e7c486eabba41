"""Exceptions of the PSP link and terminal session; each carries its data (style.md §10)."""

from __future__ import annotations

from drivers.errors import DriverError, TransportError
from drivers.psp.messages import PspState, Request, Result, ResultCode


class PspError(DriverError):
    """Base class of PSP link and session errors."""


class PspTimeout(PspError):
    """No valid reply to ``request`` within ``timeout_s`` (psp-reference §9.1)."""

    def __init__(self, request: Request, timeout_s: float) -> None:
        super().__init__(request, timeout_s)
        self.request = request
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return f"{self.request.name}: no reply within {self.timeout_s:g} s"


class PspNotOk(PspError):
    """The terminal answered ``request`` with Result Not OK (psp-reference §5.1, §6.1)."""

    def __init__(self, request: Request, result: Result) -> None:
        super().__init__(request, result)
        self.request = request
        self.result = result

    @property
    def reason(self) -> ResultCode | None:
        """The detailed reason (Apollo with Protocol option 0x08), else ``None``."""
        return self.result.reason_code

    def __str__(self) -> str:
        reason = self.reason
        detail = "no reason code" if reason is None else f"0x{int(reason):02X} {reason.name}"
        return f"{self.request.name}: Result Not OK ({detail})"


class SessionNotFound(PspNotOk):
    """Commit/Void answered Not OK 0x0C: the session is unknown, most likely already disposed (§10.3)."""

    def __init__(self, request: Request, result: Result, session_id: int) -> None:
        super().__init__(request, result)
        self.session_id = session_id

    def __str__(self) -> str:
        return f"{self.request.name}: session {self.session_id} not found (0x0C)"


class LinkLost(PspError, TransportError):
    """The byte link closed or failed; the outstanding request (if any) is abandoned."""

    def __init__(self, description: str, reason: str = "link closed") -> None:
        super().__init__(description, reason)
        self.description = description
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.description}: {self.reason}"


class UnexpectedState(PspError):
    """Get Status reported ``actual`` where one of ``expected`` was required."""

    def __init__(self, what: str, actual: PspState, expected: tuple[PspState, ...]) -> None:
        super().__init__(what, actual, expected)
        self.what = what
        self.actual = actual
        self.expected = expected

    def __str__(self) -> str:
        want = "/".join(s.name for s in self.expected)
        return f"{self.what}: terminal is {self.actual.name}, expected {want}"


class TerminalNotReady(PspError):
    """The terminal link did not become ready (set up and enabled) in time."""

    def __init__(self, timeout_s: float, last_error: str | None) -> None:
        super().__init__(timeout_s, last_error)
        self.timeout_s = timeout_s
        self.last_error = last_error

    def __str__(self) -> str:
        tail = f" (last error: {self.last_error})" if self.last_error else ""
        return f"terminal not ready within {self.timeout_s:g} s{tail}"


class MessageTooLong(PspError):
    """``request`` does not fit the block format in force (psp-reference §2.2, §2.3); nothing was sent.

    ``size`` is the encoded payload in bytes, ``limit`` the most the current format carries (252 in
    the normal format; the extended format, Apollo with Protocol option 0x04, carries far more).
    The link stays usable.
    """

    def __init__(self, request: Request, size: int, limit: int, *, extended: bool) -> None:
        super().__init__(request, size, limit, extended)
        self.request = request
        self.size = size
        self.limit = limit
        self.extended = extended

    def __str__(self) -> str:
        fmt = "extended" if self.extended else "normal"
        return (
            f"{self.request.name}: {self.size}-byte payload exceeds the {self.limit}-byte limit "
            f"of the {fmt} block format; not sent"
        )


class UndecodableReply(PspError):
    """A frame that could answer ``request`` (by its header) did not decode (psp-reference §4.4).

    The request fails at once instead of running into its §9.1 timeout. ``header`` is the frame's
    header byte, ``reason`` the decoder's explanation (never the payload: it may hold card data).
    """

    def __init__(self, request: Request, header: int, reason: str) -> None:
        super().__init__(request, header, reason)
        self.request = request
        self.header = header
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.request.name}: undecodable reply 0x{self.header:02X}: {self.reason}"
