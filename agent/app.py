"""The composition root (style.md "one composition root"): :func:`build_app` builds the agent's
whole object graph from a validated config, through constructors only.

The CLI (``evpay-agent run``), the demo, the benchmarks, the HIL rig and the test rigs all call it,
so what they run is what a charger runs; nothing is set on an object after it was built. What a
test or a bench may tune (timers, waits, the terminal's transport opener, the charger link's
backoff, the clock) is in :class:`AppOptions`, whose defaults are production values.

The graph (DESIGN.md §2)::

    Store (one SQLite file) ── Journal, Outbox
    UpstreamClient (MQTT, the outbox drainer) ── Publisher (contract payloads → outbox)
    BackendAuthorizer (RFID/CUG, local list + cache)
    PspTerminal, charger driver
    Runtime (the pure Station, actors, recovery) ── RuntimeAdapter ── CommandHandler
    DailyReconciliation
    StatusView ── ControlSocket ({state_dir}/control.sock, ``evpay-agent status``)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from agent import __version__, crashpoints
from agent.config.schema import LoadedConfig
from agent.logs import kv
from agent.runtime.control import ControlSocket, socket_path
from agent.runtime.psptap import crashpoint_opener
from agent.runtime.shell import DEFAULT_DRAIN_S, DEFAULT_RECOVERY_WAIT_S, Runtime, RuntimeOptions, TaskFactory
from agent.runtime.status import STATUS_REQUEST, StatusView
from agent.store.db import Store
from agent.store.journal import Journal
from agent.store.outbox import Outbox
from agent.upstream.client import UpstreamClient
from agent.upstream.commands import CommandHandler
from agent.upstream.contract import Topics
from agent.upstream.port import DailyReconciliation, RuntimeAdapter
from agent.upstream.publisher import Publisher
from agent.upstream.rfid import AuthCache, BackendAuthorizer, LocalAuthList, local_list_path
from drivers.charger import load_driver
from drivers.charger.base import ChargerDriver
from drivers.charger.mqtt_bridge import TlsOptions
from drivers.psp.messages import Family
from drivers.psp.session import Opener
from drivers.terminal import PspTerminal
from drivers.transport import open_transport
from statemachines.events import BackendAuthorizationResult, CardToken

_LOGGER = logging.getLogger(__name__)

COMMANDS_TASK = "commands"
CONTROL_TASK = "control"
DAILY_REPORT_TASK = "daily-reconciliation"
UPSTREAM_TASK = "upstream"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ChargerLinkTuning:
    """The charger bridge's link timers (tests shorten them)."""

    reconnect_min_s: float | None = None
    reconnect_max_s: float | None = None
    connect_timeout_s: float | None = None
    command_timeout_s: float | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class AppOptions:
    """Seams for tests and benchmarks; the defaults are production values."""

    drain_timeout_s: float = DEFAULT_DRAIN_S
    recovery_wait_s: float = DEFAULT_RECOVERY_WAIT_S
    timer_scale: float = 1.0
    terminal_opener: Opener | None = None  # default: drivers.transport.open_transport (crash points tapped)
    charger_link: ChargerLinkTuning = field(default_factory=ChargerLinkTuning)
    clock: Callable[[], datetime] = _utcnow


@dataclass(slots=True)
class App:
    """Everything :func:`build_app` built. :meth:`run` runs the daemon until ``runtime.request_stop()``;
    :meth:`close` closes the store (after :meth:`run` returned)."""

    loaded: LoadedConfig
    store: Store
    journal: Journal
    outbox: Outbox
    upstream: UpstreamClient
    publisher: Publisher
    authorizer: BackendAuthorizer
    terminal: PspTerminal
    charger: ChargerDriver
    runtime: Runtime
    port: RuntimeAdapter
    commands: CommandHandler
    daily: DailyReconciliation
    status: StatusView
    control: ControlSocket

    def tasks(self) -> dict[str, TaskFactory]:
        """The supervised tasks besides the runtime's own."""
        return {
            UPSTREAM_TASK: self.upstream.run,
            COMMANDS_TASK: self._commands,
            DAILY_REPORT_TASK: self.daily.run,  # REC-1
            CONTROL_TASK: self.control.serve,  # OPS-3: evpay-agent status
        }

    async def run(self) -> None:
        """Open the control socket (already open when ``evpay-agent run`` opened it before the
        event loop; raises ``ControlSocketInUse`` when another daemon listens there), run the
        runtime, and remove the socket again."""
        self.control.open()
        try:
            await self.runtime.run(self.tasks())
        finally:
            self.control.close()

    async def _commands(self) -> None:
        """Subscribe the command and auth-response filters (kept across reconnections by the
        client), then handle commands until cancelled."""
        topics = self.commands.topics
        await self.upstream.subscribe(topics.command_filter, self.commands.on_message)
        await self.upstream.subscribe(topics.auth_response, self.authorizer.on_message)
        await self.commands.run()

    def close(self) -> None:
        self.control.close()
        self.store.close()


def build_app(loaded: LoadedConfig, options: AppOptions | None = None) -> App:
    """The agent for ``loaded`` (a validated config). Opens the store in ``state_dir`` (raises
    ``StoreError``/``JournalError``), and raises ``UpstreamError`` (bad broker URL, TLS files) or
    ``OutboxError``; on an error nothing stays open."""
    opts = options or AppOptions()
    config = loaded.config
    store = Store.open(Path(config.state_dir))
    try:
        return _build(loaded, opts, store)
    except BaseException:
        store.close()
        raise


