"""One LMDB environment per ledger directory per process, with map growth and a resize gate.

LMDB forbids opening one file twice in a process and forbids using an environment after
`fork()`; `open_environment` hands out shared, reference-counted environments and refuses
inherited ones. The map starts small and grows in one place (`grow`), only while no
transaction of this process is open. This module knows nothing of events.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgspec

from ...errors import CorruptLedgerError, LedgerError, LedgerFullError
from .layout import DATABASES

DEFAULT_MAP_SIZE = 8 * 1024 * 1024
DEFAULT_MAX_MAP_SIZE = 1 << 40
MAX_READERS = 512
MAP_RESIZE_RETRIES = 8
"""Times an open or a transaction adopts a map another process grew before giving up."""
DAMAGE_ERRORS = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadTxnError,
                 lmdb.InvalidError, lmdb.PanicError, lmdb.BadValsizeError, msgspec.DecodeError,
                 msgspec.ValidationError)
"""What reading damaged pages or records raises; turned into CorruptLedgerError where read."""


def damaged(path: Path, error: BaseException) -> CorruptLedgerError:
    """The error for a ledger whose files are damaged: what LMDB said, and what to do."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CorruptLedgerError(
        f"the ledger at {path} is damaged ({type(error).__name__}: {detail}): restore it "
        "from a copy (`chatledger verify` says where, if it can read that far)"
    )


class ResizeGate:
    """Lets many read transactions run at once, and a map resize run with none open."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold while a transaction is open; waits while a resize runs."""
        with self._condition:
            while self._resizing:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def resizing(self) -> Iterator[None]:
        """Hold while changing the map size: waits until no transaction is open."""
        with self._condition:
            while self._resizing:
                self._condition.wait()
            self._resizing = True
            while self._readers:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._resizing = False
                self._condition.notify_all()


class SharedEnvironment:
    """An open LMDB environment for one ledger directory, shared by every handle in a process."""

    def __init__(
        self, path: Path, *, map_size: int, max_map_size: int, readonly: bool
    ) -> None:
        self.path = path
        self.max_map_size = max_map_size
        self.readonly = readonly
        self.pid = os.getpid()
        self.gate = ResizeGate()
        self.references = 0
        self.owner: Any = None  # the LedgerStore built on this environment
        self.env = _open_lmdb(path, map_size=map_size, readonly=readonly)
        self.databases: dict[bytes, Any] = {}
        try:
            self._open_databases(readonly)
        except lmdb.NotFoundError:
            self.env.close()
            raise LedgerError(
                f"{path} is an LMDB environment but not a chatledger ledger"
            ) from None
        except lmdb.Error as error:
            self.env.close()
            raise CorruptLedgerError(f"cannot open the ledger at {path}: {error}") from None
        _check_not_truncated(self.env, path)
        self.clear_stale_readers()

    def _open_databases(self, readonly: bool) -> None:
        """Check that the environment holds a ledger's databases only, and open them; a map
        another process grew meanwhile (MDB_MAP_RESIZED) is adopted, and the open retried."""
        for attempt in range(MAP_RESIZE_RETRIES):
            try:
                with self.env.begin() as txn:
                    foreign = [key for key in txn.cursor().iternext(values=False)
                               if key not in DATABASES]
                if foreign:
                    self.env.close()
                    raise LedgerError(
                        f"{self.path} is an LMDB environment of another program, not a ledger"
                    )
                for name in DATABASES:
                    self.databases[name] = self.env.open_db(name, create=not readonly)
                return
            except lmdb.MapResizedError:
                if attempt == MAP_RESIZE_RETRIES - 1:
                    raise
                self.env.set_mapsize(0)  # no transaction of ours is open yet

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Any]:
        """A transaction (short!), adopting a map grown by another process if need be."""
        self.check_process()
        for _ in range(MAP_RESIZE_RETRIES):
            with self.gate.reading():
                try:
                    txn = self._begin(write=write)
                except lmdb.MapResizedError:
                    pass
                else:
                    try:
                        with txn:
                            yield txn
                    except DAMAGE_ERRORS as error:
                        raise damaged(self.path, error) from None
                    return
            self.adopt_map_size()
        raise LedgerError(f"{self.path}: the map keeps being resized by another process")

    def _begin(self, *, write: bool) -> Any:
        """Begin a transaction; if the reader table is full, free the slots of dead
        processes and try once more."""
        for attempt in range(2):
            try:
                return self.env.begin(write=write)
            except lmdb.ReadersFullError:
                if attempt or not self.clear_stale_readers():
                    raise LedgerError(
                        f"{self.path}: all {self.env.max_readers()} LMDB reader slots are "
                        "taken by live processes and threads: close some of them"
                    ) from None
        raise AssertionError("unreachable")

    def clear_stale_readers(self) -> int:
        """Free the reader slots of processes that died holding one (a SIGKILLed CLI or
        backend): they would fill the reader table and pin old pages, so the file would
        grow. Returns how many were freed. Safe at any time, in any process."""
        try:
            return int(self.env.reader_check())
        except lmdb.Error:  # no lock file to clean (a read-only file system)
            return 0

    def adopt_map_size(self) -> None:
        """Take on a map size another process set (LMDB's MDB_MAP_RESIZED)."""
        with self.gate.resizing():
            self.env.set_mapsize(0)

    def grow(self) -> None:
        """Double the map size (called by the one writer after MapFullError, no txn open);
        first free what readers that died pinned, which may be room enough."""
        if self.clear_stale_readers():
            return
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            raise LedgerFullError(
                f"the ledger at {self.path} reached its maximum size of {self.max_map_size} "
                "bytes; raise max_map_size, compact it, or move it to a bigger disk"
            )
        with self.gate.resizing():
            self.env.set_mapsize(min(current * 2, self.max_map_size))

    def check_process(self) -> None:
        """Refuse to use an environment inherited across fork()."""
        if os.getpid() != self.pid:
            raise LedgerError(
                "this ledger was opened before fork(); open it again in the child process"
            )

    def close(self) -> None:
        """Close the environment (callers make sure no transaction is open)."""
        self.env.close()


