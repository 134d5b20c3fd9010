"""DNS: the resolver against real name servers on 127.0.0.1 (a small one of
the test's own, dnsmasq, and a dead one that never answers), and the DNS
evidence of whole sessions with smtplib as the client.

A lookup never takes longer than its timeout and never raises; a session
is never held up by DNS beyond dns.budget_s (only the emulated greeting
waits, for the PTR name) and always gets its one looper.dns.client event.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import socket
import struct
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.analysis.core import merge_dns
from looper.analysis.html import render_html
from looper.analysis.logs import analyse
from looper.analysis.report import build_report, render_text
from looper.config import ConfigError, Endpoint, parse_config
from looper.net.dns import AnswerCache, Resolver, Unanswered
from tests.conftest import free_port
from tests.netutil import ScriptedServer, greet_and_echo

# Global (so it is worth asking about), and only ever named in a question to
# our own server on 127.0.0.1: 192.88.99.0/24 is the retired 6to4 anycast.
CLIENT = "192.88.99.1"
PTR_NAME = "relay.example.net"


def resolver(port: int | str, **dns) -> Resolver:
    servers = [port] if isinstance(port, str) else [f"127.0.0.1:{port}"]
    config = parse_config(_yaml({"nameservers": servers, "timeout_s": 0.5, **dns}))
    return Resolver(config.dns)


def _yaml(dns: dict) -> str:
    import yaml

    return yaml.safe_dump({"dns": dns})


# -- a name server of the test's own: answers every question with one PTR --------


def _answer(query: bytes, name: str, ttl: int) -> bytes:
    """A DNS response (RFC 1035 4.1) to `query` with one PTR record."""
    question_end = 12
    while query[question_end]:
        question_end += query[question_end] + 1
    question_end += 5  # the root label, QTYPE and QCLASS
    header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    rdata = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 12, 1, ttl, len(rdata)) + rdata
    return header + query[12:question_end] + answer


class NameServer(asyncio.DatagramProtocol):
    def __init__(self, delay_s: float | None, ttl: int = 300) -> None:
        self.delay_s = delay_s  # None: never answers
        self.ttl = ttl
        self.queries = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        self.queries += 1
        if self.delay_s is not None:
            reply = _answer(data, PTR_NAME, self.ttl)
            asyncio.get_running_loop().call_later(self.delay_s, self.transport.sendto, reply, address)


async def name_server(delay_s: float | None, host: str = "127.0.0.1", ttl: int = 300):
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: NameServer(delay_s, ttl), local_addr=(host, 0))
    return transport, server, transport.get_extra_info("sockname")[1]


async def _lookup(delay_s: float | None) -> tuple[str | None, float, int]:
    transport, server, port = await name_server(delay_s)
    dns = resolver(port)
    started = time.monotonic()
    try:
        name = await dns.name_of(CLIENT)
    finally:
        elapsed = time.monotonic() - started
        await dns.close()
        transport.close()
    return name, elapsed, server.queries


async def test_a_name_server_that_answers():
    name, elapsed, queries = await _lookup(delay_s=0)
    assert name == PTR_NAME and queries >= 1 and elapsed < 0.5


async def test_a_dead_name_server_costs_the_timeout_and_no_more():
    name, elapsed, queries = await _lookup(delay_s=None)
    assert name is None and queries >= 1 and elapsed < 1.5


async def test_a_slow_name_server_is_not_waited_for():
    name, elapsed, queries = await _lookup(delay_s=3.0)
    assert name is None and queries >= 1 and elapsed < 1.5


async def test_no_answer_is_unanswered_not_no_name():
    transport, _, port = await name_server(None)
    dns = resolver(port)
    try:
        with pytest.raises(Unanswered):
            await dns.ptr(CLIENT)
    finally:
        await dns.close()
        transport.close()


async def test_only_global_addresses_are_asked_about_unless_lookup_private():
    transport, server, port = await name_server(0)
    dns = resolver(port)
    try:
        assert await dns.name_of("10.1.2.3") is None and await dns.name_of("127.0.0.2") is None
        assert server.queries == 0
        labs = resolver(port, lookup_private=True)
        assert await labs.name_of("127.0.0.2") == PTR_NAME and server.queries == 1
        await labs.close()
    finally:
        await dns.close()
        transport.close()


async def test_a_name_server_on_ipv6_with_its_port():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        transport, server, port = await name_server(0, host="::1")
    except OSError:
        pytest.skip("no ::1 here")
    dns = resolver(f"[::1]:{port}")
    try:
        assert await dns.name_of(CLIENT) == PTR_NAME and server.queries == 1
    finally:
        await dns.close()
        transport.close()


async def test_an_answer_is_kept_for_its_ttl_and_asked_again_after_it():
    transport, server, port = await name_server(0, ttl=1)
    dns = resolver(port)
    try:
        assert await dns.ptr(CLIENT) == PTR_NAME
        assert await dns.ptr(CLIENT) == PTR_NAME and server.queries == 1
        await asyncio.sleep(1.2)
        assert await dns.ptr(CLIENT) == PTR_NAME and server.queries == 2
    finally:
        await dns.close()
        transport.close()


async def test_sessions_asking_the_same_at_once_share_one_query():
    transport, server, port = await name_server(0.2)
    dns = resolver(port)
    try:
        names = await asyncio.gather(*(dns.ptr(CLIENT) for _ in range(20)))
        assert names == [PTR_NAME] * 20 and server.queries == 1
    finally:
        await dns.close()
        transport.close()


async def test_one_asker_giving_up_leaves_the_answer_to_the_others():
    transport, server, port = await name_server(0.2)
    dns = resolver(port)
    try:
        impatient = asyncio.ensure_future(dns.ptr(CLIENT))
        patient = asyncio.ensure_future(dns.ptr(CLIENT))
        await asyncio.sleep(0.05)
        impatient.cancel()
        assert await patient == PTR_NAME and server.queries == 1
    finally:
        await dns.close()
        transport.close()


async def test_close_cancels_the_lookups_on_the_wire():
    transport, _, port = await name_server(None)
    dns = resolver(port, timeout_s=5)
    try:
        waiting = asyncio.ensure_future(dns.ptr(CLIENT))
        await asyncio.sleep(0.05)
        await dns.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert dns._asking == {}
    finally:
        transport.close()


# -- the cache on its own, with a clock of the test's --------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_forgets_an_answer_when_its_ttl_is_over():
    clock = Clock()
    cache = AnswerCache(10, clock)
    cache.put(("A", "a.example"), ("192.0.2.1",), 30)
    cache.put(("A", "nx.example"), (), 5)
    clock.now = 4.9
    assert cache.get(("A", "a.example")) == ("192.0.2.1",) and cache.get(("A", "nx.example")) == ()
    clock.now = 5.0
    assert cache.get(("A", "nx.example")) is None and cache.get(("A", "a.example")) == ("192.0.2.1",)
    clock.now = 30.0
    assert cache.get(("A", "a.example")) is None and len(cache) == 0


def test_the_cache_lets_the_least_recently_used_go_first():
    cache = AnswerCache(2, Clock())
    cache.put(("A", "one"), ("192.0.2.1",), 60)
    cache.put(("A", "two"), ("192.0.2.2",), 60)
    cache.get(("A", "one"))
    cache.put(("A", "three"), ("192.0.2.3",), 60)
    assert cache.get(("A", "two")) is None and cache.get(("A", "one")) and cache.get(("A", "three"))


@settings(max_examples=200, deadline=None)
@given(
    max_entries=st.integers(0, 8),
    steps=st.lists(st.tuples(st.sampled_from("abcdefghij"), st.floats(-5, 100), st.floats(0, 50)), max_size=60),
)
def test_the_cache_never_holds_more_than_its_cap_nor_an_expired_answer(max_entries, steps):
    clock = Clock()
    cache = AnswerCache(max_entries, clock)
    for name, ttl_s, later in steps:
        cache.put(("A", name), (name,), ttl_s)
        assert len(cache) <= max_entries
        clock.now += later
        for other in "abcdefghij":
            answer = cache.get(("A", other))
            assert answer is None or answer == (other,)
    clock.now += 101
    assert all(cache.get(("A", other)) is None for other in "abcdefghij")


# -- the report's view: a relay's evidence over its sessions ----------------------------


def test_a_relay_keeps_the_latest_answers_and_an_unanswered_lookup_erases_none():
    first = {"ptr": "a.example", "fcrdns": True, "dnsbl": {"bl.example": ["127.0.0.2"]}, "helo": "h.example",
             "helo_resolves": True, "unanswered": []}
    dns_down = {"ptr": None, "fcrdns": None, "dnsbl": {}, "helo": "h.example", "helo_resolves": None,
                "unanswered": ["dnsbl:bl.example", "helo", "ptr"]}
    delisted = {**first, "ptr": None, "fcrdns": None, "dnsbl": {"bl.example": None, "other.example": None},
                "helo": "[192.0.2.1]", "helo_resolves": None}
    known = merge_dns(None, first)
    assert merge_dns(known, dns_down) == {k: v for k, v in first.items() if k != "unanswered"}
    assert merge_dns(known, delisted) == {"ptr": None, "fcrdns": None,
                                          "dnsbl": {"bl.example": None, "other.example": None},
                                          "helo": "[192.0.2.1]", "helo_resolves": None}
    damaged = {"eventid": "looper.dns.client", "ptr": 5, "fcrdns": "yes", "dnsbl": ["x"], "unanswered": "ptr"}
    assert merge_dns(known, damaged)["dnsbl"] == known["dnsbl"]


# -- name servers in the config: ip, ip:port, [v6]:port ---------------------------------


def _servers(value) -> tuple[Endpoint, ...]:
    return parse_config(_yaml({"nameservers": [value]})).dns.nameservers


@given(st.ip_addresses(), st.integers(1, 65535))
def test_a_name_server_with_or_without_its_port(address, port):
    assert _servers(str(address)) == (Endpoint(str(address), 53),)
    written = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    assert _servers(written) == (Endpoint(str(address), port),) and str(_servers(written)[0]) == written


@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.integers(), max_size=2)))
def test_anything_else_as_a_name_server_is_a_named_error(value):
    try:
        servers = _servers(value)
    except ConfigError as problem:
        assert str(problem).startswith("<config>: dns.nameservers: item 1: ")
    else:
        (server,) = servers  # it was an address (with a port) after all
        assert isinstance(server, Endpoint) and 1 <= server.port <= 65535


# -- dnsmasq: a real name server for the sessions' clients ------------------------------

# The simulated clients, each with what DNS says of it:
CONFIRMED = "127.0.0.2"  # PTR relay.example.net, whose A record is 127.0.0.2; listed in bl.example
LIAR = "127.0.0.3"  # PTR liar.example.net, which has no A record; not listed
NAMELESS = "127.0.0.4"  # no PTR record
REFLECTED = "127.0.0.5"  # PTR reflected.example.net (A 127.0.0.5); its own server answers the dial-back
HELO_NAME = "helo.example.net"  # resolves: A 127.0.0.9
NO_SUCH_HELO = "nohost.example.net"  # NXDOMAIN
ZONES = ["bl.example", "clean.example", "dead.example"]  # listing, not listing, never answering


def dnsmasq_path() -> str | None:
    # Debian's dnsmasq-base puts it in /usr/sbin, which a user's PATH may lack.
    return shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.access("/usr/sbin/dnsmasq", os.X_OK) else None)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _probe(port: int) -> bool:
    """dnsmasq answers: an A query for helo.example.net gets a reply."""
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label.encode() for label in HELO_NAME.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        probe.sendto(query, ("127.0.0.1", port))
        try:
            return probe.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


@pytest.fixture(scope="module")
def dead_server():
    """A name server that never answers: a bound UDP socket nobody reads."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        yield dead.getsockname()[1]


