"""`chatledger stats --html`: charts per day as inline SVG in one self-contained page, drawn
by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from testkit import STANDIN_COMMAND_LINE

from chatledger.cli import main
from chatledger.events import (
    MessageSent,
    ModelUsage,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
    TurnRefused,
)
from chatledger.reports import daily_figures, render_stats_html
from chatledger.storage import SessionAppend, open_store

DAY = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


def _three_days(path: Path) -> None:
    """A ledger with answers, failures and a refusal over three days."""
    events: list[Any] = [SessionCreated(owner="ops")]
    times = [DAY]
    for day in range(3):
        moment = DAY + timedelta(days=day)
        for turn in range(day + 1):
            number = len([e for e in events if isinstance(e, MessageSent)]) + 1
            events += [MessageSent(turn=number, text="hi"), RunStarted(turn=number)]
            if turn == 1:
                events.append(RunFailed(turn=number, reason="timeout"))
            else:
                events.append(ResponseReceived(
                    turn=number, text="ok", duration=1.0 + day, cost_usd=0.01 * (day + 1),
                    usage={"input_tokens": 10, "output_tokens": 5},
                    model_usage=(ModelUsage(model="opus", input_tokens=10, output_tokens=5,
                                            cost_usd=0.01 * (day + 1)),) if day else (),
                    first_token_seconds=0.25 * (day + 1)))
            times += [moment] * 3
    events.append(TurnRefused(message="over"))
    times.append(DAY + timedelta(days=2))
    with open_store(str(path)) as store:
        store.append_atomically([SessionAppend("s-1", events, 0, times)])


def test_daily_figures_count_turns_failures_refusals_and_spend(tmp_path: Path) -> None:
    _three_days(tmp_path / "ledger")
    with open_store(str(tmp_path / "ledger")) as store:
        days = daily_figures(store.read_all())
    assert [d.day for d in days] == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert [d.turns for d in days] == [1, 2, 3]
    assert days[1].failures == {"timeout": 1} and days[2].refused == 1
    assert days[2].usd == pytest.approx(0.06) and days[0].tokens == 15
    assert days[2].median_run_seconds == 3.0
    assert [d.median_first_token_seconds for d in days] == [0.25, 0.5, 0.75]
    assert days[0].usd_by_model == {"(not recorded)": pytest.approx(0.01)}  # no modelUsage
    assert days[2].usd_by_model == {"opus": pytest.approx(0.06)}


def test_the_page_is_self_contained_svg() -> None:
    page = render_stats_html([], ledger="x", generated_at=DAY)
    assert "No turns recorded yet" in page
    with_days = render_stats_html(daily_figures([]), ledger="<x>", generated_at=DAY)
    assert "&lt;x&gt;" in with_days


@pytest.mark.timeout(120)
def test_stats_html_writes_charts_chromium_draws(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    _three_days(ledger)
    output = tmp_path / "stats.html"
    result = CliRunner().invoke(
        main, ["--ledger", str(ledger), "stats", "--html", str(output)],
        env={"CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "spend per owner" in result.stdout  # the usual output is still printed
    page = output.read_text(encoding="utf-8")
    assert page.count("<svg") == 6
    assert "Median time to first token" in page and "opus" in page and "(not recorded)" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no external assets
    assert "<script" not in page
    assert "timeout" in page and "11-22" in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed")
    profile = tmp_path / "profile"
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}"]
    dom = subprocess.run([*common, "--dump-dom", output.as_uri()], capture_output=True,
                         timeout=90, text=True, env={**os.environ, "HOME": str(tmp_path)})
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 6 and dom.stdout.count("<rect") >= 9
    assert dom.stdout.count("<circle") >= 6  # run time and time to first token, 3 days each
    shot = tmp_path / "stats.png"
    drawn = subprocess.run([*common, f"--screenshot={shot}", "--window-size=900,1800",
                            output.as_uri()], capture_output=True, timeout=90,
                           env={**os.environ, "HOME": str(tmp_path)})
    assert drawn.returncode == 0 and shot.stat().st_size > 10_000
    if os.environ.get("CHATLEDGER_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["CHATLEDGER_KEEP_SCREENSHOT"])
