"""Back-office commands (UP-3, START-4, STOP-5; DESIGN.md §5.3; docs/commands.md).

``…/cmd/{name}`` → ``…/cmd/{name}/result``. :class:`CommandHandler` decodes every command with
:func:`agent.upstream.contract.decode_command`, checks it against the station (connectors, start/stop modes,
terminal family, connector state, active session) and acts through a narrow :class:`RuntimePort`
that the runtime implements. Every command — malformed, oversized, unknown, wrongly targeted —
gets exactly one :class:`~agent.upstream.contract.CommandResult`; a refused command changes nothing.

Result status (see :class:`~agent.upstream.contract.CommandResult`):

``accepted``
    the agent acts on it (engine events are queued; the session outcome follows on ``events``);
``error``
    the command can never succeed as sent: malformed (``decode_command`` codes), a connector that
    does not exist (``invalid_value``), or a feature this station does not have
    (``not_supported``: remote start/stop not among the configured modes, ``display_message`` on
    P6X, ``reconcile`` not wired);
``rejected``
    well-formed but refused in the current state (``conflict``): connector busy or unavailable, no
    session or another session on the connector, a local auth list version that does not increase.

Results go to ``…/cmd/{name}/result`` and, with MQTT 5 when the request carried a response topic,
also to that topic with the request's correlation data. A response topic with wildcards or inside
this station's command tree is not used (the result topic still gets the result).

Never blocking: :meth:`CommandHandler.on_message` is synchronous (for
:meth:`agent.upstream.client.UpstreamClient.subscribe`) and only queues (bounded; when full the command is
dropped and counted — the back office times out and retries). :meth:`CommandHandler.run` (one named
task) handles the queue one command at a time; a handler step never awaits the terminal or the
charger: it posts engine events and returns. The only awaits are the local auth list file write (in
a worker thread), ``reconcile`` (bounded by ``reconcile_timeout_s``), ``set_tariff`` (until the
engine step applying the tariff has journaled it, bounded: ``accepted`` means it survives a
restart) and the result publishes.

QoS 1 redelivery: the results of the last ``DEDUP_SIZE`` commands are kept by (name,
``correlation_id``); a repeated command is answered with the same result and not executed again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Final, Protocol, runtime_checkable

import msgspec

from agent.errors import AgentError
from agent.logs import kv
from agent.money.tariff import Tariff, TariffConfigError, tariff_fingerprint
from agent.upstream.contract import (
    DEFAULT_MAX_COMMAND_BYTES,
    ClearDiscrepancy,
    Command,
    CommandError,
    CommandErrorCode,
    CommandResult,
    DisplayMessage,
    GetSessions,
    Reconcile,
    ReconciliationReport,
    SessionSummary,
    SetLocalAuthList,
    SetTariff,
    Start,
    Stop,
    Topics,
    decode_command,
    encode,
    tariff_error,
    utc_timestamp,
)
from agent.upstream.contract import SetAvailability as SetAvailabilityCommand
from agent.upstream.rfid import BackendAuthorizer, LocalAuthListConflict, LocalAuthListError, Publish
from drivers.terminal import mask_token
from statemachines.config import StartMode, StopMode, TerminalCapabilities
from statemachines.events import RemoteStart, SetAvailability, StopRequest, StopSource

__all__ = [
    "DEDUP_SIZE",
    "REMOTE_START_STATES",
    "ActiveSession",
    "CommandHandler",
    "CommandStats",
    "NotJournaled",
    "RuntimePort",
    "ScreenMessage",
]

_LOGGER = logging.getLogger(__name__)

DEDUP_SIZE: Final = 256
DEFAULT_QUEUE_SIZE: Final = 64
DEFAULT_RECONCILE_TIMEOUT_S: Final = 30.0
REMOTE_START_STATES: Final = frozenset({"available", "awaiting_card"})  # the engine's FREE_STATES
STOPPING_STATES: Final = frozenset({"stopping", "settling", "finishing"})
_SANE_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# --------------------------------------------------------------------------------------------------
# The port the runtime implements
# --------------------------------------------------------------------------------------------------


class NotJournaled(AgentError):
    """``set_tariff``: the engine was handed the tariff, but the step applying it did not commit
    (or not in time): it may not survive a restart (answered ``error``/``internal``)."""


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """The session currently on a connector, as the runtime sees it."""

    session_id: str  # the engine's session_ref
    connector_id: int
    method: str  # emv | rfid | remote | free_vend
    started_at: datetime
    terminal_session_id: str | None = None
    energy_wh: int = 0
    cost_minor: int = 0
    authorized_minor: int | None = None


@dataclass(frozen=True, slots=True)
class ScreenMessage:
    """``display_message`` for the Apollo screen (``connector_id`` None: the station screen)."""

    connector_id: int | None
    title: str
    message: str
    duration_s: int


@runtime_checkable
class RuntimePort(Protocol):
    """What :class:`CommandHandler` needs from the runtime. Every method is synchronous and quick
    (no terminal or charger I/O) except :meth:`reconcile`."""

    @property
    def connector_ids(self) -> Sequence[int]:
        """The configured connectors."""
        ...

    def post(self, event: RemoteStart | StopRequest | SetAvailability) -> None:
        """Queue an engine event (``Runtime.post``)."""
        ...

    def connector_state(self, connector_id: int) -> str:
        """The connector machine's state (``unavailable``, ``available``, ``charging``, …)."""
        ...

    def active_session(self, connector_id: int) -> ActiveSession | None:
        """The connector's session (authorized, charging, stopping, idle fee…), else ``None``."""
        ...

    async def set_tariff(self, tariff: Mapping[str, object]) -> Tariff:
        """Price sessions that start from now on with ``tariff`` (any form of
        :func:`agent.money.tariff.tariff_from_builtins`, a bare OCPI Tariff in the current tariff's
        timezone) and keep it across restarts; running sessions keep their tariff. Returns the new
        tariff once it is journaled. Raises ``TariffConfigError`` (with the field path) or another
        ``AgentError`` / ``ValueError`` to refuse, having changed nothing; :class:`NotJournaled`
        when it was handed to the engine but is not (yet) journaled."""
        ...

    def display_message(self, message: ScreenMessage) -> None:
        """Queue a screen on the Apollo terminal (the terminal actor shows it; never awaited)."""
        ...

    def recent_payments(self, limit: int) -> Sequence[Mapping[str, object]]:
        """The journal's newest payments (``dataclasses.asdict(PaymentRow)``), at most ``limit``."""
        ...

    async def reconcile(self, day: date | None, *, correlation_id: str) -> ReconciliationReport:
        """Build the report of ``day`` (UTC; None = today) and queue it upstream (outbox,
        ``trigger="command"``); return it. Raises ``NotImplementedError`` while not wired."""
        ...

    def clear_orphan(self, session_id: str, *, note: str | None) -> None:
        """An operator cleared the possible orphan approval of ``session_id``. Raises ``KeyError``
        (unknown session) or ``ValueError`` (not an open possible orphan approval)."""
        ...


