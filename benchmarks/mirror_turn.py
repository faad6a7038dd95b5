"""What the transcript mirror costs a streamed turn: `python -m benchmarks.mirror_turn [--quick]`.

Issue 20's target: the mirror adds at most 1 ms to the time to the first text delta. Three
figures, on the real runtime (`Ledger`, LMDB, the run pool, the stand-in agent):

- time to the first delta, from `send` to the first `TextDeltaUpdate`, with
  `transcript_mirror` "on" and "off" in alternating turns of one session each (the stand-in
  prints its frames like claude: one before the result line, one after it). The process
  start dominates and varies by milliseconds, so this row shows the medians and their
  difference, not a proof below 1 ms;
- what the run thread does before the agent is spawned (the only mirror work on the way to
  the first delta): `TurnTranscript.begin` for a first turn (the recorder starts), and for a
  resumed turn whose local transcript of N entries is complete (the restore check reads
  the file; the ledger side comes from the store's remembered tail), unchanged since this
  node last found it complete (a stat), or missing (it writes the file);
- what the reading thread pays per frame: parse the `transcript_mirror` line and queue it
  (the commit happens on the recorder's thread).

`--claude` also times the first delta with the real claude against the tests' instant fake
Messages API (127.0.0.1), resume strategy, mirror on and off.

Prints a table; `--json F` also writes the figures. Never touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from chatledger.actors.transcripts import Transcripts, TurnTranscript
from chatledger.actors.updates import TextDeltaUpdate
from chatledger.agent import StreamJsonParser
from chatledger.ledger import Ledger
from chatledger.sdk_store import LedgerSessionStore, TranscriptKey
from chatledger.transcript import project_key_for_directory, transcript_file

from .sdk_store import transcript_entries

STANDIN = (sys.executable, "-m", "chatledger.testing.standin")
TTFD_TARGET_MS = 1.0
AGENT_SESSION = "8d1c7a2e-1111-4c1d-9a43-2b6f0d1e7c55"


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": statistics.median(ordered) * 1000,
            "p90_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000,
            "count": len(ordered)}


def measure_first_delta(workdir: Path, turns: int) -> dict[str, dict[str, float]]:
    """Median time from `send` to the first text delta, mirror on and off, alternating."""
    work = workdir / "agent-cwd"
    work.mkdir(exist_ok=True)
    samples: dict[str, list[float]] = {"on": [], "off": []}
    ledgers = {choice: Ledger(str(workdir / f"ledger-{choice}"), agent_command=STANDIN,
                              transcript_mirror=choice, agent_cwd=str(work),
                              agent_env={"HOME": str(workdir / "home")}, timeout=60)
               for choice in samples}
    try:
        sessions = {choice: ledger.create_session().session_id
                    for choice, ledger in ledgers.items()}
        for turn in range(turns + 1):
            for choice, ledger in ledgers.items():
                first = threading.Event()
                started = time.perf_counter()
                took: list[float] = []

                def on_update(update: Any, took: list[float] = took,
                              first: threading.Event = first, started: float = started) -> None:
                    if isinstance(update, TextDeltaUpdate) and not first.is_set():
                        took.append(time.perf_counter() - started)
                        first.set()

                outcome = ledger.send(sessions[choice], f"turn {turn}", stream_deltas=True,
                                      on_update=on_update)
                assert outcome.ok and took, outcome.error
                if turn:  # the first turn of each warms up
                    samples[choice].append(took[0])
    finally:
        for ledger in ledgers.values():
            ledger.close()
    figures = {choice: _ms(values) for choice, values in samples.items()}
    figures["difference"] = {"median_ms": figures["on"]["median_ms"]
                             - figures["off"]["median_ms"]}
    return figures


def measure_first_delta_claude(workdir: Path, turns: int) -> dict[str, dict[str, float]]:
    """The same with the real claude against an instant fake API (resume strategy, so the
    restore check runs before every turn but the first; `transcript_mirror` on and off)."""
    support = Path(__file__).resolve().parent.parent / "tests" / "support"
    sys.path.insert(0, str(support))
    from claude_harness import ClaudeHarness, find_claude
    from fake_anthropic import FakeAnthropic, text

    binary = find_claude()
    if binary is None:
        raise SystemExit("the real claude is not installed (see tests/support/claude_harness.py)")
    samples: dict[str, list[float]] = {"on": [], "off": []}
    with FakeAnthropic(default=text("The mesh has 1,024 elements."), lifetime=3600) as fake:
        harness = ClaudeHarness(binary, fake, workdir / "claude")
        ledgers = {choice: Ledger(config=harness.config(
            workdir / f"claude-ledger-{choice}", history_strategy="resume",
            transcript_mirror=choice)) for choice in samples}
        try:
            sessions = {choice: ledger.create_session().session_id
                        for choice, ledger in ledgers.items()}
            for turn in range(turns + 1):
                for choice, ledger in ledgers.items():
                    took: list[float] = []
                    started = time.perf_counter()

                    def on_update(update: Any, took: list[float] = took,
                                  started: float = started) -> None:
                        if isinstance(update, TextDeltaUpdate) and not took:
                            took.append(time.perf_counter() - started)

                    outcome = ledger.send(sessions[choice], f"turn {turn}: how many elements?",
                                          stream_deltas=True, on_update=on_update)
                    assert outcome.ok and took, outcome.error
                    if turn:
                        samples[choice].append(took[0])
        finally:
            for ledger in ledgers.values():
                ledger.close()
            harness.kill_leftovers()
    figures = {choice: _ms(values) for choice, values in samples.items()}
    figures["difference"] = {"median_ms": figures["on"]["median_ms"]
                             - figures["off"]["median_ms"]}
    return figures


def _print_first_delta(title: str, first: dict[str, dict[str, float]]) -> None:
    print(f"{title} over {first['on']['count']} turns each "
          f"(target: the mirror adds <= {TTFD_TARGET_MS:g} ms)")
    for choice in ("on", "off"):
        print(f"  mirror {choice:<3}  median {first[choice]['median_ms']:.1f} ms  p90 "
              f"{first[choice]['p90_ms']:.1f} ms")
    print(f"  difference of the medians {first['difference']['median_ms']:+.1f} ms "
          "(agent start-up noise included)")


def _begin(store: LedgerSessionStore, home: Path, work: Path, *, resume: bool,
           transcripts: Transcripts | None = None) -> float:
    upkeep = TurnTranscript(transcripts or Transcripts(store), turn=2, session_id="bench", mirror=True,
                            resume_agent_session_id=AGENT_SESSION if resume else None,
                            agent_env={"HOME": str(home)}, agent_cwd=str(work))
    started = time.perf_counter()
    upkeep.begin()
    took = time.perf_counter() - started
    upkeep.finish()
    return took


def measure_before_spawn(workdir: Path, sizes: tuple[int, ...],
                         repetitions: int) -> dict[str, dict[str, float]]:
    """`TurnTranscript.begin` on the run thread: first turn, resume (file complete, missing)."""
    work = workdir / "agent-cwd"
    work.mkdir(exist_ok=True)
    home = workdir / "home-before-spawn"
    figures: dict[str, dict[str, float]] = {}
    with LedgerSessionStore.open(workdir / "ledger-before-spawn") as store:
        figures["first turn (recorder starts)"] = _ms(
            [_begin(store, home, work, resume=False) for _ in range(repetitions)])
        key = TranscriptKey(project_key_for_directory(work), AGENT_SESSION)
        path = transcript_file(home / ".claude" / "projects", key)
        kept = 0
        for size in sizes:
            entries = transcript_entries(size)
            for start in range(kept, size, 10):  # the per-turn batches a mirror keeps
                store.append_blocking(key._asdict(), entries[start:start + 10])
            kept = size
            _begin(store, home, work, resume=True)  # writes the file once
            figures[f"resume, local file complete, {size:,} entries"] = _ms(
                [_begin(store, home, work, resume=True) for _ in range(repetitions)])
            shared = Transcripts(store)
            _begin(store, home, work, resume=True, transcripts=shared)  # found complete
            figures[f"resume, file unchanged since checked, {size:,} entries"] = _ms(
                [_begin(store, home, work, resume=True, transcripts=shared)
                 for _ in range(repetitions)])
            missing = []
            for _ in range(repetitions):
                path.unlink()
                missing.append(_begin(store, home, work, resume=True))
            figures[f"resume, local file missing, {size:,} entries"] = _ms(missing)
    return figures


def measure_reading(frames: int) -> dict[str, float]:
    """The reading thread's cost per mirror frame: parse the line, queue it."""
    entries = transcript_entries(6 * frames)
    upkeep = TurnTranscript.__new__(TurnTranscript)
    upkeep.recorder = None  # queueing is a SimpleQueue.put: parse and recognise dominate
    parser = StreamJsonParser()
    samples = []
    for index in range(frames):
        line = json.dumps({"type": "transcript_mirror", "filePath": "/h/p/-w/s.jsonl",
                           "entries": entries[index * 6:(index + 1) * 6]}).encode()
        started = time.perf_counter()
        for update in parser.feed_line(line):
            assert upkeep.take(update)
        samples.append(time.perf_counter() - started)
    return _ms(samples)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the three measurements, print them, optionally write them as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mirror_turn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer turns and sizes")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--claude", action="store_true",
                        help="also time the first delta with the real claude (fake API)")
    arguments = parser.parse_args(argv)
    turns, sizes, repetitions = (8, (100, 1000), 5) if arguments.quick else (
        30, (100, 1000, 10_000), 10)
    with tempfile.TemporaryDirectory(prefix="chatledger-mirror-bench-") as directory:
        workdir = Path(directory)
        load_before = os.getloadavg()[0]
        figures: dict[str, Any] = {
            "first_delta": measure_first_delta(workdir, turns),
            "before_spawn": measure_before_spawn(workdir, sizes, repetitions),
            "reading_per_frame": measure_reading(200),
            "load_average": [load_before, os.getloadavg()[0]],
        }
        if arguments.claude:
            figures["first_delta_claude"] = measure_first_delta_claude(workdir, turns)
    _print_first_delta("time to first delta, stand-in agent,", figures["first_delta"])
    if arguments.claude:
        _print_first_delta("time to first delta, real claude,", figures["first_delta_claude"])
    print("on the run thread before the agent is spawned (TurnTranscript.begin)")
    for name, value in figures["before_spawn"].items():
        print(f"  {name:<45} median {value['median_ms']:.2f} ms  p90 {value['p90_ms']:.2f} ms")
    reading = figures["reading_per_frame"]
    print(f"reading thread per frame (parse + queue): median {reading['median_ms']:.3f} ms, "
          f"p90 {reading['p90_ms']:.3f} ms")
    print(f"1-minute load average {figures['load_average'][0]:.1f} before, "
          f"{figures['load_average'][1]:.1f} after ({os.cpu_count()} CPUs)")
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
