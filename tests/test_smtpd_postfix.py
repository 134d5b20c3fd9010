"""The postfix persona against Debian's Postfix 3.7, recorded byte for byte.

Every conversation in tests/data/postfix/ is replayed against the machine:
the replies must be the same bytes, the same connection closes, and where
Postfix paused (error sleep, SASL failure delay) the machine asks for the
same pause.
"""

import pytest

from looper.proto.smtpd import ClientInfo
from tests.smtp_replay import normalised, recordings, replay

RECORDED = recordings("postfix")

# Recorded, but not what the persona emulates:
NOT_EMULATED: dict[str, str] = {}


# The client's earlier sessions that a recording continues.
EARLIER_AUTH_FAILURES = {"auth_penalty_next_connection": 2}


@pytest.mark.parametrize("name", sorted(set(RECORDED) - set(NOT_EMULATED)))
def test_replies_are_postfix_byte_for_byte(name):
    recorded = RECORDED[name]
    client = ClientInfo(
        "127.0.0.1", earlier_auth_failures=EARLIER_AUTH_FAILURES.get(name, 0), local_ip="127.0.0.2"
    )
    exchanges = replay(recorded, client=client)
    if name == "early_talker":  # recorded without the greeting that came first
        exchanges[0].expected = b"220 mail.example.test ESMTP Postfix (Debian/GNU)\r\n" + exchanges[0].expected
    for number, exchange in enumerate(exchanges):
        where = f"{name} #{number}: sent {exchange.send[:80]!r}"
        assert normalised(exchange.got) == normalised(exchange.expected), where
        assert exchange.closed == exchange.expected_closed, where
        if exchange.timed_out or not exchange.expected:
            continue  # the idle timeout is the adapter's clock; silence is the recorder's wait
        if exchange.expected_ms > 500:
            assert abs(sum(exchange.delays_s) * 1000 - exchange.expected_ms) < 700, where
        else:
            assert sum(exchange.delays_s) < 0.5, where
