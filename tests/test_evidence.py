"""Evidence an auditor can take away: faithful export and import, signed heads, anchors
against rollback, offline verification of an export, and the small truths of the CLI."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner, Result

from chatledger.audit.anchors import read_anchors
from chatledger.audit.export_check import check_export
from chatledger.audit.signing import (
    create_signing_key,
    load_public_key,
    sign_head,
    signature_problem,
)
from chatledger.cli import EXIT_CODES, main
from chatledger.errors import ConcurrencyError
from chatledger.events import MessageSent, SessionCreated
from chatledger.events.codec import StoredEnvelope, encode_record
from chatledger.ledger import Ledger
from chatledger.storage import EventLog, Head, record_hash

STANDIN = f"{sys.executable} -m chatledger.agent.standin"


def invoke(ledger: Path, *args: str) -> Result:
    """`chatledger --ledger LEDGER ...` in process, with the stand-in agent."""
    return CliRunner().invoke(
        main, ["--ledger", str(ledger), *args],
        env={"CHATLEDGER_AGENT_COMMAND": STANDIN, "CHATLEDGER_TIMEOUT": "60",
             "CHATLEDGER_ANCHOR_INTERVAL": "0"},
        catch_exceptions=False,
    )


@pytest.fixture
def interleaved(ledger_path: Path) -> list[str]:
    """Three sessions whose records interleave in the log (what regrouping used to break)."""
    ids = [invoke(ledger_path, "new", "--study", f"s{n}").stdout.strip() for n in range(3)]
    for round_number in range(2):
        for session_id in ids:
            text = "change the canvas [[canvas]]" if round_number else "hello [[echo]]"
            assert invoke(ledger_path, "send", session_id, text).exit_code == 0
    assert invoke(ledger_path, "mode", ids[1], "power").exit_code == 0
    return ids


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def public_key_file(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".signing-key.pub")


# -- faithful export and import -----------------------------------------------------------


def test_whole_ledger_import_keeps_positions_hashes_and_head(
    ledger_path: Path, interleaved: list[str], tmp_path: Path
) -> None:
    original_head = json.loads(invoke(ledger_path, "verify", "--json").stdout)["head"]
    exported = tmp_path / "all.jsonl"
    assert invoke(ledger_path, "export", "-o", str(exported)).exit_code == 0
    copy = tmp_path / "copy"
    result = invoke(copy, "import", str(exported), "--key", str(public_key_file(ledger_path)),
                    "--json")
    report = json.loads(result.stdout)
    assert report["verbatim"] is True and report["signature"] == "trusted"
    with EventLog(ledger_path) as log, EventLog(copy) as other:
        mine = [(position, bytes(value)) for position, value in log.read_raw()]
        theirs = [(position, bytes(value)) for position, value in other.read_raw()]
        assert theirs == mine  # every position, byte and hash
        assert other.head() == log.head()
        assert {info.session_id for info in other.sessions()} == set(interleaved)
    assert invoke(copy, "verify", "--head", original_head).exit_code == 0
    assert "head matches" in invoke(copy, "verify", "--head", original_head).stdout


def test_importing_a_newer_whole_export_into_the_copy_continues_it_verbatim(
    ledger_path: Path, interleaved: list[str], tmp_path: Path
) -> None:
    first, second, copy = tmp_path / "1.jsonl", tmp_path / "2.jsonl", tmp_path / "copy"
    invoke(ledger_path, "export", "-o", str(first))
    invoke(copy, "import", str(first))
    invoke(ledger_path, "send", interleaved[0], "more [[echo]]")
    invoke(ledger_path, "export", "-o", str(second))
    report = json.loads(invoke(copy, "import", str(second), "--json").stdout)
    assert report["verbatim"] is True and report["events_imported"] == 3
    with EventLog(ledger_path) as log, EventLog(copy) as other:
        assert other.head() == log.head()


def test_a_partial_export_keeps_each_sessions_chain_and_says_how_log_links_were_made(
    ledger_path: Path, interleaved: list[str], tmp_path: Path
) -> None:
    exported = tmp_path / "two.jsonl"
    assert invoke(ledger_path, "export", interleaved[0], interleaved[2], "-o",
                  str(exported)).exit_code == 0
    header, *records = lines_of(exported)
    assert header["scope"] == "sessions" and header["log_chain"] == "source"
    assert "source ledger" in header["log_chain_note"]
    assert header["sessions"] == sorted([interleaved[0], interleaved[2]])
    assert header["records"] == len(records)
    positions = [record["position"] for record in records]
    assert positions == sorted(positions)  # log order, with the other session's gaps
    with EventLog(ledger_path) as log:
        for session_id in (interleaved[0], interleaved[2]):
            stream = [record for record in records if record["session_id"] == session_id]
            assert [record["version"] for record in stream] == list(
                range(1, log.require_info(session_id).version + 1))
    tips = header["signed_head"]["sessions"]
    assert set(tips) == {interleaved[0], interleaved[2]}
    result = invoke(tmp_path / "copy", "import", str(exported), "--json")
    assert json.loads(result.stdout)["verbatim"] is False
    assert invoke(tmp_path / "copy", "verify").exit_code == 0


def test_append_verbatim_refuses_records_that_do_not_continue_the_log(
    ledger_path: Path, tmp_path: Path
) -> None:
    with EventLog(ledger_path) as log:
        log.append("a", [SessionCreated(), MessageSent(turn=1, text="x")], 0)
        log.append("b", [SessionCreated(mode="power")], 0)
        stored = [bytes(value[32:]) for _, value in log.read_raw()]
        head = log.head()
    with EventLog(tmp_path / "copy") as copy:
        with pytest.raises(ConcurrencyError):
            copy.append_verbatim(stored[1:])  # starts at 2 in an empty log
        assert copy.head().position == 0
        with pytest.raises(ValueError):
            copy.append_verbatim([stored[0], stored[2]])  # a hole between them
        assert copy.head().position == 0
        assert copy.append_verbatim(stored[:2]) == Head(2, record_hash(stored[1]))
        assert copy.append_verbatim(stored[2:]) == head
        assert copy.verify().ok and copy.read_session("a")[1].event.text == "x"


# -- signed heads, anchors, forged histories ------------------------------------------------


def test_the_signing_key_is_created_0600_with_the_ledger_and_head_prints_it_signed(
    ledger_path: Path, interleaved: list[str]
) -> None:
    key_file = ledger_path.with_name("ledger.signing-key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    result = invoke(ledger_path, "head", "--json")
    signed = json.loads(result.stdout)
    with EventLog(ledger_path) as log:
        assert f"{signed['position']}:{signed['hash']}" == str(log.head())
    assert signed["key"].startswith("ed25519:")
    trusted = load_public_key(public_key_file(ledger_path))
    from chatledger.audit.signing import signed_head_from_json

    parsed = signed_head_from_json({k: v for k, v in signed.items() if k not in (
        "public_key_file", "anchor_file")})
    assert signature_problem(parsed, trusted) is None
    text = invoke(ledger_path, "head").stdout
    assert signed["key"] in text and "signature" in text


def test_an_edited_export_with_recomputed_hashes_is_refused_under_the_trusted_key(
    ledger_path: Path, interleaved: list[str], tmp_path: Path
) -> None:
    exported = tmp_path / "all.jsonl"
    invoke(ledger_path, "export", "-o", str(exported))
    forged = tmp_path / "forged.jsonl"
    forge(exported, forged, "the agent said something else")
    key = str(public_key_file(ledger_path))
    # Every line is self-consistent: without the signature it would pass.
    report, _, _ = check_export(forged.read_bytes().splitlines(keepends=True)[1:])
    assert report.ok
    result = invoke(tmp_path / "copy", "import", str(forged), "--key", key)
    assert result.exit_code == 1 and "import rejected" in result.stderr
    assert invoke(tmp_path / "copy", "verify", str(forged), "--key", key).exit_code == 1
    # Re-signed by the forger's own key: a valid signature, but not the trusted key's.
    resign(forged, create_signing_key(tmp_path / "forger.key"))
    assert invoke(tmp_path / "other", "import", str(forged), "--dry-run").exit_code == 0
    result = invoke(tmp_path / "other", "import", str(forged), "--key", key)
    assert result.exit_code == 1 and "not by the trusted key" in result.stderr
    with EventLog(tmp_path / "other") as other:
        assert other.head().position == 0


def test_verify_reports_a_rollback_behind_the_last_anchored_head(
    ledger_path: Path, interleaved: list[str], tmp_path: Path
) -> None:
    assert invoke(ledger_path, "head", "--checkpoint").exit_code == 0
    older = tmp_path / "older.mdb"
    shutil.copy(ledger_path / "data.mdb", older)
    invoke(ledger_path, "send", interleaved[0], "more [[echo]]")
    assert invoke(ledger_path, "head", "--checkpoint").exit_code == 0
    anchors, _ = read_anchors(ledger_path.with_name("ledger.anchors.jsonl"))
    assert len(anchors) == 2 and anchors[1].position > anchors[0].position
    clean = invoke(ledger_path, "verify")
    assert clean.exit_code == 0 and "anchor: continues" in clean.stdout
    shutil.copy(older, ledger_path / "data.mdb")  # the whole file rolled back: it verifies
    result = invoke(ledger_path, "verify")
    assert result.exit_code == 1
    assert "rolled back" in result.stderr and "head (keep it" not in result.stdout
    refused = invoke(ledger_path, "head", "--checkpoint")
    assert refused.exit_code == 1 and "rolled back" in refused.stderr
    assert len(read_anchors(ledger_path.with_name("ledger.anchors.jsonl"))[0]) == 2


def test_a_running_backend_checkpoints_its_head_periodically(ledger_path: Path) -> None:
    anchor_file = ledger_path.with_name("anchors-elsewhere.jsonl")
    with Ledger(str(ledger_path), agent_command=STANDIN, anchor_interval=0.05,
                anchor_file=str(anchor_file)) as ledger:
        ledger.create_session("s1")
        deadline = time.monotonic() + 10
        while not anchor_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # polls a file another thread writes; bounded
        assert anchor_file.exists()
        head = ledger.log.head()
    anchors, _ = read_anchors(anchor_file)
    assert anchors[-1].head.position >= head.position >= 1


# -- offline verification -------------------------------------------------------------------


def test_verify_checks_an_export_file_with_no_ledger(
    ledger_path: Path, interleaved: list[str], tmp_path: Path
) -> None:
    exported = tmp_path / "all.jsonl"
    invoke(ledger_path, "export", "-o", str(exported))
    key = tmp_path / "ledger.pub"
    shutil.copy(public_key_file(ledger_path), key)
    shutil.rmtree(ledger_path)  # the receiver has the file and the key, nothing else
    nowhere = tmp_path / "nowhere"
    result = invoke(nowhere, "verify", str(exported), "--key", str(key))
    assert result.exit_code == 0, result.stderr
    assert "signed by the trusted key" in result.stdout
    assert not nowhere.exists()
    untrusted = invoke(nowhere, "verify", str(exported))
    assert untrusted.exit_code == 0 and "not checked against a trusted key" in untrusted.stdout
    lines = exported.read_text().splitlines()
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("\n".join(lines[:-1]) + "\n")
    result = invoke(nowhere, "verify", str(truncated), "--key", str(key), "--json")
    assert result.exit_code == 1
    assert any("announces" in problem for problem in json.loads(result.stdout)["problems"])


def test_an_export_of_a_tampered_ledger_says_so_and_is_not_signed(
    ledger_path: Path, interleaved: list[str], tmp_path: Path
) -> None:
    flip_byte(ledger_path, b"hello [[echo]]")
    exported = tmp_path / "all.jsonl"
    result = invoke(ledger_path, "export", "-o", str(exported))
    assert result.exit_code == 6
    assert "not intact" in result.stderr
    header = lines_of(exported)[0]
    assert header["verification"]["ok"] is False and header["signed_head"] is None
    assert header["verification"]["first_bad_position"] is not None
    bad = header["verification"]["first_bad_position"]
    damaged = next(line["session_id"] for line in lines_of(exported)[1:]
                   if line["position"] == bad)
    for command in (["history", damaged], ["show", damaged]):
        shown = invoke(ledger_path, *command)
        assert shown.exit_code == 6 and "not intact" in shown.stderr, command
        assert shown.stdout  # the output is still written
    intact = next(session_id for session_id in interleaved if session_id != damaged)
    assert invoke(ledger_path, "show", intact).exit_code == 0


# -- small truths ---------------------------------------------------------------------------


def test_events_json_writes_every_field_defaults_included(ledger_path: Path) -> None:
    invoke(ledger_path, "new", "--id", "plain")
    first = json.loads(invoke(ledger_path, "events", "--json").stdout.splitlines()[0])
    assert first["event"] == {"type": "session_created", "mode": "user", "study_id": None,
                              "owner": None}


def test_replay_in_the_middle_of_a_turn_shows_its_events_and_canvas_changes(
    ledger_path: Path,
) -> None:
    session_id = invoke(ledger_path, "new").stdout.strip()
    invoke(ledger_path, "send", session_id, "change the canvas [[canvas]]")
    events = [json.loads(line) for line in
              invoke(ledger_path, "events", session_id, "--json").stdout.splitlines()]
    canvas = next(e for e in events if e["event"]["type"] == "canvas_modified")
    version = str(canvas["version"])
    replayed = json.loads(invoke(ledger_path, "replay", session_id, "--at", version,
                                 "--json").stdout)
    running = replayed["history"][-1]
    assert running["role"] == "running"
    assert running["canvas_modifications"] == [canvas["event"]["modification"]]
    text = invoke(ledger_path, "replay", session_id, "--at", version).stdout
    assert "running" in text and "canvas: " in text  # the open turn, its change so far
    assert "run_started" in text and "canvas_modified" in text  # the events timeline


def test_verify_prints_the_head_only_when_clean_and_says_whether_a_saved_head_matches(
    ledger_path: Path, interleaved: list[str]
) -> None:
    head = json.loads(invoke(ledger_path, "verify", "--json").stdout)["head"]
    matched = invoke(ledger_path, "verify", "--head", head)
    assert matched.exit_code == 0 and "head matches" in matched.stdout
    position, digest = head.split(":")
    wrong = f"{position}:{'0' * 64}"
    mismatched = invoke(ledger_path, "verify", "--head", wrong)
    assert mismatched.exit_code == 1 and "head does not match" in mismatched.stderr
    assert "head (keep it" not in mismatched.stdout
    flip_byte(ledger_path, b"hello [[echo]]")
    tampered = invoke(ledger_path, "verify")
    assert tampered.exit_code == 1 and "head (keep it" not in tampered.stdout


def test_the_new_command_settings_and_exit_code_are_documented() -> None:
    assert 6 in EXIT_CODES and "  6  " in (main.help or "")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "| `head [--checkpoint]` |" in readme and "`verify FILE.jsonl" in readme
    assert "| 6 | `export`, `history` or `show`" in readme
    for variable in ("CHATLEDGER_SIGNING_KEY", "CHATLEDGER_ANCHOR_FILE",
                     "CHATLEDGER_ANCHOR_INTERVAL"):
        assert f"`{variable}`" in readme


# -- helpers --------------------------------------------------------------------------------


def flip_byte(ledger: Path, needle: bytes) -> None:
    data = bytearray((ledger / "data.mdb").read_bytes())
    index = data.find(needle)
    assert index > 0
    data[index] ^= 0x01
    (ledger / "data.mdb").write_bytes(bytes(data))


def forge(source: Path, target: Path, new_text: str) -> None:
    """Edit the first answer of a whole-ledger export and recompute every hash and link after
    it, as a forger with the file (but not the key) would."""
    header, *records = lines_of(source)
    session_hash: dict[str, bytes] = {}
    log_hash = bytes(32)
    edited = False
    out = [header]
    for line in records:
        envelope = msgspec.msgpack.decode(base64.b64decode(line["record"]), type=StoredEnvelope)
        event = msgspec.msgpack.decode(bytes(envelope.event))
        if not edited and event.get("type") == "response_received":
            event["text"] = new_text
            line["event"]["text"] = new_text
            edited = True
        rebuilt = StoredEnvelope(
            position=envelope.position, session_id=envelope.session_id,
            version=envelope.version, recorded_at=envelope.recorded_at,
            schema_version=envelope.schema_version,
            prev_session_hash=session_hash.get(envelope.session_id, bytes(32)),
            prev_log_hash=log_hash, event=msgspec.Raw(msgspec.msgpack.encode(event)),
        )
        record = encode_record(rebuilt)
        digest = record_hash(record)
        line.update(record=base64.b64encode(record).decode(), hash=digest.hex(),
                    prev_session_hash=rebuilt.prev_session_hash.hex(),
                    prev_log_hash=log_hash.hex())
        session_hash[envelope.session_id] = digest
        log_hash = digest
        out.append(line)
    assert edited
    header["head"] = f"{records[-1]['position']}:{log_hash.hex()}"
    target.write_text("".join(json.dumps(line) + "\n" for line in out))


def resign(path: Path, key: Any) -> None:
    header, *records = lines_of(path)
    head = Head.parse(header["head"])
    header["signed_head"] = msgspec.to_builtins(sign_head(key, head))
    path.write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))


def test_an_export_written_before_headers_still_imports_verbatim(
    ledger_path: Path, interleaved: list[str], tmp_path: Path
) -> None:
    exported = tmp_path / "all.jsonl"
    invoke(ledger_path, "export", "-o", str(exported))
    legacy = tmp_path / "legacy.jsonl"
    records = lines_of(exported)[1:]
    left_out = 0
    for record in records:  # the older line shape: fields at their default left out
        for name in [name for name, value in record["event"].items() if value is None]:
            del record["event"][name]
            left_out += 1
    assert left_out
    legacy.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert invoke(tmp_path / "x", "verify", str(legacy)).exit_code == 0
    report = json.loads(invoke(tmp_path / "copy", "import", str(legacy), "--json").stdout)
    assert report["verbatim"] is True and report["signature"] == "missing"
    refused = invoke(tmp_path / "other", "import", str(legacy), "--key",
                     str(public_key_file(ledger_path)))
    assert refused.exit_code == 1 and "no signed head" in refused.stderr


def test_processes_racing_to_create_the_key_end_up_with_one_key(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from chatledger.audit.signing import ensure_signing_key, fingerprint

    path = tmp_path / "keys" / "ledger.signing-key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: ensure_signing_key(path), range(8)))
    assert len({fingerprint(key.public_key()) for key in keys}) == 1
    assert sorted(file.name for file in path.parent.iterdir()) == [
        "ledger.signing-key", "ledger.signing-key.pub"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_ledger_that_is_no_directory_keeps_its_key_out_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Ledger("memory:no-litter", agent_command=STANDIN) as ledger:
        ledger.create_session()
    assert list(tmp_path.iterdir()) == []
