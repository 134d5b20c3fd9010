"""Passive SMTP observer of a reflective splice: the bytes of both directions in, events out.

The splice forwards the inbound client's bytes to the relay's own server and
the server's bytes back; the observer reads both and says what it saw.

Rules:
- The client's bytes are never changed. The server's bytes pass byte for
  byte, with one configured exception: the 250 reply to EHLO may lose its
  STARTTLS capability line (strip_starttls) and have the server's own name,
  the first word of its first line, replaced (mask_name). That reply is held
  back until its last line arrives; held bytes always go out in the end
  (rewritten, on giving up, or at server EOF).
- Replies answer commands in the order the commands were sent (a FIFO queue,
  RFC 2920 pipelining); the greeting answers the connection itself.
- After DATA, STARTTLS and AUTH, the reply decides what the client's next
  bytes are: content (3xx to DATA), TLS (2xx to STARTTLS), a SASL response
  (3xx to AUTH) or commands again (anything else). The client's bytes wait
  until that reply arrives. BDAT content is exactly the announced byte count,
  read without waiting for a reply (RFC 3030).
- DATA content ends only at CRLF "." CRLF (see message.py).
- What the observer cannot follow (an overlong line, binary bytes in a
  command, a server line that is not a reply, too many unanswered commands)
  is reported once as looper.reflect.unparsed; then, as after a successful
  STARTTLS, both directions are passthrough (opaque) and nothing is parsed.
- Memory is bounded by the MAX_* constants; message content is hashed in bulk
  and never kept.
- Secrets are never logged: AUTH is logged by its mechanism only, and SASL
  responses not at all.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from looper.events import Event
from looper.proto.address import parse_path
from looper.proto.lines import LineReader, Refused
from looper.proto.message import DotDecoder, Hash, MessageScanner
from looper.proto.reply import Reply, parse_reply_line
from looper.proto.text import as_text

# Limits. RFC 5321 4.5.3.1 allows 512 octets in a command line, 1000 in a text
# or reply line; these limits are far above, so only a broken or hostile peer
# reaches one, and then the observer stops parsing rather than buffer more.
MAX_LINE_BYTES = 64 * 1024  # one line, before its LF
MAX_HELD_BYTES = 64 * 1024  # client bytes awaiting the reply to DATA, STARTTLS or AUTH
MAX_REPLY_BYTES = 64 * 1024  # all lines of one reply (so the held EHLO reply too)
MAX_PENDING_COMMANDS = 256  # unanswered; Exim pipelines MAIL, up to 100 RCPT, BDAT
MAX_PENDING_BYTES = 256 * 1024  # the lines of the unanswered commands together
MAX_RECIPIENTS = 1000  # accepted RCPTs kept per transaction (Postfix smtpd_recipient_limit)
MAX_RECIPIENT_BYTES = 64 * 1024  # and their addresses together

GREETING = "looper.reflect.greeting"
EHLO_REPLY = "looper.reflect.ehlo_reply"
HELO = "looper.reflect.helo"
MAIL = "looper.reflect.mail"
RCPT = "looper.reflect.rcpt"
MESSAGE = "looper.reflect.message"
COMMAND = "looper.reflect.command"
TLS = "looper.reflect.tls"
UNPARSED = "looper.reflect.unparsed"

# Why parsing stopped (looper.reflect.unparsed "why").
WHY_LINE_TOO_LONG = "line too long"
WHY_BINARY_COMMAND = "binary bytes in a command line"
WHY_NO_REPLY_IN_TIME = "too many bytes before the reply to DATA, STARTTLS or AUTH"
WHY_TOO_MANY_COMMANDS = "too many commands without a reply"
WHY_NOT_A_REPLY = "not an SMTP reply"
WHY_REPLY_TOO_LONG = "reply too long"


class ClientState(enum.Enum):
    """How the client's next bytes are read."""

    COMMAND = "command"  # command lines
    AWAIT_REPLY = "await reply"  # after DATA, STARTTLS or AUTH: held until the reply
    DATA = "data"  # dot-stuffed content up to CRLF.CRLF
    BDAT = "bdat"  # the rest of a BDAT chunk's bytes
    SASL = "sasl"  # one SASL response line, never logged
    OPAQUE = "opaque"  # TLS, or given up: nothing is parsed in either direction


