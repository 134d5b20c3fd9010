"""`looper tail`: follow an event log as it grows, across its rotation.

The trap rotates `events.jsonl` by renaming it to `events.jsonl.1` and
starting a new file. A follower holding the old file reads it to its end,
then opens the new one from its start, so no event is skipped; a file that
shrank (truncated in place) is read again from its start.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from looper.view import render

POLL_SECONDS = 0.2
MAX_LINE = 1 << 20  # a "line" longer than this is not the trap's: cut into pieces


def last_lines(path: str, count: int) -> list[str]:
    """The last `count` whole lines of a file (read from the end, in blocks)."""
    if count <= 0:
        return []
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= count:
            step = min(65536, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:]


def follow(path: str, *, sleep: Callable[[float], None] = time.sleep,
           running: Callable[[], bool] = lambda: True) -> Iterator[str]:
    """The lines appended to `path` from now on, whole lines only."""
    stream = _open_at_end(path)
    partial = ""
    while running():
        chunk = stream.readline(MAX_LINE) if stream else ""
        if chunk:
            partial += chunk
            if partial.endswith("\n") or len(partial) >= MAX_LINE:
                yield partial.rstrip("\n")
                partial = ""
            continue
        rotated = _rotated(path, stream)
        if rotated:
            if stream:
                # What was written to ours after we last read it, then, if it
                # rotated more than once since we looked, the files between
                # ours and the new one, whole, oldest first.
                for rest in stream:
                    partial += rest
                    if partial.endswith("\n"):
                        yield partial.rstrip("\n")
                        partial = ""
                for between in _newer_rotations(path, os.fstat(stream.fileno())):
                    yield from _whole(between)
                stream.close()
            stream, partial = _open(path), ""
            continue
        sleep(POLL_SECONDS)
    if stream:
        stream.close()


MAX_ROTATIONS = 1000


def _newer_rotations(path: str, ours: os.stat_result) -> list[str]:
    """`path.k-1`, ..., `path.1` when our file is now `path.k`."""
    names = []
    for k in range(1, MAX_ROTATIONS + 1):
        name = f"{path}.{k}"
        try:
            found = os.stat(name)
        except FileNotFoundError:
            return []  # ours is gone (deleted, compressed): nothing to pick up between
        if (found.st_ino, found.st_dev) == (ours.st_ino, ours.st_dev):
            return names[::-1]
        names.append(name)
    return []


def _whole(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
            for line in f:
                yield line.rstrip("\n")
    except FileNotFoundError:
        pass


def _open(path: str) -> TextIO | None:
    try:
        return open(path, encoding="utf-8", errors="replace", newline="\n")
    except FileNotFoundError:
        return None


def _open_at_end(path: str) -> TextIO | None:
    stream = _open(path)
    if stream:
        stream.seek(0, os.SEEK_END)
    return stream


def _rotated(path: str, stream: TextIO | None) -> bool:
    """The name now leads to another file (rotation), or ours shrank."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # between the rename and the new file: wait
    if stream is None:
        return True
    ours = os.fstat(stream.fileno())
    return (now.st_ino, now.st_dev) != (ours.st_ino, ours.st_dev) or now.st_size < stream.tell()


def matches(record: dict[str, Any], prefixes: list[str] | None, ips: set[str] | None) -> bool:
    eventid = str(record.get("eventid", ""))
    if prefixes and not any(eventid.startswith(p) or eventid.startswith("looper." + p) for p in prefixes):
        return False
    if ips and record.get("src_ip") not in ips and record.get("relay_ip") not in ips:
        return False
    return True


def show(lines: Iterator[str] | list[str], *, out: TextIO, as_json: bool, colour: bool,
         prefixes: list[str] | None, ips: set[str] | None) -> None:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # not an event (a line cut by a crash is cut off at the next start)
        if not isinstance(record, dict) or not matches(record, prefixes, ips):
            continue
        out.write((line if as_json else render(record, colour=colour)) + "\n")
        out.flush()


def colour_wanted(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR (no-color.org) says otherwise."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def tail(path: str, *, count: int, keep_following: bool, as_json: bool, prefixes: list[str] | None,
         ips: set[str] | None, out: TextIO = sys.stdout) -> None:
    colour = not as_json and colour_wanted(out)
    recent = deque(last_lines(path, count * 4 if (prefixes or ips) else count) if os.path.exists(path) else [])
    filtered = [line for line in recent if _keeps(line, prefixes, ips)][-count:] if count else []
    show(filtered, out=out, as_json=as_json, colour=colour, prefixes=prefixes, ips=ips)
    if keep_following:
        show(follow(path), out=out, as_json=as_json, colour=colour, prefixes=prefixes, ips=ips)


def _keeps(line: str, prefixes: list[str] | None, ips: set[str] | None) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and matches(record, prefixes, ips)
