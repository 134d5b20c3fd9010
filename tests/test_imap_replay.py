"""Dovecot's recorded IMAP conversations (tests/data/dovecot/, made by
tests/record_dovecot.py against a private Dovecot 2.3.19.1 serving the same
bait) replayed against the IMAP machine, byte for byte: the store is
rebuilt from the recording's start time, so dates, UIDVALIDITY and sizes
are Dovecot's; only Dovecot's command timings "(0.001 + 0.000 secs)" are
masked. A test per recorded conversation and variant."""

from __future__ import annotations

import pytest

from looper.proto.imap import ImapServer, ImapSettings
from looper.proto.login import LoginPolicy
from tests.dovecot_recordings import Recording, load_recordings, mask, replay

RECORDINGS = load_recordings(protocol="imap")


class Env:
    def __init__(self, now_s: float) -> None:
        self._now_s = now_s

    def now_s(self) -> float:
        return self._now_s

    def cram_challenge(self) -> str:
        return "<1234.1796272176@mx>"


def replay_imap(recording: Recording) -> list[tuple[bytes, bytes, bool, bool]]:
    settings = ImapSettings(policy=LoginPolicy(frozenset({(recording.user, recording.password)})),
                            plaintext_login=recording.plaintext_login)
    return replay(recording, ImapServer(settings, recording.store(), Env(recording.bait_now), ip="127.0.1.9",
                                        tls=recording.implicit_tls))


@pytest.mark.parametrize("recording", RECORDINGS, ids=[r.name for r in RECORDINGS])
def test_dovecot_imap_byte_for_byte(recording):
    for number, (got, expected, closed, expected_closed) in enumerate(replay_imap(recording)):
        assert mask(got) == mask(expected), f"{recording.name} #{number}: sent {recording.exchanges[number].send!r}"
        assert closed == expected_closed, f"{recording.name} #{number}: closed"


def test_every_imap_conversation_is_recorded():
    assert len(RECORDINGS) >= 40
