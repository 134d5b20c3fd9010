"""SHA-256 off the forwarding thread.

A spliced message is hashed as it passes (its sha256 names it in the
events and on disk). On the loop thread that hashing costs as much as the
forwarding itself; hashlib releases the GIL for buffers over 2 KiB, so a
worker thread hashes in parallel on another core while the loop forwards.

OffloadedSha256 has hashlib's update/hexdigest. An update of OFFLOAD_BYTES
or more (a bulk read) goes to one worker thread, shared by every session,
which hashes in order; a smaller one is hashed at once, unless updates of
the same hash are still queued (then it queues behind them): a trip to the
worker costs more than hashing a few KiB. What is queued is bytes (a view,
which may be of a read buffer that is reused, is copied). Nothing forwarded
waits for it: the bytes are written before they are fed here. Memory stays
bounded: a hash with MAX_OUTSTANDING_BYTES queued, or all of them together
with MAX_QUEUED_BYTES, makes the loop wait for the worker (reading stops
while it waits, as it would while the loop hashed itself). hexdigest()
waits for the hash's own updates, at most MAX_OUTSTANDING_BYTES of work.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

OFFLOAD_BYTES = 64 * 1024
MAX_OUTSTANDING_BYTES = 1 << 20
MAX_QUEUED_BYTES = 16 << 20


class _Worker:
    """The one hashing thread, started with the first batch."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[OffloadedSha256, bytes]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.done = threading.Condition(threading.Lock())
        self.queued_bytes = 0

    def submit(self, owner: OffloadedSha256, batch: bytes) -> None:
        with self.done:
            while self.queued_bytes + len(batch) > MAX_QUEUED_BYTES and self.queued_bytes:
                self.done.wait()
            self.queued_bytes += len(batch)
            owner._outstanding += len(batch)
            if self._thread is None:  # one thread only: a hash's batches are hashed in order
                self._thread = threading.Thread(target=self._run, name="looper-sha256", daemon=True)
                self._thread.start()
        self._queue.put((owner, batch))

    def _run(self) -> None:
        while True:
            owner, batch = self._queue.get()
            owner._hash.update(batch)  # the GIL is released while it hashes
            with self.done:
                owner._outstanding -= len(batch)
                self.queued_bytes -= len(batch)
                self.done.notify_all()

    def wait_below(self, owner: OffloadedSha256, limit: int) -> None:
        with self.done:
            while owner._outstanding > limit:
                self.done.wait()


_worker = _Worker()


def _forked() -> None:
    """A forked child has no worker thread: it starts its own, with nothing queued."""
    global _worker
    _worker = _Worker()


os.register_at_fork(after_in_child=_forked)


class OffloadedSha256:
    """hashlib.sha256(), with the big updates hashed on the worker thread."""

    __slots__ = ("_hash", "_outstanding")

    def __init__(self, data: bytes = b"") -> None:
        self._hash = hashlib.sha256(data)
        self._outstanding = 0  # bytes handed to the worker, not hashed yet

    def update(self, data: bytes | memoryview) -> None:
        if len(data) < OFFLOAD_BYTES and not self._outstanding:
            self._hash.update(data)  # cheaper here than a trip to the worker
            return
        batch = data if type(data) is bytes else bytes(data)  # a view's buffer may be reused
        if self._outstanding + len(batch) > MAX_OUTSTANDING_BYTES:
            _worker.wait_below(self, max(MAX_OUTSTANDING_BYTES - len(batch), 0))
        _worker.submit(self, batch)

    def hexdigest(self) -> str:
        if self._outstanding:
            _worker.wait_below(self, 0)
        return self._hash.hexdigest()
