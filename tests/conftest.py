"""Shared test plumbing: a trap on 127.0.0.1, its event log, free ports.

Every test talks only to 127.0.0.0/8: the trap listens on 127.0.0.1,
simulated relays on 127.0.0.2 and up, on the dial-back port the test picks.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from looper.config import parse_config
from looper.eventlog import open_event_log
from looper.events import record_problems
from looper.loops import event_loop_factory, resolved_event_loop, uvloop_installed
from looper.net.server import Trap
from looper.sinks import collector_sinks

TRAP_HOST = "127.0.0.1"

# The event loops the asynchronous tests run on. The trap runs on uvloop
# where it is installed (config event_loop: auto; the test extra installs
# it), so every test runs on it; the tests of the adapters, where the loops
# differ (transports, TLS, flow control, what a write keeps of its buffer),
# run on the standard library's loop as well. LOOPER_TEST_LOOP=asyncio (or
# uvloop) runs everything on that one alone.
BOTH_LOOPS = {"test_session.py", "test_reflect.py", "test_emulate.py", "test_hostile.py", "test_shutdown.py"}


def pytest_asyncio_loop_factories(config, item):
    only = os.environ.get("LOOPER_TEST_LOOP")
    if only:
        return {only: event_loop_factory(only)}
    names = ("uvloop", "asyncio") if item.path.name in BOTH_LOOPS else ("auto",)
    return {resolved_event_loop(name): event_loop_factory(name) for name in names if uvloop_installed() or name != "uvloop"}


def free_port(host: str = TRAP_HOST) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "looper.yaml"


def shipped_config_here(folder: Path) -> Path:
    """config/looper.yaml as `looper check-config` and `run` take it on this
    machine: as root without the user it names in run_as (a test machine
    where `make install` never ran), a copy in `folder` with `run_as: null`."""
    import pwd

    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    try:
        pwd.getpwnam(shipped["run_as"]["user"])
    except KeyError:
        if os.geteuid() == 0:
            copy = folder / "looper-shipped.yaml"
            copy.write_text(yaml.safe_dump({**shipped, "run_as": None}, sort_keys=False))
            return copy
    return SHIPPED_CONFIG


class EventFile:
    """The trap's events.jsonl, read as the analyst would read it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n"), "a partial line in events.jsonl"
        records = [json.loads(line) for line in text.splitlines()]
        # Every event any test reads is as declared in looper/events.py.
        problems = [problem for record in records for problem in record_problems(record)]
        assert not problems, problems
        return records

    def of(self, eventid: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.all() if e["eventid"] == eventid and all(e.get(k) == v for k, v in match.items())]

    async def wait_for(self, eventid: str, count: int = 1, timeout: float = 10.0, **match: Any) -> list[dict[str, Any]]:
        """Wait until at least `count` such events are logged; returns them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.of(eventid, **match)
            if len(found) >= count or loop.time() > deadline:
                return found
            await asyncio.sleep(0.02)


class RunningTrap:
    def __init__(self, trap: Trap, events: EventFile, port: int) -> None:
        self.trap = trap
        self.events = events
        self.host = TRAP_HOST
        self.port = port

    async def quiet(self, timeout: float = 10.0) -> None:
        """Wait until no session is open."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.trap.sessions and loop.time() < deadline:
            await asyncio.sleep(0.02)


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and key in base else value
    return merged


@pytest.fixture
async def start_trap(tmp_path):
    """start_trap(dialback_port, **sections) -> RunningTrap on 127.0.0.1."""
    running: list[tuple[Trap, Any]] = []

    async def start(dialback_port: int, **sections: Any) -> RunningTrap:
        port = sections.pop("listen_port", None) or free_port()
        settings = _merge(
            {
                "sensor": "trap.looper.test",
                # A test's end stops the trap: its sessions get no grace.
                "shutdown_grace_s": 0,
                # No bait IMAP or POP3 server on its default port unless a test asks for one.
                "listen": {"smtp": [f"{TRAP_HOST}:{port}"], "imap": [], "imaps": [], "pop3": [], "pop3s": []},
                # The reflect path's tests expect the plain hang-up; those of
                # the emulated relay ask for it.
                "dialback": {"port": dialback_port, "allow_private": True, "timeout": 2, "on_failure": "hangup"},
                "log": {"dir": str(tmp_path / "logs")},
            },
            sections,
        )
        config = parse_config(yaml.safe_dump(settings), "test")
        eventlog = open_event_log(config.sensor, config.log.dir, max_bytes=1 << 30, backups=1,
                                  collectors=collector_sinks(config))
        trap = Trap(config, eventlog)
        await trap.start()
        running.append((trap, eventlog))
        return RunningTrap(trap, EventFile(tmp_path / "logs" / "events.jsonl"), port)

    yield start
    for trap, eventlog in running:
        await trap.stop()
        eventlog.close()


# The client address of the emulated relay's tests: nothing listens there,
# so the dial-back is refused and every session falls back.
EMULATED_CLIENT = "127.0.0.3"
EMULATED_HOST = "mx.trap.example.net"


@pytest.fixture
async def relay(start_trap):
    """start(**sections) -> a trap whose fallback is the emulated relay,
    named EMULATED_HOST, for clients from EMULATED_CLIENT."""

    async def start(**sections: Any) -> RunningTrap:
        smtp = {"hostname": EMULATED_HOST, **sections.pop("smtp", {})}
        return await start_trap(
            free_port(EMULATED_CLIENT), dialback={"on_failure": "emulate"}, smtp=smtp, **sections
        )

    return start
