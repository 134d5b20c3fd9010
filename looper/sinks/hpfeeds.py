"""Events to an hpfeeds broker: each event's JSON line published on one
channel, as the honeypot community's collectors (hpfeeds-broker, then
mnemosyne, hpfeeds-logger, ...) expect it from Cowrie and its peers.

The wire format is the hpfeeds package's (hpfeeds.protocol: OP_INFO from
the broker, our OP_AUTH, then OP_PUBLISH frames). Its own asyncio client
(hpfeeds.asyncio.ClientSession) is not used: its publish() drops an event
silently while it is disconnected and writes without bound while the broker
is slow, and it retries every second forever. QueuedSink gives the queue,
the counted drops, and the backoff that a trap needs.

The broker says nothing when it admits us, and OP_ERROR ("Authentication
failed for ...", "Authfail for publish on ...") before it closes when it
does not. So after the login the sink listens for AUTH_SETTLE_S before it
sends anything: a refusal then keeps the queue for later rather than
pouring it into a connection about to close. A refusal is logged with the
broker's words, and the sink connects again later.
"""

from __future__ import annotations

import asyncio

from hpfeeds.protocol import OP_ERROR, OP_INFO, Unpacker, msgauth, msgpublish, readerror, readinfo

from looper.config import Hpfeeds
from looper.sinks.queued import CollectorRefused, QueuedSink

# How long the broker has to refuse our login before we take silence for yes.
AUTH_SETTLE_S = 0.5


class HpfeedsSink(QueuedSink):
    def __init__(self, settings: Hpfeeds) -> None:
        super().__init__(f"hpfeeds {settings.host}:{settings.port} channel {settings.channel}",
                         queue_bytes=settings.queue_bytes)
        self.settings = settings
        self._unpacker = Unpacker()

    def frame(self, line: str) -> bytes:
        return msgpublish(self.settings.ident, self.settings.channel, line.encode("utf-8"))

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        settings = self.settings
        reader, writer = await asyncio.open_connection(settings.host, settings.port)
        self._unpacker = unpacker = Unpacker()  # watch() reads on from where the login ends
        try:
            opcode, data = await _next_message(reader, unpacker)
            if opcode == OP_ERROR:
                raise CollectorRefused(f"the broker said: {readerror(data)}")
            if opcode != OP_INFO:
                raise CollectorRefused(f"the broker began with opcode {opcode}, not OP_INFO")
            _, nonce = readinfo(data)
            writer.write(msgauth(nonce, settings.ident, settings.secret.value))
            await writer.drain()
            try:
                async with asyncio.timeout(AUTH_SETTLE_S):
                    opcode, data = await _next_message(reader, unpacker)
            except TimeoutError:
                pass  # silence: admitted
            else:
                if opcode == OP_ERROR:
                    raise CollectorRefused(f"the broker refused: {readerror(data)}")
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def watch(self, reader: asyncio.StreamReader) -> str:
        unpacker = self._unpacker
        while True:
            opcode, data = await _next_message(reader, unpacker)
            if opcode == OP_ERROR:
                return f"the broker refused: {readerror(data)}"


async def _next_message(reader: asyncio.StreamReader, unpacker: Unpacker) -> tuple[int, bytes]:
    """The next whole message from the broker; EOFError when it closes."""
    while True:
        for opcode, data in unpacker:
            return opcode, data
        chunk = await reader.read(4096)
        if not chunk:
            raise EOFError("the broker closed the connection")
        unpacker.feed(chunk)
