"""The one login policy of the emulated servers, and the failures it
remembers per address (bounded)."""

from looper.proto.login import FailureMemory, LoginPolicy, login_fields
from looper.proto.sasl import Credentials, cram_md5_digest


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
