"""Shared fixtures: an async test that leaves an asyncio task behind fails (style.md §11)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def task_leak_guard() -> AsyncIterator[None]:
    """Fail the test when it leaves a pending task on its event loop."""
    loop = asyncio.get_running_loop()
    before = set(asyncio.all_tasks(loop))
    yield
    for _ in range(3):  # let tasks that are already finishing complete
        await asyncio.sleep(0)
    current = asyncio.current_task(loop)
    leaked = [t for t in asyncio.all_tasks(loop) if t is not current and t not in before and not t.done()]
    if leaked:
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        names = ", ".join(sorted(t.get_name() for t in leaked))
        pytest.fail(f"test leaked {len(leaked)} task(s): {names}")


@pytest.fixture(autouse=True)
def _no_task_leaks(request: pytest.FixtureRequest) -> None:
    """Every coroutine test runs under ``task_leak_guard``."""
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        request.getfixturevalue("task_leak_guard")


# --- a real Mosquitto broker (tests/mosquitto.py) -------------------------------------------------

from collections.abc import Iterator  # noqa: E402

from tests.mosquitto import Broker, find_mosquitto  # noqa: E402


@pytest.fixture
def mosquitto() -> Iterator[Broker]:
    """A started Mosquitto on a free 127.0.0.1 port, stopped afterwards; skips when not installed."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (/usr/sbin/mosquitto or PATH); apt-get install mosquitto")
    broker = Broker()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


pytest_plugins = ["tests.pan_guard"]
