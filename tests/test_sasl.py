"""The one SASL decoder, as SMTP, IMAP and POP3 will all use it."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.proto.sasl import (
    Challenge,
    Credentials,
    Failure,
    SaslExchange,
    cram_md5_digest,
    decode_response,
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_with_initial_response():
    exchange = SaslExchange("plain")
    outcome = exchange.start(b64(b"\0user@example.test\0secret"))
    assert outcome == Credentials("PLAIN", "user@example.test", password="secret")
    assert exchange.done


def test_plain_with_authzid_after_an_empty_challenge():
    exchange = SaslExchange("PLAIN")
    assert exchange.start(None) == Challenge(b"")
    assert exchange.respond(b64(b"admin\0user\0pw")) == Credentials("PLAIN", "user", password="pw", authzid="admin")


def test_login_both_prompts_and_initial_response_form():
    exchange = SaslExchange("LOGIN")
    assert exchange.start(None) == Challenge(b"Username:")
    assert exchange.respond(b64(b"user")) == Challenge(b"Password:")
    assert exchange.respond(b64(b"pw")) == Credentials("LOGIN", "user", password="pw")
    exchange = SaslExchange("LOGIN")
    assert exchange.start(b64(b"user")) == Challenge(b"Password:")
    assert exchange.respond(b64(b"pw")) == Credentials("LOGIN", "user", password="pw")


def test_cram_md5_gives_user_digest_and_challenge():
    challenge = "<1896.697170952@mail.example.test>"
    exchange = SaslExchange("CRAM-MD5", cram_challenge=challenge)
    assert exchange.start(None) == Challenge(challenge.encode())
    digest = cram_md5_digest("tanstaaftanstaaf", challenge)
    outcome = exchange.respond(b64(b"tim " + digest.encode()))
    assert outcome == Credentials("CRAM-MD5", "tim", digest=digest, challenge=challenge)
    # RFC 2195's own example
    assert cram_md5_digest("tanstaaftanstaaf", "<1896.697170952@postoffice.reston.mci.net>") == (
        "b913a602c7eda7a495b4e6e7334d3890"
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_star_cancels_and_bad_base64_is_undecodable(mechanism):
    assert SaslExchange(mechanism).respond(b"*") is Failure.CANCELLED
    assert SaslExchange(mechanism).respond(b"not base64!") is Failure.UNDECODABLE


def test_malformed_responses():
    assert SaslExchange("PLAIN").respond(b64(b"no nul bytes")) is Failure.MALFORMED
    assert SaslExchange("CRAM-MD5").respond(b64(b"nodigest")) is Failure.MALFORMED
    assert SaslExchange("CRAM-MD5").start(b64(b"user digest")) is Failure.MALFORMED
    assert decode_response(b"=") == b""


def test_misuse_is_an_exception():
    with pytest.raises(ValueError):
        SaslExchange("NTLM")
    exchange = SaslExchange("PLAIN")
    exchange.respond(b"*")
    with pytest.raises(RuntimeError):
        exchange.respond(b"*")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5"]), st.lists(st.binary(max_size=200), max_size=4), st.booleans())
def test_any_response_ends_in_an_outcome_and_never_raises(mechanism, lines, initial):
    exchange = SaslExchange(mechanism, cram_challenge="<1.2@h>")
    outcome = exchange.start(lines[0] if initial and lines else None)
    for line in lines[1:] if initial else lines:
        if exchange.done:
            break
        outcome = exchange.respond(line)
    assert isinstance(outcome, (Challenge, Credentials, Failure))
