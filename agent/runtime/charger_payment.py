"""The charger's payment feed (docs/ocpp21.md, docs/charger-bridge.md "payment").

The charger's own OCPP 2.1 stack reports the session to its CSMS; for the local payment terminal
use cases it needs what only the agent knows: the terminal's session id (``idToken`` of type
``DirectPayment``, ``pspRef``), the authorized amount, the running cost and the settlement. This
module derives those :class:`~drivers.charger.payloads.PaymentPayload` messages from what one
engine step stores — no new effect type, no timer: the step's upstream events and journaled meter
values say when, the journal's payment row (read in the step's own transaction) says what.

* ``authorized``: ``PublishPaymentAuthorized`` / ``PublishPaymentPartiallyApproved`` /
  ``PublishPaymentIncremented`` of an EMV payment (repeated with the new amount after an
  incremental authorization);
* ``cost``: a journaled meter value (``RecordMeter``) of such a session, at most every
  ``cost_interval_s`` of the readings' own time, and always the value that concludes a stop
  (``periodic=False``);
* ``settled``: ``PublishPaymentCaptured`` (``Settled``, the committed amount) or
  ``PublishPaymentVoided`` (``Canceled``, 0), with the receipt of the same step (id, QR link,
  VAT breakdown) and the confirmation time the journal holds.

The engine emits each of those upstream events exactly once per payment (journaled in the same
transaction, never again after a restart), so a session gets at most one ``settled`` content; the
driver may deliver that same content more than once (retained, republished after reconnects).
RFID, remote and free-vend sessions have no payment terminal: nothing is sent for them.

A ``settled`` message is journaled (event ``charger_settlement``) in the step's own transaction;
after a restart the last one of each connector is offered again, byte for byte the same content
(:meth:`PaymentFeed.last_settlements`): a kill between the commit and the publish loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Final

import msgspec

from agent.store.journal import Journal, JournalError, PaymentRow, PaymentState, usage_from_json
from agent.upstream.contract import Receipt
from drivers.charger.payloads import PaymentEvent, PaymentPayload, SettlementStatus, decimal_text, format_ts
from statemachines.effects import (
    Effect,
    PublishPaymentAuthorized,
    PublishPaymentCaptured,
    PublishPaymentIncremented,
    PublishPaymentPartiallyApproved,
    PublishPaymentVoided,
    RecordMeter,
)
from statemachines.events import PaymentMethod
from statemachines.pricing import UsageKind

__all__ = ["DEFAULT_COST_INTERVAL_S", "PaymentFeed", "card_last4"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_COST_INTERVAL_S: Final = 10.0  # running cost to the charger at most this often (reading time)

SETTLEMENT_KIND: Final = "charger_settlement"  # the journal event of a settlement message
_MAX_TRACKED: Final = 64  # session refs whose last cost time is kept
Currency = Callable[[int], tuple[str, int]]  # connector id → (ISO 4217 code, minor unit digits)


def card_last4(masked_pan: str | None) -> str | None:
    """The last four digits of a masked PAN (``476173******0119`` → ``0119``), else ``None``."""
    if not masked_pan or len(masked_pan) < 4:
        return None
    tail = masked_pan[-4:]
    return tail if tail.isascii() and tail.isdigit() else None


def _time(text: str | None, fallback: datetime) -> str:
    if text:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            return format_ts(parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC))
    return format_ts(fallback)


class PaymentFeed:
    """Builds the payment messages of one engine step (see the module docstring). Used by the
    dispatcher only, inside the step's transaction (the journal sees the step's own records)."""

    def __init__(
        self,
        journal: Journal,
        currency: Currency,
        *,
        cost_interval_s: float = DEFAULT_COST_INTERVAL_S,
    ) -> None:
        self.journal = journal
        self.currency = currency
        self.cost_interval_s = cost_interval_s
        self._last_cost: dict[str, datetime] = {}  # session ref → reading time of the last cost sent

    def messages(
        self,
        effects: Iterable[Effect],
        receipts: Mapping[str, Receipt],
        at: datetime,
    ) -> dict[int, PaymentPayload]:
        """The payment message per connector of a step's stored ``effects`` (the last one wins);
        ``receipts``: the receipts the step issued, by session ref; ``at``: the step's time."""
        wanted: dict[int, tuple[PaymentEvent, str, RecordMeter | None, int | None]] = {}
        for effect in effects:
            match effect:
                case PublishPaymentAuthorized(method=PaymentMethod.EMV) | PublishPaymentPartiallyApproved():
                    wanted[effect.connector_id] = ("authorized", effect.session_ref, None, None)
                case PublishPaymentIncremented():
                    wanted[effect.connector_id] = ("authorized", effect.session_ref, None, None)
                case RecordMeter() if self._cost_due(effect, at):
                    previous = wanted.get(effect.connector_id)
                    if previous is None or previous[0] == "cost":
                        wanted[effect.connector_id] = ("cost", effect.session_ref, effect, None)
                case PublishPaymentCaptured():
                    wanted[effect.connector_id] = ("settled", effect.session_ref, None, effect.amount_minor)
                case PublishPaymentVoided():
                    wanted[effect.connector_id] = ("settled", effect.session_ref, None, 0)
                case _:
                    pass
        out: dict[int, PaymentPayload] = {}
        for cid, (event, ref, meter, settled) in wanted.items():
            if meter is not None:
                self._last_cost.pop(ref, None)
                self._last_cost[ref] = at
                while len(self._last_cost) > _MAX_TRACKED:  # sessions without a settlement (RFID …)
                    del self._last_cost[next(iter(self._last_cost))]
            try:
                row = self.journal.payment(ref)
            except JournalError as exc:
                _LOGGER.error("charger payment: journal row not read: %s", exc)
                continue
            if row is None or row.method != PaymentMethod.EMV.value or not row.terminal_session_id:
                continue
            if event == "settled":
                self._last_cost.pop(ref, None)
            try:
                payload = self._payload(cid, event, row, meter, settled, receipts.get(ref), at)
            except Exception:  # never lose the step over a charger message
                _LOGGER.exception("charger payment not built for connector %s", cid)
                continue
            if event == "settled":  # journaled with the step: a restart offers it again, unchanged
                self.journal.note(SETTLEMENT_KIND, cid, ref, msgspec.to_builtins(payload))
            out[cid] = payload
        return out

    def last_settlements(self) -> dict[int, PaymentPayload]:
        """The last settlement journaled per connector (a restart offers it again: a kill between
        the step's commit and the publish must not lose it; the content is the one journaled)."""
        out: dict[int, PaymentPayload] = {}
        for row in self.journal.last_events_per_connector(SETTLEMENT_KIND):
            if row.connector_id is None:  # excluded by the query; narrows the type
                continue
            try:
                out[row.connector_id] = msgspec.convert(row.data, PaymentPayload)
            except msgspec.ValidationError as exc:
                _LOGGER.error("charger payment: journaled settlement %s unreadable: %s", row.id, exc)
        return out

    def _cost_due(self, record: RecordMeter, at: datetime) -> bool:
        if not record.periodic:
            return True
        last = self._last_cost.get(record.session_ref)
        return last is None or (at - last).total_seconds() >= self.cost_interval_s

    def _payload(
        self,
        cid: int,
        event: PaymentEvent,
        row: PaymentRow,
        meter: RecordMeter | None,
        settled_minor: int | None,
        receipt: Receipt | None,
        at: datetime,
    ) -> PaymentPayload:
        currency, digits = self.currency(cid)
        assert row.terminal_session_id is not None
        energy = meter.energy_wh if meter is not None else row.energy_wh
        cost = meter.cost_minor if meter is not None else row.cost_minor
        power = meter.power_w if meter is not None else None
        usage = meter.usage if meter is not None else usage_from_json(row.usage_json)
        charging_ms = usage.duration_ms(UsageKind.CHARGING)
        idle_ms = usage.duration_ms(UsageKind.SUSPENDED) + usage.duration_ms(UsageKind.IDLE)
        authorized = row.authorized_minor
        partial = (
            authorized is not None and row.requested_minor is not None and authorized < row.requested_minor
        )
        status: SettlementStatus | None = None
        settlement_time: str | None = None
        ts = format_ts(at)
        if event == "settled":
            assert settled_minor is not None
            status = "Settled" if row.state is PaymentState.COMMITTED else "Canceled"
            settlement_time = _time(row.disposal_confirmed_at, at)
            ts = settlement_time  # the content is a function of the journal alone
        return PaymentPayload(
            event=event,
            session_id=row.payment_id,
            psp_ref=row.terminal_session_id,
            currency=currency,
            minor_unit_digits=digits,
            authorized_minor=authorized,
            authorized=decimal_text(authorized, digits) if authorized is not None else None,
            partial=partial,
            card_brand=row.brand[:32] if row.brand else None,
            card_last4=card_last4(row.masked_pan),
            energy_wh=max(0, energy),
            cost_minor=max(0, cost),
            cost=decimal_text(max(0, cost), digits),
            power_w=power,
            charging_s=charging_ms // 1000,
            idle_s=idle_ms // 1000,
            status=status,
            settlement_minor=settled_minor,
            settlement_amount=decimal_text(settled_minor, digits) if settled_minor is not None else None,
            settlement_time=settlement_time,
            receipt_id=receipt.receipt_id if receipt is not None else None,
            receipt_url=receipt.qr_url if receipt is not None else None,
            net_minor=receipt.net_minor if receipt is not None else None,
            vat_minor=receipt.vat_minor if receipt is not None else None,
            vat_rate_percent=receipt.vat_rate_percent if receipt is not None else None,
            ts=ts,
        )
