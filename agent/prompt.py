"""The prompt for one turn: mode, study, recent history, canvas state, and the message last.

The template is versioned (`TEMPLATE_VERSION`, recorded with each run) and deterministic:
the same inputs always give the same text and the same digest, so an auditor can rebuild a
recorded prompt from the log and check its digest. The user's message always comes last,
under the fixed header line `## Message` (the stand-in agent finds the current message after
the last such line). A canvas state that is not JSON-serialisable raises ValueError here,
before anything runs. This module does no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec

from ..events import MODES, HistoryMessage

TEMPLATE_VERSION = 1
"""Bump whenever the prompt's wording or layout changes."""

MESSAGE_HEADER = "## Message"
"""The header line under which the current user message is placed, always last."""

MODE_PREAMBLES = {
    "user": (
        "You are working in user mode: you may read files, write the study report "
        "(STUDY_REPORT.md) and result notes (3_results/*.md), run Python, and use the "
        "atomizer tools. Anything else needs the user to switch to power mode."
    ),
    "power": (
        "You are working in power mode: every tool is allowed without asking. Act with care "
        "and say what you changed."
    ),
}
"""What each permission mode means, told to the agent at the top of the prompt."""


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    """A built prompt: its text, `sha256:<hex>` digest, and the template version."""

    text: str
    digest: str
    template_version: int = TEMPLATE_VERSION


def prompt_digest(text: str) -> str:
    """`sha256:<hex>` of the prompt's UTF-8 bytes."""
    data = text.encode("utf-8", errors="surrogatepass")
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def canvas_json(canvas_state: Any) -> str:
    """The canvas state as indented JSON with sorted keys; ValueError if it cannot be JSON."""
    try:
        encoded = msgspec.json.encode(canvas_state, order="sorted")
    except (TypeError, ValueError, msgspec.EncodeError, RecursionError) as error:
        raise ValueError(
            "canvas_state must be JSON-serialisable (dicts with string keys, lists, strings, "
            f"numbers, booleans, None): {error}"
        ) from None
    return msgspec.json.format(encoded, indent=2).decode("utf-8")


def build_prompt(
    *,
    mode: str,
    study_id: str | None,
    history: Sequence[HistoryMessage],
    canvas_state: Any,
    message: str,
    window: int = 10,
) -> Prompt:
    """The prompt for a turn: preamble, study, the last `window` messages, canvas, message last.

    Raises ValueError for an unknown mode, a negative window, or a canvas state that is not
    JSON-serialisable.
    """
    if mode not in MODE_PREAMBLES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    if window < 0:
        raise ValueError(f"window must be 0 or more, not {window}")
    canvas = canvas_json(canvas_state) if canvas_state is not None else None
    sections = [MODE_PREAMBLES[mode]]
    sections.append(f"## Study\n{study_id}" if study_id else "## Study\nNo study is selected.")
    recent = list(history)[-window:] if window else []
    if recent:
        lines = [f"{item.role}: {item.content}" for item in recent]
        sections.append("## Conversation so far\n" + "\n\n".join(lines))
    if canvas is not None:
        sections.append(f"## Canvas state\n```json\n{canvas}\n```")
    else:
        sections.append("## Canvas state\nNo canvas state was sent.")
    sections.append(f"{MESSAGE_HEADER}\n{message}")
    text = "\n\n".join(sections) + "\n"
    return Prompt(text=text, digest=prompt_digest(text), template_version=TEMPLATE_VERSION)
