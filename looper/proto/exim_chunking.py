"""What Exim 4.96 makes of a QUIT that comes between two BDAT chunks.

Exim reads a chunked message through its header reader, one character
at a time; a QUIT between chunks is answered 221 and then reaches that
reader as the end of input. Where the reader stood decides what follows
(recorded from Debian 12's Exim, tests/data/exim/bdat_quit_*.json):

- LOST: the reader wanted a character of a line, or was in the body: the
  message is lost, `421 Lost incoming connection`, and the connection
  closes (nothing sent, mid-line, after the empty line ending the header).
- ACCEPTED: it had just read a whole header line and was looking at the
  next character for a folded continuation: the end of input there ends
  the message, which is accepted (`250 OK id=...`, after the 221), and the
  session goes on.
- DEAF: the line it had just read was no header (so the body starts), or
  the content ended in a bare CR: the reader asks for another chunk, which
  never comes; Exim answers nothing more until its command timeout, then
  says `421 Lost incoming connection` and closes.
"""

from __future__ import annotations

import enum
import re

_LINE_END = re.compile(rb"\r\n|\n|\r")
# Exim's header_maxsize: a longer header section had the message refused
# before any QUIT (not modelled); reading stops there.
HEADER_MAXSIZE = 1024 * 1024


class QuitBetweenChunks(enum.Enum):
    LOST = "lost"
    ACCEPTED = "accepted"
    DEAF = "deaf"


def quit_between_chunks(content: bytes) -> QuitBetweenChunks:
    """The outcome for the chunked content received before the QUIT."""
    position = 0
    while position < HEADER_MAXSIZE:
        end = _line_end(content, position)
        if end is None:
            # The reader wanted a character of this line. A bare CR at the
            # very end made it read once more after the end of input.
            return QuitBetweenChunks.DEAF if content.endswith(b"\r") else QuitBetweenChunks.LOST
        line_end, after = end
        if line_end == position:
            return QuitBetweenChunks.LOST  # the empty line: the body was being read
        # A header line folds while the next line starts with a blank.
        while after < len(content) and content[after] in b" \t":
            if after >= HEADER_MAXSIZE:
                return QuitBetweenChunks.LOST
            end = _line_end(content, after)
            if end is None:
                return QuitBetweenChunks.DEAF if content.endswith(b"\r") else QuitBetweenChunks.LOST
            _, after = end
        if after > HEADER_MAXSIZE:
            return QuitBetweenChunks.LOST
        is_header = _is_header_line(content[position:after])  # folds and all, as Exim holds it
        if after == len(content):  # the look for a fold met the end of input
            return QuitBetweenChunks.ACCEPTED if is_header else QuitBetweenChunks.DEAF
        if not is_header:
            return QuitBetweenChunks.LOST  # the body holds the rest, then meets the end
        position = after
    return QuitBetweenChunks.LOST


def _line_end(content: bytes, position: int) -> tuple[int, int] | None:
    """Where the line from `position` ends and the next starts: LF, CRLF,
    or a CR followed by anything else (Exim ends a line there too); None
    when the content ends first (a bare CR last: its follower is unread)."""
    found = _LINE_END.search(content, position)
    if found is None or found.group() == b"\r" and found.end() == len(content):
        return None
    return found.start(), found.end()


def _is_header_line(line: bytes) -> bool:
    """Exim's test: printable characters other than the colon, blanks,
    then a colon; a line that starts with a blank is none."""
    if not line or line[:1].isspace():
        return False
    index = 0
    while index < len(line) and 0x21 <= line[index] <= 0x7E and line[index] != 0x3A:
        index += 1
    while index < len(line) and line[index : index + 1].isspace():
        index += 1
    return index < len(line) and line[index] == 0x3A
