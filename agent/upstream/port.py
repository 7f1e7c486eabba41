"""The runtime side of the back-office commands and of RFID authorization (DESIGN.md §5.3).

:class:`RuntimeAdapter` implements :class:`agent.upstream.commands.RuntimePort` over a running
:class:`agent.runtime.shell.Runtime`; :func:`wire_remote` builds the
:class:`~agent.upstream.rfid.LocalAuthList`,
the :class:`~agent.upstream.rfid.AuthCache`, the :class:`~agent.upstream.rfid.BackendAuthorizer` and
the :class:`~agent.upstream.commands.CommandHandler` from the config, hooks the authorizer into the runtime
(``Runtime.backend_authorizer``) and returns a :class:`Remote` whose :meth:`Remote.run` is the one
task to run (``commands``: subscribes ``…/cmd/+`` and ``…/auth/response``, then handles commands).

Everything here runs on the event loop and never waits for the terminal or the charger: engine
events go through ``Runtime.post``, screens onto the terminal actor's queue, and the only awaits
are the reconciliation report (built in a worker thread) and its outbox append.

``set_tariff`` (docs/commands.md): the engine's connector machines hold the pricer they price their
session with, and a running session must keep its tariff (START-8). Each connector's pricer is
therefore wrapped once in a :class:`_ConnectorPricer`: a new tariff is switched in at once on a
connector without a session, and on a busy connector it stays *pending* until the engine prices a
session other than the one running when the tariff arrived (the next session's first price). Not
persisted (a restart goes back to the configured tariff). The Apollo home screen's tariff text is
updated too; receipts still quote the configured tariff (the publisher's quoter) — see the report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Final, Literal

from agent.errors import AgentError
from agent.logs import kv
from agent.money.reconcile import build_report
from agent.money.tariff import Tariff, TariffConfig
from agent.runtime.screens import ScreenSettings
from agent.upstream.commands import ActiveSession, CommandHandler, ScreenMessage
from agent.upstream.contract import ReconciliationReport, Topics, encode
from agent.upstream.rfid import AuthCache, BackendAuthorizer, LocalAuthList, local_list_path
from statemachines.effects import ShowMessage
from statemachines.events import (
    BackendAuthorizationResult,
    CardToken,
    RemoteStart,
    SetAvailability,
    StopRequest,
)
from statemachines.pricing import Pricer, Usage, UsageKind

if TYPE_CHECKING:
    from agent.config.schema import AgentConfig
    from agent.runtime.shell import Runtime
    from agent.store.outbox import Outbox
    from agent.upstream.client import UpstreamClient

__all__ = ["DailyReconciliation", "Remote", "RuntimeAdapter", "next_daily_run", "wire_remote"]

_LOGGER = logging.getLogger(__name__)

COMMANDS_TASK: Final = "commands"
DAILY_REPORT_TASK: Final = "daily-reconciliation"
DAILY_REPORT_DELAY: Final = timedelta(minutes=5)  # after local midnight: late meter values are in


def _session_ref(machine: object) -> str | None:
    session = getattr(machine, "session", None)
    ref = getattr(session, "ref", None)
    return ref if isinstance(ref, str) else None


class _ConnectorPricer:
    """One connector's pricer with a pending tariff (see the module docstring).

    The pending tariff replaces the current one the first time the engine prices a session whose
    ref differs from the one running when :meth:`set` was called (or when no session runs)."""

    def __init__(self, machine: object, current: Pricer) -> None:
        self._machine = machine
        self.current = current
        self.pending: Pricer | None = None
        self._pinned_ref: str | None = None

    def set(self, pricer: Pricer) -> bool:
        """Switch to ``pricer``; ``True`` when at once, ``False`` when pending (a session runs)."""
        ref = _session_ref(self._machine)
        if ref is None:
            self.current, self.pending, self._pinned_ref = pricer, None, None
            return True
        self.pending, self._pinned_ref = pricer, ref
        return False

    def _pricer(self) -> Pricer:
        if self.pending is not None and _session_ref(self._machine) != self._pinned_ref:
            self.current, self.pending, self._pinned_ref = self.pending, None, None
        return self.current

    def accumulate(
        self, usage: Usage, start: datetime, end: datetime, delta_wh: int, kind: UsageKind
    ) -> Usage:
        return self._pricer().accumulate(usage, start, end, delta_wh, kind)

    def cost_minor(self, usage: Usage) -> int:
        return self._pricer().cost_minor(usage)

    def __getattr__(self, name: str) -> object:  # describe(), currency, … of the current tariff
        return getattr(self.current, name)


class RuntimeAdapter:
    """:class:`agent.upstream.commands.RuntimePort` over a :class:`agent.runtime.shell.Runtime`."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        station_id: str,
        topics: Topics,
        state_dir: str | None = None,
        outbox: Outbox | None = None,
        publish: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        self.runtime = runtime
        self.station_id = station_id
        self.topics = topics
        self.state_dir = state_dir
        self.outbox = outbox
        self._publish = publish
        self._pricers: dict[int, _ConnectorPricer] = {}
        for cid, machine in runtime.station.connectors.items():
            current = machine._pricer
            wrapper = current if isinstance(current, _ConnectorPricer) else _ConnectorPricer(machine, current)
            machine._pricer = wrapper
            self._pricers[cid] = wrapper

    # -- state ------------------------------------------------------------------------------------

    @property
    def connector_ids(self) -> Sequence[int]:
        return self.runtime.connector_ids

    def post(self, event: RemoteStart | StopRequest | SetAvailability) -> None:
        self.runtime.post(event)

    def connector_state(self, connector_id: int) -> str:
        return str(self.runtime.station.connectors[connector_id].state)

    def active_session(self, connector_id: int) -> ActiveSession | None:
        machine = self.runtime.station.connectors[connector_id]
        session = machine.session
        if session is None:
            return None
        payment = machine.payment
        method = payment.method.value if payment is not None else "free_vend"
        return ActiveSession(
            session_id=session.ref,
            connector_id=connector_id,
            method=str(method),
            started_at=session.usage.started_at or machine.plugged_at or self.runtime.clock(),
            terminal_session_id=payment.session_id if payment is not None else None,
            energy_wh=session.usage.energy_wh,
            cost_minor=machine.running_cost_minor,
            authorized_minor=machine.authorized_minor,
        )

    # -- tariff -----------------------------------------------------------------------------------

    def set_tariff(self, tariff: TariffConfig) -> None:
        pricer = Tariff(tariff)  # TariffConfigError (an AgentError) → error/invalid_value
        now: list[int] = []
        pending: list[int] = []
        for cid, wrapper in self._pricers.items():
            (now if wrapper.set(pricer) else pending).append(cid)
        settings = getattr(self.runtime, "screens", None)
        if isinstance(settings, ScreenSettings):  # the Apollo home screen shows the new tariff
            self.runtime.screens = dataclasses.replace(
                settings, tariff_text=pricer.describe(), currency=tariff.currency
            )
        _LOGGER.info(
            "tariff set %s",
            kv(
                currency=tariff.currency,
                now=",".join(map(str, now)) or None,
                next_session=",".join(map(str, pending)) or None,
            ),
        )

    # -- Apollo screen ----------------------------------------------------------------------------

    def display_message(self, message: ScreenMessage) -> None:
        """Queued on the terminal actor as a ``ShowMessage`` whose key is the title (an unknown
        key is shown as its own text), the body and duration in ``data``."""
        data: dict[str, object] = {"message": message.message, "duration_s": message.duration_s}
        self.runtime.actors[None].queue.put_nowait(ShowMessage(message.connector_id, message.title, data))

    # -- journal ----------------------------------------------------------------------------------

    def recent_payments(self, limit: int) -> Sequence[Mapping[str, object]]:
        rows = self.runtime.journal.payments(limit=limit)
        return [dataclasses.asdict(row) for row in rows[:limit]]

    def session_tariff(self, connector_id: int) -> Tariff | None:
        """The tariff pricing (or, at its end, having priced) the connector's current session."""
        wrapper = self._pricers.get(connector_id)
        current = wrapper.current if wrapper is not None else None
        return current if isinstance(current, Tariff) else None

    def _tariff(self) -> Tariff | None:
        base = self._pricers[self.runtime.connector_ids[0]].current if self._pricers else None
        return base if isinstance(base, Tariff) else None

    def station_tz(self) -> tzinfo:
        """The station's timezone: the tariff's (UTC when none is configured), as
        :func:`agent.money.reconcile.build_report` uses it for a day's window."""
        tariff = self._tariff()
        return tariff.timezone if tariff is not None else UTC

    async def reconcile(self, day: date | None, *, correlation_id: str) -> ReconciliationReport:
        """The ``reconcile`` command: :meth:`publish_report` of ``day`` (default: today, UTC)."""
        return await self.publish_report(
            day or datetime.now(UTC).date(), trigger="command", correlation_id=correlation_id, tz=UTC
        )

    async def publish_report(
        self,
        day: date,
        *,
        trigger: Literal["daily", "command"],
        correlation_id: str | None = None,
        tz: tzinfo | None = None,
    ) -> ReconciliationReport:
        """Build ``day``'s report (journal read in a worker thread; ``tz`` ``None``: the tariff's
        timezone), append it to the outbox on ``reports/reconciliation`` (or, with no outbox
        wired, publish it directly, best effort) and return it. Raises what
        :func:`agent.money.reconcile.build_report` raises (``JournalError``)."""
        source = self.state_dir or str(self.runtime.journal.path)
        report = await asyncio.to_thread(
            build_report,
            source,
            station_id=self.station_id,
            day=day,
            tz=tz,
            tariff=self._tariff(),
            trigger=trigger,
            correlation_id=correlation_id,
        )
        payload = encode(report)
        if self.outbox is not None:
            self.outbox.append(self.topics.reconciliation, payload, kind="report", connector_id=None)
        elif self._publish is not None:
            try:
                await self._publish(self.topics.reconciliation, payload, 1)
            except (AgentError, OSError, TimeoutError) as exc:
                _LOGGER.warning("reconciliation report not published %s", kv(error=type(exc).__name__))
        return report


