"""Signed heads checkpointed into the ledger: `chatledger head --checkpoint` and a running
backend's periodic checkpointer record `HeadCheckpointed` on the reserved `~checkpoints`
stream (besides the anchor file); `verify` checks each one's signature and that its head is
on the chain; the stream is not a session (no listing, no stats, no expiry, no commands).
Real LMDB ledgers, real subprocesses for the second writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner, Result
from testkit import STANDIN_COMMAND_LINE, open_ledger, wait_until

from chatledger.audit.anchors import read_anchors
from chatledger.audit.attest import check_ledger
from chatledger.audit.ledger_checkpoints import checkpoint_head, signed_head_of
from chatledger.audit.signing import ensure_signing_key, sign_head
from chatledger.cli import main
from chatledger.config import load_config
from chatledger.errors import InvalidSessionIdError
from chatledger.events.model import HeadCheckpointed, SessionExpired
from chatledger.events.system import CHECKPOINT_STREAM
from chatledger.storage import EventLog, Head


def invoke(ledger: Path, *args: str) -> Result:
    """`chatledger --ledger LEDGER ...` in process, with the stand-in agent."""
    return CliRunner().invoke(
        main, ["--ledger", str(ledger), *args],
        env={"CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE, "CHATLEDGER_TIMEOUT": "60",
             "CHATLEDGER_ANCHOR_INTERVAL": "0"},
        catch_exceptions=False,
    )


def checkpoints(ledger: Path) -> list[HeadCheckpointed]:
    with EventLog(ledger) as log:
        if log.info(CHECKPOINT_STREAM) is None:
            return []
        return [record.event for record in log.read_session(CHECKPOINT_STREAM)]


@pytest.fixture
def session(ledger_path: Path) -> str:
    session_id = invoke(ledger_path, "new").stdout.strip()
    assert invoke(ledger_path, "send", session_id, "hello [[echo]]").exit_code == 0
    return session_id


def test_head_checkpoint_records_the_signed_head_in_the_ledger_and_the_anchor_file(
    ledger_path: Path, session: str,
) -> None:
    with EventLog(ledger_path) as log:
        head = log.head()
    result = invoke(ledger_path, "head", "--checkpoint", "--json")
    assert result.exit_code == 0, result.output
    signed = json.loads(result.stdout)
    assert (signed["position"], signed["hash"]) == (head.position, head.hash.hex())
    assert signed["recorded_at_position"] == head.position + 1
    [recorded] = checkpoints(ledger_path)
    assert (recorded.position, recorded.hash, recorded.signature, recorded.key,
            recorded.signed_at) == (signed["position"], signed["hash"], signed["signature"],
                                    signed["key"], signed["signed_at"])
    assert recorded.trigger == "on_demand"
    anchors, _ = read_anchors(ledger_path.with_name("ledger.anchors.jsonl"))
    assert [anchor.signature for anchor in anchors] == [recorded.signature]
    again = invoke(ledger_path, "head", "--checkpoint")  # only the checkpoint moved the head
    assert again.exit_code == 0 and "nothing new since the last checkpoint" in again.stdout
    assert len(checkpoints(ledger_path)) == 1
    clean = invoke(ledger_path, "verify")
    assert clean.exit_code == 0
    assert "checkpoints: 1 signed head(s) recorded" in clean.stdout
    assert json.loads(invoke(ledger_path, "verify", "--json").stdout)["checkpoints"] == 1


def test_the_checkpoint_stream_is_not_a_session(ledger_path: Path, session: str) -> None:
    assert invoke(ledger_path, "head", "--checkpoint").exit_code == 0
    listed = json.loads(invoke(ledger_path, "sessions", "--json").stdout)
    assert [info["session_id"] for info in listed] == [session]
    assert json.loads(invoke(ledger_path, "stats", "--json").stdout)["sessions"] == 1
    asked = invoke(ledger_path, "events", CHECKPOINT_STREAM, "--json")  # named: shown
    assert asked.exit_code == 0 and "head_checkpointed" in asked.stdout
    for command in (("send", CHECKPOINT_STREAM, "hi"), ("resume", CHECKPOINT_STREAM),
                    ("mode", CHECKPOINT_STREAM, "power"), ("title", CHECKPOINT_STREAM, "x")):
        refused = invoke(ledger_path, *command)
        assert refused.exit_code == 2 and "reserved" in refused.output, command
    with open_ledger(ledger_path, anchor_interval=0) as ledger:
        for bad in (CHECKPOINT_STREAM, "~anything"):
            with pytest.raises(InvalidSessionIdError, match="reserved"):
                ledger.create_session(bad)
        ledger.sweep(now=time.time() + 10 * 365 * 86400)  # everything is idle for years
        expired = [r.event for r in ledger.log.read_session(CHECKPOINT_STREAM)
                   if isinstance(r.event, SessionExpired)]
        assert expired == []
        assert ledger.info(session).status == "expired"  # type: ignore[union-attr]
    assert invoke(ledger_path, "verify").exit_code == 0
    page = ledger_path.parent / "all.html"  # a whole-ledger transcript: the sessions only
    assert invoke(ledger_path, "export", "--format", "html", "-o", str(page)).exit_code == 0
    assert session in page.read_text() and CHECKPOINT_STREAM not in page.read_text()


def test_a_running_backend_records_checkpoints_periodically_but_not_of_its_own(
    ledger_path: Path,
) -> None:
    anchor_file = ledger_path.with_name("elsewhere.jsonl")
    with open_ledger(ledger_path, anchor_interval=0.05, anchor_file=str(anchor_file)) as ledger:
        session_id = ledger.create_session().session_id
        assert wait_until(lambda: ledger.log.info(CHECKPOINT_STREAM) is not None)
        assert ledger.send(session_id, "hello [[echo]]").ok
        # The turn's last record, not the head: a checkpoint recorded right after the turn
        # (of the head the turn left) would be the head, and is never checkpointed again.
        moved = ledger.log.read_session(session_id)[-1].position
        assert wait_until(lambda: any(
            record.event.position >= moved
            for record in ledger.log.read_session(CHECKPOINT_STREAM)))
        checkpointer = ledger._checkpoints
        assert checkpointer is not None
        settled = ledger.log.head()
        for _ in range(3):  # nothing but its own record moved the head
            checkpointer.checkpoint_now()
        assert ledger.log.head() == settled
    events = checkpoints(ledger_path)
    assert {event.trigger for event in events} == {"periodic"}
    with EventLog(ledger_path) as log:
        check = check_ledger(log, load_config(path=str(ledger_path), anchor_file=str(anchor_file)))
    assert check.ok and check.checkpoints == len(events) >= 2


def test_checkpoints_from_a_second_process_and_a_backend_all_land_and_verify(
    ledger_path: Path, session: str,
) -> None:
    environment = {**os.environ, "CHATLEDGER_ANCHOR_INTERVAL": "0",
                   "CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE}
    with open_ledger(ledger_path, anchor_interval=0.02) as ledger:
        other = subprocess.Popen(
            [sys.executable, "-c",
             "import sys\nfrom chatledger.cli import main\n"
             "for _ in range(5):\n"
             "    try:\n"
             f"        main(['--ledger', {str(ledger_path)!r}, 'send', {session!r}, 'more [[echo]]'],"
             " standalone_mode=False)\n"
             f"        main(['--ledger', {str(ledger_path)!r}, 'head', '--checkpoint'],"
             " standalone_mode=False)\n"
             "    except SystemExit:\n"
             "        pass\n"],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, errors = other.communicate(timeout=120)
        finally:
            if other.poll() is None:
                other.kill()
                other.wait(10)
        assert other.returncode == 0, errors.decode()
        assert ledger.send(session, "and mine [[echo]]").ok
        mine = ledger.log.head().position
        assert wait_until(lambda: any(
            r.event.position >= mine for r in ledger.log.read_session(CHECKPOINT_STREAM)
            if r.event.trigger == "periodic"))
    events = checkpoints(ledger_path)
    triggers = [event.trigger for event in events]
    assert "on_demand" in triggers and "periodic" in triggers  # both processes recorded
    assert [event.position for event in events] == sorted(event.position for event in events)
    result = invoke(ledger_path, "verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoints"] == len(events)


def test_verify_reports_a_recorded_checkpoint_with_a_bad_signature_or_a_head_off_the_chain(
    ledger_path: Path, session: str, tmp_path: Path,
) -> None:
    config = load_config(path=str(ledger_path))
    assert invoke(ledger_path, "head", "--checkpoint").exit_code == 0
    key = ensure_signing_key(str(ledger_path.with_name("ledger.signing-key")))
    with EventLog(ledger_path) as log:
        genuine = log.read_session(CHECKPOINT_STREAM)[0].event
        forged = msgspec.structs.replace(genuine, position=genuine.position - 1)
        log.append(CHECKPOINT_STREAM, [forged], 1)  # the signature no longer holds
        report = check_ledger(log, config)
    assert not report.ok and "forged or edited" in (report.reason or "")

    other = tmp_path / "other"
    assert invoke(other, "new").exit_code == 0
    with EventLog(other) as log:
        head = log.head()
        wrong = sign_head(key, Head(head.position, bytes(32)))  # signed, but not this chain
        log.append(CHECKPOINT_STREAM, [HeadCheckpointed(
            position=wrong.position, hash=wrong.hash, signed_at=wrong.signed_at, key=wrong.key,
            public_key=wrong.public_key, signature=wrong.signature)], 0)
        ahead = sign_head(key, Head(head.position + 5, head.hash))
        log.append(CHECKPOINT_STREAM, [HeadCheckpointed(
            position=ahead.position, hash=ahead.hash, signed_at=ahead.signed_at, key=ahead.key,
            public_key=ahead.public_key, signature=ahead.signature)], 1)
        check = check_ledger(log, load_config(path=str(other)), trusted=key.public_key())
    assert not check.ok
    assert any("the history up to it was rewritten" in problem for problem in check.problems)
    assert any("which is not before it" in problem for problem in check.problems)
    assert signed_head_of(genuine).signature == genuine.signature


def test_a_rollback_behind_an_anchored_head_is_still_reported(
    ledger_path: Path, session: str, tmp_path: Path,
) -> None:
    older = tmp_path / "older.mdb"
    older.write_bytes((ledger_path / "data.mdb").read_bytes())
    assert invoke(ledger_path, "send", session, "more [[echo]]").exit_code == 0
    key = ensure_signing_key(str(ledger_path.with_name("ledger.signing-key")))
    with EventLog(ledger_path) as log:
        done = checkpoint_head(log, key, ledger_path.with_name("ledger.anchors.jsonl"))
    assert done.recorded is not None
    (ledger_path / "data.mdb").write_bytes(older.read_bytes())
    result = invoke(ledger_path, "verify")
    assert result.exit_code == 1 and "rolled back" in result.stderr
