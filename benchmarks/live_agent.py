"""Warm against cold turns of the real `claude`: `python -m benchmarks.live_agent`.

Against one instant fake Messages API (tests/support/fake_anthropic.py), in the same run and
interleaved turn by turn: `SessionManager.send_message` (with deltas) of a cold session (one
claude process per turn) and of a warm one (`warm_agents`), each timed from the call to the
first `text_delta` and to `done` (the answer recorded durably); and a bare `LiveAgent` turn
in a claude process of its own (no ledger), for comparison. What chatledger adds to a warm
turn is measured directly: the call-to-done time minus the agent's own time from our user
line to its result line, in the interleaved rounds (where the cold turn's claude is still
exiting beside it) and in as many warm turns run alone after them. Then the resident memory
of the warm session's process tree, and interrupts: a slow answer, `SessionManager.interrupt`
at its first delta, timed to the `done` that follows the recorded RunFailed. Medians over `--turns` turns. Needs the real
claude (found like the tests find it); it never touches the network beyond 127.0.0.1.
`--breakdown` instead splits what chatledger adds to a warm turn by component (the time
between stamps taken at each step of the turn, medians; a step that ran beside the one before
it counts only what it added), with the stand-in live agent
(`--breakdown-agent claude` for the real one), so the agent's own time is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SUPPORT = Path(__file__).resolve().parent.parent / "tests" / "support"
sys.path.insert(0, str(SUPPORT))

from claude_harness import ClaudeHarness, find_claude  # noqa: E402
from fake_anthropic import FakeAnthropic, text  # noqa: E402

from chatledger import SessionManager  # noqa: E402
from chatledger.agent import CLAUDE, RunSpec, TurnOptions  # noqa: E402
from chatledger.agent.live import LiveAgent  # noqa: E402
from chatledger.agent.reaper import descendants  # noqa: E402
from chatledger.config import DEFAULT_ALLOWED_TOOLS, load_config  # noqa: E402

ANSWER = text("The mesh has 42 elements.")
SLOW = text("one two three four five six seven eight nine ten " * 3, chunk_chars=6, delay=0.2)


def median_ms(samples: list[float]) -> float:
    """The median of timings, in milliseconds."""
    return round(statistics.median(samples) * 1000, 2)


def rss_kib(pid: int) -> int:
    """The resident memory of a process and its descendants (KiB, Linux)."""
    total = 0
    for member in {pid, *descendants(pid)}:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


async def one_turn(manager: SessionManager, session: str) -> tuple[float, float, float]:
    """(seconds to the first text delta, seconds to done, seconds chatledger added: done
    minus the agent's own time from our user line to its result line, warm only)."""
    started = time.perf_counter()
    first = None
    async for update in manager.send_message(session, "How many elements?", stream_deltas=True):
        if update["type"] == "text_delta" and first is None:
            first = time.perf_counter() - started
    ended = time.perf_counter()
    done = ended - started
    added = 0.0
    pool = manager.runtime.warm
    if pool is not None and session in pool._agents:
        written_at, result_at = pool._agents[session].agent.last_turn_times
        added = done - (result_at - written_at)
    return (first if first is not None else done), done, added


async def interrupted_turn(manager: SessionManager, session: str) -> float:
    """Seconds from `interrupt` (at the first delta) to the turn's `done`."""
    asked = None
    async for update in manager.send_message(session, "Talk slowly", stream_deltas=True):
        if update["type"] == "text_delta" and asked is None:
            asked = time.perf_counter()
            await manager.interrupt(session)
    assert asked is not None, "the slow answer streamed nothing"
    return time.perf_counter() - asked


def bare_turn(agent: LiveAgent) -> tuple[float, float, float]:
    """(first delta, result) seconds of one turn in a bare live claude (no ledger)."""
    started = time.perf_counter()
    first: list[float] = []

    def on_update(update: Any) -> None:
        if not first and type(update).__name__ == "TextDelta":
            first.append(time.perf_counter() - started)

    outcome = agent.run_turn(RunSpec(argv=agent.argv, prompt="How many elements?"),
                             turn_id=str(uuid.uuid4()), on_update=on_update)
    assert outcome.ok, outcome.message
    done = time.perf_counter() - started
    return (first[0] if first else done), done, 0.0


async def measure(turns: int, warmups: int, interrupts: int) -> dict[str, Any]:
    """Run every contender, interleaved, and summarise."""
    binary = find_claude()
    if binary is None:
        raise SystemExit("the real claude CLI was not found (install it as .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="live-agent-bench-"))
    with FakeAnthropic(default=ANSWER, lifetime=3600) as fake:
        harness = ClaudeHarness(binary, fake, root)
        cold = SessionManager(config=harness.config(root / "cold", timeout=120.0))
        warm = SessionManager(config=harness.config(root / "warm", timeout=120.0,
                                                    warm_agents=True))
        argv = tuple(CLAUDE.turn_argv((binary,), _live_options()))
        bare = LiveAgent(argv, CLAUDE, environment=harness.environment(),
                         cwd=str(harness.workdir))
        bare.start()
        samples: dict[str, list[tuple[float, float, float]]] = {
            "cold": [], "warm": [], "bare": []}
        try:
            cold_session = (await cold.create_session()).session_id
            warm_session = (await warm.create_session()).session_id
            for index in range(warmups + turns):
                results = {"cold": await one_turn(cold, cold_session),
                           "warm": await one_turn(warm, warm_session),
                           "bare": await asyncio.to_thread(bare_turn, bare)}
                if index >= warmups:
                    for name, result in results.items():
                        samples[name].append(result)
            alone = [(await one_turn(warm, warm_session))[2] for _ in range(turns)]
            pool = warm.runtime.warm
            assert pool is not None
            pid = pool._agents[warm_session].agent.pid
            rss = rss_kib(pid) if pid else 0
            stops: list[float] = []
            for _ in range(interrupts):
                fake.script(SLOW)
                stops.append(await interrupted_turn(warm, warm_session))
                fake.script(ANSWER)
        finally:
            bare.close()
            await cold.stop()
            await warm.stop()
    figures: dict[str, Any] = {}
    for name, triples in samples.items():
        figures[f"{name}_first_delta_ms"] = median_ms([first for first, _, _ in triples])
        figures[f"{name}_done_ms"] = median_ms([done for _, done, _ in triples])
    figures["warm_speedup_first_delta"] = round(
        figures["cold_first_delta_ms"] / figures["warm_first_delta_ms"], 1)
    figures["chatledger_added_per_warm_turn_ms"] = median_ms(
        [added for _, _, added in samples["warm"]])
    figures["chatledger_added_per_warm_turn_alone_ms"] = median_ms(alone)
    figures["warm_session_rss_mib"] = round(rss / 1024, 1)
    figures["interrupt_to_recorded_ms"] = median_ms(stops)
    figures["turns"] = turns
    figures["interrupts"] = interrupts
    return figures


def _live_options() -> TurnOptions:
    """What chatledger asks of a warm user-mode session's process."""
    return TurnOptions(mode="user", allowed_tools=DEFAULT_ALLOWED_TOOLS,
                       include_partial_messages=True, live=True)


STEPS = (
    ("actor_send", "the call reaches the session actor"),
    ("lease_taken", "the session's lease in reach (a read; taken with the next step)"),
    ("started_recorded", "the lease taken with MessageSent + RunStarted (one durable write)"),
    ("submitted", "the run handed to the run pool"),
    ("begin_in", "a pool thread picks it up"),
    ("begin_out", "the transcript upkeep before the agent"),
    ("taken", "the warm pool hands out the live process"),
    ("written", "the user line written to the agent"),
    ("result", "the agent's own time, to its result line (left out)"),
    ("completed", "the outcome reaches the session actor"),
    ("answer_recorded", "ResponseReceived appended (durable), the lease let go"),
    ("done_seen", "the caller gets `done`"),
)


async def breakdown(turns: int, warmups: int, agent: str) -> dict[str, Any]:
    """Median milliseconds of each step of a warm turn (stamped where it ends)."""
    from chatledger.actors import session, session_turns, transcripts
    from chatledger.actors import warm as warm_pool

    marks: dict[str, float] = {}

    def stamp(owner: Any, name: str, before: str | None, after: str | None) -> None:
        original = getattr(owner, name)

        def stamped(*args: Any, **kwargs: Any) -> Any:
            if before:
                marks.setdefault(before, time.perf_counter())
            result = original(*args, **kwargs)
            if after:
                marks.setdefault(after, time.perf_counter())
            return result

        setattr(owner, name, stamped)

    stamp(session.SessionActor, "_send", "actor_send", None)
    stamp(session_turns.SessionTurns, "_own_session_for_turn", None, "lease_taken")
    stamp(session_turns.SessionTurns, "_start_turn", None, "submitted")
    stamp(transcripts.TurnTranscript, "begin", "begin_in", "begin_out")
    stamp(warm_pool.WarmPool, "_take", None, "taken")
    stamp(session_turns.SessionTurns, "_on_run_completed", "completed", None)
    root = Path(tempfile.mkdtemp(prefix="live-agent-breakdown-"))
    with FakeAnthropic(default=ANSWER, lifetime=3600) as fake:
        if agent == "claude":
            binary = find_claude()
            if binary is None:
                raise SystemExit("the real claude CLI was not found")
            config = ClaudeHarness(binary, fake, root).config(root / "warm", timeout=120.0,
                                                              warm_agents=True)
        else:
            config = load_config(config_file=None, environ={}, path=str(root / "warm"),
                                 agent_command=(sys.executable, "-m",
                                                "chatledger.testing.standin"),
                                 warm_agents=True, timeout=120.0)
        manager = SessionManager(config=config)
        log = manager.runtime.log

        def stamp_appends(name: str) -> None:
            append = getattr(log, name)

            def stamped_append(*args: Any, **kwargs: Any) -> Any:
                result = append(*args, **kwargs)
                marks.setdefault("started_recorded" if "started_recorded" not in marks
                                 else "answer_recorded", time.perf_counter())
                return result

            setattr(log, name, stamped_append)

        stamp_appends("append")
        stamp_appends("append_taking_lease")
        steps: dict[str, list[float]] = {name: [] for name, _ in STEPS}
        added: list[float] = []
        try:
            session_id = (await manager.create_session()).session_id
            for index in range(warmups + turns):
                marks.clear()
                started = time.perf_counter()
                async for _ in manager.send_message(session_id, "How many elements?",
                                                    stream_deltas=True):
                    pass
                marks["done_seen"] = time.perf_counter()
                pool = manager.runtime.warm
                assert pool is not None
                marks["written"], marks["result"] = \
                    pool._agents[session_id].agent.last_turn_times
                if index < warmups:
                    continue
                previous = started  # a step that ran beside an earlier one costs what it
                for name, _ in STEPS:  # added to the way to `done` (0 if it ended first)
                    if name in marks:
                        steps[name].append(max(0.0, marks[name] - previous))
                        previous = max(previous, marks[name])
                added.append(marks["done_seen"] - started
                             - (marks["result"] - marks["written"]))
        finally:
            await manager.stop()
    figures: dict[str, Any] = {name: median_ms(samples) for name, samples in steps.items()
                               if samples}
    figures["chatledger_added_per_warm_turn_ms"] = median_ms(added)
    figures["agent"] = agent
    figures["turns"] = turns
    return figures


def main(arguments: list[str] | None = None) -> int:
    """Measure and print the figures (JSON with --json)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=12, help="measured turns per contender")
    parser.add_argument("--warmups", type=int, default=2, help="unmeasured turns first")
    parser.add_argument("--interrupts", type=int, default=10, help="interrupted turns")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--breakdown", action="store_true",
                        help="split chatledger's time per warm turn by component")
    parser.add_argument("--breakdown-agent", choices=("standin", "claude"), default="standin",
                        help="the live agent of --breakdown (default: the stand-in)")
    options = parser.parse_args(arguments)
    if options.breakdown:
        figures = asyncio.run(breakdown(options.turns, options.warmups,
                                        options.breakdown_agent))
    else:
        figures = asyncio.run(measure(options.turns, options.warmups, options.interrupts))
    if options.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name:>36}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
