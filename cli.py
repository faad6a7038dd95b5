"""The `chatledger` admin CLI: operate, audit and replay a ledger from the terminal.

Every reading command takes `--json` (one document, or one object per line for streams) and
works while a backend process has the same ledger open. Long work shows a progress bar on a
terminal and stays quiet when piped. User errors print one line on stderr and exit with a
documented code (see EXIT_CODES); tracebacks are for bugs only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import __version__
from .actors.expiry import expiry_due
from .actors.fork import fork_session
from .actors.updates import AnyTurnUpdate, TurnWaiting
from .audit.anchors import check_anchor
from .audit.attest import LedgerCheck, check_ledger, describe_check, open_signing_key
from .audit.export_check import check_export, describe_signature
from .audit.html import hashed_sessions, render_html
from .audit.jsonl import (
    ImportRejectedError,
    check_import,
    export_jsonl,
    import_checked,
    record_to_json,
)
from .audit.ledger_checkpoints import checkpoint_head
from .audit.locations import anchor_file_path, signing_key_path
from .audit.replay import replay_history
from .audit.signing import SigningKeyError, load_public_key, public_key_path, sign_head
from .audit.stats import ledger_stats
from .catalog import list_sessions
from .cli_labels import label_pairs as _label_pairs
from .config import Config, load_config
from .console import (
    TurnPrinter,
    describe_event,
    format_bytes,
    format_duration,
    format_time,
    key_values,
    parse_duration,
    parse_moment,
    progress,
    table,
    transcript,
)
from .errors import (
    ChatledgerError,
    ConcurrencyError,
    ConfigError,
    CorruptLedgerError,
    InvalidCommandError,
    InvalidSessionIdError,
    LedgerError,
    LedgerMissingError,
    UnknownSessionError,
)
from .events import MODES, STATUSES, SessionExpired, at_version, history, session_info
from .events.model import TAGS, ForkedFrom, Recorded, tag_of
from .events.projections import (
    STATUS_EXPIRED,
    STATUS_IDLE,
    STATUS_NEW,
    HistoryMessage,
    SessionInfo,
)
from .events.system import CHECKPOINT_STREAM, is_reserved
from .spend import spend_report
from .storage import AuditStore, Head, VerifyReport, open_store
from .transcript import with_transcripts

LARGEST_COUNT = 2**63 - 1
"""The largest position, version or count an option takes (LMDB keys are 64-bit)."""

EXIT_CODES = {
    0: "success (verify: the ledger is intact)",
    1: "verify found tampering, a turn failed, an import was rejected, a file could not be "
       "written, `interrupt` found no running turn (or it did not stop in time)",
    2: "usage error: a bad option, argument, mode, session id, duration or setting",
    3: "unknown session",
    4: "the ledger cannot be opened or written: missing, damaged, read-only, full",
    5: "the session changed under the command (another writer): run it again",
    6: "`export`, `history` or `show` wrote its output, but the ledger (or the session "
       "shown) failed verification: a warning on stderr says where, and an HTML export "
       "carries a TAMPERED banner",
    130: "interrupted (Ctrl-C); a running turn is cancelled and recorded",
}
TAMPERED_EXIT = 6

_to_builtins = msgspec.to_builtins


class CliError(click.ClickException):
    """A user-facing error with a documented exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        # click declares exit_code on the class; an instance value picks the documented code.
        setattr(self, "exit_code", exit_code)  # noqa: B010


def _fail(message: str, exit_code: int = 1) -> NoReturn:
    raise CliError(message, exit_code)


def _ledger_option_first(args: list[str]) -> list[str]:
    """`--ledger PATH` (or `--ledger=PATH`) moved before the command, wherever it was given."""
    moved: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest += args[index:]
            break
        if arg == "--ledger" and index + 1 < len(args):
            moved += args[index : index + 2]
            index += 2
            continue
        if arg.startswith("--ledger="):
            moved.append(arg)
        else:
            rest.append(arg)
        index += 1
    return moved + rest


def one_line(text: str) -> str:
    """`text` on one line: line breaks and other control characters written as escapes."""
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else repr(character)[1:-1]
                   for character in text)


