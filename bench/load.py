#!/usr/bin/env python3
"""Load benchmark: thousands of slow SMTP sessions, emulated and spliced at once, against one `looper run`.

    .venv/bin/python bench/load.py                    # 2,000 emulated + 200 spliced sessions for 60 s
    .venv/bin/python bench/load.py --quick            # 200 + 20 for 10 s (about 20 s in all)
    .venv/bin/python bench/load.py --sessions 500 --splices 50 --seconds 30 --loop uvloop

A benchmark, not a test: it prints figures and says whether any session
failed; it asserts nothing about speed.

The wiring (everything on 127.0.0.0/8; nothing else is bound or dialed):

  trap       `python -m looper run -c CONFIG` on 127.0.0.1:T, dialback.port P,
             dialback.allow_private true, log.dir in a temp folder (printed).
  emulated   --sessions clients, each from its own address 127.1.x.y. Nothing
             listens on P on those addresses: the trap's dial-back is refused
             at once and every client meets the emulated relay (Postfix
             persona), which logs every command and stores and fsyncs every
             message before its 250.
  spliced    --splices clients, each from its own address 127.2.x.y, where a
             small relay (the `relays` role, one process, one listener per
             address, all on port P) greets and answers 250 (354 for DATA):
             the trap dials each client's own address back on P and splices.
             The greeting must be that relay's, naming the client's address.

Each session: connect, greeting, EHLO, then rounds of MAIL, RCPT, DATA + a
small unique message, then RSET or NOOP, with a random pause of --pause
(1 to 2 s) before every command, for the whole run; QUIT and close at the
end. The clients connect over a ramp (--ramp), so the trap sees a steady
load of --sessions + --splices open sessions. At most JUNK_PER_SESSION RSET
and NOOP per session: Postfix counts NOOP, RSET, VRFY and ETRN past its
smtpd_junk_command_limit (100) as errors, and so does the Postfix persona.
The pause is far below smtp.idle_timeout and splice.idle_seconds (300 s).

An error is anything unexpected: a refused, reset or closed connection, a
reply code other than the one expected, a greeting from the wrong server, a
reply that takes longer than REPLY_TIMEOUT_S. A session that failed is
counted and reconnects after a pause, so that the concurrency holds.

Reported: errors; p50, p99 and max reply latency per command, separately for
emulated and spliced sessions (command written -> whole reply read; the
greeting from connect, so it includes the dial-back); the trap's VmRSS before
the load, along the run and after the sessions closed, its peak (VmHWM); its
CPU (utime + stime from /proc/PID/stat) as a share of one core over the
run; the bench clients' own event-loop lag (it is part of every latency)
and their CPU; other processes' CPU; and what the trap's event log says.

Limits of the trap's config: limits.total is raised to twice the sessions
(its default, 1,000, is below 2,200); limits.per_ip (10),
dialback.per_ip_hourly (60) and limits.rate (none) stay at their defaults,
as each client has its own address and one session at a time.

Bounded: the run stops by itself after --seconds, and the sessions get a
drain to QUIT; the hard cap (--max-seconds) cuts the load at once, then the
trap is stopped and the report printed (TEARDOWN_S at most), and a watchdog
kills everything WATCHDOG_S past the cap. Ctrl-C (or SIGTERM) stops early
and prints the figures so far (a second one skips the drain). The children
run in process groups of their own (a terminal's Ctrl-C reaches only the
bench), die with it (PR_SET_PDEATHSIG) and are reaped.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import resource
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # imported, not run as bench/load.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BenchError, Child, LoadMeter, arm_signals, cpu_model, die_with_parent, emit, end_run, proc_fds, proc_rss_kib,
    raise_nofile, report_abort, run_role, stdin_closed_event, free_port,
)

HERE = Path(__file__).resolve()

TRAP_HOST = "127.0.0.1"
EMULATED_NET = 1  # emulated clients: 127.1.x.y, one address each
SPLICED_NET = 2  # spliced clients and their relays: 127.2.x.y
HOSTS_PER_SUBNET = 250  # 127.N.x.1 .. 127.N.x.250
MAX_CLIENTS = HOSTS_PER_SUBNET * 256

REPLY_TIMEOUT_S = 10.0  # connect, or one reply, awaited longer than this: an error
JUNK_PER_SESSION = 90  # RSET + NOOP per session, below Postfix's smtpd_junk_command_limit (100)
SAMPLE_EVERY_S = 1.0  # trap VmRSS, fds, CPU; open sessions
LAG_TICK_S = 0.1  # the bench loop's own lag is measured with this ticker
TRAP_START_TIMEOUT_S = 30.0
TRAP_STOP_TIMEOUT_S = 20.0
SETTLE_TIMEOUT_S = 10.0  # after the load: the trap closes its ends of the sessions
SHUTDOWN_GRACE_S = 2  # the trap's shutdown_grace_s: nothing should be open when it stops
TEARDOWN_S = 40  # after the load (even one cut by the hard cap): stopping, counting, the report
WATCHDOG_S = 60  # past the hard cap, a last resort kills every child and exits
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

CLIENT_NAME = "client.load.test"
RELAY_TAG = b"benchrelay"  # in every relay greeting; never in the trap's
COMMANDS = ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "message", "RSET", "NOOP", "QUIT")
KINDS = ("emulated", "spliced")


def client_address(net: int, index: int) -> str:
    return f"127.{net}.{index // HOSTS_PER_SUBNET}.{1 + index % HOSTS_PER_SUBNET}"


def address_range(net: int, count: int) -> str:
    return f"{client_address(net, 0)}-{client_address(net, count - 1)}" if count else "none"


def own_group() -> None:
    """preexec_fn: die with the bench, in a process group of one's own, so
    that a Ctrl-C at the terminal reaches only the bench, which then stops
    the load in order (the trap would otherwise begin its own shutdown)."""
    die_with_parent()
    os.setpgrp()


def loop_factory(name: str):
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def proc_stat_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process, all its threads, in seconds."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(rest[11]) / tick, int(rest[12]) / tick


def proc_status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {name} in /proc/{pid}/status")


def proc_alive(pid: int) -> bool:
    """Running and not a zombie (without reaping it: wait4 does that, for its CPU)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------------
