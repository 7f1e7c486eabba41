"""OCPI 2.2.1 Tariff and CDR objects as the agent reads them (OCPI 2.2.1 §Tariffs module, §CDRs module).

Decoded with msgspec into frozen structs; numbers become :class:`decimal.Decimal` (exact: msgspec
reads a JSON number's text, and a YAML float through its shortest ``repr``), never a binary float in
the money path. :func:`ocpi_tariff_from_builtins` validates a mapping and raises
:class:`OcpiError` whose ``path`` is the OCPI field path (``elements[1].price_components[0].price``).

Only what pricing needs is checked beyond the types; the other fields (``country_code``,
``energy_mix`` …) are kept as given. ``reservation`` restrictions describe reservation costs, which
a card session at the charger never has: a tariff with one is rejected clearly.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from agent.errors import AgentError, PathItem, explain_msgspec_error, format_path

__all__ = [
    "CdrChargingPeriod",
    "CdrDimension",
    "DayOfWeek",
    "DisplayText",
    "OcpiCdr",
    "OcpiError",
    "OcpiPrice",
    "OcpiTariff",
    "PriceComponent",
    "TariffDimensionType",
    "TariffElement",
    "TariffRestrictions",
    "TariffType",
    "ocpi_cdr_from_builtins",
    "ocpi_tariff_from_builtins",
]


class OcpiError(AgentError, ValueError):
    """An invalid OCPI object; ``path`` is the field path inside it."""

    def __init__(self, path: tuple[PathItem, ...], message: str) -> None:
        super().__init__(f"{format_path(path)}: {message}" if path else message)
        self.path = path
        self.message = message


class TariffDimensionType(StrEnum):  # §Tariffs 4.4.5
    ENERGY = "ENERGY"  # kWh, step_size multiplier 1 Wh
    FLAT = "FLAT"
    PARKING_TIME = "PARKING_TIME"  # hours, step_size multiplier 1 s
    TIME = "TIME"  # hours, step_size multiplier 1 s


class DayOfWeek(StrEnum):  # §Tariffs 4.4.1
    MONDAY = "MONDAY"
    TUESDAY = "TUESDAY"
    WEDNESDAY = "WEDNESDAY"
    THURSDAY = "THURSDAY"
    FRIDAY = "FRIDAY"
    SATURDAY = "SATURDAY"
    SUNDAY = "SUNDAY"


class TariffType(StrEnum):  # §Tariffs 4.4.7
    AD_HOC_PAYMENT = "AD_HOC_PAYMENT"
    PROFILE_CHEAP = "PROFILE_CHEAP"
    PROFILE_FAST = "PROFILE_FAST"
    PROFILE_GREEN = "PROFILE_GREEN"
    REGULAR = "REGULAR"


_Struct = {"frozen": True, "kw_only": True, "forbid_unknown_fields": True}
NonNegative = Decimal  # msgspec cannot bound a Decimal: checked by _check_numbers
_TIME_RE: Final = r"^([0-1][0-9]|2[0-3]):[0-5][0-9]$"  # §Tariffs 4.4.6 start_time
_DATE_RE: Final = r"^([12][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"  # §Tariffs 4.4.6 start_date


class DisplayText(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):  # types §DisplayText
    language: Annotated[str, Meta(min_length=2, max_length=2)]
    text: Annotated[str, Meta(max_length=512)]


class OcpiPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):  # types §Price
    excl_vat: NonNegative
    incl_vat: NonNegative | None = None


class PriceComponent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):  # §Tariffs 4.4.2
    type: TariffDimensionType
    price: NonNegative  # per unit, excl. VAT
    vat: Decimal | None = None  # percent (0 <= vat < 100); None: no VAT applicable
    step_size: Annotated[int, Meta(ge=0)]  # >= 1 but for FLAT (tariff_5 has a FLAT step 0)


class TariffRestrictions(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):  # §Tariffs 4.4.6
    start_time: Annotated[str, Meta(pattern=_TIME_RE)] | None = None
    end_time: Annotated[str, Meta(pattern=_TIME_RE)] | None = None
    start_date: Annotated[str, Meta(pattern=_DATE_RE)] | None = None
    end_date: Annotated[str, Meta(pattern=_DATE_RE)] | None = None
    min_kwh: NonNegative | None = None
    max_kwh: NonNegative | None = None
    min_current: NonNegative | None = None
    max_current: NonNegative | None = None
    min_power: NonNegative | None = None
    max_power: NonNegative | None = None
    min_duration: Annotated[int, Meta(ge=0)] | None = None
    max_duration: Annotated[int, Meta(ge=0)] | None = None
    day_of_week: list[DayOfWeek] | None = None
    reservation: str | None = None


class TariffElement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):  # §Tariffs 4.4.4
    price_components: Annotated[list[PriceComponent], Meta(min_length=1)]
    restrictions: TariffRestrictions | None = None


class OcpiTariff(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):  # §Tariffs 4.3.1
    country_code: Annotated[str, Meta(min_length=2, max_length=2)]
    party_id: Annotated[str, Meta(min_length=3, max_length=3)]
    id: Annotated[str, Meta(min_length=1, max_length=36)]
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
    elements: Annotated[list[TariffElement], Meta(min_length=1)]
    last_updated: str
    type: TariffType | None = None
    tariff_alt_text: list[DisplayText] = msgspec.field(default_factory=list)
    tariff_alt_url: str | None = None
    min_price: OcpiPrice | None = None
    max_price: OcpiPrice | None = None
    start_date_time: str | None = None
    end_date_time: str | None = None
    energy_mix: dict[str, Any] | None = None


# --- CDRs (what ``evpay-agent tariff price`` reads and ``session.ended`` carries) -------------------


class CdrDimension(msgspec.Struct, frozen=True, kw_only=True):  # §CDRs 10.4.2
    type: str  # CdrDimensionType: ENERGY (kWh), TIME / PARKING_TIME (h), POWER (kW), CURRENT (A) …
    volume: Decimal


class CdrChargingPeriod(msgspec.Struct, frozen=True, kw_only=True):  # §CDRs 10.4.6
    start_date_time: str
    dimensions: Annotated[list[CdrDimension], Meta(min_length=1)]
    tariff_id: str | None = None


class OcpiCdr(msgspec.Struct, frozen=True, kw_only=True):  # §CDRs 10.3.1 (the fields pricing reads)
    start_date_time: str
    end_date_time: str
    charging_periods: Annotated[list[CdrChargingPeriod], Meta(min_length=1)]
    currency: str | None = None


# --- validation -------------------------------------------------------------------------------------


def _convert_error(text: str) -> OcpiError:
    path, message, _ = explain_msgspec_error(text)
    return OcpiError(path, message)


def _datetime(path: tuple[PathItem, ...], text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise OcpiError(path, f"expected an RFC 3339 date-time, got {text!r}") from None
    if value.tzinfo is None:  # OCPI types §DateTime: UTC when no offset is given
        value = value.replace(tzinfo=UTC)
    return value


def _check_numbers(tariff: OcpiTariff) -> None:
    """Every price, VAT rate and restriction bound is a finite number >= 0 (VAT below 100)."""

    def check(path: tuple[PathItem, ...], value: Decimal | None, *, below: int | None = None) -> None:
        if value is None:
            return
        if not value.is_finite() or value < 0:
            raise OcpiError(path, f"expected a number >= 0, got {value}")
        if below is not None and value >= below:
            raise OcpiError(path, f"expected a number below {below}, got {value}")

    for name, price in (("min_price", tariff.min_price), ("max_price", tariff.max_price)):
        if price is not None:
            check((name, "excl_vat"), price.excl_vat)
            check((name, "incl_vat"), price.incl_vat)
    for i, element in enumerate(tariff.elements):
        for j, component in enumerate(element.price_components):
            path: tuple[PathItem, ...] = ("elements", i, "price_components", j)
            check((*path, "price"), component.price)
            check((*path, "vat"), component.vat, below=100)
            if component.step_size < 1 and component.type is not TariffDimensionType.FLAT:
                raise OcpiError((*path, "step_size"), f"expected >= 1 for {component.type.value}, got 0")
        if element.restrictions is not None:
            for field in ("min_kwh", "max_kwh", "min_current", "max_current", "min_power", "max_power"):
                check(("elements", i, "restrictions", field), getattr(element.restrictions, field))


def ocpi_tariff_from_builtins(obj: object) -> OcpiTariff:
    """Validate a decoded mapping as an OCPI 2.2.1 Tariff (raises :class:`OcpiError`)."""
    try:
        tariff = msgspec.convert(obj, OcpiTariff)
    except msgspec.ValidationError as exc:
        raise _convert_error(str(exc)) from None
    _check_numbers(tariff)
    _datetime(("last_updated",), tariff.last_updated)
    for name in ("start_date_time", "end_date_time"):
        if (text := getattr(tariff, name)) is not None:
            _datetime((name,), text)
    for i, element in enumerate(tariff.elements):
        r = element.restrictions
        if r is None:
            continue
        path: tuple[PathItem, ...] = ("elements", i, "restrictions")
        if r.reservation is not None:
            raise OcpiError(
                (*path, "reservation"),
                "reservation costs do not apply to card sessions at the charger "
                "(an ad-hoc session has no reservation); remove this element",
            )
        for low, high in (
            ("min_kwh", "max_kwh"),
            ("min_current", "max_current"),
            ("min_power", "max_power"),
            ("min_duration", "max_duration"),
        ):
            lo, hi = getattr(r, low), getattr(r, high)
            if lo is not None and hi is not None and lo >= hi:
                raise OcpiError((*path, high), f"{hi} is not above {low} {lo}: the element never applies")
        for name in ("start_date", "end_date"):
            if (text := getattr(r, name)) is not None:
                try:
                    date.fromisoformat(text)
                except ValueError:
                    raise OcpiError((*path, name), f"no such date: {text!r}") from None
        if r.start_date is not None and r.end_date is not None and r.end_date <= r.start_date:
            raise OcpiError((*path, "end_date"), f"{r.end_date} is not after start_date {r.start_date}")
        if r.start_time is not None and r.start_time == r.end_time:
            raise OcpiError((*path, "end_time"), "equal to start_time: an empty window")
        if r.day_of_week is not None and len(set(r.day_of_week)) != len(r.day_of_week):
            raise OcpiError((*path, "day_of_week"), "names a day twice")
    for name, price in (("min_price", tariff.min_price), ("max_price", tariff.max_price)):
        if price is not None and price.incl_vat is not None and price.incl_vat < price.excl_vat:
            raise OcpiError((name, "incl_vat"), f"{price.incl_vat} is below excl_vat {price.excl_vat}")
    least, most = tariff.min_price, tariff.max_price
    if least is not None and most is not None and most.excl_vat < least.excl_vat:
        raise OcpiError(("max_price", "excl_vat"), "below min_price.excl_vat")
    return tariff


def ocpi_cdr_from_builtins(obj: object) -> OcpiCdr:
    """Validate the pricing fields of a decoded OCPI 2.2.1 CDR (raises :class:`OcpiError`)."""
    try:
        cdr = msgspec.convert(obj, OcpiCdr)
    except msgspec.ValidationError as exc:
        raise _convert_error(str(exc)) from None
    start = _datetime(("start_date_time",), cdr.start_date_time)
    end = _datetime(("end_date_time",), cdr.end_date_time)
    if end < start:
        raise OcpiError(("end_date_time",), "before start_date_time")
    previous = start
    for i, period in enumerate(cdr.charging_periods):
        at = _datetime(("charging_periods", i, "start_date_time"), period.start_date_time)
        if at < previous:
            raise OcpiError(("charging_periods", i, "start_date_time"), "before the previous period")
        previous = at
        for j, dim in enumerate(period.dimensions):
            if dim.volume < 0:
                raise OcpiError(("charging_periods", i, "dimensions", j, "volume"), "negative")
    return cdr


def parse_datetime(text: str) -> datetime:
    """An OCPI DateTime (validated before) as an aware ``datetime``."""
    return _datetime((), text)
