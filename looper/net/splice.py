"""The splice: two TCP connections pumped into each other, with flow control.

Rules (mitmproxy's tcp layer, done with protocols instead of streams):
- forward exactly the bytes read; an inspector sees each chunk and may only
  rewrite what the server side sends (the configured EHLO rewrites);
- backpressure by construction: when one side's write buffer passes its high
  water mark, reading from the other side pauses until it drains below low;
- an EOF is a half-close passed on with write_eof, and the splice ends only
  when both directions are done (Exim pipelines a whole transaction with QUIT,
  then half-closes: tearing both sides down at that EOF would drop its
  server's 250 and turn every loop pass into a duplicate);
- a reset on either side aborts the other; caps on bytes, time and idleness
  close both sides, and every end has a reason.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Callable, Protocol

from looper.net.reasons import CloseReason
from looper.net.wheel import wheel_of
from looper.policy import ByteBudget

# Enough in flight to keep a 2 GB/s pipe busy between event-loop turns, small
# enough that 10,000 idle sessions cost nothing (buffers are empty when idle).
WRITE_HIGH_WATER_BYTES = 256 * 1024
WRITE_LOW_WATER_BYTES = 64 * 1024


# A graceful close waits for buffered bytes to drain; a peer that never reads
# would hold the session forever, so after this the close becomes an abort.
CLOSE_GRACE_SECONDS = 5.0


class Inspector(Protocol):
    def client_data(self, data: bytes) -> None: ...
    def server_data(self, data: bytes) -> bytes: ...
    def passes_server_data(self) -> bool: ...  # server_data() would return the next chunk as it is
    def forwarded(self) -> None: ...  # after each forward: the time to log, off the path


# Every read lands in one buffer shared by all connections: the event loop
# handles one read at a time, and each chunk is forwarded (or copied) before
# the next read, so 10,000 idle sessions hold no read buffers at all.
#
# From Python 3.12 a transport keeps what write() is given, without copying,
# whenever the kernel does not take it all at once; 3.11 copies it. So the
# shared buffer is handed to a transport only when its write buffer is empty
# (the common case: the kernel takes it all). Behind a backlog the transport
# gets bytes of its own, exactly the chunk's size: a stalled peer then holds
# the data it has not read, bounded by the water marks, and never a whole
# read buffer per small read. If a write of the shared buffer is left
# unfinished, that transport keeps the buffer (pinned, until it drains) and
# the next read gets a fresh one. Big reads are what make the splice fast
# (1 MiB: 1.6x socat's throughput where 256 KiB gave 0.95x), so pinned big
# buffers are counted: past MAX_PINNED_READ_BUFFERS at once, reads go to a
# small buffer instead, and a stalled peer can pin no more than that.
READ_BUFFER_BYTES = 1 << 20
SMALL_READ_BUFFER_BYTES = 64 * 1024
MAX_PINNED_READ_BUFFERS = 32

# What a client says before the way is known (while the trap dials back) is
# kept, then replayed to its server or its emulated one. A client talking
# first is a tell worth logging, but a thousand of them may not each make us
# hold a read buffer: beyond this, reading waits for the greeting.
MAX_EARLY_BYTES = 8 * 1024


class _ReadBuffers:
    """The shared read buffers, and how many big ones transports hold."""

    def __init__(self) -> None:
        self.big = memoryview(bytearray(READ_BUFFER_BYTES))
        self.small = memoryview(bytearray(SMALL_READ_BUFFER_BYTES))
        self.pinned = 0

    def replace(self, big: bool) -> None:
        if big:
            self.big = memoryview(bytearray(READ_BUFFER_BYTES))
        else:
            self.small = memoryview(bytearray(SMALL_READ_BUFFER_BYTES))


_buffers = _ReadBuffers()


class SpliceEnd(asyncio.BufferedProtocol):
    """One connection of a splice. Before the splice starts (while the trap
    dials back, or while it connects the two ends) what arrives is kept."""

    __slots__ = (
        "transport", "splice", "early", "early_eof", "early_lost", "on_early_loss", "held_back", "reading",
        "reads_big", "pins_big",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.held_back = False  # the other end's write buffer is over its high water mark
        self.reading = True
        self.reads_big = False  # the last get_buffer handed out the big buffer
        self.pins_big = False  # this end's transport holds a big read buffer (a write it has not finished)
        self.splice: Splice | None = None
        self.early = bytearray()
        self.early_eof = False
        self.early_lost: Exception | None | bool = False
        self.on_early_loss: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.splice is None:  # what is read early is kept: read no more than may be kept
            self.reads_big = False
            return _buffers.small[: MAX_EARLY_BYTES - len(self.early)]
        self.reads_big = _buffers.pinned < MAX_PINNED_READ_BUFFERS
        buffer = _buffers.big if self.reads_big else _buffers.small
        throttle = self.splice.throttle
        if throttle is not None:  # read no more than the byte budget has room for
            room = throttle.room()
            if room < len(buffer):
                buffer = buffer[: max(room, 1)]
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = (_buffers.big if self.reads_big else _buffers.small)[:nbytes]
        splice = self.splice
        if splice is None:
            self.early += data
            if len(self.early) >= MAX_EARLY_BYTES:
                self.transport.pause_reading()  # the rest waits in the kernel, as it would for a server
            return
        other = splice.other(self)
        destination = other.transport
        if other.pins_big and not destination.get_write_buffer_size():
            other.unpin()  # it drained: the buffer it held is free
        if destination.get_write_buffer_size():
            splice.received(self, bytes(data))
        else:
            splice.received(self, data)
            if destination.get_write_buffer_size():  # it keeps (a view of) our buffer
                _buffers.replace(self.reads_big)
                if self.reads_big and not other.pins_big:
                    other.pins_big = True
                    _buffers.pinned += 1

    def unpin(self) -> None:
        if self.pins_big:
            self.pins_big = False
            _buffers.pinned -= 1

    def eof_received(self) -> bool:
        if self.splice is not None:
            self.splice.eof(self)
        else:
            self.early_eof = True
        return True  # keep our writing half open: the other side may still talk

    def connection_lost(self, exc: Exception | None) -> None:
        if self.splice is not None:
            self.splice.lost(self, exc)
        else:
            self.early_lost = exc if exc is not None else True
            if self.on_early_loss is not None:
                self.on_early_loss()

    def pause_writing(self) -> None:
        if self.splice is not None:
            other = self.splice.other(self)
            other.held_back = True
            self.splice.update_reading(other)

    def resume_writing(self) -> None:
        if self.splice is not None:
            other = self.splice.other(self)
            other.held_back = False
            self.splice.update_reading(other)


class SpliceThrottle:
    """The global byte budget of all splices (splice.bytes_per_minute):
    once it is spent, every splice that forwards stops reading until the
    next window begins. Nothing is dropped: the peers wait, as they would
    for a slow link."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self._held: set[Splice] = set()
        self._timer: asyncio.TimerHandle | None = None

    def room(self) -> int:
        return self.budget.remaining(asyncio.get_running_loop().time())

    def spend(self, splice: "Splice", nbytes: int) -> None:
        loop = asyncio.get_running_loop()
        if self.budget.spend(nbytes, loop.time()):
            return
        splice.throttled = True
        splice.update_reading(splice.inbound)
        splice.update_reading(splice.reflected)
        self._held.add(splice)
        if self._timer is None:
            self._timer = loop.call_at(self.budget.next_window_s, self._release)

    def _release(self) -> None:
        self._timer = None
        held, self._held = self._held, set()
        for splice in held:
            splice.throttled = False
            splice.update_reading(splice.inbound)
            splice.update_reading(splice.reflected)


