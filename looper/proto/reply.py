"""SMTP replies: one type, one parser for reply lines, one formatter.

RFC 5321 4.2: a reply is one or more lines. Every line but the last is
"ddd-text"; the last is "ddd text" or a bare "ddd". All lines should carry
the same code; a reply's code is its first line's, and differing codes on
later lines are tolerated, not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Three digits, the first 1-5 (RFC 5321 4.2.1), then "-" (more lines follow),
# " " or nothing (last line).
_REPLY_LINE = re.compile(rb"([1-5][0-9][0-9])(?:([ -])(.*))?\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole reply: its code and the text of each line, without codes."""

    code: int
    lines: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The lines' texts joined with "\\n", as events report them."""
        return "\n".join(self.lines)

    def to_bytes(self) -> bytes:
        """The reply on the wire: "ddd-" on every line but the last, "ddd "."""
        lines = self.lines or ("",)
        last = len(lines) - 1
        return "".join(
            f"{self.code:03d}{' ' if i == last else '-'}{line}\r\n"
            for i, line in enumerate(lines)
        ).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ReplyLine:
    """One parsed reply line."""

    code: int
    final: bool
    text: bytes


def parse_reply_line(line: bytes) -> ReplyLine | None:
    """Parse one reply line given without its line ending; None if it is not one."""
    match = _REPLY_LINE.match(line)
    if match is None:
        return None
    code, separator, text = match.groups()
    return ReplyLine(int(code), separator != b"-", text or b"")
