#!/usr/bin/env python3
"""Load benchmark: thousands of slow SMTP sessions, emulated and spliced at once, against one `looper run`.

    .venv/bin/python bench/load.py                    # 2,000 emulated + 200 spliced sessions for 60 s
    .venv/bin/python bench/load.py --quick            # 200 + 20 for 10 s (about 15 s in all)
    .venv/bin/python bench/load.py --sessions 500 --splices 50 --seconds 30 --loop uvloop

Emulated clients come each from an address 127.1.x.y where nothing answers the
dial-back; spliced ones from 127.2.x.y, where a small relay does. Each session
loops over MAIL, RCPT, DATA, RSET or NOOP with a random pause before every
command. Reported: errors (there should be none), reply latency per command,
the trap's memory and CPU, what its event log says. Ctrl-C, SIGTERM or the
deadline stop it early with the figures so far. The README says more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

from harness import (FRAME, BenchError, Child, LoadMeter, Trap, arm, bound_socket, conduct, free_port, machine,
                     percentile, proc_alive, proc_cpu, proc_fds, proc_kib, raise_nofile, role_argv, run_loop, run_role,
                     version, parser, parse)

TRAP_HOST = "127.0.0.1"
EMULATED_NET, SPLICED_NET = 1, 2  # clients: 127.1.x.y (emulated), 127.2.x.y (spliced, and their relays)
HOSTS_PER_SUBNET = 250  # 127.N.x.1 .. 127.N.x.250
MAX_CLIENTS = HOSTS_PER_SUBNET * 256
REPLY_TIMEOUT_S = 10.0  # connect, or one reply, awaited longer than this: an error
JUNK_PER_SESSION = 90  # RSET + NOOP per session, below Postfix's smtpd_junk_command_limit (100)
LAG_TICK_S = 0.1  # the bench loop's own lag is measured with this ticker
SETTLE_TIMEOUT_S = 10.0  # after the load: the trap closes its ends of the sessions
SHUTDOWN_GRACE_S = 2  # the trap's shutdown_grace_s: nothing should be open when it stops
TEARDOWN_S = 40  # after the load (even one cut by the deadline): stopping, counting, the report
CLIENT_NAME = "client.load.test"
COMMANDS = ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "message", "RSET", "NOOP", "QUIT")
FAILURES = ((TimeoutError, "timeout"), (ConnectionRefusedError, "refused"), (ConnectionResetError, "reset"),
            (EOFError, "closed by the trap"), (BrokenPipeError, "broken pipe"))


def client_address(net: int, index: int) -> str:
    return f"127.{net}.{index // HOSTS_PER_SUBNET}.{1 + index % HOSTS_PER_SUBNET}"


def address_range(net: int, count: int) -> str:
    return f"{client_address(net, 0)}-{client_address(net, count - 1)}" if count else "none"


def message(kind: str, index: int, serial: int, run_tag: str) -> bytes:
    """A small message with its final dot, unique (the trap's store writes and syncs every one)."""
    ident = f"{kind}.{index}.{serial}.{run_tag}"
    return (f"From: <load{index}@{CLIENT_NAME}>\r\nTo: <sink@remote.load.test>\r\nSubject: load {ident}\r\n"
            f"Date: Sat, 22 Nov 2025 09:00:00 +0000\r\nMessage-ID: <{ident}@{CLIENT_NAME}>\r\n\r\n"
            + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n" * 4 + ".\r\n").encode()


MESSAGE_BYTES = len(message("emulated", 0, 0, "0" * 8)) - 3  # the content, before the "." line


class SessionFailed(Exception):
    """(step, what went wrong): a session that ended in an error."""


class Load:
    """The clients (in this process), the run's clock and stop, the figures as they come (a run cut short has them)."""

    def __init__(self, args) -> None:
        self.args, self.run_tag, self.tasks = args, os.urandom(4).hex(), set()
        self.stopping = False  # sessions QUIT at their next command
        self.latencies_ms = collections.defaultdict(list)  # (kind, command) -> [ms]
        # by (kind, step, what); by kind: connections, open now past the 220, 250s after content, replies
        self.errors, self.connections, self.greeted, self.messages, self.commands = (collections.Counter()
                                                                                     for _ in range(5))
        self.cut = 0  # sessions cancelled at a hard stop (not errors: we cut them)
        self.lag_ms, self.samples = [], []  # samples: (s since the start, VmRSS KiB, fds, emulated open, spliced open)
        self.cpu = {}  # ("trap" | "bench" | "relays", "start" | "end") -> (utime, stime)
        self.t_start = self.t_ramp_end = 0.0
        self.t_end = self.rss_ramp_end_kib = self.rss_run_end_kib = self.trap = self.relays = self.noise = None
        self.rss_before_kib = self.fds_before = self.rss_after_kib = self.fds_after = self.hwm_kib = None
        self.settle_s = self.messages_on_disk = self.events = None
        self.stop_reason, self.dialback_port = "", 0

    def request_stop(self, reason: str, hard: bool = False) -> None:
        self.stop_reason = self.stop_reason or reason
        if self.stop_event.is_set() or hard:
            self.hard_event.set()
        self.stop_event.set()

    def read_cpu(self, when: str) -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu["bench", when] = ru.ru_utime, ru.ru_stime
        for name, child in (("trap", self.trap), ("relays", self.relays)):
            with contextlib.suppress(OSError, AttributeError):
                self.cpu[name, when] = proc_cpu(child.pid)

    async def run(self) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        self.stop_event, self.hard_event = asyncio.Event(), asyncio.Event()

        def on_signal(signum, _frame) -> None:
            reason = (f"cut short by the deadline (--max-seconds {args.max_seconds:g})" if signum == signal.SIGALRM
                      else f"interrupted ({signal.Signals(signum).name})")
            loop.call_soon_threadsafe(self.request_stop, reason, signum == signal.SIGALRM)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(signum, on_signal)
        plan = [("emulated", i) for i in range(args.sessions)] + [("spliced", j) for j in range(args.splices)]
        random.Random(7).shuffle(plan)  # both kinds all along the ramp
        self.t_start, self.t_ramp_end = time.monotonic(), time.monotonic() + args.ramp
        self.read_cpu("start")
        for n, (kind, index) in enumerate(plan):
            task = loop.create_task(self.client(kind, index, self.t_start + args.ramp * n / max(1, len(plan))))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        sampler = loop.create_task(self.sampler())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), args.seconds)
            self.stop_event.set()  # a signal from now on cuts the drain
            self.end_window()
            self.stopping = True
            if not self.hard_event.is_set() and self.tasks:
                drain_s = args.pause[1] + 2 * REPLY_TIMEOUT_S + 2
                print(f"  stopping: every session QUITs at its next command (at most {drain_s:.0f} s)",
                      file=sys.stderr, flush=True)
                hard, everyone = loop.create_task(self.hard_event.wait()), loop.create_task(asyncio.wait(self.tasks))
                await asyncio.wait([everyone, hard], timeout=drain_s, return_when=asyncio.FIRST_COMPLETED)
                hard.cancel()
                everyone.cancel()
        finally:
            self.end_window()
            self.cut += len(self.tasks)
            for task in [*self.tasks, sampler]:
                task.cancel()
            await asyncio.wait([*self.tasks, sampler], timeout=5)

    def end_window(self) -> None:
        if self.t_end is None:
            self.t_end = time.monotonic()
            self.read_cpu("end")
            with contextlib.suppress(OSError, BenchError):
                self.rss_run_end_kib = proc_kib(self.trap.pid)

    async def sampler(self) -> None:
        """The loop's lag every LAG_TICK_S; each second the trap's VmRSS and fds, the open sessions."""
        for tick in itertools.count(1):
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            now = time.monotonic()
            self.lag_ms.append(max(0.0, (now - before - LAG_TICK_S) * 1000))
            if tick % round(1 / LAG_TICK_S):
                continue
            if not proc_alive(self.trap.pid):
                return self.request_stop("the trap process ended", hard=True)
            try:
                rss, fds = proc_kib(self.trap.pid), proc_fds(self.trap.pid)
            except (OSError, BenchError):
                continue
            if self.rss_ramp_end_kib is None and now >= self.t_ramp_end + self.args.pause[1] + 1:
                self.rss_ramp_end_kib = rss
            self.samples.append((now - self.t_start, rss, fds, self.greeted["emulated"], self.greeted["spliced"]))

    async def client(self, kind: str, index: int, start_at: float) -> None:
        """One client address: a session for the whole run; after a failure, a pause and a new one."""
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        addr = client_address(EMULATED_NET if kind == "emulated" else SPLICED_NET, index)
        serial = 0
        while not self.stopping:
            try:
                serial = await self.session(kind, index, addr, serial)
            except SessionFailed as failed:
                self.errors[(kind, *failed.args)] += 1
            except Exception as exc:  # a bug of this bench: still counted, never silent
                self.errors[kind, "bench", repr(exc)[:80]] += 1
            if not self.stopping:
                await asyncio.sleep(random.uniform(*self.args.pause))

    async def session(self, kind: str, index: int, addr: str, serial: int) -> int:
        step, sock, writer, greeted = "connect", bound_socket(addr), None, False

        async def command(name: str, line: bytes, expect: int) -> None:
            nonlocal step
            step = name
            writer.write(line)
            code, text = await self.reply(reader, kind, name, time.monotonic())
            if code != expect:
                raise SessionFailed(name, f"got {text[:60]!r}")

        try:
            self.connections[kind] += 1
            started = time.monotonic()
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                await asyncio.get_running_loop().sock_connect(sock, (TRAP_HOST, self.trap.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            step = "greeting"
            code, text = await self.reply(reader, kind, step, started)
            if code != 220:
                raise SessionFailed(step, f"got {text[:60]!r}")
            if kind == "spliced" and f"relay-{addr}.load.test ESMTP bench".encode() not in text:
                raise SessionFailed(step, f"not spliced: {text[:60]!r}")
            if kind == "emulated" and b"ESMTP bench" in text:
                raise SessionFailed(step, f"spliced, not emulated: {text[:60]!r}")
            self.greeted[kind] += 1
            greeted = True
            commands = [("EHLO", f"EHLO {CLIENT_NAME}\r\n".encode(), 250)]
            for rounds in itertools.count(1):
                commands += [("MAIL", f"MAIL FROM:<load{index}@{CLIENT_NAME}>\r\n".encode(), 250),
                             ("RCPT", b"RCPT TO:<sink@remote.load.test>\r\n", 250), ("DATA", b"DATA\r\n", 354)]
                if rounds <= JUNK_PER_SESSION:  # RSET after odd rounds, NOOP after even ones
                    commands.append(("RSET", b"RSET\r\n", 250) if rounds % 2 else ("NOOP", b"NOOP\r\n", 250))
                for name, line, expect in commands:
                    await asyncio.sleep(random.uniform(*self.args.pause))
                    if self.stopping:  # QUIT, 221, then the trap must close the connection
                        await command("QUIT", b"QUIT\r\n", 221)
                        async with asyncio.timeout(REPLY_TIMEOUT_S):
                            if rest := await reader.read(4096):
                                raise SessionFailed("QUIT", f"bytes after 221: {rest[:40]!r}")
                        writer.close()
                        return serial
                    await command(name, line, expect)
                    if name == "DATA":
                        serial += 1
                        await command("message", message(kind, index, serial, self.run_tag), 250)
                        self.messages[kind] += 1
                commands = []
        except (OSError, EOFError) as exc:  # TimeoutError is an OSError, IncompleteReadError an EOFError
            what = next((w for cls, w in FAILURES if isinstance(exc, cls)),
                        f"{type(exc).__name__} {getattr(exc, 'strerror', '') or exc}")
            raise SessionFailed(step, what) from None
        finally:
            if greeted:
                self.greeted[kind] -= 1
            if writer is None:
                sock.close()
            elif not writer.transport.is_closing():
                writer.transport.abort()  # a failure or a hard stop; a session that QUIT is closed

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
        self.latencies_ms[kind, name].append((time.monotonic() - started) * 1000)
        self.commands[kind] += 1
        return (int(text[:3]) if text[:3].isdigit() else -1), text.rstrip(b"\r\n")


def event_summary(path: Path) -> dict:
    """Counts from the trap's event log: by eventid, closed (mode/reason), dial-back failures, limits."""
    ev = {"counts": collections.Counter(), "closed": collections.Counter(), "failed": collections.Counter(),
          "limits": collections.Counter(), "errors": [], "bad_lines": 0}
    for log in sorted(path.parent.glob(path.name + "*")):
        with open(log, "rb") as f:
            for raw in f:
                try:
                    event = json.loads(raw)
                except ValueError:
                    ev["bad_lines"] += 1
                    continue
                eventid = event.get("eventid", "?")
                ev["counts"][eventid] += 1
                if eventid == "looper.session.closed":
                    ev["closed"][f"{event.get('mode')}/{event.get('reason')}"] += 1
                elif eventid == "looper.dialback.failed":
                    ev["failed"][event.get("reason")] += 1
                elif eventid == "looper.smtp.limit":
                    ev["limits"][event.get("limit")] += 1
                elif eventid == "looper.session.error" and len(ev["errors"]) < 5:
                    ev["errors"].append(str(event.get("error"))[:200])
    return ev


def phase_load(args, s: Load, workdir: Path) -> None:
    s.dialback_port = free_port()
    try:
        if args.splices:
            hosts = [client_address(SPLICED_NET, i) for i in range(args.splices)]
            s.relays = Child("relays", role_argv("responders", hosts=hosts, port=s.dialback_port, backlog=64,
                                                 name="relay-{host}.load.test", loop=args.loop), stdin=True)
            s.relays.read_json(time.monotonic() + 30)
        # limits.total (default 1,000) above the sessions; limits.per_ip, dialback.per_ip_hourly and limits.rate
        # at their defaults: one client an address, one session at a time
        s.trap = Trap(workdir, {"sensor": "load.bench", "shutdown_grace_s": SHUTDOWN_GRACE_S, "smtp": {"hostname":
                                "mx.load.test"}, "limits": {"total": max(1000, 2 * (args.sessions + args.splices))},
                                "dialback": {"port": s.dialback_port}})
        print(f"  trap pid {s.trap.pid} on {TRAP_HOST}:{s.trap.port}, dialback.port {s.dialback_port}, log.dir "
              f"{s.trap.log_dir}\n  load: {args.sessions:,} emulated + {args.splices:,} spliced sessions for "
              f"{args.seconds:g} s (ramp {args.ramp:.1f} s)", file=sys.stderr, flush=True)
        time.sleep(0.5)
        s.rss_before_kib, s.fds_before, meter = proc_kib(s.trap.pid), proc_fds(s.trap.pid), LoadMeter()
        try:
            run_loop(s.run, args.loop)
        finally:
            arm(max(TEARDOWN_S, FRAME.deadline - time.monotonic()))
            s.noise = meter.share() if s.t_end is not None else None
        if s.stop_reason.startswith("cut short"):
            raise BenchError(s.stop_reason)
        settle_start = time.monotonic()  # the trap closes its ends; then its memory without sessions
        while (proc_alive(s.trap.pid) and proc_fds(s.trap.pid) > s.fds_before + 2
               and time.monotonic() < settle_start + SETTLE_TIMEOUT_S):
            time.sleep(0.1)
        time.sleep(1.0)
        if proc_alive(s.trap.pid):
            s.settle_s = time.monotonic() - settle_start
            s.fds_after, s.rss_after_kib = proc_fds(s.trap.pid), proc_kib(s.trap.pid)
    finally:
        if s.trap is not None:
            with contextlib.suppress(OSError, BenchError):
                s.hwm_kib = proc_kib(s.trap.pid, "VmHWM")
            s.trap.stop()
            if (s.trap.log_dir / "events.jsonl").exists():
                s.events, s.messages_on_disk = event_summary(s.trap.log_dir / "events.jsonl"), s.trap.messages()


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def report(args, s: Load, stopped: str) -> list[str]:
    trap = s.trap
    lines = [f"looper load bench: {machine()}; bench clients and relays on {args.loop}"]
    if trap is not None:
        lines += [f"trap: looper run -c {trap.config_path} (pid {trap.pid}) on {TRAP_HOST}:{trap.port}, dialback.port "
                  f"{s.dialback_port}", f"    log.dir {trap.log_dir} (removed at the end)",
                  f"    config: {json.dumps(trap.config, separators=(', ', ': '))} (the rest: looper's defaults)"]
    lines += [f"load: {args.sessions:,} emulated sessions from {address_range(EMULATED_NET, args.sessions)} (nothing "
              f"on port {s.dialback_port} there: the dial-back is refused, they meet the emulated relay),",
              f"    {args.splices:,} spliced from {address_range(SPLICED_NET, args.splices)} (a relay on each address, "
              f"port {s.dialback_port}: the trap dials back and splices);",
              f"    ramp {args.ramp:.1f} s, run {args.seconds:g} s; {args.pause[0]:g}-{args.pause[1]:g} s pause before "
              f"each command: greeting, EHLO, then rounds of MAIL, RCPT, DATA + {MESSAGE_BYTES:,}-byte message, RSET "
              f"or NOOP (at most {JUNK_PER_SESSION} a session); QUIT at the end"]
    if s.t_end is None:
        return lines + ["", f"NO LOAD RUN: {stopped}"]
    window = s.t_end - s.t_start
    if s.stop_reason and s.stop_reason not in stopped:
        lines += ["", f"PARTIAL FIGURES: {s.stop_reason} after {window:.1f} s of {args.seconds:g} s"]
    steady = [x for x in s.samples if args.ramp + args.pause[1] + 1 <= x[0] <= window]
    lines.append("" if steady else "\nSessions open at once: (the run ended before the ramp did)")
    if steady:
        lines.append(f"Sessions open at once after the ramp ({len(steady)} samples, one a second): emulated "
                     f"{min(x[3] for x in steady):,}-{max(x[3] for x in steady):,} of {args.sessions:,}, spliced "
                     f"{min(x[4] for x in steady):,}-{max(x[4] for x in steady):,} of {args.splices:,}")
    replies, messages = sum(s.commands.values()), sum(s.messages.values())
    again = max(0, s.connections["emulated"] - args.sessions) + max(0, s.connections["spliced"] - args.splices)
    lines.append(f"    connections: emulated {s.connections['emulated']:,}, spliced {s.connections['spliced']:,} "
                 f"(after a failure: {again:,}); replies {replies:,} ({replies / max(1e-9, window):,.0f}/s); messages "
                 f"emulated {s.messages['emulated']:,}, spliced {s.messages['spliced']:,} "
                 f"({messages / max(1e-9, window):,.0f}/s)"
                 + (f"; sessions cut at the stop: {s.cut:,}" if s.cut else ""))
    total_errors = sum(s.errors.values())
    lines += ["", f"Errors: {total_errors:,}"]
    lines += [f"    {n:>7,}  {kind:<9} {step:<9} {what}" for (kind, step, what), n in s.errors.most_common(20)]
    lines += [f"    ... {len(s.errors) - 20} more kinds"] if len(s.errors) > 20 else []
    lines += ["", "Reply latency, ms (command written -> whole reply read; greeting: connect -> 220, with the "
                  "dial-back; message: content + \".\" -> 250, stored and synced first when emulated; QUIT: all "
                  "sessions at the stop)", f"    {'':<10}{'emulated':>8}{'':<25}{'spliced':>9}",
              f"    {'command':<10}{'count':>8}{'p50':>8}{'p99':>8}{'max':>9}{'count':>9}{'p50':>8}{'p99':>8}"
              f"{'max':>9}"]
    for name in COMMANDS:
        row = f"    {name:<10}"
        for width, kind in ((8, "emulated"), (9, "spliced")):
            v = s.latencies_ms.get((kind, name), [])
            row += (f"{len(v):>{width},}{percentile(v, 0.5):8.1f}{percentile(v, 0.99):8.1f}{max(v):9.1f}" if v
                    else f"{0:>{width}}{'-':>8}{'-':>8}{'-':>9}")
        lines.append(row)
    for kind in ("emulated", "spliced"):
        if v := [x for (k, name), xs in s.latencies_ms.items() if k == kind and name not in ("greeting", "QUIT")
                 for x in xs]:
            lines.append(f"    {kind} commands after the greeting, all but QUIT: p50 {percentile(v, 0.5):.1f}, "
                         f"p99 {percentile(v, 0.99):.1f}, max {max(v):.1f} ms ({len(v):,} replies)")
    if s.lag_ms:
        lines.append(f"    the bench clients' own loop lag (part of every figure above; a {LAG_TICK_S * 1000:.0f} ms "
                     f"ticker): p50 {percentile(s.lag_ms, 0.5):.1f}, p99 {percentile(s.lag_ms, 0.99):.1f}, "
                     f"max {max(s.lag_ms):.1f} ms")
    lines += ["", f"Trap process (pid {trap.pid}):",
              f"    resident memory: VmRSS before {mib(s.rss_before_kib)}, at full load {mib(s.rss_ramp_end_kib)} "
              f"(ramp end), at the run's end {mib(s.rss_run_end_kib)}, peak VmHWM {mib(s.hwm_kib)}, after the sessions "
              f"closed {mib(s.rss_after_kib)}" + (f" ({s.settle_s:.1f} s later)" if s.settle_s is not None else "")]
    if marks := [x for x in s.samples if x[0] <= window]:
        lines += ["    VmRSS along the run: " + ", ".join(f"{x[0]:.0f} s {x[1] / 1024:.1f}"
                                                        for x in marks[:: max(1, len(marks) // 8)]) + " MiB",
                  f"    open fds: before {s.fds_before}, peak {max(x[2] for x in s.samples):,}, after "
                  f"{'?' if s.fds_after is None else s.fds_after}"]
    used = {name: [b - a for a, b in zip(s.cpu[name, "start"], s.cpu[name, "end"])]
            for name in ("trap", "bench", "relays") if (name, "start") in s.cpu and (name, "end") in s.cpu}
    if "trap" in used:
        lines.append(f"    CPU over the run: {sum(used['trap']):.1f} s (utime {used['trap'][0]:.1f} + stime "
                     f"{used['trap'][1]:.1f}) in {window:.1f} s = {sum(used['trap']) / window:.1%} of one core")
    if trap.exit_code is not None:
        lines.append(f"    stopped by SIGTERM: exit {trap.exit_code} in {trap.stop_s:.1f} s"
                     + (f"; CPU over its whole life {trap.cpu_s:.1f} s" if trap.cpu_s is not None else ""))
    others = [f"{label} {sum(used[name]):.1f} CPU-s ({sum(used[name]) / window:.0%} of a core)"
              for name, label in (("bench", "bench clients"), ("relays", "relays")) if name in used]
    if s.noise is not None:
        others.append(f"other processes and steal {s.noise[0]:.1f} CPU-s ({s.noise[1]:.0%} of all CPUs)"
                      + ("  <-- other work on the machine: figures are skewed" if s.noise[1] > 0.05 else ""))
    lines += ["Others over the run: " + "; ".join(others)] if others else []
    if s.events is not None:
        ev, c = s.events, s.events["counts"]
        lines += ["", "The trap's event log:",
                  f"    {sum(c.values()):,} events; session.connect {c['looper.session.connect']:,}, session.closed "
                  f"{c['looper.session.closed']:,}, dialback.ok {c['looper.dialback.ok']:,}, dialback.failed "
                  f"{c['looper.dialback.failed']:,}, smtp.message {c['looper.smtp.message']:,}, reflect.message "
                  f"{c['looper.reflect.message']:,}; messages on disk {s.messages_on_disk or 0:,}"]
        for title, key in (("closed (mode/reason)", "closed"), ("dial-back failures", "failed")):
            lines.append(f"    {title}: " + (", ".join(f"{k} {n:,}" for k, n in ev[key].most_common()) or "none"))
        lines.append("    " + ", ".join(f"{k} {c[k]:,}" for k in ("looper.session.error", "looper.session.refused",
                                                                  "looper.smtp.limit", "looper.smtp.store_failed",
                                                                  "looper.log.dropped"))
                     + (f" ({', '.join(f'{k} {n}' for k, n in ev['limits'].items())})" if ev["limits"] else "")
                     + (f"; unparsable lines {ev['bad_lines']}" if ev["bad_lines"] else ""))
        lines += [f"    session.error: {err}" for err in ev["errors"]]
    verdict = "FAIL" if total_errors else "(incomplete run)" if s.stop_reason or stopped else "PASS"
    return lines + ["", f"Errors: {total_errors:,}: {verdict}"]


def main() -> int:
    if run_role({}):
        return 0
    p = parser(__doc__, "10 s, 200 emulated and 20 spliced sessions", "load")
    p.add_argument("--seconds", type=float, help="length of the run, ramp included")
    p.add_argument("--sessions", type=int, help="emulated sessions at once")
    p.add_argument("--splices", type=int, help="spliced sessions at once")
    p.add_argument("--ramp", type=float, help="seconds over which the clients connect (default seconds / 12, max 5)")
    p.add_argument("--pause", type=float, nargs=2, default=(1.0, 2.0), metavar=("MIN", "MAX"),
                   help="random pause before each command, seconds (default 1 2)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="event loop of the bench clients and relays (the trap runs as `looper run` does)")
    args = parse(p, seconds=(60.0, 10.0), sessions=(2000, 200), splices=(200, 20), max_seconds=("seconds + 90", 50))
    args.ramp = args.ramp if args.ramp is not None else min(5.0, args.seconds / 12)
    args.max_seconds = args.seconds + 90 if args.max_seconds == "seconds + 90" else args.max_seconds
    need = 2 * (args.sessions + args.splices) + 200  # descriptors
    for wrong, why in ((not (0 <= args.sessions <= MAX_CLIENTS and 0 <= args.splices <= MAX_CLIENTS),
                        f"--sessions and --splices: 0 to {MAX_CLIENTS}"),
                       (not 0 < args.pause[0] <= args.pause[1] < REPLY_TIMEOUT_S,
                        f"--pause: 0 < MIN <= MAX < {REPLY_TIMEOUT_S:g}"),
                       (args.ramp >= args.seconds, "--ramp must be shorter than --seconds"),
                       (args.loop == "uvloop" and not version("uvloop")[0].isdigit(), "uvloop is not installed"),
                       (raise_nofile() < need, f"RLIMIT_NOFILE hard limit {raise_nofile()}, below the {need} needed")):
        if wrong:
            p.error(why)
    s = Load(args)
    code = conduct("load", args, [("load", lambda w: phase_load(args, s, w))], lambda why: report(args, s, why))
    return code or (1 if s.stop_reason or s.errors else 0)


if __name__ == "__main__":
    sys.exit(main())
