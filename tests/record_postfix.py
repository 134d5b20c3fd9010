#!/usr/bin/env python3
"""Record ground truth from the real Debian Postfix 3.7 smtpd (not a test).

Run as root from the repository root:

    python tests/record_postfix.py [--only NAME ...] [--no-nmap] [--keep]

It starts a private Postfix (tests/postfix.py's PrivatePostfix) on
127.0.0.2:25 with myhostname `mail.example.test`, and for the SASL scenarios
a private Dovecot whose only service is an auth socket. Every scenario is one
TCP connection from 127.0.0.1 that sends a fixed script of raw bytes and
records exactly what came back. One JSON file per scenario is written to
tests/data/postfix/<scenario>.json:

    {"scenario": name, "description": "...", "postfix_version": "3.7.11",
     "settings": {main.cf overrides on top of PrivatePostfix's own},
     "dovecot": {...} (SASL scenarios only),
     "exchanges": [{"send": str, "recv": str, "ms": float, "closed": bool}, ...]}

- send/recv are the exact bytes as latin-1 strings. The first exchange is the
  greeting (send ""), except in scenarios whose description says the client
  talked first. An exchange with send "" after the first is a pure wait
  (e.g. for the idle timeout).
- ms: milliseconds from the end of our write (from connect() for the
  greeting) to the last byte of the replies we waited for (or to the end of
  the wait when nothing came).
- closed: the server had closed the connection by the end of this exchange
  (EOF or reset seen).
- An exchange with a "tls" key is the TLS handshake after 220 to STARTTLS:
  nothing of ours is in send, the value names protocol and cipher; later
  exchanges run inside TLS.
- "chunks": [[ms, bytes], ...] for each piece read, when the replies came in
  more than one piece (e.g. Postfix's error sleep delays every line of a
  multi-line reply).
- "late": bytes that arrived after the grace period of the exchange before
  them and before our next write (normally absent).

Also writes tests/data/postfix/nmap.txt (`nmap -sV -p 25 127.0.0.2` and with
-sC, without and with SASL). Everything is bounded in time; the Postfix
instance, the Dovecot and 127.0.0.2 on lo are removed at the end.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import hmac
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.postfix import PrivatePostfix  # noqa: E402

HOST = "127.0.0.2"
CLIENT = "127.0.0.1"
MYHOSTNAME = "mail.example.test"
OUT_DIR = REPO / "tests" / "data" / "postfix"
WORK = Path("/tmp/looper-record-postfix")  # fixed, so settings are stable
DOVECOT_DIR = WORK / "dovecot"
AUTH_SOCKET = DOVECOT_DIR / "run" / "auth-postfix"
SASL_USER = "user@example.test"
SASL_PASS = "secret"
GRACE_S = 0.2  # extra wait after the expected replies, to catch surprises

# What a stock Debian main.cf has, where PrivatePostfix differs in a way a
# client could see (smtpd_timeout, relay restrictions, mydomain).
BASE_CF = {
    "mydomain": "example.test",
    "smtpd_timeout": "300s",
    "smtpd_relay_restrictions": "permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
}
SASL_CF = {
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_sasl_type": "dovecot",
    "smtpd_sasl_path": str(AUTH_SOCKET),
    "smtpd_tls_auth_only": "no",
    # Not visible to a client: one connection per smtpd process, so each
    # connection gets a fresh link to the (restarted) Dovecot auth server.
    "max_use": "1",
}

# Settings groups: main.cf overrides on top of BASE_CF, and the Dovecot
# profile (None: no SASL).
GROUPS: dict[str, tuple[dict[str, str], dict | None]] = {
    "default": ({}, None),
    "timeout5": ({"smtpd_timeout": "5s"}, None),
    "size10000": ({"message_size_limit": "10000"}, None),
    "relay_denied": ({"mynetworks": "127.0.0.99/32"}, None),
    "relay_denied_reject": ({"mynetworks": "127.0.0.99/32",
                             "smtpd_relay_restrictions":
                             "permit_mynetworks permit_sasl_authenticated reject_unauth_destination"},
                            None),
    # Local delivery domain like a stock Debian box: mydestination has
    # $myhostname and localhost, local_recipient_maps at its default (passwd
    # only, alias_maps is empty). Delivery still goes to discard.
    "local": ({"mydestination": "$myhostname, localhost",
               "local_recipient_maps": "proxy:unix:passwd.byname $alias_maps"}, None),
    "sasl": (SASL_CF, {"auth_mechanisms": "plain login cram-md5",
                       "disable_plaintext_auth": "no"}),
    "sasl_plain_login": (SASL_CF, {"auth_mechanisms": "plain login",
                                   "disable_plaintext_auth": "no"}),
    # Dovecot's own default disable_plaintext_auth=yes, AUTH in the clear.
    "sasl_dovecot_default": (SASL_CF, {"auth_mechanisms": "plain login",
                                       "disable_plaintext_auth": "yes"}),
    "sasl_tls_auth_only": ({**SASL_CF, "smtpd_tls_auth_only": "yes"},
                           {"auth_mechanisms": "plain login",
                            "disable_plaintext_auth": "no"}),
}


# ------------------------------------------------------------------ scripts
@dataclass
class Step:
    send: bytes | Callable[[bytes], bytes] = b""
    expect: int = 1          # complete replies to wait for
    close: bool = False      # wait for the server to close instead
    timeout: float = 10.0
    tls: bool = False        # TLS handshake (after a 220 to STARTTLS)


def C(line: str | bytes, **kw) -> Step:
    """A command line, CRLF added."""
    if isinstance(line, str):
        line = line.encode("latin-1")
    return Step(line + b"\r\n", **kw)


def R(data: bytes, **kw) -> Step:
    """Raw bytes, sent as they are in one write."""
    return Step(data, **kw)


def WAIT(timeout: float, **kw) -> Step:
    return Step(b"", timeout=timeout, **kw)


def QUIT(**kw) -> Step:
    return C("QUIT", close=True, timeout=kw.pop("timeout", 5.0), **kw)


TLS = Step(tls=True, expect=0)


@dataclass
class Scenario:
    name: str
    description: str
    steps: list[Step]
    group: str = "default"
    greet: bool = True      # False: the client talks before the greeting
    fresh_dovecot: bool = True  # SASL groups: restart Dovecot before it


EHLO = C("EHLO client.example.test")
MAIL = C("MAIL FROM:<sender@example.test>")
RCPT = C("RCPT TO:<rcpt@example.net>")
HEADERS = (b"From: sender@example.test\r\nTo: rcpt@example.net\r\n"
           b"Subject: looper ground truth\r\n\r\n")
MSG = HEADERS + b"Hello.\r\n..a dot-stuffed line\r\n.\r\n"
BODY = HEADERS + b"Hello.\r\n"            # for BDAT (no dot-stuffing)


def b64(s: bytes | str) -> str:
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


PLAIN_GOOD = b64(f"\0{SASL_USER}\0{SASL_PASS}")
PLAIN_BAD = b64(f"\0{SASL_USER}\0wrong")


def cram_md5(password: str) -> Callable[[bytes], bytes]:
    def respond(prev: bytes) -> bytes:
        challenge = base64.b64decode(prev.split(b" ", 1)[1].strip())
        digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        return b64(f"{SASL_USER} {digest}").encode() + b"\r\n"
    return respond


def long_line(prefix: str, total: int) -> bytes:
    """A line of exactly `total` bytes before the CRLF."""
    return prefix.encode() + b"a" * (total - len(prefix))


def build_scenarios() -> list[Scenario]:
    S = Scenario
    big = b"X-Filler: " + b"x" * 68 + b"\r\n"
    big_body = HEADERS + big * 260 + b".\r\n"          # ~20 kB
    hops = b"".join(b"Received: from hop%d.example.net by relay%d.example.net; "
                    b"Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i) for i in range(51))
    sc = [
        # ---- greeting, HELO/EHLO, QUIT
        S("ehlo_quit", "greeting, EHLO (capabilities), QUIT", [EHLO, QUIT()]),
        S("helo", "greeting, HELO, QUIT", [C("HELO client.example.test"), QUIT()]),
        S("ehlo_noarg", "EHLO without argument", [C("EHLO"), C("EHLO "), QUIT()]),
        S("helo_noarg", "HELO without argument", [C("HELO"), C("HELO "), QUIT()]),
        S("ehlo_variants", "EHLO twice, HELO after EHLO, odd EHLO names",
          [EHLO, C("EHLO other.example.test"), C("HELO third.example.test"),
           C("EHLO [127.0.0.1]"), C("EHLO [bad"), C("EHLO two words"),
           C("EHLO " + "h" * 300), QUIT()]),
        S("lowercase", "lower-case verbs and keywords",
          [C("ehlo client.example.test"), C("mail from:<sender@example.test>"),
           C("rcpt to:<rcpt@example.net>"), C("rset"), C("noop"), C("quit", close=True)]),
        S("early_talker", "the client sends EHLO before the greeting "
          "(first exchange: EHLO sent right after connect)",
          [C("EHLO client.example.test", expect=2), QUIT()], greet=False),
        S("quit_arg", "QUIT with an argument", [EHLO, C("QUIT now", close=True, timeout=5)]),
        # ---- transaction order
        S("mail_before_ehlo", "MAIL, RCPT, DATA without HELO/EHLO (smtpd_helo_required=no)",
          [MAIL, RCPT, C("DATA"), R(MSG), QUIT()]),
        S("rcpt_before_mail", "RCPT before MAIL", [EHLO, RCPT, QUIT()]),
        S("data_before_mail", "DATA before MAIL", [EHLO, C("DATA"), QUIT()]),
        S("data_before_rcpt", "DATA after MAIL, before RCPT", [EHLO, MAIL, C("DATA"), QUIT()]),
        S("nested_mail", "MAIL twice", [EHLO, MAIL, C("MAIL FROM:<other@example.test>"), QUIT()]),
        S("rset_noop", "RSET, RSET with argument, NOOP, NOOP with argument",
          [EHLO, MAIL, RCPT, C("RSET"), RCPT, C("RSET now"), C("NOOP"),
           C("NOOP hello there"), C("NOOP\tx"), QUIT()]),
        # ---- MAIL parameters
        S("mail_params", "MAIL with SIZE=, BODY=, SMTPUTF8 and DSN/AUTH parameters",
          [EHLO, C("MAIL FROM:<sender@example.test> SIZE=1000 BODY=8BITMIME SMTPUTF8"),
           C("RSET"), C("MAIL FROM:<sender@example.test> BODY=7BIT"), C("RSET"),
           C("MAIL FROM:<sender@example.test> RET=HDRS ENVID=abc123"), C("RSET"),
           C("MAIL FROM:<sender@example.test> AUTH=<>"), C("RSET"),
           C("MAIL FROM:<>"),
           C("RCPT TO:<rcpt@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;rcpt@example.net"),
           C("RSET"), C("MAIL FROM:<sender@example.test> size=1000 body=8bitmime"),
           QUIT()]),
        S("mail_params_bad", "MAIL with bad or unknown parameters",
          [EHLO, C("MAIL FROM:<sender@example.test> SIZE=abc"),
           C("MAIL FROM:<sender@example.test> BODY=BINARYMIME"),
           C("MAIL FROM:<sender@example.test> BODY=foo"),
           C("MAIL FROM:<sender@example.test> FOO=bar"),
           C("MAIL FROM:<sender@example.test> RET=foo"),
           C("MAIL FROM:<sender@example.test> SIZE=1000 SIZE=2000"),
           QUIT()]),
        S("mail_size_over", "MAIL SIZE= at and over message_size_limit (10240000)",
          [EHLO, C("MAIL FROM:<sender@example.test> SIZE=20000000"),
           C("MAIL FROM:<sender@example.test> SIZE=10240000"), C("RSET"),
           C("MAIL FROM:<sender@example.test> SIZE=10240001"),
           C("MAIL FROM:<sender@example.test> SIZE=99999999999999999999"), QUIT()]),
        S("mail_syntax", "MAIL syntax errors (no colon, no brackets, unclosed <)",
          [EHLO, C("MAIL FROM <sender@example.test>"), C("MAIL FROM:sender@example.test"),
           C("RSET"), C("MAIL FROM:<bad address"), C("MAIL FROM:<sender@example.test"),
           C("MAIL FROM:"), C("MAIL"), C("MAIL TO:<sender@example.test>"), QUIT()]),
        S("mail_syntax2", "more MAIL address forms",
          [EHLO, C("MAIL FROM: <sender@example.test>"), C("RSET"),
           C("MAIL FROM:<sender@@example.test>"), C("RSET"),
           C("MAIL FROM:<@route.example:sender@example.test>"),
           C("RSET"), C("MAIL FROM:<sender@example.test> "), C("RSET"),
           C("MAIL FROM:<a b@example.test>"), C("MAIL FROM:<\"a b\"@example.test>"),
           C("RSET"), C("MAIL FROM:sender"), C("RSET"), C("MAIL FROM:<sender@[127.0.0.1]>"), QUIT()]),
        # ---- RCPT
        S("rcpt_variants", "RCPT to local-looking, foreign and odd addresses (open relay)",
          [EHLO, MAIL, C("RCPT TO:<user>"), C("RCPT TO:<user@mail.example.test>"),
           C("RCPT TO:<postmaster>"), C("RCPT TO:<rcpt@example.net>"),
           C("RCPT TO:<rcpt@[127.0.0.1]>"), C("RCPT TO:<\"quoted user\"@example.net>"),
           C("RCPT TO:<rcpt@example.net>"), C("RCPT TO: <rcpt2@example.net>"),
           C("RCPT TO:rcpt3@example.net"), QUIT()]),
        S("rcpt_syntax", "RCPT syntax errors",
          [EHLO, MAIL, C("RCPT TO:<bad"), C("RCPT TO:"), C("RCPT TO <rcpt@example.net>"),
           C("RCPT TO:<>"), C("RCPT TO:<rcpt@example.net> FOO=bar"), C("RCPT"),
           C("RCPT TO:<rcpt@ex ample.net>"), QUIT()]),
        # ---- DATA
        S("data_full", "a full transaction with DATA and dot-stuffing",
          [EHLO, MAIL, RCPT, C("DATA"), R(MSG), QUIT()]),
        S("data_two_messages", "two transactions on one connection",
          [EHLO, MAIL, RCPT, C("DATA"), R(MSG), MAIL, RCPT, RCPT, C("DATA"), R(MSG),
           C("RSET"), QUIT()]),
        S("data_empty", "DATA with an empty message",
          [EHLO, MAIL, RCPT, C("DATA"), R(b".\r\n"), QUIT()]),
        S("data_arg", "DATA with an argument", [EHLO, MAIL, RCPT, C("DATA now"), QUIT()]),
        S("pipelined", "MAIL, RCPT, DATA in one write",
          [EHLO, R(b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n",
                   expect=3), R(MSG), QUIT()]),
        S("pipelined_all", "EHLO..DATA in one write, then message and QUIT in one write",
          [R(b"EHLO client.example.test\r\nMAIL FROM:<sender@example.test>\r\n"
             b"RCPT TO:<rcpt@example.net>\r\nDATA\r\n", expect=4),
           R(MSG + b"QUIT\r\n", close=True, timeout=5)]),
        S("pipelined_everything", "the whole session, message and QUIT in one write",
          [R(b"EHLO client.example.test\r\nMAIL FROM:<sender@example.test>\r\n"
             b"RCPT TO:<rcpt@example.net>\r\nDATA\r\n" + MSG + b"QUIT\r\n",
             close=True, timeout=5)]),
        S("pipelined_bad_rcpt", "pipelined with a failing RCPT: DATA gets 554",
          [EHLO, R(b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<bad\r\nDATA\r\n", expect=3),
           R(MSG, expect=1, timeout=3), QUIT()]),
        S("too_many_hops", "DATA with 51 Received: headers (hopcount_limit 50)",
          [EHLO, MAIL, RCPT, C("DATA"), R(hops + MSG), QUIT()]),
        S("bare_lf", "commands and DATA with bare LF line endings",
          [R(b"EHLO client.example.test\n"), R(b"NOOP\n"), R(b"MAIL FROM:<sender@example.test>\n"),
           R(b"RCPT TO:<rcpt@example.net>\n"), R(b"DATA\n"),
           R(b"Subject: bare lf\n\nline one\nline two\n.\n", timeout=4),
           R(b"QUIT\n", close=True, timeout=5)]),
        S("bare_lf_dot", "DATA ended by LF.CRLF (bare LF before the dot)",
          [EHLO, MAIL, RCPT, C("DATA"), R(HEADERS + b"body\n.\r\n", timeout=4),
           R(b".\r\n", timeout=4), QUIT()]),
        S("bare_cr", "bare CR in a command and CR.CR in DATA",
          [EHLO, R(b"NOOP\rNOOP\r\n"), MAIL, RCPT, C("DATA"),
           R(HEADERS + b"body\r.\r\n", expect=0), R(b"more\r\n.\r\n", timeout=4), QUIT()]),
        # ---- BDAT
        S("bdat_last", "BDAT n LAST", [EHLO, MAIL, RCPT,
                                       R(b"BDAT %d LAST\r\n" % len(BODY) + BODY), QUIT()]),
        S("bdat_chunks", "BDAT n, BDAT n, BDAT 0 LAST",
          [EHLO, MAIL, RCPT, R(b"BDAT %d\r\n" % len(HEADERS) + HEADERS),
           R(b"BDAT 8\r\nHello.\r\n"), C("BDAT 0 LAST"), QUIT()]),
        S("bdat_before_mail", "BDAT before MAIL (chunk follows)",
          [EHLO, R(b"BDAT 10 LAST\r\n0123456789"), C("NOOP"), QUIT()]),
        S("bdat_before_rcpt", "BDAT after MAIL, before RCPT (chunk follows)",
          [EHLO, MAIL, R(b"BDAT 10 LAST\r\n0123456789"), C("NOOP"), QUIT()]),
        S("bdat_noarg", "BDAT without a size", [EHLO, MAIL, RCPT, C("BDAT"), QUIT()]),
        S("bdat_badarg", "BDAT with a non-numeric size", [EHLO, MAIL, RCPT, C("BDAT abc"), QUIT()]),
        S("bdat_huge", "BDAT with a 20-digit size",
          [EHLO, MAIL, RCPT, C("BDAT 99999999999999999999"), QUIT()]),
        S("bdat_bad_keyword", "BDAT n FIRST (not LAST), chunk follows",
          [EHLO, MAIL, RCPT, R(b"BDAT 5 FIRST\r\nHello"), C("NOOP"), QUIT()]),
        S("bdat_then_data", "DATA after a BDAT chunk, then BDAT 0 LAST",
          [EHLO, MAIL, RCPT, R(b"BDAT 8\r\nHello.\r\n"), C("DATA"), C("NOOP"),
           C("BDAT 0 LAST"), QUIT()]),
        S("bdat_zero", "BDAT 0 (not last), then BDAT 0 LAST: an empty message",
          [EHLO, MAIL, RCPT, C("BDAT 0"), C("BDAT 0 LAST"), QUIT()]),
        S("bdat_no_ehlo", "BDAT after HELO (CHUNKING not announced)",
          [C("HELO client.example.test"), MAIL, RCPT,
           R(b"BDAT %d LAST\r\n" % len(BODY) + BODY), QUIT()]),
        S("bdat_pipelined", "MAIL, RCPT, BDAT LAST in one write",
          [EHLO, R(b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<rcpt@example.net>\r\n"
                   b"BDAT %d LAST\r\n" % len(BODY) + BODY, expect=3), QUIT()]),
        # ---- other commands
        S("vrfy_expn", "VRFY and EXPN",
          [EHLO, C("VRFY root"), C("VRFY user@example.net"), C("VRFY <rcpt@example.net>"),
           C("VRFY"), C("EXPN root"), C("EXPN"), C("VRFY <bad"), QUIT()]),
        S("help_unknown", "HELP, unknown commands, an empty line, spaces",
          [EHLO, C("HELP"), C("HELP MAIL"), C("XYZZY"), C("TURN"), C(""), C(" "),
           C("EHLOX"), QUIT()]),
        S("etrn", "ETRN before and after EHLO",
          [C("ETRN example.test"), EHLO, C("ETRN"), C("ETRN example.test"),
           C("ETRN @example.test"), C("ETRN #example.test"), QUIT()]),
        S("xclient_xforward", "XCLIENT and XFORWARD from an unauthorized client",
          [EHLO, C("XCLIENT NAME=spoofed.example.net ADDR=192.0.2.1"),
           C("XFORWARD NAME=spoofed.example.net"), C("XCLIENT"), QUIT()]),
        S("auth_disabled", "AUTH when SASL is not enabled",
          [EHLO, C("AUTH PLAIN " + PLAIN_GOOD), C("AUTH LOGIN"), C("AUTH"), QUIT()]),
        S("auth_disabled_before_ehlo", "AUTH before EHLO, SASL not enabled",
          [C("AUTH PLAIN " + PLAIN_GOOD), QUIT()]),
        # ---- line length and bytes
        S("long_line_2049", "command lines just over line_length_limit (2048)",
          [EHLO, R(long_line("NOOP ", 2048) + b"\r\n"), R(long_line("NOOP ", 2049) + b"\r\n"),
           C("NOOP"), R(long_line("MAIL FROM:<", 2100) + b"@example.test>\r\n"),
           R(long_line("XYZZY ", 2100) + b"\r\n"), C("NOOP"), QUIT()]),
        S("long_line_4097", "command lines over 4096 and much longer",
          [EHLO, R(long_line("NOOP ", 4097) + b"\r\n"), C("NOOP"),
           R(long_line("NOOP ", 20000) + b"\r\n"), C("NOOP"),
           R(long_line("RCPT TO:<", 5000) + b">\r\n"), MAIL,
           R(long_line("RCPT TO:<", 1000) + b"@example.net>\r\n"),
           R(b"RCPT TO:<" + b"a" * 64 + b"@" + b"b" * 255 + b".example.net>\r\n"), QUIT()]),
        S("long_line_exact", "where the cut is: MAIL lines of 2048 and 2049 bytes, "
          "VRFY echoing a 3000-byte argument",
          [EHLO, R(long_line("MAIL FROM:<", 2048 - len("@example.test>")) + b"@example.test>\r\n"),
           C("RSET"),
           R(long_line("MAIL FROM:<", 2049 - len("@example.test>")) + b"@example.test>\r\n"),
           R(long_line("VRFY ", 3000) + b"\r\n"), R(long_line("VRFY ", 2048) + b"\r\n"),
           QUIT()]),
        S("data_long_line", "DATA with a 5000-byte line and a 100 kB line",
          [EHLO, MAIL, RCPT, C("DATA"),
           R(HEADERS + b"b" * 5000 + b"\r\n" + b"c" * 100000 + b"\r\n.\r\n", timeout=20),
           QUIT()]),
        S("long_line_split_verb", "a 2048-byte chunk whose cut falls before a real verb",
          [EHLO, R(b"NOOP " + b"a" * 2043 + b"NOOP\r\n", expect=1), C("NOOP"), QUIT()]),
        S("eight_bit", "8-bit bytes in commands",
          [EHLO, R(b"NOOP \xff\xfe\r\n"), R(b"MAIL FROM:<us\xe9r@example.test>\r\n"),
           R("MAIL FROM:<usér@example.test>\r\n".encode()), C("RSET"),
           R("MAIL FROM:<usér@example.test> SMTPUTF8\r\n".encode()),
           R("RCPT TO:<ü@example.net>\r\n".encode()), C("RSET"),
           R(b"EHLO h\xe9llo.example.test\r\n"), R(b"\xff\xfe\xfd\r\n"), QUIT()]),
        S("nul_byte", "a NUL byte in a command",
          [EHLO, R(b"NOOP \x00x\r\n"), R(b"MAIL FROM:<a\x00b@example.test>\r\n"), QUIT()]),
        # ---- forbidden commands
        S("http_get", "an HTTP GET", [R(b"GET / HTTP/1.0\r\n\r\n", close=True, timeout=5)]),
        S("http_post", "an HTTP POST",
          [R(b"POST / HTTP/1.1\r\nHost: 127.0.0.2\r\nContent-Length: 0\r\n\r\n",
             close=True, timeout=5)]),
        S("http_connect", "an HTTP CONNECT",
          [R(b"CONNECT 127.0.0.1:25 HTTP/1.0\r\n\r\n", close=True, timeout=5)]),
        S("http_get_after_ehlo", "an HTTP GET after EHLO",
          [EHLO, C("GET /", close=True, timeout=5)]),
        S("header_as_command", "a message header sent as a command",
          [EHLO, C("Subject: hello", close=True, timeout=5)]),
        S("non_letter_command", "a command that starts with a digit",
          [EHLO, C("123 hello", close=True, timeout=5)]),
        S("tls_client_hello", "a TLS ClientHello on the plain port (no newline in it)",
          [R(b"\x16\x03\x01\x00\x2f\x01\x00\x00\x2b\x03\x03" + b"\x00" * 32
             + b"\x00\x00\x02\x00\x2f\x01\x00", close=True, timeout=5)]),
        # ---- limits
        S("error_limit", "25 unknown commands: soft limit 10 (1s sleeps), hard limit 20",
          [C("XYZZY", timeout=15) for _ in range(25)]),
        S("error_limit_syntax", "syntax errors count too: 22 bad RCPTs",
          [EHLO, MAIL] + [C("RCPT TO:<bad", timeout=15) for _ in range(22)]),
        S("error_limit_wait", "20 unknown commands, then silence: the 421 comes unasked",
          [C("XYZZY", timeout=15) for _ in range(20)] + [WAIT(5, close=True)]),
        S("error_soft_then_ok", "10 unknown commands, then good ones: every reply delayed?",
          [C("XYZZY", timeout=15) for _ in range(10)]
          + [C("NOOP", timeout=15), C("EHLO client.example.test", timeout=20),
             C("MAIL FROM:<sender@example.test>", timeout=15),
             C("RCPT TO:<rcpt@example.net>", timeout=15), C("DATA", timeout=15),
             R(MSG, timeout=15), QUIT(timeout=15)]),
        S("junk_limit", "125 NOOPs (smtpd_junk_command_limit 100)",
          [EHLO] + [C("NOOP", timeout=15) for _ in range(125)] + [QUIT()]),
        S("rcpt_limit", "1001 RCPTs pipelined in one write (smtpd_recipient_limit 1000)",
          [EHLO, MAIL, R(b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(1001)),
                         expect=1001, timeout=30), C("DATA"), R(MSG), QUIT()]),
        S("ehlo_resets", "EHLO in the middle of a transaction resets it",
          [EHLO, MAIL, EHLO, RCPT, MAIL, C("HELO client.example.test"), RCPT, QUIT()]),
        # ---- STARTTLS
        S("starttls", "STARTTLS, then the client closes", [EHLO, C("STARTTLS")]),
        S("starttls_arg", "STARTTLS with an argument", [EHLO, C("STARTTLS now"), QUIT()]),
        S("starttls_before_ehlo", "STARTTLS before EHLO, then TLS and EHLO",
          [C("STARTTLS"), TLS, EHLO, QUIT()]),
        S("starttls_twice", "STARTTLS, TLS, EHLO, STARTTLS again, a transaction in TLS",
          [EHLO, C("STARTTLS"), TLS, EHLO, C("STARTTLS"), MAIL, RCPT, C("DATA"), R(MSG), QUIT()]),
        S("starttls_no_ehlo_after", "MAIL right after the TLS handshake without EHLO",
          [EHLO, C("STARTTLS"), TLS, MAIL, QUIT()]),
        S("starttls_pipelined", "STARTTLS with a command pipelined after it "
          "(plaintext injection, CVE-2011-0411 style)",
          [EHLO, R(b"STARTTLS\r\nNOOP\r\n", expect=1, timeout=5), TLS, EHLO, QUIT()]),
        S("starttls_in_transaction", "STARTTLS after MAIL: is the transaction reset?",
          [EHLO, MAIL, C("STARTTLS"), TLS, RCPT, QUIT()]),
        # ---- timeouts (smtpd_timeout 5s)
        S("timeout_idle", "idle after the greeting (smtpd_timeout=5s)",
          [WAIT(15, close=True)], group="timeout5"),
        S("timeout_after_ehlo", "idle after EHLO (smtpd_timeout=5s)",
          [EHLO, WAIT(15, close=True)], group="timeout5"),
        S("timeout_in_data", "idle in the middle of DATA (smtpd_timeout=5s)",
          [EHLO, MAIL, RCPT, C("DATA"), R(HEADERS + b"partial", expect=0),
           WAIT(15, close=True)], group="timeout5"),
        S("timeout_partial_line", "half a command line, then idle (smtpd_timeout=5s)",
          [EHLO, R(b"NOO", expect=0), WAIT(15, close=True)], group="timeout5"),
        # ---- message size (message_size_limit 10000)
        S("size_ehlo", "EHLO with message_size_limit=10000", [EHLO, QUIT()], group="size10000"),
        S("size_mail_param", "MAIL SIZE= over a 10000 limit",
          [EHLO, C("MAIL FROM:<sender@example.test> SIZE=20000"),
           C("MAIL FROM:<sender@example.test> SIZE=10000"), QUIT()], group="size10000"),
        S("size_data", "DATA of ~20 kB over a 10000 limit: the 552 comes after the dot",
          [EHLO, MAIL, RCPT, C("DATA"), R(big_body, timeout=10), C("NOOP"), MAIL, QUIT()],
          group="size10000"),
        S("size_data_declared", "MAIL SIZE=5000 then ~20 kB of DATA",
          [EHLO, C("MAIL FROM:<sender@example.test> SIZE=5000"), RCPT, C("DATA"),
           R(big_body, timeout=10), QUIT()], group="size10000"),
        S("size_bdat", "BDAT over a 10000 limit",
          [EHLO, MAIL, RCPT, R(b"BDAT 20000 LAST\r\n" + b"x" * 19998 + b"\r\n", timeout=10),
           C("NOOP"), QUIT()], group="size10000"),
        S("size_bdat_chunks", "BDAT chunks that pass the 10000 limit on the second",
          [EHLO, MAIL, RCPT, R(b"BDAT 8000\r\n" + b"y" * 7998 + b"\r\n"),
           R(b"BDAT 8000\r\n" + b"z" * 7998 + b"\r\n", timeout=10),
           C("BDAT 0 LAST"), QUIT()], group="size10000"),
        # ---- relay refused
        S("relay_denied", "client not in mynetworks, Debian's defer_unauth_destination",
          [EHLO, MAIL, C("RCPT TO:<rcpt@example.net>"), C("RCPT TO:<user>"),
           C("RCPT TO:<user@mail.example.test>"), C("RCPT TO:<rcpt@spamtrap.test>"),
           C("VRFY rcpt@example.net"), C("DATA"), QUIT()], group="relay_denied"),
        S("relay_denied_local", "client not in mynetworks: what is still accepted",
          [EHLO, MAIL, C("RCPT TO:<postmaster>"), C("RCPT TO:<user@[127.0.0.2]>"),
           C("RCPT TO:<rcpt@example.net>"), C("DATA"), R(MSG), QUIT()], group="relay_denied"),
        S("relay_denied_ehlo", "EHLO when the client is not in mynetworks",
          [EHLO, QUIT()], group="relay_denied"),
        S("relay_denied_bdat", "BDAT with no accepted recipient",
          [EHLO, MAIL, C("RCPT TO:<rcpt@example.net>"),
           R(b"BDAT %d LAST\r\n" % len(BODY) + BODY), QUIT()], group="relay_denied"),
        S("relay_denied_reject", "client not in mynetworks, reject_unauth_destination",
          [EHLO, MAIL, C("RCPT TO:<rcpt@example.net>"), C("DATA"), QUIT()],
          group="relay_denied_reject"),
        # ---- local domain
        S("local_rcpt", "mydestination=$myhostname: known and unknown local users",
          [EHLO, MAIL, C("RCPT TO:<root@mail.example.test>"),
           C("RCPT TO:<nosuchuser@mail.example.test>"), C("RCPT TO:<nosuchuser@localhost>"),
           C("RCPT TO:<nosuchuser>"), C("RCPT TO:<postmaster>"), C("RCPT TO:<Root>"),
           C("RCPT TO:<root@[127.0.0.2]>"), C("VRFY nosuchuser"), C("VRFY root"),
           C("VRFY postmaster"), C("DATA"), R(MSG), QUIT()], group="local"),
        # ---- SASL (Dovecot)
        S("sasl_ehlo", "EHLO with Dovecot SASL (plain login cram-md5)",
          [EHLO, QUIT()], group="sasl"),
        S("sasl_helo", "HELO with SASL enabled, then AUTH after HELO",
          [C("HELO client.example.test"), C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), QUIT()],
          group="sasl"),
        S("auth_plain_ir_good", "AUTH PLAIN with initial response, good password; AUTH again",
          [EHLO, C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), C("AUTH PLAIN " + PLAIN_GOOD),
           C("MAIL FROM:<sender@example.test> AUTH=<>"), RCPT, C("DATA"), R(MSG),
           C("AUTH LOGIN"), QUIT()], group="sasl"),
        S("auth_plain_ir_bad", "AUTH PLAIN with initial response, bad password",
          [EHLO, C("AUTH PLAIN " + PLAIN_BAD, timeout=20), QUIT()], group="sasl"),
        S("auth_plain_bad_user", "AUTH PLAIN with an unknown user",
          [EHLO, C("AUTH PLAIN " + b64("\0nobody@example.test\0secret"), timeout=20), QUIT()],
          group="sasl"),
        S("auth_plain_cont", "AUTH PLAIN with a 334 continuation, good password",
          [EHLO, C("AUTH PLAIN"), C(PLAIN_GOOD, timeout=20), QUIT()], group="sasl"),
        S("auth_plain_cont_bad", "AUTH PLAIN with a 334 continuation, bad password",
          [EHLO, C("AUTH PLAIN"), C(PLAIN_BAD, timeout=20), QUIT()], group="sasl"),
        S("auth_plain_authzid_other", "AUTH PLAIN with an authzid other than the authcid",
          [EHLO, C("AUTH PLAIN " + b64(f"other@example.test\0{SASL_USER}\0{SASL_PASS}"),
                   timeout=20), QUIT()], group="sasl"),
        S("auth_plain_authzid", "AUTH PLAIN with authzid = authcid",
          [EHLO, C("AUTH PLAIN " + b64(f"{SASL_USER}\0{SASL_USER}\0{SASL_PASS}"), timeout=20),
           QUIT()], group="sasl"),
        S("auth_plain_malformed", "AUTH PLAIN decoding to user:secret (no NUL), "
          "then to user NUL secret (one NUL)",
          [EHLO, C("AUTH PLAIN " + b64(f"{SASL_USER}:{SASL_PASS}"), timeout=20),
           C("AUTH PLAIN " + b64(f"{SASL_USER}\0{SASL_PASS}"), timeout=20), QUIT()],
          group="sasl"),
        S("auth_plain_empty_ir", "AUTH PLAIN = (empty initial response)",
          [EHLO, C("AUTH PLAIN =", timeout=20), C("*", timeout=20), QUIT()], group="sasl"),
        S("auth_login", "AUTH LOGIN with both prompts, good password",
          [EHLO, C("AUTH LOGIN"), C(b64(SASL_USER)), C(b64(SASL_PASS), timeout=20), QUIT()],
          group="sasl"),
        S("auth_login_bad", "AUTH LOGIN, bad password",
          [EHLO, C("AUTH LOGIN"), C(b64(SASL_USER)), C(b64("wrong"), timeout=20), QUIT()],
          group="sasl"),
        S("auth_login_ir", "AUTH LOGIN with the user name as initial response",
          [EHLO, C("AUTH LOGIN " + b64(SASL_USER)), C(b64(SASL_PASS), timeout=20), QUIT()],
          group="sasl"),
        S("auth_login_lowercase", "auth login (lower case mechanism name)",
          [EHLO, C("auth login"), C(b64(SASL_USER)), C(b64(SASL_PASS), timeout=20), QUIT()],
          group="sasl"),
        S("auth_cram_md5", "AUTH CRAM-MD5: challenge format, good response",
          [EHLO, C("AUTH CRAM-MD5"), Step(cram_md5(SASL_PASS), timeout=20), QUIT()],
          group="sasl"),
        S("auth_cram_md5_bad", "AUTH CRAM-MD5 with a wrong password",
          [EHLO, C("AUTH CRAM-MD5"), Step(cram_md5("wrong"), timeout=20), QUIT()],
          group="sasl"),
        S("auth_bad_base64", "invalid base64 as initial response and as continuation",
          [EHLO, C("AUTH PLAIN !!!notbase64", timeout=20), C("AUTH LOGIN"),
           C("%%%", timeout=20), C("AUTH PLAIN"), C("dXNlcg", timeout=20), QUIT()],
          group="sasl"),
        S("auth_cancel", "* cancels AUTH LOGIN and AUTH PLAIN",
          [EHLO, C("AUTH LOGIN"), C("*", timeout=20), C("AUTH PLAIN"), C("*", timeout=20),
           C("AUTH LOGIN"), C(b64(SASL_USER)), C("*", timeout=20), QUIT()], group="sasl"),
        S("auth_unknown_mech", "AUTH with an unknown mechanism and without one",
          [EHLO, C("AUTH FOO", timeout=20), C("AUTH", timeout=20),
           C("AUTH DIGEST-MD5", timeout=20), C("AUTH PLAIN a b", timeout=20), QUIT()],
          group="sasl"),
        S("auth_without_ehlo", "AUTH before HELO/EHLO",
          [C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), QUIT()], group="sasl"),
        S("auth_in_transaction", "AUTH after MAIL",
          [EHLO, MAIL, C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), QUIT()], group="sasl"),
        S("auth_repeated_failures", "four bad AUTH PLAIN in one connection (delays)",
          [EHLO] + [C("AUTH PLAIN " + PLAIN_BAD, timeout=30) for _ in range(4)]
          + [C("AUTH PLAIN " + PLAIN_GOOD, timeout=30), QUIT()], group="sasl"),
        S("auth_failures_then_quit", "three bad AUTH PLAIN, then QUIT",
          [EHLO] + [C("AUTH PLAIN " + PLAIN_BAD, timeout=30) for _ in range(3)] + [QUIT()],
          group="sasl"),
        S("auth_penalty_next_connection", "right after auth_failures_then_quit, same "
          "Dovecot: one bad then one good AUTH PLAIN (does the penalty carry over?)",
          [EHLO, C("AUTH PLAIN " + PLAIN_BAD, timeout=30),
           C("AUTH PLAIN " + PLAIN_GOOD, timeout=30), QUIT()],
          group="sasl", fresh_dovecot=False),
        S("auth_login_empty", "AUTH LOGIN answered with empty lines",
          [EHLO, C("AUTH LOGIN"), C(""), C("", timeout=20), QUIT()], group="sasl"),
        S("auth_star_outside", "a * line outside AUTH", [EHLO, C("*", close=True, timeout=5)],
          group="sasl"),
        S("auth_long_response", "AUTH PLAIN with a 3000-byte initial response",
          [EHLO, C("AUTH PLAIN " + b64("\0" + "u" * 1100 + "\0" + "p" * 1100), timeout=20),
           C("NOOP"), QUIT()], group="sasl"),
        S("sasl_relay", "AUTH then MAIL/RCPT/DATA (relay after authentication)",
          [EHLO, C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), MAIL, RCPT, C("DATA"), R(MSG),
           QUIT()], group="sasl"),
        S("sasl_starttls", "STARTTLS with SASL: EHLO before and after TLS, AUTH in TLS",
          [EHLO, C("STARTTLS"), TLS, EHLO, C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), QUIT()],
          group="sasl"),
        S("sasl_plain_login_ehlo", "EHLO with Dovecot auth_mechanisms = plain login",
          [EHLO, C("AUTH CRAM-MD5", timeout=20), QUIT()], group="sasl_plain_login"),
        S("sasl_dovecot_default", "Dovecot's disable_plaintext_auth=yes, AUTH PLAIN in the "
          "clear from 127.0.0.1",
          [EHLO, C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), QUIT()],
          group="sasl_dovecot_default"),
        S("sasl_dovecot_default_login", "Dovecot's disable_plaintext_auth=yes, AUTH LOGIN "
          "in the clear from 127.0.0.1",
          [EHLO, C("AUTH LOGIN"), C(b64(SASL_USER)), C(b64(SASL_PASS), timeout=20), QUIT()],
          group="sasl_dovecot_default"),
        S("sasl_tls_auth_only", "smtpd_tls_auth_only=yes: AUTH only after STARTTLS",
          [EHLO, C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), C("STARTTLS"), TLS, EHLO,
           C("AUTH PLAIN " + PLAIN_GOOD, timeout=20), QUIT()], group="sasl_tls_auth_only"),
    ]
    names = [s.name for s in sc]
    assert len(names) == len(set(names)), "duplicate scenario names"
    return sc


# ----------------------------------------------------------------- client
def count_replies(buf: bytes) -> int:
    """Complete SMTP replies in buf (a final line is 'ddd ', 'ddd' or junk)."""
    n = 0
    for line in buf.split(b"\n")[:-1]:
        line = line.rstrip(b"\r")
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b"-":
            continue
        n += 1
    return n


class Conn:
    def __init__(self) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (HOST, 25), timeout=10, source_address=(CLIENT, 0))
        self.closed = False
        self.last_io = time.monotonic()  # last byte sent or received
        self.chunks: list[list[float]] = []  # [ms, bytes] of each read of the last exchange
        self.t0 = self.last_io

    def read(self, t0: float, step: Step) -> tuple[bytes, float]:
        buf = b""
        t_last = None
        self.chunks = []
        self.t0 = t0
        deadline = t0 + step.timeout
        while not self.closed:
            if not step.close and count_replies(buf) >= step.expect:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            except (ConnectionResetError, ssl.SSLError, OSError):
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            buf += chunk
            t_last = self.last_io = time.monotonic()
            self.chunks.append([round((t_last - t0) * 1000, 2), len(chunk)])
        ms = ((t_last if t_last is not None else time.monotonic()) - t0) * 1000
        if not self.closed:
            buf += self.drain(GRACE_S)
        return buf, ms

    def drain(self, wait: float) -> bytes:
        """Whatever arrives within `wait` seconds (0: only what is there now)."""
        got = b""
        end = time.monotonic() + wait
        while not self.closed:
            remaining = end - time.monotonic()
            if remaining <= 0 and wait > 0:
                break
            self.sock.settimeout(max(remaining, 0.0))
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, socket.timeout, BlockingIOError, ssl.SSLWantReadError):
                break
            except (ConnectionResetError, ssl.SSLError, OSError):
                self.closed = True
                break
            finally:
                self.sock.settimeout(30)
            if not chunk:
                self.closed = True
                break
            got += chunk
            self.last_io = time.monotonic()
            if wait > 0:
                self.chunks.append([round((self.last_io - self.t0) * 1000, 2), len(chunk)])
        return got

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def run_scenario(sc: Scenario) -> list[dict]:
    exchanges: list[dict] = []
    t0 = time.monotonic()
    conn = Conn()
    t_connected = time.monotonic()
    try:
        if sc.greet:
            buf, ms = conn.read(t_connected, Step(b"", timeout=10))
            exchanges.append({"send": "", "recv": buf.decode("latin-1"),
                              "ms": round(ms, 2), "closed": conn.closed})
            if len(conn.chunks) > 1:
                exchanges[-1]["chunks"] = conn.chunks
        prev = exchanges[-1]["recv"].encode("latin-1") if exchanges else b""
        for step in sc.steps:
            if conn.closed:
                break
            conn.chunks = []
            late = conn.drain(0)
            if late and exchanges:
                exchanges[-1]["late"] = exchanges[-1].get("late", "") + late.decode("latin-1")
            if step.tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                t1 = time.monotonic()
                conn.sock.settimeout(step.timeout)
                try:
                    conn.sock = ctx.wrap_socket(conn.sock)
                    desc = f"{conn.sock.version()} {conn.sock.cipher()[0]}"
                except (ssl.SSLError, OSError) as e:
                    desc = f"handshake failed: {e}"
                    conn.closed = True
                exchanges.append({"send": "", "recv": "", "tls": desc,
                                  "ms": round((time.monotonic() - t1) * 1000, 2),
                                  "closed": conn.closed})
                prev = b""
                continue
            data = step.send(prev) if callable(step.send) else step.send
            error = None
            try:
                if data:
                    conn.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
                error = f"send failed: {e.__class__.__name__}"
                conn.closed = True
            # A pure wait (idle timeout, unsolicited reply) counts from the
            # last byte either side sent; a command from the end of our write.
            t1 = time.monotonic() if data else conn.last_io
            if data:
                conn.last_io = t1
            buf, ms = conn.read(t1, step) if error is None else (b"", 0.0)
            ex = {"send": data.decode("latin-1"), "recv": buf.decode("latin-1"),
                  "ms": round(ms, 2), "closed": conn.closed}
            if error:
                ex["error"] = error
            if len(conn.chunks) > 1:  # arrival of each piece: per-line delays show here
                ex["chunks"] = conn.chunks
            exchanges.append(ex)
            prev = buf
        if not conn.closed:
            late = conn.drain(0)
            if late and exchanges:
                exchanges[-1]["late"] = exchanges[-1].get("late", "") + late.decode("latin-1")
    finally:
        conn.close()
    print(f"  {sc.name}: {len(exchanges)} exchanges, {time.monotonic() - t0:.1f}s", flush=True)
    return exchanges


# ----------------------------------------------------------------- dovecot
class PrivateDovecot:
    """A Dovecot with no protocols, only an auth socket for Postfix, run in
    the foreground as our child (so it is reaped), config under DOVECOT_DIR."""

    def __init__(self, profile: dict) -> None:
        self.profile = profile
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        d = DOVECOT_DIR
        return f"""\
