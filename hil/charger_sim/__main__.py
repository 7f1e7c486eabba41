"""``python -m hil.charger_sim``: run the charger simulator until SIGINT, SIGTERM or ``quit``.

Prints one JSON line on stdout saying where the control channel is and which habits are in effect,
e.g. ``{"broker": "mqtt://127.0.0.1:1883", ..., "control": {"host": "127.0.0.1", "port": 40123},
"habits": {"meter_mode": "always", ..., "seed": 1234}}`` (``"control": "stdin"`` with
``--control-stdin``: commands on stdin, answers on stdout; EOF quits). The habit flags
(``--meter-mode``, ``--meter-interval``, ``--[no-]meter-retain``, ``--[no-]power``, ``--plug-order``,
``--[no-]status-on-plug``, ``--duplicate-rate``, ``--seed``) are described in
:mod:`hil.charger_sim.habits`; the defaults are the simulator's historic behaviour. Without
``--seed`` a seed is drawn and reported in ``habits`` so that a run can be repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from hil.charger_sim.habits import ChargerHabits, MeterMode, PlugOrder
from hil.charger_sim.simulator import ChargerSimulator

_LOGGER = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hil.charger_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    parser.add_argument("--connectors", type=int, default=1, help="number of connectors (ids 1..N)")
    parser.add_argument("--prefix", default="charger", help="topic prefix (default: charger)")
    control = parser.add_mutually_exclusive_group()
    control.add_argument("--control-port", type=int, default=0, help="TCP control port (0: any free port)")
    control.add_argument("--control-stdin", action="store_true", help="control channel on stdin/stdout")
    parser.add_argument("--control-host", default="127.0.0.1", help="TCP control address")
    parser.add_argument("--log-level", default="WARNING", help="logging level on stderr")
    habits = parser.add_argument_group(
        "habits", "how this charger's firmware behaves (hil.charger_sim.habits)"
    )
    default = ChargerHabits()
    habits.add_argument(
        "--meter-mode",
        choices=[m.value for m in MeterMode],
        default=default.meter_mode.value,
        help="always: on every change, periodically while plugged and after connect; flowing: only "
        "while energy flows plus a final value when it stops; periodic: only on the timer while plugged",
    )
    habits.add_argument(
        "--meter-interval", type=float, default=default.meter_interval_s, help="meter timer, seconds"
    )
    habits.add_argument(
        "--meter-retain",
        action=argparse.BooleanOptionalAction,
        default=default.meter_retain,
        help="publish meter retained",
    )
    habits.add_argument(
        "--power",
        dest="report_power",
        action=argparse.BooleanOptionalAction,
        default=default.report_power,
        help="include power_w in meter payloads (--no-power: energy register only)",
    )
    habits.add_argument(
        "--current",
        dest="report_current",
        action=argparse.BooleanOptionalAction,
        default=default.report_current,
        help="include current_a (per phase, 230 V) in meter payloads",
    )
    habits.add_argument(
        "--plug-order",
        choices=[o.value for o in PlugOrder],
        default=default.plug_order.value,
        help="which of plug and status goes first on a plug change and in the published state",
    )
    habits.add_argument(
        "--status-on-plug",
        action=argparse.BooleanOptionalAction,
        default=default.status_on_plug,
        help="also publish an unchanged status on plug-in and unplug",
    )
    habits.add_argument(
        "--duplicate-rate",
        type=float,
        default=default.duplicate_rate,
        help="probability 0..1 that a message is published twice",
    )
    habits.add_argument("--seed", type=int, default=None, help="seed of the duplicate RNG (default: random)")
    parser.add_argument(
        "--initial-energy-wh",
        type=int,
        default=0,
        help="every connector's meter register at start, Wh (a meter in service; default 0)",
    )
    return parser


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _stdin_control(sim: ChargerSimulator) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1024)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    class _Stdout:
        def write(self, data: bytes) -> None:
            sys.stdout.write(data.decode())
            sys.stdout.flush()

        async def drain(self) -> None:
            return None

    try:
        await sim.serve_control_stream(reader, _Stdout())
    finally:
        transport.close()


async def _main(args: argparse.Namespace) -> int:
    sim = ChargerSimulator(
        args.broker,
        connectors=args.connectors,
        prefix=args.prefix,
        meter_interval_s=args.meter_interval,
        meter_mode=args.meter_mode,
        meter_retain=args.meter_retain,
        report_power=args.report_power,
        report_current=args.report_current,
        plug_order=args.plug_order,
        status_on_plug=args.status_on_plug,
        duplicate_rate=args.duplicate_rate,
        seed=args.seed,
        initial_energy_wh=args.initial_energy_wh,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with sim, asyncio.TaskGroup() as group:
        info: dict[str, object] = {
            "broker": args.broker,
            "prefix": args.prefix,
            "connectors": list(sim.connector_ids),
        }
        if args.control_stdin:
            info["control"] = "stdin"
            stdin_task = group.create_task(_stdin_control(sim), name="charger-sim-stdin")
            stdin_task.add_done_callback(lambda _: stop.set())  # EOF on stdin quits
        else:
            host, port = await sim.start_control_server(args.control_host, args.control_port)
            info["control"] = {"host": host, "port": port}
        info["habits"] = sim.habits.as_dict()
        info["initial_energy_wh"] = sim.initial_energy_wh
        _emit(json.dumps(info, separators=(",", ":")))
        quit_task = group.create_task(sim.wait_quit(), name="charger-sim-quit")
        quit_task.add_done_callback(lambda _: stop.set())
        await stop.wait()
        for task in (quit_task, *([stdin_task] if args.control_stdin else [])):
            task.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.connectors < 1:
        _LOGGER.error("--connectors must be >= 1")
        return 2
    try:
        return asyncio.run(_main(args))
    except ValueError as exc:  # invalid broker URL, prefix, topics or habits (--meter-interval > 0 …)
        _LOGGER.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
