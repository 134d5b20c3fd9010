#!/usr/bin/env python3
"""SMTP session benchmark: looper's emulated relay beside aiosmtpd and Postfix's smtp-sink, in one run.

    .venv/bin/python bench/smtp.py                    # full run (about 6 minutes)
    .venv/bin/python bench/smtp.py --quick            # smoke run (about 40 s)
    .venv/bin/python bench/smtp.py --only sessions --concurrency 10 --seconds 10
    .venv/bin/python bench/smtp.py --only profile --profile /tmp/prof   # where looper's time goes

The servers, each in its own process on 127.0.0.1, all running for the whole run:

  looper     `python -m looper run -c <config>` as a user would run it, with the
             dial-back port set to a port where nothing listens: every session
             dials the client's own address back, is refused at once, and falls
             back to the emulated relay (Postfix persona), which logs every
             command and stores and fsyncs every message before its 250
             (messages differ, so none is a duplicate that skips the fsync).
  aiosmtpd   aiosmtpd.smtp.SMTP with the Sink handler (250 without storing) on
             the stdlib asyncio loop, as its Controller would serve it.
  smtp-sink  Postfix's C test server, which throws everything away: the ceiling.
  floor      (reference, not with --quick) a bare asyncio Protocol on looper's
             loop that answers each command line with a canned reply: no
             parsing, no log, no storage; the most any asyncio server can do.

What is measured (everything on 127.0.0.0/8, every process bounded in time):

1. sessions/s: complete transactions, one command in flight (no pipelining),
   every reply code checked: connect, 220, EHLO, MAIL, RCPT, DATA, 1 KiB of
   content (unique per session), ".", QUIT, 221, close. At concurrency 1, 10
   and 100, counted over a fixed window after a warm-up, median of --repeat
   runs, interleaved (c=1 looper, aiosmtpd, smtp-sink, c=10 ...) so that drift
   hits every server alike.
2. connections/s: connect, read the 220, close.
3. memory: N idle sessions (connected, greeted, then silent), the server's
   VmRSS before and with them: resident bytes per idle session (looper and
   aiosmtpd; the 10,000 default fits RLIMIT_NOFILE: one socket per session).
4. (--profile DIR) looper under the concurrency-10 load, once under cProfile
   and once under py-spy (if installed): where the time goes, per session.

The client is the same for every server: --client-procs processes (1 at
concurrency 1) of plain non-blocking sockets on one epoll each, from source
addresses 127.0.0.10 and up (IP_BIND_ADDRESS_NO_PORT, so TIME_WAIT does not
run out of ports). The machine may have few CPUs: the client competes with
the server, so the report gives the CPU used by the server (all its threads)
and by the client in each window, and the server's CPU per session, which
does not depend on who won the competition. Work by other processes on the
machine (and hypervisor steal) is measured, and a fixed Python loop timed
before and after every run tells whether the host slowed the whole virtual
machine down; a disturbed run is redone.

Each role runs as `python bench/smtp.py --role NAME ...` in a child process;
children die with the parent (PR_SET_PDEATHSIG), have their own deadlines, and
the parent kills and reaps whatever it started, on any error too.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # imported, not run as bench/smtp.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    NOISE, NOISY_RUN_RETRIES, NOISY_RUN_SHARE, REPO, BenchError, Child, LoadMeter, arm_signals, cpu_model,
    die_with_parent, emit, end_run, merged_failures, note_noise, proc_cpu_s, proc_fds, proc_rss_kib, raise_nofile,
    reap_quietly, release_idle_clients, report_abort, run_role, stdin_closed_event, free_port,
)

HERE = Path(__file__).resolve()

SERVER_HOST = "127.0.0.1"
LOAD_SOURCE_BASE = 10  # load clients bind 127.0.0.10, .11, ... (SOURCES_PER_PROC each)
SOURCES_PER_PROC = 4
IDLE_SOURCE_BASE = 2  # idle clients: 127.0.0.2, .3, ... (IDLE_PER_PROC each)
IDLE_PER_PROC = 2500
IDLE_INFLIGHT = 100  # connects in flight per idle-client process

STEP_TIMEOUT_S = 10.0  # one reply awaited longer than this: the session is an error
DRAIN_S = 10.0  # after the window, sessions in flight get this long to finish
START_DELAY_S = 0.3  # clients are spawned, then all start together
MAX_ERRORS_PER_PROC = 2000  # a server that fails this often is broken: stop hammering
SERVER_LISTEN_BACKLOG = 1024  # looper's own; given to aiosmtpd and smtp-sink too

CLIENT_NAME = b"client.bench.test"
EHLO = b"EHLO " + CLIENT_NAME + b"\r\n"
MAIL = b"MAIL FROM:<load@" + CLIENT_NAME + b">\r\n"
RCPT = b"RCPT TO:<sink@remote.bench.test>\r\n"
DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
MESSAGE_BYTES = 1024  # content, before the "." line
MESSAGE = object()  # stands for the session's own message in a script

# (expected reply code, what to send once it came; None: done, close)
SESSION_SCRIPT = (
    (b"220", EHLO),
    (b"250", MAIL),
    (b"250", RCPT),
    (b"250", DATA),
    (b"354", MESSAGE),
    (b"250", QUIT),
    (b"221", None),
)
CONNECT_SCRIPT = ((b"220", None),)
STEP_NAMES = ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "content", "QUIT")

SERVERS = ("looper", "aiosmtpd", "smtp-sink", "floor")
DEFAULT_SERVERS = {False: "looper,aiosmtpd,smtp-sink,floor", True: "looper,aiosmtpd,smtp-sink"}  # by --quick
TARGET_SESSION_RATIO = 2.0  # looper >= 2x aiosmtpd at every concurrency
TARGET_CONNECTIONS = 10_000  # connections/s
TARGET_IDLE_BYTES = 5_000  # resident bytes per idle session (5 KB)


# ---------------------------------------------------------------------------
# Helpers shared by all roles
# ---------------------------------------------------------------------------


def session_message(tag: bytes) -> tuple[bytes, bytes]:
    """(prefix, suffix): prefix + b"%012d" % n + suffix is message n, exactly
    MESSAGE_BYTES of content then the "." line. The Message-ID makes each
    one unique, so looper's content-addressed store writes every one."""
    prefix = (
        b"From: <load@" + CLIENT_NAME + b">\r\n"
        b"To: <sink@remote.bench.test>\r\n"
        b"Subject: bench message\r\n"
        b"Date: Sat, 22 Nov 2025 09:00:00 +0000\r\n"
        b"Message-ID: <" + tag + b"."
    )
    head_end = b"@" + CLIENT_NAME + b">\r\n\r\n"
    room = MESSAGE_BYTES - len(prefix) - 12 - len(head_end)
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"  # 76 bytes
    count, rest = divmod(room, len(line))
    if 0 < rest < 3:  # too short for a line of its own: the last full line makes room
        count, rest = count - 1, rest + len(line)
    body = line * count + (b"x" * (rest - 2) + b"\r\n" if rest else b"")
    suffix = head_end + body + b".\r\n"
    assert len(prefix) + 12 + len(suffix) - 3 == MESSAGE_BYTES, (len(prefix), len(suffix))
    return prefix, suffix


