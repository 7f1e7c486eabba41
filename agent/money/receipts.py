"""Receipts (DESIGN.md §5.5; RCPT-1, RCPT-2; payter-ev-guide §6.1). Pure: no I/O, no clock.

Payter terminals make no receipts; the agent builds one per finished session, paid or not, from
the terminal's payment data, the meter values and the tariff :class:`~agent.money.tariff.Quote`:

* :func:`build_receipt` → :class:`agent.upstream.contract.Receipt` (the JSON document sent upstream);
* :func:`render_text` → fixed-width plain text for charger displays and printers;
* :func:`qr_link` → the dynamic receipt URL from ``receipts.qr_url_template``;
* :func:`apollo_final_screen` → the Apollo UI Request (psp-reference §5.21) showing the amount and
  the link.

What is charged (``status``):

==============  ==============================================  ==========================
status          when                                            lines / ``total_minor``
==============  ==============================================  ==========================
``captured``    EMV, Commit confirmed                           quote lines; = captured
``account``     RFID or remote start, billed by the back office  quote lines; = amount owed
``voided``      EMV, Void confirmed (nothing delivered)         none; 0
``declined``    card declined / token rejected                  none; 0
``failed``      authorization failed (no answer, offline)       none; 0
``free_vend``   energy without a payment (terminal offline)     none; 0
==============  ==============================================  ==========================

When the amount charged is below the tariff price (the session hit its authorized cap, AMT-2) a
``cap_adjustment`` line with the (negative) difference is added, split into net and VAT like the
tariff's adjustment lines, so the lines always add up to ``total_minor`` (STOP-8).

Card data: only the terminal's masked PAN; a value with more than 10 visible digits (first 6 +
last 4) is refused without being echoed (OPS-2). RFID/remote tokens are shown masked.
"""

from __future__ import annotations

import string
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from fractions import Fraction
from typing import Final
from urllib.parse import quote

from agent.errors import AgentError
from agent.money.tariff import Quote, QuoteLine, round_half_up
from agent.upstream.contract import (
    MaskedPan,
    PaymentMethod,
    Receipt,
    ReceiptLine,
    ReceiptStatus,
    SignedMeterData,
    masked_pan_ok,
    new_msg_id,
    utc_timestamp,
)

__all__ = [
    "QR_PLACEHOLDERS",
    "QR_URL_MAX_LENGTH",
    "ReceiptError",
    "ReceiptTemplateError",
    "apollo_final_screen",
    "build_receipt",
    "format_minor",
    "mask_token",
    "qr_link",
    "render_text",
    "validate_qr_template",
]

QR_PLACEHOLDERS: Final = frozenset({"receipt_id", "station_id", "connector_id", "session_id"})
QR_URL_MAX_LENGTH: Final = 4279  # psp-reference §5.10 (Read Card; Start Session allows 4297)
MIN_TEXT_WIDTH: Final = 24
_CHARGED: Final = frozenset({"captured", "account"})


class ReceiptError(AgentError, ValueError):
    """Inconsistent receipt facts. The message never contains card data."""


class ReceiptTemplateError(AgentError, ValueError):
    """An invalid ``receipts.qr_url_template`` (a configuration error; ``path`` locates it)."""

    path: Final = ("receipts", "qr_url_template")

    def __init__(self, reason: str) -> None:
        super().__init__(f"receipts.qr_url_template: {reason}")
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------


def mask_token(token: str) -> str:
    """An RFID UID / id token for display: all but the last 4 characters masked."""
    return "*" * max(0, len(token) - 4) + token[-4:]


def _line(line: QuoteLine) -> ReceiptLine:
    return ReceiptLine(
        kind=line.kind.value,
        band=line.band,
        quantity=line.quantity,
        unit=line.unit,  # type: ignore[arg-type]  # the tariff only makes Wh, ms and session
        unit_price=line.unit_price,
        price_unit=line.price_unit,  # type: ignore[arg-type]
        net_minor=line.net_minor,
        vat_minor=line.vat_minor,
        gross_minor=line.gross_minor,
    )


