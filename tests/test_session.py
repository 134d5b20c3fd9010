"""The session adapter on real sockets, driving a toy machine.

The toy speaks a line protocol just rich enough to use every action: it
greets, echoes lines, answers "DELAY s" late, "TLS" with a 220 and
StartTLS, "STORE x" with Store, "QUIT" with a 221 and Close, "BOOM" with an
exception, and silence with a 421 and Close. Like an SMTP server it throws
away whatever came before TLS was up (CVE-2011-0411).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from looper.eventlog import EventLog, SessionInfo
from looper.events import Event
from looper.net.capture import MessageStore, Stored
from looper.net.session import ServerSession
from looper.net.splice import SpliceEnd
from looper.net.tls import CERT_VALID_DAYS, TLSSetupError, server_context
from looper.proto.actions import Close, CloseReason, Send, StartTLS, Store

HOST = "127.0.0.1"
GREETING = b"220 toy ready\r\n"


class ToyMachine:
    def __init__(self, idle_timeout_s: float = 10.0) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.paused = False
        self.calls: list[tuple] = []  # what the adapter told it, in order
        self.connections_closed = 0
        self._buffer = bytearray()
        self._actions: list = [Send(GREETING)]
        self._events: list[Event] = []

    def receive_data(self, data: bytes) -> None:
        self.calls.append(("data", data))
        if not data:
            self._events.append(Event("toy.eof"))
            self._actions += [Send(b"221 bye\r\n"), Close(CloseReason.CLOSED_BY_CLIENT)]
            return
        self._buffer += data
        self._lines()

    def _lines(self) -> None:
        while not self.paused and b"\n" in self._buffer:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            self._buffer = bytearray(rest)
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        self._events.append(Event("toy.line", {"line": line.decode("latin-1")}))
        if line == b"QUIT":
            self._actions += [Send(b"221 bye\r\n"), Close(CloseReason.CLOSED_BY_SERVER)]
        elif line.startswith(b"DELAY "):
            self._actions.append(Send(b"250 late\r\n", delay_s=float(line[6:])))
        elif line == b"TLS":
            self._actions += [Send(b"220 go ahead\r\n"), StartTLS()]
            self.paused = True
        elif line.startswith(b"STORE "):
            content = line[6:]
            self._actions.append(Store(content, hashlib.sha256(content).hexdigest()))
            self.paused = True
        elif line == b"BOOM":
            raise RuntimeError("toy exploded")
        else:
            self._actions.append(Send(b"250 " + line + b"\r\n"))

    def timed_out(self) -> None:
        self.calls.append(("timed_out",))
        self._actions += [Send(b"421 timeout\r\n"), Close(CloseReason.TIMEOUT)]

    def shutting_down(self, reason: CloseReason) -> None:
        self.calls.append(("shutting_down", reason))
        self._actions += [Send(b"421 going down\r\n"), Close(reason)]

    def connection_closed(self) -> None:
        self.connections_closed += 1  # not in calls: those are the conversation

    def tls_started(self, version: str, cipher: str) -> None:
        self.calls.append(("tls_started", version, cipher))
        self._buffer.clear()  # nothing sent in plain text counts after TLS
        self.paused = False

    def stored(self, path: str) -> None:
        self.calls.append(("stored", path))
        self._actions.append(Send(b"250 stored\r\n"))
        self.paused = False
        self._lines()

    def store_failed(self, reason: str) -> None:
        self.calls.append(("store_failed", reason))
        self._actions.append(Send(b"451 not stored\r\n"))
        self.paused = False
        self._lines()

    def actions(self) -> list:
        actions, self._actions = self._actions, []
        return actions

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(json.loads(record.msg))


class Served:
    """A listener whose connections are toy sessions: made by the listener
    (connection_made) or, with `attach_after` set, taken over from a holding
    protocol once it has seen that many bytes (or EOF), like the reflect
    path's fallback."""

    def __init__(self, *, store, tls_context, idle_timeout_s, attach_after) -> None:
        self.store = store
        self.tls_context = tls_context
        self.idle_timeout_s = idle_timeout_s
        self.attach_after = attach_after
        self.lines = _Lines()
        self.eventlog = EventLog("test.sensor", [self.lines])
        self.sessions: list[ServerSession] = []
        self.closed: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    def session(self) -> ServerSession:
        session = ServerSession(
            ToyMachine(self.idle_timeout_s),
            info=SessionInfo(f"s{len(self.sessions)}", "toy", HOST, 0, HOST, self.port),
            eventlog=self.eventlog,
            store=self.store,
            tls_context=self.tls_context,
            on_closed=lambda *closed: self.closed.put_nowait(closed),
        )
        self.sessions.append(session)
        return session

    def protocol(self) -> asyncio.BaseProtocol:
        return self.session() if self.attach_after is None else _Holder(self)

    async def next_closed(self) -> tuple[str, int, int]:
        return await asyncio.wait_for(self.closed.get(), 5)

    def events(self, eventid: str) -> list[dict]:
        return [e for e in self.lines.events if e["eventid"] == eventid]


