"""The bait POP3 server on real sockets, with Python's poplib as the client
(from EMULATED_CLIENT, never the trap's own address): plain with STLS on
listen.pop3, implicit TLS on listen.pop3s."""

from __future__ import annotations

import asyncio
import poplib
import socket
import ssl
from datetime import datetime, timezone

import pytest

from looper.proto.mailbox import BaitFolder, BaitMessage, BaitStore
from tests.conftest import EMULATED_CLIENT, free_port

CLIENT = EMULATED_CLIENT
WHEN = datetime(2026, 11, 30, 9, 15, tzinfo=timezone.utc)
VPN = (
    b"From: IT Support <it@corp.example>\r\nTo: j.doe@corp.example\r\nSubject: Your VPN access\r\n"
    b"Date: Mon, 30 Nov 2026 09:15:00 +0000\r\nMessage-ID: <vpn1@corp.example>\r\n\r\n"
    b"Hi,\r\n\r\nyour VPN account is ready.\r\n.\r\n..two dots\r\nuser: j.doe\r\npassword: Winter2026!\r\n"
)
KEYS = (
    b"From: Ops <ops@corp.example>\r\nTo: j.doe@corp.example\r\nSubject: AWS keys\r\n\r\n"
    b"AKIAIOSFODNN7EXAMPLE\r\nwJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\r\n"
)
BAIT = BaitStore((
    BaitFolder("INBOX", None, 1764493200, (BaitMessage(3, VPN, frozenset(), WHEN), BaitMessage(7, KEYS, frozenset(), WHEN))),
))
TLS = ssl.create_default_context()
TLS.check_hostname, TLS.verify_mode = False, ssl.CERT_NONE


class _FromClient:
    """poplib has no source_address: connect from CLIENT."""

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))


class Pop3(_FromClient, poplib.POP3):
    pass


class Pop3s(_FromClient, poplib.POP3_SSL):
    def _create_socket(self, timeout):
        return self.context.wrap_socket(super()._create_socket(timeout), server_hostname=self.host)


async def bait_trap(relay, *, plaintext_login: bool = True, **sections):
    pop3, pop3s = free_port(), free_port()
    trap = await relay(
        listen={"pop3": [f"127.0.0.1:{pop3}"], "pop3s": [f"127.0.0.1:{pop3s}"]},
        credentials=["j.doe:Summer2026"],
        mail_access={"plaintext_login": plaintext_login},
        **sections,
    )
    trap.trap.context.bait = BAIT  # looper/bait.py fills it from config/bait/ in a running trap
    return trap, pop3, pop3s


