"""The live blocklist: `looper run` keeps blocklist.file up to date.

Every event the trap logs goes through the book (analysis/blocklist.py);
once a second, if who is listed changed (a relay looped a message, a
listing expired, a delisting came in) or the zone is due for renewal, the
file is written anew: whole, fsynced, renamed into place, so that rbldnsd,
Postfix or rsync read either the old file or the new one, never half. The
event log is flushed first: an address is never listed before the event
that lists it has reached the operating system.

The book is kept in <log.dir>/blocklist.state.json beside it, so that a
restarted trap lists what it listed before. Delisting requests left by
`looper blocklist --delist` (delisting.py) are taken here too, feed or no
feed: the trap logs the event, so the record has one writer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson

from looper import delisting
from looper.analysis.blocklist import Book
from looper.analysis.zones import listing_rules, render, zone_settings
from looper.config import Config
from looper.eventlog import EventLog, SessionInfo
from looper.files import write_atomically

log = logging.getLogger("looper")

TICK_SECONDS = 1.0
STATE_FILE = "blocklist.state.json"
STATE_VERSION = 1
# An rbldnsd zone is renewed this often at least (and well within its
# stale_after), even when nobody is listed or expires.
MAX_RENEW_SECONDS = 3600.0
_TRAP_ITSELF = SessionInfo(None, None, None, None, None, None)  # type: ignore[arg-type]


class LiveBlocklist:
    def __init__(self, config: Config, eventlog: EventLog) -> None:
        self.config = config
        self.eventlog = eventlog
        self.settings = config.blocklist
        self.path = self.settings.file
        self.book: Book | None = None
        self.zone = zone_settings(self.settings, config.sensor)
        self._timer: asyncio.TimerHandle | None = None
        self._dirty = False
        self._written: str | None = None  # the text last written (without its header's times)
        self._written_at = 0.0
        self._writing: asyncio.Task | None = None
        self._failing = False
        self._lock_fd: int | None = None
        self.renew_seconds = min(MAX_RENEW_SECONDS, self.settings.stale_after / 4)

    def start(self, own_addresses: tuple[str, ...]) -> None:
        log_dir = self.config.log.dir
        self._lock_fd = delisting.hold_lock(log_dir)
        delisting.requests_folder(log_dir)
        if self.path is not None:
            self.book = Book(listing_rules(self.settings, own_addresses=own_addresses))
            self._load_state()
            self._dirty = True  # the file is written at the first tick, from the state
            self.eventlog.listeners.append(self._heard)
        self._timer = asyncio.get_running_loop().call_later(TICK_SECONDS, self._tick)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heard in self.eventlog.listeners:
            self.eventlog.listeners.remove(self._heard)
        if self._writing is not None:
            await asyncio.shield(self._writing)
        if self.book is not None:
            self._save_state()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _heard(self, record: dict[str, Any]) -> None:
        if self.book is not None and self.book.feed(record):
            self._dirty = True

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(TICK_SECONDS, self._tick)
        for fields in delisting.take_requests(self.config.log.dir):
            log.info("delisting %s%s", fields["relay_ip"], f" ({fields['reason']})" if fields["reason"] else "")
            self.eventlog.emit(_TRAP_ITSELF, delisting.DELISTED, **fields)
        if self.book is None or self._writing is not None:
            return
        now = time.time()
        expiry = self.book.next_expiry(now)
        due = self._dirty or (expiry is not None and expiry <= now) or now - self._written_at >= self.renew_seconds
        if not due:
            return
        # The events behind the listing reach the OS first; while they cannot,
        # nobody new is listed (the next tick tries again).
        if not self.eventlog.flush():
            return
        self._dirty = False
        self.book.forget_old(now)
        listed = self.book.listed(now)
        text = render(self.settings.format, listed, self.zone, self.book.rules, now)
        body = _without_times(text)
        if body == self._written and now - self._written_at < self.renew_seconds:
            return
        state = self._state_bytes()
        self._writing = asyncio.get_running_loop().create_task(self._write(text, body, state, now, len(listed)))

    async def _write(self, text: str, body: str, state: bytes, now: float, count: int) -> None:
        try:
            # The state first: a trap that dies between the two lists on restart
            # what it had listed, rather than forgetting a listing it published.
            await asyncio.to_thread(write_atomically, os.path.join(self.config.log.dir, STATE_FILE), state)
            await asyncio.to_thread(write_atomically, self.path, text.encode("utf-8"))
        except OSError as err:
            self._dirty = True
            if not self._failing:
                log.warning("cannot write the blocklist %s (%s): trying again every second", self.path,
                            err.strerror or err)
            self._failing = True
        else:
            if self._failing:
                log.warning("writing the blocklist %s again", self.path)
            self._failing = False
            if body != self._written:
                log.info("blocklist %s: %d listed", self.path, count)
            self._written, self._written_at = body, now
        finally:
            self._writing = None

    # -- state ---------------------------------------------------------------

    def _state_bytes(self) -> bytes:
        assert self.book is not None
        return orjson.dumps({"version": STATE_VERSION, "entries": self.book.state()})

    def _save_state(self) -> None:
        try:
            write_atomically(os.path.join(self.config.log.dir, STATE_FILE), self._state_bytes())
        except OSError as err:
            log.warning("cannot keep the blocklist's state in %s: %s", self.config.log.dir, err.strerror or err)

    def _load_state(self) -> None:
        assert self.book is not None
        path = os.path.join(self.config.log.dir, STATE_FILE)
        try:
            with open(path, "rb") as state:
                document = orjson.loads(state.read())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.warning("the blocklist's state %s cannot be read (%s): starting from nobody listed", path, err)
            return
        if isinstance(document, dict) and document.get("version") == STATE_VERSION:
            self.book.load(document.get("entries") or ())


def _without_times(text: str) -> str:
    """The file's text without what changes at every writing (its header
    comment, the serial and the timestamp): what says who is listed."""
    return "\n".join(line for line in text.splitlines()
                     if not line.startswith(("#", "$SOA", "$TIMESTAMP", '  "generated"')))
