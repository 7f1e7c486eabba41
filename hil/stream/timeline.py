"""When was the agent connected to the broker? Reconstructed from a capture (sans-IO).

Evidence, in capture time ``t`` (arrival), and what it proves:

=====================================  =====================================================
evidence                               link state from ``t`` on
=====================================  =====================================================
``status`` online, live (retain false)  connected: the birth is published right after connect
``status`` offline, live                disconnected: the last will, or a clean stop
``status`` online, retained             connected (the capture (re)subscribed; since when is
                                        not known, so it never extends a disconnected window)
``status`` offline, retained            disconnected
marker ``broker_down``                  disconnected: no connection to a stopped broker
marker ``broker_up``                    unknown: the agent reconnects after its own backoff
                                        (up to 30 s); only its birth says when
marker ``agent_killed``                 disconnected (the will follows)
marker ``agent_started``                no change: a new process is offline until its birth
marker ``capture_down``                 unknown — the capture is blind — unless the broker is
                                        known down (then still disconnected)
marker ``capture_up``                   after ``broker_down`` without ``broker_up``: unknown
                                        (the broker is evidently up again); else no change
marker ``broker_hang``                  unknown: the harness holds every byte of the agent's
                                        broker link; the agent may notice (PUBACK watchdog) or not
marker ``broker_hang_over``             connected when the hang was shorter than the agent's
                                        PUBACK watchdog (it cannot have dropped the link); else no
                                        change (its next birth says when it is back)
=====================================  =====================================================

``broker_up`` deliberately does not end a disconnected window as a connected one: between the
broker's restart and the agent's reconnection the agent still creates ``offline: true`` messages.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from hil.stream.lines import (
    AGENT_KILLED,
    BROKER_DOWN,
    BROKER_HANG,
    BROKER_HANG_OVER,
    BROKER_UP,
    CAPTURE_DOWN,
    CAPTURE_UP,
)

# The agent drops a connection that has had publishes in flight and no PUBACK for this long
# (agent/upstream/client.py, publish_timeout_s): a shorter broker hang cannot have disconnected it.
PUBACK_WATCHDOG_S: Final = 10.0

__all__ = ["Link", "Timeline", "Window"]


class Link(StrEnum):
    UNKNOWN = "unknown"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class Window:
    """``[start, end)`` in epoch seconds with one link state; ``opened_by``/``closed_by`` name the
    evidence at the edges (for the finding's text)."""

    start: float
    end: float
    link: Link
    opened_by: str
    closed_by: str

    def inside(self, at: float, tolerance_s: float) -> bool:
        """``at`` is more than ``tolerance_s`` away from both edges."""
        return at - self.start > tolerance_s and self.end - at > tolerance_s


class Timeline:
    """Feed evidence in capture-time order (:meth:`status`, :meth:`marker`), then :meth:`locate`."""

    def __init__(self) -> None:
        self._starts: list[float] = [-math.inf]
        self._links: list[Link] = [Link.UNKNOWN]
        self._why: list[str] = ["start of capture"]
        self._broker_down = False  # disconnected because the harness stopped the broker
        self._hang_since: float | None = None  # the harness holds the agent's broker link

    @property
    def link(self) -> Link:
        return self._links[-1]

    def _set(self, t: float, link: Link, why: str) -> None:
        if link is self._links[-1]:
            return
        if t < self._starts[-1]:  # fed out of order: treat as simultaneous
            t = self._starts[-1]
        self._starts.append(t)
        self._links.append(link)
        self._why.append(why)

    def status(self, t: float, state: str, *, retained: bool) -> None:
        """A ``…/status`` message: ``state`` ``online`` or ``offline``."""
        how = "retained" if retained else "live"
        if state == "online":
            self._broker_down = False  # the agent is connected, so the broker is up
            self._set(t, Link.CONNECTED, f"status online ({how})")
        elif state == "offline":  # the broker may still be going down (Mosquitto sends wills then)
            self._set(t, Link.DISCONNECTED, f"status offline ({how})")

    def marker(self, t: float, name: str) -> None:
        if name == BROKER_DOWN:
            self._broker_down = True
            self._set(t, Link.DISCONNECTED, BROKER_DOWN)
        elif name == BROKER_UP:
            if self._broker_down:
                self._broker_down = False
                self._set(t, Link.UNKNOWN, BROKER_UP)
        elif name == BROKER_HANG:
            # the agent may or may not notice (its PUBACK watchdog): either offline flag is right
            self._hang_since = t
            self._set(t, Link.UNKNOWN, BROKER_HANG)
        elif name == BROKER_HANG_OVER and self._hang_since is not None:
            held, self._hang_since = t - self._hang_since, None
            if held < PUBACK_WATCHDOG_S and self.link is Link.UNKNOWN:
                self._set(t, Link.CONNECTED, BROKER_HANG_OVER)  # too short to drop the connection
            # longer: unknown until the agent's next birth (status online) says it is back
        elif name == AGENT_KILLED:
            self._set(t, Link.DISCONNECTED, AGENT_KILLED)
        elif name == CAPTURE_DOWN:
            if not self._broker_down:
                self._set(t, Link.UNKNOWN, CAPTURE_DOWN)
        elif name == CAPTURE_UP and self._broker_down:
            self._broker_down = False
            self._set(t, Link.UNKNOWN, CAPTURE_UP)

    def windows(self) -> list[Window]:
        ends = [*self._starts[1:], math.inf]
        closers = [*self._why[1:], "end of capture"]
        return [
            Window(start, end, link, why, closer)
            for start, end, link, why, closer in zip(
                self._starts, ends, self._links, self._why, closers, strict=True
            )
        ]

    def locate(self, at: float) -> Window:
        """The window that holds the instant ``at``."""
        index = bisect.bisect_right(self._starts, at) - 1
        end = self._starts[index + 1] if index + 1 < len(self._starts) else math.inf
        closer = self._why[index + 1] if index + 1 < len(self._why) else "end of capture"
        return Window(self._starts[index], end, self._links[index], self._why[index], closer)
