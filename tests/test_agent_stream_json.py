"""The stream-json parser: events as lines arrive, and the folded result at the end."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chatledger.agent import (
    AgentInit,
    AgentResult,
    AgentUpdate,
    ApiRetried,
    StreamJsonParser,
    TextDelta,
    ToolCallCompleted,
)
from chatledger.agent.stream_json import MAX_DIAGNOSTICS


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode("utf-8")


def assistant(block: dict[str, Any], message_id: str = "msg_1",
              parent: str | None = None) -> bytes:
    return line({"type": "assistant", "parent_tool_use_id": parent, "session_id": "s",
                 "message": {"id": message_id, "role": "assistant", "content": [block]}})


def tool_result(tool_use_id: str, content: Any, is_error: bool = False) -> bytes:
    return line({"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": tool_use_id, "content": content,
         "is_error": is_error}]}})


def delta(text: str) -> bytes:
    return line({"type": "stream_event", "parent_tool_use_id": None, "event": {
        "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}})


def message_start(message_id: str) -> bytes:
    return line({"type": "stream_event", "parent_tool_use_id": None,
                 "event": {"type": "message_start", "message": {"id": message_id}}})


def result(**fields: Any) -> bytes:
    base = {"type": "result", "subtype": "success", "is_error": False, "result": "done",
            "session_id": "sess-9", "total_cost_usd": 0.0123, "num_turns": 2,
            "duration_ms": 1500, "usage": {"input_tokens": 10, "output_tokens": 5}}
    base.update(fields)
    return line(base)


def feed(parser: StreamJsonParser, *lines: bytes) -> list[Any]:
    events: list[Any] = []
    for raw in lines:
        events += parser.feed_line(raw)
    return events


def test_init_becomes_agent_init() -> None:
    parser = StreamJsonParser()
    events = feed(parser, line({"type": "system", "subtype": "init", "session_id": "abc",
                                "model": "claude-x", "tools": ["Read", 3, "Write"],
                                "mcp_servers": [{"name": "a", "status": "connected"}],
                                "permissionMode": "default", "claude_code_version": "2.1"}))
    assert events == [AgentInit(session_id="abc", model="claude-x", tools=("Read", "Write"),
                                mcp_servers=({"name": "a", "status": "connected"},),
                                permission_mode="default", version="2.1")]
    finished = parser.finish()
    assert finished.agent_session_id == "abc" and finished.model == "claude-x"
    assert not finished.saw_result


def test_without_stream_events_each_assistant_text_block_is_a_delta() -> None:
    parser = StreamJsonParser()
    events = feed(parser,
                  assistant({"type": "text", "text": "first"}, "m1"),
                  assistant({"type": "tool_use", "id": "t1", "name": "Read", "input": {}}, "m1"),
                  tool_result("t1", "content"),
                  assistant({"type": "text", "text": "second"}, "m2"))
    assert [e for e in events if isinstance(e, TextDelta)] == [
        TextDelta(text="first"), TextDelta(text="second")]
    assert parser.finish().text == "first\n\nsecond"  # no result line: the text blocks


def test_streamed_deltas_are_not_repeated_by_the_assistant_line() -> None:
    parser = StreamJsonParser()
    events = feed(parser, message_start("m1"), delta("Hel"), delta("lo"),
                  assistant({"type": "text", "text": "Hello"}, "m1"),
                  result(result="Hello"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo"]
    assert parser.finish().text == "Hello"


def test_a_text_block_of_an_unstreamed_message_still_streams() -> None:
    parser = StreamJsonParser()
    events = feed(parser, message_start("m1"), delta("a"),
                  assistant({"type": "text", "text": "a"}, "m1"),
                  assistant({"type": "text", "text": "b"}, "m2"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", "b"]


def test_tool_use_is_joined_with_its_result_and_mcp_json_text_is_decoded() -> None:
    parser = StreamJsonParser()
    feed(parser, assistant({"type": "tool_use", "id": "t1", "name": "mcp__x__apply",
                            "input": {"modification": {"a": 1}}}))
    events = feed(parser, tool_result(
        "t1", [{"type": "text", "text": '{"success": true, "modification": {"a": 1}}'}]))
    assert len(events) == 1 and isinstance(events[0], ToolCallCompleted)
    call = events[0].tool_call
    assert call.name == "mcp__x__apply" and call.tool_use_id == "t1"
    assert call.input == {"modification": {"a": 1}}
    assert call.output == {"success": True, "modification": {"a": 1}}
    assert call.is_error is False


def test_tool_result_shapes_strings_errors_and_several_blocks() -> None:
    parser = StreamJsonParser()
    feed(parser,
         assistant({"type": "tool_use", "id": "a", "name": "Read", "input": {"file_path": "f"}}),
         assistant({"type": "tool_use", "id": "b", "name": "Write", "input": {}}),
         assistant({"type": "tool_use", "id": "c", "name": "mcp__s__t", "input": {}}),
         assistant({"type": "tool_use", "id": "d", "name": "Bash", "input": {"command": "ls"}}))
    feed(parser,
         tool_result("b", "Claude requested permissions to use Write", is_error=True),
         tool_result("a", "     1\tplain text {not json"),
         tool_result("c", [{"type": "text", "text": "[1, 2]"}, {"type": "text", "text": "x"},
                           {"type": "image", "source": {}}]),
         tool_result("nobody", "lost"))
    finished = parser.finish()
    calls = {c.tool_use_id: c for c in finished.tool_calls}
    assert [c.tool_use_id for c in finished.tool_calls] == ["a", "b", "c", "d"]  # call order
    assert calls["a"].output == "     1\tplain text {not json"
    assert calls["b"].is_error and calls["b"].output.startswith("Claude requested")
    assert calls["c"].output == [[1, 2], "x", {"type": "image", "source": {}}]
    assert calls["d"].output is None and not calls["d"].is_error  # never got a result
    assert any("unknown tool_use" in d for d in finished.diagnostics)


def test_unfinished_tool_calls_are_reported_once_with_output_none() -> None:
    parser = StreamJsonParser()
    feed(parser, assistant({"type": "tool_use", "id": "t", "name": "Bash", "input": {}}))
    unfinished = parser.unfinished_tool_calls()
    assert [e.tool_call.output for e in unfinished] == [None]
    assert parser.unfinished_tool_calls() == []
    assert len(parser.finish().tool_calls) == 1


def test_success_is_decided_by_is_error_never_by_subtype() -> None:
    parser = StreamJsonParser()
    events = feed(parser, result(subtype="success", is_error=True, api_error_status=529,
                                 result="API Error: 529 overloaded", errors=["overloaded"]))
    assert isinstance(events[0], AgentResult) and events[0].is_error
    finished = parser.finish()
    assert finished.is_error and finished.saw_result and finished.subtype == "success"
    assert finished.api_error_status == 529 and finished.errors == ("overloaded",)
    ok = StreamJsonParser()
    feed(ok, result(subtype="error_max_turns", is_error=False))
    assert not ok.finish().is_error


def test_the_result_carries_cost_usage_session_and_turns() -> None:
    parser = StreamJsonParser()
    feed(parser, line({"type": "system", "subtype": "init", "session_id": "from-init"}),
         assistant({"type": "text", "text": "ignored when result has text"}), result())
    finished = parser.finish()
    assert finished.text == "done"
    assert finished.cost_usd == 0.0123 and finished.usage == {"input_tokens": 10,
                                                              "output_tokens": 5}
    assert finished.agent_session_id == "sess-9" and finished.num_turns == 2
    assert finished.duration_ms == 1500.0


def test_api_retries_are_reported() -> None:
    parser = StreamJsonParser()
    events = feed(parser, line({"type": "system", "subtype": "api_retry", "attempt": 1,
                                "max_retries": 2, "retry_delay_ms": 500, "error_status": 529,
                                "error": "overloaded_error"}))
    assert events == [ApiRetried(attempt=1, max_retries=2, retry_delay_ms=500.0,
                                 error_status=529, error="overloaded_error")]


def test_garbage_is_counted_and_kept_as_diagnostics_never_raised() -> None:
    parser = StreamJsonParser()
    events = feed(parser, b"not json", b'{"type": "assistant", "bro', b"[1, 2]", b'"text"',
                  b"\xff\xfe\xc3\x28", b'{"type": "mystery"}', b"", b"   \r",
                  b'{"type": "assistant", "message": "not an object"}',
                  b'{"type": "user", "message": {"content": [7, null]}}',
                  b'{"no_type": 1}',
                  assistant({"type": "text", "text": "still fine"}), result(result="still fine"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["still fine"]
    finished = parser.finish()
    assert finished.text == "still fine" and not finished.is_error
    assert finished.garbage_lines == 5 and finished.unknown_lines == 2
    assert any("invalid UTF-8" in d for d in finished.diagnostics)
    assert any("unknown type 'mystery'" in d for d in finished.diagnostics)


def test_sub_agent_text_is_not_part_of_the_answer() -> None:
    parser = StreamJsonParser()
    events = feed(parser, assistant({"type": "text", "text": "inner"}, "m9", parent="toolu_1"),
                  assistant({"type": "text", "text": "outer"}, "m10"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["outer"]
    assert parser.finish().text == "outer"


def test_a_line_of_several_megabytes_parses() -> None:
    text = "x" * (3 * 1024 * 1024)
    parser = StreamJsonParser()
    events = feed(parser, assistant({"type": "text", "text": text}), result(result=text))
    assert events[0] == TextDelta(text=text) and parser.finish().text == text


def test_unicode_passes_through_raw() -> None:
    parser = StreamJsonParser()
    feed(parser, result(result="héllo — 你好 🎉"))
    assert parser.finish().text == "héllo — 你好 🎉"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["type", "message", "content", "id", "event",
                                           "tool_use_id", "subtype", "result", "is_error",
                                           "text", "delta", "errors", "usage"]),
                          children, max_size=5),
        max_leaves=20,
    ).map(lambda value: json.dumps(value).encode()),
), max_size=20))
def test_no_input_makes_the_parser_raise(lines: list[bytes]) -> None:
    # Whatever arrives, every line is either understood (typed updates only), counted as
    # garbage or unknown, or ignored; and the folded result accounts for every line.
    parser = StreamJsonParser()
    updates = []
    for raw in lines:
        updates += parser.feed_line(raw)
    parsed = parser.finish()
    assert all(isinstance(update, AgentUpdate) for update in updates)  # type: ignore[misc,arg-type]
    assert parsed.garbage_lines + parsed.unknown_lines <= len(lines)
    assert len(parsed.diagnostics) <= MAX_DIAGNOSTICS
    assert parser.finish() is parsed  # folding twice gives the same result
    assert parsed.saw_result == any(isinstance(u, AgentResult) for u in updates)


def test_lines_node_prints_but_msgspec_refuses_are_still_read() -> None:
    parser = StreamJsonParser()
    parser.feed_line(b'{"type": "result", "subtype": "success", "is_error": false, '
                     b'"result": "a lone \\udcff surrogate", "total_cost_usd": NaN}')
    parsed = parser.finish()
    assert parsed.saw_result and parsed.garbage_lines == 0
    assert parsed.text == "a lone \udcff surrogate"
    parser = StreamJsonParser()
    parser.feed_line(b'{"type": "result", "result": "cut')
    assert parser.finish().garbage_lines == 1


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)
_stream_events = st.fixed_dictionaries(
    {"event": st.one_of(
         _json_values,
         st.fixed_dictionaries(
             {"type": st.sampled_from(["message_start", "content_block_delta",
                                       "message_stop"]) | _json_values},
             optional={
                 "message": st.fixed_dictionaries({}, optional={"id": _json_values})
                 | _json_values,
                 "delta": st.fixed_dictionaries(
                     {"type": st.sampled_from(["text_delta", "input_json_delta"])},
                     optional={"text": st.text(max_size=10) | _json_values},
                 ) | _json_values,
                 "index": st.integers(0, 3),
             },
         ),
     )},
    optional={"parent_tool_use_id": st.none() | st.text(max_size=5),
              "session_id": st.text(max_size=5)},
).map(lambda fields: {"type": "stream_event", **fields})  # claude prints "type" first


@settings(max_examples=300, deadline=None)
@given(st.lists(_stream_events, max_size=6))
def test_stream_events_as_claude_prints_them_parse_like_any_other_spelling(
    messages: list[dict[str, Any]],
) -> None:
    # claude prints compact JSON with "type" first: the parser's fast path. The same
    # lines with spaces take the general path; both must give the same events and result.
    compact = [json.dumps(m, ensure_ascii=False, separators=(",", ":")).encode()
               for m in messages]
    spaced = [json.dumps(m, ensure_ascii=False).encode() for m in messages]
    assert all(raw.startswith(b'{"type":"stream_event"') for raw in compact)
    fast, general = StreamJsonParser(), StreamJsonParser()
    tail = [assistant({"type": "text", "text": "the answer"}, message_id="m1"), result()]
    assert feed(fast, *compact, *tail) == feed(general, *spaced, *tail)
    assert fast.finish() == general.finish()


def test_an_interrupted_answer_printed_again_as_a_new_message_is_not_streamed_twice() -> None:
    parser = StreamJsonParser()
    events = feed(parser, message_start("msg_1"), delta("echo: "), delta("hello "),
                  assistant({"type": "text", "text": "echo: hello "}, message_id="msg_2"),
                  result(result="", is_error=True, subtype="error_during_execution"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["echo: ", "hello "]
