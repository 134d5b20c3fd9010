"""The bait IMAP4rev1 server (RFC 3501): Dovecot 2.3 on Debian, as a sans-IO machine.

Bytes in (receive_data), actions and events out, like the SMTP machine
(looper/proto/smtpd.py) and through the same adapter (looper/net/session.py).

Everything that affects transitions lives here:
- one enum of states (State) and one table (COMMANDS) of the states in
  which each command is known; its handler is `_do_<command>`, and the
  state changes are made there and nowhere else: LOGIN and AUTHENTICATE
  (NOT_AUTHENTICATED -> AUTHENTICATED), SELECT and EXAMINE (-> SELECTED),
  CLOSE, UNSELECT and a failed SELECT (-> AUTHENTICATED), LOGOUT and every
  Close (-> LOGOUT). A command the table does not allow in the state is
  answered as Dovecot answers it (BAD, counted towards its limit);
- input is read a line at a time (LineReader); a line that ends in a
  literal `{n}` / `{n+}` makes the next n octets raw; a command is complete
  at a line without one. A synchronizing literal is answered "+ OK".
  An APPEND to a mailbox that does not exist is refused before its
  message ([TRYCREATE]; a `{n+}` one skipped as it comes). An APPEND's
  literal over its limit is asked for ("+ OK", as Dovecot without quota
  asks for 4 GB), skipped as it comes, never kept, then refused [TOOBIG];
  any other literal over its limit gets Dovecot's "* BYE Literal size too
  large";
- AUTHENTICATE and IDLE read their continuation lines in their own modes
  (Mode).

Dovecot's texts, verified against dovecot 2.3.19.1 (imap-login before the
login, imap after it; tests/test_imap_machine.py holds the exact bytes):
tagged replies after login carry Dovecot's timing, "(0.001 + 0.000 secs)",
before their final period; before login they do not.

The bait store is read-only: each login gets its own copy of the folders'
message lists (SessionFolder), and what the client changes (flags,
expunges, copies, moves, appends) lives there and ends with the session;
each change is logged (looper.imap.change, looper.imap.append), and so is
every read of bait (looper.bait.read).
"""

from __future__ import annotations

import base64
import codecs
import enum
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import decode_header, make_header
from typing import Any, Protocol

from looper.events import Event
from looper.proto import imap_fetch as fx
from looper.proto.actions import Action, Close, CloseReason, Send, StartTLS, Store
from looper.proto.imap_parse import ParseError, Token, astring, format_set, in_set, parse_set, tokens
from looper.proto.imap_search import SearchParser
from looper.proto.lines import LineReader, Overlong, Refused
from looper.proto.login import LoginPolicy, login_fields
from looper.proto.mailbox import BaitFolder, BaitStore
from looper.proto.digest_md5 import DigestChallenge
from looper.proto.sasl import Acknowledged, Challenge, Credentials, Failure, SaslExchange
from looper.proto.text import as_text

# -- limits (Dovecot's where it has one) --------------------------------------------

# imap_max_line_length: 64 KiB; the same bounds a whole command with its
# (non-APPEND) literals. Before login, imap-login's input buffer is much
# smaller: a line of more than 1032 octets (its CR LF aside) gets "* BYE
# Input buffer full, aborting", a literal of more than 8178 "* BYE Literal
# size too large" (both measured on dovecot 2.3.19.1).
MAX_LINE_BYTES = 65536
MAX_COMMAND_BYTES = 65536
MAX_PRELOGIN_LINE_BYTES = 1032
MAX_PRELOGIN_LITERAL_BYTES = 8178
# An APPEND's message: beyond it, [TOOBIG] after skipping it unkept.
MAX_APPEND_BYTES = 10 * 1024 * 1024
# What a session may append in all (it lives in memory until the session ends).
MAX_SESSION_APPEND_BYTES = 4 * MAX_APPEND_BYTES
MAX_FOLDER_MESSAGES = 10_000
MAX_FOLDERS = 100
# Input held while an action (StartTLS, Store) is pending.
MAX_HELD_BYTES = MAX_COMMAND_BYTES
# imap-login's limit of bad commands (CLIENT_MAX_BAD_COMMANDS = 3: the third
# gets the BYE), imap's (20 in a row).
MAX_BAD_PRELOGIN = 3
MAX_BAD = 20
MAX_COMMANDS = 100_000
MAX_KEYWORDS = 50
# looper.bait.read is logged once per message and kind of read in a session:
# a client that fetches 1:* in a loop does not flood the log.
MAX_READS_REMEMBERED = 10_000
# Timeouts: imap's autologout (CLIENT_IDLE_TIMEOUT_MSECS, 30 min); imap-login
# disconnects a client that has not logged in after 3 minutes.
IDLE_TIMEOUT_S = 30 * 60.0
IDLE_NOTIFY_S = 2 * 60.0  # imap_idle_notify_interval: "* OK Still here" while in IDLE
PRELOGIN_TIMEOUT_S = 180.0
# A failed login waits: dovecot 2.3.19.1 answered an address's first
# failure after 2 s and the next ones after 6 s (auth_failure_delay, then
# the anvil penalty).
AUTH_FAILURE_DELAY_S = 2.0
AUTH_REPEAT_FAILURE_DELAY_S = 6.0
MAX_LOGGED_INPUT = 2048

# The order in which the recording's Maildir listed the bait folders
# (tests/data/dovecot/imap_list_lsub: its filesystem's readdir order, INBOX
# aside): LIST answers in it, whatever the order of the bait.
LIST_ORDER = ("Archive", "Sent", "Drafts", "Junk")

# -- Dovecot's texts -------------------------------------------------------------------

SEEN = "\\Seen"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_FLAGS_UPPER = {flag.upper(): flag for flag in SYSTEM_FLAGS}
PRELOGIN_CAPABILITIES = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+"
POSTLOGIN_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS"
    " THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED"
    " I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE"
    " SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
)
GREETING_TEXT = "Dovecot (Debian) ready."
TIMING = "(0.001 + 0.000 secs)"
TIMING_3 = "(0.001 + 0.000 + 0.000 secs)"
PRELOGIN_BAD = "Error in IMAP command received by server."
AUTH_FAILED = "[AUTHENTICATIONFAILED] Authentication failed."
PRIVACY_ALERT = (
    "* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, but your client did it anyway."
    " If anyone was listening, the password was exposed."
)
PRIVACY_REQUIRED = "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
TOO_MANY_BAD = "* BYE Too many invalid IMAP commands."
INACTIVITY = "* BYE Disconnected for inactivity."
SHUTTING_DOWN = "* BYE Server shutting down."
NO_MAILBOX = "No mailbox selected"


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Mode(enum.Enum):
    """How the next line is read."""

    COMMAND = "command"
    SASL = "sasl response"
    IDLE = "idle"


_ANY = frozenset(State) - {State.LOGOUT}
_PRE = frozenset({State.NOT_AUTHENTICATED})
_POST = frozenset({State.AUTHENTICATED, State.SELECTED})
_SEL = frozenset({State.SELECTED})

# What each state allows: command -> states in which it is known. A command
# known in no state of the session's side (before or after login) is
# "unknown"; a selected-state command in AUTHENTICATED is "No mailbox selected".
COMMANDS: dict[str, frozenset[State]] = {
    "CAPABILITY": _ANY, "NOOP": _ANY, "LOGOUT": _ANY, "ID": _ANY, "ENABLE": _ANY,
    "STARTTLS": _PRE, "LOGIN": _PRE, "AUTHENTICATE": _PRE,
    "SELECT": _POST, "EXAMINE": _POST, "NAMESPACE": _POST, "LIST": _POST, "LSUB": _POST, "STATUS": _POST,
    "SUBSCRIBE": _POST, "UNSUBSCRIBE": _POST, "CREATE": _POST, "DELETE": _POST, "RENAME": _POST,
    "APPEND": _POST, "IDLE": _POST, "XLIST": _POST,
    "CHECK": _SEL, "CLOSE": _SEL, "UNSELECT": _SEL, "EXPUNGE": _SEL, "SEARCH": _SEL, "FETCH": _SEL,
    "STORE": _SEL, "COPY": _SEL, "MOVE": _SEL, "UID": _SEL,
}

