"""Stopping the trap (SIGTERM), with `looper run` as a real process: no new
clients, a grace for those under way, then each protocol's goodbye; nothing
that happened goes unlogged, and the exit is clean."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.netutil import connect_from
from tests.trapproc import TrapProcess

CLIENT = "127.0.0.3"  # nothing listens on its port 1: the emulated relay answers
GOODBYE = b"421 4.3.2 Service not available, closing transmission channel\r\n"


async def _into_data(trap: TrapProcess):
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    assert (await reader.readline()).startswith(b"220 mx.proc.test ESMTP")
    writer.write(b"EHLO spam.example\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<v@far.example>\r\nDATA\r\n")
    while not (await reader.readline()).startswith(b"354 "):
        pass
    writer.write(b"Subject: half\r\n\r\nthe first half of a message\r\n")
    await writer.drain()
    return reader, writer


async def test_sigterm_in_the_middle_of_data_says_421_and_logs_the_cut(tmp_path):
    with TrapProcess(tmp_path, shutdown_grace_s=0.5) as trap:
        reader, writer = await _into_data(trap)
        await asyncio.sleep(0.2)  # the content has reached the trap
        started = time.monotonic()
        trap.child.terminate()
        async with asyncio.timeout(10):
            assert await reader.read() == GOODBYE  # then the connection closes
        assert await asyncio.to_thread(trap.child.wait, 15) == 0
        assert time.monotonic() - started < 5
        writer.close()
    (cut,) = trap.events.of("looper.smtp.message_cut")
    assert cut["reason"] == "shutdown" and cut["mail_from"] == "a@spam.example"
    # The last line end may be held back: it could begin the final CRLF.CRLF.
    content = b"Subject: half\r\n\r\nthe first half of a message\r\n"
    assert cut["rcpt_to"] == ["v@far.example"] and len(content) - 2 <= cut["size"] <= len(content)
    (closed,) = trap.events.of("looper.session.closed")
    assert closed["reason"] == "shutdown" and closed["bytes_out"] > len(GOODBYE)
    assert trap.events.of("looper.smtp.message") == []
    assert trap.events.of("looper.session.error") == []


async def test_a_session_under_way_may_finish_within_the_grace(tmp_path):
    with TrapProcess(tmp_path, shutdown_grace_s=10) as trap:
        reader, writer = await _into_data(trap)
        trap.child.terminate()
        await asyncio.sleep(0.3)
        # The listener is closed: no new client gets in.
        with pytest.raises(ConnectionRefusedError):
            await connect_from("127.0.0.4", trap.host, trap.port)
        writer.write(b"the second half\r\n.\r\nQUIT\r\n")
        async with asyncio.timeout(10):
            replies = await reader.read()
        assert replies.startswith(b"250 2.0.0 Ok: queued as ") and replies.endswith(b"221 2.0.0 Bye\r\n")
        started = time.monotonic()
        assert await asyncio.to_thread(trap.child.wait, 15) == 0
        assert time.monotonic() - started < 6  # it did not wait out the 10 s grace
        writer.close()
    assert len(trap.events.of("looper.smtp.message")) == 1
    assert trap.events.of("looper.smtp.message_cut") == []