def _reset(transport: asyncio.Transport) -> None:
    """Abort with a reset (RST), not a FIN: a reset on one side of a splice
    reaches the other as a reset, as it would have without us."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already gone: abort() is all there is to do
    transport.abort()


class Splice:
    """Pumps inbound (the client that connected) and reflected (our dial-back
    to it) into each other until both directions end or a cap is hit."""

    # Slotted, and with one timer: 10,000 idle splices each keep one.
    __slots__ = (
        "inbound", "reflected", "inspector", "max_bytes", "idle_seconds", "bytes_from_client", "bytes_from_server",
        "reason", "throttle", "throttled", "_on_closed", "_eof_from", "_lost", "_loop", "_last_activity",
        "_deadline", "_step", "_timer",
    )

    def __init__(
        self,
        inbound: SpliceEnd,
        reflected: SpliceEnd,
        inspector: Inspector | None,
        *,
        max_bytes: int,
        max_seconds: float,
        idle_seconds: float,
        on_closed: Callable[[str], None],
        throttle: SpliceThrottle | None = None,
    ) -> None:
        self.inbound = inbound
        self.reflected = reflected
        self.inspector = inspector
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self.bytes_from_client = 0
        self.bytes_from_server = 0
        self.reason: CloseReason | None = None
        self.throttle = throttle
        self.throttled = False
        self._on_closed = on_closed
        self._eof_from: tuple[SpliceEnd, ...] = ()  # the ends whose EOF came
        self._lost: tuple[SpliceEnd, ...] = ()  # the ends whose connection is gone
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._deadline = self._last_activity + max_seconds
        # The check of max_seconds and idleness waits on the wheel, at this step (or None).
        self._step: int | None = wheel_of(self._loop).add(self, min(self._deadline, self._last_activity + idle_seconds))
        self._timer: asyncio.TimerHandle | None = None  # once closing, the grace

    def start(self) -> None:
        """Connect the ends, then replay what either sent before we were
        ready: the client's early talk, then what the server already said."""
        ends = (self.inbound, self.reflected)
        for end in ends:
            end.splice = self
        for end in ends:
            early, end.early = bytes(end.early), bytearray()
            if early:
                self.received(end, early)
        for end in ends:
            if end.early_lost is not False:
                self.lost(end, None if end.early_lost is True else end.early_lost)
        for end in ends:
            if end.early_eof:
                self.eof(end)
        if self.reason is None:
            for end in ends:
                end.reading = end.transport.is_reading()
                self.update_reading(end)

    def other(self, end: SpliceEnd) -> SpliceEnd:
        return self.reflected if end is self.inbound else self.inbound

    def update_reading(self, end: SpliceEnd) -> None:
        """Read from `end` unless the other side is backed up, the byte
        budget is spent, or the splice is over."""
        reading = not (end.held_back or self.throttled or self.reason is not None)
        if reading != end.reading and end not in self._lost:
            end.reading = reading
            if reading:
                end.transport.resume_reading()
            else:
                end.transport.pause_reading()

    # -- events from the two ends -------------------------------------------

    def received(self, end: SpliceEnd, data: bytes) -> None:
        if self.reason is not None:
            return
        self._last_activity = self._loop.time()
        inspector = self.inspector
        if end is self.inbound:
            self.bytes_from_client += len(data)
            if self.bytes_from_client > self.max_bytes:
                return self.close(CloseReason.MAX_BYTES)
            self.reflected.transport.write(data)
            if self.throttle is not None:
                self.throttle.spend(self, len(data))
            if inspector is not None:
                inspector.client_data(data)
                inspector.forwarded()
        else:
            self.bytes_from_server += len(data)
            if self.bytes_from_server > self.max_bytes:
                return self.close(CloseReason.MAX_BYTES)
            if inspector is None:
                self.inbound.transport.write(data)
            else:
                if inspector.passes_server_data():  # forwarded first, read after: off the round trip
                    self.inbound.transport.write(data)
                    inspector.server_data(data)
                else:
                    data = inspector.server_data(data)
                    if data:
                        self.inbound.transport.write(data)
                inspector.forwarded()
            if self.throttle is not None:
                self.throttle.spend(self, len(data))

    def eof(self, end: SpliceEnd) -> None:
        if self.reason is not None:
            return
        if end not in self._eof_from:
            self._eof_from += (end,)
        other = self.other(end)
        if end is self.inbound:
            if self.inspector is not None:
                self.inspector.client_data(b"")
        elif self.inspector is not None:
            held = self.inspector.server_data(b"")
            if held:
                other.transport.write(held)
        if self.inspector is not None:
            self.inspector.forwarded()
        if other.transport.can_write_eof():
            other.transport.write_eof()
        if len(self._eof_from) == 2:
            self.close(CloseReason.CLOSED)

    def lost(self, end: SpliceEnd, exc: Exception | None) -> None:
        if end not in self._lost:
            self._lost += (end,)
        if self.reason is None:
            client = end is self.inbound
            if exc is not None:
                self.close(CloseReason.RESET_BY_CLIENT if client else CloseReason.RESET_BY_SERVER, abort=True)
            else:
                self.close(CloseReason.CLOSED_BY_CLIENT if client else CloseReason.CLOSED_BY_SERVER)
        self._maybe_done()

    # -- ending ---------------------------------------------------------------

    def close(self, reason: CloseReason, *, abort: bool = False) -> None:
        """End the splice for `reason`: graceful (buffered bytes are still
        delivered) unless abort, which mirrors a reset."""
        if self.reason is not None:
            return
        self.reason = reason
        self._cancel_timer()
        for end in (self.inbound, self.reflected):
            if end not in self._lost:
                if abort:
                    _reset(end.transport)
                else:
                    end.transport.close()
        if not abort and len(self._lost) < 2:
            self._timer = self._loop.call_later(CLOSE_GRACE_SECONDS, self._abort_stragglers)
        self._maybe_done()

    def _abort_stragglers(self) -> None:
        for end in (self.inbound, self.reflected):
            if end not in self._lost:
                end.transport.abort()

    def _maybe_done(self) -> None:
        if self.reason is not None and len(self._lost) == 2:
            self.inbound.unpin()
            self.reflected.unpin()
            self._cancel_timer()
            on_closed, self._on_closed = self._on_closed, None
            if on_closed is not None:
                on_closed(self.reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._step is not None:
            wheel_of(self._loop).remove(self, self._step)
            self._step = None

    def _wheel_due(self) -> None:
        """The check of max_seconds and idleness, from the wheel."""
        self._step = None
        now = self._loop.time()
        if now >= self._deadline:
            return self.close(CloseReason.MAX_SECONDS)
        idle_until = self._last_activity + self.idle_seconds
        if now >= idle_until:
            return self.close(CloseReason.IDLE)
        self._step = wheel_of(self._loop).add(self, min(self._deadline, idle_until))
