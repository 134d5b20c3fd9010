"""Clients that break off at awkward moments, on real sockets: whatever they
do, the trap logs what happened, never an error of its own."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct

import pytest

from tests.conftest import EMULATED_CLIENT, EMULATED_HOST, free_port
from tests.netutil import connect_from

CLIENT, HOST = EMULATED_CLIENT, EMULATED_HOST  # see the relay fixture in conftest.py


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


LEAVINGS = {
    "close": lambda secure: secure.close(),
    "close_notify": lambda secure: secure.unwrap().close(),
    "reset": lambda secure: (secure.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)), secure.close()),
    "talk_and_close": lambda secure: (secure.sendall(b"EHLO x.example\r\nQUIT\r\n"), secure.close()),
    "talk_and_half_close": lambda secure: (secure.sendall(b"EHLO x.example\r\n"), secure.shutdown(socket.SHUT_WR), secure.recv(1), secure.close()),
}


def _handshake_then_leave(port: int, starttls: bool, leave) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT, 0)) as sock:
        if starttls:
            assert sock.recv(1024).startswith(b"220 ")
            sock.sendall(b"STARTTLS\r\n")
            assert sock.recv(1024) == b"220 2.0.0 Ready to start TLS\r\n"
        secure = _tls_context().wrap_socket(sock)
        try:
            leave(secure)  # at once: not even the greeting read
        except OSError:
            pass


@pytest.mark.parametrize("leaving", LEAVINGS)
@pytest.mark.parametrize("starttls", [True, False], ids=["starttls", "implicit_tls"])
async def test_a_client_that_leaves_right_after_the_handshake(relay, starttls, leaving):
    port = free_port()
    trap = await relay(listen={"submissions": [f"127.0.0.1:{port}"]})
    for _ in range(5):  # the moment it leaves varies: try it a few times
        await asyncio.to_thread(_handshake_then_leave, trap.port if starttls else port, starttls, LEAVINGS[leaving])
    closed = await trap.events.wait_for("looper.session.closed", count=5)
    await trap.quiet()
    assert trap.events.of("looper.session.error") == []
    assert len(closed) == 5 and {e["mode"] for e in closed} == {"emulate"}


def _finished_talk_and_close_notify_in_one_write(port: int) -> bytes:
    """STARTTLS, then the client's last handshake flight, its commands and
    its close_notify leave in one write: the trap's TLS layer sees them in
    one read, before the session has heard that the handshake is done."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT, 0)) as sock:
        assert sock.recv(1024).startswith(b"220 ")
        sock.sendall(b"STARTTLS\r\n")
        assert sock.recv(1024) == b"220 2.0.0 Ready to start TLS\r\n"
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = _tls_context().wrap_bio(incoming, outgoing)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"EHLO x.example\r\nQUIT\r\n")
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify sent; not waiting for the trap's
        sock.sendall(outgoing.read())
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


async def test_handshake_commands_and_close_notify_in_one_read(relay):
    trap = await relay()
    for _ in range(3):
        await asyncio.to_thread(_finished_talk_and_close_notify_in_one_write, trap.port)
    closed = await trap.events.wait_for("looper.session.closed", count=3)
    await trap.quiet()
    assert [e["error"] for e in trap.events.of("looper.session.error")] == []
    assert len(closed) == 3 and {e["mode"] for e in closed} == {"emulate"}
    # Each client was served over TLS: its EHLO was read and answered.
    assert len(trap.events.of("looper.tls.established")) == 3
    assert [e["input"] for e in trap.events.of("looper.command.input")].count("EHLO x.example") == 3


async def test_a_busy_session_still_ends_at_max_session_seconds(relay):
    """Never idle, never an error, never a junk-command limit: a client
    that trickles a message forever is still cut at the session's length."""
    trap = await relay(smtp={"max_session_seconds": 1, "idle_timeout": 0.4})
    reader, writer = await connect_from(CLIENT, trap.host, trap.port)
    await reader.readline()
    writer.write(b"EHLO slow.example\r\nMAIL FROM:<a@slow.example>\r\nRCPT TO:<v@far.example>\r\nDATA\r\n")
    while not (await reader.readline()).startswith(b"354 "):
        pass
    started = asyncio.get_running_loop().time()
    goodbye = asyncio.ensure_future(reader.read())  # all the trap says, to its close
    async with asyncio.timeout(5):
        while not goodbye.done():
            writer.write(b"a line of a message that never ends\r\n")
            await asyncio.sleep(0.1)  # busy: well inside the idle timeout
        goodbye = goodbye.result()
    elapsed = asyncio.get_running_loop().time() - started
    assert goodbye == b"421 4.3.2 Service not available, closing transmission channel\r\n"
    assert 0.8 < elapsed < 4.0  # 1 s, and not the 0.4 s idle timeout
    writer.close()
    (closed,) = await trap.events.wait_for("looper.session.closed")
    assert closed["reason"] == "max_seconds"
    (cut,) = trap.events.of("looper.smtp.message_cut")
    assert cut["reason"] == "max_seconds" and cut["size"] > 0
