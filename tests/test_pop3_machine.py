"""The bait POP3 machine alone: Dovecot 2.3.19.1's exact bytes (each reply
here was read off a private Dovecot 2.3.19.1 on 127.0.0.30, a Maildir with
these two messages, a client on another loopback address), and hypothesis
on random command streams."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

from hypothesis import given, settings, strategies as st

from looper.proto.actions import Close, CloseReason, Send, StartTLS
from looper.proto.login import LoginPolicy
from looper.proto.mailbox import BaitFolder, BaitMessage
from looper.proto.pop3 import (
    ALLOWED, AUTH_FAILURE_DELAY_S, GREETING, OUTPUT_BUDGET_BYTES, failure_delay_s, MAX_AUTH_LINE_BYTES, Pop3Client, Pop3Server, Pop3Settings, State,
)

M1 = (
    b"From: Bob <bob@example.com>\r\nTo: alice@example.com\r\nSubject: Hello\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
    b"Hi Alice.\r\n.dotted line\r\nBye\r\n"
)
M2 = b"From: Carol <carol@example.com>\r\nTo: alice@example.com\r\nSubject: Second\r\n\r\nLine one\r\nLine two\r\nLine three\r\n"
WHEN = datetime(2024, 1, 1, tzinfo=timezone.utc)
INBOX = BaitFolder("INBOX", None, 0x6B10F039, (BaitMessage(1, M1, frozenset(), WHEN), BaitMessage(2, M2, frozenset(), WHEN)))
POLICY = LoginPolicy(frozenset({("alice", "secret")}))


def machine(*, plaintext: bool = True, mechanisms=("PLAIN", "LOGIN"), tls: bool = False, policy=POLICY) -> Pop3Server:
    server = Pop3Server(Pop3Settings(policy, mechanisms, plaintext), Pop3Client("192.0.2.7", tls=tls), INBOX)
    assert server.actions() == [Send(GREETING)]
    return server


def say(server: Pop3Server, line: bytes) -> bytes:
    """What one line gets: every Send's bytes, joined."""
    server.receive_data(line + b"\r\n")
    return b"".join(a.data for a in server.actions() if isinstance(a, Send))


def logged_in(**kw) -> Pop3Server:
    server = machine(**kw)
    assert say(server, b"USER alice") == b"+OK\r\n"
    assert say(server, b"PASS secret") == b"+OK Logged in.\r\n"
    server.events()
    return server


# -- Dovecot's bytes, before login ------------------------------------------------

def test_greeting_and_capa_before_login():
    server = machine()
    assert GREETING == b"+OK Dovecot (Debian) ready.\r\n"
    assert say(server, b"CAPA") == (
        b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n"
    )
    assert say(server, b"capa") == say(server, b"CAPA")


