"""Apollo screens (agent/runtime/screens.py): home screen, messages, final receipt screen."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.runtime import screens
from agent.runtime.shell import parse_ui_button
from statemachines.authorization import AuthorizationPolicy, AuthorizationStrategy
from statemachines.config import ConnectorConfig, StartMode, StationConfig, StopMode
from statemachines.connector import ConnectorMachineState
from statemachines.effects import MessageKey, ShowMessage
from statemachines.events import UiAction
from statemachines.terminal import ConnectorView

AT = datetime(2026, 1, 1, tzinfo=UTC)


class _Tariff:
    currency = "EUR"
    minor_unit_digits = 2

    def describe(self) -> str:
        return "0.39 EUR/kWh · incl. 21% VAT"


def settings(**overrides: object) -> screens.ScreenSettings:
    config = StationConfig(
        connectors=(ConnectorConfig(1), ConnectorConfig(2), ConnectorConfig(3)),
        start_modes=frozenset({StartMode.UI, StartMode.PLUG_IN}),
        stop_modes=frozenset({StopMode.UI, StopMode.UNPLUG}),
        **overrides,  # type: ignore[arg-type]
    )
    return screens.ScreenSettings.from_station(config, _Tariff(), {1: "Left", 2: "Right"})


VIEWS = [
    ConnectorView(1, ConnectorMachineState.AVAILABLE, True),
    ConnectorView(2, ConnectorMachineState.CHARGING, True, card_token="tok"),
    ConnectorView(3, ConnectorMachineState.UNAVAILABLE, False),
]


@pytest.mark.req("START-3", "STOP-4", "START-8")
def test_home_screen_lists_every_connector() -> None:
    kind, props = screens.home_screen(settings(), VIEWS)
    assert kind == "selection"
    assert props == {
        "title": "Select a connector - 0.39 EUR/kWh · incl. 21% VAT",
        "items.start_1": "",
        "items.start_1.label": "Left - Start",
        "items.stop_2": "",
        "items.stop_2.label": "Right - Charging: Stop",
        "items.start_3": "",
        "items.start_3.label": "Connector 3 - Unavailable",
        "items.start_3.disabled": "true",
    }


@pytest.mark.req("AMT-1")
def test_home_screen_driver_cap_items() -> None:
    policy = AuthorizationPolicy(
        strategy=AuthorizationStrategy.DRIVER_CAP, driver_cap_choices_minor=(2000, 5000)
    )
    _, props = screens.home_screen(settings(authorization=policy), VIEWS[:1])
    assert [k for k in props if k.startswith("items.") and k.count(".") == 1] == [
        "items.start_1_2000",
        "items.start_1_5000",
        "items.start_2",
        "items.start_3",
    ]
    assert props["items.start_1_5000.amount"] == "50.00"
    assert props["items.start_1_5000.currency"] == "EUR"
    assert props["items.start_2.disabled"] == "true"  # no view: shown as unavailable


def test_busy_connector_without_ui_stop_is_disabled() -> None:
    s = screens.ScreenSettings(connector_ids=(1,), ui_start=True)
    _, props = screens.home_screen(
        s, [ConnectorView(1, ConnectorMachineState.CHARGING, True, card_token="t")]
    )
    assert props["items.start_1.disabled"] == "true"
    assert props["items.start_1.label"] == "Connector 1 - Charging"


@pytest.mark.parametrize(
    ("button", "connector", "action", "cap"),
    [
        ("start_2", 2, UiAction.START, None),
        ("start_2_5000", 2, UiAction.START, 5000),
        ("stop_1", 1, UiAction.STOP, None),
    ],
)
def test_wire_button_ids_parse(button: str, connector: int, action: UiAction, cap: int | None) -> None:
    sel = parse_ui_button(button, AT)
    assert sel is not None
    assert (sel.connector_id, sel.action, sel.cap_minor) == (connector, action, cap)
    assert parse_ui_button(button.replace("_", "."), AT) == sel  # the engine's dotted form too


def test_message_screens() -> None:
    s = settings()
    assert screens.message_screen(s, ShowMessage(1, MessageKey.TARIFF)) is None  # the home screen says it
    assert screens.message_screen(s, ShowMessage(1, MessageKey.CHARGING)) is None
    kind, props = screens.message_screen(s, ShowMessage(2, MessageKey.SESSION_ENDED, amount_minor=1234)) or (
        "",
        {},
    )
    assert kind == "notification"
    assert props["message"] == "Charged 12.34 EUR"
    assert props["icon"] == "approved"
    kind, props = screens.message_screen(s, ShowMessage(1, MessageKey.CARD_MISMATCH)) or ("", {})
    assert (kind, props["icon"], props["subtitle"]) == ("notification", "declined", "Left")
    kind, props = screens.message_screen(
        s, ShowMessage(None, MessageKey.SELECT_CONNECTOR, connectors=(1, 2))
    ) or (
        "",
        {},
    )
    assert kind == "dialog"
    assert props["buttons.start_1.label"] == "Left"
    assert "buttons.start_2" in props


def test_notifications_only_deployment() -> None:
    s = screens.ScreenSettings(tariff_text="0.39 EUR/kWh")
    assert not s.home_enabled
    assert screens.notification(s, ShowMessage(1, MessageKey.PLUG_IN)) == (
        "notification",
        {"title": "Please plug in your vehicle", "subtitle": "Connector 1"},
    )
    assert screens.notification(s, ShowMessage(None, MessageKey.TARIFF))[1]["message"] == "0.39 EUR/kWh"


def _fits_within(limit: int):  # type: ignore[no-untyped-def]
    """A terminal that takes a UI Request of at most ``limit`` payload bytes (key\\0value\\0 pairs)."""

    def fits(screen_type: str, properties: dict[str, str]) -> bool:
        pairs = [("type", screen_type), *properties.items()]
        return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in pairs) <= limit

    return fits


@pytest.mark.req("START-8", "RCPT-2")
def test_a_screen_that_fits_is_shown_unchanged() -> None:
    screen = ("notification", {"title": "Charging", "subtitle": "Left"})
    assert screens.fit(screen, _fits_within(1000)) is screen


@pytest.mark.req("START-8", "RCPT-2")
def test_optional_lines_and_the_qr_are_dropped_first_then_texts_shortened() -> None:
    """Integrity issue E: without the extended block format a long screen is fitted into the
    normal format (psp-reference §2.3), never refused with a traceback."""
    qr = "https://receipts.example/r/ST-0001/" + "x" * 200
    final = ("notification", {"title": "Thank you", "subtitle": "12.34 EUR", "advice": "Scan", "qr": qr})
    fitted = screens.fit(final, _fits_within(120))
    assert fitted is not None
    assert "qr" not in fitted[1]  # the QR goes first …
    assert fitted[1] == {"title": "Thank you", "subtitle": "12.34 EUR", "advice": "Scan"}  # … only it
    tighter = screens.fit(final, _fits_within(40))
    assert tighter is not None
    assert "advice" not in tighter[1]  # then the hint
    assert tighter[1]["title"] == "Thank you"
    long_title = ("notification", {"title": "A" * 300})
    shortened = screens.fit(long_title, _fits_within(100))
    assert shortened is not None
    assert shortened[1]["title"].endswith(screens.ELLIPSIS)
    assert _fits_within(100)(*shortened)


@pytest.mark.req("START-3")
def test_home_screen_items_are_never_dropped_and_an_unfittable_screen_is_none() -> None:
    s = settings()
    views = [
        ConnectorView(1, ConnectorMachineState.AVAILABLE, True),
        ConnectorView(2, ConnectorMachineState.AVAILABLE, True),
    ]
    home = screens.home_screen(s, views)
    items = [k for k in home[1] if k.startswith("items.") and k.count(".") == 1]
    fitted = screens.fit(home, _fits_within(len(str(home)) // 2))
    if fitted is not None:
        assert [k for k in fitted[1] if k.startswith("items.") and k.count(".") == 1] == items
    assert screens.fit(home, _fits_within(20)) is None  # cannot fit: the caller skips it and warns


@pytest.mark.req("START-8")
def test_payment_screen_texts_pack_the_tariff_into_two_reference_strings() -> None:
    """While the Apollo waits for a card its payment screen hides every UI screen (psp-reference
    §3.3): the price goes into the Start Session's two reference strings, 63 bytes each (§5.9)."""
    short = screens.ScreenSettings(tariff_text="0.39 EUR/kWh · incl. 21% VAT")
    assert screens.payment_screen_texts(short) == ("0.39 EUR/kWh · incl. 21% VAT", "")
    two = screens.ScreenSettings(
        tariff_text="0.39 EUR/kWh · 0.05 EUR/min · idle 0.20 EUR/min after 15 min · incl. 21% VAT"
    )
    assert screens.payment_screen_texts(two) == (
        "0.39 EUR/kWh · 0.05 EUR/min · idle 0.20 EUR/min after 15 min",
        "incl. 21% VAT",
    )
    long = screens.ScreenSettings(
        tariff_text=" · ".join(f"band {n} 22:00-06:00: 0.{n}9 EUR/kWh" for n in range(6))
    )
    first, second = screens.payment_screen_texts(long) or ("", "")
    assert first == "band 0 22:00-06:00: 0.09 EUR/kWh"
    assert second.startswith("band 1 22:00-06:00: 0.19 EUR/kWh")
    assert second.endswith(" …")  # more prices than two lines hold: the driver is told so
    for text in (first, second):
        assert len(text.encode("utf-8")) <= 63
    huge = screens.payment_screen_texts(screens.ScreenSettings(tariff_text="é" * 100))
    assert huge is not None
    assert len(huge[0].encode("utf-8")) <= 63
    assert huge[0].endswith("…")
    assert screens.payment_screen_texts(screens.ScreenSettings(tariff_text="")) is None
