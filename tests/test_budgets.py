"""The budgets that keep the trap from being anyone's weapon, reached with
real clients: dial-backs per address per hour, and the bytes all splices
together may forward in a minute."""

from __future__ import annotations

import asyncio

from tests.netutil import ScriptedServer, connect_from, greet_and_echo

RELAY = "127.0.0.2"


async def test_dialbacks_per_address_per_hour(start_trap):
    async with ScriptedServer(greet_and_echo) as relay:
        trap = await start_trap(
            relay.port, dialback={"per_ip_hourly": 3, "on_failure": "emulate"}, smtp={"hostname": "mx.trap.test"}
        )
        greetings = []
        for _ in range(5):  # a client that reconnects as fast as it can
            reader, writer = await connect_from(RELAY, trap.host, trap.port)
            greetings.append(await reader.readline())
            writer.close()
        await trap.events.wait_for("looper.session.closed", count=5)
    assert relay.connections == 3
    assert greetings == [b"220 relay.sim ESMTP\r\n"] * 3 + [b"220 mx.trap.test ESMTP Postfix (Debian/GNU)\r\n"] * 2
    failed = trap.events.of("looper.dialback.failed")
    assert [f["reason"] for f in failed] == ["budget", "budget"]
    assert "dialback.per_ip_hourly 3" in failed[0]["detail"]
    # Another address has a budget of its own.
    async with ScriptedServer(greet_and_echo, host="127.0.0.5") as other:
        trap2 = await start_trap(other.port, dialback={"per_ip_hourly": 3})
        reader, writer = await connect_from("127.0.0.5", trap2.host, trap2.port)
        assert await reader.readline() == b"220 relay.sim ESMTP\r\n"
        writer.close()


async def test_the_splice_byte_budget_holds_every_splice_and_then_lets_go(start_trap):
    """400 KB a window: a client that sends 1 MB gets 400 KB through, then
    waits (nothing is dropped) until the next window; while the budget is
    spent, a new client is not dialed back."""
    received = bytearray()

    async def sink(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        while chunk := await reader.read(65536):
            received.extend(chunk)

    budget_bytes = 400_000
    async with ScriptedServer(sink) as relay:
        trap = await start_trap(relay.port, splice={"bytes_per_minute": budget_bytes})
        budget = trap.trap.policy.splice_bytes
        budget.per_seconds = 1.5  # a short window, so the test sees the next one
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        assert await reader.readline() == b"220 relay.sim ESMTP\r\n"
        payload = bytes(range(256)) * 4096  # 1 MiB
        writer.write(payload)
        await asyncio.sleep(0.5)
        # Spent: the splice read no more than the budget had room for; it
        # counts both directions, the relay's greeting included.
        assert len(received) == budget_bytes - len(b"220 relay.sim ESMTP\r\n")
        late_reader, late_writer = await connect_from("127.0.0.4", trap.host, trap.port)
        assert await asyncio.wait_for(late_reader.read(), 5) != b""  # the hang-up, not a splice
        late_writer.close()
        failed = await trap.events.wait_for("looper.dialback.failed")
        assert failed[0]["reason"] == "budget" and "splice.bytes_per_minute" in failed[0]["detail"]
        # Window after window, everything arrives, intact.
        async with asyncio.timeout(20):
            while len(received) < len(payload):
                await asyncio.sleep(0.05)
        assert bytes(received) == payload
        writer.close()
