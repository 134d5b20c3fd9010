"""The message store's writer process: `python -m looper.net.capture_writer FOLDER` (the module).

It writes what capture.MessageStore sends it into FOLDER, durably, and says
how each went. A process of its own rather than a thread: a thread takes the
GIL back from the trap's loop after each of its syscalls, and both pay a
context switch each time; this way the loop's share of storing a message is
one write and one read on a pipe per batch.

Standard input, frames: `<size> <name>\\n` and then `size` bytes of content,
stored as FOLDER/<name> (a name of the content's SHA-256). Standard output,
one line per frame, in order: `ok 1` (written), `ok 0` (already there), or
`err <errno> <text>`. Whatever one read brings is a batch (while the trap
is busy, with what comes within BUSY_WAIT_S more): every file written,
then each fsynced and given its name (files.create_many: the file system
commits the batch's blocks together), then one fsync of the folder for
the batch (a group commit), then the batch's answers, so an `ok` is never
sent before the name is durable. At the end of its input it
stores what it has and exits. It ignores SIGINT, SIGTERM and SIGHUP, which
reach it with the trap's: the trap closes its input when it stops, and
what was sent is stored first.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

from looper.files import create_many, fsync_folder

READ_BYTES = 1 << 20
HEADER = re.compile(rb"(\d{1,12}) ([0-9a-f]{64}\.eml)\n")
MAX_HEADER = 100
# While the trap is busy (more came while the last batch was stored), how
# long the writer waits for more before it stores a batch: a commit delay.
# Measured at concurrency 10 and 100 (bench/smtp.py's load, uvloop, whose
# short turns send a message or two a pipe write): batches grew, and the
# writer's CPU a message fell by a quarter (~380 to ~280 us at 10, ~255 to
# ~200 at 100); a session's p50 is several milliseconds there anyway. A
# single client never waits: nothing comes while its message is stored.
BUSY_WAIT_S = 0.002


def store_batch(folder: str, frames: list[tuple[str, bytes]]) -> bytes:
    """Write each frame's file, sync the folder once; the answers."""
    answers: list[bytes] = [b""] * len(frames)
    first_of: dict[str, int] = {}  # the frame that writes each name
    duplicates: list[tuple[int, int]] = []  # (frame, the frame writing its name)
    creates: list[tuple[str, bytes]] = []
    creating: list[int] = []
    for index, (name, content) in enumerate(frames):
        if name in first_of:  # the same message twice in one batch: as durable as the first
            duplicates.append((index, first_of[name]))
            continue
        if os.path.exists(os.path.join(folder, name)):
            answers[index] = b"ok 0\n"
            continue
        first_of[name] = index
        creates.append((name, content))
        creating.append(index)
    created = []  # the answers that hold only once the folder is synced
    for index, err in zip(creating, create_many(folder, creates, mode=0o600)):
        if err is None:
            created.append(index)
            answers[index] = b"ok 1\n"
        elif isinstance(err, FileExistsError):  # made since we looked: there all the same
            answers[index] = b"ok 0\n"
        else:
            answers[index] = _error(err)
    if created:
        try:
            fsync_folder(folder)
        except OSError as err:  # on disk, perhaps, but not known to survive a crash
            for index in created:
                answers[index] = _error(err)
    for index, first in duplicates:
        answers[index] = b"ok 0\n" if answers[first] == b"ok 1\n" else answers[first]
    return b"".join(answers)


def _error(err: OSError) -> bytes:
    text = " ".join((err.strerror or str(err)).split())
    return b"err %d %s\n" % (err.errno or 0, text.encode("utf-8", "replace"))


def take_frames(buffer: bytearray) -> list[tuple[str, bytes]]:
    """The whole frames at the start of `buffer` as (name, content), taken
    out of it; a partial frame stays. ValueError: a header that is none."""
    frames: list[tuple[str, bytes]] = []
    start = 0
    while True:
        header = HEADER.match(buffer, start, start + MAX_HEADER)
        if header is None:
            bad = len(buffer) - start >= MAX_HEADER or b"\n" in buffer[start:start + MAX_HEADER]
            if bad and not frames:  # (else the frames before it are taken first)
                raise ValueError(f"not a frame header: {bytes(buffer[:40])!r}")
            break
        end = header.end() + int(header[1])
        if end > len(buffer):
            break
        frames.append((header[2].decode("ascii"), bytes(buffer[header.end():end])))
        start = end
    del buffer[:start]
    return frames


def serve(folder: str, read_fd: int = 0, write_fd: int = 1) -> None:
    """Store what comes on read_fd until its end, answering on write_fd."""
    buffer = bytearray()
    ended = busy = False
    while not ended:
        data = os.read(read_fd, READ_BYTES)
        ended = not data
        buffer += data
        if busy and not ended:
            ended = _gather(read_fd, buffer)
        while frames := take_frames(buffer):
            answers = memoryview(store_batch(folder, frames))
            # More came while that batch was stored (asked before its answers
            # go, which a lone client answers with its next message): busy.
            busy = not ended and bool(select.select([read_fd], [], [], 0)[0])
            while answers:
                answers = answers[os.write(write_fd, answers):]
    if buffer:
        raise ValueError("the input ended inside a frame")


def _gather(read_fd: int, buffer: bytearray) -> bool:
    """Add what comes within BUSY_WAIT_S (up to READ_BYTES in all) to the
    batch: one journal commit then covers more messages. True if the
    input ended."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while (len(buffer) < READ_BYTES and (left := deadline - time.monotonic()) > 0
           and select.select([read_fd], [], [], left)[0]):
        more = os.read(read_fd, READ_BYTES)
        if not more:
            return True
        buffer += more
    return False


def main() -> None:
    # The trap's Ctrl-C or SIGTERM reaches its whole process group: the trap
    # ends this process by closing its input, once what it sent is stored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m {__spec__.name} FOLDER")
    try:
        serve(sys.argv[1])
    except ValueError as err:  # the trap's bug: say so, and it fails what it had sent
        sys.exit(f"{__spec__.name}: {err}")


if __name__ == "__main__":
    main()