class Step(enum.Enum):
    """What happened, as far as the client state cares."""

    SENT_TURN_COMMAND = "DATA, STARTTLS or AUTH sent"
    SENT_BDAT = "BDAT n sent"
    READ_CHUNK = "the BDAT chunk's n bytes read"
    READ_END_OF_DATA = "CRLF.CRLF read"
    READ_SASL_RESPONSE = "SASL response line read"
    GO_AHEAD = "3xx to DATA"
    CHALLENGE = "3xx to AUTH"
    TLS_READY = "2xx to STARTTLS"
    REFUSED = "any other reply to DATA, STARTTLS or AUTH"
    GIVE_UP = "input the observer cannot follow"


# Every allowed move of the client state; anything else is a bug in this module.
TRANSITIONS: dict[tuple[ClientState, Step], ClientState] = {
    (ClientState.COMMAND, Step.SENT_TURN_COMMAND): ClientState.AWAIT_REPLY,
    (ClientState.COMMAND, Step.SENT_BDAT): ClientState.BDAT,
    (ClientState.BDAT, Step.READ_CHUNK): ClientState.COMMAND,
    (ClientState.DATA, Step.READ_END_OF_DATA): ClientState.COMMAND,
    (ClientState.SASL, Step.READ_SASL_RESPONSE): ClientState.AWAIT_REPLY,
    (ClientState.AWAIT_REPLY, Step.GO_AHEAD): ClientState.DATA,
    (ClientState.AWAIT_REPLY, Step.CHALLENGE): ClientState.SASL,
    (ClientState.AWAIT_REPLY, Step.TLS_READY): ClientState.OPAQUE,
    (ClientState.AWAIT_REPLY, Step.REFUSED): ClientState.COMMAND,
    **{(state, Step.GIVE_UP): ClientState.OPAQUE for state in ClientState},
}


class Kind(enum.Enum):
    """What a queued entry is, which decides what its reply means."""

    GREETING = enum.auto()  # the connection itself
    EHLO = enum.auto()
    HELO = enum.auto()
    MAIL = enum.auto()
    RCPT = enum.auto()
    DATA = enum.auto()
    END_OF_DATA = enum.auto()  # the final "." of DATA content
    BDAT = enum.auto()
    STARTTLS = enum.auto()
    AUTH = enum.auto()
    OTHER = enum.auto()
    ABANDONED_BDAT = enum.auto()  # no reply expected: a BDAT message left without LAST


_VERB_KINDS = {
    b"EHLO": Kind.EHLO,
    b"HELO": Kind.HELO,
    b"MAIL": Kind.MAIL,
    b"RCPT": Kind.RCPT,
    b"DATA": Kind.DATA,
    b"BDAT": Kind.BDAT,
    b"STARTTLS": Kind.STARTTLS,
    b"AUTH": Kind.AUTH,
}

# The reply to a turn command, by class (first digit), that changes how the
# client is read; any other reply to one of them is Step.REFUSED.
_TURN_STEPS = {
    (Kind.DATA, 3): Step.GO_AHEAD,
    (Kind.AUTH, 3): Step.CHALLENGE,
    (Kind.STARTTLS, 2): Step.TLS_READY,
}

# Control bytes other than tab and CR have no place in a command line (8-bit
# is fine: SMTPUTF8); a line with one is not SMTP (a TLS ClientHello, noise).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x0c\x0e-\x1f\x7f]")
# What the first bytes of a reply line may be: "ddd", then " ", "-" or the CR
# of its CRLF (RFC 5321 4.2).
_REPLY_START = re.compile(rb"[1-5](?:[0-9](?:[0-9][ \r-]?)?)?\Z")
_BDAT_SIZE = re.compile(rb"[0-9]{1,18}\Z")
_HOST_NAME = re.compile(rb"[^ \t\r\n]+")
_MASK_NAME = re.compile(r"[!-~]+\Z")


@dataclass(slots=True, eq=False)
class _Message:
    scanner: MessageScanner
    transport: str  # "data" or "bdat"
    complete: bool = False  # all of its content was read


