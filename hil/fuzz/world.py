"""The seeded random world of one fuzz seed: terminal, charger, agent configuration, session script
and fault schedule, every choice drawn from one ``random.Random(seed)`` in a fixed order.

``generate(seed)`` is pure (no clock, no I/O): the same seed and size give the same :class:`World`
(``World.to_json()`` is equal), which is what ``python -m hil.fuzz --seed S`` replays. What varies is
what the contracts allow — docs/charger-bridge.md, psp-reference, systemd/agent.example.yaml,
docs/tariff.md, docs/commands.md — never anything outside them. The dimensions added last (the
tariff's form, ``current_a``, the back office's ``set_tariff`` commands) are drawn after all the
others, so that a seed's script is the one it had before them.

Time: charger meter periods and session lengths are drawn in *world seconds* and run at
:data:`TIME_SCALE` real seconds per world second, so a 60 s meter period (longer than most sessions)
and a 1 s one both occur within a seed that lasts a minute. The agent's own timers are real seconds
(the schema's floors: ``plug_in_timeout_s`` ≥ 30, ``final_meter_wait_s`` ≥ 1 …). The terminal's Setup
session timeout (``terminal.session_timeout_s``, at least 3600 s) runs in
:attr:`TerminalWorld.session_timeout_real_s` on the simulator (``--session-timeout-scale``): longer
than any session of the script can legitimately live (TERM-2), short enough that an approval the
journal never saw is voided by the terminal within the seed (psp-reference §10.4).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from hil.charger_sim.habits import ChargerHabits

__all__ = [
    "CRASH_POINTS",
    "FAULT_KINDS",
    "TARIFF_FORMS",
    "TIME_SCALE",
    "AuthorizationWorld",
    "Card",
    "ChargerWorld",
    "Fault",
    "SessionPlan",
    "SessionWorld",
    "Size",
    "Tap",
    "TariffChange",
    "TariffWorld",
    "TerminalWorld",
    "World",
    "generate",
]

TIME_SCALE: Final = 0.1  # real seconds per world second (meter periods, session lengths)
SETUP_SESSION_TIMEOUT_S: Final = 3600  # terminal.session_timeout_s: the schema's minimum
ORPHAN_MARGIN_S: Final = 30.0  # session timeout on the simulator beyond the longest planned session
# TERM-2: the session timeout is longer than the longest charge *plus settlement time*. A fault can
# hold a settlement back by this much: a terminal fault by a PSP reply timeout (30 s, §10.1) with
# the Reset and setup after it; an agent kill by its restart and recovery.
SETTLEMENT_DELAY_S: Final = {"terminal": 35.0, "agent_kill": 10.0}

# Apollo Protocol options granted (psp-reference §5.3): all; without 0x04 (extended block format);
# without 0x08 (detailed result codes); without both. A P6X never grants 0x04/0x08/0x10.
APOLLO_GRANTS: Final = (0x1F, 0x1B, 0x17, 0x13)
P6X_GRANT: Final = 0x1F

# EVPAY_CRASH_AT points (docs/runtime.md "Crash points") an agent start may be armed with
CRASH_POINTS: Final = (
    "journal:card_read",
    "psp_sent:AuthSession",
    "psp_received:SessionApproved",
    "journal:payment_approved",
    "journal:payment_declined",
    "journal:energy_on",
    "charger_sent:enable",
    "journal:meter#2",
    "journal:stop",
    "charger_sent:disable",
    "journal:commit",
    "psp_sent:CommitSession",
    "journal:commit_sent",
    "journal:commit_confirmed",
    "journal:void",
    "psp_sent:VoidSession",
    "journal:payment_restored",
)

FAULT_KINDS: Final = (
    "agent_kill",
    "broker_outage",
    "charger_broker_outage",
    "terminal_close",
    "terminal_reboot",
    "terminal_delay",
    "terminal_drop",
    "terminal_corrupt",
    "terminal_split",
    "terminal_not_ready",
    "charger_lost",
    "charger_reconnect",
    "charger_redeliver",
    "broker_hang",
)
TERMINAL_FAULTS: Final = frozenset(k for k in FAULT_KINDS if k.startswith("terminal_"))

STOP_KINDS: Final = ("unplug", "tap", "remote", "fault")
# docs/configuration.md "tariff:": the simple form, or an OCPI 2.2.1 Tariff in the wrapper
# {"ocpi", "timezone", "minor_unit_digits"}; set_tariff also takes a bare OCPI Tariff (docs/commands.md)
TARIFF_FORMS: Final = ("simple", "ocpi")
# the OCPI wrapper's station timezone: the fuzz tariffs have no local-time restriction, so every
# zone prices alike (None: UTC)
OCPI_TIMEZONES: Final = (None, "UTC", "Europe/Amsterdam", "America/New_York", "Asia/Tokyo")
OCPI_LAST_UPDATED: Final = "2026-01-01T00:00:00Z"
FAULT_CODES: Final = ("RCD_TRIPPED", "OVER_TEMPERATURE", "GROUND_FAILURE")
DECLINE_REASONS: Final = ("INSUFFICIENT_FUNDS", "REFER_TO_ISSUER", "PIN_FAILURE", "WITHDRAWAL_LIMIT_EXCEEDED")
BRANDS: Final = (("476173", "VISA"), ("520082", "MASTERCARD"), ("374245", "AMEX"))


class Size(StrEnum):
    """``small``: the CI size (fewer connectors, sessions and faults); ``normal``: everything."""

    SMALL = "small"
    NORMAL = "normal"


# --- the parts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalWorld:
    family: str  # apollo | p6x
    transport: str  # tcp | pty (a serial line; P6X is serial-only per Payter)
    grant_options: int
    boot_not_ready: int  # Not Ready answers to Synchronize after every (re)boot (§10.8)
    auth_delay_s: float
    keepalive_s: int
    session_timeout_s: int  # what the agent's Setup asks for
    session_timeout_real_s: float  # what the simulator runs it in

    @property
    def session_timeout_scale(self) -> float:
        return self.session_timeout_real_s / self.session_timeout_s

    def sim_args(self) -> list[str]:
        return [
            "--grant-options",
            f"0x{self.grant_options:02X}",
            "--boot-not-ready",
            str(self.boot_not_ready),
            "--auth-delay",
            repr(self.auth_delay_s),
        ]


@dataclass(frozen=True, slots=True)
class ChargerWorld:
    connectors: int
    meter_mode: str  # always | flowing | periodic
    meter_interval_world_s: float
    meter_retain: bool
    report_power: bool
    plug_order: str
    status_on_plug: bool
    duplicate_rate: float
    seed: int
    initial_energy_wh: int
    max_current_a: tuple[int, ...]  # per connector (connectors[].max_current_a, sent with enable)
    max_energy_wh: tuple[int | None, ...]  # per connector (STOP-6)
    shared_broker: bool  # the charger bridge and the back office on one Mosquitto
    report_current: bool = False  # meter payloads carry current_a (docs/charger-bridge.md)

    @property
    def meter_interval_s(self) -> float:
        return round(self.meter_interval_world_s * TIME_SCALE, 3)

    def habits(self) -> ChargerHabits:
        return ChargerHabits(
            meter_mode=self.meter_mode,  # type: ignore[arg-type]  # validated by ChargerHabits
            meter_interval_s=self.meter_interval_s,
            meter_retain=self.meter_retain,
            report_power=self.report_power,
            report_current=self.report_current,
            plug_order=self.plug_order,  # type: ignore[arg-type]
            status_on_plug=self.status_on_plug,
            duplicate_rate=self.duplicate_rate,
            seed=self.seed,
        )

    def sim_args(self) -> list[str]:
        return [*self.habits().argv(), "--initial-energy-wh", str(self.initial_energy_wh)]


def _ocpi_number(text: str) -> int | float:
    """A decimal string as the JSON/YAML number the OCPI object carries (the agent reads a number's
    shortest text, so the float must read back as exactly ``text``)."""
    value = Decimal(text)
    if value == value.to_integral_value():
        return int(value)
    number = float(value)
    if Decimal(repr(number)) != value:
        raise ValueError(f"{text!r} has no exact shortest float text")
    return number


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


@dataclass(frozen=True, slots=True)
class TariffWorld:
    """A tariff of the world. ``form`` ``simple``: the configuration's simple form (docs/tariff.md);
    ``ocpi``: the same prices as an OCPI 2.2.1 Tariff (one element: ENERGY per kWh, TIME per hour =
    the per-minute price * 60, FLAT the session fee, each with ``vat`` = the world's rate; OCPI prices
    are excl. VAT, so ``prices_include_vat`` is false), in the wrapper with ``timezone``. OCPI has no
    ``charging_and_suspended``: time not charging is PARKING_TIME (§Tariffs 4.4.5), so that choice
    becomes a PARKING_TIME component at the same hourly price (the receipt's ``idle_fee`` line)."""

    currency: str
    minor_unit_digits: int
    prices_include_vat: bool
    vat_rate_percent: str
    energy_per_kwh: str
    time_per_minute: str
    time_applies_to: str
    session_fee: str
    form: str = "simple"  # simple | ocpi (TARIFF_FORMS)
    timezone: str | None = None  # ocpi: the wrapper's station timezone (None: UTC)
    tariff_id: str = "FZ-T0"  # ocpi: the Tariff's id

    @property
    def time_per_hour(self) -> str:
        """The per-minute price * 60, exact (an OCPI TIME / PARKING_TIME price is per hour)."""
        return _decimal_text(Decimal(self.time_per_minute) * 60)

    def config(self) -> dict[str, Any]:
        """The agent's ``tariff:`` mapping (and ``set_tariff``'s ``tariff``) of this tariff."""
        if self.form == "ocpi":
            return {
                "ocpi": self.ocpi_object(),
                "timezone": self.timezone,
                "minor_unit_digits": self.minor_unit_digits,
            }
        return {
            "currency": self.currency,
            "minor_unit_digits": self.minor_unit_digits,
            "prices_include_vat": self.prices_include_vat,
            "vat_rate_percent": self.vat_rate_percent,
            "energy_per_kwh": self.energy_per_kwh,
            "time_per_minute": self.time_per_minute,
            "time_applies_to": self.time_applies_to,
            "session_fee": self.session_fee,
        }

    def ocpi_object(self) -> dict[str, Any]:
        """The OCPI 2.2.1 Tariff object (§Tariffs 4.3.1) of the ``ocpi`` form: one element without
        restrictions; step_size 1 (1 Wh, 1 s); components with a zero price are left out, except
        ENERGY (an element needs one)."""
        vat = _ocpi_number(self.vat_rate_percent)

        def component(kind: str, price: str) -> dict[str, Any]:
            return {"type": kind, "price": _ocpi_number(price), "vat": vat, "step_size": 1}

        components = [component("ENERGY", self.energy_per_kwh)]
        if Decimal(self.time_per_minute):
            components.append(component("TIME", self.time_per_hour))
            if self.time_applies_to == "charging_and_suspended":
                components.append(component("PARKING_TIME", self.time_per_hour))
        if Decimal(self.session_fee):
            components.append(component("FLAT", self.session_fee))
        return {
            "country_code": "NL",
            "party_id": "EVP",
            "id": self.tariff_id,
            "currency": self.currency,
            "type": "AD_HOC_PAYMENT",
            "elements": [{"price_components": components}],
            "last_updated": OCPI_LAST_UPDATED,
        }

    def describe(self) -> str:
        basis = "incl" if self.prices_include_vat else "excl"
        price = (
            f"{self.energy_per_kwh}/kWh {self.time_per_minute}/min ({self.time_applies_to}) fee "
            f"{self.session_fee} {self.currency}/{self.minor_unit_digits} VAT {self.vat_rate_percent}% "
            f"{basis}"
        )
        if self.form == "ocpi":
            return f"OCPI {self.tariff_id} [{price}] tz {self.timezone}"
        return price


@dataclass(frozen=True, slots=True)
class TariffChange:
    """The back office's ``set_tariff`` (docs/commands.md) at ``at_s`` real seconds after the script
    starts. ``bare``: an OCPI tariff sent as the bare Tariff object (no wrapper: the agent keeps
    its current tariff's timezone)."""

    at_s: float
    tariff: TariffWorld
    bare: bool = False

    def payload_tariff(self) -> dict[str, Any]:
        if self.bare and self.tariff.form == "ocpi":
            return self.tariff.ocpi_object()
        return self.tariff.config()

    def describe(self) -> str:
        return f"@{self.at_s:.1f}s {'bare ' if self.bare else ''}{self.tariff.describe()}"


@dataclass(frozen=True, slots=True)
class AuthorizationWorld:
    strategy: str  # fixed | maximum | incremental (Apollo) | driver_cap (Apollo)
    amount_minor: int
    increment_minor: int
    maximum_minor: int
    driver_cap_choices_minor: tuple[int, ...]
    headroom_s: int

    def config(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "amount_minor": self.amount_minor,
            "increment_minor": self.increment_minor,
            "maximum_minor": self.maximum_minor,
            "driver_cap_choices_minor": list(self.driver_cap_choices_minor),
            "headroom_s": self.headroom_s,
        }


@dataclass(frozen=True, slots=True)
class SessionWorld:
    start_modes: tuple[str, ...]
    stop_modes: tuple[str, ...]
    free_vend_when_offline: str
    plug_in_timeout_s: int
    card_decision_s: int
    final_meter_wait_s: int
    meter_interval_s: int
    settlement_retry_s: tuple[int, ...]
    undisposed_alarm_after_s: int

    def config(self) -> dict[str, Any]:
        return {
            "start_modes": list(self.start_modes),
            "stop_modes": list(self.stop_modes),
            "free_vend_when_offline": self.free_vend_when_offline,
            "plug_in_timeout_s": self.plug_in_timeout_s,
            "card_decision_s": self.card_decision_s,
            "final_meter_wait_s": self.final_meter_wait_s,
            "meter_interval_s": self.meter_interval_s,
            "settlement_retry_s": list(self.settlement_retry_s),
            "undisposed_alarm_after_s": self.undisposed_alarm_after_s,
            "idle_fee_enabled": False,
        }


@dataclass(frozen=True, slots=True)
class Card:
    """An EMV card of the world: a 40-hex card hash and a masked PAN (never a full PAN)."""

    number: int
    card_hash: str
    masked_pan: str
    brand: str

    @staticmethod
    def make(seed: int, number: int, rng: random.Random) -> Card:
        digest = hashlib.sha1(f"evpay-fuzz:{seed}:{number}".encode()).hexdigest().upper()
        bin6, brand = rng.choice(BRANDS)
        return Card(number, digest, f"{bin6}******{number % 10000:04d}", brand)


@dataclass(frozen=True, slots=True)
class Tap:
    """One presentation of a card and how the issuer answers it."""

    card: Card
    outcome: str  # approve | decline | partial
    decline_reason: str | None = None
    partial_minor: int | None = None  # Apollo partial approval (AMT-3)
    pin_delay_s: float = 0.0
    update: str = "approve"  # Apollo Update Session answer: approve | partial:N | decline

    def command(self) -> str:
        """The simulator's ``tap emv …`` control line."""
        parts = [f"tap emv hash={self.card.card_hash} pan={self.card.masked_pan} brand={self.card.brand}"]
        if self.outcome == "decline":
            parts.append(f"decline={self.decline_reason}")
        elif self.outcome == "partial":
            parts.append(f"partial={self.partial_minor}")
        if self.pin_delay_s:
            parts.append(f"pin_delay={self.pin_delay_s}")
        if self.update != "approve":
            parts.append(f"update={self.update}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One driver at one connector. Times are real seconds (drawn in world seconds, scaled)."""

    index: int
    connector: int
    start: str  # plug_in | tap_first | ui
    gap_s: float  # idle before the driver arrives
    taps: tuple[Tap, ...]  # attempts in order (declines first); the last one may be approved
    plug_after_s: float | None  # tap_first/ui: plug in this long after the approval; None: never
    power_w: int  # what the EV draws
    charge_s: float
    pause: tuple[float, float] | None  # (after s, for s): the EV pauses (suspended_ev)
    stranger: Tap | None  # a different card tapped while this session charges (STOP-2)
    stranger_after_s: float
    stop: str  # unplug | tap | remote | fault (whether the mode is enabled or not)
    fault_code: str
    unplug_after_s: float  # after the stop
    ui_cap_minor: int | None  # driver_cap: the cap chosen on the Apollo screen

    @property
    def planned_s(self) -> float:
        """A generous estimate of the session's length (auth, plug-in, charge, stop, unplug)."""
        taps = sum(2.5 + t.pin_delay_s for t in self.taps)
        plug = self.plug_after_s or 0.0
        return self.gap_s + taps + plug + self.charge_s + self.unplug_after_s + 4.0


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault at ``at_s`` real seconds after the script starts."""

    at_s: float
    kind: str
    duration_s: float = 0.0
    detail: str = ""  # the terminal control command, where there is one
    inside: bool = False  # broker outage: the agent is also killed (and restarted) inside it


@dataclass(frozen=True, slots=True)
class World:
    seed: int
    size: str
    terminal: TerminalWorld
    charger: ChargerWorld
    tariff: TariffWorld
    authorization: AuthorizationWorld
    session: SessionWorld
    qr_receipts: bool
    plans: tuple[SessionPlan, ...]
    faults: tuple[Fault, ...]
    crash_points: tuple[str | None, ...]  # per agent start, in order; None: not armed
    script_s: float  # planned script length (the longest connector's plans)
    tariff_changes: tuple[TariffChange, ...] = ()  # the back office's set_tariff commands, in time order

    @property
    def tariffs(self) -> tuple[TariffWorld, ...]:
        """The configured tariff, then each ``set_tariff``'s, in order (index 0: the configured)."""
        return (self.tariff, *(change.tariff for change in self.tariff_changes))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def agent_config(
        self,
        *,
        station_id: str,
        state_dir: str,
        terminal_url: str,
        charger_broker_url: str,
        charger_prefix: str,
        upstream_broker_url: str,
        upstream_prefix: str,
    ) -> dict[str, Any]:
        """The agent's YAML configuration (systemd/agent.example.yaml) of this world."""
        c = self.charger
        connectors: list[dict[str, Any]] = []
        for index in range(c.connectors):
            entry: dict[str, Any] = {
                "id": index + 1,
                "max_current_a": c.max_current_a[index],
                "label": f"Bay {index + 1}",
            }
            if c.max_energy_wh[index] is not None:
                entry["max_energy_wh"] = c.max_energy_wh[index]
            connectors.append(entry)
        config: dict[str, Any] = {
            "station_id": station_id,
            "state_dir": state_dir,
            "log_level": "info",
            "terminal": {
                "driver": "psp",
                "url": terminal_url,
                "family": self.terminal.family,
                "session_timeout_s": self.terminal.session_timeout_s,
                "keepalive_s": self.terminal.keepalive_s,
                "offline_alarm_after_s": 5,
            },
            "charger": {"driver": "mqtt_bridge", "broker_url": charger_broker_url, "prefix": charger_prefix},
            "connectors": connectors,
            "session": self.session.config(),
            "authorization": self.authorization.config(),
            "tariff": self.tariff.config(),
            "upstream": {"broker_url": upstream_broker_url, "prefix": upstream_prefix, "protocol": 5},
        }
        if self.qr_receipts:
            config["receipts"] = {"qr_url_template": "https://receipts.example.com/{station_id}/{receipt_id}"}
        return config

    def plans_of(self, connector: int) -> list[SessionPlan]:
        return [p for p in self.plans if p.connector == connector]

    def summary(self) -> list[str]:
        """The world as a few printable lines (printed at the start of the seed)."""
        t, c, s, a, tf = self.terminal, self.charger, self.session, self.authorization, self.tariff
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        return [
            f"terminal {t.family} over {t.transport}, grants 0x{t.grant_options:02X}, boot not-ready "
            f"{t.boot_not_ready}, auth delay {t.auth_delay_s} s, keep-alive {t.keepalive_s} s, session "
            f"timeout {t.session_timeout_s} s run in {t.session_timeout_real_s:.0f} s",
            f"charger {c.connectors} connector(s), meter {c.meter_mode} every {c.meter_interval_world_s:g} "
            f"world s ({c.meter_interval_s:g} s), retain {c.meter_retain}, power {c.report_power}, "
            f"{c.plug_order}, status on plug {c.status_on_plug}, duplicates {c.duplicate_rate}, register "
            f"{c.initial_energy_wh} Wh, max current {list(c.max_current_a)} A, energy limit "
            f"{list(c.max_energy_wh)}, {'one broker' if c.shared_broker else 'own charger broker'}, "
            f"current {c.report_current}",
            f"session start {list(s.start_modes)} stop {list(s.stop_modes)}, "
            f"offline {s.free_vend_when_offline}, "
            f"plug-in timeout {s.plug_in_timeout_s} s, final meter wait {s.final_meter_wait_s} s, meter "
            f"interval {s.meter_interval_s} s, retries {list(s.settlement_retry_s)}",
            f"authorization {a.strategy} {a.amount_minor} (+{a.increment_minor}, max {a.maximum_minor}, "
            f"caps {list(a.driver_cap_choices_minor)}); "
            f"tariff {tf.describe()}; QR receipts {self.qr_receipts}",
            "set_tariff: " + (", ".join(change.describe() for change in self.tariff_changes) or "none"),
            f"{len(self.plans)} session(s) over {self.script_s:.0f} s: "
            + ", ".join(
                f"c{p.connector}:{p.start}/{len(p.taps)} tap(s)/{p.stop}"
                + (" +stranger" if p.stranger else "")
                + (" no-plug" if p.start != "plug_in" and p.plug_after_s is None else "")
                for p in self.plans
            ),
            "faults: "
            + (", ".join(f"{f.kind}@{f.at_s:.1f}s" for f in self.faults) or "none")
            + "; crash points per start: "
            + ", ".join(cp or "-" for cp in self.crash_points),
        ]


# --- generation -----------------------------------------------------------------------------------


def _world_s(rng: random.Random, low: float, high: float) -> float:
    """A duration drawn log-uniformly in world seconds, returned in real seconds (rounded)."""
    return round(math.exp(rng.uniform(math.log(low), math.log(high))) * TIME_SCALE, 2)


CURRENCIES: Final = (("EUR", 2), ("EUR", 2), ("EUR", 2), ("JPY", 0), ("KWD", 3))
PRICES: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]] = {
    "EUR": (
        ("0", "0.25", "0.39", "0.79", "2.49", "9.99"),
        ("0", "0.05", "0.50", "2"),
        ("0", "0.35", "1"),
    ),
    "JPY": (("45", "60", "250"), ("0", "5", "30"), ("0", "50")),
    "KWD": (("0.120", "0.999", "4.5"), ("0", "0.010", "0.250"), ("0", "0.250")),
}


