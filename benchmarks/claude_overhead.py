"""What chatledger adds to one turn of the real `claude`: `python -m benchmarks.claude_overhead`.

Against the same instant fake Messages API (tests/support/fake_anthropic.py), it times
turns of (a) a bare `claude --print` run with the argv and prompt chatledger would use,
(b) chatledger's sync `Ledger.send` and (c) its async `SessionManager.send_message`, each
from the caller's call to the end of the turn (for chatledger: the answer recorded durably in
the ledger). The three are interleaved turn by turn, in rotating order, after warm-up turns,
so drift in machine load hits them alike. It prints the median, mean, p90 and min of each and
the overhead over bare claude in ms and as a ratio. Needs the real claude (found like the
tests find it); it never touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUPPORT = Path(__file__).resolve().parent.parent / "tests" / "support"
sys.path.insert(0, str(SUPPORT))

from claude_harness import ClaudeHarness, clean_environment, find_claude  # noqa: E402
from fake_anthropic import FakeAnthropic, text  # noqa: E402

from chatledger import SessionManager  # noqa: E402
from chatledger.agent import build_argv, build_prompt  # noqa: E402
from chatledger.ledger import Ledger  # noqa: E402

MESSAGE = "How many elements does the mesh have?"
CANVAS = {"nodes": [{"id": "n1", "label": "Mesh"}]}


def summarise(samples: list[float]) -> dict[str, float]:
    """Median, mean, p90, min and max of timings, in milliseconds."""
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
        "p90_ms": p90 * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def timed(action: Callable[[], Any]) -> float:
    """Seconds one call takes (wall clock)."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(turns: int, warmups: int) -> dict[str, Any]:
    """Run the interleaved turns and return every sample and its summary."""
    binary = find_claude()
    if binary is None:
        raise SystemExit("the real claude CLI was not found (install it as .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="claude-overhead-"))
    with FakeAnthropic(default=text("The mesh has 42 elements."), lifetime=3600) as fake:
        harness = ClaudeHarness(binary, fake, root)
        config = harness.config(root / "ledger", timeout=120.0)
        ledger = Ledger(config=config)
        manager = SessionManager(config=harness.config(root / "ledger-async", timeout=120.0))
        loop = asyncio.new_event_loop()
        try:
            sync_session = ledger.create_session(study_id="bench").session_id
            async_session = loop.run_until_complete(
                manager.create_session(study_id="bench")).session_id
            prompt = build_prompt(mode="user", study_id="bench", history=[],
                                  canvas_state=CANVAS, message=MESSAGE).text
            argv = build_argv((binary,), mode="user", allowed_tools=config.allowed_tools,
                              include_partial_messages=True)
            environment = clean_environment()
            environment.update(harness.variables())

            def bare() -> None:
                import subprocess

                finished = subprocess.run(argv, input=prompt.encode(), capture_output=True,
                                          env=environment, cwd=harness.workdir, timeout=120,
                                          check=False)
                assert finished.returncode == 0 and b'"type":"result"' in finished.stdout

            def sync_turn() -> None:
                outcome = ledger.send(sync_session, MESSAGE, canvas_state=CANVAS)
                assert outcome.ok, outcome.error

            async def async_turn_coroutine() -> None:
                items = [item async for item in manager.send_message(async_session, MESSAGE,
                                                                     CANVAS)]
                assert items[-1]["type"] == "done" and items[-2]["type"] == "text", items

            def async_turn() -> None:
                loop.run_until_complete(async_turn_coroutine())

            contenders: dict[str, Callable[[], None]] = {
                "bare claude": bare,
                "Ledger.send": sync_turn,
                "SessionManager.send_message": async_turn,
            }
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            names = list(contenders)
            for index in range(warmups + turns):
                order = names[index % len(names):] + names[:index % len(names)]
                for name in order:
                    seconds = timed(contenders[name])
                    if index >= warmups:
                        samples[name].append(seconds)
        finally:
            loop.run_until_complete(manager.stop())
            loop.close()
            ledger.close()
            harness.kill_leftovers()
    summary = {name: summarise(values) for name, values in samples.items()}
    bare_median = summary["bare claude"]["median_ms"]
    for name in ("Ledger.send", "SessionManager.send_message"):
        summary[name]["overhead_ms"] = summary[name]["median_ms"] - bare_median
        summary[name]["ratio"] = summary[name]["median_ms"] / bare_median
    return {"turns": turns, "warmups": warmups, "claude": binary, "summary": summary,
            "samples_s": samples}


def main(arguments: list[str] | None = None) -> int:
    """Parse the options, measure, print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20, help="measured turns per contender")
    parser.add_argument("--warmups", type=int, default=2, help="unmeasured turns first")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    options = parser.parse_args(arguments)
    result = measure(options.turns, options.warmups)
    if options.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{options.turns} turns each (after {options.warmups} warm-up), claude {result['claude']}")
    print(f"{'':30} {'median':>9} {'mean':>9} {'p90':>9} {'min':>9} {'overhead':>10} {'ratio':>7}")
    for name, figures in result["summary"].items():
        overhead = f"{figures['overhead_ms']:+8.1f}ms" if "overhead_ms" in figures else ""
        ratio = f"{figures['ratio']:6.3f}x" if "ratio" in figures else ""
        print(f"{name:30} {figures['median_ms']:7.1f}ms {figures['mean_ms']:7.1f}ms "
              f"{figures['p90_ms']:7.1f}ms {figures['min_ms']:7.1f}ms {overhead:>10} {ratio:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