def test_capa_with_plaintext_disabled_then_after_stls():
    server = machine(plaintext=False, mechanisms=("PLAIN",))
    assert say(server, b"CAPA") == b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nSASL\r\n.\r\n"
    assert say(server, b"AUTH") == b"+OK\r\n.\r\n"
    assert say(server, b"USER alice") == (
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
    )
    assert say(server, b"PASS secret") == (
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
    )
    assert say(server, b"PASS secret").startswith(b"-ERR [AUTH] Plaintext authentication disallowed")  # no USER
    failed = [e.fields for e in server.events() if e.eventid == "looper.login.failed"]
    assert failed == [{"mechanism": "USER", "username": "alice", "password": "secret", "reason": "plaintext disallowed"},
                      {"mechanism": "USER", "username": None, "password": "secret", "reason": "plaintext disallowed"}]
    assert say(server, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==") == b"-ERR [AUTH] Plaintext authentication disabled.\r\n"
    assert say(server, b"AUTH LOGIN") == b"-ERR [AUTH] Unsupported authentication mechanism.\r\n"
    server.receive_data(b"STLS\r\nCAPA\r\n")  # what follows STLS before the handshake is dropped
    assert server.actions() == [Send(b"+OK Begin TLS negotiation now.\r\n"), StartTLS()]
    assert server.paused
    server.tls_started("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    assert say(server, b"CAPA") == (
        b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
    )
    assert say(server, b"STLS") == b"-ERR TLS is already active.\r\n"
    assert say(server, b"USER alice") == b"+OK\r\n"
    assert say(server, b"PASS secret") == b"+OK Logged in.\r\n"


def test_a_client_on_the_servers_own_address_counts_as_secured():
    server = Pop3Server(Pop3Settings(POLICY, ("PLAIN",), plaintext_login=False),
                        Pop3Client("127.0.0.1", local_ip="127.0.0.1"), INBOX)
    server.actions()
    assert b"USER\r\nSASL PLAIN\r\n" in say(server, b"CAPA")
    assert say(server, b"USER alice") == b"+OK\r\n"


def test_login_replies():
    server = machine()
    assert say(server, b"APOP alice abc") == b"-ERR APOP not enabled.\r\n"
    assert say(server, b"AUTH") == b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    assert say(server, b"AUTH  PLAIN") == b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    assert say(server, b"AUTH FOO") == b"-ERR [AUTH] Unsupported authentication mechanism.\r\n"
    assert say(server, b"AUTH PLAIN") == b"+ \r\n"
    assert say(server, b"*") == b"-ERR Authentication aborted by client.\r\n"
    assert say(server, b"AUTH PLAIN") == b"+ \r\n"
    assert say(server, b"=") == b"-ERR [AUTH] Invalid base64 data in continued response\r\n"
    assert say(server, b"AUTH PLAIN !!!") == b"-ERR [AUTH] Invalid base64 data in initial response\r\n"
    assert say(server, b"PASS x") == b"-ERR No username given.\r\n"
    assert say(server, b"XCLIENT ADDR=1.2.3.4") == b"+OK You are not from trusted IP - ignoring\r\n"
    assert say(server, b"AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
    assert say(server, b"YWxpY2U=") == b"+ UGFzc3dvcmQ6\r\n"
    assert say(server, b"c2VjcmV0") == b"+OK Logged in.\r\n"
    assert server.state is State.TRANSACTION


def test_a_failed_login_waits_dovecots_delay_and_the_next_one_gets_in():
    server = machine()
    assert say(server, b"USER alice") == b"+OK\r\n"
    server.receive_data(b"PASS wrong\r\n")
    assert server.actions() == [Send(b"-ERR [AUTH] Authentication failed.\r\n", AUTH_FAILURE_DELAY_S)]
    events = server.events()
    assert events[-1].eventid == "looper.login.failed"
    assert events[-1].fields == {"mechanism": "USER", "username": "alice", "password": "wrong", "reason": "bad credentials"}
    assert [e.fields["input"] for e in events if e.eventid == "looper.command.input"] == ["USER alice", "PASS"]
    assert say(server, b"PASS secret") == b"-ERR No username given.\r\n"  # a failure forgets USER
    assert server.auth_failures == 1
    plain = base64.b64encode(b"\0alice\0secret")
    assert say(server, b"AUTH PLAIN " + plain) == b"+OK Logged in.\r\n"
    assert server.auth_failures == 0
    success = server.events()[-1]
    assert (success.eventid, success.fields) == (
        "looper.login.success", {"mechanism": "PLAIN", "username": "alice", "password": "secret"}
    )


def test_failure_delays_are_dovecots_with_its_auth_penalty():
    assert [failure_delay_s(n) for n in range(1, 8)] == [2, 6, 6, 6, 2, 2, 2]  # measured, back to back
    server = Pop3Server(Pop3Settings(POLICY), Pop3Client("192.0.2.7", earlier_auth_failures=1), INBOX)
    server.receive_data(b"USER alice\r\nPASS wrong\r\n")
    assert server.actions()[-1] == Send(b"-ERR [AUTH] Authentication failed.\r\n", 6.0)  # across sessions


def test_three_bad_commands_before_login_end_the_session():
    server = machine()
    assert say(server, b"STAT") == b"-ERR Unknown command.\r\n"
    assert say(server, b"") == b"-ERR Unknown command.\r\n"
    server.receive_data(b"RETR 1\r\n")
    assert server.actions() == [
        Send(b"-ERR Unknown command.\r\n-ERR Too many invalid bad commands.\r\n"), Close(CloseReason.CLOSED_BY_SERVER),
    ]


def test_quit_before_login_has_no_full_stop():
    server = machine()
    server.receive_data(b"QUIT\r\n")
    assert server.actions() == [Send(b"+OK Logging out\r\n"), Close(CloseReason.CLOSED_BY_SERVER)]


def test_an_overlong_line_before_login():
    # Dovecot's buffer holds 1026 bytes once the command name is out of it.
    server = machine()
    assert say(server, b"X" * 1032) == b"-ERR Unknown command.\r\n"
    assert say(server, b"USER " + b"a" * 1024) == b"+OK\r\n"
    server.receive_data(b"USER " + b"a" * 1025 + b"\r\n")
    assert server.actions() == [Send(b"-ERR Input buffer full, aborting\r\n"), Close(CloseReason.CLOSED_BY_SERVER)]
    server = machine()
    server.receive_data(b"X" * 1033 + b"\r\n")
    assert server.actions() == [Send(b"-ERR Input buffer full, aborting\r\n"), Close(CloseReason.CLOSED_BY_SERVER)]


# -- Dovecot's bytes, logged in ------------------------------------------------------

def test_transaction_replies():
    server = logged_in()
    assert say(server, b"CAPA") == b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n.\r\n"
    assert say(server, b"STAT") == b"+OK 2 274\r\n"
    assert say(server, b"LIST") == b"+OK 2 messages:\r\n1 167\r\n2 107\r\n.\r\n"
    assert say(server, b"list 1") == b"+OK 1 167\r\n"
    assert say(server, b"LIST 3") == b"-ERR There's no message 3.\r\n"
    assert say(server, b"LIST 0") == b"-ERR There's no message 0.\r\n"
    assert say(server, b"LIST x") == b"-ERR Invalid message number: x\r\n"
    assert say(server, b"LIST 1 2") == b"-ERR Noise after message number:  2\r\n"
    assert say(server, b"UIDL") == b"+OK\r\n1 000000016b10f039\r\n2 000000026b10f039\r\n.\r\n"
    assert say(server, b"UIDL 2") == b"+OK 2 000000026b10f039\r\n"
    assert say(server, b"UIDL 1 x") == b"-ERR Noise after message number:  x\r\n"
    assert say(server, b"RETR 1") == (
        b"+OK 167 octets\r\nFrom: Bob <bob@example.com>\r\nTo: alice@example.com\r\nSubject: Hello\r\n"
        b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
        b"Hi Alice.\r\n..dotted line\r\nBye\r\n.\r\n"
    )
    assert say(server, b"RETR") == b"-ERR Invalid message number: \r\n"
    assert say(server, b"RETR 99999999999") == b"-ERR Message number too large: \r\n"
    assert say(server, b"TOP 2 0") == (
        b"+OK\r\nFrom: Carol <carol@example.com>\r\nTo: alice@example.com\r\nSubject: Second\r\n\r\n.\r\n"
    )
    assert say(server, b"Top 2 1") == (
        b"+OK\r\nFrom: Carol <carol@example.com>\r\nTo: alice@example.com\r\nSubject: Second\r\n\r\nLine one\r\n.\r\n"
    )
    assert say(server, b"TOP 1 99999999999") == b"+OK\r\n" + M1.replace(b"\n.d", b"\n..d") + b".\r\n"
    assert say(server, b"TOP 1") == b"-ERR Noise after message number: \r\n"
    assert say(server, b"TOP 1 x") == b"-ERR Invalid size: x\r\n"
    assert say(server, b"TOP 1 -1") == b"-ERR Invalid size: -1\r\n"
    assert say(server, b"DELE") == b"-ERR Invalid message number: \r\n"
    assert say(server, b"DELE 1") == b"+OK Marked to be deleted.\r\n"
    assert say(server, b"DELE 1") == b"-ERR Message is deleted.\r\n"
    assert say(server, b"RETR 1") == b"-ERR Message is deleted.\r\n"
    assert say(server, b"LIST") == b"+OK 1 messages:\r\n2 107\r\n.\r\n"
    assert say(server, b"STAT") == b"+OK 1 107\r\n"
    assert say(server, b"RSET x") == b"+OK\r\n"
    assert say(server, b"STAT") == b"+OK 2 274\r\n"
    assert say(server, b"NOOP x") == b"+OK\r\n"
    assert say(server, b"FOO") == b"-ERR Unknown command: FOO\r\n"
    assert say(server, b"USER x") == b"-ERR Unknown command: USER\r\n"
    assert say(server, b"STLS") == b"-ERR Unknown command: STLS\r\n"
    assert say(server, b"") == b"-ERR Unknown command.\r\n"
    server.receive_data(b"DELE 2\r\nQUIT\r\n")
    assert server.actions() == [
        Send(b"+OK Marked to be deleted.\r\n+OK Logging out, messages deleted.\r\n"), Close(CloseReason.CLOSED_BY_SERVER),
    ]


def test_events_of_reads_and_deletes():
    server = logged_in()
    for line in (b"RETR 1", b"TOP 2 0", b"TOP 2 3", b"DELE 2", b"RSET", b"DELE 1", b"QUIT"):
        say(server, line)
    got = [(e.eventid, e.fields) for e in server.events() if e.eventid != "looper.command.input"]
    assert got == [
        ("looper.bait.read", {"folder": "INBOX", "uid": 1, "subject": "Hello", "what": "body"}),
        ("looper.bait.read", {"folder": "INBOX", "uid": 2, "subject": "Second", "what": "header"}),
        ("looper.bait.read", {"folder": "INBOX", "uid": 2, "subject": "Second", "what": "body"}),
        ("looper.pop3.delete", {"action": "dele", "uids": [2]}),
        ("looper.pop3.delete", {"action": "rset", "uids": [2]}),
        ("looper.pop3.delete", {"action": "dele", "uids": [1]}),
        ("looper.pop3.delete", {"action": "quit", "uids": [1]}),
    ]


def test_quit_without_deletions_and_an_overlong_line_after_login():
    server = logged_in()
    assert say(server, b"QUIT") == b"+OK Logging out.\r\n"
    server = logged_in()
    assert say(server, b"X" * 2046).startswith(b"-ERR Unknown command: XXX")
    server.receive_data(b"X" * 2047 + b"\r\n")
    assert server.actions() == [Send(b"-ERR Input line too long.\r\n"), Close(CloseReason.CLOSED_BY_SERVER)]


def test_the_21st_bad_command_in_a_row_ends_the_session():
    server = logged_in()
    for _ in range(20):
        assert say(server, b"LIST x") == b"-ERR Invalid message number: x\r\n"
    server.receive_data(b"BOGUS\r\n")
    assert server.actions() == [
        Send(b"-ERR Unknown command: BOGUS\r\n-ERR Too many bad commands.\r\n"), Close(CloseReason.CLOSED_BY_SERVER),
    ]


def test_idle_timeouts_are_dovecots():
    server = machine()
    assert server.idle_timeout_s == 180
    server.timed_out()
    assert server.actions() == [Send(b"-ERR Disconnected for inactivity.\r\n"), Close(CloseReason.TIMEOUT)]
    assert logged_in().idle_timeout_s == 600


def test_goodbyes_when_the_trap_stops():
    server = machine()
    server.shutting_down(CloseReason.SHUTDOWN)
    assert server.actions() == [Send(b"-ERR Shutting down\r\n"), Close(CloseReason.SHUTDOWN)]
    server = logged_in()
    server.shutting_down(CloseReason.MAX_SECONDS)
    assert server.actions() == [Send(b"-ERR [SYS/TEMP] Server shutting down.\r\n"), Close(CloseReason.MAX_SECONDS)]


def test_harvester_mode_and_accept_after():
    server = machine(policy=LoginPolicy(frozenset({("alice", "secret")}), admits=False))
    say(server, b"USER alice")
    assert say(server, b"PASS secret") == b"-ERR [AUTH] Authentication failed.\r\n"
    server = machine(policy=LoginPolicy(accept_after=1))
    say(server, b"USER x")
    assert say(server, b"PASS y") == b"-ERR [AUTH] Authentication failed.\r\n"
    say(server, b"USER x")
    assert say(server, b"PASS y") == b"+OK Logged in.\r\n"


def test_the_state_table_covers_every_handler():
    from looper.proto import pop3

    assert ALLOWED[State.AUTHORIZATION] == set(pop3._LOGIN_HANDLERS)
    assert ALLOWED[State.TRANSACTION] == set(pop3._HANDLERS)


# -- hypothesis ---------------------------------------------------------------------

COMMANDS = st.sampled_from([
    b"CAPA", b"USER alice", b"PASS secret", b"PASS x", b"AUTH", b"AUTH PLAIN", b"AUTH LOGIN", b"*", b"=",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"APOP a b", b"STAT", b"LIST", b"LIST 1", b"LIST 9", b"UIDL", b"UIDL 2",
    b"RETR 1", b"RETR 2", b"TOP 1 0", b"TOP 2 2", b"DELE 1", b"DELE 2", b"RSET", b"NOOP", b"", b"X" * 3000,
    b"\xff\xfe", b"LIST 1 2", b"QUIT", b"STLS", b"YWxpY2U=",
])


def _run(chunks: list[bytes]) -> tuple[bytes, list, int]:
    server = machine()
    out = bytearray()
    largest = 0
    for chunk in chunks:
        server.receive_data(chunk)
        while server.backlog:
            server.continue_reading()
        for action in server.actions():
            if isinstance(action, Send):
                out += action.data
            elif isinstance(action, StartTLS):
                server.tls_started()
                out += b"<TLS>"
            else:
                out += b"<CLOSE>"
        largest = max(largest, server._lines.buffered, len(server._deleted))
    return bytes(out), [(e.eventid, e.fields) for e in server.events()], largest


@settings(max_examples=150, deadline=None)
@given(st.lists(COMMANDS, max_size=40), st.data())
def test_random_streams_read_the_same_whatever_the_split(commands, data):
    stream = b"".join(c + b"\r\n" for c in commands)
    whole = _run([stream] if stream else [])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [p for p in (stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])) if p]  # b"" is EOF
    split = _run(pieces)
    if b"<TLS>" not in whole[0]:  # a split after STLS sends the rest after the handshake instead
        assert split[:2] == whole[:2]
    assert split[2] <= MAX_AUTH_LINE_BYTES and whole[2] <= MAX_AUTH_LINE_BYTES


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_hostile_bytes_never_raise(chunks):
    server = machine()
    for chunk in chunks:
        server.receive_data(chunk)
        server.actions()
        assert server._lines.buffered <= MAX_AUTH_LINE_BYTES
    server.receive_data(b"")
    server.connection_closed()


