"""Canvas modifications from tool results and answer text: found, ordered, de-duplicated."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chatledger.agent import extract_from_text, extract_from_tool_calls, extract_modifications
from chatledger.events import ToolCall

CANVAS_TOOL = "mcp__atomizer-tools__apply_canvas_change"


def test_a_json_code_fence_yields_its_modification() -> None:
    text = 'Here:\n```json\n{"modification": {"action": "add", "id": 1}}\n```\nDone.'
    assert extract_from_text(text) == [{"action": "add", "id": 1}]


def test_objects_in_prose_with_nested_braces_are_found() -> None:
    text = 'I will apply {"modification": {"node": {"pos": {"x": 1, "y": 2}}}} now.'
    assert extract_from_text(text) == [{"node": {"pos": {"x": 1, "y": 2}}}]


def test_braces_and_escaped_quotes_inside_strings_do_not_confuse_the_scan() -> None:
    text = ('First {"modification": {"label": "a } tricky { \\"quoted\\" \\\\"}} then '
            '{"modification": "second"}.')
    assert extract_from_text(text) == [{"label": 'a } tricky { "quoted" \\'}, "second"]


def test_malformed_json_is_skipped_and_objects_inside_broken_ones_are_still_found() -> None:
    text = ('{"modification": {oops}} and { not json {"modification": 3} } and '
            '```json\n{"modification": [1,\n```')
    assert extract_from_text(text) == [3]


def test_only_top_level_modification_keys_count_and_other_objects_are_ignored() -> None:
    text = '{"changes": [{"modification": 1}]} and {"other": 2} and {"modification": null}'
    assert extract_from_text(text) == [None]


def test_text_results_keep_order_and_drop_duplicates_by_canonical_json() -> None:
    text = ('{"modification": {"b": 1, "a": 2}} then {"modification": 7} then '
            '```json\n{"modification": {"a": 2, "b": 1}}\n```')
    assert extract_from_text(text) == [{"b": 1, "a": 2}, 7]


def test_tool_outputs_as_dicts_json_text_and_text_blocks() -> None:
    calls = [
        ToolCall(name="mcp__x__a", output={"success": True, "modification": {"n": 1}}),
        ToolCall(name="mcp__x__b", output='{"modification": {"n": 2}}'),
        ToolCall(name="mcp__x__c", output=[{"type": "text", "text": '{"modification": 3}'},
                                           {"modification": 4}]),
        ToolCall(name="Read", output="plain text mentioning modification"),
    ]
    assert extract_from_tool_calls(calls) == [{"n": 1}, {"n": 2}, 3, 4]


def test_failed_or_unanswered_tool_calls_give_nothing() -> None:
    calls = [
        ToolCall(name=CANVAS_TOOL, input={"modification": 1}, output={"modification": 1},
                 is_error=True),
        ToolCall(name=CANVAS_TOOL, input={"modification": 2}, output=None),
    ]
    assert extract_from_tool_calls(calls) == []


def test_a_canvas_tool_that_succeeded_without_echoing_gives_its_input() -> None:
    calls = [ToolCall(name=CANVAS_TOOL, input={"modification": {"id": 5}}, output="Applied."),
             ToolCall(name="mcp__x__other", input={"modification": {"id": 6}}, output="ok")]
    assert extract_from_tool_calls(calls) == [{"id": 5}]


def test_tool_calls_as_plain_dicts_are_accepted() -> None:
    calls: list[Any] = [{"name": "t", "output": {"modification": "m"}, "is_error": False}]
    assert extract_from_tool_calls(calls) == ["m"]


def test_tool_results_come_first_then_text_without_repeats() -> None:
    calls = [ToolCall(name=CANVAS_TOOL, output={"modification": {"id": 1}})]
    text = '{"modification": {"id": 2}} and again {"modification": {"id": 1}}'
    assert extract_modifications(text, calls) == [{"id": 1}, {"id": 2}]


def test_odd_inputs_give_empty_lists() -> None:
    assert extract_modifications(None, None) == []
    assert extract_modifications(123, "not calls") == []
    assert extract_from_text("{" * 5000 + "modification" + "}" * 10) == []
    assert extract_from_tool_calls([object(), None, 3]) == []
    deep = "[" * 10000 + "]" * 10000
    assert extract_from_tool_calls([ToolCall(name="x", output='{"modification": ' + deep + "}")]) \
        == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from('{}"\\ab:,[]modification\n`json'), max_size=200))
def test_any_text_never_raises(text: str) -> None:
    found = extract_from_text(text)
    assert isinstance(found, list)


@settings(max_examples=200, deadline=None)
@given(json_values, st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40),
       st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40))
def test_an_embedded_object_is_always_found(value: Any, before: str, after: str) -> None:
    text = before + json.dumps({"modification": value}) + after
    assert extract_from_text(text) == [value]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(ToolCall, name=st.text(max_size=30), input=json_values,
                          output=json_values | json_values.map(json.dumps),
                          is_error=st.booleans()), max_size=5),
       st.text(max_size=100))
def test_any_tool_calls_never_raise(calls: list[ToolCall], text: str) -> None:
    found = extract_modifications(text, calls)
    assert len({json.dumps(m, sort_keys=True) for m in found}) == len(found)
