"""The policy decides who may be dialed back; nothing else does."""

from looper.config import Endpoint, parse_config
from looper.policy import Policy


def policy(dialback: str = "{}", listeners=(Endpoint("0.0.0.0", 25),), per_ip=2, total=3):
    config = parse_config(f"dialback: {dialback}\nlimits: {{per_ip: {per_ip}, total: {total}}}")
    return Policy(config.dialback, config.limits, listeners)


def test_global_addresses_are_dialed():
    assert policy().dial_denial("8.8.8.8", target_is_local=False) is None
    assert policy().dial_denial("2a00:1450:4001:80b::200e", target_is_local=False) is None


def test_non_global_addresses_need_allow_private():
    for address in ["127.0.0.2", "10.1.2.3", "192.168.1.1", "169.254.0.1", "100.64.0.1", "::1", "fe80::1",
                    "fd00::1", "192.0.2.1", "240.0.0.1", "::ffff:10.0.0.1"]:
        denial = policy().dial_denial(address, target_is_local=False)
        assert denial is not None and denial.reason == "policy", address
        assert policy("{allow_private: true}").dial_denial(address, target_is_local=False) is None, address


def test_multicast_and_unspecified_are_never_dialed():
    for address in ["224.0.1.1", "ff02::1", "0.0.0.0", "::"]:
        denial = policy("{allow_private: true}").dial_denial(address, target_is_local=False)
        assert denial is not None and denial.reason == "policy", address


def test_deny_list():
    denial = policy("{deny: [8.8.8.0/24]}").dial_denial("8.8.8.8", target_is_local=False)
    assert denial.reason == "policy" and "8.8.8.0/24" in denial.detail
    assert policy("{deny: [8.8.8.0/24]}").dial_denial("8.8.4.4", target_is_local=False) is None


def test_a_wildcard_listener_covers_every_local_address_on_its_port():
    trap = policy("{allow_private: true}")
    assert trap.dial_denial("127.0.0.5", target_is_local=True).reason == "self"
    assert trap.dial_denial("127.0.0.5", target_is_local=False) is None  # not ours: e.g. a NATed peer
    other_port = policy("{allow_private: true, port: 2525}")
    assert other_port.dial_denial("127.0.0.5", target_is_local=True) is None
    v6_only = policy("{allow_private: true}", listeners=(Endpoint("::", 25),))
    assert v6_only.dial_denial("127.0.0.5", target_is_local=True) is None
    assert v6_only.dial_denial("::1", target_is_local=True).reason == "self"


def test_a_specific_listener_covers_only_its_address():
    trap = policy("{allow_private: true}", listeners=(Endpoint("127.0.0.1", 25),))
    assert trap.dial_denial("127.0.0.1", target_is_local=True).reason == "self"
    assert trap.dial_denial("::ffff:127.0.0.1", target_is_local=True).reason == "self"
    assert trap.dial_denial("127.0.0.2", target_is_local=True) is None


def test_own_dialbacks_are_recognised():
    trap = policy()
    trap.note_dialback(("127.0.0.1", 40000))
    assert trap.is_own_dialback("127.0.0.1", 40000)
    assert trap.is_own_dialback("::ffff:127.0.0.1", 40000)
    assert not trap.is_own_dialback("127.0.0.1", 40001)
    trap.forget_dialback(("127.0.0.1", 40000))
    assert not trap.is_own_dialback("127.0.0.1", 40000)


def test_concurrency_limits_per_address_and_in_all():
    trap = policy(per_ip=2, total=3)
    assert trap.admit("192.0.2.1") is None
    assert trap.admit("192.0.2.1") is None
    denial = trap.admit("192.0.2.1")
    assert denial.reason == "limit" and "limits.per_ip" in denial.detail
    assert trap.admit("192.0.2.2") is None
    denial = trap.admit("192.0.2.3")
    assert denial.reason == "limit" and "limits.total" in denial.detail
    trap.release("192.0.2.1")
    assert trap.admit("192.0.2.3") is None
    assert trap.sessions_total == 3


def test_block_list_and_connection_rate():
    config = parse_config("limits: {block: [203.0.113.0/24], rate: 2/minute}")
    trap = Policy(config.dialback, config.limits, ())
    assert trap.screen("203.0.113.9", 0).reason == "blocked"
    assert trap.screen("::ffff:203.0.113.9", 0).reason == "blocked"
    assert trap.screen("198.51.100.1", 0) is None
    assert trap.screen("198.51.100.1", 10) is None
    denial = trap.screen("198.51.100.1", 20)
    assert denial.reason == "rate" and "2/minute" in denial.detail
    assert trap.screen("198.51.100.2", 20) is None  # per address
    assert trap.screen("198.51.100.1", 61) is None  # a new window


def test_rate_bookkeeping_is_bounded(monkeypatch):
    import looper.policy

    monkeypatch.setattr(looper.policy, "MAX_RATE_ADDRESSES", 100)
    config = parse_config("limits: {rate: 5/second}")
    trap = Policy(config.dialback, config.limits, ())
    for n in range(1000):
        trap.screen(f"10.0.{n // 256}.{n % 256}", n / 1000)
    assert len(trap._rate_windows) <= 100