def next_daily_run(now: datetime, tz: tzinfo, delay: timedelta = DAILY_REPORT_DELAY) -> datetime:
    """The first local midnight + ``delay`` in ``tz`` strictly after ``now`` (timezone-aware)."""
    local = now.astimezone(tz)
    for offset in (0, 1, 2):
        due = datetime.combine(local.date() + timedelta(days=offset), time(0), tzinfo=tz) + delay
        if due > now:
            return due
    raise AssertionError("unreachable: a local midnight follows within two days")


class DailyReconciliation:
    """The ``daily-reconciliation`` task (REC-1): shortly after local midnight (``delay`` after
    00:00 in :meth:`RuntimeAdapter.station_tz`), the previous day's report with
    ``trigger="daily"`` through :meth:`RuntimeAdapter.publish_report` (the outbox).

    The wait is computed from the wall clock (``clock``, injectable with ``sleep``) and slept in
    chunks of at most ``MAX_SLEEP_S``, so a clock set after boot (NTP) or a DST change moves the
    run. Woken late by more than a day (the clock jumped forward) it skips that run instead of
    reporting a stale day. A failed report is logged (``JournalError``…) and not retried; a day
    missed while the agent was down is not caught up (``evpay-agent reconcile`` / the
    ``reconcile`` command build any day on demand).
    """

    MAX_SLEEP_S: Final = 3600.0

    def __init__(
        self,
        port: RuntimeAdapter,
        *,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        delay: timedelta = DAILY_REPORT_DELAY,
    ) -> None:
        self.port = port
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sleep = sleep
        self.delay = delay

    async def run(self) -> None:
        due = next_daily_run(self._clock(), self.port.station_tz(), self.delay)
        while True:
            now = self._clock()
            tz = self.port.station_tz()
            if now < due:  # recomputed: the same unless the clock went back or the timezone changed
                due = next_daily_run(now, tz, self.delay)
                await self._sleep(min((due - now).total_seconds(), self.MAX_SLEEP_S))
                continue
            day = (due - self.delay).astimezone(tz).date() - timedelta(days=1)
            late = now - due
            due = next_daily_run(now, tz, self.delay)
            if late > timedelta(days=1):
                _LOGGER.warning("daily reconciliation skipped: the clock jumped %s", kv(day=day.isoformat()))
                continue
            await self.report(day)

    async def report(self, day: date) -> None:
        try:
            report = await self.port.publish_report(day, trigger="daily")
        except (AgentError, OSError, ValueError) as exc:
            _LOGGER.error("daily reconciliation report failed %s", kv(day=day.isoformat(), error=str(exc)))
            return
        _LOGGER.info(
            "daily reconciliation report queued %s",
            kv(day=day.isoformat(), payments=report.totals.payments, discrepancies=len(report.discrepancies)),
        )