def _cap_adjustment(quote: Quote, gross: int) -> ReceiptLine:
    """A negative gross adjustment split into net and VAT (tariff rounding policy step 2)."""
    rate = Fraction(quote.vat_rate_percent)
    net = round_half_up(gross * Fraction(100) / (100 + rate))
    digits = quote.minor_unit_digits
    return ReceiptLine(
        kind="cap_adjustment",
        quantity=1,
        unit="session",
        unit_price=_decimal(gross, digits),
        price_unit="session",
        net_minor=net,
        vat_minor=gross - net,
        gross_minor=gross,
    )


def build_receipt(
    *,
    receipt_id: str,
    station_id: str,
    connector_id: int,
    session_id: str,
    status: ReceiptStatus,
    method: PaymentMethod,
    quote: Quote,
    issued_at: datetime,
    started_at: datetime,
    stopped_at: datetime | None = None,
    meter_start_wh: int | None = None,
    meter_stop_wh: int | None = None,
    energy_wh: int | None = None,
    amount_minor: int | None = None,
    authorized_minor: int | None = None,
    captured_minor: int | None = None,
    masked_pan: str | None = None,
    brand: str | None = None,
    id_token: str | None = None,
    terminal_session_id: str | None = None,
    host_reference: str | None = None,
    decline_reason: str | None = None,
    signed_meter: SignedMeterData | None = None,
    qr_url: str | None = None,
    msg_id: str | None = None,
) -> Receipt:
    """The receipt of one finished session (RCPT-1).

    ``quote`` is the tariff's quote of the session's usage (for a session without energy, the
    quote of an empty usage; its currency, VAT rate and minor digits are used). ``amount_minor``
    is what the driver owes for ``account`` receipts (default: the quote's gross); for
    ``captured`` receipts it is ``captured_minor``. ``energy_wh`` defaults to meter stop - start.
    ``id_token`` (RFID UID or remote id token) is stored masked. Raises :class:`ReceiptError`.
    """
    if masked_pan is not None and not masked_pan_ok(masked_pan):
        raise ReceiptError("masked_pan is not masked: at most the first 6 and last 4 digits may show")
    if stopped_at is not None and stopped_at < started_at:
        raise ReceiptError("stopped_at is before started_at")
    if meter_start_wh is not None and meter_stop_wh is not None:
        delta = meter_stop_wh - meter_start_wh
        if delta < 0:
            raise ReceiptError(f"meter stop {meter_stop_wh} Wh is below meter start {meter_start_wh} Wh")
        if energy_wh is not None and energy_wh != delta:
            raise ReceiptError(f"energy_wh {energy_wh} != meter stop - start {delta}")
        energy_wh = delta
    energy_wh = energy_wh or 0
    if energy_wh < 0:
        raise ReceiptError("energy_wh is negative")
    if status == "captured":
        if method != "emv" or captured_minor is None or terminal_session_id is None:
            raise ReceiptError(
                "a captured receipt needs an EMV payment, captured_minor and terminal_session_id"
            )
        if amount_minor is not None and amount_minor != captured_minor:
            raise ReceiptError("amount_minor differs from captured_minor")
        amount_minor = captured_minor
    elif status == "account":
        if method not in ("rfid", "remote"):
            raise ReceiptError("an account receipt is for an RFID or remote-start session")
    elif amount_minor:
        raise ReceiptError(f"a {status} receipt charges nothing, got amount_minor {amount_minor}")
    if status in ("voided", "declined", "failed") and captured_minor:
        raise ReceiptError(f"a {status} payment captured nothing, got captured_minor {captured_minor}")

    lines: tuple[ReceiptLine, ...] = ()
    if status in _CHARGED:
        lines = tuple(_line(line) for line in quote.lines)
        total = quote.gross_minor if amount_minor is None else amount_minor
        if total < 0:
            raise ReceiptError("the amount charged is negative")
        if total > quote.gross_minor:
            raise ReceiptError(f"amount {total} is above the tariff price {quote.gross_minor}")
        if total < quote.gross_minor:  # capped at the authorized amount (AMT-2)
            lines += (_cap_adjustment(quote, total - quote.gross_minor),)
    duration_s = 0 if stopped_at is None else int((stopped_at - started_at).total_seconds())
    return Receipt(
        msg_id=msg_id or new_msg_id(),
        receipt_id=receipt_id,
        station_id=station_id,
        connector_id=connector_id,
        session_id=session_id,
        status=status,
        method=method,
        issued_at=utc_timestamp(issued_at),
        started_at=utc_timestamp(started_at),
        stopped_at=None if stopped_at is None else utc_timestamp(stopped_at),
        duration_s=duration_s,
        meter_start_wh=meter_start_wh,
        meter_stop_wh=meter_stop_wh,
        energy_wh=energy_wh,
        currency=quote.currency,
        minor_unit_digits=quote.minor_unit_digits,
        prices_include_vat=quote.prices_include_vat,
        vat_rate_percent=quote.vat_rate_percent,
        lines=lines,
        net_minor=sum(line.net_minor for line in lines),
        vat_minor=sum(line.vat_minor for line in lines),
        total_minor=sum(line.gross_minor for line in lines),
        authorized_minor=authorized_minor,
        captured_minor=captured_minor,
        masked_pan=_masked(masked_pan),
        brand=brand,
        id_token_masked=None if id_token is None else mask_token(id_token),
        terminal_session_id=terminal_session_id,
        host_reference=host_reference,
        decline_reason=decline_reason,
        signed_meter=signed_meter,
        qr_url=qr_url,
    )


