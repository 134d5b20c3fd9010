"""The exim and sendmail personas against the real Exim 4.96 and sendmail
8.17 (tests/data/exim, tests/data/sendmail): every recorded conversation is
replayed against the machine, configured like the recorded server's
settings group (each JSON's "settings"), and must come out byte for byte,
with the same closes, and the same pauses where the server paused;
and the exchange persona against Microsoft's documented session
(tests/data/exchange/notes.md)."""

from __future__ import annotations

import base64
import re
from dataclasses import replace

import pytest

from looper.proto.personas import EXCHANGE, PERSONAS
from looper.proto.smtpd import ClientInfo, SmtpSettings
from tests.smtp_replay import CREDENTIALS, recordings, replay
from tests.test_smtpd import Client

DATE = re.compile(rb"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d (?:[+-]\d{4}|GMT)")
QUEUE_IDS = re.compile(rb"(?<=id=)[0-9A-Za-z-]+|\b[0-9A-Za-z]+(?= Message accepted)")
# CRAM-MD5 and DIGEST-MD5 challenges carry a time stamp and a nonce.
CHALLENGE = re.compile(rb"(?<=^334 )[A-Za-z0-9+/=]{40,}", re.M)
NONCE = re.compile(rb'(?<=\bnonce=")[A-Za-z0-9+/]+={0,2}(?=")')  # base64 of the random bytes

# The recorded clients: 127.0.0.5 has no reverse DNS; 127.0.0.6 and
# 127.0.0.1 have (tests/record_personas.py's DNS server).
REVERSE_DNS = {"127.0.0.6": "client.example.net", "127.0.0.1": "localhost"}


def normalised(reply: bytes) -> bytes:
    return CHALLENGE.sub(_masked_challenge, QUEUE_IDS.sub(b"ID", DATE.sub(b"DATE", reply)))


def _masked_challenge(challenge: re.Match[bytes]) -> bytes:
    """A DIGEST-MD5 challenge decoded, only its nonce masked: the rest must
    come out byte for byte. Any other (CRAM-MD5's time stamp) as a whole."""
    decoded = base64.b64decode(challenge.group())
    masked, nonces = NONCE.subn(b"NONCE", decoded)
    return masked if nonces else b"CHALLENGE"


def settings_for(persona: str, group: dict[str, str] | None = None) -> SmtpSettings:
    """The machine configured like the recorded server of `persona` with
    the changes from stock that a recording lists (None: stock)."""
    group = group or {}
    chosen = PERSONAS[persona]
    settings = SmtpSettings(
        hostname="mail.example.test",
        persona=chosen,
        auth_mechanisms=chosen.default_auth_mechanisms,
        max_message_bytes=chosen.default_max_message_bytes,
        tls_available=chosen.offers_starttls_by_default,
        size_limit_configured=False,
        max_recipients=chosen.default_max_recipients,
    )
    if "authenticators" in group:  # Debian's example plaintext authenticators
        settings = replace(settings, auth_mechanisms=("PLAIN", "LOGIN"), credentials=CREDENTIALS,
                           auth_tls_only="AUTH_SERVER_ALLOW_NOTLS_PASSWORDS" not in group)
    if "starttls.m4" in group:
        settings = replace(settings, tls_available=True)
    if group.get("dc_relay_nets") == "" or group.get("access") == "":
        settings = replace(settings, mode="harvester")  # the client may not relay
    for key in ("MESSAGE_SIZE_LIMIT", "confMAX_MESSAGE_SIZE"):
        if key in group:
            settings = replace(settings, max_message_bytes=int(group[key]), size_limit_configured=True)
    if "smtp_receive_timeout" in group or "confTO_COMMAND" in group:
        settings = replace(settings, idle_timeout_s=5.0)
    return settings


