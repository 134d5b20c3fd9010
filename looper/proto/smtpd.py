"""The emulated SMTP server: a sans-IO machine that plays a persona.

Bytes in (`receive_data`), actions out (Send, StartTLS, Store, Close: see
actions.py), events out. It accepts, stores and logs; it never delivers.

Rules (Debian's Postfix 3.7 smtpd, recorded in tests/data/postfix/; a
persona whose server differs says so in its rule fields, and the machine
follows them: Exim's and sendmail's limits, throttles, greet pause,
synchronisation checks, address rules; see personas.py):
- Input modes: command lines, DATA content, BDAT chunks, SASL responses,
  or waiting for an action's outcome (TLS, storage): the table TRANSITIONS
  lists every move. Input that arrives while waiting is kept and read after.
- A command line ends at LF (a CR before it is dropped); past the persona's
  limit (2048) the line is cut there and the rest of it discarded, and the
  session goes on (lines.py: Ending.LF, Overlong.TRUNCATE).
- Replies to pipelined commands go out in one write. Every 4xx/5xx reply
  is an error; from the soft limit on, each reply line waits error_sleep_s;
  at the hard limit the session ends with 421. Junk commands (NOOP, VRFY,
  ETRN, RSET) past their limit count as errors too. A queued message
  forgives all.
- A message is stored and synced (Store) before its 250; if storing fails
  the reply is 452 and nothing is acknowledged.
- Secrets appear only in login events, never in command events.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from looper.events import Event
from looper.proto.actions import Action, Close, CloseReason, Send, StartTLS, Store
from looper.proto.address import EximPath, MailPath, exim_mangled_recipient, exim_path, parse_path
from looper.proto.budget import MessageMemory
from looper.proto.lines import LineReader, Overlong, Refused
from looper.proto.message import DotDecoder, MessageScanner
from looper.proto.personas import Persona
from looper.proto.reply import Reply
from looper.proto.login import LoginPolicy, login_fields
from looper.proto.digest_md5 import DigestChallenge
from looper.proto.exim_chunking import QuitBetweenChunks, quit_between_chunks
from looper.proto.sasl import Acknowledged, Challenge, Credentials, Failure, SaslExchange
from looper.proto.text import as_text, words

# Names a client should not claim in HELO (RFC 2606, RFC 6761).
RESERVED_NAME_SUFFIXES = (".test", ".example", ".invalid", ".localhost")
RESERVED_NAMES = frozenset({"localhost", "localhost.localdomain", "example", "test", "invalid"})

# Debian's system accounts and /etc/aliases: the local parts a stock Debian
# Postfix (local_recipient_maps = passwd + aliases) knows.
DEBIAN_LOCAL_USERS = frozenset(
    "root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc "
    "_apt nobody postfix postmaster abuse mailer-daemon".split()
)
# Of those, the ones /etc/aliases makes (they have no passwd entry, no full name).
DEBIAN_ALIASES = frozenset({"postmaster", "abuse", "mailer-daemon"})
# SMTP's own ceiling on an unanswered pipeline we keep while waiting.
MAX_WAITING_INPUT_BYTES = 1 << 20


class Mode(enum.Enum):
    COMMAND = "command"
    DATA = "data"
    BDAT = "bdat"
    SASL = "sasl"
    WAITING = "waiting"  # for tls_started or stored/store_failed
    DEAF = "deaf"  # reads and answers nothing until the idle timeout (Exim, see exim_chunking)
    CLOSED = "closed"


class Step(enum.Enum):
    DATA_ACCEPTED = "354 sent"
    CHUNK_ANNOUNCED = "BDAT n read"
    CONTENT_ENDED = "end of DATA or of a chunk"
    CHALLENGED = "334 sent"
    SASL_DONE = "AUTH over"
    AWAIT = "StartTLS or Store issued"
    DEAFENED = "QUIT between chunks left Exim waiting for one more"
    RESUMED = "TLS up, or stored"
    CLOSE = "Close issued"


TRANSITIONS: dict[tuple[Mode, Step], Mode] = {
    (Mode.COMMAND, Step.DATA_ACCEPTED): Mode.DATA,
    (Mode.COMMAND, Step.CHUNK_ANNOUNCED): Mode.BDAT,
    (Mode.COMMAND, Step.CHALLENGED): Mode.SASL,
    (Mode.COMMAND, Step.AWAIT): Mode.WAITING,
    (Mode.COMMAND, Step.DEAFENED): Mode.DEAF,
    (Mode.DATA, Step.CONTENT_ENDED): Mode.COMMAND,
    (Mode.DATA, Step.AWAIT): Mode.WAITING,
    (Mode.BDAT, Step.CONTENT_ENDED): Mode.COMMAND,
    (Mode.BDAT, Step.AWAIT): Mode.WAITING,
    (Mode.SASL, Step.CHALLENGED): Mode.SASL,
    (Mode.SASL, Step.SASL_DONE): Mode.COMMAND,
    (Mode.WAITING, Step.RESUMED): Mode.COMMAND,
    **{(mode, Step.CLOSE): Mode.CLOSED for mode in Mode},
}


class Environment(Protocol):
    """What the machine may not compute itself (no clock, no randomness)."""

    def now_s(self) -> float: ...  # the wall clock, seconds since the epoch
    def serial(self) -> int: ...  # a new number each call: a queue file's inode, a counter
    def cram_challenge(self) -> str: ...
    def random_bytes(self, count: int) -> bytes: ...  # DIGEST-MD5's nonce
    def date(self) -> str: ...  # RFC 5322, UTC: "Sun, 22 Nov 2026 10:00:00 +0000"


@dataclass(frozen=True)
class SmtpSettings:
    hostname: str
    persona: Persona
    mode: str = "open_relay"  # or "harvester"
    relay: str = "open"  # or "authenticated"
    credentials: frozenset[tuple[str, str]] = frozenset()
    accept_after: int | None = None
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    max_message_bytes: int = 10_240_000  # Postfix's message_size_limit default
    max_recipients: int = 1000
    idle_timeout_s: float = 300.0
    greet_delay_s: float = 0.0
    tls_available: bool = True
    # AUTH offered and taken only inside TLS (Postfix's smtpd_tls_auth_only,
    # Exim's shipped authenticators without AUTH_SERVER_ALLOW_NOTLS_PASSWORDS).
    auth_tls_only: bool = False
    # max_message_bytes was configured, not the persona's default (sendmail
    # without a limit says so; the machine still stops at max_message_bytes).
    size_limit_configured: bool = True
    # Domains delivered here (Postfix's mydestination); None: the host name
    # and localhost, as Debian's postfix package sets it up.
    local_domains: tuple[str, ...] | None = None
    reply_overrides: dict[str, str] = field(default_factory=dict)
    # Shared by every session of the trap (None: unbounded, as in unit tests).
    message_memory: MessageMemory | None = field(default=None, compare=False)

    @property
    def login_policy(self) -> LoginPolicy:
        return LoginPolicy(self.credentials, self.accept_after, admits=self.mode == "open_relay")

    @property
    def local_domain_set(self) -> frozenset[str]:
        domains = (self.hostname, "localhost") if self.local_domains is None else self.local_domains
        return frozenset(domain.lower() for domain in domains)

    @property
    def local_users(self) -> frozenset[str]:
        return DEBIAN_LOCAL_USERS | {user.split("@")[0].lower() for user, _ in self.credentials}


@dataclass(frozen=True)
class ClientInfo:
    ip: str
    name: str | None = None  # reverse DNS, None if it has none
    earlier_auth_failures: int = 0  # from this address, in earlier sessions
    tls: bool = False  # implicit TLS (a submissions port)
    pregreet_bytes: int = 0  # sent before our greeting
    local_ip: str | None = None  # the address the client reached: [local_ip] is us


class _Transaction:
    __slots__ = (
        "mail_from", "rcpt_to", "bdat_size", "bdat_failed", "scanner", "decoder", "chunks", "chunk_bytes",
        "too_big", "over_budget", "line_octets", "long_line", "rcpt_commands", "head", "unterminated",
    )

    def __init__(self, mail_from: str) -> None:
        self.mail_from = mail_from
        self.rcpt_to: list[str] = []
        self.bdat_size: int | None = None  # bytes so far once BDAT began
        self.bdat_failed = False
        self.scanner: MessageScanner | None = None
        self.decoder: DotDecoder | None = None
        self.chunks: list[bytes] = []
        self.chunk_bytes = 0  # what chunks hold, until the message is stored
        self.too_big = False
        self.over_budget = False  # MessageMemory ran out: read to the end, keep nothing
        self.line_octets = 0  # of the message line read so far, its CR included
        self.long_line: int | None = None  # the first line over the persona's limit: its length
        self.rcpt_commands = 0  # RCPTs that reached the recipient checks (Exim's $rcpt_count)
        self.head = b""  # DATA read before its first line end decides how it may end (Exim)
        self.unterminated = False  # the content does not end with a line end

    def drop_content(self) -> None:
        self.chunks.clear()
        self.chunk_bytes = 0


class SmtpServer:
    """One emulated SMTP session; see the module docstring."""

    # Thousands of idle sessions at once: no per-instance dict.
    __slots__ = (
        "settings", "persona", "client", "env", "idle_timeout_s", "_mode", "_lines", "_waiting",
        "_out", "_actions", "_events", "_errors", "_junk", "_helo", "_esmtp", "_tls", "_authenticated",
        "_auth_failures", "_penalty_level", "_last_failed_secret", "_sasl", "_transaction", "_chunk_size",
        "_chunk_keep", "_chunk_last", "_pending_store", "_held_bytes", "_last_reply", "_eof_pending", "_counts",
        "_rcpt_refusals", "_previous_verb", "_commands_seen", "_rejecting", "_input_behind", "_throttle_s",
        "_throttle_on_error_s",
        "_last_key",
    )

    def __init__(self, settings: SmtpSettings, client: ClientInfo, environment: Environment) -> None:
        self.settings = settings
        self.persona = settings.persona
        self.client = client
        self.env = environment
        self.idle_timeout_s = settings.idle_timeout_s
        self._mode = Mode.COMMAND
        # Command lines and SASL responses, and the byte count of a BDAT chunk.
        overlong = Overlong.REFUSE if self.persona.overlong_command_closes else Overlong.TRUNCATE
        if self.persona.overlong_command_splits:
            overlong = Overlong.SPLIT
        self._lines = LineReader(self.persona.command_line_limit, overlong=overlong)
        # What came while WAITING for a store, read after it (a bytearray
        # only when something came: 10,000 idle sessions need none).
        self._waiting: bytes | bytearray = b""
        self._out: bytes | bytearray = b""  # replies not yet handed out (a bytearray while there are some)
        self._actions: list[Action] = []
        self._events: list[Event] = []
        self._errors = 0
        self._junk = 0
        self._helo: str | None = None
        self._esmtp = False
        self._tls = client.tls
        self._authenticated: str | None = None
        self._auth_failures = client.earlier_auth_failures
        # Dovecot's penalty: raised by each failure with another secret than
        # the last failed one. From earlier sessions only its first level
        # carries over: the recordings show 4 s (auth_penalty_next_connection)
        # or none (sasl_failure_timing.json, second sessions), never more.
        self._penalty_level = min(client.earlier_auth_failures, 1)
        self._last_failed_secret: object = None
        self._sasl: SaslExchange | None = None
        self._transaction: _Transaction | None = None
        self._chunk_size = 0
        self._chunk_keep = False
        self._chunk_last = False
        self._pending_store: tuple[str, _Transaction, str] | None = None
        self._held_bytes = 0  # this session's part of settings.message_memory
        self._last_reply = b""  # the last reply line given: the verdict of a MAIL or RCPT
        self._eof_pending = False  # the client's EOF came while we were WAITING
        # The persona's counted limits: unknown commands, syntax errors, non-mail commands.
        self._counts = {"unknown": 0, "syntax": 0, "nonmail": 0}
        # The refusals RCPTs got since the last reset (Exim); a set once there is one.
        self._rcpt_refusals: set[bytes] | None = None
        self._previous_verb = ""
        self._last_key = ""  # the reply key of _last_reply
        self._commands_seen = 0
        if client.pregreet_bytes:
            self._emit("looper.smtp.pregreet", bytes=client.pregreet_bytes)
        self._flush()
        # sendmail's greet pause: a client that talked first is refused.
        self._rejecting = bool(self.persona.greet_pause_s and client.pregreet_bytes)
        # (the pause ended when the early talker spoke)
        pause_s = settings.greet_delay_s if self._rejecting else max(settings.greet_delay_s, self.persona.greet_pause_s)
        self._input_behind = False  # the command being read has more input behind it
        self._throttle_s = 0.0  # the persona's pause before this command's reply
        self._throttle_on_error_s: float | None = None  # the pause if that reply is an error, when it differs
        self._actions.append(Send(self._line("greeting_refused" if self._rejecting else "greeting"), pause_s))

    # -- the adapter's side ---------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._mode is Mode.WAITING

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def auth_failures(self) -> int:
        """Failed logins from this address, earlier sessions included,
        since its last success (the adapter remembers them)."""
        return self._auth_failures

    def actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def receive_data(self, data: bytes) -> None:
        if self._mode is Mode.CLOSED:
            return
        if not data:
            if self._mode is Mode.WAITING:
                # A store or a handshake is under way: its outcome, and the
                # replies to what was pipelined behind it (Exim sends QUIT
                # and half-closes), come first; the EOF is taken after.
                self._eof_pending = True
                return
            self._client_closed()
            return
        if self._mode is Mode.WAITING:
            if len(self._waiting) + len(data) > MAX_WAITING_INPUT_BYTES:
                # The adapter stops reading while we wait; this is a client that
                # pipelined a megabyte past a 354 or a STARTTLS.
                self._emit("looper.smtp.limit", limit="input while waiting", bytes=len(data))
                return
            self._hold(data)
        else:
            self._read(bytes(data))  # a view of the adapter's buffer: what is kept is copied
        self._resume()

    def connection_closed(self) -> None:
        """The connection is gone, however it ended (a reset says nothing
        else): a message under way is logged as cut, and let go of."""
        if self._mode is not Mode.CLOSED:
            self._cut_message("client_closed")
            self._move(Step.CLOSE)
        self._transaction = self._pending_store = None
        self._account_memory()

    def timed_out(self) -> None:
        if self._mode is Mode.CLOSED:
            return
        self._emit("looper.smtp.limit", limit="timeout", seconds=self.idle_timeout_s)
        if self._mode is Mode.DATA and "timeout_data" in self.persona.replies:
            self._reply("timeout_data", count_error=False, mail_from=self._transaction.mail_from)
        elif self._mode is Mode.DEAF:
            self._reply("bdat_lost", count_error=False)
        elif self.persona.idle_close_silent:
            partial = self._lines.take_partial() if self._mode is Mode.COMMAND else b""
            if partial:
                self._command(partial)  # answered as it stands
        else:
            self._reply("timeout", count_error=False)
        if self._mode is not Mode.CLOSED:
            self._close(CloseReason.TIMEOUT)

    def shutting_down(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        """The trap is stopping, or the session has lasted long enough
        (reason max_seconds): a message under way is cut, the client hears
        421 (RFC 5321 3.8), and the connection closes."""
        if self._mode is Mode.CLOSED:
            return
        self._cut_message(reason)
        self._reply("shutdown", count_error=False)
        self._close(reason)

    def tls_started(self, version: str = "", cipher: str = "") -> None:
        if self._mode is Mode.CLOSED:
            return  # a STARTTLS answered as the session ended (a timeout took its line): nothing follows
        self._tls = True
        # RFC 3207 4.2: everything known before the handshake is forgotten.
        if self.persona.tls_forgets_helo:
            self._helo = None
        self._esmtp, self._transaction = False, None
        self._waiting = b""
        self._lines.clear()
        self._move(Step.RESUMED)
        self._resume()

    def stored(self, path: str) -> None:
        key, transaction, sha256 = self._take_pending_store()
        queue_id = self.persona.queue_id(self.env.now_s(), self.env.serial())
        facts = transaction.scanner.facts()
        self._emit(
            "looper.smtp.message",
            queue_id=queue_id,
            mail_from=transaction.mail_from,
            rcpt_to=list(transaction.rcpt_to),
            username=self._authenticated,
            size=facts.size,
            sha256=sha256,
            path=path,
            received_hops=facts.received_hops,
            message_id=facts.message_id,
            subject=facts.subject,
            received_header=self._received_header(queue_id, transaction),
            transport="bdat" if transaction.bdat_size is not None else "data",
        )
        self._errors = 0  # Postfix forgives a client that got a message through, before replying
        size = facts.size + (2 if self.persona.adds_final_line_end and transaction.unterminated else 0)
        self._reply(key, queue_id=queue_id, size=size, chunk=self._chunk_size)
        self._resume()

    def store_failed(self, reason: str) -> None:
        _, _, sha256 = self._take_pending_store()
        self._emit("looper.smtp.store_failed", sha256=sha256, reason=reason)
        self._reply("storage_failed")
        self._after_command()
        self._resume()

    def _take_pending_store(self) -> tuple[str, _Transaction, str]:
        if self._pending_store is None:
            raise RuntimeError("a store outcome without a Store action")
        pending, self._pending_store = self._pending_store, None
        self._transaction = None
        self._move(Step.RESUMED)
        return pending

    def _resume(self) -> None:
        """Read what arrived while we waited."""
        if self._waiting and self._mode is not Mode.WAITING:
            waiting, self._waiting = bytes(self._waiting), b""
            self._read(waiting)
        if self._eof_pending and self._mode is not Mode.WAITING and self._mode is not Mode.CLOSED:
            self._eof_pending = False
            self._client_closed()
        self._flush()
        self._account_memory()

    def _account_memory(self) -> None:
        """Bring the shared count up to date with what this session holds:
        the content of its transaction and of a message being stored. Each
        byte is counted when kept (see _keep_content); every way a message
        can be dropped is caught here, so none can leak from the budget."""
        memory = self.settings.message_memory
        if memory is None:
            return
        held = 0
        if self._transaction is not None:
            held = self._transaction.chunk_bytes
        if self._pending_store is not None and self._pending_store[1] is not self._transaction:
            held += self._pending_store[1].chunk_bytes
        memory.held_bytes += held - self._held_bytes
        self._held_bytes = held

    # -- input ------------------------------------------------------------------

    def _read(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            mode = self._mode
            if mode is Mode.COMMAND or mode is Mode.SASL or mode is Mode.DEAF:
                line, position = self._lines.read_line(data, position)
                if line is None:
                    return
                if mode is Mode.DEAF:
                    if not isinstance(line, Refused):
                        self._log_input(line)  # unanswered, still logged
                    continue
                if isinstance(line, Refused):  # only when the persona refuses it
                    self._emit("looper.smtp.limit", limit="command line", bytes=self.persona.command_line_limit)
                    if self.persona.overlong_command_splits:
                        self._reply("unknown", command="")
                        self._after_command()
                        continue
                    self._reply("command_too_long", count_error=False)
                    return self._close()
                if mode is Mode.SASL:
                    self._sasl_response(line)
                else:
                    self._input_behind = position < len(data)
                    self._command(line)
                    self._after_command()
            elif mode is Mode.DATA:
                position = self._take_data(data, position)
            elif mode is Mode.BDAT:
                position = self._take_chunk(data, position)
            elif mode is Mode.WAITING and self._pending_store is not None:
                self._hold(memoryview(data)[position:])  # pipelined behind the message
                return
            else:
                return  # closed, or STARTTLS: plaintext pipelined after it is dropped (CVE-2011-0411)

    def _hold(self, data: bytes | memoryview) -> None:
        if not self._waiting:
            self._waiting = bytearray()
        self._waiting += data

    def _buffered_bytes(self) -> int:
        """Input held now, for the tests' bounds checks."""
        return len(self._waiting) + self._lines.buffered

    def _client_closed(self) -> None:
        self._cut_message("client_closed")
        self._transaction = None
        self._account_memory()
        self._flush()
        self._actions.append(Close(CloseReason.CLOSED_BY_CLIENT))
        self._move(Step.CLOSE)

    def _cut_message(self, reason: str) -> None:
        if self._transaction is not None and self._mode in (Mode.DATA, Mode.BDAT):
            self._emit(
                "looper.smtp.message_cut", mail_from=self._transaction.mail_from,
                rcpt_to=list(self._transaction.rcpt_to), size=self._content_size(), reason=reason,
            )

    # -- output -----------------------------------------------------------------

    def _text(self, key: str, **values: Any) -> str:
        text = self.settings.reply_overrides.get(key) or self.persona.replies[key]
        return self._fill(text, **values)

    def _fill(self, template: str, **values: Any) -> str:
        """A persona's template with what this session knows filled in."""
        if "{" not in template and "}" not in template:
            return template  # most replies: nothing to fill (and no braces that format would change)
        client = self.client
        known = {"host": self.settings.hostname, "ip": client.ip, "helo": self._helo or "",
                 "max_size": self.settings.max_message_bytes}
        if "{date" in template:
            date = self.env.date()
            known.update(date=date, date_gmt=date.replace("+0000", "GMT"))
        if "{client" in template:
            known["client"] = client.name or f"[{client.ip}]"
            known["client_resolve"] = "OK" if client.name else "FAIL"
            known["client_name_ip"] = f"{client.name} [{client.ip}]" if client.name else f"[{client.ip}]"
        known.update(values)
        return template.format_map(_Blanks(known))

    def _line(self, key: str, **values: Any) -> bytes:
        text = self._text(key, **values)
        if self.persona.strips_top_bit and not text.isascii():
            text = _top_bit_stripped(text)
        return text.encode("utf-8", "replace") + b"\r\n"

    def _send_lines(self, lines: list[bytes]) -> None:
        if self._throttle_s:
            self._flush()
            delay_s = self._throttle_s
            if self._throttle_on_error_s is not None and lines and lines[0][:1] in b"45":
                delay_s = self._throttle_on_error_s
            self._actions.append(Send(b"".join(lines), delay_s, self.persona.throttle_spread_s))
            self._throttle_s = 0.0
        elif self._errors >= self.persona.soft_error_limit:
            # Postfix sleeps before every reply line once a client errs a lot.
            for line in lines:
                self._flush()
                self._actions.append(Send(line, self.persona.error_sleep_s, self.persona.error_sleep_spread_s))
        else:
            for line in lines:
                if not self._out:
                    self._out = bytearray()
                self._out += line

    def _reply(self, key: str, *, count_error: bool = True, delay_s: float = 0.0, spread_s: float = 0.0,
               **values: Any) -> None:
        line = self._last_reply = self._line(key, **values)
        self._last_key = key
        if count_error and self._over_counted_limit(key, line):
            return
        if delay_s or spread_s:
            self._throttle_s = 0.0
            self._flush()
            self._actions.append(Send(line, delay_s, spread_s))
        else:
            self._send_lines([line])
        if count_error and line[:1] in b"45":
            self._errors += 1

    def _over_counted_limit(self, key: str, line: bytes) -> bool:
        """The persona's own counted limits (Exim's and sendmail's): the
        reply past one is replaced or followed by the limit's, and the
        session ends. True if that happened."""
        persona = self.persona
        if key in _UNKNOWN_KEYS and persona.unknown_command_limit is not None:
            self._counts["unknown"] += 1
            if self._counts["unknown"] > persona.unknown_command_limit:
                self._limit_reached("unknown commands", "too_many_unknown")
                return True
        counted = line[:3] in (b"500", b"501", b"503") and key not in _NOT_SYNTAX_KEYS
        if counted and persona.syntax_error_limit is not None:
            self._counts["syntax"] += 1
            if self._counts["syntax"] > persona.syntax_error_limit:
                self._send_lines([line[:3] + b"-" + line[4:]])
                self._limit_reached("syntax errors", "too_many_syntax", code=line[:3].decode())
                return True
        return False

    def _limit_reached(self, limit: str, key: str, **values: Any) -> None:
        self._emit("looper.smtp.limit", limit=limit, errors=self._errors)
        self._last_reply = self._line(key, **values)
        self._send_lines([self._last_reply])
        self._close()

    def _flush(self) -> None:
        if self._out:
            self._actions.append(Send(bytes(self._out)))
            self._out = b""

    def _close(self, reason: CloseReason | None = None) -> None:
        """Say nothing more and close: for `reason`, or, when the machine
        decides (QUIT, errors), as closed by the server, unless the
        client's EOF came first (it half-closed behind a pipelined QUIT)."""
        if reason is None:
            reason = CloseReason.CLOSED_BY_CLIENT if self._eof_pending else CloseReason.CLOSED_BY_SERVER
        self._flush()
        self._actions.append(Close(reason))
        self._move(Step.CLOSE)
        self._waiting = b""
        if self._pending_store is None:
            self._transaction = None
            self._account_memory()

    def _emit(self, eventid: str, **fields: Any) -> None:
        self._events.append(Event(eventid, fields))

    def _move(self, step: Step) -> None:
        self._mode = TRANSITIONS[self._mode, step]

    def _after_command(self) -> None:
        if self._mode is not Mode.CLOSED and self._errors >= self.persona.hard_error_limit:
            self._emit("looper.smtp.limit", limit="errors", errors=self._errors)
            self._reply("too_many_errors", count_error=False)
            self._close()

    def _count_junk(self) -> None:
        self._junk += 1
        if self._junk > self.persona.junk_command_limit:
            self._errors += 1

    # -- commands ---------------------------------------------------------------

    def _log_input(self, line: bytes) -> tuple[list[bytes], bytes, str]:
        """looper.command.input for a command line (AUTH's secrets masked);
        its words, verb and upper-case verb, for the caller."""
        words = line.split(None, 1)
        verb = words[0] if words else b""
        verb_text = verb.decode("ascii", "replace").upper()
        logged = line if verb_text != "AUTH" else _auth_logged(words)
        self._emit("looper.command.input", input=as_text(logged))
        return words, verb, verb_text

    def _command(self, line: bytes) -> None:
        words, verb, verb_text = self._log_input(line)
        self._commands_seen += 1
        if b"\0" in line and "nul_byte" in self.persona.replies:
            return self._reply("nul_byte")
        if not line.strip(b" \t"):
            return self._reply("bad_syntax", command=line.decode("latin-1"))
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            if not self.persona.eight_bit_commands:
                return self._reply("bad_utf8")
            text = line.decode("latin-1")  # bytes to it, as they came
            words = [word.decode("latin-1").encode() for word in words]
        argument = words[1].strip().decode("utf-8") if len(words) > 1 else ""
        echo = text[:200]
        if verb_text in self.persona.ignores_arguments:
            argument = ""
        handler = _HANDLERS.get(verb_text) if verb_text not in self.persona.unknown_verbs else None
        if self.persona.verb_ends_at_space and line.split(b" ", 1)[0] != verb:
            handler = None  # Exim: "NOOP\tx" is no NOOP
        if self._out_of_sync(verb_text):
            self._emit("looper.smtp.limit", limit="synchronization")
            self._reply("sync_error", count_error=False)
            return self._close()
        transaction = self._transaction
        if (handler is not None and self.persona.bdat_lenient and transaction is not None and transaction.bdat_failed
                and verb_text not in ("RSET", "QUIT")):
            return self._reply("bdat_discarded", size=0)  # Exim: only RSET accepted now
        if handler is not None:
            self._throttle_on_error_s = None
            self._throttle_s = self._throttle(verb_text)
        if handler is not None and self._rejecting and verb_text not in _ALWAYS_ANSWERED:
            return self._reply("command_rejected", count_error=False)
        if handler is not None and self._nonmail_limit_reached(verb_text):
            return
        if handler is None:
            first = text.lstrip(" \t")[:1]
            if self.persona.forbidden_first_command_only:
                forbidden = verb_text in _FORBIDDEN and self._commands_seen == 1
            else:
                forbidden = verb_text in _FORBIDDEN or not first.isascii() or not first.isalpha() or verb.endswith(b":")
            if forbidden:
                self._emit("looper.smtp.forbidden", input=text[:200])
                if not self.persona.hangs_up_on_forbidden:
                    return self._reply("unknown", command=echo)
                self._reply("forbidden", count_error=False)
                return self._close()
            return self._reply("unknown", command=echo)
        handler(self, verb_text, argument)
        if verb_text == "RCPT" and self._last_reply[:1] in b"45":
            refusal = self._last_reply[4:] if self._last_key in _ACL_REFUSALS else self._last_reply
            if self._rcpt_refusals is None:
                self._rcpt_refusals = set()
            self._rcpt_refusals.add(refusal)
            self._counts["bad rcpt"] = self._counts.get("bad rcpt", 0) + 1
        self._throttle_s = 0.0
        if verb_text in _ENVELOPE_EVENTS:
            self._log_verdict(_ENVELOPE_EVENTS[verb_text], argument)
        self._previous_verb = verb_text

    def _throttle(self, verb: str) -> float:
        """sendmail's pause before answering this command (0: none)."""
        persona = self.persona
        if verb == "RCPT" and persona.bad_rcpt_throttle is not None:
            if self._counts.get("bad rcpt", 0) >= persona.bad_rcpt_throttle:
                return persona.bad_rcpt_delay_s
        for number, (verbs, threshold) in enumerate(persona.command_throttles):
            if verb in verbs:
                key = f"throttle {number}"
                self._counts[key] = count = self._counts.get(key, 0) + 1
                if count >= threshold:
                    if verb in persona.throttle_errors_wait_less:
                        self._throttle_on_error_s = float(count // threshold)
                    return min(2.0 ** (count - threshold), persona.throttle_max_delay_s)
        return 0.0

    def _out_of_sync(self, verb: str) -> bool:
        """Exim's check: input behind a command where the client had to wait."""
        if not self.persona.checks_synchronization or not self._input_behind:
            return False
        after_refused_data = self._previous_verb == "DATA" and self._last_reply[:1] in b"45"
        unadvertised = self._helo is not None and not self._esmtp and verb in ("MAIL", "RCPT", "DATA")
        return after_refused_data or unadvertised

    def _nonmail_limit_reached(self, verb: str) -> bool:
        """Exim's smtp_accept_max_nonmail: NOOP, VRFY, EXPN, ETRN and HELP
        count, HELO, EHLO and RSET from their second time on."""
        limit = self.persona.nonmail_command_limit
        if limit is None or verb not in _NONMAIL_VERBS:
            return False
        first = "first RSET" if verb == "RSET" else "first HELO"
        if verb in _NONMAIL_AFTER_FIRST and first not in self._counts:
            self._counts[first] = 1
            return False
        self._counts["nonmail"] += 1
        if self._counts["nonmail"] <= limit:
            return False
        self._limit_reached("non-mail commands", "too_many_nonmail")
        return True

    def _log_verdict(self, eventid: str, argument: str) -> None:
        """MAIL and RCPT with the answer they got, as the reflect path logs
        a relay's: what a harvester or a spammer was told, address by address."""
        path = parse_path(argument, "FROM:" if eventid == "looper.smtp.mail" else "TO:", strict=True)
        address, params = (path.address, path.params) if path is not None else (None, [])
        reply = as_text(self._last_reply).rstrip("\r\n")
        code = int(reply[:3]) if _is_number(reply[:3]) else None
        self._emit(eventid, address=address, params=params, code=code, reply=reply[4:])

    def _helo_cmd(self, verb: str, argument: str) -> None:
        if not argument:
            return self._reply("ehlo_syntax" if verb == "EHLO" else "helo_syntax")
        if self._invalid_helo_name(argument):
            return self._reply("helo_invalid", verb=verb)
        name = " ".join(words(argument))
        self._helo, self._esmtp, self._transaction = name, verb == "EHLO", None
        self._rcpt_refusals = None
        lowered = name.lower().rstrip(".")
        self._emit(
            "looper.smtp.helo",
            verb=verb,
            name=name,
            claims_our_name=lowered == self.settings.hostname.lower(),
            reserved_name=lowered in RESERVED_NAMES or lowered.endswith(RESERVED_NAME_SUFFIXES),
        )
        if verb == "EHLO" and self.persona.ehlo_is_sync_point and self._input_behind:
            # sendmail: commands pipelined behind EHLO are a protocol error
            self._emit("looper.smtp.limit", limit="synchronization")
            self._rejecting = True
            return self._reply("protocol_error", count_error=False)
        if verb == "HELO":
            return self._reply("helo")
        lines = [self._fill(self.persona.ehlo_first_line)]
        if self._rejecting:
            lines.append("ENHANCEDSTATUSCODES")  # all sendmail offers a client it refuses
            return self._send_lines(Reply(250, tuple(lines)).to_bytes().splitlines(keepends=True))
        for extension in self.persona.extensions:
            if extension == "STARTTLS" and (self._tls or not self.settings.tls_available):
                continue
            if extension.startswith("AUTH"):
                if not self._auth_offered:
                    continue
                extension = extension.replace("{mechanisms}", " ".join(self.settings.auth_mechanisms))
            if self._size_unlimited:
                extension = extension.replace(" {max_size}", "")
            lines.append(extension.replace("{max_size}", str(self.settings.max_message_bytes)))
        # Line by line: from the soft error limit on, each line waits its own sleep.
        self._send_lines(Reply(250, tuple(lines)).to_bytes().splitlines(keepends=True))

    def _invalid_helo_name(self, argument: str) -> bool:
        persona = self.persona
        if not persona.checks_helo_name:
            return False
        if " " in argument or "\t" in argument or not argument.isascii() or "\x00" in argument:
            return True
        return persona.helo_name_needs_closed_literal and argument.startswith("[") and not argument.endswith("]")

    def _mail_cmd(self, verb: str, argument: str) -> None:
        if self.persona.envelope_verb_has_colon and not argument.upper().startswith("FROM:"):
            return self._reply("unknown")
        if self.persona.helo_required and self._helo is None:
            return self._reply("need_helo")
        if self._transaction is not None:
            return self._reply("nested_mail")
        if self.persona.address_rules == "exim":
            return self._exim_mail(argument)
        path = parse_path(argument, "FROM:", strict=True)
        if path is None or not path.raw:
            return self._reply("mail_syntax", scanned=_scanned(argument))
        path = self._with_spaces(path)
        address, params = path.address, path.params
        if address is None:
            return self._reply("bad_sender", address=path.raw.partition("\0")[0])
        if "@@" in address and "bad_route" in self.persona.replies:
            return self._reply("bad_route", address=path.as_sent)
        for param in params:
            key, _, value = param.partition("=")
            key = key.upper()
            persona = self.persona
            if key not in persona.mail_parameters:
                return self._reply("unsupported_option", param=param, param_name=key, address=address)
            if key == "SIZE":
                if not _is_number(value):
                    if persona.ignores_bad_size:
                        continue
                    return self._reply("size_syntax")
                refusal = self._declared_size_refusal(value)
                if refusal:
                    return self._reply(refusal)
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    if "body_syntax" in persona.replies:
                        return self._reply("body_syntax", value=value)
                    return self._reply("unsupported_option", param=param, param_name=key)
            elif key == "RET":
                if value.upper() not in ("FULL", "HDRS"):
                    return self._reply("ret_syntax", value=value)
        memory = self.settings.message_memory
        if memory is not None and memory.exhausted:
            # Postfix says this at MAIL when its queue is short of space.
            self._emit("looper.smtp.limit", limit="message memory", bytes=memory.limit_bytes)
            return self._reply("storage_failed")
        self._transaction = _Transaction(address)
        self._reply("mail_ok", path=path.as_sent)

    def _with_spaces(self, path: MailPath) -> MailPath:
        """sendmail takes <a@ex ample.net> as it stands."""
        raw = path.raw
        if path.address is not None or not self.persona.spaces_in_address or not raw.startswith("<"):
            return path
        close = raw.find(">")
        if close < 0 or "\0" in raw[:close]:
            return path
        return MailPath(raw, raw[1:close], words(raw[close + 1 :]))

    def _declared_size_refusal(self, value: str) -> str | None:
        """The reply key for MAIL's SIZE=value, if it is refused."""
        if self._size_unlimited:
            if len(value) >= 20 and "size_overflow" in self.persona.replies:
                return "size_overflow"
            return "size_fs_limit" if int(value) > _FREE_DISK_BYTES else None
        if len(value) >= 20:
            return "size_fs_limit"
        return "size_exceeded" if int(value) > self.settings.max_message_bytes else None

    @property
    def _size_unlimited(self) -> bool:
        return self.persona.unlimited_size_by_default and not self.settings.size_limit_configured

    def _rcpt_cmd(self, verb: str, argument: str) -> None:
        if self.persona.envelope_verb_has_colon and not argument.upper().startswith("TO:"):
            return self._reply("unknown")
        transaction = self._transaction
        if transaction is None:
            return self._reply("need_mail")
        if self.persona.address_rules == "exim":
            return self._exim_rcpt(transaction, argument)
        path = parse_path(argument, "TO:", strict=True)
        if path is None or not path.raw:
            return self._reply("rcpt_syntax", scanned=_scanned(argument))
        path = self._with_spaces(path)
        address, params = path.address, path.params
        if address == "" and "rcpt_null" in self.persona.replies:
            return self._reply("rcpt_null")
        if not address or not _valid_recipient(address):
            return self._reply("bad_rcpt", address=address if address is not None else path.raw.partition("\0")[0])
        for param in params:
            name = param.partition("=")[0].upper()
            if name not in ("NOTIFY", "ORCPT"):
                return self._reply("unsupported_option", param=param, param_name=name)
        if len(transaction.rcpt_to) >= self.settings.max_recipients:
            return self._reply("too_many_rcpt")
        verdict = self._recipient_verdict(address)
        if verdict is not None:
            return self._refuse_recipient(verdict, address)
        transaction.rcpt_to.append(address)
        local = self._local_user(address)
        if local is not None and local != "postmaster" and "rcpt_ok_local" in self.persona.replies:
            return self._reply("rcpt_ok_local", local=local)  # sendmail names the canonical address
        self._reply("rcpt_ok", path=path.as_sent, address=address)

    def _local_user(self, address: str) -> str | None:
        """The local user an address is delivered to, or None if it goes elsewhere."""
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, self.settings.hostname
        if not self._is_local_domain(domain.lower().rstrip(".")) or local.lower() not in self.settings.local_users:
            return None
        return local.lower()

    def _is_local_domain(self, domain: str) -> bool:
        if domain in self.settings.local_domain_set:
            return True
        own = {f"[{self.client.local_ip}]", "[127.0.0.1]"} if self.client.local_ip else {"[127.0.0.1]"}
        return self.persona.own_literal_is_local_domain and domain in own

    def _refuse_recipient(self, verdict: str, address: str) -> None:
        if verdict == "relay_denied" and not self.client.name and "relay_denied_unresolved" in self.persona.replies:
            verdict = "relay_denied_unresolved"  # sendmail says why it did not trust the client
        self._reply(verdict, address=address)

    # Exim reads MAIL and RCPT its own way (address.exim_path): the options
    # it knows (none for RCPT: DSN is not offered) come off the end, the
    # rest is one address, and every refusal names what it read.
    _EXIM_MAIL_OPTIONS = frozenset({"SIZE", "BODY", "RET", "ENVID", "AUTH", "SMTPUTF8", "PRDR"})

    def _exim_mail(self, argument: str) -> None:
        raw = argument[len("FROM:"):]
        if not raw.strip(" \t"):
            return self._reply("mail_syntax")
        path = exim_path(raw, self._EXIM_MAIL_OPTIONS, recipient=False)
        if path.address is None:
            return self._exim_refusal(path)
        for param in reversed(path.params):  # Exim takes them from the end
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SMTPUTF8":
                return self._reply("smtputf8_not_offered")
            if key == "BODY" and value.upper() not in ("7BIT", "8BITMIME"):
                return self._reply("body_syntax")
            if key == "SIZE" and _is_number(value) and int(value) > self.settings.max_message_bytes:
                return self._reply("size_exceeded")
        self._transaction = _Transaction(path.address)
        self._reply("mail_ok")

    def _too_many_bad_recipients(self, transaction: _Transaction, address: str) -> bool:
        """Debian's Exim ACL: over bad_rcpt_limit RCPTs, fewer than half good."""
        limit = self.persona.bad_rcpt_limit
        if limit is None:
            return False
        transaction.rcpt_commands += 1
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, self.settings.hostname
        if local.lower() == "postmaster" and self._is_local_domain(domain.lower()):
            return False  # accepted before the check
        return transaction.rcpt_commands > limit and len(transaction.rcpt_to) < transaction.rcpt_commands // 2

    def _exim_refusal(self, path: EximPath) -> None:
        key = "address_error" if path.parse_error else "address_needs_domain"
        self._reply(key, argument=path.argument, reason=path.reason)

    def _exim_rcpt(self, transaction: _Transaction, argument: str) -> None:
        raw = argument[len("TO:"):]
        if not raw.strip(" \t"):
            return self._reply("rcpt_syntax")
        if self._esmtp:
            raw = exim_mangled_recipient(raw)  # its ESMTP option reader leaves its mark
        path = exim_path(raw, frozenset(), recipient=True)
        if path.address is None:
            return self._exim_refusal(path)
        address = path.address
        if len(transaction.rcpt_to) >= self.settings.max_recipients:
            return self._reply("too_many_rcpt")
        if self._too_many_bad_recipients(transaction, address):
            return self._reply("too_many_bad_rcpt")
        verdict = self._recipient_verdict(address)
        if verdict is not None:
            return self._reply(verdict, address=address)
        transaction.rcpt_to.append(address)
        self._reply("rcpt_ok", address=address)

    def _recipient_verdict(self, address: str) -> str | None:
        """None if accepted, else the reply key (user_unknown, relay_denied)."""
        local, at, domain = address.rpartition("@")
        if not at:
            if address.lower() == "postmaster":  # RFC 5321 4.5.1: always accepted
                return None
            # A bare local part gets our own domain (Postfix's myorigin).
            local, domain = address, self.settings.hostname
        domain = domain.lower().rstrip(".")
        own_literal = self.client.local_ip and domain == f"[{self.client.local_ip}]"
        if own_literal and not self.persona.own_literal_is_local_domain:
            return None  # an address literal of our own is a local destination
        if self._is_local_domain(domain) and not (self.persona.routed_local_parts
                                                             and _routes_elsewhere(local)):
            if local.lower() in self.settings.local_users:
                return None
            if not self.persona.verifies_local_users_of_relay_clients and self._may_relay:
                return None
            return "user_unknown"
        return None if self._may_relay else "relay_denied"

    @property
    def _may_relay(self) -> bool:
        return self.settings.mode == "open_relay" and (self.settings.relay == "open" or bool(self._authenticated))

    def _data_cmd(self, verb: str, argument: str) -> None:
        transaction = self._transaction
        if argument:
            return self._reply("data_syntax")
        if transaction is None:
            return self._no_recipients("need_rcpt", verb)
        if transaction.bdat_size is not None:
            transaction.bdat_failed = self.persona.bdat_lenient  # Exim: only RSET now
            return self._reply("data_after_bdat")
        if not transaction.rcpt_to:
            return self._no_recipients("no_valid_rcpt", verb)
        transaction.scanner = MessageScanner(self.client.ip)
        if not self.persona.bare_lf_follows_first_line:
            transaction.decoder = DotDecoder(bare_lf=self.persona.bare_lf)
        self._reply("data_go")
        self._move(Step.DATA_ACCEPTED)

    def _no_recipients(self, key: str, verb: str) -> None:
        """DATA or BDAT with no recipient. Exim first repeats the refusal
        every RCPT got, if they all got the same one, and words it
        differently right after a pipelined RCPT."""
        replies = self.persona.replies
        if self._rcpt_refusals is not None and len(self._rcpt_refusals) == 1 and "rcpts_rejected" in replies:
            (refusal,) = self._rcpt_refusals
            self._send_lines([self._line("rcpts_rejected", reply=as_text(refusal).rstrip("\r\n"))])
        if self._previous_verb == "RCPT" and self._esmtp and "no_valid_rcpt_pipelined" in replies:
            return self._reply("no_valid_rcpt_pipelined", command=verb, count_error=False)
        self._reply(key, command=verb)

    def _take_data(self, data: bytes, position: int) -> int:
        transaction = self._transaction
        if transaction.decoder is None:
            # Exim: the first line's end says which line ends count
            held_before = len(transaction.head)
            transaction.head += data[position:]
            first_lf = transaction.head.find(b"\n")
            if first_lf < 0 and len(transaction.head) <= _FIRST_LINE_WAIT_BYTES:
                return len(data)
            bare = first_lf == 0 or (first_lf > 0 and transaction.head[first_lf - 1 : first_lf] != b"\r")
            transaction.decoder = DotDecoder(bare_lf=bare)
            combined, transaction.head = transaction.head, b""
            return position + self._take_data(combined, 0) - held_before
        content, used = transaction.decoder.feed(data[position:] if position else data)
        if self.persona.refuses_bare_line_ends:
            bare = _BARE_LINE_END.search(content)
            if bare is not None:
                # What came before it counts, however the input was cut.
                self._keep_content(transaction, content[: bare.start()])
                self._emit("looper.smtp.limit", limit="bare line end in message")
                self._cut_message("bare line end")
                self._reply("bare_lf_in_data" if bare.group() == b"\n" else "bare_cr_in_data", count_error=False)
                self._close()
                return len(data)
        self._keep_content(transaction, content)
        if used < 0:
            return len(data)
        self._move(Step.CONTENT_ENDED)
        self._end_of_message("queued")
        return position + used

    def _keep_content(self, transaction: _Transaction, content: bytes) -> None:
        if not content:
            return
        transaction.scanner.feed(content)
        if self.persona.max_message_line_octets is not None:
            self._measure_lines(transaction, content)
        if transaction.too_big or transaction.over_budget:
            return
        memory = self.settings.message_memory
        if self._content_size() > self.settings.max_message_bytes:
            transaction.too_big = True
            transaction.drop_content()  # kept no longer: only its facts are
        elif memory is not None and not memory.fits(len(content)):
            transaction.over_budget = True
            transaction.drop_content()
            self._emit("looper.smtp.limit", limit="message memory", bytes=memory.limit_bytes)
        else:
            transaction.chunks.append(content)
            transaction.chunk_bytes += len(content)
            if memory is not None:
                memory.held_bytes += len(content)
                self._held_bytes += len(content)

    def _measure_lines(self, transaction: _Transaction, content: bytes) -> None:
        """Exim: the longest message line, if longer than max_message_line_octets."""
        limit = self.persona.max_message_line_octets
        position = 0
        while (newline := content.find(b"\n", position)) >= 0:
            octets = transaction.line_octets + newline - position
            ended_by_crlf = content[newline - 1 : newline] == b"\r" if newline > position else octets > 0
            length = octets - 1 if ended_by_crlf else octets
            transaction.line_octets = 0
            position = newline + 1
            if length > limit and length > (transaction.long_line or 0):
                transaction.long_line = length  # Exim names the longest
        transaction.line_octets += len(content) - position

    def _content_size(self) -> int:
        transaction = self._transaction
        if transaction is None or transaction.scanner is None:
            return 0
        return transaction.scanner.size

    def _end_of_message(self, reply_key: str) -> None:
        transaction = self._transaction
        facts = transaction.scanner.facts()
        if transaction.long_line is not None:
            self._transaction = None
            return self._reply("message_line_too_long", got=transaction.long_line)
        if transaction.too_big:
            self._transaction = None
            return self._reply("message_too_big")
        if transaction.over_budget:
            self._transaction = None
            return self._reply("storage_failed")
        if facts.received_hops + 1 >= self.persona.hop_limit:
            self._transaction = None
            return self._reply("too_many_hops")
        content = b"".join(transaction.chunks)
        transaction.unterminated = not content.endswith(b"\n")
        transaction.chunks = []  # chunk_bytes still counts it: the Store action holds it
        self._pending_store = (reply_key, transaction, facts.sha256)
        # Replies not yet written stay unwritten while the message is
        # stored: like Postfix, a pipelining client gets them all at once.
        self._actions.append(Store(content, facts.sha256))
        self._move(Step.AWAIT)

    def _bdat_cmd(self, verb: str, argument: str) -> None:
        if not self._esmtp and "bdat_not_offered" in self.persona.replies:
            return self._reply("bdat_not_offered")  # Exim: the chunk is then read as commands
        args = words(argument)
        last = len(args) == 2 and args[1].upper() == "LAST"
        lenient = self.persona.bdat_lenient
        if lenient and args and _is_number(args[0]):
            last = len(args) >= 2 and args[1].upper() == "LAST"  # Exim reads no further
        elif (not args or len(args) > 2 or (len(args) == 2 and not last) or not _is_number(args[0])
              or len(args[0]) >= 20):
            self._reply("bdat_syntax")
            return None if lenient else self._close()
        size = int(args[0])
        transaction = self._transaction
        self._lines.expect(size)
        self._chunk_size, self._chunk_keep, self._chunk_last = size, False, last
        if transaction is None:
            self._no_recipients("need_rcpt", verb)
        elif transaction.bdat_failed:
            self._reply("bdat_discarded", size=size)
        elif not transaction.rcpt_to:
            transaction.bdat_failed = True
            self._no_recipients("no_valid_rcpt", verb)
        elif size == 0 and not last and not lenient:
            transaction.bdat_failed = True
            self._reply("bdat_null")
        elif (transaction.bdat_size or 0) + size > self.settings.max_message_bytes and not lenient:
            transaction.bdat_failed = True
            self._reply("chunk_too_big")
        else:
            if transaction.bdat_size is None:
                transaction.bdat_size = 0
                transaction.scanner = MessageScanner(self.client.ip)
            self._chunk_keep = True
        if self._mode is Mode.CLOSED:
            return None  # the refusal was one error too many: the persona hung up, nothing more is read
        if size:
            self._move(Step.CHUNK_ANNOUNCED)
        else:
            self._end_chunk()

    def _take_chunk(self, data: bytes, position: int) -> int:
        piece, position = self._lines.read_raw(data, position)
        if self._chunk_keep:
            self._keep_content(self._transaction, piece)
        if not self._lines.raw_left:
            self._move(Step.CONTENT_ENDED)
            self._end_chunk()
        return position

    def _end_chunk(self) -> None:
        transaction = self._transaction
        if not self._chunk_keep:
            if self._chunk_last and transaction is not None:
                self._transaction = None  # a failed BDAT transaction ends with LAST
            return
        transaction.bdat_size = transaction.scanner.size
        if transaction.too_big and self.persona.bdat_lenient and not self._chunk_last:
            # Exim reads a chunk before it weighs it, and then drops the message
            self._transaction = None
            return self._reply("chunk_too_big")
        if self._chunk_last:
            self._end_of_message("bdat_queued")
        else:
            self._reply("bdat_ok", size=self._chunk_size)

    def _rset_cmd(self, verb: str, argument: str) -> None:
        if argument:
            return self._reply("rset_syntax")
        self._transaction = None
        self._rcpt_refusals = None
        self._reply("rset_ok")
        self._count_junk()

    def _noop_cmd(self, verb: str, argument: str) -> None:
        self._reply("noop")
        self._count_junk()

    def _quit_cmd(self, verb: str, argument: str) -> None:
        if argument and "quit_syntax" in self.persona.replies:
            return self._reply("quit_syntax")
        self._reply("quit", count_error=False)
        transaction = self._transaction
        if transaction is not None and transaction.bdat_size is not None and "bdat_lost" in self.persona.replies:
            # Exim's header reader takes the QUIT for the end of input.
            outcome = QuitBetweenChunks.LOST
            if transaction.scanner is not None and not (transaction.too_big or transaction.over_budget):
                outcome = quit_between_chunks(b"".join(transaction.chunks))
            if outcome is QuitBetweenChunks.ACCEPTED:
                return self._end_of_message("queued")  # 250 OK id=..., and the session goes on
            if outcome is QuitBetweenChunks.DEAF:
                return self._move(Step.DEAFENED)
            self._reply("bdat_lost", count_error=False)
        self._close()

    def _vrfy_cmd(self, verb: str, argument: str) -> None:
        if not argument:
            return self._reply("vrfy_syntax")
        if self.persona.address_rules == "exim":
            path = exim_path(argument, frozenset(), recipient=True)
            if path.address is None:
                self._count_junk()
                if path.parse_error:
                    return self._reply("vrfy_error", reason=path.reason)
                return self._exim_refusal(path)
            self._count_junk()
            return self._reply("vrfy", argument=argument)  # Exim's ACL refuses every VRFY
        address = words(argument)[0].strip("<>")
        if "vrfy_local" in self.persona.replies and address:
            return self._vrfy_as_sendmail(argument, address)
        verdict = self._recipient_verdict(address) if address else None
        if verdict is not None:
            self._reply(verdict, address=address)
        else:
            self._reply("vrfy", argument=argument)
        self._count_junk()

    def _help_cmd(self, verb: str, argument: str) -> None:
        replies = self.persona.replies
        if argument.upper() == "MAIL" and "help_mail" in replies:
            return self._reply("help_mail")
        self._reply("help" if "help" in replies else "unknown", command=verb)

    def _verb_cmd(self, verb: str, argument: str) -> None:
        self._reply("verb" if "verb" in self.persona.replies else "unknown", command=verb)

    def _expn_cmd(self, verb: str, argument: str) -> None:
        if "expn" not in self.persona.replies:
            return self._reply("unknown", command=verb)
        if not argument and "expn_syntax" in self.persona.replies:
            return self._reply("expn_syntax")
        self._reply("expn", argument=argument)
        self._count_junk()

    def _vrfy_as_sendmail(self, argument: str, address: str) -> None:
        """sendmail names a local user, says User unknown for a local
        stranger, and 252 for anything that would go elsewhere."""
        self._count_junk()
        if argument.startswith("<") and ">" not in argument:
            return self._reply("bad_rcpt", address=argument)
        local = self._local_user(address)
        if local is not None:
            return self._reply("vrfy_alias" if local in DEBIAN_ALIASES else "vrfy_local", local=local)
        if "@" not in address or self._is_local_domain(address.rpartition("@")[2].lower()):
            return self._reply("vrfy_unknown", address=address)
        self._reply("vrfy_remote", address=address)

    def _turn_cmd(self, verb: str, argument: str) -> None:
        self._reply("turn" if "turn" in self.persona.replies else "unknown", command=verb)

    def _etrn_cmd(self, verb: str, argument: str) -> None:
        if not argument:
            return self._reply("etrn_syntax")
        if argument.startswith("#") and "etrn_queue_unknown" in self.persona.replies:
            return self._reply("etrn_queue_unknown", argument=argument[1:])  # sendmail: no such queue
        self._reply("etrn", argument=argument.lstrip("@#"), raw_argument=argument)
        self._count_junk()

    def _xclient_cmd(self, verb: str, argument: str) -> None:
        self._reply("xclient" if argument else "xclient_syntax")

    def _starttls_cmd(self, verb: str, argument: str) -> None:
        if argument:
            return self._reply("starttls_syntax")
        if self._tls:
            return self._reply("tls_active")
        if not self.settings.tls_available or (self.persona.starttls_needs_ehlo and not self._esmtp):
            return self._reply("starttls_not_offered" if "starttls_not_offered" in self.persona.replies else "unknown")
        if self._transaction is not None and "starttls_in_transaction" in self.persona.replies:
            return self._reply("starttls_in_transaction")
        self._reply("starttls_ready")
        self._flush()
        self._actions.append(StartTLS())
        self._transaction = None
        self._move(Step.AWAIT)  # what was pipelined after it is dropped: see _read

    # -- AUTH -------------------------------------------------------------------

    @property
    def _auth_offered(self) -> bool:
        if self.persona.auth_needs_ehlo and not self._esmtp:
            return False
        return bool(self.settings.auth_mechanisms) and (self._tls or not self.settings.auth_tls_only)

    def _auth_cmd(self, verb: str, argument: str) -> None:
        mechanisms = self.settings.auth_mechanisms
        if not self._auth_offered:
            return self._reply("auth_not_enabled")
        if self._authenticated:
            return self._reply("auth_already")
        if self._transaction is not None:
            return self._reply("auth_in_transaction")
        args = words(argument)
        if self.persona.auth_extra_words_ignored:
            args = args[:2]
        if not args or len(args) > 2:
            return self._reply("auth_syntax", argument=argument)
        mechanism = args[0].upper()
        if mechanism not in mechanisms:
            self._login_failed(mechanism, None, reason="unsupported mechanism")
            return self._reply("auth_bad_mechanism", argument=args[0])
        digest_challenge = None
        if mechanism == "DIGEST-MD5":
            digest_challenge = DigestChallenge.drawn(self.env.random_bytes, self.settings.hostname,
                                                     self.persona.digest_md5_server)
        self._sasl = SaslExchange(mechanism, cram_challenge=self.env.cram_challenge(),
                                  digest_challenge=digest_challenge,
                                  empty_login_username=self.persona.login_takes_empty_username)
        initial_response = args[1] if len(args) == 2 else None
        self._sasl_outcome(self._sasl.start(initial_response), initial=True, response=initial_response or "")

    def _sasl_response(self, line: bytes) -> None:
        self._sasl_outcome(self._sasl.respond(line), initial=False, response=as_text(line))
        self._after_command()

    def _sasl_outcome(self, outcome: Challenge | Credentials | Acknowledged | Failure, *, initial: bool,
                      response: str = "") -> None:
        exchange = self._sasl
        mechanism = exchange.mechanism
        penalty = self._auth_penalty() if initial else {"delay_s": 0.0, "spread_s": 0.0}
        if isinstance(outcome, Credentials) and self._accepts(outcome):
            proof = exchange.admit(self.settings.login_policy.password_of(outcome))
            outcome = Acknowledged(outcome) if proof is None else proof
        if isinstance(outcome, Challenge):
            if self._backend_times_out(penalty, verdict=False):
                self._sasl = None  # the back end never answered: no failure to count
                return self._backend_lost()
            line = b"334 " + base64.b64encode(outcome.data) + b"\r\n"
            if penalty["delay_s"]:
                self._flush()
                self._actions.append(Send(line, **penalty))
            else:
                self._send_lines([line])
            if self._mode is not Mode.SASL:
                self._move(Step.CHALLENGED)
            return
        self._sasl = None
        if self._mode is Mode.SASL:
            self._move(Step.SASL_DONE)
        if outcome is Failure.CANCELLED:
            self._login_failed(mechanism, None, reason="cancelled")
            return self._reply("auth_aborted")
        if outcome is Failure.UNDECODABLE:
            self._login_failed(mechanism, None, reason="invalid base64")
            key = "auth_bad_base64_initial" if initial else "auth_bad_base64_continued"
            return self._reply(key, argument=response)  # sendmail quotes it
        if outcome is Failure.MALFORMED:
            return self._auth_failed(mechanism, None, "malformed response", penalty)
        if isinstance(outcome, Acknowledged):
            self._authenticated = outcome.credentials.username
            self._auth_failures = self._penalty_level = 0
            self._emit("looper.login.success", **login_fields(outcome.credentials))
            return self._reply("auth_ok")
        self._auth_failed(mechanism, outcome, "bad credentials", penalty)

    def _auth_failed(self, mechanism: str, credentials: Credentials | None, reason: str,
                     penalty: dict[str, float]) -> None:
        if self._backend_times_out(penalty, verdict=True):
            # Judged after the penalty, answered after the server gave up.
            if penalty["delay_s"] < self.persona.auth_backend_timeout_s:
                self._login_failed(mechanism, credentials, reason=reason)
            return self._backend_lost()
        self._login_failed(mechanism, credentials, reason=reason)
        self._reply("auth_failed", **self._auth_failure_delay(penalty))

    def _backend_times_out(self, penalty: dict[str, float], *, verdict: bool) -> bool:
        """Could the back end's first answer (the penalty, plus the failure
        delay for a verdict) come too late for the server? On the longest
        pause: the recordings show the 454 where the two just reach it."""
        timeout_s = self.persona.auth_backend_timeout_s
        if not timeout_s or not penalty["delay_s"]:
            return False
        pause = self._auth_failure_delay(penalty) if verdict else penalty
        return pause["delay_s"] + pause["spread_s"] >= timeout_s

    def _backend_lost(self) -> None:
        persona = self.persona
        self._reply("auth_backend_lost", delay_s=persona.auth_backend_timeout_s,
                    spread_s=persona.auth_backend_timeout_spread_s)

    def _accepts(self, credentials: Credentials) -> bool:
        if self.persona.ignores_authzid and credentials.mechanism == "PLAIN":  # DIGEST-MD5's is in its hash
            credentials = replace(credentials, authzid=None)
        return self.settings.login_policy.accepts(credentials, self._auth_failures)

    def _auth_failure_delay(self, penalty: dict[str, float]) -> dict[str, float]:
        """The pause before a 535: the back end's failure delay, after the
        penalty when the failure is the AUTH command's first answer."""
        persona = self.persona
        if self._auth_failures <= 1:
            delay_s, spread_s = persona.auth_failure_delay_s, persona.auth_failure_spread_s
        else:
            delay_s, spread_s = persona.auth_repeat_failure_delay_s, persona.auth_repeat_failure_spread_s
        return {"delay_s": penalty["delay_s"] + delay_s, "spread_s": penalty["spread_s"] + spread_s}

    def _auth_penalty(self) -> dict[str, float]:
        """Dovecot's pause before its first answer to an AUTH from an address
        that has failed: first_s, doubled per level, at most max_s."""
        persona = self.persona
        if not self._penalty_level or not persona.auth_penalty_first_s:
            return {"delay_s": 0.0, "spread_s": 0.0}
        level = min(self._penalty_level, 16)
        delay_s = min(persona.auth_penalty_first_s * 2 ** (level - 1), persona.auth_penalty_max_s)
        return {"delay_s": delay_s, "spread_s": persona.auth_penalty_spread_s}

    def _login_failed(self, mechanism: str, credentials: Credentials | None, *, reason: str) -> None:
        self._auth_failures += 1
        secret = None if credentials is None else (credentials.password, credentials.digest)
        if reason in ("bad credentials", "malformed response"):  # what Dovecot judged
            if self._penalty_level == 0 or secret != self._last_failed_secret:
                self._penalty_level += 1
            self._last_failed_secret = secret
        fields = login_fields(credentials) if credentials else {"mechanism": mechanism, "username": None}
        self._emit("looper.login.failed", reason=reason, **fields)

    # -- the Received: field it would have added --------------------------------

    def _received_header(self, queue_id: str, transaction: _Transaction) -> str:
        protocol = ("ESMTP" if self._esmtp else "SMTP") + ("S" if self._tls else "") + ("A" if self._authenticated else "")
        # Postfix names the recipient only when there is exactly one.
        recipient = f" for <{transaction.rcpt_to[0]}>" if len(transaction.rcpt_to) == 1 else ""
        return self._fill(
            self.persona.received_format,
            helo=self._helo or self.client.ip,
            client_name=self.client.name or "unknown",
            protocol=protocol,
            queue_id=queue_id,
            for_recipient=recipient,
            mail_from=transaction.mail_from,
        )


class _Blanks(dict):
    """Template values; a placeholder this reply has no value for (an
    operator's override, a persona's rarely used field) reads as empty."""

    def __missing__(self, key: str) -> str:
        return ""


def _valid_recipient(address: str) -> bool:
    domain = address.rpartition("@")[2] if "@" in address else ""
    if domain.startswith("["):
        return domain.endswith("]")
    return all(0 < len(label) <= 63 for label in domain.split(".")) if domain else True


# Replies that say "unknown command", for the personas that count them.
_UNKNOWN_KEYS = frozenset({"unknown", "bad_syntax", "bad_utf8", "xclient", "xclient_syntax", "forbidden"})
# How much of a message Exim's rule may hold before its first line ends.
_FIRST_LINE_WAIT_BYTES = 1 << 16

# An LF without its CR, or a CR without its LF.
_BARE_LINE_END = re.compile(rb"(?<!\r)\n|\r(?!\n)")

# What sendmail still answers once it refuses a client.
_ALWAYS_ANSWERED = frozenset({"HELO", "EHLO", "NOOP", "RSET", "QUIT"})

# Refusals that are not syntax or protocol errors to a persona that counts those.
_NOT_SYNTAX_KEYS = frozenset({"address_needs_domain", "no_valid_rcpt_pipelined", "smtputf8_not_offered", "vrfy_error"})
# Refusals of Exim's ACLs: repeated after DATA without their code.
_ACL_REFUSALS = frozenset({"relay_denied", "user_unknown"})
_NONMAIL_VERBS = frozenset({"NOOP", "VRFY", "EXPN", "ETRN", "HELP", "HELO", "EHLO", "RSET"})
_NONMAIL_AFTER_FIRST = frozenset({"HELO", "EHLO", "RSET"})

_ENVELOPE_EVENTS = {"MAIL": "looper.smtp.mail", "RCPT": "looper.smtp.rcpt"}
_MECHANISM_NAME = re.compile(rb"[A-Za-z0-9_-]{0,20}")  # RFC 4422 3.1, case folded


def _auth_logged(words: list[bytes]) -> bytes:
    """An AUTH line as logged: the verb and what of the next word can be a
    mechanism name, never the initial response, however the client glued
    the two together (a secret belongs in looper.login.* events alone)."""
    if len(words) < 2:
        return words[0] if words else b""
    return words[0] + b" " + _MECHANISM_NAME.match(words[1]).group()


# Postfix's smtpd_forbidden_commands (with any line not starting with a
# letter, and a line that looks like a header field): spoken to by a web
# client or a confused proxy, it hangs up.
_FORBIDDEN = frozenset({"GET", "POST", "CONNECT"})

_HANDLERS = {
    "HELO": SmtpServer._helo_cmd,
    "EHLO": SmtpServer._helo_cmd,
    "MAIL": SmtpServer._mail_cmd,
    "RCPT": SmtpServer._rcpt_cmd,
    "DATA": SmtpServer._data_cmd,
    "BDAT": SmtpServer._bdat_cmd,
    "RSET": SmtpServer._rset_cmd,
    "NOOP": SmtpServer._noop_cmd,
    "QUIT": SmtpServer._quit_cmd,
    "VRFY": SmtpServer._vrfy_cmd,
    "ETRN": SmtpServer._etrn_cmd,
    "XCLIENT": SmtpServer._xclient_cmd,
    "XFORWARD": SmtpServer._xclient_cmd,
    "STARTTLS": SmtpServer._starttls_cmd,
    "AUTH": SmtpServer._auth_cmd,
    "HELP": SmtpServer._help_cmd,
    "VERB": SmtpServer._verb_cmd,
    "TURN": SmtpServer._turn_cmd,
    "EXPN": SmtpServer._expn_cmd,
}


# What a server without a size limit pretends its spool has free.
_FREE_DISK_BYTES = 100 * 1024**3


def _top_bit_stripped(text: str) -> str:
    """Text as sendmail echoes it: each byte (Latin-1) without its top bit.

    Where that makes a CR LF inside the text (a CR, then 0x8A), sendmail
    would end its reply line early and write the rest as a line of its
    own; the persona writes "?" for that LF, so its replies stay whole
    lines and a client cannot make it say a reply of the client's choosing."""
    stripped = "".join(chr(ord(char) & 0x7F) if ord(char) < 256 else "?" for char in text)
    return stripped.replace("\r\n", "\r?")


def _scanned(argument: str) -> str:
    """The word sendmail was scanning when MAIL or RCPT made no sense."""
    first = argument.split(":", 1)[0].split()
    return first[0] if first else ""


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() takes '²' and '①', which int() refuses."""
    return text.isascii() and text.isdigit()


def _routes_elsewhere(local: str) -> bool:
    """A local part that routes the mail on: the % hack (victim%elsewhere),
    a bang path (elsewhere!victim) or, quoted, a whole address
    ("victim@elsewhere")."""
    return any(mark in local for mark in "%!@")
