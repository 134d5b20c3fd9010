"""The bait POP3 server (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH, RFC 2595
STLS) as Dovecot 2.3.19 on Debian speaks it, sans-IO.

Everything that affects transitions lives here: one enum of states, and one
table (ALLOWED) of the commands each state answers; a command the table
does not allow gets Dovecot's unknown-command reply for that state.

- AUTHORIZATION is Dovecot's pop3-login process: CAPA, USER, PASS, APOP
  (refused: "APOP not enabled."), AUTH (SASL through proto/sasl.py, with
  an initial response; AUTH alone lists the mechanisms, the old discovery
  Outlook uses), STLS, QUIT, XCLIENT (untrusted: ignored, as Dovecot
  ignores it). Unknown commands say "-ERR Unknown command." and the third
  bad one in a row ends the session ("-ERR Too many invalid bad commands.").
  A failed login waits before its reply as Dovecot's does (its
  auth_failure_delay and auth penalty: 2 s, 6 s from the second failure of
  an address, 2 s again from the fifth);
  Dovecot 2.3 never hangs up on failed logins, so neither do we. A line of
  more than LOGIN_MAX_INBUF_SIZE bytes: "-ERR Input buffer full, aborting".
- TRANSACTION is Dovecot's pop3 process, on INBOX: CAPA, STAT, LIST, UIDL,
  RETR, TOP, DELE, RSET, NOOP, QUIT; "-ERR Unknown command: NAME"; more
  than 20 bad commands in a row: "-ERR Too many bad commands."; a line over
  2048 bytes: "-ERR Input line too long.".
- UPDATE (after QUIT in TRANSACTION): nothing is deleted, what would have
  been is logged; then CLOSED.

Texts and numbers are Dovecot's, checked against Dovecot 2.3.19.1 (see
tests/test_pop3_machine.py) and its source (src/pop3-login/, src/pop3/,
src/login-common/).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import enum
import re
from dataclasses import dataclass
from typing import Any

from looper.events import Event
from looper.proto.actions import Action, Close, CloseReason, Send, StartTLS
from looper.proto.lines import LineReader, Refused
from looper.proto.login import LoginPolicy, login_fields
from looper.proto.mailbox import BaitFolder, BaitMessage
from looper.proto.sasl import Challenge, Credentials, Failure, SaslExchange
from looper.proto.text import as_text

GREETING = b"+OK Dovecot (Debian) ready.\r\n"

# src/pop3/pop3-capability.h, then pop3-login adds STLS, USER and SASL.
CAPABILITIES = b"CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n"

# login-common: AUTH_FAILED_MSG and AUTH_PLAINTEXT_DISABLED_MSG.
AUTH_FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
PLAINTEXT_DISALLOWED = (
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
)
PLAINTEXT_DISABLED = b"-ERR [AUTH] Plaintext authentication disabled.\r\n"  # AUTH PLAIN before TLS
UNSUPPORTED_MECHANISM = b"-ERR [AUTH] Unsupported authentication mechanism.\r\n"
AUTH_ABORTED = b"-ERR Authentication aborted by client.\r\n"
BAD_BASE64_INITIAL = b"-ERR [AUTH] Invalid base64 data in initial response\r\n"
BAD_BASE64_CONTINUED = b"-ERR [AUTH] Invalid base64 data in continued response\r\n"  # the line "="
BAD_BASE64 = b"-ERR [AUTH] Invalid base64 in response\r\n"
LOGGED_IN = b"+OK Logged in.\r\n"
NO_USERNAME = b"-ERR No username given.\r\n"
APOP_DISABLED = b"-ERR APOP not enabled.\r\n"
XCLIENT_IGNORED = b"+OK You are not from trusted IP - ignoring\r\n"
BEGIN_TLS = b"+OK Begin TLS negotiation now.\r\n"
TLS_ACTIVE = b"-ERR TLS is already active.\r\n"
LOGIN_UNKNOWN = b"-ERR Unknown command.\r\n"
LOGIN_TOO_MANY_BAD = b"-ERR Too many invalid bad commands.\r\n"
LOGIN_BUFFER_FULL = b"-ERR Input buffer full, aborting\r\n"
LOGIN_LOGOUT = b"+OK Logging out\r\n"  # no full stop before login: Dovecot's own
LOGOUT = b"+OK Logging out.\r\n"
LOGOUT_DELETED = b"+OK Logging out, messages deleted.\r\n"
TOO_MANY_BAD = b"-ERR Too many bad commands.\r\n"
LINE_TOO_LONG = b"-ERR Input line too long.\r\n"
INACTIVITY = b"-ERR Disconnected for inactivity.\r\n"
INACTIVITY_IN_AUTH = b"-ERR Disconnected for inactivity during authentication.\r\n"
LOGIN_SHUTTING_DOWN = b"-ERR Shutting down\r\n"  # login-common's clients_destroy_all
SHUTTING_DOWN = b"-ERR [SYS/TEMP] Server shutting down.\r\n"  # pop3's
MARKED_DELETED = b"+OK Marked to be deleted.\r\n"
IS_DELETED = b"-ERR Message is deleted.\r\n"
OK = b"+OK\r\n"

# Limits, Dovecot's. login-common: LOGIN_MAX_INBUF_SIZE = MASTER_AUTH_MAX_DATA_SIZE
# (1024 + 128 + 64 + 2) - LOGIN_MAX_MASTER_PREFIX_LEN (128) - LOGIN_MAX_SESSION_ID_LEN (64)
# = 1026 bytes of buffer. pop3-login takes the command name (at most 8
# bytes, and the space after it) out of the buffer first: what is left of
# the line, with its CR LF, must fit in it (measured: an unknown command of
# 1032 bytes is answered, one of 1033 fills the buffer).
LOGIN_INBUF_BYTES = 1026
LOGIN_MAX_NAME_BYTES = 8  # pop3-login's CLIENT_MAX_CMD_LEN
# An AUTH line's initial response and a SASL response: LOGIN_MAX_AUTH_BUF_SIZE.
MAX_AUTH_LINE_BYTES = 8192
# src/pop3/pop3-client.c: MAX_INBUF_SIZE 2048, a line and its LF.
MAX_LINE_BYTES = 2047
LOGIN_MAX_BAD_COMMANDS = 3  # pop3-login's CLIENT_MAX_BAD_COMMANDS: the third in a row ends it
MAX_BAD_COMMANDS = 20  # pop3's: the 21st in a row ends it
# MASTER_LOGIN_TIMEOUT_SECS (3 min) before login; CLIENT_IDLE_TIMEOUT_MSECS (10 min) after.
LOGIN_TIMEOUT_S = 180.0
IDLE_TIMEOUT_S = 600.0
AUTH_FAILURE_DELAY_S = 2.0  # auth_failure_delay
# Dovecot's auth penalty (src/auth/auth-penalty.c, kept per address by anvil,
# across sessions, until a success) adds to it: measured on a stock 2.3.19.1
# with failures back to back from one address, the replies wait 2, 6, 6, 6,
# then 2 s again from the fifth.
AUTH_PENALTY_DELAY_S = 6.0
AUTH_PENALTY_FAILURES = range(2, 5)
# Ours: a session that keeps talking forever is cut (Dovecot has no such
# limit; a client that sends this many commands is no mail client).
MAX_COMMANDS = 100_000
# Output made from one read before the rest of it waits (`backlog`) until the
# client has taken what was written: a chunk of pipelined RETRs would
# otherwise become thousands of messages in memory at once. Dovecot, too,
# stops reading commands while its output buffer is full.
OUTPUT_BUDGET_BYTES = 256 * 1024
# Input held meanwhile: the adapter stops reading while the machine is
# paused, so this is one read and what was already in flight.
MAX_BACKLOG_BYTES = 1024 * 1024
_UINT_MAX = 2**32 - 1
_UOFF_MAX = 2**64 - 1


class State(enum.Enum):
    AUTHORIZATION = "authorization"  # before login (Dovecot's pop3-login)
    SASL = "sasl"  # an AUTH exchange awaits the client's next response
    TRANSACTION = "transaction"  # logged in, INBOX open
    UPDATE = "update"  # QUIT in TRANSACTION: what would be deleted is logged
    CLOSED = "closed"


# What each state answers; anything else is an unknown command there.
ALLOWED: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"CAPA", "USER", "PASS", "APOP", "AUTH", "STLS", "QUIT", "XCLIENT", "XOIP"}),
    State.SASL: frozenset(),  # every line is a SASL response
    State.TRANSACTION: frozenset(
        {"CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP", "QUIT"}
    ),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}


@dataclass(frozen=True)
class Pop3Settings:
    login_policy: LoginPolicy = LoginPolicy()
    auth_mechanisms: tuple[str, ...] = ("PLAIN",)  # mail_access.auth_mechanisms
    plaintext_login: bool = True  # mail_access.plaintext_login (not disable_plaintext_auth)
    tls_available: bool = True
    # The wait before a failed login's reply; None: Dovecot's (see failure_delay_s).
    auth_failure_delay_s: float | None = None


@dataclass(frozen=True)
class Pop3Client:
    ip: str = ""
    tls: bool = False  # implicit TLS (pop3s)
    earlier_auth_failures: int = 0  # from this address, in earlier sessions, any protocol
    local_ip: str | None = None  # the address it reached: the same as its own counts as secured, as in Dovecot


def uidl(message: BaitMessage, folder: BaitFolder) -> str:
    """Dovecot's default pop3_uidl_format for Maildir, %08Xu%08Xv (its %X is lower-case hex)."""
    return f"{message.uid:08x}{folder.uidvalidity:08x}"


