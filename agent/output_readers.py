"""Readers of an agent's stdout, fed raw chunks as they arrive: line-delimited JSON and text.

A dialect picks one per turn (`AgentDialect.output_reader`). `StreamJsonReader` splits the
byte stream into lines without a length limit (answers arrive as single lines of megabytes)
and hands each to claude's stream-json parser; `TextReader` decodes UTF-8 incrementally and
reports each piece as a text delta. They do no I/O and know nothing about processes.
"""

from __future__ import annotations

import codecs

from .run_types import AgentUpdate, ParsedResult, TextDelta
from .stream_json import StreamJsonParser


class LineSplitter:
    """Splits a byte stream into lines without a length limit, in linear time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete lines (without their newline) that this chunk finishes."""
        self._buffer += chunk
        lines: list[bytes] = []
        start = 0
        while True:
            newline = self._buffer.find(b"\n", max(start, self._scanned))
            if newline < 0:
                break
            lines.append(bytes(self._buffer[start:newline]))
            start = newline + 1
        if start:
            del self._buffer[:start]
        self._scanned = len(self._buffer)
        return lines

    def rest(self) -> bytes:
        """What is left after the last newline (a final line printed without one)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest


class StreamJsonReader:
    """claude's `--output-format stream-json`: one JSON object per line."""

    def __init__(self) -> None:
        self._splitter = LineSplitter()
        self._parser = StreamJsonParser()

    def feed(self, chunk: bytes) -> list[AgentUpdate]:
        """The updates the lines this chunk completes carry."""
        lines = self._splitter.feed(chunk)
        if len(lines) == 1:  # the common case: one streamed line per read
            return self._parser.feed_line(lines[0])
        updates: list[AgentUpdate] = []
        for line in lines:
            updates += self._parser.feed_line(line)
        return updates

    def end(self) -> list[AgentUpdate]:
        """Updates of a last line printed without a newline, and of tool calls left without
        a result (call once, when the output has ended)."""
        updates: list[AgentUpdate] = []
        rest = self._splitter.rest()
        if rest.strip():
            updates += self._parser.feed_line(rest)
        updates += self._parser.unfinished_tool_calls()
        return updates

    def result(self) -> ParsedResult:
        """Everything the output said, folded into one result."""
        return self._parser.finish()


class TextReader:
    """Plain text output (`--output-format text`): every decoded piece is a text delta; the
    answer is the whole text, stripped. There is no result line to wait for."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []

    def feed(self, chunk: bytes) -> list[AgentUpdate]:
        """The decoded text of this chunk, as one delta (none if it ends mid-character)."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        self._parts.append(text)
        return [TextDelta(text=text)]

    def end(self) -> list[AgentUpdate]:
        """Flush the decoder (a cut multi-byte character becomes a replacement character)."""
        self._parts.append(self._decoder.decode(b"", final=True))
        return []

    def result(self) -> ParsedResult:
        """The whole text as the answer."""
        return ParsedResult(text="".join(self._parts).strip())