@pytest.fixture(scope="module")
def dnsmasq(dead_server):
    """dnsmasq on 127.0.0.1 at a free port; its port. Names under
    example.net, bl.example, clean.example and in-addr.arpa are only what is
    given here (NXDOMAIN otherwise); dead.example is forwarded to a server
    that never answers."""
    path = dnsmasq_path()
    if path is None:
        if os.environ.get("LOOPER_REQUIRE_DNSMASQ") == "1":
            pytest.fail("LOOPER_REQUIRE_DNSMASQ=1 but dnsmasq is missing (apt-get install dnsmasq-base)")
        pytest.skip("needs dnsmasq (sudo make test-tools)")
    port = _free_udp_port()
    child = subprocess.Popen(
        [
            path, "--no-daemon", "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={port}",
            "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--local-ttl=300",
            "--local=/example.net/", "--local=/bl.example/", "--local=/clean.example/", "--local=/in-addr.arpa/",
            f"--server=/dead.example/127.0.0.1#{dead_server}",
            f"--host-record=relay.example.net,{CONFIRMED}",
            f"--host-record=reflected.example.net,{REFLECTED}",
            f"--ptr-record={'.'.join(reversed(LIAR.split('.')))}.in-addr.arpa,liar.example.net",
            f"--host-record={HELO_NAME},127.0.0.9",
            f"--address=/{'.'.join(reversed(CONFIRMED.split('.')))}.bl.example/127.0.0.2",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not _probe(port):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start: {child.stderr.read().decode(errors='replace')}")
        yield port
    finally:
        child.terminate()
        child.wait(10)
        child.stderr.close()


async def test_dnsmasq_answers_each_kind_of_question(dnsmasq):
    dns = resolver(dnsmasq, lookup_private=True, timeout_s=1)
    try:
        assert await dns.ptr(CONFIRMED) == "relay.example.net" and await dns.confirms("relay.example.net", CONFIRMED)
        assert await dns.ptr(LIAR) == "liar.example.net" and not await dns.confirms("liar.example.net", LIAR)
        assert await dns.ptr(NAMELESS) is None
        assert await dns.listing("bl.example", CONFIRMED) == ("127.0.0.2",)
        assert await dns.listing("bl.example", LIAR) is None and await dns.listing("clean.example", CONFIRMED) is None
        started = time.monotonic()
        with pytest.raises(Unanswered):
            await dns.listing("dead.example", CONFIRMED)
        assert time.monotonic() - started < 2.5  # its timeout_s is 1
        assert await dns.resolves(HELO_NAME) and not await dns.resolves(NO_SUCH_HELO)
        assert not await dns.resolves("not a name") and not await dns.resolves("a..b")
    finally:
        await dns.close()


# -- whole sessions ---------------------------------------------------------------------


def dns_settings(port: int, **more) -> dict:
    return {"nameservers": [f"127.0.0.1:{port}"], "lookup_private": True, "timeout_s": 1, "dnsbl": ZONES, **more}


async def emulated_trap(start_trap, dns: dict, **sections):
    # Nothing listens on the dial-back port of the clients: refused, emulated.
    return await start_trap(free_port(), dialback={"on_failure": "emulate"},
                            smtp={"hostname": "mx.trap.example.net"}, dns=dns, **sections)


def say_hello(trap, client_ip: str, helo: str, *, message: bool = False,
              evidence_first: asyncio.AbstractEventLoop | None = None) -> tuple[float, float]:
    """A client's session: connect, EHLO, maybe one message, QUIT; with
    `evidence_first` (the trap's loop), QUIT only once the evidence is
    logged (a session that ends first has it cut short). The seconds until
    the greeting, and until the reply to QUIT."""
    started = time.monotonic()
    with smtplib.SMTP(timeout=10, source_address=(client_ip, 0), local_hostname=helo) as client:
        client.connect(trap.host, trap.port)
        greeted = time.monotonic() - started
        client.ehlo()
        if message:
            client.sendmail("a@spam.example", ["victim@far.example.com"], b"Subject: hi\r\n\r\nhi\r\n")
        if evidence_first is not None:
            logged = trap.events.wait_for("looper.dns.client", src_ip=client_ip)
            assert asyncio.run_coroutine_threadsafe(logged, evidence_first).result(10)
            assert not trap.events.of("looper.session.closed", src_ip=client_ip), "logged before the end"
        quit_started = time.monotonic()
        client.quit()
    return greeted, time.monotonic() - quit_started


async def the_evidence(trap, client_ip: str) -> dict:
    (closed,) = await trap.events.wait_for("looper.session.closed", src_ip=client_ip)
    session = [e for e in trap.events.all() if e["session"] == closed["session"]]
    (evidence,) = [e for e in session if e["eventid"] == "looper.dns.client"]
    assert session.index(evidence) < session.index(closed), "the evidence comes before the session's end"
    return evidence


async def test_a_confirmed_listed_client_with_a_helo_that_resolves(start_trap, dnsmasq):
    trap = await emulated_trap(start_trap, dns_settings(dnsmasq))
    await asyncio.to_thread(say_hello, trap, CONFIRMED, HELO_NAME, message=True,
                            evidence_first=asyncio.get_running_loop())
    evidence = await the_evidence(trap, CONFIRMED)
    assert evidence["ptr"] == "relay.example.net" and evidence["fcrdns"] is True
    assert evidence["dnsbl"] == {"bl.example": ["127.0.0.2"], "clean.example": None}
    assert evidence["helo"] == HELO_NAME and evidence["helo_resolves"] is True
    assert evidence["unanswered"] == ["dnsbl:dead.example"]  # not listed there? nobody knows
    # The greeting waited for the PTR name: the Received: line names the client by it, as Postfix does.
    (message,) = trap.events.of("looper.smtp.message")
    assert message["received_header"].startswith(f"Received: from {HELO_NAME} (relay.example.net [{CONFIRMED}])")

    # `looper report` shows it with the relay, in each of its forms.
    report = build_report(analyse([str(trap.events.path)], quiet_seconds=600)[0])
    (relay,) = report["relays"]
    assert relay["ip"] == CONFIRMED and relay["dns"] == {
        "ptr": "relay.example.net", "fcrdns": True, "dnsbl": {"bl.example": ["127.0.0.2"], "clean.example": None},
        "helo": HELO_NAME, "helo_resolves": True,
    }
    assert "relay.example.net +; listed: bl.example" in render_text(report)
    html = render_html(report)
    assert "relay.example.net +" in html and '<span class="badge listed">listed 1</span>' in html
    assert "bl.example: 127.0.0.2" in html and "clean.example: not listed" in html


async def test_a_client_whose_name_does_not_point_back_and_a_helo_that_does_not_resolve(start_trap, dnsmasq):
    trap = await emulated_trap(start_trap, dns_settings(dnsmasq, dnsbl=["bl.example"]))
    await asyncio.to_thread(say_hello, trap, LIAR, NO_SUCH_HELO, evidence_first=asyncio.get_running_loop())
    evidence = await the_evidence(trap, LIAR)
    assert evidence["ptr"] == "liar.example.net" and evidence["fcrdns"] is False
    assert evidence["dnsbl"] == {"bl.example": None} and evidence["unanswered"] == []
    assert evidence["helo"] == NO_SUCH_HELO and evidence["helo_resolves"] is False


async def test_a_nameless_client_with_an_address_literal(start_trap, dnsmasq):
    trap = await emulated_trap(start_trap, dns_settings(dnsmasq, dnsbl=["clean.example"]))
    await asyncio.to_thread(say_hello, trap, NAMELESS, f"[{NAMELESS}]", evidence_first=asyncio.get_running_loop())
    evidence = await the_evidence(trap, NAMELESS)
    assert evidence["ptr"] is None and evidence["fcrdns"] is None and evidence["unanswered"] == []
    assert evidence["helo"] == f"[{NAMELESS}]" and evidence["helo_resolves"] is None
    (message_less,) = trap.events.of("looper.smtp.helo")
    assert message_less["name"] == f"[{NAMELESS}]"


async def test_a_session_that_ends_first_logs_what_is_known_and_names_the_rest(start_trap, dnsmasq):
    trap = await emulated_trap(start_trap, dns_settings(dnsmasq, dnsbl=["dead.example"]))
    await asyncio.to_thread(say_hello, trap, CONFIRMED, HELO_NAME)
    evidence = await the_evidence(trap, CONFIRMED)
    assert "dnsbl:dead.example" in evidence["unanswered"] and evidence["dnsbl"] == {}
    for field, lookup in (("ptr", "ptr"), ("fcrdns", "fcrdns"), ("helo_resolves", "helo")):
        assert (evidence[field] is None) == (lookup in evidence["unanswered"] or field == "fcrdns" and "ptr" in evidence["unanswered"])


async def test_the_reflect_path_gets_its_evidence_too(start_trap, dnsmasq):
    async with ScriptedServer(greet_and_echo, host=REFLECTED) as relay:
        trap = await start_trap(relay.port, dns=dns_settings(dnsmasq, dnsbl=["bl.example"]))

        loop = asyncio.get_running_loop()

        def spliced():
            with smtplib.SMTP(timeout=10, source_address=(REFLECTED, 0), local_hostname=HELO_NAME) as client:
                client.connect(trap.host, trap.port)
                assert client.ehlo()[0] == 250
                logged = trap.events.wait_for("looper.dns.client", src_ip=REFLECTED)
                assert asyncio.run_coroutine_threadsafe(logged, loop).result(10)
                client.close()

        await asyncio.to_thread(spliced)
        evidence = await the_evidence(trap, REFLECTED)
    assert trap.events.of("looper.dialback.ok")
    assert evidence["ptr"] == "reflected.example.net" and evidence["fcrdns"] is True
    assert evidence["helo"] == HELO_NAME and evidence["helo_resolves"] is True and evidence["dnsbl"] == {"bl.example": None}


async def test_a_dead_resolver_costs_a_session_no_more_than_the_budget(start_trap, dead_server):
    dns = {"nameservers": [f"127.0.0.1:{dead_server}"], "lookup_private": True, "timeout_s": 5,
           "budget_s": 0.5, "dnsbl": ["bl.example"]}
    trap = await emulated_trap(start_trap, dns)
    greeted, quit_s = await asyncio.to_thread(say_hello, trap, NAMELESS, HELO_NAME, message=True)
    # A lookup may take 5 s; the greeting waits for it 0.5 s after the connect.
    assert 0.4 < greeted < 2.0, "the greeting waits for the PTR name until the budget, no longer"
    assert quit_s < 1.0
    evidence = await the_evidence(trap, NAMELESS)
    (closed,) = trap.events.of("looper.session.closed")
    assert closed["duration"] < 3, "the session ended when the client left, lookups or not"
    assert evidence == {**evidence, "ptr": None, "fcrdns": None, "dnsbl": {}, "helo": HELO_NAME, "helo_resolves": None}
    assert evidence["unanswered"] == ["dnsbl:bl.example", "helo", "ptr"]
    (message,) = trap.events.of("looper.smtp.message")
    assert f"(unknown [{NAMELESS}])" in message["received_header"]


async def test_a_budget_of_zero_never_waits(start_trap, dead_server):
    dns = {"nameservers": [f"127.0.0.1:{dead_server}"], "lookup_private": True, "timeout_s": 5, "budget_s": 0}
    trap = await emulated_trap(start_trap, dns)
    greeted, _ = await asyncio.to_thread(say_hello, trap, NAMELESS, HELO_NAME)
    assert greeted < 2.0  # not the lookup's 5 s
    assert (await the_evidence(trap, NAMELESS))["unanswered"] == ["helo", "ptr"]


async def test_private_clients_get_no_lookups_unless_lookup_private(start_trap):
    transport, server, port = await name_server(0)
    try:
        trap = await emulated_trap(start_trap, {"nameservers": [f"127.0.0.1:{port}"], "dnsbl": ["bl.example"]})
        await asyncio.to_thread(say_hello, trap, NAMELESS, HELO_NAME)
        await trap.events.wait_for("looper.session.closed")
        assert server.queries == 0 and trap.events.of("looper.dns.client") == []
    finally:
        transport.close()


async def test_lookups_do_not_outlive_the_trap(start_trap, dead_server):
    dns = {"nameservers": [f"127.0.0.1:{dead_server}"], "lookup_private": True, "timeout_s": 30, "budget_s": 0,
           "dnsbl": ["bl.example"]}
    trap = await emulated_trap(start_trap, dns)

    def greeted_and_left_hanging():
        client = smtplib.SMTP(timeout=10, source_address=(NAMELESS, 0), local_hostname=HELO_NAME)
        client.connect(trap.host, trap.port)
        client.ehlo()
        return client

    client = await asyncio.to_thread(greeted_and_left_hanging)
    try:
        await asyncio.sleep(0.1)
        assert trap.trap.context.dns._asking, "lookups are under way"
        started = time.monotonic()
        await trap.trap.stop()
        assert time.monotonic() - started < 10
    finally:
        client.close()
    evidence = await the_evidence(trap, NAMELESS)
    assert evidence["unanswered"] == ["dnsbl:bl.example", "helo", "ptr"]
    assert trap.trap.context.dns._asking == {} and len(trap.trap.context.evidence) == 0
    await asyncio.sleep(0.05)  # cancelled, they finish within a turn or two
    left = [t for t in asyncio.all_tasks() if "ClientEvidence" in repr(t) or "Resolver" in repr(t)]
    assert left == []
