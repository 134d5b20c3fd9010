"""Writing a file so that a reader sees the old one or the new one, never half.

One way for every file looper replaces whole: the TLS certificate and key,
captured mail, the blocklist and its state, delisting requests.
"""

from __future__ import annotations

import errno
import os
import secrets

# Files create_many holds open at once (a batch may be larger).
MAX_OPEN_FILES = 64

# Where a file without a name (O_TMPFILE) is found to be linked into a folder.
_FD_FOLDER = "/proc/self/fd"
# O_TMPFILE's answers where the kernel or the file system has no unnamed files.
_NO_UNNAMED_FILES = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}


def write_atomically(path: str | os.PathLike, data: bytes, *, mode: int = 0o644, sync_folder: bool = True) -> None:
    """A temporary file beside `path`, written, fsynced and renamed over it;
    then the folder fsynced, so that the rename survives a crash too
    (sync_folder=False: the caller syncs the folder, once for many files)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, temporary = _written_temporary(folder, name, data, mode)
    try:
        _sync_and_close(fd)
        os.replace(temporary, path)
    except BaseException:
        _discard(-1, temporary)
        raise
    if sync_folder:
        fsync_folder(folder)


def create_many(folder: str, files: list[tuple[str, bytes]], *, mode: int = 0o600) -> list[OSError | None]:
    """Create each (name, data) in `folder`: written and fsynced before it
    has its name, so that the name never shows a part; the folder's own
    sync is the caller's (once for many). Each file's error or None; a
    name that exists is left as it is (FileExistsError).

    Every file is written and its writeback started before the first is
    waited for: the file system allocates the batch's blocks together and
    the first fsync commits them for all (ext4: one journal commit a batch,
    not one a file). Each file is made without a name (O_TMPFILE) and
    linked in once synced: one change to the folder per file rather than a
    temporary name's three, and nothing left behind by a crash; where the
    system has no such files, a temporary name is linked, then removed."""
    outcomes: list[OSError | None] = [None] * len(files)
    if not files:
        return outcomes
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        return [err] * len(files)
    try:
        for start in range(0, len(files), MAX_OPEN_FILES):
            written: list[tuple[int, int, str | None]] = []  # (index, descriptor, temporary name)
            try:
                for index in range(start, min(start + MAX_OPEN_FILES, len(files))):
                    name, data = files[index]
                    try:
                        fd, temporary = _written_unnamed(folder, name, data, mode)
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
                    index, fd, temporary = written.pop(0)
                    name, data = files[index]
                    try:
                        _sync_and_link(fd, temporary, folder_fd, name)
                    except OSError as err:
                        outcomes[index] = err
                        if temporary is None and not _unnamed_files:  # /proc refused the link: named, then
                            try:
                                _sync_and_link(*_written_temporary(folder, name, data, mode), folder_fd, name)
                                outcomes[index] = None
                            except OSError as again:
                                outcomes[index] = again
            finally:
                for _, fd, temporary in written:  # only an exception that is no OSError leaves any
                    _discard(fd, temporary)
    finally:
        os.close(folder_fd)
    return outcomes


# Made unnamed until the system says it cannot (then with a temporary name).
_unnamed_files = hasattr(os, "O_TMPFILE") and os.path.isdir(_FD_FOLDER)


def _written_unnamed(folder: str, name: str, data: bytes, mode: int) -> tuple[int, str | None]:
    """A new file in `folder` holding `data`, not yet synced: its open
    descriptor, and its temporary name (None: it has none, O_TMPFILE)."""
    global _unnamed_files
    if _unnamed_files:
        try:
            fd = os.open(folder, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, mode)
        except OSError as err:
            if err.errno not in _NO_UNNAMED_FILES:
                raise
            _unnamed_files = False
        else:
            try:
                _fill(fd, data, mode)
            except BaseException:
                os.close(fd)
                raise
            return fd, None
    return _written_temporary(folder, name, data, mode)


def _sync_and_link(fd: int, temporary: str | None, folder_fd: int, name: str) -> None:
    """Sync the new file, give it `name` in the folder, close it; a
    temporary name it had is removed, whatever happens."""
    global _unnamed_files
    try:
        os.fsync(fd)
        if temporary is not None:
            os.link(temporary, name, dst_dir_fd=folder_fd)
            return
        try:
            os.link(f"{_FD_FOLDER}/{fd}", name, dst_dir_fd=folder_fd, follow_symlinks=True)
        except OSError as err:
            if err.errno in (errno.EXDEV, errno.EPERM) or not os.path.exists(f"{_FD_FOLDER}/{fd}"):
                _unnamed_files = False  # (/proc hidden from us, say): from now on, named temporaries
            raise
    finally:
        _discard(fd, temporary)


def _written_temporary(folder: str, name: str, data: bytes, mode: int) -> tuple[int, str]:
    """A new temporary file in `folder` (named for `name`) holding `data`,
    not yet synced: its open descriptor and its path."""
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        _fill(fd, data, mode)
    except BaseException:
        _discard(fd, temporary)
        raise
    return fd, temporary


def _fill(fd: int, data: bytes, mode: int) -> None:
    os.fchmod(fd, mode)  # O_CREAT's mode is only a wish: the umask applies
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(fd: int, temporary: str | None) -> None:
    """Close the descriptor (if any) and remove the temporary name (if any)."""
    if fd >= 0:
        os.close(fd)
    if temporary is not None:
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
