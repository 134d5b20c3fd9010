"""The reflect path on real sockets: dial-back, splice, fallback, policy, caps.

The trap listens on 127.0.0.1; the "relay" is a scripted server on
127.0.0.2 (the dial-back port is its port) and the client connects from
127.0.0.2, so the trap dials the client's own server.
"""

from __future__ import annotations

import asyncio
import socket

from looper.net.fallback import HANGUP_REPLY
from tests.conftest import free_port
from tests.netutil import ScriptedServer, connect_from, greet_and_echo, reset

RELAY = "127.0.0.2"


async def test_a_client_is_spliced_to_its_own_server(start_trap):
    async with ScriptedServer(greet_and_echo) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        assert await reader.readline() == b"220 relay.sim ESMTP\r\n"
        writer.write(b"NOOP one\r\nNOOP \xff\xfe two\r\n")
        assert await reader.readline() == b"250 NOOP one\r\n"
        assert await reader.readline() == b"250 NOOP \xff\xfe two\r\n"
        writer.close()
        closed = await trap.events.wait_for("looper.session.closed")
    assert relay.connections == 1
    ok = trap.events.of("looper.dialback.ok")
    assert ok[0]["target"] == f"{RELAY}:{relay.port}" and ok[0]["connect_ms"] >= 0
    assert closed[0]["mode"] == "reflect"
    assert closed[0]["bytes_in"] == len(b"NOOP one\r\nNOOP \xff\xfe two\r\n")
    assert closed[0]["bytes_out"] == len(b"220 relay.sim ESMTP\r\n250 NOOP one\r\n250 NOOP \xff\xfe two\r\n")
    first = trap.events.all()[0]
    assert first["eventid"] == "looper.session.connect"
    assert (first["src_ip"], first["dst_ip"], first["dst_port"], first["protocol"]) == (RELAY, "127.0.0.1", trap.port, "smtp")
    assert first["sensor"] == "trap.looper.test"
    assert first["timestamp"].endswith("Z") and len(first["session"]) == 12
    assert {e["session"] for e in trap.events.all()} == {first["session"]}


async def test_dialback_comes_from_the_address_the_client_reached(start_trap):
    peers = []

    async def note_peer(reader, writer):
        peers.append(writer.get_extra_info("peername")[0])
        writer.write(b"220 relay.sim ESMTP\r\n")
        await reader.read()

    async with ScriptedServer(note_peer) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        await reader.readline()
        writer.close()
        await trap.events.wait_for("looper.session.closed")
    assert peers == ["127.0.0.1"]


async def test_refused_dialback_hangs_up_with_421(start_trap):
    trap = await start_trap(dialback_port=1)  # nothing listens on 127.0.0.3:1
    reader, writer = await connect_from("127.0.0.3", trap.host, trap.port)
    assert await asyncio.wait_for(reader.read(), 5) == HANGUP_REPLY
    writer.close()
    closed = await trap.events.wait_for("looper.session.closed")
    failed = trap.events.of("looper.dialback.failed")
    assert failed[0]["reason"] == "refused" and failed[0]["target"] == "127.0.0.3:1"
    assert closed[0]["mode"] == "hangup" and closed[0]["reason"] == "dialback_refused"
    assert closed[0]["bytes_out"] == len(HANGUP_REPLY)
    assert HANGUP_REPLY == b"421 4.3.2 Service not available, closing transmission channel\r\n"


async def test_dialback_timeout(start_trap):
    # A listener with a full backlog drops SYNs: the connect hangs.
    stuck = socket.socket()
    stuck.bind(("127.0.0.4", 0))
    stuck.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(stuck.getsockname())
        fillers.append(filler)
    try:
        trap = await start_trap(stuck.getsockname()[1], dialback={"timeout": 0.5})
        reader, writer = await connect_from("127.0.0.4", trap.host, trap.port)
        assert await asyncio.wait_for(reader.read(), 5) == HANGUP_REPLY
        writer.close()
        await trap.events.wait_for("looper.session.closed")
        failed = trap.events.of("looper.dialback.failed")
        assert failed[0]["reason"] == "timeout", failed
    finally:
        for s in fillers + [stuck]:
            s.close()


