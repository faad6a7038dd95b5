"""Canvas modifications, found in what the agent did (tool results) and said (its answer text).

A modification is the value of a `modification` key in a JSON object. In tool calls: an
output that is such an object (or JSON text holding one, or a list of such blocks); and for
a canvas tool (name ending in `apply_canvas_change`) that succeeded but whose output names
no modification, the `modification` of its input, since the change was applied. A tool call
that failed (`is_error`) or never got a result contributes nothing: we cannot know the change
happened. In text: JSON code fences and balanced-brace objects in prose (strings and escapes
respected), top-level keys only, malformed JSON skipped.

These functions never raise, whatever they are given (they are fuzzed), and do no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

MODIFICATION_KEY = "modification"
CANVAS_TOOL_SUFFIX = "apply_canvas_change"
"""Tools whose name ends with this apply canvas changes (e.g. mcp__atomizer-tools__apply_canvas_change)."""

MAX_SCAN_STEPS = 1_000_000
"""A bound on brace-scanning work per text, so a hostile answer cannot take quadratic time."""

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\r?\n(.*?)```", re.DOTALL)
_SCAN_TOKENS = re.compile(r'[{}"\\]')


def _decode(text: str) -> Any:
    """JSON text decoded (NaN and Infinity refused); raises ValueError if it does not parse."""
    try:
        return msgspec.json.decode(text.encode("utf-8", errors="surrogatepass"))
    except (msgspec.DecodeError, UnicodeError, RecursionError) as error:
        raise ValueError(str(error)) from None


def _modification_of(value: Any) -> list[Any]:
    if isinstance(value, dict) and MODIFICATION_KEY in value:
        return [value[MODIFICATION_KEY]]
    return []


def canonical_json(value: Any) -> bytes:
    """A stable byte form of a JSON-like value (sorted keys), used to drop duplicates."""
    try:
        return msgspec.json.encode(value, order="sorted")
    except (TypeError, ValueError, msgspec.EncodeError, RecursionError):
        try:
            return repr(value).encode("utf-8", errors="replace")
        except Exception:  # a value whose repr itself fails: keep it, never merge it
            return f"<unrepresentable {id(value)}>".encode()


def _balanced_objects(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(start, object) of each outermost balanced `{...}` that parses as a JSON object.

    Outside an object, quotes are prose and ignored; inside one, JSON strings and backslash
    escapes are respected. A `{` whose object does not parse is skipped and the scan goes on
    from just after it, so objects nested in broken ones are still found.
    """
    steps = 0
    position = text.find("{")
    while position >= 0 and steps < MAX_SCAN_STEPS:
        depth = 0
        in_string = False
        skip_until = -1
        end = -1
        for match in _SCAN_TOKENS.finditer(text, position):
            steps += 1
            index = match.start()
            if index < skip_until:
                continue
            token = match.group()
            if in_string:
                if token == "\\":
                    skip_until = index + 2  # the escaped character is not a token
                elif token == '"':
                    in_string = False
            elif token == '"':
                in_string = True
            elif token == "{":
                depth += 1
            elif token == "}":
                depth -= 1
                if depth == 0:
                    end = index
                    break
            if steps >= MAX_SCAN_STEPS:
                break
        if end >= 0:
            source = text[position : end + 1]
            try:
                value = _decode(source)
            except ValueError:
                value = None
            if isinstance(value, dict):
                yield position, value
                position = text.find("{", end + 1)
                continue
        position = text.find("{", position + 1)


def _text_candidates(text: str) -> list[tuple[int, Any]]:
    """(position, modification) from fences and from balanced objects in `text`, in order."""
    found: list[tuple[int, Any]] = []
    for fence in _FENCE.finditer(text):
        try:
            value = _decode(fence.group(1))
        except ValueError:
            continue
        found += [(fence.start(1), m) for m in _modification_of(value)]
    for start, value in _balanced_objects(text):
        found += [(start, m) for m in _modification_of(value)]
    found.sort(key=lambda item: item[0])
    return found


def extract_from_text(text: Any) -> list[Any]:
    """Modifications in answer text: JSON fences and balanced objects with a `modification` key."""
    if not isinstance(text, str) or "{" not in text or MODIFICATION_KEY not in text:
        return []
    try:
        return _unique(m for _, m in _text_candidates(text))
    except RecursionError:
        return []


def _in_output(output: Any, depth: int = 0) -> list[Any]:
    """Modifications in a tool output: an object with the key, JSON text, or a list of either."""
    if depth > 8:
        return []
    if isinstance(output, dict):
        if MODIFICATION_KEY in output:
            return [output[MODIFICATION_KEY]]
        if output.get("type") == "text" and isinstance(output.get("text"), str):
            return _in_output(output["text"], depth + 1)
        return []
    if isinstance(output, str):
        stripped = output.strip()
        if not stripped or stripped[0] not in "{[" or MODIFICATION_KEY not in stripped:
            return []
        try:
            decoded = _decode(stripped)
        except ValueError:
            return []
        return [] if isinstance(decoded, str) else _in_output(decoded, depth + 1)
    if isinstance(output, (list, tuple)):
        found: list[Any] = []
        for item in output:
            found += _in_output(item, depth + 1)
        return found
    return []


def _field(call: Any, name: str) -> Any:
    """A field of a ToolCall struct, or of a dict shaped like one."""
    if isinstance(call, dict):
        return call.get(name)
    return getattr(call, name, None)


def _from_one_call(call: Any) -> list[Any]:
    if _field(call, "is_error") is True:
        return []
    output = _field(call, "output")
    if output is None:
        return []
    found = _in_output(output)
    name = _field(call, "name")
    if not found and isinstance(name, str) and name.endswith(CANVAS_TOOL_SUFFIX):
        found = _modification_of(_field(call, "input"))
    return found


def extract_from_tool_calls(tool_calls: Any) -> list[Any]:
    """Modifications in tool results (successful calls only), in call order, de-duplicated."""
    if not isinstance(tool_calls, Iterable) or isinstance(tool_calls, (str, bytes, dict)):
        return []
    found: list[Any] = []
    try:
        for call in tool_calls:
            try:
                found += _from_one_call(call)
            except Exception:  # one odd call (a hostile object) must not lose the others
                continue
    except Exception:  # an iterable that fails part-way: keep what it gave
        pass
    return _unique(found)


def extract_modifications(text: Any, tool_calls: Any) -> list[Any]:
    """Every modification of a turn: tool results first, then the text; order kept, no repeats."""
    return _unique([*extract_from_tool_calls(tool_calls), *extract_from_text(text)])


def _unique(values: Iterable[Any]) -> list[Any]:
    seen: set[bytes] = set()
    unique: list[Any] = []
    for value in values:
        key = canonical_json(value)
        if key not in seen:
            seen.add(key)
            unique.append(value)
    return unique
