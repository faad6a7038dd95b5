"""Periodic checkpoints: a running backend signs its head into the anchor file, and records
it in the ledger (`HeadCheckpointed` on the `~checkpoints` stream), every `anchor_interval`
seconds when the head has moved, and once more (to the anchor file only, as every short
`chatledger` command would otherwise add a record) when it stops.

A checkpoint costs one head read, one Ed25519 signature (tens of microseconds), one fsync'ed
line and one small append, so it runs on its own daemon thread and never holds up a turn. A
head moved only by the last checkpoint's own record is not checkpointed again. A ledger that
no longer continues its last anchored head is not checkpointed (that would launder a
rollback); it is logged. This module starts one thread and nothing else.
"""

from __future__ import annotations

import logging
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config import Config
from ..errors import ChatledgerError
from ..storage import EventStore, Head
from .attest import open_signing_key
from .ledger_checkpoints import checkpoint_head
from .locations import anchor_file_path

logger = logging.getLogger(__name__)


class Checkpointer:
    """Signs the head into the anchor file and the ledger periodically (a daemon thread) and
    on `close`."""

    def __init__(self, log: EventStore, key: Ed25519PrivateKey, anchor_file: str,
                 interval: float) -> None:
        self._log = log
        self._key = key
        self._anchor_file = anchor_file
        self._interval = interval
        self._stopping = threading.Event()
        self._last: Head | None = None
        self._thread = threading.Thread(target=self._run, name="chatledger-checkpoints",
                                        daemon=True)
        self._thread.start()

    def checkpoint_now(self, trigger: str = "periodic") -> None:
        """Anchor and record the head if it moved since the last checkpoint; errors are
        logged. Blocks for one signature, one fsync and one append."""
        try:
            head = self._log.head()
            if head == self._last or head.position == 0:
                return
            done = checkpoint_head(self._log, self._key, self._anchor_file, trigger,
                                   record=trigger != "shutdown")
            # The signed head, not the one after our record: the next tick finds only our
            # record and records nothing; the shutdown checkpoint anchors it.
            self._last = done.signed.head
        except (ChatledgerError, OSError) as error:
            logger.error("head not checkpointed: %s", error)

    def _run(self) -> None:
        """The checkpoint loop. Runs in the checkpointer's own thread."""
        while not self._stopping.wait(self._interval):
            self.checkpoint_now()

    def close(self) -> None:
        """Stop the thread, then checkpoint once more (blocks until both are done); call it
        while the log is still open."""
        self._stopping.set()
        self._thread.join()
        self.checkpoint_now("shutdown")


def start_checkpoints(config: Config, log: EventStore) -> Checkpointer | None:
    """A Checkpointer for a running backend, or None when `anchor_interval` is 0 or there is
    no signing key to be had (logged). Creates the ledger's key if it has none, either way:
    a ledger gets its key when it is first opened to act."""
    key = open_signing_key(config)
    if key is None or config.anchor_interval <= 0:
        return None
    return Checkpointer(log, key, str(anchor_file_path(config)), config.anchor_interval)
