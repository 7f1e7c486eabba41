"""Pure session logic: per-connector machine and terminal arbitration (DESIGN.md §4).

No I/O, no asyncio, no clock reads, and nothing imported from ``agent``, ``drivers`` or ``hil``.
"""
