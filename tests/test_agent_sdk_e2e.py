"""End to end with the real pieces: the real `claude` binary driven by the real Claude Agent
SDK (`query()`), against the fake Messages API on 127.0.0.1, with chatledger's
`LedgerSessionStore` as the SDK's session store. The SDK passes `--session-mirror`, claude
hands over its transcript as it writes it, and the ledger must hold exactly that transcript;
with the local file gone (or on another "node": a fresh HOME), a resumed `query()` loads it
from the ledger and claude sends the whole earlier conversation to the API.

Skipped when claude is absent and npm cannot install it, or (outside CI) without the `sdk` extra.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claude_harness import CLEARED_VARIABLES, claude_variables, require_claude
from fake_anthropic import FakeAnthropic, text

if os.environ.get("CI") != "true":
    pytest.importorskip("claude_agent_sdk", reason="the `sdk` extra is not installed")

from claude_agent_sdk import (
    ClaudeAgentOptions,
    ResultMessage,
    SystemMessage,
    project_key_for_directory,
    query,
)

from chatledger.events import TranscriptEntriesAppended, history
from chatledger.sdk_store import LedgerSessionStore, ledger_session_id

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

QUERY_TIMEOUT_SECONDS = 60.0


@pytest.fixture(scope="module")
def claude_binary() -> str:
    """The real claude binary (installed into the npm cache if need be), else a skip."""
    return require_claude(pytest.skip, pytest.fail)


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    """A fresh fake Messages API for one test, closed afterwards."""
    with FakeAnthropic(lifetime=150) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _clean_outer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK passes our environment on to claude: drop what would redirect it."""
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class Node:
    """One machine's worth of claude state: its own HOME (and so its own transcripts)."""

    def __init__(self, root: Path, binary: str, fake: FakeAnthropic, workdir: Path) -> None:
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.binary = binary
        self.fake = fake
        self.workdir = workdir

    def options(self, store: LedgerSessionStore, **extra: Any) -> ClaudeAgentOptions:
        """SDK options that run the real claude against the fake API with the ledger store.
        CLAUDE_CONFIG_DIR tells the SDK where claude writes, so it can map the mirrored
        file paths to session keys."""
        env = claude_variables(self.fake.base_url, self.home)
        env["CLAUDE_CONFIG_DIR"] = str(self.home / ".claude")
        return ClaudeAgentOptions(cli_path=self.binary, cwd=str(self.workdir), env=env,
                                  session_store=store, max_turns=1, **extra)

    def transcripts(self) -> list[Path]:
        """claude's own transcript files on this node."""
        return sorted((self.home / ".claude" / "projects").glob("*/*.jsonl"))


def ask(prompt: str, options: ClaudeAgentOptions) -> list[Any]:
    """Run one SDK `query()` to its end (bounded in time); its messages."""
    async def collect() -> list[Any]:
        return [message async for message in query(prompt=prompt, options=options)]

    async def bounded() -> list[Any]:
        return await asyncio.wait_for(collect(), QUERY_TIMEOUT_SECONDS)

    return asyncio.run(bounded())


def result_of(messages: list[Any]) -> ResultMessage:
    """The query's result message (it must have succeeded)."""
    results = [message for message in messages if isinstance(message, ResultMessage)]
    assert len(results) == 1, messages
    assert not results[0].is_error, results[0]
    return results[0]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The project directory both nodes run in (the SDK's project key comes from it)."""
    path = tmp_path / "project"
    path.mkdir()
    return path


def test_a_query_with_the_ledger_store_mirrors_claudes_transcript_into_the_ledger(
    claude_binary: str, fake_api: FakeAnthropic, tmp_path: Path, workdir: Path,
) -> None:
    node = Node(tmp_path / "node-a", claude_binary, fake_api, workdir)
    fake_api.script(text("The word is noted."))
    with LedgerSessionStore.open(tmp_path / "ledger") as store:
        messages = ask("Remember the word pomegranate.", node.options(store))
        session_id = result_of(messages).session_id
        key = {"project_key": project_key_for_directory(str(workdir)), "session_id": session_id}
        loaded = asyncio.run(store.load(key))

        # Exactly what claude wrote to its own file, entry for entry.
        [transcript] = node.transcripts()
        on_disk = [json.loads(line) for line in transcript.read_text().splitlines() if line]
        assert loaded == on_disk
        assert {"user", "assistant"} <= {entry.get("type") for entry in on_disk}

        records = store.store.read_session(ledger_session_id(key))
        assert records and all(isinstance(r.event, TranscriptEntriesAppended) for r in records)
        said = [(message.role, message.content) for message in history(records)]
        assert ("user", "Remember the word pomegranate.") in said
        assert ("assistant", "The word is noted.") in said
        assert store.store.verify().ok
        listed = asyncio.run(store.list_sessions(key["project_key"]))
        assert [entry["session_id"] for entry in listed] == [session_id]


@pytest.mark.parametrize("where", ["same node, transcript deleted", "another node"])
def test_a_resumed_query_loads_the_whole_history_from_the_ledger(
    claude_binary: str, fake_api: FakeAnthropic, tmp_path: Path, workdir: Path, where: str,
) -> None:
    first_node = Node(tmp_path / "node-a", claude_binary, fake_api, workdir)
    fake_api.script(text("Noted: pomegranate."), text("You asked me to remember pomegranate."))
    ledger = tmp_path / "ledger"
    with LedgerSessionStore.open(ledger) as store:
        session_id = result_of(ask("Remember the word pomegranate.",
                                   first_node.options(store))).session_id
    if where == "another node":
        resuming_node = Node(tmp_path / "node-b", claude_binary, fake_api, workdir)
    else:
        resuming_node = first_node
    shutil.rmtree(first_node.home / ".claude" / "projects")
    assert not resuming_node.transcripts()

    with LedgerSessionStore.open(ledger) as store:  # a fresh store: nothing cached
        messages = ask("Which word did I ask you to remember?",
                       resuming_node.options(store, resume=session_id))
        assert result_of(messages).result == "You asked me to remember pomegranate."
        init = next(m for m in messages if isinstance(m, SystemMessage) and m.subtype == "init")
        assert init.data.get("session_id") == session_id

        [first_call, resumed_call] = fake_api.model_calls()
        assert "Remember the word pomegranate." in first_call.all_text()
        earlier = resumed_call.all_text()
        assert "Remember the word pomegranate." in earlier
        assert "Noted: pomegranate." in earlier
        assert "Which word did I ask you to remember?" in earlier
        roles = [message.get("role") for message in resumed_call.messages]
        assert roles.count("assistant") >= 1 and roles[-1] == "user"

        # The resumed turn was mirrored under the same key, after the first one.
        key = {"project_key": project_key_for_directory(str(workdir)), "session_id": session_id}
        said = [(message.role, message.content)
                for message in history(store.store.read_session(ledger_session_id(key)))]
        assert said.index(("user", "Remember the word pomegranate.")) < said.index(
            ("user", "Which word did I ask you to remember?"))
        assert ("assistant", "You asked me to remember pomegranate.") in said
        assert store.store.verify().ok
