"""Tests of hil.stream: the upstream capture and the independent contract checker."""