async def test_a_poplib_walkthrough(relay):
    trap, port, _ = await bait_trap(relay)

    def walk():
        client = Pop3("127.0.0.1", port, timeout=10)
        assert client.getwelcome() == b"+OK Dovecot (Debian) ready."
        assert client.capa() == {
            "CAPA": [], "TOP": [], "UIDL": [], "RESP-CODES": [], "PIPELINING": [], "AUTH-RESP-CODE": [],
            "STLS": [], "USER": [], "SASL": ["PLAIN"],
        }
        client.user("j.doe")
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed\."):
            client.pass_("guess")
        client.user("j.doe")
        assert client.pass_("Summer2026") == b"+OK Logged in."
        assert client.stat() == (2, len(VPN) + len(KEYS))
        response, listing, _ = client.list()
        assert (response, listing) == (b"+OK 2 messages:", [b"1 %d" % len(VPN), b"2 %d" % len(KEYS)])
        assert client.uidl()[1] == [b"1 00000003692c0790", b"2 00000007692c0790"]
        assert client.uidl(2) == b"+OK 2 00000007692c0790"
        response, lines, octets = client.retr(1)
        assert response == b"+OK %d octets" % len(VPN)
        assert b"\r\n".join(lines) + b"\r\n" == VPN  # poplib undoes the dot-stuffing
        response, lines, _ = client.top(2, 0)
        assert b"\r\n".join(lines) + b"\r\n" == KEYS.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        assert client.dele(1) == b"+OK Marked to be deleted."
        assert client.stat() == (1, len(KEYS))
        with pytest.raises(poplib.error_proto, match="Message is deleted"):
            client.retr(1)
        assert client.rset() == b"+OK"
        assert client.stat() == (2, len(VPN) + len(KEYS))
        assert client.noop() == b"+OK"
        client.dele(2)
        assert client.quit() == b"+OK Logging out, messages deleted."

    await asyncio.to_thread(walk)
    closed, = await trap.events.wait_for("looper.session.closed")
    assert (closed["protocol"], closed["reason"]) == ("pop3", "closed_by_server")
    failed, = trap.events.of("looper.login.failed")
    assert (failed["protocol"], failed["mechanism"], failed["username"], failed["password"]) == ("pop3", "USER", "j.doe", "guess")
    success, = trap.events.of("looper.login.success")
    assert (success["mechanism"], success["username"], success["password"]) == ("USER", "j.doe", "Summer2026")
    inputs = [e["input"] for e in trap.events.of("looper.command.input")]
    assert inputs[:5] == ["CAPA", "USER j.doe", "PASS", "USER j.doe", "PASS"]
    assert not any("Summer2026" in i or "guess" in i for i in inputs)
    reads = [(e["uid"], e["subject"], e["what"]) for e in trap.events.of("looper.bait.read")]
    assert reads == [(3, "Your VPN access", "body"), (7, "AWS keys", "header")]
    deletes = [(e["action"], e["uids"]) for e in trap.events.of("looper.pop3.delete")]
    assert deletes == [("dele", [3]), ("rset", [3]), ("dele", [7]), ("quit", [7])]
    assert trap.events.of("looper.dialback.failed") == []  # never reflected


async def test_pop3s_on_the_implicit_tls_port(relay):
    trap, _, port = await bait_trap(relay)

    def over_tls():
        client = Pop3s("127.0.0.1", port, context=TLS, timeout=10)
        capabilities = client.capa()
        client.user("j.doe")
        client.pass_("Summer2026")
        count = client.stat()[0]
        client.quit()
        return "STLS" in capabilities, count

    assert await asyncio.to_thread(over_tls) == (False, 2)
    assert (await trap.events.wait_for("looper.tls.established"))[0]["protocol"] == "pop3"


async def test_stls_and_plaintext_login_disabled(relay):
    trap, port, _ = await bait_trap(relay, plaintext_login=False)

    def secure_login():
        client = Pop3("127.0.0.1", port, timeout=10)
        before = client.capa()
        with pytest.raises(poplib.error_proto, match="Plaintext authentication disallowed"):
            client.user("j.doe")
        client.stls(context=TLS)
        after = client.capa()
        client.user("j.doe")
        reply = client.pass_("Summer2026")
        client.quit()
        return before, after, reply

    before, after, reply = await asyncio.to_thread(secure_login)
    assert "USER" not in before and before["SASL"] == [] and "STLS" in before
    assert "USER" in after and after["SASL"] == ["PLAIN"] and "STLS" not in after
    assert reply == b"+OK Logged in."
    assert await trap.events.wait_for("looper.login.success", username="j.doe")


async def test_a_client_that_pipelines_thousands_of_retrs_gets_them_all(relay):
    trap, port, _ = await bait_trap(relay)

    def greedy():
        with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(CLIENT, 0)) as sock:
            sock.sendall(b"USER j.doe\r\nPASS Summer2026\r\n" + b"RETR 1\r\n" * 3000 + b"QUIT\r\n")
            received = bytearray()
            while chunk := sock.recv(1 << 16):
                received += chunk
            return bytes(received)

    received = await asyncio.to_thread(greedy)
    reply = b"+OK %d octets\r\n" % len(VPN) + VPN.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    assert received.count(reply) == 3000
    assert received.endswith(b"+OK Logging out.\r\n")
