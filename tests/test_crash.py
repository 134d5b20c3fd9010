"""kill -9 in the middle of a busy `looper run`, then a restart on the same log.

Eight smtplib clients (127.0.0.10 to .17, nothing listening on their dial-back
port, so each meets the emulated relay) send up to 30 messages each as fast
as they can; once some are acknowledged the trap gets SIGKILL. What a 250
promised must be on disk, and the event log must hold whole lines. The run
happens once (the `crash` fixture); each test checks one promise.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import signal
import smtplib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

CLIENTS = [f"127.0.0.{10 + n}" for n in range(8)]
MESSAGES_PER_CLIENT = 30
KILL_AFTER_ACKNOWLEDGED = 60  # of the 240 at most: the rest are in flight or unsent
DEADLINE_S = 60


@dataclass
class Crash:
    log_dir: Path
    acknowledged: dict[str, bytes]  # sha256 -> the content a 250 acknowledged
    log_after_kill: bytes
    log_after_restart: bytes = b""
    restart_stderr: str = ""
    errors: list[str] = field(default_factory=list)


def content_of(client: int, number: int) -> bytes:
    """A message of its own, a few KiB, with a line that smtplib dot-stuffs."""
    body = b"".join(b"line %d of message %d.%d\r\n" % (line, client, number) for line in range(40 + 25 * (number % 7)))
    return (
        b"From: <bulk%d@spam.example>\r\nSubject: crash %d.%d\r\nMessage-ID: <%d.%d@spam.example>\r\n\r\n"
        % (client, client, number, client, number)
    ) + b".a dot line\r\n" + body


def write_config(folder: Path, log_dir: Path) -> tuple[Path, int]:
    port = free_port()
    config = folder / f"looper-{port}.yaml"
    config.write_text(
        f"sensor: crash-test\nlisten: {{smtp: ['127.0.0.1:{port}'], pop3: [], pop3s: []}}\n"
        f"dialback: {{port: 1, allow_private: true}}\nlog: {{dir: '{log_dir}'}}\n"
        "smtp: {hostname: mx.crash.test}\nrun_as: null\n"
    )
    return config, port


def start(config: Path, port: int) -> subprocess.Popen:
    trap = subprocess.Popen(
        [sys.executable, "-m", "looper", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.9", 0), timeout=5) as probe:
                probe.noop()
            return trap
        except (ConnectionRefusedError, smtplib.SMTPServerDisconnected):
            if time.monotonic() > deadline or trap.poll() is not None:
                trap.kill()
                pytest.fail(f"looper run did not start: {trap.communicate()[1]}")
            time.sleep(0.05)


def client(number: int, port: int, acknowledged: dict, lock: threading.Lock, errors: list, stop: threading.Event) -> None:
    try:
        smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="bulk.spam.example", source_address=(CLIENTS[number], 0), timeout=10)
    except OSError as err:
        errors.append(f"client {number} could not connect: {err}")
        return
    try:
        for message in range(MESSAGES_PER_CLIENT):
            if stop.is_set():
                return
            content = content_of(number, message)
            smtp.sendmail(f"bulk{number}@spam.example", ["victim@far.example.com"], content)
            with lock:  # sendmail returned: the relay said 250 to the end of DATA
                acknowledged[hashlib.sha256(content).hexdigest()] = content
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        pass  # the trap died under us: what it did not acknowledge proves nothing
    finally:
        smtp.close()


@pytest.fixture(scope="module")
def crash(tmp_path_factory) -> Crash:
    folder = tmp_path_factory.mktemp("crash")
    log_dir = folder / "logs"
    config, port = write_config(folder, log_dir)
    trap = start(config, port)
    acknowledged: dict[str, bytes] = {}
    lock, stop, errors = threading.Lock(), threading.Event(), []
    threads = [
        threading.Thread(target=client, args=(n, port, acknowledged, lock, errors, stop), daemon=True)
        for n in range(len(CLIENTS))
    ]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + DEADLINE_S
        while len(acknowledged) < KILL_AFTER_ACKNOWLEDGED and time.monotonic() < deadline:
            if trap.poll() is not None or not any(t.is_alive() for t in threads):
                break
            time.sleep(0.005)
        assert trap.poll() is None, f"the trap died by itself: {trap.communicate()[1]}"
        trap.send_signal(signal.SIGKILL)
        trap.wait(10)
    finally:
        stop.set()
        trap.kill()
        trap.wait()
        for thread in threads:
            thread.join(15)
    with lock:
        result = Crash(log_dir, dict(acknowledged), (log_dir / "events.jsonl").read_bytes(), errors=errors)

    config, port = write_config(folder, log_dir)
    trap = start(config, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.18", 0), timeout=10) as smtp:
            smtp.sendmail("after@spam.example", ["victim@far.example.com"], content_of(99, 0))
        trap.send_signal(signal.SIGTERM)
        assert trap.wait(15) == 0
    finally:
        trap.kill()
        trap.wait()
    result.restart_stderr = trap.stderr.read()
    result.log_after_restart = (log_dir / "events.jsonl").read_bytes()
    return result


def whole_lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def test_the_clients_were_busy_when_the_trap_was_killed(crash):
    assert crash.errors == []
    assert KILL_AFTER_ACKNOWLEDGED <= len(crash.acknowledged) < len(CLIENTS) * MESSAGES_PER_CLIENT


def test_after_kill_9_the_log_holds_whole_lines(crash):
    data = crash.log_after_kill
    whole, _, tail = data.rpartition(b"\n")
    events = whole_lines(whole)  # every line parses
    assert len(events) > KILL_AFTER_ACKNOWLEDGED
    # The one thing a kill -9 can leave: the start of the line being written,
    # where the kernel stopped a write() at a page boundary (see eventlog.py).
    # looper itself never writes part of a line.
    assert tail == b"" or len(data) % mmap.PAGESIZE == 0, f"a partial line, not at a page boundary: {tail[:80]!r}"


def test_every_acknowledged_message_is_on_disk_intact(crash):
    messages = crash.log_dir / "messages"
    for sha256, content in crash.acknowledged.items():
        stored = messages / f"{sha256}.eml"
        assert stored.read_bytes() == content  # what the client sent, after dot-unstuffing
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha256
    for stored in messages.glob("*.eml"):  # stored but unacknowledged ones are whole too
        assert hashlib.sha256(stored.read_bytes()).hexdigest() + ".eml" == stored.name


def test_every_acknowledged_message_has_its_event(crash):
    data = crash.log_after_kill
    logged = {e["sha256"] for e in whole_lines(data[: data.rfind(b"\n") + 1]) if e["eventid"] == "looper.smtp.message"}
    assert set(crash.acknowledged) <= logged


def test_a_restart_on_the_same_log_appends_whole_lines(crash):
    before, after = crash.log_after_kill, crash.log_after_restart
    kept = before[: before.rfind(b"\n") + 1]  # a cut-off tail, if any, is gone
    assert after.startswith(kept) and after.endswith(b"\n")
    new = whole_lines(after[len(kept):])
    assert new[0]["eventid"] == "looper.session.connect"
    assert [e["eventid"] for e in new].count("looper.smtp.message") == 1
    assert new[-1]["eventid"] == "looper.session.closed"
    if kept != before:
        assert "cut off" in crash.restart_stderr