# ---------------------------------------------------------------------------
# Roles run in child processes
# ---------------------------------------------------------------------------


class _Conn:
    __slots__ = ("sock", "step", "buf", "started", "last")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.step = 0
        self.buf = b""
        self.started = now
        self.last = now


def role_load(argv: list[str]) -> None:
    """The load generator: `conc` SMTP sessions (or bare connections) in
    flight at all times, each waiting for every reply; counts what ends in
    the window [start + warmup, start + warmup + duration)."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("session", "connect"), required=True)
    p.add_argument("--conc", type=int, required=True)
    p.add_argument("--sources", required=True)
    p.add_argument("--start-at", type=float, required=True)  # time.monotonic(): one clock for all processes
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    a = p.parse_args(argv)
    raise_nofile()

    script = SESSION_SCRIPT if a.mode == "session" else CONNECT_SCRIPT
    last_step = len(script) - 1
    prefix, suffix = session_message(f"{os.getpid():07d}-{os.urandom(4).hex()}".encode())
    sources = [(s, 0) for s in a.sources.split(",")]
    address = (SERVER_HOST, a.port)
    no_port = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
    t0 = a.start_at + a.warmup
    t1 = t0 + a.duration
    ep = select.epoll()
    poll = ep.poll
    conns: dict[int, _Conn] = {}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    counters = {"serial": 0, "errors": 0, "message": 0}
    counted = total = 0
    ru0 = ru1 = None
    late = time.monotonic() > a.start_at

    def open_one(now: float) -> None:
        counters["serial"] += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_IP, no_port, 1)
            sock.bind(sources[counters["serial"] % len(sources)])
            err = sock.connect_ex(address)
        except OSError as exc:
            err = exc.errno or -1
        if err and err != errno.EINPROGRESS:
            sock.close()
            key = f"connect:{errno.errorcode.get(err, err)}"
            errors[key] = errors.get(key, 0) + 1
            counters["errors"] += 1
            return
        conns[sock.fileno()] = _Conn(sock, now)
        ep.register(sock.fileno(), select.EPOLLIN)

    def fail(fd: int, conn: _Conn, what: str) -> None:
        key = f"{STEP_NAMES[conn.step] if a.mode == 'session' else 'greeting'}:{what}"
        errors[key] = errors.get(key, 0) + 1
        counters["errors"] += 1
        del conns[fd]
        conn.sock.close()  # also leaves the epoll set

    now = time.monotonic()
    if now < a.start_at:
        time.sleep(a.start_at - now)
    now = time.monotonic()
    for _ in range(a.conc):
        open_one(now)
    running = True
    next_scan = now + 1.0
    while conns or running:
        events = poll(0.1)
        now = time.monotonic()
        if ru0 is None and now >= t0:
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
        if running and now >= t1:
            running = False
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            drain_until = now + DRAIN_S
        for fd, _ev in events:
            conn = conns.get(fd)
            if conn is None:
                continue
            sock = conn.sock
            try:
                data = sock.recv(65536)
            except OSError as exc:
                fail(fd, conn, type(exc).__name__)
                if running:
                    open_one(now)
                continue
            if not data:
                fail(fd, conn, "EOF")
                if running:
                    open_one(now)
                continue
            if conn.buf:
                data = conn.buf + data
            # A reply is complete when its last line is complete and final
            # ("ddd " or "ddd"): one command in flight, so it ends the buffer.
            if data[-1:] != b"\n":
                conn.buf = data
                if len(data) > 65536:
                    fail(fd, conn, "overlong reply")
                continue
            start = data.rfind(b"\n", 0, len(data) - 1) + 1
            if data[start + 3 : start + 4] == b"-":
                conn.buf = data
                continue
            conn.buf = b""
            expect, reply = script[conn.step]
            if data[:3] != expect or data[start : start + 3] != expect:
                fail(fd, conn, f"got {data[:3].decode('ascii', 'replace')}")
                if running:
                    open_one(now)
                continue
            if conn.step == last_step:
                total += 1
                if t0 <= now < t1:
                    counted += 1
                    latencies.append(now - conn.started)
                del conns[fd]
                sock.close()
                if running:
                    open_one(now)
                continue
            conn.step += 1
            conn.last = now
            if reply is MESSAGE:
                counters["message"] += 1  # unique: the prefix names this process, the number this message
                reply = prefix + b"%012d" % counters["message"] + suffix
            try:
                sent = sock.send(reply)
            except OSError as exc:
                fail(fd, conn, type(exc).__name__)
                if running:
                    open_one(now)
                continue
            if sent != len(reply):
                fail(fd, conn, "short send")
                if running:
                    open_one(now)
        if now >= next_scan:
            next_scan = now + 1.0
            for fd, conn in list(conns.items()):
                if now - conn.last > STEP_TIMEOUT_S:
                    fail(fd, conn, "timeout")
                    if running:
                        open_one(now)
            if counters["errors"] > MAX_ERRORS_PER_PROC:
                errors["aborted"] = 1
                break
        if not running and now > drain_until:
            for fd, conn in list(conns.items()):
                fail(fd, conn, "still open after the drain")
            break
        if running and len(conns) < a.conc:  # a connect that failed outright: keep the concurrency
            for _ in range(a.conc - len(conns)):
                open_one(now)
    if ru0 is None or ru1 is None:
        cpu_s = None
    else:
        cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    stride = max(1, len(latencies) // 4000)
    emit(
        {
            "sessions": counted,
            "total": total,
            "errors": errors,
            "cpu_s": cpu_s,
            "latencies": latencies[::stride],
            "late": late,
        }
    )


def role_idle(argv: list[str]) -> None:
    """`count` clients from one address that connect, wait for the 220 and
    then hold the connection, silent, until stdin closes."""
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--inflight", type=int, default=IDLE_INFLIGHT)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    raise_nofile()
    no_port = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
    ep = select.epoll()
    pending: dict[int, list] = {}  # fd -> [sock, buffer, started]
    held: list[socket.socket] = []
    failures: dict[str, int] = {}
    started = time.monotonic()
    deadline = started + a.timeout
    opened = 0

    def fail(what: str) -> None:
        failures[what] = failures.get(what, 0) + 1

    while len(held) + sum(failures.values()) < a.count and time.monotonic() < deadline:
        while opened < a.count and len(pending) < a.inflight:
            opened += 1
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_IP, no_port, 1)
                sock.bind((a.addr, 0))
                err = sock.connect_ex((SERVER_HOST, a.port))
            except OSError as exc:
                err = exc.errno or -1
            if err and err != errno.EINPROGRESS:
                sock.close()
                fail(f"connect:{errno.errorcode.get(err, err)}")
                continue
            pending[sock.fileno()] = [sock, b"", time.monotonic()]
            ep.register(sock.fileno(), select.EPOLLIN)
        for fd, _ev in ep.poll(0.2):
            entry = pending.get(fd)
            if entry is None:
                continue
            sock = entry[0]
            try:
                data = sock.recv(4096)
            except OSError as exc:
                data = None
                fail(type(exc).__name__)
            if data == b"":
                fail("EOF")
            if not data:
                del pending[fd]
                sock.close()
                continue
            entry[1] += data
            if not entry[1].endswith(b"\n"):
                continue
            del pending[fd]
            ep.unregister(fd)
            if entry[1].startswith(b"220 ") or entry[1].startswith(b"220-"):
                held.append(sock)
            else:
                fail(f"got {entry[1][:3].decode('ascii', 'replace')}")
                sock.close()
        now = time.monotonic()
        for fd, entry in list(pending.items()):
            if now - entry[2] > STEP_TIMEOUT_S * 3:
                del pending[fd]
                entry[0].close()
                fail("timeout")
    for entry in pending.values():
        entry[0].close()
        fail("timeout")
    emit({"ok": len(held), "failures": failures, "seconds": time.monotonic() - started})
    sys.stdin.buffer.read()  # hold until the parent closes our stdin
    for sock in held:
        sock.close()


def role_aiosmtpd(argv: list[str]) -> None:
    """aiosmtpd with the Sink handler, served as its Controller would (one
    SMTP protocol per connection), on the stdlib asyncio loop."""
    import asyncio

    from aiosmtpd.handlers import Sink
    from aiosmtpd.smtp import SMTP

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    raise_nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = Sink()
        # A fixed hostname: without one aiosmtpd calls socket.getfqdn() per
        # connection, which measures the resolver, not aiosmtpd.
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.bench.test"),
            SERVER_HOST, a.port, backlog=SERVER_LISTEN_BACKLOG, reuse_address=True,
        )
        stop = stdin_closed_event(loop)
        emit({"ready": True})
        await stop.wait()
        server.close()

    asyncio.run(main())


def role_floor(argv: list[str]) -> None:
    """Reference: the least an asyncio SMTP responder can do, on the same
    loop as looper: a bare Protocol that answers each command line with a
    canned reply and finds the end of DATA; no parsing, no log, no storage."""
    import asyncio

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    raise_nofile()
    replies = {
        b"EHLO": b"250-floor.bench.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        b"HELO": b"250 floor.bench.test\r\n",
        b"MAIL": b"250 2.1.0 Ok\r\n",
        b"RCPT": b"250 2.1.5 Ok\r\n",
        b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
        b"QUIT": b"221 2.0.0 Bye\r\n",
    }

    class Floor(asyncio.Protocol):
        __slots__ = ("transport", "buf", "in_data")

        def connection_made(self, transport) -> None:
            self.transport, self.buf, self.in_data = transport, b"", False
            transport.write(b"220 floor.bench.test ESMTP\r\n")

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data if self.buf else data
            while buf:
                if self.in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    buf, self.in_data = buf[end + 5 :], False
                    self.transport.write(b"250 2.0.0 Ok: queued\r\n")
                    continue
                end = buf.find(b"\n")
                if end < 0:
                    break
                verb, buf = buf[:4].upper(), buf[end + 1 :]
                self.transport.write(replies.get(verb, b"502 5.5.2 Error: command not recognized\r\n"))
                if verb == b"DATA":
                    self.in_data, buf = True, b"\r\n" + buf  # the DATA line's CRLF starts the search
                elif verb == b"QUIT":
                    self.transport.close()
                    return
            self.buf = buf

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Floor, SERVER_HOST, a.port, backlog=SERVER_LISTEN_BACKLOG,
                                          reuse_address=True)
        stop = stdin_closed_event(loop)
        emit({"ready": True})
        await stop.wait()
        server.close()

    asyncio.run(main())


ROLES = {"load": role_load, "idle": role_idle, "aiosmtpd": role_aiosmtpd, "floor": role_floor}


# ---------------------------------------------------------------------------
# The conductor: processes, phases, tables
# ---------------------------------------------------------------------------


def role_argv(role: str, *args: object) -> list[str]:
    return [sys.executable, str(HERE), "--role", role, *map(str, args)]


def smtp_probe(port: int, deadline: float) -> None:
    """Until the deadline: connect, 220, QUIT, 221 (the server is up)."""
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((SERVER_HOST, port), timeout=5) as sock:
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("EOF before the greeting")
                    buf += chunk
                if not buf.startswith(b"220"):
                    raise ConnectionError(f"greeting {buf[:60]!r}")
                sock.sendall(QUIT)
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                return
        except OSError as err:
            last = err
            time.sleep(0.05)
    raise BenchError(f"nothing answers SMTP on {SERVER_HOST}:{port}: {last}")


class Server:
    """One server under test, in its own process, for the whole phase."""

    name = "?"

    def __init__(self) -> None:
        self.port = 0
        self.child: Child | None = None
        self.sessions_done = 0  # complete sessions the clients had with it

    @property
    def pid(self) -> int:
        return self.child.pid

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def alive(self) -> bool:
        return self.child is not None and self.child.proc.poll() is None

    def stop(self) -> None:
        if self.child is None:
            return
        self.child.close_stdin()
        self.child.signal(signal.SIGTERM)
        try:
            self.child.wait(time.monotonic() + 15)
        except BenchError:
            pass
        self.child = None


class LooperServer(Server):
    name = "looper"

    def __init__(self, workdir: Path, used_ports: set[int], profile: str = "") -> None:
        super().__init__()
        self.port = free_port(used_ports)
        used_ports.add(self.port)
        # Nothing listens on the dial-back port, on any address: every
        # dial-back is refused, every session falls back to the emulated relay.
        self.dialback_port = free_port(used_ports)
        used_ports.add(self.dialback_port)
        self.log_dir = workdir / f"looper-{self.port}"
        self.config_path = workdir / f"looper-{self.port}.yaml"
        config = {
            "sensor": "bench",
            "listen": {"smtp": [f"{SERVER_HOST}:{self.port}"]},
            "dialback": {"port": self.dialback_port, "allow_private": True, "on_failure": "emulate"},
            "limits": {"per_ip": 20000, "total": 20000},
            "smtp": {"hostname": "mx.bench.test"},
            "log": {"dir": str(self.log_dir), "max_bytes": 256 << 20, "backups": 1},
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        argv = [sys.executable]
        if profile:
            argv += ["-m", "cProfile", "-o", profile]
        argv += ["-m", "looper", "run", "-c", str(self.config_path)]
        self.child = Child("looper", argv, stdout_pipe=False)
        smtp_probe(self.port, time.monotonic() + 30)

    def stop(self) -> None:
        # looper stops gracefully on SIGTERM (and, under cProfile, then dumps its stats)
        if self.child is not None:
            self.child.signal(signal.SIGTERM)
            try:
                self.child.wait(time.monotonic() + 20)
            except BenchError:
                pass
            self.child = None

    def messages_on_disk(self) -> int:
        try:
            return sum(1 for entry in os.scandir(self.log_dir / "messages") if entry.name.endswith(".eml"))
        except OSError:
            return 0


class AiosmtpdServer(Server):
    name = "aiosmtpd"
    role = "aiosmtpd"

    def __init__(self, used_ports: set[int]) -> None:
        super().__init__()
        self.port = free_port(used_ports)
        used_ports.add(self.port)
        self.child = Child(self.name, role_argv(self.role, "--port", self.port), stdin_pipe=True)
        self.child.read_json(time.monotonic() + 30)
        smtp_probe(self.port, time.monotonic() + 10)


class FloorServer(AiosmtpdServer):
    name = "floor"
    role = "floor"


def _sink_preexec() -> None:
    """smtp-sink refuses to run as root without -u; with -u it changes its
    uid, which clears the parent-death signal. So: drop to postfix here, then
    ask for the signal, and exec smtp-sink without -u."""
    if os.getuid() == 0:
        import pwd

        user = pwd.getpwnam("postfix")
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    die_with_parent()


class SinkServer(Server):
    name = "smtp-sink"

    def __init__(self, used_ports: set[int]) -> None:
        super().__init__()
        self.port = free_port(used_ports)
        used_ports.add(self.port)
        argv = [smtp_sink_path(), "-h", "sink.bench.test", "-m", "1000",
                f"{SERVER_HOST}:{self.port}", str(SERVER_LISTEN_BACKLOG)]
        self.child = Child("smtp-sink", argv, preexec=_sink_preexec, stdout_pipe=False)
        smtp_probe(self.port, time.monotonic() + 10)


def smtp_sink_path() -> str:
    return shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def available_servers(wanted: list[str]) -> tuple[list[str], list[str]]:
    """(servers we can run, notes about those we cannot)."""
    have, notes = [], []
    for name in wanted:
        if name == "aiosmtpd":
            try:
                import aiosmtpd  # noqa: F401
            except ImportError:
                notes.append("aiosmtpd is not installed in this Python (`.venv/bin/pip install aiosmtpd`): skipped")
                continue
        if name == "smtp-sink":
            if not os.access(smtp_sink_path(), os.X_OK):
                notes.append("smtp-sink not found (Debian: apt-get install postfix): skipped")
                continue
            if os.getuid() == 0:
                try:
                    import pwd

                    pwd.getpwnam("postfix")
                except KeyError:
                    notes.append("running as root and no postfix user for smtp-sink: skipped")
                    continue
        have.append(name)
    return have, notes


def start_server(name: str, workdir: Path, used_ports: set[int], profile: str = "") -> Server:
    if name == "looper":
        return LooperServer(workdir, used_ports, profile)
    if name == "aiosmtpd":
        return AiosmtpdServer(used_ports)
    if name == "floor":
        return FloorServer(used_ports)
    return SinkServer(used_ports)


# -- one measured run -----------------------------------------------------------


@dataclass
class Run:
    rate: float  # sessions (or connections) per second
    sessions: int
    server_cpu_s: float
    client_cpu_s: float
    seconds: float
    errors: dict
    latencies: list[float]
    total: int  # every session completed, window or not
    foreign_share: float = 0.0
    speed: float = 1.0  # the machine's speed around the run, as a share of its best in this bench


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def load_run(server: Server, mode: str, conc: int, seconds: float, warmup: float, procs: int,
             on_window=None, on_window_end=None) -> Run:
    """One window of load on `server`: `procs` client processes share `conc`."""
    procs = max(1, min(procs, conc))
    start_at = time.monotonic() + START_DELAY_S
    t0, t1 = start_at + warmup, start_at + warmup + seconds
    clients = []
    try:
        for k, n in enumerate(split(conc, procs)):
            sources = ",".join(f"127.0.0.{LOAD_SOURCE_BASE + SOURCES_PER_PROC * k + j}" for j in range(SOURCES_PER_PROC))
            clients.append(Child(f"load[{server.name},{k}]", role_argv(
                "load", "--port", server.port, "--mode", mode, "--conc", n, "--sources", sources,
                "--start-at", f"{start_at:.6f}", "--warmup", warmup, "--duration", seconds)))
        time.sleep(max(0.0, t0 - time.monotonic()))
        cpu_a = server.cpu_s()
        if on_window is not None:
            on_window(seconds)
        time.sleep(max(0.0, t1 - time.monotonic()))
        cpu_b = server.cpu_s()
        if on_window_end is not None:
            on_window_end()
        deadline = t1 + DRAIN_S + 20
        results = [c.read_json(deadline) for c in clients]
        for c in clients:
            c.wait(deadline)
    finally:
        for c in clients:
            c.kill()
    errors: dict[str, int] = {}
    for r in results:
        for key, n in r["errors"].items():
            errors[key] = errors.get(key, 0) + n
        if r["late"]:
            errors["client started late"] = errors.get("client started late", 0) + 1
    sessions = sum(r["sessions"] for r in results)
    total = sum(r["total"] for r in results)
    server.sessions_done += total if mode == "session" else 0
    return Run(
        rate=sessions / seconds,
        sessions=sessions,
        server_cpu_s=cpu_b - cpu_a,
        client_cpu_s=sum(r["cpu_s"] or 0.0 for r in results),
        seconds=seconds,
        errors=errors,
        latencies=[x for r in results for x in r["latencies"]],
        total=total,
    )


SPEED_PROBES: list[float] = []  # seconds of every speed probe in this run


def speed_probe() -> float:
    """How fast a CPU is right now: seconds for a fixed pure-Python loop, best
    of 9 (~70 ms in all). A virtual machine can be slowed by its host without
    any steal time showing inside; a run with the machine much slower than its
    best is redone. (Idle, this machine's probes already vary by ~10%.)"""
    best = math.inf
    for _ in range(9):
        t = time.perf_counter()
        x = 0
        for i in range(100_000):
            x += i * i
        best = min(best, time.perf_counter() - t)
    SPEED_PROBES.append(best)
    return best


def measured_run(server: Server, mode: str, conc: int, args, label: str, out) -> Run:
    """load_run, redone if other work on the machine disturbed it, or if the
    machine itself was slow (speed probes before and after)."""
    for attempt in range(1 + NOISY_RUN_RETRIES):
        before = speed_probe()
        meter = LoadMeter()
        run = load_run(server, mode, conc, args.seconds, args.warmup, 1 if conc == 1 else args.client_procs)
        run.foreign_share = meter.share()[1]
        time.sleep(0.2)  # the server finishes what the drain left before the probe
        speed = min(SPEED_PROBES) / max(before, speed_probe())
        run.speed = speed
        disturbed = run.foreign_share > NOISY_RUN_SHARE or speed < SLOW_MACHINE_SPEED
        noisy = disturbed and attempt < NOISY_RUN_RETRIES
        err = f"  errors {sum(run.errors.values())}" if run.errors else ""
        print(f"  {label} {server.name:<10} {run.rate:9,.0f}/s  server CPU {run.server_cpu_s / run.seconds:4.0%}"
              f"  client CPU {run.client_cpu_s / run.seconds:4.0%}  (others {run.foreign_share:4.0%},"
              f" speed {speed:4.0%})" + err + ("  disturbed, again" if noisy else ""), file=out, flush=True)
        if noisy:
            REDONE.append(label)
        if not noisy:
            return run
        time.sleep(0.5)
    return run


SLOW_MACHINE_SPEED = 0.8  # a run with a speed probe this much slower than the best is redone
REDONE: list[str] = []


# -- phases 1 and 2: sessions/s and connections/s -------------------------------


@dataclass
class Point:
    mode: str
    conc: int
    server: str
    runs: list[Run] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    def median_of(self, attr) -> float:
        return statistics.median(attr(r) for r in self.runs)

    @property
    def errors(self) -> dict:
        merged: dict[str, int] = {}
        for r in self.runs:
            for k, n in r.errors.items():
                merged[k] = merged.get(k, 0) + n
        return merged


def phase_rates(args, names: list[str], workdir: Path, out) -> tuple[list[Point], dict]:
    used_ports: set[int] = set()
    servers: dict[str, Server] = {}
    plan: list[tuple[str, int]] = []
    if "sessions" in args.phases:
        plan += [("session", c) for c in args.concurrency]
    if "connections" in args.phases:
        plan += [("connect", args.conn_concurrency)]
    points = {(mode, conc, name): Point(mode, conc, name) for mode, conc in plan for name in names}
    disk = {}
    try:
        for name in names:
            servers[name] = start_server(name, workdir, used_ports)
            # warm-up: code paths, caches, the message folder, the writer threads
            load_run(servers[name], "session", 10, args.warmup * 2, 0.0, args.client_procs)
        print(f"  servers: " + ", ".join(f"{s.name} on {SERVER_HOST}:{s.port} (pid {s.pid})" for s in servers.values()),
              file=out, flush=True)
        for rep in range(args.repeat):
            for mode, conc in plan:
                for name in names:
                    server = servers[name]
                    if not server.alive():
                        raise BenchError(f"{name} died: {server.child.err_tail()}")
                    label = f"run {rep + 1}/{args.repeat} {'sessions' if mode == 'session' else 'connects'} c={conc:<3}"
                    points[(mode, conc, name)].runs.append(measured_run(server, mode, conc, args, label, out))
        looper = servers.get("looper")
        if isinstance(looper, LooperServer):
            time.sleep(0.5)
            disk = {"acknowledged": looper.sessions_done, "on_disk": looper.messages_on_disk(),
                    "rss_kib": looper.rss_kib()}
    finally:
        for server in servers.values():
            server.stop()
    return list(points.values()), disk


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def print_rates(args, points: list[Point], disk: dict) -> list[str]:
    lines: list[str] = []
    by = {(p.mode, p.conc, p.server): p for p in points}
    for mode in ("session", "connect"):
        rows = [p for p in points if p.mode == mode]
        if not rows:
            continue
        if mode == "session":
            lines += [
                "",
                f"Sessions/s: connect, 220, EHLO, MAIL, RCPT, DATA, {MESSAGE_BYTES} bytes of content (unique each), "
                f"\".\", QUIT, 221;",
                f"one command in flight, every reply code checked; median of {args.repeat} run(s) of {args.seconds:g} s",
            ]
        else:
            lines += ["", f"Connections/s: connect, read the 220, close; concurrency {args.conn_concurrency}, "
                          f"median of {args.repeat} run(s) of {args.seconds:g} s"]
        lines.append(
            f"  {'conc':>4}  {'server':<10}{'per s':>9}  {'min-max':>15}  {'p50 ms':>7} {'p99 ms':>7}"
            f"  {'server CPU':>10} {'us/each':>8}  {'client CPU':>10} {'us/each':>8}  {'vs aiosmtpd':>11} {'vs smtp-sink':>12}"
            f"  errors"
        )
        for p in rows:
            lat = sorted(x for r in p.runs for x in r.latencies)
            p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
            srv = p.median_of(lambda r: r.server_cpu_s / r.seconds)
            srv_us = p.median_of(lambda r: r.server_cpu_s / max(1, r.sessions) * 1e6)
            cli = p.median_of(lambda r: r.client_cpu_s / r.seconds)
            cli_us = p.median_of(lambda r: r.client_cpu_s / max(1, r.sessions) * 1e6)
            ratios = []
            for ref in ("aiosmtpd", "smtp-sink"):
                other = by.get((p.mode, p.conc, ref))
                ratios.append(None if other is None or other is p or not other.rate else p.rate / other.rate)
            rates = [r.rate for r in p.runs]
            err = p.errors
            lines.append(
                f"  {p.conc:>4}  {p.server:<10}{p.rate:9,.0f}  {min(rates):7,.0f}-{max(rates):<7,.0f}  {p50:7.2f} {p99:7.2f}"
                f"  {srv:>10.0%} {srv_us:8.0f}  {cli:>10.0%} {cli_us:8.0f}  {fmt_ratio(ratios[0]):>11} {fmt_ratio(ratios[1]):>12}"
                f"  {sum(err.values()) if err else 0}" + (f" {err}" if err else "")
            )
    if points:
        lines.append("  (server CPU: all its threads, as a share of one CPU over the window; us/each: CPU microseconds")
        lines.append(f"  per completed session or connection; client: the {args.client_procs} load processes (1 at "
                     f"concurrency 1); p50/p99: one session's (connection's) time as the client saw it;")
        lines.append("  floor: a bare asyncio Protocol on looper's loop answering each line with a canned reply, no parsing,"
                     " no log, no storage: the most any asyncio server can do here)")
    if disk:
        ok = disk["on_disk"] >= disk["acknowledged"]
        lines.append(f"  looper: {disk['on_disk']:,} messages on disk for {disk['acknowledged']:,} acknowledged "
                     f"(files in <log.dir>/messages, fsynced before each 250): {'all there' if ok else 'MISSING SOME'};"
                     f" its RSS after the phase {disk['rss_kib'] / 1024:.1f} MiB")
    return lines


# -- phase 3: memory ---------------------------------------------------------------


@dataclass
class MemoryRow:
    server: str
    sessions: int
    rss_before_kib: int
    rss_with_kib: int
    rss_after_kib: int
    fds_with: int
    setup_s: float
    failures: dict
    workers: int

    @property
    def per_session_bytes(self) -> float:
        return (self.rss_with_kib - self.rss_before_kib) * 1024 / max(1, self.sessions)


def phase_memory(args, names: list[str], workdir: Path, out) -> tuple[list[MemoryRow], list[str]]:
    notes: list[str] = []
    hard = raise_nofile()
    rows = []
    used_ports: set[int] = set()
    for name in [n for n in names if n in ("looper", "aiosmtpd", "floor")]:
        server = start_server(name, workdir, used_ports)
        workers: list[Child] = []
        try:
            load_run(server, "session", 10, 0.5, 0.0, 1)  # warm-up, as in the rate phases
            load_run(server, "connect", 10, 0.3, 0.0, 1)
            time.sleep(1.0)
            base_fds = proc_fds(server.pid)
            cap = hard - base_fds - 64
            sessions = min(args.sessions, cap)
            if sessions < args.sessions:
                notes.append(f"    {name} may hold {hard} fds (RLIMIT_NOFILE hard limit) and has {base_fds} open: "
                             f"{sessions:,} sessions instead of {args.sessions:,}")
            rss_before = server.rss_kib()
            nworkers = max(1, math.ceil(sessions / IDLE_PER_PROC))
            t0 = time.monotonic()
            for k, count in enumerate(split(sessions, nworkers)):
                workers.append(Child(f"idle[{name},{k}]", role_argv(
                    "idle", "--addr", f"127.0.0.{IDLE_SOURCE_BASE + k}", "--port", server.port, "--count", count),
                    stdin_pipe=True))
            deadline = time.monotonic() + 180
            reports = [w.read_json(deadline) for w in workers]
            setup_s = time.monotonic() - t0
            ok = sum(r["ok"] for r in reports)
            failures = merged_failures(reports)
            time.sleep(1.0)  # the last sessions' events written, timers armed
            rss_with = server.rss_kib()
            fds_with = proc_fds(server.pid)
            release_idle_clients(workers, server.pid, base_fds)
            time.sleep(0.5)
            rss_after = server.rss_kib()
            row = MemoryRow(name, ok, rss_before, rss_with, rss_after, fds_with, setup_s, failures, nworkers)
            rows.append(row)
            print(f"  {name:<10} {ok:,} idle sessions up in {setup_s:.1f} s, RSS {rss_before / 1024:.1f} -> "
                  f"{rss_with / 1024:.1f} MiB ({row.per_session_bytes / 1000:.2f} KB each), {fds_with:,} fds; "
                  f"after close {rss_after / 1024:.1f} MiB" + (f"; failures {failures}" if failures else ""),
                  file=out, flush=True)
        finally:
            reap_quietly(workers)
            server.stop()
    return rows, notes


def print_memory(rows: list[MemoryRow], notes: list[str]) -> list[str]:
    lines = [
        "",
        "Memory: idle sessions (connected, greeted, silent), the server's VmRSS",
        f"  {'server':<10}{'sessions':>9}{'fds':>8}{'RSS before':>13}{'RSS with':>11}{'per session':>13}"
        f"{'after close':>13}{'setup':>8}",
    ]
    for r in rows:
        lines.append(
            f"  {r.server:<10}{r.sessions:>9,}{r.fds_with:>8,}{r.rss_before_kib / 1024:>9.1f} MiB"
            f"{r.rss_with_kib / 1024:>7.1f} MiB{r.per_session_bytes / 1000:>9.2f} KB{r.rss_after_kib / 1024:>9.1f} MiB"
            f"{r.setup_s:>7.1f}s" + (f"  failures: {r.failures}" if r.failures else "")
        )
    if rows:
        k = rows[0].workers
        lines.append(f"  (per session = (RSS with - RSS before) / sessions, 1 KB = 1,000 bytes; clients from 127.0.0.2-"
                     f"127.0.0.{IDLE_SOURCE_BASE + k - 1}, {k} process{'es' if k > 1 else ''};")
        lines.append("  RSS is the server process's only: the kernel's socket memory is apart; floor: a bare asyncio Protocol)")
    return lines + notes


# -- phase 4: profile ----------------------------------------------------------------


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of `pid`, by "tid name"."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        f = text.rsplit(")", 1)[1].split()
        out[f"{tid} {name}"] = (int(f[11]) + int(f[12])) / tick
    return out


