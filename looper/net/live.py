"""The analysis core, fed live: every event the trap logs goes through it,
and what it finds (a relay's verdict, a chain that ended, a relay that
recognised itself) is logged in turn, right after the event it rests on.

A timer moves the core's clock once a second, so that a chain whose relay
fell silent is reported when its quiet time is over, not at the next event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from looper.analysis.core import LIVE_ENDED_KEPT, LIVE_RELAYS_KEPT, Analysis, Finding
from looper.eventlog import EventLog, SessionInfo

TICK_SECONDS = 1.0
_TRAP_ITSELF = SessionInfo(None, None, None, None, None, None)  # type: ignore[arg-type]


class LiveAnalysis:
    def __init__(self, eventlog: EventLog, quiet_seconds: float) -> None:
        self.eventlog = eventlog
        self.analysis = Analysis(quiet_seconds=quiet_seconds, keep_ended=LIVE_ENDED_KEPT,
                                 keep_relays=LIVE_RELAYS_KEPT)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.eventlog.listeners.append(self._heard)
        self._timer = asyncio.get_running_loop().call_later(TICK_SECONDS, self._tick)

    def stop(self) -> None:
        """The trap stops: chains still settling are reported; open ones
        are left open (the next run's report sees them in the log)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._log(self.analysis.finish())
        if self._heard in self.eventlog.listeners:
            self.eventlog.listeners.remove(self._heard)

    def knows_chain(self, chain: str) -> bool:
        """A pass of this loop chain was seen before (and not long forgotten)."""
        analysis = self.analysis
        return chain in analysis.open_chains or chain in analysis.settling or chain in analysis.ended_chains

    def _heard(self, record: dict[str, Any]) -> None:
        found = self.analysis.feed(record)
        if found:
            self._log(found)

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(TICK_SECONDS, self._tick)
        self._log(self.analysis.advance(time.time()))

    def _log(self, findings: list[Finding]) -> None:
        for finding in findings:
            about = finding.about
            who = _TRAP_ITSELF if about is None else SessionInfo(
                about.get("session"), about.get("protocol"), about.get("src_ip"), about.get("src_port"),
                about.get("dst_ip"), about.get("dst_port"),
            )
            self.eventlog.emit(who, finding.eventid, **finding.fields)
