"""The bait IMAP server on real sockets, with Python's imaplib: a client
from 127.0.0.3 meets Dovecot 2.3 (as tests/test_imap_machine.py checks
byte for byte), with the bait store of tests/imap_bait.py."""

from __future__ import annotations

import asyncio
import imaplib
import socket
import ssl

import pytest

from tests.conftest import EMULATED_CLIENT, free_port
from tests.imap_bait import STORE

CLIENT = EMULATED_CLIENT


class Client(imaplib.IMAP4):
    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))


class TLSClient(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


@pytest.fixture
async def imap_trap(relay):
    async def start(**sections):
        port, tls_port = free_port(), free_port()
        listen = {"imap": [f"127.0.0.1:{port}"], "imaps": [f"127.0.0.1:{tls_port}"], **sections.pop("listen", {})}
        trap = await relay(listen=listen, credentials=["alice:secret"], **sections)
        trap.trap.context.bait = STORE  # what looper/bait.py will load at start
        trap.imap_port, trap.imaps_port = port, tls_port
        return trap

    return start


async def test_an_imaplib_walkthrough(imap_trap):
    trap = await imap_trap()

    def walk():
        seen = {}
        with Client("127.0.0.1", trap.imap_port, timeout=10) as client:
            seen["welcome"] = client.welcome
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                client.login("alice", "wrong")
            seen["login"] = client.login("alice", "secret")
            seen["capability"] = client.capability()
            seen["list"] = client.list()
            seen["lsub"] = client.lsub()
            seen["namespace"] = client.namespace()
            seen["status"] = client.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")
            seen["select"] = client.select("INBOX")
            seen["fetch_all"] = client.fetch("1:*", "(FLAGS UID INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY)")
            seen["fetch_macros"] = [client.fetch("1", macro) for macro in ("ALL", "FAST", "FULL")]
            seen["peek"] = client.fetch("2", "(BODY.PEEK[HEADER] BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT]<0.5>)")
            seen["parts"] = client.fetch("2", "(BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS.NOT (Subject)])")
            seen["unseen_before"] = client.search(None, "UNSEEN")
            seen["rfc822"] = client.fetch("2", "(RFC822.HEADER RFC822.TEXT)")
            seen["unseen_after"] = client.search(None, "UNSEEN")
            seen["body"] = client.uid("FETCH", "1", "(BODY[] RFC822)")
            seen["search"] = client.search(None, "OR", "FROM", "bob", "SUBJECT", "invoice")
            seen["uid_search"] = client.uid("SEARCH", "TEXT", "hunter2")
            seen["since"] = client.search(None, "SINCE", "1-Jan-2020", "LARGER", "400")
            seen["store"] = client.store("1", "+FLAGS", "(\\Flagged)")
            seen["append"] = client.append("Drafts", "(\\Draft)", None, b"Subject: stolen\r\n\r\nhi\r\n")
            seen["copy"] = client.copy("1", "Archive")
            seen["delete"] = client.store("2", "+FLAGS.SILENT", "(\\Deleted)")
            seen["expunge"] = client.expunge()
            client.send(b"X1 IDLE\r\n")  # imaplib of 3.11 has no IDLE
            seen["idle"] = client.readline()
            client.send(b"DONE\r\n")
            seen["idle_done"] = client.readline()
            seen["close"] = client.close()
            seen["logout"] = client.logout()
        return seen

    seen = await asyncio.to_thread(walk)
    assert seen["welcome"].startswith(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN]")
    # imaplib asks CAPABILITY at connect: Dovecot then lists the post-login
    # capabilities untagged and says only "Logged in" (imaps_login recording)
    assert seen["login"] == ("OK", [b"Logged in"])
    assert b"MOVE" in seen["capability"][1][0]
    assert seen["list"][1][-1] == b'(\\HasNoChildren) "/" INBOX' and len(seen["list"][1]) == 5
    assert seen["status"] == ("OK", [b"INBOX (MESSAGES 2 UNSEEN 1 UIDNEXT 3)"])
    assert seen["select"] == ("OK", [b"2"])
    fetched = seen["fetch_all"][1]
    assert fetched[0].startswith(b'1 (FLAGS (\\Seen) UID 1 INTERNALDATE "03-Dec-2026 04:29:36 +0000" RFC822.SIZE 303 ENVELOPE')
    assert b'"mixed" ("boundary" "XYZ") NIL NIL NIL)' in fetched[1]
    assert all(reply[0] == "OK" for reply in seen["fetch_macros"])
    assert seen["peek"][1][0][1].startswith(b"From: billing@example.com\r\n")
    assert seen["parts"][1][1][1] == b"JVBERi0xLjQK"
    assert seen["unseen_before"] == ("OK", [b"2"])
    assert seen["unseen_after"] == ("OK", [b""])  # RFC822.TEXT set \Seen
    assert seen["body"][1][0][1].endswith(b"hunter2.\r\n")
    assert seen["search"] == ("OK", [b"1 2"])
    assert seen["uid_search"] == ("OK", [b"1"])
    assert seen["since"] == ("OK", [b"2"])
    assert seen["store"] == ("OK", [b"1 (FLAGS (\\Flagged \\Seen))"])
    assert seen["append"][0] == "OK" and b"APPENDUID" in seen["append"][1][0]
    assert seen["copy"][0] == "OK" and b"COPYUID" in seen["copy"][1][0]
    assert seen["expunge"] == ("OK", [b"2"])
    assert seen["idle"] == b"+ idling\r\n"
    assert seen["idle_done"] == b"X1 OK Idle completed (0.001 + 0.000 + 0.000 secs).\r\n"
    assert seen["logout"][0] == "BYE"

    await trap.quiet()
    events = trap.events
    failed, = events.of("looper.login.failed")
    assert (failed["protocol"], failed["mechanism"], failed["username"], failed["password"]) == ("imap", "LOGIN", "alice", "wrong")
    assert events.of("looper.login.success")[0]["password"] == "secret"
    reads = {(e["uid"], e["what"]) for e in events.of("looper.bait.read")}
    assert {(1, "envelope"), (2, "header"), (2, "part"), (1, "body")} <= reads
    assert events.of("looper.bait.read", uid=1)[0]["subject"] == "VPN config"
    changes = {(e["uid"], e["change"]) for e in events.of("looper.imap.change")}
    assert {(1, "flags"), (1, "copy"), (2, "expunge")} <= changes
    append, = events.of("looper.imap.append")
    assert (append["folder"], append["subject"], append["flags"]) == ("Drafts", "stolen", ["\\Draft"])
    with open(append["path"], "rb") as stored:
        assert stored.read() == b"Subject: stolen\r\n\r\nhi\r\n"
    inputs = [e["input"] for e in events.of("looper.command.input")]
    assert any(i.endswith("LOGIN alice \"secret\"") for i in inputs) and "DONE" in inputs
    assert events.of("looper.dialback.failed") == []  # never dialed back


async def test_the_next_login_sees_the_store_fresh(imap_trap):
    trap = await imap_trap()

    def delete_then_look():
        with Client("127.0.0.1", trap.imap_port, timeout=10) as client:
            client.login("alice", "secret")
            client.select("INBOX")
            client.store("1:*", "+FLAGS", "(\\Deleted)")
            client.expunge()
            client.logout()
        with Client("127.0.0.1", trap.imap_port, timeout=10) as client:
            client.login("alice", "secret")
            return client.select("INBOX")

    assert await asyncio.to_thread(delete_then_look) == ("OK", [b"2"])


async def test_imaps_and_starttls(imap_trap):
    trap = await imap_trap()

    def secure():
        with TLSClient("127.0.0.1", trap.imaps_port, ssl_context=insecure(), timeout=10) as client:
            implicit = (b"STARTTLS" in client.welcome, client.login("alice", "secret")[0])
            client.logout()
        with Client("127.0.0.1", trap.imap_port, timeout=10) as client:
            client.starttls(insecure())
            upgraded = (client.capability()[1][0], client.login("alice", "secret")[0])
            client.logout()
        return implicit, upgraded

    implicit, upgraded = await asyncio.to_thread(secure)
    assert implicit == (False, "OK")
    assert upgraded == (b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN", "OK")
    assert len(trap.events.of("looper.tls.established")) >= 1


async def test_plaintext_login_false_gives_logindisabled(imap_trap):
    trap = await imap_trap(mail_access={"plaintext_login": False})

    def attempt():
        with Client("127.0.0.1", trap.imap_port, timeout=10) as client:
            welcome = client.welcome
            refused = client._simple_command("LOGIN", "alice", "secret")  # imaplib.login() would refuse to try
            client.starttls(insecure())
            return welcome, refused, client.login("alice", "secret")[0]

    welcome, refused, after_tls = await asyncio.to_thread(attempt)
    assert refused == ("NO", [b"[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."])
    assert b"STARTTLS LOGINDISABLED] Dovecot (Debian) ready." in welcome
    assert after_tls == "OK"
    assert trap.events.of("looper.login.failed")[0]["reason"] == "plaintext login disabled"


async def test_harvester_mode_lets_nobody_in(imap_trap):
    trap = await imap_trap(smtp={"mode": "harvester"})

    def attempt():
        with Client("127.0.0.1", trap.imap_port, timeout=10) as client:
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                client.login("alice", "secret")

    await asyncio.to_thread(attempt)


async def test_accept_after_counts_failures_across_sessions(imap_trap):
    trap = await imap_trap(smtp={"accept_after": 1})

    def guess(password):
        with Client("127.0.0.1", trap.imap_port, timeout=10) as client:
            try:
                return client.login("admin", password)[0]
            except imaplib.IMAP4.error as refused:
                return str(refused)

    assert "AUTHENTICATIONFAILED" in await asyncio.to_thread(guess, "123456")
    await trap.quiet()  # the session's failures are remembered when it closes
    assert await asyncio.to_thread(guess, "654321") == "OK"  # a new session: the address is remembered
    assert trap.trap.context.login_failures.of(CLIENT) == 0  # a success clears the address
