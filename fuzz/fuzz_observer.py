"""Fuzz target: the passive SMTP observer of a splice (looper/proto/observer.py).

Input: one options byte (bit 0 strip_starttls, bit 1 mask_name, bit 2
pregreet bytes), then records. A record is an op byte:
  bits 0-1  0 client bytes, 1 server bytes, 2 client EOF, 3 server EOF
  bit 2     the bytes repeat: one more byte k, 1 + 4 k times (lines and
            buffers of 64 KiB and more from a short input)
  bits 3-7  c: how the bytes reach the observer: 0 as one bytes object,
            else in pieces of c*c bytes, views of one reused buffer
then, for bytes records, a length byte n and n bytes.

Beyond "never raises", it checks:
- after every call, what the observer holds stays within the bound that
  tests/test_observer.py uses;
- once it says opaque, a call emits nothing and passes server bytes back
  as the same object; without STARTTLS stripping or name masking that is
  so from the start; with them, unless an EHLO reply was reported
  rewritten, the forwarded bytes are exactly the server's;
- at most one looper.reflect.unparsed; every event's fields are JSON;
- the same conversation with each run of one side's records joined and
  given whole as bytes yields the same events and the same forwarded
  bytes: cut points and reused buffers change nothing.
"""

from __future__ import annotations

import json
import sys

from _harness import Reader, check, instrumented, main

with instrumented(__name__ == "__main__"):
    from looper.proto import observer as ob
    from looper.proto.message import MAX_HEADER_BYTES
    from looper.proto.observer import Observer

RELAY_IP = "192.0.2.25"
CLIENT, SERVER, CLIENT_EOF, SERVER_EOF = range(4)
MAX_INPUT_BYTES = 1 << 20  # what the records may expand to, in all
MAX_CALLS_PER_RECORD = 512
# The same bound as tests/test_observer.py's BUFFER_BOUND.
BUFFER_BOUND = (
    ob.MAX_LINE_BYTES
    + ob.MAX_HELD_BYTES
    + 2 * ob.MAX_REPLY_BYTES
    + ob.MAX_PENDING_BYTES
    + ob.MAX_RECIPIENT_BYTES
    + 2 * MAX_HEADER_BYTES
)

Record = tuple[int, bytes, int]  # (kind, bytes, cut)


def parse(data: bytes) -> tuple[dict, list[Record]]:
    reader = Reader(data)
    flags = reader.byte()
    options = {
        "strip_starttls": bool(flags & 1),
        "mask_name": "looper.invalid" if flags & 2 else None,
        "pregreet_bytes": 7 if flags & 4 else 0,
    }
    records: list[Record] = []
    total = 0
    while reader:
        op = reader.byte()
        kind = op & 3
        if kind in (CLIENT_EOF, SERVER_EOF):
            records.append((kind, b"", 0))
            continue
        chunk = reader.take(reader.byte())
        if op & 4:
            chunk *= 1 + 4 * reader.byte()
        total += len(chunk)
        if total > MAX_INPUT_BYTES:
            break
        records.append((kind, chunk, op >> 3))
    return options, records


def joined(records: list[Record]) -> list[Record]:
    """Each run of one side's bytes records as one record, given whole."""
    out: list[Record] = []
    for kind, chunk, _ in records:
        if out and kind in (CLIENT, SERVER) and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + chunk, 0)
        else:
            out.append((kind, chunk, 0))
    return out


def pieces(chunk: bytes, cut: int):
    """chunk whole, or in views of one buffer that is overwritten after each piece is read."""
    if not cut:
        yield chunk
        return
    size = max(cut * cut, -(-len(chunk) // MAX_CALLS_PER_RECORD))
    buffer = bytearray(size)
    view = memoryview(buffer)
    for start in range(0, len(chunk), size):
        piece = chunk[start : start + size]
        buffer[: len(piece)] = piece
        yield view[: len(piece)]
        buffer[: len(piece)] = b"\xff" * len(piece)  # whatever was kept and not copied is now garbage


def run(options: dict, records: list[Record]) -> tuple[list, bytes]:
    observer = Observer(relay_ip=RELAY_IP, **options)
    rewrites = options["strip_starttls"] or options["mask_name"] is not None
    events: list = []
    forwarded = bytearray()
    server = bytearray()
    eof = {CLIENT: False, SERVER: False}

    def drain(was_opaque: bool) -> None:
        new = observer.events()
        check(observer._buffered_bytes() <= BUFFER_BOUND, f"observer holds {observer._buffered_bytes()} bytes")
        check(not (was_opaque and new), f"events after going opaque: {new}")
        events.extend(new)

    for kind, chunk, cut in records:
        side = SERVER if kind in (SERVER, SERVER_EOF) else CLIENT
        if eof[side]:
            continue
        was_opaque = observer.opaque
        if kind == CLIENT_EOF:
            eof[CLIENT] = True
            observer.client_data(b"")
        elif kind == SERVER_EOF:
            eof[SERVER] = True
            forwarded += observer.server_data(b"")
        elif kind == CLIENT:
            for piece in pieces(chunk, cut):
                if piece:
                    was_opaque = observer.opaque
                    observer.client_data(piece)
                    drain(was_opaque)
            continue
        else:
            server += chunk
            for piece in pieces(chunk, cut):
                if piece:
                    was_opaque = observer.opaque
                    out = observer.server_data(piece)
                    if was_opaque or not rewrites:
                        check(out is piece, "server bytes not passed back as they came")
                    forwarded += out  # copies now: the buffer is reused
                    drain(was_opaque)
            continue
        drain(was_opaque)
    if not eof[CLIENT]:
        observer.client_data(b"")
    if not eof[SERVER]:
        forwarded += observer.server_data(b"")
    observer.close()
    events += observer.events()
    check(not observer._held, "bytes still held after server EOF")

    check(sum(e.eventid == ob.UNPARSED for e in events) <= 1, "unparsed reported more than once")
    rewritten = [
        e for e in events if e.eventid == ob.EHLO_REPLY and (e.fields["starttls_stripped"] or e.fields["masked_as"])
    ]
    # With mask_name the greeting and the 250 to HELO are masked too.
    rewritten += [e for e in events if e.eventid in (ob.GREETING, ob.HELO) and e.fields["masked_as"]]
    if not rewritten:
        check(bytes(forwarded) == bytes(server), "server bytes changed without a reported rewrite")
    for event in events:
        check(event.eventid.startswith("looper.reflect."), f"event id {event.eventid!r}")
        json.dumps(event.fields, allow_nan=False)
    return events, bytes(forwarded)


def test_one_input(data: bytes) -> None:
    options, records = parse(data)
    as_cut = run(options, records)
    whole = run(options, joined(records))
    check(as_cut == whole, "cut points or reused buffers changed the outcome")


if __name__ == "__main__":
    main("observer", test_one_input, dictionary="smtp.dict")
