"""The SMTP machine beyond what the Postfix recordings cover: modes,
credentials, events, storage failure, and hostile input (hypothesis)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.proto.actions import Close, CloseReason, Send, StartTLS, Store
from looper.proto.budget import MessageMemory
from looper.proto.digest_md5 import parse_directives
from looper.proto.personas import PERSONAS, POSTFIX
from looper.proto.sasl import cram_md5_digest
from looper.proto.smtpd import MAX_WAITING_INPUT_BYTES, ClientInfo, Mode, SmtpServer, SmtpSettings
from tests.smtp_replay import FixedEnvironment
from tests.test_sasl import digest_client

SETTINGS = SmtpSettings(
    hostname="mx.trap.example.net",
    persona=POSTFIX,
    credentials=frozenset({("admin", "admin")}),
    auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5"),
)


class Client:
    """Drives the machine like an adapter whose storage always works."""

    def __init__(self, settings: SmtpSettings = SETTINGS, client: ClientInfo | None = None, store_ok=True):
        self.machine = SmtpServer(settings, client or ClientInfo("192.0.2.7", name="spam.example.org"), FixedEnvironment())
        self.store_ok = store_ok
        self.stored: list[bytes] = []
        self.delays: list[tuple[float, float]] = []  # (delay_s, spread_s) of each Send
        self.closed = False
        self.events: list = []
        self.greeting = self.take()

    def take(self) -> bytes:
        out = b""
        while actions := self.machine.actions():
            for action in actions:
                if isinstance(action, Send):
                    out += action.data
                    self.delays.append((action.delay_s, action.spread_s))
                elif isinstance(action, Close):
                    self.closed = True
                elif isinstance(action, StartTLS):
                    self.machine.tls_started("TLSv1.3", "x")
                elif isinstance(action, Store):
                    assert hashlib.sha256(action.content).hexdigest() == action.sha256
                    self.stored.append(action.content)
                    if self.store_ok:
                        self.machine.stored(f"/logs/messages/{action.sha256}.eml")
                    else:
                        self.machine.store_failed("No space left on device")
        self.events += self.machine.events()
        return out

    def say(self, data: bytes) -> bytes:
        self.machine.receive_data(data)
        return self.take()

    def of(self, eventid: str) -> list[dict]:
        return [e.fields for e in self.events if e.eventid == eventid]


def b64(text: bytes) -> bytes:
    return base64.b64encode(text)


MESSAGE = b"Received: from a\r\nSubject: hi\r\nMessage-ID: <m1@x>\r\n\r\n.leading dot\r\n"


def test_open_relay_takes_a_message_for_anyone_and_logs_it():
    client = Client()
    client.say(b"EHLO spam.example.org\r\n")
    reply = client.say(b"MAIL FROM:<a@spam.example.org>\r\nRCPT TO:<victim@far.example.com>\r\nDATA\r\n")
    assert reply == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    reply = client.say(b"Received: from a\r\nSubject: hi\r\nMessage-ID: <m1@x>\r\n\r\n..leading dot\r\n.\r\n")
    assert reply == b"250 2.0.0 Ok: queued as 0ABCDE00001\r\n"
    assert client.stored == [MESSAGE]
    (message,) = client.of("looper.smtp.message")
    assert message["rcpt_to"] == ["victim@far.example.com"] and message["mail_from"] == "a@spam.example.org"
    assert message["sha256"] == hashlib.sha256(MESSAGE).hexdigest() and message["size"] == len(MESSAGE)
    assert message["received_hops"] == 1 and message["subject"] == "hi" and message["message_id"] == "<m1@x>"
    assert message["received_header"] == (
        "Received: from spam.example.org (spam.example.org [192.0.2.7]) by mx.trap.example.net (Postfix)"
        " with ESMTP id 0ABCDE00001 for <victim@far.example.com>; Sun, 22 Nov 2026 10:00:00 +0000 (UTC)"
    )
    assert message["path"].endswith(message["sha256"] + ".eml")


def test_no_250_for_a_message_that_was_not_stored():
    client = Client(store_ok=False)
    client.say(b"EHLO x.example.org\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    reply = client.say(b"hello\r\n.\r\nQUIT\r\n")
    assert reply == b"452 4.3.1 Insufficient system storage\r\n221 2.0.0 Bye\r\n"
    assert client.of("looper.smtp.store_failed")[0]["reason"] == "No space left on device"
    assert client.of("looper.smtp.message") == []


def test_auth_plain_with_configured_credentials_and_secrets_only_in_login_events():
    client = Client()
    client.say(b"EHLO x\r\n")
    assert client.say(b"AUTH PLAIN " + b64(b"\0admin\0admin") + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert client.of("looper.login.success") == [{"mechanism": "PLAIN", "username": "admin", "password": "admin"}]
    inputs = [e["input"] for e in client.of("looper.command.input")]
    assert inputs == ["EHLO x", "AUTH PLAIN"]


def test_auth_login_prompts_and_a_failure_waits_like_dovecot():
    client = Client()
    client.say(b"EHLO x\r\n")
    assert client.say(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert client.say(b64(b"admin") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    client.delays.clear()
    assert client.say(b64(b"wrong") + b"\r\n") == b"535 5.7.8 Error: authentication failed: (reason unavailable)\r\n"
    assert client.delays == [(1.5, 0.52)]  # 1.5 s and up to 0.52 s more
    failed = client.of("looper.login.failed")
    assert failed == [{"mechanism": "LOGIN", "username": "admin", "password": "wrong", "reason": "bad credentials"}]
    client.delays.clear()
    # Dovecot's penalty once the address has failed: its next prompt waits 4 s
    assert client.say(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert client.delays == [(4.0, 0.01)]
    client.delays.clear()
    client.say(b64(b"admin") + b"\r\n")
    assert all(delay == (0.0, 0.0) for delay in client.delays)  # the second prompt: at once
    client.delays.clear()
    client.say(b64(b"wrong2") + b"\r\n")
    assert client.delays == [(1.5, 0.52)]
    client.delays.clear()
    # another password than the last failed one doubles it: 8 s; the verdict
    # on an initial response, due after the penalty and the delay, comes
    # too late for Postfix, which gives up after 10 s (as recorded)
    lost = b"454 4.7.0 Temporary authentication failure: Connection lost to authentication server\r\n"
    assert client.say(b"AUTH PLAIN " + b64(b"\0admin\0wrong3") + b"\r\n") == lost
    assert client.delays == [(10.0, 0.015)]
    assert client.machine.auth_failures == 3  # Dovecot judged it all the same
    client.delays.clear()
    # 15 s of penalty now: not even the prompt comes in time
    assert client.say(b"AUTH LOGIN\r\n") == lost
    assert client.delays == [(10.0, 0.015)]
    assert client.machine.auth_failures == 3
    assert client.say(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"  # no SASL exchange left open


def test_cram_md5_logs_challenge_and_digest():
    client = Client()
    client.say(b"EHLO x\r\n")
    challenge = base64.b64decode(client.say(b"AUTH CRAM-MD5\r\n")[4:].strip()).decode()
    digest = cram_md5_digest("admin", challenge)
    assert client.say(b64(f"admin {digest}".encode()) + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    (success,) = client.of("looper.login.success")
    assert success == {"mechanism": "CRAM-MD5", "username": "admin", "digest": digest, "challenge": challenge}


SENDMAIL = replace(SETTINGS, persona=PERSONAS["sendmail"], auth_mechanisms=("DIGEST-MD5", "CRAM-MD5"))


def digest_md5_answer(challenge_line: bytes, password: str, username: str = "admin") -> tuple[bytes, dict[str, str]]:
    """What a DIGEST-MD5 client sends to the 334 challenge, and the directives it read there."""
    offered = parse_directives(base64.b64decode(challenge_line[4:]).decode())
    nonce, realm, cnonce = offered["nonce"], offered["realm"], "Y2xpZW50IG5vbmNl"
    uri = f"smtp/{realm}"
    digest = digest_client(password, username=username, realm=realm, nonce=nonce, cnonce=cnonce, uri=uri)
    response = (f'username="{username}",realm="{realm}",nonce="{nonce}",cnonce="{cnonce}",nc=00000001,qop=auth,'
                f'digest-uri="{uri}",response={digest},charset=utf-8')
    return b64(response.encode()) + b"\r\n", {**offered, "cnonce": cnonce, "digest_uri": uri, "digest": digest}


def test_digest_md5_success_proves_the_server_and_logs_what_cracks_it():
    client = Client(SENDMAIL)
    assert b"250-AUTH DIGEST-MD5 CRAM-MD5\r\n" in client.say(b"EHLO x\r\n")
    challenge = client.say(b"AUTH DIGEST-MD5\r\n")
    assert challenge.startswith(b"334 ") and challenge.endswith(b"\r\n")
    answer, sent = digest_md5_answer(challenge, "admin")
    assert sent["realm"] == "mx.trap.example.net" and sent["algorithm"] == "md5-sess"
    rspauth = digest_client("admin", username="admin", realm=sent["realm"], nonce=sent["nonce"],
                            cnonce=sent["cnonce"], uri=sent["digest_uri"], method="")
    assert client.say(answer) == b"334 " + b64(f"rspauth={rspauth}".encode()) + b"\r\n"
    assert client.of("looper.login.success") == []  # not before the client took the proof
    assert client.say(b"\r\n") == b"235 2.0.0 OK Authenticated\r\n"
    assert client.of("looper.login.success") == [{
        "mechanism": "DIGEST-MD5", "username": "admin", "digest": sent["digest"], "realm": sent["realm"],
        "nonce": sent["nonce"], "cnonce": sent["cnonce"], "nc": "00000001", "qop": "auth",
        "digest_uri": sent["digest_uri"],
    }]
    assert client.machine.mode is Mode.COMMAND
    assert client.say(b"AUTH DIGEST-MD5\r\n").startswith(b"503 ")  # already authenticated


def test_digest_md5_failures_wrong_password_malformed_and_accept_after():
    client = Client(replace(SENDMAIL, accept_after=2))
    client.say(b"EHLO x\r\n")
    answer, sent = digest_md5_answer(client.say(b"AUTH DIGEST-MD5\r\n"), "wrong")
    assert client.say(answer) == b"535 5.7.0 authentication failed\r\n"
    (failed,) = client.of("looper.login.failed")
    assert failed["reason"] == "bad credentials" and failed["digest"] == sent["digest"] and "password" not in failed
    client.say(b"AUTH DIGEST-MD5\r\n")
    assert client.say(b64(b'username="admin",nonce="not ours"') + b"\r\n") == b"535 5.7.0 authentication failed\r\n"
    assert client.of("looper.login.failed")[-1] == {"mechanism": "DIGEST-MD5", "username": None,
                                                    "reason": "malformed response"}
    # two failures: accept_after admits any digest, with a proof of the right shape
    answer, _ = digest_md5_answer(client.say(b"AUTH DIGEST-MD5\r\n"), "still wrong")
    proof = base64.b64decode(client.say(answer)[4:])
    assert re.fullmatch(rb"rspauth=[0-9a-f]{32}", proof)
    assert client.say(b"*\r\n").startswith(b"501 ")  # cancelled at the last step: no login
    assert client.of("looper.login.success") == []
    answer, _ = digest_md5_answer(client.say(b"AUTH DIGEST-MD5\r\n"), "still wrong")
    client.say(answer)
    assert client.say(b"\r\n") == b"235 2.0.0 OK Authenticated\r\n"


def test_random_credentials_fail_at_first_and_pass_after_accept_after():
    client = Client(replace(SETTINGS, accept_after=2))
    client.say(b"EHLO x\r\n")
    for attempt in (b"\0r4nd0m\0x7q", b"\0guess\0guess"):
        assert client.say(b"AUTH PLAIN " + b64(attempt) + b"\r\n").startswith(b"535 ")
    assert client.say(b"AUTH PLAIN " + b64(b"\0third\0try") + b"\r\n").startswith(b"235 ")


def test_accept_after_counts_failures_of_earlier_sessions():
    client = Client(replace(SETTINGS, accept_after=2), ClientInfo("192.0.2.7", earlier_auth_failures=2))
    client.say(b"EHLO x\r\n")
    assert client.say(b"AUTH PLAIN " + b64(b"\0any\0thing") + b"\r\n").startswith(b"235 ")


def test_harvester_fails_every_login_and_denies_relay():
    client = Client(replace(SETTINGS, mode="harvester"))
    client.say(b"EHLO x\r\n")
    assert client.say(b"AUTH PLAIN " + b64(b"\0admin\0admin") + b"\r\n").startswith(b"535 5.7.8 ")
    assert client.say(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<v@far.example>\r\nRCPT TO:<postmaster>\r\n") == (
        b"250 2.1.0 Ok\r\n454 4.7.1 <v@far.example>: Relay access denied\r\n250 2.1.5 Ok\r\n"
    )


def test_authenticated_relay_only_after_auth():
    client = Client(replace(SETTINGS, relay="authenticated"))
    client.say(b"EHLO x\r\n")
    assert client.say(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<v@far.example>\r\nRSET\r\n").startswith(
        b"250 2.1.0 Ok\r\n454 4.7.1 <v@far.example>: Relay access denied\r\n"
    )
    client.say(b"AUTH PLAIN " + b64(b"\0admin\0admin") + b"\r\n")
    assert client.say(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<v@far.example>\r\n") == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"


def test_local_users_are_known_and_others_are_not():
    client = Client()
    client.say(b"EHLO x\r\nMAIL FROM:<>\r\n")
    assert client.say(b"RCPT TO:<root@mx.trap.example.net>\r\nRCPT TO:<nobody-here@mx.trap.example.net>\r\n") == (
        b"250 2.1.5 Ok\r\n550 5.1.1 <nobody-here@mx.trap.example.net>: Recipient address rejected:"
        b" User unknown in local recipient table\r\n"
    )
    # the VRFY answer depends on the address: a honeypot tell avoided
    assert client.say(b"VRFY admin\r\nVRFY zork\r\n") == (
        b"252 2.0.0 admin\r\n550 5.1.1 <zork>: Recipient address rejected: User unknown in local recipient table\r\n"
    )


def test_helo_flags_our_own_name_and_reserved_names():
    client = Client()
    client.say(b"HELO mx.trap.example.net\r\nHELO foo.invalid\r\nHELO mail.example.org\r\n")
    flags = [(e["claims_our_name"], e["reserved_name"]) for e in client.of("looper.smtp.helo")]
    assert flags == [(True, False), (False, True), (False, False)]


def test_pregreet_and_greet_delay():
    client = Client(replace(SETTINGS, greet_delay_s=1.5), ClientInfo("192.0.2.7", pregreet_bytes=6))
    assert client.delays[0] == (1.5, 0.0)  # a configured delay is kept exactly
    assert client.of("looper.smtp.pregreet") == [{"bytes": 6}]


def test_the_size_limit_is_advertised_and_enforced_after_the_dot():
    client = Client(replace(SETTINGS, max_message_bytes=2000))
    assert b"250-SIZE 2000\r\n" in client.say(b"EHLO x\r\n")
    client.say(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    assert client.say(b"x" * 1000 + b"\r\n") == b""
    assert client.say(b"y" * 1500 + b"\r\n.\r\n") == b"552 5.3.4 Error: message file too big\r\n"
    assert client.stored == []


def test_idle_timeout_says_421_and_closes():
    client = Client()
    client.machine.timed_out()
    assert client.take() == b"421 4.4.2 mx.trap.example.net Error: timeout exceeded\r\n" and client.closed


def test_a_flood_while_waiting_is_bounded():
    client = Client()
    client.say(b"EHLO x\r\n")
    client.machine.receive_data(b"STARTTLS\r\n")
    assert client.machine.paused  # not carried out yet: the adapter would stop reading
    client.machine.receive_data(b"x" * (MAX_WAITING_INPUT_BYTES + 1))
    assert client.machine._buffered_bytes() <= MAX_WAITING_INPUT_BYTES
    assert [e.fields["limit"] for e in client.machine.events() if e.eventid == "looper.smtp.limit"]


COMMANDS = st.sampled_from(
    [
        b"EHLO a.example\r\n", b"HELO b\r\n", b"MAIL FROM:<x@y.example>\r\n", b"MAIL FROM:<>\r\n",
        b"RCPT TO:<v@far.example>\r\n", b"RCPT TO:<root>\r\n", b"DATA\r\n", b"body\r\n", b".\r\n",
        b"BDAT 5\r\nhello", b"BDAT 0 LAST\r\n", b"BDAT x\r\n", b"RSET\r\n", b"NOOP\r\n", b"VRFY root\r\n",
        b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"*\r\n", b"AGFkbWluAGFkbWlu\r\n", b"QUIT\r\n",
        b"GET / HTTP/1.0\r\n", b"\r\n", b"\xff\xfe\r\n", b"x" * 3000 + b"\r\n", b"\n", b"\r",
    ]
)


@pytest.mark.parametrize("persona", sorted(PERSONAS))
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(COMMANDS, st.binary(max_size=64)), max_size=40), st.randoms(use_true_random=False))
def test_any_input_split_anywhere_never_raises_and_stays_bounded(persona, pieces, random):
    stream = b"".join(pieces)
    client = Client(replace(SETTINGS, persona=PERSONAS[persona]), ClientInfo("192.0.2.1", pregreet_bytes=random.randint(0, 1)))
    position = 0
    while position < len(stream) and not client.closed:
        step = random.randint(1, 64)
        client.say(stream[position : position + step])
        position += step
        assert client.machine._buffered_bytes() <= MAX_WAITING_INPUT_BYTES + 64
        assert client.machine.mode in Mode
    if not client.closed and random.random() < 0.3:
        client.machine.timed_out()  # the client went quiet: in a command, in DATA, half a line
    if not client.closed:
        client.say(b"")
    assert client.closed


@settings(max_examples=150, deadline=None)
@given(st.lists(COMMANDS, min_size=1, max_size=30), st.integers(1, 50))
def test_replies_are_the_same_however_the_input_is_split(commands, step):
    stream = b"".join(commands)
    whole, pieces = Client(), Client()
    whole_out = whole.say(stream)
    pieces_out = b"".join(pieces.say(stream[i : i + step]) for i in range(0, len(stream), step))
    # one difference is allowed: a line over the 2048-byte limit is cut
    # where it is, and commands pipelined after STARTTLS are dropped
    if b"STARTTLS" not in stream:
        assert pieces_out == whole_out


# -- the message memory shared by every session (limits.message_memory_bytes) --

def _budgeted(memory: MessageMemory, **kw) -> Client:
    return Client(replace(SETTINGS, message_memory=memory), **kw)


def _into_data(client: Client) -> None:
    client.say(b"EHLO a.example\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<v@far.example>\r\nDATA\r\n")


def test_messages_in_flight_share_one_memory_budget():
    memory = MessageMemory(limit_bytes=10_000)
    first, second = _budgeted(memory), _budgeted(memory)
    _into_data(first)
    _into_data(second)
    first.say(b"x" * 6000 + b"\r\n")
    assert memory.held_bytes >= 6000
    # The second message does not fit beside the first: read to its end, kept
    # nowhere, answered as Postfix answers when its queue has no room.
    assert second.say(b"y" * 6000 + b"\r\n.\r\n") == b"452 4.3.1 Insufficient system storage\r\n"
    assert second.stored == [] and second.of("looper.smtp.limit") == [{"limit": "message memory", "bytes": 10_000}]
    assert first.say(b".\r\n").startswith(b"250 2.0.0 Ok: queued as ")
    assert len(first.stored) == 1 and memory.held_bytes == 0  # stored: let go
    assert second.say(b"MAIL FROM:<b@spam.example>\r\n") == b"250 2.1.0 Ok\r\n"


def test_no_new_transaction_while_the_budget_is_used_up():
    memory = MessageMemory(limit_bytes=1000)
    holder, late = _budgeted(memory), _budgeted(memory)
    _into_data(holder)
    holder.say(b"z" * 999 + b"\r\n")
    assert memory.exhausted
    late.say(b"EHLO b.example\r\n")
    assert late.say(b"MAIL FROM:<c@spam.example>\r\n") == b"452 4.3.1 Insufficient system storage\r\n"
    holder.machine.connection_closed()  # a reset: the adapter says so
    assert memory.held_bytes == 0
    assert late.say(b"MAIL FROM:<c@spam.example>\r\n") == b"250 2.1.0 Ok\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(COMMANDS, st.binary(max_size=64), st.just(b"q" * 700 + b"\r\n")), max_size=40),
       st.integers(1, 64), st.booleans(), st.booleans())
def test_the_message_memory_never_leaks(pieces, step, store_ok, reset):
    """However a session goes (stored, refused, cut, reset, RSET, too big,
    over the budget), once it is over it holds nothing of the budget, and
    while it runs it never holds more than the budget allows."""
    memory = MessageMemory(limit_bytes=1500)
    client = _budgeted(memory, store_ok=store_ok)
    stream = b"".join(pieces)
    for position in range(0, len(stream), step):
        if client.closed:
            break
        client.say(stream[position : position + step])
        assert 0 <= memory.held_bytes <= memory.limit_bytes
    if reset:
        client.machine.connection_closed()
    else:
        if not client.closed:
            client.say(b"")
        client.machine.connection_closed()
    assert memory.held_bytes == 0


def test_each_mail_and_rcpt_is_logged_with_its_verdict_and_a_message_with_its_login():
    client = Client(replace(SETTINGS, relay="authenticated"))
    client.say(b"EHLO a.example\r\nMAIL FROM:<a@spam.example> SIZE=10\r\nRCPT TO:<v@far.example>\r\nRSET\r\n")
    client.say(b"AUTH PLAIN " + b64(b"\0admin\0admin") + b"\r\n")
    client.say(b"MAIL FROM:<>\r\nRCPT TO:<v@far.example>\r\nRCPT TO:broken path\r\nDATA\r\n")
    client.say(MESSAGE + b".\r\n")
    verdicts = [(e.eventid, e.fields["address"], e.fields["code"]) for e in client.events
                if e.eventid in ("looper.smtp.mail", "looper.smtp.rcpt")]
    assert verdicts == [
        ("looper.smtp.mail", "a@spam.example", 250),
        ("looper.smtp.rcpt", "v@far.example", 454),  # relaying needs a login
        ("looper.smtp.mail", "", 250),
        ("looper.smtp.rcpt", "v@far.example", 250),
        ("looper.smtp.rcpt", "broken", 555),
    ]
    assert client.of("looper.smtp.mail")[0]["params"] == ["SIZE=10"]
    assert client.of("looper.smtp.rcpt")[0]["reply"] == "4.7.1 <v@far.example>: Relay access denied"
    (message,) = client.of("looper.smtp.message")
    assert message["username"] == "admin" and message["rcpt_to"] == ["v@far.example"]


def closes(machine: SmtpServer) -> list:
    return [action.reason for action in machine.actions() if isinstance(action, Close)]


def test_the_machine_says_why_it_closes():
    quit_ = SmtpServer(SETTINGS, ClientInfo("192.0.2.7"), FixedEnvironment())
    quit_.receive_data(b"QUIT\r\n")
    assert closes(quit_) == [CloseReason.CLOSED_BY_SERVER]
    eof = SmtpServer(SETTINGS, ClientInfo("192.0.2.7"), FixedEnvironment())
    eof.receive_data(b"")
    assert closes(eof) == [CloseReason.CLOSED_BY_CLIENT]
    idle = SmtpServer(SETTINGS, ClientInfo("192.0.2.7"), FixedEnvironment())
    idle.timed_out()
    assert closes(idle) == [CloseReason.TIMEOUT]
    for reason in (CloseReason.SHUTDOWN, CloseReason.MAX_SECONDS):
        stopping = SmtpServer(SETTINGS, ClientInfo("192.0.2.7"), FixedEnvironment())
        stopping.shutting_down(reason)
        assert closes(stopping) == [reason]


def test_a_quit_pipelined_before_the_clients_eof_closes_as_the_client():
    """Exim sends the message, QUIT, and half-closes at once: the session
    was ended by the client, whatever we answered after storing."""
    machine = SmtpServer(SETTINGS, ClientInfo("192.0.2.7"), FixedEnvironment())
    machine.receive_data(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    machine.receive_data(b"hi\r\n.\r\nQUIT\r\n")
    machine.receive_data(b"")
    assert machine.paused and not closes(machine)
    machine.stored("/logs/messages/x.eml")
    assert closes(machine) == [CloseReason.CLOSED_BY_CLIENT]


@pytest.mark.parametrize("address", ["victim%foreign.example@{host}", "foreign.example!victim@{host}",
                                     '"victim@foreign.example"@{host}'])
def test_a_local_part_that_routes_elsewhere_is_relaying_not_an_unknown_user(address):
    # Postfix rewrites each to victim@foreign.example (allow_percent_hack,
    # swap_bangpath, resolve_dequoted_address): mail for elsewhere.
    harvester = Client(replace(SETTINGS, mode="harvester"), ClientInfo("192.0.2.7"))
    harvester.say(b"EHLO client.example\r\n")
    harvester.say(b"MAIL FROM:<a@b.example>\r\n")
    rcpt = address.format(host=SETTINGS.hostname)
    assert harvester.say(f"RCPT TO:<{rcpt}>\r\n".encode()) == f"454 4.7.1 <{rcpt}>: Relay access denied\r\n".encode()
    assert harvester.say(f"RCPT TO:<nosuchuser@{SETTINGS.hostname}>\r\n".encode()).startswith(b"550 5.1.1 ")
