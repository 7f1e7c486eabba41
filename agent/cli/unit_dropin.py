"""``evpay-agent unit-dropin [-c FILE] [--private-users]``: a systemd drop-in for this site (OPS-1).

The shipped unit allows the serial device classes of USB adapters and of common controller UARTs
(``DeviceAllow=char-…``, docs/systemd.md). Any other serial device is allowed by the drop-in this
command prints: ``DeviceAllow=`` for the device of ``terminal.url`` (its real path, and the path as
configured when that is a symlink such as ``/dev/serial/by-id/…``, which systemd resolves again at
every start). A ``tcp://`` or ``tls://`` terminal needs no device: the output is then comments only.

``--private-users`` adds ``PrivateUsers=yes`` after checking that this kernel has user namespaces
(without them systemd refuses to start the service: ``217/USER``). The serial device stays usable:
systemd sets the supplementary groups (``dialout``) before it creates the user namespace, and the
kernel checks group access by the groups a process holds, mapped or not.

Run it on the controller (the device path is resolved here), save the output as
``/etc/systemd/system/evpay-agent.service.d/10-device.conf`` and ``systemctl daemon-reload``.
Exit 0, or 2 with the config error (as ``check-config``) or an unusable device path.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.cli.config import check_config
from agent.config.schema import DEFAULT_CONFIG_PATH

DROPIN_PATH = Path("/etc/systemd/system/evpay-agent.service.d/10-device.conf")
EXIT_INVALID = 2


def serial_device(terminal_url: str) -> str | None:
    """The device path of a ``serial://`` URL, as the transport opens it; ``None`` for any other."""
    parts = urlsplit(terminal_url)
    if parts.scheme.lower() != "serial":
        return None
    return unquote(parts.path)


def user_namespaces_problem(proc: Path = Path("/proc")) -> str | None:
    """Why ``PrivateUsers=`` would fail on this kernel, or ``None`` when it can work."""
    if not (proc / "self" / "ns" / "user").exists():
        return "this kernel has no user namespaces (CONFIG_USER_NS)"
    try:
        limit = int((proc / "sys" / "user" / "max_user_namespaces").read_text())
    except (OSError, ValueError):
        return None
    return "user.max_user_namespaces is 0" if limit == 0 else None


def _escape(path: str) -> str:
    """``path`` as a unit-file value: ``%`` is a specifier; whitespace would split the setting."""
    from agent.cli import CliError  # agent.cli imports this module

    if any(ch.isspace() for ch in path):
        raise CliError(f"the device path {path!r} contains whitespace, which a unit file cannot hold")
    return path.replace("%", "%%")


def render_dropin(
    config_file: str, terminal_url: str, *, private_users: bool = False, proc: Path = Path("/proc")
) -> str:
    """The drop-in text for a config naming ``terminal_url`` (``proc``: where ``/proc`` is; tests)."""
    from agent.cli import CliError  # agent.cli imports this module

    lines = [
        f"# evpay-agent unit-dropin -c {config_file}",
        f"# save as {DROPIN_PATH}, then: systemctl daemon-reload && systemctl restart evpay-agent",
        "[Service]",
    ]
    device = serial_device(terminal_url)
    if device is None:
        lines.insert(2, f"# terminal.url {terminal_url}: a network terminal, no serial device to allow")
    else:
        real = os.path.realpath(device)
        if not real.startswith("/dev/"):
            raise CliError(
                f"terminal.url {terminal_url}: {device} resolves to {real}, not a device under /dev"
            )
        allowed = [real] if real == device or not device.startswith("/dev/") else [real, device]
        lines += [f"DeviceAllow={_escape(path)} rw" for path in allowed]  # systemd: paths under /dev only
        lines.insert(
            2, f"# terminal.url {terminal_url}: {device}" + (f" -> {real}" if real != device else "")
        )
        if not os.path.exists(real):
            print(
                f"evpay-agent: warning: {device} does not exist here; the drop-in allows it as written",
                file=sys.stderr,
            )
    if private_users:
        if problem := user_namespaces_problem(proc):
            raise CliError(f"--private-users: {problem}; systemd would not start the service")
        lines.append("PrivateUsers=yes")
    return "\n".join(lines) + "\n"


def _dropin(args: argparse.Namespace) -> int:
    loaded = check_config(args.config)
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    sys.stdout.write(
        render_dropin(str(args.config), loaded.config.terminal.url, private_users=args.private_users)
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "unit-dropin",
        help="print a systemd drop-in allowing the configured serial device",
        description=(
            "Print a systemd drop-in with DeviceAllow= for the serial device of terminal.url (its "
            f"real path on this machine). Save it as {DROPIN_PATH} and run systemctl daemon-reload. "
            "Needed only for a device outside the classes the unit allows (docs/systemd.md)."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="config file")
    parser.add_argument(
        "--private-users",
        action="store_true",
        help="also PrivateUsers=yes (checks that this kernel has user namespaces)",
    )
    parser.set_defaults(func=_dropin)
