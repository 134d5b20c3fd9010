"""The IMAP machine alone: Dovecot's exact bytes, and hypothesis sweeps.

The expected replies below were taken from dovecot 2.3.19.1 (Debian's
package), run privately on 127.0.0.20 with a passwd-file user, a Maildir
holding tests/imap_bait.py's two messages, disable_plaintext_auth = no,
and talked to from 127.0.0.21 (tests/data/imap/ holds two harder
messages and Dovecot's answers about them). Dovecot's timings "(0.001 +
0.000 secs)" vary on the real server; RECENT is the machine's own (a bait
mailbox has been read before: only a session's own appends are recent).
Measured on it too: the login delays (2 s, then 6 s), imap-login's
limits (1032-octet lines, 8178-octet literals, three bad commands) and its
180 s before "* BYE Disconnected for inactivity.", and nmap -sV's
"Dovecot imapd" for both the trap's ports.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from looper.proto.actions import Close, CloseReason, Send, StartTLS, Store
from looper.proto.imap import (
    COMMANDS, MAX_APPEND_BYTES, MAX_HELD_BYTES, MAX_LINE_BYTES, ImapServer, ImapSettings, Mode, State,
)
from looper.proto.login import LoginPolicy
from looper.proto.mailbox import BaitFolder, BaitMessage, BaitStore
from tests.imap_bait import MULTIPART, PLAIN, STORE

POLICY = LoginPolicy(frozenset({("alice", "secret")}))
PRE_CAPS = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN"
POST_CAPS = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS"
    " THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED"
    " I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE"
    " SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
)
GREETING = f"* OK [CAPABILITY {PRE_CAPS}] Dovecot (Debian) ready.\r\n".encode()


class Env:
    def now_s(self) -> float:
        return 1_796_272_176.0

    def cram_challenge(self) -> str:
        return "<1234.1796272176@mx>"

    def random_bytes(self, count: int) -> bytes:
        return bytes(range(count))


def machine(**kw) -> ImapServer:
    return ImapServer(ImapSettings(policy=POLICY, **kw.pop("settings", {})), STORE, Env(), ip="192.0.2.1", **kw)


def drain(m: ImapServer) -> bytes:
    out = b""
    for action in m.actions():
        if isinstance(action, Send):
            out += action.data
        elif isinstance(action, Store):
            m.stored("/logs/messages/x.eml")
            out += drain(m)
        elif isinstance(action, StartTLS):
            out += b"<starttls>"
        elif isinstance(action, Close):
            out += b"<close>"
    return out


def talk(m: ImapServer, *lines: str) -> bytes:
    out = b""
    for line in lines:
        m.receive_data(line.encode() + b"\r\n")
        out += drain(m)
    return out


def logged_in() -> ImapServer:
    m = machine()
    drain(m)
    assert talk(m, "c LOGIN alice secret") == f"c OK [CAPABILITY {POST_CAPS}] Logged in\r\n".encode()
    return m


def test_the_sizes_are_dovecots():
    assert (len(PLAIN), len(MULTIPART)) == (303, 438)  # RFC822.SIZE as Dovecot said


def test_prelogin_as_dovecot_answers():
    m = machine()
    assert drain(m) == GREETING
    assert talk(m, "a CAPABILITY") == (
        f"* CAPABILITY {PRE_CAPS}\r\n"
        "a OK Pre-login capabilities listed, post-login capabilities have more.\r\n"
    ).encode()
    assert talk(m, 'a ID ("name" "x")') == b'* ID ("name" "Dovecot")\r\na OK ID completed.\r\n'
    assert talk(m, "a NOOP") == b"a OK NOOP completed.\r\n"
    assert talk(m, "a ENABLE X") == b"* ENABLED\r\na OK ENABLE ignored in non-authenticated state.\r\n"
    assert talk(m, "a AUTHENTICATE FOO") == b"a NO [ALERT] Unsupported authentication mechanism.\r\n"
    assert talk(m, "a AUTHENTICATE PLAIN", "*") == b"+ \r\na BAD Authentication aborted by client.\r\n"
    assert talk(m, "a AUTHENTICATE PLAIN", "!!!notbase64") == b"+ \r\na NO [ALERT] Invalid base64 in response\r\n"
    assert talk(m, "a AUTHENTICATE PLAIN YWJj", "b AUTHENTICATE PLAIN =") == (
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\nb NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    )
    assert talk(m, "c AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA== extra") == b"c BAD Invalid base64 data in initial response\r\n"
    assert talk(m, "b LOGIN alice wrong") == b"b NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert talk(m, "a LOGOUT") == b"* BYE Logging out\r\na OK Logout completed.\r\n<close>"


def test_a_failed_login_waits_as_dovecot_does():
    m = machine()
    drain(m)
    m.receive_data(b"b LOGIN alice wrong\r\n")
    (send,) = m.actions()
    assert send.delay_s == 2.0
    m.receive_data(b"c LOGIN alice wrong\r\n")
    (send,) = m.actions()
    assert send.delay_s == 6.0
    assert [e.eventid for e in m.events()] == ["looper.command.input", "looper.login.failed"] * 2


def test_prelogin_bad_commands_and_their_limit():
    m = machine()
    drain(m)
    assert talk(m, "") == b"* BAD Error in IMAP command received by server.\r\n"
    assert talk(m, "x") == b"x BAD Error in IMAP command received by server.\r\n"
    assert talk(m, "a FOO") == b"* BYE Too many invalid IMAP commands.\r\n<close>"
    m = machine()
    drain(m)
    assert talk(m, "a FOO", "b SELECT INBOX", "a LOGIN alice") == (
        b"a BAD Error in IMAP command received by server.\r\n"
        b"b BAD Error in IMAP command received by server.\r\n"
        b"* BYE Too many invalid IMAP commands.\r\n<close>"
    )


def test_literals_sync_and_nonsync():
    m = machine()
    drain(m)
    assert talk(m, "a LOGIN {5}", "alice {6}", "secret") == (
        f"+ OK\r\n+ OK\r\na OK [CAPABILITY {POST_CAPS}] Logged in\r\n".encode()
    )
    m = machine()
    drain(m)
    assert talk(m, 'b LOGIN "alice" {6+}\r\nsecret').endswith(b"] Logged in\r\n")


def test_plaintext_login_disabled():
    m = machine(settings={"plaintext_login": False})
    assert b"STARTTLS LOGINDISABLED]" in drain(m)
    assert talk(m, "a LOGIN alice secret") == (
        b"* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, but your client did it anyway."
        b" If anyone was listening, the password was exposed.\r\n"
        b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
    )
    assert talk(m, "c AUTHENTICATE PLAIN") == b"c NO [PRIVACYREQUIRED] Plaintext authentication disabled.\r\n"
    assert talk(m, "b STARTTLS") == b"b OK Begin TLS negotiation now.\r\n<starttls>"
    m.tls_started("TLSv1.3", "x")
    assert talk(m, "c CAPABILITY").startswith(
        b"* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN\r\n"
    )
    assert talk(m, "d LOGIN alice secret").endswith(b"Logged in\r\n")


def test_authenticate_login_and_cram_md5_when_configured():
    import base64
    from looper.proto.sasl import cram_md5_digest

    m = machine(settings={"auth_mechanisms": ("PLAIN", "LOGIN", "CRAM-MD5")})
    assert drain(m).endswith(b"AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5] Dovecot (Debian) ready.\r\n")
    assert talk(m, "a AUTHENTICATE LOGIN", "YWxpY2U=") == b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"
    assert talk(m, "c2VjcmV0").endswith(b"] Logged in\r\n")
    m = machine(settings={"auth_mechanisms": ("CRAM-MD5",)})
    drain(m)
    challenge = "<1234.1796272176@mx>"
    assert talk(m, "a AUTHENTICATE CRAM-MD5") == b"+ " + base64.b64encode(challenge.encode()) + b"\r\n"
    answer = base64.b64encode(f"alice {cram_md5_digest('secret', challenge)}".encode()).decode()
    assert talk(m, answer).endswith(b"] Logged in\r\n")


def test_authenticate_digest_md5_as_dovecot_words_it():
    import base64

    from tests.test_sasl import digest_client

    m = machine(settings={"auth_mechanisms": ("PLAIN", "DIGEST-MD5")})
    assert drain(m).endswith(b"AUTH=PLAIN AUTH=DIGEST-MD5] Dovecot (Debian) ready.\r\n")
    nonce = base64.b64encode(bytes(range(16))).decode()
    challenge = f'realm="",nonce="{nonce}",qop="auth",charset="utf-8",algorithm="md5-sess"'
    assert talk(m, "a AUTHENTICATE DIGEST-MD5") == b"+ " + base64.b64encode(challenge.encode()) + b"\r\n"

    def answer(password: str) -> str:
        digest = digest_client(password, username="alice", realm="", nonce=nonce, cnonce="xyz", uri="imap/mx")
        return base64.b64encode(f'username="alice",realm="",nonce="{nonce}",cnonce="xyz",nc=00000001,qop=auth,'
                                f'digest-uri="imap/mx",response={digest}'.encode()).decode()

    rspauth = digest_client("secret", username="alice", realm="", nonce=nonce, cnonce="xyz", uri="imap/mx", method="")
    assert talk(m, answer("secret")) == b"+ " + base64.b64encode(f"rspauth={rspauth}".encode()) + b"\r\n"
    assert m.state is State.NOT_AUTHENTICATED
    assert talk(m, "").endswith(b"] Logged in\r\n")
    (success,) = [e.fields for e in m.events() if e.eventid == "looper.login.success"]
    assert success["mechanism"] == "DIGEST-MD5" and success["digest_uri"] == "imap/mx" and "password" not in success
    m = machine(settings={"auth_mechanisms": ("DIGEST-MD5",)})
    drain(m)
    talk(m, "a AUTHENTICATE DIGEST-MD5")
    assert talk(m, answer("wrong")) == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert m.auth_failures == 1


def test_a_read_is_logged_once_per_message_and_kind():
    m = selected()
    m.events()
    talk(m, "a FETCH 1:* ENVELOPE", "b FETCH 1:* ENVELOPE", "c FETCH 1 BODY.PEEK[]")
    reads = [(e.fields["uid"], e.fields["what"]) for e in m.events() if e.eventid == "looper.bait.read"]
    assert reads == [(1, "envelope"), (2, "envelope"), (1, "body")]


def test_authenticate_plain_with_sasl_ir():
    m = machine()
    drain(m)
    assert talk(m, "a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==").endswith(b"] Logged in\r\n")
    assert m.state is State.AUTHENTICATED


def test_after_login_as_dovecot_answers():
    m = logged_in()
    assert talk(m, "b FETCH 1 FLAGS") == b"b BAD No mailbox selected (0.001 + 0.000 secs).\r\n"
    assert talk(m, "e NAMESPACE") == b'* NAMESPACE (("" "/")) NIL NIL\r\ne OK Namespace completed (0.001 + 0.000 secs).\r\n'
    assert talk(m, 'f LIST "" "*"') == (
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n'
        b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts\r\n'
        b'* LIST (\\HasNoChildren \\Junk) "/" Junk\r\n'
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b"f OK List completed (0.001 + 0.000 secs).\r\n"
    )
    assert talk(m, 'b LIST "" ""') == b'* LIST (\\Noselect) "/" ""\r\nb OK List completed (0.001 + 0.000 secs).\r\n'
    assert talk(m, "", "b", "b SELECT", "b STATUS INBOX (FOO)", "b STATUS INBOX") == (
        b"* BAD Error in IMAP tag: Invalid tag (0.001 + 0.000 secs).\r\n"
        b"b BAD Error in IMAP command: Invalid command name (0.001 + 0.000 secs).\r\n"
        b"b BAD Error in IMAP command SELECT: Invalid arguments (0.001 + 0.000 secs).\r\n"
        b"b BAD Error in IMAP command STATUS: Invalid status item FOO (0.001 + 0.000 secs).\r\n"
        b"b BAD Error in IMAP command STATUS: Missing arguments (0.001 + 0.000 secs).\r\n"
    )
    assert talk(m, "b STATUS Nope (MESSAGES)") == b"b NO Mailbox doesn't exist: Nope (0.001 + 0.000 secs).\r\n"
    assert talk(m, "h STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)") == (
        b"* STATUS INBOX (MESSAGES 2 RECENT 0 UIDNEXT 3 UIDVALIDITY 1796272220 UNSEEN 1)\r\n"
        b"h OK Status completed (0.001 + 0.000 + 0.000 secs).\r\n"
    )
    assert talk(m, "b LOGIN alice secret") == b"b BAD Error in IMAP command LOGIN: Unknown command (0.001 + 0.000 secs).\r\n"
    assert talk(m, "i EXAMINE INBOX") == (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"
        b"* 2 EXISTS\r\n* 0 RECENT\r\n* OK [UNSEEN 2] First unseen.\r\n"
        b"* OK [UIDVALIDITY 1796272220] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
        b"i OK [READ-ONLY] Examine completed (0.001 + 0.000 secs).\r\n"
    )
    assert talk(m, "i SELECT INBOX") == (
        b"* OK [CLOSED] Previous mailbox closed.\r\n"
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n"
        b"* 2 EXISTS\r\n* 0 RECENT\r\n* OK [UNSEEN 2] First unseen.\r\n"
        b"* OK [UIDVALIDITY 1796272220] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
        b"i OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n"
    )


ENVELOPE_1 = (
    b'("Mon, 1 Dec 2026 10:00:00 +0000" "VPN config" (("Bob Smith" NIL "bob" "example.com"))'
    b' (("Bob Smith" NIL "bob" "example.com")) (("Bob Smith" NIL "bob" "example.com"))'
    b' ((NIL NIL "alice" "example.com")("Carol" NIL "carol" "example.com")) ((NIL NIL "dave" "example.com"))'
    b' NIL NIL "<1@example.com>")'
)
OK_FETCH = b"c OK Fetch completed (0.001 + 0.000 secs).\r\n"


def selected() -> ImapServer:
    m = logged_in()
    talk(m, "i SELECT INBOX")
    return m


@pytest.mark.parametrize(("command", "reply"), [
    ("c FETCH 1 ALL", b'* 1 FETCH (FLAGS (\\Seen) INTERNALDATE "03-Dec-2026 04:29:36 +0000" RFC822.SIZE 303 ENVELOPE ' + ENVELOPE_1 + b")\r\n"),
    ("c FETCH 1 FAST", b'* 1 FETCH (FLAGS (\\Seen) INTERNALDATE "03-Dec-2026 04:29:36 +0000" RFC822.SIZE 303)\r\n'),
    ("c FETCH 1 FULL", b'* 1 FETCH (FLAGS (\\Seen) INTERNALDATE "03-Dec-2026 04:29:36 +0000" RFC822.SIZE 303 ENVELOPE '
     + ENVELOPE_1 + b' BODY ("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 44 2))\r\n'),
    ("c FETCH 2 (BODYSTRUCTURE BODY)",
     b'* 2 FETCH (BODYSTRUCTURE (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 0 NIL NIL NIL NIL)'
     b'("application" "pdf" ("name" "inv.pdf") NIL NIL "base64" 12 NIL ("attachment" ("filename" "inv.pdf")) NIL NIL)'
     b' "mixed" ("boundary" "XYZ") NIL NIL NIL) BODY (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 0)'
     b'("application" "pdf" ("name" "inv.pdf") NIL NIL "base64" 12) "mixed"))\r\n'),
    ("c FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject From)] BODY.PEEK[TEXT]<0.10>)",
     b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM)] {58}\r\nFrom: Bob Smith <bob@example.com>\r\n"
     b"Subject: VPN config\r\n\r\n BODY[TEXT]<0> {10}\r\nHello Alic)\r\n"),
    ("c FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[1.MIME] BODY.PEEK[HEADER.FIELDS.NOT (Subject From To Cc Date Message-ID)])",
     b"* 2 FETCH (BODY[1] {13}\r\nSee attached. BODY[2.MIME] {137}\r\n"
     b'Content-Type: application/pdf; name="inv.pdf"\r\nContent-Disposition: attachment; filename="inv.pdf"\r\n'
     b"Content-Transfer-Encoding: base64\r\n\r\n BODY[1.MIME] {46}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
     b" BODY[HEADER.FIELDS.NOT (SUBJECT FROM TO CC DATE MESSAGE-ID)] {68}\r\nMIME-Version: 1.0\r\n"
     b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n)\r\n'),
    ("c FETCH 1 (BODY[9])", b"* 1 FETCH (BODY[9] {0}\r\n)\r\n"),
    ("c FETCH 1 (BODY[1] BODY[1.1] BODY[2])",
     b"* 1 FETCH (BODY[1] {44}\r\nHello Alice,\r\nthe VPN password is hunter2.\r\n BODY[1.1] {0}\r\n BODY[2] {0}\r\n)\r\n"),
    ("c FETCH 2 (BODY[2]<5.100>)", b"* 2 FETCH (FLAGS (\\Seen) BODY[2]<5> {7}\r\ni0xLjQK)\r\n"),
    ("c UID FETCH 2 (FLAGS)", b"* 2 FETCH (UID 2 FLAGS ())\r\n"),
    ("c FETCH 1 (RFC822.TEXT)", b"* 1 FETCH (RFC822.TEXT {44}\r\nHello Alice,\r\nthe VPN password is hunter2.\r\n)\r\n"),
])
def test_fetch_as_dovecot_answers(command, reply):
    assert talk(selected(), command) == reply + OK_FETCH


@pytest.mark.parametrize(("command", "reply"), [
    ("c FETCH 3 (FLAGS)", b"c BAD Error in IMAP command FETCH: Invalid messageset (0.001 + 0.000 secs).\r\n"),
    ("c FETCH x FLAGS", b"c BAD Error in IMAP command FETCH: Invalid messageset (0.001 + 0.000 secs).\r\n"),
    ("c FETCH 1 (FOO)", b"c BAD Error in IMAP command FETCH: Unknown parameter: FOO (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH ALL", b"* SEARCH 1 2\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH UNSEEN", b"* SEARCH 2\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH FROM bob", b"* SEARCH 1\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("d UID SEARCH TEXT hunter2", b"* SEARCH 1\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH SINCE 1-Jan-2020", b"* SEARCH 1 2\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH FOO", b"d BAD Error in IMAP command SEARCH: Unknown argument FOO (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH OR SEEN LARGER 400", b"* SEARCH 1 2\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH NOT 1", b"* SEARCH 2\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH 9", b"* SEARCH\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("d SEARCH", b"d BAD Error in IMAP command SEARCH: Missing search parameters (0.001 + 0.000 secs).\r\n"),
    ("d UID FETCH 99 (FLAGS)", b"d OK Fetch completed (0.001 + 0.000 secs).\r\n"),
    ("d FETCH 1 BODY[HEADER.FIELDS ()]", b"d BAD Error in IMAP command FETCH: Invalid BODY[..] section (0.001 + 0.000 secs).\r\n"),
    ("d FETCH 1 (BODY[MIME])", b"d BAD Error in IMAP command FETCH: Invalid BODY[..] section (0.001 + 0.000 secs).\r\n"),
    ("d STORE 1 +FLAGS (\\Foo)", b"d BAD Error in IMAP command STORE: Invalid system flag \\FOO (0.001 + 0.000 secs).\r\n"),
    ("d STORE 1 +FLAGS (foo)", b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft foo)\r\n"
     b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft foo \\*)] Flags permitted.\r\n"
     b"* 1 FETCH (FLAGS (\\Seen foo))\r\nd OK Store completed (0.001 + 0.000 secs).\r\n"),
    ("e UID EXPUNGE 1", b"e OK Expunge completed (0.001 + 0.000 secs).\r\n"),
    ("c UID FOO 1", b"c BAD Error in IMAP command UID FOO: Unknown command (0.001 + 0.000 secs).\r\n"),
    ("c FETCH 1 (ENVELOPE", b"c BAD Error in IMAP command FETCH: Missing ')' (0.001 + 0.000 secs).\r\n"),
    ("c FETCH 1 BODY[TEXT", b"c BAD Error in IMAP command FETCH: Invalid BODY[..] parameter: Missing ']' (0.001 + 0.000 secs).\r\n"),
    ('c LIST "" "%" RETURN (SPECIAL-USE)', b'* LIST (\\Archive) "/" Archive\r\n* LIST (\\Sent) "/" Sent\r\n'
     b'* LIST (\\Drafts) "/" Drafts\r\n* LIST (\\Junk) "/" Junk\r\n* LIST () "/" INBOX\r\nc OK List completed (0.001 + 0.000 secs).\r\n'),
    ('c LIST (SPECIAL-USE) "" "*"', b'* LIST (\\Archive) "/" Archive\r\n* LIST (\\Sent) "/" Sent\r\n'
     b'* LIST (\\Drafts) "/" Drafts\r\n* LIST (\\Junk) "/" Junk\r\nc OK List completed (0.001 + 0.000 secs).\r\n'),
    ('b LIST "" "*" RETURN (SPECIAL-USE SUBSCRIBED)', b'* LIST (\\Subscribed \\Archive) "/" Archive\r\n'
     b'* LIST (\\Subscribed \\Sent) "/" Sent\r\n* LIST (\\Subscribed \\Drafts) "/" Drafts\r\n'
     b'* LIST (\\Subscribed \\Junk) "/" Junk\r\n* LIST (\\Subscribed) "/" INBOX\r\nb OK List completed (0.001 + 0.000 secs).\r\n'),
    ('b LIST (SUBSCRIBED) "" "S*" RETURN (CHILDREN SPECIAL-USE)',
     b'* LIST (\\Subscribed \\HasNoChildren \\Sent) "/" Sent\r\nb OK List completed (0.001 + 0.000 secs).\r\n'),
    ('b LIST "" inbox', b'* LIST (\\HasNoChildren) "/" INBOX\r\nb OK List completed (0.001 + 0.000 secs).\r\n'),
    ('b LIST "" "Se%"', b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\nb OK List completed (0.001 + 0.000 secs).\r\n'),
    ("b STATUS Sent (MESSAGES UIDNEXT UNSEEN SIZE)", b"* STATUS Sent (MESSAGES 0 UIDNEXT 1 UNSEEN 0 SIZE 0)\r\n"
     b"b OK Status completed (0.001 + 0.000 + 0.000 secs).\r\n"),
    ("b STARTTLS", b"b BAD Error in IMAP command STARTTLS: Unknown command (0.001 + 0.000 secs).\r\n"),
    ("b AUTHENTICATE PLAIN", b"b BAD Error in IMAP command AUTHENTICATE: Unknown command (0.001 + 0.000 secs).\r\n"),
    ("c DELETE Nope", b"c NO [NONEXISTENT] Mailbox doesn't exist: Nope (0.001 + 0.000 secs).\r\n"),
    ("c CREATE INBOX", b"c NO [ALREADYEXISTS] Mailbox already exists (0.001 + 0.000 secs).\r\n"),
    ("c FETCH 2 (BODY[HEADER.FIELDS (SUBJECT)] UID)",
     b"* 2 FETCH (UID 2 FLAGS (\\Seen) BODY[HEADER.FIELDS (SUBJECT)] {20}\r\nSubject: Invoice\r\n\r\n)\r\n"
     b"c OK Fetch completed (0.001 + 0.000 secs).\r\n"),
    ("e SEARCH SINCE foo", b"e BAD Error in IMAP command SEARCH: Invalid search date parameter (0.001 + 0.000 secs).\r\n"),
    ("e SEARCH CHARSET KOI8 SUBJECT vpn", b"* SEARCH 1\r\ne OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("e SEARCH HEADER Message-ID 1@example", b"* SEARCH 1\r\ne OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("e SEARCH SENTSINCE 2-Dec-2026", b"* SEARCH 2\r\ne OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("e SEARCH ON 3-Dec-2026", b"* SEARCH 1 2\r\ne OK Search completed (0.001 + 0.000 secs).\r\n"),
    ("e UID MOVE 5 Junk", b"e OK No messages found (0.001 + 0.000 secs).\r\n"),
    ("e UID STORE 1:2 +FLAGS (\\Answered)", b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Seen))\r\n"
     b"* 2 FETCH (UID 2 FLAGS (\\Answered))\r\ne OK Store completed (0.001 + 0.000 secs).\r\n"),
    ("d CHECK", b"d OK Check completed (0.001 + 0.000 secs).\r\n"),
    ("d STORE 1 +FLAGS (\\Flagged)", b"* 1 FETCH (FLAGS (\\Flagged \\Seen))\r\nd OK Store completed (0.001 + 0.000 secs).\r\n"),
    ("d COPY 1 Nope", b"d NO [TRYCREATE] Mailbox doesn't exist: Nope (0.001 + 0.000 secs).\r\n"),
    ("d MOVE 2 Archive", b"* OK [COPYUID 1796272217 2 1] Moved UIDs.\r\n* 2 EXPUNGE\r\nd OK Move completed (0.001 + 0.000 + 0.000 secs).\r\n"),
    ("e UNSELECT", b"e OK Unselect completed (0.001 + 0.000 secs).\r\n"),
    ("f CLOSE", b"f OK Close completed (0.001 + 0.000 secs).\r\n"),
])
def test_selected_commands_as_dovecot_answers(command, reply):
    assert talk(selected(), command) == reply


def test_append_to_the_selected_folder_as_dovecot_answers():
    m = logged_in()
    talk(m, "b SELECT Drafts")
    message = "Subject: x\r\nFrom: a@b.c\r\n\r\nhi\r\n"
    assert talk(m, f'd APPEND Drafts (\\Seen) "01-Dec-2026 10:00:00 +0100" {{{len(message)}}}', message) == (
        b"+ OK\r\n* 1 EXISTS\r\n* 1 RECENT\r\nd OK [APPENDUID 1796272219 1] Append completed (0.001 + 0.000 + 0.000 secs).\r\n"
    )
    assert talk(m, "e FETCH * (UID FLAGS INTERNALDATE)") == (
        b'* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) INTERNALDATE "01-Dec-2026 09:00:00 +0000")\r\n'
        b"e OK Fetch completed (0.001 + 0.000 secs).\r\n"
    )


def test_expunge_announces_from_the_last():
    m = selected()
    assert talk(m, "e STORE 1:2 +FLAGS.SILENT (\\Deleted)", "e EXPUNGE") == (
        b"e OK Store completed (0.001 + 0.000 secs).\r\n* 2 EXPUNGE\r\n* 1 EXPUNGE\r\n"
        b"e OK Expunge completed (0.001 + 0.000 secs).\r\n"
    )


def test_create_rename_delete_live_in_the_session():
    m = logged_in()
    assert talk(m, "c CREATE Foo", "c CREATE Foo", 'c LIST "" "*"', "c RENAME Foo Bar", "c DELETE Bar") == (
        b"c OK Create completed (0.001 + 0.000 + 0.000 secs).\r\n"
        b"c NO [ALREADYEXISTS] Mailbox already exists (0.001 + 0.000 secs).\r\n"
        b'* LIST (\\HasNoChildren) "/" Foo\r\n'
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n'
        b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts\r\n'
        b'* LIST (\\HasNoChildren \\Junk) "/" Junk\r\n'
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b"c OK List completed (0.001 + 0.000 secs).\r\n"
        b"c OK Rename completed (0.001 + 0.000 secs).\r\n"
        b"c OK Delete completed (0.001 + 0.000 + 0.000 secs).\r\n"
    )
    changes = [(e.fields["change"], e.fields["folder"]) for e in m.events() if e.eventid == "looper.imap.change"]
    assert changes == [("create", "Foo"), ("rename", "Foo"), ("delete", "Bar")]


def test_idle_store_expunge_append():
    m = selected()
    assert talk(m, "c IDLE", "DONE") == b"+ idling\r\nc OK Idle completed (0.001 + 0.000 + 0.000 secs).\r\n"
    assert talk(m, "c IDLE", "FOO") == b"+ idling\r\nc BAD Expected DONE (0.001 + 0.000 + 0.000 secs).\r\n"
    assert talk(m, "d STORE 1 FLAGS.SILENT (\\Seen \\Deleted)") == b"d OK Store completed (0.001 + 0.000 secs).\r\n"
    assert talk(m, "d EXPUNGE") == b"* 1 EXPUNGE\r\nd OK Expunge completed (0.001 + 0.000 secs).\r\n"
    assert talk(m, "f APPEND Drafts (\\Draft) {12}", "Subject: x\r\n") == (
        b"+ OK\r\nf OK [APPENDUID 1796272219 1] Append completed (0.001 + 0.000 + 0.000 secs).\r\n"
    )
    assert talk(m, "g APPEND Nope {1+}\r\nx") == b"g NO [TRYCREATE] Mailbox doesn't exist: Nope (0.001 + 0.000 secs).\r\n"
    events = {e.eventid for e in m.events()}
    assert {"looper.imap.change", "looper.imap.append"} <= events
    # a new login sees the store fresh
    fresh = selected()
    assert talk(fresh, "d SEARCH ALL") == b"* SEARCH 1 2\r\nd OK Search completed (0.001 + 0.000 secs).\r\n"


def test_limits():
    # dovecot 2.3.19.1's imap-login: a line of 1032 octets and a literal of 8178 pass, one more does not
    m = machine()
    drain(m)
    assert talk(m, "a NOOP " + "x" * 1025) == b"a OK NOOP completed.\r\n"
    assert talk(m, "a NOOP " + "x" * 1026) == b"* BYE Input buffer full, aborting\r\n<close>"
    m = machine()
    drain(m)
    assert talk(m, "a LOGIN {8178}") == b"+ OK\r\n"
    m = machine()
    drain(m)
    assert talk(m, "a LOGIN {8179}") == b"* BYE Literal size too large\r\n<close>"
    m = machine()
    drain(m)
    assert talk(m, "a APPEND INBOX {8179+}") == b"* BYE Literal size too large\r\n<close>"
    # imap, after the login: BAD, and the session goes on
    m = selected()
    assert talk(m, "b SELECT " + "x" * MAX_LINE_BYTES, "c NOOP") == (
        b"b BAD Error in IMAP command SELECT: Too long argument (0.001 + 0.000 secs).\r\n"
        b"c OK NOOP completed (0.001 + 0.000 secs).\r\n"
    )
    # a command that reads no arguments never finds its line long (imap_limits_after_login recording)
    assert talk(m, "d NOOP " + "x" * 5 * MAX_LINE_BYTES) == b"d OK NOOP completed (0.001 + 0.000 secs).\r\n"
    assert talk(m, "b SELECT {65000}") == b"+ OK\r\n"
    # Dovecot asks for an APPEND of any size (imap_append_huge_literal
    # recording: 4 GB); looper skips what is over its limit, keeps none of it, and refuses it
    m = selected()
    assert talk(m, "a APPEND INBOX {20000000}") == b"+ OK\r\n"
    for _ in range(20):
        m.receive_data(b"x" * 1_000_000)
    assert talk(m, "") == (
        b"a NO [TOOBIG] Mail size is larger than the maximum size allowed by server configuration (0.001 + 0.000 secs).\r\n"
    )
    assert talk(m, "b NOOP") == b"b OK NOOP completed (0.001 + 0.000 secs).\r\n"
    # the mailbox is opened before the message is asked for (imap_append recording)
    assert talk(m, "c APPEND Nope (\\Seen) {5}") == b"c NO [TRYCREATE] Mailbox doesn't exist: Nope (0.001 + 0.000 secs).\r\n"
    m = selected()
    out = b""
    for _ in range(20):
        out += talk(m, "x FOO")
    assert out.endswith(b"* BYE Too many invalid IMAP commands.\r\n<close>")


def test_timeouts():
    m = machine()
    drain(m)
    assert m.idle_timeout_s == 180.0
    m.timed_out()  # 180 s, as dovecot 2.3.19.1 waited for a login
    assert drain(m) == b"* BYE Disconnected for inactivity.\r\n<close>"
    m = logged_in()
    assert m.idle_timeout_s == 1800.0
    assert talk(m, "i IDLE") == b"+ idling\r\n" and m.idle_timeout_s == 120.0
    m.timed_out()
    assert drain(m) == b"* OK Still here\r\n"
    assert talk(m, "DONE").startswith(b"i OK Idle completed") and m.idle_timeout_s == 1800.0
    m.timed_out()
    assert drain(m) == b"* BYE Disconnected for inactivity.\r\n<close>"


def test_shutdown():
    m = machine()
    drain(m)
    m.shutting_down(CloseReason.SHUTDOWN)  # imap-login said nothing in 20 s: we just close
    assert drain(m) == b"<close>"
    m = logged_in()
    m.shutting_down(CloseReason.SHUTDOWN)
    assert drain(m) == b"* BYE Server shutting down.\r\n<close>"


SCRIPT = [
    b"a CAPABILITY\r\n", b"b LOGIN alice secret\r\n", b'c LIST "" "*"\r\n', b"d SELECT INBOX\r\n",
    b"e FETCH 1:* (FLAGS BODY.PEEK[] BODYSTRUCTURE)\r\n", b"f SEARCH OR FROM bob SUBJECT invoice\r\n",
    b"g STORE 2 +FLAGS (\\Deleted)\r\n", b"h APPEND Sent {5+}\r\nhello\r\n", b"i IDLE\r\nDONE\r\n",
    b"j UID FETCH 1:* (ENVELOPE)\r\n", b"k EXPUNGE\r\n", b"l LOGOUT\r\n",
]
JUNK = st.sampled_from([b"\r\n", b"(", b")", b"{3}\r\n", b"{2+}\r\n", b'"', b"\\", b"*", b" ", b"[", b"]", b"\xff", b"FETCH ",
                        b"x UID ", b"1:*", b"BODY[", b"SEARCH NOT OR ", b"AUTHENTICATE PLAIN\r\n", b"IDLE\r\n"])


def run(chunks: list[bytes]) -> tuple[bytes, list[str]]:
    m = machine()
    out = drain(m)
    for chunk in chunks:
        if not chunk:
            continue  # b"" is the end of the stream
        m.receive_data(chunk)
        out += drain(m)
        assert len(m._held) <= MAX_HELD_BYTES and m._reader.buffered <= MAX_LINE_BYTES
        assert len(m._pending.data) <= 65536 + m.settings.max_append_bytes
    return out, [e.eventid for e in m.events()]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(SCRIPT), JUNK, st.binary(max_size=30)), max_size=30), st.lists(st.integers(0, 10_000), max_size=20))
def test_random_streams_never_raise_and_any_split_answers_the_same(parts, cuts):
    data = b"".join(parts)
    whole = run([data])
    assert run(split(data, cuts)) == whole
    assert run([bytes([b]) for b in data[:400]])[0] == run([data[:400]])[0]


def test_the_whole_script_a_byte_at_a_time():
    data = b"".join(SCRIPT)
    out, events = run([bytes([b]) for b in data])
    assert out == run([data])[0]
    assert re.search(rb"l OK Logout completed", out) and "looper.bait.read" in events


DATA = Path(__file__).parent / "data" / "imap"


def test_envelope_bodystructure_and_sections_of_hard_messages_as_dovecot_forms_them():
    """tests/data/imap/: two messages (encoded words, a folded Subject,
    groups, an address without a domain, a quoted name with quotes,
    multipart/alternative in multipart/mixed, message/rfc822, languages,
    dispositions with parameters; and one with no MIME header at all),
    and what dovecot 2.3.19.1 answered to these fetches (UIDs 5 and 6)."""
    when = datetime(2026, 12, 3, 4, 29, 36, tzinfo=timezone.utc)
    messages = tuple(
        BaitMessage(5 + i, (DATA / name).read_bytes(), frozenset({"\\Seen"}), when)
        for i, name in enumerate(("edge.eml", "bare.eml"))
    )
    m = ImapServer(ImapSettings(policy=POLICY), BaitStore((BaitFolder("INBOX", None, 1, messages),)), Env(), ip="192.0.2.1")
    drain(m)
    talk(m, "a LOGIN alice secret", "b EXAMINE INBOX")
    assert talk(m, "c FETCH 1:* (UID ENVELOPE BODYSTRUCTURE)") == (
        (DATA / "edge-envelope-bodystructure.dovecot").read_bytes() + OK_FETCH
    )
    sections = ("BODY.PEEK[1] BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[2] BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT]"
                " BODY.PEEK[2.1] BODY.PEEK[3.MIME] BODY.PEEK[TEXT]<0.20>")
    assert talk(m, f"c FETCH 1:* ({sections})") == (DATA / "edge-sections.dovecot").read_bytes() + OK_FETCH


def in_state(state: State) -> ImapServer:
    if state is State.NOT_AUTHENTICATED:
        m = machine()
        drain(m)
        return m
    return logged_in() if state is State.AUTHENTICATED else selected()


ARGUMENTS = ["", " INBOX", " 1 FLAGS", " 1:* (FLAGS BODY[])", ' "" "*"', " alice secret", " PLAIN", " (x", " {3+}\r\nabc"]


@pytest.mark.parametrize("state", [State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED])
def test_the_table_every_command_in_every_state(state):
    """Every command of the table, and one it lacks, in every state: no
    exception, and the state moves only where the table's handlers move it."""
    moves = {
        "LOGIN": {State.AUTHENTICATED}, "AUTHENTICATE": {State.AUTHENTICATED},
        "SELECT": {State.SELECTED, State.AUTHENTICATED}, "EXAMINE": {State.SELECTED, State.AUTHENTICATED},
        "CLOSE": {State.AUTHENTICATED}, "UNSELECT": {State.AUTHENTICATED}, "DELETE": {State.AUTHENTICATED},
        "LOGOUT": {State.LOGOUT},
    }
    for name in [*COMMANDS, "XYZZY"]:
        for arguments in ARGUMENTS:
            m = in_state(state)
            m.receive_data(f"t {name}{arguments}\r\n".encode())
            out = drain(m)
            assert out.count(b"\r\n") >= 1 or m.mode is not Mode.COMMAND, (name, arguments)
            allowed = {state} | (moves.get(name, set()) if state in COMMANDS.get(name, set()) else set())
            if b"<close>" in out:
                allowed.add(State.LOGOUT)
            assert m.state in allowed, (state, name, arguments, m.state)


