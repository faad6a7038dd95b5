"""Redaction that keeps proofs: content goes, commitments stay, every check still passes.

Through the APIs (Ledger, SessionManager), the CLI (`redact`, `verify`, `history`, `replay`,
`export`, `import`, offline `verify FILE`), signed heads and the v1 fixture ledger. The
per-store behaviour is in tests/test_store_contract.py (every store)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from chatledger.cli import main
from chatledger.events import MessageSent, Redacted, ResponseReceived, SessionCreated
from chatledger.events.content import REDACTED_TEXT
from chatledger.ledger import Ledger
from chatledger.manager import SessionManager
from chatledger.storage import EventLog, RedactionRefusedError
from chatledger.storage.hashing import HASH_SIZE
from chatledger.storage.lmdb import layout

STANDIN = f"{sys.executable} -m chatledger.agent.standin"
FIXTURE = Path(__file__).parent / "fixtures" / "ledger-v1"
SECRET = "my passport number is X1234567"


def invoke(ledger: Path, *args: str) -> Result:
    """`chatledger --ledger LEDGER ...` in process, with the stand-in agent."""
    return CliRunner().invoke(
        main, ["--ledger", str(ledger), *args],
        env={"CHATLEDGER_AGENT_COMMAND": STANDIN, "CHATLEDGER_TIMEOUT": "60",
             "CHATLEDGER_ANCHOR_INTERVAL": "0"},
        catch_exceptions=False,
    )


def with_secret(ledger: Path) -> str:
    """A session whose first message holds personal data (echoed back by the stand-in)."""
    session_id = invoke(ledger, "new", "--study", "beam").stdout.strip()
    assert invoke(ledger, "send", session_id, f"{SECRET} [[echo]]").exit_code == 0
    assert invoke(ledger, "send", session_id, "change the canvas [[canvas]]").exit_code == 0
    return session_id


def message_version(ledger: Path, session_id: str, text: str) -> int:
    with EventLog(ledger) as log:
        return next(r.version for r in log.read_session(session_id)
                    if isinstance(r.event, MessageSent) and text in r.event.text)


def redact_secret(ledger: Path, session_id: str) -> list[int]:
    """Redact every record of the session that holds SECRET (the message and its echo)."""
    with EventLog(ledger) as log:
        versions = [version for version, (_, value)
                    in enumerate(log.read_session_raw(session_id), start=1)
                    if SECRET.encode() in value]
    for version in versions:
        assert invoke(ledger, "redact", session_id, "--version", str(version)).exit_code == 0
    return versions


def test_the_cli_redacts_one_message_and_verify_reports_it_redacted(ledger_path: Path) -> None:
    session_id = with_secret(ledger_path)
    version = message_version(ledger_path, session_id, SECRET)
    saved_head = invoke(ledger_path, "head", "--json")
    head = json.loads(saved_head.stdout)["position"], json.loads(saved_head.stdout)["hash"]
    result = invoke(ledger_path, "redact", session_id, "--version", str(version),
                    "--reason", "GDPR erasure request", "--by", "dpo@example.org")
    assert result.exit_code == 0, result.output
    assert f"version {version} (message_sent) redacted" in result.stdout
    check = invoke(ledger_path, "verify", "--head", f"{head[0]}:{head[1]}")
    assert check.exit_code == 0, check.output
    assert "redacted: 1 record(s)" in check.stdout and "head matches" in check.stdout
    as_json = json.loads(invoke(ledger_path, "verify", "--json").stdout)
    assert as_json["ok"] and as_json["records_redacted"] == 1
    history = invoke(ledger_path, "history", session_id)
    assert history.exit_code == 0 and REDACTED_TEXT in history.stdout
    with EventLog(ledger_path) as log:
        assert SECRET.encode() not in log.read_session_raw(session_id, version)[0][1]
        redaction = log.read_session(session_id)[-1].event
    assert isinstance(redaction, Redacted)
    assert (redaction.version, redaction.reason, redaction.redacted_by) == (
        version, "GDPR erasure request", "dpo@example.org")


def test_redacting_an_answer_and_a_whole_session_leaves_no_copy_in_the_file(
    ledger_path: Path,
) -> None:
    session_id = with_secret(ledger_path)
    other = invoke(ledger_path, "new").stdout.strip()
    assert invoke(ledger_path, "send", other, "unrelated [[echo]]").exit_code == 0
    result = invoke(ledger_path, "redact", session_id, "--all", "--json")
    assert result.exit_code == 0, result.output
    redacted = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert {event["event_type"] for event in redacted} >= {"message_sent", "response_received",
                                                          "canvas_modified"}
    with EventLog(ledger_path) as log:
        log.copy_to(ledger_path.parent / "compact")
        for recorded in log.read_session(session_id):
            if isinstance(recorded.event, (MessageSent, ResponseReceived)):
                assert recorded.event.text == REDACTED_TEXT
    # A compacted copy holds live pages only: the old content is nowhere in it.
    assert b"X1234567" not in (ledger_path.parent / "compact" / "data.mdb").read_bytes()
    assert invoke(ledger_path, "verify").exit_code == 0
    again = invoke(ledger_path, "redact", session_id, "--all")
    assert again.exit_code == 0 and "nothing left to redact" in again.stdout
    assert invoke(ledger_path, "history", other).stdout.count("unrelated") >= 1


def test_redact_exits_2_for_what_cannot_be_redacted_and_3_for_an_unknown_session(ledger_path: Path) -> None:
    session_id = with_secret(ledger_path)
    assert invoke(ledger_path, "redact", session_id).exit_code == 2  # neither --version nor --all
    assert invoke(ledger_path, "redact", session_id, "--version", "2", "--all").exit_code == 2
    no_content = invoke(ledger_path, "redact", session_id, "--version", "1")  # session_created
    assert no_content.exit_code == 2 and "no content to redact" in no_content.output
    assert invoke(ledger_path, "redact", session_id, "--version", "999").exit_code == 2
    assert invoke(ledger_path, "redact", "no-such-session", "--all").exit_code == 3
    version = message_version(ledger_path, session_id, SECRET)
    assert invoke(ledger_path, "redact", session_id, "--version", str(version)).exit_code == 0
    twice = invoke(ledger_path, "redact", session_id, "--version", str(version))
    assert twice.exit_code == 2 and "already redacted" in twice.output


def test_replay_and_the_html_export_show_redacted_not_the_content(
    ledger_path: Path, tmp_path: Path,
) -> None:
    session_id = with_secret(ledger_path)
    version = message_version(ledger_path, session_id, SECRET)
    assert len(redact_secret(ledger_path, session_id)) == 2  # the message and its echo
    replay = invoke(ledger_path, "replay", session_id, "--at", str(version))
    assert replay.exit_code == 0 and REDACTED_TEXT in replay.stdout
    assert SECRET not in replay.stdout
    page = tmp_path / "transcript.html"
    assert invoke(ledger_path, "export", session_id, "--format", "html", "-o",
                  str(page)).exit_code == 0
    html = page.read_text()
    assert "<b>[redacted]</b>" in html and "<b>redacted</b>" in html
    assert SECRET not in html


def test_an_export_with_redactions_verifies_offline_and_imports_verbatim(
    ledger_path: Path, tmp_path: Path,
) -> None:
    session_id = with_secret(ledger_path)
    versions = redact_secret(ledger_path, session_id)
    export = tmp_path / "export.jsonl"
    assert invoke(ledger_path, "export", "--format", "jsonl", "-o", str(export)).exit_code == 0
    lines = [json.loads(line) for line in export.read_text().splitlines()[1:]]
    assert [line["version"] for line in lines if line.get("redacted")] == versions
    assert SECRET not in export.read_text()
    key = invoke(ledger_path, "head", "--json")
    assert key.exit_code == 0
    public = Path(json.loads(key.stdout)["public_key_file"])
    offline = invoke(ledger_path, "verify", str(export), "--key", str(public))
    assert offline.exit_code == 0, offline.output
    assert "trusted" in offline.stdout
    copy = tmp_path / "copy"
    imported = invoke(copy, "import", str(export), "--key", str(public))
    assert imported.exit_code == 0, imported.output
    with EventLog(ledger_path) as source, EventLog(copy) as target:
        assert list(target.read_raw()) == list(source.read_raw())
        assert target.verify(source.head()).records_redacted == 2


def test_a_partial_export_merged_into_a_ledger_stays_redacted(
    ledger_path: Path, tmp_path: Path,
) -> None:
    session_id = with_secret(ledger_path)
    redact_secret(ledger_path, session_id)
    export = tmp_path / "session.jsonl"
    assert invoke(ledger_path, "export", session_id, "-o", str(export)).exit_code == 0
    other = tmp_path / "other"
    invoke(other, "new")  # the ledger already holds a session: the import merges
    assert invoke(other, "import", str(export)).exit_code == 0
    with EventLog(other) as log:
        report = log.verify()
        assert report.ok and report.records_redacted == 2
        assert SECRET.encode() not in b"".join(value for _, value in log.read_raw())


def test_an_edited_commitment_in_an_export_is_refused(ledger_path: Path, tmp_path: Path) -> None:
    import base64

    session_id = with_secret(ledger_path)
    export = tmp_path / "export.jsonl"
    assert invoke(ledger_path, "export", "-o", str(export)).exit_code == 0
    header, *lines = export.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    target = next(r for r in records
                  if r["session_id"] == session_id and r["event"]["type"] == "message_sent")
    stored = base64.b64decode(target["record"])
    # The event edited, the hash untouched: only the commitment can tell.
    target["record"] = base64.b64encode(stored.replace(b"X1234567", b"X7654321")).decode()
    target["event"]["text"] = target["event"]["text"].replace("X1234567", "X7654321")
    export.write_text("\n".join([header, *(json.dumps(r) for r in records)]) + "\n")
    offline = invoke(ledger_path, "verify", str(export))
    assert offline.exit_code == 1 and "commitment" in offline.output
    assert invoke(tmp_path / "copy", "import", str(export)).exit_code == 1


def test_the_ledger_and_the_session_manager_redact(ledger_path: Path) -> None:
    with Ledger(str(ledger_path), agent_command=STANDIN) as ledger:
        info = ledger.create_session()
        outcome = ledger.send(info.session_id, f"{SECRET} [[echo]]")
        assert outcome.ok
        assert 2 in [hit.position for hit in ledger.search("X1234567")]  # indexed before
        [written] = ledger.redact(info.session_id, 2, reason="asked", redacted_by="api")
        assert isinstance(written.event, Redacted) and written.event.version == 2
        assert [m.content for m in ledger.history(info.session_id)][0] == REDACTED_TEXT
        hits = ledger.search("X1234567")
        assert hits and all(hit.position != 2 for hit in hits)  # only the echo is left
        assert ledger.verify().ok
        # The session goes on: the actor comes back from the redacted log.
        assert ledger.send(info.session_id, "next [[echo]]").ok
        session_id = info.session_id

    async def through_the_manager() -> list[int]:
        manager = SessionManager(path=str(ledger_path), agent_command=STANDIN)
        await manager.start()
        try:
            written = await manager.redact(session_id, None, reason="erase all")
            with pytest.raises(ValueError):
                await manager.redact("nobody", None)
            return [recorded.event.version for recorded in written]
        finally:
            await manager.stop()

    versions = asyncio.run(through_the_manager())
    assert versions and 2 not in versions
    with EventLog(ledger_path) as log:
        assert log.verify().ok


def test_the_v1_fixture_ledger_verifies_and_refuses_to_redact_its_old_records(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "ledger-v1"
    shutil.copytree(FIXTURE, copy)
    with EventLog(copy) as log:
        assert log.verify().ok
        head = log.head()
        with pytest.raises(RedactionRefusedError, match="format 1"):
            log.redact("v1-session", 2)  # a MessageSent of schema 1, hashed whole
        assert log.verify().ok and log.head() == head
        with log.store.shared.transaction() as txn:
            marker = layout.decode_format(txn.get(layout.META_FORMAT, db=log.store.meta_db))
        assert marker["version"] == 1  # opened, not written: still readable by old releases
        [message] = log.append("v1-session", [MessageSent(turn=2, text=SECRET)], 5)
        with log.store.shared.transaction() as txn:
            marker = layout.decode_format(txn.get(layout.META_FORMAT, db=log.store.meta_db))
        assert marker["version"] == layout.FORMAT_VERSION  # an old release now refuses it
        log.redact("v1-session", message.version, reason="new records can be")
        report = log.verify()
        assert report.ok and report.records_redacted == 1


def test_every_content_type_reads_as_its_redacted_form(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        log.append("s", [SessionCreated(),
                         MessageSent(turn=1, text=SECRET, canvas_state={"id": SECRET}),
                         ResponseReceived(turn=1, text=SECRET, text_blocks=(SECRET,))], 0)
        before = {position: value[:HASH_SIZE] for position, value in log.read_raw()}
        log.redact("s", None, reason="all")
        message, answer = (r.event for r in log.read_session("s")[1:3])
        assert isinstance(message, MessageSent) and isinstance(answer, ResponseReceived)
        assert (message.text, message.canvas_state, message.turn) == (REDACTED_TEXT, None, 1)
        assert (answer.text, answer.text_blocks) == (REDACTED_TEXT, ())
        after = {position: value[:HASH_SIZE] for position, value in log.read_raw()}
        assert all(after[position] == digest for position, digest in before.items())
        assert not any(SECRET.encode() in value for _, value in log.read_raw())
        info = log.require_info("s")
        assert (info.message_count, info.turn_count, info.version) == (2, 1, 5)


def test_the_same_message_twice_gets_two_commitments_and_reads_back_without_its_salt(
    ledger_path: Path,
) -> None:
    with EventLog(ledger_path) as log:
        same = MessageSent(turn=1, text="yes")
        log.append("s", [SessionCreated(), same, same], 0)
        values = [value[HASH_SIZE:] for _, value in log.read_session_raw("s")[1:]]
        from chatledger.events.codec import SALT_KEY, decode_sealed

        first, second = (decode_sealed(value) for value in values)
        assert first.commitment != second.commitment  # a guess cannot be checked against it
        assert SALT_KEY.encode() in bytes(first.event)
        assert [r.event for r in log.read_session("s")[1:]] == [same, same]
