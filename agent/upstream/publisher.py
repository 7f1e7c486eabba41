"""The runtime's upstream seam (DESIGN.md §5.3, §5.5; UP-1, UP-2, ERR-6, TERM-6, RCPT-1).

:class:`Publisher` turns what the runtime sees into :mod:`agent.upstream.contract` payloads:

* :meth:`Publisher.event` — an engine ``UpstreamEvent`` → the typed session/payment event on
  ``connectors/{id}/events`` with a fresh ``msg_id``, the session's next ``seq`` and ``offline``;
* :meth:`Publisher.meter` — a journaled meter value → :class:`~agent.upstream.contract.MeterValue` on
  ``connectors/{id}/meter`` (outbox kind ``meter``: the only kind the outbox may drop);
* :meth:`Publisher.alarm` — an engine ``Alarm`` → :class:`~agent.upstream.contract.Alarm` on ``alarms``;
* :meth:`Publisher.connector_state` / :meth:`Publisher.terminal_state` — retained state through
  :meth:`agent.upstream.client.UpstreamClient.set_retained` (never the outbox: only the latest matters);
* receipts (RCPT-1): after ``session.ended`` and after a ``payment.declined`` the receipt is built
  with :mod:`agent.money.receipts` from the journal's payment row and the tariff's quote of the
  journaled usage, and appended on ``receipts``; with a QR template the link is in the receipt, and
  after ``session.ended`` the optional ``final_screen`` callback gets the Apollo final screen
  (``Runtime.show_final_screen``, wired by agent/cli/run.py on Apollo with a QR template).

Everything except retained state goes to the :class:`~agent.store.outbox.Outbox` first (fsync'd, a few
ms, inline like the journal); delivery is the drainer's business. Nothing here waits for the
broker and no method raises into the runtime: a contract, outbox or receipt error is logged (and a
full outbox raises the ``outbox_near_full`` alarm) — upstream never blocks charging or payments
(ERR-6).

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
``check_interval_s`` by :meth:`Publisher.run`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

import msgspec

from agent.logs import kv
from agent.money.receipts import ReceiptError, apollo_final_screen, build_receipt, qr_link
from agent.money.tariff import Quote
from agent.store.journal import Journal, JournalError, PaymentRow, usage_from_json
from agent.store.outbox import Kind, Outbox, OutboxError
from agent.upstream import contract
from agent.upstream.contract import (
    ConnectorState,
    ContractError,
    MeterValue,
    Receipt,
    Topics,
    encode,
    new_msg_id,
    session_event,
    utc_timestamp,
)
from statemachines.effects import Alarm, UpstreamEvent
from statemachines.pricing import Usage

__all__ = ["ConnectorSnapshot", "FinalScreen", "Publisher", "Quoter", "RetainedSink"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_OFFLINE_ALARM_AFTER_S: Final = 60.0  # agent/config/schema.py TerminalConfig.offline_alarm_after_s
CHECK_INTERVAL_S: Final = 1.0

# engine alarm names → contract names (DESIGN.md §5.3); unknown names are logged, not published
_ALARM_NAMES: Final[Mapping[str, contract.AlarmName]] = {
    "terminal_offline": "terminal_offline",
    "undisposed_payment": "undisposed_payment",
    "commit_failing": "commit_failing",
    "outbox_near_full": "outbox_near_full",
    "journal_trouble": "journal_error",
    "journal_error": "journal_error",
}
_SEVERITY: Final[Mapping[str, Literal["warning", "critical"]]] = {
    "terminal_offline": "warning",
    "outbox_near_full": "warning",
    "undisposed_payment": "critical",
    "commit_failing": "critical",
    "journal_error": "critical",
}
_ALARM_TEXT: Final[Mapping[str, str]] = {
    "terminal_offline": "payment terminal offline",
    "outbox_near_full": "upstream outbox near full: is the broker reachable?",
    "undisposed_payment": "payment not committed or voided in time",
    "commit_failing": "commit/void keeps failing",
    "journal_error": "the journal cannot be written",
}
_PSP_STATES: Final = frozenset({"offline", "online", "disabled", "enabled", "wait_card", "wait_auth"})
_LINKS: Final = frozenset({"down", "connecting", "setting_up", "ready"})
_DECLINED: Final = frozenset({"declined", "cancelled", "rejected", "blocked", "expired", "no_credit"})


class RetainedSink(Protocol):
    """What the publisher needs from :class:`agent.upstream.client.UpstreamClient`."""

    @property
    def is_connected(self) -> bool: ...

    def set_retained(self, topic: str, payload: bytes) -> None: ...


class Quoter(Protocol):
    """The tariff (:class:`agent.money.tariff.Tariff`): the itemised quote of a usage."""

    def quote(self, usage: Usage) -> Quote: ...


FinalScreen = Callable[[int, str, dict[str, str]], None]  # (connector, screen type, properties)


@dataclass(frozen=True, slots=True)
class ConnectorSnapshot:
    """One connector as the runtime sees it, for the retained ``connectors/{id}/state``."""

    connector_id: int
    state: str
    plugged: bool
    available: bool = True
    session_id: str | None = None
    terminal_session_id: str | None = None
    method: str | None = None
    energy_wh: int = 0
    power_w: int = 0
    cost_minor: int = 0
    authorized_minor: int | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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
        tariff: Quoter | None = None,
        currency: str | None = None,
        qr_url_template: str | None = None,
        final_screen: FinalScreen | None = None,
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
        self.tariff = tariff
        # per-connector tariff of the session being receipted (set by agent.port.wire_remote)
        self.tariff_for: Callable[[int], Quoter | None] | None = None
        self.currency = currency
        self.qr_url_template = qr_url_template
        self.final_screen = final_screen
        self.terminal_family = terminal_family
        self.offline_alarm_after_s = float(terminal_offline_alarm_after_s)
        self.check_interval_s = float(check_interval_s)
        self._monotonic = monotonic
        self._raised: set[str] = set()
        self._terminal_ready = False
        self._terminal_down_since = monotonic()
        self._since: dict[int, tuple[str, datetime]] = {}  # connector → (state, entered)
        self.errors = 0  # messages that could not be built or stored

    # -- the session/payment events ----------------------------------------------------------------

    def event(self, effect: UpstreamEvent) -> None:
        """An engine ``UpstreamEvent`` → the typed event, appended to the outbox (never raises)."""
        ref = str(effect.data.get("session_ref") or "")
        cid = effect.connector_id
        if not ref:
            self._error("upstream event without a session", name=effect.name, connector=cid)
            return
        stream = f"events:{ref}"
        try:
            seq = self.outbox.next_seq(stream)
            typed = session_event(
                effect.name,
                effect.data,
                msg_id=new_msg_id(),
                connector_id=cid,
                seq=seq,
                ts=utc_timestamp(self.clock()),
                offline=not self.client.is_connected,
            )
        except (ContractError, OutboxError) as exc:
            self._error("upstream event not built", name=effect.name, connector=cid, error=str(exc))
            return
        ended = effect.name == "session.ended"
        forget = (stream, f"meter:{ref}") if ended else ()
        self._append(self.topics.events(cid), encode(typed), "event", cid, seq=(stream, seq), forget=forget)
        if ended or effect.name == "payment.declined":
            self.receipt(cid, ref, effect)

    def meter(
        self,
        connector_id: int,
        session_ref: str,
        *,
        at: datetime,
        meter_wh: int,
        energy_wh: int,
        power_w: float,
        cost_minor: int | None,
    ) -> None:
        """A meter value of a session (the journaled ``meter`` record) → ``connectors/{id}/meter``."""
        stream = f"meter:{session_ref}"
        try:
            seq = self.outbox.next_seq(stream)
            value = MeterValue(
                msg_id=new_msg_id(),
                connector_id=connector_id,
                session_id=session_ref,
                seq=seq,
                ts=utc_timestamp(at),
                meter_wh=max(0, int(meter_wh)),
                energy_wh=max(0, int(energy_wh)),
                power_w=max(0, round(power_w)),
                cost_minor=cost_minor,
                offline=not self.client.is_connected,
            )
        except (OutboxError, ValueError) as exc:
            self._error("meter value not built", connector=connector_id, error=str(exc))
            return
        self._append(self.topics.meter(connector_id), encode(value), "meter", connector_id, seq=(stream, seq))

    # -- alarms ------------------------------------------------------------------------------------

    def alarm(self, effect: Alarm) -> None:
        """An engine ``Alarm`` (always a raise) → ``alarms``."""
        name = _ALARM_NAMES.get(effect.name)
        if name is None:
            _LOGGER.warning("alarm not in the upstream contract; logged only %s", kv(name=effect.name))
            return
        data = dict(effect.data)
        terminal_sid = data.pop("session_id", None)
        session_ref = data.pop("session_ref", None)
        self._alarm(
            name,
            "raised",
            connector_id=effect.connector_id,
            session_id=str(session_ref) if session_ref else None,
            terminal_session_id=str(terminal_sid) if terminal_sid else None,
            data=data,
        )

    def _alarm(
        self,
        name: contract.AlarmName,
        state: Literal["raised", "cleared"],
        *,
        connector_id: int | None = None,
        session_id: str | None = None,
        terminal_session_id: str | None = None,
        data: Mapping[str, object] | None = None,
    ) -> None:
        flat = {
            k: v if v is None or isinstance(v, str | int | bool) else str(v) for k, v in (data or {}).items()
        }
        message = _ALARM_TEXT[name] if state == "raised" else f"cleared: {_ALARM_TEXT[name]}"
        try:
            payload = contract.Alarm(
                msg_id=new_msg_id(),
                alarm=name,
                state=state,
                severity=_SEVERITY[name],
                connector_id=connector_id,
                session_id=session_id,
                terminal_session_id=terminal_session_id,
                message=message,
                data=flat,
                ts=utc_timestamp(self.clock()),
            )
        except ValueError as exc:
            self._error("alarm not built", alarm=name, error=str(exc))
            return
        _LOGGER.warning("alarm %s %s", state, kv(alarm=name, connector=connector_id))
        self._append(self.topics.alarms, encode(payload), "alarm", connector_id, check=False)

    def _set_alarm(self, name: contract.AlarmName, raised: bool, **data: object) -> None:
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
        now = self.clock()
        cid = snapshot.connector_id
        previous = self._since.get(cid)
        if previous is None or previous[0] != snapshot.state:
            self._since[cid] = (snapshot.state, now)
        since = self._since[cid][1]
        try:
            payload = msgspec.convert(
                {
                    "connector_id": cid,
                    "state": snapshot.state,
                    "plugged": snapshot.plugged,
                    "available": snapshot.available,
                    "session_id": snapshot.session_id or None,
                    "terminal_session_id": snapshot.terminal_session_id,
                    "method": snapshot.method,
                    "energy_wh": max(0, snapshot.energy_wh),
                    "power_w": max(0, snapshot.power_w),
                    "cost_minor": max(0, snapshot.cost_minor),
                    "authorized_minor": snapshot.authorized_minor,
                    "currency": self.currency,
                    "since": utc_timestamp(since),
                    "ts": utc_timestamp(now),
                },
                ConnectorState,
            )
        except msgspec.ValidationError as exc:
            self._error("connector state not built", connector=cid, error=str(exc))
            return
        self.client.set_retained(self.topics.connector_state(cid), encode(payload))

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
        now_mono = self._monotonic()
        if ready != self._terminal_ready:
            self._terminal_ready = ready
            if not ready:
                self._terminal_down_since = now_mono
        now = self.clock()
        since = now
        if since_monotonic is not None:
            since = now - timedelta(seconds=max(0.0, now_mono - since_monotonic))
        psp = (psp_state or "").lower() or None
        try:
            payload = contract.TerminalState(
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
        except ValueError as exc:
            self._error("terminal state not built", error=str(exc))
            return
        self.client.set_retained(self.topics.terminal, encode(payload))
        if ready:
            self._set_alarm("terminal_offline", False)

    # -- receipts (RCPT-1, RCPT-2) -----------------------------------------------------------------

    def receipt(self, connector_id: int, session_ref: str, effect: UpstreamEvent) -> Receipt | None:
        """Build the session's receipt from the journal and the tariff; append it on ``receipts``;
        after ``session.ended`` show the Apollo final screen through ``final_screen`` (when given;
        a declined payment keeps the engine's ``declined`` message)."""
        if self.journal is None or self.tariff is None:
            return None
        try:
            row = self.journal.payment(session_ref)
            receipt = self._build(connector_id, session_ref, effect, row)
            if self.qr_url_template:
                receipt = msgspec.structs.replace(receipt, qr_url=qr_link(receipt, self.qr_url_template))
        except (ReceiptError, JournalError, ValueError) as exc:
            self._error("receipt not built", connector=connector_id, session=session_ref, error=str(exc))
            return None
        self._append(self.topics.receipts, encode(receipt), "receipt", connector_id)
        _LOGGER.info(
            "receipt %s",
            kv(connector=connector_id, receipt_id=receipt.receipt_id, status=receipt.status,
               total_minor=receipt.total_minor),
        )  # fmt: skip
        if self.final_screen is not None and effect.name == "session.ended":
            try:
                screen, props = apollo_final_screen(receipt, receipt.qr_url)
                self.final_screen(connector_id, screen, props)
            except Exception as exc:  # a screen is cosmetic: never break the session end
                _LOGGER.info("final screen not shown %s", kv(connector=connector_id, error=str(exc)))
        return receipt

    def _build(
        self, connector_id: int, session_ref: str, effect: UpstreamEvent, row: PaymentRow | None
    ) -> Receipt:
        assert self.tariff is not None
        now = self.clock()
        usage = usage_from_json(row.usage_json if row is not None else None)
        # the tariff that priced this session (a set_tariff command may have changed the station's
        # tariff since; STOP-8: the receipt shows what was committed)
        tariff = self.tariff_for(connector_id) if self.tariff_for is not None else None
        quote = (tariff or self.tariff).quote(usage)
        data = effect.data
        method_text = (row.method if row is not None else None) or "emv"
        method: contract.PaymentMethod = (
            method_text if method_text in ("emv", "rfid", "remote", "free_vend") else "emv"  # type: ignore[assignment]
        )
        status: contract.ReceiptStatus
        captured: int | None = None
        amount: int | None = None
        decline_reason: str | None = None
        if effect.name == "payment.declined":
            outcome = str(data.get("outcome") or "declined")
            status = "declined" if outcome in _DECLINED else "failed"
            decline_reason = str(data.get("reason") or outcome)[:256]
        else:
            state = row.state if row is not None else "ended"
            if state == "committed":
                status, captured = "captured", _int(data.get("amount_minor"))
                captured = row.final_minor if row is not None and row.final_minor is not None else captured
            elif state == "voided":
                status = "voided"
            elif method in ("rfid", "remote"):
                status, amount = "account", _int(data.get("amount_minor"))
            elif method == "free_vend":
                status = "free_vend"
            else:
                status = "failed"
        started = _parse_time(row.started_at if row is not None else None) or now
        stopped = _parse_time(row.ended_at if row is not None else None) or now
        stopped = max(stopped, started)
        energy = _int(data.get("energy_wh")) or (row.energy_wh if row is not None else 0) or 0
        meter_stop = row.last_meter_wh if row is not None else None
        meter_start = meter_stop - energy if meter_stop is not None and meter_stop >= energy else None
        return build_receipt(
            receipt_id=session_ref,
            station_id=self.station_id,
            connector_id=connector_id,
            session_id=session_ref,
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
            masked_pan=row.masked_pan if row is not None and method == "emv" else None,
            brand=row.brand if row is not None else None,
            id_token=row.card_token if row is not None and method in ("rfid", "remote") else None,
            terminal_session_id=row.terminal_session_id if row is not None else None,
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
        forget: tuple[str, ...] = (),
        check: bool = True,
    ) -> None:
        try:
            self.outbox.append(topic, payload, kind=kind, connector_id=connector_id, seq=seq, forget=forget)
        except OutboxError as exc:  # OutboxFull included: logged and alarmed, charging goes on
            self._error("upstream message not stored", topic=topic, kind=kind, error=str(exc))
        if check:
            self._set_alarm("outbox_near_full", self.outbox.near_full, messages=self.outbox.count())

    def _error(self, what: str, **context: object) -> None:
        self.errors += 1
        _LOGGER.error("%s %s", what, kv(**context))