def test_a_huge_nonsync_append_is_skipped_never_kept():
    m = selected()
    size = 3 * MAX_APPEND_BYTES
    m.receive_data(b"a APPEND INBOX {%d+}\r\n" % size)
    chunk = b"x" * 65536
    for _ in range(size // len(chunk)):
        m.receive_data(chunk)
        assert len(m._pending.data) == 0
    m.receive_data(b"\r\nb NOOP\r\n")
    assert drain(m) == (
        b"a NO [TOOBIG] Mail size is larger than the maximum size allowed by server configuration (0.001 + 0.000 secs).\r\n"
        b"b OK NOOP completed (0.001 + 0.000 secs).\r\n"
    )


def test_input_held_while_storing_is_bounded():
    m = selected()
    m.receive_data(b"a APPEND INBOX {5+}\r\nhello\r\n")
    assert m.paused and any(isinstance(a, Store) for a in m.actions())
    for _ in range(100):
        m.receive_data(b"b NOOP\r\n" * 1000)
    assert len(m._held) <= MAX_HELD_BYTES
    m.stored("/x")
    assert drain(m).startswith(b"* 3 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID 1796272220 3] Append completed")


def test_a_login_after_the_clients_own_capability_lists_them_untagged():
    # imap-login's client_ignores_capability_resp_code (imaps_login recording)
    m = machine()
    drain(m)
    talk(m, "a CAPABILITY")
    assert talk(m, "b LOGIN alice secret") == f"* CAPABILITY {POST_CAPS}\r\nb OK Logged in\r\n".encode()


def test_store_of_recent_an_unknown_charset_and_status_as_named_as_dovecot():
    # imap_store, imap_search and imap_status recordings
    m = logged_in()
    assert talk(m, "s STATUS inbox (MESSAGES)") == (
        b"* STATUS inbox (MESSAGES 2)\r\ns OK Status completed (0.001 + 0.000 + 0.000 secs).\r\n")
    talk(m, "s SELECT INBOX")
    assert talk(m, "a STORE 1 +FLAGS (\\Recent)") == (
        b"a BAD Error in IMAP command STORE: Invalid system flag \\RECENT (0.001 + 0.000 secs).\r\n")
    assert talk(m, "b SEARCH CHARSET KOI9 ALL") == b"b NO [BADCHARSET] Unknown charset (0.001 + 0.000 secs).\r\n"
    assert talk(m, "c SEARCH CHARSET utf-8 ALL") == b"* SEARCH 1 2\r\nc OK Search completed (0.001 + 0.000 secs).\r\n"


def test_a_parse_error_before_login_is_the_parsers_text_and_not_counted():
    # imap_syntax_errors_before_login_3 recording; imap-login returns before its bad counter
    m = machine()
    drain(m)
    for tag in "abcd":
        assert talk(m, f'{tag} LOGIN "admin') == f"{tag} BAD Missing '\"'\r\n".encode()
    assert talk(m, "e NOOP") == b"e OK NOOP completed.\r\n"
