"""The IMAP command grammar (RFC 3501 9): a command's arguments as tokens.

A whole command arrives as one byte string, literals inlined as they came
on the wire (`{n}` CRLF then n octets; the machine has already answered
"+ OK" to each synchronizing one). Tokens:
- str: an atom, NIL included (a fetch attribute keeps its [section]<o.n>,
  spaces and parentheses inside the brackets too: BODY[HEADER.FIELDS (A B)]);
- bytes: a string, quoted or literal;
- list: a parenthesized list.

Sequence sets are atoms; `parse_set` reads them.
"""

from __future__ import annotations

import re

MAX_DEPTH = 20  # parenthesized lists nest no deeper (search keys, BODYSTRUCTURE-like junk)

_LITERAL = re.compile(rb"\{(\d{1,10})(\+?)\}\r?\n")
_ATOM_END = b" ()\r\n"
_SET_ITEM = re.compile(r"(\d+|\*)(?::(\d+|\*))?\Z")


class ParseError(Exception):
    """The arguments do not follow the grammar: `reason` is Dovecot's word for it."""

    def __init__(self, reason: str = "Invalid arguments.") -> None:
        super().__init__(reason)
        self.reason = reason


Token = str | bytes | list


def tokens(data: bytes) -> list[Token]:
    """The tokens of data (a command's arguments), top level."""
    items, pos = _read_list(data, 0, None, 0)
    return items


def _read_list(data: bytes, pos: int, closer: int | None, depth: int) -> tuple[list[Token], int]:
    if depth > MAX_DEPTH:
        raise ParseError("Too deep nesting.")
    items: list[Token] = []
    size = len(data)
    while True:
        while pos < size and data[pos] == 0x20:
            pos += 1
        if pos >= size:
            if closer is not None:
                raise ParseError("Missing ')'")
            return items, pos
        byte = data[pos]
        if byte == 0x29:  # )
            if closer is None:
                raise ParseError("Unexpected ')'")
            return items, pos + 1
        if byte == 0x28:  # (
            inner, pos = _read_list(data, pos + 1, 0x29, depth + 1)
            items.append(inner)
        elif byte == 0x22:  # "
            value, pos = _read_quoted(data, pos + 1)
            items.append(value)
        elif byte == 0x7B:  # {
            found = _LITERAL.match(data, pos)
            if found is None:
                raise ParseError("Invalid literal")
            start = found.end()
            length = int(found.group(1))
            if start + length > size:
                raise ParseError("Literal ends early")
            items.append(data[start : start + length])
            pos = start + length
        elif byte in (0x0D, 0x0A):
            raise ParseError("Unexpected line end")
        else:
            atom, pos = _read_atom(data, pos)
            items.append(atom)
        if pos < size and data[pos] not in (0x20, 0x29):
            raise ParseError("Missing space")


def _read_quoted(data: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    size = len(data)
    while pos < size:
        byte = data[pos]
        if byte == 0x22:
            return bytes(out), pos + 1
        if byte == 0x5C:  # backslash
            pos += 1
            if pos >= size or data[pos] not in (0x22, 0x5C):
                raise ParseError("Invalid escape")
            byte = data[pos]
        elif byte in (0x0D, 0x0A):
            raise ParseError("Line end in a quoted string")
        out.append(byte)
        pos += 1
    raise ParseError("Missing '\"'")


def _read_atom(data: bytes, pos: int) -> tuple[str, int]:
    start = pos
    size = len(data)
    while pos < size and data[pos] not in _ATOM_END:
        if data[pos] == 0x5B:  # [: a section, taken whole up to its ]
            close = data.find(b"]", pos)
            if close < 0 or data.find(b"\n", pos, close) >= 0:
                raise ParseError("Missing ']'")
            pos = close + 1
            continue
        if data[pos] in (0x22, 0x7B) or data[pos] < 0x20 or data[pos] == 0x7F:
            raise ParseError("Invalid characters in atom")
        pos += 1
    return data[start:pos].decode("utf-8", "replace"), pos


def astring(token: Token) -> str | None:
    """An astring argument (atom or string) as text; None if it is a list."""
    if isinstance(token, bytes):
        return token.decode("utf-8", "replace")
    if isinstance(token, str):
        return token
    return None


def parse_set(text: str, largest: int) -> list[tuple[int, int]] | None:
    """A sequence set (RFC 3501 9, sequence-set) as ranges, `*` being
    `largest`; None if it is not one."""
    ranges = []
    for item in text.split(","):
        found = _SET_ITEM.match(item)
        if found is None:
            return None
        low = largest if found.group(1) == "*" else int(found.group(1))
        high_text = found.group(2)
        high = low if high_text is None else (largest if high_text == "*" else int(high_text))
        if low == 0 or high == 0 or low > 0xFFFFFFFF or high > 0xFFFFFFFF:
            return None
        ranges.append((min(low, high), max(low, high)))
    return ranges


def in_set(number: int, ranges: list[tuple[int, int]]) -> bool:
    return any(low <= number <= high for low, high in ranges)


def format_set(numbers: list[int]) -> str:
    """UIDs as a compact set: 1:3,7."""
    out: list[str] = []
    run_start = previous = None
    for number in numbers:
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if run_start is not None:
            out.append(str(run_start) if run_start == previous else f"{run_start}:{previous}")
        run_start = previous = number
    if run_start is not None:
        out.append(str(run_start) if run_start == previous else f"{run_start}:{previous}")
    return ",".join(out)