async def test_private_addresses_are_not_dialed_unless_allowed(start_trap):
    async with ScriptedServer(greet_and_echo) as relay:
        trap = await start_trap(relay.port, dialback={"allow_private": False})
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        assert await asyncio.wait_for(reader.read(), 5) == HANGUP_REPLY
        writer.close()
        await trap.events.wait_for("looper.session.closed")
    assert relay.connections == 0
    failed = trap.events.of("looper.dialback.failed")
    assert failed[0]["reason"] == "policy" and "allow_private" in failed[0]["detail"]


async def test_deny_list_is_obeyed(start_trap):
    async with ScriptedServer(greet_and_echo) as relay:
        trap = await start_trap(relay.port, dialback={"deny": ["127.0.0.2/32"]})
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        assert await asyncio.wait_for(reader.read(), 5) == HANGUP_REPLY
        writer.close()
        await trap.events.wait_for("looper.session.closed")
    assert relay.connections == 0
    assert trap.events.of("looper.dialback.failed")[0]["reason"] == "policy"


async def test_the_trap_never_dials_itself(start_trap):
    """A client on the trap's own address, dial-back port = listening port:
    refused at once, no dial-back at all, one session in the log."""
    port = free_port()
    trap = await start_trap(port, listen_port=port)
    reader, writer = await connect_from("127.0.0.1", trap.host, trap.port)
    assert await asyncio.wait_for(reader.read(), 5) == HANGUP_REPLY
    writer.close()
    await trap.events.wait_for("looper.session.closed")
    await asyncio.sleep(0.3)  # an endless chain would have grown by now
    assert len(trap.events.of("looper.session.connect")) == 1
    assert trap.events.of("looper.dialback.ok") == []
    assert trap.events.of("looper.dialback.failed")[0]["reason"] == "self"


