"""Small real-socket helpers for the tests (127.0.0.0/8 only)."""

from __future__ import annotations

import asyncio
import socket
import struct


async def connect_from(src_ip: str, host: str, port: int, timeout: float = 5.0):
    """An asyncio stream connection to host:port from the address src_ip,
    the way a relay at src_ip connects to the trap."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in src_ip else socket.AF_INET)
    sock.setblocking(False)
    sock.bind((src_ip, 0))
    async with asyncio.timeout(timeout):
        await loop.sock_connect(sock, (host, port))
        return await asyncio.open_connection(sock=sock)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ScriptedServer:
    """A relay's server at (host, port): `script(reader, writer)` runs for
    each connection; `connections` counts them."""

    def __init__(self, script, host: str = "127.0.0.2") -> None:
        self.script = script
        self.host = host
        self.port = 0
        self.connections = 0
        self.finished = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> "ScriptedServer":
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            await asyncio.wait_for(self.script(reader, writer), 10)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            self.finished.set()


async def greet_and_echo(reader, writer) -> None:
    """A relay's server for ScriptedServer: greets, then answers every line with 250 and the line."""
    writer.write(b"220 relay.sim ESMTP\r\n")
    while line := await reader.readline():
        writer.write(b"250 " + line)
        await writer.drain()
