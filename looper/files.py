"""Writing a file so that a reader sees the old one or the new one, never half.

One way for every file looper replaces whole: the TLS certificate and key,
captured mail, the blocklist and its state, delisting requests.
"""

from __future__ import annotations

import os
import secrets

# Files write_many_atomically holds open at once (a batch may be larger).
MAX_OPEN_FILES = 64


def write_atomically(path: str | os.PathLike, data: bytes, *, mode: int = 0o644, sync_folder: bool = True) -> None:
    """A temporary file beside `path`, written, fsynced and renamed over it;
    then the folder fsynced, so that the rename survives a crash too
    (sync_folder=False: the caller syncs the folder, once for many files)."""
    path = os.fspath(path)
    _commit(*_written_temporary(path, data, mode), path)
    if sync_folder:
        fsync_folder(os.path.dirname(os.path.abspath(path)))


def write_many_atomically(files: list[tuple[str, bytes]], *, mode: int = 0o644) -> list[OSError | None]:
    """write_atomically(sync_folder=False) for each (path, data), each file's
    error or None. Every file is written and its writeback started before
    the first is waited for: the file system then allocates the batch's
    blocks in one transaction, and the first fsync commits it for all
    (ext4: one journal commit a batch rather than one a file)."""
    outcomes: list[OSError | None] = [None] * len(files)
    for start in range(0, len(files), MAX_OPEN_FILES):
        written: list[tuple[int, int, str]] = []  # (index, descriptor, temporary)
        try:
            for index in range(start, min(start + MAX_OPEN_FILES, len(files))):
                path, data = files[index]
                try:
                    fd, temporary = _written_temporary(path, data, mode)
                except OSError as err:
                    outcomes[index] = err
                    continue
                written.append((index, fd, temporary))
                try:
                    # Only a hint: Linux starts the writeback of dirty pages here.
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
            while written:
                index, fd, temporary = written[0]
                del written[0]
                try:
                    _commit(fd, temporary, files[index][0])
                except OSError as err:
                    outcomes[index] = err
        finally:
            for _, fd, temporary in written:  # only an exception that is no OSError leaves any
                _discard(fd, temporary)
    return outcomes


def _written_temporary(path: str, data: bytes, mode: int) -> tuple[int, str]:
    """A new temporary file beside `path` holding `data`, not yet synced: its
    open descriptor and its path."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is only a wish: the umask applies
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        _discard(fd, temporary)
        raise
    return fd, temporary


def _commit(fd: int, temporary: str, path: str) -> None:
    """Sync the temporary file, close it and rename it over `path`."""
    try:
        os.fsync(fd)
        closing, fd = fd, -1
        os.close(closing)  # (closed even if it fails)
        os.replace(temporary, path)
    except BaseException:
        _discard(fd, temporary)
        raise


def _discard(fd: int, temporary: str) -> None:
    if fd >= 0:
        os.close(fd)
    try:
        os.unlink(temporary)
    except OSError:
        pass


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make the names created or renamed in `folder` durable."""
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
