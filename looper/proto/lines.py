"""The one line reader of every protocol core: SMTP commands and replies,
IMAP and POP3 commands (IMAP's literals through expect()/read_raw()).

It is fed the chunks a connection reads, one at a time, and gives back one
line per call, together with where in the chunk reading should go on, so
that the caller can switch to another way of reading (DATA content, a BDAT
chunk, an IMAP literal, bytes held back while a reply is awaited) at the
exact byte where the line ended. It keeps only the start of a line that a
chunk cut in two: never more than max_line_bytes, whatever it is fed.

Policy, fixed when it is made:
- `ending`: Ending.LF (an LF ends a line and a CR before it is dropped, as
  Postfix, Exim and sendmail read SMTP) or Ending.CRLF (only CR LF ends a
  line; a bare LF is part of it, as RFC 5321 2.3.8 and RFC 3501 have it).
- `max_line_bytes`: the most a line may hold before its LF, a CR before
  that LF included. RFC 5321 4.5.3.1.4 counts 512 octets with the CR LF for
  a command line (510 without it), 1000 for a text line.
- `overlong`: what a line longer than that becomes. Overlong.REFUSE: the
  read says Refused.TOO_LONG (the caller answers "500 line too long",
  Dovecot's BAD, or gives up). Overlong.TRUNCATE: its first max_line_bytes
  bytes are the line (Postfix's smtpd, line_length_limit). Either way the
  rest of it, up to and including its line end, is discarded, and the
  next read starts after that.
- A caller may also forbid bytes in a line (the observer refuses a command
  line with control bytes in it): the read says Refused.FORBIDDEN_BYTE, and
  the line is discarded in the same way.

A line is refused at the first byte that breaks a rule, wherever the reads
cut it (a forbidden byte before the limit makes it FORBIDDEN_BYTE, one past
the limit does not count): fed whole or a byte at a time, a stream reads as
the same lines.

`expect(n)` makes the next n bytes raw: `read_raw` hands them out as they
come, line ends and all (a BDAT chunk, an IMAP literal); then lines again.
"""

from __future__ import annotations

import enum
import re

_LF = 0x0A
_CR = 0x0D


class Ending(enum.Enum):
    LF = "LF, a CR before it dropped"
    CRLF = "CR LF only"


class Overlong(enum.Enum):
    REFUSE = "refuse"
    TRUNCATE = "truncate"
    SPLIT = "split"  # refused, and what follows the limit is read as the next line (Exim)


class Refused(enum.Enum):
    """A line that is not given to the caller, and why."""

    TOO_LONG = "line too long"
    FORBIDDEN_BYTE = "forbidden byte in a line"


