"""SIGHUP reopens the log files, as logrotate wants: it renames the file,
sends SIGHUP (`systemctl reload looper`), and the trap goes on in a new file
of the old name, no session disturbed, no event lost or written twice."""

from __future__ import annotations

import json
import logging
import os
import signal
import smtplib
import time
from pathlib import Path

from looper.eventlog import LogFile, reopen_log_files
from tests.trapproc import TrapProcess, read_stderr_until


def wait_for_line(child, text: str, timeout_s: float = 10.0) -> str:
    """Read the trap's stderr until a line holds `text`; that line."""
    said = read_stderr_until(child, text, timeout_s)
    assert text in said, f"the trap never said {text!r}: {said}"
    return said.splitlines()[-1]


def wait_for_event(path: Path, eventid: str, src_ip: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and any(e["eventid"] == eventid and e["src_ip"] == src_ip for e in lines_of(path)):
            return
        time.sleep(0.02)
    raise AssertionError(f"no {eventid} from {src_ip} in {path}")


def lines_of(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_sighup_reopens_the_logs_mid_session_and_loses_nothing(tmp_path):
    with TrapProcess(tmp_path) as trap:
        log = trap.log_dir / "events.jsonl"
        # A session under way: its first half is logged before the rotation...
        client = smtplib.SMTP(trap.host, trap.port, source_address=("127.0.0.9", 0), timeout=10)
        client.ehlo("spam.example")
        client.mail("bulk@spam.example")
        client.rcpt("victim@far.example.com")
        wait_for_event(log, "looper.smtp.rcpt", "127.0.0.9")
        # ...then logrotate: rename, SIGHUP.
        log.rename(trap.log_dir / "events.jsonl.1")
        transcripts = trap.log_dir / "transcripts.jsonl"
        rotated_transcripts = transcripts.exists()
        if rotated_transcripts:
            transcripts.rename(trap.log_dir / "transcripts.jsonl.1")
        trap.child.send_signal(signal.SIGHUP)
        said = wait_for_line(trap.child, "SIGHUP: reopened")
        assert str(log) in said
        # The same session goes on, undisturbed; a second one comes and goes.
        client.data(b"Subject: hello\r\n\r\nbuy now\r\n")
        client.quit()
        with smtplib.SMTP(trap.host, trap.port, source_address=("127.0.0.10", 0), timeout=10) as second:
            second.ehlo("spam.example")
            second.sendmail("bulk@spam.example", ["victim@far.example.com"], b"Subject: hello\r\n\r\nbuy now\r\n")
        assert trap.stop() == 0

    old, new = lines_of(trap.log_dir / "events.jsonl.1"), lines_of(log)
    assert old and new
    # Every line once: nothing written to both files, the old file ends before the new one starts.
    assert not {json.dumps(e, sort_keys=True) for e in old} & {json.dumps(e, sort_keys=True) for e in new}
    assert max(e["timestamp"] for e in old) <= min(e["timestamp"] for e in new)
    # The first session, split across the two files, is whole: the same events as the second,
    # which the new file holds alone.
    first = [e for e in old + new if e["src_ip"] == "127.0.0.9"]
    second = [e for e in new if e["src_ip"] == "127.0.0.10"]
    assert not [e for e in old if e["src_ip"] == "127.0.0.10"]
    assert {e["session"] for e in first} != {e["session"] for e in second}
    assert [e["eventid"] for e in first] == [e["eventid"] for e in second]
    assert first[0]["eventid"] == "looper.session.connect" and first[0] in old
    assert first[-1]["eventid"] == "looper.session.closed" and first[-1] in new
    assert first[-1]["reason"] == second[-1]["reason"]  # the rotation did not end it
    assert [e for e in first if e["eventid"] == "looper.smtp.message"]
    if rotated_transcripts:
        assert transcripts.exists() and transcripts.stat().st_size > 0


def test_a_log_file_reopened_goes_on_in_the_new_file(tmp_path):
    path = tmp_path / "events.jsonl"
    log_file = LogFile(str(path), max_bytes=1 << 20, backups=2)
    try:
        log_file.write(["one"])
        path.rename(tmp_path / "events.jsonl.1")
        log_file.write(["two"])  # not yet reopened: the renamed file
        assert str(path) in reopen_log_files()
        log_file.write(["three"])
        assert (tmp_path / "events.jsonl.1").read_text() == "one\ntwo\n"
        assert path.read_text() == "three\n"
    finally:
        log_file.close()
    assert str(path) not in reopen_log_files()  # closed: nothing to reopen


def test_a_log_file_that_cannot_be_reopened_goes_on_in_the_old_one(tmp_path, caplog):
    path = tmp_path / "events.jsonl"
    log_file = LogFile(str(path), max_bytes=1 << 20, backups=2)
    try:
        log_file.write(["one"])
        path.rename(tmp_path / "events.jsonl.1")
        path.mkdir()  # the name now names something that cannot be opened for writing
        with caplog.at_level(logging.WARNING, logger="looper.eventlog"):
            log_file.reopen()
        log_file.write(["two"])
        assert (tmp_path / "events.jsonl.1").read_text() == "one\ntwo\n"
        assert f"cannot reopen {path}" in caplog.text and "still writing to the file it was" in caplog.text
    finally:
        log_file.close()
    os.rmdir(path)
