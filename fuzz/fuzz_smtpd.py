"""Fuzz target: the emulated SMTP server machine (looper/proto/smtpd.py).

The driver plays the adapter (looper/net/session.py): it carries out Send,
StartTLS, Store and Close, and, as the adapter may, lets a Store finish
only after more input or the client's EOF came in.

Input: three settings bytes, then records.
  byte 0    the persona (index into sorted PERSONAS)
  byte 1    bit 0 harvester, 1 relay authenticated, 2 no TLS, 3 client on
            implicit TLS, 4 client without a DNS name, 5 client's local
            address known, 6 small limits (2000-byte messages, 3
            recipients), 7 accept_after 2
  byte 2    bits 0-2 AUTH mechanisms (PLAIN, LOGIN, CRAM-MD5 with
            DIGEST-MD5; none: AUTH off), 3-4 earlier failed logins, 5 local_domains set, 6 a
            shared message memory budget of 3000 bytes, 7 pregreet bytes
A record is an op byte:
  bits 0-1  0 client bytes, 1 client bytes repeated (one more byte k:
            1 + k times), 2 the idle timer fires, 3 client EOF
  bit 2     a Store during this record fails
  bit 3     a Store during this record finishes only after the next record
  bits 4-7  c: bytes given whole (0) or in pieces of c*c bytes
then, for bytes records, a length byte n and n bytes.

Beyond "never raises", it checks: every Send is whole reply lines; a Store's
sha256 is its content's and it is within the size limit; what the machine
holds stays bounded; an AUTH command is logged without its initial
response; every event's fields are JSON; after EOF the machine closes, and
once the connection is gone (connection_closed) the session holds nothing
of the shared message memory budget; and,
unless STARTTLS dropped pipelined input, input was refused while waiting
or a persona's synchronization check fired (Exim and sendmail refuse input
that came before its reply was due: whether it had, depends on the cut by
design), the same records given whole yield the same replies, events and
stored messages.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass, field, replace

from _harness import Reader, check, instrumented, main

with instrumented(__name__ == "__main__"):
    from looper.proto.actions import Close, Send, StartTLS, Store
    from looper.proto.budget import MessageMemory
    from looper.proto.personas import PERSONAS
    from looper.proto.reply import parse_reply_line
    from looper.proto.smtpd import MAX_WAITING_INPUT_BYTES, ClientInfo, Mode, SmtpServer, SmtpSettings

PERSONA_NAMES = sorted(PERSONAS)
MECHANISMS = (("PLAIN",), ("LOGIN",), ("CRAM-MD5", "DIGEST-MD5"))
DATA, REPEATED, TIMEOUT, EOF = range(4)
MAX_INPUT_BYTES = 1 << 20
MAX_CALLS_PER_RECORD = 1024


class Environment:
    def __init__(self) -> None:
        self.issued = 0

    def now_s(self) -> float:
        return 1_795_000_000.043981

    def serial(self) -> int:
        self.issued += 1
        return 0xE00000 + self.issued

    def cram_challenge(self) -> str:
        return "<1234567890123456.1795000000@mx.trap.example.net>"

    def random_bytes(self, count: int) -> bytes:
        return bytes(range(count))  # the same in the whole and the cut run

    def date(self) -> str:
        return "Sun, 22 Nov 2026 10:00:00 +0000"


@dataclass
class Record:
    kind: int
    data: bytes = b""
    store_fails: bool = False
    store_later: bool = False
    cut: int = 0


def parse(data: bytes) -> tuple[SmtpSettings, ClientInfo, list[Record]]:
    """The settings (with a message_memory budget to copy per run, if any), client and records."""
    reader = Reader(data)
    persona = PERSONAS[PERSONA_NAMES[reader.byte() % len(PERSONA_NAMES)]]
    flags, more = reader.byte(), reader.byte()
    small = bool(flags & 64)
    settings = SmtpSettings(
        hostname="mx.trap.example.net",
        persona=persona,
        mode="harvester" if flags & 1 else "open_relay",
        relay="authenticated" if flags & 2 else "open",
        credentials=frozenset({("admin", "admin"), ("user@trap.example.net", "secret")}),
        accept_after=2 if flags & 128 else None,
        auth_mechanisms=tuple(m for i, ms in enumerate(MECHANISMS) if more & (1 << i) for m in ms),
        max_message_bytes=2000 if small else persona.default_max_message_bytes,
        max_recipients=3 if small else 1000,
        tls_available=not flags & 4,
        local_domains=("trap.example.net", "[192.0.2.1]") if more & 32 else None,
        message_memory=MessageMemory(3000) if more & 64 else None,
    )
    client = ClientInfo(
        "192.0.2.7",
        name=None if flags & 16 else "spam.example.org",
        earlier_auth_failures=(more >> 3) & 3,
        tls=bool(flags & 8),
        local_ip="192.0.2.1" if flags & 32 else None,
        pregreet_bytes=9 if more & 128 else 0,
    )
    records: list[Record] = []
    total = 0
    while reader:
        op = reader.byte()
        record = Record(op & 3, store_fails=bool(op & 4), store_later=bool(op & 8), cut=op >> 4)
        if record.kind in (DATA, REPEATED):
            record.data = reader.take(reader.byte())
            if record.kind == REPEATED:
                record.data *= 1 + reader.byte()
            total += len(record.data)
            if total > MAX_INPUT_BYTES:
                break
        records.append(record)
    return settings, client, records


@dataclass
class Outcome:
    sent: bytearray = field(default_factory=bytearray)
    events: list = field(default_factory=list)
    stored: list = field(default_factory=list)
    closed: bool = False
    started_tls: bool = False
    refused_while_waiting: bool = False
    out_of_sync: bool = False


class Driver:
    """An adapter whose actions succeed or fail as the input says.

    As looper/net/session.py does, it carries out actions in order, and
    the ones after a Store or StartTLS wait until that is done; the
    machine's actions from then on queue up behind them.
    """

    def __init__(self, settings: SmtpSettings, client: ClientInfo) -> None:
        self.settings = settings
        self.machine = SmtpServer(settings, client, Environment())
        self.outcome = Outcome()
        self.queue: deque = deque()
        self.pending: tuple[Store, bool] | None = None  # a store being written, and whether it will fail
        self.store_fails = self.store_later = False
        self.eof = False
        self.pump()

    def feed(self, data: bytes) -> None:
        self.machine.receive_data(data)
        self.pump()

    def pump(self) -> None:
        outcome, machine, queue = self.outcome, self.machine, self.queue
        queue.extend(machine.actions())
        while queue and self.pending is None:
            action = queue.popleft()
            if type(action) is Send:
                check_reply_lines(action.data)
                outcome.sent += action.data
            elif type(action) is Close:
                outcome.closed = True
            elif type(action) is StartTLS:
                check(not outcome.closed, "StartTLS after Close")
                outcome.started_tls = True
                machine.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256")
                queue.extend(machine.actions())
            elif type(action) is Store:
                check(not outcome.closed, "Store after Close")
                check(hashlib.sha256(action.content).hexdigest() == action.sha256, "Store: sha256 is not the content's")
                check(len(action.content) <= self.settings.max_message_bytes, "Store: over max_message_bytes")
                check(machine.paused, "not paused while a Store is pending")
                outcome.stored.append(action.content)
                self.pending = (action, self.store_fails)
                if not self.store_later:
                    self.resolve()
            else:
                check(False, f"not an action: {action!r}")
        for event in machine.events():
            json.dumps(event.fields, allow_nan=False)
            if event.eventid == "looper.command.input":
                # An AUTH line (its first word, split as the machine splits bytes) is logged
                # without its initial response (the words after the mechanism, as the handler reads them).
                logged = event.fields["input"]
                if [word.upper() for word in logged.encode("utf-8").split()[:1]] == [b"AUTH"]:
                    check(len(logged.split()) <= 2, f"AUTH logged with its initial response: {logged!r}")
            if event.eventid == "looper.smtp.limit" and event.fields.get("limit") == "input while waiting":
                outcome.refused_while_waiting = True
            if event.eventid == "looper.smtp.limit" and event.fields.get("limit") == "synchronization":
                outcome.out_of_sync = True
            outcome.events.append(event)
        check(machine._buffered_bytes() <= MAX_WAITING_INPUT_BYTES + machine.persona.command_line_limit, "input buffer")
        if machine.mode in (Mode.COMMAND, Mode.SASL):
            check(machine._buffered_bytes() <= machine.persona.command_line_limit, "a partial line over the limit is kept")

    def resolve(self) -> None:
        """The pending store is written (or failed): tell the machine."""
        _, fails = self.pending
        self.pending = None
        if fails:
            self.machine.store_failed("No space left on device")
        else:
            self.machine.stored("/logs/messages/x.eml")
        self.queue.extend(self.machine.actions())

    def finish_store(self) -> None:
        if self.pending is not None:
            self.resolve()
            self.pump()


def check_reply_lines(data: bytes) -> None:
    check(data.endswith(b"\r\n"), f"a Send that is not whole lines: {data[-80:]!r}")
    for line in data[:-2].split(b"\r\n"):
        check(parse_reply_line(line) is not None, f"not a reply line: {line[:80]!r}")


def run(settings: SmtpSettings, client: ClientInfo, records: list[Record], *, whole: bool = False) -> Outcome:
    memory = settings.message_memory
    if memory is not None:  # each run its own budget
        memory = MessageMemory(memory.limit_bytes)
        settings = replace(settings, message_memory=memory)
    driver = Driver(settings, client)
    for record in records:
        waiting = driver.pending  # the store the adapter is writing while this record comes in
        driver.store_fails, driver.store_later = record.store_fails, record.store_later
        if record.kind == TIMEOUT:
            if driver.pending is None and not driver.eof:  # the adapter times out the client, not its own work
                driver.machine.timed_out()
                driver.pump()
        elif record.kind == EOF:
            if not driver.eof:
                driver.eof = True
                driver.feed(b"")
        elif not driver.eof:
            cut = 0 if whole else record.cut
            size = max(cut * cut, -(-len(record.data) // MAX_CALLS_PER_RECORD)) if cut else len(record.data)
            for start in range(0, len(record.data), size or 1):
                driver.feed(record.data[start : start + size])
        if waiting is not None and driver.pending is waiting:
            driver.finish_store()
    driver.store_later = False
    driver.finish_store()
    if not driver.eof:
        driver.feed(b"")
    check(driver.outcome.closed, "no Close after the client's EOF")
    driver.machine.connection_closed()  # the adapter, when the connection is gone
    driver.pump()
    if memory is not None:
        check(memory.held_bytes == 0, f"a closed session still holds {memory.held_bytes} bytes of the budget")
    return driver.outcome


def test_one_input(data: bytes) -> None:
    settings, client, records = parse(data)
    as_cut = run(settings, client, records)
    if any(record.cut for record in records):
        whole = run(settings, client, records, whole=True)
        if not any(outcome.started_tls or outcome.refused_while_waiting or outcome.out_of_sync for outcome in (as_cut, whole)):
            check(as_cut.sent == whole.sent, "the replies depend on how the input was cut")
            check(as_cut.stored == whole.stored, "the stored messages depend on how the input was cut")
            check(as_cut.events == whole.events, "the events depend on how the input was cut")


if __name__ == "__main__":
    main("smtpd", test_one_input, dictionary="smtp.dict")