class _Holder(SpliceEnd):
    """The reflect path's inbound end: it keeps what the client sends while
    the trap dials back, then hands the connection over."""

    __slots__ = ("served",)

    def __init__(self, served: Served) -> None:
        super().__init__()
        self.served = served

    def buffer_updated(self, nbytes: int) -> None:
        super().buffer_updated(nbytes)
        if len(self.early) >= self.served.attach_after:
            self.transport.pause_reading()  # as the reflect path may leave it
            self.served.session().attach(self.transport, bytes(self.early))

    def eof_received(self) -> bool:
        self.served.session().attach(self.transport, bytes(self.early), early_eof=True)
        return True


@pytest.fixture
async def serve():
    running: list[Served] = []

    async def start(
        *, store=None, tls_context=None, idle_timeout_s=10.0, attach_after=None, implicit_tls=None
    ) -> Served:
        served = Served(store=store, tls_context=tls_context, idle_timeout_s=idle_timeout_s, attach_after=attach_after)
        served.server = await asyncio.get_running_loop().create_server(served.protocol, HOST, 0, ssl=implicit_tls)
        served.port = served.server.sockets[0].getsockname()[1]
        running.append(served)
        return served

    yield start
    for served in running:
        served.server.close()
        for session in served.sessions:
            session.shutdown()
        await served.server.wait_closed()


@pytest.fixture(scope="module")
def tls_folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_context(tls_folder):
    return server_context(None, None, hostname="mail.example.test", folder=tls_folder)


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def connect(served: Served):
    return await asyncio.open_connection(HOST, served.port)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """All that comes before the end (an abort may end it with a reset)."""
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            got += chunk
    except ConnectionResetError:
        pass
    return got


# -- sending, batching, delays ---------------------------------------------------


async def test_greeting_then_pipelined_replies_leave_in_one_write(serve):
    served = await serve()
    loop = asyncio.get_running_loop()
    with socket.create_connection((HOST, served.port)) as sock:
        sock.setblocking(False)
        assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 5) == GREETING
        session = served.sessions[0]
        session.transport = counting = WriteCounter(session.transport)  # uvloop's write cannot be patched
        await loop.sock_sendall(sock, b"one\r\ntwo\r\nthree\r\n")
        together = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
    assert together == b"250 one\r\n250 two\r\n250 three\r\n"
    assert counting.writes == [together]


class WriteCounter:
    """A transport that notes what each write() got, and passes all on."""

    def __init__(self, transport) -> None:
        self._transport, self.writes = transport, []

    def write(self, data) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name):
        return getattr(self._transport, name)


async def test_a_delayed_send_holds_everything_after_it(serve):
    served = await serve()
    reader, writer = await connect(served)
    assert await reader.readline() == GREETING
    writer.write(b"DELAY 0.2\r\nafter\r\nDELAY 0.05\r\nlast\r\nQUIT\r\n")
    got = await read_until_closed(reader)
    assert got == b"250 late\r\n250 after\r\n250 late\r\n250 last\r\n221 bye\r\n"
    assert (await served.next_closed())[0] == "closed_by_server"


