"""The prompt builder: sections, history window, canvas JSON, message last, determinism."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pytest

from chatledger.agent import MESSAGE_HEADER, TEMPLATE_VERSION, build_prompt
from chatledger.events import HistoryMessage
from chatledger.testing.standin import current_message

WHEN = datetime(2025, 1, 1, tzinfo=timezone.utc)


def messages(count: int) -> list[HistoryMessage]:
    return [
        HistoryMessage(role="user" if i % 2 == 0 else "assistant", content=f"message {i}",
                       timestamp=WHEN, turn=i // 2 + 1)
        for i in range(count)
    ]


def test_the_same_inputs_give_the_same_text_and_digest() -> None:
    first = build_prompt(mode="user", study_id="s-1", history=messages(4),
                         canvas_state={"b": [1, 2], "a": {"y": 1, "x": 2}}, message="hi")
    second = build_prompt(mode="user", study_id="s-1", history=messages(4),
                          canvas_state={"a": {"x": 2, "y": 1}, "b": [1, 2]}, message="hi")
    assert first == second
    assert first.digest == "sha256:" + hashlib.sha256(first.text.encode()).hexdigest()
    assert first.template_version == TEMPLATE_VERSION == 1


def test_sections_come_in_order_with_the_message_last() -> None:
    prompt = build_prompt(mode="power", study_id="study-7", history=messages(2),
                          canvas_state={"nodes": []}, message="What next?\nThanks")
    text = prompt.text
    assert "power mode" in text
    order = [text.index("## Study\nstudy-7"), text.index("## Conversation so far"),
             text.index("user: message 0"), text.index("assistant: message 1"),
             text.index('## Canvas state\n```json\n{\n  "nodes": []\n}\n```'),
             text.index(f"{MESSAGE_HEADER}\nWhat next?\nThanks")]
    assert order == sorted(order)
    assert text.rstrip().endswith("What next?\nThanks")
    assert current_message(text) == "What next?\nThanks"


def test_only_the_last_window_messages_are_included() -> None:
    text = build_prompt(mode="user", study_id=None, history=messages(15), canvas_state=None,
                        message="now", window=10).text
    assert "message 4\n" not in text and "user: message 5" not in text
    assert all(f"message {i}" in text for i in range(5, 15))
    none = build_prompt(mode="user", study_id=None, history=messages(3), canvas_state=None,
                        message="now", window=0).text
    assert "Conversation so far" not in none and "message 0" not in none


def test_mode_and_missing_study_and_canvas_are_said_plainly() -> None:
    user = build_prompt(mode="user", study_id=None, history=[], canvas_state=None, message="m")
    power = build_prompt(mode="power", study_id=None, history=[], canvas_state=None, message="m")
    assert "user mode" in user.text and "power mode" in power.text
    assert user.digest != power.digest
    assert "No study is selected." in user.text and "No canvas state was sent." in user.text


def test_a_canvas_state_that_is_not_json_is_refused_before_any_run() -> None:
    with pytest.raises(ValueError, match="canvas_state must be JSON-serialisable"):
        build_prompt(mode="user", study_id=None, history=[], canvas_state={"x": object()},
                     message="m")


def test_an_unknown_mode_or_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        build_prompt(mode="root", study_id=None, history=[], canvas_state=None, message="m")
    with pytest.raises(ValueError, match="window"):
        build_prompt(mode="user", study_id=None, history=[], canvas_state=None, message="m",
                     window=-1)


def test_a_history_message_holding_the_header_does_not_hide_the_current_message() -> None:
    earlier = [HistoryMessage(role="assistant", content=f"{MESSAGE_HEADER}\nold", timestamp=WHEN,
                              turn=1)]
    text = build_prompt(mode="user", study_id=None, history=earlier, canvas_state=None,
                        message="new").text
    assert current_message(text) == "new"
