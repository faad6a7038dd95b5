"""The Agent SDK session store under load: `python -m benchmarks.sdk_store [--quick] [--json F]`.

Two figures from issue 20, each for chatledger's `LedgerSessionStore` on LMDB beside the
SDK's own `InMemorySessionStore` (the only store the SDK ships) and, for `load`, reading
claude's own JSONL file (what a local `--resume` reads), in the same run:

- `load` of one 10,000-entry transcript (target <= 50 ms on LMDB), kept in batches of 10
  entries (the SDK's per-turn flush) and of 1 entry (its eager mode), timed through the
  async call the SDK makes (thread hop included), after a warm-up.
- appends at the SDK's ~100 ms cadence from 100 concurrent sessions (target p99 <= 20 ms):
  every session appends a batch of 2-3 entries every 100 ms (jittered) on one event loop, and
  each `await store.append(...)` is timed from call to return (durable, for the ledger).

- mirror upkeep of chatledger's own turns (issue 20 item 1; target <= 1 ms added to the time
  to the first delta): what the reading thread pays per `transcript_mirror` frame, the
  recorder's CPU per turn, and the event bytes per turn.

A last `load` row is the floor: msgspec decoding the same entries from memory. Entries are
shaped like claude's (user prompts, answer blocks, tool calls and results,
attachments, about 0.9 KB each on average) from a fixed seed. Prints a table; `--json`
also writes the figures. Never touches the network.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from claude_agent_sdk import InMemorySessionStore

from chatledger.events import TranscriptEntriesAppended, encode_event
from chatledger.sdk_store import LedgerSessionStore
from chatledger.transcript import TranscriptRecorder, mirror_frame

LOAD_TARGET_MS = 50.0
APPEND_P99_TARGET_MS = 20.0
CADENCE_SECONDS = 0.1
PROJECT = "-home-user-project"

_WORDS = ("mesh", "solver", "boundary", "load", "stress", "strain", "node", "element",
          "report", "result", "converge", "iteration", "design", "material", "density")


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def transcript_entries(count: int, seed: int = 20) -> list[dict[str, Any]]:
    """`count` transcript entries shaped like claude's, chained by parentUuid."""
    rng = random.Random(seed)
    session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    entries: list[dict[str, Any]] = []
    parent: str | None = None
    for index in range(count):
        entry_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        base = {"parentUuid": parent, "isSidechain": False, "userType": "external",
                "cwd": "/home/user/project", "sessionId": session, "version": "2.1.197",
                "gitBranch": "main", "uuid": entry_uuid,
                "timestamp": f"2026-12-01T09:{index // 600 % 60:02d}:{index // 10 % 60:02d}.000Z"}
        kind = index % 5
        if kind == 0:
            entry = {**base, "type": "user",
                     "message": {"role": "user", "content": _sentence(rng, 40)}}
        elif kind in (1, 3):
            entry = {**base, "type": "assistant", "requestId": f"req_{index}", "message": {
                "id": f"msg_{index}", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5", "content": [
                    {"type": "text", "text": _sentence(rng, 80)}],
                "stop_reason": None, "usage": {"input_tokens": 1200, "output_tokens": 90}}}
        elif kind == 2:
            entry = {**base, "type": "assistant", "message": {
                "id": f"msg_{index}", "role": "assistant", "content": [
                    {"type": "tool_use", "id": f"toolu_{index}", "name": "Read",
                     "input": {"file_path": "/home/user/project/report.md"}}]}}
        else:
            entry = {**base, "type": "user", "toolUseResult": {"type": "text"}, "message": {
                "role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{index - 2}",
                                             "content": _sentence(rng, 120)}]}}
        entries.append(entry)
        parent = entry_uuid
    return entries


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _summary(samples: list[float]) -> dict[str, float]:
    """Median, p90, p99 and max of timings in seconds, as milliseconds."""
    return {"median_ms": statistics.median(samples) * 1000,
            "p90_ms": _percentile(samples, 0.9) * 1000,
            "p99_ms": _percentile(samples, 0.99) * 1000,
            "max_ms": max(samples) * 1000, "count": len(samples)}


