"""The one login policy of the emulated servers, and the failures it
remembers per address (bounded)."""

from looper.proto.login import FailureMemory, LoginPolicy, login_fields
from looper.proto.digest_md5 import DigestMd5Directives
from looper.proto.sasl import Credentials, cram_md5_digest, digest_md5_digest


def plain(user: str, password: str, authzid: str = "") -> Credentials:
    return Credentials("PLAIN", user, password=password, authzid=authzid)


def test_who_gets_in():
    policy = LoginPolicy(frozenset({("admin", "s3cret")}), accept_after=3)
    assert policy.accepts(plain("admin", "s3cret"), earlier_failures=0)
    assert not policy.accepts(plain("admin", "guess"), earlier_failures=2)
    assert policy.accepts(plain("admin", "guess"), earlier_failures=3)  # a brute-forcer gets in
    assert not policy.accepts(plain("admin", "s3cret", authzid="root"), earlier_failures=9)  # nobody acts for another
    digest = cram_md5_digest("s3cret", "<1.2@mx>")
    assert policy.accepts(Credentials("CRAM-MD5", "admin", digest=digest, challenge="<1.2@mx>"), 0)
    harvester = LoginPolicy(frozenset({("admin", "s3cret")}), accept_after=1, admits=False)
    assert not harvester.accepts(plain("admin", "s3cret"), earlier_failures=5)


def test_digest_md5_is_verified_and_its_password_known():
    directives = DigestMd5Directives("mx.example", "bm9uY2U=", "Y25vbmNl", "00000001", "auth", "smtp/mx.example")
    good = Credentials("DIGEST-MD5", "admin", digest=digest_md5_digest("s3cret", "admin", directives),
                       directives=directives)
    guessed = Credentials("DIGEST-MD5", "admin", digest=digest_md5_digest("guess", "admin", directives),
                          directives=directives)
    policy = LoginPolicy(frozenset({("admin", "s3cret"), ("other", "s3cret")}), accept_after=3)
    assert policy.accepts(good, 0) and policy.password_of(good) == "s3cret"
    assert not policy.accepts(guessed, 2) and policy.password_of(guessed) is None
    assert policy.accepts(guessed, 3)  # accept_after admits it, without a password to prove
    assert login_fields(good) == {
        "mechanism": "DIGEST-MD5", "username": "admin", "digest": good.digest, "realm": "mx.example",
        "nonce": "bm9uY2U=", "cnonce": "Y25vbmNl", "nc": "00000001", "qop": "auth", "digest_uri": "smtp/mx.example",
    }


def test_the_failure_delay_grows_after_the_first():
    assert LoginPolicy.failure_delay_s(1, 2.0, 6.0) == 2.0
    assert LoginPolicy.failure_delay_s(2, 2.0, 6.0) == 6.0


def test_login_fields_carry_what_was_tried():
    assert login_fields(plain("admin", "pw")) == {"mechanism": "PLAIN", "username": "admin", "password": "pw"}


def test_failures_are_remembered_per_address_bounded_and_forgotten_on_success():
    memory = FailureMemory(max_addresses=3)
    for number in range(5):
        memory.remember(f"192.0.2.{number}", number + 1)
    assert len(memory) == 3 and memory.of("192.0.2.0") == 0 and memory.of("192.0.2.4") == 5  # the oldest went
    memory.remember("192.0.2.4", 0)  # it got in
    assert memory.of("192.0.2.4") == 0 and len(memory) == 2
