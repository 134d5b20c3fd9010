"""The message store: its writer process, on real pipes and a real disk.

What the trap promises: a message is on disk, its name durable, before the
250 that acknowledges it; the folder is synced once for a batch (a group
commit); a writer that dies or a disk that fails costs the messages it had
their 250, never the trap; what was sent before the trap stops is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import signal
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.net import capture_writer
from looper.net.capture import MessageStore, StoreFailed


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def frame(content: bytes) -> bytes:
    return b"%d %s.eml\n" % (len(content), sha(content).encode()) + content


def leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if not name.endswith(".eml")]


# -- the writer's frames, whatever the reads bring ----------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.data())
def test_frames_come_out_whole_however_the_input_is_split(contents, data):
    stream = b"".join(frame(c) for c in contents)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    buffer, taken = bytearray(), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        buffer += stream[start:end]
        while frames := capture_writer.take_frames(buffer):
            taken += frames
    assert taken == [(f"{sha(c)}.eml", c) for c in contents] and buffer == b""


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_a_header_that_is_none_is_refused_not_waited_for(junk):
    """Bytes that cannot start a frame raise (the trap has a bug): never a
    buffer that grows waiting for a header's end."""
    buffer = bytearray(junk)
    try:
        while capture_writer.take_frames(buffer):
            pass
    except ValueError:
        return
    assert len(buffer) < capture_writer.MAX_HEADER and b"\n" not in buffer


def test_no_name_but_a_content_hash_is_taken():
    for header in (b"3 ../../etc/passwd\n", b"3 " + b"a" * 64 + b"\n", b"-1 " + b"a" * 64 + b".eml\n"):
        with pytest.raises(ValueError, match="not a frame header"):
            capture_writer.take_frames(bytearray(header + b"abc"))


def test_a_batch_is_synced_once_and_a_failed_sync_fails_only_its_new_files(tmp_path, monkeypatch):
    synced: list[set[str]] = []
    failures = [OSError(5, "Input/output error")]

    def fsync_folder(folder):
        if failures:
            raise failures.pop()
        synced.append(set(os.listdir(folder)))

    monkeypatch.setattr(capture_writer, "fsync_folder", fsync_folder)
    old, new = b"already there", b"new"
    (tmp_path / f"{sha(old)}.eml").write_bytes(old)
    batch = [(f"{sha(c)}.eml", c) for c in (old, new)]
    twice = [(f"{sha(b'twice')}.eml", b"twice")] * 2  # the second is as durable as the first: no more
    assert capture_writer.store_batch(str(tmp_path), batch + twice) == b"ok 0\n" + b"err 5 Input/output error\n" * 3
    assert capture_writer.store_batch(str(tmp_path), batch + [(f"{sha(b'x')}.eml", b"x")]) == b"ok 0\nok 0\nok 1\n"
    assert synced == [{f"{sha(c)}.eml" for c in (old, new, b"twice", b"x")}]  # one sync for the batch, after its renames
    assert leftovers(tmp_path) == []


def test_the_writer_answers_each_read_s_frames_after_one_folder_sync(tmp_path, monkeypatch):
    """serve() over real pipes: what one read brings is one batch."""
    syncs: list[int] = []
    monkeypatch.setattr(capture_writer, "fsync_folder", lambda folder: syncs.append(len(os.listdir(folder))))
    contents = [b"message %d\r\n" % n for n in range(20)]
    to_writer, its_input = os.pipe()[::-1]
    its_output, from_writer = os.pipe()[::-1]
    writer = threading.Thread(target=capture_writer.serve, args=(str(tmp_path), its_input, its_output))
    try:
        writer.start()
        os.write(to_writer, b"".join(frame(c) for c in contents))  # one write: one read, most likely
        os.close(to_writer)
        writer.join(10)
        os.close(its_input)
        os.close(its_output)
        answers = b""
        while chunk := os.read(from_writer, 4096):
            answers += chunk
    finally:
        os.close(from_writer)
    assert answers == b"ok 1\n" * 20
    assert len(syncs) <= 2 and syncs[-1] == 20
    assert sorted(os.listdir(tmp_path)) == sorted(f"{sha(c)}.eml" for c in contents)


