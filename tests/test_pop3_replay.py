"""Dovecot's recorded POP3 conversations (tests/data/dovecot/pop3*.json,
made by tests/record_dovecot.py against a private Dovecot 2.3.19.1 serving
the same bait) replayed against the POP3 machine, byte for byte: the store
is rebuilt from the recording's start time, so sizes, UIDVALIDITY and the
UIDLs are Dovecot's. A test per recorded conversation and variant."""

from __future__ import annotations

import pytest

from looper.proto.actions import Close, Send, StartTLS
from looper.proto.login import LoginPolicy
from looper.proto.pop3 import Pop3Client, Pop3Server, Pop3Settings
from tests.dovecot_recordings import Recording, load_recordings, mask

RECORDINGS = load_recordings(protocol="pop3")


def drain(machine: Pop3Server, state: dict) -> bytes:
    out = b""
    while True:
        actions = machine.actions()
        if not actions:
            if getattr(machine, "_backlog", b""):  # its output budget held the rest: the writes drained
                machine.continue_reading()
                continue
            return out
        for action in actions:
            if isinstance(action, Send):
                out += action.data
            elif isinstance(action, StartTLS):
                state["tls_due"] = True
            elif isinstance(action, Close):
                state["closed"] = True


def replay(recording: Recording) -> list[tuple[bytes, bytes, bool, bool]]:
    """(got, expected, closed, expected closed) per exchange."""
    settings = Pop3Settings(login_policy=LoginPolicy(frozenset({(recording.user, recording.password)})),
                            auth_mechanisms=("PLAIN",), plaintext_login=recording.plaintext_login)
    client = Pop3Client(ip="127.0.1.9", tls=recording.implicit_tls, local_ip="127.0.0.40")
    machine = Pop3Server(settings, client, recording.store().inbox)
    state = {"closed": False, "tls_due": False}
    results = []
    for exchange in recording.exchanges:
        if exchange.tls is not None:
            if not state["tls_due"]:  # implicit TLS: the handshake comes before the greeting
                results.append((b"", exchange.recv, state["closed"], exchange.closed))
                continue
            state["tls_due"] = False
            version, _, cipher = exchange.tls.partition(" ")
            machine.tls_started(version, cipher)
            got = drain(machine, state)
        else:
            if exchange.send:
                if state["tls_due"]:
                    # Plain text where the client owes a TLS handshake: Dovecot's
                    # TLS layer takes it for a broken ClientHello and closes.
                    state["closed"] = True
                    results.append((b"", exchange.recv, True, exchange.closed))
                    break
                machine.receive_data(exchange.send)
            got = drain(machine, state)
        results.append((got, exchange.recv, state["closed"], exchange.closed))
        if state["closed"]:
            break
    return results


NOT_YET: set[str] = set()


@pytest.mark.parametrize("recording", [
    pytest.param(r, marks=pytest.mark.xfail(strict=True, reason="not yet as Dovecot")) if r.name in NOT_YET else r
    for r in RECORDINGS
], ids=[r.name for r in RECORDINGS])
def test_dovecot_pop3_byte_for_byte(recording):
    for number, (got, expected, closed, expected_closed) in enumerate(replay(recording)):
        assert mask(got) == mask(expected), f"{recording.name} #{number}: sent {recording.exchanges[number].send!r}"
        assert closed == expected_closed, f"{recording.name} #{number}: closed"


def test_every_pop3_conversation_is_recorded():
    assert len(RECORDINGS) >= 30
