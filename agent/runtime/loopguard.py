"""The event loop's exception handler: a known library race is one INFO line, not a traceback.

aiomqtt registers its socket with the loop from paho's callbacks through
``loop.call_soon_threadsafe(loop.add_writer, sock.fileno(), ...)``. When the broker connection
drops between that call and its turn on the loop, the descriptor is already closed (or reused), and
the loop's default handler prints "Exception in callback BaseSelectorEventLoop.add_writer(...)" with
a traceback (found by the randomized-world fuzzer during broker outages). Nothing is lost: the
client's reconnect loop opens a new socket. Every other unhandled callback error still goes to the
default handler, traceback and all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agent.logs import kv

_LOGGER = logging.getLogger(__name__)

# loop methods whose late call on a descriptor closed meanwhile is the race above
_FD_REGISTRATION = frozenset({"add_writer", "add_reader", "remove_writer", "remove_reader"})


def is_stale_fd_registration(context: dict[str, Any]) -> bool:
    """Whether ``context`` (see :meth:`asyncio.loop.call_exception_handler`) is a callback
    ``add_writer``/``add_reader``/… that failed because its descriptor was gone."""
    exc = context.get("exception")
    if not isinstance(exc, OSError | ValueError | KeyError):
        return False
    callback = getattr(context.get("handle"), "_callback", None)
    return getattr(callback, "__name__", None) in _FD_REGISTRATION


def handle_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if is_stale_fd_registration(context):
        callback = getattr(context.get("handle"), "_callback", None)
        _LOGGER.info(
            "socket closed before the loop registered it; the client reconnects %s",
            kv(call=getattr(callback, "__name__", "?"), error=repr(context.get("exception"))),
        )
        return
    loop.default_exception_handler(context)


def install(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_exception_handler(handle_loop_exception)
