"""``python -m hil.charger_sim``: run the charger simulator until SIGINT, SIGTERM or ``quit``.

Prints one JSON line on stdout saying where the control channel is, e.g.
``{"control": {"host": "127.0.0.1", "port": 40123}, "broker": "mqtt://127.0.0.1:1883", ...}``
(``"control": "stdin"`` with ``--control-stdin``: commands on stdin, answers on stdout; EOF quits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from hil.charger_sim.simulator import DEFAULT_METER_INTERVAL_S, ChargerSimulator

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
    parser.add_argument("--meter-interval", type=float, default=DEFAULT_METER_INTERVAL_S, help="seconds")
    parser.add_argument("--log-level", default="WARNING", help="logging level on stderr")
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
        args.broker, connectors=args.connectors, prefix=args.prefix, meter_interval_s=args.meter_interval
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
    if args.connectors < 1 or not args.meter_interval > 0:
        _LOGGER.error("--connectors must be >= 1 and --meter-interval > 0")
        return 2
    try:
        return asyncio.run(_main(args))
    except ValueError as exc:  # invalid broker URL, prefix or topics
        _LOGGER.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
