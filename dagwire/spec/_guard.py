"""Cheap checks on spec source text before any YAML or JSON parser sees it.

ruamel's parser slows down badly on deep nesting (a 10 KB flow list nested 5,000 deep takes
seconds, spent mostly unwinding a recursion error), so spec text is first checked for its size
and for how deeply it nests. The depth check is one linear pass over the lines that tracks
block indentation, flow brackets, quoted scalars, block scalars and comments; it may count one
level too many on a line that ends in a scalar (`- value`), never one too few, so it stops
nothing a real spec needs: the exact check, with the field's path, is `to_plain`'s.
See docs/limits.md.
"""

from __future__ import annotations

import re

from dagwire.errors import WorkflowValidationError
from dagwire.limits import MAX_SPEC_BYTES, MAX_SPEC_DEPTH

__all__ = ["check_source"]

_PLAIN_RUN = re.compile(r"[^\s\[\]{}\"',:#|>]+")
_DOUBLE_END = re.compile(r'(?:[^"\\]|\\.)*"')
_SINGLE_END = re.compile(r"(?:[^']|'')*'")
_DEPTH_SLACK = 1  # the scalar ending a `- value` line, counted as a level


def check_size(text: str | bytes) -> None:
    """Raise `WorkflowValidationError` when `text` is larger than `MAX_SPEC_BYTES` (UTF-8)."""
    size = len(text)
    if isinstance(text, str) and MAX_SPEC_BYTES // 4 < size <= MAX_SPEC_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise WorkflowValidationError(
            f"the spec is {size:,} bytes, more than the limit of {MAX_SPEC_BYTES:,} bytes;"
            " split the workflow up or move large values into artifacts",
            field="spec",
        )


def check_source(text: str | bytes) -> None:
    """Check spec text for its size and nesting depth before it is parsed.

    Raises:
        WorkflowValidationError: the text is larger than `MAX_SPEC_BYTES`, or nests mappings
            and lists more than `MAX_SPEC_DEPTH` levels deep (the message gives the line).
    """
    check_size(text)
    source = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    _DepthScan().scan(source)


class _DepthScan:
    def __init__(self) -> None:
        self.blocks: list[int] = []  # columns of the open block collections
        self.flow = 0  # open flow collections ([ or {)
        self.quote = ""  # the quote of a quoted scalar continuing on the next line
        self.block_scalar: int | None = None  # content lines are indented more than this
        self.line = 0

    def scan(self, text: str) -> None:
        for number, line in enumerate(text.split("\n"), start=1):
            self.line = number
            self.scan_line(line.rstrip("\r"))

    def fail(self) -> None:
        raise WorkflowValidationError(
            f"line {self.line}: the spec nests mappings and lists more than {MAX_SPEC_DEPTH}"
            " levels deep; flatten the values (or pass deep data as an artifact)",
            line=self.line,
        )

    def push_block(self, column: int) -> None:
        self.blocks.append(column)
        if len(self.blocks) + self.flow > MAX_SPEC_DEPTH + _DEPTH_SLACK:
            self.fail()

    def scan_line(self, line: str) -> None:
        stripped = line.lstrip(" \t")
        indent = len(line) - len(stripped)
        if self.block_scalar is not None:
            if not stripped or indent > self.block_scalar:
                return
            self.block_scalar = None
        if self.quote or self.flow:
            self.scan_rest(line, 0, at_start=not self.quote, column=indent)
            return
        if not stripped or stripped.startswith("#"):
            return
        if indent == 0 and (stripped.startswith(("---", "...", "%"))):
            self.blocks.clear()
            rest = 3 if stripped.startswith(("---", "...")) else len(line)
            self.scan_rest(line, rest, at_start=True, column=0)
            return
        while self.blocks and self.blocks[-1] >= indent:
            self.blocks.pop()
        self.push_block(indent)
        pos, owner = indent, indent
        while pos < len(line) and line[pos] in "-?" and line[pos + 1 : pos + 2] in ("", " ", "\t"):
            owner = pos
            pos += 1
            while pos < len(line) and line[pos] in " \t":
                pos += 1
            if pos < len(line):
                self.push_block(pos)
                owner = pos if line[pos] not in "|>" else owner
        self.scan_rest(line, pos, at_start=True, column=owner)

    def scan_rest(self, line: str, pos: int, *, at_start: bool, column: int) -> None:
        """Scan `line` from `pos`: quotes, flow brackets, comments, a block scalar's start."""
        end = len(line)
        if self.quote:
            pattern = _DOUBLE_END if self.quote == '"' else _SINGLE_END
            match = pattern.match(line, pos)
            if match is None:
                return
            self.quote = ""
            pos = match.end()
            at_start = False
        while pos < end:
            char = line[pos]
            if char in " \t":
                pos += 1
                continue
            if char == "#" and (pos == 0 or line[pos - 1] in " \t"):
                return
            if char in "\"'" and at_start:
                pattern = _DOUBLE_END if char == '"' else _SINGLE_END
                match = pattern.match(line, pos + 1)
                if match is None:
                    self.quote = char
                    return
                pos = match.end()
                at_start = False
                continue
            if char in "[{" and (at_start or self.flow):
                self.flow += 1
                if len(self.blocks) + self.flow > MAX_SPEC_DEPTH + _DEPTH_SLACK:
                    self.fail()
                pos += 1
                at_start = True
                continue
            if char in "]}" and self.flow:
                self.flow -= 1
                pos += 1
                at_start = False
                continue
            if char == "," and self.flow:
                pos += 1
                at_start = True
                continue
            if char == ":" and (pos + 1 == end or line[pos + 1] in " \t" or self.flow):
                pos += 1
                at_start = True
                continue
            if char in "|>" and at_start and not self.flow:
                self.block_scalar = column
                return
            match = _PLAIN_RUN.match(line, pos)
            pos = match.end() if match is not None else pos + 1
            at_start = False
