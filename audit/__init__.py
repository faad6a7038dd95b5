"""Audit tools over a ledger: JSONL export and checked import, offline checks of an export,
signed heads and anchors, evidence HTML, replay views, statistics.

Everything here works through the store port (`storage.port.AuditStore`: records with their
stored bytes, the session index, `append_atomically` and `append_verbatim` for import),
whatever the store; nothing here opens a store, names an implementation, or starts actors or
agents (the checkpointer starts one thread of its own).
"""
