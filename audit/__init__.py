"""Audit tools over a ledger: JSONL export and checked import, HTML transcripts, statistics.

Everything here reads through the event store port (and `append_atomically` for import);
nothing starts actors or agents.
"""
