"""Captured messages on disk: `<log.dir>/messages/<sha256>.eml`.

A message is on disk before the 250 that acknowledges it: written to a
file without a name, fsynced, then linked in under its content's SHA-256
(so the same content is stored once and anyone can verify a file by
hashing it), and the folder fsynced so that the name survives a crash too
(files.create_many).

The disk work is done by a writer process (capture_writer.py), started with
the first message: the loop sends it what arrived in a turn in one write on
a pipe and reads its answers when they come; it stores a batch at a time,
with one folder sync for each batch (a group commit). Not a thread: each
time a thread takes the GIL back from the loop thread after one of its
syscalls, both pay a context switch, and on the 2-core machine of
bench/smtp.py writer threads cost the loop more CPU than the disk work
itself (CPU a session at concurrency 10, the store's included: a pool of
eight threads 2.0 ms, one thread taking batches 1.2-1.6 ms, this process
1.1-1.2 ms).
A writer that dies fails the messages it had (they get no 250) and the
next message starts another.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import re
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

MESSAGES_FOLDER = "messages"
log = logging.getLogger("looper.capture")
READ_BYTES = 1 << 16
WRITEV_PIECES = 64  # buffers a writev takes at most (IOV_MAX is 1024 on Linux)
PIPE_BYTES = 1 << 20  # asked for the pipe to the writer (Linux's default unprivileged maximum): fewer wake-ups
_LOOPER_ROOT = str(Path(__file__).resolve().parents[2])  # where the looper package is, for the writer's imports
WRITER_MODULE = f"{__package__}.capture_writer"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        self._folder_name = str(self.folder)  # (pathlib per message costs more than the pipe does)
        self._writer: _Writer | None = None
        self._closed = False

    def path_of(self, sha256: str) -> str:
        """Where the content with this hex SHA-256 is (or will be) stored."""
        return os.path.join(self._folder_name, f"{sha256}.eml")

    async def put(self, content: bytes, sha256: str) -> Stored:
        """Store `content` (whose hex SHA-256 is `sha256`) durably."""
        name = f"{sha256}.eml"
        path = os.path.join(self._folder_name, name)
        if self._closed:
            raise StoreFailed(f"{path}: the message store is closed")
        if not _SHA256.fullmatch(sha256):  # (the writer takes no other name: it would stop, failing the others)
            raise StoreFailed(f"{path}: not a hex SHA-256")
        loop = asyncio.get_running_loop()
        writer = self._writer
        if writer is None or writer.dead is not None or writer.loop is not loop:
            if writer is not None:
                writer.close()
            try:
                writer = self._writer = _Writer(self.folder, loop)
            except OSError as err:
                raise StoreFailed(f"{path}: cannot start the message writer: {err.strerror or err}") from err
        created, error = await writer.send(name, content)
        if error is not None:
            raise StoreFailed(f"{path}: {error}")
        return Stored(path, duplicate=not created)

    def close(self) -> None:
        """What was sent is stored (this waits for it), then the writer exits."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# (created, error): error None if the message is on disk and its name durable.
Outcome = tuple[bool, "str | None"]


