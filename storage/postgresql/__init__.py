"""The PostgreSQL event store: one ledger shared by several backend nodes.

Only this subpackage imports psycopg (the optional `postgresql` extra).
"""