def _tariff(
    rng: random.Random, currency: str | None = None, *, unlike: TariffWorld | None = None
) -> TariffWorld:
    """A simple-form tariff; ``currency`` given: in that currency; ``unlike``: with another energy
    price than that tariff (so that the sessions the two price can be told apart)."""
    if currency is None:
        currency, digits = rng.choice(CURRENCIES)
    else:
        digits = dict(CURRENCIES)[currency]
    energy, time, fee = PRICES[currency]
    if unlike is not None:
        energy = tuple(price for price in energy if price != unlike.energy_per_kwh) or energy
    return TariffWorld(
        currency=currency,
        minor_unit_digits=digits,
        prices_include_vat=rng.random() < 0.6,
        vat_rate_percent=rng.choice(("0", "7.7", "19", "21", "25")),
        energy_per_kwh=rng.choice(energy),
        time_per_minute=rng.choice(time),
        time_applies_to=rng.choice(("charging", "charging_and_suspended")),
        session_fee=rng.choice(fee),
    )


def _tariff_form(rng: random.Random, tariff: TariffWorld, tariff_id: str) -> TariffWorld:
    """``tariff`` kept in the simple form, or its prices as an OCPI Tariff (net prices)."""
    if rng.random() >= 0.45:
        return tariff
    return replace(
        tariff,
        form="ocpi",
        prices_include_vat=False,
        timezone=rng.choice(OCPI_TIMEZONES),
        tariff_id=tariff_id,
    )


