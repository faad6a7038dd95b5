"""What a live agent process that resumes the agent's session checks first, and how a turn
lost from the agent's transcript is given back to it (issue 16's re-seed), as pure values.

The session actor knows the recorded turns (its conversation tail and last `RunStarted`);
`reseed_for` turns them into a `Reseed` carried by the turn's `WarmTurn`. The warm pool,
about to give a turn to a process started with `--resume`, asks
`transcript.missing_turns` how many of them the agent's transcript lacks and, if any,
sends `Reseed.prompt_with(missing)` instead of the planned prompt (the same template with
the missing turns as "Conversation so far") and records `TranscriptReseeded`. Nothing here
does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..agent import Prompt, build_prompt
from ..events import HistoryMessage, RunStarted
from ..transcript.reseed import TurnMark


@dataclass(frozen=True)
class RecordedTurn:
    """One answered turn as the ledger has it: its number, how to find it in the agent's
    transcript, and its messages (the user's, then the answer)."""

    turn: int
    mark: TurnMark
    messages: tuple[HistoryMessage, ...]


@dataclass(frozen=True)
class Reseed:
    """The recorded turns (oldest first) a resumed agent's transcript must hold, and what
    rebuilds the turn's prompt with some of them put back."""

    turns: tuple[RecordedTurn, ...]
    mode: str
    study_id: str | None
    canvas_state: Any
    message: str

    @property
    def marks(self) -> list[TurnMark]:
        """The turns' marks, oldest first (what `missing_turns` takes)."""
        return [recorded.mark for recorded in self.turns]

    def prompt_with(self, missing: Sequence[RecordedTurn]) -> Prompt:
        """The turn's prompt with `missing` as the conversation so far."""
        history = [message for recorded in missing for message in recorded.messages]
        return build_prompt(mode=self.mode, study_id=self.study_id, history=history,
                            canvas_state=self.canvas_state, message=self.message,
                            window=len(history))


def reseed_for(*, session_id: str, recent: Sequence[HistoryMessage],
               last_started: RunStarted | None, mode: str, study_id: str | None,
               canvas_state: Any, message: str,
               turn_id_of: Callable[[str, int, int], str]) -> Reseed | None:
    """The re-seed check of a turn that resumes the agent's session: the answered turns of
    the conversation tail `recent`, the last one marked by the id its user line carried
    when it ran live (`turn_id_of(session_id, turn, attempt)`); None without any."""
    by_turn: dict[int, list[HistoryMessage]] = {}
    for item in recent:
        if item.role in ("user", "assistant"):
            by_turn.setdefault(item.turn, []).append(item)
    turns: list[RecordedTurn] = []
    for number, messages in sorted(by_turn.items()):
        answers = [item for item in messages if item.role == "assistant"]
        if not answers:
            continue
        turn_id = None
        if last_started is not None and last_started.turn == number \
                and last_started.history_strategy == "live":
            turn_id = turn_id_of(session_id, number, last_started.attempt)
        turns.append(RecordedTurn(number, TurnMark(turn_id, answers[-1].content),
                                  tuple(messages)))
    if not turns:
        return None
    return Reseed(turns=tuple(turns), mode=mode,
                  study_id=study_id, canvas_state=canvas_state, message=message)
