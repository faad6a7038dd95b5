"""Shared pieces of the benchmarks: sizes, the deterministic dataset, timing and memory probes.

Every contender gets exactly the same events (same texts, same shapes, same session ids), built
here from a fixed seed. Timing helpers run a warm-up, then repetitions, and summarise each
figure as median, min, max and spread. Nothing here writes to a store.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chatledger.events import (
    Event,
    MessageSent,
    ResponseReceived,
    RunStarted,
    SessionCreated,
    ToolCall,
)


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; `full` is what the README reports."""

    name: str
    sessions: int  # sessions in the replay dataset (10 events each)
    big_session_events: int  # events in the session that is rehydrated
    append_seconds: float  # length of one throughput repetition
    repetitions: int
    warmups: int
    activations: int  # passivated sessions activated per repetition
    turns: int  # agent turns run to measure chatledger's CPU per turn
    live_sessions: int  # live sessions held for the memory figure
    concurrency: tuple[int, ...] = (1, 16, 64)

    @property
    def events(self) -> int:
        """Events in the replay dataset."""
        return self.sessions * EVENTS_PER_SESSION


EVENTS_PER_SESSION = 10
SIZES = {
    "full": Sizes("full", 100_000, 1_000, 1.5, 5, 1, 200, 40, 10_000),
    "quick": Sizes("quick", 5_000, 1_000, 0.4, 5, 1, 50, 10, 1_000),
    "tiny": Sizes("tiny", 100, 200, 0.05, 5, 1, 5, 2, 20, (1, 4)),
}


# -- the dataset ----------------------------------------------------------------------------

_WORDS = ["study", "canvas", "node", "model", "mesh", "solver", "boundary", "load", "result", "report", "stress", "strain", "displacement", "optimise", "parameter", "constraint", "objective", "iteration", "converge", "design", "material", "density", "thickness", "frequency", "mode", "shape", "sensitivity", "gradient", "step"]


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def session_ids(count: int, seed: int = 7) -> list[str]:
    """`count` distinct uuid4-shaped session ids, the same for every contender."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def turn_events(rng: random.Random, turn: int) -> list[Event]:
    """One realistic turn: the user's message, the run, the agent's answer with a tool call."""
    return [
        MessageSent(
            turn=turn,
            text=_sentence(rng, 30),
            canvas_state={"nodes": [{"id": f"n{turn}", "type": "solver", "x": turn * 10}]},
        ),
        RunStarted(
            turn=turn,
            argv=("claude", "--print", "--output-format", "stream-json", "--verbose",
                  "--allowedTools", "Read Write(**/STUDY_REPORT.md)"),
            prompt_digest=f"{rng.getrandbits(256):064x}",
            template_version=1,
            host="bench-host",
            pid=4242,
        ),
        ResponseReceived(
            turn=turn,
            text=_sentence(rng, 80),
            tool_calls=(
                ToolCall(name="Read", input={"file_path": "/study/STUDY_REPORT.md"},
                         output=_sentence(rng, 12), tool_use_id=f"toolu_{turn:04d}"),
            ),
            duration=2.5,
            cost_usd=0.0123,
            usage={"input_tokens": 1200, "output_tokens": 340},
            agent_session_id="3f2c7a8e-agent",
        ),
    ]


def session_events(session_index: int, count: int = EVENTS_PER_SESSION) -> list[Event]:
    """The events of one dataset session: created, then turns until `count` events."""
    rng = random.Random(session_index)
    events: list[Event] = [SessionCreated(mode="user", study_id=f"study-{session_index % 97}")]
    turn = 0
    while len(events) < count:
        turn += 1
        events.extend(turn_events(rng, turn))
    return events[:count]


def append_event(rng: random.Random) -> Event:
    """The event appended, one per commit, in the throughput runs (a user message)."""
    return MessageSent(turn=1, text=_sentence(rng, 30), canvas_state={"nodes": []})


# -- timing -----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure of one contender: the samples (one per repetition) and a unit."""

    unit: str
    samples: list[float]
    higher_is_better: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        """The median sample."""
        return statistics.median(self.samples)

    def summary(self) -> dict[str, Any]:
        """Median, min, max, spread (max - min, in % of the median) and every sample."""
        median = self.median
        low, high = min(self.samples), max(self.samples)
        return {
            "unit": self.unit,
            "median": median,
            "min": low,
            "max": high,
            "spread_pct": (high - low) / median * 100 if median else 0.0,
            "samples": self.samples,
            "higher_is_better": self.higher_is_better,
            **self.extra,
        }


def repeat(function: Callable[[], float], repetitions: int, warmups: int) -> list[float]:
    """Run `function` (which returns its sample) `warmups` times unrecorded, then record."""
    for _ in range(warmups):
        function()
    samples = []
    for _ in range(repetitions):
        gc.collect()
        samples.append(function())
    return samples


def timed(function: Callable[[], Any]) -> float:
    """Seconds one call of `function` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


# -- memory and disk --------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; peak RSS elsewhere)."""
    return memory_status().get("VmRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def memory_status() -> dict[str, int]:
    """VmRSS and its parts from /proc/self/status, in bytes: RssAnon (private memory),
    RssFile (file pages mapped in: for chatledger, pages of the LMDB map that were read,
    shared page cache the kernel may drop at any time) and RssShmem. Empty off Linux."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    fields[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return fields


def disk_bytes(*paths: str) -> int:
    """Bytes actually allocated on disk for these files (or every file under directories)."""
    total = 0
    for path in paths:
        for file in _files(path):
            total += os.stat(file).st_blocks * 512
    return total


def _files(path: str) -> Iterator[str]:
    if os.path.isdir(path):
        for root, _, names in os.walk(path):
            for name in names:
                yield os.path.join(root, name)
    elif os.path.exists(path):
        yield path
