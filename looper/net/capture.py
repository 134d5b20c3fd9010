"""Captured messages on disk: `<log.dir>/messages/<sha256>.eml`.

A message is on disk before the 250 that acknowledges it: written to a
temporary file, fsynced, renamed to its content's SHA-256 (so the same
content is stored once and anyone can verify a file by hashing it), and the
folder fsynced so that the name survives a crash too.

A message takes one trip to the writer thread and back. The writer takes
all the messages waiting whenever it is free, stores them one by one, syncs
the folder once for the whole batch (a group commit) and hands the batch
back to the loop in one call. One thread, woken once a batch: each time a
thread takes the GIL from the loop thread, both pay a context switch, and a
pool of eight busy writers cost the loop more CPU than the disk work itself
(bench/smtp.py: 2.0 ms of CPU a session with the pool, 1.2 ms with this).
The price is that a large message delays the ones behind it by its own
write and sync.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from looper.files import fsync_folder, write_atomically

MESSAGES_FOLDER = "messages"


class StoreFailed(Exception):
    """The message is not safely on disk (disk full, permissions, ...)."""


@dataclass(frozen=True, slots=True)
class Stored:
    path: str
    duplicate: bool  # the same content was already on disk


class MessageStore:
    def __init__(self, log_dir: str) -> None:
        self.folder = Path(log_dir) / MESSAGES_FOLDER
        # Captured mail is the trap's user's alone (privileges.py hands an older folder over so).
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._changed = threading.Condition(threading.Lock())
        self._waiting: list[_Job] = []  # guarded by _changed, like the three below
        self._writer: threading.Thread | None = None  # started on demand: a trap that stores nothing runs none
        self._writer_idle = False
        self._closing = False

    def path_of(self, sha256: str) -> str:
        """Where the content with this hex SHA-256 is (or will be) stored."""
        return str(self.folder / f"{sha256}.eml")

    async def put(self, content: bytes, sha256: str) -> Stored:
        """Store `content` (whose hex SHA-256 is `sha256`) durably."""
        loop = asyncio.get_running_loop()
        job = _Job(self.folder / f"{sha256}.eml", content, loop, loop.create_future())
        with self._changed:
            if self._closing:
                raise StoreFailed(f"{job.path}: the message store is closed")
            self._waiting.append(job)
            if self._writer_idle:
                self._changed.notify()
            elif self._writer is None or not self._writer.is_alive():  # (not alive: it died of a bug)
                self._writer = threading.Thread(target=self._write_batches, name="looper-capture", daemon=True)
                self._writer.start()
        created, error = await job.done
        if error is not None:
            raise StoreFailed(f"{job.path}: {error.strerror or error}") from error
        return Stored(str(job.path), duplicate=not created)

    def close(self) -> None:
        """Store what is waiting, then stop the writer."""
        with self._changed:
            self._closing = True
            self._changed.notify()
            writer = self._writer
        if writer is not None:
            writer.join()

    def _write_batches(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closing:
                    self._writer_idle = True
                    self._changed.wait()
                    self._writer_idle = False
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting, []
            _store_batch(self.folder, batch)


class _Job:
    __slots__ = ("path", "content", "loop", "done", "created", "error")

    def __init__(self, path: Path, content: bytes, loop: asyncio.AbstractEventLoop, done: asyncio.Future) -> None:
        self.path, self.content, self.loop, self.done = path, content, loop, done
        self.created, self.error = False, None


def _store_batch(folder: Path, batch: list[_Job]) -> None:
    """In the writer thread: each file written, synced and renamed, then one
    folder sync for all their names; then each loop told once."""
    renamed = []
    try:
        for job in batch:
            try:
                job.created = _write_durably(job.path, job.content)
            except OSError as err:
                job.error = err
            else:
                if job.created:
                    renamed.append(job)
            job.content = b""  # the batch waits for the folder sync: don't hold its messages meanwhile
        if renamed:
            try:
                fsync_folder(folder)
            except OSError as err:
                for job in renamed:  # on disk, perhaps, but not known to survive a crash
                    job.error = err
    except BaseException as err:  # a bug here must not leave sessions waiting for ever
        for job in batch:
            job.error = job.error or OSError(f"message store failed: {err!r}")
        raise
    finally:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in batch:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, jobs)
            except RuntimeError:  # that loop is closed: nobody awaits these any more
                pass


def _deliver(jobs: list[_Job]) -> None:
    for job in jobs:
        if not job.done.done():
            job.done.set_result((job.created, job.error))


def _write_durably(path: Path, content: bytes) -> bool:
    """Write, fsync and rename into place (the folder is synced for many
    files at once); False if it was already there."""
    if path.exists():
        return False
    write_atomically(path, content, mode=0o600, sync_folder=False)
    return True
