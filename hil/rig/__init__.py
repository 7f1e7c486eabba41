"""The process rig: real processes (the agent, the simulators, Mosquitto) and the waits around them.

* :mod:`hil.rig.procs` — ``Proc``, ``LineClient``, ``PspSim``, ``ChargerSim``, ``TerminalLink``,
  ``Agent``, ``wait_until``;
* :mod:`hil.rig.broker` — a restartable ``Mosquitto`` and a ``TcpGate`` in front of it;
* :mod:`hil.rig.config` — the agent configuration of a rig (``base_config``);
* :mod:`hil.rig.invariants` — settlement and journal invariants of a finished run.

Used by the end-to-end tests (``tests/e2e/harness.py``), the fuzzer (:mod:`hil.fuzz`) and the HIL
runner. Imports nothing of ``tests``.
"""
