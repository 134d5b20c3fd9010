"""Dovecot's recorded POP3 conversations (tests/data/dovecot/pop3*.json,
made by tests/record_dovecot.py against a private Dovecot 2.3.19.1 serving
the same bait) replayed against the POP3 machine, byte for byte: the store
is rebuilt from the recording's start time, so sizes, UIDVALIDITY and the
UIDLs are Dovecot's. A test per recorded conversation and variant."""

from __future__ import annotations

import pytest

from looper.proto.login import LoginPolicy
from looper.proto.pop3 import Pop3Client, Pop3Server, Pop3Settings
from tests.dovecot_recordings import Recording, load_recordings, mask, replay

RECORDINGS = load_recordings(protocol="pop3")


def replay_pop3(recording: Recording) -> list[tuple[bytes, bytes, bool, bool]]:
    settings = Pop3Settings(login_policy=LoginPolicy(frozenset({(recording.user, recording.password)})),
                            auth_mechanisms=("PLAIN",), plaintext_login=recording.plaintext_login)
    client = Pop3Client(ip="127.0.1.9", tls=recording.implicit_tls, local_ip="127.0.0.40")
    return replay(recording, Pop3Server(settings, client, recording.store().inbox))


@pytest.mark.parametrize("recording", RECORDINGS, ids=[r.name for r in RECORDINGS])
def test_dovecot_pop3_byte_for_byte(recording):
    for number, (got, expected, closed, expected_closed) in enumerate(replay_pop3(recording)):
        assert mask(got) == mask(expected), f"{recording.name} #{number}: sent {recording.exchanges[number].send!r}"
        assert closed == expected_closed, f"{recording.name} #{number}: closed"


def test_every_pop3_conversation_is_recorded():
    assert len(RECORDINGS) >= 30