def _build(loaded: LoadedConfig, opts: AppOptions, store: Store) -> App:
    config = loaded.config
    apollo = config.terminal.family is Family.APOLLO
    journal = Journal(store)
    uc = config.upstream
    outbox = Outbox(store, max_messages=uc.outbox_max_messages)
    topics = Topics(config.station_id, uc.prefix)
    password = loaded.secrets.upstream_password
    tls = uc.tls
    upstream = UpstreamClient(
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
    publisher = Publisher(
        outbox,
        upstream,
        topics,
        config.station_id,
        opts.clock,
        journal=journal,
        currency=loaded.tariff.currency,
        qr_url_template=config.receipts.qr_url_template,
        terminal_family="apollo" if apollo else "p6x",
        terminal_offline_alarm_after_s=config.terminal.offline_alarm_after_s,
    )
    rfid = config.rfid
    local_list = LocalAuthList.load(local_list_path(config.state_dir))
    authorizer = BackendAuthorizer(
        upstream.publish_now,
        topics=topics,
        local_list=local_list,
        cache=AuthCache(ttl_s=rfid.cache_ttl_s, max_entries=rfid.cache_max_entries),
        offline_policy=rfid.offline_policy,
        timeout_s=rfid.auth_timeout_s,
        accept_limit_minor=rfid.offline_accept_limit_minor,
        connected=lambda: upstream.is_connected,
        clock=opts.clock,
        mqtt5=uc.protocol != "3.1.1",
    )
    terminal = _terminal(loaded, opts)
    charger = _charger(loaded, opts)

    async def authorize(connector_id: int, card: CardToken) -> BackendAuthorizationResult:
        decision = await authorizer.authorize(card, connector_id)
        return decision.to_event(connector_id, opts.clock())

    runtime = Runtime(
        station_config=config.to_station_config(),
        tariff=loaded.tariff,
        store=store,
        journal=journal,
        publisher=publisher,
        terminal=terminal,
        charger_driver=charger,
        authorizer=authorize,
        options=RuntimeOptions(
            max_current_a={c.id: c.max_current_a for c in config.connectors},
            ui_screens=apollo,
            final_screen=apollo and bool(config.receipts.qr_url_template),  # RCPT-2
            price_on_payment_screen=apollo and config.terminal.price_on_payment_screen,  # START-8
            connector_labels={c.id: c.label for c in config.connectors if c.label},
            list_sessions=not apollo,
            timer_scale=opts.timer_scale,
            recovery_wait_s=opts.recovery_wait_s,
            drain_timeout_s=opts.drain_timeout_s,
            retention_days=config.journal.retention_days,
        ),
        clock=opts.clock,
    )
    port = RuntimeAdapter(
        runtime,
        station_id=config.station_id,
        topics=topics,
        state_dir=config.state_dir,
        outbox=outbox,
        publish=upstream.publish_now,
    )
    station = runtime.station.config
    commands = CommandHandler(
        port,
        upstream.publish_now,
        topics=topics,
        capabilities=station.terminal,
        start_modes=station.start_modes,
        stop_modes=station.stop_modes,
        authorizer=authorizer,
        clock=opts.clock,
    )
    _LOGGER.info(
        "agent built %s",
        kv(
            station=config.station_id,
            family=config.terminal.family.value,
            connectors=len(config.connectors),
            prefix=topics.prefix,
            offline_policy=rfid.offline_policy.value,
            local_list_entries=len(local_list),
        ),
    )
    status = StatusView(
        runtime=runtime,
        port=port,
        publisher=publisher,
        outbox=outbox,
        upstream=upstream,
        station_id=config.station_id,
        clock=opts.clock,
    )
    return App(
        loaded=loaded,
        store=store,
        journal=journal,
        outbox=outbox,
        upstream=upstream,
        publisher=publisher,
        authorizer=authorizer,
        terminal=terminal,
        charger=charger,
        runtime=runtime,
        port=port,
        commands=commands,
        daily=DailyReconciliation(port),
        status=status,
        control=ControlSocket(socket_path(config.state_dir), {STATUS_REQUEST: status.document}),
    )


def _terminal(loaded: LoadedConfig, opts: AppOptions) -> PspTerminal:
    config = loaded.config
    profile = config.to_profile()
    opener: Opener = opts.terminal_opener or open_transport
    if crashpoints.enabled():  # test only: the psp_sent:/psp_received: crash points
        opener = crashpoint_opener(profile.wire(), opener)
    return PspTerminal(
        config.terminal.url, profile, session_timeout_s=config.terminal.session_timeout_s, opener=opener
    )


def _charger(loaded: LoadedConfig, opts: AppOptions) -> ChargerDriver:
    config = loaded.config
    cc = config.charger
    topics = {f.name: getattr(cc.topics, f.name) for f in msgspec.structs.fields(cc.topics)}  # every one
    tls = None
    if cc.tls is not None:
        tls = TlsOptions(ca_file=cc.tls.ca_file, cert_file=cc.tls.cert_file, key_file=cc.tls.key_file)
    tuning = opts.charger_link
    extra: dict[str, object] = {
        name: value
        for name, value in (
            ("reconnect_min_s", tuning.reconnect_min_s),
            ("reconnect_max_s", tuning.reconnect_max_s),
            ("connect_timeout_s", tuning.connect_timeout_s),
            ("command_timeout_s", tuning.command_timeout_s),
        )
        if value is not None
    }
    if tuning.seed is not None:
        extra["rng"] = random.Random(tuning.seed)
    driver_cls = load_driver(cc.driver)
    return driver_cls(  # type: ignore[call-arg]  # the registry's drivers take the bridge's keywords
        broker_url=cc.broker_url,
        connectors=[c.id for c in config.connectors],
        prefix=cc.prefix,
        topics=topics,
        username=cc.username,
        password_file=cc.password_file,
        tls=tls,
        client_id=f"evpay-agent-charger-{config.station_id}",
        **extra,
    )
