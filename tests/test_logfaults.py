"""A log folder that fills up or turns read-only (issue 7): the trap stays up.

Events that cannot be written are counted, never raised into the caller;
nothing of a failed write is left in the file; the first write that works
again starts with one looper.log.dropped; `healthy` is False meanwhile. The
message store on a full disk raises StoreFailed, and the relay answers 452.

The tests marked `root` make a real small disk: a tmpfs of a few hundred KiB
mounted at the log folder (and remounted read-only). They skip without root.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
import smtplib
import subprocess
from pathlib import Path

import pytest

from looper.eventlog import EventLog, LinesLost, SessionInfo, Sink, open_event_log
from looper.net.capture import MessageStore, StoreFailed
from tests.conftest import free_port

WHO = SessionInfo("0123456789ab", "smtp", "192.0.2.1", 4000, "198.51.100.2", 25)
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def lines_of(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    assert text == "" or text.endswith("\n"), "a partial line"
    return [json.loads(line) for line in text.splitlines()]


# -- the accounting, with a sink that fails on demand -------------------------


class Flaky(Sink):
    """Takes lines until `error` is set; then takes the first `take` of a batch."""

    durable = True

    def __init__(self) -> None:
        self.lines: list[dict] = []
        self.error: OSError | None = None
        self.take = 0

    def write(self, lines):
        if self.error is None:
            self.lines += map(json.loads, lines)
            return
        self.lines += map(json.loads, lines[: self.take])
        raise LinesLost(min(self.take, len(lines)), self.error)


def test_lost_events_are_counted_then_reported_once_before_the_next_lines():
    sink = Flaky()
    log = EventLog("s", [sink])
    log.emit(WHO, "looper.test.event", number=0)
    sink.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    for number in range(1, 4):
        log.emit(WHO, "looper.test.event", number=number)  # never raises
    assert not log.healthy and log.dropped == 3 and not log.flush()
    sink.error = OSError(errno.EIO, os.strerror(errno.EIO))  # a later error does not replace the first
    log.emit(WHO, "looper.test.event", number=4)
    sink.error = None
    log.emit(WHO, "looper.test.event", number=5)
    assert log.healthy and log.dropped == 0
    assert [e["eventid"] for e in sink.lines] == ["looper.test.event", "looper.log.dropped", "looper.test.event"]
    report = sink.lines[1]
    assert report == {
        "timestamp": report["timestamp"], "eventid": "looper.log.dropped", "session": None, "sensor": "s",
        "protocol": None, "src_ip": None, "src_port": None, "dst_ip": None, "dst_port": None,
        "dropped": 4, "error": "ENOSPC: No space left on device", "since": report["since"],
    }
    assert RFC3339.fullmatch(report["since"]) and report["since"] <= report["timestamp"]
    log.emit(WHO, "looper.test.event", number=6)  # reported once
    assert [e.get("number") for e in sink.lines] == [0, None, 5, 6]


def test_a_write_that_fails_after_the_report_starts_a_new_count():
    sink = Flaky()
    log = EventLog("s", [sink])
    sink.error = OSError(errno.EROFS, os.strerror(errno.EROFS))
    log.emit(WHO, "looper.test.event", number=0)
    sink.take = 2  # the report and one line get out, then it fails again
    log._pending += ['{"eventid":"looper.test.event","number":1}', '{"eventid":"looper.test.event","number":2}']
    log.flush()
    assert [e["eventid"] for e in sink.lines] == ["looper.log.dropped", "looper.test.event"]
    assert sink.lines[0]["dropped"] == 1 and sink.lines[0]["error"] == "EROFS: Read-only file system"
    assert not log.healthy and log.dropped == 1  # number 2, in a new outage
    sink.error = None
    log.emit(WHO, "looper.test.event", number=3)
    assert [e.get("number") for e in sink.lines] == [None, 1, None, 3] and sink.lines[2]["dropped"] == 1


def test_a_sink_that_is_not_durable_reports_its_own_losses_and_leaves_health_alone():
    durable, stdout = Flaky(), Flaky()
    stdout.durable = False
    log = EventLog("s", [durable, stdout])
    stdout.error = OSError(errno.EPIPE, os.strerror(errno.EPIPE))
    log.emit(WHO, "looper.test.event", number=0)
    assert log.healthy and log.dropped == 1
    stdout.error = None
    log.emit(WHO, "looper.test.event", number=1)
    assert [e.get("number") for e in durable.lines] == [0, 1]
    assert [e.get("number") for e in stdout.lines] == [None, 1] and stdout.lines[0]["dropped"] == 1


def test_a_sink_with_a_bug_does_not_reach_the_caller():
    class Broken(Sink):
        durable = True

        def write(self, lines):
            raise ValueError("a bug")

    log = EventLog("s", [Broken()])
    log.emit(WHO, "looper.test.event")
    assert not log.healthy and log.dropped == 1


# -- the file sink, with os calls that fail like a failing disk ----------------


def failing_after(path: Path, allowed_bytes: int, error: int):
    """An os.write that writes `allowed_bytes` more into `path`, then fails
    with `error`, as a disk does that fills up in the middle of a write."""
    real_write = os.write
    budget = [allowed_bytes]

    def write(fd, data):
        if not path.exists() or not os.path.samestat(os.fstat(fd), path.stat()):
            return real_write(fd, data)
        if budget[0] == 0:
            raise OSError(error, os.strerror(error))
        written = real_write(fd, bytes(data)[: budget[0]])
        budget[0] -= written
        return written

    return write


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EIO])
async def test_a_write_that_fails_half_way_leaves_whole_lines(tmp_path, monkeypatch, error):
    path = tmp_path / "events.jsonl"
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.test.event", number=0)
    await asyncio.sleep(0)
    size = path.stat().st_size
    with monkeypatch.context() as patched:
        patched.setattr(os, "write", failing_after(path, 300, error))  # part of a batch, then the error
        for number in range(1, 6):
            log.emit(WHO, "looper.test.event", number=number)
        await asyncio.sleep(0)
        assert not log.healthy and log.dropped == 5
        assert path.stat().st_size == size and [e["number"] for e in lines_of(path)] == [0]
    log.emit(WHO, "looper.test.event", number=6)
    assert log.flush() and log.healthy and log.dropped == 0
    events = lines_of(path)
    assert [e["eventid"] for e in events] == ["looper.test.event", "looper.log.dropped", "looper.test.event"]
    assert events[1]["dropped"] == 5 and events[1]["error"].startswith(f"{errno.errorcode[error]}: ")
    log.close()


async def test_a_rotation_that_fails_keeps_the_lines_before_it(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 16, backups=2)
    with monkeypatch.context() as patched:
        def replace(src, dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        patched.setattr(os, "replace", replace)
        for number in range(600):  # about 150 KiB: the file fills up in the middle of the batch
            log.emit(WHO, "looper.test.event", number=number)
        await asyncio.sleep(0)
    kept = [e["number"] for e in lines_of(path)]
    assert kept == list(range(len(kept))) and 0 < len(kept) < 600
    assert path.stat().st_size <= 1 << 16 and not (tmp_path / "events.jsonl.1").exists()
    assert not log.healthy and log.dropped == 600 - len(kept)
    log.emit(WHO, "looper.test.event", number=600)
    log.close()
    events = lines_of(tmp_path / "events.jsonl.1") + lines_of(path)
    assert [e.get("number") for e in events] == [*kept, None, 600]
    assert events[len(kept)]["dropped"] == 600 - len(kept)


# -- a real small disk ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs mounted at tmp_path/logs (the start_trap fixture's log.dir)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "logs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True, capture_output=True)


def fill(folder: Path) -> Path:
    """Take every free block of the disk; unlink the file to give them back."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as taking:
        with pytest.raises(OSError) as full:
            while True:
                taking.write(bytes(1 << 14))
    assert full.value.errno == errno.ENOSPC
    return filler


