"""Captured messages on disk: `<log.dir>/messages/<sha256>.eml`.

A message is on disk before the 250 that acknowledges it: written to a
temporary file, fsynced, renamed to its content's SHA-256 (so the same
content is stored once and anyone can verify a file by hashing it), and the
folder fsynced so that the name survives a crash too. A message takes one
trip to a writer thread (a pool, several at once), which writes it and then
waits for a folder fsync that covers its rename: a group commit among the
writer threads, shared by every rename done before it started, so syncing
is not the ceiling when many sessions finish at once.
"""

from __future__ import annotations

import asyncio
import threading
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
        self._folder_sync = FolderSync(self.folder)

    def path_of(self, sha256: str) -> str:
        """Where the content with this hex SHA-256 is (or will be) stored."""
        return str(self.folder / f"{sha256}.eml")

    async def put(self, content: bytes, sha256: str) -> Stored:
        """Store `content` (whose hex SHA-256 is `sha256`) durably."""
        path = self.folder / f"{sha256}.eml"
        loop = asyncio.get_running_loop()
        try:
            created = await loop.run_in_executor(self._pool, self._store, path, content)
        except OSError as err:
            raise StoreFailed(f"{path}: {err.strerror or err}") from err
        return Stored(str(path), duplicate=not created)

    def _store(self, path: Path, content: bytes) -> bool:
        """In a writer thread: the file, then a folder sync covering its name."""
        created = _write_durably(path, content)
        if created:
            self._folder_sync.after_rename()
        return created

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class FolderSync:
    """The folder's fsync as a group commit among threads: a thread that has
    renamed a file into the folder returns once a sync that started after
    its rename has succeeded; one sync serves every rename before it began.
    A failed sync raises in the thread that ran it; the others waiting try
    their own, so each caller gets a sync that covers it, or its error."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._changed = threading.Condition()
        self._renames = 0  # renames announced so far
        self._synced = 0  # renames covered by the last successful sync
        self._syncing = False

    def after_rename(self) -> None:
        with self._changed:
            self._renames += 1
            mine = self._renames
            while self._synced < mine:
                if self._syncing:
                    self._changed.wait()
                    continue
                self._syncing = True
                covers = self._renames
                self._changed.release()
                succeeded = False
                try:
                    fsync_folder(self.folder)
                    succeeded = True
                finally:
                    self._changed.acquire()
                    self._syncing = False
                    if succeeded:
                        self._synced = max(self._synced, covers)
                    self._changed.notify_all()


def _write_durably(path: Path, content: bytes) -> bool:
    """Write, fsync and rename into place (the folder is synced for many
    files at once); False if it was already there."""
    if path.exists():
        return False
    write_atomically(path, content, mode=0o600, sync_folder=False)
    return True