def test_arguments_as_dovecot_reads_them():
    server = logged_in()
    assert say(server, b"LIST  1") == b"+OK 1 167\r\n"  # spaces before an argument are skipped
    assert say(server, b"LIST +1") == b"-ERR Invalid message number: +1\r\n"
    assert say(server, b"LIST 01") == b"+OK 1 167\r\n"
    assert say(server, b"\x00") == b"-ERR Unknown command.\r\n"  # a NUL ends the line, a C string
    assert say(server, b"\xff\xfe") == b"-ERR Unknown command: \xff\xfe\r\n"  # bytes echoed as they came
    assert say(server, b"LIST \xe9") == b"-ERR Invalid message number: \xe9\r\n"
    assert say(server, b"LIST 99999999999999999999999") == (
        b"-ERR Message number too large: 99999999999999999999999\r\n"  # past 64 bits the number is shown
    )
    assert say(server, b"TOP 1 99999999999999999999999") == b"-ERR Size too large: 99999999999999999999999\r\n"


def test_pipelined_retrs_wait_behind_an_output_budget():
    server = logged_in()
    chunk = b"RETR 1\r\n" * 5000  # 5000 messages asked for in one read
    server.receive_data(chunk)
    first = b"".join(a.data for a in server.actions())
    assert OUTPUT_BUDGET_BYTES <= len(first) < OUTPUT_BUDGET_BYTES + 1024
    assert server.backlog and server.paused  # the rest of the read waits, and nothing more is read
    out = bytearray(first)
    while server.backlog:
        server.continue_reading()
        piece = b"".join(a.data for a in server.actions())
        assert len(piece) < OUTPUT_BUDGET_BYTES + 1024
        out += piece
    reply = b"+OK 167 octets\r\n" + M1.replace(b"\n.d", b"\n..d") + b".\r\n"
    assert bytes(out) == reply * 5000
    assert not server.paused


def test_a_session_ends_after_max_commands():
    from looper.proto.pop3 import MAX_COMMANDS

    server = logged_in()  # USER and PASS were two
    server.receive_data(b"NOOP\r\n" * (MAX_COMMANDS - 2))
    while server.backlog:
        server.continue_reading()
    assert all(isinstance(a, Send) for a in server.actions())
    server.receive_data(b"NOOP\r\n")
    assert server.actions() == [Close(CloseReason.CLOSED_BY_SERVER)]
