"""Taking an address off the blocklist by hand (RFC 6471: a list says how
to get off it), recorded as a `looper.relay.delisted` event.

One record, whoever writes it: while a trap runs on log.dir, the command
leaves a request in <log.dir>/delist/ and the trap takes it at its next
tick, logs the event itself (in order, to every sink) and drops the
address from its live feed; with no trap running, the command appends the
event to events.jsonl itself. A running trap holds a shared lock on
<log.dir>/looper.lock for its whole life: that is how the command knows.
"""

from __future__ import annotations

import fcntl
import getpass
import ipaddress
import json
import os
import secrets
import time
from typing import Any

from looper.analysis.timestamps import format_timestamp
from looper.eventlog import EVENTS_FILE, encode_line
from looper.files import write_atomically

DELISTED = "looper.relay.delisted"
LOCK_FILE = "looper.lock"
REQUESTS_FOLDER = "delist"
MAX_REASON_CHARS = 500
MAX_REQUESTS_PER_TICK = 1000


def delisted_fields(ip: str, reason: str | None, requested_by: str | None) -> dict[str, Any]:
    """The event's own fields; raises ValueError for what is not an address."""
    reason = " ".join((reason or "").split())[:MAX_REASON_CHARS] or None
    return {"relay_ip": str(ipaddress.ip_address(ip)), "reason": reason, "requested_by": requested_by}


def who_asks() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


# -- the trap's side ---------------------------------------------------------------------


def hold_lock(log_dir: str) -> int:
    """A running trap's mark on log.dir: the descriptor stays open (and the
    lock held) until the process ends."""
    os.makedirs(log_dir, exist_ok=True)
    fd = os.open(os.path.join(log_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def requests_folder(log_dir: str) -> str:
    folder = os.path.join(log_dir, REQUESTS_FOLDER)
    os.makedirs(folder, exist_ok=True)
    return folder


def take_requests(log_dir: str) -> list[dict[str, Any]]:
    """The delisting requests waiting in log.dir (each read once, then
    removed), oldest first; a request that is not one is removed too."""
    folder = os.path.join(log_dir, REQUESTS_FOLDER)
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".json"))
    except OSError:
        return []
    taken = []
    for name in names[:MAX_REQUESTS_PER_TICK]:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as request:
                fields = json.loads(request.read(64 * 1024))
            os.unlink(path)
        except (OSError, ValueError):
            _remove(path)
            continue
        try:
            taken.append(delisted_fields(fields["relay_ip"], fields.get("reason"), fields.get("requested_by")))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return taken


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- the command's side ------------------------------------------------------------------


def trap_running(log_dir: str) -> bool:
    try:
        fd = os.open(os.path.join(log_dir, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the lock, if taken
    return False


def request(log_dir: str, fields: dict[str, Any]) -> str:
    """Leave a request for the running trap (written whole, then renamed
    into place, so that the trap never reads half of one)."""
    name = f"{time.time_ns()}-{secrets.token_hex(4)}"
    path = os.path.join(log_dir, REQUESTS_FOLDER, f"{name}.json")
    # 0644: the trap runs as another user; the name ends in .json only once whole.
    write_atomically(path, json.dumps(fields).encode("utf-8"), mode=0o644)
    return path


def append_event(log_dir: str, sensor: str, fields: dict[str, Any]) -> None:
    """The event, appended to events.jsonl in one write (no trap is writing it)."""
    record = {"timestamp": format_timestamp(time.time()), "eventid": DELISTED, "session": None, "sensor": sensor,
              "protocol": None, "src_ip": None, "src_port": None, "dst_ip": None, "dst_port": None, **fields}
    line = (encode_line(record) + "\n").encode("utf-8")
    fd = os.open(os.path.join(log_dir, EVENTS_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
