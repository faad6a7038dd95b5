"""Fuzzing the two places where whatever the agent prints meets chatledger's code: the
stream-json parser and the canvas-modification extractor.

Properties: no exception ever escapes, whatever the bytes or values; extraction keeps the
order in which modifications appear and drops repeats (by canonical JSON). Every test sets
`max_examples` explicitly: up to 12,200 cases in all, in under a minute.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatledger.agent import (
    AgentInit,
    AgentResult,
    ApiRetried,
    TextDelta,
    ToolCallCompleted,
    extract_from_text,
    extract_from_tool_calls,
    extract_modifications,
)
from chatledger.agent.stream_json import ParsedResult, StreamJsonParser
from chatledger.events import ToolCall


def fuzz(cases: int) -> settings:
    """Settings for one fuzz test: `cases` examples, no deadline, derandomised (CI runs the
    same cases every time and a failure reproduces), no example database."""
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


EVENT_TYPES = (TextDelta, ToolCallCompleted, AgentInit, ApiRetried, AgentResult)

# -- strategies ---------------------------------------------------------------------------

scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
tool_ids = st.sampled_from(["t1", "t2", "t3", "", 7, None])
message_ids = st.sampled_from(["m1", "m2", 3, None])
content_blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "server_tool_use",
                              "mcp_tool_use", "mcp_tool_result", "image", 5])},
    optional={
        "id": tool_ids,
        "tool_use_id": tool_ids,
        "name": st.sampled_from(["Read", "mcp__x__apply_canvas_change", 3]),
        "input": json_values,
        "text": st.text(max_size=20) | scalars,
        "content": json_values | st.lists(st.fixed_dictionaries(
            {"type": st.just("text"), "text": st.text(max_size=20)}), max_size=2),
        "is_error": st.booleans() | scalars,
    },
)
stream_lines = st.fixed_dictionaries(
    {"type": st.sampled_from(["system", "assistant", "user", "stream_event", "result", "zzz"])},
    optional={
        "subtype": st.sampled_from(["init", "api_retry", "success", "other", 1]),
        "message": st.fixed_dictionaries(
            {}, optional={"id": message_ids,
                          "content": st.lists(content_blocks, max_size=3) | json_values},
        ) | json_values,
        "event": st.fixed_dictionaries(
            {"type": st.sampled_from(["message_start", "content_block_delta", "x"])},
            optional={"message": st.fixed_dictionaries({"id": message_ids}),
                      "delta": st.fixed_dictionaries({"type": st.just("text_delta"),
                                                      "text": st.text(max_size=10) | scalars})},
        ) | json_values,
        "parent_tool_use_id": st.sampled_from([None, "t1"]),
        "result": st.text(max_size=20) | json_values,
        "is_error": st.booleans() | scalars,
        "errors": json_values,
        "usage": json_values,
        "session_id": scalars,
        "total_cost_usd": scalars,
        "tools": json_values,
        "mcp_servers": json_values,
        "error": json_values,
        "attempt": scalars,
    },
)


def encoded(line: Any) -> bytes:
    """A line as the agent would print it (big ints and all)."""
    return json.dumps(line, ensure_ascii=False).encode("utf-8")


@st.composite
def mangled_lines(draw: st.DrawFn) -> bytes:
    """A valid line, then maybe cut short, spliced with junk bytes, or nested very deep."""
    data = encoded(draw(stream_lines))
    how = draw(st.sampled_from(["as-is", "cut", "splice", "deep", "not-object"]))
    if how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=8)) + data[at:]
    elif how == "deep":
        depth = draw(st.integers(100, 5000))
        data = b'{"type":"assistant","message":' + b"[" * depth + b"]" * depth + b"}"
    elif how == "not-object":
        data = encoded(draw(json_values))
    return data


modifications = json_values
prose = st.text(
    alphabet=st.characters(blacklist_characters='{}`\\"', blacklist_categories=("Cs",)),
    max_size=30,
)


def canonical(value: Any) -> str:
    """An independent canonical form for the test's expected de-duplication."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def unique(values: list[Any]) -> list[Any]:
    """First occurrences, in order, by canonical JSON."""
    seen: set[str] = set()
    kept = []
    for value in values:
        if canonical(value) not in seen:
            seen.add(canonical(value))
            kept.append(value)
    return kept


def assert_unique(values: list[Any]) -> None:
    """No two values share a canonical form."""
    forms = [canonical(value) for value in values]
    assert len(forms) == len(set(forms)), values


# -- the stream-json parser ---------------------------------------------------------------


def check_parser_run(lines: list[bytes]) -> ParsedResult:
    """Feed the lines; nothing may raise, events must be typed, tool calls reported once."""
    parser = StreamJsonParser()
    reported: list[str] = []
    for line in lines:
        events = parser.feed_line(line)
        assert isinstance(events, list)
        for event in events:
            assert isinstance(event, EVENT_TYPES)
            if isinstance(event, ToolCallCompleted):
                reported.append(event.tool_call.tool_use_id)
    reported += [event.tool_call.tool_use_id for event in parser.unfinished_tool_calls()]
    result = parser.finish()
    assert parser.finish() is result
    assert isinstance(result.text, str)
    ids = [call.tool_use_id for call in result.tool_calls]
    assert len(ids) == len(set(ids)) and sorted(reported) == sorted(ids)
    assert len(result.diagnostics) <= 20
    return result


@fuzz(3500)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_the_parser_survives_arbitrary_bytes(lines: list[bytes]) -> None:
    check_parser_run(lines)