async def _timed(call: Callable[[], Awaitable[Any]], repetitions: int) -> list[float]:
    await call()  # warm-up
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def measure_load(store: Any, entries: list[dict[str, Any]], batch: int,
                       repetitions: int) -> dict[str, float]:
    """Keep `entries` in batches of `batch`, then time `load` of the whole transcript."""
    key = {"project_key": PROJECT, "session_id": f"load-{batch}"}
    for start in range(0, len(entries), batch):
        await store.append(key, entries[start:start + batch])
    loaded = await store.load(key)
    assert loaded == entries, "the store did not give the transcript back"
    return _summary(await _timed(lambda: store.load(key), repetitions))


async def measure_jsonl_load(entries: list[dict[str, Any]], workdir: Path,
                             repetitions: int) -> dict[str, float]:
    """Time reading claude's own JSONL file of the same transcript (json.loads per line)."""
    path = workdir / "transcript.jsonl"
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))

    async def read() -> list[Any]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    return _summary(await _timed(read, repetitions))


async def measure_decode_ceiling(entries: list[dict[str, Any]],
                                 repetitions: int) -> dict[str, float]:
    """Time msgspec decoding the same entries from one in-memory MessagePack blob, collector
    paused: the cost of building the objects alone, the floor under any store's `load`."""
    blob = msgspec.msgpack.encode(entries)

    async def decode() -> list[Any]:
        gc.disable()
        try:
            return msgspec.msgpack.decode(blob)  # type: ignore[no-any-return]
        finally:
            gc.enable()

    return _summary(await _timed(decode, repetitions))


