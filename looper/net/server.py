"""The trap's listeners and the lifetime of its sessions (hypercorn's shell:
every session kept in a table until it is done, a graceful stop, then
aborts). The server builds the one TrapContext and hands it to the session
kinds; they never see the server."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from looper.bait import load_bait, mail_listeners
from looper.config import Config, Endpoint
from looper.eventlog import EventLog
from looper.net.capture import MessageStore
from looper.net.feed import LiveBlocklist
from looper.net.live import LiveAnalysis
from looper.proto.budget import MessageMemory
from looper.net.context import Connection, SessionTable, TrapContext
from looper.net.dns import Resolver
from looper.net.emulate import EmulatedRelay
from looper.net.evidence import EvidenceDesk
from looper.net.reasons import SessionMode
from looper.net.reflect import ReflectSession
from looper.net.splice import SpliceEnd, SpliceThrottle
from looper.policy import Policy
from looper.sinks.metrics import TrapMetrics
from looper.transcripts import open_transcript_log

log = logging.getLogger("looper")

LISTEN_BACKLOG = 1024


@dataclass(frozen=True)
class ListenerKind:
    """A kind of listener: its endpoints are `listen.<name>` in the config;
    what it speaks; whether its clients are dialed back (else the emulated
    server of its protocol serves them); whether TLS comes first."""

    name: str
    protocol: str
    dials_back: bool
    implicit_tls: bool


# Adding a protocol is an entry here and its machine in the emulated servers.
LISTENER_KINDS = (
    ListenerKind("smtp", "smtp", dials_back=True, implicit_tls=False),
    ListenerKind("submissions", "smtp", dials_back=False, implicit_tls=True),  # RFC 8314
    ListenerKind("imap", "imap", dials_back=False, implicit_tls=False),  # STARTTLS
    ListenerKind("imaps", "imap", dials_back=False, implicit_tls=True),
    ListenerKind("pop3", "pop3", dials_back=False, implicit_tls=False),  # STLS
    ListenerKind("pop3s", "pop3", dials_back=False, implicit_tls=True),  # RFC 8314
)
# After the goodbyes: time for them to be written before what is left is aborted.
GOODBYE_GRACE_SECONDS = 5.0
# At shutdown, time for the collectors' queues to be sent.
COLLECTOR_GRACE_SECONDS = 2.0


class Trap:
    def __init__(self, config: Config, eventlog: EventLog) -> None:
        policy = Policy(config.dialback, config.limits, (), splice_bytes_per_minute=config.splice.bytes_per_minute)
        resolver = Resolver(config.dns)
        self.context = TrapContext(
            config=config,
            eventlog=eventlog,
            policy=policy,
            dns=resolver,
            evidence=EvidenceDesk(resolver),
            splice_throttle=None if policy.splice_bytes is None else SpliceThrottle(policy.splice_bytes),
        )
        self.config = config
        self.eventlog = eventlog
        self.policy = policy
        self.listening: list[Endpoint] = []
        self._servers: list[asyncio.Server] = []
        self._accepting = True
        self.live = LiveAnalysis(eventlog, config.analysis.quiet_seconds)
        self.blocklist = LiveBlocklist(config, eventlog)
        self.metrics: TrapMetrics | None = None

    @property
    def sessions(self) -> SessionTable:
        return self.context.sessions

    @property
    def emulated(self) -> EmulatedRelay | None:
        return self.context.emulated

    async def start(self, *, accepting: bool = True) -> None:
        """Bind every listener (port 0 picks a free port: see `listening`).
        With accepting=False, nothing is accepted until accept(): a trap
        started as root binds, drops its privileges, then accepts."""
        self._accepting = accepting
        config, context = self.config, self.context
        # The mailbox every IMAP and POP3 login opens, dated from now: first, before anything runs.
        if mail_listeners(config):
            context.bait = load_bait(config, time.time())
        self.eventlog.start()  # the collectors' connections
        if config.metrics.listen is not None:  # first: a busy port stops the start before any session
            self.metrics = TrapMetrics(self.eventlog)
            try:
                self.metrics.serve(config.metrics.listen)
            except OSError:
                await self.stop()
                raise
        self.live.start()
        context.live = self.live
        self.eventlog.listeners.append(context.evidence.heard)
        context.message_memory = MessageMemory(config.limits.message_memory_bytes)
        context.store = MessageStore(config.log.dir)
        if config.transcripts.enabled:
            context.transcripts = open_transcript_log(
                config.log.dir, sensor=self.eventlog.sensor, session_bytes=config.transcripts.session_bytes,
                max_bytes=config.transcripts.max_bytes, backups=config.transcripts.backups,
            )
        served = [kind for kind in LISTENER_KINDS if not kind.dials_back and getattr(config.listen, kind.name)]
        if config.dialback.on_failure == "emulate" or served:
            hostname = config.smtp.hostname or await context.dns.our_name([e.host for e in config.listen.smtp])
            if "." not in hostname:
                log.warning(
                    "the emulated relay calls itself %r: no reverse DNS name and no fully qualified host name;"
                    " a real mail server has one, so set smtp.hostname", hostname,
                )
            context.emulated = EmulatedRelay(config, context.eventlog, hostname, store=context.store,
                                             message_memory=context.message_memory,
                                             login_failures=context.login_failures)
        try:
            for kind in LISTENER_KINDS:
                for endpoint in getattr(config.listen, kind.name):
                    await self._listen(endpoint, kind)
            self.blocklist.start(tuple(e.host for e in self.listening))
        except OSError:
            await self.stop()
            raise

    async def _listen(self, endpoint: Endpoint, kind: ListenerKind) -> None:
        context = self.context
        if kind.dials_back:
            accept = lambda: _InboundEnd(context)  # noqa: E731
        else:
            accept = lambda: _ServedEnd(context, kind)  # noqa: E731
        server = await asyncio.get_running_loop().create_server(
            accept, endpoint.host, endpoint.port, reuse_address=True, backlog=LISTEN_BACKLOG,
            start_serving=self._accepting,
            ssl=context.emulated.tls_context if kind.implicit_tls else None,
        )
        self._servers.append(server)
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            self.listening.append(Endpoint(host, port))
            self.policy.add_listener(Endpoint(host, port))

    async def accept(self) -> None:
        """Start accepting on every listener (after start(accepting=False))."""
        for server in self._servers:
            await server.start_serving()

    async def stop(self) -> None:
        """Stop accepting; let the sessions finish within shutdown_grace_s;
        then each says its protocol's goodbye (SMTP 421 4.3.2, a cut message
        logged); what still hangs on after that is aborted."""
        for server in self._servers:
            server.close()
        await self.sessions.wait_idle(self.config.shutdown_grace_s)
        for session in self.sessions:
            session.say_goodbye()
        await self.sessions.wait_idle(GOODBYE_GRACE_SECONDS)
        for session in self.sessions:
            session.shutdown()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.emulated is not None:
            self.emulated.close()
        if self.context.store is not None:
            self.context.store.close()
        self.context.evidence.close()  # sessions are over: nothing is left open, but be sure
        if self.context.evidence.heard in self.eventlog.listeners:
            self.eventlog.listeners.remove(self.context.evidence.heard)
        await self.context.dns.close()
        self.live.stop()
        await self.blocklist.stop()
        # Stopped means logged: what the last turn emitted too, and what the
        # collectors' queues hold (within the grace).
        await self.eventlog.stop(COLLECTOR_GRACE_SECONDS)
        if self.metrics is not None:
            self.metrics.stop()
            self.eventlog.listeners.remove(self.metrics.observe)
            self.metrics = None
        if self.context.transcripts is not None:
            self.context.transcripts.close()


class _InboundEnd(SpliceEnd):
    """A connection accepted by a listener: its session starts at once."""

    __slots__ = ("context",)

    def __init__(self, context: TrapContext) -> None:
        super().__init__()
        self.context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ReflectSession(self.context, self).start()


class _ServedEnd(asyncio.Protocol):
    """A connection on a listener that never dials back (with implicit TLS,
    the handshake is done): straight to the emulated server of its
    protocol, after the same screening as on port 25."""

    def __init__(self, context: TrapContext, kind: ListenerKind) -> None:
        self.context = context
        self.kind = kind

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _ServedSession(self.context, transport, self.kind).start()


class _ServedSession:
    def __init__(self, context: TrapContext, transport: asyncio.Transport, kind: ListenerKind) -> None:
        self.context = context
        self.transport = transport
        self.kind = kind
        self.connection = Connection(context, self, transport, kind.protocol)
        self.server_session = None

    def start(self) -> None:
        context, connection = self.context, self.connection
        info = connection.info
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            connection.emit("looper.tls.established", version=ssl_object.version(), cipher=ssl_object.cipher()[0])
        refusal = context.policy.screen(info.src_ip, time.monotonic()) or connection.admit()
        if refusal is not None:
            connection.emit("looper.session.refused", reason=refusal.reason, detail=refusal.detail)
            self.transport.abort()
            return connection.close(SessionMode.REFUSED, refusal.reason, 0, 0)
        connection.gather_dns()
        self.server_session = context.emulated.serve(
            self.transport, info, implicit_tls=self.kind.implicit_tls, protocol=self.kind.protocol, bait=context.bait,
            on_closed=lambda reason, bytes_in, bytes_out: connection.close(SessionMode.EMULATE, reason, bytes_in, bytes_out),
            transcript=connection.transcript,
        )

    def say_goodbye(self) -> None:
        if self.server_session is not None:
            self.server_session.say_goodbye()

    def shutdown(self) -> None:
        if self.server_session is not None:
            self.server_session.shutdown()
