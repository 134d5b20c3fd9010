"""The passive SMTP observer, one conversation per test.

A transcript is a list of (side, bytes) in the order they crossed the splice:
C for what the inbound client sent, S for what the relay's own server sent.
tr() runs a transcript whole, one byte at a time through a reused buffer (as
the splice hands over views of its read buffer) and split at a few seeded
random points, and checks that the events and the forwarded server bytes are
the same every time (h11's tests/test_io.py tr()); test_random_splits lets
hypothesis choose the points.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.events import Event
from looper.proto import observer as ob
from looper.proto.message import MAX_HEADER_BYTES, DotDecoder, read_header_block
from looper.proto.observer import Observer
from looper.proto.reply import Reply, parse_reply_line

RELAY_IP = "192.0.2.25"
C, S = "client", "server"
Transcript = list[tuple[str, bytes]]
Feed = Callable[[bytes], Iterable[bytes | memoryview]]

# A bound on everything the observer buffers at once, whatever it is fed.
BUFFER_BOUND = (
    ob.MAX_LINE_BYTES
    + ob.MAX_HELD_BYTES
    + 2 * ob.MAX_REPLY_BYTES
    + ob.MAX_PENDING_BYTES
    + ob.MAX_RECIPIENT_BYTES
    + 2 * MAX_HEADER_BYTES
)


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def one_byte_at_a_time(data: bytes) -> Iterator[memoryview]:
    """Views of one reused buffer, overwritten after each read: whatever the observer keeps, it must copy."""
    buffer = bytearray(1)
    view = memoryview(buffer)
    for byte in data:
        buffer[0] = byte
        yield view
    buffer[0] = 0xFF


def at(cuts: list[int]) -> Feed:
    def feed(data: bytes) -> Iterator[bytes]:
        start = 0
        for cut in sorted(cuts):
            yield data[start:cut]
            start = cut
        yield data[start:]

    return feed


def run(transcript: Transcript, feed: Feed = whole, **options) -> tuple[list[Event], bytes]:
    """Feed a transcript, then both EOFs and close(); return the events and the forwarded server bytes."""
    observer = Observer(relay_ip=RELAY_IP, **options)
    forwarded = bytearray()
    for side, data in transcript:
        for piece in feed(data):
            if not piece:
                continue  # b"" would be EOF
            if side == C:
                observer.client_data(piece)
            else:
                passes = observer.passes_server_data()  # the promise a splice forwards on before reading
                seen = observer.server_data(piece)
                assert not passes or bytes(seen) == bytes(piece), "passes_server_data() promised no change"
                forwarded += seen  # copies at once: the buffer is reused
            assert observer._buffered_bytes() <= BUFFER_BOUND
    observer.client_data(b"")
    forwarded += observer.server_data(b"")
    observer.close()
    return observer.events(), bytes(forwarded)


def at_random(seed: int) -> Feed:
    rng = random.Random(seed)
    return lambda data: at(rng.sample(range(len(data) + 1), min(len(data) + 1, 3)))(data)


def tr(transcript: Transcript, **options) -> tuple[list[Event], bytes]:
    """Run whole, one byte at a time and at a few random points: same events, same bytes forwarded."""
    expected = run(transcript, whole, **options)
    assert run(transcript, one_byte_at_a_time, **options) == expected
    for seed in range(3):
        assert run(transcript, at_random(seed), **options) == expected
    return expected


def server_bytes(transcript: Transcript) -> bytes:
    return b"".join(data for side, data in transcript if side == S)


def of(events: list[Event], eventid: str) -> list[dict]:
    return [event.fields for event in events if event.eventid == eventid]


def ids(events: list[Event]) -> list[str]:
    return [event.eventid.removeprefix("looper.reflect.") for event in events]


def stuff(content: bytes) -> bytes:
    """Content as DATA sends it: dot-stuffed, then CRLF.CRLF."""
    lines = content.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


def chain_of(message_id: str) -> str:
    return hashlib.sha256(f"{RELAY_IP}\0{message_id}".encode()).hexdigest()[:16]


# A Postfix relay delivering to the trap, that is to itself.

POSTFIX_GREETING = b"220 mx.relay.example ESMTP Postfix (Debian/GNU)\r\n"
POSTFIX_EHLO_REPLY = (
    b"250-mx.relay.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-VRFY\r\n"
    b"250-ETRN\r\n"
    b"250-STARTTLS\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 CHUNKING\r\n"
)
POSTFIX_EXTENSIONS = [
    "PIPELINING", "SIZE 10240000", "VRFY", "ETRN", "STARTTLS",
    "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING",
]  # fmt: skip
POSTFIX_MESSAGE_ID = "<20240101000001.4Tq1x2@client.example>"
POSTFIX_MESSAGE = (
    b"Received: from mx.relay.example (mx.relay.example [192.0.2.25])\r\n"
    b"\tby mx.relay.example (Postfix) with ESMTP id 4Tq1x2\r\n"
    b"\tfor <victim@trap.example>; Mon,  1 Jan 2024 00:00:02 +0000 (UTC)\r\n"
    b"received: by client.example (Postfix, from userid 1000) id 9A1B2C; Mon,  1 Jan 2024 00:00:01 +0000\r\n"
    b"Received: from localhost by client.example; Mon,  1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: " + POSTFIX_MESSAGE_ID.encode() + b"\r\n"
    b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from\r\n the loop\r\n"
    b"From: <spammer@client.example>\r\n"
    b"To: <victim@trap.example>\r\n"
    b"X-Note: Received: in a value is not a field\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"Received: in the body is not a hop\r\n"
    b"Bye.\r\n"
)
POSTFIX: Transcript = [
    (S, POSTFIX_GREETING),
    (C, b"EHLO mx.relay.example\r\n"),
    (S, POSTFIX_EHLO_REPLY),
    (
        C,
        b"MAIL FROM:<spammer@client.example> SIZE=1234 BODY=8BITMIME\r\n"
        b"RCPT TO:<victim@trap.example> ORCPT=rfc822;victim@trap.example\r\n"
        b"DATA\r\n",
    ),
    (S, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
    (C, stuff(POSTFIX_MESSAGE)),
    (S, b"250 2.0.0 Ok: queued as 4Tq1x3\r\n"),
    (C, b"QUIT\r\n"),
    (S, b"221 2.0.0 Bye\r\n"),
]


def test_postfix_conversation():
    events, forwarded = tr(POSTFIX)
    assert events == [
        Event(ob.GREETING, {"code": 220, "text": "mx.relay.example ESMTP Postfix (Debian/GNU)", "pregreet_bytes": 0,
                         "masked_as": None}),
        Event(ob.HELO, {"verb": "EHLO", "name": "mx.relay.example", "code": 250, "masked_as": None,
                        "reply": "mx.relay.example\n" + "\n".join(POSTFIX_EXTENSIONS)}),
        Event(ob.EHLO_REPLY, {"code": 250, "name": "mx.relay.example", "extensions": POSTFIX_EXTENSIONS,
                              "starttls_stripped": True, "masked_as": None}),
        Event(ob.MAIL, {"address": "spammer@client.example", "params": ["SIZE=1234", "BODY=8BITMIME"],
                        "code": 250, "reply": "2.1.0 Ok"}),
        Event(ob.RCPT, {"address": "victim@trap.example", "params": ["ORCPT=rfc822;victim@trap.example"],
                        "code": 250, "reply": "2.1.5 Ok"}),
        Event(ob.MESSAGE, {
            "received_hops": 3,
            "message_id": POSTFIX_MESSAGE_ID,
            "subject": "Grüße from the loop",
            "size": len(POSTFIX_MESSAGE),
            "sha256": hashlib.sha256(POSTFIX_MESSAGE).hexdigest(),
            "code": 250,
            "reply": "2.0.0 Ok: queued as 4Tq1x3",
            "chain": chain_of(POSTFIX_MESSAGE_ID),
            "mail_from": "spammer@client.example",
            "rcpt_to": ["victim@trap.example"],
            "transport": "data",
            "complete": True,
            "headers_truncated": False,
        }),
        Event(ob.COMMAND, {"verb": "QUIT", "argument": None, "code": 221, "reply": "2.0.0 Bye"}),
    ]  # fmt: skip
    assert forwarded == server_bytes(POSTFIX).replace(b"250-STARTTLS\r\n", b"")


# Exim pipelines everything, content included, with CHUNKING.

EXIM_MESSAGE = (
    b"Received: from [198.51.100.7] (helo=client.example)\r\n"
    b"\tby relay.example with esmtp (Exim 4.96)\r\n"
    b"\tid 1rKq2x-000Abc-3Z for victim@trap.example; Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"From: spammer@client.example\r\n"
    b"Subject: no Message-ID here\r\n"
    b"\r\n"
    b"BDAT content is raw: no dot-stuffing, and this does not end it:\r\n"
    b".\r\n"
    b"..\r\n"
)


def exim(message: bytes) -> Transcript:
    return [
        (S, b"220 relay.example ESMTP Exim 4.96 Mon, 01 Jan 2024 00:00:00 +0000\r\n"),
        (C, b"EHLO relay.example\r\n"),
        (
            S,
            b"250-relay.example Hello relay.example [192.0.2.25]\r\n250-SIZE 52428800\r\n"
            b"250-8BITMIME\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-PRDR\r\n250 HELP\r\n",
        ),
        (
            C,
            b"MAIL FROM:<> SIZE=%d\r\nRCPT TO:<victim@trap.example>\r\nBDAT %d LAST\r\n" % (len(message), len(message))
            + message
            + b"QUIT\r\n",
        ),
        (
            S,
            b"250 OK\r\n250 Accepted\r\n250- %d byte chunk, total %d\r\n250 OK id=1rKq2y-000Abd-4A\r\n"
            b"221 relay.example closing connection\r\n" % (len(message), len(message)),
        ),
    ]


def test_exim_pipelining_bdat():
    transcript = exim(EXIM_MESSAGE)
    events, forwarded = tr(transcript)
    assert ids(events) == ["greeting", "helo", "ehlo_reply", "mail", "rcpt", "message", "command"]
    assert of(events, ob.MAIL) == [{"address": "", "params": [f"SIZE={len(EXIM_MESSAGE)}"], "code": 250, "reply": "OK"}]
    (ehlo_reply,) = of(events, ob.EHLO_REPLY)
    assert ehlo_reply["name"] == "relay.example" and ehlo_reply["starttls_stripped"] is False
    (message,) = of(events, ob.MESSAGE)
    without_received = EXIM_MESSAGE[EXIM_MESSAGE.index(b"From:") :]
    assert message == {
        "received_hops": 1,
        "message_id": None,
        "subject": "no Message-ID here",
        "size": len(EXIM_MESSAGE),
        "sha256": hashlib.sha256(EXIM_MESSAGE).hexdigest(),
        "code": 250,
        "reply": f" {len(EXIM_MESSAGE)} byte chunk, total {len(EXIM_MESSAGE)}\nOK id=1rKq2y-000Abd-4A",
        "chain": hashlib.sha256(RELAY_IP.encode() + b"\0" + without_received).hexdigest()[:16],
        "mail_from": "",
        "rcpt_to": ["victim@trap.example"],
        "transport": "bdat",
        "complete": True,
        "headers_truncated": False,
    }
    assert of(events, ob.COMMAND) == [
        {"verb": "QUIT", "argument": None, "code": 221, "reply": "relay.example closing connection"}
    ]
    assert forwarded == server_bytes(transcript)


def test_chain_survives_another_hop():
    """The next pass adds a Received: field; without a Message-ID the chain stays."""
    next_hop = b"Received: from relay.example by relay.example; Mon, 01 Jan 2024 00:00:05 +0000\r\n"
    (first,) = of(run(exim(EXIM_MESSAGE))[0], ob.MESSAGE)
    (second,) = of(run(exim(next_hop + EXIM_MESSAGE))[0], ob.MESSAGE)
    assert second["received_hops"] == first["received_hops"] + 1
    assert second["chain"] == first["chain"] and second["sha256"] != first["sha256"]


def test_bdat_in_chunks():
    transcript: Transcript = [
        (S, b"220 relay.example ESMTP\r\n"),
        (C, b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@trap.example>\r\nBDAT 11\r\nSubject: "),
        (C, b"hiBDAT 0\r\nBDAT 6 LAST\r\n\r\nbodyRSET\r\n"),
        (S, b"250 OK\r\n250 Accepted\r\n250 11 bytes\r\n250 0 bytes\r\n250 OK id=1\r\n250 Reset OK\r\n"),
    ]
    events, _ = tr(transcript)
    assert ids(events) == ["greeting", "mail", "rcpt", "message", "command"]
    (message,) = of(events, ob.MESSAGE)
    content = b"Subject: hi\r\nbody"
    assert (message["size"], message["sha256"], message["subject"]) == (
        len(content), hashlib.sha256(content).hexdigest(), "hi",
    )  # fmt: skip
    assert message["complete"] and message["rcpt_to"] == ["b@trap.example"]


def test_refused_bdat_chunk():
    transcript: Transcript = [
        (S, b"220 relay.example ESMTP\r\n"),
        (C, b"MAIL FROM: a@client.example SIZE=10\r\nBDAT 3\r\nabcBDAT 2 LAST\r\nde"),
        (S, b"250 OK\r\n552 message too big\r\n503 no valid transaction\r\n"),
    ]
    events, _ = tr(transcript)
    assert ids(events) == ["greeting", "mail", "command", "message"]
    assert of(events, ob.MAIL)[0]["address"] == "a@client.example"
    assert of(events, ob.COMMAND) == [{"verb": "BDAT", "argument": "3", "code": 552, "reply": "message too big"}]
    (message,) = of(events, ob.MESSAGE)
    assert (message["code"], message["size"], message["complete"]) == (503, 5, True)


def test_bdat_without_last_is_reported_incomplete():
    transcript: Transcript = [
        (S, b"220 relay.example ESMTP\r\n"),
        (C, b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@trap.example>\r\nBDAT 4\r\nabcdRSET\r\n"),
        (S, b"250 OK\r\n250 Accepted\r\n250 4 bytes\r\n250 Reset OK\r\n"),
    ]
    events, _ = tr(transcript)
    assert ids(events) == ["greeting", "mail", "rcpt", "message", "command"]
    (message,) = of(events, ob.MESSAGE)
    assert message["complete"] is False and message["code"] is None and message["size"] == 4
    assert message["mail_from"] == "a@client.example"  # reported before RSET's reply resets it


def test_several_transactions_on_one_connection():
    def message(n: int) -> bytes:
        return b"Message-ID: <%d@client.example>\r\n\r\nmessage %d\r\n" % (n, n)

    transcript: Transcript = [
        (S, POSTFIX_GREETING),
        (C, b"EHLO client.example\r\n"),
        (S, b"250-mx.relay.example\r\n250 PIPELINING\r\n"),
        (C, b"MAIL FROM:<one@client.example>\r\nRCPT TO:<a@trap.example>\r\nRCPT TO:<b@trap.example>\r\nDATA\r\n"),
        (S, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"),
        (C, stuff(message(1)) + b"MAIL FROM:<two@client.example>\r\nRCPT TO:<c@trap.example>\r\nDATA\r\n"),
        (S, b"250 2.0.0 Ok: queued as A1\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"),
        (C, stuff(message(2))),
        (S, b"250 2.0.0 Ok: queued as A2\r\n"),
        (C, b"MAIL FROM:<three@client.example>\r\nRSET\r\nRCPT TO:<d@trap.example>\r\nDATA\r\n"),
        (S, b"250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n503 5.5.1 Error: need RCPT command\r\n"),
        (C, b"MAIL FROM:<four@client.example>\r\nRCPT TO:<e@trap.example>\r\nDATA\r\n"),
        (S, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"),
        (C, stuff(message(4)) + b"QUIT\r\n"),
        (S, b"250 2.0.0 Ok: queued as A4\r\n221 2.0.0 Bye\r\n"),
    ]
    events, _ = tr(transcript)
    messages = of(events, ob.MESSAGE)
    assert [(m["message_id"], m["mail_from"], m["rcpt_to"], m["reply"]) for m in messages] == [
        ("<1@client.example>", "one@client.example", ["a@trap.example", "b@trap.example"], "2.0.0 Ok: queued as A1"),
        ("<2@client.example>", "two@client.example", ["c@trap.example"], "2.0.0 Ok: queued as A2"),
        ("<4@client.example>", "four@client.example", ["e@trap.example"], "2.0.0 Ok: queued as A4"),
    ]
    assert [(c["verb"], c["code"]) for c in of(events, ob.COMMAND)] == [
        ("RSET", 250), ("DATA", 503), ("QUIT", 221),
    ]  # fmt: skip


def test_refused_rcpt_is_not_a_recipient():
    transcript: Transcript = [
        (S, POSTFIX_GREETING),
        (C, b"HELO client.example\r\n"),
        (S, b"250 mx.relay.example\r\n"),
        (C, b"MAIL FROM:<s@client.example>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<v@trap.example>\r\nDATA\r\n"),
        (S, b"250 2.1.0 Ok\r\n554 5.7.1 <x@elsewhere.example>: Relay access denied\r\n250 2.1.5 Ok\r\n354 go\r\n"),
        (C, stuff(b"Subject: x\r\n\r\nx\r\n")),
        (S, b"250 2.0.0 Ok: queued as B1\r\n"),
    ]
    events, _ = tr(transcript)
    assert of(events, ob.HELO) == [{"verb": "HELO", "name": "client.example", "code": 250, "reply": "mx.relay.example",
                                         "masked_as": None}]
    assert of(events, ob.EHLO_REPLY) == []
    assert [(r["address"], r["code"]) for r in of(events, ob.RCPT)] == [("x@elsewhere.example", 554), ("v@trap.example", 250)]
    (message,) = of(events, ob.MESSAGE)
    assert message["rcpt_to"] == ["v@trap.example"]


def test_refused_data_leaves_the_client_in_commands():
    transcript: Transcript = [
        (S, POSTFIX_GREETING),
        (C, b"MAIL FROM:<s@client.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\nQUIT\r\n"),
        (S, b"250 2.1.0 Ok\r\n554 5.7.1 Relay access denied\r\n554 5.5.1 Error: no valid recipients\r\n221 2.0.0 Bye\r\n"),
    ]
    events, _ = tr(transcript)
    assert ids(events) == ["greeting", "mail", "rcpt", "command", "command"]
    assert of(events, ob.COMMAND) == [
        {"verb": "DATA", "argument": None, "code": 554, "reply": "5.5.1 Error: no valid recipients"},
        {"verb": "QUIT", "argument": None, "code": 221, "reply": "2.0.0 Bye"},
    ]


# Rewriting the EHLO reply: exact bytes.


def test_starttls_stripped_from_the_last_line():
    transcript: Transcript = [
        (S, POSTFIX_GREETING),
        (C, b"EHLO client.example\r\n"),
        (S, b"250-mx.relay.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
    ]
    events, forwarded = tr(transcript)
    assert forwarded == POSTFIX_GREETING + b"250-mx.relay.example\r\n250 PIPELINING\r\n"
    (ehlo_reply,) = of(events, ob.EHLO_REPLY)
    assert ehlo_reply["extensions"] == ["PIPELINING", "STARTTLS"] and ehlo_reply["starttls_stripped"] is True


def test_starttls_stripped_with_replies_around_it_in_one_chunk():
    # The client spoke first (EHLO and NOOP before the greeting): one server
    # chunk holds the greeting, the EHLO reply and the NOOP reply.
    transcript: Transcript = [
        (C, b"EHLO client.example\r\nNOOP\r\n"),
        (S, b"220 mx ESMTP\r\n250-mx\r\n250-STARTTLS\r\n250 8BITMIME\n250 2.0.0 Ok\r\n"),
    ]
    events, forwarded = tr(transcript, pregreet_bytes=29)
    assert forwarded == b"220 mx ESMTP\r\n250-mx\r\n250 8BITMIME\n250 2.0.0 Ok\r\n"
    assert of(events, ob.GREETING) == [{"code": 220, "text": "mx ESMTP", "pregreet_bytes": 29, "masked_as": None}]
    assert ids(events) == ["greeting", "helo", "ehlo_reply", "command"]


def test_starttls_only_capability_leaves_a_one_line_reply():
    transcript: Transcript = [(S, b"220 mx\r\n"), (C, b"EHLO c\r\n"), (S, b"250-mx\r\n250 STARTTLS\r\n")]
    assert tr(transcript)[1] == b"220 mx\r\n250 mx\r\n"


def test_unchanged_bytes_are_the_same_object():
    for options in ({"strip_starttls": False}, {}):
        observer = Observer(relay_ip=RELAY_IP, **options)
        chunk = b"220 mx\r\n"
        assert observer.server_data(chunk) is chunk
        observer.client_data(b"EHLO c\r\n")
        chunk = b"250-mx\r\n250 PIPELINING\r\n"  # nothing to strip
        assert observer.server_data(chunk) is chunk
    observer = Observer(relay_ip=RELAY_IP, strip_starttls=False)
    observer.client_data(b"EHLO c\r\n")
    view = memoryview(bytearray(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n"))
    assert observer.server_data(view) is view


def test_held_ehlo_reply_across_reads():
    observer = Observer(relay_ip=RELAY_IP)
    observer.server_data(b"220 mx\r\n")
    observer.client_data(b"EHLO c\r\n")
    assert observer.server_data(b"250-mx\r\n250-STAR") == b""
    assert observer.server_data(b"TTLS\r\n250 SIZE 1000\r\n221 ") == b"250-mx\r\n250 SIZE 1000\r\n221 "


def test_held_ehlo_reply_goes_out_at_eof():
    observer = Observer(relay_ip=RELAY_IP)
    observer.client_data(b"EHLO c\r\n")
    assert observer.server_data(b"220 mx\r\n250-mx\r\n250-STARTTLS\r\n") == b"220 mx\r\n"
    assert observer.server_data(b"") == b"250-mx\r\n250-STARTTLS\r\n"


def test_mask_name():
    transcript: Transcript = [
        (S, POSTFIX_GREETING),
        (C, b"EHLO mx.relay.example\r\n"),
        (S, b"250-mx.relay.example Hello client [192.0.2.25]\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
    ]
    # The greeting carries the server's name too: Postfix's client says
    # "greeted me with my own hostname" in its log unless that is masked as well.
    masked_greeting = b"220 looper.invalid ESMTP Postfix (Debian/GNU)\r\n"
    events, forwarded = tr(transcript, mask_name="looper.invalid", strip_starttls=False)
    assert forwarded == masked_greeting + (
        b"250-looper.invalid Hello client [192.0.2.25]\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
    )
    (greeting,) = of(events, ob.GREETING)
    assert greeting["text"] == "mx.relay.example ESMTP Postfix (Debian/GNU)" and greeting["masked_as"] == "looper.invalid"
    (ehlo_reply,) = of(events, ob.EHLO_REPLY)
    assert ehlo_reply["name"] == "mx.relay.example" and ehlo_reply["masked_as"] == "looper.invalid"
    (helo,) = of(events, ob.HELO)
    assert helo["reply"].startswith("mx.relay.example Hello") and helo["masked_as"] == "looper.invalid"

    events, forwarded = tr(transcript, mask_name="looper.invalid")
    assert forwarded == masked_greeting + b"250-looper.invalid Hello client [192.0.2.25]\r\n250 PIPELINING\r\n"
    (ehlo_reply,) = of(events, ob.EHLO_REPLY)
    assert ehlo_reply["starttls_stripped"] is True and ehlo_reply["masked_as"] == "looper.invalid"

    # Without mask, the greeting passes untouched.
    events, forwarded = tr(transcript)
    assert forwarded.startswith(POSTFIX_GREETING) and of(events, ob.GREETING)[0]["masked_as"] is None


def test_mask_name_masks_the_reply_to_helo():
    transcript: Transcript = [
        (S, b"220-mx.relay.example ESMTP\r\n220 more\r\n"),
        (C, b"HELO mx.relay.example\r\n"),
        (S, b"250 mx.relay.example\r\n"),
        (C, b"QUIT\r\n"),
        (S, b"221 2.0.0 Bye\r\n"),
    ]
    events, forwarded = tr(transcript, mask_name="looper.invalid")
    assert forwarded == b"220-looper.invalid ESMTP\r\n220 more\r\n250 looper.invalid\r\n221 2.0.0 Bye\r\n"
    assert of(events, ob.HELO)[0]["masked_as"] == "looper.invalid"


def test_refused_ehlo_is_not_rewritten():
    transcript: Transcript = [
        (S, b"220 mx\r\n"),
        (C, b"EHLO c\r\n"),
        (S, b"502-mx STARTTLS\r\n502 5.5.2 EHLO not supported\r\n"),
        (C, b"HELO c\r\n"),
        (S, b"250 mx\r\n"),
    ]
    events, forwarded = tr(transcript)
    assert forwarded == server_bytes(transcript)
    events, forwarded = tr(transcript, mask_name="looper.invalid")
    # The refusal passes as it was (STARTTLS in it and all); the greeting and
    # the 250 to HELO carry the server's name, and are masked.
    assert forwarded == b"220 looper.invalid\r\n502-mx STARTTLS\r\n502 5.5.2 EHLO not supported\r\n250 looper.invalid\r\n"
    assert [(h["verb"], h["code"], h["masked_as"]) for h in of(events, ob.HELO)] == [
        ("EHLO", 502, None), ("HELO", 250, "looper.invalid")]
    assert of(events, ob.EHLO_REPLY) == []


def test_mask_name_must_be_one_word():
    for bad in ("", "two words", "crlf\r\n", "é"):
        with pytest.raises(ValueError):
            Observer(relay_ip=RELAY_IP, mask_name=bad)


# STARTTLS, AUTH


def test_starttls_sent_anyway_goes_opaque():
    client_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256))
    server_hello = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + bytes(range(255, -1, -1))
    transcript: Transcript = [
        (S, POSTFIX_GREETING),
        (C, b"EHLO client.example\r\n"),
        (S, POSTFIX_EHLO_REPLY),
        (C, b"STARTTLS\r\n" + client_hello),
        (S, b"220 2.0.0 Ready to start TLS\r\n" + server_hello),
        (C, client_hello),
        (S, b"250 this is not a reply any more, it is TLS\r\n"),
    ]
    events, forwarded = tr(transcript)
    assert ids(events)[3:] == ["command", "tls"]
    assert of(events, ob.COMMAND) == [{"verb": "STARTTLS", "argument": None, "code": 220, "reply": "2.0.0 Ready to start TLS"}]
    assert forwarded == server_bytes(transcript).replace(b"250-STARTTLS\r\n", b"")
    observer = Observer(relay_ip=RELAY_IP)
    observer.client_data(b"STARTTLS\r\n")
    assert not observer.opaque
    observer.server_data(b"220 ready\r\n220 go ahead\r\n")
    assert observer.opaque


def test_refused_starttls_goes_on():
    transcript: Transcript = [
        (S, b"220 mx\r\n"),
        (C, b"STARTTLS\r\nNOOP\r\n"),
        (S, b"454 4.7.0 TLS not available due to local problem\r\n250 2.0.0 Ok\r\n"),
    ]
    events, _ = tr(transcript)
    assert [(c["verb"], c["code"]) for c in of(events, ob.COMMAND)] == [("STARTTLS", 454), ("NOOP", 250)]


SECRETS = ("AGFsaWNlAHNlY3JldA==", "YWxpY2U=", "c2VjcmV0", "Ym9i", "aHVudGVyMg==", "secret", "alice", "hunter2")


def test_auth_never_logs_secrets():
    transcript: Transcript = [
        (S, POSTFIX_GREETING),
        (C, b"EHLO client.example\r\n"),
        (S, b"250-mx.relay.example\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n"),
        (C, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
        (S, b"535 5.7.8 Error: authentication failed\r\n"),
        (C, b"AUTH LOGIN\r\n"),
        (S, b"334 VXNlcm5hbWU6\r\n"),
        (C, b"YWxpY2U=\r\n"),
        (S, b"334 UGFzc3dvcmQ6\r\n"),
        (C, b"c2VjcmV0\r\n"),
        (S, b"535 5.7.8 Error: authentication failed\r\n"),
        # The username as initial response, and the password sent before the 334.
        (C, b"AUTH LOGIN Ym9i\r\naHVudGVyMg==\r\nMAIL FROM:<s@client.example>\r\n"),
        (S, b"334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n"),
    ]
    events, _ = tr(transcript)
    assert ids(events)[3:] == ["command", "command", "command", "mail"]
    assert [(c["verb"], c["argument"], c["code"]) for c in of(events, ob.COMMAND)] == [
        ("AUTH", "PLAIN", 535), ("AUTH", "LOGIN", 535), ("AUTH", "LOGIN", 235),
    ]  # fmt: skip
    logged = repr(events)
    assert not [secret for secret in SECRETS if secret in logged]


def test_auth_cut_off_in_the_middle():
    transcript: Transcript = [(S, b"220 mx\r\n"), (C, b"AUTH LOGIN\r\n"), (S, b"334 VXNlcm5hbWU6\r\n")]
    events, _ = tr(transcript)
    assert of(events, ob.COMMAND) == [{"verb": "AUTH", "argument": "LOGIN", "code": None, "reply": None}]


# Giving up, limits


def test_binary_noise_is_reported_once():
    transcript: Transcript = [
        (S, POSTFIX_GREETING),
        (C, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\r\n"),
        (C, bytes(range(256)) * 4),
        (S, b"500 5.5.2 Error: command not recognized\r\n" * 3),
    ]
    events, forwarded = tr(transcript)
    assert ids(events) == ["greeting", "unparsed"]
    assert of(events, ob.UNPARSED) == [{"direction": "client", "why": ob.WHY_BINARY_COMMAND}]
    assert forwarded == server_bytes(transcript)


def test_binary_noise_without_a_line_end_is_reported():
    events, _ = tr([(S, b"220 mx\r\n"), (C, b"\x16\x03\x01\x00\xa5")])
    assert of(events, ob.UNPARSED) == [{"direction": "client", "why": ob.WHY_BINARY_COMMAND}]


def test_server_that_does_not_speak_smtp():
    transcript: Transcript = [(S, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"), (C, b"EHLO c\r\n"), (S, b"\x00\x01")]
    events, forwarded = tr(transcript)
    assert of(events, ob.UNPARSED) == [{"direction": "server", "why": ob.WHY_NOT_A_REPLY}]
    assert ids(events) == ["unparsed", "greeting"]  # the greeting never came; nothing is parsed after
    assert of(events, ob.GREETING) == [{"code": None, "text": None, "pregreet_bytes": 0, "masked_as": None}]
    assert forwarded == server_bytes(transcript)


def test_lines_over_64_kib():
    long_line = b"NOOP " + b"A" * ob.MAX_LINE_BYTES + b"\r\n"
    events, _ = tr([(S, b"220 mx\r\n"), (C, long_line), (C, b"QUIT\r\n"), (S, b"500 too long\r\n221 bye\r\n")])
    assert ids(events) == ["greeting", "unparsed"]
    assert of(events, ob.UNPARSED) == [{"direction": "client", "why": ob.WHY_LINE_TOO_LONG}]

    longest = b"NOOP " + b"A" * (ob.MAX_LINE_BYTES - len(b"NOOP \r")) + b"\r\n"
    events, _ = run([(S, b"220 mx\r\n"), (C, longest), (S, b"250 ok\r\n")])
    assert ids(events) == ["greeting", "command"]

    transcript: Transcript = [
        (S, b"220 mx\r\n"),
        (C, b"EHLO c\r\n"),
        (S, b"250-mx\r\n250-STARTTLS\r\n250-" + b"x" * ob.MAX_LINE_BYTES + b"\r\n250 ok\r\n"),
    ]
    events, forwarded = tr(transcript)
    assert of(events, ob.UNPARSED) == [{"direction": "server", "why": ob.WHY_LINE_TOO_LONG}]
    assert forwarded == server_bytes(transcript)  # held, then given back whole


def test_server_gives_up_in_the_held_ehlo_reply():
    transcript: Transcript = [
        (S, b"220 mx\r\n"),
        (C, b"EHLO c\r\n"),
        (S, b"250-mx\r\n250-STARTTLS\r\n250\rSIZE\r\n250 ok\r\n"),
    ]
    events, forwarded = tr(transcript, mask_name="looper.invalid")
    assert of(events, ob.UNPARSED) == [{"direction": "server", "why": ob.WHY_NOT_A_REPLY}]
    # What was held goes out as it came; only the greeting, read whole, was masked.
    assert forwarded == b"220 looper.invalid\r\n" + server_bytes(transcript)[len(b"220 mx\r\n"):]


def test_client_gives_up_while_the_ehlo_reply_is_held():
    observer = Observer(relay_ip=RELAY_IP)
    observer.server_data(b"220 mx\r\n")
    observer.client_data(b"EHLO c\r\n")
    assert observer.server_data(b"250-mx\r\n") == b""
    observer.client_data(b"\x16\x03\x01")
    assert not observer.opaque  # not yet: a caller skipping the observer now would lose the held bytes
    assert observer.server_data(b"250 STARTTLS\r\n") == b"250-mx\r\n250 STARTTLS\r\n"
    assert observer.opaque
    data = b"\x17\x03\x03"
    assert observer.server_data(data) is data


def test_reply_over_64_kib():
    transcript: Transcript = [(S, b"220-mx\r\n" + (b"220-" + b"x" * 60 + b"\r\n") * 1100 + b"220 mx\r\n")]
    events, forwarded = tr(transcript)
    assert of(events, ob.UNPARSED) == [{"direction": "server", "why": ob.WHY_REPLY_TOO_LONG}]
    assert forwarded == server_bytes(transcript)


def test_no_reply_to_data_within_64_kib():
    transcript: Transcript = [(S, b"220 mx\r\n"), (C, b"DATA\r\n" + b"Subject: eager\r\n" * 5000)]
    events, _ = tr(transcript)
    assert of(events, ob.UNPARSED) == [{"direction": "client", "why": ob.WHY_NO_REPLY_IN_TIME}]
    assert of(events, ob.COMMAND) == [{"verb": "DATA", "argument": None, "code": None, "reply": None}]


def test_too_many_commands_without_a_reply():
    events, _ = run([(C, b"NOOP\r\n" * (ob.MAX_PENDING_COMMANDS + 10))])
    assert of(events, ob.UNPARSED) == [{"direction": "client", "why": ob.WHY_TOO_MANY_COMMANDS}]
    # The greeting was pending too, and all of them end with code None.
    assert len(of(events, ob.COMMAND)) == ob.MAX_PENDING_COMMANDS - 1


def test_unsolicited_reply():
    events, _ = tr([(S, b"220 mx\r\n"), (S, b"421 4.4.2 mx Error: timeout exceeded\r\n")])
    assert of(events, ob.COMMAND) == [
        {"verb": None, "argument": None, "code": 421, "reply": "4.4.2 mx Error: timeout exceeded"}
    ]


def test_header_block_over_64_kib():
    filler = b"X-Filler: " + b"f" * 70 + b"\r\n"
    header = b"Received: a\r\n" * 2 + filler * (MAX_HEADER_BYTES // len(filler) + 1)
    content = header + b"Received: late\r\nMessage-ID: <late@x>\r\n\r\nbody\r\n"
    transcript: Transcript = [
        (S, b"220 mx\r\n"),
        (C, b"DATA\r\n"),
        (S, b"354 go\r\n"),
        (C, stuff(content)),
        (S, b"250 queued\r\n"),
    ]
    events, _ = tr(transcript)
    (message,) = of(events, ob.MESSAGE)
    assert message["headers_truncated"] is True and message["received_hops"] == 2
    assert message["message_id"] is None
    assert message["size"] == len(content) and message["sha256"] == hashlib.sha256(content).hexdigest()


# DATA content


def test_bare_lf_dot_does_not_end_data():
    """SMTP smuggling: "\\n.\\n" (or "\\n.\\r\\n", "\\r\\n.\\n") inside DATA is content."""
    smuggled = (
        b"Subject: first\r\n\r\nhello\n.\nMAIL FROM:<evil@example>\n"
        b"RCPT TO:<x@example>\r\n.\nDATA\r\n\n.\r\nmore\r\n"
    )
    transcript: Transcript = [
        (S, b"220 mx\r\n"),
        (C, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"),
        (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (C, smuggled + b".\r\n"),
        (S, b"250 queued\r\n"),
    ]
    events, _ = tr(transcript)
    assert ids(events) == ["greeting", "mail", "rcpt", "message"]
    (message,) = of(events, ob.MESSAGE)
    # The CRLF line ".\nDATA" starts with a dot, which unstuffing removes.
    content = smuggled.replace(b"\r\n.\nDATA", b"\r\n\nDATA")
    assert message["size"] == len(content) and message["sha256"] == hashlib.sha256(content).hexdigest()


def test_message_cut_off_in_data():
    transcript: Transcript = [
        (S, b"220 mx\r\n"),
        (C, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"),
        (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (C, b"Subject: cut\r\n\r\nhalf a mess"),
    ]
    events, _ = tr(transcript)
    (message,) = of(events, ob.MESSAGE)
    assert message["complete"] is False and message["code"] is None
    assert message["subject"] == "cut" and message["size"] == len(b"Subject: cut\r\n\r\nhalf a mess")
    assert message["mail_from"] == "a@b.example" and message["rcpt_to"] == ["c@d.example"]


def test_message_cut_off_after_a_line_counts_its_line_end():
    # The final CRLF might have begun the terminator; once cut off, it was content.
    content = b"Subject: cut\r\n\r\nwhole line\r\n"
    transcript: Transcript = [
        (S, b"220 mx\r\n"),
        (C, b"DATA\r\n"),
        (S, b"354 go\r\n"),
        (C, content),
    ]
    events, _ = tr(transcript)
    (message,) = of(events, ob.MESSAGE)
    assert message["complete"] is False
    assert message["size"] == len(content) and message["sha256"] == hashlib.sha256(content).hexdigest()


def test_message_without_reply_is_complete():
    transcript: Transcript = [(S, b"220 mx\r\n"), (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, b"x\r\n.\r\nQUIT\r\n")]
    events, _ = tr(transcript)
    assert ids(events) == ["greeting", "message", "command"]
    (message,) = of(events, ob.MESSAGE)
    assert (message["complete"], message["code"], message["size"]) == (True, None, 3)


@pytest.mark.parametrize(
    ("stuffed", "content"),
    [
        (b".\r\n", b""),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
        (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),  # RFC 5321 4.5.2: any leading dot goes
        (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n"),
        (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\r\n"),
        (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
    ],
)
def test_dot_decoder(stuffed: bytes, content: bytes):
    """Strict: only CRLF.CRLF ends DATA, checked at every split point."""
    for split in range(len(stuffed) + 1):
        decoder = DotDecoder()
        got, used = decoder.feed(stuffed[:split] + b"")
        if used < 0:
            rest, used = decoder.feed(stuffed[split:] + b"NEXT")
            got += rest
            used += split
        assert (got, used) == (content, len(stuffed))


@pytest.mark.parametrize(
    ("stuffed", "content", "used"),
    [
        (b".\r\n", b"", 3),
        (b".\n", b"", 2),
        (b"a\n.\nb\r\n.\r\n", b"a\n", 4),
        (b"a\r\n.\nb", b"a\r\n", 5),
        (b"a\n..b\n.x\r\n.\r\n", b"a\n.b\nx\r\n", 13),
        (b"a\r.\r\n.\n", b"a\r.\r\n", 7),  # a bare CR ends no line
    ],
)
def test_dot_decoder_reading_lines_as_postfix_does(stuffed: bytes, content: bytes, used: int):
    """bare_lf: a bare LF ends lines too, as in Debian's Postfix 3.7 smtpd."""
    for split in range(len(stuffed) + 1):
        decoder = DotDecoder(bare_lf=True)
        got, taken = decoder.feed(stuffed[:split])
        if taken < 0:
            rest, taken = decoder.feed(stuffed[split:] + b"NEXT")
            got += rest
            taken += split
        assert (got, taken) == (content, used), split


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from the loop", "Grüße from the loop"),
        ("=?utf-8?q?a?= =?utf-8?b?Yg==?=", "ab"),  # RFC 2047 6.2: the space between words goes
        ("=?iso-8859-1?q?caf=E9?= =?", "café =?"),
        ("=?x-no-such-charset?q?a?=", "=?x-no-such-charset?q?a?="),
        ("caf\ufffd =?utf-8?q?caf=C3=A9?=", "caf\ufffd café"),
        ("=?utf-8?q?x" * 10_000, "=?utf-8?q?x" * 10_000),  # no quadratic time on hostile input
    ],
)
def test_subject_decoding(raw: str, decoded: str):
    assert read_header_block(b"Subject: " + raw.encode() + b"\r\n\r\n").subject == decoded


