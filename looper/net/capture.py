"""Captured messages on disk: `<log.dir>/messages/<sha256>.eml`.

A message is on disk before the 250 that acknowledges it: written to a
temporary file, fsynced, renamed to its content's SHA-256 (so the same
content is stored once and anyone can verify a file by hashing it), and the
folder fsynced so that the name survives a crash too. File writes run in a
thread pool, several at once; the folder's fsync is a group commit shared by
every rename done before it started, so syncing is not the ceiling when many
sessions finish at once.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from looper.files import fsync_folder, write_atomically

MESSAGES_FOLDER = "messages"
WRITER_THREADS = 8


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
        self._pool = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="looper-capture")
        self._folder_syncing = False
        self._folder_sync_next: asyncio.Future | None = None

    def path_of(self, sha256: str) -> str:
        """Where the content with this hex SHA-256 is (or will be) stored."""
        return str(self.folder / f"{sha256}.eml")

    async def put(self, content: bytes, sha256: str) -> Stored:
        """Store `content` (whose hex SHA-256 is `sha256`) durably."""
        path = self.folder / f"{sha256}.eml"
        loop = asyncio.get_running_loop()
        try:
            created = await loop.run_in_executor(self._pool, _write_durably, path, content)
            if created:
                await self._sync_folder()
        except OSError as err:
            raise StoreFailed(f"{path}: {err.strerror or err}") from err
        return Stored(str(path), duplicate=not created)

    async def _sync_folder(self) -> None:
        # A sync already running may have started before our rename: wait for
        # the next one, which every rename done meanwhile shares.
        waiter = self._folder_sync_next
        if waiter is None:
            waiter = self._folder_sync_next = asyncio.get_running_loop().create_future()
            if not self._folder_syncing:
                self._start_folder_sync()
        await asyncio.shield(waiter)

    def _start_folder_sync(self) -> None:
        waiter, self._folder_sync_next = self._folder_sync_next, None
        self._folder_syncing = True
        syncing = asyncio.get_running_loop().run_in_executor(self._pool, fsync_folder, self.folder)

        def done(finished: asyncio.Future) -> None:
            self._folder_syncing = False
            error = finished.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(None)
            if self._folder_sync_next is not None:
                self._start_folder_sync()

        syncing.add_done_callback(done)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _write_durably(path: Path, content: bytes) -> bool:
    """Write, fsync and rename into place (the folder is synced for many
    files at once); False if it was already there."""
    if path.exists():
        return False
    write_atomically(path, content, mode=0o600, sync_folder=False)
    return True
