"""Memory per live and per passivated session, measured in a fresh process.

`python -m benchmarks.memory LEDGER_PATH N` opens the ledger (which already holds at least N
sessions), starts chatledger's runtime, activates N sessions (one live actor each), passivates
them all again, and prints one JSON line with the resident set size (RSS) at each step. Run
alone in its process so nothing else's memory is counted.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time

from chatledger.storage import EventLog

from .common import rss_bytes
from .runtime_bench import open_ledger


def main(path: str, count: int) -> dict[str, float]:
    """Measure and return the RSS figures (bytes, and bytes per session)."""
    with EventLog(path) as log:
        session_ids = [info.session_id for info in log.sessions() if info.version][:count]
    if len(session_ids) < count:
        raise SystemExit(f"the ledger holds {len(session_ids)} sessions, not {count}")
    ledger = open_ledger(path)
    runtime = ledger.runtime
    threads_before = threading.active_count()
    gc.collect()
    time.sleep(0.2)
    baseline = rss_bytes()
    start = time.perf_counter()
    for session_id in session_ids:
        runtime.live_info(session_id)
    activation_seconds = time.perf_counter() - start
    gc.collect()
    live = rss_bytes()
    threads_live = threading.active_count()
    for session_id in session_ids:
        runtime.passivate(session_id)
    deadline = time.monotonic() + 120
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()
    passivated = rss_bytes()
    ledger.close()
    return {
        "sessions": count,
        "rss_baseline": baseline,
        "rss_live": live,
        "rss_passivated": passivated,
        "bytes_per_live_session": (live - baseline) / count,
        "bytes_per_passivated_session": max(0, passivated - baseline) / count,
        "threads_before": threads_before,
        "threads_live": threads_live,
        "threads_after_passivation": threading.active_count(),
        "activation_seconds": activation_seconds,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
