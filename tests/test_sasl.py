"""The one SASL decoder, as SMTP, IMAP and POP3 will all use it."""

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.proto.digest_md5 import DigestChallenge, DigestMd5Directives, parse_directives
from looper.proto.sasl import (
    Acknowledged,
    Challenge,
    Credentials,
    Failure,
    SaslExchange,
    cram_md5_digest,
    decode_response,
    digest_md5_digest,
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


# RFC 2831 section 4's example, the known answer.
RFC_CHALLENGE = DigestChallenge("OA6MG9tEQGm2hh", "elwood.innosoft.com")
RFC_RESPONSE = (
    'charset=utf-8,username="chris",realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",nc=00000001,'
    'cnonce="OA6MHXh6VqTrRk",digest-uri="imap/elwood.innosoft.com",response=d388dad90d4bbd760a152321f2143af7,qop=auth'
)
RFC_DIRECTIVES = DigestMd5Directives("elwood.innosoft.com", "OA6MG9tEQGm2hh", "OA6MHXh6VqTrRk", "00000001", "auth",
                                     "imap/elwood.innosoft.com")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def digest_client(password: str, *, username: str, realm: str, nonce: str, cnonce: str, uri: str,
                  authzid: str = "", method: str = "AUTHENTICATE") -> str:
    """An independent DIGEST-MD5 client: RFC 2831 2.1.2.1 written out."""
    a1 = hashlib.md5(f"{username}:{realm}:{password}".encode()).digest() + f":{nonce}:{cnonce}".encode()
    if authzid:
        a1 += f":{authzid}".encode()
    a2 = f"{method}:{uri}".encode()
    return md5_hex(f"{md5_hex(a1)}:{nonce}:00000001:{cnonce}:auth:{md5_hex(a2)}".encode())


def test_digest_md5_known_answer_of_rfc_2831():
    assert digest_md5_digest("secret", "chris", RFC_DIRECTIVES) == "d388dad90d4bbd760a152321f2143af7"
    assert digest_md5_digest("secret", "chris", RFC_DIRECTIVES, rspauth=True) == "ea40f60335c427b5527b84dbabcdfffd"
    exchange = SaslExchange("DIGEST-MD5", digest_challenge=RFC_CHALLENGE)
    assert exchange.start(None) == Challenge(RFC_CHALLENGE.text().encode())
    outcome = exchange.respond(b64(RFC_RESPONSE.encode()))
    assert outcome == Credentials("DIGEST-MD5", "chris", digest="d388dad90d4bbd760a152321f2143af7",
                                  directives=RFC_DIRECTIVES)
    assert exchange.done  # the verdict is the machine's
    assert exchange.admit("secret") == Challenge(b"rspauth=ea40f60335c427b5527b84dbabcdfffd")
    assert not exchange.done
    assert exchange.respond(b"") == Acknowledged(outcome)
    assert exchange.done


def test_digest_md5_challenge_as_cyrus_and_dovecot_word_it():
    drawn = DigestChallenge.drawn(lambda count: bytes(count), "mail.example.test")
    assert drawn.text() == (
        f'nonce="{base64.b64encode(bytes(32)).decode()}",realm="mail.example.test",qop="auth,auth-int,auth-conf",'
        'cipher="rc4-40,rc4-56,rc4,des,3des",maxbuf=8192,charset=utf-8,algorithm=md5-sess'
    )
    assert drawn.stand_in_rspauth == "00" * 16
    dovecot = DigestChallenge.drawn(lambda count: b"\xff" * count, "mail.example.test", server="dovecot")
    nonce = base64.b64encode(b"\xff" * 16).decode()
    assert dovecot.text() == f'realm="",nonce="{nonce}",qop="auth",charset="utf-8",algorithm="md5-sess"'


def digest_exchange(response: str, challenge: DigestChallenge = RFC_CHALLENGE) -> object:
    exchange = SaslExchange("DIGEST-MD5", digest_challenge=challenge)
    exchange.start(None)
    return exchange.respond(b64(response.encode()))


def test_digest_md5_with_an_independent_client_authzid_and_escapes():
    challenge = DigestChallenge("n0nce+/=", "mail.example.test")
    response = digest_client("pa:ss", username='us"er', realm="mail.example.test", nonce="n0nce+/=", cnonce="c,n",
                             uri="smtp/mail.example.test", authzid='us"er')
    outcome = digest_exchange(
        f' username = "us\\"er" ,, realm="mail.example.test",nonce="n0nce+/=",cnonce="c,n", nc=00000001,'
        f'qop=auth,digest-uri="smtp/mail.example.test",response={response.upper()},authzid="us\\"er",maxbuf=65536,',
        challenge,
    )
    assert isinstance(outcome, Credentials) and outcome.username == 'us"er' and outcome.authzid == 'us"er'
    assert outcome.digest == response and outcome.directives.cnonce == "c,n"
    assert digest_md5_digest("pa:ss", outcome.username, outcome.directives, outcome.authzid) == response
    server_proof = digest_client("pa:ss", username='us"er', realm="mail.example.test", nonce="n0nce+/=",
                                 cnonce="c,n", uri="smtp/mail.example.test", authzid='us"er', method="")
    exchange = SaslExchange("DIGEST-MD5", digest_challenge=challenge)
    exchange.start(None)
    exchange.respond(b64(f'username="u",nonce="n0nce+/=",cnonce="c",nc=00000001,digest-uri="smtp/h",'
                         f'response={"0" * 32}'.encode()))
    assert exchange.admit(None) == Challenge(b"rspauth=" + challenge.stand_in_rspauth.encode())
    assert digest_md5_digest("pa:ss", 'us"er', outcome.directives, 'us"er', rspauth=True) == server_proof


GOOD = {"username": '"chris"', "realm": '"elwood.innosoft.com"', "nonce": '"OA6MG9tEQGm2hh"',
        "cnonce": '"OA6MHXh6VqTrRk"', "nc": "00000001", "qop": "auth", "digest-uri": '"imap/elwood.innosoft.com"',
        "response": "d388dad90d4bbd760a152321f2143af7"}


def directive_list(**changes: str | None) -> str:
    directives = {**GOOD, **{name.replace("_", "-"): value for name, value in changes.items()}}
    return ",".join(f"{name}={value}" for name, value in directives.items() if value is not None)


@pytest.mark.parametrize("response", [
    directive_list(username=None),
    directive_list(nonce=None),
    directive_list(cnonce=None),
    directive_list(response=None),
    directive_list(digest_uri=None),
    directive_list(nc=None),
    directive_list(nonce='"someone-elses"'),
    directive_list(nc="00000002"),
    directive_list(qop="auth-int"),
    directive_list(qop="auth-conf"),
    directive_list(response="xyz"),
    directive_list(charset="iso-8859-1"),
    directive_list() + ',username="chris"',  # a directive twice
    directive_list(username='"unterminated'),
    directive_list(realm="a b"),
    directive_list() + ",=x",
    'username="chris" realm="x"',
    "x" * 5000,
    "",
])
def test_digest_md5_malformed_responses(response):
    assert digest_exchange(response) is Failure.MALFORMED


def test_digest_md5_proof_steps_and_misuse():
    exchange = SaslExchange("DIGEST-MD5", digest_challenge=RFC_CHALLENGE)
    assert exchange.start(b64(RFC_RESPONSE.encode())) is Failure.MALFORMED  # the server speaks first
    exchange = SaslExchange("DIGEST-MD5", digest_challenge=RFC_CHALLENGE)
    exchange.start(None)
    with pytest.raises(RuntimeError):
        exchange.admit("secret")  # nothing to admit yet
    exchange.respond(b64(RFC_RESPONSE.encode()))
    with pytest.raises(RuntimeError):
        exchange.respond(b"")  # the verdict is due, not a response
    exchange.admit("wrong")
    assert exchange.respond(b64(b"more")) is Failure.MALFORMED  # only an empty response takes the proof
    with pytest.raises(ValueError):
        SaslExchange("DIGEST-MD5")
    plain = SaslExchange("PLAIN")
    plain.respond(b64(b"\0u\0p"))
    assert plain.admit("p") is None and plain.done


def test_directive_lists():
    assert parse_directives(' a = "x\\"y" , b=tok,,') == {"a": 'x"y', "b": "tok"}
    assert parse_directives("") == {}
    assert parse_directives("A=1,a=2") is None
    assert parse_directives('a="x') is None
    assert parse_directives("a=") is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(' \t",=\\abcxyz019-') + ["é", "\x00"]), max_size=120))