def phase_profile(args, workdir: Path, out) -> list[str]:
    """looper under the concurrency-10 load: the CPU of each of its threads
    and py-spy's samples (unprofiled speed, if py-spy is installed), then
    cProfile (every call counted; about 2x slower)."""
    pdir = Path(args.profile).resolve()
    pdir.mkdir(parents=True, exist_ok=True)
    secs = args.profile_seconds
    lines = ["", f"Profile of looper under the concurrency-10 session load ({secs:g} s each; files in {pdir})"]
    used_ports: set[int] = set()
    # unprofiled: CPU per thread, and py-spy ------------------------------------------
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    have_spy = os.access(pyspy, os.X_OK)
    raw, svg = pdir / "looper-c10.collapsed", pdir / "looper-c10.svg"
    server = start_server("looper", workdir, used_ports)
    pid = server.pid
    spies: list[Child] = []
    snap: dict = {}

    def window_start(seconds: float) -> None:
        snap["a"] = thread_cpu(server.pid)
        if have_spy:
            # --idle: the event loop's wait in epoll is sampled too, and told apart below
            spies.append(Child("py-spy", [pyspy, "record", "--pid", str(server.pid), "--rate", str(PYSPY_HZ),
                                          "--duration", str(int(seconds)), "--nonblocking", "--threads", "--idle",
                                          "--format", "raw", "-o", str(raw)], stdout_pipe=False))

    def window_end() -> None:
        snap["b"] = thread_cpu(server.pid)

    try:
        load_run(server, "session", 10, 1.0, 0.0, args.client_procs)  # warm-up
        run = load_run(server, "session", 10, secs, 0.5, args.client_procs,
                       on_window=window_start, on_window_end=window_end)
        for spy in spies:
            spy.wait(time.monotonic() + 30)
        if have_spy:  # a flame graph, from a second, shorter window
            svg_child = Child("py-spy", [pyspy, "record", "--pid", str(server.pid), "--rate", str(PYSPY_HZ),
                                         "--duration", str(max(2, int(secs // 2))), "--nonblocking",
                                         "--format", "flamegraph", "-o", str(svg)], stdout_pipe=False)
            load_run(server, "session", 10, max(2, secs // 2), 0.3, args.client_procs)
            svg_child.wait(time.monotonic() + 30)
    finally:
        server.stop()
    n = max(1, run.sessions)
    main_tid = str(pid)  # the event loop thread's id is the process id
    per_thread = {k: snap["b"].get(k, 0.0) - v for k, v in snap["a"].items()}
    main_cpu = sum(v for k, v in per_thread.items() if k.split()[0] == main_tid)
    other_cpu = sum(v for k, v in per_thread.items() if k.split()[0] != main_tid)
    lines.append(
        f"  unprofiled: {run.rate:,.0f} sessions/s; CPU per session: event loop thread {main_cpu / n * 1e6:,.0f} us "
        f"({main_cpu / run.seconds:.0%} of a CPU), the other {len(per_thread) - 1} threads (message writers) "
        f"{other_cpu / n * 1e6:,.0f} us ({other_cpu / run.seconds:.0%})"
    )
    if have_spy and raw.exists():
        lines += pyspy_table(raw, run, main_cpu)
    elif have_spy:
        lines.append(f"  py-spy: no output ({spies[0].err_tail() if spies else '?'})")
    else:
        lines.append("  py-spy: not installed (`.venv/bin/pip install py-spy`): no sampling profile")
    if svg.exists():
        lines.append(f"  flame graph: {svg}")
    # cProfile -----------------------------------------------------------------------
    prof_path = pdir / "looper-c10.prof"
    server = start_server("looper", workdir, used_ports, profile=str(prof_path))
    try:
        load_run(server, "session", 10, secs, 0.5, args.client_procs)
        sessions = server.sessions_done
    finally:
        server.stop()
    if prof_path.exists():
        lines += cprofile_table(prof_path, sessions, main_cpu / n * 1e6)
    else:
        lines.append(f"  cProfile: no stats written ({prof_path})")
    return lines


PYSPY_HZ = 250


def _short(path: str) -> str:
    for marker in ("/looper/", "/asyncio/", "/site-packages/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path.rsplit("/", 1)[-1]


def cprofile_table(path: Path, sessions: int, main_us: float, top: int = 30) -> list[str]:
    import pstats

    stats = pstats.Stats(str(path))
    entries = []
    total_tt = 0.0
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        total_tt += tt
        entries.append((tt, ct, nc, f"{_short(file)}:{line}({func})" if file != "~" else func))
    idle = sum(tt for tt, _, _, name in entries if "of 'select.epoll' objects" in name and "poll" in name)
    busy = total_tt - idle
    n = max(1, sessions)
    lines = [
        f"  cProfile (event loop thread; every call timed): {sessions:,} sessions, {busy / n * 1e6:,.0f} us busy per "
        f"session (+ {idle / n * 1e6:,.0f} us in epoll), vs {main_us:,.0f} us unprofiled:",
        f"  the profiler's overhead inflates everything by ~{busy / n * 1e6 / max(1.0, main_us):.1f}x; "
        f"'share' is of the busy time, 'est us' that share of the unprofiled {main_us:,.0f} us",
        f"    {'share':>6} {'est us':>7} {'calls/sess':>10} {'cum share':>9}  function   [by self time]",
    ]
    for tt, ct, nc, name in sorted((e for e in entries if "of 'select.epoll' objects" not in e[3]), reverse=True)[:top]:
        lines.append(f"    {tt / busy:6.1%} {tt / busy * main_us:7.1f} {nc / n:10.2f} {ct / busy:9.1%}  {name}")
    lines.append(f"    {'cum share':>6} {'est us':>7} {'calls/sess':>10}  looper function   [by cumulative time]")
    ours = [e for e in entries if e[3].startswith("looper/")]
    for tt, ct, nc, name in sorted(ours, key=lambda e: -e[1])[:top]:
        lines.append(f"    {min(ct / busy, 1):6.1%} {min(ct / busy, 1) * main_us:7.1f} {nc / n:10.2f}  {name}")
    return lines


def pyspy_table(path: Path, run: Run, main_cpu_s: float, top: int = 30) -> list[str]:
    """Self and inclusive samples per function in the event loop thread (busy
    samples only: those not waiting in epoll), and samples per thread."""
    import re

    frame_re = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
    self_main: dict[str, int] = {}
    incl_main: dict[str, int] = {}
    main_busy = main_idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith("thread") else "thread ?"
        names = []
        for f in frames[1:] if frames[0].startswith("thread") else frames:
            m = frame_re.match(f)
            names.append(f"{m.group(1)} ({_short(m.group(2))})" if m else f)
        leaf = names[-1] if names else "?"
        idle = leaf.startswith(("EpollSelector.select", "select (selectors", "_worker (concurrent")) or \
            "poll" in leaf and "selectors" in leaf
        if not thread.endswith("MainThread"):
            continue
        if idle:
            main_idle += n
            continue
        main_busy += n
        self_main[leaf] = self_main.get(leaf, 0) + n
        for name in set(names):
            incl_main[name] = incl_main.get(name, 0) + n
    sessions = max(1, run.sessions)
    main_us = main_cpu_s / sessions * 1e6
    share = lambda k: k / max(1, main_busy)  # noqa: E731
    lines = [
        f"  py-spy ({PYSPY_HZ} Hz, not pausing the process): event loop thread {main_busy:,} samples busy, "
        f"{main_idle:,} waiting in epoll ({main_busy / max(1, main_busy + main_idle):.0%} busy);",
        f"  'est us' = share of the busy samples x the thread's {main_us:,.0f} us CPU per session",
        f"    {'self':>6} {'est us':>7}  function   [event loop thread, by self samples]",
    ]
    for name, k in sorted(self_main.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {share(k):6.1%} {share(k) * main_us:7.1f}  {name}")
    lines.append(f"    {'incl':>6} {'est us':>7}  function   [event loop thread, inclusive]")
    skip = ("_run_module_as_main", "_run_code", "<module>", "main (looper/cli", "_run (looper/cli", "run (asyncio",
            "Runner.run", "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever")
    ranked = [kv for kv in sorted(incl_main.items(), key=lambda kv: -kv[1]) if not kv[0].startswith(skip)]
    for name, k in ranked[:top + 10]:
        lines.append(f"    {share(k):6.1%} {share(k) * main_us:7.1f}  {name}")
    return lines


# -- verdicts ---------------------------------------------------------------------------


def verdicts(points: list[Point], disk: dict, mem_rows: list[MemoryRow]) -> list[str]:
    lines = ["", "Targets:"]
    by = {(p.mode, p.conc, p.server): p for p in points}
    for p in points:
        if p.mode != "session" or p.server != "looper":
            continue
        ref = by.get(("session", p.conc, "aiosmtpd"))
        if ref is None:
            lines.append(f"    sessions/s c={p.conc}: no aiosmtpd figure: n/a")
            continue
        ratio = p.rate / ref.rate if ref.rate else float("inf")
        ok = ratio >= TARGET_SESSION_RATIO and not p.errors
        lines.append(f"    sessions/s c={p.conc:<3} looper {p.rate:,.0f} >= {TARGET_SESSION_RATIO:g}x aiosmtpd "
                     f"{ref.rate:,.0f} ({ratio:.2f}x){', errors' if p.errors else ''}: {'PASS' if ok else 'FAIL'}")
    if disk:
        ok = disk["on_disk"] >= disk["acknowledged"]
        lines.append(f"    every acknowledged message stored: {disk['on_disk']:,} files for {disk['acknowledged']:,}: "
                     f"{'PASS' if ok else 'FAIL'}")
    for p in points:
        if p.mode == "connect" and p.server == "looper":
            ok = p.rate >= TARGET_CONNECTIONS and not p.errors
            lines.append(f"    connections/s looper {p.rate:,.0f} >= {TARGET_CONNECTIONS:,}"
                         f"{', errors' if p.errors else ''}: {'PASS' if ok else 'FAIL'}")
    for r in mem_rows:
        if r.server == "looper":
            ok = r.per_session_bytes < TARGET_IDLE_BYTES and not r.failures
            lines.append(f"    idle session resident looper {r.per_session_bytes / 1000:.2f} KB < "
                         f"{TARGET_IDLE_BYTES / 1000:g} KB ({r.sessions:,} sessions): {'PASS' if ok else 'FAIL'}")
    if len(lines) == 2:
        lines.append("    (no looper figures in this run)")
    return lines


def describe_machine(workdir: Path) -> list[str]:
    import importlib.metadata

    try:
        aiosmtpd_v = importlib.metadata.version("aiosmtpd")
    except Exception:
        aiosmtpd_v = "not installed"
    try:
        postfix_v = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "postfix"], capture_output=True,
                                   text=True, timeout=5).stdout.strip() or "?"
    except Exception:
        postfix_v = "?"
    cpu = cpu_model()
    fs = "?"
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, kind = line.split()[:3]
            if str(workdir).startswith(mnt) and len(mnt) >= len(best):
                best, fs = mnt, f"{kind} on {dev}"
    except Exception:
        pass
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "looper"],
                               capture_output=True, text=True, timeout=5).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
        code = f"looper at git {rev}" + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else "")
    except Exception:
        code = "looper (git revision unknown)"
    return [
        code,
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()} "
        f"(stdlib asyncio loop for looper and aiosmtpd), aiosmtpd {aiosmtpd_v}, smtp-sink from Postfix {postfix_v}",
        f"looper's log.dir (events, messages) in {workdir}: {fs}",
    ]


def main() -> int:
    if run_role(ROLES):
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run of 1 s per point, 1,000 idle sessions")
    p.add_argument("--only", default="sessions,connections,memory",
                   help="comma-separated phases: sessions, connections, memory, profile "
                        "(default: the first three; --profile adds profile)")
    p.add_argument("--servers", help=f"comma-separated, of {', '.join(SERVERS)} (default all; quick: all but floor)")
    p.add_argument("--concurrency", default="1,10,100", help="session concurrencies (default 1,10,100)")
    p.add_argument("--conn-concurrency", type=int, default=10, help="concurrency of the connections/s test (default 10)")
    p.add_argument("--seconds", type=float, help="measured window per run (default 5, quick 1)")
    p.add_argument("--warmup", type=float, help="load before each window (default 0.5, quick 0.2)")
    p.add_argument("--repeat", type=int, help="runs per point, interleaved (default 3, quick 1)")
    p.add_argument("--client-procs", type=int, default=2, help="load processes at concurrency > 1 (default 2)")
    p.add_argument("--sessions", type=int, help="idle sessions for the memory test (default 10000, quick 1000)")
    p.add_argument("--profile", metavar="DIR", default="", help="also profile looper at concurrency 10, files in DIR")
    p.add_argument("--profile-seconds", type=float, default=10.0, help="load under each profiler (default 10)")
    p.add_argument("--workdir", default=tempfile.gettempdir(),
                   help="where the temporary folder (looper's log.dir) goes: its file system's fsync is measured")
    p.add_argument("--max-seconds", type=float, default=1200, help="abort the whole run after this (default 1200)")
    args = p.parse_args()
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 0.5)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.sessions = args.sessions or (1000 if args.quick else 10_000)
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    args.phases = {x.strip() for x in args.only.split(",") if x.strip()}
    if args.profile:
        args.phases.add("profile")
    if args.phases - {"sessions", "connections", "memory", "profile"}:
        p.error(f"unknown phase in --only: {args.only}")
    if "profile" in args.phases and not args.profile:
        p.error("the profile phase needs --profile DIR")
    args.servers = args.servers or DEFAULT_SERVERS[args.quick]
    wanted = [x.strip() for x in args.servers.split(",") if x.strip()]
    if set(wanted) - set(SERVERS):
        p.error(f"unknown server in --servers: {args.servers}")
    names, server_notes = available_servers(wanted)
    raise_nofile()
    arm_signals(args.max_seconds)

    workdir = Path(tempfile.mkdtemp(prefix="looper-smtp-bench-", dir=args.workdir))
    Child.workdir = workdir
    out = sys.stderr  # progress; the report goes to stdout
    started = time.monotonic()
    points: list[Point] = []
    disk: dict = {}
    mem_rows: list[MemoryRow] = []
    mem_notes: list[str] = []
    profile_lines: list[str] = []
    try:
        machine = describe_machine(workdir)
        print("looper SMTP bench: " + machine[1], file=out, flush=True)
        for note in server_notes:
            print("  " + note, file=out, flush=True)
        if args.phases & {"sessions", "connections"}:
            print("sessions/s and connections/s ...", file=out, flush=True)
            meter = LoadMeter()
            points, disk = phase_rates(args, names, workdir, out)
            note_noise("rates", meter)
        if "memory" in args.phases:
            print("memory ...", file=out, flush=True)
            meter = LoadMeter()
            mem_rows, mem_notes = phase_memory(args, names, workdir, out)
            note_noise("memory", meter)
        if "profile" in args.phases and "looper" in names:
            print("profile ...", file=out, flush=True)
            meter = LoadMeter()
            profile_lines = phase_profile(args, workdir, out)
            note_noise("profile", meter)
        report = ["looper SMTP bench: " + machine[0], machine[1], machine[2]]
        report += [f"servers: {', '.join(names)}"] + [f"  {n}" for n in server_notes]
        report.append(f"load: {args.client_procs} client processes at concurrency > 1 (1 at concurrency 1), "
                      f"plain non-blocking sockets on epoll, from 127.0.0.{LOAD_SOURCE_BASE}+")
        report += print_rates(args, points, disk)
        if mem_rows:
            report += print_memory(mem_rows, mem_notes)
        report += profile_lines
        report += ["", "Machine noise (CPU of processes outside this bench while it ran):"] + NOISE
        if SPEED_PROBES:
            best = min(SPEED_PROBES)
            report.append(f"    speed probes (a fixed Python loop around every run): {best / max(SPEED_PROBES):.0%} to "
                          f"100% of the fastest, median {best / statistics.median(SPEED_PROBES):.0%}; "
                          f"{len(REDONE)} run(s) redone (others > {NOISY_RUN_SHARE:.0%} or speed < "
                          f"{SLOW_MACHINE_SPEED:.0%}, at most {NOISY_RUN_RETRIES} times each)")
        report += verdicts(points, disk, mem_rows)
        report.append(f"\n(total {time.monotonic() - started:.0f} s)")
        print("\n".join(report), flush=True)
        return 0
    except (BenchError, KeyboardInterrupt) as err:
        report_abort(err)
        return 1
    finally:
        end_run(workdir)


if __name__ == "__main__":
    sys.exit(main())
