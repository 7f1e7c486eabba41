"""Fault injection for what the simulator sends (psp-reference §12.14).

Each fault is armed for a number of frames (replies and unsolicited events alike) and consumed by
the writer in this order: drop, delay, corrupt, split. ``None`` as a count means "until cleared".

The delay can be targeted: ``delay_replies(seconds, n, only="CommitSession")`` holds only the
replies to that request type (the ``drivers.psp.messages`` class name); other frames pass and do
not consume the count. The request itself is handled at once (a Commit is booked when it arrives;
only its Result is late), which is what a slow acquirer looks like to the host. Drop and corrupt
can be targeted the same way (``drop_replies(n, only="GetStatus")``): a randomized world can lose a
keep-alive answer without ever losing an Auth Session reply, whose host timeout is 210 s on Apollo.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Faults:
    drop_remaining: int | None = 0
    drop_only: str | None = None  # drop only replies to this request type (class name)
    corrupt_remaining: int | None = 0
    corrupt_only: str | None = None  # corrupt only replies to this request type
    split_remaining: int | None = 0
    split_chunk: int = 1
    delay_remaining: int | None = 0
    delay_s: float = 0.0
    delay_only: str | None = None  # hold only replies to this request type (class name)
    not_ready_remaining: int = 0  # §10.8: Synchronize answered with Not OK/0x11
    silent_bad_checksum: bool = False  # §2.5 / §12.2: stay silent on a bad checksum

    def drop_replies(self, n: int | None = 1, *, only: str | None = None) -> None:
        """Never send the next ``n`` frames (``only``: replies to this request type only)."""
        self.drop_remaining = _count(n)
        self.drop_only = _request_name(only)

    def corrupt_replies(self, n: int | None = 1, *, only: str | None = None) -> None:
        """Flip the checksum byte of the next ``n`` frames (``only``: replies to this request type)."""
        self.corrupt_remaining = _count(n)
        self.corrupt_only = _request_name(only)

    def split_replies(self, chunk: int = 1, n: int | None = None) -> None:
        """Send the next ``n`` frames (default: all) in pieces of ``chunk`` bytes."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        self.split_chunk = chunk
        self.split_remaining = _count(n)

    def delay_replies(self, seconds: float, n: int | None = 1, *, only: str | None = None) -> None:
        """Hold the next ``n`` frames for ``seconds`` (e.g. past the host's §9.1 timeouts).

        ``only``: hold only replies to this request type (e.g. ``"CommitSession"``); other frames
        are sent at once and do not count.
        """
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self.delay_s = seconds
        self.delay_remaining = _count(n)
        self.delay_only = _request_name(only)

    def delay_applies(self, request: str | None) -> bool:
        """Whether the armed delay holds a frame answering ``request`` (consumes one count if so)."""
        if self.delay_only is not None and request != self.delay_only:
            return False
        applies, self.delay_remaining = Faults.take(self.delay_remaining)
        return applies

    def drop_applies(self, request: str | None) -> bool:
        """Whether the armed drop takes a frame answering ``request`` (consumes one count if so)."""
        if self.drop_only is not None and request != self.drop_only:
            return False
        applies, self.drop_remaining = Faults.take(self.drop_remaining)
        return applies

    def corrupt_applies(self, request: str | None) -> bool:
        """Whether the armed corruption hits a frame answering ``request`` (consumes one count if so)."""
        if self.corrupt_only is not None and request != self.corrupt_only:
            return False
        applies, self.corrupt_remaining = Faults.take(self.corrupt_remaining)
        return applies

    def not_ready(self, n: int) -> None:
        """Answer the next ``n`` Synchronize requests with Result Not OK / 0x11 (§6.1, §10.8)."""
        self.not_ready_remaining = _count(n) or 0

    def silent_on_bad_checksum(self, silent: bool = True) -> None:
        self.silent_bad_checksum = silent

    def clear(self) -> None:
        self.drop_remaining = self.corrupt_remaining = self.split_remaining = self.delay_remaining = 0
        self.not_ready_remaining = 0
        self.delay_only = self.drop_only = self.corrupt_only = None
        self.silent_bad_checksum = False

    @staticmethod
    def take(remaining: int | None) -> tuple[bool, int | None]:
        """(fault applies to this frame, new remaining count)."""
        if remaining is None:
            return True, None
        if remaining > 0:
            return True, remaining - 1
        return False, 0

    def to_json(self) -> dict[str, object]:
        return {
            "drop": self.drop_remaining,
            "drop_only": self.drop_only,
            "corrupt": self.corrupt_remaining,
            "corrupt_only": self.corrupt_only,
            "split": self.split_remaining,
            "split_chunk": self.split_chunk,
            "delay": self.delay_remaining,
            "delay_s": self.delay_s,
            "delay_only": self.delay_only,
            "not_ready": self.not_ready_remaining,
            "silent_on_bad_checksum": self.silent_bad_checksum,
        }


def _request_name(only: str | None) -> str | None:
    if only is not None and not only.isidentifier():
        raise ValueError(f"only must be a request type name, got {only!r}")
    return only


def _count(n: int | None) -> int | None:
    if n is not None and n < 0:
        raise ValueError("count must not be negative")
    return n