def dot_stuffed(content: bytes) -> bytes:
    """A message as RETR sends it, before the final ".": CRLF line ends, a
    leading "." doubled, a CRLF at the end if it lacks one."""
    content = re.sub(rb"(?<!\r)\n", b"\r\n", content)
    content = re.sub(rb"(?m)^\.", b"..", content)
    return content if content.endswith(b"\r\n") else content + b"\r\n"


def top_of(content: bytes, body_lines: int) -> bytes:
    """The header, the empty line and the first body_lines lines of the
    body, as Dovecot's TOP counts them (src/pop3/pop3-commands.c fetch)."""
    lines = content.splitlines(keepends=True)
    kept: list[bytes] = []
    in_body = False
    left = body_lines + 1  # the empty line counts too
    for line in lines:
        kept.append(line)
        if not in_body and line in (b"\r\n", b"\n"):
            in_body = True
        if in_body and line.endswith(b"\n"):
            left -= 1
            if left == 0:
                break
    return b"".join(kept)


def subject_of(content: bytes) -> str | None:
    """The Subject field, decoded; None when it has none."""
    try:
        header = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(content)
        subject = header["subject"]
        return None if subject is None else str(subject)
    except Exception:  # a bait message the parser chokes on still reads
        return None


def failure_delay_s(failures: int) -> float:
    """Dovecot's wait before a failed login's reply, by the failures of the
    address so far, this one included."""
    return AUTH_PENALTY_DELAY_S if failures in AUTH_PENALTY_FAILURES else AUTH_FAILURE_DELAY_S


