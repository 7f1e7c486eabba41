"""The runtime side of the back-office commands (DESIGN.md §5.3): :class:`RuntimeAdapter`
implements :class:`agent.upstream.commands.RuntimePort` over a running
:class:`agent.runtime.shell.Runtime` through its public methods only; :class:`DailyReconciliation`
is the daily report task. Both are built by the composition root (:func:`agent.app.build_app`).

Everything here runs on the event loop and never waits for the terminal or the charger: engine
events go through ``Runtime.post``, screens onto the terminal actor's queue, and the only awaits
are the reconciliation report (built in a worker thread) and its outbox append, and ``set_tariff``
waiting (bounded) for the dispatcher's step that journals the tariff.

``set_tariff`` (docs/commands.md): any tariff form (a bare OCPI Tariff takes the current tariff's
timezone), validated completely before anything changes. The engine decides when it applies — at
once on a connector without a session, from the next session on a busy one (a running session keeps
its tariff, START-8; :class:`statemachines.events.TariffChanged`). The step that applies it journals
it as the station's tariff: it survives a restart unless the configured tariff changed since
(:func:`agent.runtime.recovery.station_tariff_at_start`). Receipts quote the tariff that priced each
session, also a session restored after a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Final, Literal

from agent.errors import AgentError
from agent.logs import kv
from agent.money.reconcile import build_report
from agent.money.tariff import Tariff, tariff_from_builtins, tariff_to_builtins
from agent.runtime.screens import OperatorMessage
from agent.store.journal import check_no_pan
from agent.upstream.commands import ActiveSession, NotJournaled, ScreenMessage
from agent.upstream.contract import ReconciliationReport, Topics, encode
from statemachines.events import RemoteStart, SetAvailability, StopRequest

if TYPE_CHECKING:
    from agent.runtime.shell import Runtime
    from agent.store.outbox import Outbox

__all__ = ["DailyReconciliation", "RuntimeAdapter", "next_daily_run"]

_LOGGER = logging.getLogger(__name__)

COMMANDS_TASK: Final = "commands"
DAILY_REPORT_TASK: Final = "daily-reconciliation"
DAILY_REPORT_DELAY: Final = timedelta(minutes=5)  # after local midnight: late meter values are in
# set_tariff answers once the step applying it committed; the dispatcher is stalled beyond this
TARIFF_JOURNAL_TIMEOUT_S: Final = 10.0


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

    # -- state ------------------------------------------------------------------------------------

    @property
    def connector_ids(self) -> Sequence[int]:
        return self.runtime.connector_ids

    def post(self, event: RemoteStart | StopRequest | SetAvailability) -> None:
        self.runtime.post(event)

    def connector_state(self, connector_id: int) -> str:
        return self.runtime.station.connectors[connector_id].state.value

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
            method=method,
            started_at=session.usage.started_at or machine.plugged_at or self.runtime.clock(),
            terminal_session_id=payment.session_id if payment is not None else None,
            energy_wh=session.usage.energy_wh,
            cost_minor=machine.running_cost_minor,
            authorized_minor=machine.authorized_minor,
        )

    # -- tariff -----------------------------------------------------------------------------------

    async def set_tariff(self, tariff: Mapping[str, object]) -> Tariff:
        """Validate ``tariff`` (``TariffConfigError`` with the field path; ``JournalError`` for a
        value the journal would refuse), then the engine applies it (``TariffChanged``) and the
        step journals it; returns once that step committed (``NotJournaled`` when it did not, or
        not within ``TARIFF_JOURNAL_TIMEOUT_S``)."""
        zone = self.runtime.stored_tariff.builtins.get("timezone")
        parsed = tariff_from_builtins(dict(tariff), default_timezone=zone if isinstance(zone, str) else None)
        check_no_pan("tariff", {"tariff": tariff_to_builtins(parsed)})
        done = self.runtime.set_tariff(parsed)
        try:
            async with asyncio.timeout(TARIFF_JOURNAL_TIMEOUT_S):
                committed = await asyncio.shield(done)
        except TimeoutError:
            raise NotJournaled(
                f"not journaled within {TARIFF_JOURNAL_TIMEOUT_S:g} s; it applies once the engine gets to it"
            ) from None
        if not committed:
            raise NotJournaled("applied until the next restart: the journal write failed (journal_trouble)")
        return parsed

    # -- Apollo screen ----------------------------------------------------------------------------

    def display_message(self, message: ScreenMessage) -> None:
        """Queued on the terminal actor; held for ``duration_s``, then the home screen returns."""
        self.runtime.show_operator_message(
            OperatorMessage(message.connector_id, message.title, message.message, message.duration_s)
        )

    # -- journal ----------------------------------------------------------------------------------

    def recent_payments(self, limit: int) -> Sequence[Mapping[str, object]]:
        rows = self.runtime.journal.payments(limit=limit)
        return [dataclasses.asdict(row) for row in rows[:limit]]

    def clear_orphan(self, session_id: str, *, note: str | None) -> None:
        self.runtime.clear_orphan(session_id, "cleared_by_operator", note=note)

    def station_tz(self) -> tzinfo:
        """The station's timezone: the tariff's, as :func:`agent.money.reconcile.build_report`
        uses it for a day's window."""
        return self.runtime.tariff.timezone

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
            tariff=self.runtime.tariff,
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
