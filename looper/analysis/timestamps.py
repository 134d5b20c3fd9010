"""The event log's RFC 3339 timestamps as seconds, quickly.

Every event is parsed, so the date and time are parsed once per second of
log (the microseconds are the only part that changes within one second).
"""

from __future__ import annotations

import calendar
import time

_seconds: dict[str, int] = {}
_MAX_CACHED = 4096


def epoch_seconds(timestamp: str) -> float:
    """`2026-11-22T09:37:00.567576Z` -> seconds since the epoch (UTC).
    Raises ValueError for anything else."""
    whole = timestamp[:19]
    base = _seconds.get(whole)
    if base is None:
        base = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        if len(_seconds) >= _MAX_CACHED:
            _seconds.clear()
        _seconds[whole] = base
    if len(timestamp) == 27 and timestamp[19] == "." and timestamp[26] == "Z":  # the log's own form
        micro = timestamp[20:26]
        if micro.isdigit():
            return base + int(micro) * 1e-6
    rest = timestamp[19:]
    if rest in ("Z", ""):
        return float(base)
    if rest[0] != "." or rest[-1] != "Z" or not rest[1:-1].isdigit():
        raise ValueError(f"not an event timestamp: {timestamp!r}")
    return base + int(rest[1:-1]) / 10 ** (len(rest) - 2)


def format_timestamp(seconds: float) -> str:
    """The inverse, to the microsecond, as the event log writes it."""
    whole = int(seconds)
    micro = int(round((seconds - whole) * 1_000_000))
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micro:06d}Z"