def _open_lmdb(path: Path, *, map_size: int, readonly: bool) -> Any:
    """Open the LMDB files in `path`, turning LMDB's errors into clear ledger errors."""
    data_file = path / "data.mdb"
    if path.exists() and not path.is_dir():
        raise LedgerError(f"{path} is a file, not a ledger directory")
    if path.is_dir() and not data_file.exists() and any(path.iterdir()):
        raise LedgerError(
            f"{path} is not a chatledger ledger (it has files but no data.mdb); "
            "give an empty or new directory"
        )
    if readonly and not data_file.exists():
        raise LedgerError(f"there is no ledger at {path}")
    if data_file.exists() and data_file.stat().st_size == 0:
        raise CorruptLedgerError(f"{data_file} is empty: the ledger is damaged")
    # A reader who cannot write the lock file (a ledger owned by another user, a read-only
    # mount) opens without LMDB's lock: it then registers no reader slot, so its reads are
    # consistent only while no other process writes the ledger.
    lock = not (readonly and not _lock_file_writable(path))
    try:
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
        for attempt in range(MAP_RESIZE_RETRIES):
            try:
                return lmdb.open(
                    str(path),
                    map_size=map_size,
                    max_dbs=len(DATABASES) + 2,
                    max_readers=MAX_READERS,
                    subdir=True,
                    sync=True,
                    metasync=True,
                    readahead=False,
                    readonly=readonly,
                    lock=lock,
                )
            except lmdb.MapResizedError:
                # Another process grew the data past the map this open sized itself to
                # (py-lmdb's open runs a transaction): open again, sized to the data now.
                if attempt == MAP_RESIZE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")
    except lmdb.InvalidError:
        raise CorruptLedgerError(
            f"{data_file} is not a valid LMDB file: the ledger is damaged or not a ledger"
        ) from None
    except lmdb.VersionMismatchError as error:
        raise LedgerError(f"{path}: written by an incompatible LMDB version: {error}") from None
    except PermissionError as error:
        raise LedgerError(f"no permission to open the ledger at {path}: {error}") from None
    except OSError as error:
        raise LedgerError(
            f"cannot create or open the ledger directory {path}: {error.strerror or error}; "
            "give a directory that can be created"
        ) from None
    except lmdb.Error as error:
        if "Read-only file system" in str(error) or "Permission denied" in str(error):
            raise LedgerError(
                f"the ledger at {path} is on a read-only file system or not writable by this "
                "user: reading it still works; to change it, run as its owner or fix its "
                "permissions"
            ) from None
        raise CorruptLedgerError(f"cannot open the ledger at {path}: {error}") from None


def _lock_file_writable(path: Path) -> bool:
    """Whether this process could open (or create) the ledger's lock.mdb for writing."""
    lock_file = path / "lock.mdb"
    if lock_file.exists():
        return os.access(lock_file, os.W_OK)
    return os.access(path, os.W_OK)


def _check_not_truncated(env: Any, path: Path) -> None:
    """Refuse a data file shorter than its own last page: reading it would crash (SIGBUS)."""
    page_size = env.stat()["psize"]
    last_page = env.info()["last_pgno"]
    size = (path / "data.mdb").stat().st_size
    if size < (last_page + 1) * page_size:
        env.close()
        raise CorruptLedgerError(
            f"{path / 'data.mdb'} is truncated ({size} bytes, needs "
            f"{(last_page + 1) * page_size}): restore it from a copy"
        )


_registry: dict[Path, SharedEnvironment] = {}
_registry_lock = threading.Lock()
_inherited: list[SharedEnvironment] = []


def open_environment(
    path: str | os.PathLike[str],
    *,
    map_size: int = DEFAULT_MAP_SIZE,
    max_map_size: int = DEFAULT_MAX_MAP_SIZE,
    readonly: bool = False,
) -> SharedEnvironment:
    """The process's environment for `path`, opened on first use and shared afterwards."""
    resolved = Path(path).expanduser().resolve()
    with _registry_lock:
        shared = _registry.get(resolved)
        if shared is None:
            shared = SharedEnvironment(
                resolved, map_size=map_size, max_map_size=max_map_size, readonly=readonly
            )
            _registry[resolved] = shared
        elif shared.readonly and not readonly:
            raise LedgerError(f"{resolved} is already open read-only in this process")
        shared.references += 1
        return shared


def release_environment(shared: SharedEnvironment) -> bool:
    """Drop one reference; close and forget the environment at the last. True if closed."""
    with _registry_lock:
        shared.references -= 1
        if shared.references > 0:
            return False
        _registry.pop(shared.path, None)
    shared.close()
    return True


def _forget_after_fork() -> None:
    # Environments must not be used (or closed) in a forked child: keep them referenced
    # so their finalisers never run, and let the child open its own.
    _inherited.extend(_registry.values())
    _registry.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
