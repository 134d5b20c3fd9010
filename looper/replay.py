"""`looper replay SESSION`: one session's transcript, as it happened.

Reads `<log.dir>/transcripts.jsonl` and its rotations, plain or gzip (read
the way `looper report` reads event logs), finds the session (a prefix of
its id will do, if only one session has it) and prints each chunk with its
direction and time:

    +0.012s C: EHLO relay.example.net
    +0.013s S: 250-mx.example.org

or plays it back in real time, `speed` times as fast. Every text in a
transcript came from a peer: control characters are shown escaped
(looper.view), never sent to the terminal. The format is in
docs/transcripts.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from looper.analysis.logs import LogError, ReadStats, default_logs, file_lines
from looper.transcripts import CLIENT, TRANSCRIPTS_FILE
from looper.view import escape_controls

# Every line of a session starts so (the writer puts the id first), which
# lets the reader skip other sessions' lines without parsing them.
_SESSION_KEY = '{"session":"'

# Sessions named when a prefix is ambiguous.
MAX_NAMED = 5

ARROWS = {CLIENT: "C:", "server": "S:"}


class ReplayError(Exception):
    """Why there is nothing to replay: one line for stderr."""


def default_transcripts(log_dir: str) -> list[str]:
    """`<log.dir>/transcripts.jsonl*`, oldest rotation first."""
    return default_logs(log_dir, TRANSCRIPTS_FILE)


def find_session(paths: Iterable[str], prefix: str) -> list[tuple[dict[str, Any], str]]:
    """The lines of the one session whose id starts with `prefix`, in the
    order written: (record, line). Only that session's lines are kept, so a
    short prefix over a big log costs no memory. ReplayError when no
    session, or more than one, has the prefix."""
    paths = list(paths)
    key = _SESSION_KEY + prefix
    start = len(_SESSION_KEY)
    chosen: str | None = None
    others: set[str] = set()
    found: list[tuple[dict[str, Any], str]] = []
    try:
        for path in paths:
            for line in file_lines(path, ReadStats()):
                if not line.startswith(key):
                    continue
                session = line[start:line.find('"', start)]
                if chosen is None:
                    chosen = session
                if session != chosen:
                    others.add(session)
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a damaged line: the rest of the session still reads
                if isinstance(record, dict):
                    found.append((record, line.rstrip("\n")))
    except LogError as err:  # a file that cannot be read, or a damaged gzip
        raise ReplayError(str(err)) from None
    if chosen is None:
        where = ", ".join(paths) if len(paths) <= 3 else f"{len(paths)} files"
        raise ReplayError(f"no session {prefix!r} in {where}")
    if others:
        named = sorted({chosen, *others})
        listed = ", ".join(named[:MAX_NAMED]) + (", ..." if len(named) > MAX_NAMED else "")
        raise ReplayError(f"{prefix!r} is the start of {len(named)} sessions ({listed}): give more of the id")
    return found


def describe(record: dict[str, Any]) -> list[str]:
    """A transcript line as a person reads it: one or more lines of text."""
    stamp = _stamp(record.get("t"))
    if "start" in record:
        return [_header(record)]
    if "end" in record:
        return [f"{stamp} {_summary(record)}"]
    if record.get("tls"):
        return [f"{stamp} -- TLS from here on: counted, not kept"]
    arrow = ARROWS.get(record.get("dir"))
    if arrow is None:
        return []  # not a line of a session's (e.g. a note of lines lost to a full disk)
    if record.get("eof"):
        return [f"{stamp} {arrow} [EOF]"]
    if "text" in record:
        text = str(record["text"])
    else:
        try:
            text = base64.b64decode(str(record.get("b64", "")), validate=True).decode("utf-8", "backslashreplace")
        except (binascii.Error, ValueError):
            text = "[damaged base64]"
    pieces = text.split("\r\n")
    if len(pieces) > 1 and pieces[-1] == "":
        pieces.pop()  # the chunk ended with a whole line
    return [f"{stamp} {arrow} {escape_controls(piece)}" for piece in pieces]


def _stamp(t: Any) -> str:
    return f"+{t:.3f}s" if isinstance(t, (int, float)) and not isinstance(t, bool) else "+?"


def _header(record: dict[str, Any]) -> str:
    def field(name: str) -> str:
        return escape_controls(str(record.get(name, "?")))

    return (f"session {field('session')} ({field('mode')}, {field('protocol')}) from {field('src_ip')}:"
            f"{field('src_port')} to {field('dst_ip')}:{field('dst_port')}, sensor {field('sensor')},"
            f" {field('start')}")


def _summary(record: dict[str, Any]) -> str:
    sent = record.get("bytes") if isinstance(record.get("bytes"), dict) else {}
    text = (f"end: {escape_controls(str(record.get('end')))}; the client sent {sent.get('client', '?')} bytes,"
            f" the server {sent.get('server', '?')}")
    if record.get("cut"):
        text += f"; {record['cut']} not kept (over transcripts.session_bytes)"
    if record.get("tls_bytes"):
        text += f"; {record['tls_bytes']} in TLS, counted, not kept"
    return text


def replay(lines: list[tuple[dict[str, Any], str]], out: TextIO, *, speed: float | None = None,
           as_json: bool = False, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Print the session's lines; with `speed`, each when its time comes
    (t / speed seconds after the first)."""
    began = clock()
    first: float | None = None
    for record, raw in lines:
        t = record.get("t")
        if speed is not None and isinstance(t, (int, float)) and not isinstance(t, bool):
            if first is None:
                first = t
            wait = began + (t - first) / speed - clock()
            if wait > 0:
                sleep(wait)
        for text in [raw] if as_json else describe(record):
            out.write(text + "\n")
        if speed is not None:
            out.flush()
