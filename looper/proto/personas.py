"""Personas: what a real mail server says, byte for byte, as data.

Each persona is the greeting, the EHLO reply and every reply text of one
real server, recorded from the software itself (tests/data/<persona>/). The
SMTP machine decides *which* reply a situation gets; the persona decides
*what it says*. Placeholders: {host} our host name, {date} an RFC 5322 date,
{queue_id}, {address}, {argument}, {param}, {size}, {helo}, {ip}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    starttls_ready starttls_syntax tls_active timeout too_many_errors auth_ok
    auth_failed auth_bad_base64_initial auth_bad_base64_continued auth_bad_mechanism
    auth_syntax auth_aborted auth_already auth_in_transaction storage_failed
    """.split()
)


@dataclass(frozen=True)
class Persona:
    name: str
    # The EHLO reply: its first line's text, then the capability lines in
    # the server's own order. "SIZE" gets the size limit, "AUTH" the
    # mechanisms, "STARTTLS" is left out once TLS is on.
    ehlo_first_line: str
    extensions: tuple[str, ...]
    replies: dict[str, str] = field(repr=False)
    # Line limits and pacing, as the server's defaults have them.
    command_line_limit: int = 2048
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    error_sleep_s: float = 1.0
    junk_command_limit: int = 100
    # A SASL back end's failure delay (Dovecot: auth_failure_delay 2 s, and
    # about 6 s once the address has failed before).
    auth_failure_delay_s: float = 2.0
    auth_repeat_failure_delay_s: float = 6.0
    # Lines end at a bare LF too (Postfix 3.7's smtpd_forbid_bare_newline=no).
    bare_lf: bool = True
    hop_limit: int = 50
    # How the Received: field it would add reads (one line; MTAs fold it).
    received_format: str = ""

    def __post_init__(self) -> None:
        missing = REPLY_KEYS - self.replies.keys()
        if missing:
            raise ValueError(f"persona {self.name} lacks replies: {', '.join(sorted(missing))}")


POSTFIX = Persona(
    name="postfix",
    ehlo_first_line="{host}",
    extensions=(
        "PIPELINING",
        "SIZE",
        "VRFY",
        "ETRN",
        "STARTTLS",
        "AUTH",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
        "CHUNKING",
    ),
    received_format=(
        "Received: from {helo} ({client_name} [{ip}]) by {host} (Postfix) with {protocol} id {queue_id}"
        "{for_recipient}; {date}"
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
        "auth_ok": "235 2.7.0 Authentication successful",
        "auth_failed": "535 5.7.8 Error: authentication failed: (reason unavailable)",
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

PERSONAS: dict[str, Persona] = {POSTFIX.name: POSTFIX}
