"""Requirement scenarios: (id, name, config, pricer, setup, events, differs_on_3_connectors).

The exact expected effects are in ``expected.py`` (regenerate with ``python -m
tests.statemachines.regen_expected > …`` and review the diff). Events target connector 1; on the
3-connector station connectors 2 and 3 stay free, which changes only the cases marked ``True``.
"""

from __future__ import annotations

from statemachines.authorization import AuthorizationPolicy, AuthorizationStrategy
from statemachines.config import (
    ConnectorConfig,
    OfflinePolicy,
    StartMode,
    StationConfig,
    StopMode,
)
from statemachines.events import (
    AuthorizationOutcome,
    AuthorizationResult,
    BackendAuthorizationResult,
    BackendAuthorizationStatus,
    CardRead,
    ChargerBack,
    ChargerLost,
    ChargerState,
    ChargerStatus,
    CommitResult,
    Event,
    MeterReading,
    Plugged,
    RemoteStart,
    SetAvailability,
    SettlementOutcome,
    StopRequest,
    StopSource,
    TerminalLinkDown,
    TerminalLinkUp,
    TimerFired,
    TimerKind,
    UiAction,
    UiSelection,
    Unplugged,
    UpdateAuthorizationResult,
    UpdateOutcome,
    VoidResult,
)
from tests.support.pricing import LinearPricer
from tests.support.station import CARD_A, CARD_B, RFID_A, t

# id, name, config, pricer (None: the default LinearPricer), setup, events, differs_on_3
Spec = tuple[str, str, StationConfig, LinearPricer | None, list[Event], list[Event], bool]

OK, FAILED, NOT_FOUND = SettlementOutcome.OK, SettlementOutcome.FAILED, SettlementOutcome.NOT_FOUND
APPROVED = AuthorizationOutcome.APPROVED
TAP_ONLY = StationConfig(
    start_modes=frozenset({StartMode.TAP}), stop_modes=frozenset({StopMode.TAP, StopMode.UNPLUG})
)
PLUG_ONLY = StationConfig(start_modes=frozenset({StartMode.PLUG_IN}), stop_modes=frozenset({StopMode.UNPLUG}))
UI_ONLY = StationConfig(
    start_modes=frozenset({StartMode.UI}), stop_modes=frozenset({StopMode.UI, StopMode.UNPLUG})
)
PRICER = LinearPricer(per_kwh_minor=1000)  # 10.00 per kWh: 5000 minor = 5 kWh

# a plugged, charging session of CARD_A on connector 1 (plug-in to start, card at t(5), session S1)
CHARGING: list[Event] = [
    Plugged(1, t(0)),
    CardRead(t(5), CARD_A),
    AuthorizationResult(1, t(6), APPROVED, "S1"),
    MeterReading(1, t(7), 100_000, 0.0),
]
# the same session stopped by unplug at t(600) with 4 kWh, awaiting the commit result
SETTLING: list[Event] = [
    *CHARGING,
    MeterReading(1, t(300), 102_000, 7200.0),
    Unplugged(1, t(600)),
    MeterReading(1, t(601), 104_000, 0.0),
]