async def measure_cadence(store: Any, sessions: int, seconds: float,
                          entries: list[dict[str, Any]]) -> dict[str, float]:
    """`sessions` tasks each append 2-3 entries every ~100 ms for `seconds`; time each append."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def session(number: int) -> None:
        rng = random.Random(number)
        key = {"project_key": PROJECT, "session_id": f"cadence-{number}"}
        cursor = rng.randrange(len(entries))
        await asyncio.sleep(rng.uniform(0, CADENCE_SECONDS))
        while time.perf_counter() < deadline:
            size = rng.choice((2, 3))
            batch = [{**entry, "uuid": f"{number}-{cursor + offset}"}
                     for offset, entry in enumerate(entries[cursor % len(entries):][:size])]
            cursor += size
            started = time.perf_counter()
            await store.append(key, batch)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(CADENCE_SECONDS * rng.uniform(0.8, 1.2))

    started = time.perf_counter()
    await asyncio.gather(*(session(number) for number in range(sessions)))
    elapsed = time.perf_counter() - started
    figures = _summary(latencies)
    figures["appends_per_s"] = len(latencies) / elapsed
    return figures


SCALES = {
    # name: (transcript entries, load repetitions, concurrent sessions, seconds of appends)
    "full": (10_000, 20, 100, 10.0),
    "quick": (2_000, 5, 20, 2.0),
    "tiny": (100, 2, 3, 0.3),
}


def measure_mirror_upkeep(store: LedgerSessionStore, turns: int,
                          entries: list[dict[str, Any]]) -> dict[str, float]:
    """chatledger's own turns with `--session-mirror`: per turn, claude prints a frame of 6
    entries before `result` and one (last-prompt) after it. Times what the reading thread
    pays per frame (decode the line, recognise the frame, queue it) and the recorder's CPU
    per turn (its thread's appends), and counts the event bytes each turn adds."""
    projects = Path("/home/user/.claude/projects")
    path = str(projects / PROJECT / "8d1c7a2e-1111-4c1d-9a43-2b6f0d1e7c55.jsonl")
    reading: list[float] = []
    event_bytes = 0
    cpu_started = time.process_time()
    for turn in range(1, turns + 1):
        recorder = TranscriptRecorder(store, projects, turn=turn, turn_session_id="bench")
        chunk = [{**entry, "uuid": f"{turn}-{index}"}
                 for index, entry in enumerate(entries[(turn * 6) % len(entries):][:6])]
        frames = [chunk, [{"type": "last-prompt", "lastPrompt": "...", "sessionId": "s"}]]
        for frame_entries in frames:
            line = json.dumps({"type": "transcript_mirror", "filePath": path,
                               "entries": frame_entries}).encode()
            started = time.perf_counter()
            frame = mirror_frame(msgspec.json.decode(line))
            assert frame is not None
            recorder.feed(frame)
            reading.append(time.perf_counter() - started)
            event_bytes += len(encode_event(TranscriptEntriesAppended(
                project_key=PROJECT, agent_session_id="s", entries=tuple(frame_entries),
                turn=turn, turn_session_id="bench")))
        assert recorder.close(30).finished
    cpu_per_turn = (time.process_time() - cpu_started - sum(reading)) / turns
    figures = {f"reading_{name}": value for name, value in _summary(reading).items()}
    figures.update({"turns": turns, "recorder_cpu_ms_per_turn": cpu_per_turn * 1000,
                    "event_bytes_per_turn": event_bytes / turns})
    return figures


async def run(scale: str, workdir: Path) -> dict[str, Any]:
    """Every figure, for every contender, at one of the SCALES."""
    size, repetitions, sessions, seconds = SCALES[scale]
    entries = transcript_entries(size)
    figures: dict[str, Any] = {"load_average_before": os.getloadavg()[0], "entries": size, "entry_bytes": len(json.dumps(entries)) / size,
                               "sessions": sessions, "seconds": seconds, "load": {}, "cadence": {}}
    with LedgerSessionStore.open(workdir / "ledger") as ledger_store:
        contenders: dict[str, Any] = {"chatledger (LMDB)": ledger_store,
                                      "SDK InMemorySessionStore": InMemorySessionStore()}
        for name, store in contenders.items():
            for batch in (10, 1):
                figures["load"][f"{name}, batches of {batch}"] = await measure_load(
                    store, entries, batch, repetitions)
        figures["load"]["claude's JSONL file (json.loads per line)"] = await measure_jsonl_load(
            entries, workdir, repetitions)
        figures["load"]["ceiling: msgspec decode from memory"] = await measure_decode_ceiling(
            entries, repetitions)
        for name, store in contenders.items():
            figures["cadence"][name] = await measure_cadence(store, sessions, seconds, entries)
        figures["mirror"] = measure_mirror_upkeep(ledger_store, max(sessions, 5), entries)
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = [headers, *[tuple(str(cell) for cell in row) for row in rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     for row in cells)


def report(figures: dict[str, Any]) -> str:
    """The figures as two tables with the targets."""
    load_rows = [(name, f"{value['median_ms']:.1f}", f"{value['p90_ms']:.1f}",
                  f"{value['max_ms']:.1f}") for name, value in figures["load"].items()]
    mirror = figures["mirror"]
    cadence_rows = [(name, value["count"], f"{value['appends_per_s']:.0f}",
                     f"{value['median_ms']:.2f}", f"{value['p99_ms']:.2f}",
                     f"{value['max_ms']:.2f}") for name, value in figures["cadence"].items()]
    return "\n".join([
        f"load of a {figures['entries']:,}-entry transcript "
        f"(~{figures['entry_bytes']:.0f} B/entry; target <= {LOAD_TARGET_MS:.0f} ms on LMDB)",
        _table(("store", "median ms", "p90 ms", "max ms"), load_rows),
        "",
        f"appends every ~{CADENCE_SECONDS * 1000:.0f} ms from {figures['sessions']} sessions for "
        f"{figures['seconds']:g} s (target p99 <= {APPEND_P99_TARGET_MS:.0f} ms)",
        _table(("store", "appends", "per s", "median ms", "p99 ms", "max ms"), cadence_rows),
        "",
        "mirror upkeep per chatledger turn (2 frames: 6 entries before result, 1 after)",
        _table(("reading thread per frame: median ms", "p99 ms", "recorder CPU ms/turn",
                "event bytes/turn"),
               [(f"{mirror['reading_median_ms']:.3f}", f"{mirror['reading_p99_ms']:.3f}",
                 f"{mirror['recorder_cpu_ms_per_turn']:.2f}",
                 f"{mirror['event_bytes_per_turn']:.0f}")]),
        "",
        f"1-minute load average {figures['load_average_before']:.1f} before, "
        f"{figures['load_average_after']:.1f} after ({os.cpu_count()} CPUs)",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, optionally write the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdk_store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 entries, 20 sessions, 2 s")
    parser.add_argument("--tiny", action="store_true", help="a smoke run (for the tests)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    arguments = parser.parse_args(argv)
    scale = "tiny" if arguments.tiny else "quick" if arguments.quick else "full"
    with tempfile.TemporaryDirectory(prefix="chatledger-sdk-bench-") as directory:
        figures = asyncio.run(run(scale, Path(directory)))
    figures["scale"] = scale
    print(report(figures))
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
