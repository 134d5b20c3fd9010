"""Faults on either end, on real sockets. The attacker owns both ends of a
splice, so the far side is as untrusted as the client: whatever breaks,
the trap forwards nothing it did not get, logs what happened, and goes on."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import free_port
from tests.netutil import ScriptedServer, connect_from, reset

RELAY = "127.0.0.2"
CLIENT = "127.0.0.3"  # nothing listens there: the emulated relay answers


async def _read_all(reader) -> tuple[bytes, bool]:
    """What arrives until the end, and whether the end was a reset."""
    data = b""
    try:
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        return data, True
    return data, False


async def test_a_relay_that_accepts_and_stalls(start_trap):
    async def stall(reader, writer):
        await reader.read()  # never greets

    async with ScriptedServer(stall) as relay:
        trap = await start_trap(relay.port, splice={"idle_seconds": 0.4})
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        writer.write(b"EHLO early.example\r\n")
        data, _ = await _read_all(reader)
        writer.close()
        (closed,) = await trap.events.wait_for("looper.session.closed")
    assert data == b""  # the trap says nothing of its own on a splice
    assert closed["mode"] == "reflect" and closed["reason"] == "idle" and closed["bytes_out"] == 0
    (greeting,) = trap.events.of("looper.reflect.greeting")
    assert greeting["code"] is None and greeting["pregreet_bytes"] == len(b"EHLO early.example\r\n")  # never came
    assert trap.events.of("looper.session.error") == []


async def test_a_relay_that_resets_in_the_middle_of_its_greeting(start_trap):
    async def half_a_greeting(reader, writer):
        writer.write(b"220 relay.sim ES")
        await writer.drain()
        await asyncio.sleep(0.1)
        reset(writer)

    async with ScriptedServer(half_a_greeting) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        data, was_reset = await _read_all(reader)
        writer.close()
        (closed,) = await trap.events.wait_for("looper.session.closed")
    assert data == b"220 relay.sim ES" and was_reset  # exactly what it sent, then its reset
    assert closed["reason"] == "reset_by_server" and closed["bytes_out"] == len(b"220 relay.sim ES")
    assert trap.events.of("looper.session.error") == []


async def test_a_relay_that_resets_in_the_middle_of_a_bdat_chunk(start_trap):
    async def reset_mid_chunk(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        await reader.readuntil(b"RCPT TO:<v@far.example>\r\n")
        writer.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        await writer.drain()
        await reader.readuntil(b"first part")
        reset(writer)

    async with ScriptedServer(reset_mid_chunk) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        assert await reader.readline() == b"220 relay.sim ESMTP\r\n"
        writer.write(b"EHLO a.example\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<v@far.example>\r\n")
        assert await reader.readline() == b"250 2.1.0 Ok\r\n"
        assert await reader.readline() == b"250 2.1.5 Ok\r\n"
        writer.write(b"BDAT 1000 LAST\r\nSubject: chunked\r\n\r\nfirst part")
        data, was_reset = await _read_all(reader)
        writer.close()
        (closed,) = await trap.events.wait_for("looper.session.closed")
    assert data == b"" and was_reset
    assert closed["reason"] == "reset_by_server"
    (message,) = trap.events.of("looper.reflect.message")
    assert message["complete"] is False and message["code"] is None and message["subject"] == "chunked"
    assert trap.events.of("looper.session.error") == []


@pytest.mark.parametrize("command, content", [
    (b"DATA\r\n", b"Subject: cut\r\n\r\nhalf of it\r\n"),
    (b"BDAT 5000 LAST\r\n", b"Subject: cut\r\n\r\nhalf of it\r\n"),
], ids=["data", "bdat"])
async def test_a_client_that_resets_in_the_middle_of_a_message(start_trap, command, content):
    trap = await start_trap(free_port(CLIENT), dialback={"on_failure": "emulate"}, smtp={"hostname": "mx.trap.test"})
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    await reader.readline()
    writer.write(b"EHLO a.example\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<v@far.example>\r\n" + command)
    for _ in range(13 if command == b"DATA\r\n" else 12):  # EHLO's 10 lines, MAIL, RCPT (and 354)
        await reader.readline()
    writer.write(content)
    await writer.drain()
    await asyncio.sleep(0.2)
    reset(writer)
    (closed,) = await trap.events.wait_for("looper.session.closed")
    assert closed["mode"] == "emulate" and closed["reason"] == "reset_by_client"
    (cut,) = trap.events.of("looper.smtp.message_cut")
    assert cut["reason"] == "client_closed" and cut["mail_from"] == "a@spam.example"
    assert len(content) - 2 <= cut["size"] <= len(content)
    assert trap.events.of("looper.smtp.message") == [] and trap.events.of("looper.session.error") == []


async def test_a_client_that_sends_a_megabyte_before_the_greeting(start_trap):
    """Early talk is kept only up to 8 KiB (a thousand such clients must not
    each make the trap hold a read buffer); the rest waits in the kernel and
    follows once the splice is up: the relay gets every byte, in order."""
    received = bytearray()

    async def slow_greeting(reader, writer):
        await asyncio.sleep(0.3)
        writer.write(b"220 relay.sim ESMTP\r\n")
        while chunk := await reader.read(65536):
            received.extend(chunk)

    early = bytes(range(256)) * 4096  # 1 MiB
    async with ScriptedServer(slow_greeting) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        writer.write(early)
        assert await reader.readline() == b"220 relay.sim ESMTP\r\n"
        await writer.drain()
        async with asyncio.timeout(10):
            while len(received) < len(early):
                await asyncio.sleep(0.02)
        writer.close()
        await trap.events.wait_for("looper.session.closed")
    assert bytes(received) == early
    assert trap.events.of("looper.reflect.greeting")[0]["pregreet_bytes"] == 8192


async def test_a_relay_that_half_closes_first_still_hears_the_client(start_trap):
    """The server says goodbye and shuts its writing half, but reads on: the
    client sees the end of its server's talk and what it sends after that
    still reaches the server (the splice ends when both directions have)."""
    heard_after_eof = bytearray()

    async def half_close_first(reader, writer):
        writer.write(b"220 relay.sim ESMTP\r\n")
        await reader.readuntil(b"QUIT\r\n")
        writer.write(b"221 bye\r\n")
        writer.write_eof()
        while chunk := await reader.read(65536):
            heard_after_eof.extend(chunk)

    async with ScriptedServer(half_close_first) as relay:
        trap = await start_trap(relay.port)
        reader, writer = await connect_from(RELAY, trap.host, trap.port)
        writer.write(b"QUIT\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b"220 relay.sim ESMTP\r\n221 bye\r\n"  # then EOF
        writer.write(b"late words\r\n")
        writer.write_eof()
        (closed,) = await trap.events.wait_for("looper.session.closed")
        writer.close()
    assert bytes(heard_after_eof) == b"late words\r\n"
    assert closed["reason"] == "closed" and closed["bytes_in"] == len(b"QUIT\r\nlate words\r\n")
