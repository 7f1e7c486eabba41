"""A throwaway Mosquitto on a free loopback port, for the demo and the benchmarks.

Never a system-wide broker: each instance writes its own config, listens on 127.0.0.1 only, keeps
nothing on disk and is stopped by :meth:`LocalBroker.stop` (or the ``with`` block). The test suite's
richer fixture (TLS, passwords, restarts) is ``tests/mosquitto.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 5.0


class BrokerError(RuntimeError):
    """Mosquitto is missing or did not start."""


def find_mosquitto() -> str | None:
    """The mosquitto binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """``with LocalBroker(workdir) as broker:`` → ``broker.url`` is ``mqtt://127.0.0.1:PORT``."""

    def __init__(self, workdir: Path, *, extra_config: str = "") -> None:
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError("mosquitto is not installed: `bash hil/bootstrap.sh demo` installs it")
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._binary = binary
        self._config = workdir / "mosquitto.conf"
        self._config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
            + extra_config,
            encoding="utf-8",
        )
        self.start()

    def start(self) -> None:
        """Start the broker (again, on the same port) and wait until it accepts connections."""
        self._proc = subprocess.Popen(
            [self._binary, "-c", str(self._config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(f"mosquitto did not start on port {self.port}") from None
                time.sleep(0.01)

    def restart(self) -> None:
        """Stop and start on the same port: without persistence, every retained message is gone."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