# --------------------------------------------------------------------------------------------------
# The handler
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class CommandStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: int = 0
    duplicates: int = 0
    dropped: int = 0  # queue full
    publish_failures: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, status: str, code: CommandErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


def _error(code: CommandErrorCode, reason: str) -> _Refused:
    return _Refused("error", code, reason)


def _conflict(reason: str) -> _Refused:
    return _Refused("rejected", CommandErrorCode.CONFLICT, reason)


@dataclass(frozen=True, slots=True)
class _Queued:
    name: str
    payload: bytes
    retain: bool
    response_topic: str | None
    correlation_data: bytes | None


class _Inbound(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def retain(self) -> bool: ...
    @property
    def response_topic(self) -> str | None: ...
    @property
    def correlation_data(self) -> bytes | None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CommandHandler:
    """Answers ``…/cmd/{name}`` (see the module docstring).

    Wiring: ``await upstream.subscribe(topics.command_filter, handler.on_message)`` and run
    :meth:`run` as a named, supervised task; ``publish_result`` is ``upstream.publish_now``.
    """

    def __init__(
        self,
        port: RuntimePort,
        publish_result: Publish,
        *,
        topics: Topics,
        capabilities: TerminalCapabilities,
        start_modes: frozenset[StartMode],
        stop_modes: frozenset[StopMode],
        authorizer: BackendAuthorizer,
        clock: Callable[[], datetime] = _utcnow,
        max_bytes: int = DEFAULT_MAX_COMMAND_BYTES,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        reconcile_timeout_s: float = DEFAULT_RECONCILE_TIMEOUT_S,
    ) -> None:
        self.port = port
        self._publish = publish_result
        self.topics = topics
        self.capabilities = capabilities
        self.start_modes = frozenset(start_modes)
        self.stop_modes = frozenset(stop_modes)
        self.authorizer = authorizer
        self._clock = clock
        self.max_bytes = max_bytes
        self.reconcile_timeout_s = reconcile_timeout_s
        self.queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=queue_size)
        self._recent: OrderedDict[tuple[str, str], CommandResult] = OrderedDict()
        self.stats = CommandStats()

    # -- inbound ----------------------------------------------------------------------------------

    def on_message(self, message: _Inbound) -> None:
        """Synchronous subscription handler: queue the command (never blocks, never raises)."""
        name = self.topics.command_name(message.topic)
        if name is None:
            return
        item = _Queued(
            name,
            bytes(message.payload),
            bool(message.retain),
            message.response_topic,
            message.correlation_data,
        )
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            _LOGGER.warning("command queue full; command dropped %s", kv(command=name[:64]))

    async def run(self) -> None:
        """Handle queued commands one at a time, until cancelled."""
        while True:
            item = await self.queue.get()
            try:
                await self.handle(
                    item.name,
                    item.payload,
                    response_topic=item.response_topic,
                    correlation_data=item.correlation_data,
                    retain=item.retain,
                )
            finally:
                self.queue.task_done()

    # -- one command ------------------------------------------------------------------------------

    async def handle(
        self,
        name: str,
        payload: bytes,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        retain: bool = False,
    ) -> CommandResult:
        """Decide, act, publish the result (best effort) and return it. Never raises (but
        ``CancelledError``)."""
        self.stats.received += 1
        result = await self._decide(name, payload, correlation_data, retain)
        self._count(result)
        _LOGGER.info(
            "command %s",
            kv(
                command=name[:64],
                correlation_id=(result.correlation_id or "")[:64] or None,
                status=result.status,
                code=result.code.value if result.code else None,
                reason=result.reason,
            ),
        )
        await self._send(name, result, response_topic, correlation_data)
        return result

    async def _decide(
        self, name: str, payload: bytes, correlation_data: bytes | None, retain: bool
    ) -> CommandResult:
        ts = utc_timestamp(self._clock())
        correlation_text = _correlation_text(correlation_data)
        try:
            command = _decode(name, payload, self.max_bytes, correlation_text, retain)
        except CommandError as exc:
            return exc.result(name, ts)
        key = (command.name, command.correlation_id)
        if (previous := self._recent.get(key)) is not None:
            self.stats.duplicates += 1
            return previous
        try:
            result = await self._execute(command, ts)
        except _Refused as refused:
            result = self._result(command, ts, refused.status, refused.code, refused.reason)
        except Exception as exc:  # a bug or a port failure: answer, never crash the agent
            _LOGGER.exception("command failed %s", kv(command=command.name, error=type(exc).__name__))
            result = self._result(
                command, ts, "error", CommandErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"
            )
        self._recent[key] = result
        while len(self._recent) > DEDUP_SIZE:
            self._recent.popitem(last=False)
        return result

    @staticmethod
    def _result(
        command: Command,
        ts: str,
        status: str,
        code: CommandErrorCode | None = None,
        reason: str | None = None,
        **extra: object,
    ) -> CommandResult:
        fields: dict[str, object] = {
            "correlation_id": command.correlation_id,
            "command": command.name,
            "status": status,
            "code": code,
            "reason": reason[:256] if reason else None,
            "ts": ts,
            **extra,
        }
        return msgspec.convert(fields, CommandResult)

    async def _execute(self, command: Command, ts: str) -> CommandResult:
        match command:
            case Start():
                return self._start(command, ts)
            case Stop():
                return self._stop(command, ts)
            case SetAvailabilityCommand():
                return self._set_availability(command, ts)
            case SetTariff():
                return await self._set_tariff(command, ts)
            case SetLocalAuthList():
                return await self._set_local_auth_list(command, ts)
            case DisplayMessage():
                return self._display_message(command, ts)
            case Reconcile():
                return await self._reconcile(command, ts)
            case ClearDiscrepancy():
                return self._clear_discrepancy(command, ts)
            case GetSessions():
                return self._get_sessions(command, ts)
        raise _error(CommandErrorCode.UNKNOWN_COMMAND, f"no handler for {command.name}")  # pragma: no cover

    # -- commands ---------------------------------------------------------------------------------

    def _known(self, connector_id: int) -> None:
        ids = tuple(self.port.connector_ids)
        if connector_id not in ids:
            known = ", ".join(map(str, ids))
            raise _error(
                CommandErrorCode.INVALID_VALUE, f"connector {connector_id} is not configured ({known})"
            )

    def _start(self, command: Start, ts: str) -> CommandResult:
        cid = command.connector_id
        self._known(cid)
        if StartMode.REMOTE not in self.start_modes:
            raise _error(CommandErrorCode.NOT_SUPPORTED, "remote start is not enabled (session.start_modes)")
        if command.limit_minor == 0:
            raise _error(
                CommandErrorCode.INVALID_VALUE, "limit_minor: 0 allows nothing; use null for no limit"
            )
        state = self.port.connector_state(cid)
        if (session := self.port.active_session(cid)) is not None:
            raise _conflict(f"connector {cid} is busy (session {session.session_id}, {state})")
        if state not in REMOTE_START_STATES:
            raise _conflict(f"connector {cid} is {state}, not available")
        self.port.post(RemoteStart(cid, self._clock(), command.id_token, command.limit_minor))
        _LOGGER.info(
            "remote start queued %s",
            kv(connector=cid, token=mask_token(command.id_token), limit_minor=command.limit_minor),
        )
        return self._result(command, ts, "accepted", data={"connector_id": cid})

    def _stop(self, command: Stop, ts: str) -> CommandResult:
        cid = command.connector_id
        self._known(cid)
        if StopMode.REMOTE not in self.stop_modes:
            raise _error(CommandErrorCode.NOT_SUPPORTED, "remote stop is not enabled (session.stop_modes)")
        session = self.port.active_session(cid)
        if session is None:
            raise _conflict(f"no active session on connector {cid}")
        if command.session_id is not None and command.session_id != session.session_id:
            raise _conflict(f"session {command.session_id} is not the session on connector {cid}")
        state = self.port.connector_state(cid)
        if state in STOPPING_STATES:
            raise _conflict(f"session {session.session_id} is already {state}")
        self.port.post(StopRequest(cid, self._clock(), StopSource.REMOTE))
        return self._result(
            command, ts, "accepted", data={"connector_id": cid, "session_id": session.session_id}
        )

    def _set_availability(self, command: SetAvailabilityCommand, ts: str) -> CommandResult:
        if command.connector_id is None:
            targets = tuple(self.port.connector_ids)
        else:
            self._known(command.connector_id)
            targets = (command.connector_id,)
        busy = [cid for cid in targets if self.port.active_session(cid) is not None]
        at = self._clock()
        for cid in targets:
            self.port.post(SetAvailability(cid, at, command.available))
        data: dict[str, object] = {"connectors": ",".join(map(str, targets))}
        if busy and not command.available:
            # a running session is not stopped; the connector becomes unavailable when it ends
            data["pending"] = ",".join(map(str, busy))
        return self._result(command, ts, "accepted", data=data)

    async def _set_tariff(self, command: SetTariff, ts: str) -> CommandResult:
        try:
            tariff = await self.port.set_tariff(command.tariff)
        except TariffConfigError as exc:
            refused = tariff_error(exc)
            raise _error(refused.code, refused.reason) from None
        except NotJournaled as exc:
            raise _error(CommandErrorCode.INTERNAL, f"tariff: {exc}"[:200]) from None
        except (ValueError, AgentError, ArithmeticError) as exc:
            raise _error(CommandErrorCode.INVALID_VALUE, f"tariff: {exc}"[:200]) from None
        data = {"currency": tariff.currency, "fingerprint": tariff_fingerprint(tariff)}
        return self._result(command, ts, "accepted", data=data)

    async def _set_local_auth_list(self, command: SetLocalAuthList, ts: str) -> CommandResult:
        local_list = self.authorizer.local_list
        try:
            await local_list.apply(command, now=self._clock())
        except LocalAuthListConflict as exc:
            raise _conflict(str(exc)) from None
        except LocalAuthListError as exc:
            raise _error(CommandErrorCode.INTERNAL, str(exc)[:200]) from None
        return self._result(
            command, ts, "accepted", data={"version": command.version, "entries": len(local_list)}
        )

    def _display_message(self, command: DisplayMessage, ts: str) -> CommandResult:
        if not self.capabilities.supports_ui:
            raise _error(
                CommandErrorCode.NOT_SUPPORTED,
                f"display_message needs an Apollo terminal (this is {self.capabilities.family})",
            )
        if command.connector_id is not None:
            self._known(command.connector_id)
        self.port.display_message(
            ScreenMessage(command.connector_id, command.title, command.message, command.duration_s)
        )
        return self._result(command, ts, "accepted")

    async def _reconcile(self, command: Reconcile, ts: str) -> CommandResult:
        day: date | None = None
        if command.date is not None:
            try:
                day = date.fromisoformat(command.date)
            except ValueError:
                raise _error(CommandErrorCode.INVALID_VALUE, f"date: {command.date} is not a date") from None
            if day > self._clock().astimezone(UTC).date():
                raise _error(CommandErrorCode.INVALID_VALUE, f"date: {command.date} is in the future")
        try:
            async with asyncio.timeout(self.reconcile_timeout_s):
                report = await self.port.reconcile(day, correlation_id=command.correlation_id)
        except NotImplementedError:
            raise _error(CommandErrorCode.NOT_SUPPORTED, "reconciliation is not available") from None
        except TimeoutError:
            raise _error(
                CommandErrorCode.INTERNAL, f"reconciliation took longer than {self.reconcile_timeout_s:g} s"
            ) from None
        return self._result(
            command,
            ts,
            "accepted",
            data={
                "report_id": report.report_id,
                "date": report.date,
                "payments": report.totals.payments,
                "discrepancies": len(report.discrepancies),
            },
        )

    def _clear_discrepancy(self, command: ClearDiscrepancy, ts: str) -> CommandResult:
        """ERR-5 / REC-1: the operator has checked a possible orphan approval (docs/commands.md)."""
        try:
            self.port.clear_orphan(command.session_id, note=command.note)
        except KeyError:
            raise _error(
                CommandErrorCode.INVALID_VALUE, f"session_id: {command.session_id} is unknown"
            ) from None
        except ValueError as exc:
            raise _conflict(str(exc)[:200]) from None
        return self._result(
            command, ts, "accepted", data={"session_id": command.session_id, "kind": command.kind}
        )

    def _get_sessions(self, command: GetSessions, ts: str) -> CommandResult:
        sessions: list[SessionSummary] = []
        skipped = 0
        if command.scope == "open":
            for cid in self.port.connector_ids:
                active = self.port.active_session(cid)
                if active is None:
                    continue
                summary = _summary_of_active(active, self.port.connector_state(cid))
                if summary is None:
                    skipped += 1
                else:
                    sessions.append(summary)
        else:
            for row in self.port.recent_payments(command.limit)[: command.limit]:
                summary = _summary_of_row(row, self.port)
                if summary is None:
                    skipped += 1
                else:
                    sessions.append(summary)
        return self._result(
            command,
            ts,
            "accepted",
            sessions=tuple(sessions[: command.limit]),
            data={"count": len(sessions[: command.limit]), "skipped": skipped},
        )

    # -- results ----------------------------------------------------------------------------------

    def _count(self, result: CommandResult) -> None:
        if result.status == "accepted":
            self.stats.accepted += 1
        elif result.status == "rejected":
            self.stats.rejected += 1
        else:
            self.stats.errors += 1
        if result.code is not None:
            self.stats.by_code[result.code.value] = self.stats.by_code.get(result.code.value, 0) + 1

    async def _send(
        self, name: str, result: CommandResult, response_topic: str | None, correlation_data: bytes | None
    ) -> None:
        payload = encode(result)
        targets: list[tuple[str, bytes | None]] = []
        if _SANE_NAME.match(name):
            targets.append((self.topics.command_result(name), None))
        if response_topic and self._usable_response_topic(response_topic):
            targets.append((response_topic, correlation_data))
        for topic, correlation in targets:
            try:
                await self._publish(topic, payload, 1, correlation_data=correlation)
            except (AgentError, OSError, TimeoutError) as exc:
                self.stats.publish_failures += 1
                _LOGGER.warning(
                    "command result not published %s", kv(command=name[:64], error=type(exc).__name__)
                )

    def _usable_response_topic(self, topic: str) -> bool:
        """Not a filter, not inside this station's own tree (no publishing into our own commands
        or auth responses); the result topic gets the result anyway."""
        if len(topic) > 1024 or any(ch in topic for ch in "+#\x00"):
            return False
        return not topic.startswith(self.topics.prefix + "/")


