"""Numbered SQL migrations of the journal (``NNNN_name.sql``), applied in order by agent.store.journal."""
