"""THE ONLY MODULE THAT TOUCHES PRIVATE INTERNALS OF aiomqtt (issue 11, acceptance 4).

Every other module uses the public APIs of aiomqtt and paho-mqtt, and reaches the two internals
below only through the functions here. ``git grep -n "\\._client\\|_sock_close\\|_disconnected"``
finds this file and nothing else. ``tests/upstream/test_mqtt_internals.py`` fails when an internal
disappears or changes shape. The dependency ranges in ``pyproject.toml``, ``aiomqtt >= 2.3, < 2.6``
and ``paho-mqtt >= 2.1, < 2.3``, are what was checked: the tests ran with aiomqtt 2.5.1 and
paho-mqtt 2.2.0 (the newest releases; aiomqtt 3 is a rewrite), and the sources of aiomqtt 2.3.0
to 2.5.1 and paho-mqtt 2.1.0 have the same attributes and code paths. Widen a range only after
running the test against the new version.

The internals, and why there is no public way:

1. ``aiomqtt.Client._client`` — the :class:`paho.mqtt.client.Client` under aiomqtt. aiomqtt does not
   expose it on purpose (empicano/aiomqtt#191: through it a user could replace aiomqtt's callbacks)
   and has no accessor for the socket either. We only read the socket from it, with paho's public
   :meth:`~paho.mqtt.client.Client.socket`, plus paho's public :meth:`~paho.mqtt.client.Client.loop_read`
   and :attr:`~paho.mqtt.client.Client.protocol`:

   - :func:`mqtt_socket`: ``TCP_QUICKACK`` after a PUBACK (``drivers.charger.mqtt_bridge.ack_now``),
     the charger simulator's unclean drop (``hil.charger_sim``);
   - :func:`close_socket`: a connection attempt that failed before aiomqtt's ``__aexit__`` (CONNACK
     not received in time: our own ``asyncio.timeout`` around ``__aenter__``) leaves paho's socket
     open, aiomqtt's reader registered and its ``loop_misc`` task running until paho's keepalive
     gives up. It used to call paho's private ``_sock_close``; now it shuts the socket down
     (public :mod:`socket` API) and lets paho read the end of stream (public ``loop_read``), which is
     paho's own "connection lost" path: paho closes the socket and tells aiomqtt (its socket-close
     callback removes the reader and cancels the misc task), synchronously.

   - :func:`read_available` (issue 12): aiomqtt's socket reader hands paho one ``loop_read()``
     per event-loop iteration, and paho reads one packet per call when nothing of ours is in
     flight — so a burst of 8 meter readings took 8 iterations and 8 dispatcher turns. Calling
     paho's public ``loop_read()`` while the socket has data (a zero-timeout ``select``; plus
     ``pending()`` for TLS, as aiomqtt's reader does) queues the whole burst at once. An error is
     reported exactly as aiomqtt's reader reports it: on its disconnection future (internal 2).
   - :class:`DirectPublisher` (issue 12): QoS 1 publishes made with paho's public
     :meth:`~paho.mqtt.client.Client.publish` directly, without aiomqtt's per-call ``asyncio.Event``
     and its O(in-flight) pending-call check (83 evaluations per publish in a 64-deep window, 28 % of
     the drain's time). It *chains* paho's public ``on_publish`` callback: a PUBACK of a message
     it published goes to the callback given with that publish, every other one to aiomqtt's own
     callback, which stays in place (so ``aiomqtt.Client.publish`` keeps working on the same
     connection). It never replaces another aiomqtt callback.

2. ``aiomqtt.Client._disconnected`` — the future aiomqtt completes (often with an exception) when the
   connection ends. Only an ``async for`` over ``client.messages`` running at that moment retrieves
   the exception; when the receive task was already cancelled (another task of the connection
   failed first) or not started yet, asyncio logs "Future exception was never retrieved" when the
   client is collected. :func:`retrieve_disconnect_error` marks it retrieved; the error itself is
   reported by the ``MqttError`` the caller caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import time
from collections.abc import Callable
from typing import Any, Final

import aiomqtt
import paho.mqtt.client as paho_mqtt

__all__ = [
    "ACCEPTANCE_GREP",
    "ACCEPTANCE_NEEDLES",
    "PRIVATE_ATTRIBUTES",
    "AckCallback",
    "DirectPublisher",
    "close_socket",
    "disconnect_future",
    "mqtt_socket",
    "paho_client",
    "read_available",
    "retrieve_disconnect_error",
]

# The private attributes of aiomqtt.Client used here, and what each must be (tested).
PRIVATE_ATTRIBUTES: Final[dict[str, type]] = {
    "_client": paho_mqtt.Client,
    "_disconnected": asyncio.Future,
}

# Issue 11, acceptance 4: this finds this module only (tests/upstream/test_mqtt_internals.py).
ACCEPTANCE_GREP: Final = r"\._client\|_sock_close\|_disconnected"
ACCEPTANCE_NEEDLES: Final = ("._client", "_sock_close", "_disconnected")

_LOGGER = logging.getLogger(__name__)

_CLOSE_READS: Final = 8  # loop_read() calls to reach the end of stream behind buffered packets


def paho_client(client: aiomqtt.Client) -> paho_mqtt.Client:
    """The paho client under ``client`` (private: ``aiomqtt.Client._client``). Use only its public
    read-only API (``socket()``, ``protocol``); never set its callbacks."""
    paho = client._client
    assert isinstance(paho, paho_mqtt.Client)
    return paho


def disconnect_future(client: aiomqtt.Client) -> asyncio.Future[None]:
    """aiomqtt's disconnection future (private: ``aiomqtt.Client._disconnected``); read it only."""
    future = client._disconnected
    assert isinstance(future, asyncio.Future)
    return future


