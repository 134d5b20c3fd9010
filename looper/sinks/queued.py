"""A sink that streams events to a collector over TCP: bounded queue in
front, one asyncio task behind that connects, sends and reconnects.

write() runs on the event loop's thread, in the middle of a session's
work: it only frames the lines and appends them to the queue, and never
waits. The task drains the queue into the connection at the collector's
pace (the transport's flow control: drain()). A collector that is slow,
refuses or has gone away fills the queue; from then on write() takes no
more and raises LinesLost, so that the EventLog counts what is dropped and
sends its `looper.log.dropped` line first once the queue takes lines
again. A short outage loses nothing: what the queue holds is sent after
the reconnect.

What TCP had taken when a collector dies is lost uncounted: a stream has no
acknowledgement of what the peer read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections import deque

from looper.eventlog import LinesLost, Sink, describe_os_error as _describe

log = logging.getLogger("looper.sinks")

# Reconnect after 0.5 s, then twice as long each time, up to a minute.
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 60.0
CONNECT_TIMEOUT_S = 10.0
# A connection that lasted this long was a good one: the backoff starts over.
STABLE_CONNECTION_S = 10.0
# Frames joined into one write: few syscalls, and a bounded copy.
MAX_WRITE_BYTES = 64 * 1024


class CollectorRefused(Exception):
    """The collector answered, but not as it should (a broker refused our
    ident): a reason to reconnect later, not a bug."""


class QueuedSink(Sink):
    """Subclasses say how to frame a line, connect, and watch the peer."""

    def __init__(self, name: str, *, queue_bytes: int) -> None:
        self.name = name
        self.queue_bytes = queue_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._refusing = False  # the queue was full and has not half emptied since
        self._ready = asyncio.Event()  # frames are waiting
        self._connected = False
        self._problem: OSError = OSError(errno.ENOTCONN, "not connected yet")
        self._task: asyncio.Task | None = None

    def __str__(self) -> str:
        return self.name

    # -- what a subclass provides ---------------------------------------------

    def frame(self, line: str) -> bytes:
        raise NotImplementedError

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An open connection, ready for frames (raise OSError or CollectorRefused)."""
        raise NotImplementedError

    async def watch(self, reader: asyncio.StreamReader) -> str:
        """Return (why) when the peer closes or refuses; by default, at EOF."""
        while await reader.read(4096):
            pass
        return "the collector closed the connection"

    # -- the EventLog's side ----------------------------------------------------

    def write(self, lines: list[str]) -> None:
        if self._refusing:
            # Once full, nothing more until half of it is sent: else each
            # batch would squeeze one looper.log.dropped line into the last
            # bytes free, one outage after the other.
            if self._queued_bytes > self.queue_bytes // 2:
                raise LinesLost(0, self._why_full())
            self._refusing = False
        for index, line in enumerate(lines):
            frame = self.frame(line)
            if self._queued_bytes + len(frame) > self.queue_bytes:
                self._refusing = True
                raise LinesLost(index, self._why_full())
            self._queue.append(frame)
            self._queued_bytes += len(frame)
        self._ready.set()

    def _why_full(self) -> OSError:
        if self._connected:
            return OSError(errno.ENOBUFS, f"{self.queue_bytes} bytes queued: the collector takes events"
                                          " more slowly than the trap logs them")
        return self._problem

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink {self.name}")

    async def stop(self, grace_s: float) -> None:
        """Send what is queued, if connected, for up to grace_s; then close."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._queue and self._connected and loop.time() < deadline:
            await asyncio.sleep(0.02)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._queue:
            log.warning("%s: %d events still queued at shutdown are not sent", self.name, len(self._queue))

    # -- the task ---------------------------------------------------------------

    async def _run(self) -> None:
        retry_s = FIRST_RETRY_S
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, writer = await self.connect()
            except Exception as err:  # whatever it is, the task goes on: a collector must not end it
                self._failed(err)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, MAX_RETRY_S)
                continue
            loop = asyncio.get_running_loop()
            connected_at = loop.time()
            self._connected = True
            log.info("%s: connected", self.name)
            try:
                why = await self._send(reader, writer)
            except OSError as err:
                why = _describe(err)
            except Exception as err:  # EOFError, a protocol error of the peer's
                why = f"{type(err).__name__}: {err}"
            finally:
                self._connected = False
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()
            self._problem = OSError(errno.ECONNRESET, why)
            log.warning("%s: %s; reconnecting, queuing up to %d bytes meanwhile", self.name, why, self.queue_bytes)
            # A connection that ends at once (a broker that refuses our
            # ident closes right after the login) backs off like a refused
            # one; one that served a while is retried soon.
            if loop.time() - connected_at >= STABLE_CONNECTION_S:
                retry_s = FIRST_RETRY_S
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, MAX_RETRY_S)

    def _failed(self, err: Exception) -> None:
        if isinstance(err, TimeoutError):  # an OSError too, but with no errno
            problem = OSError(errno.ETIMEDOUT, f"no connection within {CONNECT_TIMEOUT_S:g} s")
        elif isinstance(err, OSError):
            problem = err
        elif isinstance(err, (CollectorRefused, EOFError)):
            problem = OSError(errno.ECONNREFUSED, str(err) or type(err).__name__)
        else:
            problem = OSError(errno.EPROTO, f"{type(err).__name__}: {err}")
        first = self._problem.errno == errno.ENOTCONN or _describe(problem) != _describe(self._problem)
        self._problem = problem
        # Once per outage and kind of failure, not once per retry.
        if first:
            log.warning("%s: cannot connect (%s): retrying, queuing up to %d bytes meanwhile",
                        self.name, _describe(problem), self.queue_bytes)

    async def _send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Send frames as they come until the peer goes; why it went."""
        closed = asyncio.ensure_future(self.watch(reader))
        try:
            while True:
                if not self._queue:
                    self._ready.clear()
                    ready = asyncio.ensure_future(self._ready.wait())
                    await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
                    ready.cancel()
                if closed.done():
                    return closed.result()
                writer.write(self._take())
                await writer.drain()
        finally:
            closed.cancel()

    def _take(self) -> bytes:
        frames, size = [], 0
        while self._queue and (not frames or size + len(self._queue[0]) <= MAX_WRITE_BYTES):
            frame = self._queue.popleft()
            frames.append(frame)
            size += len(frame)
        self._queued_bytes -= size
        return b"".join(frames)

