"""What IMAP FETCH derives from a message: ENVELOPE, BODYSTRUCTURE, BODY,
and the bytes of a section (RFC 3501 6.4.5, 7.4.2), formed as Dovecot 2.3
forms them (checked against dovecot 2.3.19.1: see tests/test_imap_machine.py).

The MIME tree is cut from the raw CRLF bytes (a part's octets are exactly
what BODY[n] sends); its header fields are read with the standard
library's email package.

Dovecot's forms, as verified:
- ENVELOPE strings are the raw header values, unfolded, never decoded;
  sender and reply-to default to from; an absent field is NIL.
- BODYSTRUCTURE of a leaf: type subtype (params) id description encoding
  size [lines, for text/* and message/rfc822] md5 disposition language
  location; of a multipart: parts subtype (params) disposition language
  location. BODY is the same without the extension data.
- A text part's line count counts its LFs; a part's size ends before the
  CRLF that precedes its closing boundary.
- A section that does not exist is empty ({0}), not an error.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)
# An atom-safe string: printable ASCII, no quote or backslash needing a literal.
_NEEDS_LITERAL = re.compile(rb'[\x00\r\n\x80-\xff"\\\\]')
MAX_MIME_DEPTH = 20  # Dovecot's message_parser stops nesting there too (roughly); bounded either way
MAX_MIME_PARTS = 500


def nstring(value: bytes | str | None) -> bytes:
    """NIL, a quoted string, or a literal when the value needs one (RFC 3501
    4.3). As Dovecot: a value with a quote or backslash is a literal too
    (it never escapes), and a folded one is a literal with its CR LFs
    removed."""
    if value is None:
        return b"NIL"
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if _NEEDS_LITERAL.search(raw):
        raw = raw.replace(b"\r", b"").replace(b"\n", b"")
        return b"{%d}\r\n" % len(raw) + raw
    return b'"' + raw + b'"'


def literal(raw: bytes) -> bytes:
    return b"{%d}\r\n" % len(raw) + raw


@dataclass(slots=True)
class Part:
    """One MIME entity: its header (with the blank line that ends it) and body."""

    header: bytes
    body: bytes
    fields: Message
    children: list[Part] = field(default_factory=list)  # multipart's parts
    message: Part | None = None  # message/rfc822's enclosed message

    @property
    def maintype(self) -> str:
        return self.fields.get_content_maintype()

    @property
    def subtype(self) -> str:
        return self.fields.get_content_subtype()


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """The header (its blank line included) and the body."""
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw, b""
    return raw[: end + 4], raw[end + 4 :]


def parse(raw: bytes, *, default_type: str = "text/plain", depth: int = 0, budget: list[int] | None = None) -> Part:
    """The MIME tree of a message (or a part)."""
    budget = [MAX_MIME_PARTS] if budget is None else budget
    header, body = split_header(raw)
    fields = _HEADER_PARSER.parsebytes(header)
    if "content-type" not in fields:
        fields.set_default_type(default_type)
    part = Part(header, body, fields)
    if depth >= MAX_MIME_DEPTH or budget[0] <= 0:
        return part
    budget[0] -= 1
    if part.maintype == "multipart":
        boundary = fields.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            child_type = "message/rfc822" if part.subtype == "digest" else "text/plain"
            for chunk in _split_multipart(body, boundary.encode("utf-8", "surrogateescape")):
                part.children.append(parse(chunk, default_type=child_type, depth=depth + 1, budget=budget))
    elif part.maintype == "message" and part.subtype == "rfc822":
        part.message = parse(body, depth=depth + 1, budget=budget)
    return part


class Derived:
    """A message's MIME tree and what FETCH makes of it, each computed once
    and read only from then on (safe to share between sessions)."""

    __slots__ = ("part", "_envelope", "_structure", "_body")

    def __init__(self, content: bytes) -> None:
        self.part = parse(content)
        self._envelope: bytes | None = None
        self._structure: bytes | None = None
        self._body: bytes | None = None

    def envelope(self) -> bytes:
        if self._envelope is None:
            self._envelope = envelope(self.part)
        return self._envelope

    def body_structure(self, *, extended: bool = True) -> bytes:
        if extended:
            if self._structure is None:
                self._structure = body_structure(self.part)
            return self._structure
        if self._body is None:
            self._body = body_structure(self.part, extended=False)
        return self._body


# The bait's messages, derived once for every session: the store never
# changes, and parsing them anew at each login was most of an IMAP session's
# time (bench/imap.py's profile: the email package and ENVELOPE, 80%).
# Keyed by the content itself (a bytes object hashes once); bounded, since
# a store is a few dozen messages.
MAX_SHARED = 1024
_shared: dict[bytes, Derived] = {}


def shared_derived(content: bytes) -> Derived:
    derived = _shared.get(content)
    if derived is None:
        if len(_shared) >= MAX_SHARED:
            _shared.pop(next(iter(_shared)))
        derived = _shared[content] = Derived(content)
    return derived


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between the boundary lines (RFC 2046 5.1.1): each ends
    before the CRLF that precedes the next delimiter."""
    delimiter = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|$)")
    parts: list[bytes] = []
    start: int | None = None
    for found in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : found.start()])
        if found.group(1):
            return parts
        start = found.end()
        if len(parts) >= MAX_MIME_PARTS:
            return parts
    if start is not None:
        parts.append(body[start:])
    return parts


