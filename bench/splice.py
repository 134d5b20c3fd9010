#!/usr/bin/env python3
"""Splice benchmark: looper's reflect path side by side with its peers, in one run.

    .venv/bin/python bench/splice.py                  # full run, both loops (a few minutes)
    .venv/bin/python bench/splice.py --quick          # smoke run: 64 MiB, 1,000 pings, 1,000 sessions
    .venv/bin/python bench/splice.py --loop uvloop --only throughput,latency

What it measures (everything on 127.0.0.0/8, every process bounded in time):

1. Throughput of one bulk transfer client -> server (1 GiB by default),
   median of --repeat runs, interleaved so that drift hits every variant alike:
     (a) direct loopback connection               (a') the same, as SMTP DATA
     (b) socat, default 8 KiB buffer
     (c) socat -b 262144                          (c') the same, as SMTP DATA
     (d) looper, raw bytes, observer on (it gives up on non-SMTP at once)
     (e) looper, SMTP DATA (greeting, EHLO, MAIL, RCPT, DATA, bulk, ".")
     (f) (e) with the observer replaced by a no-op in the trap process
     (p) reference: a bare asyncio Protocol pump with looper's water marks
     (p2) reference: the same as a BufferedProtocol with one shared buffer
   The sender and the receiver are the same small C-speed Python loops
   (sendall / recv_into of 1 MiB buffers) in their own processes for every
   variant; the relay (socat, the pump or the trap) is a third process. CPU
   seconds of the relay per GiB come from /proc (trap, pump) or wait4 (socat).
2. Round-trip latency: 64-byte "NOOP ..." / "250 ..." ping-pongs after a 220
   greeting, one in flight; median and p99 (median over --repeat series),
   and what the relay adds to the direct path.
3. Memory: N concurrent idle spliced sessions (2N sockets in the trap, N is
   capped by RLIMIT_NOFILE), the trap's VmRSS before, with them, and after
   they closed. Clients come from 127.0.0.2, .3, ... (2,500 per address and
   process, which is also the relay on that address).

Every looper variant runs with the stdlib loop and with uvloop (--loop), a
trap process each, running looper as it is. Other work on the machine is
measured (other processes' CPU and hypervisor steal); a run it disturbed is
redone, and the report says how noisy it was.

The wiring is the trap's real one: the receiver (the "relay's own server")
listens on 127.0.0.2:P, the trap on 127.0.0.1:T with dialback.port = P, and the
sender binds 127.0.0.2 before connecting to 127.0.0.1:T, so the trap dials
back 127.0.0.2:P and splices.

Each role runs as `python bench/splice.py --role NAME ...` in a child process;
children die with the parent (PR_SET_PDEATHSIG), have their own socket
timeouts, and the parent kills and reaps whatever it started on any error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # imported, not run as bench/splice.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    NOISE, NOISY_RUN_RETRIES, NOISY_RUN_SHARE, REPO, BenchError, Child, LoadMeter, arm_signals, cpu_model, emit,
    end_run, merged_failures, note_noise, proc_cpu_s, proc_fds, proc_rss_kib, raise_nofile, reap_quietly,
    release_idle_clients, report_abort, run_role, stdin_closed_event,
)

HERE = Path(__file__).resolve()

TRAP_HOST = "127.0.0.1"
RELAY_HOST = "127.0.0.2"  # the sender's address: its "own server" listens here

MiB = 1 << 20
GiB = 1 << 30
CHUNK_BYTES = 1 * MiB  # sendall / recv_into buffer of the sender and receiver
SOCKET_TIMEOUT_S = 60.0  # every child socket: a stuck peer ends the child
RUN_TIMEOUT_S = 180.0  # one transfer, one ping series, one memory step

GREETING = b"220 relay.bench.invalid ESMTP bench\r\n"
EHLO_REPLY = b"250-relay.bench.invalid\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n"
PING = b"NOOP " + b"x" * 57 + b"\r\n"  # 64 bytes, a valid NOOP with a string
PONG = b"250 2.0.0 Ok " + b"y" * 49 + b"\r\n"  # 64 bytes
assert len(PING) == len(PONG) == 64
DATA_END = b"\r\n.\r\n"


# ---------------------------------------------------------------------------
# Small helpers shared by all roles
# ---------------------------------------------------------------------------


def connect_from(src: str, host: str, port: int, retry_s: float = 5.0) -> socket.socket:
    """Blocking connect from src; retries while the listener is not up yet."""
    deadline = time.monotonic() + retry_s
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((src, 0))
        sock.settimeout(SOCKET_TIMEOUT_S)
        try:
            sock.connect((host, port))
            return sock
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def listen_on(host: str, port: int, backlog: int = 16) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LineReader:
    """Reply/command lines from a blocking socket (the handshakes only)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"EOF while waiting for a line (have {self.buf[:60]!r})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def reply(self, expect: bytes) -> bytes:
        """A whole (multi-line) reply, which must start with `expect`."""
        while True:
            line = self.line()
            if not line.startswith(expect):
                raise ConnectionError(f"expected {expect!r}, got {line!r}")
            if line[3:4] != b"-":
                return line


