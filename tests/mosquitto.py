"""A real Mosquitto broker for tests (DESIGN.md §6): own config, own free port, stop/restart/kill.

Never depends on a system-wide broker. The binary is ``/usr/sbin/mosquitto`` or ``mosquitto`` on
``PATH``; when absent, :func:`find_mosquitto` returns ``None`` and the ``mosquitto`` fixture skips
with the reason.

TLS (UP-4): :func:`make_tls_material` writes a throwaway CA, a server certificate for
``127.0.0.1``/``localhost`` and a client certificate with the ``openssl`` CLI;
``Broker(tls=material, require_certificate=True)`` serves ``mqtts://`` with them.
``Broker(password_file=make_password_file(path, {"user": "secret"}))`` requires a login.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from hil.broker import find_mosquitto, free_port

__all__ = ["Broker", "TlsMaterial", "find_mosquitto", "free_port", "make_tls_material"]

STARTUP_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


def find_openssl() -> str | None:
    return shutil.which("openssl")


def find_mosquitto_passwd() -> str | None:
    for path in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto_passwd")


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """PEM files of a throwaway PKI: the CA, a server certificate (SAN ``IP:127.0.0.1``,
    ``DNS:localhost``) and a client certificate, all signed by the CA; keys unencrypted."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = find_openssl()
    if binary is None:
        raise FileNotFoundError("openssl CLI not found on PATH")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA (EC P-256, valid 1 day): ``(cert, key)`` as ``{name}.crt`` / ``{name}.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN=evpay test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], cn: str, extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (directory / f"{name}{s}" for s in (".crt", ".key", ".csr", ".ext"))
    ext.write_text(extensions, encoding="utf-8")
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_tls_material(directory: Path) -> TlsMaterial:
    """Generate a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "ca")
    server = _issue(
        directory,
        "server",
        ca,
        "localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\n",
    )
    client = _issue(
        directory,
        "client",
        ca,
        "evpay-agent-test",
        "extendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\n",
    )
    return TlsMaterial(ca[0], ca[1], server[0], server[1], client[0], client[1])


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (``mosquitto_passwd -b``) with these users and passwords."""
    binary = find_mosquitto_passwd()
    if binary is None:
        raise FileNotFoundError("mosquitto_passwd not found")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")
    for user, password in users.items():
        result = subprocess.run([binary, "-b", str(path), user, password], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd failed: {result.stderr.strip()}")
    return path


class Broker:
    """One mosquitto process on 127.0.0.1, no persistence; the port survives restarts.

    Anonymous and plain TCP by default. ``tls``: serve TLS with the material's server certificate
    (``require_certificate``: clients must present a certificate signed by its CA).
    ``password_file``: logins required (anonymous access off).

    Methods are synchronous and quick (start waits until the port accepts connections, stop waits
    for the process to exit); call them from async tests directly.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        workdir: Path | None = None,
        tls: TlsMaterial | None = None,
        require_certificate: bool = True,
        password_file: Path | None = None,
        acl_file: Path | None = None,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto not found (/usr/sbin/mosquitto or PATH)")
        self.binary = found
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.tls = tls
        listener = f"listener {self.port} {self.host}\n"
        if tls is not None:
            listener += (
                f"cafile {tls.ca_cert}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
                f"require_certificate {'true' if require_certificate else 'false'}\n"
            )
        if password_file is not None:
            listener += f"allow_anonymous false\npassword_file {password_file}\n"
        else:
            listener += "allow_anonymous true\n"
        if acl_file is not None:
            listener += f"acl_file {acl_file}\n"
        files = (tls, password_file, acl_file)
        if any(f is not None for f in files) and hasattr(os, "geteuid") and os.geteuid() == 0:
            # as root, mosquitto drops to user "mosquitto", which cannot read 0700 temp directories
            listener += "user root\n"
        self.config_path.write_text(
            f"{listener}"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            encoding="utf-8",
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"mosquitto did not listen on {self.port}: {self.log_tail()}"
                    ) from None
                time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM and wait for the exit (SIGKILL after a timeout)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a frozen broker would not see the SIGTERM
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL (a crash: no clean shutdown of client connections)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung broker or a half-open link)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
