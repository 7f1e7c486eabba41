"""Hardware-facing code: transports, the PSP terminal driver, charger drivers.

Imports nothing from ``agent``, ``statemachines`` or ``hil`` (DESIGN.md §1).
"""