def test_eight_bit_bytes():
    transcript: Transcript = [
        (S, b"220 mx.relay.example ESMTP \xe9t\xe9 \xff\r\n"),
        (C, b"EHLO h\xc3\xb4te.example\r\n"),
        (S, b"250-mx.relay.example\r\n250 SMTPUTF8\r\n"),
        (C, b"MAIL FROM:<j\xc3\xbcrgen@client.example> SMTPUTF8\r\nRCPT TO:<\xff\xfe@trap.example>\r\nDATA\r\n"),
        (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (C, stuff(b"Subject: caf\xe9 =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <\xff@x>\r\n\r\n\xff\xfe\x00\r\n")),
        (S, b"250 queued \xe9\r\n"),
    ]
    events, _ = tr(transcript)
    assert of(events, ob.GREETING)[0]["text"] == "mx.relay.example ESMTP \ufffdt\ufffd \ufffd"
    assert of(events, ob.HELO)[0]["name"] == "hôte.example"
    assert of(events, ob.MAIL)[0]["address"] == "jürgen@client.example"
    assert of(events, ob.RCPT)[0]["address"] == "\ufffd\ufffd@trap.example"
    (message,) = of(events, ob.MESSAGE)
    assert message["subject"] == "caf\ufffd café" and message["message_id"] == "<\ufffd@x>"


def test_data_after_eof_or_close_is_misuse():
    observer = Observer(relay_ip=RELAY_IP)
    observer.client_data(b"")
    observer.client_data(b"")
    with pytest.raises(RuntimeError):
        observer.client_data(b"NOOP\r\n")
    observer.close()
    observer.close()
    with pytest.raises(RuntimeError):
        observer.server_data(b"220 mx\r\n")


def test_the_state_table():
    # Every state can give up, and nothing leaves OPAQUE.
    for state in ob.ClientState:
        assert ob.TRANSITIONS[state, ob.Step.GIVE_UP] is ob.ClientState.OPAQUE
    assert {new for (old, _), new in ob.TRANSITIONS.items() if old is ob.ClientState.OPAQUE} == {ob.ClientState.OPAQUE}
    # Every state but OPAQUE can be reached, and left.
    reached = {new for new in ob.TRANSITIONS.values()}
    left = {old for (old, step), new in ob.TRANSITIONS.items() if new is not old}
    assert reached == set(ob.ClientState) and left == set(ob.ClientState) - {ob.ClientState.OPAQUE}


def test_reply_formatting_round_trip():
    reply = Reply(250, ("mx.relay.example", "PIPELINING", "8BITMIME"))
    wire = reply.to_bytes()
    assert wire == b"250-mx.relay.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    parsed = [parse_reply_line(line) for line in wire.split(b"\r\n")[:-1]]
    assert [(p.code, p.final, p.text) for p in parsed] == [
        (250, False, b"mx.relay.example"), (250, False, b"PIPELINING"), (250, True, b"8BITMIME"),
    ]  # fmt: skip
    assert parse_reply_line(b"250") == parse_reply_line(b"250 ") and parse_reply_line(b"2500") is None


# Every transcript, split at random points: same events, same forwarded bytes.

TRANSCRIPTS: dict[str, tuple[Transcript, dict]] = {
    "postfix": (POSTFIX, {}),
    "postfix masked": (POSTFIX, {"mask_name": "looper.invalid"}),
    "postfix no strip": (POSTFIX, {"strip_starttls": False}),
    "exim": (exim(EXIM_MESSAGE), {"mask_name": "looper.invalid"}),
    "pregreet": (
        [(C, b"EHLO client.example\r\nNOOP\r\n"), (S, b"220 mx ESMTP\r\n250-mx\r\n250-STARTTLS\r\n250 8BITMIME\n250 2.0.0 Ok\r\n")],
        {"mask_name": "looper.invalid"},
    ),
    "smuggling": (
        [
            (S, b"220 mx\r\n"),
            (C, b"DATA\r\n"),
            (S, b"354 go\r\n"),
            (C, b"Subject: x\r\n\r\n..a\n.\nb\r\n.\rc\r\n...\r\n.\r\nQUIT\r\n"),
            (S, b"250 queued\r\n221 bye\r\n"),
        ],
        {},
    ),
    "auth": (
        [
            (S, b"220 mx\r\n"),
            (C, b"AUTH LOGIN Ym9i\r\naHVudGVyMg==\r\nMAIL FROM:<s@client.example>\r\n"),
            (S, b"334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n"),
        ],
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_splits(name: str, data: st.DataObject):
    transcript, options = TRANSCRIPTS[name]
    expected = run(transcript, whole, **options)
    split: Transcript = []
    for side, chunk in transcript:
        cuts = data.draw(st.lists(st.integers(0, len(chunk)), max_size=6, unique=True))
        split += [(side, piece) for piece in at(cuts)(chunk)]
    assert run(split, whole, **options) == expected


# Hostile input: never raises, stays bounded, and changes no byte it does not report.

CLIENT_WORDS = [
    b"EHLO x\r\n", b"HELO x\r\n", b"MAIL FROM:<a@b>\r\n", b"MAIL\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n",
    b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT x\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n",
    b"AUTH LOGIN\r\n", b"AUTH PLAIN eA==\r\n", b"Subject: x\r\n", b"Received: x\r\n", b"Message-ID: <m>\r\n",
    b" folded\r\n", b"\r\n", b".\r\n", b"..\r\n", b"\r\n.\r\n", b"\n.\n", b"hello", b"\r", b"\n", b"\x00\xff",
]  # fmt: skip
SERVER_WORDS = [
    b"220 hi\r\n", b"250 ok\r\n", b"250-x\r\n", b"250-STARTTLS\r\n", b"250 STARTTLS\r\n", b"354 go\r\n",
    b"334 VXNlcm5hbWU6\r\n", b"235 ok\r\n", b"220 tls\r\n", b"421 bye\r\n", b"550 no\r\n", b"\r\n", b"junk\r\n",
    b"25", b"0 x\r\n", b"250\n", b"250\rx\r\n", b"\xff",
]  # fmt: skip


def stream(words: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.lists(st.sampled_from(words), max_size=12).map(b"".join), st.binary(max_size=64))


conversations = st.lists(
    st.one_of(st.tuples(st.just(C), stream(CLIENT_WORDS)), st.tuples(st.just(S), stream(SERVER_WORDS))),
    max_size=24,
)
# Half of them start greeted with EHLO sent, so that the held EHLO reply is reached often.
conversations = st.one_of(
    conversations, conversations.map(lambda rest: [(S, b"220 hi\r\n"), (C, b"EHLO x\r\n"), *rest])
)
observer_options = st.fixed_dictionaries(
    {"strip_starttls": st.booleans(), "mask_name": st.sampled_from([None, "looper.invalid"])}
)


@settings(max_examples=300, deadline=None)
@given(transcript=conversations, options=observer_options)
def test_hostile_conversations(transcript: Transcript, options: dict):
    events, forwarded = run(transcript, whole, **options)  # run() checks the buffer bound at every step
    assert run(transcript, one_byte_at_a_time, **options) == (events, forwarded)
    rewritten = [e for e in of(events, ob.EHLO_REPLY) if e["starttls_stripped"] or e["masked_as"]]
    rewritten += [e for e in of(events, ob.GREETING) + of(events, ob.HELO) if e["masked_as"]]
    if not rewritten:
        assert forwarded == server_bytes(transcript)
    assert len(of(events, ob.UNPARSED)) <= 1


@settings(max_examples=100, deadline=None)
@given(transcript=conversations)
def test_unchanged_when_not_rewriting(transcript: Transcript):
    observer = Observer(relay_ip=RELAY_IP, strip_starttls=False)
    for side, data in transcript:
        if not data:
            continue
        if side == C:
            observer.client_data(data)
        else:
            assert observer.server_data(data) is data


def test_big_inputs_stay_bounded():
    observer = Observer(relay_ip=RELAY_IP)
    observer.server_data(b"220 mx\r\n")
    observer.client_data(b"DATA\r\n")
    observer.server_data(b"354 go\r\n")
    observer.client_data(b"Subject: " + b"s" * 1_000_000)  # a header line without end
    for _ in range(20):
        observer.client_data(b"x" * 100_000)
        assert observer._buffered_bytes() <= BUFFER_BOUND
    observer.client_data(b"\r\n.\r\n")
    observer.server_data(b"250 queued\r\n")
    (message,) = of(observer.events(), ob.MESSAGE)
    assert message["size"] == 3_000_011 and message["headers_truncated"]


big_conversations = st.lists(
    st.tuples(
        st.sampled_from([C, S]),
        st.tuples(st.sampled_from(CLIENT_WORDS + SERVER_WORDS), st.integers(1, 3000)).map(lambda t: t[0] * t[1]),
    ),
    max_size=8,
).map(lambda rest: [(S, b"220 hi\r\n"), (C, b"EHLO x\r\n"), *rest])


@settings(max_examples=50, deadline=None)
@given(transcript=big_conversations, cuts=st.lists(st.integers(0, 1 << 16), max_size=5))
def test_long_hostile_conversations_stay_bounded(transcript: Transcript, cuts: list[int]):
    assert run(transcript, at(cuts)) == run(transcript)  # run() checks the bound after every read



@settings(max_examples=150, deadline=None)
@given(transcript=conversations, keep=st.integers(1, 200))
def test_kept_content_is_bounded_and_is_exactly_each_whole_message(transcript: Transcript, keep: int):
    """capture.reflected: the content kept is what the message's sha256 says,
    never more than keep_bytes a message under way, and none after drop_kept."""
    observer = Observer(relay_ip=RELAY_IP, keep_bytes=keep)
    kept = []
    for side, data in transcript:
        if not data:
            continue
        if side == C:
            observer.client_data(data)
        else:
            observer.server_data(data)
        assert observer.kept_bytes() <= 3 * keep + sum(len(c) for _, _, c in observer._kept)
        kept += observer.take_kept()
        assert observer.kept_bytes() <= 3 * keep
    messages = {e["sha256"]: e for e in of(observer.events(), ob.MESSAGE)}
    for sha256, chain, content in kept:
        assert hashlib.sha256(content).hexdigest() == sha256 and len(content) <= keep
        assert messages[sha256]["complete"] and messages[sha256]["chain"] == chain
    observer.drop_kept()
    assert observer.kept_bytes() == 0
