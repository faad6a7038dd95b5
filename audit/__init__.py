"""Audit tools over a ledger: JSONL export and checked import, HTML transcripts, statistics.

Everything here works through the store port (`storage.port.AuditStore`: records with their
stored bytes, the session index, `append_atomically` for import), whatever the store; nothing
here opens a store, names an implementation, or starts actors or agents.
"""