async def test_concurrent_sessions_per_address_are_limited(start_trap):
    async def hold(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        await reader.read()

    async with ScriptedServer(hold) as relay:
        trap = await start_trap(relay.port, limits={"per_ip": 1, "total": 5})
        first_reader, first_writer = await connect_from(RELAY, trap.host, trap.port)
        assert await first_reader.readline() == b"220 relay.sim ESMTP\r\n"
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        assert await asyncio.wait_for(reader.read(), 5) == HANGUP_REPLY
        failed = trap.events.of("looper.dialback.failed")
        assert failed[0]["reason"] == "limit" and "limits.per_ip" in failed[0]["detail"]
        first_writer.close()
        writer.close()
        await trap.events.wait_for("looper.session.closed", count=2)
        # the slot is free again
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        assert await reader.readline() == b"220 relay.sim ESMTP\r\n"
        writer.close()
        await trap.events.wait_for("looper.session.closed", count=3)
    assert relay.connections == 2


async def test_bytes_sent_before_the_greeting_reach_the_server(start_trap):
    got = []

    async def slow_greeting(reader, writer):
        await asyncio.sleep(0.2)
        writer.write(b"220 relay.sim ESMTP\r\n")
        got.append(await reader.readline())
        writer.write(b"250 hi\r\n")
        await reader.read()

    async with ScriptedServer(slow_greeting) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        writer.write(b"EHLO early.bird\r\n")
        assert await reader.readline() == b"220 relay.sim ESMTP\r\n"
        assert await reader.readline() == b"250 hi\r\n"
        writer.close()
        await trap.events.wait_for("looper.session.closed")
    assert got == [b"EHLO early.bird\r\n"]
    greeting = trap.events.of("looper.reflect.greeting")[0]
    assert greeting["pregreet_bytes"] == len(b"EHLO early.bird\r\n")
    assert trap.events.of("looper.reflect.helo")[0]["name"] == "early.bird"


async def test_a_half_close_is_passed_on_and_the_reply_still_arrives(start_trap):
    """Exim's way: everything in one write, then shutdown(SHUT_WR), then read
    the replies. The server answers only after it has seen the EOF."""

    async def answer_after_eof(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        data = await reader.read()  # until the client's EOF arrives here
        writer.write(b"250 got %d bytes\r\n221 bye\r\n" % len(data))
        await writer.drain()

    async with ScriptedServer(answer_after_eof) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        writer.write(b"MAIL FROM:<a@b>\r\nQUIT\r\n")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        closed = await trap.events.wait_for("looper.session.closed")
    assert answer == b"220 relay.sim ESMTP\r\n250 got 23 bytes\r\n221 bye\r\n"
    assert closed[0]["reason"] == "closed"


async def test_max_bytes_cuts_the_splice(start_trap):
    async with ScriptedServer(greet_and_echo) as relay:
        trap = await start_trap(relay.port, splice={"max_bytes": 1000})
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        await reader.readline()
        writer.write(b"X" * 999 + b"\r\n")
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        closed = await trap.events.wait_for("looper.session.closed")
    assert closed[0]["reason"] == "max_bytes"


async def test_idle_splice_is_cut(start_trap):
    async with ScriptedServer(greet_and_echo) as relay:
        trap = await start_trap(relay.port, splice={"idle_seconds": 0.3})
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        await reader.readline()
        writer.write(b"NOOP\r\n")
        await reader.readline()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the trap
        writer.close()
        closed = await trap.events.wait_for("looper.session.closed")
    assert closed[0]["reason"] == "idle"
    assert 0.3 <= closed[0]["duration"] < 3


async def test_max_seconds_cuts_a_busy_splice(start_trap):
    async with ScriptedServer(greet_and_echo) as relay:
        trap = await start_trap(relay.port, splice={"max_seconds": 0.5, "idle_seconds": 10})
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        await reader.readline()
        for _ in range(20):
            writer.write(b"NOOP\r\n")
            try:
                if not await reader.readline():
                    break
            except ConnectionResetError:  # cut while a NOOP was on its way in: the kernel answers it with a reset
                break
            await asyncio.sleep(0.05)
        writer.close()
        closed = await trap.events.wait_for("looper.session.closed")
    assert closed[0]["reason"] == "max_seconds"


async def test_a_reset_on_one_side_aborts_the_other(start_trap):
    async def reset_mid_data(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 2.1.0 Ok\r\n354 go ahead\r\n")
        await writer.drain()
        await reader.readuntil(b"half")
        reset(writer)

    async with ScriptedServer(reset_mid_data) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        await reader.readline()
        writer.write(b"MAIL FROM:<a@b.test>\r\nDATA\r\n")
        assert await reader.readline() == b"250 2.1.0 Ok\r\n"
        assert await reader.readline() == b"354 go ahead\r\n"
        writer.write(b"Subject: half a message\r\n")
        try:
            rest = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        writer.close()
        closed = await trap.events.wait_for("looper.session.closed")
    assert closed[0]["reason"] == "reset_by_server"
    cut = trap.events.of("looper.reflect.message")
    assert len(cut) == 1 and cut[0]["complete"] is False and cut[0]["code"] is None
    assert cut[0]["subject"] == "half a message" and cut[0]["size"] == len(b"Subject: half a message\r\n")
    assert cut[0]["mail_from"] == "a@b.test"


async def test_what_the_observer_cannot_parse_still_passes_untouched(start_trap):
    noise = bytes(range(256)) * 64

    async def greet_and_swallow(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        received = await reader.readexactly(len(noise))
        writer.write(received[::-1])
        await writer.drain()

    async with ScriptedServer(greet_and_swallow) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        await reader.readline()
        writer.write(noise)
        assert await reader.readexactly(len(noise)) == noise[::-1]
        writer.close()
        await trap.events.wait_for("looper.session.closed")
    unparsed = trap.events.of("looper.reflect.unparsed")
    assert len(unparsed) == 1 and unparsed[0]["direction"] == "client"


async def test_ipv6_clients_are_reflected_over_ipv6(start_trap):
    async with ScriptedServer(greet_and_echo, host="::1") as relay:
        trap_port = free_port("::1")
        trap = await start_trap(relay.port, listen={"smtp": [f"[::1]:{trap_port}"]})
        reader, writer = await connect_from("::1", "::1", trap_port)
        assert await reader.readline() == b"220 relay.sim ESMTP\r\n"
        writer.close()
        await trap.events.wait_for("looper.session.closed")
    assert relay.connections == 1
    assert trap.events.of("looper.dialback.ok")[0]["target"] == f"[::1]:{relay.port}"
    assert trap.events.of("looper.reflect.greeting")[0]["src_ip"] == "::1"


async def test_a_dialback_arriving_back_as_a_client_is_refused(start_trap):
    """Where the endpoint check cannot see it coming (NAT, port forwarding),
    the trap still knows the local ends of its own dial-backs."""
    async with ScriptedServer(greet_and_echo, host="127.0.0.7") as relay:
        trap = await start_trap(relay.port)
        sock = socket.socket()
        sock.bind(("127.0.0.7", 0))
        trap.trap.policy.note_dialback(sock.getsockname())  # as if we had dialed from there
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (trap.host, trap.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        assert await asyncio.wait_for(reader.read(), 5) == HANGUP_REPLY
        writer.close()
        await trap.events.wait_for("looper.session.closed")
    assert relay.connections == 0
    failed = trap.events.of("looper.dialback.failed")
    assert failed[0]["reason"] == "self" and "own dial-backs" in failed[0]["detail"]


async def test_a_client_that_never_reads_is_aborted_after_the_grace(start_trap, monkeypatch):
    """A graceful close waits for buffered bytes to drain; a peer that never
    reads would hold the session forever, so the close becomes an abort."""
    import looper.net.splice

    monkeypatch.setattr(looper.net.splice, "CLOSE_GRACE_SECONDS", 0.3)

    async def flood(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        chunk = b"x" * 65536
        while True:  # until the trap stops reading from us (backpressure) and closes
            writer.write(chunk)
            await writer.drain()

    async with ScriptedServer(flood) as relay:
        trap = await start_trap(relay.port, splice={"max_seconds": 0.3, "idle_seconds": 10})
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        writer.transport.pause_reading()  # never read: the trap's buffer towards us stays full
        closed = await trap.events.wait_for("looper.session.closed", timeout=5)
        writer.close()
    assert closed and closed[0]["reason"] == "max_seconds"
    assert closed[0]["duration"] < 3  # aborted after the grace, not held open


async def test_a_client_the_trap_cannot_dial_without_dialing_itself_meets_the_emulated_relay(start_trap):
    """With the trap on the dial-back port itself (the shipped config: port 25
    on every address), a local client would be dialed back into the trap.
    Never dialed, it is served by the emulated relay like any client that
    cannot be dialed back, and its session ends: no chain of self-dials."""
    port = free_port()
    trap = await start_trap(port, listen_port=port, dialback={"on_failure": "emulate"}, smtp={"hostname": "mx.trap.test"})
    reader, writer = await connect_from("127.0.0.1", trap.host, trap.port)
    assert await reader.readline() == b"220 mx.trap.test ESMTP Postfix (Debian/GNU)\r\n"
    writer.write(b"QUIT\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b"221 2.0.0 Bye\r\n"
    writer.close()
    (closed,) = await trap.events.wait_for("looper.session.closed")
    assert closed["mode"] == "emulate"
    assert trap.events.of("looper.dialback.failed")[0]["reason"] == "self"
    assert trap.events.of("looper.dialback.ok") == [] and len(trap.events.of("looper.session.connect")) == 1
