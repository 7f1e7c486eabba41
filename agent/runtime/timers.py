"""The engine's timers (``StartTimer`` / ``CancelTimer``) on the event loop's monotonic clock.

A timer is keyed by ``(kind, connector_id)``; starting it again restarts it. When it fires, the
callback receives the key and posts a ``TimerFired`` event. ``scale`` shrinks every duration (tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from statemachines.events import TimerKind

TimerKey = tuple[TimerKind, int | None]


class Timers:
    def __init__(self, fire: Callable[[TimerKey], None], *, scale: float = 1.0) -> None:
        self._fire = fire
        self._scale = scale
        self._handles: dict[TimerKey, asyncio.TimerHandle] = {}

    def start(self, kind: TimerKind, connector_id: int | None, seconds: float) -> None:
        key = (kind, connector_id)
        self.cancel(kind, connector_id)
        loop = asyncio.get_running_loop()  # loop.call_later uses loop.time(): monotonic
        self._handles[key] = loop.call_later(max(0.0, seconds * self._scale), self._expired, key)

    def cancel(self, kind: TimerKind, connector_id: int | None) -> None:
        handle = self._handles.pop((kind, connector_id), None)
        if handle is not None:
            handle.cancel()

    def running(self) -> set[TimerKey]:
        return set(self._handles)

    def cancel_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def _expired(self, key: TimerKey) -> None:
        self._handles.pop(key, None)
        self._fire(key)
