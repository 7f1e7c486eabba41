"""Smoke test of the agent-level benchmarks (``python -m hil.bench --quick --only agent``).

Checks that every figure is produced as a positive number; the budget verdicts are reported by the
bench, not asserted here (no timing assertions in tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.mosquitto import find_mosquitto

FIGURES = {
    "card_read_to_auth_session": ("p50_ms", "p99_ms", "budget_p99_ms"),
    "card_read_to_auth_session_card_already_at_reader": ("p50_ms", "max_ms", "budget_p99_ms"),
    "unplug_to_commit_session": ("p50_ms", "p99_ms", "p99_from_charger_sim_call_ms", "budget_p99_ms"),
    "rss_after_sessions": ("rss_mib", "peak_rss_mib", "rss_at_ready_mib", "sessions", "budget_mib"),
    "idle_cpu": ("cpu_schedstat_percent", "window_s", "budget_percent"),
    "start_to_ready": ("median_ms", "min_ms", "max_ms", "samples", "budget_ms"),
    "restart_to_pending_settlements_sent": (
        "all_sent_after_spawn_ms",
        "ready_after_spawn_ms",
        "pending_settlements",
        "budget_ms",
    ),
}


def bench(*args: str, timeout_s: float) -> dict[str, Any]:
    """``python -m hil.bench ARGS``: its JSON object; fails the test on a non-zero exit."""
    out = subprocess.run(
        [sys.executable, "-m", "hil.bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_bench_agent_quick_reports_every_figure() -> None:
    agent = bench("--quick", "--only", "agent", timeout_s=170)["agent"]
    for figure, keys in FIGURES.items():
        entry = agent[figure]
        for key in keys:
            value = entry[key]
            assert not isinstance(value, bool), (figure, key)
            assert isinstance(value, int | float), (figure, key, value)
            assert value > 0, (figure, key, value)
        assert isinstance(entry["within_budget"], bool), figure
    # utime+stime has 10 ms ticks: over the quick 3 s window it may be 0; present and not negative
    assert agent["idle_cpu"]["cpu_percent"] >= 0
    assert agent["unplug_to_commit_session"]["commits"] > 0
    assert agent["restart_to_pending_settlements_sent"]["pending_settlements"] == 8


@pytest.mark.timeout(180)
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_bench_codec_and_outbox_report_their_figures() -> None:
    result = bench("--quick", "--only", "psp_codec", "--only", "outbox", timeout_s=170)
    codec, outbox = result["psp_codec"], result["outbox"]
    for key in ("decoder_bytes_per_s", "decoder_x_line_rate_57600", "decoder_byte_at_a_time_bytes_per_s"):
        assert codec[key] > 0, key
    assert outbox["backlog_messages"] == 10_000
    for key in ("outbox_drain_msgs_per_s", "plain_aiomqtt_qos1_pipelined_msgs_per_s", "ratio_vs_pipelined"):
        assert outbox[key] > 0, key
    assert isinstance(outbox["within_budget"], bool)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_the_profile_tool_measures_the_meter_path(tmp_path: Path) -> None:
    """``python -m hil.bench.profile`` (docs/performance.md) runs the bench's rig and reports the
    meter path's latency and the agent's CPU per reading."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "hil.bench.profile", "meter"),
            *("--connectors", "2", "--seconds", "2", "--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout)
    assert figures["connectors_charging"] == 2
    assert figures["samples"] > 0
    assert 0 < figures["meter_to_upstream_p50_ms"] <= figures["meter_to_upstream_p99_ms"]
    assert figures["cpu_ms_per_reading"] > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_bench_scaling_quick_reports_the_growth_tables() -> None:
    """Issue 12 cost growth: one row per connector count and per journal size, numbers only."""
    scaling = bench("--quick", "--only", "scaling", timeout_s=230)["scaling"]
    rows = scaling["connectors_charging_1hz"]
    assert [r["connectors"] for r in rows] == [1, 8]
    for row in rows:
        assert row["samples"] > 0
        for key in ("agent_cpu_percent", "meter_to_upstream_p50_ms", "meter_to_upstream_p99_ms"):
            assert isinstance(row[key], int | float), (key, row)
            assert row[key] >= 0, (key, row)
    growth = scaling["journal_growth"]
    assert [g["sessions_in_journal"] for g in growth] == [100, 1000]
    for g in growth:
        assert g["payments_rows"] >= g["sessions_in_journal"]  # the filled sessions are in the journal
        assert g["rss_mib"] > 0
        assert g["start_to_ready_median_ms"] > 0
    assert growth[1]["journal_mib"] > growth[0]["journal_mib"]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_the_fleet_bench_restarts_the_broker_and_sees_every_station_back() -> None:
    """Issue 12 fleet: three stations, a 2 s outage of their shared broker; every station
    reconnects and drains its backlog, and the figures are numbers (not their size)."""
    fleet = bench("fleet", "--stations", "3", "--outage", "2", timeout_s=170)["fleet"]
    assert fleet["ok"] is True
    assert fleet["stations"] == fleet["agents_alive_at_end"] == 3
    assert fleet["agents_with_traceback"] == []
    assert fleet["backlog_meter_messages"] > 0  # the stations queued meter values during the outage
    for key in ("reconnect_after_restart", "backlog_drained_after_restart"):
        spread = fleet[key]
        assert 0 <= spread["min_s"] <= spread["p50_s"] <= spread["max_s"], (key, spread)
        assert 1 <= spread["max_per_100ms"] <= 3
    assert fleet["all_drained_after_s"] == fleet["backlog_drained_after_restart"]["max_s"]
    assert fleet["broker_publish_rate_steady_per_s"] > 0