# The relays role: one process, a listener per spliced client's address
# ---------------------------------------------------------------------------


def message(kind: str, index: int, serial: int, run_tag: str) -> bytes:
    """A small message with its final dot, unique (so that the trap's store
    writes and syncs every one)."""
    ident = f"{kind}.{index}.{serial}.{run_tag}"
    return (
        f"From: <load{index}@{CLIENT_NAME}>\r\n"
        f"To: <sink@remote.load.test>\r\n"
        f"Subject: load {ident}\r\n"
        f"Date: Sat, 22 Nov 2025 09:00:00 +0000\r\n"
        f"Message-ID: <{ident}@{CLIENT_NAME}>\r\n"
        f"\r\n"
        + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n" * 4
        + ".\r\n"
    ).encode()


class _Relay(asyncio.Protocol):
    """The spliced client's "own server": greets, then 250 to every command,
    354 to DATA, 250 at the final dot, 221 to QUIT (and closes)."""

    MAX_BUFFER = 1 << 20

    def __init__(self, name: bytes, counts: collections.Counter) -> None:
        self.name = name
        self.counts = counts
        self.buf = bytearray()
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.counts["connections"] += 1
        transport.write(b"220 " + self.name + b" ESMTP " + RELAY_TAG + b"\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        close = False
        while not close:
            end = self.buf.find(b"\n")
            if end < 0:
                break
            line = bytes(self.buf[: end + 1])
            del self.buf[: end + 1]
            if self.in_data:
                if line.rstrip(b"\r\n") == b".":
                    self.in_data = False
                    self.counts["messages"] += 1
                    out.append(b"250 2.0.0 Ok: queued as BENCH\r\n")
                continue
            self.counts["commands"] += 1
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                out.append(b"250-" + self.name + b"\r\n250-PIPELINING\r\n250 8BITMIME\r\n" if verb == b"EHLO"
                           else b"250 " + self.name + b"\r\n")
            elif verb == b"DATA":
                self.in_data = True
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                close = True
            else:
                out.append(b"250 2.0.0 Ok\r\n")
        if len(self.buf) > self.MAX_BUFFER:
            close = True
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()


def role_relays(argv: list[str]) -> None:
    """`count` relays on 127.2.x.y:port until stdin closes (or max_seconds)."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--loop", default="asyncio")
    p.add_argument("--max-seconds", type=float, required=True)
    a = p.parse_args(argv)
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the conductor stops us: stdin closes
    counts: collections.Counter = collections.Counter()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = []
        for i in range(a.count):
            host = client_address(SPLICED_NET, i)
            name = f"relay-{host}.load.test".encode()
            servers.append(await loop.create_server(lambda name=name: _Relay(name, counts), host, a.port,
                                                    backlog=64, reuse_address=True))
        emit({"ready": len(servers)})
        stop = stdin_closed_event(loop)
        try:
            await asyncio.wait_for(stop.wait(), a.max_seconds)
        except TimeoutError:
            pass
        for server in servers:
            server.close()
        emit(dict(counts))

    with asyncio.Runner(loop_factory=loop_factory(a.loop)) as runner:
        runner.run(main())


ROLES = {"relays": role_relays}


# ---------------------------------------------------------------------------
# The clients (in the bench process itself)
# ---------------------------------------------------------------------------


@dataclass
class Stats:
    """Everything the run measures; filled as it goes, so that an interrupted
    run still has its figures."""

    latencies_ms: dict[tuple[str, str], list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter = field(default_factory=collections.Counter)  # (kind, step, what)
    connections: collections.Counter = field(default_factory=collections.Counter)  # kind
    greeted: collections.Counter = field(default_factory=collections.Counter)  # kind: open now, past the 220
    messages: collections.Counter = field(default_factory=collections.Counter)  # kind: 250 after the content
    commands: collections.Counter = field(default_factory=collections.Counter)  # kind: replies read
    cut: int = 0  # sessions cancelled at a hard stop (not errors: we cut them)
    lag_ms: list[float] = field(default_factory=list)
    # samples along the run: (seconds since the start, trap VmRSS KiB, trap fds, emulated open, spliced open)
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    # the run's window
    t_start: float = 0.0
    t_ramp_end: float = 0.0
    t_end: float | None = None
    trap_cpu_start: tuple[float, float] = (0.0, 0.0)
    trap_cpu_end: tuple[float, float] | None = None
    bench_cpu_start: float = 0.0
    bench_cpu_end: float | None = None
    relays_cpu_start: float | None = None
    relays_cpu_end: float | None = None
    rss_ramp_end_kib: int | None = None
    rss_run_end_kib: int | None = None
    stop_reason: str = ""


class SessionFailed(Exception):
    def __init__(self, step: str, what: str) -> None:
        super().__init__(f"{step}: {what}")
        self.step = step
        self.what = what


def bench_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Load:
    """The clients, the run's clock and its stop."""

    def __init__(self, args, trap_port: int, trap_pid: int, relays_pid: int | None, stats: Stats) -> None:
        self.args = args
        self.trap_port = trap_port
        self.trap_pid = trap_pid
        self.relays_pid = relays_pid
        self.stats = stats
        self.stopping = False  # sessions QUIT at their next command
        self.stop_event: asyncio.Event | None = None
        self.hard_event: asyncio.Event | None = None
        self.run_tag = os.urandom(4).hex()
        self.tasks: set[asyncio.Task] = set()

    # -- the run ---------------------------------------------------------------

    def request_stop(self, reason: str, hard: bool = False) -> None:
        if not self.stats.stop_reason:
            self.stats.stop_reason = reason
        if self.stop_event.is_set() or hard:
            self.hard_event.set()
        self.stop_event.set()

    async def run(self) -> None:
        args, stats = self.args, self.stats
        loop = asyncio.get_running_loop()
        self.stop_event, self.hard_event = asyncio.Event(), asyncio.Event()

        def on_signal(signum, _frame) -> None:
            name = signal.Signals(signum).name
            reason = (f"cut short by the hard cap (--max-seconds {args.max_seconds:g})" if signum == signal.SIGALRM
                      else f"interrupted ({name})")
            loop.call_soon_threadsafe(self.request_stop, reason, signum == signal.SIGALRM)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(signum, on_signal)

        plan = [("emulated", i) for i in range(args.sessions)] + [("spliced", j) for j in range(args.splices)]
        random.Random(7).shuffle(plan)  # both kinds all along the ramp
        stats.t_start = time.monotonic()
        stats.t_ramp_end = stats.t_start + args.ramp
        stats.trap_cpu_start = proc_stat_cpu(self.trap_pid)
        stats.bench_cpu_start = bench_cpu_s()
        if self.relays_pid:
            stats.relays_cpu_start = sum(proc_stat_cpu(self.relays_pid))
        for n, (kind, index) in enumerate(plan):
            start_at = stats.t_start + args.ramp * n / max(1, len(plan))
            self._spawn(self.client(kind, index, start_at))
        watchers = [loop.create_task(self.sampler()), loop.create_task(self.lag_ticker())]
        try:
            try:
                await asyncio.wait_for(self.stop_event.wait(), args.seconds)
            except TimeoutError:
                self.request_stop("")
            self.end_window()
            self.stopping = True
            if not self.hard_event.is_set():
                drain_s = args.pause[1] + 2 * REPLY_TIMEOUT_S + 2
                print(f"  stopping: every session QUITs at its next command (at most {drain_s:.0f} s)",
                      file=sys.stderr, flush=True)
                if self.tasks:
                    hard = loop.create_task(self.hard_event.wait())
                    everyone = loop.create_task(asyncio.wait(list(self.tasks)))
                    await asyncio.wait([everyone, hard], timeout=drain_s, return_when=asyncio.FIRST_COMPLETED)
                    hard.cancel()
                    everyone.cancel()
        finally:
            self.end_window()
            if self.tasks:
                stats.cut += len(self.tasks)
                for task in self.tasks:
                    task.cancel()
                await asyncio.wait(self.tasks, timeout=5)
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    def end_window(self) -> None:
        stats = self.stats
        if stats.t_end is not None:
            return
        stats.t_end = time.monotonic()
        stats.bench_cpu_end = bench_cpu_s()
        try:
            stats.trap_cpu_end = proc_stat_cpu(self.trap_pid)
            stats.rss_run_end_kib = proc_rss_kib(self.trap_pid)
        except (OSError, BenchError):
            pass
        if self.relays_pid:
            try:
                stats.relays_cpu_end = sum(proc_stat_cpu(self.relays_pid))
            except OSError:
                pass

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def sampler(self) -> None:
        stats = self.stats
        next_print = stats.t_start + 10
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            now = time.monotonic()
            if not proc_alive(self.trap_pid):
                self.request_stop("the trap process ended", hard=True)
                return
            try:
                rss, fds = proc_rss_kib(self.trap_pid), proc_fds(self.trap_pid)
            except (OSError, BenchError):
                continue
            if stats.rss_ramp_end_kib is None and now >= stats.t_ramp_end + self.args.pause[1] + 1:
                stats.rss_ramp_end_kib = rss
            stats.samples.append((now - stats.t_start, rss, fds, stats.greeted["emulated"], stats.greeted["spliced"]))
            if now >= next_print and stats.t_end is None:
                next_print += 10
                errors = sum(stats.errors.values())
                print(f"  {now - stats.t_start:5.0f} s: open {stats.greeted['emulated']:,} emulated + "
                      f"{stats.greeted['spliced']:,} spliced, {sum(stats.commands.values()):,} replies, "
                      f"errors {errors:,}; trap VmRSS {rss / 1024:.1f} MiB, {fds:,} fds",
                      file=sys.stderr, flush=True)

    async def lag_ticker(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            self.stats.lag_ms.append(max(0.0, (time.monotonic() - before - LAG_TICK_S) * 1000))

    # -- one client ----------------------------------------------------------------

    async def pause(self) -> None:
        low, high = self.args.pause
        await asyncio.sleep(random.uniform(low, high))

    async def client(self, kind: str, index: int, start_at: float) -> None:
        """One client address: a session for the whole run; after a failure,
        a pause and a new session (the failure is counted)."""
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        net = EMULATED_NET if kind == "emulated" else SPLICED_NET
        addr = client_address(net, index)
        serial = 0
        while not self.stopping:
            try:
                serial = await self.session(kind, index, addr, serial)
            except SessionFailed as failed:
                self.stats.errors[kind, failed.step, failed.what] += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug of this bench: still counted, never silent
                self.stats.errors[kind, "bench", repr(exc)[:80]] += 1
            if not self.stopping:
                await self.pause()

    async def session(self, kind: str, index: int, addr: str, serial: int) -> int:
        stats = self.stats
        reader = writer = None
        step = "connect"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        greeted = False
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((addr, 0))
            stats.connections[kind] += 1
            started = time.monotonic()
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                await asyncio.get_running_loop().sock_connect(sock, (TRAP_HOST, self.trap_port))
            reader, writer = await asyncio.open_connection(sock=sock)
            step = "greeting"
            code, text = await self.reply(reader, kind, step, started)
            if code != 220:
                raise SessionFailed(step, f"got {text[:60]!r}")
            spliced_greeting = RELAY_TAG in text and f"relay-{addr}.".encode() in text
            if kind == "spliced" and not spliced_greeting:
                raise SessionFailed(step, f"not spliced: {text[:60]!r}")
            if kind == "emulated" and RELAY_TAG in text:
                raise SessionFailed(step, f"spliced, not emulated: {text[:60]!r}")
            stats.greeted[kind] += 1
            greeted = True
            junk = 0

            async def command(name: str, line: bytes, expect: int) -> None:
                nonlocal step
                step = name
                writer.write(line)
                code, text = await self.reply(reader, kind, name, time.monotonic())
                if code != expect:
                    raise SessionFailed(name, f"got {text[:60]!r}")

            await self.pause()
            if self.stopping:
                await self.quit(reader, writer, kind)
                return serial
            await command("EHLO", f"EHLO {CLIENT_NAME}\r\n".encode(), 250)
            rounds = 0
            while True:
                rounds += 1
                for name in ("MAIL", "RCPT", "DATA", "END"):
                    await self.pause()
                    if self.stopping:
                        await self.quit(reader, writer, kind)
                        return serial
                    if name == "MAIL":
                        await command("MAIL", f"MAIL FROM:<load{index}@{CLIENT_NAME}>\r\n".encode(), 250)
                    elif name == "RCPT":
                        await command("RCPT", b"RCPT TO:<sink@remote.load.test>\r\n", 250)
                    elif name == "DATA":
                        await command("DATA", b"DATA\r\n", 354)
                        serial += 1
                        await command("message", message(kind, index, serial, self.run_tag), 250)
                        stats.messages[kind] += 1
                    elif junk < JUNK_PER_SESSION:  # END: RSET after odd rounds, NOOP after even ones
                        junk += 1
                        if rounds % 2:
                            await command("RSET", b"RSET\r\n", 250)
                        else:
                            await command("NOOP", b"NOOP\r\n", 250)
        except SessionFailed:
            raise
        except TimeoutError:
            raise SessionFailed(step, "timeout") from None
        except ConnectionRefusedError:
            raise SessionFailed(step, "refused") from None
        except ConnectionResetError:
            raise SessionFailed(step, "reset") from None
        except (asyncio.IncompleteReadError, EOFError):
            raise SessionFailed(step, "closed by the trap") from None
        except BrokenPipeError:
            raise SessionFailed(step, "broken pipe") from None
        except OSError as exc:
            raise SessionFailed(step, f"{type(exc).__name__} {exc.strerror or exc}") from None
        finally:
            if greeted:
                stats.greeted[kind] -= 1
            if writer is None:
                sock.close()
            elif not writer.transport.is_closing():
                writer.transport.abort()  # a failure or a hard stop; a session that QUIT is closed

    async def quit(self, reader, writer, kind: str) -> None:
        """QUIT, 221, then the trap must close the connection."""
        writer.write(b"QUIT\r\n")
        code, text = await self.reply(reader, kind, "QUIT", time.monotonic())
        if code != 221:
            raise SessionFailed("QUIT", f"got {text[:60]!r}")
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                rest = await reader.read(4096)
        except TimeoutError:
            raise SessionFailed("QUIT", "not closed after 221") from None
        if rest:
            raise SessionFailed("QUIT", f"bytes after 221: {rest[:40]!r}")
        writer.close()

    async def reply(self, reader: asyncio.StreamReader, kind: str, name: str, started: float) -> tuple[int, bytes]:
        """A whole (multi-line) reply; its latency recorded under `name`."""
        text = b""
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            for _ in range(100):
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    raise asyncio.IncompleteReadError(line, None)
                text += line
                if line[3:4] != b"-":
                    break
        self.stats.latencies_ms[kind, name].append((time.monotonic() - started) * 1000)
        self.stats.commands[kind] += 1
        code = int(text[:3]) if text[:3].isdigit() else -1
        return code, text.rstrip(b"\r\n")



# ---------------------------------------------------------------------------
# The conductor
# ---------------------------------------------------------------------------


def role_argv(role: str, *args: object) -> list[str]:
    return [sys.executable, str(HERE), "--role", role, *map(str, args)]


def wait_for_line(child: Child, needle: str, deadline: float) -> str:
    """The first line of the child's stderr file that holds needle."""
    while time.monotonic() < deadline:
        try:
            text = child.err_path.read_text(errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            if needle in line:
                return line
        if not proc_alive(child.pid):
            raise BenchError(f"{child.name} exited before it said {needle!r}: {child.err_tail()}")
        time.sleep(0.05)
    raise BenchError(f"{child.name} did not say {needle!r} in time: {child.err_tail()}")


def check_wiring(dialback_port: int, splices: int) -> None:
    """Nothing on the dial-back port of the emulated clients' addresses; a
    relay on the spliced ones'."""
    with socket.socket() as probe:
        probe.settimeout(2)
        if probe.connect_ex((client_address(EMULATED_NET, 0), dialback_port)) == 0:
            raise BenchError(f"something listens on {client_address(EMULATED_NET, 0)}:{dialback_port}")
    if splices:
        with socket.create_connection((client_address(SPLICED_NET, splices - 1), dialback_port), timeout=5) as probe:
            greeting = probe.recv(4096)
            probe.sendall(b"QUIT\r\n")
            probe.recv(4096)
        if RELAY_TAG not in greeting:
            raise BenchError(f"no relay on {client_address(SPLICED_NET, splices - 1)}:{dialback_port}: {greeting!r}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def event_summary(path: Path) -> dict:
    """Counts from the trap's events.jsonl: by eventid, closed sessions by
    mode and reason, dial-back failures by reason, limits by kind."""
    counts: collections.Counter = collections.Counter()
    closed: collections.Counter = collections.Counter()
    failed: collections.Counter = collections.Counter()
    limits: collections.Counter = collections.Counter()
    errors: list[str] = []
    bad_lines = 0
    for log in sorted(path.parent.glob(path.name + "*")):
        with open(log, "rb") as f:
            for raw in f:
                try:
                    event = json.loads(raw)
                except ValueError:
                    bad_lines += 1
                    continue
                eventid = event.get("eventid", "?")
                counts[eventid] += 1
                if eventid == "looper.session.closed":
                    closed[f"{event.get('mode')}/{event.get('reason')}"] += 1
                elif eventid == "looper.dialback.failed":
                    failed[event.get("reason")] += 1
                elif eventid == "looper.smtp.limit":
                    limits[event.get("limit")] += 1
                elif eventid == "looper.session.error" and len(errors) < 5:
                    errors.append(str(event.get("error"))[:200])
    return {"counts": counts, "closed": closed, "failed": failed, "limits": limits, "errors": errors,
            "bad_lines": bad_lines}


@dataclass
class Outcome:
    """What the conductor knows besides the clients' Stats."""

    trap_port: int = 0
    dialback_port: int = 0
    trap_pid: int = 0
    config_path: Path | None = None
    log_dir: Path | None = None
    rss_before_kib: int | None = None
    fds_before: int | None = None
    rss_after_kib: int | None = None
    fds_after: int | None = None
    hwm_kib: int | None = None
    settle_s: float | None = None
    trap_exit: int | None = None
    trap_stop_s: float | None = None
    trap_life_cpu_s: float | None = None
    relays: dict = field(default_factory=dict)
    events: dict | None = None
    messages_on_disk: int | None = None
    noise: tuple[float, float] | None = None
    changed_config: list[str] = field(default_factory=list)


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def report(args, stats: Stats, out: Outcome, started: float, aborted: str) -> tuple[list[str], int]:
    """The report's lines and the total of errors."""
    lines = [
        f"looper load bench: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; bench clients and relays on {args.loop}",
        f"trap: python -m looper run -c {out.config_path} (pid {out.trap_pid}) on {TRAP_HOST}:{out.trap_port}, "
        f"dialback.port {out.dialback_port}",
        f"    log.dir {out.log_dir}" + (" (kept: --keep)" if args.keep else " (removed at the end; --keep keeps it)"),
        "    config: " + "; ".join(out.changed_config),
        f"load: {args.sessions:,} emulated sessions from {address_range(EMULATED_NET, args.sessions)} (nothing on "
        f"port {out.dialback_port} there: the dial-back is refused, they meet the emulated relay),",
        f"    {args.splices:,} spliced from {address_range(SPLICED_NET, args.splices)} (a relay on each address, port "
        f"{out.dialback_port}: the trap dials back and splices);",
        f"    ramp {args.ramp:.1f} s, run {args.seconds:g} s; {args.pause[0]:g}-{args.pause[1]:g} s pause before each "
        f"command: greeting, EHLO, then rounds of MAIL, RCPT, DATA + {len(message('emulated', 0, 0, '00000000')) - 3:,}"
        f"-byte message, RSET or NOOP (at most {JUNK_PER_SESSION} a session); QUIT at the end",
    ]
    if stats.t_end is None:
        lines.append("")
        lines.append(f"NO LOAD RUN: {aborted}")
        return lines, sum(stats.errors.values())
    window = stats.t_end - stats.t_start
    if stats.stop_reason:
        lines += ["", f"PARTIAL FIGURES: {stats.stop_reason} after {window:.1f} s of {args.seconds:g} s"]
    if aborted and not (stats.stop_reason and stats.stop_reason in aborted):
        lines += ["", f"PARTIAL FIGURES: {aborted}"]

    # sessions
    steady = [s for s in stats.samples if s[0] >= args.ramp + args.pause[1] + 1 and s[0] <= window]
    lines.append("")
    if steady:
        lines.append(
            f"Sessions open at once after the ramp ({len(steady)} samples, one a second): emulated "
            f"{min(s[3] for s in steady):,}-{max(s[3] for s in steady):,} of {args.sessions:,}, spliced "
            f"{min(s[4] for s in steady):,}-{max(s[4] for s in steady):,} of {args.splices:,}"
        )
    else:
        lines.append("Sessions open at once: (the run ended before the ramp did)")
    replies = sum(stats.commands.values())
    messages = sum(stats.messages.values())
    reconnects = {k: stats.connections[k] - n for k, n in (("emulated", args.sessions), ("spliced", args.splices))}
    lines.append(
        f"    connections: emulated {stats.connections['emulated']:,}, spliced {stats.connections['spliced']:,} "
        f"(after a failure: {max(0, reconnects['emulated']) + max(0, reconnects['spliced']):,}); replies "
        f"{replies:,} ({replies / max(1e-9, window):,.0f}/s); messages emulated {stats.messages['emulated']:,}, "
        f"spliced {stats.messages['spliced']:,} ({messages / max(1e-9, window):,.0f}/s)"
        + (f"; sessions cut at the stop: {stats.cut:,}" if stats.cut else "")
    )

    # errors
    total_errors = sum(stats.errors.values())
    lines += ["", f"Errors: {total_errors:,}"]
    for (kind, step, what), n in sorted(stats.errors.items(), key=lambda kv: -kv[1])[:20]:
        lines.append(f"    {n:>7,}  {kind:<9} {step:<9} {what}")
    if len(stats.errors) > 20:
        lines.append(f"    ... {len(stats.errors) - 20} more kinds")

    # latency
    lines += [
        "",
        f"Reply latency, ms (command written -> whole reply read; greeting: connect -> 220, with the dial-back; "
        f"message: content + \".\" -> 250, stored and synced first when emulated; QUIT: all sessions at the stop)",
        f"    {'':<10}{'emulated':>8}{'':<25}{'spliced':>9}",
        f"    {'command':<10}{'count':>8}{'p50':>8}{'p99':>8}{'max':>9}{'count':>9}{'p50':>8}{'p99':>8}{'max':>9}",
    ]
    for name in COMMANDS:
        row = f"    {name:<10}"
        for kind in KINDS:
            values = stats.latencies_ms.get((kind, name), [])
            if values:
                row += (f"{len(values):>8,}" if kind == "emulated" else f"{len(values):>9,}")
                row += f"{percentile(values, 0.5):8.1f}{percentile(values, 0.99):8.1f}{max(values):9.1f}"
            else:
                row += f"{0:>8}" if kind == "emulated" else f"{0:>9}"
                row += f"{'-':>8}{'-':>8}{'-':>9}"
        lines.append(row)
    for kind in KINDS:
        values = [v for (k, name), vs in stats.latencies_ms.items() if k == kind and name not in ("greeting", "QUIT")
                  for v in vs]
        if values:
            lines.append(f"    {kind} commands after the greeting, all but QUIT: p50 {percentile(values, 0.5):.1f}, "
                         f"p99 {percentile(values, 0.99):.1f}, max {max(values):.1f} ms ({len(values):,} replies)")
    if stats.lag_ms:
        lines.append(f"    the bench clients' own loop lag (part of every figure above; a {LAG_TICK_S * 1000:.0f} ms "
                     f"ticker): p50 {percentile(stats.lag_ms, 0.5):.1f}, p99 {percentile(stats.lag_ms, 0.99):.1f}, "
                     f"max {max(stats.lag_ms):.1f} ms")

    # the trap's memory and CPU
    lines += ["", f"Trap process (pid {out.trap_pid}):"]
    lines.append(
        f"    resident memory: VmRSS before {mib(out.rss_before_kib)}, at full load {mib(stats.rss_ramp_end_kib)} "
        f"(ramp end), at the run's end {mib(stats.rss_run_end_kib)}, peak VmHWM {mib(out.hwm_kib)}, after "
        f"the sessions closed {mib(out.rss_after_kib)}"
        + (f" ({out.settle_s:.1f} s later)" if out.settle_s is not None else "")
    )
    if stats.samples:
        marks = [s for s in stats.samples if s[0] <= window]
        step = max(1, len(marks) // 8)
        lines.append("    VmRSS along the run: " + ", ".join(
            f"{s[0]:.0f} s {s[1] / 1024:.1f}" for s in marks[::step]) + " MiB")
        lines.append(f"    open fds: before {out.fds_before}, peak {max(s[2] for s in stats.samples):,}, after "
                     f"{'?' if out.fds_after is None else out.fds_after}")
    if stats.trap_cpu_end is not None:
        utime = stats.trap_cpu_end[0] - stats.trap_cpu_start[0]
        stime = stats.trap_cpu_end[1] - stats.trap_cpu_start[1]
        lines.append(f"    CPU over the run: {utime + stime:.1f} s (utime {utime:.1f} + stime {stime:.1f}) in "
                     f"{window:.1f} s = {(utime + stime) / window:.1%} of one core")
    if out.trap_exit is not None:
        lines.append(f"    stopped by SIGTERM: exit {out.trap_exit}"
                     + (f" in {out.trap_stop_s:.1f} s" if out.trap_stop_s is not None else "")
                     + (f"; CPU over its whole life {out.trap_life_cpu_s:.1f} s" if out.trap_life_cpu_s is not None
                        else ""))
    others = []
    if stats.bench_cpu_end is not None:
        cpu = stats.bench_cpu_end - stats.bench_cpu_start
        others.append(f"bench clients {cpu:.1f} CPU-s ({cpu / window:.0%} of a core)")
    if stats.relays_cpu_start is not None and stats.relays_cpu_end is not None:
        cpu = stats.relays_cpu_end - stats.relays_cpu_start
        others.append(f"relays {cpu:.1f} CPU-s ({cpu / window:.0%})")
    if out.noise is not None:
        used, share = out.noise
        others.append(f"other processes and steal {used:.1f} CPU-s ({share:.0%} of all CPUs)"
                      + ("  <-- other work on the machine: figures are skewed" if share > 0.05 else ""))
    if others:
        lines.append("Others over the run: " + "; ".join(others))
    if out.relays:
        lines.append(f"    relays served {out.relays.get('connections', 0):,} connections (the wiring check's "
                     f"one and the trap's dial-backs), "
                     f"{out.relays.get('commands', 0):,} commands, {out.relays.get('messages', 0):,} messages")

    # the trap's own account
    if out.events is not None:
        ev = out.events
        c = ev["counts"]
        lines += ["", "The trap's event log:"]
        lines.append(
            f"    {sum(c.values()):,} events; session.connect {c['looper.session.connect']:,}, session.closed "
            f"{c['looper.session.closed']:,}, dialback.ok {c['looper.dialback.ok']:,}, dialback.failed "
            f"{c['looper.dialback.failed']:,}, smtp.message {c['looper.smtp.message']:,}, reflect.message "
            f"{c['looper.reflect.message']:,}; messages on disk {out.messages_on_disk or 0:,}"
        )
        lines.append("    closed (mode/reason): " + (", ".join(f"{k} {n:,}" for k, n in ev["closed"].most_common())
                                                    or "none"))
        lines.append("    dial-back failures: " + (", ".join(f"{k} {n:,}" for k, n in ev["failed"].most_common())
                                                  or "none"))
        notable = [f"{k} {c[k]:,}" for k in ("looper.session.error", "looper.session.refused", "looper.smtp.limit",
                                              "looper.smtp.store_failed", "looper.log.dropped")]
        lines.append("    " + ", ".join(notable)
                     + (f" ({', '.join(f'{k} {n}' for k, n in ev['limits'].items())})" if ev["limits"] else "")
                     + (f"; unparsable lines {ev['bad_lines']}" if ev["bad_lines"] else ""))
        for err in ev["errors"]:
            lines.append(f"    session.error: {err}")

    verdict = "PASS" if total_errors == 0 and not stats.stop_reason and not aborted else "FAIL"
    if verdict == "FAIL" and total_errors == 0:
        verdict = "(incomplete run)"
    lines += ["", f"Errors: {total_errors:,}: {verdict}   (total {time.monotonic() - started:.0f} s)"]
    return lines, total_errors


def main() -> int:
    if run_role(ROLES):
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, help="length of the run, ramp included (default 60, quick 10)")
    p.add_argument("--sessions", type=int, help="emulated sessions at once (default 2000, quick 200)")
    p.add_argument("--splices", type=int, help="spliced sessions at once (default 200, quick 20)")
    p.add_argument("--quick", action="store_true", help="10 s, 200 emulated and 20 spliced sessions")
    p.add_argument("--ramp", type=float, help="seconds over which the clients connect (default seconds / 12, "
                                              "at most 5)")
    p.add_argument("--pause", type=float, nargs=2, default=(1.0, 2.0), metavar=("MIN", "MAX"),
                   help="random pause before each command, seconds (default 1 2)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="event loop of the bench clients and relays (the trap runs as `looper run` does)")
    p.add_argument("--max-seconds", type=float, help="hard cap on the whole run (default seconds + 90)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (config, log.dir, stderr files)")
    args = p.parse_args()
    args.seconds = args.seconds or (10.0 if args.quick else 60.0)
    args.sessions = args.sessions if args.sessions is not None else (200 if args.quick else 2000)
    args.splices = args.splices if args.splices is not None else (20 if args.quick else 200)
    args.ramp = args.ramp if args.ramp is not None else min(5.0, args.seconds / 12)
    args.max_seconds = args.max_seconds or args.seconds + 90
    if not (0 <= args.sessions <= MAX_CLIENTS and 0 <= args.splices <= MAX_CLIENTS):
        p.error(f"--sessions and --splices: 0 to {MAX_CLIENTS}")
    if not 0 < args.pause[0] <= args.pause[1] < REPLY_TIMEOUT_S:
        p.error(f"--pause: 0 < MIN <= MAX < {REPLY_TIMEOUT_S:g}")
    if args.ramp >= args.seconds:
        p.error("--ramp must be shorter than --seconds")
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            p.error("uvloop is not installed in this Python (pip install -e '.[bench]')")

    hard = raise_nofile()
    need = 2 * (args.sessions + args.splices) + 200
    if hard < need:
        p.error(f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors this run needs")
    arm_signals(args.max_seconds)
    # The last resort, should the alarm's cleanup itself hang: kill what we started and go.
    watchdog = threading.Timer(args.max_seconds + WATCHDOG_S, _force_exit)
    watchdog.daemon = True
    watchdog.start()

    workdir = Path(tempfile.mkdtemp(prefix="looper-load-"))
    Child.workdir = workdir
    started = time.monotonic()
    stats, out = Stats(), Outcome()
    aborted = ""
    trap: Child | None = None
    relays: Child | None = None
    try:
        print(f"looper load bench: work folder {workdir}", file=sys.stderr, flush=True)
        out.trap_port = free_port()
        out.dialback_port = free_port({out.trap_port})
        out.log_dir = workdir / "logs"
        if args.splices:
            relays = Child("relays", role_argv("relays", "--port", out.dialback_port, "--count", args.splices,
                                               "--loop", args.loop, "--max-seconds", args.max_seconds),
                           stdin_pipe=True, preexec=own_group)
            relays.read_json(time.monotonic() + 30)
        check_wiring(out.dialback_port, args.splices)

        total = max(1000, 2 * (args.sessions + args.splices))
        config = {
            "sensor": "load.bench",
            "shutdown_grace_s": SHUTDOWN_GRACE_S,
            "listen": {"smtp": [f"{TRAP_HOST}:{out.trap_port}"]},
            "dialback": {"port": out.dialback_port, "allow_private": True},
            "limits": {"total": total},
            "smtp": {"hostname": "mx.load.test"},
            "log": {"dir": str(out.log_dir)},
        }
        out.changed_config = [
            f"limits.total {total:,} (default 1,000)" if total != 1000
            else f"limits.total at its default 1,000 (over the {args.sessions + args.splices:,} sessions)",
            "dialback.allow_private true (127.0.0.0/8)",
            f"shutdown_grace_s {SHUTDOWN_GRACE_S}",
            "smtp.hostname mx.load.test",
            "limits.per_ip 10, dialback.per_ip_hourly 60 and limits.rate (none) at their defaults: one client "
            "an address, one session at a time",
        ]
        out.config_path = workdir / "looper.json"
        out.config_path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        trap = Child("looper", [sys.executable, "-m", "looper", "run", "-c", str(out.config_path)],
                     stdout_pipe=False, preexec=own_group)
        out.trap_pid = trap.pid
        wait_for_line(trap, "listening on", time.monotonic() + TRAP_START_TIMEOUT_S)
        print(f"  trap pid {trap.pid} on {TRAP_HOST}:{out.trap_port}, dialback.port {out.dialback_port}, "
              f"log.dir {out.log_dir}", file=sys.stderr, flush=True)
        time.sleep(0.5)
        out.rss_before_kib = proc_rss_kib(trap.pid)
        out.fds_before = proc_fds(trap.pid)

        print(f"  load: {args.sessions:,} emulated + {args.splices:,} spliced sessions for {args.seconds:g} s "
              f"(ramp {args.ramp:.1f} s)", file=sys.stderr, flush=True)
        meter = LoadMeter()
        load = Load(args, out.trap_port, trap.pid, relays.pid if relays else None, stats)
        try:
            with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
                runner.run(load.run())
        finally:
            arm_signals(max(TEARDOWN_S, args.max_seconds - (time.monotonic() - started)))
            if stats.t_end is not None:
                out.noise = meter.share()
        if stats.stop_reason.startswith("cut short"):
            raise BenchError(stats.stop_reason)

        # after the load: the trap closes its ends, then its memory without sessions
        settle_start = time.monotonic()
        while (proc_alive(trap.pid) and proc_fds(trap.pid) > out.fds_before + 2
               and time.monotonic() < settle_start + SETTLE_TIMEOUT_S):
            time.sleep(0.1)
        time.sleep(1.0)
        if proc_alive(trap.pid):
            out.settle_s = time.monotonic() - settle_start
            out.fds_after = proc_fds(trap.pid)
            out.rss_after_kib = proc_rss_kib(trap.pid)
            out.hwm_kib = proc_status_kib(trap.pid, "VmHWM")
    except (BenchError, KeyboardInterrupt, OSError) as err:
        aborted = f"{type(err).__name__}: {err}" if not isinstance(err, KeyboardInterrupt) else f"interrupted ({err})"
        report_abort(err)
    finally:
        try:
            if trap is not None:
                if out.hwm_kib is None and proc_alive(trap.pid):
                    try:
                        out.hwm_kib = proc_status_kib(trap.pid, "VmHWM")
                    except (OSError, BenchError):
                        pass
                stop_start = time.monotonic()
                trap.signal(signal.SIGTERM)
                try:
                    out.trap_exit = trap.wait(time.monotonic() + TRAP_STOP_TIMEOUT_S)
                    out.trap_stop_s = time.monotonic() - stop_start
                    out.trap_life_cpu_s = trap.cpu_s
                except BenchError as err:
                    aborted = aborted or f"the trap did not stop in {TRAP_STOP_TIMEOUT_S:g} s: killed"
                    print(err, file=sys.stderr)
            if relays is not None and proc_alive(relays.pid):
                relays.close_stdin()
                try:
                    out.relays = relays.read_json(time.monotonic() + 10)
                    relays.wait(time.monotonic() + 10)
                except BenchError:
                    pass
            if out.log_dir is not None and (out.log_dir / "events.jsonl").exists():
                out.events = event_summary(out.log_dir / "events.jsonl")
                try:
                    out.messages_on_disk = sum(1 for e in os.scandir(out.log_dir / "messages")
                                               if e.name.endswith(".eml"))
                except OSError:
                    out.messages_on_disk = 0
            lines, errors = report(args, stats, out, started, aborted)
            print("\n".join(lines), flush=True)
        except KeyboardInterrupt:
            print("interrupted again: cleaning up without a report", file=sys.stderr)
            errors, aborted = -1, "interrupted"
        finally:
            watchdog.cancel()
            if args.keep:
                signal.alarm(0)
                Child.cleanup(grace_s=3.0)
                print(f"kept: {workdir}", file=sys.stderr)
            else:
                end_run(workdir, grace_s=3.0)
    return 0 if errors == 0 and not aborted and not stats.stop_reason else 1


def _force_exit() -> None:
    print("looper load bench: the hard cap passed and the cleanup hung: killing everything", file=sys.stderr,
          flush=True)
    for child in list(Child.started):
        try:
            child.proc.kill()
        except Exception:
            pass
    os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
