"""Verify rate of this code against another copy of chatledger, each on a ledger it wrote.

`python -m benchmarks.verify_rate OLD_PARENT [--sessions N] [--rounds R] [--runs K] [--signed]`
builds, with each side's own code, one LMDB ledger of the benchmark dataset (N sessions of 10
events, `common.session_events`, a signed head checkpointed every 500 sessions), then
alternates the two sides R times; each round starts one process per side that times K whole
`EventLog.verify()` calls, or with `--signed` K `audit.attest.check_ledger` calls (what
`chatledger verify` runs: the verify, the anchor file, forks, the recorded checkpoints'
signatures), in wall clock and the process's CPU time. OLD_PARENT is a directory whose `chatledger` entry is the other copy (a worktree
of an older commit, or a symlink to one): it is put first on that side's PYTHONPATH. Prints
each side's median events/s and CPU microseconds per verified record, and the ratio new/old.
The ledgers stay below the parallel-verify threshold, so one process verifies. It only
writes under a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_WORKER = """
import json, os, sys, time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.hazmat.primitives import serialization
from chatledger.audit.attest import check_ledger
from chatledger.audit.ledger_checkpoints import checkpoint_head
from chatledger.benchmarks.common import session_events, session_ids
from chatledger.config import Config
from chatledger.storage import EventLog
path, sessions, runs, signed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
anchors, key_file = path + ".anchors.jsonl", path + ".key.pem"
fresh = not os.path.exists(path)
log = EventLog(path)
if fresh:
    key = Ed25519PrivateKey.generate()
    with open(key_file, "wb") as file:
        file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    for index, session_id in enumerate(session_ids(sessions)):
        log.append(session_id, session_events(index), 0)
        if index % 500 == 499:
            checkpoint_head(log, key, anchors, "periodic")
    checkpoint_head(log, key, anchors, "on_demand")
with open(key_file, "rb") as file:
    trusted = load_pem_private_key(file.read(), None).public_key()
config = Config(path=path, anchor_file=anchors)
samples = []
for _ in range(runs):
    wall, cpu = time.perf_counter(), time.process_time()
    if signed:
        report = check_ledger(log, config, trusted=trusted)
    else:
        report = log.verify()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not report.ok:
        raise SystemExit(f"the ledger does not verify: {report.reason}")
    samples.append((report.records_checked, wall, cpu))
log.close()
import chatledger
print(json.dumps({"module": chatledger.__file__, "samples": samples}))
"""


def _run_side(python_path: str | None, ledger: str, sessions: int, runs: int,
              signed: bool) -> dict[str, object]:
    """One worker process of one side: its chatledger path and its verify samples."""
    env = dict(os.environ)
    if python_path is not None:
        env["PYTHONPATH"] = python_path + os.pathsep + env.get("PYTHONPATH", "")
    output = subprocess.run(
        [sys.executable, "-c", _WORKER, ledger, str(sessions), str(runs), "1" if signed else "0"],
        env=env, check=True, capture_output=True, text=True, timeout=1800,
        cwd=tempfile.gettempdir(),
    ).stdout
    result: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    return result


def _summary(samples: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Median events/s (wall) and median CPU microseconds per record."""
    rate = statistics.median(records / wall for records, wall, _ in samples)
    cpu = statistics.median(cpu * 1e6 / records for records, _, cpu in samples)
    return rate, cpu


def main() -> None:
    """Build both ledgers, alternate the verify runs, print the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_parent", help="a directory whose `chatledger` is the old code")
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3, help="verify calls per process")
    parser.add_argument("--signed", action="store_true",
                        help="time what `chatledger verify` runs (`audit.attest.check_ledger`: "
                             "the verify, the anchors, forks and the signed checkpoints)")
    args = parser.parse_args()
    sides = {"old": os.path.abspath(args.old_parent), "new": None}
    samples: dict[str, list[tuple[int, float, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="verify-rate-") as work:
        for name, python_path in sides.items():  # build each ledger with its own code
            built = _run_side(python_path, os.path.join(work, name), args.sessions, 1,
                              args.signed)
            print(f"{name}: {built['module']}", flush=True)
        for round_number in range(args.rounds):
            order = list(sides) if round_number % 2 == 0 else list(reversed(sides))
            for name in order:
                result = _run_side(sides[name], os.path.join(work, name), args.sessions,
                                   args.runs, args.signed)
                samples[name].extend(result["samples"])  # type: ignore[arg-type]
            print(f"round {round_number + 1}/{args.rounds} done "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    old_rate, old_cpu = _summary(samples["old"])
    new_rate, new_cpu = _summary(samples["new"])
    records = samples["new"][0][0]
    what = "check_ledger (verify with signatures)" if args.signed else "EventLog.verify"
    print(f"{what} of {records:,} records, {len(samples['new'])} runs per side, medians:")
    print(f"  old: {old_rate:,.0f} events/s, {old_cpu:.2f} us CPU per record")
    print(f"  new: {new_rate:,.0f} events/s, {new_cpu:.2f} us CPU per record")
    print(f"  new/old: rate {new_rate / old_rate:.3f}x, CPU-rate {old_cpu / new_cpu:.3f}x")
    print(f"  load average now: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
