"""Receipts (agent/money/receipts.py): worked examples, plain text, QR link, Apollo final screen."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.money.receipts import (
    ReceiptError,
    ReceiptTemplateError,
    apollo_final_screen,
    build_receipt,
    format_minor,
    qr_link,
    render_text,
    validate_qr_template,
)
from agent.money.tariff import Quote, Tariff, TariffConfig
from agent.upstream.contract import Receipt, SignedMeterData, encode
from statemachines.events import PaymentMethod
from statemachines.pricing import Usage, UsageKind

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
TEMPLATE = "https://receipts.example.com/r/{station_id}/{receipt_id}"
MSG = "6f1c2a9e-0b1d-4c55-9a43-2f7d3e8b1c01"
TARIFF = Tariff(
    TariffConfig(
        currency="EUR",
        prices_include_vat=True,
        vat_rate_percent="21",
        energy_per_kwh="0.39",
        idle_fee_per_minute="0.20",
        idle_grace_minutes=15,
    )
)
NOTHING = TARIFF.quote(Usage())


def _quote(energy_wh: int, charging_min: int, idle_min: int = 0) -> Quote:
    charged = T0 + timedelta(minutes=charging_min)
    usage = TARIFF.accumulate(Usage(), T0, charged, energy_wh, UsageKind.CHARGING)
    if idle_min:
        usage = TARIFF.accumulate(usage, charged, charged + timedelta(minutes=idle_min), 0, UsageKind.IDLE)
    return TARIFF.quote(usage)


def _common(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "receipt_id": "R-ST-0001-000042",
        "station_id": "ST-0001",
        "connector_id": 1,
        "session_id": "1-20260301T100000000000",
        "issued_at": T0 + timedelta(minutes=70),
        "started_at": T0,
        "msg_id": MSG,
    }
    return fields | overrides


def emv_with_idle_fee() -> Receipt:
    """22 kWh at 0.39 + 10 billable idle minutes (25 idle, 15 grace) at 0.20, VAT 21 % included."""
    receipt = build_receipt(
        **_common(),  # type: ignore[arg-type]
        status="captured",
        method=PaymentMethod.EMV,
        quote=_quote(22_000, 60, idle_min=25),
        stopped_at=T0 + timedelta(minutes=85),
        meter_start_wh=1_234_567,
        meter_stop_wh=1_256_567,
        authorized_minor=5000,
        captured_minor=1058,
        masked_pan="411111******1111",
        brand="VISA",
        terminal_session_id="305419896",
        host_reference="A1B2C3",
    )
    return msgspec.structs.replace(receipt, qr_url=qr_link(receipt, TEMPLATE))


EXPECTED_TEXT = """\
========================================
            CHARGING RECEIPT
========================================
Station                          ST-0001
Connector                              1
Receipt                 R-ST-0001-000042
Session          1-20260301T100000000000
Start               2026-03-01 10:00 UTC
Stop                2026-03-01 11:25 UTC
Duration                         1:25:00
Meter start                 1234.567 kWh
Meter stop                  1256.567 kWh
Energy                        22.000 kWh
----------------------------------------
Energy                              8.58
  22.000 kWh x 0.39/kWh
Idle fee                            2.00
  0:10:00 x 0.20/min
