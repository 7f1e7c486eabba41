"""``evpay-agent run -c FILE``: the daemon (DESIGN.md §2, §5.7; OPS-1, OPS-2).

Order: load the config (exit 2 with ``FILE:LINE: PATH: REASON`` — never start half-configured),
configure logging for journald, open the journal in ``state_dir`` (exit 1 when it cannot be
opened), start the drivers and the runtime, send ``READY=1`` (sd_notify) once the tasks are up —
not gated on the terminal. Under a systemd watchdog (``WATCHDOG_USEC``) the ``sd-watchdog`` task
sends ``WATCHDOG=1`` every half interval while :meth:`Runtime.health` is good, and withholds it
otherwise so systemd restarts the agent. SIGTERM/SIGINT: ``STOPPING=1``, no new sessions,
settlements in flight finished within ``--drain-timeout`` seconds, journal closed, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from agent import __version__, crashpoints, logs
from agent.config.schema import DEFAULT_CONFIG_PATH, LoadedConfig, load_config
from agent.errors import ConfigError
from agent.logs import kv
from agent.runtime import sdnotify
from agent.runtime.psptap import crashpoint_opener
from agent.runtime.shell import DEFAULT_DRAIN_S, DISPATCH_STALL_S, Runtime, RuntimeOptions
from agent.store.journal import Journal, JournalError
from agent.store.outbox import Outbox, OutboxError
from agent.upstream.client import UpstreamClient, UpstreamError
from agent.upstream.contract import Topics
from agent.upstream.port import wire_remote
from agent.upstream.publisher import Publisher
from drivers.charger import load_driver
from drivers.charger.mqtt_bridge import TlsOptions
from drivers.psp.messages import Family
from drivers.terminal import PspTerminal

_LOGGER = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_JOURNAL = 1


def build_runtime(
    loaded: LoadedConfig, journal: Journal, *, drain_timeout_s: float = DEFAULT_DRAIN_S
) -> Runtime:
    """Wire the drivers and the runtime from a validated config (the composition root)."""
    config = loaded.config
    profile = config.to_profile()
    extra: dict[str, object] = {}
    if crashpoints.enabled():
        extra["opener"] = crashpoint_opener(profile.wire())
    terminal = PspTerminal(
        config.terminal.url, profile, session_timeout_s=config.terminal.session_timeout_s, **extra
    )
    cc = config.charger
    topics = {name: getattr(cc.topics, name) for name in ("plug", "status", "meter", "alive", "cmd")}
    tls = None
    if cc.tls is not None:
        tls = TlsOptions(ca_file=cc.tls.ca_file, cert_file=cc.tls.cert_file, key_file=cc.tls.key_file)
    driver_cls = load_driver(cc.driver)
    charger_driver = driver_cls(  # type: ignore[call-arg]
        broker_url=cc.broker_url,
        connectors=[c.id for c in config.connectors],
        prefix=cc.prefix,
        topics=topics,
        username=cc.username,
        password_file=cc.password_file,
        tls=tls,
        client_id=f"evpay-agent-charger-{config.station_id}",
    )
    apollo = config.terminal.family is Family.APOLLO
    options = RuntimeOptions(
        max_current_a={c.id: c.max_current_a for c in config.connectors},
        ui_screens=apollo,
        connector_labels={c.id: c.label for c in config.connectors if c.label},
        list_sessions=not apollo,
        drain_timeout_s=drain_timeout_s,
    )
    publisher, client = build_upstream(loaded, journal, apollo=apollo)
    runtime = Runtime(
        station_config=config.to_station_config(),
        pricer=loaded.tariff,
        journal=journal,
        terminal=terminal,
        charger_driver=charger_driver,
        options=options,
        publisher=publisher,
        upstream_run=client.run,
    )
    if apollo and config.receipts.qr_url_template:  # RCPT-2: amount + QR link on the final screen
        publisher.final_screen = runtime.show_final_screen
    wire_remote(runtime, client, config, outbox=publisher.outbox)  # commands + RFID (agent/upstream/port.py)
    return runtime


def build_upstream(
    loaded: LoadedConfig, journal: Journal, *, apollo: bool
) -> tuple[Publisher, UpstreamClient]:
    """The outbox (in the journal's SQLite file), the MQTT client and the publisher (DESIGN.md §5.3).

    Raises :class:`UpstreamError` (bad broker URL or TLS files) and :class:`OutboxError`; the
    caller closes ``publisher.outbox``.
    """
    config = loaded.config
    uc = config.upstream
    outbox = Outbox(journal.path, max_messages=uc.outbox_max_messages)
    try:
        password = loaded.secrets.upstream_password
        tls = uc.tls
        client = UpstreamClient(
            broker_url=uc.broker_url,
            station_id=config.station_id,
            prefix=uc.prefix,
            outbox=outbox,
            protocol="3.1.1" if uc.protocol == "3.1.1" else "5",
            client_id=uc.client_id,
            username=uc.username,
            password=password.reveal().rstrip("\r\n") if password is not None else None,
            ca_file=tls.ca_file if tls is not None else None,
            cert_file=tls.cert_file if tls is not None else None,
            key_file=tls.key_file if tls is not None else None,
            version=__version__,
        )
    except BaseException:
        outbox.close()
        raise
    publisher = Publisher(
        outbox,
        client,
        Topics(config.station_id, uc.prefix),
        config.station_id,
        journal=journal,
        tariff=loaded.tariff,
        currency=config.tariff.currency,
        qr_url_template=config.receipts.qr_url_template,
        final_screen=None,  # set by build_runtime (Runtime.show_final_screen) on Apollo with a QR template
        terminal_family="apollo" if apollo else "p6x",
        terminal_offline_alarm_after_s=config.terminal.offline_alarm_after_s,
    )
    return publisher, client


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


async def serve(runtime: Runtime) -> None:
    loop = asyncio.get_running_loop()

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
            await runtime.run()
            if pinger is not None:
                pinger.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _run(args: argparse.Namespace) -> int:
    from agent.cli import CliError

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    logs.configure("debug" if args.verbose >= 2 else loaded.config.log_level)
    for warning in loaded.warnings:
        _LOGGER.warning("%s", warning)
    try:
        journal = Journal.open(Path(loaded.config.state_dir))
    except JournalError as exc:
        raise CliError(str(exc), EXIT_JOURNAL) from None
    try:
        try:
            runtime = build_runtime(loaded, journal, drain_timeout_s=args.drain_timeout)
        except (UpstreamError, OutboxError) as exc:
            raise CliError(f"upstream: {exc}", EXIT_CONFIG) from None
        try:
            asyncio.run(serve(runtime))
        finally:
            if runtime.publisher is not None:
                runtime.publisher.outbox.close()
    finally:
        journal.close()
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
