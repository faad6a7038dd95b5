"""The LMDB store: the embedded default, one LMDB directory per ledger.

`EventLog` implements the whole store port. Its layout (`layout`), per-process environment
(`environment`), group-commit writer (`writer`), write path (`store`) and snapshot verify
(`verify`, `verify_helper`) live here and nowhere else; code above `storage/` opens it
through `chatledger.storage.open_store` and never imports this package.
"""

from .log import EventLog

__all__ = ["EventLog"]