class LedgerGroup(click.Group):
    """The command group: turns chatledger's errors into one line and an exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Accept `--ledger` after the command too; refuse NUL bytes (no path, id or message
        can hold one; only a caller in process, never a shell, can pass one)."""
        if any("\x00" in arg for arg in args):
            raise click.UsageError("an argument holds a NUL byte: remove it", ctx=ctx)
        return super().parse_args(ctx, _ledger_option_first(list(args)))

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI: usage errors in one line (exit 2), Ctrl-C exits 130."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx is not None else "chatledger"
            click.echo(f"Error: {one_line(error.format_message())} (see '{command} -h')",
                       err=True)
            sys.exit(2)
        except click.ClickException as error:
            click.echo(f"Error: {one_line(error.format_message())}", err=True)
            sys.exit(error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, mapping known errors to EXIT_CODES."""
        try:
            return super().invoke(ctx)
        except UnknownSessionError as error:
            _fail(str(error.args[0]) if error.args else "unknown session", 3)
        except (InvalidSessionIdError, InvalidCommandError, ConfigError) as error:
            _fail(str(error), 2)
        except ConcurrencyError as error:
            _fail(f"{error}; run the command again", 5)
        except ImportRejectedError as error:
            _fail(f"import rejected, nothing imported: {error}", 1)
        except LedgerError as error:
            _fail(str(error), 4)
        except ChatledgerError as error:
            _fail(str(error), 1)
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away (`| head`): not an error
            ctx.exit(0)


class State:
    """What the group's options decided: the ledger path; opens logs and ledgers lazily."""

    def __init__(self, ledger_path: str | None) -> None:
        self.ledger_path = ledger_path

    def config_path(self) -> str:
        """The ledger directory: --ledger, else CHATLEDGER_PATH / chatledger.toml, else default."""
        return load_config(path=self.ledger_path).path

    @contextmanager
    def log(self) -> Iterator[AuditStore]:
        """Open an existing ledger's log (read-only if the files cannot be written)."""
        path = self.config_path()
        try:
            log = open_store(path, create=False)
        except LedgerMissingError:
            _fail(f"there is no ledger at {path} (create one with `chatledger new`)", 4)
        except LedgerError as error:
            if "read-only" not in str(error) and "permission" not in str(error).lower():
                raise
            log = open_store(path, create=False, readonly=True)
        try:
            yield log
        finally:
            log.close()

    @contextmanager
    def ledger(self, **settings: Any) -> Iterator[Any]:
        """Open the ledger with its runtime (actors, agent runs), for commands that act;
        `settings` override the configured ones."""
        from .ledger import Ledger

        with Ledger(self.ledger_path, **settings) as ledger:
            yield ledger


pass_state = click.make_pass_decorator(State)

PREFIX_MATCHES_SHOWN = 5


def resolve_session_id(store: Any, given: str) -> str:
    """The session id `given` names: the id itself, else the one session whose id starts
    with it (a trailing `...` is ignored); unknown (exit 3) or ambiguous (exit 2) otherwise."""
    if store.info(given) is not None:
        return given
    prefix = given.rstrip(".…") or given
    matches = sorted(info.session_id for info in store.sessions()
                     if info.session_id.startswith(prefix))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UnknownSessionError(f"Session not found: {given}")
    shown = ", ".join(matches[:PREFIX_MATCHES_SHOWN])
    more = len(matches) - PREFIX_MATCHES_SHOWN
    raise click.UsageError(
        f"session id {given!r} matches {len(matches)} sessions: {shown}"
        f"{f' and {more} more' if more > 0 else ''}; give more of the id"
    )


def display_status(info: SessionInfo) -> str:
    """The status to show and filter on: `new` for a session that has had no message yet."""
    if info.status == STATUS_IDLE and info.message_count == 0:
        return STATUS_NEW
    return info.status


def as_shown(log: Any, info: SessionInfo) -> SessionInfo:
    """A session's info as the CLI shows it (tables and JSON alike): status `new` before
    the first message, and for an expired session its last use, not the expiry's time."""
    status = display_status(info)
    active = last_activity(log, info)
    if status == info.status and active == info.last_active:
        return info
    return msgspec.structs.replace(info, status=status, last_active=active)


def last_activity(log: Any, info: SessionInfo) -> datetime | None:
    """When the session was last used: for an expired one, before it expired (the index
    holds the expiry's time, which is not activity)."""
    if info.status != STATUS_EXPIRED or info.last_active is None:
        return info.last_active
    records = log.read_session(info.session_id, from_version=info.version)
    event = records[-1].event if records else None
    if isinstance(event, SessionExpired) and event.idle_seconds >= 0:
        with contextlib.suppress(OverflowError):
            return info.last_active - timedelta(seconds=event.idle_seconds)
    return info.last_active


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The shared `--json` flag."""
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(
        function
    )


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(_to_builtins(value), ensure_ascii=False, default=str))


def _history_json(message: HistoryMessage) -> dict[str, Any]:
    data: dict[str, Any] = _to_builtins(message)
    return data


def _info_pairs(info: SessionInfo) -> list[tuple[str, Any]]:
    return [
        ("session", info.session_id),
        ("mode", info.mode),
        ("study", info.study_id),
        ("status", info.status),
        ("created", format_time(info.created_at)),
        ("last active", format_time(info.last_active)),
        ("messages", info.message_count),
        ("turns", info.turn_count),
        ("failures", info.failure_count),
        ("last error", info.last_error),
        ("cost", f"${info.total_cost_usd:.4f}"),
        ("agent session", info.agent_session_id),
        ("open turn", info.open_turn),
        ("version", info.version),
        ("last position", info.last_position),
        *_label_pairs(info),
        *_lineage_pairs(info),
    ]


def _timeline(records: list[Recorded]) -> str:
    rows = [
        (recorded.position, recorded.version, format_time(recorded.recorded_at),
         describe_event(recorded.event))
        for recorded in records
    ]
    return table(("pos", "ver", "recorded (UTC)", "event"), rows)


def _print_verify(report: VerifyReport, as_json: bool) -> None:
    if as_json:
        data = _to_builtins(report)
        data["head"] = str(report.head)
        _emit_json(data)
        return
    if report.ok:
        click.secho(
            f"ok: {report.records_checked} records in {report.sessions_checked} "
            "session(s) verified",
            fg="green",
        )
    else:
        click.secho(
            f"TAMPERED or inconsistent: first bad position {report.first_bad_position}: "
            f"{report.reason}",
            fg="red",
            err=True,
        )
        for problem in report.problems[1:]:
            click.echo(f"  also: {problem}", err=True)
    if report.ok:
        click.echo(f"head (keep it to check later with --head): {report.head}")


def _print_check(check: LedgerCheck, as_json: bool) -> None:
    """A ledger's verdict: clean or where it fails, the anchor, the saved head; the head to
    keep only when clean."""
    if as_json:
        data = _to_builtins(check)
        data["head"] = str(check.head)
        _emit_json(data)
        return
    if check.ok:
        click.secho(f"ok: {check.records_checked} records in {check.sessions_checked} "
                    "session(s) verified", fg="green")
        if check.records_redacted:
            click.echo(f"redacted: {check.records_redacted} record(s), content removed, "
                       "commitments kept in the chains (not tampering)")
    else:
        click.secho(describe_check(check), fg="red", err=True)
        for problem in check.problems[1:]:
            click.echo(f"  also: {problem}", err=True)
    if check.anchor is not None and check.anchor.last is not None and check.anchor.ok:
        click.echo(f"anchor: {check.anchor.message}")
    for note in check.notes:
        click.echo(f"note: {note}", err=True)
    if check.checkpoints and check.ok:
        click.echo(f"checkpoints: {check.checkpoints} signed head(s) recorded in the ledger, "
                   "each signature valid and each head on the chain")
    for ignored in check.anchor.ignored if check.anchor is not None else ():
        click.echo(f"  anchor file: {ignored}", err=True)
    if check.head_check is not None:
        if check.head_check.matches:
            click.secho(check.head_check.message, fg="green")
        else:
            click.secho(f"head does not match: {check.head_check.message}", fg="red", err=True)
    if check.ok:
        click.echo(f"head (keep it to check later with --head): {check.head}")


def _warn_if_tampered(check: LedgerCheck) -> None:
    """After the output: a warning on stderr and exit TAMPERED_EXIT if the check failed."""
    if check.ok:
        return
    click.secho(f"WARNING: this ledger is not intact: {describe_check(check)}", fg="red",
                bold=True, err=True)
    raise click.exceptions.Exit(TAMPERED_EXIT)


def _config(state: State) -> Config:
    return load_config(path=state.ledger_path)


def _trusted_key(key_file: str | None) -> Ed25519PublicKey | None:
    if key_file is None:
        return None
    try:
        return load_public_key(key_file)
    except SigningKeyError as error:
        raise click.BadParameter(str(error), param_hint="--key") from None


# -- the group ----------------------------------------------------------------------------


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--ledger",
    "ledger_path",
    type=click.Path(file_okay=False),
    help="Ledger directory or postgresql:// URL (default: $CHATLEDGER_PATH, else the user "
         "data directory).",
)
@click.option(
    "--color",
    type=click.Choice(("auto", "always", "never")),
    default="auto",
    show_default=True,
    help="Colour the output: auto is on a terminal unless NO_COLOR is set.",
)
@click.version_option(__version__, prog_name="chatledger")
@click.pass_context
def main(ctx: click.Context, ledger_path: str | None, color: str) -> None:
    """chatledger: an event-sourced, verifiable ledger of conversations with an LLM agent CLI.

    \b
    Exit codes:
      0  success
      1  verify found tampering, a turn failed, an import was rejected, no turn
         to interrupt
      2  usage error (bad option, mode, session id, duration, setting)
      3  unknown session
      4  the ledger cannot be opened or written
      5  the session changed under the command (another writer): run it again
      6  export, history, show: done, but the ledger failed verification
    130  interrupted (Ctrl-C)

    Example: chatledger --ledger ./ledger sessions --status idle
    """
    if color == "always":
        ctx.color = True
    elif color == "never" or os.environ.get("NO_COLOR"):
        ctx.color = False
    ctx.obj = State(ledger_path)


# -- acting on sessions -------------------------------------------------------------------


@main.command()
@click.option("--mode", type=click.Choice(MODES), default="user", show_default=True,
              help="Permission mode of the agent.")
@click.option("--study", "study_id", help="Study the session works on.")
@click.option("--id", "session_id", help="Use this session id instead of a new uuid.")
@click.option("--owner", help="The user the session belongs to (an opaque id).")
@click.option("--title", help="The session's title.")
@json_option
@pass_state
def new(state: State, mode: str, study_id: str | None, session_id: str | None,
        owner: str | None, title: str | None, as_json: bool) -> None:
    """Create a session and print its id.

    Example: chatledger new --mode user --study beam-1 --owner alice
    """
    with state.ledger() as ledger:
        if session_id is not None and ledger.info(session_id) is not None:
            _fail(f"session {session_id} already exists: send to it with `chatledger send "
                  f"{session_id} MESSAGE`, or reopen it after expiry with `chatledger resume "
                  f"{session_id}`", 2)
        info = ledger.create_session(session_id, mode=mode, study_id=study_id, owner=owner,
                                     title=title)
    if as_json:
        _emit_json({"session_id": info.session_id, "mode": info.mode, "study_id": info.study_id})
    else:
        click.echo(info.session_id)


@main.command()
@click.argument("session_id")
@click.option("--mode", type=click.Choice(MODES), help="Switch to this mode as well.")
@click.option("--study", "study_id", help="Set this study as well.")
@json_option
@pass_state
def resume(state: State, session_id: str, mode: str | None, study_id: str | None,
           as_json: bool) -> None:
    """Reopen a session (an expired one too) to go on with it.

    Example: chatledger resume 3f2a... --mode user
    """
    with state.ledger() as ledger:
        session_id = resolve_session_id(ledger.log, session_id)
        info = ledger.resume_session(session_id, mode=mode, study_id=study_id)
    if as_json:
        _emit_json(info)
    else:
        click.echo(f"{info.session_id}: resumed ({info.mode} mode, study "
                   f"{info.study_id or '(none)'})")


@main.command()
@click.argument("session_id")
@click.argument("message")
@click.option("--canvas", "canvas_file", type=click.File("rb"),
              help="A JSON file with the canvas state to send along.")
@click.option("--approve", is_flag=True,
              help="Allow every tool request the agent puts to the caller (turns approvals on).")
@click.option("--deny", is_flag=True,
              help="Deny every tool request the agent puts to the caller (turns approvals on).")
@json_option
@pass_state
def send(state: State, session_id: str, message: str, canvas_file: IO[bytes] | None,
         approve: bool, deny: bool, as_json: bool) -> None:
    """Run one turn with the configured agent, streaming the answer as it arrives.

    MESSAGE `-` reads the message from standard input. Exits 1 if the turn failed (the
    failure is recorded in the ledger), 130 on Ctrl-C (the turn is cancelled and recorded).
    With tool approvals (`tool_approvals`, or --approve / --deny) a user-mode tool call
    outside the allow-list is put to you: "Allow TOOL with INPUT? [y/N]" on a terminal;
    without one it is denied unless --approve is given. Each decision is recorded with
    who made it (cli:<user>).

    Example: chatledger send 3f2a... "Add a thickness variable" --canvas canvas.json
    """
    if approve and deny:
        raise click.UsageError("give --approve or --deny, not both")
    if message == "-":
        message = sys.stdin.read()
    canvas_state = None
    if canvas_file is not None:
        try:
            canvas_state = json.loads(canvas_file.read())
        except (ValueError, UnicodeDecodeError) as error:
            raise click.BadParameter(f"not JSON: {error}", param_hint="--canvas") from None
        except RecursionError:
            raise click.BadParameter("the JSON is nested too deeply to store",
                                     param_hint="--canvas") from None
    printer = TurnPrinter(color=click.get_current_context().color)

    def show(update: AnyTurnUpdate) -> None:
        if isinstance(update, TurnWaiting):
            printer.annotate(f"[waiting] {update.owner} is running a turn of this session; "
                             "this one starts after it", dim=True)
            return
        if as_json:
            _emit_json(update)
        else:
            printer.update(msgspec.to_builtins(update))

    settings = {"tool_approvals": True} if approve or deny else {}
    with state.ledger(**settings) as ledger:
        session_id = resolve_session_id(ledger.log, session_id)
        decided_by = cli_live.cli_user()
        prompter = cli_live.ApprovalPrompter(
            cli_live.ApprovalPrompter.policy_for(approve, deny, cli_live.stdin_is_terminal()),
            lambda request_id, allow, why: ledger.decide_permission(
                session_id, request_id, allow, message=why, decided_by=decided_by))
        outcome = cli_live.run_send_with_approvals(
            lambda on_update: ledger.send(session_id, message, canvas_state=canvas_state,
                                          on_update=on_update, stream_deltas=not as_json),
            prompter, show)
    if not outcome.ok:
        _fail(f"the turn failed ({outcome.reason}): {outcome.error}", 1)


@main.command()
@click.argument("session_id")
@click.argument("mode", type=click.Choice(MODES))
@json_option
@pass_state
def mode(state: State, session_id: str, mode: str, as_json: bool) -> None:
    """Switch a session's permission mode.

    Example: chatledger mode 3f2a... power
    """
    with state.ledger() as ledger:
        info = ledger.switch_mode(resolve_session_id(ledger.log, session_id), mode)
    _emit_json(info) if as_json else click.echo(f"{info.session_id}: mode {info.mode}")


@main.command()
@click.argument("session_id")
@click.argument("study_id")
@json_option
@pass_state
def study(state: State, session_id: str, study_id: str, as_json: bool) -> None:
    """Set the study a session works on (an empty string clears it).

    Example: chatledger study 3f2a... beam-2
    """
    with state.ledger() as ledger:
        info = ledger.set_study(resolve_session_id(ledger.log, session_id), study_id or None)
    _emit_json(info) if as_json else click.echo(
        f"{info.session_id}: study {info.study_id or '(none)'}"
    )


# -- reading ------------------------------------------------------------------------------


@main.command()
@click.option("--mode", type=click.Choice(MODES), help="Only sessions in this mode.")
@click.option("--study", "study_id", help="Only sessions of this study.")
@click.option("--status", type=click.Choice(STATUSES), help="Only sessions with this status.")
@click.option("--since", help="Only sessions active since a time (ISO) or for a duration (2h).")
@click.option("--owner", help="Only sessions of this owner.")
@click.option("--tag", "tags", multiple=True, help="Only sessions with this tag (repeatable).")
@click.option("--archived", is_flag=True, help="Only archived sessions (they are left out otherwise).")
@click.option("--limit", type=click.IntRange(1, LARGEST_COUNT),
              help="At most this many sessions (a page).")
@click.option("--cursor", help="Continue after the page that printed this cursor.")
@json_option
@pass_state
def sessions(state: State, mode: str | None, study_id: str | None, status: str | None,
             since: str | None, owner: str | None, tags: tuple[str, ...], archived: bool,
             limit: int | None, cursor: str | None, as_json: bool) -> None:
    """List sessions, newest activity first (from the index: no replay), a page at a time.

    With --limit, a page that has more after it ends with the cursor of the next page
    (on stderr with --json). Example: chatledger sessions --owner alice --tag bug --limit 20
    """
    try:
        since_moment = parse_moment(since) if since else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    with state.log() as log:
        infos = [
            as_shown(log, info) for info in log.sessions()
            if (mode is None or info.mode == mode)
            and (study_id is None or info.study_id == study_id)
        ]
    candidates = [
        info for info in infos
        if (status is None or info.status == status)
        and (since_moment is None or (info.last_active or epoch) >= since_moment)
    ]
    try:
        page = list_sessions(candidates, owner=owner, tags=tags, archived=archived,
                             limit=limit or max(len(candidates), 1), cursor=cursor)
    except InvalidCommandError as error:
        raise click.BadParameter(str(error), param_hint="--cursor") from None
    selected = page.sessions
    if as_json:
        _emit_json(selected)
        if page.next_cursor:
            click.echo(f"next cursor: {page.next_cursor}", err=True)
        return
    rows = [
        (info.session_id, info.mode, info.study_id, info.status, info.message_count,
         info.turn_count, f"{info.total_cost_usd:.4f}", format_time(info.last_active))
        for info in selected
    ]
    click.echo(table(("session", "mode", "study", "status", "messages", "turns", "cost $",
                      "last active (UTC)"), rows))
    if page.next_cursor:
        click.echo(f"next cursor: {page.next_cursor}")


@main.command()
@click.argument("session_id")
@json_option
@pass_state
def show(state: State, session_id: str, as_json: bool) -> None:
    """Show a session's info (exit 6, with a warning, if its records fail verification).

    Example: chatledger show 3f2a...
    """
    with state.log() as log:
        info = as_shown(log, log.require_info(resolve_session_id(log, session_id)))
        check = check_ledger(log, _config(state), session_ids=[info.session_id])
    _emit_json(info) if as_json else click.echo(key_values(_info_pairs(info)))
    _warn_if_tampered(check)


@main.command(name="history")
@click.argument("session_id")
@json_option
@pass_state
def history_command(state: State, session_id: str, as_json: bool) -> None:
    """Print a session's conversation: messages, tool calls, canvas changes, failures
    (exit 6, with a warning, if its records fail verification).

    Example: chatledger history 3f2a...
    """
    with state.log() as log:
        session_id = resolve_session_id(log, session_id)
        check = check_ledger(log, _config(state), session_ids=[session_id])
        messages = history(log.read_session(session_id))
    if as_json:
        _emit_json([_history_json(message) for message in messages])
    else:
        click.echo(transcript(messages) or "(no messages yet)")
    _warn_if_tampered(check)


EVENT_TYPES = tuple(sorted(TAGS))


@main.command()
@click.argument("session_id", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they are appended.")
@click.option("--from", "from_position", type=click.IntRange(1, LARGEST_COUNT), default=1,
              help="Start at this log position.")
@click.option("--type", "event_types", multiple=True, type=click.Choice(EVENT_TYPES),
              help="Only events of this type (repeat for several).")
@click.option("--since", help="Only events recorded since a time (ISO) or for a duration (2h).")
@click.option("--limit", type=click.IntRange(1, LARGEST_COUNT), help="Stop after this many events.")
@json_option
@pass_state
def events(state: State, session_id: str | None, follow: bool, from_position: int,
           event_types: tuple[str, ...], since: str | None, limit: int | None,
           as_json: bool) -> None:
    """Print the event log (all sessions, or one), like `tail -f` with --follow.

    With --json, one object per line (and no header).

    Example: chatledger events --type run_failed --since 24h
    """
    try:
        since_moment = parse_moment(since) if since else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None
    printed = 0
    wanted = set(event_types)

    def emit(recorded: Recorded) -> bool:
        nonlocal printed
        if session_id is not None and recorded.session_id != session_id:
            return True
        if wanted and tag_of(recorded.event) not in wanted:
            return True
        if since_moment is not None and recorded.recorded_at < since_moment:
            return True
        if as_json:
            _emit_json(record_to_json(recorded))
        else:
            if printed == 0:
                click.echo(_EVENT_ROW.format("pos", "recorded (UTC)", "session", "ver", "event"))
            click.echo(_EVENT_ROW.format(
                recorded.position, format_time(recorded.recorded_at),
                recorded.session_id[:36], f"v{recorded.version}",
                describe_event(recorded.event)).rstrip())
        sys.stdout.flush()
        printed += 1
        return limit is None or printed < limit

    with state.log() as log:
        if session_id is not None:
            session_id = resolve_session_id(log, session_id)
        if not follow:
            for recorded in log.read_all(from_position):
                if not emit(recorded):
                    return
            return
        with log.subscribe(from_position) as subscription:
            try:
                for recorded in subscription:
                    if not emit(recorded):
                        return
            except KeyboardInterrupt:
                return


_EVENT_ROW = "{:>7}  {:<19}  {:<36}  {:<5} {}"


@main.command()
@click.argument("session_id")
@click.option("--at", "version", type=click.IntRange(0, LARGEST_COUNT), required=True,
              help="The session version to travel to.")
@json_option
@pass_state
def replay(state: State, session_id: str, version: int, as_json: bool) -> None:
    """Show a session as it was at a version: its info, history and events then.

    Example: chatledger replay 3f2a... --at 4
    """
    with state.log() as log:
        session_id = resolve_session_id(log, session_id)
        current = log.require_info(session_id)
        records = at_version(log.read_session(session_id), version)
    if version > current.version:
        _fail(f"session {session_id} has {current.version} versions, not {version}", 2)
    info = session_info(session_id, records)
    messages = replay_history(records)
    if as_json:
        _emit_json({
            "version": version,
            "info": _to_builtins(info),
            "history": [_history_json(message) for message in messages],
            "events": [record_to_json(recorded) for recorded in records],
        })
        return
    click.secho(f"session {session_id} at version {version} of {current.version}", bold=True)
    click.echo(key_values(_info_pairs(info)))
    click.echo()
    click.echo(transcript(messages) or "(no messages yet)")
    click.echo()
    click.echo(_timeline(records) if records else "(no events yet)")


# -- integrity and maintenance ------------------------------------------------------------


@main.command()
@click.argument("target", required=False, metavar="[ID | FILE.jsonl]")
@click.option("--head", "saved_head", help="A head printed earlier (POS:HASH): catches truncation.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False),
              help="A trusted public key (PEM) to check a signed export or the anchors with.")
@json_option
@click.pass_context
def verify(ctx: click.Context, target: str | None, saved_head: str | None,
           key_file: str | None, as_json: bool) -> None:
    """Recompute the hash chains and indexes; exit 0 when intact, 1 when not.

    Also compares the ledger with its last anchored head (a rollback fails), and with
    --head says whether that head still matches. Prints the head to keep only when clean.
    Given FILE.jsonl (an export), checks it with no ledger: every line, the chains, the
    head and its signature (against --key).

    Example: chatledger verify --head 1042:9f3c...; chatledger verify export.jsonl --key ledger.pub
    """
    state: State = ctx.obj
    try:
        head = Head.parse(saved_head) if saved_head else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--head") from None
    trusted = _trusted_key(key_file)
    if target is not None and target.lower().endswith(".jsonl"):
        if head is not None:
            raise click.UsageError("--head checks a ledger, not an export file")
        ctx.exit(_verify_export_file(target, trusted, as_json))
    config = _config(state)
    try:
        with state.log() as log:
            if target is not None:
                target = resolve_session_id(log, target)
            total = log.require_info(target).version if target else log.head().position
            if trusted is None and target is None:
                own = open_signing_key(config, create=False)
                trusted = own.public_key() if own is not None else None
            with progress("verifying", total) as advance:
                check = check_ledger(log, config, session_ids=[target] if target else None,
                                     trusted=trusted, saved_head=head, progress=advance)
    except CorruptLedgerError as error:  # the verdict when the files cannot even be read
        _fail(f"the ledger is damaged, verify cannot read it: {error}", 4)
    _print_check(check, as_json)
    ctx.exit(0 if check.ok else 1)


def _verify_export_file(path: str, trusted: Ed25519PublicKey | None, as_json: bool) -> int:
    """Check an export file with no ledger; print the verdict; the exit code."""
    try:
        with open(path, "rb") as file:
            report, _, _ = check_export(file, trusted)
    except OSError as error:
        _fail(f"cannot read {path}: {error}", 1)
    if as_json:
        _emit_json(report)
        return 0 if report.ok else 1
    what = "the whole ledger" if report.scope == "ledger" else "some sessions"
    if report.ok:
        click.secho(f"ok: export of {what}, {report.records} records in {report.sessions} "
                    "session(s): every hash and chain intact", fg="green")
        click.echo(f"head {report.head} ({describe_signature(report, trusted)})")
    else:
        click.secho(f"NOT GENUINE or damaged: {report.problems[0]}", fg="red", err=True)
        for problem in report.problems[1:]:
            click.echo(f"  also: {problem}", err=True)
    source = report.source_verification
    if source is not None and not source.ok:
        click.secho(f"the source ledger failed verification when exported: {source.reason}",
                    fg="red", err=True)
    return 0 if report.ok else 1


@main.command(name="head")
@click.option("--checkpoint", is_flag=True,
              help="Also append the signed head to the anchor file (outside the ledger) and "
                   "record it in the ledger (~checkpoints).")
@json_option
@pass_state
def head_command(state: State, checkpoint: bool, as_json: bool) -> None:
    """Print the ledger's current head signed with its key (created 0600 if it has none).

    Refuses if the ledger does not continue its last anchored head (rolled back).
    With --checkpoint the signed head is also anchored, for `verify` to check later, and
    recorded in the ledger as HeadCheckpointed on the reserved stream ~checkpoints.

    Example: chatledger head --checkpoint
    """
    config = _config(state)
    anchors = anchor_file_path(config)
    with state.log() as log:
        key = open_signing_key(config)
        if key is None:
            _fail(f"no signing key at {signing_key_path(config)} (see the warning above)", 4)
        recorded_at: int | None = None
        if checkpoint:
            done = checkpoint_head(log, key, anchors)
            signed = done.signed
            recorded_at = done.recorded.position if done.recorded is not None else None
            if done.recorded is None and done.problem.startswith("anchored"):
                click.echo(f"warning: {done.problem}", err=True)
        else:
            anchor = check_anchor(log, anchors, key.public_key())
            if not anchor.ok:
                _fail(f"not signed: the ledger was {anchor.message}", 1)
            signed = sign_head(key, log.head())
    public_file = str(public_key_path(signing_key_path(config)))
    if as_json:
        _emit_json({**_to_builtins(signed), "public_key_file": public_file,
                    "anchor_file": str(anchors) if checkpoint else None,
                    **({"recorded_at_position": recorded_at} if checkpoint else {})})
        return
    click.echo(key_values([
        ("head", f"{signed.position}:{signed.hash}"),
        ("signed at", signed.signed_at),
        ("key", signed.key),
        ("public key", public_file),
        ("signature", signed.signature),
        *([("anchored in", str(anchors))] if checkpoint else []),
        *([("recorded in ledger", f"{CHECKPOINT_STREAM} at position {recorded_at}"
            if recorded_at is not None else "no (nothing new since the last checkpoint)")]
          if checkpoint else []),
    ]))


@main.command()
@json_option
@pass_state
def rebuild(state: State, as_json: bool) -> None:
    """Recompute the session index from the log (after a verify that blames the index).

    Example: chatledger rebuild
    """
    with state.log() as log:
        count = log.rebuild_index()
    _emit_json({"sessions": count}) if as_json else click.echo(
        f"session index rebuilt: {count} sessions"
    )


@main.command()
@click.option("-o", "--output", "destination", type=click.Path(file_okay=False), required=True,
              help="An empty or new directory for the compacted copy.")
@json_option
@pass_state
def compact(state: State, destination: str, as_json: bool) -> None:
    """Write a compacted copy of the ledger (LMDB files never shrink on their own).

    Stop writers, then swap the copy in for the original.

    Example: chatledger compact -o ./ledger-compact
    """
    with state.log() as log:
        before = log.disk_size()
        try:
            after = log.copy_to(destination)
        except OSError as error:
            _fail(f"cannot write the compacted copy to {destination}: "
                  f"{error.strerror or error}", 1)
    if as_json:
        _emit_json({"destination": destination, "bytes_before": before, "bytes_after": after})
    else:
        click.echo(f"compacted copy in {destination}: {format_bytes(before)} -> "
                   f"{format_bytes(after)}")


@main.command(name="export")
@click.argument("session_ids", nargs=-1)
@click.option("--format", "export_format", type=click.Choice(("jsonl", "html")),
              default="jsonl", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write here instead of standard output.")
@pass_state
def export_command(state: State, session_ids: tuple[str, ...], export_format: str,
                   output: str | None) -> None:
    """Export sessions (default: all) as JSONL that `import` takes back, or an HTML transcript.

    The ledger (or the sessions exported) is verified first; the JSONL header and the top of
    the HTML page say the result, and carry the head signed with the ledger's key when it is
    intact. A tampered ledger is still exported, unsigned, with a warning and exit 6.

    Example: chatledger export 3f2a... --format html -o transcript.html
    """
    config = _config(state)
    with state.log() as log:
        session_ids = tuple(resolve_session_id(log, session_id) for session_id in session_ids)
        key = open_signing_key(config)
        wanted = with_transcripts(log, session_ids) or None  # with claude's own transcripts
        total = log.head().position
        with progress("verifying", total) as advance:
            check = check_ledger(log, config, session_ids=wanted, key=key, progress=advance)
        if export_format == "html":
            page = render_html(
                hashed_sessions(log, wanted or [info.session_id for info in log.sessions()
                                               if not is_reserved(info.session_id)]),
                title="chatledger transcript", head=str(log.head()), check=check,
            )
            _write_output(output, page.encode())
            count = None
        else:
            with _output_stream(output) as out, progress("exporting", total) as advance:
                count = export_jsonl(log, out, wanted, advance, key=key,
                                     verification=check.verification())
    if output and count is not None:
        click.echo(f"exported {count} records to {output}", err=True)
    _warn_if_tampered(check)


def _write_output(output: str | None, data: bytes) -> None:
    with _output_stream(output) as out:
        out.write(data)


@contextmanager
def _output_stream(output: str | None) -> Iterator[IO[bytes]]:
    if output is None:
        stdout = sys.stdout
        stdout.flush()
        stream = stdout.buffer
        yield stream
        stream.flush()
        return
    target = Path(output)
    try:
        # A new file of our own (O_CREAT|O_EXCL, so never a planted link), renamed over the
        # output at the end: a reader never sees half an export.
        descriptor, name = tempfile.mkstemp(dir=target.parent or ".",
                                            prefix=f".{target.name}.", suffix=".partial")
    except OSError as error:
        _fail(f"cannot write {output}: {error.strerror or error} (in its directory)", 1)
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            os.fchmod(file.fileno(), 0o666 & ~_current_umask())
        temporary.replace(target)
    except OSError as error:
        _fail(f"cannot write {output}: {error.strerror or error}", 1)
    finally:
        temporary.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@main.command(name="import")
@click.argument("source", type=click.File("rb"))
@click.option("--dry-run", is_flag=True, help="Check the file and report, import nothing.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False),
              help="The source ledger's public key (PEM): refuse an export it did not sign.")
@json_option
@pass_state
def import_command(state: State, source: IO[bytes], dry_run: bool, key_file: str | None,
                   as_json: bool) -> None:
    """Import a JSONL export: checks every hash chain, is atomic, skips events already present.

    A whole-ledger export going into an empty ledger (or a copy it continues) keeps its
    positions, hashes and head; with --key its signed head must verify under that key.

    Example: chatledger --ledger ./copy import export.jsonl --key ledger.signing-key.pub
    """
    trusted = _trusted_key(key_file)
    path = state.config_path()
    try:
        total = os.fstat(source.fileno()).st_size
    except (OSError, ValueError, io.UnsupportedOperation):
        total = 0  # a pipe: no size to show progress against
    with progress("checking", total) as advance:

        def lines() -> Iterator[bytes]:
            for line in source:
                advance(len(line))
                yield line

        checked = check_import(lines(), trusted)  # a refused file never opens the ledger
    try:
        target: AuditStore | None = open_store(path, create=False, readonly=dry_run)
    except LedgerMissingError:
        target = None if dry_run else open_store(path)
    if target is None:
        report = import_checked(None, checked, dry_run=True)
    else:
        with target as log:
            report = import_checked(log, checked, dry_run=dry_run)
    if as_json:
        _emit_json({**_to_builtins(report), "dry_run": dry_run})
        return
    verb = "would import" if dry_run else "imported"
    kept = ("positions and hashes kept" if report.verbatim
            else "merged: new positions and hashes")
    click.echo(f"{verb} {report.events_imported} events into {report.sessions_imported} "
               f"session(s); {report.events_already_present} already present ({kept}; "
               f"signature {report.signature})")


@main.command()
@click.option("--idle", help="Expire sessions idle at least this long (default: the expiry age).")
@click.option("--dry-run", is_flag=True, help="List what would expire, change nothing.")
@json_option
@pass_state
def expire(state: State, idle: str | None, dry_run: bool, as_json: bool) -> None:
    """Expire idle sessions (records SessionExpired; resuming reopens them).

    Example: chatledger expire --idle 7d --dry-run
    """
    try:
        idle_seconds = parse_duration(idle) if idle else load_config(path=state.ledger_path).expiry_age
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--idle") from None
    now = time.time()
    expired: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with state.log() as log:
        for info in log.sessions():
            idle_for = expiry_due(info, now=now, expiry_age=idle_seconds)
            if idle_for is None:
                continue
            item: dict[str, Any] = {"session_id": info.session_id, "idle_seconds": round(idle_for, 1)}
            if not dry_run:
                try:
                    log.append(info.session_id,
                               [SessionExpired(reason="idle", idle_seconds=idle_for)],
                               info.version)
                except ConcurrencyError:
                    skipped.append(item)  # it was used meanwhile: not idle after all
                    continue
            expired.append(item)
    if as_json:
        _emit_json({"dry_run": dry_run, "expired": expired, "skipped_active": skipped})
        return
    verb = "would expire" if dry_run else "expired"
    click.echo(f"{verb} {len(expired)} session(s) idle for {format_duration(idle_seconds)} or more")
    for item in expired:
        click.echo(f"  {item['session_id']}  idle {format_duration(item['idle_seconds'])}")
    if skipped:
        click.echo(f"{len(skipped)} became active meanwhile and were left alone")


@main.command()
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True),
              help="Also write charts of turns, failures, run time, time to first token and "
              "spend per model per day here.")
@json_option
@pass_state
def stats(state: State, html_file: str | None, as_json: bool) -> None:
    """Sessions by status, events, turns, failures by reason, cost, size, activity, and
    spend (answers, USD, tokens, refused turns) per owner and per day, and per model.

    Example: chatledger stats --json, or chatledger stats --html stats.html
    """
    with state.log() as log, progress("counting", log.head().position) as advance:
        figures = ledger_stats(log, advance)
        spend = spend_report(log.read_all())
        if html_file is not None:
            cli_manage.write_stats_html(log, html_file)
    if as_json:
        _emit_json({**msgspec.to_builtins(figures), "spend": msgspec.to_builtins(spend)})
        return
    by_status = ", ".join(f"{name} {count}" for name, count in sorted(figures.sessions_by_status.items()))
    failures = ", ".join(f"{name} {count}" for name, count in figures.failures_by_reason.items())
    click.echo(key_values([
        ("ledger", figures.path),
        ("sessions", f"{figures.sessions} ({by_status or 'none'})"),
        ("events", figures.events),
        ("turns", figures.turns),
        ("messages", figures.messages),
        ("failures", f"{figures.failures} ({failures or 'none'})"),
        ("cost", f"${figures.total_cost_usd:.4f}"),
        ("size on disk", format_bytes(figures.size_on_disk_bytes)),
        ("oldest activity", format_time(figures.oldest_activity)),
        ("newest activity", format_time(figures.newest_activity)),
        ("head", figures.head),
    ]))
    click.echo(cli_manage.spend_lines(spend))


# -- forks ----------------------------------------------------------------------------------


def _lineage_pairs(info: SessionInfo) -> list[tuple[str, Any]]:
    """The `show` line of a fork: its parent and the version it was forked at."""
    if info.forked_from is None:
        return []
    return [("forked from", f"{info.forked_from} at version {info.forked_at_version}")]


@main.command()
@click.argument("session_id")
@click.option("--at", "at_version", required=True, type=click.IntRange(1, LARGEST_COUNT),
              help="The parent's version to fork at (its history up to it is copied).")
@click.option("--as", "new_session_id", help="The fork's id (default: a new uuid4).")
@json_option
@pass_state
def fork(state: State, session_id: str, at_version: int, new_session_id: str | None,
         as_json: bool) -> None:
    """Fork a session at a version: a new session that starts from its history.

    The fork starts with ForkedFrom (the parent, the version, that record's hash), then the
    parent's events up to that version, written at once; `show` names the parent and
    `verify` checks the fork against it. A version inside a turn is refused (the error names
    the versions before and after it). Prints the fork's id. With the resume strategy the
    fork's first turn forks the agent's own session too (`--fork-session`).

    Example: chatledger fork 3f2a --at 12 --as what-if
    """
    with state.log() as log:
        parent = resolve_session_id(log, session_id)
        info = fork_session(log, parent, at_version, new_session_id)
        first = log.read_session(info.session_id, from_version=1)[:1]
    note = first[0].event.agent_note if first and isinstance(first[0].event, ForkedFrom) else ""
    if as_json:
        _emit_json({**_to_builtins(info), "agent_note": note})
        return
    click.echo(info.session_id)
    click.echo(f"forked from {parent} at version {at_version}: {note}", err=True)


# -- the demo -----------------------------------------------------------------------------


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temporary ledger and print where it is.")
@json_option
@pass_state
def demo(state: State, keep: bool, as_json: bool) -> None:
    """Run a short scripted conversation with the stand-in agent and show what was recorded.

    Works offline: a temporary ledger unless --ledger is given; a plain answer, a tool call,
    canvas changes and a mode switch; then the transcript, the event timeline and verify.

    Example: chatledger demo
    """
    from .demo import run_demo

    temporary = None if state.ledger_path else tempfile.mkdtemp(prefix="chatledger-demo-")
    path = state.ledger_path or str(Path(temporary or ".") / "ledger")

    def narrate(kind: str, value: Any) -> None:
        if as_json:
            return
        if kind == "created":
            click.secho(f"session {value.session_id} ({value.mode} mode, study {value.study_id})",
                        bold=True)
        elif kind == "message":
            click.secho(f"> {value}", fg="blue")
        elif kind == "mode":
            click.secho(f"~ mode switched to {value}", fg="magenta")
        elif kind == "outcome":
            status = click.style("ok" if value.ok else f"failed: {value.error}",
                                 fg="green" if value.ok else "red")
            click.echo(f"  [{status}, {len(value.tool_calls)} tool call(s), "
                       f"{len(value.canvas_modifications)} canvas change(s)]")

    try:
        session_id, _ = run_demo(path, narrate)
        with open_store(path) as log:
            records = log.read_session(session_id)
            report = log.verify()
        if as_json:
            _emit_json({
                "ledger": path,
                "session_id": session_id,
                "history": [_history_json(message) for message in history(records)],
                "events": [record_to_json(recorded) for recorded in records],
                "verify": {**_to_builtins(report), "head": str(report.head)},
            })
        else:
            click.echo()
            click.secho("== transcript ==", bold=True)
            click.echo(transcript(history(records)))
            click.echo()
            click.secho("== event timeline ==", bold=True)
            click.echo(_timeline(records))
            click.echo()
            click.secho("== verify ==", bold=True)
            _print_verify(report, False)
        if not report.ok:
            _fail("the demo ledger did not verify", 1)
    finally:
        if temporary and not keep:
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary and not as_json:
            click.echo(f"ledger kept at {path}")


# The command list shows each command's whole first line, never a sentence cut short.
from . import (  # noqa: E402  (registering commands on `main`)
    cli_live,  # `interrupt`; the tool approvals of `send`
    cli_manage,  # noqa: F401  (the commands that manage sessions)
    cli_redact,  # noqa: F401  `redact`
)

for _command in main.commands.values():
    _command.short_help = (_command.help or "").strip().splitlines()[0]
