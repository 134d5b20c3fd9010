"""Reverse DNS when DNS is dead, slow or fine, against a real UDP name
server on 127.0.0.1 (a small one of the test's own): a lookup never takes
longer than its timeout and never raises, whatever the server does."""

from __future__ import annotations

import asyncio
import struct
import time

from looper.net.dns import ReverseDns

# Global (so it is worth asking about), and only ever named in a question to
# our own server on 127.0.0.1: 192.88.99.0/24 is the retired 6to4 anycast.
CLIENT = "192.88.99.1"
PTR_NAME = "relay.example.net"


def _ptr_answer(query: bytes, name: str) -> bytes:
    """A DNS response (RFC 1035 4.1) to `query` with one PTR record."""
    question_end = 12
    while query[question_end]:
        question_end += query[question_end] + 1
    question_end += 5  # the root label, QTYPE and QCLASS
    header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    rdata = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 12, 1, 300, len(rdata)) + rdata
    return header + query[12:question_end] + answer


class NameServer(asyncio.DatagramProtocol):
    def __init__(self, delay_s: float | None) -> None:
        self.delay_s = delay_s  # None: never answers
        self.queries = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        self.queries += 1
        if self.delay_s is not None:
            asyncio.get_running_loop().call_later(self.delay_s, self.transport.sendto, _ptr_answer(data, PTR_NAME), address)


async def _lookup(delay_s: float | None) -> tuple[str | None, float, int]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: NameServer(delay_s), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    dns = ReverseDns(timeout_s=0.5, nameservers=[f"127.0.0.1:{port}"])
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
    assert name is None and queries >= 1 and elapsed < 2.0


async def test_a_slow_name_server_is_not_waited_for():
    name, elapsed, queries = await _lookup(delay_s=3.0)
    assert name is None and queries >= 1 and elapsed < 2.0


async def test_only_global_addresses_are_asked_about():
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: NameServer(0), local_addr=("127.0.0.1", 0))
    dns = ReverseDns(timeout_s=0.5, nameservers=[f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"])
    try:
        assert await dns.name_of("10.1.2.3") is None and await dns.name_of("127.0.0.2") is None
    finally:
        await dns.close()
        transport.close()
    assert server.queries == 0