def _masked(text: str | None) -> MaskedPan | None:
    return text


# --------------------------------------------------------------------------------------------------
# QR link (RCPT-2)
# --------------------------------------------------------------------------------------------------


def validate_qr_template(template: str) -> frozenset[str]:
    """The placeholders of a valid template; raises :class:`ReceiptTemplateError`.

    Valid: an ``http(s)://`` URL whose ``{…}`` placeholders are among :data:`QR_PLACEHOLDERS`
    (no format specs or conversions), including ``{receipt_id}``; ``{{``/``}}`` are literal braces.
    """
    if not template.startswith(("https://", "http://")):
        raise ReceiptTemplateError("must be an http:// or https:// URL")
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ReceiptTemplateError(f"malformed placeholder: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in QR_PLACEHOLDERS:
            known = ", ".join(f"{{{n}}}" for n in sorted(QR_PLACEHOLDERS))
            raise ReceiptTemplateError(f"unknown placeholder {{{name}}} (use {known})")
        if spec or conversion:
            raise ReceiptTemplateError(f"placeholder {{{name}}} may not have a format or conversion")
        names.add(name)
    if "receipt_id" not in names:
        raise ReceiptTemplateError("needs {receipt_id}")
    return frozenset(names)


def qr_link(receipt: Receipt, template: str) -> str:
    """The receipt's dynamic QR URL: ``template`` with each placeholder replaced by the receipt's
    value, percent-encoded (every reserved character, ``/`` included)."""
    validate_qr_template(template)
    values = {
        "receipt_id": receipt.receipt_id,
        "station_id": receipt.station_id,
        "connector_id": str(receipt.connector_id),
        "session_id": receipt.session_id,
    }
    link = template.format_map({k: quote(v, safe="") for k, v in values.items()})
    if len(link) > QR_URL_MAX_LENGTH:
        raise ReceiptError(f"QR link of {len(link)} characters is longer than {QR_URL_MAX_LENGTH}")
    return link


# --------------------------------------------------------------------------------------------------
# plain text (RCPT-2)
# --------------------------------------------------------------------------------------------------

_STATUS_TEXT: Final[dict[str, str]] = {
    "captured": "PAID",
    "account": "BILLED TO ACCOUNT",
    "voided": "NOT CHARGED (VOIDED)",
    "declined": "DECLINED",
    "failed": "PAYMENT FAILED",
    "free_vend": "FREE OF CHARGE",
}
_LINE_TEXT: Final[dict[str, str]] = {
    "energy": "Energy",
    "time": "Charging time",
    "session_fee": "Session fee",
    "idle_fee": "Idle fee",
    "minimum_adjustment": "Minimum price",
    "maximum_adjustment": "Maximum price",
    "cap_adjustment": "Authorized cap",
}
_METHOD_TEXT: Final[dict[str, str]] = {
    "emv": "Card",
    "rfid": "RFID card",
    "remote": "Remote start",
    "free_vend": "None",
}


def _decimal(amount: int, digits: int) -> str:
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}" if digits else f"{sign}{whole}"


