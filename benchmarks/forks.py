"""What forks and in-ledger checkpoints cost: making a fork of a long session, and verify
(`check_ledger`, the whole ledger, as `chatledger verify` runs it) with forks to compare
against their parents and checkpoints to check, beside the same ledger without them.

`python -m benchmarks.forks [--quick]`. Writes temporary LMDB ledgers; starts no agent.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from chatledger.actors.fork import fork_session
from chatledger.audit.attest import check_ledger
from chatledger.audit.ledger_checkpoints import check_recorded_checkpoints, checkpoint_head
from chatledger.audit.lineage import check_lineage
from chatledger.audit.signing import ensure_signing_key
from chatledger.config import load_config
from chatledger.events import MessageSent, ResponseReceived, SessionCreated
from chatledger.storage import open_store


def fill(path: str, sessions: int, turns: int) -> None:
    """`sessions` sessions of `turns` answered turns each (two events per turn)."""
    with open_store(path) as log:
        for index in range(sessions):
            events: list = [SessionCreated()]
            for turn in range(1, turns + 1):
                events += [MessageSent(turn=turn, text=f"question {turn} " * 8),
                           ResponseReceived(turn=turn, text=f"answer {turn} " * 20,
                                            cost_usd=0.001)]
            log.append(f"s{index}", events, 0)


def timed(function: Callable[[], object], repeat: int,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """The median seconds of `repeat` calls (wall time, or the clock given)."""
    samples = []
    for _ in range(repeat):
        start = clock()
        function()
        samples.append(clock() - start)
    return statistics.median(samples)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="A smaller run.")
    args = parser.parse_args()
    sessions, turns, forks, checkpoints = (16, 100, 10, 50) if args.quick else (16, 500, 50, 500)
    repeat = 3 if args.quick else 5
    with tempfile.TemporaryDirectory(prefix="chatledger-forks-") as directory:
        path = str(Path(directory) / "ledger")
        fill(path, sessions, turns)
        config = load_config(path=path, anchor_interval=0)
        with open_store(path) as log:
            records = log.head().position
            plain = timed(lambda: check_ledger(log, config), repeat)
            made = []
            for number in range(forks):
                start = time.perf_counter()
                fork_session(log, f"s{number % sessions}", 2 * turns + 1, f"fork-{number}")
                made.append(time.perf_counter() - start)
            key = ensure_signing_key(Path(directory) / "key")
            anchors = Path(directory) / "anchors.jsonl"
            recording = []
            for number in range(checkpoints):
                log.append("s0", [MessageSent(turn=10_000 + number, text="x")],
                           log.require_info("s0").version)
                start = time.perf_counter()
                checkpoint_head(log, key, anchors)
                recording.append(time.perf_counter() - start)
            grown = log.head().position
            config = load_config(path=path, anchor_interval=0, anchor_file=str(anchors),
                                 signing_key=str(Path(directory) / "key"))
            full = timed(lambda: check_ledger(log, config, trusted=key.public_key()), repeat)
            check = check_ledger(log, config, trusted=key.public_key())
            lineage = timed(lambda: check_lineage(log), repeat, clock=time.process_time)
            signatures = timed(lambda: check_recorded_checkpoints(log, key.public_key()), repeat,
                               clock=time.process_time)
    assert check.ok and check.checkpoints == checkpoints, check.problems[:3]
    print(f"fork of a {2 * turns + 1}-event session: median "
          f"{statistics.median(made) * 1000:.1f} ms ({forks} forks)")
    print(f"checkpoint (sign, anchor, record): median "
          f"{statistics.median(recording) * 1000:.2f} ms ({checkpoints} checkpoints)")
    print(f"verify, {records} records, no forks or checkpoints: {plain * 1000:.0f} ms "
          f"({records / plain:,.0f} records/s)")
    print(f"verify, {grown} records with {forks} forks and {checkpoints} checkpoints: "
          f"{full * 1000:.0f} ms ({grown / full:,.0f} records/s, "
          f"{(grown / full) / (records / plain):.2f}x the rate without)")
    copied = forks * (2 * turns + 1)
    print(f"  of which the lineage check: {lineage * 1000:.0f} ms CPU "
          f"({lineage / copied * 1e6:.1f} us per copied record), the recorded checkpoints: "
          f"{signatures * 1000:.0f} ms CPU ({signatures / checkpoints * 1e3:.3f} ms each)")


if __name__ == "__main__":
    main()