@dataclass(slots=True, eq=False)
class _Command:
    """A queued entry: a command awaiting its reply, the greeting or a marker."""

    kind: Kind
    verb: str | None = None
    argument: str | None = None  # as logged: never a secret
    address: str | None = None
    params: list[str] = field(default_factory=list)
    message: _Message | None = None
    last: bool = False  # BDAT ... LAST
    line_bytes: int = 0


class Observer:
    """Reads both directions of one reflective splice; see the module docstring."""

    # Slotted: 10,000 idle splices each keep one (a dict of these would be 1.2 KB more each).
    __slots__ = (
        "_relay_ip", "_strip_starttls", "_mask_name", "_rewrites_ehlo", "_pregreet_bytes", "_keep_bytes",
        "_new_hash", "_kept", "_state", "_events", "_closed", "_client_eof", "_server_eof", "_pending",
        "_pending_bytes", "_client_lines", "_client_held", "_dot", "_message", "_bdat_message", "_chunk_message",
        "_sasl_command", "_server_lines", "_reply_code", "_reply_lines", "_reply_bytes", "_holding", "_ehlo_facts",
        "_held", "_mail_from", "_rcpt_to", "_rcpt_bytes",
    )

    def __init__(
        self,
        *,
        relay_ip: str,
        strip_starttls: bool = True,
        mask_name: str | None = None,
        pregreet_bytes: int = 0,
        keep_bytes: int = 0,
        new_hash: Callable[[bytes], Hash] = hashlib.sha256,
    ) -> None:
        if mask_name is not None and not _MASK_NAME.match(mask_name):
            raise ValueError(f"mask_name must be one word of printable ASCII: {mask_name!r}")
        self._relay_ip = relay_ip
        self._strip_starttls = strip_starttls
        self._mask_name = mask_name
        self._rewrites_ehlo = strip_starttls or mask_name is not None
        self._pregreet_bytes = pregreet_bytes
        # Messages' content kept up to this size each (0: none), handed out by
        # take_kept() once a message is over: (sha256, chain, content).
        self._keep_bytes = keep_bytes
        self._new_hash = new_hash  # the adapter's hashes off the forwarding thread (looper.net.hashing)
        self._kept: list[tuple[str, str, bytes]] = []
        self._state = ClientState.COMMAND
        self._events: list[Event] = []
        self._closed = False
        self._client_eof = False
        self._server_eof = False
        # Queue of what awaits a reply, oldest first; the greeting comes first.
        # A list (at most MAX_PENDING_COMMANDS): a deque's first block alone is 600 bytes.
        self._pending: list[_Command] = [_Command(Kind.GREETING)]
        self._pending_bytes = 0
        # Client side: command lines (a partial one held), BDAT chunks, and
        # (AWAIT_REPLY) the bytes held until the reply.
        self._client_lines = LineReader(MAX_LINE_BYTES)
        self._client_held = bytearray()
        self._dot: DotDecoder | None = None  # DATA content being read
        self._message: _Message | None = None  # its message
        self._bdat_message: _Message | None = None  # BDAT chunks so far, no LAST yet
        self._chunk_message: _Message | None = None  # the chunk being read (_client_lines counts its bytes)
        self._sasl_command: _Command | None = None  # AUTH, awaiting its SASL response line
        # Server side: reply lines (a partial one held), the lines of the reply so far.
        self._server_lines = LineReader(MAX_LINE_BYTES)
        self._reply_code = 0
        self._reply_lines: list[str] = []
        self._reply_bytes = 0
        self._holding = False  # a reply is being held for rewriting (EHLO's; with mask_name the greeting's, HELO's)
        self._ehlo_facts = (False, False)  # (STARTTLS stripped, name masked) of the last EHLO reply
        self._held = bytearray()
        # Transaction: reset by RSET, HELO/EHLO and the reply to end of data.
        self._mail_from: str | None = None
        self._rcpt_to: list[str] = []
        self._rcpt_bytes = 0

    # Public API

    @property
    def opaque(self) -> bool:
        """True once TLS went through or parsing gave up, and nothing is held back.

        From then on every byte passes unchanged and unparsed, so a caller may
        skip the observer. (Giving up while the EHLO reply is held leaves
        opaque False until the next server_data() call returns those bytes.)
        """
        return self._state is ClientState.OPAQUE and not self._held

    def events(self) -> list[Event] | tuple[()]:
        """Drain and return the events emitted so far (called after every chunk)."""
        events = self._events
        if not events:
            return ()
        self._events = []
        return events

    def client_data(self, data: bytes | bytearray | memoryview) -> None:
        """Read bytes the client sent (forwarded unchanged); b"" is the client's EOF."""
        self._check_open(self._client_eof, data, "client_data")
        if not data:
            self._client_eof = True
            return
        if self._state is not ClientState.OPAQUE:
            self._read_client(data if type(data) is bytes else bytes(data))

    def server_data(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """Read bytes the server sent; return the bytes to forward to the client.

        That is data itself unless the EHLO reply is being held or rewritten
        (then possibly b"" for now). b"" is the server's EOF: it returns
        whatever is still held.
        """
        self._check_open(self._server_eof, data, "server_data")
        if not data:
            self._server_eof = True
            self._holding = False
            return self._take_held()
        if self._state is ClientState.OPAQUE:
            return self._take_held() + data if self._held else data
        chunk = data if type(data) is bytes else bytes(data)
        forwarded = self._read_server(chunk)
        return data if forwarded is None else forwarded

    def passes_server_data(self) -> bool:
        """The next server_data() will return its bytes as they are, whatever
        they say, so a splice may forward them first and have them read after,
        off the round trip: nothing is held, no client bytes wait for a reply
        (reading them could queue an EHLO), and no reply awaited is one to
        hold or rewrite."""
        if self._held or self._holding:
            return False
        if self._state is ClientState.OPAQUE or not self._rewrites_ehlo:
            return True
        if self._client_held:
            return False
        rewritten = (Kind.EHLO, Kind.GREETING, Kind.HELO) if self._mask_name is not None else (Kind.EHLO,)
        return not any(command.kind in rewritten for command in self._pending)

    def close(self) -> None:
        """The session is over: report whatever still awaits a reply or was cut off."""
        if self._closed:
            return
        self._closed = True
        while self._pending:
            self._answer(self._pending.pop(0), None, None)
        if self._sasl_command is not None:
            self._answer(self._sasl_command, None, None)
            self._sasl_command = None
        if self._dot is not None and self._message is not None:
            leftover = self._dot.flush()  # cut off: what it held was content after all
            if leftover:
                self._message.scanner.feed(leftover)
        for message in (self._message, self._bdat_message):
            if message is not None:
                self._emit_message(message, None)
        self._message = self._bdat_message = None

    def kept_bytes(self) -> int:
        """Content kept now, of messages under way and over (for the shared
        message memory budget)."""
        kept = sum(len(c) for _, _, c in self._kept) if self._kept else 0
        if self._message is None and self._bdat_message is None and self._chunk_message is None:
            return kept  # between messages: every chunk of commands and replies
        scanners = {m.scanner for m in (self._message, self._bdat_message, self._chunk_message) if m}
        return sum(s.kept_bytes for s in scanners) + kept

    def drop_kept(self) -> None:
        """Memory is short: keep no content, of the messages under way or over."""
        self._kept.clear()
        for message in (self._message, self._bdat_message, self._chunk_message):
            if message is not None:
                message.scanner.drop_kept()

    def take_kept(self) -> list[tuple[str, str, bytes]] | tuple[()]:
        """(sha256, chain, content) of each message read whole and kept since
        the last call, in the order of their events."""
        kept = self._kept
        if not kept:
            return ()
        self._kept = []
        return kept

    def _buffered_bytes(self) -> int:
        """Everything held in buffers now, for the tests' bounds checks."""
        scanners = {m.scanner for m in (self._message, self._bdat_message, self._chunk_message) if m}
        return (
            len(self._client_held)
            + self._client_lines.buffered
            + self._server_lines.buffered
            + len(self._held)
            + self._reply_bytes
            + self._pending_bytes
            + self._rcpt_bytes
            + sum(scanner.header_bytes for scanner in scanners)
        )

    def _check_open(self, eof: bool, data: bytes | bytearray | memoryview, method: str) -> None:
        if self._closed:
            raise RuntimeError(f"{method}() after close()")
        if eof and data:
            raise RuntimeError(f"{method}() got data after EOF")

    # State

    def _move(self, step: Step) -> None:
        self._state = TRANSITIONS[self._state, step]
        if self._state is ClientState.OPAQUE:
            self._client_held.clear()
            self._client_lines.clear()
            self._server_lines.clear()
            self._reply_lines.clear()
            self._reply_bytes = 0
            self._holding = False  # what is held goes out with the next server bytes
            self._dot = None

    def _give_up(self, direction: str, why: str) -> None:
        if self._state is not ClientState.OPAQUE:
            self._emit(UNPARSED, direction=direction, why=why)
            self._move(Step.GIVE_UP)

    def _emit(self, eventid: str, **fields: Any) -> None:
        self._events.append(Event(eventid, fields))

    # Client direction

    def _read_client(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            state = self._state
            if state is ClientState.COMMAND or state is ClientState.SASL:
                position = self._read_line(data, position)
            elif state is ClientState.DATA:
                position = self._read_data(data, position)
            elif state is ClientState.BDAT:
                position = self._read_chunk(data, position)
            elif state is ClientState.AWAIT_REPLY:
                if len(self._client_held) + len(data) - position > MAX_HELD_BYTES:
                    self._give_up("client", WHY_NO_REPLY_IN_TIME)
                else:
                    self._client_held += memoryview(data)[position:]
                return
            else:
                return

    def _release_client(self) -> None:
        """Read the client bytes held while awaiting a reply, now that it came."""
        if self._client_held and self._state is not ClientState.OPAQUE:
            held = bytes(self._client_held)
            self._client_held.clear()
            self._read_client(held)

    def _read_line(self, data: bytes, position: int) -> int:
        # A line is refused at its first byte that breaks a rule, wherever the
        # reads split it: a control byte (in a command), or the byte past MAX_LINE_BYTES.
        command = self._state is ClientState.COMMAND
        line, position = self._client_lines.read_line(data, position, forbidden=_CONTROL if command else None)
        if line is None:
            return position
        if type(line) is Refused:
            self._give_up("client", WHY_BINARY_COMMAND if line is Refused.FORBIDDEN_BYTE else WHY_LINE_TOO_LONG)
            return len(data)
        if command:
            self._read_command(line)
        else:
            self._read_sasl_response()
        return position

    def _read_sasl_response(self) -> None:
        command, self._sasl_command = self._sasl_command, None
        assert command is not None
        self._move(Step.READ_SASL_RESPONSE)
        self._push(command)  # AUTH awaits its next reply

    def _read_command(self, line: bytes) -> None:
        words = line.split(None, 1)
        verb = words[0].upper() if words else b""
        rest = words[1].rstrip() if len(words) > 1 else b""
        kind = _VERB_KINDS.get(verb, Kind.OTHER)
        chunk_bytes, last = 0, False
        if kind is Kind.BDAT:
            bdat_args = rest.split()
            last = len(bdat_args) == 2 and bdat_args[1].upper() == b"LAST"
            if (len(bdat_args) == 1 or last) and _BDAT_SIZE.match(bdat_args[0]):
                chunk_bytes = int(bdat_args[0])
            else:
                kind = Kind.OTHER  # the server refuses it; what follows are commands
        if kind is not Kind.BDAT and self._bdat_message is not None:
            if not self._push(_Command(Kind.ABANDONED_BDAT, message=self._bdat_message)):
                return
            self._bdat_message = None
        command = _Command(kind, verb=as_text(verb), line_bytes=len(line))
        if kind is Kind.MAIL or kind is Kind.RCPT:
            path = parse_path(as_text(rest), "FROM:" if kind is Kind.MAIL else "TO:", strict=False)
            if path is not None:
                command.address, command.params = path.address, path.params
        elif kind is Kind.AUTH:
            mechanism = rest.split(None, 1)[:1]
            command.argument = as_text(mechanism[0]) if mechanism else None
        elif kind is Kind.BDAT:
            command.argument = as_text(rest)
            if self._bdat_message is None:
                self._bdat_message = _Message(MessageScanner(self._relay_ip, self._keep_bytes, self._new_hash), "bdat")
            command.message, command.last = self._bdat_message, last
            if last:
                self._bdat_message = None  # the LAST command reports it
        elif rest:
            command.argument = as_text(rest)
        if not self._push(command):
            return
        if kind in (Kind.DATA, Kind.STARTTLS, Kind.AUTH):
            self._move(Step.SENT_TURN_COMMAND)
        elif kind is Kind.BDAT:
            self._move(Step.SENT_BDAT)
            self._chunk_message = command.message
            self._client_lines.expect(chunk_bytes)
            if not chunk_bytes:
                self._end_chunk()

    def _push(self, command: _Command) -> bool:
        if (
            len(self._pending) >= MAX_PENDING_COMMANDS
            or self._pending_bytes + command.line_bytes > MAX_PENDING_BYTES
        ):
            self._give_up("client", WHY_TOO_MANY_COMMANDS)
            return False
        self._pending.append(command)
        self._pending_bytes += command.line_bytes
        self._report_markers()
        return True

    def _report_markers(self) -> None:
        """Report the queue's head entries that expect no reply."""
        while self._pending and self._pending[0].kind is Kind.ABANDONED_BDAT:
            self._answer(self._pending.pop(0), None, None)

    def _read_data(self, data: bytes, position: int) -> int:
        assert self._dot is not None and self._message is not None
        content, used = self._dot.feed(data[position:] if position else data)
        if content:
            self._message.scanner.feed(content)
        if used < 0:
            return len(data)
        message, self._message, self._dot = self._message, None, None
        message.complete = True
        self._move(Step.READ_END_OF_DATA)
        self._push(_Command(Kind.END_OF_DATA, message=message))
        return position + used

    def _read_chunk(self, data: bytes, position: int) -> int:
        assert self._chunk_message is not None
        piece, position = self._client_lines.read_raw(data, position)
        self._chunk_message.scanner.feed(piece)
        if not self._client_lines.raw_left:
            self._end_chunk()
        return position

    def _end_chunk(self) -> None:
        message, self._chunk_message = self._chunk_message, None
        assert message is not None
        if message is not self._bdat_message:  # its LAST chunk
            message.complete = True
        self._move(Step.READ_CHUNK)

    # Server direction

    def _read_server(self, chunk: bytes) -> bytes | None:
        """Read a chunk of server bytes; None if it passes unchanged, else the bytes to forward."""
        forwarded: list[bytes] | None = None  # built once something is held or rewritten
        lines = self._server_lines
        position = 0
        while position < len(chunk) and self._state is not ClientState.OPAQUE:
            if not self._holding and self._rewrites_ehlo and self._at_reply_start() and self._rewrite_is_next():
                self._holding = True
            # As for client lines: refused at the first byte that breaks a rule.
            if lines.buffered < 4 and not _REPLY_START.match(lines.head(chunk, position, 4)):
                self._give_up("server", WHY_NOT_A_REPLY)
                break
            held_bytes = lines.buffered
            line, end = lines.read_line(chunk, position)
            if line is Refused.TOO_LONG:
                self._give_up("server", WHY_LINE_TOO_LONG)
                break
            if self._holding:
                if forwarded is None:
                    forwarded = [chunk[:position]]
                self._held += memoryview(chunk)[position:end]
            elif forwarded is not None:
                forwarded.append(chunk[position:end])
            line_bytes = held_bytes + end - position  # its CR and LF included
            position = end
            if line is None:
                break
            rewritten = self._read_reply_line(line, line_bytes)
            if rewritten is not None:
                assert forwarded is not None
                forwarded.append(rewritten)
        if self._state is ClientState.OPAQUE and (forwarded is not None or self._held):
            # Gave up (here or while reading released client bytes) after
            # something was held: what is held goes out, then the rest.
            forwarded = [chunk[:position]] if forwarded is None else forwarded
            forwarded += [self._take_held(), chunk[position:]]
        if forwarded is None:
            return None
        joined = b"".join(forwarded)
        return None if joined == chunk else joined

    def _at_reply_start(self) -> bool:
        return not self._server_lines.buffered and not self._reply_lines

    def _rewrite_is_next(self) -> bool:
        """The next reply is one to hold and rewrite: the reply to EHLO, and
        with mask_name also the greeting and the reply to HELO, which carry
        the server's name as well (Postfix's client checks both)."""
        if not self._pending:
            return False
        kind = self._pending[0].kind
        return kind is Kind.EHLO or (self._mask_name is not None and (kind is Kind.GREETING or kind is Kind.HELO))

    def _take_held(self) -> bytes:
        held = bytes(self._held)
        self._held.clear()
        return held

    def _read_reply_line(self, line: bytes, line_bytes: int) -> bytes | None:
        """Read one server line (without its line end; line_bytes with it);
        return the rewritten EHLO reply when it completes one."""
        self._reply_bytes += line_bytes
        if self._reply_bytes > MAX_REPLY_BYTES:
            self._give_up("server", WHY_REPLY_TOO_LONG)
            return None
        parsed = parse_reply_line(line)
        if parsed is None:
            self._give_up("server", WHY_NOT_A_REPLY)
            return None
        if not self._reply_lines:
            self._reply_code = parsed.code
        self._reply_lines.append(as_text(parsed.text))
        if not parsed.final:
            return None
        reply = Reply(self._reply_code, tuple(self._reply_lines))
        self._reply_lines.clear()
        self._reply_bytes = 0
        held = None
        if self._holding:
            self._holding = False
            held = self._take_held()
        if not self._pending:
            self._emit(COMMAND, verb=None, argument=None, code=reply.code, reply=reply.text)
            return held
        command = self._pending.pop(0)
        self._pending_bytes -= command.line_bytes
        forwarded = self._answer(command, reply, held)
        self._report_markers()
        return forwarded

    # Replies to commands

    def _answer(self, command: _Command, reply: Reply | None, held: bytes | None) -> bytes | None:
        """Report the command's reply (None: the session ended first) and follow it.

        Returns the bytes to forward in place of held (the held EHLO reply).
        """
        code = reply.code if reply is not None else None
        text = reply.text if reply is not None else None
        positive = code is not None and code // 100 == 2
        kind = command.kind
        if kind is Kind.GREETING:
            held, masked = self._mask(held) if code == 220 else (held, False)
            self._emit(GREETING, code=code, text=text, pregreet_bytes=self._pregreet_bytes,
                       masked_as=self._mask_name if masked else None)
            return held
        elif kind is Kind.EHLO or kind is Kind.HELO:
            if kind is Kind.EHLO and reply is not None and code == 250:
                forwarded, masked = self._answer_ehlo(reply, held)
            else:
                forwarded, masked = self._mask(held) if code == 250 else (held, False)
            self._emit(HELO, verb=command.verb, name=command.argument, code=code, reply=text,
                       masked_as=self._mask_name if masked else None)
            if reply is not None:
                self._reset_transaction()
            if kind is Kind.EHLO and reply is not None and code == 250:
                self._emit_ehlo_reply(reply, *self._ehlo_facts)
            return forwarded
        elif kind is Kind.MAIL or kind is Kind.RCPT:
            self._emit(
                MAIL if kind is Kind.MAIL else RCPT,
                address=command.address,
                params=command.params,
                code=code,
                reply=text,
            )
            if positive and kind is Kind.MAIL:
                self._reset_transaction()
                self._mail_from = command.address
            elif positive and command.address is not None:
                self._add_recipient(command.address)
        elif kind is Kind.END_OF_DATA or kind is Kind.ABANDONED_BDAT:
            assert command.message is not None
            self._emit_message(command.message, reply)
            if reply is not None:
                self._reset_transaction()
        elif kind is Kind.BDAT:
            assert command.message is not None
            if command.last:
                self._emit_message(command.message, reply)
                if reply is not None:
                    self._reset_transaction()
            elif reply is not None and not positive:
                self._emit_command(command, code, text)
        elif kind in (Kind.DATA, Kind.STARTTLS, Kind.AUTH):
            self._answer_turn(command, reply)
        else:
            self._emit_command(command, code, text)
            if positive and command.verb == "RSET":
                self._reset_transaction()
        return held

    def _answer_turn(self, command: _Command, reply: Reply | None) -> None:
        """The reply to DATA, STARTTLS or AUTH: it decides how the client is read next."""
        if reply is None:
            self._emit_command(command, None, None)
            return
        step = _TURN_STEPS.get((command.kind, reply.code // 100), Step.REFUSED)
        if step is Step.REFUSED or step is Step.TLS_READY:
            self._emit_command(command, reply.code, reply.text)
        if step is Step.GO_AHEAD:
            self._message = _Message(MessageScanner(self._relay_ip, self._keep_bytes, self._new_hash), "data")
            self._dot = DotDecoder()
        elif step is Step.CHALLENGE:
            self._sasl_command = command
        elif step is Step.TLS_READY:
            self._emit(TLS)
        self._move(step)
        self._release_client()

    def _answer_ehlo(self, reply: Reply, held: bytes | None) -> tuple[bytes | None, bool]:
        forwarded, stripped, masked = held, False, False
        if held is not None:
            forwarded, stripped, masked = self._rewrite_ehlo(held)
        self._ehlo_facts = (stripped, masked)
        return forwarded, masked

    def _emit_ehlo_reply(self, reply: Reply, stripped: bool, masked: bool) -> None:
        words = reply.lines[0].split(None, 1) if reply.lines else []
        self._emit(
            EHLO_REPLY,
            code=reply.code,
            name=words[0] if words else None,
            extensions=list(reply.lines[1:]),
            starttls_stripped=stripped,
            masked_as=self._mask_name if masked else None,
        )

    def _mask(self, held: bytes | None) -> tuple[bytes | None, bool]:
        """The held greeting or HELO reply with the server's name, the first
        word of its first line, replaced by mask_name."""
        if held is None or self._mask_name is None:
            return held, False
        lines = [line + b"\n" for line in held.split(b"\n")[:-1]]  # held ends with LF
        masked = self._mask_first_line(lines)
        return b"".join(lines), masked

    def _mask_first_line(self, lines: list[bytes]) -> bool:
        first = lines[0]
        name = _HOST_NAME.search(first, 4) if first[3:4] in (b" ", b"-") else None
        if name is None:
            return False
        lines[0] = first[: name.start()] + self._mask_name.encode("ascii") + first[name.end() :]
        return True

    def _rewrite_ehlo(self, held: bytes) -> tuple[bytes, bool, bool]:
        """Rewrite the held 250 reply to EHLO; return (bytes, STARTTLS stripped, name masked)."""
        lines = [line + b"\n" for line in held.split(b"\n")[:-1]]  # held ends with LF
        stripped = masked = False
        if self._strip_starttls:
            kept = lines[:1] + [line for line in lines[1:] if not _is_starttls(line)]
            if len(kept) < len(lines):
                stripped = True
                last = kept[-1]
                if _is_starttls(lines[-1]) and last[3:4] == b"-":
                    kept[-1] = last[:3] + b" " + last[4:]  # the new last line ends the reply
                lines = kept
        if self._mask_name is not None:
            masked = self._mask_first_line(lines)
        return b"".join(lines), stripped, masked

    def _emit_command(self, command: _Command, code: int | None, text: str | None) -> None:
        self._emit(COMMAND, verb=command.verb, argument=command.argument, code=code, reply=text)

    def _emit_message(self, message: _Message, reply: Reply | None) -> None:
        facts = message.scanner.facts()
        content = message.scanner.take_content()
        if content is not None and message.complete:
            self._kept.append((facts.sha256, facts.chain, content))
        self._emit(
            MESSAGE,
            received_hops=facts.received_hops,
            message_id=facts.message_id,
            subject=facts.subject,
            size=facts.size,
            sha256=facts.sha256,
            code=reply.code if reply is not None else None,
            reply=reply.text if reply is not None else None,
            chain=facts.chain,
            mail_from=self._mail_from,
            rcpt_to=list(self._rcpt_to),
            transport=message.transport,
            complete=message.complete,
            headers_truncated=facts.headers_truncated,
        )

    def _reset_transaction(self) -> None:
        self._mail_from = None
        self._rcpt_to = []
        self._rcpt_bytes = 0

    def _add_recipient(self, address: str) -> None:
        if len(self._rcpt_to) < MAX_RECIPIENTS and self._rcpt_bytes + len(address) <= MAX_RECIPIENT_BYTES:
            self._rcpt_to.append(address)
            self._rcpt_bytes += len(address)


def _is_starttls(line: bytes) -> bool:
    return line[3:4] in (b" ", b"-") and line[4:].strip().upper() == b"STARTTLS"