----------------------------------------
Net                                 8.74
VAT 21%                             1.84
TOTAL EUR                          10.58
----------------------------------------
Payment                             Card
Brand                               VISA
Card number             411111******1111
Authorized                         50.00
Captured                           10.58
Terminal session               305419896
Host reference                    A1B2C3
Status                              PAID
----------------------------------------
Receipt online:
https://receipts.example.com/r/ST-0001/R
-ST-0001-000042
========================================
"""


def _roundtrip(receipt: Receipt) -> None:
    """The receipt satisfies every constraint of the contract (as the back office will decode it)."""
    assert msgspec.json.decode(encode(receipt), type=Receipt) == receipt
    assert sum(line.gross_minor for line in receipt.lines) == receipt.total_minor
    assert sum(line.net_minor for line in receipt.lines) == receipt.net_minor
    assert receipt.net_minor + receipt.vat_minor == receipt.total_minor


@pytest.mark.req("RCPT-1")
def test_successful_emv_with_idle_fee() -> None:
    r = emv_with_idle_fee()
    _roundtrip(r)
    assert [(line.kind, line.net_minor, line.vat_minor, line.gross_minor) for line in r.lines] == [
        ("energy", 709, 149, 858),
        ("idle_fee", 165, 35, 200),
    ]
    assert (r.net_minor, r.vat_minor, r.total_minor) == (874, 184, 1058)
    assert (r.energy_wh, r.duration_s) == (22_000, 85 * 60)
    assert (r.authorized_minor, r.captured_minor, r.status) == (5000, 1058, "captured")
    assert r.started_at == "2026-03-01T10:00:00.000Z"
    assert r.stopped_at == "2026-03-01T11:25:00.000Z"


@pytest.mark.req("RCPT-2")
def test_plain_text_rendering_is_exact() -> None:
    assert render_text(emv_with_idle_fee()) == EXPECTED_TEXT


@pytest.mark.req("RCPT-1")
def test_declined_payment_gets_a_receipt_charging_nothing() -> None:
    r = build_receipt(
        **_common(),  # type: ignore[arg-type]
        status="declined",
        method=PaymentMethod.EMV,
        quote=NOTHING,
        masked_pan="************4242",
        brand="MASTERCARD",
        decline_reason="51 insufficient funds",
    )
    _roundtrip(r)
    assert (r.lines, r.total_minor, r.energy_wh, r.stopped_at) == ((), 0, 0, None)
    text = render_text(r)
    assert "DECLINED" in text
    assert "51 insufficient funds" in text
    assert "TOTAL EUR                           0.00" in text
    kind, props = apollo_final_screen(r, None)
    assert kind == "notification"
    assert props == {
        "title": "Payment declined",
        "subtitle": "0.00 EUR",
        "icon": "declined",
        "color": "2",
    }


@pytest.mark.req("RCPT-1")
def test_voided_with_no_energy() -> None:
    r = build_receipt(
        **_common(),  # type: ignore[arg-type]
        status="voided",
        method=PaymentMethod.EMV,
        quote=_quote(0, 5),
        stopped_at=T0 + timedelta(minutes=5),
        meter_start_wh=1000,
        meter_stop_wh=1000,
        authorized_minor=5000,
        masked_pan="411111******1111",
        terminal_session_id="305419897",
    )
    _roundtrip(r)
    assert (r.lines, r.total_minor, r.energy_wh, r.captured_minor) == ((), 0, 0, None)
    assert "NOT CHARGED (VOIDED)" in render_text(r)


@pytest.mark.req("RCPT-1")
def test_rfid_with_limit_is_capped_with_an_itemised_adjustment() -> None:
    """30 kWh would cost 11.70; the back office limit 10.00 caps the session (AMT-2)."""
    r = build_receipt(
        **_common(),  # type: ignore[arg-type]
        status="account",
        method=PaymentMethod.RFID,
        quote=_quote(30_000, 90),
        stopped_at=T0 + timedelta(minutes=90),
        energy_wh=30_000,
        amount_minor=1000,
        authorized_minor=1000,
        id_token="04A1B2C3D4E5F6",
    )
    _roundtrip(r)
    assert [line.kind for line in r.lines] == ["energy", "cap_adjustment"]
    cap = r.lines[-1]
    assert (cap.gross_minor, cap.net_minor, cap.vat_minor) == (-170, -140, -30)
    assert r.total_minor == 1000
    assert r.id_token_masked == "**********E5F6"
    text = render_text(r)
    assert "04A1B2C3D4E5F6" not in text
    assert "Authorized cap                     -1.70" in text
    assert "BILLED TO ACCOUNT" in text


@pytest.mark.req("RCPT-1")
def test_free_vend_shows_the_energy_and_charges_nothing() -> None:
    r = build_receipt(
        **_common(),  # type: ignore[arg-type]
        status="free_vend",
        method=PaymentMethod.FREE_VEND,
        quote=_quote(5_000, 30),
        stopped_at=T0 + timedelta(minutes=30),
        meter_start_wh=0,
        meter_stop_wh=5_000,
        signed_meter=SignedMeterData(format="OCMF", start="OCMF|{...}|{...}"),
    )
    _roundtrip(r)
    assert (r.lines, r.total_minor, r.energy_wh) == ((), 0, 5_000)
    text = render_text(r)
    assert "FREE OF CHARGE" in text
    assert "Signed meter data                   OCMF" in text
    _, props = apollo_final_screen(r, "https://x.example/r/1", qr_key=None)
    assert props["title"] == "Thank you"
    assert props["message"] == "5.000 kWh - 0:30:00"
    assert props["advice"] == "Receipt: https://x.example/r/1"


@pytest.mark.req("RCPT-2")
def test_apollo_final_screen_shows_amount_and_qr() -> None:
    r = emv_with_idle_fee()
    assert r.qr_url is not None
    assert apollo_final_screen(r, r.qr_url) == (
        "notification",
        {
            "title": "Thank you",
            "subtitle": "10.58 EUR",
            "message": "22.000 kWh - 1:25:00",
            "icon": "approved",
            "color": "1",
            "advice": "Scan the QR code for your receipt",
            "qr": "https://receipts.example.com/r/ST-0001/R-ST-0001-000042",
        },
    )
    with pytest.raises(ReceiptError):
        apollo_final_screen(r, "https://x.example/" + "a" * 4300)


@pytest.mark.parametrize(
    "pan", ["4111111111111111", "4111 1111 1111 1111", "41111111****1111", "4111111111111111111"]
)
def test_a_full_pan_is_refused_without_being_echoed(pan: str) -> None:
    with pytest.raises(ReceiptError) as info:
        build_receipt(**_common(), status="declined", method=PaymentMethod.EMV, quote=NOTHING, masked_pan=pan)  # type: ignore[arg-type]
    assert not re.search(r"[0-9]{5}", str(info.value))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"status": "captured", "method": "emv"}, "captured receipt needs"),
        ({"status": "declined", "method": "emv", "amount_minor": 5}, "charges nothing"),
        ({"status": "voided", "method": "emv", "captured_minor": 5}, "captured nothing"),
        ({"status": "account", "method": "emv"}, "RFID or remote"),
        ({"status": "account", "method": "rfid", "amount_minor": 99_999}, "above the tariff price"),
        (
            {"status": "declined", "method": "emv", "meter_start_wh": 10, "meter_stop_wh": 5},
            "below meter start",
        ),
        (
            {"status": "declined", "method": "emv", "stopped_at": T0 - timedelta(seconds=1)},
            "before started_at",
        ),
        (
            {
                "status": "free_vend",
                "method": "free_vend",
                "meter_start_wh": 0,
                "meter_stop_wh": 5,
                "energy_wh": 6,
            },
            "energy_wh 6",
        ),
    ],
)
def test_inconsistent_facts_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ReceiptError, match=message):
        build_receipt(**_common(**overrides), quote=_quote(1000, 5))  # type: ignore[arg-type]


@pytest.mark.req("RCPT-2")
def test_qr_link_encodes_values() -> None:
    r = msgspec.structs.replace(emv_with_idle_fee(), receipt_id="R/1 ?&#", session_id="1-a b")
    link = qr_link(r, "https://r.example/{station_id}/{receipt_id}?c={connector_id}&s={session_id}&x={{y}}")
    assert link == "https://r.example/ST-0001/R%2F1%20%3F%26%23?c=1&s=1-a%20b&x={y}"


@pytest.mark.req("RCPT-2")
@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("ftp://r.example/{receipt_id}", "http"),
        ("https://r.example/{station_id}", "needs {receipt_id}"),
        ("https://r.example/{receipt}", "unknown placeholder"),
        ("https://r.example/{0}", "unknown placeholder"),
        ("https://r.example/{}", "unknown placeholder"),
        ("https://r.example/{receipt_id!r}", "format or conversion"),
        ("https://r.example/{receipt_id:>20}", "format or conversion"),
        ("https://r.example/{receipt_id", "malformed"),
        ("https://r.example/}{receipt_id}", "malformed"),
        ("https://r.example/{receipt_id.upper}", "unknown placeholder"),
    ],
)
def test_invalid_qr_template_is_a_config_error(template: str, message: str) -> None:
    with pytest.raises(ReceiptTemplateError, match=re.escape(message)) as info:
        validate_qr_template(template)
    assert info.value.path == ("receipts", "qr_url_template")
    with pytest.raises(ReceiptTemplateError):
        qr_link(emv_with_idle_fee(), template)


@pytest.mark.parametrize(
    ("amount", "digits", "text"),
    [
        (1058, 2, "10.58"),
        (5, 2, "0.05"),
        (-170, 2, "-1.70"),
        (1058, 0, "1058"),
        (1058, 3, "1.058"),
        (0, 4, "0.0000"),
    ],
)
def test_amounts_use_the_currency_minor_digits(amount: int, digits: int, text: str) -> None:
    assert format_minor(amount, digits) == text


def test_text_in_local_time() -> None:
    text = render_text(emv_with_idle_fee(), tz=ZoneInfo("Europe/Amsterdam"))
    assert "Start               2026-03-01 11:00 CET" in text


@pytest.mark.req("RCPT-2")
@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(24, 80),
    station=st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1, max_size=64),
    reason=st.text(max_size=200),
)
def test_every_text_line_fits_the_width(width: int, station: str, reason: str) -> None:
    r = msgspec.structs.replace(emv_with_idle_fee(), station_id=station, decline_reason=reason or None)
    text = render_text(r, width)
    assert text.isascii()
    assert all(len(line) <= width for line in text.splitlines())
    assert text.endswith("=" * width + "\n")