# -- ENVELOPE -------------------------------------------------------------------


def _raw_field(fields: Message, name: str, *, unfold: bool = True) -> str | None:
    """A header field's raw value (never decoded); folded, it keeps its
    CR LF unless `unfold` (nstring then makes it a literal without them)."""
    value = fields.get(name)
    if value is None:
        return None
    text = str(value)
    if unfold:
        text = text.replace("\r", "").replace("\n", "")
    else:
        text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return text.strip() or None


def _addresses(fields: Message, name: str) -> bytes:
    value = _raw_field(fields, name)
    if value is None:
        return b"NIL"
    out = []
    for item in parse_addresses(value):
        out.append(b"(" + b" ".join(nstring(v) for v in item) + b")")
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def parse_addresses(value: str) -> list[tuple[str | None, None, str | None, str | None]]:
    """An address list (RFC 5322 3.4) as ENVELOPE's (name, adl, mailbox,
    host) tuples, raw as Dovecot gives them: groups open with (NIL NIL
    name NIL) and close with (NIL NIL NIL NIL); an address without a
    domain gets "MISSING_DOMAIN"."""
    out: list[tuple[str | None, None, str | None, str | None]] = []
    in_group = False
    for chunk, end in _split_top(value):
        if end == ":":
            out.append((None, None, _phrase(chunk) or "", None))
            in_group = True
            continue
        if chunk.strip():
            mailbox = _mailbox(chunk)
            if mailbox is not None:
                out.append(mailbox)
        if end == ";" and in_group:
            out.append((None, None, None, None))
            in_group = False
    if in_group:
        out.append((None, None, None, None))
    return out


def _split_top(value: str) -> list[tuple[str, str]]:
    """The chunks between top-level , : ; (outside quotes, comments, <>),
    each with the separator that ended it ("" at the end)."""
    chunks: list[tuple[str, str]] = []
    current: list[str] = []
    depth = 0
    quoted = angle = False
    escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
            continue
        if char == "\\" and (quoted or depth):
            current.append(char)
            escaped = True
            continue
        if quoted:
            quoted = char != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
        elif char == '"':
            quoted = True
        elif char == "(":
            depth = 1
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char in ",:;" and not angle:
            chunks.append(("".join(current), char))
            current = []
            continue
        current.append(char)
    chunks.append(("".join(current), ""))
    return chunks[:MAX_MIME_PARTS]


def _phrase(text: str) -> str | None:
    """A display name: comments dropped, quoted strings unquoted, white space single."""
    words = []
    for found in re.finditer(r'"((?:[^"\\]|\\.)*)"|\((?:[^()\\]|\\.)*\)|(\S+)', text):
        if found.group(1) is not None:
            words.append(re.sub(r"\\(.)", r"\1", found.group(1)))
        elif found.group(2) is not None:
            words.append(found.group(2))
    return " ".join(words) or None


def _mailbox(chunk: str) -> tuple[str | None, None, str | None, str | None] | None:
    angle = re.search(r"<([^>]*)>?", chunk)
    if angle is not None:
        name = _phrase(chunk[: angle.start()])
        address = angle.group(1)
    else:
        comment = re.search(r"\(((?:[^()\\]|\\.)*)\)", chunk)
        name = comment.group(1) if comment else None
        address = re.sub(r"\((?:[^()\\]|\\.)*\)", "", chunk)
    address = address.strip()
    if ":" in address and address.startswith("@"):  # an obsolete source route
        address = address.split(":", 1)[1]
    local, at, host = address.rpartition("@")
    if not at:
        local, host = address, ""
    local, host = local.strip(), host.strip()
    if not local and not host:
        return None if name is None else (name, None, "MISSING_MAILBOX", "MISSING_DOMAIN")
    return (name, None, local or "MISSING_MAILBOX", host or "MISSING_DOMAIN")


def envelope(part: Part) -> bytes:
    fields = part.fields
    sender = "sender" if "sender" in fields else "from"
    reply_to = "reply-to" if "reply-to" in fields else "from"
    items = [
        nstring(_raw_field(fields, "date", unfold=False)),
        nstring(_raw_field(fields, "subject", unfold=False)),
        _addresses(fields, "from"),
        _addresses(fields, sender),
        _addresses(fields, reply_to),
        _addresses(fields, "to"),
        _addresses(fields, "cc"),
        _addresses(fields, "bcc"),
        nstring(_raw_field(fields, "in-reply-to", unfold=False)),
        nstring(_raw_field(fields, "message-id", unfold=False)),
    ]
    return b"(" + b" ".join(items) + b")"


