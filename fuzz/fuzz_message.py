"""Fuzz target: DATA decoding and message facts (looper/proto/message.py).

Input: one flags byte (bit 0: read lines as Postfix does, bare_lf), then
records: an op byte (bit 0: the bytes repeat, one more byte k, 1 + 4 k
times), a length byte n and n bytes. The records are the chunks in which
DATA content arrives.

Checks, beyond "never raises":
- DotDecoder, fed the chunks until it finds the end, gives the same content
  and end as a plain model on the whole stream: the first CRLF "." CRLF
  (with bare_lf also LF "." LF and LF "." CRLF) after the DATA line ends
  it, and every line's leading "." goes; fed the whole stream at once it
  gives the same again. Before the end, what it gave is a prefix of the
  model's content.
- MessageScanner, fed that content in the same chunks, reports what a model
  computes from the whole content: size, sha256, the header block (cut at
  MAX_HEADER_BYTES, complete lines only), its Received: count (counted by a
  regular expression), Message-ID, Subject, chain; and it holds at most
  MAX_HEADER_BYTES (plus its made-up LF) at any time.
"""

from __future__ import annotations

import hashlib
import re

from _harness import Reader, check, instrumented, main

with instrumented(__name__ == "__main__"):
    from looper.proto.message import CHAIN_HEX_CHARS, MAX_HEADER_BYTES, DotDecoder, MessageScanner, read_header_block

RELAY_IP = "192.0.2.25"
MAX_INPUT_BYTES = 2 << 20
# A Received: field starts a line: its name, white space, the colon.
RECEIVED = re.compile(rb"^received[ \t\r\x0b\x0c]*:", re.MULTILINE | re.IGNORECASE)


def parse(data: bytes) -> tuple[bool, list[bytes]]:
    reader = Reader(data)
    bare_lf = bool(reader.byte() & 1)
    chunks: list[bytes] = []
    total = 0
    while reader:
        op = reader.byte()
        chunk = reader.take(reader.byte())
        if op & 1:
            chunk *= 1 + 4 * reader.byte()
        total += len(chunk)
        if total > MAX_INPUT_BYTES:
            break
        chunks.append(chunk)
    return bare_lf, chunks


def model_data(stream: bytes, bare_lf: bool) -> tuple[bytes, int]:
    """(content, bytes of stream used, -1 if no end) of DATA, the plain way."""
    newline = b"\n" if bare_lf else b"\r\n"
    buffer = newline + stream  # the DATA command's own line end
    ends = [buffer.find(t) for t in ((b"\n.\r\n", b"\n.\n") if bare_lf else (b"\r\n.\r\n",))]
    ends = [(end, i) for i, end in enumerate(ends) if end >= 0]
    if not ends:
        return buffer.replace(newline + b".", newline)[len(newline) :], -1
    end, which = min(ends)
    terminator = (b"\n.\r\n", b"\n.\n")[which] if bare_lf else b"\r\n.\r\n"
    content = buffer[: end + len(newline) if not bare_lf else end + 1]
    return content.replace(newline + b".", newline)[len(newline) :], end + len(terminator) - len(newline)


def decode(chunks: list[bytes], bare_lf: bool) -> tuple[list[bytes], int]:
    """Content pieces as the decoder gives them, and the end's offset in the stream (or -1)."""
    decoder = DotDecoder(bare_lf=bare_lf)
    pieces: list[bytes] = []
    offset = 0
    for chunk in chunks:
        content, used = decoder.feed(chunk)
        pieces.append(content)
        if used >= 0:
            check(0 <= used <= len(chunk), f"used {used} of a {len(chunk)}-byte chunk")
            return pieces, offset + used
        offset += len(chunk)
    return pieces, -1


def check_dot_decoder(chunks: list[bytes], bare_lf: bool) -> list[bytes]:
    stream = b"".join(chunks)
    expected, expected_end = model_data(stream, bare_lf)
    pieces, end = decode(chunks, bare_lf)
    content = b"".join(pieces)
    check(end == expected_end, f"DATA ends at {end}, the model says {expected_end}")
    if end >= 0:
        check(content == expected, "DATA content differs from the model")
    else:
        check(expected.startswith(content), "DATA content so far is not a prefix of the model's")
    whole_pieces, whole_end = decode([stream], bare_lf)
    check(whole_end == end and (end < 0 or b"".join(whole_pieces) == content), "whole and chunked DATA differ")
    return pieces


def block_end(head: bytes) -> int:
    """Index past the empty line that ends the header block in "\\n" + content, or -1."""
    ends = [i + n for i, n in ((head.find(b"\n\n"), 2), (head.find(b"\n\r\n"), 3)) if i >= 0]
    return min(ends) if ends else -1


def check_scanner(pieces: list[bytes]) -> None:
    content = b"".join(pieces)
    scanner = MessageScanner(RELAY_IP)
    for piece in pieces:
        scanner.feed(piece)
        check(scanner.header_bytes <= MAX_HEADER_BYTES + 1, f"header buffer {scanner.header_bytes}")
    facts = scanner.facts()
    check(scanner.facts() is facts, "facts() not final")
    head = b"\n" + content[:MAX_HEADER_BYTES]
    end = block_end(head)
    truncated = end < 0 and len(content) >= MAX_HEADER_BYTES
    if end < 0:
        end = head.rfind(b"\n") + 1 if truncated else len(head)
    block = head[1:end]
    fields = read_header_block(block)
    relay = RELAY_IP.encode() + b"\0"
    if fields.message_id is not None:
        chain = hashlib.sha256(relay + fields.message_id.encode("utf-8")).hexdigest()
    else:
        chain = hashlib.sha256(relay + fields.without_received + content[len(block) :]).hexdigest()
    check(facts.size == len(content), "size")
    check(facts.sha256 == hashlib.sha256(content).hexdigest(), "sha256")
    check(facts.headers_truncated == truncated, "headers_truncated")
    check(facts.received_hops == len(RECEIVED.findall(block)), f"received_hops {facts.received_hops}")
    check(facts.received_hops == fields.received_hops, "received_hops differs from the whole block's")
    check((facts.message_id, facts.subject) == (fields.message_id, fields.subject), "Message-ID or Subject")
    check(facts.chain == chain[:CHAIN_HEX_CHARS], "chain")
    for text in (facts.message_id, facts.subject):
        if text is not None:
            text.encode("utf-8")  # no lone surrogates: the log writes UTF-8


def test_one_input(data: bytes) -> None:
    bare_lf, chunks = parse(data)
    pieces = check_dot_decoder(chunks, bare_lf)
    check_scanner(pieces)
    check_scanner(chunks)  # BDAT content: raw, in the chunks as they came


if __name__ == "__main__":
    main("message", test_one_input, dictionary="smtp.dict")
