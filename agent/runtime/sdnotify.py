"""sd_notify(3) without a dependency: one datagram to ``$NOTIFY_SOCKET`` (DESIGN.md §5.7), and
sd_watchdog_enabled(3): the watchdog interval from ``$WATCHDOG_USEC`` / ``$WATCHDOG_PID``."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ``WATCHDOG=1`` …); ``False`` when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds systemd waits for ``WATCHDOG=1`` (``WatchdogSec=``); ``None`` when not asked for.

    Like sd_watchdog_enabled(3): ``WATCHDOG_USEC`` must be a positive integer, and when
    ``WATCHDOG_PID`` is set it must be this process.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