def _name_bytes(line: bytes) -> int:
    """What pop3-login takes out of its buffer as a command name: up to a
    space (and the space), or its first LOGIN_MAX_NAME_BYTES bytes."""
    space = line.find(b" ", 0, LOGIN_MAX_NAME_BYTES + 1)
    return space + 1 if space >= 0 else min(len(line), LOGIN_MAX_NAME_BYTES)


class Pop3Server:
    """One POP3 session on the bait mailbox; see the module docstring."""

    __slots__ = (
        "settings", "client", "folder", "idle_timeout_s", "_state", "_lines", "_out", "_actions", "_events",
        "_tls", "_tls_pending", "_backlog", "_eof_pending", "_bad", "_commands", "_user", "_auth_failures", "_sasl", "_deleted", "_subjects",
    )

    def __init__(self, settings: Pop3Settings, client: Pop3Client, folder: BaitFolder) -> None:
        self.settings = settings
        self.client = client
        self.folder = folder  # INBOX: POP3 sees no other
        self.idle_timeout_s = LOGIN_TIMEOUT_S
        self._state = State.AUTHORIZATION
        self._lines = LineReader(MAX_AUTH_LINE_BYTES)
        self._out = bytearray()
        self._actions: list[Action] = [Send(GREETING)]
        self._events: list[Event] = []
        self._tls = client.tls
        self._tls_pending = False  # STLS answered, the handshake not done yet
        self._backlog = b""  # input not read yet: the output budget was spent (see continue_reading)
        self._eof_pending = False  # the client's EOF came behind the backlog
        self._bad = 0  # bad commands in a row
        self._commands = 0
        self._user: str | None = None  # USER's argument, until PASS
        self._auth_failures = client.earlier_auth_failures
        self._sasl: SaslExchange | None = None
        self._deleted: set[int] = set()  # message numbers, 1-based: this session's alone
        self._subjects: dict[int, str | None] = {}

    # -- the adapter's side ---------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def paused(self) -> bool:
        return self._tls_pending or bool(self._backlog)

    @property
    def backlog(self) -> bool:
        """Input waits because the output budget is spent: once what was
        written has been taken, the adapter calls continue_reading()."""
        return bool(self._backlog) and self._state is not State.CLOSED

    def continue_reading(self) -> None:
        data, self._backlog = self._backlog, b""
        self._read(data)
        if self._eof_pending and not self._backlog and self._state is not State.CLOSED:
            self._close(CloseReason.CLOSED_BY_CLIENT)
        self._flush()

    @property
    def auth_failures(self) -> int:
        """Failed logins from this address since its last success, earlier sessions included."""
        return self._auth_failures

    def actions(self) -> list[Action]:
        self._flush()
        actions, self._actions = self._actions, []
        return actions

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def receive_data(self, data: bytes) -> None:
        if self._state is State.CLOSED or self._tls_pending:
            return  # after STLS, nothing sent before the handshake counts (RFC 2595 4)
        if self._backlog:  # in flight before the adapter stopped reading
            if not data:
                self._eof_pending = True
            elif len(self._backlog) + len(data) > MAX_BACKLOG_BYTES:
                self._close(CloseReason.CLOSED_BY_SERVER)
            else:
                self._backlog += data
            return
        if not data:
            self._close(CloseReason.CLOSED_BY_CLIENT)
            return
        self._read(bytes(data))
        self._flush()

    def timed_out(self) -> None:
        if self._state is State.CLOSED:
            return
        self._out += INACTIVITY_IN_AUTH if self._state is State.SASL else INACTIVITY
        self._close(CloseReason.TIMEOUT)

    def shutting_down(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        if self._state is State.CLOSED:
            return
        self._out += SHUTTING_DOWN if self._state in (State.TRANSACTION, State.UPDATE) else LOGIN_SHUTTING_DOWN
        self._close(reason)

    def connection_closed(self) -> None:
        self._state = State.CLOSED
        self._sasl = None
        self._backlog = b""

    def tls_started(self, version: str = "", cipher: str = "") -> None:
        self._tls = True
        self._tls_pending = False
        self._lines.clear()

    def stored(self, path: str) -> None:
        raise RuntimeError("the POP3 server stores nothing")

    def store_failed(self, reason: str) -> None:
        raise RuntimeError("the POP3 server stores nothing")

    # -- reading ----------------------------------------------------------------

    def _read(self, data: bytes) -> None:
        start = 0
        held_before = self._output_held()  # the budget is of what this read makes: each read moves on
        while start < len(data) and self._state is not State.CLOSED:
            if self._tls_pending:
                return  # what came after STLS is dropped, as a TLS server must
            if self._output_held() - held_before >= OUTPUT_BUDGET_BYTES:
                self._backlog = data[start:]
                return
            line, start = self._lines.read_line(data, start)
            if line is None:
                return
            self._commands += 1
            if self._commands > MAX_COMMANDS:
                self._close(CloseReason.CLOSED_BY_SERVER)
                return
            if line is Refused.TOO_LONG:
                self._too_long()
            elif isinstance(line, bytes):
                self._line(line)

    def _too_long(self) -> None:
        self._emit("looper.command.input", input="(line too long)")
        if self._state is State.SASL:  # "Authentication response too large": no reply
            self._close(CloseReason.CLOSED_BY_SERVER)
            return
        self._out += LINE_TOO_LONG if self._state is State.TRANSACTION else LOGIN_BUFFER_FULL
        self._close(CloseReason.CLOSED_BY_SERVER)

    def _line(self, line: bytes) -> None:
        if self._state is State.SASL:
            self._sasl_response(line)
            return
        # Dovecot reads a line as a C string: a NUL ends it.
        name, _, argument = line.split(b"\0", 1)[0].partition(b" ")
        verb = as_text(name.upper())  # ASCII letters only, as C's toupper
        if self._state is State.TRANSACTION:
            argument = argument.lstrip(b" ")  # pop3's client_command_execute skips them
        if self._state is State.AUTHORIZATION:
            verb = verb[:LOGIN_MAX_NAME_BYTES]
            if verb != "AUTH" and len(line) - _name_bytes(line) + 2 > LOGIN_INBUF_BYTES:
                return self._too_long()
        logged = line
        if verb == "PASS":
            logged = name  # the password is in the login event alone
        elif verb == "AUTH":
            logged = name + b" " + re.match(rb"[A-Za-z0-9_-]{0,20}", argument).group() if argument else name
        self._emit("looper.command.input", input=as_text(logged))
        if verb not in ALLOWED[self._state]:
            return self._unknown(name.upper())
        handler = _LOGIN_HANDLERS if self._state is State.AUTHORIZATION else _HANDLERS
        # A handler says whether the command was good (the count of bad ones
        # in a row starts again), bad, or neither (AUTH, as in pop3-login).
        # After login an argument is echoed in errors byte for byte (latin-1 keeps every byte).
        text = as_text(argument) if self._state is State.AUTHORIZATION else argument.decode("latin-1")
        good = handler[verb](self, text, argument)
        if good:
            self._bad = 0
        elif good is not None:
            self._count_bad()

    def _unknown(self, name: bytes) -> None:
        if self._state is State.AUTHORIZATION or not name:
            self._out += LOGIN_UNKNOWN  # before login, and for an empty line, Dovecot names no command
        else:
            self._out += b"-ERR Unknown command: " + name + b"\r\n"  # its bytes, whatever they are
        self._count_bad()

    def _count_bad(self) -> None:
        self._bad += 1
        if self._state is State.AUTHORIZATION and self._bad >= LOGIN_MAX_BAD_COMMANDS:
            self._out += LOGIN_TOO_MANY_BAD
            self._close(CloseReason.CLOSED_BY_SERVER)
        elif self._state is State.TRANSACTION and self._bad > MAX_BAD_COMMANDS:
            self._out += TOO_MANY_BAD
            self._close(CloseReason.CLOSED_BY_SERVER)

    # -- AUTHORIZATION ----------------------------------------------------------

    @property
    def _plaintext_allowed(self) -> bool:
        return self.settings.plaintext_login or self._tls or self.client.ip == self.client.local_ip

    def _mechanisms(self) -> tuple[str, ...]:
        """What CAPA's SASL line and AUTH's list offer: Dovecot hides the
        plaintext ones until TLS when plaintext login is disabled."""
        if self._plaintext_allowed:
            return self.settings.auth_mechanisms
        return tuple(m for m in self.settings.auth_mechanisms if m not in ("PLAIN", "LOGIN"))

    def _capa_login(self, argument: str, raw: bytes) -> bool:
        out = b"+OK\r\n" + CAPABILITIES
        if self.settings.tls_available and not self._tls:
            out += b"STLS\r\n"
        if self._plaintext_allowed:
            out += b"USER\r\n"
        out += b"SASL" + b"".join(b" " + m.encode() for m in self._mechanisms()) + b"\r\n.\r\n"
        self._out += out
        return True

    def _user_cmd(self, argument: str, raw: bytes) -> bool:
        if not self._plaintext_allowed:
            self._user = argument  # refused, but a PASS that follows is logged with it
            self._out += PLAINTEXT_DISALLOWED
            return True
        self._user = argument
        self._out += OK
        return True

    def _pass_cmd(self, argument: str, raw: bytes) -> bool:
        if not self._plaintext_allowed:
            # Dovecot refuses it unread; the password crossed the wire anyway.
            user, self._user = self._user, None
            self._auth_failures += 1
            self._emit("looper.login.failed", reason="plaintext disallowed", mechanism="USER", username=user,
                       password=argument)
            self._out += PLAINTEXT_DISALLOWED
            return True
        if self._user is None:
            self._out += NO_USERNAME
            return True
        user, self._user = self._user, None
        self._login(Credentials("USER", user, password=argument))
        return True

    def _apop_cmd(self, argument: str, raw: bytes) -> bool:
        self._emit("looper.login.failed", mechanism="APOP", username=argument.split(" ")[0] or None,
                   reason="unsupported mechanism")
        self._out += APOP_DISABLED
        return True

    def _stls_cmd(self, argument: str, raw: bytes) -> bool:
        if self._tls:
            self._out += TLS_ACTIVE
            return True
        if not self.settings.tls_available:
            return self._unknown_reply()
        self._out += BEGIN_TLS
        self._flush()
        self._actions.append(StartTLS())
        self._tls_pending = True
        return True

    def _unknown_reply(self) -> bool:
        self._out += LOGIN_UNKNOWN
        return False

    def _quit_login(self, argument: str, raw: bytes) -> bool:
        self._out += LOGIN_LOGOUT
        self._close(CloseReason.CLOSED_BY_SERVER)
        return True

    def _xclient_cmd(self, argument: str, raw: bytes) -> bool:
        self._out += XCLIENT_IGNORED
        return True

    def _auth_cmd(self, argument: str, raw: bytes) -> bool | None:
        # pop3-login: the mechanism runs to a space or the line's end; nothing
        # there (AUTH alone, or two spaces) lists the mechanisms.
        if not raw or raw.startswith(b" "):
            self._out += b"+OK\r\n" + b"".join(m.encode() + b"\r\n" for m in self._mechanisms()) + b".\r\n"
            return None
        mechanism_raw, space, initial = raw.partition(b" ")
        mechanism = as_text(mechanism_raw).upper()
        if len(raw) > MAX_AUTH_LINE_BYTES:
            self._close(CloseReason.CLOSED_BY_SERVER)  # "Authentication response too large": no reply
            return None
        if mechanism not in self.settings.auth_mechanisms:
            self._login_failed(mechanism, None, "unsupported mechanism")
            self._out += UNSUPPORTED_MECHANISM
            return None
        if mechanism in ("PLAIN", "LOGIN") and not self._plaintext_allowed:
            self._login_failed(mechanism, None, "plaintext disallowed")
            self._out += PLAINTEXT_DISABLED
            return None
        self._sasl = SaslExchange(mechanism)
        outcome = self._sasl.start(as_text(initial) if initial else None)
        self._sasl_outcome(outcome, initial=True)
        return None

    def _sasl_response(self, line: bytes) -> None:
        if line.strip() == b"=":
            # "=" is no response in POP3 (only SMTP's initial one has it).
            mechanism = self._sasl.mechanism
            self._sasl = None
            self._state = State.AUTHORIZATION
            self._login_failed(mechanism, None, "invalid base64")
            self._out += BAD_BASE64_CONTINUED
            return
        self._sasl_outcome(self._sasl.respond(line), initial=False)

    def _sasl_outcome(self, outcome: Challenge | Credentials | Failure, *, initial: bool) -> None:
        mechanism = self._sasl.mechanism
        if isinstance(outcome, Challenge):
            self._out += b"+ " + base64.b64encode(outcome.data) + b"\r\n"
            self._state = State.SASL
            return
        self._sasl = None
        self._state = State.AUTHORIZATION
        if outcome is Failure.CANCELLED:
            self._login_failed(mechanism, None, "cancelled")
            self._out += AUTH_ABORTED
        elif outcome is Failure.UNDECODABLE:
            self._login_failed(mechanism, None, "invalid base64")
            self._out += BAD_BASE64_INITIAL if initial else BAD_BASE64
        elif outcome is Failure.MALFORMED:
            self._login_failed(mechanism, None, "malformed response")
            self._send_delayed(AUTH_FAILED)
        else:
            self._login(outcome)

    def _login(self, credentials: Credentials) -> None:
        if self.settings.login_policy.accepts(credentials, self._auth_failures):
            self._auth_failures = 0
            self._emit("looper.login.success", **login_fields(credentials))
            self._out += LOGGED_IN
            self._state = State.TRANSACTION
            self._bad = 0
            self.idle_timeout_s = IDLE_TIMEOUT_S
            self._lines.max_line_bytes = MAX_LINE_BYTES
            return
        self._login_failed(credentials.mechanism, credentials, "bad credentials")
        self._send_delayed(AUTH_FAILED)

    def _login_failed(self, mechanism: str, credentials: Credentials | None, reason: str) -> None:
        self._auth_failures += 1
        fields = login_fields(credentials) if credentials else {"mechanism": mechanism, "username": None}
        self._emit("looper.login.failed", reason=reason, **fields)

    def _send_delayed(self, reply: bytes) -> None:
        self._flush()
        delay_s = self.settings.auth_failure_delay_s
        self._actions.append(Send(reply, failure_delay_s(self._auth_failures) if delay_s is None else delay_s))

    # -- TRANSACTION --------------------------------------------------------------

    def _message_number(self, argument: str, *, then_space: bool) -> tuple[int, str] | None:
        """Dovecot's get_msgnum: the number and what follows it, or None
        after the error reply."""
        digits = re.match(r"[0-9]*", argument).group()
        rest = argument[len(digits):]
        if not digits:
            self._out += b"-ERR Invalid message number: " + argument.encode("latin-1") + b"\r\n"
            return None
        if int(digits) > _UINT_MAX:
            # Dovecot's str_parse_uint: past 64 bits it stops before it moves on
            shown = argument if int(digits) > _UOFF_MAX else rest
            self._out += b"-ERR Message number too large: " + shown.encode("latin-1") + b"\r\n"
            return None
        if not (rest.startswith(" ") if then_space else rest == ""):
            self._out += b"-ERR Noise after message number: " + rest.encode("latin-1") + b"\r\n"
            return None
        number = int(digits)
        if number == 0 or number > len(self.folder.messages):
            self._out += b"-ERR There's no message %d.\r\n" % number
            return None
        if number in self._deleted:
            self._out += IS_DELETED
            return None
        return number, rest.lstrip(" ")

    def _message(self, number: int) -> BaitMessage:
        return self.folder.messages[number - 1]

    def _live(self) -> list[tuple[int, BaitMessage]]:
        return [(n, m) for n, m in enumerate(self.folder.messages, 1) if n not in self._deleted]

    def _capa(self, argument: str, raw: bytes) -> bool:
        self._out += b"+OK\r\n" + CAPABILITIES + b".\r\n"
        return True

    def _stat(self, argument: str, raw: bytes) -> bool:
        live = self._live()
        self._out += b"+OK %d %d\r\n" % (len(live), sum(m.size for _, m in live))
        return True

    def _list(self, argument: str, raw: bytes) -> bool:
        if argument == "":
            live = self._live()
            self._out += b"+OK %d messages:\r\n" % len(live)
            self._out += b"".join(b"%d %d\r\n" % (n, m.size) for n, m in live) + b".\r\n"
            return True
        found = self._message_number(argument, then_space=False)
        if found is None:
            return False
        self._out += b"+OK %d %d\r\n" % (found[0], self._message(found[0]).size)
        return True

    def _uidl(self, argument: str, raw: bytes) -> bool:
        if argument == "":
            lines = b"".join(b"%d %s\r\n" % (n, uidl(m, self.folder).encode()) for n, m in self._live())
            self._out += b"+OK\r\n" + lines + b".\r\n"
            return True
        found = self._message_number(argument, then_space=False)
        if found is None:
            return False
        self._out += b"+OK %d %s\r\n" % (found[0], uidl(self._message(found[0]), self.folder).encode())
        return True

    def _retr(self, argument: str, raw: bytes) -> bool:
        found = self._message_number(argument, then_space=False)
        if found is None:
            return False
        message = self._message(found[0])
        self._read_bait(message, "body")
        self._out += b"+OK %d octets\r\n" % message.size + dot_stuffed(message.content) + b".\r\n"
        return True

    def _top(self, argument: str, raw: bytes) -> bool:
        found = self._message_number(argument, then_space=True)
        if found is None:
            return False
        number, size = found
        digits = re.match(r"[0-9]*", size).group()
        if not digits:
            self._out += b"-ERR Invalid size: " + size.encode("latin-1") + b"\r\n"
            return False
        if int(digits) > _UOFF_MAX:
            self._out += b"-ERR Size too large: " + size.encode("latin-1") + b"\r\n"
            return False
        if size[len(digits):]:
            self._out += b"-ERR Noise after size: " + size[len(digits):].encode("latin-1") + b"\r\n"
            return False
        lines = int(digits)
        message = self._message(number)
        self._read_bait(message, "body" if lines else "header")
        self._out += b"+OK\r\n" + dot_stuffed(top_of(message.content, lines)) + b".\r\n"
        return True

    def _dele(self, argument: str, raw: bytes) -> bool:
        found = self._message_number(argument, then_space=False)
        if found is None:
            return False
        self._deleted.add(found[0])
        self._emit("looper.pop3.delete", action="dele", uids=[self._message(found[0]).uid])
        self._out += MARKED_DELETED
        return True

    def _rset(self, argument: str, raw: bytes) -> bool:
        if self._deleted:
            self._emit("looper.pop3.delete", action="rset", uids=self._uids(self._deleted))
            self._deleted.clear()
        self._out += OK
        return True

    def _noop(self, argument: str, raw: bytes) -> bool:
        self._out += OK
        return True

    def _quit(self, argument: str, raw: bytes) -> bool:
        self._state = State.UPDATE
        if self._deleted:
            self._emit("looper.pop3.delete", action="quit", uids=self._uids(self._deleted))
            self._out += LOGOUT_DELETED
        else:
            self._out += LOGOUT
        self._close(CloseReason.CLOSED_BY_SERVER)
        return True

    def _uids(self, numbers: set[int]) -> list[int]:
        return [self._message(n).uid for n in sorted(numbers)]

    def _read_bait(self, message: BaitMessage, what: str) -> None:
        if message.uid not in self._subjects:
            self._subjects[message.uid] = subject_of(message.content)
        self._emit("looper.bait.read", folder=self.folder.name, uid=message.uid,
                   subject=self._subjects[message.uid], what=what)

    # -- inside -----------------------------------------------------------------

    def _emit(self, eventid: str, **fields: Any) -> None:
        self._events.append(Event(eventid, fields))

    def _output_held(self) -> int:
        """Bytes made and not yet handed to the adapter."""
        return len(self._out) + sum(len(a.data) for a in self._actions if isinstance(a, Send))

    def _flush(self) -> None:
        if self._out:
            self._actions.append(Send(bytes(self._out)))
            self._out.clear()

    def _close(self, reason: CloseReason) -> None:
        self._state = State.CLOSED
        self._sasl = None
        self._flush()
        self._actions.append(Close(reason))


_LOGIN_HANDLERS = {
    "CAPA": Pop3Server._capa_login,
    "USER": Pop3Server._user_cmd,
    "PASS": Pop3Server._pass_cmd,
    "APOP": Pop3Server._apop_cmd,
    "AUTH": Pop3Server._auth_cmd,
    "STLS": Pop3Server._stls_cmd,
    "QUIT": Pop3Server._quit_login,
    "XCLIENT": Pop3Server._xclient_cmd,
    "XOIP": Pop3Server._xclient_cmd,
}
_HANDLERS = {
    "CAPA": Pop3Server._capa,
    "STAT": Pop3Server._stat,
    "LIST": Pop3Server._list,
    "UIDL": Pop3Server._uidl,
    "RETR": Pop3Server._retr,
    "TOP": Pop3Server._top,
    "DELE": Pop3Server._dele,
    "RSET": Pop3Server._rset,
    "NOOP": Pop3Server._noop,
    "QUIT": Pop3Server._quit,
}
