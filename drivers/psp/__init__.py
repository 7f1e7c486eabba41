"""Payter Session Protocol (PSP) driver: codec, messages, link, terminal session (DESIGN.md §3.2)."""
