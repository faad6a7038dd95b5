"""Audit tools over a ledger: JSONL export and checked import, offline checks of an export,
signed heads and anchors, evidence HTML, replay views, statistics.

Everything here reads through the event store's public methods (and writes only through
`append_atomically` and `append_verbatim`, for import); nothing starts actors or agents
(the checkpointer starts one thread of its own).
"""
