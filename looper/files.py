"""Writing a file so that a reader sees the old one or the new one, never half.

One way for every file looper replaces whole: the TLS certificate and key,
captured mail, the blocklist and its state, delisting requests.
"""

from __future__ import annotations

import os
import secrets


def write_atomically(path: str | os.PathLike, data: bytes, *, mode: int = 0o644, sync_folder: bool = True) -> None:
    """A temporary file beside `path`, written, fsynced and renamed over it;
    then the folder fsynced, so that the rename survives a crash too
    (sync_folder=False: the caller syncs the folder, once for many files)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is only a wish: the umask applies
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temporary, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if sync_folder:
        fsync_folder(folder)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make the names created or renamed in `folder` durable."""
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
