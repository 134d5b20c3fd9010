"""The path of MAIL FROM: and RCPT TO: (RFC 5321 4.1.2): the one parser, for
the emulated server (strict) and the observer of a splice (tolerant).

Both read as Postfix does: a space after the colon is tolerated, and so is
an address without its angle brackets (up to the first space); what
follows the path are its parameters, words split at ASCII white space.
Where they differ:
- strict (the emulated server decides on it, and answers as Postfix would):
  only spaces and tabs may follow the colon; "<" without its ">", a NUL,
  or a space outside a quoted local part make the address malformed (None),
  and so does an empty path;
- tolerant (the observer reports what a client said, whatever the relay's
  server makes of it): any ASCII white space may follow the colon, an
  unclosed "<" runs to the end, and nothing is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass

from looper.proto.text import words

_ASCII_SPACE = " \t\n\r\x0b\x0c"  # bytes.split()'s white space


@dataclass(frozen=True, slots=True)
class MailPath:
    raw: str  # what followed the keyword, less the blanks before it: the path and its parameters
    address: str | None  # without the angle brackets; None: malformed (strict only)
    params: list[str]

    @property
    def as_sent(self) -> str:
        """The path as the client wrote it, brackets and all, without its
        parameters (sendmail echoes it)."""
        if self.raw.startswith("<"):
            return self.raw[: self.raw.find(">") + 1]
        first = words(self.raw)[:1]  # none: only white space the command line kept (it strips its own ends)
        return first[0] if first else self.raw


def parse_path(argument: str, keyword: str, *, strict: bool) -> MailPath | None:
    """The path after `keyword` ("FROM:" or "TO:", any case) at the start of
    a MAIL or RCPT command's argument; None if the keyword is not there."""
    if argument[: len(keyword)].upper() != keyword:
        return None
    raw = argument[len(keyword) :].lstrip(" \t" if strict else _ASCII_SPACE)
    if raw.startswith("<"):
        close = raw.find(">")
        if close < 0:
            if strict:
                return MailPath(raw, None, [])
            address, params = raw[1:], ""
        else:
            address, params = raw[1:close], raw[close + 1 :]
    else:
        address, _, params = raw.partition(" ")
    if strict and (not raw or "\0" in address or (" " in address and '"' not in address)):
        return MailPath(raw, None, words(params))
    return MailPath(raw, address, words(params))