def mqtt_socket(client: aiomqtt.Client) -> socket.socket | None:
    """The connection's TCP (or TLS) socket, ``None`` when not connected or not a socket (websockets)."""
    sock = paho_client(client).socket()
    return sock if isinstance(sock, socket.socket) else None


def retrieve_disconnect_error(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's disconnect error as retrieved (it is reported through the caught ``MqttError``;
    unretrieved, asyncio logs "Future exception was never retrieved" when it is collected)."""
    future = disconnect_future(client)
    if future.done() and not future.cancelled():
        future.exception()


def read_available(client: aiomqtt.Client, max_packets: int) -> int:
    """Let paho read what has already arrived on the socket (at most ``max_packets`` reads), so
    a burst of messages reaches aiomqtt's queue in one event-loop iteration. Returns the number
    of reads made; never raises (an error ends the connection the way aiomqtt's reader does)."""
    paho = paho_client(client)
    reads = 0
    try:
        while reads < max_packets:
            sock = paho.socket()
            if sock is None:
                break
            pending = getattr(sock, "pending", None)  # TLS: decrypted bytes select() does not see
            if not (callable(pending) and pending() > 0):
                readable, _, _ = select.select([sock], [], [], 0)
                if not readable:
                    break
            reads += 1
            if paho.loop_read() != paho_mqtt.MQTT_ERR_SUCCESS:
                break  # paho reported the lost connection itself (on_disconnect)
    except Exception as exc:  # what aiomqtt's reader callback does with a loop_read() error
        future = disconnect_future(client)
        if not future.done():
            future.set_exception(exc)
    return reads


def close_socket(client: aiomqtt.Client) -> None:
    """Close a socket a failed connection attempt left open, so aiomqtt's reader and misc task end.

    Public API only (see the module docstring): shut the socket down, then let paho read the end of
    stream; paho closes the socket and calls aiomqtt's socket-close callback. A no-op when paho has
    no socket (the usual case: paho closes it itself on a lost connection or a refused CONNACK).
    """
    paho = paho_client(client)
    sock = paho.socket()
    if not isinstance(sock, socket.socket):
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    for _ in range(_CLOSE_READS):
        if paho.socket() is None:
            return
        # paho maps socket errors to "connection lost" itself and closes the socket before it calls
        # aiomqtt's on_disconnect. After an __aenter__ cancelled by a timeout that callback raises
        # CancelledError (it asks the cancelled CONNACK future for its exception): loop_read() is
        # synchronous, so that CancelledError cannot be a cancellation of the calling task.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            paho.loop_read()
    # still open (not seen with the pinned versions): aiomqtt's reader sees the end of stream next


_TCP_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)  # Linux only

AckCallback = Callable[[bool], None]
"""Called once with the PUBACK of a :meth:`DirectPublisher.publish`: ``True`` when accepted (MQTT 5
reason code < 0x80, or MQTT 3.1.1), ``False`` when the broker refused the message."""


class DirectPublisher:
    """QoS 1 publishes through paho directly on one aiomqtt connection (see the module docstring).

    :meth:`publish` is synchronous: paho queues the packet and aiomqtt's writer sends it on the next
    loop iteration, in call order. The PUBACK calls the given :data:`AckCallback` from paho's
    ``loop_read`` (on the event loop), after which a ``TCP_QUICKACK`` sends our pending TCP ACK at
    once (the broker's Nagle would otherwise hold its next PUBACK behind our 40 ms delayed ACK).
    Callbacks must not raise; one that does is logged, never propagated into paho. Use one
    instance per connection; :meth:`detach` restores aiomqtt's callback.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho = paho_client(client)
        self._waiting: dict[int, AckCallback] = {}
        self._aiomqtt_on_publish: Any = self._paho.on_publish
        self.last_progress = time.monotonic()  # the latest PUBACK, or the first publish after idle
        self._paho.on_publish = self._on_publish

    @property
    def in_flight(self) -> int:
        """Publishes made here and not acknowledged yet."""
        return len(self._waiting)

    def stalled_for(self, now: float) -> float:
        """Seconds without a PUBACK while something is in flight (0 when nothing is)."""
        return now - self.last_progress if self._waiting else 0.0

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, on_ack: AckCallback) -> None:
        """Queue one publish; ``on_ack`` is called with its PUBACK (at once for QoS 0, once written).
        Raises :class:`aiomqtt.MqttCodeError` when paho refuses it (e.g. not connected)."""
        info = self._paho.publish(topic, payload, qos, retain)
        if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if qos == 0:  # no PUBACK: paho's on_publish for QoS 0 may already have run
            self._call(on_ack, True)
            return
        if not self._waiting:
            self.last_progress = time.monotonic()
        self._waiting[info.mid] = on_ack

    def detach(self) -> None:
        """Give paho's on_publish back to aiomqtt; nothing in flight is reported any more."""
        if self._paho.on_publish == self._on_publish:
            self._paho.on_publish = self._aiomqtt_on_publish
        self._waiting.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        callback = self._waiting.pop(mid, None)
        if callback is None:  # published through aiomqtt: its own callback
            self._aiomqtt_on_publish(client, userdata, mid, reason_code, properties)
            return
        self.last_progress = time.monotonic()
        self._call(callback, not bool(getattr(reason_code, "is_failure", False)))
        self._quickack()

    @staticmethod
    def _call(callback: AckCallback, accepted: bool) -> None:
        try:
            callback(accepted)
        except Exception:  # never into paho's loop_read: it would end the connection
            _LOGGER.exception("PUBACK callback failed")

    def _quickack(self) -> None:
        if _TCP_QUICKACK is None:
            return
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