async def test_lines_that_come_during_a_delay_wait_behind_it(serve):
    served = await serve()
    reader, writer = await connect(served)
    writer.write(b"DELAY 0.3\r\n")
    await asyncio.sleep(0.05)
    session = served.sessions[0]
    assert not session.transport.is_reading()  # nothing is read while an action is pending
    writer.write(b"x\r\n")
    writer.write_eof()
    assert await read_until_closed(reader) == GREETING + b"250 late\r\n250 x\r\n221 bye\r\n"
    assert (await served.next_closed())[0] == "closed_by_client"


# -- taking over an accepted connection -----------------------------------------


async def test_early_bytes_given_to_attach_come_first(serve):
    served = await serve(attach_after=len(b"one\r\ntwo\r\n"))
    reader, writer = await connect(served)
    writer.write(b"one\r\ntwo\r\n")
    assert await reader.readexactly(len(GREETING + b"250 one\r\n250 two\r\n")) == GREETING + b"250 one\r\n250 two\r\n"
    writer.write(b"three\r\n")  # reading was resumed after the takeover
    assert await reader.readline() == b"250 three\r\n"
    writer.write(b"QUIT\r\n")
    assert await read_until_closed(reader) == b"221 bye\r\n"
    bytes_in = len(b"one\r\ntwo\r\nthree\r\nQUIT\r\n")
    bytes_out = len(GREETING + b"250 one\r\n250 two\r\n250 three\r\n221 bye\r\n")
    assert await served.next_closed() == ("closed_by_server", bytes_in, bytes_out)
    machine = served.sessions[0].machine
    assert machine.calls[0] == ("data", b"one\r\ntwo\r\n")


async def test_an_early_eof_given_to_attach_is_heard_after_the_early_bytes(serve):
    served = await serve(attach_after=1 << 20)
    reader, writer = await connect(served)
    writer.write(b"hello\r\n")
    writer.write_eof()
    assert await read_until_closed(reader) == GREETING + b"250 hello\r\n221 bye\r\n"
    assert (await served.next_closed())[0] == "closed_by_client"
    assert [e["eventid"] for e in served.lines.events] == ["toy.line", "toy.eof"]


# -- timeouts and ends ----------------------------------------------------------


async def test_silence_times_out(serve):
    served = await serve(idle_timeout_s=0.3)
    reader, writer = await connect(served)
    writer.write(b"ping\r\n")  # activity moves the deadline; the timer follows lazily
    assert await read_until_closed(reader) == GREETING + b"250 ping\r\n421 timeout\r\n"
    assert (await served.next_closed())[0] == "timeout"
    assert served.sessions[0].machine.calls[-1] == ("timed_out",)


async def test_a_client_reset_is_reported(serve):
    served = await serve()
    reader, writer = await connect(served)
    assert await reader.readline() == GREETING
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    assert (await served.next_closed())[0] == "reset_by_client"


async def test_shutdown_closes_now_and_reports_once(serve):
    served = await serve()
    reader, writer = await connect(served)
    assert await reader.readline() == GREETING
    writer.write(b"DELAY 5\r\n")
    await asyncio.sleep(0.05)
    session = served.sessions[0]
    session.shutdown()
    session.shutdown()
    assert await served.next_closed() == ("shutdown", 9, len(GREETING))
    assert await read_until_closed(reader) == b""
    await asyncio.sleep(0.05)
    assert served.closed.empty()


async def test_an_exception_in_the_machine_is_logged_and_closes(serve):
    served = await serve()
    reader, writer = await connect(served)
    writer.write(b"BOOM\r\n")
    assert await read_until_closed(reader) == GREETING
    assert (await served.next_closed())[0] == "error"
    assert served.events("looper.session.error")[0]["error"] == "RuntimeError: toy exploded"


async def test_a_client_that_does_not_read_is_not_read_from(serve, monkeypatch):
    monkeypatch.setattr("looper.net.session.WRITE_HIGH_WATER_BYTES", 4096)
    monkeypatch.setattr("looper.net.session.WRITE_LOW_WATER_BYTES", 1024)
    served = await serve()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (HOST, served.port))
    while not served.sessions or served.sessions[0].transport is None:
        await asyncio.sleep(0.01)
    session = served.sessions[0]
    session.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    line = b"x" * 1000 + b"\r\n"
    sending = loop.create_task(loop.sock_sendall(sock, line * 4000))
    for _ in range(500):
        if not session.transport.is_reading():
            break
        await asyncio.sleep(0.01)
    assert not session.transport.is_reading()
    # Reading all the replies lets the server read all the lines.
    expected = len(GREETING) + 4000 * (len(line) + 4)
    received = 0
    while received < expected:
        received += len(await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5))
    await sending
    assert received == expected
    assert session.transport.is_reading()
    sock.close()
    assert (await served.next_closed())[0] == "closed_by_client"


