"""The evidence HTML as a browser renders it (headless Chromium): the verification stamp,
every record's hash, the table of contents, and message payloads that stay inert."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from chatledger.cli import main

STANDIN = f"{sys.executable} -m chatledger.agent.standin"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TITLE = "chatledger transcript"
PAYLOADS = (
    "<script>document.title='PWNED-script'</script>",
    "<img src=x onerror=\"document.title='PWNED-img'\">",
    "<svg onload=\"document.title='PWNED-svg'\"></svg>",
    "\"><body onload=\"document.title='PWNED-attr'\">",
)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs it)")


def invoke(ledger: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--ledger", str(ledger), *args],
        env={"CHATLEDGER_AGENT_COMMAND": STANDIN, "CHATLEDGER_TIMEOUT": "60"},
        catch_exceptions=False,
    )


def chromium(page: Path, tmp_path: Path, *flags: str) -> str:
    """Run headless Chromium on a page with `flags`; its standard output."""
    assert CHROMIUM is not None
    completed = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=3000",
         *flags, page.resolve().as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    return completed.stdout.decode("utf-8")


@pytest.fixture
def two_sessions(ledger_path: Path) -> list[str]:
    """A session with canvas changes and tool calls, and one whose messages carry payloads."""
    first = invoke(ledger_path, "new", "--study", "beam-1").stdout.strip()
    assert invoke(ledger_path, "send", first, "change the canvas [[canvas]]").exit_code == 0
    second = invoke(ledger_path, "new", "--study", "<b onmouseover=alert(1)>s</b>").stdout.strip()
    for payload in PAYLOADS:
        assert invoke(ledger_path, "send", second, f"{payload} [[echo]]").exit_code == 0
    return [first, second]


def test_the_rendered_page_shows_the_stamp_every_hash_and_keeps_payloads_inert(
    ledger_path: Path, two_sessions: list[str], tmp_path: Path
) -> None:
    page = tmp_path / "transcript.html"
    assert invoke(ledger_path, "export", "--format", "html", "-o", str(page)).exit_code == 0
    dom = chromium(page, tmp_path, "--dump-dom")
    assert f"<title>{TITLE}</title>" in dom  # no payload changed the title: none ran
    assert "PWNED" not in dom.split("<body", 1)[0]
    assert "<img" not in dom and "<svg" not in dom and "<script" not in dom
    assert "onerror" in dom and "&lt;script&gt;" in dom  # shown as text, escaped
    assert "VERIFIED" in dom and "key fingerprint" in dom and "ed25519:" in dom
    exported = tmp_path / "all.jsonl"
    invoke(ledger_path, "export", "-o", str(exported))
    records = [json.loads(line) for line in exported.read_text().splitlines()[1:]]
    for record in records:
        assert record["hash"] in dom, record["position"]
        assert f"position {record['position']} · version {record['version']}" in dom
    assert all(f"href=\"#s{number}\"" in dom for number in (1, 2))  # table of contents
    assert "mcp__atomizer-tools__apply_canvas_change" in dom and "<details open" in dom
    control = tmp_path / "control.html"  # the same payloads unescaped do run here
    control.write_text(f"<!doctype html><title>{TITLE}</title><body>{PAYLOADS[1]}{PAYLOADS[0]}")
    assert "<title>PWNED-" in chromium(control, tmp_path, "--dump-dom")
    screenshot = tmp_path / "transcript.png"
    chromium(page, tmp_path, "--window-size=1200,1600", f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 10_000


def test_a_tampered_ledger_renders_a_tampered_banner(
    ledger_path: Path, two_sessions: list[str], tmp_path: Path
) -> None:
    data = bytearray((ledger_path / "data.mdb").read_bytes())
    index = data.find(b"change the canvas [[canvas]]")
    assert index > 0
    data[index] ^= 0x01
    (ledger_path / "data.mdb").write_bytes(bytes(data))
    page = tmp_path / "tampered.html"
    result = invoke(ledger_path, "export", "--format", "html", "-o", str(page))
    assert result.exit_code == 6 and "not intact" in result.stderr
    dom = chromium(page, tmp_path, "--dump-dom")
    assert "TAMPERED" in dom and "first bad position" in dom and "role=\"alert\"" in dom
    assert "signed head</dt><dd>none" in dom


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext (poppler-utils)")
def test_tool_calls_and_the_canvas_state_print_even_when_folded(
    ledger_path: Path, tmp_path: Path
) -> None:
    session_id = invoke(ledger_path, "new").stdout.strip()
    canvas = tmp_path / "canvas.json"
    canvas.write_text(json.dumps({"nodes": ["canvas-sent-marker"]}))
    assert invoke(ledger_path, "send", session_id, "change the canvas [[canvas]]",
                  "--canvas", str(canvas)).exit_code == 0
    page = tmp_path / "transcript.html"
    invoke(ledger_path, "export", "--format", "html", "-o", str(page))
    folded = tmp_path / "folded.html"  # as a reader who folded every details would print it
    folded.write_text(page.read_text().replace("<details open", "<details"))
    pdf = tmp_path / "folded.pdf"
    chromium(folded, tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, check=True,
                          timeout=60).stdout.decode()
    assert "canvas-sent-marker" in text  # the canvas state sent
    assert "mcp__atomizer-tools__apply_canvas_change" in text and '"success": true' in text
