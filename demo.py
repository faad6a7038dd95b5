"""The scripted demo conversation: a few turns with the stand-in agent on a real ledger.

It exercises what a backend does in a day (a plain answer, a tool call, canvas changes, a
mode switch) offline and for free, so `chatledger demo` shows the whole system on a fresh
install. The stand-in agent ships with the package (`python -m chatledger.testing.standin`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .config import load_config
from .ledger import Ledger, TurnOutcome

STANDIN_COMMAND = (sys.executable, "-m", "chatledger.testing.standin")
DEMO_STUDY = "beam-optimisation"
DEMO_CANVAS = {"nodes": [{"id": "objective", "type": "objective", "label": "mass"}], "edges": []}

SCRIPT: tuple[tuple[str, str], ...] = (
    ("send", "Hello! What can you do for this study? [[echo]]"),
    ("send", "Please read the study notes. [[tool]]"),
    ("send", "Add a thickness design variable to the canvas. [[canvas]]"),
    ("mode", "power"),
    ("send", "Now in power mode: summarise the changes. [[echo]]"),
)
"""(step, argument): `send` a message, or switch to a `mode`."""


def run_demo(
    path: str, on_step: Callable[[str, Any], None] | None = None
) -> tuple[str, list[TurnOutcome]]:
    """Run the scripted conversation in the ledger at `path`; returns (session id, outcomes).

    `on_step(kind, value)` is told about each step as it happens (for live output).
    """
    config = load_config(
        path=path, agent_command=STANDIN_COMMAND, output_format="stream-json", timeout=60.0
    )
    outcomes: list[TurnOutcome] = []
    with Ledger(config=config) as ledger:
        info = ledger.create_session(mode="user", study_id=DEMO_STUDY)
        session_id = info.session_id
        if on_step:
            on_step("created", info)
        for step, argument in SCRIPT:
            if step == "mode":
                ledger.switch_mode(session_id, argument)
                if on_step:
                    on_step("mode", argument)
                continue
            if on_step:
                on_step("message", argument)
            outcome = ledger.send(session_id, argument, canvas_state=DEMO_CANVAS)
            outcomes.append(outcome)
            if on_step:
                on_step("outcome", outcome)
    return session_id, outcomes
