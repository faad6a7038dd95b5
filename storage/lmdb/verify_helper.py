"""The helper process of a parallel verify: checks the second half of a ledger's sessions.

`python -c "from chatledger.storage.lmdb.verify_helper import main; ..." PATH START_HEX UNTIL`
opens the ledger read-only, checks every session from START (`verify.check_sessions`) in one
read transaction, counting the records up to position UNTIL apart, and prints one
MessagePack `RangeReport`. It only says whether its range is
intact; the caller decides, and explains problems with the sequential check.
"""

from __future__ import annotations

import sys

import msgspec

from .environment import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE
from .store import acquire_store, release_store
from .verify import check_sessions


def main(argv: list[str]) -> int:
    """Check the sessions from bytes.fromhex(argv[1]) on of the ledger at argv[0], counting
    records up to position int(argv[2]) apart, and write the report to stdout; exit 1 on
    any error (the caller then verifies sequentially)."""
    try:
        store = acquire_store(argv[0], DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, True)
        try:
            with store.shared.transaction() as txn:
                report = check_sessions(
                    store, txn, bytes.fromhex(argv[1]), None, until=int(argv[2])
                )
        finally:
            release_store(store)
    except Exception as error:  # noqa: BLE001 - any failure means: verify sequentially
        print(f"verify helper: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(msgspec.msgpack.encode(report))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
