"""The emulated relay on real sockets, with Python's smtplib as the client.

The dial-back is refused (nothing listens on the client's address at the
dial-back port), so every session falls back to the emulated relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import smtplib
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from looper.net.tls import snakeoil_host_name
from looper.proto.personas import POSTFIX
from tests.conftest import EMULATED_CLIENT, EMULATED_HOST, free_port
from tests.netutil import connect_from

CLIENT, HOST = EMULATED_CLIENT, EMULATED_HOST  # see the relay fixture in conftest.py
GREETING = f"220 {HOST} ESMTP Postfix (Debian/GNU)\r\n".encode()
MESSAGE = b"From: <a@spam.example>\r\nSubject: buy\r\nMessage-ID: <e1@spam.example>\r\n\r\n.dot line\r\nBody.\r\n"


def smtp_client(trap, **kw) -> smtplib.SMTP:
    return smtplib.SMTP(trap.host, trap.port, local_hostname="spam.example.org", source_address=(CLIENT, 0), timeout=10, **kw)


async def test_a_refused_dialback_falls_back_and_the_transaction_completes(relay):
    trap = await relay()

    def client_session():
        with smtp_client(trap) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "10240000" and "chunking" in client.esmtp_features
            refused = client.sendmail("a@spam.example", ["victim@far.example.com", "root"], MESSAGE)
            assert refused == {}
            return client.noop()

    assert await asyncio.to_thread(client_session) == (250, b"2.0.0 Ok")
    closed = await trap.events.wait_for("looper.session.closed")
    assert closed[0]["mode"] == "emulate" and closed[0]["reason"] == "closed_by_server"
    assert trap.events.of("looper.dialback.failed")[0]["reason"] == "refused"
    (message,) = trap.events.of("looper.smtp.message")
    stored = Path(message["path"])
    content = MESSAGE  # smtplib stuffed the leading dot; the relay took it out again
    assert stored.read_bytes() == content
    assert stored.name == hashlib.sha256(content).hexdigest() + ".eml" == message["sha256"] + ".eml"
    assert message["rcpt_to"] == ["victim@far.example.com", "root"] and message["mail_from"] == "a@spam.example"
    assert message["subject"] == "buy" and message["message_id"] == "<e1@spam.example>"
    assert message["received_header"].startswith(f"Received: from spam.example.org (unknown [{CLIENT}]) by {HOST} (Postfix) with ESMTP id {message['queue_id']};")
    inputs = [e["input"] for e in trap.events.of("looper.command.input")]
    # As smtplib sent them (3.11 writes "mail FROM:", 3.13 "mail from:"): logged as they came.
    assert [i.lower() for i in inputs[:3]] == [
        "ehlo spam.example.org", f"mail from:<a@spam.example> size={len(MESSAGE)}", "rcpt to:<victim@far.example.com>"
    ]


async def test_pipelined_replies_come_in_one_write(relay):
    trap = await relay()
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    assert await reader.readline() == GREETING
    writer.write(b"EHLO x.example\r\n")
    assert (await reader.readuntil(b"250 CHUNKING\r\n")).startswith(f"250-{HOST}\r\n".encode())
    writer.write(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 5 LAST\r\nhelloQUIT\r\n")
    replies = await asyncio.wait_for(reader.read(4096), 5)
    assert replies.startswith(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: 5 bytes queued as ")
    assert replies.endswith(b"\r\n221 2.0.0 Bye\r\n")  # all in one read: one write
    writer.close()
    (message,) = await trap.events.wait_for("looper.smtp.message")
    assert message["transport"] == "bdat" and Path(message["path"]).read_bytes() == b"hello"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
async def test_auth_with_configured_credentials(relay, mechanism):
    trap = await relay(smtp={"auth_mechanisms": ["PLAIN", "LOGIN", "CRAM-MD5"]}, credentials=["admin:hunter2"])

    def login():
        with smtp_client(trap) as client:
            client.ehlo()
            client.user, client.password = "admin", "hunter2"
            return client.auth(mechanism, getattr(client, "auth_" + mechanism.lower().replace("-", "_")))

    assert await asyncio.to_thread(login) == (235, b"2.7.0 Authentication successful")
    (success,) = await trap.events.wait_for("looper.login.success")
    assert success["mechanism"] == mechanism and success["username"] == "admin" and success["protocol"] == "smtp"
    if mechanism == "CRAM-MD5":
        assert success["challenge"].endswith("@mx>") and len(success["digest"]) == 32
    else:
        assert success["password"] == "hunter2"


async def test_harvester_mode_refuses_logins_and_relaying(relay):
    # PLAIN and LOGIN only: smtplib would try CRAM-MD5 (no password) first.
    trap = await relay(smtp={"mode": "harvester", "auth_mechanisms": ["PLAIN", "LOGIN"]})
    # Dovecot's 2 s and 6 s failure delays, made short (test_smtpd_postfix.py holds them).
    emulated = trap.trap.emulated
    emulated.settings = replace(
        emulated.settings, persona=replace(POSTFIX, auth_failure_delay_s=0.02, auth_failure_spread_s=0.0,
                                            auth_repeat_failure_delay_s=0.02, auth_repeat_failure_spread_s=0.0)
    )

    def attempt():
        with smtp_client(trap) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
                client.login("admin", "admin")
            assert failure.value.smtp_code == 535
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("a@b.example", ["v@far.example"], MESSAGE)
            return refused.value.recipients

    assert await asyncio.to_thread(attempt) == {"v@far.example": (454, b"4.7.1 <v@far.example>: Relay access denied")}
    failed = await trap.events.wait_for("looper.login.failed")
    assert failed[0]["username"] == "admin" and failed[0]["password"] == "admin"


async def test_starttls_then_auth_over_tls(relay, tmp_path):
    trap = await relay(credentials=["admin:admin"])  # no pair is accepted by default

    def secure_login():
        with smtp_client(trap) as client:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            client.starttls(context=context)
            peer = client.sock.getpeercert(binary_form=True)
            client.ehlo()
            assert "starttls" not in client.esmtp_features
            return peer, client.login("admin", "admin")

    certificate, reply = await asyncio.to_thread(secure_login)
    assert reply == (235, b"2.7.0 Authentication successful")
    # Debian's snakeoil: the machine's name (hostname -f), not the mail name.
    kept = tmp_path / "logs" / "tls" / f"{snakeoil_host_name()}.pem"
    assert kept.exists() and certificate == ssl.PEM_cert_to_DER_cert(kept.read_text())
    name = x509.load_der_x509_certificate(certificate).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert name == snakeoil_host_name() == subprocess.run(["hostname", "-f"], capture_output=True, text=True).stdout.strip()
    assert (await trap.events.wait_for("looper.tls.established"))[0]["version"].startswith("TLSv1")


async def test_implicit_tls_on_a_submissions_port(relay):
    port = free_port()
    trap = await relay(listen={"submissions": [f"127.0.0.1:{port}"]})

    def over_tls():
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP_SSL("127.0.0.1", port, context=context, source_address=(CLIENT, 0), timeout=10) as client:
            code, _ = client.ehlo()
            return code, "starttls" in client.esmtp_features

    assert await asyncio.to_thread(over_tls) == (250, False)
    assert trap.events.of("looper.dialback.failed") == []  # never reflected


async def test_the_size_limit(relay):
    trap = await relay(smtp={"max_message_bytes": 2048})

    def too_big():
        with smtp_client(trap) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("a@b.example", ["c@d.example"], b"x" * 4096)
            return refused.value.smtp_code, refused.value.smtp_error

    assert await asyncio.to_thread(too_big) == (552, b"5.3.4 Message size exceeds fixed limit")


async def test_idle_timeout(relay):
    trap = await relay(smtp={"idle_timeout": 0.3})
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    assert await reader.readline() == GREETING
    assert await asyncio.wait_for(reader.read(), 5) == f"421 4.4.2 {HOST} Error: timeout exceeded\r\n".encode()
    writer.close()
    closed = await trap.events.wait_for("looper.session.closed")
    assert closed[0]["reason"] == "timeout"


async def test_the_error_limit_slows_down_then_hangs_up(relay):
    trap = await relay()
    # Postfix's 1 s error sleep, made short for the test (the replay tests hold the 1 s).
    emulated = trap.trap.emulated
    emulated.settings = replace(emulated.settings, persona=replace(POSTFIX, error_sleep_s=0.02))
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    await reader.readline()
    writer.write(b"XYZZY\r\n" * 25)
    replies = await asyncio.wait_for(reader.read(), 10)
    assert replies == b"500 5.5.2 Error: command not recognized\r\n" * 20 + f"421 4.7.0 {HOST} Error: too many errors\r\n".encode()
    writer.close()
    assert (await trap.events.wait_for("looper.smtp.limit"))[0]["limit"] == "errors"


async def test_the_error_sleep_is_never_shorter_than_postfix_s_second(relay):
    """Real Postfix sleeps 1.000-1.002 s before each reply once a client has
    made ten errors: a reply that came sooner would prove it is not Postfix."""
    trap = await relay()
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    await reader.readline()
    writer.write(b"XYZZY\r\n" * 10)
    for _ in range(10):
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"500 ")
    loop = asyncio.get_running_loop()
    for _ in range(2):
        sent = loop.time()
        writer.write(b"XYZZY\r\n")  # the server cannot read it before now
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"500 ")
        assert loop.time() - sent >= 1.0
    writer.close()


async def test_a_full_disk_gets_452_and_no_250(relay, tmp_path):
    trap = await relay()
    messages = tmp_path / "logs" / "messages"
    messages.rmdir()
    messages.write_text("not a folder")  # every write into it now fails

    def send():
        with smtp_client(trap) as client:
            with pytest.raises(smtplib.SMTPDataError) as failed:
                client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
            return failed.value.smtp_code, failed.value.smtp_error

    assert await asyncio.to_thread(send) == (452, b"4.3.1 Insufficient system storage")
    assert (await trap.events.wait_for("looper.smtp.store_failed"))[0]["reason"]
    assert trap.events.of("looper.smtp.message") == []


async def test_a_client_that_talks_first_is_flagged(relay):
    trap = await relay()
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    writer.write(b"EHLO eager.example\r\n")
    assert await reader.readline() == GREETING
    assert (await reader.readuntil(b"250 CHUNKING\r\n")).startswith(b"250-")
    writer.close()
    [pregreet] = await trap.events.wait_for("looper.smtp.pregreet")
    assert pregreet["bytes"] == len(b"EHLO eager.example\r\n")
    # The greeting and the answer to what came before it leave in one write,
    # as Postfix's do (the transcript keeps a chunk per write).
    await trap.events.wait_for("looper.session.closed")
    await asyncio.sleep(0.1)  # the transcript is written a loop turn later
    lines = [json.loads(line) for line in (trap.events.path.parent / "transcripts.jsonl").read_text().splitlines()]
    sent = [line["text"] for line in lines if line.get("session") == pregreet["session"] and line.get("dir") == "server"
            and "text" in line]
    assert sent[0].startswith(GREETING.decode()) and "250 CHUNKING\r\n" in sent[0]


async def test_blocked_and_too_frequent_clients_get_nothing(relay):
    trap = await relay(limits={"block": ["127.0.0.4/32"], "rate": "2/minute"})
    reader, writer = await connect_from("127.0.0.4", trap.host, trap.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    for _ in range(2):
        reader, writer = await connect_from(CLIENT, trap.host, trap.port)
        assert await reader.readline() == GREETING
        writer.close()
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        pass
    writer.close()
    await trap.events.wait_for("looper.session.closed", count=4)
    refused = trap.events.of("looper.session.refused")
    assert [r["reason"] for r in refused] == ["blocked", "rate"]
    assert len(trap.events.of("looper.dialback.failed")) == 2  # the refused were never dialed


# Two limits among them, reached on the wire byte for byte as Postfix: a line
# over 4096 bytes, recipients per message. (Junk commands per session take
# Postfix's 1 s error sleeps: test_smtpd_postfix.py replays that one.)
WIRE_SCENARIOS = [
    "ehlo_quit", "data_full", "pipelined_all", "bdat_chunks", "rset_noop", "mail_params_bad", "http_get",
    "long_line_4097", "rcpt_limit",
]


@pytest.mark.parametrize("name", WIRE_SCENARIOS)
async def test_on_the_wire_the_persona_says_what_postfix_said(start_trap, name):
    """The same client script against the running trap and against the real
    Postfix (recorded): the same bytes but for queue ids."""
    trap = await _wire_trap(start_trap)
    await _replay_on_the_wire(trap, name)


async def _wire_trap(start_trap):
    return await start_trap(
        free_port(CLIENT), dialback={"on_failure": "emulate"},
        smtp={"hostname": "mail.example.test", "auth_mechanisms": []},
    )


async def _replay_on_the_wire(trap, name: str) -> None:
    from tests.smtp_replay import normalised, recordings

    recorded = recordings("postfix")[name]
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    for number, step in enumerate(recorded["exchanges"]):
        writer.write(step["send"].encode("latin-1"))
        expected = step["recv"].encode("latin-1")
        got = b""
        while len(got) < len(expected):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            got += chunk
        assert normalised(got) == normalised(expected), f"{name} #{number}"
        if step["closed"]:
            assert await asyncio.wait_for(reader.read(), 5) == b""
            break  # what the script sends after the close reaches nobody
    writer.close()


async def test_exim_left_waiting_for_a_chunk_by_quit_answers_nothing_until_its_timeout(relay):
    """Exim 4.96 answers a QUIT between chunks and then, its header reader
    waiting for a chunk that never comes, nothing at all until its command
    timeout (tests/data/exim/bdat_quit_then_talk.json, bdat_quit_idle.json)."""
    trap = await relay(smtp={"persona": "exim", "idle_timeout": 1.0})
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    assert (await reader.readline()).startswith(b"220 ")
    writer.write(b"EHLO c.example\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<b@far.example>\r\n")
    while not (await reader.readline()).startswith(b"250 Accepted"):
        pass
    writer.write(b"BDAT 8\r\nHello.\r\nQUIT\r\n")
    assert await reader.readline() == b"250 8 byte chunk received\r\n"
    assert await reader.readline() == f"221 {HOST} closing connection\r\n".encode()
    writer.write(b"NOOP\r\nRSET\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b"421 Lost incoming connection\r\n"
    writer.close()
    closed = await trap.events.wait_for("looper.session.closed")
    assert closed[0]["reason"] == "timeout"
    assert [e["input"] for e in trap.events.of("looper.command.input")][-3:] == ["QUIT", "NOOP", "RSET"]