# -- STARTTLS -------------------------------------------------------------------


async def test_starttls_upgrades_and_the_conversation_goes_on(serve, tls_context):
    served = await serve(tls_context=tls_context)
    reader, writer = await connect(served)
    assert await reader.readline() == GREETING
    writer.write(b"TLS\r\nsent in plain text\r\n")
    assert await reader.readline() == b"220 go ahead\r\n"
    await writer.start_tls(client_context())
    certificate = x509.load_der_x509_certificate(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    assert certificate.subject.rfc4514_string() == "CN=mail.example.test"
    writer.write(b"secret\r\nQUIT\r\n")
    assert await read_until_closed(reader) == b"250 secret\r\n221 bye\r\n"
    assert (await served.next_closed())[0] == "closed_by_server"
    established = served.events("looper.tls.established")
    assert established[0]["version"] == "TLSv1.3" and established[0]["cipher"].startswith("TLS_")
    machine = served.sessions[0].machine
    assert ("tls_started", established[0]["version"], established[0]["cipher"]) in machine.calls
    assert [e["line"] for e in served.events("toy.line")] == ["TLS", "secret", "QUIT"]


async def test_bytes_with_the_clients_finished_reach_the_machine_after_tls_started(serve, tls_context):
    # The client's Finished and its first command in one segment: the TLS
    # layer hands the command over before the handshake's waiter returns.
    served = await serve(tls_context=tls_context)
    loop = asyncio.get_running_loop()
    with socket.create_connection((HOST, served.port)) as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        while GREETING + b"220 go ahead\r\n" not in pending:
            if not pending:
                await loop.sock_sendall(sock, b"TLS\r\n")
            pending += await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context().wrap_bio(incoming, outgoing)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    await loop.sock_sendall(sock, outgoing.read())
                incoming.write(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
        tls.write(b"first\r\n")
        await loop.sock_sendall(sock, outgoing.read())  # Finished + "first", together
        reply = b""
        while not reply.endswith(b"\r\n"):
            try:
                reply += tls.read(4096)
            except ssl.SSLWantReadError:
                incoming.write(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
    assert reply == b"250 first\r\n"
    calls = served.sessions[0].machine.calls
    started = next(i for i, call in enumerate(calls) if call[0] == "tls_started")
    assert ("data", b"first\r\n") in calls[started:]


async def test_a_listener_with_implicit_tls_hands_its_sessions_the_tls_transport(serve, tls_context):
    served = await serve(implicit_tls=tls_context)
    reader, writer = await asyncio.open_connection(HOST, served.port, ssl=client_context())
    assert await reader.readline() == GREETING
    writer.write(b"hello\r\n")
    assert await reader.readline() == b"250 hello\r\n"
    writer.write(b"QUIT\r\n")
    assert await read_until_closed(reader) == b"221 bye\r\n"
    assert (await served.next_closed())[0] == "closed_by_server"


async def test_a_failed_handshake_is_logged_and_closes(serve, tls_context):
    served = await serve(tls_context=tls_context)
    reader, writer = await connect(served)
    writer.write(b"TLS\r\n")
    assert await reader.readexactly(len(GREETING) + 14) == GREETING + b"220 go ahead\r\n"
    writer.write(b"this is no ClientHello\r\n")
    assert await read_until_closed(reader) == b""
    assert (await served.next_closed())[0] == "tls_failed"
    assert served.events("looper.tls.failed")[0]["error"]


async def test_starttls_without_a_certificate_fails_cleanly(serve):
    served = await serve(tls_context=None)
    reader, writer = await connect(served)
    writer.write(b"TLS\r\n")
    assert await read_until_closed(reader) == GREETING + b"220 go ahead\r\n"
    assert (await served.next_closed())[0] == "tls_failed"
    assert "no TLS certificate" in served.events("looper.tls.failed")[0]["error"]


# -- storing --------------------------------------------------------------------


async def test_a_stored_message_is_on_disk_before_the_reply(serve, tmp_path):
    store = MessageStore(str(tmp_path))
    try:
        served = await serve(store=store)
        reader, writer = await connect(served)
        content = b"Subject: hi \xff\x00 body"
        writer.write(b"STORE " + content + b"\r\nafter\r\n")
        assert await reader.readexactly(len(GREETING) + 12) == GREETING + b"250 stored\r\n"
        path = tmp_path / "messages" / f"{hashlib.sha256(content).hexdigest()}.eml"
        assert path.read_bytes() == content
        assert await reader.readline() == b"250 after\r\n"  # pipelined behind the store
        assert ("stored", str(path)) in served.sessions[0].machine.calls
    finally:
        store.close()


async def test_a_failed_store_is_told_to_the_machine(serve, tmp_path):
    store = MessageStore(str(tmp_path))
    shutil.rmtree(store.folder)
    store.folder.write_text("a file where the folder was")
    try:
        served = await serve(store=store)
        reader, writer = await connect(served)
        writer.write(b"STORE lost\r\nafter\r\n")
        assert await reader.readexactly(len(GREETING) + 16) == GREETING + b"451 not stored\r\n"
        assert await reader.readline() == b"250 after\r\n"
        failed = [call for call in served.sessions[0].machine.calls if call[0] == "store_failed"]
        assert "Not a directory" in failed[0][1]
    finally:
        store.close()


async def test_no_store_is_a_failed_store(serve):
    served = await serve(store=None)
    reader, writer = await connect(served)
    writer.write(b"STORE x\r\n")
    assert await reader.readexactly(len(GREETING) + 16) == GREETING + b"451 not stored\r\n"
    assert ("store_failed", "no message store configured") in served.sessions[0].machine.calls


async def test_a_store_under_way_when_the_client_leaves_is_finished_first(serve):
    class SlowStore:
        def __init__(self) -> None:
            self.release = asyncio.Event()

        async def put(self, content: bytes, sha256: str) -> Stored:
            await self.release.wait()
            return Stored(f"/nowhere/{sha256}.eml", duplicate=False)

    store = SlowStore()
    served = await serve(store=store)
    reader, writer = await connect(served)
    writer.write(b"STORE late\r\n")
    assert await reader.readline() == GREETING
    writer.close()
    await asyncio.sleep(0.05)
    assert served.closed.empty()  # the machine hears of its message first
    store.release.set()
    assert (await served.next_closed())[0] == "closed_by_client"
    # Reading was paused while storing: the end is seen after the outcome.
    assert [call[0] for call in served.sessions[0].machine.calls[-2:]] == ["stored", "data"]
    assert served.sessions[0].machine.calls[-1] == ("data", b"")


async def test_shutdown_in_the_middle_of_a_handshake(serve, tls_context):
    served = await serve(tls_context=tls_context)
    reader, writer = await connect(served)
    writer.write(b"TLS\r\n")
    assert await reader.readexactly(len(GREETING) + 14) == GREETING + b"220 go ahead\r\n"
    writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and no more
    await asyncio.sleep(0.05)
    served.sessions[0].shutdown()
    assert (await served.next_closed())[0] == "shutdown"
    assert await read_until_closed(reader) == b""
    assert not served.events("looper.tls.failed")


# -- the certificate -------------------------------------------------------------


def test_the_self_signed_certificate_looks_like_debians_snakeoil(tls_context, tls_folder):
    pem = os.path.join(tls_folder, "tls", "mail.example.test.pem")
    key = os.path.join(tls_folder, "tls", "mail.example.test.key")
    certificate = x509.load_pem_x509_certificate(Path(pem).read_bytes())
    name = "CN=mail.example.test"
    assert certificate.subject.rfc4514_string() == name and certificate.issuer.rfc4514_string() == name
    assert certificate.public_key().key_size == 2048
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA256)
    assert certificate.version == x509.Version.v3
    valid = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert valid == datetime.timedelta(days=CERT_VALID_DAYS)
    assert [type(ext.value) for ext in certificate.extensions] == [
        x509.BasicConstraints,
        x509.SubjectAlternativeName,
        x509.SubjectKeyIdentifier,
    ]
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert Path(key).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_the_self_signed_certificate_is_kept_and_reused(tls_context, tls_folder):
    pem = os.path.join(tls_folder, "tls", "mail.example.test.pem")
    before = Path(pem).read_bytes()
    server_context(None, None, hostname="mail.example.test", folder=tls_folder)
    assert Path(pem).read_bytes() == before


def test_a_long_host_name_gets_its_first_label_as_common_name(tmp_path):
    hostname = "mx." + "a" * 60 + ".example.test"
    server_context(None, None, hostname=hostname, folder=str(tmp_path))
    certificate = x509.load_pem_x509_certificate((tmp_path / "tls" / f"{hostname}.pem").read_bytes())
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mx"
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [hostname]


def test_a_configured_certificate_is_loaded_and_a_bad_one_is_named(tls_context, tls_folder, tmp_path):
    pem = os.path.join(tls_folder, "tls", "mail.example.test.pem")
    key = os.path.join(tls_folder, "tls", "mail.example.test.key")
    context = server_context(pem, key, hostname="ignored", folder=str(tmp_path))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert not (tmp_path / "tls").exists()
    missing = str(tmp_path / "missing.key")
    with pytest.raises(TLSSetupError, match="missing.key"):
        server_context(pem, missing, hostname="ignored", folder=str(tmp_path))
    with pytest.raises(TLSSetupError, match="mail.example.test.pem"):
        server_context(pem, pem, hostname="ignored", folder=str(tmp_path))  # no key in it


def test_the_server_reads_its_certificate_as_check_config_does(tls_context, tls_folder, tmp_path):
    """One way to read the pair (config.load_tls_files): the same words from
    both, and a key with a passphrase is refused, never asked for on a terminal."""
    from cryptography.hazmat.primitives import serialization

    from looper.config import ConfigError, check_runtime, parse_config

    pem = os.path.join(tls_folder, "tls", "mail.example.test.pem")
    key = serialization.load_pem_private_key(Path(tls_folder, "tls", "mail.example.test.key").read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))
    said = []
    for cert_path, key_path in ((pem, str(locked)), (pem, pem), (pem, str(tmp_path / "missing.key"))):
        with pytest.raises(TLSSetupError) as served:
            server_context(cert_path, key_path, hostname="ignored", folder=str(tmp_path))
        config = parse_config(f"log: {{dir: '{tmp_path}'}}\nsmtp: {{tls_cert: {cert_path}, tls_key: {key_path}}}\n", "f.yaml")
        with pytest.raises(ConfigError) as checked:
            check_runtime(config, "f.yaml")
        assert str(checked.value) == f"f.yaml: smtp.tls_key: {served.value}"
        said.append(str(served.value))
    assert "needs a passphrase, which looper cannot ask for" in said[0]


def test_the_exim_certificate_is_made_per_session_for_two_hours(tmp_path):
    import ssl as ssl_module

    from looper.net.tls import EXIM_CERT_SERIAL, EximSelfSigned

    maker = EximSelfSigned("mx.exim.test", str(tmp_path))
    now = datetime.datetime(2026, 12, 3, 5, 0, 7, 123456, tzinfo=datetime.timezone.utc)
    certificate = x509.load_pem_x509_certificate(maker.certificate_pem(now))
    assert certificate.subject.rfc4514_string() == "CN=mx.exim.test,O=Exim Developers,C=UK"
    assert certificate.issuer == certificate.subject and certificate.serial_number == EXIM_CERT_SERIAL == 1 << 56
    assert certificate.not_valid_before_utc == now.replace(microsecond=0)
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc == datetime.timedelta(hours=2)
    assert list(certificate.extensions) == [] and certificate.public_key().key_size == 2048
    assert isinstance(maker.context, ssl_module.SSLContext) and maker.context.sni_callback is not None
    assert not [p for p in (tmp_path / "tls").iterdir()], "the file the ssl module loaded from is left behind"
