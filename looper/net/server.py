"""The trap's listeners and the lifetime of its sessions (hypercorn's shell:
every session kept in a set until it is done, a graceful stop, then aborts)."""

from __future__ import annotations

import asyncio

from looper.config import Config, Endpoint
from looper.eventlog import EventLog
from looper.net.reflect import ReflectSession
from looper.net.splice import SpliceEnd
from looper.policy import Policy

LISTEN_BACKLOG = 1024
STOP_GRACE_SECONDS = 5.0


class Trap:
    def __init__(self, config: Config, eventlog: EventLog) -> None:
        self.config = config
        self.eventlog = eventlog
        self.policy = Policy(config.dialback, config.limits, ())
        self.sessions: set[ReflectSession] = set()
        self.listening: list[Endpoint] = []
        self._servers: list[asyncio.Server] = []
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        """Bind every listener (port 0 picks a free port: see `listening`)."""
        loop = asyncio.get_running_loop()
        try:
            for endpoint in self.config.listen.smtp:
                server = await loop.create_server(
                    self._accept, endpoint.host, endpoint.port, reuse_address=True, backlog=LISTEN_BACKLOG
                )
                self._servers.append(server)
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    self.listening.append(Endpoint(host, port))
                    self.policy.add_listener(Endpoint(host, port))
        except OSError:
            await self.stop()
            raise

    def _accept(self) -> SpliceEnd:
        return _InboundEnd(self)

    def open_session(self, inbound: SpliceEnd) -> None:
        session = ReflectSession(self, inbound)
        self.sessions.add(session)
        self._idle.clear()
        session.start()

    def session_done(self, session: ReflectSession) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.shutdown()
        try:
            async with asyncio.timeout(STOP_GRACE_SECONDS):
                await self._idle.wait()
        except TimeoutError:
            pass
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


class _InboundEnd(SpliceEnd):
    """A connection accepted by a listener: its session starts at once."""

    __slots__ = ("trap",)

    def __init__(self, trap: Trap) -> None:
        super().__init__()
        self.trap = trap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.trap.open_session(self)
