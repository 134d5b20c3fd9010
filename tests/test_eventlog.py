"""The event log: whole JSON lines, common fields, bounded by rotation."""

import json
import logging
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
