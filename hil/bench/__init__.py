"""Benchmarks for the budgets of DESIGN.md §7: ``python -m hil.bench`` prints one JSON object.

Each benchmark is a function registered in :data:`BENCHMARKS`; it returns a dict of figures that
becomes one key of the output. ``--only NAME`` runs a subset.
"""