def client_for(recorded: dict) -> ClientInfo:
    ip = recorded.get("client", "127.0.0.5")
    first = recorded["exchanges"][0]
    # The client talked before any greeting came (the adapter knows it so).
    early = len(first["send"]) if first["send"] and not first["recv"].startswith("220") else 0
    return ClientInfo(ip, name=REVERSE_DNS.get(ip), local_ip="127.0.0.3", pregreet_bytes=early)


# Recorded conversations whose rule the machine does not follow yet, and
# why; each is a strict expected failure: one that starts to pass must
# leave the list.
NOT_YET: dict[tuple[str, str], str] = {}


CONVERSATIONS = [(persona, name) for persona in ("exim", "sendmail") for name in recordings(persona)]


@pytest.mark.parametrize(("persona", "name"), CONVERSATIONS, ids=[f"{p}-{n}" for p, n in CONVERSATIONS])
def test_recorded_conversation_byte_for_byte(persona, name, request):
    if (persona, name) in NOT_YET:
        request.applymarker(pytest.mark.xfail(strict=True, reason=NOT_YET[persona, name]))
    recorded = recordings(persona)[name]
    if not recorded["exchanges"][0]["send"] and not recorded["exchanges"][0]["recv"]:
        # The client talked first, before the greet pause ended: the trap
        # knows that when it starts the session (the dial-back's wait).
        recorded = {**recorded, "exchanges": recorded["exchanges"][1:]}
    exchanges = replay(recorded, settings_for(persona, recorded["settings"]), client=client_for(recorded))
    for number, exchange in enumerate(exchanges):
        where = f"{persona} {name} #{number}: sent {exchange.send[:80]!r}"
        assert normalised(exchange.got) == normalised(exchange.expected), where
        assert exchange.closed == exchange.expected_closed, where
        if exchange.timed_out or not exchange.expected:
            continue  # the idle timeout is the adapter's clock; silence is the recorder's wait
        # Where the server paused (greet pause, throttles), the machine asks for the same pause.
        if exchange.expected_ms > 500:
            assert abs(sum(exchange.delays_s) * 1000 - exchange.expected_ms) < 700, where
        else:
            assert sum(exchange.delays_s) < 0.5, where


def test_exchange_as_microsoft_documents_it():
    settings = replace(
        settings_for("postfix"), persona=EXCHANGE, max_message_bytes=37748736, auth_mechanisms=("NTLM",), tls_available=True
    )
    client = Client(settings, ClientInfo("172.16.0.5"))
    assert client.say(b"EHLO client.example\r\n") == (
        b"250-mail.example.test Hello [172.16.0.5]\r\n250-SIZE 37748736\r\n250-PIPELINING\r\n250-DSN\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-X-ANONYMOUSTLS\r\n250-AUTH NTLM\r\n250-X-EXPS GSSAPI NTLM\r\n"
        b"250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 XRDST\r\n"
    )
    assert client.say(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n") == (
        b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n"
    )
    assert client.say(b"x\r\n.\r\nXYZZY\r\nQUIT\r\n").endswith(
        b"500 5.3.3 Unrecognized command\r\n221 2.0.0 Service closing transmission channel\r\n"
    )


def test_greetings():
    for persona, expected in [
        ("postfix", b"220 mail.example.test ESMTP Postfix (Debian/GNU)\r\n"),
        ("exim", b"220 mail.example.test ESMTP Exim 4.96 Sun, 22 Nov 2026 10:00:00 +0000\r\n"),
        (
            "sendmail",
            b"220 mail.example.test ESMTP Sendmail 8.17.1.9/8.17.1.9/Debian-2+deb12u2; Sun, 22 Nov 2026 10:00:00 GMT;"
            b" (No UCE/UBE) logging access from: [192.0.2.1](FAIL)-[192.0.2.1]\r\n",
        ),
        ("exchange", b"220 mail.example.test Microsoft ESMTP MAIL Service ready at Sun, 22 Nov 2026 10:00:00 +0000\r\n"),
    ]:
        client = Client(settings_for(persona), ClientInfo("192.0.2.1"))
        assert client.greeting == expected, persona