def _correlation_text(data: bytes | None) -> str | None:
    if not data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if 1 <= len(text) <= 128 else None


def _decode(name: str, payload: bytes, max_bytes: int, correlation: str | None, retain: bool) -> Command:
    command = decode_command(name, payload, max_bytes=max_bytes, correlation_data=correlation)
    if retain:
        # a retained command would be replayed at every reconnection (e.g. a start per reconnect)
        raise CommandError(
            CommandErrorCode.INVALID_VALUE,
            "retained commands are refused; publish commands with retain=false",
            correlation_id=command.correlation_id,
        )
    return command


def _ts(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return utc_timestamp(moment)


def _summary_of_active(active: ActiveSession, state: str) -> SessionSummary | None:
    fields = {
        "session_id": active.session_id,
        "connector_id": active.connector_id,
        "state": state,
        "method": active.method,
        "terminal_session_id": active.terminal_session_id,
        "started_at": _ts(active.started_at),
        "energy_wh": active.energy_wh,
        "cost_minor": active.cost_minor,
        "authorized_minor": active.authorized_minor,
    }
    try:
        return msgspec.convert(fields, SessionSummary)
    except msgspec.ValidationError:
        _LOGGER.warning("session not listable %s", kv(session=active.session_id, state=state))
        return None


def _summary_of_row(row: Mapping[str, object], port: RuntimePort) -> SessionSummary | None:
    ended = row.get("ended_at") is not None
    connector_id = row.get("connector_id")
    state: object = "ended"
    if not ended and isinstance(connector_id, int):
        active = port.active_session(connector_id)
        if active is not None and active.session_id == row.get("payment_id"):
            state = port.connector_state(connector_id)
        else:  # an open payment without a live session: being authorized or settled
            state = "authorizing" if row.get("state") == "authorizing" else "settling"
    terminal_session_id = row.get("terminal_session_id")
    fields = {
        "session_id": row.get("payment_id"),
        "connector_id": connector_id,
        "state": state,
        "method": row.get("method"),
        "terminal_session_id": None if terminal_session_id is None else str(terminal_session_id),
        "started_at": _ts(row.get("started_at")),
        "ended_at": _ts(row.get("ended_at")),
        "energy_wh": row.get("energy_wh") or 0,
        "cost_minor": row.get("final_minor")
        if row.get("final_minor") is not None
        else row.get("cost_minor") or 0,
        "authorized_minor": row.get("authorized_minor"),
    }
    try:
        return msgspec.convert(fields, SessionSummary)
    except msgspec.ValidationError:
        _LOGGER.warning("payment not listable %s", kv(payment=str(row.get("payment_id"))[:64]))
        return None