def test_directive_parser_never_raises(text):
    found = parse_directives(text)
    assert found is None or all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())
    digest_exchange(text)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5"])
def test_star_cancels_and_bad_base64_is_undecodable(mechanism):
    assert SaslExchange(mechanism, digest_challenge=RFC_CHALLENGE).respond(b"*") is Failure.CANCELLED
    assert SaslExchange(mechanism, digest_challenge=RFC_CHALLENGE).respond(b"not base64!") is Failure.UNDECODABLE


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
@given(st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5"]), st.lists(st.binary(max_size=200), max_size=4),
       st.booleans(), st.sampled_from([None, "secret"]))
def test_any_response_ends_in_an_outcome_and_never_raises(mechanism, lines, initial, password):
    exchange = SaslExchange(mechanism, cram_challenge="<1.2@h>", digest_challenge=RFC_CHALLENGE)
    outcome = exchange.start(lines[0] if initial and lines else None)
    for line in lines[1:] if initial else lines:
        if isinstance(outcome, Credentials):
            outcome = exchange.admit(password) or outcome
        if exchange.done:
            break
        outcome = exchange.respond(line)
    assert isinstance(outcome, (Challenge, Credentials, Acknowledged, Failure))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD, "authzid", "charset", "maxbuf", "cipher", "x"]),
                       st.one_of(st.text(max_size=20), st.sampled_from(list(GOOD.values()))), max_size=10),
       st.booleans())
def test_hostile_directive_lists_never_raise(directives, quoted):
    text = ",".join(f'{name}="{value}"' if quoted else f"{name}={value}" for name, value in directives.items())
    outcome = digest_exchange(text)
    assert outcome is Failure.MALFORMED or isinstance(outcome, Credentials)
