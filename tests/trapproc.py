"""`looper run` as a real process, for what only a process can show: its
resident memory, its signals, its exit. Listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import TRAP_HOST, EventFile, free_port


# Run as `python -c AUDITED CONFIG CONNECTS_FILE`: looper run, with every
# socket connect the process makes written down by Python's own audit hook
# (PEP 578), before it happens: the record cannot miss one.
AUDITED = """
import json, sys
record = open(sys.argv[2], "a", buffering=1)
def audit(event, args):
    if event == "socket.connect":
        sock, address = args
        record.write(json.dumps([sock.family.name, list(address)[:2]]) + "\\n")
sys.addaudithook(audit)
from looper.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def read_stderr_until(child: subprocess.Popen, text: str, timeout_s: float) -> str:
    """What the child writes to stderr, up to and including the first line
    that holds `text` (less if it closes stderr or the time runs out).

    Straight from the descriptor, never through the file object's buffer:
    select() on a buffered reader misses the lines its last read took in
    along with the one it returned (two log lines written together)."""
    fd, said = child.stderr.fileno(), b""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = said.decode(errors="replace").splitlines(keepends=True)
        for index, line in enumerate(lines):
            if text in line and line.endswith("\n"):
                return "".join(lines[:index + 1])
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            return said.decode(errors="replace")
        said += chunk


class TrapProcess:
    def __init__(self, tmp_path: Path, *, audit_connects: bool = False, **settings: Any) -> None:
        self.port = settings.pop("listen_port", None) or free_port()
        self.host = TRAP_HOST
        self.log_dir = tmp_path / "logs"
        config = {
            "sensor": "proc.looper.test",
            "listen": {"smtp": [f"{TRAP_HOST}:{self.port}"], "pop3": [], "pop3s": []},
            "dialback": {"port": 1, "allow_private": True, "timeout": 2},
            "smtp": {"hostname": "mx.proc.test"},
            "log": {"dir": str(self.log_dir)},
            "run_as": None,  # root stays root here (with a warning); test_privileges.py drops
        }
        for section, values in settings.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        self.config_path = tmp_path / "looper.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.events = EventFile(self.log_dir / "events.jsonl")
        self.child: subprocess.Popen | None = None
        self.connects_path = tmp_path / "connects.jsonl" if audit_connects else None

    def connects(self) -> list[tuple[str, int]]:
        """Every (host, port) the trap process has connected to."""
        lines = self.connects_path.read_text().splitlines() if self.connects_path.exists() else []
        return [tuple(json.loads(line)[1]) for line in lines]

    def start(self, timeout_s: float = 15.0) -> "TrapProcess":
        if self.connects_path is None:
            argv = [sys.executable, "-m", "looper", "run", "-c", str(self.config_path)]
        else:
            argv = [sys.executable, "-c", AUDITED, str(self.config_path), str(self.connects_path)]
        self.child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # Ready when it says so: a probe connection would be a session of its own.
        said = read_stderr_until(self.child, "listening on", timeout_s)
        self.startup_lines = said.splitlines(keepends=True)
        if "listening on" not in said:
            self.kill()
            raise AssertionError(f"the trap did not start: {said}{self.child.stderr.read()}")
        return self

    def stderr(self) -> str:
        if self.child is None or self.child.poll() is None:
            return ""
        return self.child.stderr.read()

    def status_kib(self, field: str) -> int:
        """A line of /proc/PID/status in KiB: VmRSS (now), VmHWM (peak)."""
        for line in Path(f"/proc/{self.child.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.child.pid}/status")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, as an operator stops it; the exit status."""
        self.child.send_signal(signal.SIGTERM)
        return self.child.wait(timeout_s)

    def kill(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()

    def __enter__(self) -> "TrapProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if self.child is not None:
            for stream in (self.child.stdout, self.child.stderr):
                stream.close()


def event_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
