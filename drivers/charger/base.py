"""The charger driver contract (DESIGN.md §3.3), documented once, here.

A charger driver connects the agent to the charger firmware. Per connector it reports plug state,
charging state and meter readings as typed events, and it accepts two commands: enable and disable
energy. It also reports loss of contact with the charger.

Connectors
    Connectors are identified by positive ``int`` ids ``1..N`` (OCPP numbering; connector 0, the
    station as a whole, is not used). A driver is constructed with the ids it serves; events carry
    these ids and commands accept only these ids (anything else raises :class:`ChargerError` with
    :attr:`ChargerErrorCode.UNKNOWN_CONNECTOR`). In MQTT topics the id is written in decimal
    without leading zeros (``charger/1/plug``).

Lifecycle
    ``await driver.start()`` (or ``async with driver:``) starts the background work and returns at
    once: it does **not** wait for the charger or a broker, so the agent can become ready while the
    charger is still unreachable. ``await driver.close()`` stops everything, owns and awaits every
    task it started, and ends the :meth:`ChargerDriver.events` iterator. ``close()`` is idempotent.

Events
    :meth:`ChargerDriver.events` returns the single event stream of the driver (one consumer).
    Events of one connector arrive in the order the charger sent them. Until the first
    :class:`ChargerBack` the charger counts as lost: a consumer starts with its connectors
    unavailable. :class:`ChargerLost` / :class:`ChargerBack` alternate strictly (never two of a kind
    in a row); after a :class:`ChargerBack` the driver delivers the charger's current plug, status
    and meter state again (a "fresh state") so the consumer can reconcile what it missed.

Timestamps
    Every event has ``at``, a timezone-aware ``datetime`` in UTC. For charger facts (plug, status,
    meter) it is the charger's own ``ts`` when present and valid (ISO 8601 with a UTC offset);
    otherwise the driver's receive time, and the driver counts the fallback. For
    :class:`ChargerLost` / :class:`ChargerBack` it is the driver's receive/detection time.

Commands
    :meth:`ChargerDriver.enable_energy` / :meth:`ChargerDriver.disable_energy` return once the
    driver's transport has accepted the command (for the MQTT bridge: the broker's PUBACK of a QoS 1
    publish). Whether energy actually flows is reported by the charger as a :class:`StatusChanged`.
    On failure they raise :class:`ChargerError`, whose ``code`` says why.

Payment information
    :meth:`ChargerDriver.offer_payment` hands the charger what its own OCPP 2.1 stack needs for the
    local payment terminal use cases (docs/ocpp21.md): never raises, never blocks; the driver
    delivers the latest payload of each connector when it can (the MQTT bridge: retained, QoS 1,
    again after every reconnect). A driver without such a channel ignores it (the default).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self

from drivers.errors import DriverError

if TYPE_CHECKING:
    from drivers.charger.payloads import PaymentPayload


class ChargingState(enum.StrEnum):
    """The charging state of a connector, as the charger reports it (DESIGN.md §3.3).

    ``idle``: no energy transfer is set up (unplugged, or plugged and not yet enabled);
    ``charging``: energy enabled and the EV draws it; ``suspended_ev``: energy enabled, the EV does
    not draw (paused, battery full); ``suspended_evse``: the EV is plugged in but the EVSE withholds
    energy (disabled during a session, a 0 A limit); ``fault``: the connector is faulted, see the
    fault code.
    """

    IDLE = "idle"
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"
    SUSPENDED_EVSE = "suspended_evse"
    FAULT = "fault"


class ChargerErrorCode(enum.StrEnum):
    """Why a charger driver operation failed."""

    UNKNOWN_DRIVER = "unknown_driver"
    INVALID_CONFIG = "invalid_config"
    INVALID_ARGUMENT = "invalid_argument"
    UNKNOWN_CONNECTOR = "unknown_connector"
    NOT_STARTED = "not_started"
    CLOSED = "closed"
    NOT_CONNECTED = "not_connected"
    CHARGER_OFFLINE = "charger_offline"
    SEND_FAILED = "send_failed"


class ChargerError(DriverError):
    """A charger driver operation failed; ``code`` says why, the other attributes give context."""

    def __init__(
        self,
        code: ChargerErrorCode,
        detail: str,
        *,
        connector_id: int | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail
        self.connector_id = connector_id
        self.correlation_id = correlation_id

    def __str__(self) -> str:
        where = f" (connector {self.connector_id})" if self.connector_id is not None else ""
        return f"{self.code.value}{where}: {self.detail}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlugChanged:
    """The plug state of a connector (also repeated as part of a fresh state)."""

    connector_id: int
    plugged: bool
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusChanged:
    """The charging state of a connector; ``fault`` is the charger's fault code, only with ``FAULT``."""

    connector_id: int
    state: ChargingState
    fault: str | None
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterReading:
    """A meter reading: ``energy_wh`` is the meter register (monotonic, Wh), ``power_w`` the
    present active power (W; ``None`` when the meter reports none); ``signed`` the signed meter data
    as the charger sent it (e.g. OCMF). ``retained``: delivered from the broker's store when the
    driver subscribed — published earlier, so the register may be behind the meter by now."""

    connector_id: int
    energy_wh: int
    power_w: float | None
    at: datetime
    signed: str | None = None
    current_a: float | None = None  # the present current (A), when the charger reports it
    retained: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerLost:
    """Contact with the charger is lost (ERR-2). ``reason`` is informational (e.g. ``"offline"``,
    ``"broker_connection_lost"``)."""

    at: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerBack:
    """Contact with the charger is (re)established; a fresh state follows."""

    at: datetime


ChargerEvent = PlugChanged | StatusChanged | MeterReading | ChargerLost | ChargerBack


class ChargerDriver(abc.ABC):
    """The charger driver contract; see the module docstring for the semantics."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the background work; returns without waiting for the charger."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop, await every task started, end :meth:`events`. Idempotent."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[ChargerEvent]:
        """The driver's single event stream; it ends after :meth:`close`."""

    @abc.abstractmethod
    async def enable_energy(self, connector_id: int, *, max_current_a: int | None = None) -> None:
        """Allow energy on ``connector_id``, optionally limited to ``max_current_a`` (A, ≥ 0).

        Returns once the command is handed over (see the driver); raises :class:`ChargerError`.
        """

    @abc.abstractmethod
    async def disable_energy(self, connector_id: int) -> None:
        """Withhold energy on ``connector_id``; returns once handed over; raises :class:`ChargerError`."""

    def offer_payment(self, connector_id: int, payload: PaymentPayload) -> None:
        """The latest payment information of ``connector_id`` for the charger's OCPP stack
        (docs/ocpp21.md). Never raises and never blocks; this default ignores it."""
        return None

    @property
    @abc.abstractmethod
    def connector_ids(self) -> tuple[int, ...]:
        """The connector ids this driver serves, ascending."""

    @property
    @abc.abstractmethod
    def online(self) -> bool:
        """Whether the charger is reachable now (since the last :class:`ChargerBack`)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