SPECS: list[Spec] = [
    (
        "START-1",
        "tap_first_then_plug",
        TAP_ONLY,
        None,
        [TerminalLinkUp(t(0))],
        [CardRead(t(5), CARD_A), AuthorizationResult(1, t(6), APPROVED, "S1"), Plugged(1, t(30))],
        True,
    ),
    (
        "START-1",
        "plugged_then_tap",
        TAP_ONLY,
        None,
        [TerminalLinkUp(t(0))],
        [Plugged(1, t(0)), CardRead(t(5), CARD_A), AuthorizationResult(1, t(6), APPROVED, "S1")],
        False,
    ),
    (
        "START-2",
        "plug_in_to_start",
        PLUG_ONLY,
        None,
        [],
        [Plugged(1, t(0)), CardRead(t(5), CARD_A), AuthorizationResult(1, t(6), APPROVED, "S1")],
        False,
    ),
    (
        "START-3",
        "ui_start",
        UI_ONLY,
        None,
        [],
        [
            UiSelection(t(1), 1, UiAction.START),
            CardRead(t(5), CARD_A),
            AuthorizationResult(1, t(6), APPROVED, "S1"),
            Plugged(1, t(30)),
        ],
        False,
    ),
    (
        "START-3",
        "ui_start_unavailable_connector",
        UI_ONLY,
        None,
        [SetAvailability(1, t(0), False)],
        [UiSelection(t(1), 1, UiAction.START)],
        False,
    ),
    (
        "START-4",
        "remote_start",
        StationConfig(start_modes=frozenset({StartMode.REMOTE})),
        None,
        [],
        [RemoteStart(1, t(5), "EMSP-TOKEN-1", 3000), Plugged(1, t(20))],
        False,
    ),
    (
        "START-5",
        "rfid_backend_accepts",
        PLUG_ONLY,
        None,
        [],
        [
            Plugged(1, t(0)),
            CardRead(t(5), RFID_A),
            BackendAuthorizationResult(1, t(6), RFID_A.token, BackendAuthorizationStatus.ACCEPTED, 2000),
        ],
        False,
    ),
    (
        "START-5",
        "rfid_backend_rejects",
        PLUG_ONLY,
        None,
        [],
        [
            Plugged(1, t(0)),
            CardRead(t(5), RFID_A),
            BackendAuthorizationResult(1, t(6), RFID_A.token, BackendAuthorizationStatus.BLOCKED),
        ],
        False,
    ),
    (
        "START-6",
        "plug_in_timeout_voids",
        UI_ONLY,
        None,
        [],
        [
            UiSelection(t(1), 1, UiAction.START),
            CardRead(t(5), CARD_A),
            AuthorizationResult(1, t(6), APPROVED, "S1"),
            TimerFired(TimerKind.PLUG_IN, 1, t(306)),
            VoidResult(1, t(307), "S1", OK),
        ],
        False,
    ),
    (
        "START-7",
        "declined_card_scans_again",
        PLUG_ONLY,
        None,
        [],
        [
            Plugged(1, t(0)),
            CardRead(t(5), CARD_A),
            AuthorizationResult(1, t(6), AuthorizationOutcome.DECLINED, reason="insufficient_funds"),
        ],
        False,
    ),
    ("START-8", "tariff_before_payment", PLUG_ONLY, None, [], [Plugged(1, t(0))], False),
    ("AMT-1", "fixed_amount", PLUG_ONLY, None, [], [Plugged(1, t(0))], False),
    (
        "AMT-1",
        "maximum_amount",
        StationConfig(
            start_modes=frozenset({StartMode.PLUG_IN}),
            authorization=AuthorizationPolicy(strategy=AuthorizationStrategy.MAXIMUM),
        ),
        None,
        [],
        [Plugged(1, t(0))],
        False,
    ),
    (
        "AMT-1",
        "driver_cap_by_ui",
        StationConfig(
            start_modes=frozenset({StartMode.UI}),
            authorization=AuthorizationPolicy(strategy=AuthorizationStrategy.DRIVER_CAP),
        ),
        None,
        [],
        [UiSelection(t(1), 1, UiAction.START, cap_minor=10000)],
        False,
    ),
    (
        "AMT-1",
        "incremental_small_amount",
        StationConfig(
            start_modes=frozenset({StartMode.PLUG_IN}),
            authorization=AuthorizationPolicy(strategy=AuthorizationStrategy.INCREMENTAL, amount_minor=2000),
        ),
        None,
        [],
        [Plugged(1, t(0))],
        False,
    ),
    (
        "AMT-2",
        "increment_before_cap_then_stop_at_maximum",
        StationConfig(
            start_modes=frozenset({StartMode.PLUG_IN}),
            authorization=AuthorizationPolicy(
                strategy=AuthorizationStrategy.INCREMENTAL,
                amount_minor=2000,
                increment_minor=1000,
                maximum_minor=3000,
            ),
        ),
        PRICER,
        CHARGING,
        [
            MeterReading(1, t(607), 101_000, 7200.0),  # 1 kWh = 1000; 2000 reached in 500 s: > headroom
            MeterReading(1, t(907), 101_500, 7200.0),  # 1500; 2000 reached in 250 s: ask for 3000
            UpdateAuthorizationResult(1, t(908), "S1", UpdateOutcome.APPROVED, 3000),
            MeterReading(1, t(1207), 102_500, 7200.0),  # 2500: 3000 in 250 s, maximum reached: no request
            MeterReading(1, t(1407), 102_900, 7200.0),
        ],  # 2900: 3000 within one meter interval: stop
        False,
    ),
    (
        "AMT-2",
        "fixed_stops_before_cap",
        StationConfig(start_modes=frozenset({StartMode.PLUG_IN})),
        PRICER,
        CHARGING,
        [
            MeterReading(1, t(1800), 104_000, 7200.0),
            MeterReading(1, t(2300), 104_900, 7200.0),
            MeterReading(1, t(2301), 104_901, 0.0),
        ],
        False,
    ),
    (
        "AMT-3",
        "partial_approval_caps_session",
        PLUG_ONLY,
        PRICER,
        [],
        [
            Plugged(1, t(0)),
            CardRead(t(5), CARD_A),
            AuthorizationResult(1, t(6), AuthorizationOutcome.PARTIALLY_APPROVED, "S1", 2000),
            MeterReading(1, t(7), 100_000, 7200.0),
            MeterReading(1, t(900), 101_950, 7200.0),
            MeterReading(1, t(901), 101_960, 0.0),
        ],
        False,
    ),
    (
        "AMT-4",
        "no_capture_above_authorized",
        PLUG_ONLY,
        PRICER,
        CHARGING,
        [MeterReading(1, t(3600), 106_000, 7200.0), MeterReading(1, t(3601), 106_000, 0.0)],
        False,
    ),
    (
        "AMT-4",
        "over_capture_when_enabled",
        StationConfig(
            start_modes=frozenset({StartMode.PLUG_IN}),
            authorization=AuthorizationPolicy(allow_over_capture=True),
        ),
        PRICER,
        CHARGING,
        [MeterReading(1, t(3600), 106_000, 7200.0), MeterReading(1, t(3601), 106_000, 0.0)],
        False,
    ),
    (
        "STOP-1",
        "tap_to_stop",
        StationConfig(),
        None,
        CHARGING,
        [CardRead(t(100), CARD_A), MeterReading(1, t(101), 101_000, 0.0), CommitResult(1, t(102), "S1", OK)],
        True,
    ),
    ("STOP-2", "other_card_never_stops", StationConfig(), None, CHARGING, [CardRead(t(100), CARD_B)], True),
    (
        "STOP-3",
        "unplug_to_stop",
        StationConfig(),
        None,
        CHARGING,
        [Unplugged(1, t(600)), MeterReading(1, t(601), 104_000, 0.0), CommitResult(1, t(602), "S1", OK)],
        False,
    ),
    (
        "STOP-4",
        "ui_stop_same_card",
        StationConfig(),
        None,
        CHARGING,
        [
            UiSelection(t(100), 1, UiAction.STOP),
            CardRead(t(105), CARD_A),
            MeterReading(1, t(106), 101_000, 0.0),
            CommitResult(1, t(116), "S1", OK),
        ],
        True,
    ),
    (
        "STOP-4",
        "ui_stop_other_card_refused",
        StationConfig(),
        None,
        CHARGING,
        [UiSelection(t(100), 1, UiAction.STOP), CardRead(t(105), CARD_B)],
        False,
    ),
    (
        "STOP-5",
        "remote_stop",
        StationConfig(),
        None,
        CHARGING,
        [StopRequest(1, t(100), StopSource.REMOTE), MeterReading(1, t(101), 100_500, 0.0)],
        False,
    ),
    (
        "STOP-6",
        "energy_limit",
        StationConfig(
            connectors=(ConnectorConfig(1, max_energy_wh=2000),), start_modes=frozenset({StartMode.PLUG_IN})
        ),
        None,
        CHARGING,
        [
            MeterReading(1, t(300), 101_000, 7200.0),
            MeterReading(1, t(600), 102_000, 7200.0),
            MeterReading(1, t(601), 102_001, 0.0),
        ],
        False,
    ),
    (
        "STOP-6",
        "duration_limit",
        StationConfig(
            connectors=(ConnectorConfig(1, max_duration_s=3600),), start_modes=frozenset({StartMode.PLUG_IN})
        ),
        None,
        CHARGING,
        [MeterReading(1, t(1800), 101_000, 7200.0), MeterReading(1, t(3607), 102_000, 7200.0)],
        False,
    ),
    (
        "STOP-7",
        "commit_retried_until_confirmed",
        StationConfig(),
        None,
        SETTLING,
        [
            CommitResult(1, t(602), "S1", FAILED),
            TimerFired(TimerKind.SETTLEMENT_RETRY, 1, t(662)),
            TimerFired(TimerKind.UNDISPOSED_PAYMENT, 1, t(1501)),
            CommitResult(1, t(1502), "S1", OK),
        ],
        False,
    ),
    (
        "STOP-8",
        "final_amount_exact",
        StationConfig(),
        LinearPricer(per_kwh_minor=333, per_minute_minor=7),
        CHARGING,
        [
            MeterReading(1, t(307), 101_234, 7200.0),
            Unplugged(1, t(400)),
            MeterReading(1, t(401), 101_300, 0.0),
            CommitResult(1, t(402), "S1", OK),
        ],
        False,
    ),
    (
        "STOP-9",
        "idle_fee_commit_deferred_to_unplug",
        StationConfig(connectors=(ConnectorConfig(1, idle_fee_enabled=True),)),
        LinearPricer(per_kwh_minor=1000, idle_per_minute_minor=50),
        CHARGING,
        [
            MeterReading(1, t(600), 101_000, 7200.0),
            ChargerStatus(1, t(601), ChargerState.IDLE),
            MeterReading(1, t(602), 101_000, 0.0),
            MeterReading(1, t(1202), 101_000, 0.0),
            Unplugged(1, t(1802)),
            CommitResult(1, t(1803), "S1", OK),
        ],
        False,
    ),
    (
        "ERR-1",
        "authorized_then_driver_aborts",
        UI_ONLY,
        None,
        [],
        [
            UiSelection(t(1), 1, UiAction.START),
            CardRead(t(5), CARD_A),
            AuthorizationResult(1, t(6), APPROVED, "S1"),
            StopRequest(1, t(60), StopSource.LOCAL),
            VoidResult(1, t(61), "S1", OK),
        ],
        False,
    ),
    (
        "ERR-1",
        "energy_enabled_nothing_delivered",
        StationConfig(),
        None,
        CHARGING,
        [Unplugged(1, t(30)), MeterReading(1, t(31), 100_000, 0.0), VoidResult(1, t(32), "S1", OK)],
        False,
    ),
    (
        "ERR-2",
        "charger_lost_commits_last_total",
        StationConfig(),
        PRICER,
        CHARGING,
        [
            MeterReading(1, t(300), 101_500, 7200.0),
            ChargerLost(t(310)),
            CommitResult(1, t(311), "S1", OK),
            ChargerBack(t(400)),
        ],
        False,
    ),
    (
        "ERR-3",
        "terminal_offline_free_vend",
        StationConfig(offline_policy=OfflinePolicy.FREE_VEND),
        None,
        [],
        [
            TerminalLinkDown(t(1)),
            Plugged(1, t(5)),
            Unplugged(1, t(100)),
            TimerFired(TimerKind.FINAL_METER, 1, t(110)),
        ],
        False,
    ),
    (
        "ERR-3",
        "terminal_offline_refuse",
        PLUG_ONLY,
        None,
        [],
        [TerminalLinkDown(t(1)), Plugged(1, t(5))],
        False,
    ),
    (
        "ERR-3",
        "commit_queued_until_link_up",
        StationConfig(),
        None,
        CHARGING,
        [
            TerminalLinkDown(t(100)),
            Unplugged(1, t(600)),
            MeterReading(1, t(601), 104_000, 0.0),
            TerminalLinkUp(t(700)),
            CommitResult(1, t(701), "S1", OK),
        ],
        False,
    ),
    (
        "ERR-4",
        "charger_fault_commits_delivered",
        StationConfig(),
        None,
        CHARGING,
        [
            MeterReading(1, t(300), 102_000, 7200.0),
            ChargerStatus(1, t(301), ChargerState.FAULT, "E42"),
            MeterReading(1, t(302), 102_010, 0.0),
            CommitResult(1, t(303), "S1", OK),
        ],
        True,
    ),
    (
        "ERR-8",
        "void_not_found_counts_as_disposed",
        UI_ONLY,
        None,
        [],
        [
            UiSelection(t(1), 1, UiAction.START),
            CardRead(t(5), CARD_A),
            AuthorizationResult(1, t(6), APPROVED, "S1"),
            TimerFired(TimerKind.PLUG_IN, 1, t(306)),
            VoidResult(1, t(307), "S1", FAILED),
            TimerFired(TimerKind.SETTLEMENT_RETRY, 1, t(367)),
            VoidResult(1, t(368), "S1", NOT_FOUND),
        ],
        False,
    ),
    (
        "ERR-8",
        "update_failure_stops_at_cap",
        StationConfig(
            start_modes=frozenset({StartMode.PLUG_IN}),
            authorization=AuthorizationPolicy(strategy=AuthorizationStrategy.INCREMENTAL, amount_minor=2000),
        ),
        PRICER,
        CHARGING,
        [
            MeterReading(1, t(907), 101_500, 7200.0),
            UpdateAuthorizationResult(1, t(908), "S1", UpdateOutcome.FAILED),
            MeterReading(1, t(1107), 101_950, 7200.0),
        ],
        False,
    ),
]
