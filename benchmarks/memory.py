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

from .common import memory_status
from .runtime_bench import open_ledger


def main(path: str, count: int) -> dict[str, float]:
    """Measure and return the memory figures (bytes, and bytes per session): total RSS,
    its anonymous (private) part and its file-backed part (LMDB pages read)."""
    with EventLog(path) as log:
        session_ids = [info.session_id for info in log.sessions() if info.version][:count]
    if len(session_ids) < count:
        raise SystemExit(f"the ledger holds {len(session_ids)} sessions, not {count}")
    ledger = open_ledger(path)
    runtime = ledger.runtime
    threads_before = threading.active_count()
    gc.collect()
    time.sleep(0.2)
    baseline = memory_status()
    start = time.perf_counter()
    for session_id in session_ids:
        runtime.live_info(session_id)
    activation_seconds = time.perf_counter() - start
    gc.collect()
    live = memory_status()
    threads_live = threading.active_count()
    for session_id in session_ids:
        runtime.passivate(session_id)
    deadline = time.monotonic() + 120
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()
    passivated = memory_status()
    ledger.close()
    report: dict[str, float] = {
        "sessions": count,
        "threads_before": threads_before,
        "threads_live": threads_live,
        "threads_after_passivation": threading.active_count(),
        "activation_seconds": activation_seconds,
    }
    for name, key in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile")):
        report[f"{name}_baseline"] = baseline.get(key, 0)
        report[f"{name}_live"] = live.get(key, 0)
        report[f"{name}_passivated"] = passivated.get(key, 0)
        report[f"{name}_per_live_session"] = (live.get(key, 0) - baseline.get(key, 0)) / count
        report[f"{name}_per_passivated_session"] = max(
            0, passivated.get(key, 0) - baseline.get(key, 0)) / count
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
