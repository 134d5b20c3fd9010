"""Message content in bulk: DATA dot-unstuffing and end detection, and the facts
an analyst wants about each message, in bounded memory.

Rules:
- DATA content ends only at CRLF "." CRLF (RFC 5321 4.1.1.4). A bare LF
  "\\n.\\n" does not end it: ending there would let a sender smuggle a second
  message past a server that disagrees (aiosmtpd's SMTP smuggling fix).
- Dot-unstuffing (RFC 5321 4.5.2) and the end search work on whole chunks with
  bytes.find and bytes.replace. The content is read as if it began with CRLF
  (the one that ended the DATA line); between chunks only a suffix that might
  begin the terminator or a stuffed dot is carried over.
- Content is hashed and scanned as it passes, never kept. Only the top header
  block is buffered, at most MAX_HEADER_BYTES; past that, header parsing stops
  (headers_truncated) and hashing goes on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from email.errors import HeaderParseError
from email.header import decode_header

END_OF_DATA = b"\r\n.\r\n"

MAX_HEADER_BYTES = 64 * 1024
# An RFC 2047 encoded word: =?charset?q-or-b?text?= (no "?" or space inside).
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([qQbB])\?([^?\s]*)\?=")
CHAIN_HEX_CHARS = 16


class DotDecoder:
    """Undoes dot-stuffing and finds the end of DATA, one chunk at a time.

    Strict (the default, for the observer): only CRLF "." CRLF ends DATA.
    bare_lf=True reads lines as Postfix's smtpd does (smtpd_forbid_bare_newline
    = no, Debian's 3.7 default): a bare LF ends a line too, so "\\n.\\n" and
    "\\n.\\r\\n" end DATA; what a persona must copy, not what a relay's
    observer may assume.
    """

    def __init__(self, *, bare_lf: bool = False) -> None:
        newline = b"\n" if bare_lf else b"\r\n"
        self._line_dot = newline + b"."
        self._newline = newline
        self._ends = (b"\n.\r\n", b"\n.\n") if bare_lf else (END_OF_DATA,)
        # Proper prefixes of a terminator, longest first: a chunk ending in one
        # of them may go on into a terminator, so that suffix waits for the
        # next chunk; nothing else can straddle two chunks.
        self._partial_ends = (b"\n.\r", b"\n.", b"\n") if bare_lf else (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
        # The line end of the DATA command: it makes a "." on the first
        # content line look like every other line start.
        self._carry = newline
        self._at_start = True

    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """Return (unstuffed content, bytes of chunk used, or -1 if DATA goes on).

        Content ends with the line end before the final "."; the bytes of
        chunk after the terminator are not content (the next commands).
        """
        carry = self._carry
        buffer = carry + chunk if carry else chunk
        # The terminator and a stuffed dot both begin with a line starting
        # with "."; most chunks have no "." at all (base64 never does), and a
        # one-byte search (memchr) is far cheaper than a longer one.
        first_dot = buffer.find(b".")
        line_dot = -1 if first_dot < 0 else buffer.find(self._line_dot, max(0, first_dot - len(self._newline)))
        end, end_length = -1, 0
        if line_dot >= 0:
            for terminator in self._ends:
                found = buffer.find(terminator, line_dot if len(self._ends) == 1 else max(0, line_dot - 1))
                if found >= 0 and (end < 0 or found < end):
                    end, end_length = found, len(terminator)
        if end >= 0:
            # keep the line end before the dot: with bare_lf the terminator
            # starts at its LF, after a CR that belongs to the content
            newline_bytes = 1 if len(self._ends) == 2 else 2
            content = buffer[: end + newline_bytes]
            used = end + end_length - len(carry)
            self._carry = b""
        else:
            kept = next((len(p) for p in self._partial_ends if buffer.endswith(p)), 0)
            content = buffer[: len(buffer) - kept] if kept else buffer
            self._carry = buffer[len(buffer) - kept :] if kept else b""
            used = -1
        if line_dot >= 0:
            # RFC 5321 4.5.2: a line's leading "." is removed, whatever follows.
            content = content.replace(self._line_dot, self._newline)
        if self._at_start and content:
            # the first content still begins with the line end we made up
            content = content[len(self._newline) :]
            self._at_start = False
        return content, used

    def flush(self) -> bytes:
        """The content still carried over when DATA was cut off (no end came)."""
        carry, self._carry = self._carry, b""
        if self._at_start:
            carry = carry[len(self._newline) :]
            self._at_start = False
        return carry


@dataclass(frozen=True, slots=True)
class MessageFacts:
    received_hops: int
    message_id: str | None
    subject: str | None
    size: int
    sha256: str
    chain: str
    headers_truncated: bool


class Hash(Protocol):
    """What the scanner needs of a hash: hashlib's sha256, or one that
    hashes elsewhere (looper.net.hashing)."""

    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


class MessageScanner:
    """Size, sha256 and header facts of one message's (unstuffed) content.

    chain names "this message through this relay": sha256 of the relay's
    address and the Message-ID; without a Message-ID, of the relay's address
    and the content with its top-level Received: fields removed (the one thing
    each pass through a relay changes). That second hash runs only when there
    is no Message-ID.

    With `keep_bytes`, the content itself is kept too (a copy: what it is fed
    may be a view of a buffer that is reused), up to that many bytes; past
    them, or after drop_kept(), none of it is. `new_hash` makes each SHA-256
    (given the bytes to start with).
    """

    def __init__(self, relay_ip: str, keep_bytes: int = 0,
                 new_hash: Callable[[bytes], Hash] = hashlib.sha256) -> None:
        self._new_hash = new_hash
        self._relay = relay_ip.encode("utf-8", "replace") + b"\0"
        self._keep_bytes = keep_bytes
        self._kept: list[bytes] | None = [] if keep_bytes > 0 else None
        self._kept_size = 0
        self._size = 0
        self._sha256 = new_hash(b"")
        # The header block read so far, after a made-up LF so that an empty
        # first line ends the block like any other; None once the block ended.
        self._header: bytearray | None = bytearray(b"\n")
        self._received_hops = 0
        self._message_id: str | None = None
        self._subject: str | None = None
        self._truncated = False
        self._chain: str | None = None
        self._chain_sha256: Hash | None = None
        self._facts: MessageFacts | None = None

    @property
    def header_bytes(self) -> int:
        """Bytes of the header block buffered now (for bounds checks)."""
        return 0 if self._header is None else len(self._header)

    @property
    def size(self) -> int:
        """Content bytes so far."""
        return self._size

    @property
    def kept_bytes(self) -> int:
        """Content bytes kept now (for the shared memory budget)."""
        return self._kept_size

    def drop_kept(self) -> None:
        """Keep none of the content (it is too big, or memory is short)."""
        self._kept, self._kept_size = None, 0

    def take_content(self) -> bytes | None:
        """The whole content, if it was all kept; the scanner lets go of it."""
        kept, self._kept, self._kept_size = self._kept, None, 0
        return b"".join(kept) if kept is not None else None

    def feed(self, content: bytes) -> None:
        if self._facts is not None:
            return  # the message was already reported
        if self._kept is not None:
            if self._kept_size + len(content) > self._keep_bytes:
                self.drop_kept()
            else:
                self._kept.append(bytes(content))
                self._kept_size += len(content)
        self._size += len(content)
        self._sha256.update(content)
        header = self._header
        if header is None:
            if self._chain_sha256 is not None:
                self._chain_sha256.update(content)
            return
        room = MAX_HEADER_BYTES - (len(header) - 1)
        taken = content[:room] if len(content) > room else content
        search_from = max(len(header) - 2, 0)
        header += taken
        end = _header_end(header, search_from)
        if end < 0:
            if len(header) - 1 < MAX_HEADER_BYTES:
                return  # the block may still end in a later chunk
            self._truncated = True
            end = header.rfind(b"\n") + 1  # parse the complete lines only
        self._header = None
        self._read_header_block(bytes(header[1:end]))
        if self._chain_sha256 is not None:
            self._chain_sha256.update(memoryview(header)[end:])
            self._chain_sha256.update(memoryview(content)[len(taken) :])

    def facts(self) -> MessageFacts:
        """The facts, once the content is over (later feeds are ignored)."""
        if self._facts is None:
            if self._header is not None:  # the content ended inside the headers
                block = bytes(self._header[1:])
                self._header = None
                self._read_header_block(block)
            chain = self._chain
            if chain is None:
                assert self._chain_sha256 is not None
                chain = self._chain_sha256.hexdigest()[:CHAIN_HEX_CHARS]
            self._facts = MessageFacts(
                received_hops=self._received_hops,
                message_id=self._message_id,
                subject=self._subject,
                size=self._size,
                sha256=self._sha256.hexdigest(),
                chain=chain,
                headers_truncated=self._truncated,
            )
        return self._facts

    def _read_header_block(self, block: bytes) -> None:
        fields = read_header_block(block)
        self._received_hops = fields.received_hops
        self._message_id = fields.message_id
        self._subject = fields.subject
        if fields.message_id is not None:
            digest = hashlib.sha256(self._relay + fields.message_id.encode("utf-8"))
            self._chain = digest.hexdigest()[:CHAIN_HEX_CHARS]
        else:
            self._chain_sha256 = self._new_hash(self._relay + fields.without_received)


def _header_end(header: bytearray, start: int) -> int:
    """Index just past the empty line that ends the header block, or -1."""
    ends = []
    lf = header.find(b"\n\n", start)
    if lf >= 0:
        ends.append(lf + 2)
    crlf = header.find(b"\n\r\n", start)
    if crlf >= 0:
        ends.append(crlf + 3)
    return min(ends) if ends else -1


@dataclass(frozen=True, slots=True)
class HeaderFields:
    received_hops: int
    message_id: str | None
    subject: str | None
    without_received: bytes  # the block, byte for byte, minus Received: fields


def read_header_block(block: bytes) -> HeaderFields:
    """Read a header block (RFC 5322 2.2): fields, folded lines, its empty line.

    A line starting with a space or tab continues the field before it; field
    names compare case-insensitively. The first Message-ID and Subject count.
    """
    received_hops = 0
    kept: list[bytes] = []
    in_received = False
    collecting: list[bytes] | None = None  # the value of a field being read
    message_id: list[bytes] | None = None
    subject: list[bytes] | None = None
    for line in _lines(block):
        if line[:1] in (b" ", b"\t"):
            if not in_received:
                kept.append(line)
            if collecting is not None:
                collecting.append(line)
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip().lower() if colon else b""
        in_received = name == b"received"
        collecting = None
        if in_received:
            received_hops += 1
            continue
        kept.append(line)
        if name == b"message-id" and message_id is None:
            collecting = message_id = [value]
        elif name == b"subject" and subject is None:
            collecting = subject = [value]
    return HeaderFields(
        received_hops=received_hops,
        message_id=(_unfold(message_id) or None) if message_id is not None else None,
        subject=_decode_subject(_unfold(subject)) if subject is not None else None,
        without_received=b"".join(kept),
    )


def _lines(block: bytes) -> list[bytes]:
    """Split after each LF, keeping line endings (bytes.splitlines would split at a bare CR)."""
    parts = block.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _unfold(value: list[bytes]) -> str:
    """A folded field value as one line of text (RFC 5322 2.2.3), stripped."""
    joined = b"".join(value).replace(b"\r\n", b"").replace(b"\n", b"")
    return joined.decode("utf-8", "replace").strip()


def _decode_subject(raw: str) -> str:
    """Decode RFC 2047 encoded words; keep the text around them, 8-bit too.

    Each word goes through email.header.decode_header on its own: given the
    whole value, it mangles 8-bit text (it re-encodes it as
    raw-unicode-escape) and its pattern is quadratic on hostile input.
    """
    pieces = []
    end = 0
    for word in _ENCODED_WORD.finditer(raw):
        between = raw[end : word.start()]
        if not (end and between.isspace()):  # RFC 2047 6.2: space between two words goes
            pieces.append(between)
        pieces.append(_decode_word(word.group()))
        end = word.end()
    pieces.append(raw[end:])
    return "".join(pieces)


def _decode_word(word: str) -> str:
    try:
        ((data, charset),) = decode_header(word)
        return data.decode(charset, "replace")
    except (LookupError, ValueError, HeaderParseError):  # unknown charset, bad base64
        return word