def _serve_in_thread(tmp_path, write_and_wait):
    """serve() over real pipes in a thread; write_and_wait(to_writer,
    read_answers) drives it; returns the answers. read_answers(count,
    within_s) fails the test if they have not all come within within_s."""
    to_writer, its_input = os.pipe()[::-1]
    its_output, from_writer = os.pipe()[::-1]
    writer = threading.Thread(target=capture_writer.serve, args=(str(tmp_path), its_input, its_output))
    answers = bytearray()

    def read_answers(count: int, within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while answers.count(b"\n") < count:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([from_writer], [], [], left)[0], f"no answer {count} in {within_s} s"
            answers.extend(os.read(from_writer, 4096))

    try:
        writer.start()
        write_and_wait(to_writer, read_answers)
        os.close(to_writer)
        writer.join(10)
        assert not writer.is_alive()
        os.close(its_output)
        while chunk := os.read(from_writer, 4096):
            answers.extend(chunk)
    finally:
        for fd in (its_input, from_writer):
            os.close(fd)
    return bytes(answers)


def test_a_client_at_a_time_is_never_kept_waiting(tmp_path, monkeypatch):
    """Each message sent after the last one's answer: nothing came while it
    was stored, so the writer never waits for more (no commit delay at
    concurrency 1)."""
    waits = []
    monkeypatch.setattr(capture_writer, "_gather", lambda fd, buffer: waits.append(fd) or False)

    def one_at_a_time(to_writer, read_answers):
        for n in range(5):
            os.write(to_writer, frame(b"alone %d" % n))
            read_answers(n + 1)

    assert _serve_in_thread(tmp_path, one_at_a_time) == b"ok 1\n" * 5
    assert waits == []


def test_a_busy_writer_gathers_what_comes_next_into_one_batch(tmp_path, monkeypatch):
    """More came while a batch was stored: the next read waits BUSY_WAIT_S
    for more, and what came meanwhile is one batch (one folder sync)."""
    monkeypatch.setattr(capture_writer, "BUSY_WAIT_S", 30.0)  # ended by the input's end, not the clock
    batches: list[list[str]] = []
    real_store = capture_writer.store_batch
    state = {}

    def store_batch(folder, frames):
        batches.append([name for name, _ in frames])
        if len(batches) == 1:  # more arrives while the first batch is stored: the trap is busy
            os.write(state["to_writer"], frame(b"second"))
        return real_store(folder, frames)

    monkeypatch.setattr(capture_writer, "store_batch", store_batch)

    def busy(to_writer, read_answers):
        state["to_writer"] = to_writer
        os.write(to_writer, frame(b"first"))
        read_answers(1)
        os.write(to_writer, frame(b"third"))  # the writer is waiting for more now: same batch
        os.write(to_writer, frame(b"fourth"))

    assert _serve_in_thread(tmp_path, busy) == b"ok 1\n" * 4
    assert batches == [[f"{sha(b'first')}.eml"], [f"{sha(c)}.eml" for c in (b"second", b"third", b"fourth")]]
    assert leftovers(tmp_path) == [] and len(os.listdir(tmp_path)) == 4


def test_a_busy_writer_stops_gathering_at_a_full_read(tmp_path, monkeypatch):
    """The wait for more ends once READ_BYTES have come, not at BUSY_WAIT_S:
    the batch is stored and answered while the input stays open."""
    monkeypatch.setattr(capture_writer, "BUSY_WAIT_S", 60.0)  # longer than the test waits
    monkeypatch.setattr(capture_writer, "READ_BYTES", 4096)
    big = [b"%d" % n + b"x" * 2000 for n in range(3)]  # more than READ_BYTES in all
    real_store = capture_writer.store_batch
    state = {}

    def store_batch(folder, frames):
        if not state.get("sent"):  # the trap is busy: the three arrive while the first batch is stored
            state["sent"] = True
            os.write(state["to_writer"], b"".join(frame(c) for c in big))
        return real_store(folder, frames)

    monkeypatch.setattr(capture_writer, "store_batch", store_batch)

    def busy(to_writer, read_answers):
        state["to_writer"] = to_writer
        os.write(to_writer, frame(b"first"))
        read_answers(4, within_s=10)  # the input still open: only the full read ends the wait

    assert _serve_in_thread(tmp_path, busy) == b"ok 1\n" * 4
    assert sorted(os.listdir(tmp_path)) == sorted(f"{sha(c)}.eml" for c in [b"first", *big])


# -- the store, with its real writer process ----------------------------------


async def test_messages_stored_at_once_are_all_on_disk_when_acknowledged(tmp_path):
    store = MessageStore(str(tmp_path))
    contents = [b"Subject: %d\r\n\r\n" % n + os.urandom(n * 37) for n in range(200)]

    async def put(content: bytes):
        stored = await store.put(content, sha(content))
        with open(stored.path, "rb") as file:  # on disk when put returns
            assert file.read() == content
        return stored

    try:
        first = await asyncio.gather(*(put(c) for c in contents))
        again = await asyncio.gather(*(put(c) for c in contents[:10]))
    finally:
        store.close()
    assert not any(s.duplicate for s in first) and all(s.duplicate for s in again)
    assert len(os.listdir(store.folder)) == 200 and leftovers(store.folder) == []


async def test_a_writer_that_dies_fails_its_messages_and_the_next_starts_another(tmp_path):
    store = MessageStore(str(tmp_path))
    try:
        await store.put(b"first", sha(b"first"))
        process = store._writer.process
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        big = os.urandom(4 << 20)
        with pytest.raises(StoreFailed, match="the message writer process"):
            await store.put(big, sha(big))
        stored = await store.put(big, sha(big))
        assert store._writer.process.pid != process.pid
        assert os.path.getsize(stored.path) == len(big)
    finally:
        store.close()


async def test_the_writer_ignores_the_signals_that_reach_the_trap_s_process_group(tmp_path):
    store = MessageStore(str(tmp_path))
    try:
        await store.put(b"one", sha(b"one"))
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            store._writer.process.send_signal(signum)
        await asyncio.sleep(0.2)
        stored = await store.put(b"two", sha(b"two"))
        assert not stored.duplicate and store._writer.process.poll() is None
    finally:
        store.close()


async def test_close_stores_what_was_sent_and_stops_the_writer(tmp_path):
    store = MessageStore(str(tmp_path))
    contents = [os.urandom(100_000) for _ in range(30)]
    puts = [asyncio.ensure_future(store.put(c, sha(c))) for c in contents]
    await asyncio.sleep(0)  # sent, not yet answered
    process = store._writer.process
    store.close()
    assert process.returncode == 0
    assert sorted(os.listdir(store.folder)) == sorted(f"{sha(c)}.eml" for c in contents)
    results = await asyncio.gather(*puts, return_exceptions=True)
    assert all(not isinstance(r, Exception) for r in results)  # answered while closing
    with pytest.raises(StoreFailed, match="closed"):
        await store.put(b"late", sha(b"late"))


async def test_a_store_that_cannot_write_says_why(tmp_path):
    store = MessageStore(str(tmp_path))
    store.folder.chmod(0o500)
    try:
        if os.geteuid() == 0:  # root writes anyway: make the folder a file instead
            store.folder.chmod(0o700)
            store.folder.rmdir()
            store.folder.write_text("not a folder")
        with pytest.raises(StoreFailed, match="Not a directory|Permission denied"):
            await store.put(b"x", sha(b"x"))
    finally:
        store.close()


def test_input_that_ends_inside_a_frame_is_an_error(tmp_path):
    to_writer, its_input = os.pipe()[::-1]
    its_output, from_writer = os.pipe()[::-1]
    os.write(to_writer, frame(b"whole") + frame(b"cut short")[:-3])
    os.close(to_writer)
    try:
        with pytest.raises(ValueError, match="ended inside a frame"):
            capture_writer.serve(str(tmp_path), its_input, its_output)
        assert os.read(from_writer, 100) == b"ok 1\n"  # what came whole is stored all the same
    finally:
        for fd in (its_input, its_output, from_writer):
            os.close(fd)
    assert os.listdir(tmp_path) == [f"{sha(b'whole')}.eml"]


async def test_a_writer_that_answers_nonsense_is_let_go(tmp_path, monkeypatch):
    from looper.net import capture

    store = MessageStore(str(tmp_path))
    try:
        monkeypatch.setattr(capture, "WRITER_MODULE", "tests.capture_writer_liar")
        with pytest.raises(StoreFailed, match=r"the message writer process answered b'bogus'"):
            await store.put(b"one", sha(b"one"))
        liar = store._writer.process
        assert liar.returncode == 0  # let go: its input closed, it ended
        monkeypatch.undo()
        stored = await store.put(b"one", sha(b"one"))  # the next message starts a real writer
        assert not stored.duplicate and open(stored.path, "rb").read() == b"one"
    finally:
        store.close()


async def test_a_writer_that_cannot_start_fails_the_message(tmp_path, monkeypatch):
    import sys

    store = MessageStore(str(tmp_path))
    try:
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
        with pytest.raises(StoreFailed, match="cannot start the message writer: No such file or directory"):
            await store.put(b"one", sha(b"one"))
    finally:
        store.close()
    assert os.listdir(store.folder) == []


async def test_a_bug_in_sending_fails_the_message_instead_of_leaving_it_waiting(tmp_path, monkeypatch, caplog):
    from looper.net import capture

    def broken_writev(fd, buffers):
        raise RuntimeError("a bug")

    store = MessageStore(str(tmp_path))
    try:
        monkeypatch.setattr(capture.os, "writev", broken_writev)
        with pytest.raises(StoreFailed, match="could not be sent to"):
            await asyncio.wait_for(store.put(b"one", sha(b"one")), 10)
        monkeypatch.undo()
        assert not (await store.put(b"one", sha(b"one"))).duplicate  # another writer took over
    finally:
        store.close()
    assert "sending to the message writer failed" in caplog.text


async def test_a_name_that_is_no_content_hash_fails_that_message_alone(tmp_path):
    store = MessageStore(str(tmp_path))
    try:
        other = asyncio.ensure_future(store.put(b"fine", sha(b"fine")))
        with pytest.raises(StoreFailed, match="not a hex SHA-256"):
            await store.put(b"x", "../../x")
        assert not (await other).duplicate
    finally:
        store.close()


async def test_a_writer_that_answers_more_than_it_was_sent_is_let_go(tmp_path, monkeypatch):
    from looper.net import capture

    store = MessageStore(str(tmp_path))
    try:
        monkeypatch.setattr(capture, "WRITER_MODULE", "tests.capture_writer_liar")
        monkeypatch.setenv("LIAR_ANSWER", "ok 1\nok 1\n")
        await store.put(b"one", sha(b"one"))  # the first answer is taken at its word
        liar = store._writer
        for _ in range(100):  # the second answer arrives with the first, or just after
            if liar.dead is not None:
                break
            await asyncio.sleep(0.01)
        assert liar.dead == "the message writer process answered a message it was not sent"
        monkeypatch.undo()
        assert not (await store.put(b"two", sha(b"two"))).duplicate  # the next message starts a real writer
    finally:
        store.close()
