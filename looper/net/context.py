"""What every session shares, built once by the server and handed down:
the configuration, the policy, the event log, the resolver and its desk of
DNS evidence, the emulated servers, and the table of live sessions.
Session kinds get this, never the server itself (arrows only point down)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from looper.config import Config
from looper.eventlog import EventLog, SessionInfo, new_session_id
from looper.net.dns import Resolver
from looper.net.evidence import ClientEvidence, EvidenceDesk
from looper.proto.budget import MessageMemory
from looper.proto.login import FailureMemory
from looper.proto.mailbox import BaitStore
from looper.policy import Denial, Policy
from looper.transcripts import Transcript, TranscriptLog

if TYPE_CHECKING:
    from looper.net.capture import MessageStore
    from looper.net.emulate import EmulatedRelay
    from looper.net.live import LiveAnalysis
    from looper.net.splice import SpliceThrottle


class Session(Protocol):
    """What the server asks of a live session when it stops."""

    def say_goodbye(self) -> None: ...  # the protocol's goodbye, after what it is doing now
    def shutdown(self) -> None: ...  # close now


class SessionTable:
    """The live sessions: kept until they are done, so that a stop can wait
    for them, say goodbye to them, and abort what is left."""

    def __init__(self) -> None:
        self._sessions: set[Session] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions))

    def add(self, session: Session) -> None:
        self._sessions.add(session)
        self._idle.clear()

    def discard(self, session: Session) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            pass


@dataclass(eq=False)
class TrapContext:
    config: Config
    eventlog: EventLog
    policy: Policy
    dns: Resolver
    evidence: EvidenceDesk
    splice_throttle: SpliceThrottle | None
    emulated: EmulatedRelay | None = None
    sessions: SessionTable = field(default_factory=SessionTable)
    # Captured mail on disk, and the memory all sessions' messages may hold.
    store: MessageStore | None = None
    message_memory: MessageMemory | None = None
    live: LiveAnalysis | None = None  # what the trap has concluded so far
    transcripts: TranscriptLog | None = None  # None: transcripts.enabled is false
    # The bait mailboxes IMAP and POP3 open (looper/bait.py fills them).
    bait: BaitStore = field(default_factory=BaitStore)
    # Failed logins per address, whatever the protocol (SMTP AUTH, IMAP, POP3).
    login_failures: FailureMemory = field(default_factory=FailureMemory)


class Connection:
    """One accepted connection's record, whatever serves it: its common
    event fields, its admission against the session limits, its transcript,
    its DNS evidence, and the one looper.session.closed that ends it (and
    frees its place)."""

    __slots__ = ("context", "session", "info", "started", "admitted", "closed", "transcript", "evidence")

    def __init__(self, context: TrapContext, session: Session, transport: asyncio.BaseTransport,
                 protocol: str = "smtp") -> None:
        src_ip, src_port = transport.get_extra_info("peername")[:2]
        dst_ip, dst_port = transport.get_extra_info("sockname")[:2]
        self.context = context
        self.session = session
        self.info = SessionInfo(new_session_id(), protocol, src_ip, src_port, dst_ip, dst_port)
        self.started = time.monotonic()
        self.admitted = False
        self.closed = False
        # Written from when the session is spliced or served (its begin()).
        self.transcript: Transcript | None = (
            None if context.transcripts is None else context.transcripts.transcript(self.info, self.started)
        )
        self.evidence: ClientEvidence | None = None
        context.sessions.add(session)
        self.emit("looper.session.connect")

    def emit(self, eventid: str, **fields) -> None:
        self.context.eventlog.emit(self.info, eventid, **fields)

    def admit(self) -> Denial | None:
        """Count the session in against limits.per_ip and limits.total."""
        denial = self.context.policy.admit(self.info.src_ip)
        self.admitted = denial is None
        return denial

    def gather_dns(self) -> None:
        """Start the DNS lookups on the client (once it is admitted: a
        refused client costs no lookups)."""
        self.evidence = self.context.evidence.gather(self.info.session, self.info.src_ip, self.emit)

    async def client_name(self, budget_s: float) -> str | None:
        """The client's PTR name, waiting for it until `budget_s` after the
        connect at most (None: none, unknown by then, or not looked up)."""
        if self.evidence is None:
            return None
        return await self.evidence.client_name(self.started + budget_s - time.monotonic())

    def close(self, mode: str, reason: str, bytes_in: int, bytes_out: int) -> None:
        """The end, exactly once: its place freed, what DNS told of the
        client logged (what is known by now), looper.session.closed logged."""
        if self.closed:
            return
        self.closed = True
        if self.evidence is not None:
            self.evidence.close()
        if self.admitted:
            self.context.policy.release(self.info.src_ip)
        self.emit(
            "looper.session.closed", mode=mode, reason=reason,
            duration=round(time.monotonic() - self.started, 6), bytes_in=bytes_in, bytes_out=bytes_out,
        )
        if self.transcript is not None:
            self.transcript.end(reason)
        self.context.sessions.discard(self.session)
