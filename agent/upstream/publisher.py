"""The runtime's upstream seam (DESIGN.md §5.3, §5.5; UP-1, UP-2, ERR-6, TERM-6, RCPT-1).

:class:`Publisher` turns what the runtime sees into :mod:`agent.upstream.contract` payloads:

* :meth:`Publisher.event` — a typed engine event (:data:`statemachines.effects.UpstreamEvent`,
  one type per contract event) → the contract's event on ``connectors/{id}/events`` with a fresh
  ``msg_id``, the session's next ``seq`` and ``offline``;
* :meth:`Publisher.meter` — a journaled meter value (``RecordMeter``) →
  :class:`~agent.upstream.contract.MeterValue` on ``connectors/{id}/meter`` (outbox kind ``meter``:
  the only kind the outbox may drop);
* :meth:`Publisher.alarm` — an engine or shell alarm (:mod:`agent.upstream.alarms`) →
  :class:`~agent.upstream.contract.Alarm` on ``alarms``;
* :meth:`Publisher.connector_state` / :meth:`Publisher.terminal_state` — retained state through
  :meth:`agent.upstream.client.UpstreamClient.set_retained` (never the outbox: only the latest matters);
* :meth:`Publisher.receipt` (RCPT-1): at the engine's ``IssueReceipt`` the receipt is built with
  :mod:`agent.money.receipts` from the journal's payment row (read in the same transaction) and the
  quote of the journaled usage by the tariff that priced the session, and appended on
  ``receipts``; with a QR template the link is in the receipt. The caller shows the Apollo final
  screen from it.

Everything except retained state goes to the :class:`~agent.store.outbox.Outbox` first, inside the
transaction of the engine step the runtime has open (the step's journal records, its events and its
receipt commit together); delivery is the drainer's business. Nothing here waits for the broker.
A message that does not fit its schema is never dropped: it is published in a degraded form that
fits (:mod:`agent.upstream.degrade`) and an ERROR is logged. An outbox (database) error propagates:
the runtime rolls the whole step back and raises the ``journal_error`` alarm — a fact is never
committed without its messages. Upstream never blocks charging or payments (ERR-6).

``seq`` (UP-2): per session and per topic (``events`` and ``meter`` are two streams), from 0. The
counters live in the outbox's SQLite file (table ``outbox_seq``) and advance in the same
transaction as the append of the message that carries them, so a restart continues each session's
sequence with neither a gap nor a repeat; they are dropped when the session's ``session.ended``
is appended.

``offline``: true when the message was created while the upstream client was not connected.

Alarms (TERM-6, DESIGN.md §5.3): ``terminal_offline`` is raised when the terminal link has not been
ready for ``terminal_offline_alarm_after_s`` (counted from the last ready → not-ready change, or
from the start) and cleared when it is ready again; ``outbox_near_full`` is raised when the outbox
reaches its high-water mark and cleared below it (checked on every append and every
``check_interval_s`` by :meth:`Publisher.run`). :meth:`Publisher.active_alarms` holds the alarms
raised and not cleared, for ``evpay-agent status`` (:mod:`agent.runtime.status`), which also
shows the retained payloads as of now (:meth:`Publisher.connector_state_payload`,
:meth:`Publisher.terminal_state_payload`): one representation for MQTT and the local status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol, assert_never

import msgspec

from agent.logs import kv
from agent.money.receipts import ReceiptError, build_receipt, qr_link
from agent.money.tariff import Quote, cdr_charging_periods
from agent.store.journal import Journal, JournalError, PaymentRow, PaymentState, usage_from_json
from agent.store.outbox import Kind, Outbox, OutboxFull
from agent.upstream import contract
from agent.upstream.alarms import (
    ChargerCommandFailed,
    JournalTrouble,
    OrphanCleared,
    PossibleOrphanApproval,
    ShellAlarm,
)
from agent.upstream.contract import (
    ConnectorMachineState,
    ConnectorState,
    MeterValue,
    Receipt,
    Topics,
    encode,
    new_msg_id,
    utc_timestamp,
)
from agent.upstream.degrade import conform
from statemachines.effects import (
    IssueReceipt,
    PublishPaymentAuthorized,
    PublishPaymentCaptured,
    PublishPaymentDeclined,
    PublishPaymentIncremented,
    PublishPaymentPartiallyApproved,
    PublishPaymentVoided,
    PublishSessionEnded,
    PublishSessionStarted,
    PublishSessionUpdated,
    RaiseUndisposedPayment,
    RecordMeter,
    UpstreamEvent,
)
from statemachines.events import DeclineOutcome, PaymentMethod
from statemachines.pricing import Usage

__all__ = ["ConnectorSnapshot", "Publisher", "Quoter", "RetainedSink"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_OFFLINE_ALARM_AFTER_S: Final = 60.0  # agent/config/schema.py TerminalConfig.offline_alarm_after_s
CHECK_INTERVAL_S: Final = 1.0
MAX_ACTIVE_ALARMS: Final = 100  # active_alarms() keeps at most this many (the oldest go first)

_SEVERITY: Final[Mapping[contract.AlarmName, Literal["warning", "critical"]]] = {
    "terminal_offline": "warning",
    "outbox_near_full": "warning",
    "undisposed_payment": "critical",
    "commit_failing": "critical",
    "journal_error": "critical",
    "charger_command_failed": "critical",
    "possible_orphan_approval": "critical",
}
_ALARM_TEXT: Final[Mapping[contract.AlarmName, str]] = {
    "terminal_offline": "payment terminal offline",
    "outbox_near_full": "upstream outbox near full: is the broker reachable?",
    "undisposed_payment": "payment not committed or voided in time",
    "commit_failing": "commit/void keeps failing",
    "journal_error": "the journal cannot be written",
    "charger_command_failed": "the charger did not take an energy command",
    "possible_orphan_approval": "a card read without an outcome: the terminal may hold an approval "
    "(check the payment portal; void it there, then clear the discrepancy)",
}
_SETTLEMENT_ALARMS: Final[tuple[contract.AlarmName, ...]] = ("undisposed_payment", "commit_failing")
_ACCOUNT_METHODS: Final = frozenset({PaymentMethod.RFID, PaymentMethod.REMOTE})
_PSP_STATES: Final = frozenset({"offline", "online", "disabled", "enabled", "wait_card", "wait_auth"})
_LINKS: Final = frozenset({"down", "connecting", "setting_up", "ready"})
_DECLINED: Final = frozenset(
    {
        DeclineOutcome.DECLINED,
        DeclineOutcome.CANCELLED,
        DeclineOutcome.REJECTED,
        DeclineOutcome.BLOCKED,
        DeclineOutcome.EXPIRED,
        DeclineOutcome.NO_CREDIT,
    }
)


class RetainedSink(Protocol):
    """What the publisher needs from :class:`agent.upstream.client.UpstreamClient`."""

    @property
    def is_connected(self) -> bool: ...

    def set_retained(self, topic: str, payload: bytes) -> None: ...


class Quoter(Protocol):
    """The tariff (:class:`agent.money.tariff.Tariff`): the itemised quote of a usage."""

    def quote(self, usage: Usage) -> Quote: ...


@dataclass(frozen=True, slots=True)
class ConnectorSnapshot:
    """One connector as the runtime sees it, for the retained ``connectors/{id}/state``."""

    connector_id: int
    state: ConnectorMachineState
    plugged: bool
    available: bool = True
    session_id: str | None = None
    terminal_session_id: str | None = None
    method: PaymentMethod | None = None
    energy_wh: int = 0
    power_w: int | None = None
    cost_minor: int = 0
    authorized_minor: int | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class Publisher:
    """The runtime's upstream seam (see the module docstring). Used from the event loop only."""

    def __init__(
        self,
        outbox: Outbox,
        client: RetainedSink,
        topics: Topics,
        station_id: str,
        clock: Callable[[], datetime] = _utcnow,
        *,
        journal: Journal | None = None,
        currency: str | None = None,
        qr_url_template: str | None = None,
        terminal_family: Literal["apollo", "p6x"] | None = None,
        terminal_offline_alarm_after_s: float = DEFAULT_OFFLINE_ALARM_AFTER_S,
        check_interval_s: float = CHECK_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.topics = topics
        self.station_id = station_id
        self.clock = clock
        self.journal = journal
        self.currency = currency
        self.qr_url_template = qr_url_template
        self.terminal_family = terminal_family
        self.offline_alarm_after_s = float(terminal_offline_alarm_after_s)
        self.check_interval_s = float(check_interval_s)
        self._monotonic = monotonic
        self._raised: set[str] = set()
        self._terminal_ready = False
        self._terminal_down_since = monotonic()
        self._since: dict[int, tuple[ConnectorMachineState, datetime]] = {}  # connector → (state, entered)
        self._active: dict[tuple[str, int | None, str | None], contract.Alarm] = {}  # active_alarms()
        self.errors = 0  # messages degraded to fit the contract, or not stored

    # -- the session/payment events ----------------------------------------------------------------

    def event(self, effect: UpstreamEvent) -> None:
        """A typed engine event → the contract's event, appended to the outbox with the session's
        next ``seq``. Raises only what the outbox raises (a database error: the step rolls back)."""
        ref, cid = effect.session_ref, effect.connector_id
        stream = f"events:{ref}"
        seq = self.outbox.next_seq(stream)
        payload = self._session_event(effect, seq)
        self._append(self.topics.events(cid), self._fit(payload, cid), "event", cid, seq=(stream, seq))
        if isinstance(effect, PublishPaymentCaptured | PublishPaymentVoided):
            self._resolve(cid, ref)
        _LOGGER.info(
            "upstream_event %s",
            kv(
                name=payload.__struct_config__.tag,
                connector=cid,
                session=ref,
                seq=seq,
                offline=payload.offline,
            ),
        )

    def _session_event(self, effect: UpstreamEvent, seq: int) -> contract.SessionEvent:
        common: dict[str, Any] = {
            "msg_id": new_msg_id(),
            "connector_id": effect.connector_id,
            "session_id": effect.session_ref,
            "seq": seq,
            "ts": utc_timestamp(self.clock()),
            "offline": not self.client.is_connected,
        }
        match effect:
            case PublishSessionStarted():
                return contract.SessionStarted(**common, method=effect.method, meter_wh=effect.meter_wh)
            case PublishSessionUpdated():
                return contract.SessionUpdated(
                    **common,
                    reason=effect.reason,
                    resolution=effect.resolution,
                    terminal_session_id=effect.session_id,
                    method=effect.method,
                    plugged=effect.plugged,
                    authorized_minor=effect.authorized_minor,
                )
            case PublishSessionEnded():
                row = self.journal.payment(effect.session_ref) if self.journal is not None else None
                return contract.SessionEnded(
                    **common,
                    reason=effect.reason,
                    energy_wh=effect.energy_wh,
                    cost_minor=effect.cost_minor,
                    amount_minor=effect.amount_minor,
                    charging_periods=_charging_periods(row),
                )
            case PublishPaymentAuthorized():
                return contract.PaymentAuthorized(
                    **common,
                    method=effect.method,
                    terminal_session_id=effect.session_id,
                    authorized_minor=effect.authorized_minor,
                )
            case PublishPaymentPartiallyApproved():
                return contract.PaymentPartiallyApproved(
                    **common, terminal_session_id=effect.session_id, authorized_minor=effect.authorized_minor
                )
            case PublishPaymentDeclined():
                return contract.PaymentDeclined(**common, outcome=effect.outcome, reason=effect.reason)
            case PublishPaymentIncremented():
                return contract.PaymentIncremented(
                    **common, terminal_session_id=effect.session_id, authorized_minor=effect.authorized_minor
                )
            case PublishPaymentCaptured():
                return contract.PaymentCaptured(
                    **common, terminal_session_id=effect.session_id, amount_minor=effect.amount_minor
                )
            case PublishPaymentVoided():
                return contract.PaymentVoided(**common, terminal_session_id=effect.session_id)
            case _:
                assert_never(effect)

    def _fit(self, payload: msgspec.Struct, connector_id: int | None) -> bytes:
        """The payload's bytes; one that does not fit its schema is degraded to fit (never lost)."""
        fitted, problems = conform(payload)
        if problems:
            self._error(
                "upstream message degraded to fit the contract",
                type=type(payload).__name__,
                connector=connector_id,
                fields=",".join(problems),
            )
        return encode(fitted)

    def meter(self, record: RecordMeter, *, at: datetime) -> None:
        """A journaled meter value of a session → ``connectors/{id}/meter`` (``at``: when the
        charger reported it)."""
        stream = f"meter:{record.session_ref}"
        seq = self.outbox.next_seq(stream)
        value = MeterValue(
            msg_id=new_msg_id(),
            connector_id=record.connector_id,
            session_id=record.session_ref,
            seq=seq,
            ts=utc_timestamp(at),
            meter_wh=record.meter_wh,
            energy_wh=record.energy_wh,
            power_w=None if record.power_w is None else max(0, round(record.power_w)),
            cost_minor=record.cost_minor,
            offline=not self.client.is_connected,
        )
        cid = record.connector_id
        self._append(self.topics.meter(cid), self._fit(value, cid), "meter", cid, seq=(stream, seq))

    # -- alarms ------------------------------------------------------------------------------------

    def alarm(self, effect: RaiseUndisposedPayment | ShellAlarm) -> None:
        """An engine or shell alarm (always a raise) → ``alarms``."""
        match effect:
            case RaiseUndisposedPayment():
                self._alarm(
                    "undisposed_payment",
                    "raised",
                    connector_id=effect.connector_id,
                    session_id=effect.session_ref,
                    terminal_session_id=effect.session_id,
                    data={"disposal": effect.disposal.value, "attempts": effect.attempts},
                )
            case JournalTrouble():
                self._alarm(
                    "journal_error", "raised", connector_id=effect.connector_id, data={"error": effect.error}
                )
            case ChargerCommandFailed():
                self._alarm(
                    "charger_command_failed",
                    "raised",
                    connector_id=effect.connector_id,
                    data={"action": effect.action},
                )
            case PossibleOrphanApproval():
                self._alarm(
                    "possible_orphan_approval",
                    "raised",
                    connector_id=effect.connector_id,
                    session_id=effect.session_ref,
                    data={
                        "masked_pan": effect.masked_pan,
                        "brand": effect.brand,
                        "amount_minor": effect.amount_minor,
                        "card_read_at": effect.card_read_at,
                    },
                )
            case _:
                assert_never(effect)

    def orphan_cleared(self, cleared: OrphanCleared) -> None:
        """The ``possible_orphan_approval`` of ``cleared.session_ref`` is cleared."""
        self._alarm(
            "possible_orphan_approval",
            "cleared",
            connector_id=cleared.connector_id,
            session_id=cleared.session_ref,
            data={"resolution": cleared.resolution},
        )

    def _alarm(
        self,
        name: contract.AlarmName,
        state: Literal["raised", "cleared"],
        *,
        connector_id: int | None = None,
        session_id: str | None = None,
        terminal_session_id: str | None = None,
        data: Mapping[str, str | int | bool | None] | None = None,
    ) -> None:
        message = _ALARM_TEXT[name] if state == "raised" else f"cleared: {_ALARM_TEXT[name]}"
        payload = contract.Alarm(
            msg_id=new_msg_id(),
            alarm=name,
            state=state,
            severity=_SEVERITY[name],
            connector_id=connector_id,
            session_id=session_id,
            terminal_session_id=terminal_session_id,
            message=message,
            data=dict(data or {}),
            ts=utc_timestamp(self.clock()),
        )
        _LOGGER.warning("alarm %s %s", state, kv(alarm=name, connector=connector_id))
        self._track(payload)
        try:
            self._append(
                self.topics.alarms, self._fit(payload, connector_id), "alarm", connector_id, check=False
            )
        except OutboxFull as exc:  # an alarm may be refused by a full outbox; it is logged above
            self._error("alarm not stored", alarm=name, error=str(exc))

    def _track(self, alarm: contract.Alarm) -> None:
        """Keep the raised alarms (:meth:`active_alarms`): one per alarm, connector and session, the
        latest raise; a clearing removes it. Bounded: the oldest goes first."""
        key = (alarm.alarm, alarm.connector_id, alarm.session_id)
        self._active.pop(key, None)
        if alarm.state == "raised":
            self._active[key] = alarm
            while len(self._active) > MAX_ACTIVE_ALARMS:
                del self._active[next(iter(self._active))]

    def _resolve(self, connector_id: int, session_ref: str) -> None:
        """The payment of ``session_ref`` was captured or voided: its settlement alarms are over
        (the contract has no clearing for them)."""
        for name in _SETTLEMENT_ALARMS:
            self._active.pop((name, connector_id, session_ref), None)

    def active_alarms(self) -> list[contract.Alarm]:
        """The alarms raised since the start and not cleared (or resolved), oldest first: what a
        reader of ``alarms`` folding raised/cleared holds, plus what the outbox could not store.
        ``undisposed_payment`` / ``commit_failing`` end with the payment's capture or void;
        ``journal_error`` and ``charger_command_failed`` (never cleared by the contract) stay, the
        latest per connector, until the agent restarts."""
        return list(self._active.values())

    def _set_alarm(self, name: contract.AlarmName, raised: bool, **data: str | int | bool | None) -> None:
        """Raise/clear a level alarm once per change."""
        if raised and name not in self._raised:
            self._raised.add(name)
            self._alarm(name, "raised", data=data)
        elif not raised and name in self._raised:
            self._raised.discard(name)
            self._alarm(name, "cleared", data=data)

    def check(self) -> None:
        """Level alarms: terminal offline for too long (TERM-6), outbox near full."""
        down_s = 0.0 if self._terminal_ready else self._monotonic() - self._terminal_down_since
        if self._terminal_ready or down_s >= self.offline_alarm_after_s:
            self._set_alarm("terminal_offline", not self._terminal_ready, offline_s=int(down_s))
        self._set_alarm("outbox_near_full", self.outbox.near_full, messages=self.outbox.count())

    async def run(self) -> None:
        """The periodic :meth:`check` (a named, supervised runtime task)."""
        while True:
            self.check()
            await asyncio.sleep(self.check_interval_s)

    # -- retained state ----------------------------------------------------------------------------

    def connector_state(self, snapshot: ConnectorSnapshot) -> None:
        """Retained ``connectors/{id}/state`` (published on change and with every meter value)."""
        payload = self.connector_state_payload(snapshot)
        cid = snapshot.connector_id
        self.client.set_retained(self.topics.connector_state(cid), self._fit(payload, cid))

    def connector_state_payload(self, snapshot: ConnectorSnapshot) -> ConnectorState:
        """The ``connectors/{id}/state`` payload of ``snapshot`` as of now (``since``: when the
        connector entered its state). Also the connector part of ``evpay-agent status``."""
        now = self.clock()
        cid = snapshot.connector_id
        previous = self._since.get(cid)
        if previous is None or previous[0] != snapshot.state:
            self._since[cid] = (snapshot.state, now)
        since = self._since[cid][1]
        return ConnectorState(
            connector_id=cid,
            state=snapshot.state,
            plugged=snapshot.plugged,
            available=snapshot.available,
            session_id=snapshot.session_id or None,
            terminal_session_id=snapshot.terminal_session_id,
            method=snapshot.method,
            energy_wh=snapshot.energy_wh,
            power_w=snapshot.power_w,
            cost_minor=snapshot.cost_minor,
            authorized_minor=snapshot.authorized_minor,
            currency=self.currency,
            since=utc_timestamp(since),
            ts=utc_timestamp(now),
        )

    def terminal_state(
        self,
        link: str,
        *,
        ready: bool,
        since_monotonic: float | None = None,
        psp_state: str | None = None,
        last_error: str | None = None,
        model: str | None = None,
        serial: str | None = None,
        software_version: str | None = None,
    ) -> None:
        """Retained ``terminal`` (TERM-6) and the terminal-offline alarm timing."""
        if ready != self._terminal_ready:
            self._terminal_ready = ready
            if not ready:
                self._terminal_down_since = self._monotonic()
        try:
            payload = self.terminal_state_payload(
                link,
                since_monotonic=since_monotonic,
                psp_state=psp_state,
                last_error=last_error,
                model=model,
                serial=serial,
                software_version=software_version,
            )
        except ValueError as exc:
            self._error("terminal state not built", error=str(exc))
            return
        self.client.set_retained(self.topics.terminal, encode(payload))
        if ready:
            self._set_alarm("terminal_offline", False)

    def terminal_state_payload(
        self,
        link: str,
        *,
        since_monotonic: float | None = None,
        psp_state: str | None = None,
        last_error: str | None = None,
        model: str | None = None,
        serial: str | None = None,
        software_version: str | None = None,
    ) -> contract.TerminalState:
        """The ``terminal`` payload as of now (``since_monotonic``: when ``link`` last changed, on
        this publisher's monotonic clock). Also the terminal part of ``evpay-agent status``.
        Raises ``ValueError`` when the clock is not timezone-aware."""
        now_mono = self._monotonic()
        now = self.clock()
        since = now
        if since_monotonic is not None:
            since = now - timedelta(seconds=max(0.0, now_mono - since_monotonic))
        psp = (psp_state or "").lower() or None
        return contract.TerminalState(
            link=link if link in _LINKS else "down",  # type: ignore[arg-type]
            psp_state=psp if psp in _PSP_STATES else None,  # type: ignore[arg-type]
            family=self.terminal_family,
            model=model,
            serial=serial,
            software_version=software_version,
            since=utc_timestamp(since),
            last_error=(last_error or None) and last_error[:256],
            ts=utc_timestamp(now),
        )

    # -- receipts (RCPT-1, RCPT-2) -----------------------------------------------------------------

    def receipt(self, effect: IssueReceipt, tariff: Quoter) -> Receipt | None:
        """Build the receipt of ``effect``'s payment/session from the journal (the current
        transaction sees the step's own records) and ``tariff``, the tariff that priced it (a
        ``set_tariff`` may have changed the station's since; STOP-8: the receipt shows what was
        committed); append it on ``receipts`` and return it (the caller shows the Apollo final
        screen). Without a journal: ``None``."""
        if self.journal is None:
            return None
        cid, ref = effect.connector_id, effect.session_ref
        try:
            row = self.journal.payment(ref)
            receipt = self._build(effect, row, tariff)
            receipt = msgspec.structs.replace(receipt, charging_periods=_charging_periods(row))
            if self.qr_url_template:
                receipt = msgspec.structs.replace(receipt, qr_url=qr_link(receipt, self.qr_url_template))
        except (ReceiptError, JournalError, ValueError) as exc:
            self._error("receipt not built", connector=cid, session=ref, error=str(exc))
            return None
        self._append(self.topics.receipts, self._fit(receipt, cid), "receipt", cid)
        self.outbox.forget_seq(f"events:{ref}", f"meter:{ref}")  # the session's streams are over
        _LOGGER.info(
            "receipt %s",
            kv(connector=cid, receipt_id=receipt.receipt_id, status=receipt.status,
               total_minor=receipt.total_minor),
        )  # fmt: skip
        return receipt

    def _build(self, effect: IssueReceipt, row: PaymentRow | None, tariff: Quoter) -> Receipt:
        now = self.clock()
        usage = usage_from_json(row.usage_json if row is not None else None)
        quote = tariff.quote(usage)
        method = PaymentMethod(row.method) if row is not None and row.method else PaymentMethod.EMV
        status: contract.ReceiptStatus
        captured: int | None = None
        amount: int | None = None
        decline_reason: str | None = None
        if effect.declined is not None:
            status = "declined" if effect.declined in _DECLINED else "failed"
            decline_reason = (effect.decline_reason or effect.declined.value)[:256]
        else:
            state = row.state if row is not None else PaymentState.ENDED
            if state is PaymentState.COMMITTED:
                status = "captured"
                captured = (
                    row.final_minor
                    if row is not None and row.final_minor is not None
                    else effect.amount_minor
                )
            elif state is PaymentState.VOIDED:
                status = "voided"
            elif method in _ACCOUNT_METHODS:
                status, amount = "account", effect.amount_minor
            elif method is PaymentMethod.FREE_VEND:
                status = "free_vend"
            else:
                status = "failed"
        started = _parse_time(row.started_at if row is not None else None) or now
        stopped = _parse_time(row.ended_at if row is not None else None) or now
        stopped = max(stopped, started)
        energy = row.energy_wh if row is not None else 0
        meter_stop = row.last_meter_wh if row is not None else None
        meter_start = meter_stop - energy if meter_stop is not None and meter_stop >= energy else None
        return build_receipt(
            receipt_id=effect.session_ref,
            station_id=self.station_id,
            connector_id=effect.connector_id,
            session_id=effect.session_ref,
            status=status,
            method=method,
            quote=quote,
            issued_at=now,
            started_at=started,
            stopped_at=stopped,
            meter_start_wh=meter_start,
            meter_stop_wh=meter_stop if meter_start is not None else None,
            energy_wh=energy,
            amount_minor=amount,
            authorized_minor=row.authorized_minor if row is not None else None,
            captured_minor=captured,
            masked_pan=row.masked_pan if row is not None and method is PaymentMethod.EMV else None,
            brand=row.brand if row is not None else None,
            id_token=row.card_token
            if row is not None and method in (PaymentMethod.RFID, PaymentMethod.REMOTE)
            else None,
            terminal_session_id=row.terminal_session_id if row is not None else None,
            host_reference=row.host_reference if row is not None else None,
            decline_reason=decline_reason,
        )

    # -- outbox ------------------------------------------------------------------------------------

    def _append(
        self,
        topic: str,
        payload: bytes,
        kind: Kind,
        connector_id: int | None,
        *,
        seq: tuple[str, int] | None = None,
        check: bool = True,
    ) -> None:
        """Append one row (in the current transaction). A database error propagates (the step
        rolls back); ``OutboxFull`` can only refuse a report or an alarm (outbox docstring)."""
        self.outbox.append(topic, payload, kind=kind, connector_id=connector_id, seq=seq)
        if check:
            self.outbox.store.after_commit(
                lambda: self._set_alarm(
                    "outbox_near_full", self.outbox.near_full, messages=self.outbox.count()
                )
            )

    def _error(self, what: str, **context: object) -> None:
        self.errors += 1
        _LOGGER.error("%s %s", what, kv(**context))


def _charging_periods(row: PaymentRow | None) -> tuple[contract.ChargingPeriod, ...]:
    """The session's usage (journaled with the step that ends it) in the OCPI CDR shape."""
    usage = usage_from_json(row.usage_json if row is not None else None)
    return tuple(msgspec.convert(p, contract.ChargingPeriod) for p in cdr_charging_periods(usage))