@fuzz(1000)
@given(st.lists(stream_lines, min_size=1, max_size=5))
def test_the_parser_survives_any_mix_of_stream_json_shapes(lines: list[dict[str, Any]]) -> None:
    check_parser_run([encoded(line) for line in lines])


@fuzz(700)
@given(st.lists(mangled_lines(), min_size=1, max_size=4))
def test_the_parser_survives_cut_spliced_and_deeply_nested_lines(lines: list[bytes]) -> None:
    result = check_parser_run(lines)
    assert result.garbage_lines <= len(lines)


@fuzz(500)
@given(st.lists(st.tuples(st.sampled_from(["t1", "t2", "t3", "t4"]), json_values), max_size=6),
       st.permutations(range(6)))
def test_tool_calls_keep_the_order_of_their_tool_uses(
    uses: list[tuple[str, Any]], order: list[int]
) -> None:
    lines = [encoded({"type": "assistant", "message": {"id": f"m{i}", "content": [
        {"type": "tool_use", "id": tool_id, "name": "T", "input": value}]}})
        for i, (tool_id, value) in enumerate(uses)]
    results = [encoded({"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": uses[i][0], "content": "ok"}]}})
        for i in order if i < len(uses)]
    result = check_parser_run(lines + results)
    first_seen = list(dict.fromkeys(tool_id for tool_id, _ in uses))
    assert [call.tool_use_id for call in result.tool_calls] == first_seen


# -- the canvas extractor -----------------------------------------------------------------


@fuzz(2500)
@given(st.text(max_size=300) | st.lists(
    st.sampled_from(['{', '}', '"', '\\', '```json\n', '```', '"modification"', ':', ',', 'x',
                     '1', '[', ']', ' ', '\n', '{"modification": ']), max_size=60).map("".join))
def test_text_extraction_never_raises_and_never_repeats(text: str) -> None:
    found = extract_from_text(text)
    assert isinstance(found, list)
    assert_unique(found)


@fuzz(1500)
@given(st.lists(st.tuples(modifications, st.sampled_from(["inline", "fence", "pretty"]), prose),
                max_size=6), prose)
def test_text_extraction_keeps_order_and_drops_repeats(
    pieces: list[tuple[Any, str, str]], lead: str
) -> None:
    text = lead
    for modification, how, filler in pieces:
        body = {"modification": modification}
        if how == "inline":
            text += " " + json.dumps(body) + " " + filler
        elif how == "fence":
            text += "\n```json\n" + json.dumps(body, indent=2) + "\n```\n" + filler
        else:
            text += " " + json.dumps(body, indent=1, ensure_ascii=False) + " " + filler
    assert extract_from_text(text) == unique([m for m, _, _ in pieces])


@fuzz(1000)
@given(st.lists(json_values | st.builds(ToolCall, name=st.text(max_size=30), input=json_values,
                                        output=json_values, is_error=st.booleans()),
                max_size=6) | json_values)
def test_tool_call_extraction_never_raises_and_never_repeats(calls: Any) -> None:
    found = extract_from_tool_calls(calls)
    assert isinstance(found, list)
    assert_unique(found)


@fuzz(1000)
@given(st.lists(st.tuples(modifications, st.sampled_from(["dict", "json", "block", "input"]),
                          st.booleans()), max_size=6))
def test_tool_call_extraction_keeps_call_order_and_skips_failed_calls(
    specs: list[tuple[Any, str, bool]],
) -> None:
    calls = []
    for modification, how, failed in specs:
        body = {"success": True, "modification": modification}
        if how == "dict":
            call = ToolCall(name="mcp__x__t", output=body, is_error=failed)
        elif how == "json":
            call = ToolCall(name="mcp__x__t", output=json.dumps(body), is_error=failed)
        elif how == "block":
            call = ToolCall(name="mcp__x__t", is_error=failed,
                            output=[{"type": "text", "text": json.dumps(body)}])
        else:
            call = ToolCall(name="mcp__a__apply_canvas_change", output={"success": True},
                            input={"modification": modification}, is_error=failed)
        calls.append(call)
    expected = unique([m for m, _, failed in specs if not failed])
    assert extract_from_tool_calls(calls) == expected


@fuzz(500)
@given(st.lists(modifications, max_size=4), st.lists(modifications, max_size=4), prose)
def test_a_turn_lists_tool_modifications_first_then_text_ones_without_repeats(
    from_tools: list[Any], from_text: list[Any], filler: str
) -> None:
    calls = [ToolCall(name="mcp__x__t", output={"modification": m}) for m in from_tools]
    text = filler.join(json.dumps({"modification": m}) for m in from_text)
    assert extract_modifications(text, calls) == unique(from_tools + from_text)


class Hostile:
    """An object whose every attribute access and iteration blows up."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} for you")

    def __iter__(self) -> Any:
        raise RuntimeError("no iteration either")

    def __repr__(self) -> str:
        raise RuntimeError("not even a repr")


HOSTILE_VALUES = {
    "hostile": lambda: Hostile(),
    "hostile-call-in-a-list": lambda: [Hostile(), ToolCall(name="t", output={"modification": 1})],
    "hostile-modification": lambda: {"modification": Hostile()},
    "iterator": lambda: iter([1, 2]),
    "int": lambda: 3,
    "none": lambda: None,
    "bytes": lambda: b"{}",
}


@pytest.mark.parametrize("make", list(HOSTILE_VALUES.values()), ids=list(HOSTILE_VALUES))
def test_hostile_objects_do_not_break_extraction(make: Any) -> None:
    extract_from_tool_calls(make())
    extract_modifications(make(), make())
    assert extract_from_tool_calls(
        [Hostile(), ToolCall(name="t", output={"modification": 1})]) == [1]