protocols =
base_dir = {d}/run
state_dir = {d}/state
instance_name = looper-record
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = {self.profile['disable_plaintext_auth']}
auth_mechanisms = {self.profile['auth_mechanisms']}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
"""

    def start(self, timeout: float = 20.0) -> None:
        shutil.rmtree(DOVECOT_DIR, ignore_errors=True)
        DOVECOT_DIR.mkdir(parents=True)
        DOVECOT_DIR.chmod(0o755)
        (DOVECOT_DIR / "passwd").write_text(f"{SASL_USER}:{{PLAIN}}{SASL_PASS}\n")
        (DOVECOT_DIR / "dovecot.conf").write_text(self.config())
        self.proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(DOVECOT_DIR / "dovecot.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while not AUTH_SOCKET.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (DOVECOT_DIR / "dovecot.log")
                text = log.read_text() if log.exists() else ""
                self.stop()
                raise RuntimeError(f"dovecot did not start: {text}")
            time.sleep(0.1)
        # run/ must be searchable by the postfix user (smtpd connects as it).
        (DOVECOT_DIR / "run").chmod(0o755)

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # children share the session; kill any straggler of it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + 5
        while self._group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == pgid:
                    with open(f"/proc/{entry}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            return True
            except (ProcessLookupError, OSError):
                continue
        return False


# ------------------------------------------------------------------- main
def become_subreaper() -> None:
    """Orphans (postfix's master daemonizes) become our children, so that we
    can reap them instead of leaving zombies with a non-reaping pid 1."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def postfix_version() -> str:
    return subprocess.run(["postconf", "-dh", "mail_version"], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def nmap(label: str, host: str = HOST, options: tuple[str, ...] = ()) -> str:
    """nmap's three views of host:25 (-sV, -sC, --version-trace), `options`
    before each; the dated lines dropped, so that the text is stable."""
    out = [f"==== {label}"]
    for views in (["-sV"], ["-sV", "-sC"], ["-sV", "--version-trace"]):
        argv = ["nmap", *options, *views, "-p", "25", host]
        out.append(f"$ {' '.join(argv)}")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL)
            text = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            text = "(timed out after 300 s)\n"
        # Drop the lines that only carry the date and run time.
        keep = [ln for ln in text.splitlines()
                if not ln.startswith(("Starting Nmap", "Nmap done"))]
        if "--version-trace" in argv:  # only which probe matched, and how
            keep = [ln for ln in keep if "match" in ln.lower() or ln.startswith(("PORT", "25/tcp"))]
        out.extend(keep)
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="scenario names to record")
    ap.add_argument("--no-nmap", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the Postfix logs in WORK")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (Postfix instance, 127.0.0.2 on lo)", file=sys.stderr)
        return 2
    pwd.getpwnam("postfix")
    become_subreaper()

    scenarios = build_scenarios()
    if args.only:
        unknown = set(args.only) - {s.name for s in scenarios}
        if unknown:
            print(f"unknown scenarios: {sorted(unknown)}", file=sys.stderr)
            return 2
        scenarios = [s for s in scenarios if s.name in args.only]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    WORK.chmod(0o755)
    version = postfix_version()
    nmap_text: list[str] = []

    order = list(GROUPS)
    by_group = {g: [s for s in scenarios if s.group == g] for g in order}
    nmap_groups = {"default": "real Postfix 3.7, no SASL", "sasl": "real Postfix 3.7, Dovecot SASL"}
    failed = 0
    for group in order:
        todo = by_group[group]
        want_nmap = not args.no_nmap and group in nmap_groups and not args.only
        if not todo and not want_nmap:
            continue
        extra, dovecot_profile = GROUPS[group]
        settings = {**BASE_CF, **extra}
        print(f"[{group}] {settings}", flush=True)
        pf = PrivatePostfix(WORK / group, myhostname=MYHOSTNAME, extra_main_cf=settings)
        (WORK / group).mkdir()
        (WORK / group).chmod(0o755)
        dovecot = PrivateDovecot(dovecot_profile) if dovecot_profile else None
        try:
            if dovecot:
                dovecot.start()
            pf.start()
            for sc in todo:
                if dovecot and sc.fresh_dovecot:
                    # Fresh Dovecot per SASL scenario: its auth penalty for
                    # 127.0.0.1 must not carry over between scenarios.
                    dovecot.stop()
                    dovecot.start()
                try:
                    exchanges = run_scenario(sc)
                except OSError as e:
                    print(f"  {sc.name}: FAILED {e}", flush=True)
                    failed += 1
                    continue
                doc = {"scenario": sc.name, "description": sc.description,
                       "postfix_version": version, "settings": settings}
                if dovecot_profile:
                    doc["dovecot"] = {"version": "2.3.19.1", **dovecot_profile,
                                      "auth_failure_delay": "2 secs (default)"}
                doc["exchanges"] = exchanges
                path = OUT_DIR / f"{sc.name}.json"
                path.write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n")
            if want_nmap:
                print(f"  nmap ({group})", flush=True)
                nmap_text.append(nmap(nmap_groups[group]))
        finally:
            pf.stop()
            if dovecot:
                dovecot.stop()
            reap()
    if nmap_text:
        (OUT_DIR / "nmap.txt").write_text(
            f"# nmap against the real Postfix {version} on {HOST}:25 "
            f"(myhostname {MYHOSTNAME}); tests/record_postfix.py\n\n" + "\n".join(nmap_text))
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    reap()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
