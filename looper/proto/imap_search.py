"""IMAP SEARCH (RFC 3501 6.4.4): search keys into one predicate over
(sequence number, message), evaluated for real on the session's messages.

Dovecot's texts for bad keys: "Unknown argument KEY", "Missing search
parameters", "Invalid search date parameter"; a sequence number past the
last message matches nothing (no error); any CHARSET is accepted.
"""

from __future__ import annotations

import email.utils
from datetime import datetime
from email.header import decode_header, make_header
from typing import Callable, Protocol, Sequence

from looper.proto.imap_fetch import Part
from looper.proto.imap_parse import ParseError, Token, astring, in_set, parse_set


class SessionMessage(Protocol):
    """What a search reads of a message (imap.SessionMessage has it)."""

    uid: int
    content: bytes
    flags: set[str]
    internaldate: datetime

    @property
    def parsed(self) -> Part: ...


class SessionFolder(Protocol):
    @property
    def messages(self) -> Sequence[SessionMessage]: ...

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Matcher = Callable[[int, SessionMessage], bool]


class SearchParser:
    """Search keys (RFC 3501 6.4.4) into one predicate over (seq, message)."""

    def __init__(self, args: list[Token], folder: SessionFolder) -> None:
        self.args = args
        self.pos = 0
        self.folder = folder

    def parse_all(self) -> Matcher:
        keys = []
        while self.pos < len(self.args):
            keys.append(self.key())
        return lambda seq, m: all(k(seq, m) for k in keys)

    def _next(self) -> Token:
        if self.pos >= len(self.args):
            raise ParseError("Missing search parameters")
        token = self.args[self.pos]
        self.pos += 1
        return token

    def _string(self) -> str:
        value = astring(self._next())
        if value is None:
            raise ParseError("Invalid arguments.")
        return value

    def _date(self) -> tuple[int, int, int]:
        text = self._string()
        parsed = _parse_date(text)
        if parsed is None:
            raise ParseError("Invalid search date parameter")
        return parsed

    def key(self) -> Matcher:
        token = self._next()
        if isinstance(token, list):
            inner = SearchParser(token, self.folder)
            return inner.parse_all()
        if isinstance(token, bytes):
            raise ParseError("Invalid arguments.")
        upper = token.upper()
        flag_keys = {
            "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
            "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True), "UNANSWERED": ("\\Answered", False),
            "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
            "UNSEEN": ("\\Seen", False),
        }
        if upper == "ALL" or upper == "OLD":
            return lambda seq, m: True
        if upper in ("NEW", "RECENT"):
            return lambda seq, m: False
        if upper in flag_keys:
            flag, present = flag_keys[upper]
            return lambda seq, m: (flag in m.flags) == present
        if upper in ("KEYWORD", "UNKEYWORD"):
            word = self._string()
            present = upper == "KEYWORD"
            return lambda seq, m: (word in m.flags) == present
        if upper in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            needle = self._string().lower()
            name = upper.lower()
            return lambda seq, m: needle in _header_text(m, name)
        if upper == "HEADER":
            name = self._string().lower()
            needle = self._string().lower()
            return lambda seq, m: (name in m.parsed.fields) and needle in _header_text(m, name)
        if upper == "BODY":
            needle = self._string().lower().encode("utf-8")
            return lambda seq, m: needle in m.parsed.body.lower()
        if upper == "TEXT":
            needle = self._string().lower().encode("utf-8")
            return lambda seq, m: needle in m.content.lower()
        if upper in ("SINCE", "BEFORE", "ON"):
            day = self._date()
            return _date_matcher(upper, day, lambda m: m.internaldate)
        if upper in ("SENTSINCE", "SENTBEFORE", "SENTON"):
            day = self._date()
            return _date_matcher(upper[4:], day, _sent_date)
        if upper in ("LARGER", "SMALLER"):
            text = self._string()
            if not text.isdigit():
                raise ParseError("Invalid size")
            size = int(text)
            if upper == "LARGER":
                return lambda seq, m: len(m.content) > size
            return lambda seq, m: len(m.content) < size
        if upper == "UID":
            text = self._next()
            largest = self.folder.messages[-1].uid if self.folder.messages else 1
            ranges = parse_set(text, largest) if isinstance(text, str) else None
            if ranges is None:
                raise ParseError("Invalid messageset")
            return lambda seq, m: in_set(m.uid, ranges)
        if upper == "NOT":
            inner = self.key()
            return lambda seq, m: not inner(seq, m)
        if upper == "OR":
            left, right = self.key(), self.key()
            return lambda seq, m: left(seq, m) or right(seq, m)
        ranges = parse_set(token, len(self.folder.messages))
        if ranges is not None:
            return lambda seq, m: in_set(seq, ranges)
        raise ParseError(f"Unknown argument {token}")


def _header_text(message: SessionMessage, name: str) -> str:
    values = message.parsed.fields.get_all(name) or []
    out = []
    for value in values:
        raw = str(value)
        try:
            out.append(str(make_header(decode_header(raw))))
        except Exception:
            out.append(raw)
    return " ".join(out).lower()


def _sent_date(message: SessionMessage) -> datetime | None:
    value = message.parsed.fields.get("date")
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None


def _date_matcher(how: str, day: tuple[int, int, int], get: Callable[[SessionMessage], datetime | None]) -> Matcher:
    def match(seq: int, message: SessionMessage) -> bool:
        when = get(message)
        if when is None:
            return False
        found = (when.year, when.month, when.day)
        if how == "SINCE":
            return found >= day
        if how == "BEFORE":
            return found < day
        return found == day

    return match


def _parse_date(text: str) -> tuple[int, int, int] | None:
    parts = text.split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
        return None
    month = parts[1].capitalize()
    if month not in _MONTHS:
        return None
    day, year = int(parts[0]), int(parts[2])
    if not 1 <= day <= 31 or not 1 <= year <= 9999:
        return None
    return year, _MONTHS.index(month) + 1, day