def format_minor(amount_minor: int, minor_unit_digits: int) -> str:
    """``1058, 2`` → ``"10.58"``; ``1058, 0`` → ``"1058"``; ``-5, 2`` → ``"-0.05"``."""
    return _decimal(amount_minor, minor_unit_digits)


def _kwh(wh: int) -> str:
    return f"{_decimal(wh, 3)} kWh"


def _hms(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _quantity(line: ReceiptLine) -> str:
    if line.unit == "Wh":
        return _kwh(line.quantity)
    if line.unit == "ms":
        return _hms(line.quantity // 1000)
    return f"{line.quantity} x"


def _wrap(text: str, width: int, indent: str = "") -> Iterator[str]:
    yield from textwrap.wrap(
        text, width, initial_indent=indent, subsequent_indent=indent, break_long_words=True
    ) or [""]


def _row(label: str, value: str, width: int) -> Iterator[str]:
    if len(label) + 1 + len(value) <= width:
        yield label + value.rjust(width - len(label))
        return
    yield from _wrap(label, width)
    for part in _wrap(value, width):
        yield part.rjust(width)


def _time(at: str, tz: tzinfo) -> str:
    local = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or ''}".rstrip()


def render_text(receipt: Receipt, width: int = 40, *, tz: tzinfo = UTC) -> str:
    """The receipt as plain text, every line at most ``width`` characters (ASCII only, so any
    display or printer shows it); amounts with the currency's minor digits; times in ``tz``."""
    if width < MIN_TEXT_WIDTH:
        raise ValueError(f"width {width} is below {MIN_TEXT_WIDTH}")
    digits = receipt.minor_unit_digits

    def money(amount: int) -> str:
        return format_minor(amount, digits)

    out: list[str] = ["=" * width, "CHARGING RECEIPT".center(width).rstrip(), "=" * width]
    rows: list[tuple[str, str]] = [
        ("Station", receipt.station_id),
        ("Connector", str(receipt.connector_id)),
        ("Receipt", receipt.receipt_id),
        ("Session", receipt.session_id),
        ("Start", _time(receipt.started_at, tz)),
    ]
    if receipt.stopped_at is not None:
        rows += [("Stop", _time(receipt.stopped_at, tz)), ("Duration", _hms(receipt.duration_s))]
    if receipt.meter_start_wh is not None:
        rows.append(("Meter start", _kwh(receipt.meter_start_wh)))
    if receipt.meter_stop_wh is not None:
        rows.append(("Meter stop", _kwh(receipt.meter_stop_wh)))
    rows.append(("Energy", _kwh(receipt.energy_wh)))
    for label, value in rows:
        out += _row(label, value, width)
    out.append("-" * width)
    for line in receipt.lines:
        label = _LINE_TEXT[line.kind] + (f" ({line.band})" if line.band else "")
        out += _row(label, money(line.gross_minor), width)
        if line.unit != "session" or line.kind == "session_fee":
            detail = f"{_quantity(line)} x {line.unit_price}/{line.price_unit}"
            out += _wrap(detail, width, "  ")
    if receipt.lines:
        out.append("-" * width)
    vat = f"VAT {receipt.vat_rate_percent}%"
    out += _row("Net", money(receipt.net_minor), width)
    out += _row(vat, money(receipt.vat_minor), width)
    out += _row(f"TOTAL {receipt.currency}", money(receipt.total_minor), width)
    out.append("-" * width)
    payment: list[tuple[str, str]] = [("Payment", _METHOD_TEXT[receipt.method])]
    if receipt.brand:
        payment.append(("Brand", receipt.brand))
    if receipt.masked_pan:
        payment.append(("Card number", receipt.masked_pan))
    if receipt.id_token_masked:
        payment.append(("Token", receipt.id_token_masked))
    if receipt.authorized_minor is not None:
        payment.append(("Authorized", money(receipt.authorized_minor)))
    if receipt.captured_minor is not None:
        payment.append(("Captured", money(receipt.captured_minor)))
    if receipt.terminal_session_id:
        payment.append(("Terminal session", receipt.terminal_session_id))
    if receipt.host_reference:
        payment.append(("Host reference", receipt.host_reference))
    if receipt.decline_reason:
        payment.append(("Reason", receipt.decline_reason))
    payment.append(("Status", _STATUS_TEXT[receipt.status]))
    for label, value in payment:
        out += _row(label, value, width)
    if receipt.signed_meter is not None:
        out += _row("Signed meter data", receipt.signed_meter.format, width)
    if receipt.qr_url:
        out.append("-" * width)
        out.append("Receipt online:")
        out += [receipt.qr_url[i : i + width] for i in range(0, len(receipt.qr_url), width)]
    out.append("=" * width)
    text = "\n".join(out) + "\n"
    return text.encode("ascii", "replace").decode("ascii")


# --------------------------------------------------------------------------------------------------
# Apollo final screen (RCPT-2, psp-reference §5.21)
# --------------------------------------------------------------------------------------------------

_SCREEN_TITLE: Final[dict[str, str]] = {
    "captured": "Thank you",
    "account": "Thank you",
    "free_vend": "Thank you",
    "voided": "Not charged",
    "declined": "Payment declined",
    "failed": "Payment failed",
}


def apollo_final_screen(
    receipt: Receipt, link: str | None, *, qr_key: str | None = "qr"
) -> tuple[str, dict[str, str]]:
    """``(screen_type, properties)`` of the Apollo UI Request shown when the session is over.

    A ``notification`` screen (psp-reference §5.21 keys ``title``, ``subtitle``, ``message``,
    ``advice``, ``icon``, ``color``): the amount charged as subtitle, energy and duration as
    message. The QR link goes under ``qr_key``: the notification page lists no QR key and the
    ``info`` screen's keys are a [GAP] in psp-reference §5.21, so the key name is a parameter (check
    it on the HIL rig); ``None`` leaves the QR out and shows the link as text in ``advice``.
    """
    charged = receipt.status in _CHARGED
    ok = receipt.status not in ("declined", "failed")
    properties = {
        "title": _SCREEN_TITLE[receipt.status],
        "subtitle": f"{format_minor(receipt.total_minor, receipt.minor_unit_digits)} {receipt.currency}",
        "message": f"{_kwh(receipt.energy_wh)} - {_hms(receipt.duration_s)}"
        if receipt.energy_wh or charged
        else "",
        "icon": "approved" if ok else "declined",
        "color": "1" if ok else "2",
    }
    if link is not None:
        if len(link) > QR_URL_MAX_LENGTH:
            raise ReceiptError(f"QR link of {len(link)} characters is longer than {QR_URL_MAX_LENGTH}")
        if qr_key is None:
            properties["advice"] = f"Receipt: {link}"
        else:
            properties["advice"] = "Scan the QR code for your receipt"
            properties[qr_key] = link
    return "notification", {k: v for k, v in properties.items() if v}
