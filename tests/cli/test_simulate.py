"""``evpay-agent simulate`` (OPS-3, HIL-1; DESIGN.md §5.7): the whole station without hardware.

Run as a real subprocess (``evpay-agent simulate`` execs ``python -m hil.simulate``): a scenario file
by ``--script`` (exit 0 passed, 1 failed, 2 unreadable), the interactive console driven through
stdin, Ctrl-C at the console. Every run leaves no process behind (each runs in a process group of
its own, checked empty afterwards).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli import main
from agent.cli import simulate as simulate_cli
from hil.broker import find_mosquitto
from hil.rig.procs import evpay_agent_argv
from hil.simulate import STATION_KEYS, load_tried_config

pytestmark = pytest.mark.req("OPS-3", "HIL-1")
REPO = Path(__file__).resolve().parents[2]
RUN_S = 60.0  # a hard bound per run; each takes 2-12 s
needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


@dataclass
class Done:
    returncode: int
    out: str
    err: str


def _group_gone(pgid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def simulate(*args: str, stdin: str = "") -> Done:
    proc = subprocess.Popen(
        [*evpay_agent_argv(), "simulate", *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=RUN_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _group_gone(proc.pid), f"processes left behind in group {proc.pid}"
    return Done(proc.returncode, out, err)


@pytest.fixture
def station_dir(tmp_path: Path) -> Path:
    return tmp_path / "station"


@needs_mosquitto
def test_script_start_tap_passes(station_dir: Path) -> None:
    done = simulate("--script", "hil/scenarios/start-tap.yaml", "--workdir", str(station_dir))
    assert done.returncode == 0, done.out + done.err
    assert re.search(r"^passed: start-tap \(sim, apollo, [0-9.]+ s\)$", done.out, re.M), done.out
    assert "Traceback" not in done.out + done.err
    assert (station_dir / "agent.log").exists()
    assert (station_dir / "upstream.jsonl").exists()


@needs_mosquitto
def test_script_with_a_failing_expectation_exits_1_with_the_message(
    tmp_path: Path, station_dir: Path
) -> None:
    script = tmp_path / "fails.yaml"
    script.write_text(
        textwrap.dedent(
            """\
            title: Nobody paid, yet the journal is expected to hold a commit
            requirements: [START-1]
            steps:
              - wait_terminal: [WAIT_CARD]
              - expect_journal: {disposals: {commit: 1}}
            """
        )
    )
    done = simulate("--script", str(script), "--workdir", str(station_dir))
    assert done.returncode == 1, done.out + done.err
    failed = [line for line in done.out.splitlines() if line.startswith("failed: fails ")]
    assert failed, done.out
    assert (
        f"step 2 (expect_journal, {script}:5): journal disposals: expected {{'commit': 1}}, got {{}}"
        in (failed[0])
    )
    assert "Traceback" not in done.out + done.err


def test_a_broken_script_exits_2_with_file_line_path_reason(tmp_path: Path) -> None:
    script = tmp_path / "broken.yaml"
    script.write_text("title: broken\nrequirements: [START-1]\nsteps:\n  - plug: 1\n  - tapp: visa\n")
    done = simulate("--script", str(script), "--workdir", str(tmp_path / "station"))
    assert done.returncode == 2
    assert done.err.startswith(f"{script}:5: steps[1].tapp: unknown step 'tapp' (known: "), done.err
    assert done.out == ""
    assert not (tmp_path / "station").exists()  # nothing was started


def test_a_broken_config_exits_2_with_file_line_path_reason(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "station_id: CS-1\nterminal: {url: 'tcp://10.0.0.5:3201', family: apollo}\n"
        "connectors: [{id: 1, max_current_a: 3}]\n"
        "tariff: {currency: EUR, prices_include_vat: true, vat_rate_percent: '21'}\n"
        "upstream: {broker_url: 'mqtt://backend:1883'}\n"
    )
    done = simulate("--config", str(config))
    assert done.returncode == 2
    assert done.err.startswith(f"{config}:3: connectors[0].max_current_a: "), done.err


def test_a_tried_config_keeps_its_behaviour_and_loses_its_wiring() -> None:
    tried = load_tried_config(REPO / "systemd" / "agent.example.yaml")
    assert tried.family == "apollo"
    assert tried.connectors == 2
    assert not set(STATION_KEYS) & set(tried.overrides)
    assert {"url", "family", "driver"}.isdisjoint(tried.overrides["terminal"])
    assert tried.overrides["session"]["start_modes"]  # the behaviour being tried
    assert tried.overrides["tariff"]["currency"] == "EUR"


@needs_mosquitto
def test_the_console_driven_through_stdin(station_dir: Path) -> None:
    commands = [
        "plug 1",
        "tap visa",
        "meter 1 50kW",
        "wait 2",
        "status",
        "unplug 1",
        "wait settled",
        "events",
        "bogus",
        "plug 7",
        "quit",
        "status",  # never run: quit came first
    ]
    done = simulate("--workdir", str(station_dir), stdin="".join(c + "\n" for c in commands))
    out = done.out
    assert done.returncode == 0, out + done.err
    assert "Traceback" not in out + done.err
    assert out.count("evpay> status") == 1
    status = out.split("evpay> status", 1)[1].split("evpay> ", 1)[0]
    assert re.search(r"^station HIL-\S+  evpay-agent \S+  pid [0-9]+ ", status, re.M), status
    assert "connector 1  charging  plugged" in status
    assert re.search(r"^  session \S+  emv  payment charging  [0-9]+ Wh  ", status, re.M), status
    events = out.split("evpay> events", 1)[1].split("evpay> ", 1)[0]
    assert re.search(r"connector 1  payment\.authorized  method=emv .*authorized_minor=5000", events)
    assert re.search(r"connector 1  payment\.captured  .*amount_minor=[1-9]", events), events
    assert re.search(r"connector 1  session\.ended  reason=unplug energy_wh=[1-9]", events), events
    assert "evpay> bogus\nerror: unknown command 'bogus'; type help for the commands\n" in out
    assert "error: plug: no connector 7: the station has connector 1 (usage: plug N)" in out
    assert "stopped; the logs and the journal stay in" in out


@needs_mosquitto
@pytest.mark.parametrize(
    "input_ends_before_s", [None, 0.0, 0.02, 0.1], ids=["ctrl-c", "eof-0ms", "eof-20ms", "eof-100ms"]
)
def test_ctrl_c_at_the_console_tears_the_station_down(
    station_dir: Path, input_ends_before_s: float | None
) -> None:
    """OPS-3: Ctrl-C stops the station in order and exits 130 — also when the end of input (the
    console's own way to quit) came just before it and the teardown is under way: the signal's
    cancellation once cut that teardown short (processes left behind) or was lost (exit 0, CI)."""
    input_ends = input_ends_before_s is not None
    proc = subprocess.Popen(
        [*evpay_agent_argv(), "simulate", "--workdir", str(station_dir)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    out = b""
    try:
        deadline = time.monotonic() + RUN_S
        while b"evpay> " not in out and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                out += os.read(proc.stdout.fileno(), 65536)
        assert b"evpay> " in out, out.decode()
        if input_ends_before_s is not None:
            proc.stdin.close()  # the console quits on the end of input …
            time.sleep(input_ends_before_s)  # … and tears the station down when the Ctrl-C comes
        # on a loaded machine this process may wake up only after the end-of-input teardown is over
        quit_before_ctrl_c = proc.poll() is not None
        if not quit_before_ctrl_c:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole group
        if input_ends:  # communicate() would flush the closed stdin; the rest of the output is small
            assert proc.stderr is not None
            proc.wait(timeout=RUN_S)
            rest, err = proc.stdout.read(), proc.stderr.read()
        else:
            rest, err = proc.communicate(timeout=RUN_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = (out + rest + err).decode()
    assert "Traceback" not in text
    assert _group_gone(proc.pid), f"processes left behind in group {proc.pid}"
    if quit_before_ctrl_c:  # the race went the other way: a plain quit, complete and clean
        assert proc.returncode == 0, text
        assert "stopped; the logs and the journal stay in" in text
        return
    assert proc.returncode == 130, text
    assert "interrupted: the station is stopped" in text
    assert "SIGKILL by the harness" in (station_dir / "agent.log").read_text()  # torn down by us


def test_without_hil_installed_simulate_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(simulate_cli, "_hil_installed", lambda: False)
    assert main(["simulate", "--script", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evpay-agent: error: simulate needs the simulators (hil.simulate")


def test_the_options_are_forwarded_to_hil_simulate(tmp_path: Path) -> None:
    from agent.cli import build_parser

    args = build_parser().parse_args(
        ["-v", "simulate", "--connectors", "2", "--family", "p6x", "-c", str(tmp_path / "a.yaml")]
    )
    assert simulate_cli.forward(args) == [
        "-v",
        "--connectors",
        "2",
        "--family",
        "p6x",
        "--config",
        str(tmp_path / "a.yaml"),
    ]
