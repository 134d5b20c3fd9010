"""The event log: whole JSON lines, common fields, bounded by rotation."""

import asyncio
import json
import logging
import os
import re

from looper.eventlog import EventLog, SessionInfo, open_event_log

WHO = SessionInfo("0123456789ab", "smtp", "192.0.2.1", 4000, "198.51.100.2", 25)


def test_every_event_is_one_line_with_the_common_fields(tmp_path):
    log = open_event_log("sensor-1", str(tmp_path), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.session.connect")
    log.emit(WHO, "looper.reflect.greeting", code=220, text="héllo\nthere")
    log.close()
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 3
    first, second = (json.loads(line) for line in lines[:2])
    assert first == {
        "timestamp": first["timestamp"], "eventid": "looper.session.connect", "session": "0123456789ab",
        "sensor": "sensor-1", "protocol": "smtp", "src_ip": "192.0.2.1", "src_port": 4000,
        "dst_ip": "198.51.100.2", "dst_port": 25,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["timestamp"])
    assert second["text"] == "héllo\nthere" and second["code"] == 220


def test_rotation_bounds_the_log(tmp_path):
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 16, backups=2)
    for number in range(3000):
        log.emit(WHO, "looper.test.event", number=number)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    for path in tmp_path.iterdir():
        text = path.read_text()
        assert path.stat().st_size <= 1 << 16 and text.endswith("\n")
        assert all(json.loads(line)["eventid"] == "looper.test.event" for line in text.splitlines())
    newest = [json.loads(line)["number"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert newest[-1] == 2999 and newest == list(range(newest[0], 3000))


def test_other_sinks_get_the_same_lines():
    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(self.format(record))

    log = EventLog("s", [Collect()])
    log.emit(WHO, "looper.test.event", value=1)
    assert json.loads(seen[0])["value"] == 1


# -- the write contract: once per loop turn, whole lines ----------------------


def lines_of(path):
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    assert text == "" or text.endswith("\n"), "a partial line"
    return [json.loads(line) for line in text.splitlines()]


def test_without_a_running_loop_each_event_is_written_at_once(tmp_path):
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.test.event", number=1)
    assert [e["number"] for e in lines_of(tmp_path / "events.jsonl")] == [1]
    log.close()


async def test_one_loop_turn_is_one_write(tmp_path, monkeypatch):
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 20, backups=1)
    path = tmp_path / "events.jsonl"
    writes = []
    real_write = os.write

    def counting_write(fd, data):
        if os.path.samestat(os.fstat(fd), path.stat()):
            writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    for number in range(3):
        log.emit(WHO, "looper.test.event", number=number)
    assert lines_of(path) == [] and writes == []  # nothing before the turn ends
    await asyncio.sleep(0)
    assert [e["number"] for e in lines_of(path)] == [0, 1, 2]
    assert len(writes) == 1 and writes[0].count(b"\n") == 3
    log.emit(WHO, "looper.test.event", number=3)  # the next turn: the next write
    await asyncio.sleep(0)
    assert len(writes) == 2 and [e["number"] for e in lines_of(path)] == [0, 1, 2, 3]
    log.close()


async def test_a_flood_of_events_in_one_turn_is_written_in_bounded_batches(tmp_path):
    from looper.eventlog import MAX_BATCH_CHARS

    log = open_event_log("s", str(tmp_path), max_bytes=1 << 30, backups=1)
    path = tmp_path / "events.jsonl"
    padding = "x" * 1000
    count = 3 * MAX_BATCH_CHARS // len(padding)
    for number in range(count):  # one turn, about three batches' worth
        log.emit(WHO, "looper.test.event", number=number, padding=padding)
    written = lines_of(path)
    assert 2 * MAX_BATCH_CHARS // 1300 <= len(written) < count  # written before the turn ended...
    await asyncio.sleep(0)
    assert [e["number"] for e in lines_of(path)] == list(range(count))  # ...whole lines, in order, none lost
    log.close()


async def test_flush_writes_what_is_pending_now(tmp_path):
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.smtp.message", sha256="ab")
    assert log.flush() is True  # as the session does right before its 250
    assert [e["eventid"] for e in lines_of(tmp_path / "events.jsonl")] == ["looper.smtp.message"]
    log.emit(WHO, "looper.session.closed")  # the same turn, after the flush: still written at its end
    await asyncio.sleep(0)
    assert [e["eventid"] for e in lines_of(tmp_path / "events.jsonl")] == ["looper.smtp.message", "looper.session.closed"]
    log.close()


async def test_close_writes_what_is_pending(tmp_path):
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.test.event", number=1)
    log.close()
    assert [e["number"] for e in lines_of(tmp_path / "events.jsonl")] == [1]
    await asyncio.sleep(0)  # the flush that was scheduled finds nothing left to write
    assert len(lines_of(tmp_path / "events.jsonl")) == 1


async def test_a_batch_rotates_between_lines(tmp_path):
    max_bytes = 1 << 16
    log = open_event_log("s", str(tmp_path), max_bytes=max_bytes, backups=10)
    for number in range(1200):  # about 300 KiB in one turn: rotations inside one batch
        log.emit(WHO, "looper.test.event", number=number, padding="x" * 40)
    await asyncio.sleep(0)
    log.close()
    rotated = sorted(tmp_path.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    files = [*rotated, tmp_path / "events.jsonl"]
    assert len(rotated) >= 3 and sorted(tmp_path.iterdir()) == sorted(files)
    numbers = []
    for path in files:
        assert 0 < path.stat().st_size <= max_bytes
        numbers += [e["number"] for e in lines_of(path)]
    assert numbers == list(range(1200))
    # Each full file was filled as far as the next line allowed.
    line_bytes = len((tmp_path / "events.jsonl").read_text().splitlines()[0]) + 1
    assert all(p.stat().st_size > max_bytes - 2 * line_bytes for p in rotated)


async def test_stdout_gets_the_same_lines_a_turn_at_a_time(tmp_path, capsys):
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 20, backups=1, stdout=True)
    log.emit(WHO, "looper.test.event", number=1)
    log.emit(WHO, "looper.test.event", number=2)
    assert capsys.readouterr().out == ""
    await asyncio.sleep(0)
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.splitlines() == (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["number"] for line in out.splitlines()] == [1, 2]
    log.close()


def test_opening_cuts_off_a_line_left_unfinished_by_a_crash(tmp_path):
    # A kill -9 during a write() that spans a page boundary leaves the part
    # before the boundary: the next open cuts it off before appending.
    path = tmp_path / "events.jsonl"
    whole = '{"eventid":"looper.test.event","number":1}\n'
    path.write_text(whole + '{"eventid":"looper.test.ev')
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.test.event", number=2)
    log.close()
    assert [e["number"] for e in lines_of(path)] == [1, 2]
    path.write_text('{"eventid":"looper.test.ev')  # no line end at all: nothing was whole
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.test.event", number=3)
    log.close()
    assert [e["number"] for e in lines_of(path)] == [3]


def test_a_restart_appends_to_the_log_and_keeps_its_size(tmp_path):
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 16, backups=1)
    for number in range(300):
        log.emit(WHO, "looper.test.event", number=number)
    log.close()
    log = open_event_log("s", str(tmp_path), max_bytes=1 << 16, backups=1)  # counts what is there
    for number in range(300, 600):
        log.emit(WHO, "looper.test.event", number=number)
    log.close()
    old, new = (lines_of(tmp_path / name) for name in ("events.jsonl.1", "events.jsonl"))
    assert [e["number"] for e in old + new] == list(range(old[0]["number"], 600))
    assert (tmp_path / "events.jsonl.1").stat().st_size <= 1 << 16


def test_what_orjson_refuses_is_still_one_line(tmp_path):
    # Lines are encoded with orjson; a value it refuses (an integer over 64
    # bits) takes the standard library's way, and anything not JSON its str().
    log = open_event_log("sensor-1", str(tmp_path), max_bytes=1 << 20, backups=1)
    log.emit(WHO, "looper.smtp.limit", limit="size", bytes=2**70, where=tmp_path)
    log.emit(WHO, "looper.smtp.limit", limit="size", bytes=2**40, where=tmp_path)
    log.close()
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert [(json.loads(line)["bytes"], json.loads(line)["where"]) for line in lines] == [
        (2**70, str(tmp_path)), (2**40, str(tmp_path))]