# Commands whose Dovecot handler reads no arguments: whatever follows the
# name is skipped, however long the line (imap_limits_after_login recording).
IGNORES_ARGUMENTS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "NAMESPACE"})
UID_COMMANDS = frozenset({"FETCH", "SEARCH", "STORE", "COPY", "MOVE", "EXPUNGE"})

_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\Z")
_TAG = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|~]+\Z")


class Environment(Protocol):
    """The clock and randomness the machine may not have itself."""

    def now_s(self) -> float: ...
    def cram_challenge(self) -> str: ...
    def random_bytes(self, count: int) -> bytes: ...  # DIGEST-MD5's nonce


@dataclass(frozen=True)
class ImapSettings:
    policy: LoginPolicy = LoginPolicy()
    plaintext_login: bool = True
    auth_mechanisms: tuple[str, ...] = ("PLAIN",)
    max_append_bytes: int = MAX_APPEND_BYTES


@dataclass(slots=True)
class SessionMessage:
    uid: int
    content: bytes
    flags: set[str]
    internaldate: datetime
    _derived: fx.Derived | None = None
    recent: bool = False  # appended in this session: \Recent to it, as Dovecot shows its own appends
    bait: bool = False  # the store's: what is derived from it is shared by every session

    @property
    def derived(self) -> fx.Derived:
        if self._derived is None:
            self._derived = fx.shared_derived(self.content) if self.bait else fx.Derived(self.content)
        return self._derived

    @property
    def parsed(self) -> fx.Part:
        return self.derived.part

    @property
    def subject(self) -> str | None:
        value = self.parsed.fields.get("subject")
        if value is None:
            return None
        try:
            return str(make_header(decode_header(str(value)))).replace("\r\n", "").replace("\n", "")
        except Exception:  # undecodable words: the raw header
            return str(value)


@dataclass(slots=True)
class SessionFolder:
    name: str
    special_use: str | None
    uidvalidity: int
    messages: list[SessionMessage]
    uidnext: int
    keywords: list[str] = field(default_factory=list)  # as the client made them, in order

    @classmethod
    def of(cls, folder: BaitFolder) -> SessionFolder:
        return cls(
            folder.name, folder.special_use, folder.uidvalidity,
            [SessionMessage(m.uid, m.content, set(m.flags), m.internaldate, bait=True) for m in folder.messages],
            folder.uidnext,
        )


@dataclass(slots=True)
class _Pending:
    """A command still being read: its bytes so far, literals inlined."""

    data: bytearray = field(default_factory=bytearray)
    tag: str = ""
    name: str = ""
    limit: int = MAX_COMMAND_BYTES
    refused: str | None = None  # a literal over the limit: the reply once the line ends
    target_known: bool = False  # an APPEND's mailbox has been read (and exists)


@dataclass(slots=True)
class _Fetch:
    name: str  # as echoed: FLAGS, BODY[HEADER.FIELDS (SUBJECT)]<0>
    kind: str  # FLAGS UID INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY SECTION RFC822 RFC822.HEADER RFC822.TEXT
    numbers: list[int] = field(default_factory=list)
    text: str | None = None
    names: list[str] = field(default_factory=list)
    partial: tuple[int, int] | None = None
    peek: bool = True


_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_BODY_DATA = frozenset({"SECTION", "RFC822", "RFC822.HEADER", "RFC822.TEXT"})
_SIMPLE_FETCH = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY",
                 "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
