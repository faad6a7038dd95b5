"""The benchmark runner still runs end to end (its tiniest size), so it does not rot.

Speed figures are never asserted here: only that every figure was produced and reported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_tiny_benchmark_run_reports_every_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("eventsourcing")
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.run import main

    output = tmp_path / "results.json"
    report = main(["--tiny", "--output", str(output), "--workdir", str(tmp_path / "work")])

    stored = json.loads(output.read_text())
    assert stored["size"] == "tiny"
    for name in ("append_1", "append_p99_1", "replay", "replay_ceiling", "rehydrate",
                 "sessions", "verify", "bytes_per_event", "activation", "activation_big",
                 "cpu_per_turn", "memory_live", "rss_live", "rss_held"):
        assert name in stored["figures"], name
    for contender in ("chatledger", "sqlite", "eventsourcing"):
        assert stored["figures"]["replay"][contender]["samples"]
    assert len(stored["figures"]["replay"]["chatledger"]["samples"]) >= 5
    assert "sqlite" in stored["ratios"]["replay"]
    assert report["targets"]
    assert sys.modules["benchmarks.run"].__file__.startswith(str(ROOT))


@pytest.mark.timeout(120)
def test_the_per_thread_cpu_breakdown_runs(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/task")
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.turn_cpu import main, wakeup_cost

    main(3)
    printed = capsys.readouterr().out
    assert "3 turns:" in printed and "SessionActor" in printed and "chatledger-run" in printed
    assert wakeup_cost() > 0
