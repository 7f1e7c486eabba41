"""The loop's exception handler (agent/runtime/loopguard.py): the aiomqtt socket race during a
broker outage is one INFO line; every other callback error keeps its traceback (no traceback in
ordinary operation, issue 8)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from agent.runtime import loopguard


def _run_late_registration(call: str) -> None:
    """What aiomqtt does: schedule ``loop.add_writer(fd, …)`` and the socket closes meanwhile."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loopguard.install(loop)
        a, b = socket.socketpair()
        fd = a.fileno()
        loop.call_soon(getattr(loop, call), fd, lambda: None)
        a.close()
        b.close()
        await asyncio.sleep(0.01)

    asyncio.run(main())


@pytest.mark.req("ERR-6")
@pytest.mark.parametrize("call", ["add_writer", "add_reader"])
def test_req_err_6_a_socket_closed_before_registration_is_one_info_line(
    call: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _run_late_registration(call)
    records = [r for r in caplog.records if r.levelno >= logging.INFO and "asyncio" in r.name]
    assert records == []  # the default handler ("Exception in callback …") never ran
    (info,) = [r for r in caplog.records if r.name == "agent.runtime.loopguard"]
    assert info.levelno == logging.INFO
    assert f"call={call}" in info.getMessage()
    assert info.exc_info is None


def test_other_callback_errors_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise OSError("not the socket race")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loopguard.install(loop)
        loop.call_soon(broken)
        await asyncio.sleep(0.01)

    caplog.set_level(logging.INFO)
    asyncio.run(main())
    (record,) = [r for r in caplog.records if r.name == "asyncio"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert "Exception in callback" in record.getMessage()
