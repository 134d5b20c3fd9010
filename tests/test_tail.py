"""`looper tail` and the readable view of events."""

from __future__ import annotations

import json
import threading
import subprocess
import sys
import time
from pathlib import Path

from looper.eventlog import EventLog, LogFile, SessionInfo
from looper.events import EVENT_FIELDS
from looper.view import FORMATS, render

WHO = SessionInfo("a1b2c3d4e5f6", "smtp", "203.0.113.5", 40000, "192.0.2.25", 25)


def test_every_declared_event_reads_as_a_sentence():
    assert set(FORMATS) == set(EVENT_FIELDS)


def test_attacker_text_cannot_reach_the_terminal_as_control_codes():
    record = {"timestamp": "2026-12-02T09:00:00.123456Z", "eventid": "looper.command.input", "session": "ab" * 6,
              "src_ip": "203.0.113.5", "input": "EHLO \x1b]0;owned\x07\x1b[2J"}
    line = render(record, colour=True)
    assert "\x07" not in line and "\x1b]" not in line and "\x1b[2J" not in line
    assert "\\x1b]0;owned\\x07" in line
    assert line.startswith("\x1b[") and line.endswith("\x1b[0m")  # our own colour only
    plain = render(record)
    assert plain == "09:00:00.123 abababababab 203.0.113.5     command.input          > EHLO \\x1b]0;owned\\x07\\x1b[2J"


def test_a_damaged_event_still_renders():
    record = {"eventid": "looper.session.closed", "duration": "not a number", "timestamp": None}
    assert "duration=not a number" in render(record)


def test_tail_follows_the_log_across_its_rotation(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    path = log_dir / "events.jsonl"
    # The trap's own writer, rotating at 64 KiB: a few hundred events cross it.
    eventlog = EventLog("s", [LogFile(str(path), max_bytes=1 << 16, backups=20)])
    eventlog.emit(WHO, "looper.command.input", input="before")
    eventlog.flush()
    follower = subprocess.Popen(
        [sys.executable, "-m", "looper", "tail", str(path), "-n", "1", "--event", "command"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.extend(follower.stdout.readline() for _ in range(601)),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not shown and time.monotonic() < deadline:
            time.sleep(0.05)  # it has shown the last event: it follows from here
        time.sleep(0.3)
        for n in range(600):
            eventlog.emit(WHO, "looper.command.input", input=f"line {n} " + "x" * 200)
            eventlog.emit(WHO, "looper.session.connect")  # filtered out
            if n % 50 == 0:
                eventlog.flush()
                time.sleep(0.05)
        eventlog.flush()
        assert (log_dir / "events.jsonl.1").exists()  # it rotated under the follower
        reader.join(15)  # a line that never comes: the assertion below says which
    finally:
        follower.terminate()
        follower.wait(10)
        eventlog.close()
    assert "> before" in shown[0]
    numbers = [int(line.split("> line ")[1].split()[0]) for line in shown[1:]]
    assert numbers == list(range(600)), "an event was lost or repeated across the rotation"
    assert not any("\x1b" in line for line in shown)  # a pipe gets no colour


def test_tail_json_passes_lines_through_and_filters_by_address(tmp_path):
    path = tmp_path / "events.jsonl"
    eventlog = EventLog("s", [LogFile(str(path), max_bytes=1 << 20, backups=1)])
    eventlog.emit(WHO, "looper.command.input", input="one")
    eventlog.emit(SessionInfo("f" * 12, "smtp", "198.51.100.1", 1, "192.0.2.25", 25), "looper.command.input",
                  input="two")
    eventlog.close()
    done = subprocess.run([sys.executable, "-m", "looper", "tail", str(path), "--no-follow", "--json",
                           "--ip", "198.51.100.1"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["input"] == "two"
    assert lines[0] == Path(path).read_text().splitlines()[1]


def test_tail_of_a_missing_log_without_follow_says_so(tmp_path):
    done = subprocess.run([sys.executable, "-m", "looper", "tail", str(tmp_path / "nope.jsonl"), "--no-follow"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "nope.jsonl: no such file" in done.stderr
