#!/usr/bin/env python3
"""Record ground truth from the real Debian Dovecot 2.3 imapd and pop3d (not a test).

Run as root from the repository root:

    python tests/record_dovecot.py [--only NAME ...] [--list]

It starts two private Dovecots (tests/dovecot.py's PrivateDovecot), both
serving the bait mailbox built by looper.bait.load_bait from the shipped
config/bait at one start time `bait_now`:

    plaintext  127.0.0.40: imap 14143, imaps 14993, pop3 14110, pop3s 14995
               disable_plaintext_auth = no (looper's default, mail_access.plaintext_login: true)
    stock      127.0.0.41: imap 15143, imaps 15993, pop3 15110, pop3s 15995
               disable_plaintext_auth = yes (stock Debian; plaintext_login: false)

Every conversation is one TCP connection from a source address of its own
(127.0.1.1, 127.0.1.2, ...: never the server's, which Dovecot would trust
as secured, and never one with an auth penalty from an earlier failure),
to a mailbox reset to the bait before it (the Maildir rewritten, its
indexes gone: each conversation is the first login ever, as every login
to the trap is). It sends a fixed script and records exactly what came
back, one JSON file per conversation and variant:
tests/data/dovecot/<conversation>.<variant>.json (README.md there).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import subprocess
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.dovecot import PASSWORD, USER, Ports, PrivateDovecot, dovecot_available, dovecot_version  # noqa: E402

OUT_DIR = REPO / "tests" / "data" / "dovecot"
VARIANTS = {
    "plaintext": ("127.0.0.40", Ports(14143, 14993, 14110, 14995), True),
    "stock": ("127.0.0.41", Ports(15143, 15993, 15110, 15995), False),
}
GRACE_S = 0.05  # after the awaited reply: anything more that follows at once


# ------------------------------------------------------------------ scripts
Until = Callable[[bytes], bool]


def lines(buf: bytes) -> list[bytes]:
    return buf.split(b"\r\n")[:-1]


def tagged(tag: bytes) -> Until:
    return lambda buf: any(line.startswith(tag + b" ") for line in lines(buf))


def continuation(buf: bytes) -> bool:
    return any(line.startswith(b"+") for line in lines(buf))


def answered(tag: bytes) -> Until:
    """The reply to a line that may get "+ " or the tagged reply of `tag`,
    or, when the command was refused before and this line is read as a
    command of its own, that command's reply: any line but an untagged one.
    (`tag` only says, to the reader, which command the line belongs to.)"""
    del tag
    return lambda buf: any(not line.startswith(b"* ") for line in lines(buf))


def one_line(buf: bytes) -> bool:
    return b"\r\n" in buf


def pop_multi(buf: bytes) -> bool:
    """A POP3 multi-line answer is complete (or it was a one-line -ERR)."""
    return buf.startswith(b"-ERR") and b"\r\n" in buf or buf.endswith(b"\r\n.\r\n")


@dataclass
class Step:
    send: bytes = b""
    until: Until = one_line
    timeout: float = 10.0
    grace: float = GRACE_S
    tls: bool = False  # a TLS handshake (after STARTTLS/STLS's OK): nothing is sent


def C(line: str | bytes, until: Until | None = None, **kw) -> Step:
    """An IMAP command line (CRLF added), awaited until its tagged reply."""
    data = line.encode("latin-1") if isinstance(line, str) else line
    if until is None:
        until = tagged(data.split(b" ", 1)[0])
    return Step(data + b"\r\n", until, **kw)


def CONT(line: str | bytes, **kw) -> Step:
    """An IMAP line after which the server asks for more ("+ ...") or refuses."""
    return C(line, answered(b""), **kw)


def RAW(data: bytes, until: Until = one_line, **kw) -> Step:
    return Step(data, until, **kw)


def P(line: str, **kw) -> Step:
    """A POP3 command, one line awaited."""
    return Step(line.encode("latin-1") + b"\r\n", one_line, **kw)


def PM(line: str, **kw) -> Step:
    """A POP3 command with a multi-line answer."""
    return Step(line.encode("latin-1") + b"\r\n", pop_multi, **kw)


TLS = Step(tls=True)
BYE = {"grace": 1.0}  # after LOGOUT or QUIT: see the close


def b64(text: str) -> str:
    return base64.b64encode(text.encode("latin-1")).decode()


PLAIN_GOOD = b64(f"\0{USER}\0{PASSWORD}")
PLAIN_BAD = b64(f"\0{USER}\0wrong")
LOGIN = C(f"a0 LOGIN {USER} {PASSWORD}")
POP_LOGIN = [P(f"USER {USER}"), P(f"PASS {PASSWORD}")]


@dataclass
class Conversation:
    name: str  # imap_... or pop3_...
    description: str
    steps: list[Step]
    variants: tuple[str, ...] = ("plaintext",)
    port: str = ""  # imap, imaps, pop3, pop3s; default: the protocol's plain port
    greet: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        return self.name.split("_", 1)[0]


BOTH = ("plaintext", "stock")


def imap_date(when: datetime) -> str:
    return f"{when.day}-{when:%b-%Y}"


def build(now: float) -> list[Conversation]:
    today = datetime.fromtimestamp(int(now), timezone.utc)
    week_ago = imap_date(today - timedelta(days=7))
    three_days_ago = today - timedelta(days=3, hours=2)  # INBOX 08-api-token's day
    draft = (b"From: Mark Jensen <mark.jensen@example.com>\r\nTo: tom.becker@example.com\r\n"
             b"Subject: appended draft\r\nMessage-ID: <appended-1@example.com>\r\n\r\nNot finished.\r\n")
    note = (b"From: someone@example.net\r\nSubject: plus literal\r\n\r\nHello.\r\n")
    fetch_all = "FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE"
    junk12 = [RAW(f"junk{i}\r\n".encode(), tagged(f"junk{i}".encode()), timeout=5) for i in range(1, 13)]
    c: list[Conversation] = []
    add = c.append

    # ---------------------------------------------------------------- IMAP
    add(Conversation("imap_greeting_capability", "greeting, CAPABILITY, LOGOUT",
                     [C("a1 CAPABILITY"), C("a2 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_login_fail_then_ok", "LOGIN with a wrong password, then the right one, CAPABILITY after",
                     [C(f"a1 LOGIN {USER} wrong"), C(f"a2 LOGIN {USER} {PASSWORD}"), C("a3 CAPABILITY"),
                      C("a4 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_login_unknown_user_quoted", "LOGIN of an unknown user, quoted strings, then a literal",
                     [C('a1 LOGIN "nobody" "secret"'), CONT("a2 LOGIN {5}"), C("admin {8}", answered(b"")),
                      C(PASSWORD, answered(b"a2")), C("a3 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_starttls_login", "STARTTLS, CAPABILITY inside TLS, LOGIN, CAPABILITY after",
                     [C("a1 STARTTLS"), TLS, C("a2 CAPABILITY"), C(f"a3 LOGIN {USER} {PASSWORD}"),
                      C("a4 CAPABILITY"), C("a5 LOGOUT", **BYE)], BOTH))
    add(Conversation("imaps_login", "implicit TLS: greeting, CAPABILITY, LOGIN, LOGOUT",
                     [C("a1 CAPABILITY"), C(f"a2 LOGIN {USER} {PASSWORD}"), C("a3 LOGOUT", **BYE)],
                     BOTH, port="imaps"))
    add(Conversation("imap_authenticate_plain_sasl_ir", "AUTHENTICATE PLAIN with the initial response (SASL-IR)",
                     [C(f"a1 AUTHENTICATE PLAIN {PLAIN_GOOD}"), C("a2 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_authenticate_plain_continuation", "AUTHENTICATE PLAIN, then the response after '+ '",
                     [CONT("a1 AUTHENTICATE PLAIN"), C(PLAIN_GOOD, answered(b"a1")), C("a2 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_authenticate_bad_and_cancel",
                     "AUTHENTICATE PLAIN with a wrong password, one cancelled with '*', one with bad base64",
                     [C(f"a1 AUTHENTICATE PLAIN {PLAIN_BAD}"), CONT("a2 AUTHENTICATE PLAIN"),
                      C("*", answered(b"a2")), CONT("a3 AUTHENTICATE PLAIN"), C("%%%not-base64", answered(b"a3")),
                      C("a4 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_authenticate_unsupported", "AUTHENTICATE LOGIN, CRAM-MD5 and no mechanism",
                     [C("a1 AUTHENTICATE LOGIN"), C("a2 AUTHENTICATE CRAM-MD5"), C("a3 AUTHENTICATE"),
                      C("a4 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_id_enable_namespace", "ID before and after login, ENABLE, NAMESPACE",
                     [C('a1 ID ("name" "Thunderbird" "version" "115.0")'), LOGIN, C("a2 ID NIL"),
                      C("a3 ENABLE CONDSTORE"), C("a4 ENABLE QRESYNC UTF8=ACCEPT IMAP4rev2"), C("a5 NAMESPACE"),
                      C("a6 LOGOUT", **BYE)]))
    add(Conversation("imap_list_lsub", "LIST and LSUB, with patterns and special-use",
                     [LOGIN, C('a1 LIST "" ""'), C('a2 LIST "" "*"'), C('a3 LIST "" "%"'), C('a4 LIST "" INBOX'),
                      C('a5 LIST (SPECIAL-USE) "" "*"'), C('a6 LIST "" "*" RETURN (SPECIAL-USE)'),
                      C('a7 LIST "" "*" RETURN (CHILDREN SUBSCRIBED)'), C('a8 LIST "" "S*"'),
                      C('a9 LIST "" "Nowhere"'), C('a10 LSUB "" "*"'), C('a11 XLIST "" "*"'),
                      C("a12 LOGOUT", **BYE)]))
    add(Conversation("imap_status", "STATUS of each folder, and of one that is not there",
                     [LOGIN, *(C(f"a{i} STATUS {name} (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
                               for i, name in enumerate(("INBOX", "Sent", "Drafts", "Archive", "Junk"), 1)),
                      C("a6 STATUS inbox (MESSAGES)"), C("a7 STATUS Nowhere (MESSAGES)"), C("a8 STATUS INBOX (FOO)"),
                      C("a9 LOGOUT", **BYE)]))
    add(Conversation("imap_select_examine", "SELECT and EXAMINE of INBOX and the other folders",
                     [LOGIN, C("a1 SELECT INBOX"), C("a2 EXAMINE INBOX"), C("a3 SELECT Sent"), C("a4 EXAMINE Drafts"),
                      C("a5 SELECT Junk"), C("a6 SELECT Nowhere"), C("a7 SELECT inbox"), C("a8 LOGOUT", **BYE)]))
    add(Conversation("imap_fetch_items", "FETCH of the message attributes, and the ALL, FAST, FULL macros",
                     [LOGIN, C("a1 SELECT INBOX"), C(f"a2 FETCH 1:* ({fetch_all})"), C("a3 FETCH 1 ALL"),
                      C("a4 FETCH 2:3 FAST"), C("a5 FETCH 6 FULL"), C("a6 FETCH 4,7 (BODY)"),
                      C("a7 FETCH * (UID FLAGS)"), C("a8 LOGOUT", **BYE)]))
    add(Conversation("imap_fetch_sections", "FETCH of body sections of the multipart invoice (6) and others",
                     [LOGIN, C("a1 SELECT INBOX"),
                      C("a2 FETCH 6 (BODY.PEEK[HEADER])"), C("a3 FETCH 6 (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])"),
                      C("a4 FETCH 6 (BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED RETURN-PATH)])"),
                      C("a5 FETCH 6 (BODY.PEEK[TEXT])"), C("a6 FETCH 6 (BODY.PEEK[1])"), C("a7 FETCH 6 (BODY.PEEK[1.MIME])"),
                      C("a8 FETCH 6 (BODY.PEEK[2])"), C("a9 FETCH 6 (BODY.PEEK[2.MIME])"), C("a10 FETCH 6 (BODY.PEEK[3])"),
                      C("a11 FETCH 6 (BODY.PEEK[]<0.100>)"), C("a12 FETCH 6 (BODY.PEEK[TEXT]<100.50>)"),
                      C("a13 FETCH 6 (BODY.PEEK[1]<10000.10>)"),
                      C("a14 FETCH 7 (BODY.PEEK[1] BODY.PEEK[2])"), C("a15 FETCH 2 (BODY.PEEK[1])"),
                      C("a16 FETCH 4 (BODY.PEEK[2.MIME] BODY.PEEK[2])"),
                      C("a17 FETCH 1 (RFC822.HEADER)"), C("a18 FETCH 1 (RFC822.TEXT)"),
                      C("a19 FETCH 9 (RFC822)"), C("a20 FETCH 10 (BODY[])"), C("a21 FETCH 11 (BODY[HEADER])"),
                      C("a22 FETCH 10:11 (FLAGS)"), C("a23 LOGOUT", **BYE)]))
    add(Conversation("imap_uid_fetch", "UID FETCH, and message sets out of range",
                     [LOGIN, C("a1 SELECT INBOX"), C("a2 UID FETCH 1:* (FLAGS)"),
                      C("a3 UID FETCH 6 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), C("a4 UID FETCH 5:7,9 (RFC822.SIZE)"),
                      C("a5 UID FETCH 100 (FLAGS)"), C("a6 UID FETCH 11:* (UID)"), C("a7 FETCH 100 (FLAGS)"),
                      C("a8 FETCH 0 (FLAGS)"), C("a9 FETCH 1:* (FOO)"), C("a10 FETCH 1"), C("a11 LOGOUT", **BYE)]))
    add(Conversation("imap_search", "SEARCH and UID SEARCH, really evaluated",
                     [LOGIN, C("a1 SELECT INBOX"), C("a2 SEARCH ALL"), C("a3 SEARCH UNSEEN"), C("a4 SEARCH SEEN"),
                      C("a5 SEARCH FLAGGED"), C("a6 SEARCH ANSWERED"), C("a7 SEARCH DELETED"), C("a8 SEARCH RECENT"),
                      C('a9 SEARCH FROM "tom"'), C("a10 SEARCH TO mark.jensen@example.com"),
                      C("a11 SEARCH SUBJECT invoice"), C("a12 SEARCH BODY password"), C("a13 SEARCH TEXT AKIA"),
                      C("a14 SEARCH HEADER Content-Type multipart"), C(f"a15 SEARCH SINCE {week_ago}"),
                      C(f"a16 SEARCH BEFORE {week_ago}"), C(f"a17 SEARCH ON {imap_date(three_days_ago)}"),
                      C(f"a18 SEARCH SENTSINCE {week_ago}"),
                      C("a19 SEARCH LARGER 1500"), C("a20 SEARCH SMALLER 1000"), C("a21 SEARCH OR FLAGGED UNSEEN"),
                      C("a22 SEARCH NOT SEEN"), C("a23 SEARCH UID 3:5"), C("a24 SEARCH 2:4 UNSEEN"),
                      C("a25 SEARCH CC example"), C("a26 UID SEARCH ALL"), C("a27 UID SEARCH UNSEEN FROM priya"),
                      CONT("a28 SEARCH CHARSET UTF-8 SUBJECT {5}"), C("\xc3\x9cber", tagged(b"a28")),
                      C("a29 SEARCH CHARSET KOI9 ALL"), C("a30 SEARCH FOO"), C("a31 SEARCH"),
                      C("a32 SEARCH (OR SEEN FLAGGED) NOT ANSWERED"), C("a33 LOGOUT", **BYE)]))
    add(Conversation("imap_store", "STORE and UID STORE of flags, silent and not",
                     [LOGIN, C("a1 SELECT INBOX"), C("a2 STORE 1 +FLAGS (\\Flagged)"),
                      C("a3 STORE 2 -FLAGS.SILENT (\\Seen)"), C("a4 STORE 3 FLAGS (\\Deleted \\Seen)"),
                      C("a5 UID STORE 4 +FLAGS ($Junk)"), C("a6 STORE 5 +FLAGS (\\Recent)"), C("a7 STORE 5 +FLAGS \\Answered"),
                      C("a8 STORE 99 +FLAGS (\\Seen)"), C("a9 STORE 1 FOO (\\Seen)"), C("a10 FETCH 1:5 (FLAGS)"),
                      C("a11 LOGOUT", **BYE)]))
    add(Conversation("imap_copy_move", "COPY and MOVE, into folders that are there and not",
                     [LOGIN, C("a1 SELECT INBOX"), C("a2 COPY 1 Archive"), C("a3 COPY 2:3 Nowhere"),
                      C("a4 MOVE 4 Junk"), C("a5 UID MOVE 5 Archive"), C("a6 UID COPY 6 Sent"),
                      C("a7 STATUS Archive (MESSAGES UIDNEXT)"), C("a8 STATUS Junk (MESSAGES)"), C("a9 FETCH 1:* (UID)"),
                      C("a10 LOGOUT", **BYE)]))
    add(Conversation("imap_append", "APPEND with a synchronizing literal and with LITERAL+",
                     [LOGIN, CONT(f"a1 APPEND Drafts (\\Draft \\Seen) {{{len(draft)}}}"), C(draft, answered(b"a1")),
                      C(f"a2 APPEND INBOX {{{len(note)}+}}\r\n".encode() + note, tagged(b"a2")),
                      C(f"a3 APPEND Nowhere {{{len(note)}}}"),  # refused before the literal: it is not sent
                      C("a4 STATUS Drafts (MESSAGES UIDNEXT)"), C("a5 SELECT Drafts"), C("a6 FETCH 2 (FLAGS RFC822.SIZE)"),
                      C("a7 LOGOUT", **BYE)]))
    add(Conversation("imap_expunge_close_unselect", "EXPUNGE, CLOSE, UNSELECT, CHECK, and STORE read-only",
                     [LOGIN, C("a1 CHECK"), C("a2 SELECT INBOX"), C("a3 STORE 1:2 +FLAGS.SILENT (\\Deleted)"),
                      C("a4 EXPUNGE"), C("a5 STORE 1 +FLAGS.SILENT (\\Deleted)"), C("a6 CLOSE"), C("a7 SELECT INBOX"),
                      C("a8 CHECK"), C("a9 UNSELECT"), C("a10 EXAMINE INBOX"), C("a11 STORE 1 +FLAGS (\\Seen)"),
                      C("a12 EXPUNGE"), C("a13 CLOSE"), C("a14 CLOSE"), C("a15 LOGOUT", **BYE)]))
    add(Conversation("imap_idle_noop", "NOOP, IDLE and DONE",
                     [LOGIN, C("a1 NOOP"), C("a2 SELECT INBOX"), C("a3 NOOP"), CONT("a4 IDLE"),
                      RAW(b"DONE\r\n", tagged(b"a4")), CONT("a5 IDLE"), RAW(b"done\r\n", tagged(b"a5")),
                      CONT("a6 IDLE"), RAW(b"NOPE\r\n", tagged(b"a6")), C("a7 LOGOUT", **BYE)]))
    add(Conversation("imap_logout_before_login", "LOGOUT at once", [C("a1 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_command_before_login", "commands that need a login, before it",
                     [C("a1 SELECT INBOX"), C("a2 LIST \"\" \"*\""), C("a3 FETCH 1 (FLAGS)"), C("a4 NOOP"),
                      C("a5 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_bad_commands_before_login", "junk lines before login until Dovecot hangs up",
                     [C("a1 XYZZY"), *junk12, RAW(b"a99 NOOP\r\n", tagged(b"a99"), timeout=5)], BOTH))
    add(Conversation("imap_bad_commands_after_login", "junk lines after login until Dovecot hangs up",
                     [LOGIN, *[RAW(f"junk{i}\r\n".encode(), tagged(f"junk{i}".encode()), timeout=5) for i in range(1, 26)],
                      RAW(b"a99 NOOP\r\n", tagged(b"a99"), timeout=5)]))
    # Before login Dovecot hangs up at the third bad command: two a conversation.
    for n, pair in enumerate(([C("a1"), RAW(b"\r\n", timeout=3)], [RAW(b" \r\n", timeout=3), C("a2 LOGIN")],
                              [C("a3 LOGIN admin"), C('a4 LOGIN "admin')],
                              [C("a5 CAPABILITY extra"), C("a6 AUTHENTICATE")],
                              [C("A7 login admin"), C("a8 STARTTLS extra")]), 1):
        add(Conversation(f"imap_syntax_errors_before_login_{n}", "syntax errors before login: Dovecot's BAD texts",
                         [*pair, C("a9 LOGOUT", **BYE)], BOTH))
    add(Conversation("imap_syntax_errors", "syntax errors after login: Dovecot's BAD texts",
                     [LOGIN, C("a6 FETCH"), C("a7 FETCH 1 (FOO)"), C("a8 SELECT"), C("a9 UID"), C("a10 UID FOO 1"),
                      C("a11 STORE 1 FLAGS"), C("a12 LIST"), C("a13 XYZZY"), C("a14 SELECT INBOX"),
                      C("a15 FETCH 1 BODY[HEADER"), C("a16 FETCH x (FLAGS)"), C("a17 COPY 1"), C("a18 ENABLE"),
                      C("a19 STATUS INBOX"), RAW(b"\r\n", timeout=3), C("a1"), C("a20 LOGOUT", **BYE)]))
    add(Conversation("imap_limits_before_login", "a literal too large for a login, then a line of 10000 bytes",
                     [CONT("a1 LOGIN {100000}"), RAW(b"a2 NOOP " + b"x" * 9992 + b"\r\n", timeout=5, grace=1.0)], BOTH))
    add(Conversation("imap_limits_after_login", "a line of 70000 bytes after login, then one of 300000",
                     [LOGIN, RAW(b"a3 NOOP " + b"x" * 69992 + b"\r\n", timeout=5, grace=1.0),
                      RAW(b"a4 NOOP " + b"x" * 299992 + b"\r\n", timeout=5, grace=1.0), C("a5 LOGOUT", **BYE)]))
    add(Conversation("imap_append_huge_literal", "APPEND of a 4 GB literal: Dovecot asks for it (then we hang up)",
                     [LOGIN, CONT("a1 APPEND INBOX {4000000000}")]))
    add(Conversation("imap_nmap_generic_lines", "nmap -sV's GenericLines probe: two empty lines",
                     [RAW(b"\r\n\r\n", timeout=3, grace=1.0)], BOTH))
    add(Conversation("imap_nmap_get_request", "nmap -sV's GetRequest probe",
                     [RAW(b"GET / HTTP/1.0\r\n\r\n", timeout=3, grace=1.0)], BOTH))
    add(Conversation("imap_nmap_help", "nmap -sV's Help probe", [RAW(b"HELP\r\n", timeout=3, grace=1.0)], BOTH))
    add(Conversation("imap_nmap_capability", "nmap's imap-capabilities script",
                     [C("a001 CAPABILITY"), C("a002 LOGOUT", **BYE)], BOTH))

    # ---------------------------------------------------------------- POP3
    add(Conversation("pop3_greeting_capa", "greeting, CAPA, QUIT", [PM("CAPA"), P("QUIT", **BYE)], BOTH))
    add(Conversation("pop3_user_pass_fail_then_ok", "USER/PASS with a wrong password, then the right one, CAPA after",
                     [P(f"USER {USER}"), P("PASS wrong"), P(f"USER {USER}"), P(f"PASS {PASSWORD}"), PM("CAPA"),
                      P("QUIT", **BYE)], BOTH))
    add(Conversation("pop3_user_unknown_and_order", "an unknown user, PASS before USER, USER twice",
                     [P("PASS secret"), P("USER nobody"), P("PASS secret"), P(f"USER {USER}"), P(f"USER {USER}"),
                      P("QUIT", **BYE)], BOTH))
    add(Conversation("pop3_apop", "APOP (not offered: no timestamp in the greeting)",
                     [P(f"APOP {USER} {hashlib.md5(b'<1.2@x>' + PASSWORD.encode()).hexdigest()}"), P("QUIT", **BYE)],
                     BOTH))
    add(Conversation("pop3_auth_plain_initial", "AUTH PLAIN with the initial response",
                     [P(f"AUTH PLAIN {PLAIN_GOOD}"), P("STAT"), P("QUIT", **BYE)], BOTH))
    add(Conversation("pop3_auth_plain_continuation", "AUTH PLAIN, then the response after '+ '",
                     [P("AUTH PLAIN"), P(PLAIN_GOOD), P("STAT"), P("QUIT", **BYE)], BOTH))
    add(Conversation("pop3_auth_bad_and_cancel", "AUTH PLAIN wrong, cancelled, bad base64, unknown mechanism, the list",
                     [P(f"AUTH PLAIN {PLAIN_BAD}"), P("AUTH PLAIN"), P("*"), P("AUTH PLAIN"), P("%%%not-base64"),
                      P("AUTH LOGIN"), PM("AUTH"), P("QUIT", **BYE)], BOTH))
    add(Conversation("pop3_stls", "STLS, CAPA inside TLS, USER/PASS, CAPA after",
                     [PM("CAPA"), P("STLS"), TLS, PM("CAPA"), *POP_LOGIN, PM("CAPA"), P("QUIT", **BYE)], BOTH))
    add(Conversation("pop3s_login", "implicit TLS: greeting, CAPA, USER/PASS, STAT",
                     [PM("CAPA"), *POP_LOGIN, P("STAT"), P("QUIT", **BYE)], BOTH, port="pop3s"))
    add(Conversation("pop3_transaction", "STAT, LIST, UIDL, RETR, TOP, NOOP after login",
                     [*POP_LOGIN, P("STAT"), PM("LIST"), P("LIST 3"), P("LIST 99"), P("LIST 0"), PM("UIDL"),
                      P("UIDL 6"), P("UIDL 99"), PM("RETR 6"), PM("TOP 6 0"), PM("TOP 4 5"), PM("TOP 10 3"),
                      PM("RETR 99"), P("RETR"), P("TOP 1"), P("NOOP"), P("STLS"), P("QUIT", **BYE)]))
    add(Conversation("pop3_dele_rset", "DELE, what it hides, RSET",
                     [*POP_LOGIN, P("DELE 1"), P("STAT"), PM("LIST"), P("LIST 1"), P("DELE 1"), PM("RETR 1"),
                      P("DELE 99"), P("RSET"), P("STAT"), P("QUIT", **BYE)]))
    add(Conversation("pop3_dele_quit", "DELE then QUIT (the UPDATE state)",
                     [*POP_LOGIN, P("DELE 2"), P("DELE 3"), P("QUIT", **BYE)]))
    add(Conversation("pop3_command_before_login", "commands that need a login, before it",
                     [P("STAT"), P("LIST"), P("RETR 1"), P("NOOP"), P("QUIT", **BYE)], BOTH))
    add(Conversation("pop3_bad_commands_before_login", "junk lines before login until Dovecot hangs up",
                     [P(f"JUNK{i}", timeout=5) for i in range(1, 13)], BOTH))
    add(Conversation("pop3_bad_commands_after_login", "junk lines after login",
                     [*POP_LOGIN, *[P(f"JUNK{i}", timeout=5) for i in range(1, 26)], P("QUIT", **BYE)]))
    add(Conversation("pop3_syntax_errors", "empty and odd lines, arguments out of range",
                     [RAW(b"\r\n", timeout=3), P("user"), P("USER"), P("CAPA extra"), *POP_LOGIN, P("STAT 1"),
                      P("LIST x"), P("RETR -1"), P("TOP 1 x"), P("DELE"), P("UIDL 1 2"), P("quit", **BYE)], BOTH))
    add(Conversation("pop3_long_line_before_login", "a line of 10000 bytes before login",
                     [RAW(b"USER " + b"x" * 9995 + b"\r\n", timeout=5, grace=1.0)], BOTH))
    add(Conversation("pop3_long_line_after_login", "a line of 10000 bytes after login",
                     [*POP_LOGIN, RAW(b"NOOP " + b"x" * 9995 + b"\r\n", timeout=5, grace=1.0), P("QUIT", **BYE)]))
    add(Conversation("pop3_nmap_generic_lines", "nmap -sV's GenericLines probe: two empty lines",
                     [RAW(b"\r\n\r\n", timeout=3, grace=1.0)], BOTH))
    add(Conversation("pop3_nmap_get_request", "nmap -sV's GetRequest probe",
                     [RAW(b"GET / HTTP/1.0\r\n\r\n", timeout=3, grace=1.0)], BOTH))
    add(Conversation("pop3_nmap_help", "nmap -sV's Help probe", [RAW(b"HELP\r\n", timeout=3, grace=1.0)], BOTH))
    return c


# ------------------------------------------------------------------- client
class Conn:
    def __init__(self, host: str, port: int, client: str, implicit_tls: bool) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=10, source_address=(client, 0))
        self.closed = False
        self.tls_desc: str | None = None
        if implicit_tls:
            self.start_tls(10.0)

    def start_tls(self, timeout: float) -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock.settimeout(timeout)
        try:
            self.sock = ctx.wrap_socket(self.sock)
            self.tls_desc = f"{self.sock.version()} {self.sock.cipher()[0]}"
        except (ssl.SSLError, OSError) as err:
            self.tls_desc = f"handshake failed: {err}"
            self.closed = True
        return self.tls_desc

    def read(self, until: Until, timeout: float, grace: float) -> tuple[bytes, float, list]:
        t0 = time.monotonic()
        buf, chunks, t_last = b"", [], None
        deadline = t0 + timeout
        met = False
        while not self.closed:
            if not met and until(buf):
                met = True
                deadline = time.monotonic() + grace
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 20)
            except (TimeoutError, socket.timeout, ssl.SSLWantReadError):
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            buf += chunk
            t_last = time.monotonic()
            chunks.append([round((t_last - t0) * 1000, 2), len(chunk)])
        ms = ((t_last if t_last is not None else time.monotonic()) - t0) * 1000
        return buf, round(ms, 2), chunks

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def run(conv: Conversation, host: str, port: int, client: str) -> list[dict]:
    conn = Conn(host, port, client, implicit_tls=conv.port.endswith("s"))
    exchanges: list[dict] = []
    try:
        if conn.tls_desc is not None:
            exchanges.append({"send": "", "recv": "", "tls": conn.tls_desc, "ms": 0.0, "closed": conn.closed})
        if conv.greet:
            buf, ms, chunks = conn.read(one_line, 10.0, GRACE_S)
            exchanges.append({"send": "", "recv": buf.decode("latin-1"), "ms": ms, "closed": conn.closed})
        for step in conv.steps:
            if conn.closed:
                break
            if step.tls:
                t1 = time.monotonic()
                desc = conn.start_tls(step.timeout)
                exchanges.append({"send": "", "recv": "", "tls": desc,
                                  "ms": round((time.monotonic() - t1) * 1000, 2), "closed": conn.closed})
                continue
            error = None
            try:
                conn.sock.sendall(step.send)
            except (OSError, ssl.SSLError) as err:
                error = f"send failed: {type(err).__name__}"
                conn.closed = True
            buf, ms, chunks = conn.read(step.until, step.timeout, step.grace) if error is None else (b"", 0.0, [])
            exchange = {"send": step.send.decode("latin-1"), "recv": buf.decode("latin-1"), "ms": ms,
                        "closed": conn.closed}
            if error:
                exchange["error"] = error
            if len(chunks) > 1:
                exchange["chunks"] = chunks
            exchanges.append(exchange)
    finally:
        conn.close()
    return exchanges


# --------------------------------------------------------------------- nmap
def nmap(label: str, host: str, ports: Ports) -> str:
    """nmap -sV and -sV -sC of the four ports; the lines that carry the
    date, the run time or the certificate's validity dropped, so that the
    text is stable."""
    out = [f"==== {label}"]
    port_list = ",".join(str(p) for p in (ports.imap, ports.imaps, ports.pop3, ports.pop3s))
    for views in (["-sV"], ["-sV", "-sC"]):
        argv = ["nmap", *views, "-p", port_list, host]
        out.append(f"$ {' '.join(argv)}")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            text = proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired) as err:
            text = f"(nmap failed: {err})\n"
        out.extend(line for line in text.splitlines()
                   if not line.startswith(("Starting Nmap", "Nmap done")) and "Not valid" not in line
                   and "latency" not in line)
        out.append("")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="conversation names to record")
    ap.add_argument("--list", action="store_true", help="list the conversations and stop")
    ap.add_argument("--no-nmap", action="store_true", help="no nmap.txt")
    args = ap.parse_args(argv)
    now = float(int(time.time()))
    conversations = build(now)
    if args.list:
        for conv in conversations:
            print(f"{conv.name:42} {','.join(conv.variants):16} {conv.description}")
        return 0
    if not dovecot_available():
        print("needs root and Debian's dovecot-imapd and dovecot-pop3d", file=sys.stderr)
        return 2
    if args.only:
        unknown = set(args.only) - {c.name for c in conversations}
        if unknown:
            print(f"unknown conversations: {sorted(unknown)}", file=sys.stderr)
            return 2
        conversations = [c for c in conversations if c.name in args.only]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    version = dovecot_version()
    clients = (f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(10_000))
    failed = 0
    nmap_text: list[str] = []
    for variant, (host, ports, plaintext) in VARIANTS.items():
        todo = [c for c in conversations if variant in c.variants]
        if not todo:
            continue
        dovecot = PrivateDovecot(host, ports, plaintext_login=plaintext, now=now, name=f"looper-record-{variant}")
        print(f"[{variant}] {host} {ports}", flush=True)
        dovecot.start()
        try:
            for conv in todo:
                dovecot.reset_mailbox()
                kind = conv.port or conv.protocol
                client = next(clients)
                t0 = time.monotonic()
                try:
                    exchanges = run(conv, host, getattr(ports, kind), client)
                except OSError as err:
                    print(f"  {conv.name}: FAILED {err}", flush=True)
                    failed += 1
                    continue
                print(f"  {conv.name}.{variant}: {len(exchanges)} exchanges, {time.monotonic() - t0:.1f}s", flush=True)
                doc = {
                    "conversation": conv.name, "variant": variant, "description": conv.description,
                    "protocol": conv.protocol.rstrip("s") if conv.protocol in ("imaps", "pop3s") else conv.protocol,
                    "port": kind, "implicit_tls": kind.endswith("s"),
                    "dovecot_version": version, "settings": dovecot.settings(),
                    "server": f"{host}:{getattr(ports, kind)}", "client": client,
                    "user": USER, "password": PASSWORD,
                    "bait_now": now, "recorded": datetime.fromtimestamp(now, timezone.utc).isoformat(),
                    "exchanges": exchanges,
                }
                (OUT_DIR / f"{conv.name}.{variant}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n")
            if not args.no_nmap and not args.only:
                print(f"  nmap ({variant})", flush=True)
                label = f"Dovecot {version}, {variant}: disable_plaintext_auth = {'no' if plaintext else 'yes'}"
                nmap_text.append(nmap(label, host, ports))
        finally:
            log = dovecot.log()
            dovecot.stop()
        Path(f"/tmp/looper-record-dovecot.{variant}.log").write_text(log)  # for a look, not kept
    if nmap_text:
        (OUT_DIR / "nmap.txt").write_text(
            f"# nmap against the real Dovecot {version} (imap, imaps, pop3, pop3s); tests/record_dovecot.py\n\n"
            + "\n".join(nmap_text))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