_SECTION = re.compile(
    r"(BODY(?:\.PEEK)?)\[([0-9.]*?)\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?(?: \((.*)\))?\](?:<(\d+)(?:\.(\d+))?>)?\Z",
    re.IGNORECASE | re.DOTALL,
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ImapServer:
    """One IMAP session, from the greeting to the close."""

    def __init__(self, settings: ImapSettings, store: BaitStore, environment: Environment, *,
                 ip: str, tls: bool = False, earlier_failures: int = 0) -> None:
        self.settings = settings
        self.store = store
        self.environment = environment
        self.ip = ip
        self.tls = tls
        self.state = State.NOT_AUTHENTICATED
        self.mode = Mode.COMMAND
        self.idle_timeout_s = PRELOGIN_TIMEOUT_S
        self.paused = False
        self.auth_failures = earlier_failures
        self.username: str | None = None
        # A CR before the LF counts in a LineReader's limit.
        self._reader = LineReader(MAX_PRELOGIN_LINE_BYTES + 1)
        self._pending = _Pending()
        self._held = bytearray()
        self._actions: list[Action] = []
        self._events: list[Event] = []
        self._bad = 0
        self._commands = 0
        self._sasl: SaslExchange | None = None
        self._sasl_tag = ""
        self._idle_tag = ""
        self._folders: dict[str, SessionFolder] = {}
        self._selected: SessionFolder | None = None
        self._read_only = False
        self._enabled: set[str] = set()
        self._subscribed: dict[str, None] = {}  # in the order of Dovecot's subscriptions file
        self._appended_bytes = 0
        self._reads: set[tuple[str, int, str]] = set()
        self._append: tuple[str, SessionFolder, set[str], datetime, bytes] | None = None
        self._closed = False
        # imap-login's client_ignores_capability_resp_code: a client that
        # asked CAPABILITY itself before login (not after STARTTLS, where it
        # must) gets the post-login list as an untagged line, not as a code.
        self._starttls_used = False
        self._capability_asked = False
        self._send(f"* OK [CAPABILITY {self._capabilities()}] {GREETING_TEXT}")

    # -- the machine's interface ----------------------------------------------------

    def actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def receive_data(self, data: bytes) -> None:
        if self._closed:
            return
        if not data:
            return self._close(CloseReason.CLOSED_BY_CLIENT)
        if self.paused:
            return self._hold(data)
        self._feed(bytes(data))

    def timed_out(self) -> None:
        if self._closed:
            return
        if self.mode is Mode.IDLE:  # imap_idle_notify_interval: IDLE is kept, not logged out
            return self._send("* OK Still here")
        self._send(INACTIVITY)
        self._close(CloseReason.TIMEOUT)

    def shutting_down(self, reason: CloseReason) -> None:
        """imap says goodbye; imap-login (before the login) says nothing."""
        if not self._closed:
            if self.state is not State.NOT_AUTHENTICATED:
                self._send(SHUTTING_DOWN)
            self._close(reason)

    def connection_closed(self) -> None:
        self._closed = True
        self._folders.clear()
        self._selected = None
        self._held.clear()
        self._pending = _Pending()

    def tls_started(self, version: str, cipher: str) -> None:
        self.tls = True
        self._reader.clear()
        self._held.clear()  # nothing sent before the handshake counts (STARTTLS injection)
        self._resume()

    def stored(self, path: str) -> None:
        self._finish_append(path)
        self._resume()

    def store_failed(self, reason: str) -> None:
        self._finish_append(None)
        self._resume()

    # -- input --------------------------------------------------------------------------

    def _hold(self, data: bytes) -> None:
        room = MAX_HELD_BYTES - len(self._held)
        self._held += memoryview(data)[: max(room, 0)]

    def _resume(self) -> None:
        self.paused = False
        held, self._held = bytes(self._held), bytearray()
        if held and not self._closed:
            self._feed(held)

    def _feed(self, data: bytes) -> None:
        pos = 0
        reader = self._reader
        while pos < len(data) and not self._closed:
            if self.paused:
                return self._hold(data[pos:])
            if reader.raw_left:
                chunk, pos = reader.read_raw(data, pos)
                if self._pending.refused is None:
                    self._pending.data += chunk
                continue
            line, pos = reader.read_line(data, pos)
            if line is None:
                return
            if isinstance(line, Refused):
                self._line_too_long()
                continue
            if len(line) > MAX_LINE_BYTES and self.mode is Mode.COMMAND:  # truncated, after login
                self._line_too_long(line)
                continue
            self._line(line)

    def _line(self, line: bytes) -> None:
        if self.mode is Mode.SASL:
            return self._sasl_response(line)
        if self.mode is Mode.IDLE:
            return self._idle_line(line)
        pending = self._pending
        if not pending.data and pending.refused is None:
            self._start_command(line)
        if pending.refused is None:
            pending.data += line
        found = _LITERAL_AT_END.search(line)
        if found is None:
            self._pending = _Pending()
            if pending.refused is not None:  # its input was logged when it was refused
                return self._tagged(pending.tag, "NO", pending.refused)
            return self._command(pending)
        size, non_sync = int(found.group(1)), bool(found.group(2))
        appending = pending.name == "APPEND" and self.state is not State.NOT_AUTHENTICATED
        if pending.refused is None and appending and not pending.target_known:
            # Dovecot opens the mailbox before it asks for the message
            missing = self._append_target(pending, bytes(pending.data[: len(pending.data) - len(line) + found.start()]))
            if missing is not None:
                reason = f"[TRYCREATE] Mailbox doesn't exist: {missing}"
                if not non_sync:  # the client waits for "+": it never sends the literal
                    self._pending = _Pending()
                    self._emit_input(pending)
                    return self._tagged(pending.tag, "NO", reason)
                pending.refused = reason  # skipped as it comes, never kept
                self._emit_input(pending)
                pending.data.clear()
        if pending.refused is None and len(pending.data) + size > pending.limit:
            if not appending:
                self._pending = _Pending()
                self._emit_input(pending)
                self._send("* BYE Literal size too large")
                return self._close(CloseReason.CLOSED_BY_SERVER)
            # Dovecot (no quota) asks for any size, 4 GB too: "+ OK", then
            # the message is skipped as it comes, never kept, and refused.
            pending.refused = "[TOOBIG] Mail size is larger than the maximum size allowed by server configuration"
            self._emit_input(pending)
            pending.data.clear()
            if not non_sync:
                self._send("+ OK")
        if pending.refused is None:
            pending.data += b"\r\n"
            if not non_sync:
                self._send("+ OK")
        self._reader.expect(size)

    def _start_command(self, line: bytes) -> None:
        pending = self._pending
        head = line.split(b" ", 2)
        pending.tag = head[0].decode("utf-8", "replace")
        pending.name = head[1].decode("utf-8", "replace").upper() if len(head) > 1 else ""
        if pending.name == "UID" and len(head) > 2:
            pending.name = "UID " + head[2].split(b" ", 1)[0].decode("utf-8", "replace").upper()
        if self.state is State.NOT_AUTHENTICATED:
            pending.limit = MAX_PRELOGIN_LITERAL_BYTES + len(line)
        else:
            pending.limit = MAX_COMMAND_BYTES + (self.settings.max_append_bytes if pending.name == "APPEND" else 0)

    def _line_too_long(self, start: bytes = b"") -> None:
        """Before login, imap-login gives up; after it, imap answers BAD and goes on."""
        self._pending = _Pending()
        self.mode = Mode.COMMAND
        self._emit("looper.command.input", input=as_text(start[:MAX_LOGGED_INPUT]) or "(line too long)")
        if self.state is State.NOT_AUTHENTICATED:
            self._send("* BYE Input buffer full, aborting")
            return self._close(CloseReason.CLOSED_BY_SERVER)
        head = start.split(b" ", 2)
        tag = head[0].decode("utf-8", "replace") if head[0] and _TAG.match(head[0]) else "*"
        name = head[1].decode("utf-8", "replace").upper() if len(head) > 1 else ""
        if tag != "*" and name in IGNORES_ARGUMENTS:  # never reads the line, so never finds it long
            return self._command(_Pending(bytearray(head[0] + b" " + head[1]), tag, name), logged=True)
        self._bad_command(tag, name, "Too long argument")

    def _append_target(self, pending: _Pending, head: bytes) -> str | None:
        """An APPEND's mailbox, read from the command so far (up to this
        literal), if it does not exist; None if it does (then it is not
        read again), is this literal, or the command does not parse (it
        fails later)."""
        parts = head.split(b" ", 2)
        try:
            args = tokens(parts[2]) if len(parts) > 2 else []
        except ParseError:
            return None
        if not args or astring(args[0]) is None:
            return None
        name, folder = self._folder(args[0])
        pending.target_known = folder is not None
        return name if folder is None else None

    def _emit_input(self, pending: _Pending) -> None:
        data = bytes(pending.data)
        if pending.name == "APPEND":
            first = data.find(b"\r\n")
            data = data if first < 0 else data[:first]
        text = as_text(data[:MAX_LOGGED_INPUT]) if data else f"{pending.tag} {pending.name}".strip()
        self._emit("looper.command.input", input=text)

    # -- dispatch ---------------------------------------------------------------------------

    def _command(self, pending: _Pending, *, logged: bool = False) -> None:
        self._commands += 1
        if not logged:
            self._emit_input(pending)
        if self._commands > MAX_COMMANDS:
            self._send("* BYE Too many commands.")
            return self._close(CloseReason.CLOSED_BY_SERVER)
        data = bytes(pending.data)
        head = data.split(b" ", 2)
        tag = head[0]
        if not tag or not _TAG.match(tag) or tag == b"*" or tag == b"+":
            return self._bad_command("*", "", "Invalid tag", tag_error=True)
        tag_text = tag.decode("ascii")
        if len(head) < 2 or not head[1]:
            return self._bad_command(tag_text, "", "Invalid command name")
        name = head[1].decode("utf-8", "replace").upper()
        rest = head[2] if len(head) > 2 else b""
        states = COMMANDS.get(name)
        prelogin = self.state is State.NOT_AUTHENTICATED
        if prelogin and name not in ("AUTHENTICATE", "ID"):
            # imap-login parses the arguments before it looks the command
            # up (AUTHENTICATE and ID read theirs themselves): a parse error
            # is the parser's text, not counted as a bad command.
            try:
                tokens(rest)
            except ParseError as err:
                return self._send(f"{tag_text} BAD {err.reason}")
        if states is None or (prelogin and self.state not in states) or (not prelogin and not states & _POST):
            return self._bad_command(tag_text, name, "Unknown command")
        shown = name
        if name == "UID":  # Dovecot's UID commands are names in two words, known in any state after login
            sub = rest.split(b" ", 1)[0].decode("utf-8", "replace").upper()
            if not sub:
                return self._bad_command(tag_text, "", "Invalid command name")
            shown = f"UID {sub}"
            if sub not in UID_COMMANDS:
                return self._bad_command(tag_text, shown, "Unknown command")
        if self.state not in states:
            return self._bad_command(tag_text, name, NO_MAILBOX, plain=True)
        try:
            args = tokens(rest)
        except ParseError as err:
            reason = err.reason
            if name in ("FETCH", "UID") and reason == "Missing ']'":
                reason = "Invalid BODY[..] parameter: Missing ']'"
            return self._bad_command(tag_text, shown, reason)
        handler = getattr(self, "_do_" + name.lower())
        try:
            handler(tag_text, args)
        except ParseError as err:
            return self._bad_command(tag_text, shown, err.reason)
        if not prelogin:
            self._bad = 0

    def _bad_command(self, tag: str, name: str, reason: str | None, *, plain: bool = False,
                     tag_error: bool = False) -> None:
        self._bad += 1
        if self.state is State.NOT_AUTHENTICATED:
            if self._bad >= MAX_BAD_PRELOGIN:
                self._send(TOO_MANY_BAD)
                return self._close(CloseReason.CLOSED_BY_SERVER)
            return self._send(f"{tag or '*'} BAD {PRELOGIN_BAD}")
        if plain:
            text = reason or "Error"
        elif tag_error:
            text = f"Error in IMAP tag: {reason}"
        elif name:
            text = f"Error in IMAP command {name}: {reason or 'Invalid arguments.'}"
        else:
            text = f"Error in IMAP command: {reason}"
        self._tagged(tag or "*", "BAD", text)
        if self._bad >= MAX_BAD:
            self._send(TOO_MANY_BAD)
            self._close(CloseReason.CLOSED_BY_SERVER)

    # -- replies -------------------------------------------------------------------------

    def _send(self, line: str | bytes, delay_s: float = 0.0) -> None:
        data = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
        self._actions.append(Send(data + b"\r\n", delay_s))

    def _tagged(self, tag: str, status: str, text: str, *, timing: str = TIMING, delay_s: float = 0.0) -> None:
        if self.state is not State.NOT_AUTHENTICATED and timing:
            text = f"{text.removesuffix('.')} {timing}."
        self._send(f"{tag} {status} {text}", delay_s)

    def _emit(self, eventid: str, **fields: Any) -> None:
        self._events.append(Event(eventid, fields))

    def _close(self, reason: CloseReason) -> None:
        if not self._closed:
            self._closed = True
            self.state = State.LOGOUT
            self._actions.append(Close(reason))

    def _capabilities(self) -> str:
        if self.state is not State.NOT_AUTHENTICATED:
            return POSTLOGIN_CAPABILITIES
        caps = PRELOGIN_CAPABILITIES
        if not self.tls:
            caps += " STARTTLS"
        if self._plaintext_allowed:
            caps += "".join(f" AUTH={m}" for m in self.settings.auth_mechanisms)
        else:
            caps += " LOGINDISABLED"
        return caps

    @property
    def _plaintext_allowed(self) -> bool:
        return self.tls or self.settings.plaintext_login

    # -- any state ------------------------------------------------------------------------

    def _do_capability(self, tag: str, args: list[Token]) -> None:
        if self.state is State.NOT_AUTHENTICATED and not self._starttls_used:
            self._capability_asked = True
        self._send(f"* CAPABILITY {self._capabilities()}")
        if self.state is State.NOT_AUTHENTICATED:
            self._tagged(tag, "OK", "Pre-login capabilities listed, post-login capabilities have more.")
        else:
            self._tagged(tag, "OK", "Capability completed.")

    def _do_noop(self, tag: str, args: list[Token]) -> None:
        self._tagged(tag, "OK", "NOOP completed.")

    def _do_logout(self, tag: str, args: list[Token]) -> None:
        self._send("* BYE Logging out")
        self._tagged(tag, "OK", "Logout completed.")
        self._close(CloseReason.CLOSED_BY_SERVER)

    def _do_id(self, tag: str, args: list[Token]) -> None:
        if len(args) != 1 or not (args[0] == "NIL" or isinstance(args[0], list)):
            raise ParseError()
        self._send('* ID ("name" "Dovecot")')
        self._tagged(tag, "OK", "ID completed.")

    def _do_enable(self, tag: str, args: list[Token]) -> None:
        if self.state is State.NOT_AUTHENTICATED:
            self._send("* ENABLED")
            return self._tagged(tag, "OK", "ENABLE ignored in non-authenticated state.")
        enabled = [a.upper() for a in args if isinstance(a, str) and a.upper() in ("CONDSTORE", "QRESYNC")]
        new = [name for name in enabled if name not in self._enabled]
        self._enabled.update(enabled)
        if new:  # Dovecot sends the line only when it names something
            self._send("* ENABLED" + "".join(f" {name}" for name in new))
        self._tagged(tag, "OK", "Enabled.")

    # -- not authenticated ----------------------------------------------------------------------

    def _do_starttls(self, tag: str, args: list[Token]) -> None:
        if self.tls:
            return self._tagged(tag, "BAD", "TLS is already active.")
        self._starttls_used = True
        self._tagged(tag, "OK", "Begin TLS negotiation now.")
        self._actions.append(StartTLS())
        self.paused = True

    def _do_login(self, tag: str, args: list[Token]) -> None:
        if len(args) != 2 or any(isinstance(a, list) for a in args):
            raise ParseError()
        username, password = astring(args[0]) or "", astring(args[1]) or ""
        credentials = Credentials("LOGIN", username, password=password)
        if not self._plaintext_allowed:
            self._login_failed(credentials, "plaintext login disabled")
            self._send(PRIVACY_ALERT)
            return self._tagged(tag, "NO", PRIVACY_REQUIRED)
        self._try_login(tag, credentials)

    def _do_authenticate(self, tag: str, args: list[Token]) -> None:
        if not args or not isinstance(args[0], str):
            raise ParseError()
        mechanism = args[0].upper()
        if mechanism not in self.settings.auth_mechanisms:
            self._emit("looper.login.failed", mechanism=mechanism, username=None, reason="unsupported mechanism")
            return self._tagged(tag, "NO", "[ALERT] Unsupported authentication mechanism.")
        if not self._plaintext_allowed:
            self._emit("looper.login.failed", mechanism=mechanism, username=None, reason="plaintext login disabled")
            return self._tagged(tag, "NO", "[PRIVACYREQUIRED] Plaintext authentication disabled.")
        challenge = self.environment.cram_challenge() if mechanism == "CRAM-MD5" else ""
        digest_challenge = None
        if mechanism == "DIGEST-MD5":  # Dovecot's, realm="" (no auth_realms)
            digest_challenge = DigestChallenge.drawn(self.environment.random_bytes, "", "dovecot")
        exchange = SaslExchange(mechanism, cram_challenge=challenge, digest_challenge=digest_challenge)
        self._sasl, self._sasl_tag = exchange, tag
        if len(args) > 2 or (len(args) == 2 and astring(args[1]) is None):  # Dovecot takes it all as the response
            return self._sasl_outcome(Failure.UNDECODABLE, initial=True)
        initial = astring(args[1]) if len(args) == 2 else None
        self._sasl_outcome(exchange.start(initial), initial=initial is not None)

    def _sasl_response(self, line: bytes) -> None:
        self._emit("looper.command.input", input=as_text(line[:MAX_LOGGED_INPUT]))
        exchange = self._sasl
        self.mode = Mode.COMMAND
        if exchange is None:
            return
        self._sasl_outcome(exchange.respond(line))

    def _sasl_outcome(self, outcome: Challenge | Credentials | Acknowledged | Failure, *,
                      initial: bool = False) -> None:
        exchange, tag = self._sasl, self._sasl_tag
        assert exchange is not None
        if isinstance(outcome, Credentials) and self.settings.policy.accepts(outcome, self.auth_failures):
            proof = exchange.admit(self.settings.policy.password_of(outcome))
            outcome = Acknowledged(outcome) if proof is None else proof
        if isinstance(outcome, Challenge):
            self.mode = Mode.SASL
            return self._send(b"+ " + base64.b64encode(outcome.data))
        self._sasl = None
        if outcome is Failure.CANCELLED:
            self._emit("looper.login.failed", mechanism=exchange.mechanism, username=None, reason="cancelled")
            return self._tagged(tag, "BAD", "Authentication aborted by client.")
        if outcome is Failure.UNDECODABLE:
            self._emit("looper.login.failed", mechanism=exchange.mechanism, username=None, reason="invalid base64")
            if initial:
                return self._tagged(tag, "BAD", "Invalid base64 data in initial response")
            return self._tagged(tag, "NO", "[ALERT] Invalid base64 in response")
        if isinstance(outcome, Failure):  # base64, but not what the mechanism wants: a failed login
            self.auth_failures += 1
            self._emit("looper.login.failed", mechanism=exchange.mechanism, username=None, reason="malformed response")
            delay = LoginPolicy.failure_delay_s(self.auth_failures, AUTH_FAILURE_DELAY_S, AUTH_REPEAT_FAILURE_DELAY_S)
            return self._tagged(tag, "NO", AUTH_FAILED, delay_s=delay)
        if isinstance(outcome, Acknowledged):
            return self._logged_in(tag, outcome.credentials)
        self._refused(tag, outcome)

    def _try_login(self, tag: str, credentials: Credentials) -> None:
        if self.settings.policy.accepts(credentials, self.auth_failures):
            return self._logged_in(tag, credentials)
        self._refused(tag, credentials)

    def _refused(self, tag: str, credentials: Credentials) -> None:
        self._login_failed(credentials, "bad credentials")
        delay = LoginPolicy.failure_delay_s(self.auth_failures, AUTH_FAILURE_DELAY_S, AUTH_REPEAT_FAILURE_DELAY_S)
        self._tagged(tag, "NO", AUTH_FAILED, delay_s=delay)

    def _logged_in(self, tag: str, credentials: Credentials) -> None:
        self._emit("looper.login.success", **login_fields(credentials))
        self.auth_failures = 0
        self.username = credentials.username
        self.state = State.AUTHENTICATED
        self.idle_timeout_s = IDLE_TIMEOUT_S
        # imap's limit from now on; an overlong line is cut there, answered BAD (see _feed)
        self._reader.max_line_bytes = MAX_LINE_BYTES + 1
        self._reader.overlong = Overlong.TRUNCATE
        self._bad = 0
        self._folders = {f.name: SessionFolder.of(f) for f in self.store.folders}
        if "INBOX" not in self._folders:
            self._folders["INBOX"] = SessionFolder.of(self.store.inbox)
        self._subscribed = dict.fromkeys(self._folders)
        if self._capability_asked:
            self._send(f"* CAPABILITY {POSTLOGIN_CAPABILITIES}")
            return self._send(f"{tag} OK Logged in")
        return self._send(f"{tag} OK [CAPABILITY {POSTLOGIN_CAPABILITIES}] Logged in")

    def _login_failed(self, credentials: Credentials, reason: str) -> None:
        self.auth_failures += 1
        self._emit("looper.login.failed", reason=reason, **login_fields(credentials))

    # -- authenticated ------------------------------------------------------------------------

    def _folder(self, token: Token) -> tuple[str, SessionFolder | None]:
        name = astring(token)
        if name is None:
            raise ParseError()
        if name.upper() == "INBOX":
            name = "INBOX"
        return name, self._folders.get(name)

    def _do_namespace(self, tag: str, args: list[Token]) -> None:
        self._send('* NAMESPACE (("" "/")) NIL NIL')
        self._tagged(tag, "OK", "Namespace completed.")

    def _list_names(self) -> list[SessionFolder]:
        """LIST's order: Dovecot's Maildir lists its folders in the order of
        the directory (recorded: LIST_ORDER), INBOX last; a folder made in
        the session comes first, as Dovecot listed the new one."""
        folders = [f for f in self._folders.values() if f.name != "INBOX"]
        folders.sort(key=lambda f: LIST_ORDER.index(f.name) if f.name in LIST_ORDER else -1)
        inbox = self._folders.get("INBOX")
        return folders + ([inbox] if inbox is not None else [])

    def _do_list(self, tag: str, args: list[Token]) -> None:
        """LIST, and LIST-EXTENDED (RFC 5258, 6154) as Dovecot answers it:
        with extended syntax, an attribute is shown only when asked for."""
        selection: set[str] = set()
        returns: set[str] | None = None
        if args and isinstance(args[0], list):
            selection = {a.upper() for a in args[0] if isinstance(a, str)}
            args = args[1:]
        if len(args) >= 3 and isinstance(args[2], str) and args[2].upper() == "RETURN":
            if len(args) != 4 or not isinstance(args[3], list):
                raise ParseError()
            returns = {a.upper() for a in args[3] if isinstance(a, str)}
            args = args[:2]
        if not args or astring(args[0]) is None:
            raise ParseError("Invalid reference")
        if len(args) != 2:
            raise ParseError()
        reference, pattern = astring(args[0]), astring(args[1])
        if reference is None or pattern is None:
            raise ParseError()
        if not pattern:
            self._send('* LIST (\\Noselect) "/" ""')
            return self._tagged(tag, "OK", "List completed.")
        extended = bool(selection) or returns is not None
        returns = returns or set()
        full = reference + pattern
        matcher = _wildcard(full)
        # INBOX is INBOX in any case (RFC 3501 5.1)
        inbox_matcher = _wildcard("INBOX" + full[5:]) if full[:5].upper() == "INBOX" else matcher
        for folder in self._list_names():
            if "SPECIAL-USE" in selection and folder.special_use is None:
                continue
            subscribed = folder.name in self._subscribed
            if "SUBSCRIBED" in selection and not subscribed:
                continue
            if not (inbox_matcher if folder.name == "INBOX" else matcher).match(folder.name):
                continue
            if extended:
                attributes = []
                if subscribed and ("SUBSCRIBED" in selection or "SUBSCRIBED" in returns):
                    attributes.append("\\Subscribed")
                if "CHILDREN" in returns:
                    attributes.append("\\HasNoChildren")
                if folder.special_use and ("SPECIAL-USE" in selection or "SPECIAL-USE" in returns):
                    attributes.append(folder.special_use)
            else:
                attributes = ["\\HasNoChildren"] + ([folder.special_use] if folder.special_use else [])
            self._send(f'* LIST ({" ".join(attributes)}) "/" {_mailbox_name(folder.name)}')
        self._tagged(tag, "OK", "List completed.")

    _do_xlist = _do_list  # Dovecot still answers the old XLIST, as LIST

    def _do_lsub(self, tag: str, args: list[Token]) -> None:
        if len(args) != 2:
            raise ParseError()
        reference, pattern = astring(args[0]), astring(args[1])
        if reference is None or pattern is None:
            raise ParseError()
        matcher = _wildcard(reference + pattern)
        for name in self._subscribed:  # the subscriptions file's order
            folder = self._folders.get(name)
            if folder is not None and matcher.match(folder.name):
                attributes = folder.special_use or ""
                self._send(f'* LSUB ({attributes}) "/" {_mailbox_name(folder.name)}')
        self._tagged(tag, "OK", "Lsub completed.")

    def _do_subscribe(self, tag: str, args: list[Token]) -> None:
        if len(args) != 1:
            raise ParseError()
        name, folder = self._folder(args[0])
        if folder is None:
            return self._tagged(tag, "NO", f"Mailbox doesn't exist: {name}")
        self._subscribed[name] = None
        self._tagged(tag, "OK", "Subscribe completed.", timing=TIMING_3)

    def _do_unsubscribe(self, tag: str, args: list[Token]) -> None:
        if len(args) != 1:
            raise ParseError()
        name, _ = self._folder(args[0])
        self._subscribed.pop(name, None)
        self._tagged(tag, "OK", "Unsubscribe completed.")

    # CREATE, DELETE, RENAME: of the session's folders, like everything else.

    def _do_create(self, tag: str, args: list[Token]) -> None:
        if len(args) < 1:
            raise ParseError()
        name, folder = self._folder(args[0])
        if folder is not None:
            return self._tagged(tag, "NO", "[ALREADYEXISTS] Mailbox already exists")
        name = name.rstrip("/")
        if not name or len(self._folders) >= MAX_FOLDERS or len(name) > 255:
            return self._tagged(tag, "NO", "[CANNOT] Invalid mailbox name")
        created = SessionFolder(name, None, self._new_uidvalidity(), [], 1)
        self._folders = {name: created, **self._folders}  # Dovecot lists a new folder first
        self._change_folder(name, "create")
        self._tagged(tag, "OK", "Create completed.", timing=TIMING_3)

    def _do_delete(self, tag: str, args: list[Token]) -> None:
        if len(args) != 1:
            raise ParseError()
        name, folder = self._folder(args[0])
        if folder is None:
            return self._tagged(tag, "NO", f"[NONEXISTENT] Mailbox doesn't exist: {name}")
        if name == "INBOX":
            return self._tagged(tag, "NO", "INBOX can't be deleted.")
        if folder is self._selected:
            self._selected = None
            self.state = State.AUTHENTICATED
        del self._folders[name]
        self._subscribed.pop(name, None)
        self._change_folder(name, "delete")
        self._tagged(tag, "OK", "Delete completed.", timing=TIMING_3)

    def _do_rename(self, tag: str, args: list[Token]) -> None:
        if len(args) != 2:
            raise ParseError()
        name, folder = self._folder(args[0])
        new_name, existing = self._folder(args[1])
        if folder is None:
            return self._tagged(tag, "NO", f"[NONEXISTENT] Mailbox doesn't exist: {name}")
        if existing is not None:
            return self._tagged(tag, "NO", "[ALREADYEXISTS] Target mailbox already exists")
        if name == "INBOX" or not new_name or len(new_name) > 255:
            return self._tagged(tag, "NO", "[CANNOT] Renaming INBOX isn't supported.")
        folder.name = new_name
        self._folders = {(new_name if key == name else key): value for key, value in self._folders.items()}
        self._change_folder(name, "rename", to=new_name)
        self._tagged(tag, "OK", "Rename completed.")

    def _new_uidvalidity(self) -> int:
        return max((f.uidvalidity for f in self._folders.values()), default=1) + 1

    def _change_folder(self, name: str, change: str, *, to: str | None = None) -> None:
        self._emit("looper.imap.change", folder=name, uid=0, change=change, flags=[], how=None, to=to)

    def _do_status(self, tag: str, args: list[Token]) -> None:
        if len(args) < 2:
            raise ParseError("Missing arguments")
        if len(args) != 2 or not isinstance(args[1], list) or not args[1]:
            raise ParseError()
        name, folder = self._folder(args[0])
        if folder is None:
            return self._tagged(tag, "NO", f"Mailbox doesn't exist: {name}")
        values = []
        for item in args[1]:
            key = item.upper() if isinstance(item, str) else ""
            if key == "MESSAGES":
                values.append(f"MESSAGES {len(folder.messages)}")
            elif key == "RECENT":
                values.append(f"RECENT {sum(1 for m in folder.messages if m.recent)}")
            elif key == "UIDNEXT":
                values.append(f"UIDNEXT {folder.uidnext}")
            elif key == "UIDVALIDITY":
                values.append(f"UIDVALIDITY {folder.uidvalidity}")
            elif key == "UNSEEN":
                unseen = sum(1 for m in folder.messages if SEEN not in m.flags)
                values.append(f"UNSEEN {unseen}")
            elif key == "SIZE":
                values.append(f"SIZE {sum(len(m.content) for m in folder.messages)}")
            else:
                raise ParseError(f"Invalid status item {item if isinstance(item, str) else ''}")
        self._send(f"* STATUS {_mailbox_name(astring(args[0]) or name)} ({' '.join(values)})")  # as the client named it
        self._tagged(tag, "OK", "Status completed.", timing=TIMING_3)

    def _do_select(self, tag: str, args: list[Token], *, read_only: bool = False) -> None:
        if len(args) < 1:
            raise ParseError()
        name, folder = self._folder(args[0])
        if self._selected is not None:
            self._send("* OK [CLOSED] Previous mailbox closed.")
            self._selected = None
            self.state = State.AUTHENTICATED
        if folder is None:
            return self._tagged(tag, "NO", f"Mailbox doesn't exist: {name}")
        if any(isinstance(a, list) and any(isinstance(x, str) and x.upper() == "CONDSTORE" for x in a) for a in args[1:]):
            self._enabled.add("CONDSTORE")
        self._selected, self._read_only = folder, read_only
        self.state = State.SELECTED
        self._send_flags(folder, read_only=read_only)
        self._send(f"* {len(folder.messages)} EXISTS")
        self._send(f"* {sum(1 for m in folder.messages if m.recent)} RECENT")
        for seq, message in enumerate(folder.messages, 1):
            if "\\Seen" not in message.flags:
                self._send(f"* OK [UNSEEN {seq}] First unseen.")
                break
        self._send(f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid")
        self._send(f"* OK [UIDNEXT {folder.uidnext}] Predicted next UID")
        if self._enabled:
            self._send(f"* OK [HIGHESTMODSEQ {len(folder.messages) + 1}] Highest")
        if read_only:
            self._tagged(tag, "OK", "[READ-ONLY] Examine completed.")
        else:
            self._tagged(tag, "OK", "[READ-WRITE] Select completed.")

    def _send_flags(self, folder: SessionFolder, *, read_only: bool = False) -> None:
        known = " ".join([*SYSTEM_FLAGS, *folder.keywords])
        self._send(f"* FLAGS ({known})")
        if read_only:
            self._send("* OK [PERMANENTFLAGS ()] Read-only mailbox.")
        else:
            self._send(f"* OK [PERMANENTFLAGS ({known} \\*)] Flags permitted.")

    def _do_examine(self, tag: str, args: list[Token]) -> None:
        self._do_select(tag, args, read_only=True)

    def _do_append(self, tag: str, args: list[Token]) -> None:
        if len(args) < 2 or not isinstance(args[-1], bytes):
            raise ParseError()
        name, folder = self._folder(args[0])
        flags: set[str] = set()
        when = datetime.fromtimestamp(self.environment.now_s(), timezone.utc)
        for extra in args[1:-1]:
            if isinstance(extra, list):
                flags = self._flags(extra)
            elif isinstance(extra, bytes):
                parsed = _parse_datetime(extra.decode("ascii", "replace"))
                if parsed is None:
                    raise ParseError("Invalid arguments.")
                when = parsed
            else:
                raise ParseError()
        if folder is None:
            return self._tagged(tag, "NO", f"[TRYCREATE] Mailbox doesn't exist: {name}")
        content = args[-1]
        if self._appended_bytes + len(content) > MAX_SESSION_APPEND_BYTES or len(folder.messages) >= MAX_FOLDER_MESSAGES:
            return self._tagged(tag, "NO", "[OVERQUOTA] Quota exceeded (mailbox for user is full)")
        self._appended_bytes += len(content)
        flags.discard("\\Recent")
        self._append = (tag, folder, flags, when, content)
        self._actions.append(Store(content, hashlib.sha256(content).hexdigest()))
        self.paused = True

    def _finish_append(self, path: str | None) -> None:
        if self._append is None:
            return
        tag, folder, flags, when, content = self._append
        self._append = None
        message = SessionMessage(folder.uidnext, content, flags, when.astimezone(timezone.utc), recent=True)
        subject = message.subject
        message_id = message.parsed.fields.get("message-id")
        self._emit(
            "looper.imap.append", folder=folder.name, uid=message.uid, size=len(content),
            sha256=hashlib.sha256(content).hexdigest(), path=path, flags=sorted(flags), subject=subject,
            message_id=None if message_id is None else str(message_id).strip(),
        )
        if path is None:
            return self._tagged(tag, "NO", "[SERVERBUG] Internal error occurred. Refer to server log for more information.")
        folder.messages.append(message)
        folder.uidnext += 1
        if folder is self._selected:
            self._send(f"* {len(folder.messages)} EXISTS")
            self._send(f"* {sum(1 for m in folder.messages if m.recent)} RECENT")
        self._tagged(tag, "OK", f"[APPENDUID {folder.uidvalidity} {message.uid}] Append completed.", timing=TIMING_3)

    def _do_idle(self, tag: str, args: list[Token]) -> None:
        if args:
            raise ParseError()
        self._idle_tag = tag
        self.mode = Mode.IDLE
        self.idle_timeout_s = IDLE_NOTIFY_S
        self._send("+ idling")

    def _idle_line(self, line: bytes) -> None:
        self._emit("looper.command.input", input=as_text(line[:MAX_LOGGED_INPUT]))
        self.mode = Mode.COMMAND
        self.idle_timeout_s = IDLE_TIMEOUT_S
        if line.upper() == b"DONE":
            self._tagged(self._idle_tag, "OK", "Idle completed.", timing=TIMING_3)
        else:
            self._tagged(self._idle_tag, "BAD", "Expected DONE.", timing=TIMING_3)

    # -- selected -------------------------------------------------------------------------

    def _do_check(self, tag: str, args: list[Token]) -> None:
        self._tagged(tag, "OK", "Check completed.")

    def _do_close(self, tag: str, args: list[Token]) -> None:
        if not self._read_only:
            self._expunge(None, announce=False)
        self._selected = None
        self.state = State.AUTHENTICATED
        self._tagged(tag, "OK", "Close completed.")

    def _do_unselect(self, tag: str, args: list[Token]) -> None:
        self._selected = None
        self.state = State.AUTHENTICATED
        self._tagged(tag, "OK", "Unselect completed.")

    def _do_expunge(self, tag: str, args: list[Token]) -> None:
        if not self._read_only:
            self._expunge(None, announce=True)
        self._tagged(tag, "OK", "Expunge completed.")

    def _expunge(self, uids: set[int] | None, *, announce: bool) -> None:
        folder = self._selected
        assert folder is not None
        gone = [
            seq for seq, message in enumerate(folder.messages, 1)
            if "\\Deleted" in message.flags and (uids is None or message.uid in uids)
        ]
        for seq in gone:
            self._change(folder, folder.messages[seq - 1], "expunge")
        if announce:  # Dovecot announces them from the last: no number moves meanwhile
            for seq in reversed(gone):
                self._send(f"* {seq} EXPUNGE")
        removed = set(gone)
        folder.messages = [m for seq, m in enumerate(folder.messages, 1) if seq not in removed]

    def _do_uid(self, tag: str, args: list[Token]) -> None:
        if not args or not isinstance(args[0], str):
            raise ParseError()
        sub = args[0].upper()
        if sub == "EXPUNGE":
            if len(args) != 2 or not isinstance(args[1], str):
                raise ParseError()
            ranges = self._ranges(args[1], uid=True)
            if not self._read_only:
                self._expunge({m.uid for m in self._messages(ranges, uid=True)[1]}, announce=True)
            return self._tagged(tag, "OK", "Expunge completed.")
        getattr(self, "_do_" + sub.lower())(tag, args[1:], uid=True)

    def _ranges(self, text: Token, *, uid: bool) -> list[tuple[int, int]]:
        folder = self._selected
        assert folder is not None
        if not isinstance(text, str):
            raise ParseError("Invalid messageset")
        largest = (folder.messages[-1].uid if folder.messages else 0) if uid else len(folder.messages)
        ranges = parse_set(text, max(largest, 1) if uid else largest)
        if ranges is None:
            raise ParseError("Invalid messageset")
        if not uid and any(high > len(folder.messages) for _, high in ranges):
            raise ParseError("Invalid messageset")
        return ranges

    def _messages(self, ranges: list[tuple[int, int]], *, uid: bool) -> tuple[list[int], list[SessionMessage]]:
        folder = self._selected
        assert folder is not None
        seqs, found = [], []
        for seq, message in enumerate(folder.messages, 1):
            if in_set(message.uid if uid else seq, ranges):
                seqs.append(seq)
                found.append(message)
        return seqs, found

    def _do_fetch(self, tag: str, args: list[Token], uid: bool = False) -> None:
        if len(args) < 2:
            raise ParseError()
        ranges = self._ranges(args[0], uid=uid)
        items = self._fetch_items(args[1])
        if uid and not any(item.kind == "UID" for item in items):
            items.insert(0, _Fetch("UID", "UID"))
        # Dovecot answers the message's data (sections, RFC822*) after everything else
        items = [i for i in items if i.kind not in _BODY_DATA] + [i for i in items if i.kind in _BODY_DATA]
        folder = self._selected
        assert folder is not None
        for seq, message in zip(*self._messages(ranges, uid=uid)):
            self._send(self._fetch_one(folder, seq, message, items))
        self._tagged(tag, "OK", "Fetch completed.")

    def _fetch_items(self, spec: Token) -> list[_Fetch]:
        if isinstance(spec, str) and spec.upper() in _MACROS:
            return [_Fetch(name, name) for name in _MACROS[spec.upper()]]
        raw = spec if isinstance(spec, list) else [spec]
        if not raw:
            raise ParseError("Invalid arguments.")
        items = []
        for token in raw:
            if not isinstance(token, str):
                raise ParseError("Invalid arguments.")
            upper = token.upper()
            if upper in _SIMPLE_FETCH:
                items.append(_Fetch(upper, upper, peek=upper not in ("RFC822", "RFC822.TEXT")))
                continue
            found = _SECTION.match(token)
            if found is None:
                if upper.startswith(("BODY[", "BODY.PEEK[")):
                    raise ParseError("Invalid BODY[..] section")
                raise ParseError(f"Unknown parameter: {token}")
            verb, numbers, text, names, origin, length = found.groups()
            try:
                number_list = [int(n) for n in numbers.split(".") if n] if numbers else []
            except ValueError:
                raise ParseError("Invalid BODY[..] section") from None
            if any(n == 0 for n in number_list):
                raise ParseError("Invalid BODY[..] section")
            text = text.upper() if text else None
            if text == "MIME" and not number_list:
                raise ParseError("Invalid BODY[..] section")
            name_list = [n.upper() for n in names.split()] if names else []
            if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT") and not name_list:
                raise ParseError("Invalid BODY[..] section")
            section = ".".join(str(n) for n in number_list)
            if text:
                section = f"{section}.{text}" if section else text
            if name_list:
                section += " (" + " ".join(name_list) + ")"
            partial = None
            echoed = f"BODY[{section}]"
            if origin is not None:
                partial = (int(origin), int(length) if length is not None else 1 << 62)
                echoed += f"<{int(origin)}>"
            items.append(_Fetch(echoed, "SECTION", number_list, text, name_list, partial,
                                peek=verb.upper() == "BODY.PEEK"))
        return items

    def _fetch_one(self, folder: SessionFolder, seq: int, message: SessionMessage, items: list[_Fetch]) -> bytes:
        out: list[bytes] = []
        sets_seen = not self._read_only and "\\Seen" not in message.flags and any(not i.peek for i in items)
        implicit_flags = sets_seen and not any(i.kind == "FLAGS" for i in items)
        if sets_seen:
            message.flags.add("\\Seen")
            self._change(folder, message, "flags", flags=["\\Seen"], how="+FLAGS")
        reads: dict[str, None] = {}
        for item in items:
            if implicit_flags and item.kind in _BODY_DATA:  # the flags it changed, before the data
                out.append(b"FLAGS " + _flag_list(message.flags, message.recent))
                implicit_flags = False
            kind = item.kind
            if kind == "FLAGS":
                out.append(b"FLAGS " + _flag_list(message.flags, message.recent))
            elif kind == "UID":
                out.append(b"UID %d" % message.uid)
            elif kind == "INTERNALDATE":
                out.append(b'INTERNALDATE "' + _format_datetime(message.internaldate).encode() + b'"')
            elif kind == "RFC822.SIZE":
                out.append(b"RFC822.SIZE %d" % len(message.content))
            elif kind == "ENVELOPE":
                out.append(b"ENVELOPE " + message.derived.envelope())
                reads["envelope"] = None
            elif kind == "BODYSTRUCTURE":
                out.append(b"BODYSTRUCTURE " + message.derived.body_structure())
            elif kind == "BODY":
                out.append(b"BODY " + message.derived.body_structure(extended=False))
            elif kind == "RFC822":
                out.append(b"RFC822 " + fx.literal(message.content))
                reads["body"] = None
            elif kind == "RFC822.HEADER":
                out.append(b"RFC822.HEADER " + fx.literal(message.parsed.header))
                reads["header"] = None
            elif kind == "RFC822.TEXT":
                out.append(b"RFC822.TEXT " + fx.literal(message.parsed.body))
                reads["body"] = None
            else:
                data = fx.section_bytes(message.parsed, message.content, item.numbers, item.text, item.names)
                if item.partial is not None:
                    start, length = item.partial
                    data = data[start : start + length]
                out.append(item.name.encode("utf-8", "replace") + b" " + fx.literal(data))
                if item.numbers:
                    reads["part"] = None
                elif item.text in (None, "TEXT"):
                    reads["body"] = None
                else:
                    reads["header"] = None
        for what in reads:
            key = (folder.name, message.uid, what)
            if key in self._reads or len(self._reads) >= MAX_READS_REMEMBERED:
                continue
            self._reads.add(key)
            self._emit("looper.bait.read", folder=folder.name, uid=message.uid, subject=message.subject, what=what)
        return b"* %d FETCH (" % seq + b" ".join(out) + b")"

    def _flags(self, tokens_: list[Token]) -> set[str]:
        flags = set()
        for token in tokens_:
            if not isinstance(token, str) or not token:
                raise ParseError("Invalid arguments.")
            if token.startswith("\\"):
                system = _SYSTEM_FLAGS_UPPER.get(token.upper())
                if system is None:  # \Recent too: only the server sets it
                    raise ParseError(f"Invalid system flag {token.upper()}")
                flags.add(system)
            elif len(flags) < MAX_KEYWORDS:
                flags.add(token)
        return flags

    def _do_store(self, tag: str, args: list[Token], uid: bool = False) -> None:
        if len(args) < 3 or not isinstance(args[1], str):
            raise ParseError()
        ranges = self._ranges(args[0], uid=uid)
        how = args[1].upper()
        silent = how.endswith(".SILENT")
        how = how.removesuffix(".SILENT")
        if how not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise ParseError("Invalid arguments.")
        flag_tokens = args[2] if isinstance(args[2], list) else args[2:]
        flags = self._flags(flag_tokens)
        if self._read_only:
            return self._tagged(tag, "OK", "Store ignored with read-only mailbox.")
        folder = self._selected
        assert folder is not None
        new_keywords = [f for f in sorted(flags) if f not in SYSTEM_FLAGS and f not in folder.keywords]
        if new_keywords and how != "-FLAGS":
            folder.keywords += new_keywords[: max(MAX_KEYWORDS - len(folder.keywords), 0)]
            self._send_flags(folder)
        for seq, message in zip(*self._messages(ranges, uid=uid)):
            before = set(message.flags)
            if how == "FLAGS":
                message.flags = set(flags)
            elif how == "+FLAGS":
                message.flags |= flags
            else:
                message.flags -= flags
            if message.flags != before:
                self._change(folder, message, "flags", flags=sorted(flags), how=how)
            if not silent:
                uid_part = b"UID %d " % message.uid if uid else b""
                self._send(b"* %d FETCH (" % seq + uid_part + b"FLAGS " + _flag_list(message.flags, message.recent) + b")")
        self._tagged(tag, "OK", "Store completed.")

    def _do_copy(self, tag: str, args: list[Token], uid: bool = False, *, move: bool = False) -> None:
        if len(args) < 2:
            raise ParseError("Missing arguments")
        if len(args) != 2:
            raise ParseError()
        ranges = self._ranges(args[0], uid=uid)
        name, target = self._folder(args[1])
        if target is None:
            return self._tagged(tag, "NO", f"[TRYCREATE] Mailbox doesn't exist: {name}")
        source = self._selected
        assert source is not None
        seqs, messages = self._messages(ranges, uid=uid)
        if not messages:
            return self._tagged(tag, "OK", "No messages found.")
        if len(target.messages) + len(messages) > MAX_FOLDER_MESSAGES:
            return self._tagged(tag, "NO", "[OVERQUOTA] Quota exceeded (mailbox for user is full)")
        old_uids, new_uids = [], []
        for message in messages:
            copy = SessionMessage(target.uidnext, message.content, set(message.flags) - {"\\Deleted"} if move else set(message.flags),
                                  message.internaldate, message._derived, bait=message.bait)
            target.messages.append(copy)
            target.uidnext += 1
            old_uids.append(message.uid)
            new_uids.append(copy.uid)
            self._change(source, message, "move" if move else "copy", to=target.name)
        code = f"[COPYUID {target.uidvalidity} {format_set(old_uids)} {format_set(new_uids)}]"
        if not move:
            return self._tagged(tag, "OK", f"{code} Copy completed.", timing=TIMING_3)
        self._send(f"* OK {code} Moved UIDs.")
        for seq in reversed(seqs):
            self._send(f"* {seq} EXPUNGE")
        removed = set(seqs)
        source.messages = [m for seq, m in enumerate(source.messages, 1) if seq not in removed]
        self._tagged(tag, "OK", "Move completed.", timing=TIMING_3)

    def _do_move(self, tag: str, args: list[Token], uid: bool = False) -> None:
        self._do_copy(tag, args, uid, move=True)

    def _do_search(self, tag: str, args: list[Token], uid: bool = False) -> None:
        if args and isinstance(args[0], str) and args[0].upper() == "CHARSET":
            if len(args) < 2:
                raise ParseError()
            charset = astring(args[1])
            if charset is None or not _known_charset(charset):
                return self._tagged(tag, "NO", "[BADCHARSET] Unknown charset")
            args = args[2:]  # Dovecot converts any charset iconv knows; the bait is ASCII anyway
        if not args:
            raise ParseError("Missing search parameters")
        folder = self._selected
        assert folder is not None
        matcher = SearchParser(args, folder).parse_all()
        hits = []
        for seq, message in enumerate(folder.messages, 1):
            if matcher(seq, message):
                hits.append(message.uid if uid else seq)
        self._send("* SEARCH" + "".join(f" {n}" for n in hits))
        self._tagged(tag, "OK", "Search completed.")

    def _change(self, folder: SessionFolder, message: SessionMessage, change: str, *,
                flags: list[str] | None = None, how: str | None = None, to: str | None = None) -> None:
        self._emit("looper.imap.change", folder=folder.name, uid=message.uid, change=change,
                   flags=flags or [], how=how, to=to)


# Charsets glibc's iconv (Dovecot's) knows and Python's codecs do not.
_ICONV_ONLY_CHARSETS = frozenset({"KOI8", "KOI-8", "KOI-7", "KOI8R", "KOI8U", "CSKOI8R"})


def _known_charset(name: str) -> bool:
    """SEARCH CHARSET: one Dovecot's iconv converts, else [BADCHARSET]."""
    if name.upper() in _ICONV_ONLY_CHARSETS:
        return True
    try:
        return codecs.lookup(name)._is_text_encoding
    except (LookupError, ValueError):
        return False


def _parse_datetime(text: str) -> datetime | None:
    """An APPEND date-time: "dd-Mon-yyyy hh:mm:ss +zzzz"."""
    try:
        return datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


def _format_datetime(when: datetime) -> str:
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return (f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} {when.hour:02d}:{when.minute:02d}:{when.second:02d}"
            f" {sign}{minutes // 60:02d}{minutes % 60:02d}")


def _flag_list(flags: set[str], recent: bool = False) -> bytes:
    """System flags in Dovecot's order, then \\Recent, then keywords."""
    ordered = [flag for flag in SYSTEM_FLAGS if flag in flags] + (["\\Recent"] if recent else [])
    ordered += sorted(f for f in flags if f not in SYSTEM_FLAGS)
    return ("(" + " ".join(ordered) + ")").encode("utf-8", "replace")


def _mailbox_name(name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.&\-]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wildcard(pattern: str) -> re.Pattern[str]:
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out) + r"\Z", re.DOTALL)
