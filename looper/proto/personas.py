"""Personas: what a real mail server says, byte for byte, as data.

Each persona is the greeting, the EHLO reply and every reply text of one
real server, recorded from the software itself (tests/data/<persona>/),
except `shutdown` (the trap's own stop: RFC 5321's 421, in the server's
style; a real one stopping mostly just drops the connection). The
SMTP machine decides *which* reply a situation gets; the persona decides
*what it says*, and, where its server's rules differ from Postfix's, which
rules hold: the rule fields of Persona (limits, pauses, what is refused
when), each read by the one machine, and OPTIONAL_REPLY_KEYS, replies only
some servers give (a persona without one does not have that rule).
Placeholders: {host} our host name, {date} an RFC 5322 date, {queue_id},
{address}, {argument}, {param}, {size}, {helo}, {ip}, and those a reply
names beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

# The keys every persona answers; the machine only ever asks for these.
REPLY_KEYS = frozenset(
    """
    greeting helo ehlo_syntax helo_syntax quit mail_ok rcpt_ok data_go queued
    need_mail need_rcpt no_valid_rcpt nested_mail data_syntax rset_ok rset_syntax noop
    mail_syntax bad_sender size_syntax ret_syntax unsupported_option size_exceeded
    size_fs_limit rcpt_syntax bad_rcpt too_many_rcpt relay_denied user_unknown
    too_many_hops message_too_big bdat_ok bdat_queued bdat_syntax bdat_null
    bdat_discarded data_after_bdat chunk_too_big vrfy vrfy_syntax unknown bad_syntax
    etrn etrn_syntax xclient xclient_syntax auth_not_enabled forbidden bad_utf8
    starttls_ready starttls_syntax tls_active timeout too_many_errors shutdown auth_ok
    auth_failed auth_bad_base64_initial auth_bad_base64_continued auth_bad_mechanism
    auth_syntax auth_aborted auth_already auth_in_transaction storage_failed
    auth_backend_lost
    """.split()
)
# Replies of rules only some servers have; a persona without the key does
# not have the rule (HELP and EXPN are then unknown commands).
OPTIONAL_REPLY_KEYS = frozenset(
    """
    auth_backend_lost
    need_helo help expn quit_syntax starttls_not_offered too_many_unknown too_many_syntax
    too_many_nonmail rcpts_rejected no_valid_rcpt_pipelined address_error smtputf8_not_offered
    body_syntax vrfy_error address_needs_domain expn_syntax verb help_mail relay_denied_unresolved
    size_overflow timeout_data turn rcpt_null rcpt_ok_local vrfy_local vrfy_remote starttls_in_transaction
    helo_invalid command_too_long nul_byte greeting_refused protocol_error command_rejected sync_error
    bare_lf_in_data bare_cr_in_data message_line_too_long bdat_lost vrfy_unknown etrn_queue_unknown
    bad_route vrfy_alias too_many_bad_rcpt bdat_not_offered
    """.split()
)


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE60 = _BASE62[:60]


def _base62(number: int, width: int) -> str:
    digits = ""
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits = _BASE62[digit] + digits
    return digits


def _postfix_queue_id(now_s: float, serial: int) -> str:
    # Postfix's short queue id: the microseconds of the queue file's time (5 hex digits), then its inode.
    return f"{round(now_s * 1_000_000) % 1_000_000:05X}{serial:X}"


def _exim_queue_id(now_s: float, serial: int) -> str:
    # Exim 4.96: base-62 time, pid and fraction: 1xV4mo-0001px-1o
    return f"{_base62(int(now_s), 6)}-{_base62(serial, 6)}-{_base62(int(now_s % 1 * 3844), 2)}"


def _sendmail_queue_id(now_s: float, serial: int) -> str:
    # sendmail: year, month, day, hour, minute, second in base 60, a counter, the pid
    t = datetime.fromtimestamp(int(now_s), timezone.utc)
    stamp = "".join(_BASE60[n] for n in ((t.year - 1900) % 60, t.month - 1, t.day, t.hour, t.minute, t.second))
    return f"{stamp}{_BASE60[serial % 60]}{_BASE60[serial // 60 % 60]}{serial % 1_000_000:06d}"


def _exchange_queue_id(now_s: float, serial: int) -> str:
    return f"{serial + 5_100_000_000_000}"  # InternalId: a 13-digit counter


QUEUE_ID_FORMATS = {
    "postfix": _postfix_queue_id,
    "exim": _exim_queue_id,
    "sendmail": _sendmail_queue_id,
    "exchange": _exchange_queue_id,
}


@dataclass(frozen=True)
class Persona:
    name: str
    # The EHLO reply: its first line's text, then the capability lines in
    # the server's own order ({max_size}: the size limit; {mechanisms}: the
    # AUTH mechanisms, the line left out when there are none; STARTTLS is
    # left out once TLS is on).
    ehlo_first_line: str
    extensions: tuple[str, ...]
    replies: dict[str, str] = field(repr=False)
    # Line limits and pacing, as the server's defaults have them.
    command_line_limit: int = 2048
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    # Postfix's smtpd sleep(1)s before each reply once a client has made
    # soft_error_limit errors: measured 1.000-1.002 s, never less.
    error_sleep_s: float = 1.0
    error_sleep_spread_s: float = 0.002
    junk_command_limit: int = 100
    # A SASL back end's failure delay: the 535 comes at least the first
    # value after the credentials, up to the spread more; "repeat" from the
    # address's second failure on. (The postfix persona's are measured.)
    auth_failure_delay_s: float = 1.7
    auth_failure_spread_s: float = 0.6
    auth_repeat_failure_delay_s: float = 5.1
    auth_repeat_failure_spread_s: float = 1.8
    # Dovecot's per-address auth penalty: once an address has failed, the
    # first answer to its next AUTH (the 334 prompt, or the verdict on an
    # initial response) waits penalty_first_s, doubling with each failure
    # with another password than the last failed one, up to penalty_max_s
    # (Dovecot: 4 s, 8 s, then 15 s; measured 4.004-4.006 s and
    # 8.008-8.009 s). 0: no penalty (Exim, sendmail, Exchange answer at once).
    auth_penalty_first_s: float = 0.0
    auth_penalty_max_s: float = 0.0
    auth_penalty_spread_s: float = 0.0
    # How long the server waits for its SASL back end's answer: when the
    # penalty (and, for an initial response, the failure delay) reach it,
    # the client gets auth_backend_lost after this wait, plus up to the
    # spread (Postfix with Dovecot: 454 after 10.009-10.014 s). 0: no limit.
    auth_backend_timeout_s: float = 0.0
    auth_backend_timeout_spread_s: float = 0.0
    # A local part that routes elsewhere (victim%elsewhere, elsewhere!victim,
    # "victim@elsewhere") makes the recipient foreign: relaying, refused as
    # relaying (Postfix: allow_percent_hack, swap_bangpath and
    # resolve_dequoted_address are on by default; sendmail refuses the %
    # hack as relaying without FEATURE(loose_relay_check)), not User unknown.
    routed_local_parts: bool = True
    # Lines end at a bare LF too (Postfix 3.7's smtpd_forbid_bare_newline=no).
    bare_lf: bool = True
    hop_limit: int = 50
    # A web request or a header line: Postfix and sendmail hang up, Exim
    # and Exchange answer it as an unknown command.
    hangs_up_on_forbidden: bool = True
    # Size limit when smtp.max_message_bytes is not set, and queue ids.
    default_max_message_bytes: int = 10_240_000
    # Recipients per message (Postfix's smtpd_recipient_limit 1000; Exim's
    # recipients_max 50000; sendmail has none: a bound all the same).
    default_max_recipients: int = 1000
    # What the stock Debian package offers before anyone configures it:
    # STARTTLS (Postfix and Exim do, with a certificate of their own;
    # sendmail only once starttls.m4 is included) and the AUTH mechanisms
    # (Postfix and Exim none; sendmail its Cyrus SASL defaults).
    offers_starttls_by_default: bool = True
    default_auth_mechanisms: tuple[str, ...] = ()
    # Whose DIGEST-MD5 challenge the AUTH back end words (digest_md5.py):
    # Dovecot behind Postfix (and Exim's dovecot authenticator), Cyrus SASL
    # in sendmail.
    digest_md5_server: str = "dovecot"
    queue_id_style: str = "postfix"
    # How the Received: field it would add reads (one line; MTAs fold it).
    received_format: str = ""
    # Rules where servers differ from Postfix, as data (the machine reads
    # them; a persona leaves them at these defaults to have Postfix's):
    # - MAIL before HELO/EHLO is refused (need_helo); STARTTLS and AUTH are
    #   not offered until EHLO (starttls_not_offered, auth_not_enabled).
    helo_required: bool = False
    starttls_needs_ehlo: bool = False
    auth_needs_ehlo: bool = False
    # - The command is "MAIL FROM:" / "RCPT TO:", colon and all (Exim's
    #   command table): without it the line is an unknown command.
    envelope_verb_has_colon: bool = False
    # - Verbs this server does not know at all (answered as unknown).
    unknown_verbs: frozenset[str] = frozenset()
    # - Counted limits, each with its own count (None: no such limit):
    #   unknown commands (the one past the limit gets too_many_unknown
    #   instead of its answer, and the connection closes); syntax and
    #   protocol errors, replies 501 and 503 (the one past the limit gets
    #   its answer as a continuation line, then too_many_syntax, and the
    #   close); non-mail commands (NOOP, VRFY, EXPN, ETRN, HELP, and HELO,
    #   EHLO, RSET after the first: too_many_nonmail and the close).
    unknown_command_limit: int | None = None
    syntax_error_limit: int | None = None
    nonmail_command_limit: int | None = None
    # - How MAIL and RCPT arguments are read ("postfix": address.py's
    #   parse_path; "exim": Exim's parse_extract_address, with its own
    #   errors, answered as address_error).
    address_rules: str = "postfix"
    # - Unknown users of a local domain are refused to every client
    #   (Postfix), or only to those that may not relay (Debian's Exim ACL
    #   accepts whatever a relay client sends).
    verifies_local_users_of_relay_clients: bool = True
    # - Hanging up on a web request (see hangs_up_on_forbidden): on any
    #   line Postfix forbids (also non-letters and header lines), or, as
    #   sendmail does, only on GET, POST or CONNECT as the first command.
    forbidden_first_command_only: bool = False
    # - MAIL parameters it knows (others: unsupported_option, {param_name}),
    #   and whether a SIZE that is not a number is let through.
    mail_parameters: frozenset[str] = frozenset({"SIZE", "BODY", "RET", "ENVID", "AUTH", "SMTPUTF8"})
    ignores_bad_size: bool = False
    # - Commands whose argument is ignored rather than refused.
    ignores_arguments: frozenset[str] = frozenset()
    # - Command lines are bytes to it (8-bit is not a UTF-8 error).
    eight_bit_commands: bool = False
    # - With no size limit configured it says SIZE without a number and
    #   takes any SIZE= up to its free disk space (sendmail's MaxMessageSize 0).
    unlimited_size_by_default: bool = False
    # - Goes quiet on an idle client: closes without a word, after
    #   answering half a line if it has one (sendmail); else says timeout.
    idle_close_silent: bool = False
    # - An address literal of its own ([127.0.0.1], the listening address)
    #   is a local domain whose users are checked (sendmail's $=w); Postfix
    #   takes any recipient there.
    own_literal_is_local_domain: bool = False
    # - STARTTLS forgets the HELO (RFC 3207); sendmail keeps it.
    tls_forgets_helo: bool = True
    # - A HELO name with a space or 8-bit bytes is refused (helo_invalid),
    #   and (Exim) an unclosed [ too.
    checks_helo_name: bool = False
    helo_name_needs_closed_literal: bool = False
    # - A command line past command_line_limit (its CR counted) is cut and
    #   the session goes on (Postfix), or is an attack: command_too_long
    #   and the close (sendmail: 2046 bytes and the CR are the most).
    overlong_command_closes: bool = False
    # - Exim: a line past command_line_limit is an unknown command, and
    #   what follows is read as the next line.
    overlong_command_splits: bool = False
    # - Exim: a verb ends at a space (or the line end) only; "NOOP\tx" is
    #   no NOOP.
    verb_ends_at_space: bool = False
    # - Exim: a message with a line longer than this (without its CRLF) is
    #   refused after its end (message_line_too_long, {got}: that line's length).
    max_message_line_octets: int | None = None
    # - Exim's BDAT: a bad size is refused and the session goes on, words
    #   after the size other than LAST are ignored, DATA after a chunk
    #   leaves only RSET (bdat_discarded to the rest), and QUIT with a
    #   message half sent in chunks is followed by bdat_lost.
    bdat_lenient: bool = False
    # - Debian's Exim ACL: past this many RCPTs in a message, while fewer
    #   than half were accepted, every RCPT but to postmaster gets
    #   too_many_bad_rcpt (CHECK_RCPT_NO_FAIL_TOO_MANY_BAD_RCPT unset).
    bad_rcpt_limit: int | None = None
    # - Exim's plaintext authenticators: words after AUTH's initial response
    #   are ignored, the PLAIN authorisation identity too, and LOGIN takes an
    #   empty user name to the password prompt.
    auth_extra_words_ignored: bool = False
    ignores_authzid: bool = False
    login_takes_empty_username: bool = False
    # - Exim 4.96: a message whose first line ends in a bare LF may end at
    #   LF "." LF; one whose first line ends in CRLF only at CRLF "." CRLF
    #   (else as bare_lf says for all). And a message that does not end a
    #   line gets CRLF added, which BDAT's total counts.
    bare_lf_follows_first_line: bool = False
    adds_final_line_end: bool = False
    # - sendmail: what it echoes loses its top bit ("usé" reads "usir"),
    #   and an address may hold a space inside its brackets.
    strips_top_bit: bool = False
    spaces_in_address: bool = False
    # - sendmail's greet pause: the greeting comes this late, and a client
    #   that talks before it gets greeting_refused instead, its EHLO only
    #   the first line and ENHANCEDSTATUSCODES, and command_rejected to
    #   every command but HELO, EHLO, NOOP, RSET and QUIT. The same refusal
    #   follows an EHLO with commands pipelined behind it (protocol_error
    #   instead of the EHLO reply) when ehlo_is_sync_point.
    greet_pause_s: float = 0.0
    ehlo_is_sync_point: bool = False
    # - Exim's synchronisation check: MAIL, RCPT or DATA with more input
    #   behind it after HELO (PIPELINING not offered), or any line with
    #   input behind it after a refused DATA, gets sync_error and the close.
    checks_synchronization: bool = False
    # - A bare LF or CR in a message is an attack (smuggling): sendmail
    #   8.17.1.9-2+deb12u2 says bare_lf_in_data or bare_cr_in_data and
    #   hangs up (then bare_lf must be False: only CRLF ends a line).
    refuses_bare_line_ends: bool = False
    # - sendmail's throttles (checksmtpattack, BadRcptThrottle): the n-th
    #   command of a group, from the group's threshold on, is answered
    #   after 1 s, then 2, 4, ... (at most throttle_max_delay_s); and once
    #   bad_rcpt_throttle RCPTs were refused, every RCPT after bad_rcpt_delay_s.
    command_throttles: tuple[tuple[frozenset[str], int], ...] = ()
    throttle_max_delay_s: float = 240.0
    bad_rcpt_throttle: int | None = None
    bad_rcpt_delay_s: float = 1.0
    # sendmail's sleep() is exact: a pause is at most this much longer.
    throttle_spread_s: float = 0.002
    # Of these verbs' pause, an error reply waits only the first part (the
    # n-th command sleeps n // threshold s in checksmtpattack; the rest of
    # the pause comes after the address was checked, which an error in
    # VRFY's or EXPN's argument aborts: QuickAbort).
    throttle_errors_wait_less: frozenset[str] = frozenset()

    def queue_id(self, now_s: float, serial: int) -> str:
        """The queue id this server would give a message stored at `now_s`
        (the environment's clock) with `serial` (its inode, counter or pid)."""
        return QUEUE_ID_FORMATS[self.queue_id_style](now_s, serial)

    def __post_init__(self) -> None:
        needed = REPLY_KEYS - OPTIONAL_REPLY_KEYS | ({"auth_backend_lost"} if self.auth_backend_timeout_s else set())
        missing = needed - self.replies.keys()
        if missing:
            raise ValueError(f"persona {self.name} lacks replies: {', '.join(sorted(missing))}")
        unknown = self.replies.keys() - REPLY_KEYS - OPTIONAL_REPLY_KEYS
        if unknown:
            raise ValueError(f"persona {self.name} has unknown replies: {', '.join(sorted(unknown))}")
        needed = {
            "need_helo": self.helo_required,
            "starttls_not_offered": self.starttls_needs_ehlo,
            "too_many_unknown": self.unknown_command_limit is not None,
            "too_many_syntax": self.syntax_error_limit is not None,
            "too_many_nonmail": self.nonmail_command_limit is not None,
        }
        for key, rule in needed.items():
            if rule and key not in self.replies:
                raise ValueError(f"persona {self.name} has the rule but not the reply {key}")


POSTFIX = Persona(
    name="postfix",
    # Debian's Postfix 3.7 with Dovecot 2.3 (auth_failure_delay 2 s, flushed
    # on a timer): the 535 after 1.50-2.02 s, first and later failures alike
    # (tests/data/postfix/sasl_failure_timing.json and the auth_* recordings).
    auth_failure_delay_s=1.5,
    auth_failure_spread_s=0.52,
    auth_repeat_failure_delay_s=1.5,
    auth_repeat_failure_spread_s=0.52,
    auth_penalty_first_s=4.0,
    auth_penalty_max_s=15.0,
    auth_penalty_spread_s=0.01,
    auth_backend_timeout_s=10.0,
    auth_backend_timeout_spread_s=0.015,
    ehlo_first_line="{host}",
    extensions=(
        "PIPELINING",
        "SIZE {max_size}",
        "VRFY",
        "ETRN",
        "STARTTLS",
        "AUTH {mechanisms}",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
        "CHUNKING",
    ),
    received_format=(
        "Received: from {helo} ({client_name} [{ip}]) by {host} (Postfix) with {protocol} id {queue_id}"
        "{for_recipient}; {date} (UTC)"
    ),
    replies={
        "greeting": "220 {host} ESMTP Postfix (Debian/GNU)",
        "helo": "250 {host}",
        "ehlo_syntax": "501 Syntax: EHLO hostname",
        "helo_syntax": "501 Syntax: HELO hostname",
        "quit": "221 2.0.0 Bye",
        "mail_ok": "250 2.1.0 Ok",
        "rcpt_ok": "250 2.1.5 Ok",
        "data_go": "354 End data with <CR><LF>.<CR><LF>",
        "queued": "250 2.0.0 Ok: queued as {queue_id}",
        "need_mail": "503 5.5.1 Error: need MAIL command",
        "need_rcpt": "503 5.5.1 Error: need RCPT command",
        "no_valid_rcpt": "554 5.5.1 Error: no valid recipients",
        "nested_mail": "503 5.5.1 Error: nested MAIL command",
        "data_syntax": "501 5.5.4 Syntax: DATA",
        "rset_ok": "250 2.0.0 Ok",
        "rset_syntax": "501 5.5.4 Syntax: RSET",
        "noop": "250 2.0.0 Ok",
        "mail_syntax": "501 5.5.4 Syntax: MAIL FROM:<address>",
        "bad_sender": "501 5.1.7 Bad sender address syntax",
        "size_syntax": "501 5.5.4 Bad message size syntax",
        "ret_syntax": "501 5.5.4 Bad RET parameter syntax",
        "unsupported_option": "555 5.5.4 Unsupported option: {param}",
        "size_exceeded": "552 5.3.4 Message size exceeds fixed limit",
        "size_fs_limit": "552 5.3.4 Message size exceeds file system imposed limit",
        "rcpt_syntax": "501 5.5.4 Syntax: RCPT TO:<address>",
        "bad_rcpt": "501 5.1.3 Bad recipient address syntax",
        "too_many_rcpt": "452 4.5.3 Error: too many recipients",
        "relay_denied": "454 4.7.1 <{address}>: Relay access denied",
        "user_unknown": "550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table",
        "too_many_hops": "554 5.4.0 Error: too many hops",
        "message_too_big": "552 5.3.4 Error: message file too big",
        "bdat_ok": "250 2.0.0 Ok: {size} bytes",
        "bdat_queued": "250 2.0.0 Ok: {size} bytes queued as {queue_id}",
        "bdat_syntax": "521 5.5.4 Syntax: BDAT count [LAST]",
        "bdat_null": "551 5.7.1 Null BDAT request",
        "bdat_discarded": "551 5.0.0 Discarded {size} bytes after earlier error",
        "data_after_bdat": "503 5.5.1 Error: DATA after BDAT",
        "chunk_too_big": "552 5.3.4 Chunk exceeds message size limit",
        "vrfy": "252 2.0.0 {argument}",
        "vrfy_syntax": "501 5.5.4 Syntax: VRFY address [SMTPUTF8]",
        "unknown": "500 5.5.2 Error: command not recognized",
        "bad_syntax": "500 5.5.2 Error: bad syntax",
        "etrn": "459 <{argument}>: service unavailable",
        "etrn_syntax": "500 Syntax: ETRN domain",
        "xclient": "550 5.7.0 Error: insufficient authorization",
        "xclient_syntax": "501 5.5.4 Syntax: XCLIENT attribute=value...",
        "auth_not_enabled": "503 5.5.1 Error: authentication not enabled",
        "forbidden": "221 2.7.0 Error: I can break rules, too. Goodbye.",
        "bad_utf8": "500 5.5.2 Error: bad UTF-8 syntax",
        "starttls_ready": "220 2.0.0 Ready to start TLS",
        "starttls_syntax": "501 5.5.4 Syntax: STARTTLS",
        "tls_active": "554 5.5.1 Error: TLS already active",
        "timeout": "421 4.4.2 {host} Error: timeout exceeded",
        "too_many_errors": "421 4.7.0 {host} Error: too many errors",
        "shutdown": "421 4.3.2 Service not available, closing transmission channel",
        "auth_ok": "235 2.7.0 Authentication successful",
        "auth_failed": "535 5.7.8 Error: authentication failed: (reason unavailable)",
        "auth_backend_lost": "454 4.7.0 Temporary authentication failure: Connection lost to authentication server",
        "auth_bad_base64_initial": "535 5.7.8 Error: authentication failed: Invalid base64 data in initial response",
        "auth_bad_base64_continued": "535 5.7.8 Error: authentication failed: Invalid base64 data in continued response",
        "auth_bad_mechanism": "535 5.7.8 Error: authentication failed: Invalid authentication mechanism",
        "auth_syntax": "501 5.5.4 Syntax: AUTH mechanism",
        "auth_aborted": "501 5.7.0 Authentication aborted",
        "auth_already": "503 5.5.1 Error: already authenticated",
        "auth_in_transaction": "503 5.5.1 Error: MAIL transaction in progress",
        "storage_failed": "452 4.3.1 Insufficient system storage",
    },
)

# Exim 4.96 as Debian 12's exim4-daemon-light answers (tests/data/exim/).
# Its words and its rules (tests/data/exim/notes.md): limits it counts
# rather than sleeps, its address parser, its BDAT, its ACLs.
EXIM = Persona(
    name="exim",
    routed_local_parts=False,  # percent_hack_domains is empty by default: a local part like any other
    ehlo_first_line="{host} Hello {helo} [{ip}]",
    extensions=(
        "SIZE {max_size}",
        "8BITMIME",
        "PIPELINING",
        "PIPECONNECT",
        "AUTH {mechanisms}",
        "CHUNKING",
        "STARTTLS",
        "PRDR",
        "HELP",
    ),
    default_max_message_bytes=52_428_800,
    default_max_recipients=50_000,
    queue_id_style="exim",
    hangs_up_on_forbidden=False,
    helo_required=True,
    starttls_needs_ehlo=True,
    auth_needs_ehlo=True,
    envelope_verb_has_colon=True,
    unknown_verbs=frozenset({"XCLIENT", "XFORWARD"}),
    unknown_command_limit=3,  # smtp_max_unknown_commands
    syntax_error_limit=3,  # smtp_max_synprot_errors
    nonmail_command_limit=10,  # smtp_accept_max_nonmail
    address_rules="exim",
    checks_helo_name=True,
    helo_name_needs_closed_literal=True,
    checks_synchronization=True,
    command_line_limit=16_384,  # SMTP_CMD_BUFFER_SIZE
    overlong_command_splits=True,
    verb_ends_at_space=True,
    max_message_line_octets=998,
    bdat_lenient=True,
    bad_rcpt_limit=10,
    auth_extra_words_ignored=True,
    ignores_authzid=True,
    login_takes_empty_username=True,
    bare_lf_follows_first_line=True,
    adds_final_line_end=True,
    eight_bit_commands=True,
    verifies_local_users_of_relay_clients=False,
    auth_failure_delay_s=0.0,  # Exim answers a failed login at once
    auth_failure_spread_s=0.0,
    auth_repeat_failure_delay_s=0.0,
    auth_repeat_failure_spread_s=0.0,
    soft_error_limit=1_000_000,  # Exim does not slow down; it counts (the limits above)
    hard_error_limit=1_000_000,
    junk_command_limit=1_000_000,
    hop_limit=1_000_000,  # received_headers_max is checked at delivery, not in SMTP
    bare_lf=True,
    received_format=(
        "Received: from {helo} ([{ip}]) by {host} with {protocol} (Exim 4.96) (envelope-from <{mail_from}>)"
        " id {queue_id}{for_recipient}; {date}"
    ),
    replies={
        "greeting": "220 {host} ESMTP Exim 4.96 {date}",
        "helo": "250 {host} Hello {helo} [{ip}]",
        "ehlo_syntax": "501 Syntactically invalid EHLO argument(s)",
        "helo_syntax": "501 Syntactically invalid HELO argument(s)",
        "quit": "221 {host} closing connection",
        "mail_ok": "250 OK",
        "rcpt_ok": "250 Accepted",
        "data_go": '354 Enter message, ending with "." on a line by itself',
        "queued": "250 OK id={queue_id}",
        "need_mail": "503 sender not yet given",
        "need_rcpt": "503 valid RCPT command must precede {command}",
        "no_valid_rcpt": "503 valid RCPT command must precede {command}",
        "nested_mail": "503 sender already given",
        "data_syntax": "501 unexpected argument data",
        "rset_ok": "250 Reset OK",
        "rset_syntax": "501 unexpected argument data",
        "noop": "250 OK",
        "mail_syntax": "501 MAIL must have an address operand",
        "bad_sender": "501 <{address}>: domain missing or malformed",
        "size_syntax": "501 invalid data for SIZE",
        "ret_syntax": "501 invalid data for RET",
        "unsupported_option": "501 {param}: malformed address: {param} may not follow <{address}>",
        "size_exceeded": "552 Message size exceeds maximum permitted",
        "size_fs_limit": "552 Message size exceeds maximum permitted",
        "rcpt_syntax": "501 RCPT must have an address operand",
        "bad_rcpt": "501 <{address}>: domain missing or malformed",
        "too_many_rcpt": "452 too many recipients",
        "relay_denied": "550 relay not permitted",
        "user_unknown": "550 Unrouteable address",
        "too_many_hops": '550 Too many "Received" headers - suspected mail loop',
        "message_too_big": "552 Message size exceeds maximum permitted",
        "bdat_ok": "250 {size} byte chunk received",
        "bdat_queued": "250- {chunk} byte chunk, total {size}\r\n250 OK id={queue_id}",
        "bdat_syntax": "501 missing size for BDAT command",
        "bdat_null": "250 0 byte chunk received",
        "bdat_discarded": "503 only RSET accepted now",
        "data_after_bdat": "503 only BDAT permissible after non-LAST BDAT",
        "chunk_too_big": "552 Message size exceeds maximum permitted",
        "vrfy": "252 Administrative prohibition",
        "vrfy_syntax": "501 empty address",
        "unknown": "500 unrecognized command",
        "bad_syntax": "500 unrecognized command",
        "etrn": "458 Administrative prohibition",
        "etrn_syntax": "458 Administrative prohibition",
        "xclient": "500 unrecognized command",
        "xclient_syntax": "500 unrecognized command",
        "auth_not_enabled": "503 AUTH command used when not advertised",
        "forbidden": "500 unrecognized command",
        "bad_utf8": "500 unrecognized command",
        "starttls_ready": "220 TLS go ahead",
        "starttls_syntax": "501 unexpected argument data",
        "tls_active": "503 STARTTLS command used when not advertised",
        "timeout": "421 {host}: SMTP command timeout - closing connection",
        "too_many_errors": "500 Too many unrecognized commands",
        "shutdown": "421 {host} Service not available - closing connection",
        "auth_ok": "235 Authentication succeeded",
        "auth_failed": "535 Incorrect authentication data",
        "auth_bad_base64_initial": "501 Invalid base64 data",
        "auth_bad_base64_continued": "501 Invalid base64 data",
        "auth_bad_mechanism": "504 {argument} authentication mechanism not supported",
        "auth_syntax": "504 {argument} authentication mechanism not supported",
        "auth_aborted": "501 Authentication cancelled",
        "auth_already": "503 already authenticated",
        "auth_in_transaction": "503 not permitted in mail transaction",
        "storage_failed": "452 Space shortage, please try later",
        "need_helo": "503 HELO or EHLO required",
        "help": "214-Commands supported:\r\n214 AUTH STARTTLS HELO EHLO MAIL RCPT DATA BDAT NOOP QUIT RSET HELP",
        "expn": "550 Administrative prohibition",
        "quit_syntax": "501 unexpected argument data",
        "starttls_not_offered": "503 STARTTLS command used when not advertised",
        "too_many_unknown": "500 Too many unrecognized commands",
        "too_many_syntax": "{code} Too many syntax or protocol errors",
        "too_many_nonmail": "554 Too many nonmail commands",
        # Before no_valid_rcpt when every RCPT got the same refusal ({reply}).
        "rcpts_rejected": "503-All RCPT commands were rejected with this error:\r\n503-{reply}",
        # ...whose wording differs after a pipelined RCPT (PIPELINING offered).
        "no_valid_rcpt_pipelined": "503 Valid RCPT command must precede {command}",
        "address_error": "501 {argument}: {reason}",
        "address_needs_domain": "501 {argument}: {reason}",  # the same words, not a syntax error
        "smtputf8_not_offered": "501 SMTPUTF8 used when not advertised",
        "body_syntax": "501 invalid data for BODY",
        "vrfy_error": "501 {reason}",  # VRFY names no argument when the parser refused it
        "timeout_data": "421 {host} SMTP incoming data timeout - closing connection.",
        "helo_invalid": "501 Syntactically invalid {verb} argument(s)",
        "nul_byte": "501 NUL characters are not allowed in SMTP commands",
        "sync_error": "554 SMTP synchronization error",
        "message_line_too_long": "550 maximum allowed line length is 998 octets, got {got}",
        "bdat_lost": "421 Lost incoming connection",
        "too_many_bad_rcpt": "550 Rejected for too many bad recipients",
        "bdat_not_offered": "503 BDAT command used when CHUNKING not advertised",
    },
)

# sendmail 8.17.1.9 as Debian 12's sendmail answers (tests/data/sendmail/).
SENDMAIL = Persona(
    name="sendmail",
    ehlo_first_line="{host} Hello {client_name_ip}, pleased to meet you",
    extensions=(
        "ENHANCEDSTATUSCODES",
        "PIPELINING",
        "EXPN",
        "VERB",
        "8BITMIME",
        "SIZE {max_size}",
        "DSN",
        "ETRN",
        "AUTH {mechanisms}",
        "STARTTLS",
        "DELIVERBY",
        "HELP",
    ),
    queue_id_style="sendmail",
    default_max_recipients=50_000,
    offers_starttls_by_default=False,
    default_auth_mechanisms=("DIGEST-MD5", "CRAM-MD5"),
    digest_md5_server="cyrus",
    helo_required=True,  # PrivacyOptions needmailhelo
    unknown_verbs=frozenset({"BDAT", "XCLIENT", "XFORWARD"}),
    unknown_command_limit=25,  # MAXBADCOMMANDS
    forbidden_first_command_only=True,
    mail_parameters=frozenset({"SIZE", "BODY", "RET", "ENVID", "AUTH", "BY"}),
    ignores_bad_size=True,
    ignores_arguments=frozenset({"DATA", "QUIT", "NOOP", "RSET"}),
    eight_bit_commands=True,
    unlimited_size_by_default=True,
    idle_close_silent=True,
    own_literal_is_local_domain=True,
    tls_forgets_helo=False,
    checks_helo_name=True,
    command_line_limit=2047,
    overlong_command_closes=True,
    greet_pause_s=1.0,  # Debian's sendmail.mc: FEATURE(greet_pause, 1000)
    bare_lf=False,
    refuses_bare_line_ends=True,
    strips_top_bit=True,
    spaces_in_address=True,
    command_throttles=(
        (frozenset({"HELO", "EHLO"}), 3),  # the third and later
        (frozenset({"VRFY", "EXPN"}), 6),  # MAXVRFYCOMMANDS
        (frozenset({"NOOP"}), 20),  # MAXNOOPCOMMANDS
    ),
    throttle_errors_wait_less=frozenset({"VRFY", "EXPN"}),
    bad_rcpt_throttle=3,  # Debian's sendmail.mc: BAD_RCPT_THROTTLE 3
    auth_failure_delay_s=0.0,  # sendmail answers a failed AUTH at once
    auth_failure_spread_s=0.0,
    auth_repeat_failure_delay_s=0.0,
    auth_repeat_failure_spread_s=0.0,
    ehlo_is_sync_point=True,
    soft_error_limit=1_000_000,  # sendmail slows down by its own rules, not Postfix's
    hard_error_limit=1_000_000,
    junk_command_limit=1_000_000,
    hop_limit=1_000_000,  # MaxHopCount (100) acts at delivery, not in SMTP
    received_format=(
        "Received: from {helo} ({client_name_ip}) by {host} (8.17.1.9/8.17.1.9/Debian-2+deb12u2)"
        " with {protocol} id {queue_id}{for_recipient}; {date_gmt}"
    ),
    replies={
        "greeting": (
            "220 {host} ESMTP Sendmail 8.17.1.9/8.17.1.9/Debian-2+deb12u2; {date_gmt};"
            " (No UCE/UBE) logging access from: {client}({client_resolve})-{client_name_ip}"
        ),
        "helo": "250 {host} Hello {client_name_ip}, pleased to meet you",
        "ehlo_syntax": "501 5.0.0 EHLO requires domain address",
        "helo_syntax": "501 5.0.0 HELO requires domain address",
        "quit": "221 2.0.0 {host} closing connection",
        "mail_ok": "250 2.1.0 {path}... Sender ok",
        "rcpt_ok": "250 2.1.5 {path}... Recipient ok",
        "data_go": "354 End data with <CR><LF>.<CR><LF>",
        "queued": "250 2.0.0 {queue_id} Message accepted for delivery",
        "need_mail": "503 5.0.0 Need MAIL before RCPT",
        "need_rcpt": "503 5.0.0 Need MAIL command",
        "no_valid_rcpt": "503 5.0.0 Need RCPT (recipient)",
        "nested_mail": "503 5.5.0 Sender already specified",
        "data_syntax": "501 5.5.2 Syntax error in parameters scanning \"DATA\"",
        "rset_ok": "250 2.0.0 Reset state",
        "rset_syntax": "250 2.0.0 Reset state",
        "noop": "250 2.0.0 OK",
        "mail_syntax": "501 5.5.2 Syntax error in parameters scanning \"{scanned}\"",
        "bad_sender": "553 5.0.0 {address}... Unbalanced '<'",
        "size_syntax": "501 5.5.2 Syntax error in parameters scanning \"SIZE\"",
        "ret_syntax": "501 5.5.2 Bad argument \"{value}\" to RET",
        "unsupported_option": "555 5.5.4 {param_name} parameter unrecognized",
        "size_exceeded": "552 5.2.3 Message size exceeds fixed maximum message size ({max_size})",
        "size_fs_limit": "452 4.4.5 Insufficient disk space; try again later",
        "size_overflow": "552 5.2.3 Message size exceeds maximum value",
        "rcpt_syntax": "501 5.5.2 Syntax error in parameters scanning \"{scanned}\"",
        "bad_rcpt": "553 5.0.0 {address}... Unbalanced '<'",
        "too_many_rcpt": "452 4.5.3 Too many recipients",
        "relay_denied": "550 5.7.1 <{address}>... Relaying denied",
        "user_unknown": "550 5.1.1 <{address}>... User unknown",
        "too_many_hops": "554 5.4.6 Too many hops",
        "message_too_big": "552 5.2.3 Message exceeds maximum fixed size ({max_size})",
        "bdat_ok": "250 2.0.0 OK",
        "bdat_queued": "250 2.0.0 {queue_id} Message accepted for delivery",
        "bdat_syntax": '500 5.5.1 Command unrecognized: "{command}"',
        "bdat_null": "250 2.0.0 OK",
        "bdat_discarded": "503 5.0.0 Need RCPT (recipient)",
        "data_after_bdat": "503 5.5.0 Nested MAIL command",
        "chunk_too_big": "552 5.2.3 Message size exceeds fixed maximum message size",
        "vrfy": "252 2.1.5 <{argument}>",
        "vrfy_syntax": "501 5.5.2 Argument required",
        "unknown": '500 5.5.1 Command unrecognized: "{command}"',
        "bad_syntax": '500 5.5.1 Command unrecognized: "{command}"',
        "etrn": "250 2.0.0 Queuing for node {raw_argument} started",
        "etrn_syntax": "500 5.5.2 Parameter required",
        "xclient": '500 5.5.1 Command unrecognized: "{command}"',
        "xclient_syntax": '500 5.5.1 Command unrecognized: "{command}"',
        "auth_not_enabled": "503 5.3.3 AUTH not available",
        "forbidden": "421 4.7.0 {host} Rejecting open proxy [{ip}]",
        "bad_utf8": '500 5.5.1 Command unrecognized: "{command}"',
        "starttls_ready": "220 2.0.0 Ready to start TLS",
        "starttls_syntax": "501 5.5.2 Syntax error (no parameters allowed)",
        "tls_active": "454 4.3.3 TLS not available after start",
        "timeout": "421 4.4.1 {host} Lost input channel from {client_name_ip} to MTA after rcpt",
        "too_many_errors": "421 4.7.0 {host} Too many errors",
        "shutdown": "421 4.3.2 {host} Shutting down",
        "auth_ok": "235 2.0.0 OK Authenticated",
        "auth_failed": "535 5.7.0 authentication failed",
        # srvrsmtp.c: the initial response and a later one are refused in
        # different words (auth_unknown_mech: the later, after DIGEST-MD5's 334)
        "auth_bad_base64_initial": "501 5.5.4 cannot BASE64 decode '{argument}'",
        "auth_bad_base64_continued": "501 5.5.4 cannot decode AUTH parameter {argument}",
        "auth_bad_mechanism": "504 5.3.3 AUTH mechanism {argument} not available",
        "auth_syntax": "501 5.5.2 AUTH mechanism must be specified",
        "auth_aborted": "501 5.0.0 AUTH aborted",
        "auth_already": "503 5.5.0 Already Authenticated",
        "auth_in_transaction": "503 5.5.0 AUTH not permitted during a mail transaction",
        "storage_failed": "452 4.4.5 Insufficient disk space; try again later",
        "need_helo": "503 5.0.0 Polite people say HELO first",
        "help": (
            "214-2.0.0 This is sendmail version 8.17.1.9\r\n214-2.0.0 Topics:\r\n"
            "214-2.0.0 \tHELO\tEHLO\tMAIL\tRCPT\tDATA\r\n214-2.0.0 \tRSET\tNOOP\tQUIT\tHELP\tVRFY\r\n"
            "214-2.0.0 \tEXPN\tVERB\tETRN\tDSN\tAUTH\r\n214-2.0.0 \tSTARTTLS\r\n"
            "214-2.0.0 For more info use \"HELP <topic>\".\r\n214-2.0.0 To report bugs in the implementation see\r\n"
            "214-2.0.0 \thttp://www.sendmail.org/email-addresses.html\r\n"
            "214-2.0.0 For local information send email to Postmaster at your site.\r\n214 2.0.0 End of HELP info"
        ),
        "expn": "250 2.1.5 root <root@{host}>",
        "expn_syntax": "501 5.5.2 Argument required",
        "verb": "250 2.0.0 Verbose mode",
        "help_mail": (
            "214-2.0.0 MAIL From:<sender> [ <parameters> ]\r\n"
            "214-2.0.0 \tSpecifies the sender.  Parameters are ESMTP extensions.\r\n"
            "214-2.0.0 \tSee \"HELP DSN\" for details.\r\n214 2.0.0 End of HELP info"
        ),
        "body_syntax": "501 5.5.4 Unknown BODY type {value}",
        "relay_denied_unresolved": "550 5.7.1 <{address}>... Relaying denied. IP name lookup failed [{ip}]",
        "timeout_data": "421 4.4.1 collect: relay={client_name_ip}, from=<{mail_from}>, info=read timeout",
        "turn": '502 5.5.1 Command not implemented: "{command}"',
        "rcpt_null": "553 5.0.0 <>... User address required",
        "rcpt_ok_local": "250 2.1.5 <{local}@{host}>... Recipient ok",
        "vrfy_local": "250 2.1.5 {local} <{local}@{host}>",
        "vrfy_alias": "250 2.1.5 <{local}@{host}>",  # an alias has no full name
        "vrfy_remote": "252 2.1.5 <{address}>",
        "vrfy_unknown": "550 5.1.1 {address}... User unknown",
        "etrn_queue_unknown": "459 4.5.4 Queue {argument} unknown",
        "bad_route": "553 5.1.3 {address}... Invalid route address",
        "starttls_in_transaction": "503 5.5.0 TLS not permitted during a mail transaction",
        "helo_invalid": "501 5.0.0 Invalid domain name",
        "command_too_long": "421 4.7.0 {host} Command too long, possible attack [{ip}]",
        "greeting_refused": "554 {host} ESMTP not accepting messages",
        "protocol_error": "554 5.5.0 SMTP protocol error",
        "command_rejected": "550 5.0.0 Command rejected",
        "bare_lf_in_data": "421 4.5.0 Bare linefeed (LF) not allowed",
        "bare_cr_in_data": "421 4.5.0 Bare carriage return (CR) not allowed",
        "starttls_not_offered": "454 4.3.3 TLS not available after start",
        "too_many_unknown": "421 4.7.0 {host} Too many bad commands; closing connection",
    },
)

# Exchange 2016/2019, default frontend connector, anonymous client: no
# software here to record, so taken from Microsoft's documentation and
# Exchange's own reply table (tests/data/exchange/notes.md cites each).
EXCHANGE = Persona(
    name="exchange",
    routed_local_parts=False,
    ehlo_first_line="{host} Hello [{ip}]",
    extensions=(
        "SIZE {max_size}",
        "PIPELINING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "X-ANONYMOUSTLS",
        "AUTH {mechanisms}",
        "X-EXPS GSSAPI NTLM",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "XRDST",
    ),
    default_max_message_bytes=37_748_736,
    queue_id_style="exchange",
    hangs_up_on_forbidden=False,
    soft_error_limit=1_000_000,
    hard_error_limit=1_000_000,
    junk_command_limit=1_000_000,
    hop_limit=61,  # MaxHopCount 60
    bare_lf=False,
    received_format=(
        "Received: from {helo} ({ip}) by {host} ({ip}) with Microsoft SMTP Server id 15.2.1118.40"
        " via Frontend Transport; {date}"
    ),
    replies={
        "greeting": "220 {host} Microsoft ESMTP MAIL Service ready at {date}",
        "helo": "250 {host} Hello [{ip}]",
        "ehlo_syntax": "501 5.0.0 EHLO requires domain address",
        "helo_syntax": "501 5.0.0 HELO requires domain address",
        "quit": "221 2.0.0 Service closing transmission channel",
        "mail_ok": "250 2.1.0 Sender OK",
        "rcpt_ok": "250 2.1.5 Recipient OK",
        "data_go": "354 Start mail input; end with <CRLF>.<CRLF>",
        "queued": "250 2.6.0 <{queue_id}@{host}> [InternalId={queue_id}, Hostname={host}] Queued mail for delivery",
        "need_mail": "503 5.5.2 Need mail command",
        "need_rcpt": "503 5.5.2 Need rcpt command",
        "no_valid_rcpt": "503 5.5.2 Need rcpt command",
        "nested_mail": "503 5.5.2 Sender already specified",
        "data_syntax": "501 5.5.4 Invalid arguments",
        "rset_ok": "250 2.0.0 Resetting",
        "rset_syntax": "501 5.5.4 Invalid arguments",
        "noop": "250 2.0.0 OK",
        "mail_syntax": "501 5.5.4 Invalid arguments",
        "bad_sender": "501 5.1.7 Invalid address",
        "size_syntax": "501 5.5.4 Invalid arguments",
        "ret_syntax": "501 5.5.4 Invalid arguments",
        "unsupported_option": "501 5.5.4 Unrecognized parameter",
        "size_exceeded": "552 5.3.4 Message size exceeds fixed maximum message size",
        "size_fs_limit": "552 5.3.4 Message size exceeds fixed maximum message size",
        "rcpt_syntax": "501 5.5.4 Invalid arguments",
        "bad_rcpt": "501 5.1.3 Invalid address",
        "too_many_rcpt": "452 4.5.3 Too many recipients",
        "relay_denied": "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain",
        "user_unknown": "550 5.1.1 User unknown",
        "too_many_hops": "554 5.4.6 Hop count exceeded - possible mail loop",
        "message_too_big": "552 5.3.4 Message size exceeds fixed maximum message size",
        "bdat_ok": "250 2.6.0 CHUNK received OK, {size} octets",
        "bdat_queued": "250 2.6.0 <{queue_id}@{host}> [InternalId={queue_id}, Hostname={host}] Queued mail for delivery",
        "bdat_syntax": "501 5.5.4 Invalid arguments",
        "bdat_null": "250 2.6.0 CHUNK received OK, 0 octets",
        "bdat_discarded": "503 5.5.1 Bad sequence of commands",
        "data_after_bdat": "503 5.5.1 Bad sequence of commands",
        "chunk_too_big": "552 5.3.4 Message size exceeds fixed maximum message size",
        "vrfy": "252 2.1.5 Cannot VRFY user",
        "vrfy_syntax": "252 2.1.5 Cannot VRFY user",
        "unknown": "500 5.3.3 Unrecognized command",
        "bad_syntax": "500 5.3.3 Unrecognized command",
        "etrn": "502 5.3.3 Command not implemented",
        "etrn_syntax": "502 5.3.3 Command not implemented",
        "xclient": "500 5.3.3 Unrecognized command",
        "xclient_syntax": "500 5.3.3 Unrecognized command",
        "auth_not_enabled": "503 5.5.1 Bad sequence of commands",
        "forbidden": "500 5.3.3 Unrecognized command",
        "bad_utf8": "500 5.3.3 Unrecognized command",
        "starttls_ready": "220 2.0.0 SMTP server ready",
        "starttls_syntax": "501 5.5.4 Invalid arguments",
        "tls_active": "503 5.5.1 Bad sequence of commands",
        "timeout": "451 4.7.0 Timeout waiting for client input",
        "too_many_errors": "421 4.7.0 Too many errors on this connection, closing transmission channel",
        "shutdown": "421 4.3.2 Service not available, closing transmission channel",
        "auth_ok": "235 2.7.0 Authentication successful",
        "auth_failed": "535 5.7.3 Authentication unsuccessful",
        "auth_bad_base64_initial": "501 5.5.2 Cannot Base64-decode Client responses",
        "auth_bad_base64_continued": "501 5.5.2 Cannot Base64-decode Client responses",
        "auth_bad_mechanism": "504 5.7.4 Unrecognized authentication type",
        "auth_syntax": "501 5.5.4 Invalid arguments",
        "auth_aborted": "501 5.0.0 Authentication Aborted",
        "auth_already": "503 5.5.2 Already authenticated",
        "auth_in_transaction": "503 5.5.1 Bad sequence of commands",
        "storage_failed": "452 4.3.1 Insufficient system resources",
    },
)

PERSONAS: dict[str, Persona] = {persona.name: persona for persona in (POSTFIX, EXIM, SENDMAIL, EXCHANGE)}
