"""The trap's listeners and the lifetime of its sessions (hypercorn's shell:
every session kept in a set until it is done, a graceful stop, then aborts)."""

from __future__ import annotations

import asyncio
import logging
import time

from looper.config import Config, Endpoint
from looper.eventlog import EventLog, SessionInfo, new_session_id
from looper.net.dns import ReverseDns
from looper.net.emulate import EmulatedRelay
from looper.net.reflect import ReflectSession
from looper.net.splice import SpliceEnd, SpliceThrottle
from looper.policy import Policy

log = logging.getLogger("looper")

LISTEN_BACKLOG = 1024
# After the goodbyes: time for them to be written before what is left is aborted.
GOODBYE_GRACE_SECONDS = 5.0


class Trap:
    def __init__(self, config: Config, eventlog: EventLog) -> None:
        self.config = config
        self.eventlog = eventlog
        self.policy = Policy(
            config.dialback, config.limits, (), splice_bytes_per_minute=config.splice.bytes_per_minute
        )
        self.splice_throttle = None if self.policy.splice_bytes is None else SpliceThrottle(self.policy.splice_bytes)
        self.dns = ReverseDns()
        self.emulated: EmulatedRelay | None = None
        self.sessions: set = set()
        self.listening: list[Endpoint] = []
        self._servers: list[asyncio.Server] = []
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        """Bind every listener (port 0 picks a free port: see `listening`)."""
        config = self.config
        if config.dialback.on_failure == "emulate" or config.listen.submissions:
            hostname = config.smtp.hostname or await self.dns.our_name([e.host for e in config.listen.smtp])
            if "." not in hostname:
                log.warning(
                    "the emulated relay calls itself %r: no reverse DNS name and no fully qualified host name;"
                    " a real mail server has one, so set smtp.hostname", hostname,
                )
            self.emulated = EmulatedRelay(config, self.eventlog, hostname)
        try:
            for endpoint in config.listen.smtp:
                await self._listen(endpoint, self._accept)
            for endpoint in config.listen.submissions:
                await self._listen(endpoint, self._accept_submissions, ssl=self.emulated.tls_context)
        except OSError:
            await self.stop()
            raise

    async def _listen(self, endpoint: Endpoint, accept, **options) -> None:
        server = await asyncio.get_running_loop().create_server(
            accept, endpoint.host, endpoint.port, reuse_address=True, backlog=LISTEN_BACKLOG, **options
        )
        self._servers.append(server)
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            self.listening.append(Endpoint(host, port))
            self.policy.add_listener(Endpoint(host, port))

    def _accept(self) -> SpliceEnd:
        return _InboundEnd(self)

    def _accept_submissions(self) -> asyncio.Protocol:
        return _SubmissionsEnd(self)

    def open_session(self, inbound: SpliceEnd) -> None:
        session = ReflectSession(self, inbound)
        self._track(session)
        session.start()

    def _track(self, session) -> None:
        self.sessions.add(session)
        self._idle.clear()

    def session_done(self, session) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    async def stop(self) -> None:
        """Stop accepting; let the sessions finish within shutdown_grace_s;
        then each says its protocol's goodbye (SMTP 421 4.3.2, a cut message
        logged); what still hangs on after that is aborted."""
        for server in self._servers:
            server.close()
        await self._wait_idle(self.config.shutdown_grace_s)
        for session in list(self.sessions):
            session.say_goodbye()
        await self._wait_idle(GOODBYE_GRACE_SECONDS)
        for session in list(self.sessions):
            session.shutdown()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.emulated is not None:
            self.emulated.close()
        await self.dns.close()


    async def _wait_idle(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            pass


class _InboundEnd(SpliceEnd):
    """A connection accepted by a listener: its session starts at once."""

    __slots__ = ("trap",)

    def __init__(self, trap: Trap) -> None:
        super().__init__()
        self.trap = trap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.trap.open_session(self)


class _SubmissionsEnd(asyncio.Protocol):
    """An implicit-TLS connection (the handshake is done): straight to the
    emulated relay, after the same screening as on port 25."""

    def __init__(self, trap: Trap) -> None:
        self.trap = trap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _SubmissionsSession(self.trap, transport).start()


class _SubmissionsSession:
    def __init__(self, trap: Trap, transport: asyncio.Transport) -> None:
        self.trap = trap
        self.transport = transport
        src_ip, src_port = transport.get_extra_info("peername")[:2]
        dst_ip, dst_port = transport.get_extra_info("sockname")[:2]
        self.info = SessionInfo(new_session_id(), "smtp", src_ip, src_port, dst_ip, dst_port)
        self.started = time.monotonic()
        self.admitted = False
        self.server_session = None

    def start(self) -> None:
        trap, info = self.trap, self.info
        trap._track(self)
        emit = trap.eventlog.emit
        emit(info, "looper.session.connect")
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            emit(info, "looper.tls.established", version=ssl_object.version(), cipher=ssl_object.cipher()[0])
        refusal = trap.policy.screen(info.src_ip, time.monotonic()) or trap.policy.admit(info.src_ip)
        if refusal is not None:
            emit(info, "looper.session.refused", reason=refusal.reason, detail=refusal.detail)
            self.transport.abort()
            return self._finish("refused", refusal.reason, 0, 0)
        self.admitted = True
        self.server_session = trap.emulated.serve(
            self.transport, info, implicit_tls=True,
            on_closed=lambda reason, bytes_in, bytes_out: self._finish("emulate", reason, bytes_in, bytes_out),
        )

    def say_goodbye(self) -> None:
        if self.server_session is not None:
            self.server_session.say_goodbye()

    def shutdown(self) -> None:
        if self.server_session is not None:
            self.server_session.shutdown()

    def _finish(self, mode: str, reason: str, bytes_in: int, bytes_out: int) -> None:
        if self.admitted:
            self.trap.policy.release(self.info.src_ip)
        self.trap.eventlog.emit(
            self.info, "looper.session.closed", mode=mode, reason=reason,
            duration=round(time.monotonic() - self.started, 6), bytes_in=bytes_in, bytes_out=bytes_out,
        )
        self.trap.session_done(self)