def test_a_full_disk_then_a_read_only_one(small_disk, monkeypatch):
    path = small_disk / "events.jsonl"
    log = open_event_log("s", str(small_disk), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.test.event", number=0)
    filler = fill(small_disk)
    short_writes = []
    real_write = os.write

    def watching_write(fd, data):
        written = real_write(fd, data)
        if written < len(data):
            short_writes.append((written, len(data)))
        return written

    monkeypatch.setattr(os, "write", watching_write)
    number = 0
    while log.healthy:  # the file's last page has room for a few lines more
        number += 1
        assert number < 100, "the disk never filled up"
        log.emit(WHO, "looper.test.event", number=number, padding="x" * 200)
    written = lines_of(path)
    # The disk took the start of the last line (a short write), then refused the
    # rest: the log cut that start off again.
    assert short_writes and [e["number"] for e in written] == list(range(number))
    assert log.dropped == 1

    # The failure closed the file, so the disk can be made read-only now.
    remount(small_disk, "ro")
    for _ in range(5):
        number += 1
        log.emit(WHO, "looper.test.event", number=number)  # the file cannot even be opened: EROFS
    assert not log.healthy and log.dropped == 6
    assert lines_of(path) == written

    remount(small_disk, "rw")
    filler.unlink()
    number += 1
    log.emit(WHO, "looper.test.event", number=number)
    assert log.healthy and log.dropped == 0
    events = lines_of(path)
    assert events[: len(written)] == written
    report, last = events[len(written):]
    assert report["eventid"] == "looper.log.dropped" and report["dropped"] == 6
    assert report["error"] == "ENOSPC: No space left on device" and report["since"] <= report["timestamp"]
    assert last["number"] == number
    log.close()


def test_the_folder_turns_read_only_while_the_log_rotates(small_disk, monkeypatch):
    path = small_disk / "events.jsonl"
    log = open_event_log("s", str(small_disk), max_bytes=1 << 16, backups=1)
    real_replace = os.replace

    def replace_then_read_only(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".1"):  # rotated, the log closed: the disk turns read-only
            remount(small_disk, "ro")

    monkeypatch.setattr(os, "replace", replace_then_read_only)
    number = 0
    while log.healthy:
        assert number < 1000, "it never rotated"
        log.emit(WHO, "looper.test.event", number=number)
        number += 1
    monkeypatch.undo()
    rotated = lines_of(small_disk / "events.jsonl.1")
    assert [e["number"] for e in rotated] == list(range(number - 1)) and not path.exists()
    log.emit(WHO, "looper.test.event", number=number)
    assert log.dropped == 2
    remount(small_disk, "rw")
    log.emit(WHO, "looper.test.event", number=number + 1)
    log.close()
    events = lines_of(path)
    assert [e["eventid"] for e in events] == ["looper.log.dropped", "looper.test.event"]
    assert events[0]["dropped"] == 2 and events[0]["error"] == "EROFS: Read-only file system"


async def test_the_message_store_on_a_full_disk_fails_and_leaves_nothing(small_disk):
    store = MessageStore(str(small_disk))
    content = b"Subject: too big for the disk\r\n\r\n" + bytes(64 << 10) + b"\r\n"
    sha256 = hashlib.sha256(content).hexdigest()
    try:
        filler = fill(small_disk)
        with pytest.raises(StoreFailed, match="No space left on device"):
            await store.put(content, sha256)
        assert list(store.folder.iterdir()) == []  # no message, no temporary file
        filler.unlink()
        stored = await store.put(content, sha256)
        assert Path(stored.path).read_bytes() == content and not stored.duplicate
    finally:
        store.close()


# -- the emulated relay on a full disk -------------------------------------------

CLIENT = "127.0.0.3"  # nothing listens there: the dial-back is refused


def send(trap, content: bytes) -> int:
    """The code the relay gave the message: 250 if it took it."""
    client = smtplib.SMTP(trap.host, trap.port, local_hostname="spam.example.org", source_address=(CLIENT, 0), timeout=10)
    try:
        client.sendmail("a@spam.example", ["victim@far.example.com"], content)
        return 250
    except smtplib.SMTPRecipientsRefused as err:
        return next(iter(err.recipients.values()))[0]
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as err:
        return err.smtp_code
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            client.close()


async def test_the_emulated_relay_on_a_full_disk_answers_452_and_stays_up(small_disk, start_trap):
    trap = await start_trap(free_port(CLIENT), dialback={"on_failure": "emulate"}, smtp={"hostname": "mx.trap.example.net"})
    eventlog = trap.trap.eventlog
    refused = b"Subject: refused\r\nMessage-ID: <full@spam.example>\r\n\r\n" + b"x" * 8192 + b"\r\n"
    taken = b"Subject: taken\r\nMessage-ID: <room@spam.example>\r\n\r\nthere is room again\r\n"
    filler = fill(small_disk)
    while eventlog.flush():  # the log's last page still had room
        eventlog.emit(WHO, "looper.test.filler", padding="x" * 500)
    before = lines_of(trap.events.path)

    assert await asyncio.to_thread(send, trap, refused) == 452
    await trap.quiet()
    assert not eventlog.healthy and eventlog.dropped > 0
    assert list((small_disk / "messages").iterdir()) == []
    assert lines_of(trap.events.path) == before

    filler.unlink()
    assert await asyncio.to_thread(send, trap, taken) == 250
    await trap.quiet()
    eventlog.flush()
    assert eventlog.healthy
    events = lines_of(trap.events.path)
    assert events[: len(before)] == before
    report = events[len(before)]
    assert report["eventid"] == "looper.log.dropped" and report["error"] == "ENOSPC: No space left on device"
    assert report["dropped"] >= 4  # at least the refused session's connect, EHLO, MAIL, RCPT, ...
    (message,) = [e for e in events if e["eventid"] == "looper.smtp.message"]
    assert Path(message["path"]).read_bytes() == taken and message["sha256"] == hashlib.sha256(taken).hexdigest()


async def test_a_message_stored_but_not_loggable_gets_452_never_250(small_disk, start_trap):
    """The messages folder has room (a tmpfs of its own), the log has none:
    the message is on disk, but its events cannot reach the log, so the
    client is told 452 and will send it again; a 250 would promise a
    capture the log knows nothing of."""
    messages = small_disk / "messages"
    messages.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(messages)], check=True, capture_output=True)
    try:
        trap = await start_trap(
            free_port(CLIENT), dialback={"on_failure": "emulate"}, smtp={"hostname": "mx.trap.example.net"}
        )
        eventlog = trap.trap.eventlog
        filler = fill(small_disk)
        while eventlog.flush():  # the log's last page still had room
            eventlog.emit(WHO, "looper.test.filler", padding="x" * 500)
        content = b"Subject: unlogged\r\nMessage-ID: <nolog@spam.example>\r\n\r\nstored, not logged\r\n"
        assert await asyncio.to_thread(send, trap, content) == 452
        await trap.quiet()
        assert [p.name for p in messages.iterdir()] == [hashlib.sha256(content).hexdigest() + ".eml"]
        filler.unlink()
        assert await asyncio.to_thread(send, trap, content) == 250  # sent again: now logged
        await trap.quiet()
        eventlog.flush()
        stored = [e for e in lines_of(trap.events.path) if e["eventid"] == "looper.smtp.message"]
        assert [e["sha256"] for e in stored] == [hashlib.sha256(content).hexdigest()]
        await trap.trap.stop()
    finally:
        if subprocess.run(["umount", str(messages)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(messages)], check=True)
