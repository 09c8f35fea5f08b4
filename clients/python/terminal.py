"""Text from servers and adapters made safe for a terminal: the one sanitizer of the CLI.

Run names, task ids, adapter errors, artifact names, agent keys and server messages are
written by someone else. Printed raw, an escape sequence in them can clear the screen, move
the cursor, retitle the window or hide a hyperlink (CSI, OSC), a carriage return can overwrite
the line it is on, and a C1 control or a bidi override can do the same or reorder what is
read. Every human-readable output path of the CLI passes such text through `terminal_text`,
which shows these characters as visible escapes (``\\x1b``, ``\\r``, ``\\u202e``) instead.
The CLI's own newlines are added around it, never inside. JSON output is escaped by
`json_text` instead, so that it stays exact JSON.
"""

from __future__ import annotations

import re

__all__ = ["json_text", "terminal_text"]

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
"""Bidi marks, embeddings, overrides and isolates: they reorder what the reader sees."""
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}\ud800-\udfff]")
"""C0 controls (ESC, BEL, CR, newline, tab...), DEL, C1 controls, line and paragraph
separators, bidi controls, lone surrogates (which no terminal encoding can write)."""
_JSON_UNSAFE = re.compile(f"[\x7f-\x9f\u2028\u2029{_BIDI}\ud800-\udfff]")
"""What `json.dumps(ensure_ascii=False)` leaves raw in strings (it escapes C0 itself)."""
_FOLDED = re.compile(r"[ \t]*[\t\n][ \t\n]*")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_text(text: str, *, one_line: bool = False) -> str:
    """`text` with every control character, escape sequence introducer and bidi control
    shown as a visible escape (``\\x1b[2J`` stays readable, and inert).

    Args:
        text: text a server or an adapter supplied.
        one_line: fold each run of whitespace holding a tab or a newline into one space
            first (an error message shown in a table cell or on one line; the spaces of a
            line's own layout stay); a carriage return is still escaped, never folded.
    """
    if one_line:
        text = _FOLDED.sub(" ", text).strip()
    return _UNSAFE.sub(_escape, text)


def json_text(encoded: str) -> str:
    """JSON text from `json.dumps(..., ensure_ascii=False)` with the characters it leaves raw
    (DEL, C1 controls, bidi controls, separators) written as ``\\uXXXX``: the same JSON value,
    nothing in it a terminal acts on. They can only occur inside strings, where the escape is
    exact."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