class LineReader:
    """Lines out of a stream of chunks; see the module docstring."""

    __slots__ = ("max_line_bytes", "ending", "overlong", "_partial", "_skipping", "_skip_after_cr", "_raw_left")

    def __init__(
        self, max_line_bytes: int, *, ending: Ending = Ending.LF, overlong: Overlong = Overlong.REFUSE
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be at least 1: {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        self.ending = ending
        self.overlong = overlong
        self._partial = bytearray()  # the start of a line a chunk cut in two
        self._skipping = False  # discarding the rest of a refused or truncated line
        self._skip_after_cr = False  # and the last byte discarded was a CR (Ending.CRLF)
        self._raw_left = 0

    @property
    def buffered(self) -> int:
        """Bytes held now: the start of a line that is not complete yet."""
        return len(self._partial)

    @property
    def raw_left(self) -> int:
        """Raw bytes still expected (see expect)."""
        return self._raw_left

    def take_partial(self) -> bytes:
        """The start of a line not complete yet, given up as it is (a
        server that answers what it has when the client goes quiet)."""
        partial = bytes(self._partial)
        self._partial.clear()
        return partial.removesuffix(b"\r")

    def clear(self) -> None:
        """Forget everything read so far (TLS starts: nothing before it counts)."""
        self._partial.clear()
        self._skipping = self._skip_after_cr = False
        self._raw_left = 0

    def head(self, data: bytes, start: int, size: int) -> bytes:
        """The first `size` bytes of the line being read, as far as they are
        known from what is held and data[start:], and not past an LF: for a
        check that a line must pass before its end arrives (an SMTP reply's
        "ddd ")."""
        if self._partial:
            held = bytes(self._partial[:size])
            held += data[start : start + size - len(held)]
        else:
            held = data[start : start + size]
        lf = held.find(b"\n")
        return held if lf < 0 else held[:lf]

    def read_line(
        self, data: bytes, start: int = 0, *, forbidden: re.Pattern[bytes] | None = None
    ) -> tuple[bytes | Refused | None, int]:
        """The next line from what is held and data[start:], without its
        line end, and the position in data after what was used.

        (None, len(data)): data ended inside a line, which is held (or,
        after a refused line, discarded) until the next call. `forbidden`:
        bytes the line may not contain (searched before its LF).
        """
        if self._raw_left:
            raise RuntimeError("read_line() while raw bytes are expected")
        if self._skipping:
            start = self._skip(data, start)
            if start < 0:
                return None, len(data)
        partial = self._partial
        limit_at = start + self.max_line_bytes - len(partial)  # the first byte past the limit
        if self.ending is Ending.LF:
            lf = data.find(b"\n", start, limit_at + 1)
        else:
            lf = self._find_end(data, start, min(len(data), limit_at + 1))
        end = len(data) if lf < 0 else lf
        if forbidden is not None:
            found = forbidden.search(data, start, min(end, limit_at))
            if found is not None:
                self._discard_line()
                return Refused.FORBIDDEN_BYTE, found.start()
        if end > limit_at:
            truncated = bytes(partial) + data[start:limit_at] if self.overlong is Overlong.TRUNCATE else None
            if self.overlong is Overlong.SPLIT:
                partial.clear()
                return Refused.TOO_LONG, limit_at
            self._discard_line()
            return (Refused.TOO_LONG if truncated is None else truncated), limit_at
        if lf < 0:
            partial += memoryview(data)[start:]
            return None, len(data)
        line = data[start:lf]
        if partial:
            line = bytes(partial) + line
            partial.clear()
        if line.endswith(b"\r"):  # always there with Ending.CRLF
            line = line[:-1]
        return line, lf + 1

    def expect(self, size: int) -> None:
        """The next `size` bytes are raw: read them with read_raw."""
        if self._partial:
            raise RuntimeError("expect() in the middle of a line")
        if size < 0:
            raise ValueError(f"a negative byte count: {size}")
        self._raw_left = size

    def read_raw(self, data: bytes, start: int = 0) -> tuple[bytes, int]:
        """Up to raw_left bytes of data[start:], and the position after them
        (data itself, not a copy, when that is all of it)."""
        stop = min(len(data), start + self._raw_left)
        self._raw_left -= stop - start
        return data[start:stop], stop

    # -- inside -----------------------------------------------------------------

    def _find_end(self, data: bytes, start: int, stop: int) -> int:
        """Ending.CRLF: the index of the LF that ends the line in data[start:stop], or -1."""
        if start < stop and data[start] == _LF and self._partial.endswith(b"\r"):
            return start
        crlf = data.find(b"\r\n", start, stop)
        return crlf + 1 if crlf >= 0 else -1

    def _discard_line(self) -> None:
        """Drop the line read so far; the next read skips the rest of it.
        (It is never cut between the CR and the LF of its end: that LF
        would have ended it.)"""
        self._partial.clear()
        self._skipping = True
        self._skip_after_cr = False

    def _skip(self, data: bytes, start: int) -> int:
        """Discard up to the line end; the position after it, or -1 if data ended first."""
        if self.ending is Ending.LF:
            lf = data.find(b"\n", start)
        elif start < len(data) and data[start] == _LF and self._skip_after_cr:
            lf = start
        else:
            crlf = data.find(b"\r\n", start)
            lf = crlf + 1 if crlf >= 0 else -1
        if lf < 0:
            if len(data) > start:
                self._skip_after_cr = data[-1] == _CR
            return -1
        self._skipping = self._skip_after_cr = False
        return lf + 1
