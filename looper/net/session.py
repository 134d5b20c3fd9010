"""The one asyncio shell that drives any server machine (SMTP, IMAP, POP3).

The machine decides everything (see looper/proto/actions.py); this adapter
only moves bytes and carries out the machine's actions, strictly in order:

- Send: consecutive undelayed sends go out in one write, so the replies to a
  pipelined batch leave together, as they do from Postfix. A delayed send
  holds every later action behind it; it waits its delay plus a random part
  of its spread, as the machine models the real server's pause (never less).
- StartTLS, Store: one Task while it runs, and nothing is read meanwhile;
  the machine hears the outcome (tls_started, stored, store_failed).
- Close: after the writes before it, for the reason the machine gives; a
  peer that never reads cannot hold a closing session beyond
  CLOSE_GRACE_SECONDS.

Reading pauses while an action is pending, while the machine says it is
paused, and while the client does not read what we write (the write buffer
is over its high water mark): backpressure by construction.

Memory is the design constraint: an idle session is this object, its
transport and its machine. No Task, no buffer, and one TimerHandle that is
not moved on every read: the time of the last read is noted and the timer,
when it fires early, is set again for the rest.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections import deque
from typing import Callable

from looper.eventlog import EventLog, SessionInfo
from looper.net.capture import MessageStore, StoreFailed
from looper.net.reasons import SessionMode
from looper.net.splice import CLOSE_GRACE_SECONDS
from looper.net.wheel import STEP_S, wheel_of
from looper.proto.actions import Action, Close, CloseReason, Send, ServerMachine, StartTLS, Store
from looper.transcripts import Transcript


# Replies are short: 64 KiB of unread replies means a client that does not
# read. Reading from it stops there, so it cannot make us buffer more.
WRITE_HIGH_WATER_BYTES = 64 * 1024
WRITE_LOW_WATER_BYTES = 16 * 1024

# Postfix waits smtpd_starttls_timeout (300 s) for a handshake; a trap does
# not need to be that patient with a client that stalls in it.
TLS_HANDSHAKE_TIMEOUT_S = 60.0

# A timer that fires this much early is not worth a second callback.
TIMER_SLACK_S = 0.001

OnClosed = Callable[[str, int, int], None]  # (reason, bytes_in, bytes_out)


# Every read lands in one buffer shared by all sessions: the loop handles one
# read at a time, and the machine copies what it keeps before the next. With
# asyncio's own reads (a fresh 256 KiB bytes object each), a thousand clients
# sending junk at once left the heap fragmented for good: RSS 90 MiB after
# the first such flood, 121 MiB after the second.
READ_BUFFER_BYTES = 64 * 1024
_read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))


class ServerSession(asyncio.BufferedProtocol):
    """Drives one server machine over one connection until it closes."""

    __slots__ = (
        "machine",
        "info",
        "eventlog",
        "store",
        "tls_context",
        "tls_handshake_timeout_s",
        "transport",
        "bytes_in",
        "bytes_out",
        "transcript",  # what the client sent and was sent, as the machine saw it (after TLS too), or None
        "_on_closed",
        "_loop",
        "_queue",  # actions not yet carried out, or None (the idle case)
        "_pending",  # the action being carried out: a TimerHandle or a Task
        "_timer",  # once closing, the grace timer
        "_wheel",  # the loop's TimerWheel
        "_idle_tick",  # the step of _wheel the idle check waits for, or None
        "_last_read_at",
        "_reading_paused",
        "_writing_paused",
        "_handshaking",
        "_tls",  # the transport is TLS (implicit, or after STARTTLS)
        "_held",  # what arrives between the handshake and tls_started()
        "_eof",
        "_goodbye_due",  # why the machine is to say goodbye when it can (shutdown, max_seconds), or None
        "_deadline",  # loop time when the session has lasted long enough, or None
        "_reason",  # set once the session is closing
        "_done",  # on_closed has been called
    )

    def __init__(
        self,
        machine: ServerMachine,
        *,
        info: SessionInfo,
        eventlog: EventLog,
        store: MessageStore | None,
        tls_context: ssl.SSLContext | None,
        on_closed: OnClosed,
        tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
        max_session_s: float | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self.machine = machine
        self.info = info
        self.eventlog = eventlog
        self.store = store
        self.tls_context = tls_context
        self.tls_handshake_timeout_s = tls_handshake_timeout_s
        self.transport: asyncio.Transport | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.transcript = transcript
        if self.transcript is not None:
            self.transcript.begin(SessionMode.EMULATE)
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._queue: deque[Action] | None = None
        self._pending: asyncio.TimerHandle | asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wheel = wheel_of(self._loop)
        self._idle_tick: int | None = None
        self._last_read_at = 0.0
        self._reading_paused = False
        self._writing_paused = False
        self._handshaking = False
        self._tls = False
        self._held: list[bytes] | None = None
        self._eof = False
        self._goodbye_due: CloseReason | None = None
        self._deadline = None if max_session_s is None else self._loop.time() + max_session_s
        self._reason: CloseReason | None = None
        self._done = False

    # -- starting -------------------------------------------------------------

    def attach(self, transport: asyncio.Transport, early_bytes: bytes = b"", *, early_eof: bool = False) -> None:
        """Take over `transport` (accepted elsewhere, e.g. by the reflect
        path, which may have paused it); `early_bytes` and `early_eof` are
        what the client sent before: they are processed first, after the
        machine's own opening actions (its greeting), and answered in the
        same write as the greeting, as Postfix answers a client that talked
        before it was greeted."""
        self.transport = transport
        self._last_read_at = self._loop.time()
        try:
            self._tls = transport.get_extra_info("ssl_object") is not None
            transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)
            self._reading_paused = not transport.is_reading()
            if transport.get_protocol() is not self:
                transport.set_protocol(self)
            if not early_bytes:
                self._pump()
        except Exception as err:
            return self._fail(err)
        if early_bytes:
            self.data_received(early_bytes)  # its pump writes the greeting and the answers together
        if early_eof:
            self.eof_received()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A listener of our own (e.g. an implicit-TLS port)."""
        self.attach(transport)  # type: ignore[arg-type]

    # -- from the transport ---------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """`data` is valid during this call only: whoever keeps it copies it."""
        self.bytes_in += len(data)
        if self.transcript is not None:
            self.transcript.client(data)
        if self._handshaking:
            self._hold(bytes(data))
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self._reason is not None:
            return
        try:
            self._last_read_at = self._loop.time()
            self.machine.receive_data(data)
            self._pump()
        except Exception as err:
            self._fail(err)

    def eof_received(self) -> bool:
        if self.transcript is not None:
            self.transcript.client_eof()
        if self._handshaking:
            self._hold(b"")
            return False
        try:
            self._eof = True
            if self._reason is None:
                self.machine.receive_data(b"")
                self._pump()
        except Exception as err:
            self._fail(err)
        # Keep our writing half open for the machine's last replies (a client
        # may pipeline QUIT and half-close); TLS transports cannot do that.
        # (Asking a closed TLS transport anything can raise: hence the flag.)
        return self.transport is not None and not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        try:
            if self._reason is None:
                self._reason = CloseReason.RESET_BY_CLIENT if exc is not None else CloseReason.CLOSED_BY_CLIENT
            self.transport = None
            self._cancel_timer()
            pending = self._pending
            if isinstance(pending, asyncio.Task):
                # A handshake learns of the loss itself; a store is let finish
                # so that the machine's events about the message are logged.
                # Either ends the session when it is done.
                return
            if pending is not None:
                pending.cancel()
                self._pending = None
        except Exception as err:
            self._log_error(err)
        self._finish()

    def pause_writing(self) -> None:
        self._set_writing_paused(True)

    def resume_writing(self) -> None:
        self._set_writing_paused(False)

    def _set_writing_paused(self, paused: bool) -> None:
        """The client reads what we write, or stops: so do we read it."""
        self._writing_paused = paused
        try:
            self._update_reading()
            if not paused:
                self._continue_backlog()
        except Exception as err:
            self._fail(err)

    # -- the trap's stop ------------------------------------------------------

    def say_goodbye(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        """The trap is stopping (or the session has lasted long enough):
        once what it is doing now is done (a store, a paced reply), the
        machine says its goodbye (SMTP's 421) and closes for `reason`.
        Half a TLS handshake has no one to say it to: that is aborted."""
        if self._done or self._reason is not None:
            return
        if self._handshaking:
            return self.shutdown()
        self._goodbye_due = reason
        if self._pending is None:
            try:
                self._pump()
            except Exception as err:
                self._fail(err)

    def shutdown(self) -> None:
        """Close now: what is buffered is dropped, nothing pending finishes."""
        if self._done:
            return
        self._close(CloseReason.SHUTDOWN, abort=True)
        self._finish()

    # -- carrying out the machine's actions -----------------------------------

    def _pump(self) -> None:
        """Log what the machine saw, then carry out what it asks."""
        self._pump_once()
        if self._goodbye_due and self._pending is None and self._reason is None:
            reason, self._goodbye_due = self._goodbye_due, None
            self.machine.shutting_down(reason)
            return self._pump()
        self._continue_backlog()

    def _continue_backlog(self) -> None:
        """A machine that holds input back to bound what it makes from one
        read (`backlog`: POP3's pipelined RETRs) goes on while the client
        takes what is written: until the write buffer passes its high-water
        mark (resume_writing brings it back here), or the backlog is read."""
        machine = self.machine
        while (getattr(machine, "backlog", False) and not self._writing_paused and self._pending is None
               and self._reason is None):
            machine.continue_reading()
            self._pump_once()

    def _pump_once(self) -> None:
        """Log the machine's events, queue its actions, carry out what can be."""
        for event in self.machine.events():
            self.eventlog.emit_event(self.info, event)
        actions = self.machine.actions()
        if actions and self._reason is None:
            if self._queue is None:
                self._queue = deque(actions)
            else:
                self._queue.extend(actions)
        if self._pending is None and self._queue is not None:
            self._run_queue()
        self._update_reading()
        self._arm_idle()

    def _run_queue(self) -> None:
        queue = self._queue
        batch: list[bytes] = []
        while queue and self._reason is None:
            action = queue[0]
            if type(action) is Send:
                if action.delay_s > 0:
                    delay_s = action.delay_s
                    if action.spread_s > 0:
                        delay_s += random.uniform(0.0, action.spread_s)
                    self._pending = self._loop.call_later(delay_s, self._delay_over)
                    break
                batch.append(action.data)
                queue.popleft()
                continue
            self._write(batch)
            batch = []
            queue.popleft()
            if type(action) is StartTLS:
                self._start_tls()
                break
            if type(action) is Store:
                self._pending = self._loop.create_task(self._store(action))
                break
            if type(action) is Close:
                self._close(action.reason)
                break
            raise TypeError(f"not an action: {action!r}")
        self._write(batch)
        if not queue or self._reason is not None:
            self._queue = None  # nothing kept while idle

    def _write(self, batch: list[bytes]) -> None:
        if not batch or self._reason is not None:
            return
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        if data:
            self.transport.write(data)
            self.bytes_out += len(data)
            if self.transcript is not None:
                self.transcript.server(data)

    def _delay_over(self) -> None:
        try:
            self._pending = None
            if self._queue:
                # Due now: it leads the next batch, with the undelayed sends after it.
                self._queue[0] = Send(self._queue[0].data)
            self._resume()
        except Exception as err:
            self._fail(err)

    def _resume(self) -> None:
        """An action is done: the client's silence counts from now."""
        self._last_read_at = self._loop.time()
        self._pump()

    # StartTLS ------------------------------------------------------------------

    def _start_tls(self) -> None:
        # Nothing more is read in plain text: the next bytes are the
        # ClientHello, and they belong to the TLS layer.
        self._set_reading(False)
        self._handshaking = True
        self._pending = self._loop.create_task(self._upgrade())

    async def _upgrade(self) -> None:
        plain = self.transport
        try:
            if self._reason is not None:  # lost before the handshake began
                self._pending = None
                return self._finish()
            if self.tls_context is None:
                raise ssl.SSLError("no TLS certificate configured")
            secure = await self._loop.start_tls(
                plain,
                self,
                self.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.tls_handshake_timeout_s,
            )
        except asyncio.CancelledError:
            raise  # shutdown(): it has closed and reported already
        except Exception as err:
            self._pending = None
            self._handshaking = False
            self._held = None
            self.eventlog.emit(self.info, "looper.tls.failed", error=_describe(err))
            if plain is not None:
                plain.abort()
            self._reason = self._reason or CloseReason.TLS_FAILED
            # The plain transport now belongs to the TLS layer, which does not
            # report a loss during the handshake to us: we finish here.
            return self._finish()
        try:
            self._pending = None
            self._handshaking = False
            if self._reason is not None:  # lost right after the handshake
                return self._finish()
            self.transport = secure
            self._tls = True
            self._reading_paused = self._writing_paused = False
            secure.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)
            ssl_object = secure.get_extra_info("ssl_object")
            version, cipher = ssl_object.version(), ssl_object.cipher()[0]
            self.eventlog.emit(self.info, "looper.tls.established", version=version, cipher=cipher)
            self.machine.tls_started(version, cipher)
            self._resume()
            # Bytes that came in over TLS before the machine knew about it.
            held, self._held = self._held, None
            for chunk in held or ():
                if chunk:
                    self._feed(chunk)  # counted in bytes_in when it came
                else:
                    self.eof_received()
        except Exception as err:
            self._fail(err)

    def _hold(self, data: bytes) -> None:
        if self._held is None:
            self._held = []
        self._held.append(data)

    # Store ---------------------------------------------------------------------

    async def _store(self, action: Store) -> None:
        try:
            try:
                if self.store is None:
                    raise StoreFailed("no message store configured")
                stored = await self.store.put(action.content, action.sha256)
            except StoreFailed as err:
                self._pending = None
                self.machine.store_failed(str(err))
            else:
                self._pending = None
                self._acknowledge(stored.path)
            self._resume()
            if self.transport is None:  # the client left while we stored
                self._finish()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._pending = None
            self._fail(err)

    def _acknowledge(self, path: str) -> None:
        """The message is on disk. Its events reach the OS before the 250
        that acknowledges it; a message the log cannot record gets 452
        instead, and if its own events fail to reach the log, the client
        gets no 250 at all (it will send the message again later)."""
        if not self.eventlog.flush():
            return self.machine.store_failed("the event log cannot be written")
        self.machine.stored(path)
        for event in self.machine.events():
            self.eventlog.emit_event(self.info, event)
        if not self.eventlog.flush():
            self._close(CloseReason.LOG_FAILED, abort=True)

    # -- reading, timers ------------------------------------------------------

    def _update_reading(self) -> None:
        if self._handshaking or self._eof or self._reason is not None or self.transport is None:
            return  # the transport is the TLS layer's, or reading is over
        self._set_reading(not (self._pending is not None or self._writing_paused or self.machine.paused))

    def _set_reading(self, reading: bool) -> None:
        if reading and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        elif not reading and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _arm_idle(self) -> None:
        """Make sure the idle timer fires no later than it should. It is not
        moved when the client talks: it moves itself when it fires early."""
        if self._reason is not None:
            return
        timeout_s = self.machine.idle_timeout_s
        due = self._last_read_at + timeout_s if timeout_s else None
        if self._deadline is not None and (due is None or self._deadline < due):
            due = self._deadline
        if due is None:
            return
        tick = self._idle_tick
        if tick is None:
            self._idle_tick = self._wheel.add(self, due)
        elif tick * STEP_S > due + STEP_S:  # the machine shortened its timeout
            self._wheel.remove(self, tick)
            self._idle_tick = self._wheel.add(self, due)

    def _wheel_due(self) -> None:
        """The idle check, from the wheel."""
        self._idle_tick = None
        if self._reason is not None:
            return
        try:
            now = self._loop.time()
            if self._deadline is not None and now + TIMER_SLACK_S >= self._deadline:
                self._deadline = None
                return self.say_goodbye(CloseReason.MAX_SECONDS)
            timeout_s = self.machine.idle_timeout_s
            if not timeout_s:
                return self._arm_idle()
            if self._pending is not None:
                # Our own action, not the client, is what we are waiting for.
                self._idle_tick = self._wheel.add(self, now + timeout_s)
                return
            due = self._last_read_at + timeout_s
            if now + TIMER_SLACK_S < due:
                return self._arm_idle()
            self._last_read_at = now  # a machine that does not close gets another period
            self.machine.timed_out()
            self._pump()
        except Exception as err:
            self._fail(err)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle_tick is not None:
            self._wheel.remove(self, self._idle_tick)
            self._idle_tick = None

    # -- ending -----------------------------------------------------------------

    def _close(self, reason: CloseReason, *, abort: bool = False) -> None:
        """Close for `reason`: after what is written (a closing session is
        then aborted after the grace period) or, with abort, at once."""
        if self._reason is not None and not abort:
            return
        self._reason = self._reason or reason
        self._queue = None
        self._held = None
        self._cancel_timer()
        pending, self._pending = self._pending, None
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()
        transport = self.transport
        if transport is None:
            return
        if self._handshaking:
            # Half a handshake has nothing to flush, and the transport is the
            # TLS layer's, which tells us nothing of a loss now: finish here.
            self._handshaking = False
            transport.abort()
            self._finish()
        elif abort:
            transport.abort()
        else:
            # A TLS transport that asyncio already closes (the client's
            # close_notify came with its last commands) must not be closed
            # again: a second close() unhooks it from its TLS layer, and every
            # later call on it raises AttributeError. abort() stays safe.
            if not transport.is_closing():
                transport.close()
            self._timer = self._loop.call_later(CLOSE_GRACE_SECONDS, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, err: Exception) -> None:
        """A bug of ours or the machine's: logged, and the session closed."""
        self._log_error(err)
        try:
            if self.transport is None:
                self._reason = self._reason or CloseReason.ERROR
                self._finish()
            else:
                self._close(CloseReason.ERROR)
        except Exception as again:
            self._log_error(again)

    def _log_error(self, err: BaseException) -> None:
        try:
            self.eventlog.emit(self.info, "looper.session.error", error=_describe(err))
        except Exception:
            pass  # the event log's handlers report their own failures

    def _finish(self) -> None:
        """Report the end, exactly once."""
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        pending, self._pending = self._pending, None
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()
        self._queue = self._held = None
        try:
            self.machine.connection_closed()
            for event in self.machine.events():
                self.eventlog.emit_event(self.info, event)
        except Exception as err:
            self._log_error(err)
        try:
            self._on_closed(self._reason or CloseReason.CLOSED_BY_CLIENT, self.bytes_in, self.bytes_out)
        except Exception as err:
            self._log_error(err)


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