def body_block() -> bytes:
    """~1 MiB of message body as it travels in bulk: base64 lines (76 + CRLF),
    as of an attachment. Dot-safe (base64 has no "."), so DATA_END can only
    be the real end of the content."""
    import base64

    block = base64.encodebytes(os.urandom(CHUNK_BYTES // 78 * 57)).replace(b"\n", b"\r\n")
    assert b"." not in block
    return block


# ---------------------------------------------------------------------------
# Roles run in child processes
# ---------------------------------------------------------------------------


def role_recv(argv: list[str]) -> None:
    """The relay's own server: accepts one connection, sinks the bulk."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("raw", "smtp"), required=True)
    a = p.parse_args(argv)
    ls = listen_on(RELAY_HOST, a.port)
    ls.settimeout(SOCKET_TIMEOUT_S)
    emit({"ready": True})
    conn, peer = ls.accept()
    ls.close()
    conn.settimeout(SOCKET_TIMEOUT_S)
    buf = bytearray(CHUNK_BYTES)
    recv_into = conn.recv_into
    total = 0
    if a.mode == "raw":
        while True:
            n = recv_into(buf)
            if not n:
                break
            total += n
        t_end = time.monotonic()
        emit({"bytes": total, "t_end": t_end, "peer": peer[0]})
        conn.close()
        return
    # SMTP: greet, answer the envelope, then sink DATA until CRLF.CRLF.
    conn.sendall(GREETING)
    reader = LineReader(conn)
    while True:
        line = reader.line().upper()
        if line.startswith((b"EHLO", b"HELO")):
            conn.sendall(EHLO_REPLY)
        elif line.startswith(b"MAIL"):
            conn.sendall(b"250 2.1.0 Ok\r\n")
        elif line.startswith(b"RCPT"):
            conn.sendall(b"250 2.1.5 Ok\r\n")
        elif line.startswith(b"DATA"):
            conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            break
        else:
            conn.sendall(b"500 5.5.2 unexpected\r\n")
    # The sender sends nothing before the 354 arrives: the reader holds no body.
    assert not reader.buf
    # The sender sends nothing after the final "." until our 250, so the end
    # is always the last bytes of some read, and the body holds no "." at all:
    # looking at the last 5 bytes of each read is exact and costs nothing.
    last = bytearray(b"\r\n")  # the CRLF that ended the DATA line
    while True:
        n = recv_into(buf)
        if not n:
            raise ConnectionError("EOF inside DATA")
        total += n
        if n >= 5:
            last[:] = buf[n - 5 : n]
        else:
            last += buf[:n]
            del last[:-5]
        if last.endswith(DATA_END):
            break
    t_end = time.monotonic()
    conn.sendall(b"250 2.0.0 Ok: queued as BENCH\r\n")
    line = reader.line()
    conn.sendall(b"221 2.0.0 Bye\r\n" if line.upper().startswith(b"QUIT") else b"500 5.5.2 ?\r\n")
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass
    conn.close()
    emit({"bytes": total, "t_end": t_end, "peer": peer[0]})


def role_send(argv: list[str]) -> None:
    """The client: bulk bytes (raw), or one message with a bulk body (smtp)."""
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--mode", choices=("raw", "smtp"), required=True)
    a = p.parse_args(argv)
    block = body_block() if a.mode == "smtp" else os.urandom(CHUNK_BYTES)
    count = math.ceil(a.bytes / len(block))
    sock = connect_from(RELAY_HOST, a.host, a.port)
    sendall = sock.sendall
    if a.mode == "raw":
        t_start = time.monotonic()
        for _ in range(count):
            sendall(block)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        sock.close()
        emit({"bytes": count * len(block), "t_start": t_start})
        return
    reader = LineReader(sock)
    reader.reply(b"220")
    sendall(b"EHLO client.bench.invalid\r\n")
    reader.reply(b"250")
    sendall(b"MAIL FROM:<bench@client.bench.invalid> BODY=8BITMIME\r\n")
    reader.reply(b"250")
    sendall(b"RCPT TO:<sink@relay.bench.invalid>\r\n")
    reader.reply(b"250")
    sendall(b"DATA\r\n")
    reader.reply(b"354")
    header = (
        b"Received: from client.bench.invalid (client [127.0.0.2]) by relay.bench.invalid; "
        b"Sat, 22 Nov 2025 09:00:00 +0000\r\n"
        b"From: <bench@client.bench.invalid>\r\nTo: <sink@relay.bench.invalid>\r\n"
        b"Subject: bulk\r\nMessage-ID: <bench.1@client.bench.invalid>\r\n\r\n"
    )
    t_start = time.monotonic()
    sendall(header)
    for _ in range(count):
        sendall(block)
    sendall(b".\r\n")
    reader.reply(b"250")
    t_acked = time.monotonic()
    sendall(b"QUIT\r\n")
    reader.reply(b"221")
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()
    emit({"bytes": count * len(block) + len(header) + 3, "t_start": t_start, "t_acked": t_acked})


def role_pong(argv: list[str]) -> None:
    """The relay's own server for the latency test: 220, then a 250 per line."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    ls = listen_on(RELAY_HOST, a.port)
    ls.settimeout(SOCKET_TIMEOUT_S)
    emit({"ready": True})
    conn, _ = ls.accept()
    ls.close()
    conn.settimeout(SOCKET_TIMEOUT_S)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(GREETING)
    pending = b""
    lines = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        pending += chunk
        out = []
        while True:
            line, sep, rest = pending.partition(b"\n")
            if not sep:
                break
            pending = rest
            lines += 1
            out.append(b"221 2.0.0 Bye\r\n" if line.startswith(b"QUIT") else PONG)
        if out:
            conn.sendall(b"".join(out))
    conn.close()
    emit({"lines": lines})


def role_ping(argv: list[str]) -> None:
    """The client for the latency test: one ping in flight at a time."""
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--warmup", type=int, default=200)
    a = p.parse_args(argv)
    sock = connect_from(RELAY_HOST, a.host, a.port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = LineReader(sock)
    reader.reply(b"220")
    send, recv, clock = sock.send, sock.recv, time.perf_counter_ns
    samples = []
    for i in range(a.warmup + a.count):
        t0 = clock()
        send(PING)
        got = recv(128)
        while len(got) < 64:
            more = recv(128)
            if not more:
                raise ConnectionError("EOF in a ping-pong")
            got += more
        t1 = clock()
        if i >= a.warmup:
            samples.append(t1 - t0)
    sock.sendall(b"QUIT\r\n")
    reader.reply(b"221")
    sock.close()
    samples.sort()
    emit(
        {
            "count": len(samples),
            "median_us": statistics.median(samples) / 1000,
            "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000,
            "mean_us": statistics.fmean(samples) / 1000,
        }
    )


def role_idle(argv: list[str]) -> None:
    """One address's share of the memory test: a relay listener on addr:P
    that greets and holds, and `count` clients from addr that connect to the
    trap, wait for the (reflected) greeting, and hold until stdin closes."""
    import asyncio

    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--relay-port", type=int, required=True)
    p.add_argument("--trap-port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args(argv)
    raise_nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls = listen_on(a.addr, a.relay_port, backlog=4096)
        ls.setblocking(False)
        held: list[socket.socket] = []
        failures: dict[str, int] = {}

        async def relay() -> None:
            while True:
                conn, _ = await loop.sock_accept(ls)
                try:
                    conn.send(GREETING)
                except OSError:
                    pass
                held.append(conn)

        async def client(gate: asyncio.Semaphore) -> None:
            async with gate:
                sock = socket.socket()
                sock.setblocking(False)
                try:
                    sock.bind((a.addr, 0))
                    async with asyncio.timeout(30):
                        await loop.sock_connect(sock, (TRAP_HOST, a.trap_port))
                        got = b""
                        while b"\n" not in got:
                            chunk = await loop.sock_recv(sock, 512)
                            if not chunk:
                                raise ConnectionError("eof")
                            got += chunk
                    if not got.startswith(b"220 relay.bench"):
                        raise ConnectionError(got[:3].decode("ascii", "replace"))
                    held.append(sock)
                except Exception as err:  # counted, reported, never fatal
                    name = type(err).__name__ + (f":{err}" if isinstance(err, ConnectionError) else "")
                    failures[name] = failures.get(name, 0) + 1
                    sock.close()

        acceptor = loop.create_task(relay())
        gate = asyncio.Semaphore(a.concurrency)
        t0 = time.monotonic()
        await asyncio.gather(*(client(gate) for _ in range(a.count)))
        emit({"ok": a.count - sum(failures.values()), "failures": failures, "seconds": time.monotonic() - t0})
        await loop.run_in_executor(None, sys.stdin.buffer.read)  # hold until the parent says so
        acceptor.cancel()
        for sock in held:
            sock.close()
        ls.close()

    asyncio.run(main())


class _NoObserver:
    """Stands in for looper's Observer to measure the splice without it:
    opaque from the start, so _Inspect passes every chunk straight through
    (it still calls client_data/server_data with b"" at EOF, and events()
    after every forward, as with the real one)."""

    opaque = True

    def __init__(self, **_kw) -> None:
        pass

    def client_data(self, data) -> None:
        pass

    def server_data(self, data):
        return data

    def close(self) -> None:
        pass

    def events(self) -> tuple[()]:
        return ()


def _ensure_observer() -> str:
    """Which observer the trap runs; a no-op stub (as /tmp/stub) if the real
    looper.proto.observer has not landed yet."""
    try:
        import looper.proto.observer as mod  # noqa: F401
    except ImportError:
        import types

        stub = types.ModuleType("looper.proto.observer")

        class Observer:
            def __init__(self, **kw) -> None:
                self.opaque = False

            def client_data(self, d):
                pass

            def server_data(self, d):
                return d

            def close(self):
                pass

            def events(self):
                return ()

        stub.Observer = Observer
        stub.BENCH_STUB = True
        sys.modules["looper.proto.observer"] = stub
        return "stub (looper.proto.observer missing)"
    if getattr(mod, "BENCH_STUB", False) or not getattr(mod, "__file__", None):
        return "stub (injected, e.g. by PYTHONPATH=/tmp/stub)"
    return "real"


def role_trap(argv: list[str]) -> None:
    """The trap, as `looper run` would run it, on the chosen event loop."""
    p = argparse.ArgumentParser()
    p.add_argument("--loop", choices=("asyncio", "uvloop"), required=True)
    p.add_argument("--observer", choices=("on", "off"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dialback-port", type=int, required=True)
    p.add_argument("--log-dir", required=True)
    p.add_argument("--profile", default="")
    a = p.parse_args(argv)
    raise_nofile()
    sys.path.insert(0, str(REPO))
    observer_kind = _ensure_observer()

    import asyncio

    import looper.net.reflect
    from looper.config import parse_config
    from looper.eventlog import open_event_log
    from looper.net.server import Trap

    if a.observer == "off":
        looper.net.reflect.Observer = _NoObserver
        observer_kind = "off (no-op)"
    config = parse_config(
        json.dumps(
            {
                "sensor": "bench",
                "listen": {"smtp": [f"{TRAP_HOST}:{a.port}"]},
                "dialback": {"port": a.dialback_port, "allow_private": True, "timeout": 10},
                "splice": {"max_bytes": 2**62, "max_seconds": 3600, "idle_seconds": 3600},
                "limits": {"per_ip": 20000, "total": 20000},
                "log": {"dir": a.log_dir, "max_bytes": 64 * MiB, "backups": 1},
            }
        ),
        "<bench>",
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = stdin_closed_event(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        eventlog = open_event_log(config.sensor, config.log.dir, max_bytes=config.log.max_bytes, backups=1)
        trap = Trap(config, eventlog)
        await trap.start()
        emit({"ready": True, "observer": observer_kind, "loop": type(loop).__module__ + "." + type(loop).__name__})
        await stop.wait()
        await trap.stop()
        eventlog.close()

    if a.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = None
    profiler = None
    if a.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(a.profile)


def role_pump(argv: list[str]) -> None:
    """Reference: the smallest asyncio protocol pump with looper's water marks
    (no observer, no policy, no events, no timers), on the same loop."""
    import asyncio

    p = argparse.ArgumentParser()
    p.add_argument("--loop", choices=("asyncio", "uvloop"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dialback-port", type=int, required=True)
    p.add_argument("--buffered", type=int, default=0, help="BufferedProtocol with this recv_into buffer size")
    a = p.parse_args(argv)

    class End(asyncio.Protocol):
        def __init__(self) -> None:
            self.peer: End | None = None
            self.pending = bytearray()
            self.eof = False

        def connection_made(self, transport) -> None:
            self.transport = transport
            transport.set_write_buffer_limits(256 * 1024, 64 * 1024)

        def data_received(self, data: bytes) -> None:
            if self.peer is None:
                self.pending += data
            else:
                self.peer.transport.write(data)

        def eof_received(self) -> bool:
            if self.peer is None:
                self.eof = True
            else:
                self.peer.transport.write_eof()
            return True

        def connection_lost(self, exc) -> None:
            if self.peer is not None:
                self.peer.transport.close()

        def pause_writing(self) -> None:
            self.peer.transport.pause_reading()

        def resume_writing(self) -> None:
            self.peer.transport.resume_reading()

    class BufferedEnd(End, asyncio.BufferedProtocol):
        """recv_into one read buffer shared by every end (reads are handled
        one at a time, and forwarded before the next): no allocation per read,
        no memory per idle end. A new buffer only when the other transport
        could not send everything at once (it may keep a reference)."""

        shared = [memoryview(bytearray(a.buffered or 1))]

        def get_buffer(self, sizehint: int) -> memoryview:
            return self.shared[0]

        def buffer_updated(self, nbytes: int) -> None:
            view = self.shared[0][:nbytes]
            if self.peer is None:
                self.pending += view
                return
            out = self.peer.transport
            out.write(view)
            if out.get_write_buffer_size():
                self.shared[0] = memoryview(bytearray(a.buffered))

    if a.buffered:
        End = BufferedEnd  # noqa: N806

    async def main() -> None:
        loop = asyncio.get_running_loop()

        class Inbound(End):
            def connection_made(self, transport) -> None:
                super().connection_made(transport)
                loop.create_task(self.dial())

            async def dial(self) -> None:
                host = self.transport.get_extra_info("peername")[0]
                _, out = await loop.create_connection(End, host, a.dialback_port, local_addr=(TRAP_HOST, 0))
                out.peer, self.peer = self, out
                for src, dst in ((self, out), (out, self)):  # what either side sent before the link
                    if src.pending:
                        dst.transport.write(bytes(src.pending))
                    if src.eof:
                        dst.transport.write_eof()

        server = await loop.create_server(Inbound, TRAP_HOST, a.port, reuse_address=True)
        stop = stdin_closed_event(loop)
        emit({"ready": True})
        await stop.wait()
        server.close()

    if a.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


ROLES = {
    "pump": role_pump,
    "recv": role_recv,
    "send": role_send,
    "pong": role_pong,
    "ping": role_ping,
    "idle": role_idle,
    "trap": role_trap,
}


# ---------------------------------------------------------------------------
# The conductor: processes, phases, tables
# ---------------------------------------------------------------------------


def role_argv(role: str, *args: object) -> list[str]:
    return [sys.executable, str(HERE), "--role", role, *map(str, args)]


OBSERVER_KINDS: set[str] = set()  # what the traps with the observer on really ran


class TrapProcess:
    """One trap in its own process (per loop and observer setting)."""

    def __init__(self, loop: str, observer: str, dialback_port: int, workdir: Path, profile_dir: str,
                 phase: str = "throughput") -> None:
        self.loop, self.observer = loop, observer
        self.port = free_port(TRAP_HOST)
        log_dir = workdir / f"logs-{loop}-{observer}-{self.port}"
        args = ["--loop", loop, "--observer", observer, "--port", self.port,
                "--dialback-port", dialback_port, "--log-dir", log_dir]
        if profile_dir:
            args += ["--profile", Path(profile_dir).resolve() / f"trap-{phase}-{loop}-observer-{observer}.prof"]
        self.child = Child(f"trap[{loop},observer {observer}]", role_argv("trap", *args), stdin_pipe=True)
        hello = self.child.read_json(time.monotonic() + 30)
        self.observer_kind = hello["observer"]
        self.loop_class = hello["loop"]
        if observer == "on":
            OBSERVER_KINDS.add(hello["observer"])

    def stop(self) -> None:
        self.child.close_stdin()
        self.child.wait(time.monotonic() + 15)


class PumpProcess:
    """The reference pump, shaped like a TrapProcess for transfer()."""

    def __init__(self, loop: str, dialback_port: int, buffered: int = 0) -> None:
        self.loop = loop
        self.port = free_port(TRAP_HOST)
        self.child = Child(f"pump[{loop}]", role_argv("pump", "--loop", loop, "--port", self.port,
                                                     "--dialback-port", dialback_port, "--buffered", buffered),
                           stdin_pipe=True)
        self.child.read_json(time.monotonic() + 30)

    def stop(self) -> None:
        self.child.close_stdin()
        self.child.wait(time.monotonic() + 15)


# -- phase 1: throughput ------------------------------------------------------


@dataclass
class Variant:
    key: str
    label: str
    mode: str  # raw | smtp
    relay: str  # direct | socat | looper
    socat_buffer: int | None = None
    loop: str = "-"
    observer: str = "-"
    pump_buffer: int = 0  # the reference pump: 0 = Protocol, n = BufferedProtocol with n bytes
    reruns: int = 0  # runs repeated because other work disturbed them
    gbps: list[float] = field(default_factory=list)
    relay_cpu_per_gib: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.gbps)


def transfer(v: Variant, nbytes: int, port: int, trap: TrapProcess | None) -> tuple[float, float | None]:
    """One bulk transfer; returns (GB/s, relay CPU seconds per GiB)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    recv = Child(f"receiver[{v.key}]", role_argv("recv", "--port", port, "--mode", v.mode))
    relay: Child | None = None
    try:
        recv.read_json(deadline)
        if v.relay == "direct":
            host, dport = RELAY_HOST, port
        elif v.relay == "socat":
            host, dport = TRAP_HOST, free_port(TRAP_HOST)
            argv = ["socat"]
            if v.socat_buffer:
                argv += ["-b", str(v.socat_buffer)]
            argv += [f"TCP-LISTEN:{dport},bind={TRAP_HOST},reuseaddr", f"TCP:{RELAY_HOST}:{port}"]
            relay = Child(f"socat[{v.key}]", argv)
        else:  # looper or the reference pump
            host, dport = TRAP_HOST, trap.port
        cpu0 = proc_cpu_s(trap.child.pid) if trap else 0.0
        send = Child(f"sender[{v.key}]", role_argv("send", "--host", host, "--port", dport,
                                                   "--bytes", nbytes, "--mode", v.mode))
        sent = send.read_json(deadline)
        got = recv.read_json(deadline)
        send.wait(deadline)
        recv.wait(deadline)
        if relay is not None:
            relay.wait(deadline)
        if got["bytes"] != sent["bytes"]:
            raise BenchError(f"{v.key}: sent {sent['bytes']} bytes, received {got['bytes']}")
        if v.relay in ("looper", "pump") and got["peer"] != TRAP_HOST:
            raise BenchError(f"{v.key}: the receiver saw {got['peer']}, not the trap's dial-back")
        seconds = got["t_end"] - sent["t_start"]
        if trap is not None:
            time.sleep(0.02)  # let the trap finish the session's last events
            cpu = proc_cpu_s(trap.child.pid) - cpu0
        elif relay is not None:
            cpu = relay.cpu_s
        else:
            cpu = None
        gib = sent["bytes"] / GiB
        return sent["bytes"] / seconds / 1e9, (cpu / gib if cpu is not None else None)
    finally:
        for child in (recv, relay):
            if child is not None and child.proc.returncode is None:
                child.kill()


def phase_throughput(args, loops: list[str], workdir: Path, out) -> list[Variant]:
    nbytes = args.size_mib * MiB
    port = free_port(RELAY_HOST)
    variants = [
        Variant("a", "direct loopback", "raw", "direct"),
        Variant("b", "socat (default 8 KiB buffer)", "raw", "socat"),
        Variant("c", "socat -b 262144", "raw", "socat", socat_buffer=262144),
        Variant("a'", "direct loopback, SMTP DATA", "smtp", "direct"),
        Variant("c'", "socat -b 262144, SMTP DATA", "smtp", "socat", socat_buffer=262144),
    ]
    traps: dict[tuple[str, str], TrapProcess | PumpProcess] = {}
    for loop in loops:
        variants += [
            Variant("p", "reference: bare Protocol pump", "raw", "pump", loop=loop),
            Variant("p2", "reference: BufferedProtocol pump", "raw", "pump", loop=loop, pump_buffer=MiB),
            Variant("d", "looper raw, observer on", "raw", "looper", loop=loop, observer="on"),
            Variant("e", "looper SMTP DATA, observer on", "smtp", "looper", loop=loop, observer="on"),
            Variant("f", "looper SMTP DATA, observer off", "smtp", "looper", loop=loop, observer="off"),
        ]
    try:
        for v in variants:
            if v.relay == "pump" and (v.loop, f"pump{v.pump_buffer}") not in traps:
                traps[(v.loop, f"pump{v.pump_buffer}")] = PumpProcess(v.loop, port, v.pump_buffer)
            if v.relay == "looper" and (v.loop, v.observer) not in traps:
                trap = TrapProcess(v.loop, v.observer, port, workdir, args.profile)
                traps[(v.loop, v.observer)] = trap
                transfer(Variant("warm", "warm-up", "smtp", "looper"), 16 * MiB, port, trap)  # warm-up
        for rep in range(args.repeat):
            for v in variants:
                trap = traps.get((v.loop, f"pump{v.pump_buffer}" if v.relay == "pump" else v.observer))
                for attempt in range(1 + NOISY_RUN_RETRIES):
                    meter = LoadMeter()
                    gbps, cpu = transfer(v, nbytes, port, trap)
                    foreign = meter.share()[1]
                    noisy = foreign > NOISY_RUN_SHARE
                    print(f"  run {rep + 1}/{args.repeat} ({v.key}) {v.label:<36} {v.loop:<8} {gbps:6.2f} GB/s"
                          f"  (others {foreign:4.0%})" + ("  noisy, again" if noisy and attempt < NOISY_RUN_RETRIES
                                                         else ""), file=out, flush=True)
                    if not noisy:
                        break
                    v.reruns += 1
                v.gbps.append(gbps)
                if cpu is not None:
                    v.relay_cpu_per_gib.append(cpu)
    finally:
        for trap in traps.values():
            trap.stop()
    return variants


def print_throughput(args, variants: list[Variant]) -> list[str]:
    socat256 = {v.mode: v.median for v in variants if v.relay == "socat" and v.socat_buffer == 262144}
    lines = [
        f"Throughput: {args.size_mib} MiB client -> server per run, median of {args.repeat} "
        f"(GB/s = 1e9 bytes/s; relay CPU = CPU seconds of socat or the trap per GiB)",
        f"{'':5}{'variant':<37}{'loop':<9}{'GB/s':>6}  {'min-max':>11}  {'vs (c)':>7}  {'vs socat256':>11}"
        f"  {'relay CPU s/GiB':>15}",
    ]
    for v in variants:
        ratio_c = v.median / socat256["raw"]
        ratio_same = v.median / socat256[v.mode]
        cpu = f"{statistics.median(v.relay_cpu_per_gib):.2f}" if v.relay_cpu_per_gib else "-"
        lines.append(
            f"{'(' + v.key + ')':<5}{v.label:<37}{v.loop:<9}{v.median:6.2f}  "
            f"{min(v.gbps):5.2f}-{max(v.gbps):<5.2f}  {ratio_c:6.2f}x  {ratio_same:10.2f}x  {cpu:>15}"
            + (f"  ({v.reruns} noisy run{'s' if v.reruns > 1 else ''} redone)" if v.reruns else "")
        )
    lines.append("    (vs socat256: against socat -b 262144 carrying the same workload, (c) for raw, (c') for SMTP)")
    lines.append("    (p) a Protocol pump with looper's water marks and nothing else; (p2) the same as a BufferedProtocol")
    lines.append("    reading into one shared 1 MiB buffer: the ceilings of looper's splice as it is, and as it could be")
    by = {(v.key, v.loop): v for v in variants}
    for loop in sorted({v.loop for v in variants if v.relay == "looper"}):
        e, f_ = by[("e", loop)], by[("f", loop)]
        ecpu = statistics.median(e.relay_cpu_per_gib)
        fcpu = statistics.median(f_.relay_cpu_per_gib)
        lines.append(
            f"    observer cost [{loop}]: (e) vs (f) {e.median / f_.median - 1:+.1%} throughput, "
            f"{ecpu - fcpu:+.2f} trap CPU s/GiB ({ecpu:.2f} vs {fcpu:.2f})"
        )
    return lines


# -- phase 2: latency -----------------------------------------------------------


@dataclass
class LatencyRow:
    label: str
    loop: str
    median_us: float
    p99_us: float
    mean_us: float


def ping_series(relay: str, count: int, port: int, trap: TrapProcess | PumpProcess | None, label: str,
                loop: str) -> LatencyRow:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    pong = Child(f"pong[{label}]", role_argv("pong", "--port", port))
    socat: Child | None = None
    try:
        pong.read_json(deadline)
        if relay == "direct":
            host, dport = RELAY_HOST, port
        elif relay == "socat":
            host, dport = TRAP_HOST, free_port(TRAP_HOST)
            socat = Child("socat[latency]", ["socat", "-b", "262144", f"TCP-LISTEN:{dport},bind={TRAP_HOST},reuseaddr",
                                             f"TCP:{RELAY_HOST}:{port}"])
        else:
            host, dport = TRAP_HOST, trap.port
        ping = Child(f"ping[{label}]", role_argv("ping", "--host", host, "--port", dport, "--count", count))
        r = ping.read_json(deadline)
        pong.read_json(deadline)
        ping.wait(deadline)
        pong.wait(deadline)
        if socat is not None:
            socat.wait(deadline)
        return LatencyRow(label, loop, r["median_us"], r["p99_us"], r["mean_us"])
    finally:
        for child in (pong, socat):
            if child is not None and child.proc.returncode is None:
                child.kill()


def phase_latency(args, loops: list[str], workdir: Path, out) -> list[LatencyRow]:
    """Every series --repeat times, interleaved like the transfers; each row
    is the median over the repeats of each series' median and p99."""
    port = free_port(RELAY_HOST)
    plan: list[tuple[str, str, str, TrapProcess | PumpProcess | None]] = [
        ("direct", "direct loopback", "-", None),
        ("socat", "socat -b 262144", "-", None),
    ]
    relays: list[TrapProcess | PumpProcess] = []
    try:
        for loop in loops:
            relays.append(PumpProcess(loop, port))
            plan.append(("looper", "reference: bare Protocol pump", loop, relays[-1]))
            for observer in ("on", "off"):
                relays.append(TrapProcess(loop, observer, port, workdir, args.profile, "latency"))
                plan.append(("looper", f"looper, observer {observer}", loop, relays[-1]))
        results: dict[tuple[str, str], list[LatencyRow]] = {}
        for rep in range(args.repeat):
            for relay, label, loop, process in plan:
                for attempt in range(1 + NOISY_RUN_RETRIES):
                    meter = LoadMeter()
                    row = ping_series(relay, args.pings, port, process, label, loop)
                    foreign = meter.share()[1]
                    noisy = foreign > NOISY_RUN_SHARE and attempt < NOISY_RUN_RETRIES
                    print(f"  run {rep + 1}/{args.repeat} {label:<30} {loop:<8} median {row.median_us:7.1f} us  "
                          f"p99 {row.p99_us:7.1f} us  (others {foreign:4.0%})" + ("  noisy, again" if noisy else ""),
                          file=out, flush=True)
                    if not noisy:
                        break
                results.setdefault((label, loop), []).append(row)
    finally:
        for process in relays:
            process.stop()
    return [
        LatencyRow(label, loop, statistics.median(r.median_us for r in rows),
                   statistics.median(r.p99_us for r in rows), statistics.median(r.mean_us for r in rows))
        for (label, loop), rows in results.items()
    ]


def print_latency(args, rows: list[LatencyRow]) -> list[str]:
    direct = rows[0]
    lines = [
        f"Round trip: {args.pings:,} ping-pongs of 64 bytes each way (NOOP ... / 250 ...) after a 220, one at a time;"
        f" microseconds, median over {args.repeat} series of each series' median and p99",
        f"    {'variant':<38}{'loop':<9}{'median':>8}{'p99':>9}{'+median':>9}{'+p99':>9}",
    ]
    for r in rows:
        lines.append(
            f"    {r.label:<38}{r.loop:<9}{r.median_us:8.1f}{r.p99_us:9.1f}"
            f"{r.median_us - direct.median_us:+9.1f}{r.p99_us - direct.p99_us:+9.1f}"
        )
    lines.append("    (+median, +p99: added to the direct path)")
    return lines


# -- phase 3: memory ----------------------------------------------------------


@dataclass
class MemoryRow:
    loop: str
    sessions: int
    rss_before_kib: int
    rss_with_kib: int
    rss_after_kib: int
    fds_with: int
    setup_s: float
    failures: dict
    workers: int = 1


def phase_memory(args, loops: list[str], workdir: Path, out) -> tuple[list[MemoryRow], list[str]]:
    notes = []
    hard = raise_nofile()
    relay_port = free_port(RELAY_HOST)
    per_worker = 2500
    rows = []
    for loop in loops:
        trap = TrapProcess(loop, "on", relay_port, workdir, "")
        workers: list[Child] = []
        try:
            time.sleep(0.2)
            base_fds = proc_fds(trap.child.pid)
            cap = (hard - base_fds - 16) // 2
            sessions = min(args.sessions, cap)
            if sessions < args.sessions and not notes:
                notes.append(
                    f"    the trap may hold {hard} fds (RLIMIT_NOFILE hard limit, cannot be raised here) and "
                    f"has {base_fds} open: {sessions:,} sessions instead of {args.sessions:,}"
                )
            rss_before = proc_rss_kib(trap.child.pid)
            nworkers = max(1, math.ceil(sessions / per_worker))
            t0 = time.monotonic()
            for k in range(nworkers):
                count = sessions // nworkers + (1 if k < sessions % nworkers else 0)
                workers.append(Child(f"idle[{k}]", role_argv(
                    "idle", "--addr", f"127.0.0.{2 + k}", "--relay-port", relay_port,
                    "--trap-port", trap.port, "--count", count), stdin_pipe=True))
            deadline = time.monotonic() + RUN_TIMEOUT_S
            reports = [w.read_json(deadline) for w in workers]
            setup_s = time.monotonic() - t0
            ok = sum(r["ok"] for r in reports)
            failures = merged_failures(reports)
            time.sleep(0.5)  # let the last sessions' events be written
            rss_with = proc_rss_kib(trap.child.pid)
            fds_with = proc_fds(trap.child.pid)
            release_idle_clients(workers, trap.child.pid, base_fds)
            time.sleep(0.3)
            rss_after = proc_rss_kib(trap.child.pid)
            row = MemoryRow(loop, ok, rss_before, rss_with, rss_after, fds_with, setup_s, failures, nworkers)
            rows.append(row)
            print(f"  {loop:<8} {ok:,} sessions up in {setup_s:.1f} s, trap RSS {rss_before / 1024:.1f} -> "
                  f"{rss_with / 1024:.1f} MiB, {fds_with:,} fds; after close {rss_after / 1024:.1f} MiB"
                  + (f"; failures {failures}" if failures else ""), file=out, flush=True)
        finally:
            reap_quietly(workers)
            trap.stop()
    return rows, notes


def print_memory(args, rows: list[MemoryRow], notes: list[str]) -> list[str]:
    lines = [
        "Memory: concurrent idle spliced sessions (greeting passed, then idle), trap VmRSS",
        f"    {'loop':<9}{'sessions':>9}{'fds':>8}{'RSS before':>12}{'RSS with':>10}{'per session':>13}"
        f"{'at 10,000':>11}{'after close':>13}{'setup':>8}",
    ]
    for r in rows:
        per = (r.rss_with_kib - r.rss_before_kib) * 1024 / max(1, r.sessions)
        at10k = (r.rss_before_kib * 1024 + per * 10_000) / 1e6
        lines.append(
            f"    {r.loop:<9}{r.sessions:>9,}{r.fds_with:>8,}{r.rss_before_kib / 1024:>9.1f} MiB"
            f"{r.rss_with_kib / 1024:>7.1f} MiB{per / 1024:>9.1f} KiB{at10k:>8.1f} MB"
            f"{r.rss_after_kib / 1024:>9.1f} MiB{r.setup_s:>7.1f}s"
            + (f"  failures: {r.failures}" if r.failures else "")
        )
    if rows:
        k = rows[0].workers
        lines.append(f"    (clients from 127.0.0.2-127.0.0.{1 + k}: {k} process{'es' if k > 1 else ''}, each also the relay"
                     " on its address)")
        lines.append("    (per session = (RSS with - RSS before) / sessions; at 10,000 = RSS before + 10,000 x per session;")
        lines.append("    setup = until every client had its greeting; RSS is the trap's only: kernel socket buffers are apart)")
    lines += notes
    return lines


# -- verdicts -----------------------------------------------------------------


def verdicts(variants, lat_rows, mem_rows) -> list[str]:
    lines = ["Targets (observer on):"]
    if variants:
        socat = {v.mode: v for v in variants if v.relay == "socat" and v.socat_buffer == 262144}
        for v in variants:
            if v.relay == "looper" and v.observer == "on":
                ref = socat[v.mode]
                ok = v.median >= ref.median
                lines.append(f"    throughput ({v.key}) [{v.loop}] {v.median:.2f} >= socat256 ({ref.key}) {ref.median:.2f} GB/s: "
                             f"{'PASS' if ok else 'FAIL'}")
    if lat_rows:
        direct = lat_rows[0]
        socat = next(r for r in lat_rows if r.label.startswith("socat"))
        added_socat = socat.median_us - direct.median_us
        for r in lat_rows:
            if r.label == "looper, observer on":
                added = r.median_us - direct.median_us
                lines.append(f"    added round trip [{r.loop}] {added:.1f} us <= socat's {added_socat:.1f} us: "
                             f"{'PASS' if added <= added_socat else 'FAIL'}")
    for r in mem_rows:
        per = (r.rss_with_kib - r.rss_before_kib) * 1024 / max(1, r.sessions)
        at10k = (r.rss_before_kib * 1024 + per * 10_000) / 1e6
        lines.append(f"    10,000 idle sessions [{r.loop}] {at10k:.1f} MB resident (measured "
                     f"{r.rss_with_kib * 1024 / 1e6:.1f} MB with {r.sessions:,}) < 150 MB: "
                     f"{'PASS' if at10k < 150 and not r.failures else 'FAIL'}")
    return lines


def describe_machine() -> str:
    import importlib.metadata

    try:
        uv = importlib.metadata.version("uvloop")
    except Exception:
        uv = "not installed"
    try:
        socat = subprocess.run(["socat", "-V"], capture_output=True, text=True, timeout=5).stdout
        socat = next((l.split()[2] for l in socat.splitlines() if l.startswith("socat version")), "?")
    except Exception:
        socat = "not found"
    return (f"{os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}, Python {platform.python_version()}, "
            f"uvloop {uv}, socat {socat}")


def main() -> int:
    if run_role(ROLES):
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1,000 pings, 1,000 sessions")
    p.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both",
                   help="event loop of the trap process (default both)")
    p.add_argument("--only", default="throughput,latency,memory",
                   help="comma-separated phases (default all: throughput,latency,memory)")
    p.add_argument("--size-mib", type=int, help="bulk transfer size (default 1024, quick 64)")
    p.add_argument("--repeat", type=int, default=3, help="runs per throughput variant and series per latency variant (default 3)")
    p.add_argument("--pings", type=int, help="round trips per variant (default 10000, quick 1000)")
    p.add_argument("--sessions", type=int, help="idle sessions (default 10000, quick 1000)")
    p.add_argument("--profile", metavar="DIR", default="",
                   help="write cProfile stats of the throughput and latency phases' trap processes to DIR")
    p.add_argument("--max-seconds", type=float, default=900, help="abort the whole run after this (default 900)")
    args = p.parse_args()
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    args.pings = args.pings or (1000 if args.quick else 10_000)
    args.sessions = args.sessions or (1000 if args.quick else 10_000)
    phases = {x.strip() for x in args.only.split(",") if x.strip()}
    if phases - {"throughput", "latency", "memory"}:
        p.error(f"unknown phase in --only: {args.only}")
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    if "uvloop" in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            p.error("uvloop is not installed in this Python")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    raise_nofile()
    arm_signals(args.max_seconds)

    workdir = Path(tempfile.mkdtemp(prefix="looper-bench-"))
    Child.workdir = workdir
    out = sys.stderr  # progress; the report goes to stdout
    started = time.monotonic()
    report: list[str] = []
    variants, lat_rows, mem_rows, mem_notes = [], [], [], []
    try:
        print(f"looper splice bench: {describe_machine()}", file=out, flush=True)
        if "throughput" in phases:
            print("throughput ...", file=out, flush=True)
            meter = LoadMeter()
            variants = phase_throughput(args, loops, workdir, out)
            note_noise("throughput", meter, phase_width=11)
        if "latency" in phases:
            print("latency ...", file=out, flush=True)
            meter = LoadMeter()
            lat_rows = phase_latency(args, loops, workdir, out)
            note_noise("latency", meter, phase_width=11)
        if "memory" in phases:
            print("memory ...", file=out, flush=True)
            meter = LoadMeter()
            mem_rows, mem_notes = phase_memory(args, loops, workdir, out)
            note_noise("memory", meter, phase_width=11)
        report.append(f"looper splice bench: {describe_machine()}")
        report.append(f"trap event loops: {', '.join(loops)}; observer: {', '.join(sorted(OBSERVER_KINDS)) or '?'}")
        if variants:
            report += [""] + print_throughput(args, variants)
        if lat_rows:
            report += [""] + print_latency(args, lat_rows)
        if mem_rows:
            report += [""] + print_memory(args, mem_rows, mem_notes)
        report += ["", "Machine noise (CPU of processes outside this bench while it ran):"] + NOISE
        report += [""] + verdicts(variants, lat_rows, mem_rows)
        report.append(f"\n(total {time.monotonic() - started:.0f} s)")
        print("\n".join(report), flush=True)
        return 0
    except (BenchError, KeyboardInterrupt) as err:
        report_abort(err)
        return 1
    finally:
        end_run(workdir, terminate=False, grace_s=3.0)  # closing stdin stops splice's children


if __name__ == "__main__":
    sys.exit(main())
