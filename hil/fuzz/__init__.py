"""``python -m hil.fuzz``: the real ``evpay-agent run`` process in seeded random worlds.

Why: the defects that independent black-box runs found came from worlds slightly different from our
simulators' habits (a charger that sends no meter value before energy flows, a kill right after an
approval, a resumed session). The fuzzer varies everything the contracts allow and asserts
invariants, not scenarios.

::

    python -m hil.fuzz --seeds N [--seed S] [--jobs J] [--out DIR] [--keep] [--mutant NAME]
                       [--size small|normal] [--json FILE]

* :mod:`hil.fuzz.world` — the world of a seed, every choice drawn from ``random.Random(seed)``:
  terminal (family, transport, granted Protocol options, Not Ready at boot, reply delays, link drops,
  reboots, the Setup session timeout scaled into the seed), charger (habits: meter mode, period in
  compressed world seconds, retain, power, plug/status order, status on plug, duplicates; a register
  that does not start at 0; current and energy limits; one broker or its own), agent configuration
  (1 to 3 connectors, start and stop modes, authorization strategy, tariff in the simple or the
  OCPI 2.2.1 form, short timers), a back office that sends ``set_tariff`` 0 to 2 times (either
  form, a bare OCPI Tariff too, some right around a kill), a charger that reports ``current_a`` or
  not, a session
  script per connector (plug-in or tap first or Apollo UI start, declined and partially approved
  cards, a stranger's card on a busy connector, stop by tap/unplug/remote/charger fault, EV pauses,
  a vehicle that never comes) and faults at random instants (SIGKILL and restart, also inside a
  broker outage; crash points armed per start; broker outages; a hung upstream broker — the TCP
  connection open, no byte moving, 3 to 16 s, longer than the agent's 10 s PUBACK watchdog in part
  of the worlds — drawn from a random stream of its own so every other dimension of a seed stays;
  terminal faults; charger loss, reconnects and re-deliveries).
* :mod:`hil.fuzz.runner` — one seed through the real processes (the rig of :mod:`hil.rig`), then
  unplug everything and settle with bounded waits.
* :mod:`hil.fuzz.oracle` — the assertions: the upstream stream passes :func:`hil.stream.check` with
  ``complete=True``; every approved terminal session ends in exactly one Commit or Void (an approval
  the journal never saw only with a ``possible_orphan_approval`` alarm, voided by the terminal's
  timeout on Apollo or by List Sessions on P6X); commit = ``session.ended`` = receipt = an independent
  price, by the tariff in force when the session began, of what its charging periods say it used,
  capped at the authorized amount; no later session priced by an earlier tariff; the charging
  periods of ``session.ended`` and the receipt equal and consistent with the session; no more
  energy billed than the charger delivered; STOP-2; no traceback or unexplained error line in the
  agent's log.
* :mod:`hil.fuzz.mutants` — patches that re-introduce the integrity defects (``--mutant NAME``).

A seed that fails prints its findings and the one command that replays it (same world, same
schedule; real-process timing still varies, so a race may need a few replays). Exit status 0 only
when no seed had a finding.
"""