class _Writer:
    """One writer process and the loop's ends of its two pipes."""

    def __init__(self, folder: Path, loop: asyncio.AbstractEventLoop) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (_LOOPER_ROOT, env.get("PYTHONPATH"))))
        self.process = subprocess.Popen([sys.executable, "-m", WRITER_MODULE, str(folder)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.loop = loop
        self.dead: str | None = None  # why it cannot be used any more
        self._to = self.process.stdin.fileno()
        self._from = self.process.stdout.fileno()
        os.set_blocking(self._to, False)
        os.set_blocking(self._from, False)
        with contextlib.suppress(OSError, AttributeError):  # (a smaller pipe works too, only more often)
            fcntl.fcntl(self._to, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._waiting: deque[asyncio.Future[Outcome]] = deque()  # one per frame sent, answered in order
        # What the pipe has not taken yet: headers and the messages themselves
        # (not copies: a disk that stalls should not double what waits for it).
        self._out: deque[memoryview] = deque()
        self._answers = bytearray()  # a partial answer line
        self._flushing = False  # a flush is scheduled for this turn, or the loop waits until the pipe takes more
        self._watching_pipe = False  # for room in it
        loop.add_reader(self._from, self._readable)

    def send(self, name: str, content: bytes) -> asyncio.Future[Outcome]:
        future = self.loop.create_future()
        self._waiting.append(future)
        self._out.append(memoryview(b"%d %s\n" % (len(content), name.encode("ascii"))))
        if content:
            self._out.append(memoryview(content if type(content) is bytes else bytes(content)))
        if not self._flushing:  # all of a turn's messages in one write
            self._flushing = True
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        if self.dead is not None:
            return
        try:
            self._write_out()
        except BlockingIOError:  # the pipe is full: the rest when the writer has read some
            if not self._watching_pipe:
                self._watching_pipe = True
                self.loop.add_writer(self._to, self._flush)
            return
        except OSError as err:
            self._die(f"cannot be written to ({err.strerror or err})")
            return
        except Exception as err:  # a bug here must not leave sessions waiting for ever
            log.exception("sending to the message writer failed")
            self._die(f"could not be sent to ({err!r})")
            return
        if self._watching_pipe:
            self._watching_pipe = False
            self.loop.remove_writer(self._to)
        self._flushing = False

    def _write_out(self) -> None:
        """Write what is waiting until the pipe is full (BlockingIOError)."""
        out = self._out
        while out:
            written = os.writev(self._to, list(itertools.islice(out, WRITEV_PIECES)))
            while written:
                first = out[0]
                if written < len(first):
                    out[0] = first[written:]
                    break
                written -= len(first)
                out.popleft()

    def _readable(self) -> None:
        try:
            data = os.read(self._from, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as err:
            self._die(f"cannot be read from ({err.strerror or err})")
            return
        if not data:
            self._die("exited")
            return
        try:
            self._take_answers(data)
        except Exception as err:  # a bug here must not leave sessions waiting for ever
            log.exception("reading the message writer's answers failed")
            self._die(f"could not be understood ({err!r})")

    def _take_answers(self, data: bytes) -> None:
        answers = self._answers
        answers += data
        start = 0
        while (end := answers.find(b"\n", start)) >= 0:
            line, start = bytes(answers[start:end]), end + 1
            if line == b"ok 1" or line == b"ok 0":
                outcome: Outcome = (line == b"ok 1", None)
            elif line.startswith(b"err "):
                outcome = (False, line.split(b" ", 2)[-1].decode("utf-8", "replace"))
            else:
                del answers[:start]
                self._die(f"answered {line[:80]!r}")
                return
            if not self._waiting:
                self._die("answered a message it was not sent")
                return
            future = self._waiting.popleft()
            if not future.done():  # (cancelled: its session went away)
                future.set_result(outcome)
        del answers[:start]

    def _die(self, why: str) -> None:
        """It cannot be used any more: what it had fails (no 250 for those),
        and the next message starts another writer."""
        self.dead = f"the message writer process {why}"
        self._stop_watching()
        for future in self._waiting:
            if not future.done():
                future.set_result((False, self.dead))
        self._waiting.clear()
        self._out.clear()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _stop_watching(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self._from)
            self.loop.remove_writer(self._to)

    def close(self) -> None:
        """Send what is left and close its input; it stores that and exits,
        answering as it goes (read here, blocking: the loop is stopping)."""
        if self.dead is not None:
            return
        self._stop_watching()
        self.dead = "the message store is closed"
        try:
            os.set_blocking(self._to, True)
            self._write_out()
        except OSError:
            pass
        try:
            self.process.stdin.close()
            os.set_blocking(self._from, True)
            while data := self.process.stdout.read(READ_BYTES):
                if not self.loop.is_closed():  # (closed: nobody awaits the answers; read to the end all the same)
                    self._take_answers(data)
        except (OSError, ValueError):  # it died meanwhile, or answered nonsense (_take_answers closed it)
            pass
        self.process.stdout.close()
        self.process.wait()
        if not self.loop.is_closed():
            for future in self._waiting:
                if not future.done():
                    future.set_result((False, self.dead))
        self._waiting.clear()
