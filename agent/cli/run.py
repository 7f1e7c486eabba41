"""``evpay-agent run -c FILE``: the daemon (DESIGN.md §2, §5.7; OPS-1, OPS-2).

Order: load the config (exit 2 with ``FILE:LINE: PATH: REASON`` — never start half-configured),
configure logging for journald, build the agent (:func:`agent.app.build_app`, the one composition
root; exit 1 when the journal in ``state_dir`` cannot be opened), create the control socket
``{state_dir}/control.sock`` for ``evpay-agent status`` (exit 1 when another agent listens there,
:mod:`agent.runtime.control`), start the drivers and the runtime, send ``READY=1`` (sd_notify)
once the tasks are up — not gated on the terminal. Under a systemd watchdog (``WATCHDOG_USEC``)
the ``sd-watchdog`` task sends ``WATCHDOG=1`` every half interval while :meth:`Runtime.health`
is good, and withholds it otherwise so systemd restarts the agent. SIGTERM/SIGINT:
``STOPPING=1``, no new sessions, settlements in flight finished within ``--drain-timeout``
seconds, control socket removed, journal closed, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from agent import logs
from agent.app import App, AppOptions, build_app
from agent.cli.config import report
from agent.config.schema import DEFAULT_CONFIG_PATH, load_config
from agent.errors import ConfigError
from agent.logs import kv
from agent.runtime import loopguard, sdnotify
from agent.runtime.control import ControlError
from agent.runtime.shell import DEFAULT_DRAIN_S, DISPATCH_STALL_S, Runtime
from agent.store.db import StoreError
from agent.store.journal import JournalError
from agent.store.outbox import OutboxError
from agent.upstream.client import UpstreamError

_LOGGER = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_JOURNAL = 1


async def watchdog(runtime: Runtime, interval_s: float) -> None:
    """``WATCHDOG=1`` every ``interval_s / 2`` while the runtime is healthy (DESIGN.md §5.7).

    The ping is withheld while :meth:`Runtime.health` reports a problem (a stalled dispatcher, a
    task in a crash-restart loop); a blocked event loop cannot run this task at all. Either way
    systemd restarts the agent after ``WatchdogSec``.
    """
    loop = asyncio.get_running_loop()
    period = interval_s / 2
    stall_s = min(DISPATCH_STALL_S, period)
    await runtime.ready.wait()
    withheld: str | None = None
    while True:
        problem = runtime.health(stall_s=stall_s)
        if problem is None:
            sdnotify.notify("WATCHDOG=1")
            if withheld is not None:
                _LOGGER.warning("watchdog: healthy again; pinging")
        elif problem != withheld:
            _LOGGER.error("watchdog: not healthy; WATCHDOG=1 withheld %s", kv(reason=problem))
        withheld = problem
        due = loop.time() + period
        await asyncio.sleep(period)
        late = loop.time() - due
        if late > period:
            _LOGGER.warning("watchdog: event loop was blocked %s", kv(late_s=round(late, 3)))


async def serve(app: App) -> None:
    runtime = app.runtime
    loop = asyncio.get_running_loop()
    loopguard.install(loop)

    def on_signal(signum: int) -> None:
        sdnotify.notify("STOPPING=1")
        _LOGGER.info("signal received %s", kv(signal=signal.Signals(signum).name))
        runtime.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    async def announce_ready() -> None:
        await runtime.ready.wait()
        sdnotify.notify("READY=1")
        _LOGGER.info("ready")

    interval_s = sdnotify.watchdog_interval()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(announce_ready(), name="sd-ready")
            pinger = None
            if interval_s is not None:
                _LOGGER.info("systemd watchdog %s", kv(interval_s=interval_s))
                pinger = tg.create_task(watchdog(runtime, interval_s), name="sd-watchdog")
            await app.run()
            if pinger is not None:
                pinger.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _run(args: argparse.Namespace) -> int:
    from agent.cli import CliError

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:  # every error, one line each (agent.cli.config.report)
        raise report(exc, consequence="; not starting", exit_code=EXIT_CONFIG) from None
    logs.configure("debug" if args.verbose >= 2 else loaded.config.log_level)
    for warning in loaded.warnings:
        _LOGGER.warning("%s", warning)
    try:
        app = build_app(loaded, AppOptions(drain_timeout_s=args.drain_timeout))
    except (JournalError, StoreError) as exc:
        raise CliError(str(exc), EXIT_JOURNAL) from None
    except (UpstreamError, OutboxError) as exc:
        raise CliError(f"upstream: {exc}", EXIT_CONFIG) from None
    try:
        app.control.open()  # before the event loop: a second agent on this state_dir stops here
    except ControlError as exc:
        app.close()
        raise CliError(str(exc), EXIT_JOURNAL) from None
    try:
        asyncio.run(serve(app))
    finally:
        app.close()
    _LOGGER.info("exit")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the agent (the systemd service)",
        description="Run the agent: terminal, charger, session state machines and the journal.",
    )
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="config file")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_S,
        help="on SIGTERM wait at most this many seconds for settlements in flight "
        f"(default {DEFAULT_DRAIN_S:g})",
    )
    parser.set_defaults(func=_run)