@dataclass(slots=True)
class Remote:
    """What :func:`wire_remote` built; :meth:`run` is the ``commands`` task."""

    port: RuntimeAdapter
    authorizer: BackendAuthorizer
    handler: CommandHandler
    upstream: UpstreamClient

    async def run(self) -> None:
        """Subscribe the command and auth-response filters (kept across reconnections by the
        client), then handle commands until cancelled. Run by the runtime's supervisor."""
        topics = self.handler.topics
        await self.upstream.subscribe(topics.command_filter, self.handler.on_message)
        await self.upstream.subscribe(topics.auth_response, self.authorizer.on_message)
        await self.handler.run()


def wire_remote(
    runtime: Runtime,
    upstream: UpstreamClient,
    config: AgentConfig,
    *,
    outbox: Outbox | None = None,
) -> Remote:
    """Build the RFID authorizer and the command handler, hook the authorizer into ``runtime``
    (``runtime.backend_authorizer``) and return the :class:`Remote` whose :meth:`Remote.run` must
    run as a named task (``commands``). Synchronous: nothing is sent before that task runs."""
    topics = Topics(config.station_id, config.upstream.prefix)
    rfid = config.rfid
    local_list = LocalAuthList.load(local_list_path(config.state_dir))
    cache = AuthCache(ttl_s=rfid.cache_ttl_s, max_entries=rfid.cache_max_entries)
    authorizer = BackendAuthorizer(
        upstream.publish_now,
        topics=topics,
        local_list=local_list,
        cache=cache,
        offline_policy=rfid.offline_policy,
        timeout_s=rfid.auth_timeout_s,
        accept_limit_minor=rfid.offline_accept_limit_minor,
        connected=lambda: upstream.is_connected,
        mqtt5=config.upstream.protocol != "3.1.1",
    )
    port = RuntimeAdapter(
        runtime,
        station_id=config.station_id,
        topics=topics,
        state_dir=config.state_dir,
        outbox=outbox,
        publish=upstream.publish_now,
    )
    publisher = getattr(runtime, "publisher", None)
    if publisher is not None:  # receipts quote the tariff that priced each session
        publisher.tariff_for = port.session_tariff
    station = runtime.station.config
    handler = CommandHandler(
        port,
        upstream.publish_now,
        topics=topics,
        capabilities=station.terminal,
        start_modes=station.start_modes,
        stop_modes=station.stop_modes,
        authorizer=authorizer,
    )

    async def backend_authorizer(connector_id: int, card: CardToken) -> BackendAuthorizationResult:
        decision = await authorizer.authorize(card, connector_id)
        return decision.to_event(connector_id, runtime.clock())

    runtime.backend_authorizer = backend_authorizer
    remote = Remote(port, authorizer, handler, upstream)
    runtime.extra_tasks[COMMANDS_TASK] = remote.run
    runtime.extra_tasks[DAILY_REPORT_TASK] = DailyReconciliation(port).run  # REC-1
    _LOGGER.info(
        "remote commands and rfid wired %s",
        kv(
            prefix=topics.prefix,
            offline_policy=rfid.offline_policy.value,
            local_list_entries=len(local_list),
        ),
    )
    return remote