def _tariff_changes(
    rng: random.Random, base: TariffWorld, faults: tuple[Fault, ...], script_s: float
) -> tuple[TariffChange, ...]:
    """0 to 2 ``set_tariff`` commands at random instants of the script (some right around an agent
    kill, so that a reply can be lost), each with other prices than the tariff before it."""
    kills = [f.at_s for f in faults if f.kind == "agent_kill" or f.inside]
    times: list[float] = []
    for _ in range(rng.choice((0, 1, 1, 2))):
        if kills and rng.random() < 0.4:
            at = rng.choice(kills) + rng.uniform(-0.6, 0.4)
        else:
            at = rng.uniform(0.5, max(1.0, script_s * 0.9))
        times.append(round(max(0.3, at), 2))
    changes: list[TariffChange] = []
    previous = base
    for number, at in enumerate(sorted(times), start=1):
        tariff = _tariff_form(rng, _tariff(rng, base.currency, unlike=previous), f"FZ-T{number}")
        bare = tariff.form == "ocpi" and rng.random() < 0.3
        changes.append(TariffChange(at, tariff, bare))
        previous = tariff
    return tuple(changes)


def _authorization(rng: random.Random, family: str, currency: str) -> AuthorizationWorld:
    amounts = {"EUR": (300, 1000, 5000), "JPY": (500, 3000), "KWD": (2000, 5000)}[currency]
    strategies = ["fixed", "fixed", "maximum"] + (["incremental", "driver_cap"] if family == "apollo" else [])
    strategy = rng.choice(strategies)
    amount = rng.choice(amounts)
    maximum = amount * rng.choice((1, 2, 3))
    caps = tuple(sorted({max(1, maximum // 4), max(1, maximum // 2), maximum}))
    return AuthorizationWorld(
        strategy=strategy,
        amount_minor=amount,
        increment_minor=max(1, amount // rng.choice((2, 4))),
        maximum_minor=maximum,
        driver_cap_choices_minor=caps,
        headroom_s=rng.choice((1, 5, 30, 300)),
    )


def _modes(rng: random.Random, family: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    start = [m for m in ("tap", "plug_in") if rng.random() < 0.7] or ["plug_in"]
    if family == "apollo" and rng.random() < 0.35:
        start.append("ui")
    stop = ["unplug"] + [m for m in ("tap", "remote") if rng.random() < 0.6]
    rng.shuffle(start)
    rng.shuffle(stop)
    return tuple(start), tuple(stop)


def _tap(rng: random.Random, card: Card, family: str, auth: AuthorizationWorld, outcome: str) -> Tap:
    pin = rng.choice((0.0, 0.0, 0.0, 0.4, 1.5))
    if outcome == "decline":
        return Tap(card, "decline", decline_reason=rng.choice(DECLINE_REASONS), pin_delay_s=pin)
    update = "approve"
    if auth.strategy == "incremental":
        update = rng.choice(
            ("approve", "approve", f"partial:{auth.amount_minor + auth.increment_minor // 2}", "decline")
        )
    if outcome == "partial" and family == "apollo":
        partial = max(1, auth.amount_minor // rng.choice((4, 20, 100)))
        return Tap(card, "partial", partial_minor=partial, pin_delay_s=pin, update=update)
    return Tap(card, "approve", pin_delay_s=pin, update=update)


def _plans(
    rng: random.Random,
    seed: int,
    size: Size,
    family: str,
    connectors: int,
    session: SessionWorld,
    auth: AuthorizationWorld,
) -> tuple[SessionPlan, ...]:
    numbers = iter(range(1, 10000))
    plans: list[SessionPlan] = []
    per_connector = (1, 2) if size is Size.SMALL else (1, 3)
    starts = ["plug_in"]
    if "tap" in session.start_modes:
        starts.append("tap_first")
    if "ui" in session.start_modes:
        starts.append("ui")
    for connector in range(1, connectors + 1):
        for _ in range(rng.randint(*per_connector)):
            start = rng.choice(starts)
            card = Card.make(seed, next(numbers), rng)
            taps: list[Tap] = []
            if rng.random() < 0.25:  # a declined card first (START-7), sometimes the same card again
                again = card if rng.random() < 0.3 else Card.make(seed, next(numbers), rng)
                taps.append(_tap(rng, again, family, auth, "decline"))
            outcome = "partial" if family == "apollo" and rng.random() < 0.2 else "approve"
            if rng.random() < 0.08:  # the driver gives up after a decline
                outcome = "decline"
            taps.append(_tap(rng, card, family, auth, outcome))
            no_plug = size is Size.NORMAL and start != "plug_in" and rng.random() < 0.1  # START-6
            stranger = None
            if rng.random() < 0.3:
                stranger = _tap(rng, Card.make(seed, next(numbers), rng), family, auth, "decline")
            charge_s = _world_s(rng, 15, 120)
            pause = None
            if rng.random() < 0.25:
                pause = (round(rng.uniform(0.2, 0.6) * charge_s, 2), round(rng.uniform(0.3, 2.0), 2))
            cap = None
            if auth.strategy == "driver_cap" and start == "ui":
                cap = rng.choice(auth.driver_cap_choices_minor)
            plans.append(
                SessionPlan(
                    index=len(plans),
                    connector=connector,
                    start=start,
                    gap_s=_world_s(rng, 2, 40),
                    taps=tuple(taps),
                    plug_after_s=None if no_plug else _world_s(rng, 2, 30),
                    power_w=rng.choice((3700, 11000, 50000, 150000, 350000)),
                    charge_s=charge_s,
                    pause=pause,
                    stranger=stranger,
                    stranger_after_s=round(rng.uniform(0.1, 0.9) * charge_s, 2),
                    stop=rng.choice(STOP_KINDS),
                    fault_code=rng.choice(FAULT_CODES),
                    unplug_after_s=_world_s(rng, 3, 40),
                    ui_cap_minor=cap,
                )
            )
    return tuple(plans)


def _terminal_fault(rng: random.Random, kind: str, family: str) -> tuple[str, float]:
    """(control command, duration) of a terminal fault. Targets keep every host timeout short:
    Auth Session (210 s on Apollo) and Commit/Void (60 s) replies are delayed, never lost."""
    short = ["GetStatus", "CancelSession"] + (["UiRequest"] if family == "apollo" else [])
    host_timeout = 5.0 if family == "apollo" else 10.0  # psp-reference §9.1, requests but Auth/Commit/Void
    match kind:
        case "terminal_close":
            return "close", 0.0
        case "terminal_reboot":
            return "reboot keep", 0.0
        case "terminal_delay":
            target = rng.choice([*short, "AuthSession", "CommitSession", "VoidSession"])
            limit = (
                host_timeout * 1.3 if target in short else 4.0
            )  # past the host timeout, or a slow acquirer
            seconds = round(rng.uniform(0.5, limit), 2)
            return f"fault delay {seconds} {rng.randint(1, 2)} only={target}", seconds
        case "terminal_drop":
            return f"fault drop 1 only={rng.choice(short)}", 0.0
        case "terminal_corrupt":
            return f"fault corrupt 1 only={rng.choice(short)}", 0.0
        case "terminal_split":
            return f"fault split {rng.randint(1, 4)} {rng.randint(2, 8)}", 0.0
        case _:  # terminal_not_ready: Not Ready on the next Synchronizes (a resync forced by close)
            return f"fault not_ready {rng.randint(1, 3)}", 0.0


def _faults(
    rng: random.Random, size: Size, family: str, shared_broker: bool, script_s: float
) -> tuple[Fault, ...]:
    weights = {
        "agent_kill": 3.0,
        "broker_outage": 2.0,
        "charger_broker_outage": 0.0 if shared_broker else 1.0,
        "terminal_close": 1.0,
        "terminal_reboot": 1.0,
        "terminal_delay": 1.2,
        "terminal_drop": 0.7,
        "terminal_corrupt": 0.7,
        "terminal_split": 0.6,
        "terminal_not_ready": 0.5,
        "charger_lost": 1.5,
        "charger_reconnect": 1.0,
        "charger_redeliver": 0.8,
    }
    kinds = list(weights)
    count = rng.randint(1, 3) if size is Size.SMALL else rng.randint(2, 7)
    faults: list[Fault] = []
    for _ in range(count):
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        at = round(rng.uniform(0.5, max(1.0, script_s * 0.9)), 2)
        detail, duration = "", 0.0
        inside = False
        if kind == "agent_kill":
            duration = round(rng.choice((0.0, 0.2, 1.0, 2.5)), 2)
        elif kind in ("broker_outage", "charger_broker_outage"):
            duration = round(rng.uniform(0.5, 4.0), 2)
            inside = kind == "broker_outage" and rng.random() < 0.3
        elif kind == "charger_lost":
            duration = round(rng.uniform(0.3, 3.0), 2)
        elif kind == "charger_reconnect":
            duration = round(rng.choice((0.0, 0.3, 1.0)), 2)
            detail = f"reconnect {duration}"
        elif kind == "charger_redeliver":
            detail = "redeliver"
        elif kind in TERMINAL_FAULTS:
            detail, duration = _terminal_fault(rng, kind, family)
        faults.append(Fault(at, kind, duration, detail, inside))
    faults.sort(key=lambda f: f.at_s)
    return tuple(faults)


BROKER_HANG_RATE: Final = 0.3  # worlds with a hung upstream broker
# shorter than the agent's PUBACK watchdog (agent/upstream/client.py publish_timeout_s, 10 s, checked
# every 2.5 s): PUBACKs are only late; longer: the agent drops the connection and reconnects
BROKER_HANG_S: Final = (3.0, 16.0)


def _with_broker_hang(seed: int, faults: tuple[Fault, ...], script_s: float) -> tuple[Fault, ...]:
    """Issue 12: a broker that stops answering while the TCP connection stays open (the rig's gate
    holds every byte: a hung broker or a half-open link). Drawn from a random stream of its own, so
    every other dimension of a seed's world stays what it was before this fault existed."""
    rng = random.Random(f"broker-hang-{seed}")
    if rng.random() >= BROKER_HANG_RATE:
        return faults
    at = round(rng.uniform(0.5, max(1.0, script_s * 0.7)), 2)
    hang = Fault(at, "broker_hang", round(rng.uniform(*BROKER_HANG_S), 2))
    return tuple(sorted((*faults, hang), key=lambda f: f.at_s))


def generate(seed: int, size: Size | str = Size.NORMAL) -> World:
    """The world of ``seed`` (pure: the same arguments give an equal world)."""
    size = Size(size)
    rng = random.Random(seed)
    family = rng.choice(("apollo", "p6x"))
    if family == "apollo":
        transport = "tcp" if rng.random() < 0.8 else "pty"
        grants = rng.choice(APOLLO_GRANTS)
    else:
        transport, grants = "pty", P6X_GRANT
    connectors = rng.randint(1, 2) if size is Size.SMALL else rng.choice((1, 1, 2, 2, 3))
    start_modes, stop_modes = _modes(rng, family)
    session = SessionWorld(
        start_modes=start_modes,
        stop_modes=stop_modes,
        free_vend_when_offline="free_vend" if rng.random() < 0.15 else "refuse",
        plug_in_timeout_s=rng.choice((30, 30, 40)),
        card_decision_s=rng.choice((15, 25)),
        final_meter_wait_s=rng.choice((1, 1, 2, 3)),
        meter_interval_s=rng.choice((1, 2, 5, 10, 60)),
        settlement_retry_s=rng.choice(((1,), (1, 2), (2, 1, 3))),
        undisposed_alarm_after_s=rng.choice((60, 120)),
    )
    tariff = _tariff(rng)
    auth = _authorization(rng, family, tariff.currency)
    interval_world = rng.choice((1.0, 2.0, 5.0, 15.0, 30.0, 60.0))  # short and longer than a session
    charger = ChargerWorld(
        connectors=connectors,
        meter_mode=rng.choice(("always", "flowing", "periodic")),
        meter_interval_world_s=interval_world,
        meter_retain=rng.random() < 0.6,
        report_power=rng.random() < 0.75,
        plug_order=rng.choice(("plug_first", "status_first")),
        status_on_plug=rng.random() < 0.4,
        duplicate_rate=rng.choice((0.0, 0.0, 0.05, 0.3)),
        seed=rng.randrange(2**31),
        initial_energy_wh=rng.choice((0, 1234, 987_654, 54_321_000)),
        max_current_a=tuple(rng.choice((16, 32, 63, 500)) for _ in range(connectors)),
        max_energy_wh=tuple(rng.choice((None, None, None, None, 150, 600)) for _ in range(connectors)),
        shared_broker=rng.random() < 0.6,
    )
    plans = _plans(rng, seed, size, family, connectors, session, auth)
    script_s = max(sum(p.planned_s for p in plans if p.connector == c) for c in range(1, connectors + 1))
    longest = max(
        [p.planned_s for p in plans]
        + [
            float(session.plug_in_timeout_s) + 5
            for p in plans
            if p.start != "plug_in" and p.plug_after_s is None
        ]
    )
    terminal = TerminalWorld(
        family=family,
        transport=transport,
        grant_options=grants,
        boot_not_ready=rng.choice((0, 0, 1, 3)),
        auth_delay_s=rng.choice((0.05, 0.05, 0.3, 1.0)),
        keepalive_s=rng.choice((2, 5, 10, 15)),
        session_timeout_s=SETUP_SESSION_TIMEOUT_S,
        session_timeout_real_s=round(longest + ORPHAN_MARGIN_S),
    )
    faults = _faults(rng, size, family, charger.shared_broker, script_s)
    # drawn above (the order of draws is the seed's contract); the timeout also covers what the
    # faults may add to a session's life — a planned time is not the time a session lives once
    # reads wait for the terminal — and to its settlement (seeds 71, 87 voided good sessions)
    delay = sum(
        SETTLEMENT_DELAY_S["terminal"] if f.kind in TERMINAL_FAULTS else SETTLEMENT_DELAY_S.get(f.kind, 0.0)
        for f in faults
    )
    timeout_s = math.ceil(max(longest, script_s) + ORPHAN_MARGIN_S + delay)
    terminal = replace(terminal, session_timeout_real_s=timeout_s)
    armed = 0.15 if size is Size.SMALL else 0.3
    crash_points = tuple(rng.choice(CRASH_POINTS) if rng.random() < armed else None for _ in range(4))
    qr_receipts = family == "apollo" and rng.random() < 0.4
    # drawn last (the order of draws is the seed's contract: the script of a seed stays what it
    # was before these dimensions existed): the tariff's form, current_a, the set_tariff commands
    tariff = _tariff_form(rng, tariff, "FZ-T0")
    charger = replace(charger, report_current=rng.random() < 0.5)
    tariff_changes = _tariff_changes(rng, tariff, faults, script_s)
    faults = _with_broker_hang(seed, faults, script_s)
    return World(
        seed=seed,
        size=size.value,
        terminal=terminal,
        charger=charger,
        tariff=tariff,
        authorization=auth,
        session=session,
        qr_receipts=qr_receipts,
        plans=plans,
        faults=faults,
        crash_points=crash_points,
        script_s=round(script_s, 2),
        tariff_changes=tariff_changes,
    )
