"""One SMTP connection: reflect it onto the client's own server, or fall back.

The order is the golden rule: nothing is sent to the client before we know
whether its own server will greet it. The policy is asked before any dial;
the observer watches the splice; the events tell the whole story, ending
with exactly one looper.session.closed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from looper.config import Endpoint
from looper.net.capture import StoreFailed
from looper.net.context import Connection, TrapContext
from looper.net.dialback import DialFailed, dial_back, is_local_address
from looper.net.fallback import HANGUP_REPLY, hang_up
from looper.net.hashing import OffloadedSha256
from looper.net.reasons import CloseReason, SessionMode
from looper.net.splice import Splice, SpliceEnd
from looper.policy import Denial, DenialReason
from looper.proto.observer import MESSAGE as MESSAGE_EVENT
from looper.proto.observer import Observer


class ReflectSession:
    # Slotted: 10,000 idle sessions each keep one.
    __slots__ = ("context", "inbound", "connection", "info", "mode", "splice", "observer", "_task", "_local_end",
                 "emulated", "_capturing", "_held_bytes")

    def __init__(self, context: TrapContext, inbound: SpliceEnd) -> None:
        self.context = context
        self.inbound = inbound
        self.connection = Connection(context, self, inbound.transport)
        self.info = self.connection.info
        self.mode = SessionMode.REFLECT
        self.splice: Splice | None = None
        self.observer: Observer | None = None
        self._task: asyncio.Task | None = None
        self._local_end: tuple[str, int] | None = None
        self.emulated = None  # the ServerSession, once the emulated relay took over
        self._capturing = context.config.capture.reflected != "none" and context.store is not None
        self._held_bytes = 0  # of context.message_memory, by the content the observer keeps

    def emit(self, eventid: str, **fields: Any) -> None:
        self.connection.emit(eventid, **fields)

    def start(self) -> None:
        # Nothing is read or answered until we know the way: reflect or not.
        self.inbound.on_early_loss = self._client_left_early
        self._task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        context = self.context
        config, policy = context.config, context.policy
        info = self.info
        target = str(Endpoint(info.src_ip, config.dialback.port))
        refusal = policy.screen(info.src_ip, time.monotonic())
        if refusal is not None:
            # Blocked, or too many connections: not a word, not a dial-back.
            self.emit("looper.session.refused", reason=refusal.reason, detail=refusal.detail)
            self.mode = SessionMode.REFUSED
            self.inbound.on_early_loss = lambda: self._finish(refusal.reason, len(self.inbound.early), 0)
            self.inbound.transport.abort()
            return
        if policy.is_own_dialback(info.src_ip, info.src_port):
            denial = Denial(DenialReason.SELF, "the client is one of the trap's own dial-backs")
        else:
            denial = self.connection.admit()
        if denial is None:
            # DNS evidence on the client, under way while it is dialed back;
            # the emulated relay's Received: line names it by its PTR, as
            # Postfix would.
            self.connection.gather_dns()
        if denial is None:
            # Only a listener on the dial-back port can be dialed by mistake:
            # otherwise there is no need to ask the kernel what is local.
            target_is_local = policy.listens_on(config.dialback.port) and is_local_address(info.src_ip)
            denial = policy.dial_denial(info.src_ip, target_is_local=target_is_local)
        if denial is None:
            denial = policy.budget_denial(info.src_ip, time.monotonic())
        if denial is not None:
            self.emit("looper.dialback.failed", target=target, reason=denial.reason, detail=denial.detail)
            return await self._fall_back(denial.reason)

        local_end: tuple[str, int] | None = None

        def note(end: tuple[str, int]) -> None:
            nonlocal local_end
            local_end = end
            policy.note_dialback(end)

        try:
            reflected, connect_ms = await dial_back(
                local_ip=info.dst_ip,
                target_ip=info.src_ip,
                port=config.dialback.port,
                timeout_s=config.dialback.timeout,
                on_bound=note,
            )
        except DialFailed as failure:
            if local_end is not None:
                policy.forget_dialback(local_end)
            self.emit("looper.dialback.failed", target=target, reason=failure.reason, detail=failure.detail)
            return await self._fall_back(failure.reason)
        except asyncio.CancelledError:
            if local_end is not None:
                policy.forget_dialback(local_end)
            raise
        self.emit("looper.dialback.ok", target=target, connect_ms=connect_ms)
        self._local_end = local_end

        self.observer = Observer(
            relay_ip=info.src_ip,
            strip_starttls=config.splice.strip_starttls,
            mask_name=config.ehlo_mask_name,
            pregreet_bytes=len(self.inbound.early),
            keep_bytes=config.splice.max_bytes if self._capturing else 0,
            new_hash=OffloadedSha256,
        )
        self.splice = Splice(
            self.inbound,
            reflected,
            _Inspect(self.observer, self),
            max_bytes=config.splice.max_bytes,
            max_seconds=config.splice.max_seconds,
            idle_seconds=config.splice.idle_seconds,
            throttle=context.splice_throttle,
            on_closed=self._spliced_closed,
        )
        self.splice.start()
        self._task = self.inbound.on_early_loss = None  # done: the splice owns the session now

    async def _fall_back(self, why: str) -> None:
        """The one fallback entry point: the emulated relay, or a hang-up.
        `why` is the dial-back failure's reason. Over the session limits
        there is no room to emulate: hang up. A client that cannot be dialed
        back because that would reach the trap itself (a local client, with
        the trap on port 25 of every address; or the trap's own dial-back
        arriving back) is served like any other that cannot be dialed back:
        never dialed, but answered."""
        inbound = self.inbound
        emulated = self.context.emulated
        if emulated is None or why == DenialReason.LIMIT:
            self.mode = SessionMode.HANGUP
            hang_up(inbound.transport)
            inbound.on_early_loss = lambda: self._finish(f"dialback_{why}", len(inbound.early), len(HANGUP_REPLY))
            return
        # The greeting waits for the PTR name until dns.budget_s after the
        # connect at most: DNS that is slow or dead costs no client more.
        client_name = await self.connection.client_name(self.context.config.dns.budget_s)
        if inbound.early_lost is not False:
            return self._finish(CloseReason.CLOSED_BY_CLIENT, len(inbound.early), 0)
        self.mode = SessionMode.EMULATE
        # Nothing here is needed any more: 10,000 idle sessions should not
        # each keep a finished task and its coroutine.
        self._task = inbound.on_early_loss = None
        self.emulated = emulated.serve(
            inbound.transport,
            self.info,
            early_bytes=bytes(inbound.early),
            early_eof=inbound.early_eof,
            client_name=client_name,
            on_closed=self._finish,
            transcript=self.connection.transcript,
        )

    def _client_left_early(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self._finish(CloseReason.CLOSED_BY_CLIENT, len(self.inbound.early), 0)

    def _spliced_closed(self, reason: str) -> None:
        observer = self.observer
        if observer is not None:
            observer.close()
            self._emit_observed()
            if self._capturing:
                self.context.message_memory.held_bytes -= self._held_bytes
                self._held_bytes = 0
        if self._local_end is not None:
            self.context.policy.forget_dialback(self._local_end)
        self._finish(reason, self.splice.bytes_from_client, self.splice.bytes_from_server)

    def _emit_observed(self) -> None:
        observer = self.observer
        if self._capturing:
            self._account_memory()  # what was kept in this chunk fits, or is let go
        events = observer.events()
        if not events:
            return  # most chunks: nothing seen, nothing kept (a kept message comes with its event)
        kept = {sha256: (chain, content) for sha256, chain, content in observer.take_kept()}
        for event in events:
            if event.eventid == MESSAGE_EVENT:
                event.fields["path"] = self._keep(event, kept.pop(event.fields["sha256"], None))
            self.context.eventlog.emit_event(self.info, event)
        if self._capturing:
            self._account_memory()

    def _keep(self, event, kept: tuple[str, bytes] | None) -> str | None:
        """Reflected mail is evidence: store the first pass of each chain
        (capture.reflected), named in its event. The path is the content's
        hash, so it is known before the file is written."""
        if kept is None:
            return None
        chain, content = kept
        context = self.context
        if context.config.capture.reflected == "first" and context.live is not None and context.live.knows_chain(chain):
            return None
        sha256 = event.fields["sha256"]
        task = asyncio.get_running_loop().create_task(context.store.put(content, sha256))
        task.add_done_callback(lambda done: self._stored(done, sha256))
        return context.store.path_of(sha256)

    def _stored(self, done: asyncio.Task, sha256: str) -> None:
        if not done.cancelled() and isinstance(done.exception(), StoreFailed):
            self.context.eventlog.emit(self.info, "looper.smtp.store_failed", sha256=sha256,
                                       reason=str(done.exception()))

    def _account_memory(self) -> None:
        """The content kept counts against limits.message_memory_bytes, with
        the emulated relay's messages; when it is used up, none is kept."""
        memory, observer = self.context.message_memory, self.observer
        held = observer.kept_bytes()
        if held == self._held_bytes:
            return
        if held > self._held_bytes and not memory.fits(held - self._held_bytes):
            observer.drop_kept()
            held = observer.kept_bytes()
        memory.held_bytes += held - self._held_bytes
        self._held_bytes = held

    def say_goodbye(self) -> None:
        """The trap is stopping. A splice has nothing of ours to say: it is
        closed after what is in flight."""
        if self.emulated is not None:
            self.emulated.say_goodbye()
        elif self.splice is not None:
            self.splice.close(CloseReason.SHUTDOWN)
        else:
            self.shutdown()

    def shutdown(self) -> None:
        """Close now."""
        if self.emulated is not None:
            self.emulated.shutdown()
        elif self.splice is not None:
            self.splice.close(CloseReason.SHUTDOWN, abort=True)
        elif self._task is not None and not self._task.done():
            self._task.cancel()
            self.inbound.transport.abort()
            self._finish(CloseReason.SHUTDOWN, len(self.inbound.early), 0)
        else:
            self.inbound.transport.abort()

    def _finish(self, reason: str, bytes_in: int, bytes_out: int) -> None:
        self.connection.close(self.mode, reason, bytes_in, bytes_out)


class _Inspect:
    """Feeds the observer and the session's transcript (what the client
    sent, and what it was sent: the bytes the observer hands back); what
    the observer saw is logged once the chunk is forwarded."""

    __slots__ = ("observer", "session", "transcript")

    def __init__(self, observer: Observer, session: ReflectSession) -> None:
        self.observer = observer
        self.session = session
        self.transcript = session.connection.transcript
        if self.transcript is not None:
            self.transcript.begin(SessionMode.REFLECT)

    def client_data(self, data: bytes) -> None:
        transcript = self.transcript
        if not data or not self.observer.opaque:
            if transcript is not None:
                transcript.client(data) if data else transcript.client_eof()
            self.observer.client_data(data)
        elif transcript is not None:
            transcript.client_unread(data)

    def passes_server_data(self) -> bool:
        return self.observer.passes_server_data()

    def server_data(self, data: bytes) -> bytes:
        transcript = self.transcript
        if data and self.observer.opaque:
            if transcript is not None:
                transcript.server_unread(data)
            return data
        seen = self.observer.server_data(data)
        if transcript is not None:
            if seen:
                transcript.server(seen)
            if not data:
                transcript.server_eof()
        return seen

    def forwarded(self) -> None:
        self.session._emit_observed()
