"""The PostgreSQL event store: one ledger shared by several backend nodes.

`open_postgresql_store("postgresql://...")` opens it (creating or migrating the schema). Only
this subpackage imports psycopg (the optional `postgresql` extra); nothing above `storage/`
should import it directly, but ask the store factory.
"""

from .connection import ConnectionLostError, PoolExhaustedError
from .schema import SCHEMA_VERSION
from .store import PostgresStore, open_postgresql_store
from .verify import PostgresVerifyReport
from .writer import AppendOutcomeUnknownError

__all__ = [
    "SCHEMA_VERSION",
    "AppendOutcomeUnknownError",
    "ConnectionLostError",
    "PoolExhaustedError",
    "PostgresStore",
    "PostgresVerifyReport",
    "open_postgresql_store",
]