# -- BODYSTRUCTURE and BODY -----------------------------------------------------------


def _params(fields: Message) -> bytes:
    params = fields.get_params() or [("", "")]
    pairs = [(k, v) for k, v in params[1:]]  # the first is the type itself
    if not pairs and fields.get_content_maintype() == "text":
        pairs = [("charset", "us-ascii")]
    if not pairs:
        return b"NIL"
    return b"(" + b" ".join(nstring(k) + b" " + nstring(_unquote(v)) for k, v in pairs) + b")"


def _unquote(value: object) -> str:
    if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
        value = value[2]
    return email.utils.unquote(str(value))


def _disposition(fields: Message) -> bytes:
    value = fields.get("content-disposition")
    if value is None:
        return b"NIL"
    params = fields.get_params(header="content-disposition") or []
    if not params:
        return b"NIL"
    kind = params[0][0]
    rest = params[1:]
    inner = b"(" + b" ".join(nstring(k) + b" " + nstring(_unquote(v)) for k, v in rest) + b")" if rest else b"NIL"
    return b"(" + nstring(kind) + b" " + inner + b")"


def _languages(fields: Message) -> bytes:
    value = _raw_field(fields, "content-language")
    if value is None:
        return b"NIL"
    languages = [v for v in re.split(r"[\s,]+", value) if v]
    return b"(" + b" ".join(nstring(v) for v in languages) + b")" if languages else b"NIL"


def body_structure(part: Part, *, extended: bool = True) -> bytes:
    fields = part.fields
    if part.maintype == "multipart":
        if not part.children:  # Dovecot shows an empty multipart as one empty text part
            children = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0' + (
                b" NIL NIL NIL NIL)" if extended else b")"
            )
        else:
            children = b"".join(body_structure(child, extended=extended) for child in part.children)
        out = b"(" + children + b" " + nstring(part.subtype)
        if extended:
            out += b" " + _params(fields) + b" " + _disposition(fields) + b" " + _languages(fields) + b" " + nstring(_raw_field(fields, "content-location"))
        return out + b")"
    encoding = _raw_field(fields, "content-transfer-encoding") or "7bit"
    items = [
        nstring(part.maintype),
        nstring(part.subtype),
        _params(fields),
        nstring(_raw_field(fields, "content-id")),
        nstring(_raw_field(fields, "content-description")),
        nstring(encoding.lower()),
        b"%d" % len(part.body),
    ]
    if part.message is not None:
        items += [envelope(part.message), body_structure(part.message, extended=extended)]
    if part.maintype == "text" or part.message is not None:
        items.append(b"%d" % part.body.count(b"\n"))
    if extended:
        items += [
            nstring(_raw_field(fields, "content-md5")),
            _disposition(fields),
            _languages(fields),
            nstring(_raw_field(fields, "content-location")),
        ]
    return b"(" + b" ".join(items) + b")"


# -- sections ---------------------------------------------------------------------


def header_lines(header: bytes) -> list[bytes]:
    """The header's fields, each with its continuation lines and CRLF."""
    fields: list[bytes] = []
    for line in header.split(b"\r\n")[:-1]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def select_fields(header: bytes, names: list[str], *, exclude: bool) -> bytes:
    wanted = {n.lower() for n in names}
    kept = []
    for line in header_lines(header):
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        if (name in wanted) != exclude:
            kept.append(line)
    return b"".join(kept) + b"\r\n"


def find_part(root: Part, numbers: list[int]) -> Part | None:
    """Part n.m... (RFC 3501 6.4.5): of a non-multipart, part 1 is itself."""
    part, whole_message = root, True
    for number in numbers:
        if part.message is not None and not whole_message:
            part, whole_message = part.message, True
        if part.maintype == "multipart":
            if not 1 <= number <= len(part.children):
                return None
            part, whole_message = part.children[number - 1], False
        elif number == 1 and whole_message:
            whole_message = False
        else:
            return None
    return part


def section_bytes(root: Part, whole: bytes, numbers: list[int], text: str | None, names: list[str]) -> bytes:
    """The bytes of BODY[<numbers>.<text> (<names>)]; empty if it does not exist."""
    if not numbers:
        target: Part | None = root
        header, body = root.header, root.body
    else:
        target = find_part(root, numbers)
        if target is None:
            return b""
        if text is None:
            return target.body
        if text == "MIME":
            return target.header
        if target.message is None:
            return b""
        target = target.message
        header, body = target.header, target.body
    if text is None:
        return whole if not numbers else body
    if text == "HEADER":
        return header
    if text == "TEXT":
        return body
    if text == "HEADER.FIELDS":
        return select_fields(header, names, exclude=False)
    if text == "HEADER.FIELDS.NOT":
        return select_fields(header, names, exclude=True)
    return b""
