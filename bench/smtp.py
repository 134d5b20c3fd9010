#!/usr/bin/env python3
"""SMTP session benchmark: looper's emulated relay beside aiosmtpd and Postfix's smtp-sink, in one run.

    .venv/bin/python bench/smtp.py                    # full run (about 6 minutes)
    .venv/bin/python bench/smtp.py --quick            # under a minute
    .venv/bin/python bench/smtp.py --only sessions --concurrency 10 --seconds 10
    .venv/bin/python bench/smtp.py --only sessions --profile /tmp/prof   # where looper's time goes

Sessions/s at concurrency 1, 10 and 100 (connect, EHLO, MAIL, RCPT, DATA with
1 KiB of unique content, QUIT, every reply checked), connections/s, memory per
idle session; looper (`looper run`, every session meeting the emulated relay,
which stores and fsyncs every message before its 250) beside aiosmtpd with its
Sink handler, Postfix's smtp-sink (in C, the ceiling) and floor (a bare asyncio
Protocol of canned replies). The README's Benchmarks section says more.
"""

from __future__ import annotations

import collections
import errno
import os
import pwd
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from harness import (BenchError, Child, Server, Trap, bound_socket, conduct, cpu_between, detach, emit, free_port,
                     idle_sessions, idle_table, machine, median, noise_report, parse, parser, ratio, role_argv, run_loop,
                     run_role, split, steady, stdin_closed, target, version)

HOST = "127.0.0.1"
STEP_TIMEOUT_S = 10.0  # one reply awaited longer than this: the session is an error
DRAIN_S = 10.0  # after the window, sessions in flight get this long to finish
START_DELAY_S = 0.3  # clients are spawned, then all start together
MAX_ERRORS_PER_PROC = 2000  # a server that fails this often is broken: stop hammering
BACKLOG = 1024  # looper's own; given to aiosmtpd, smtp-sink and floor too
NAME = b"client.bench.test"
MESSAGE_BYTES = 1024  # content, before the "." line
MESSAGE = object()  # stands for the session's own message in a script
# (expected reply code, what to send once it came; None: done, close)
SESSION_SCRIPT = ((b"220", b"EHLO " + NAME + b"\r\n"), (b"250", b"MAIL FROM:<load@" + NAME + b">\r\n"),
                  (b"250", b"RCPT TO:<sink@remote.bench.test>\r\n"), (b"250", b"DATA\r\n"), (b"354", MESSAGE),
                  (b"250", b"QUIT\r\n"), (b"221", None))
STEPS = ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "content", "QUIT")
SERVERS = ("looper", "looper-asyncio", "aiosmtpd", "smtp-sink", "floor")
# Issue 13's floors: sessions/s at least aiosmtpd's at every concurrency (aim: 2x),
# server CPU per session at most 1/1.2 of aiosmtpd's at 10 and 100, connections/s
# at least 1.2x aiosmtpd's, an idle session under 4 KB resident.
TARGET_SESSION_RATIO = 1.0
AIM_SESSION_RATIO = 2.0
TARGET_CPU_RATIO = 1 / 1.2
TARGET_CONNECTION_RATIO = 1.2
TARGET_IDLE_BYTES = 4_000
SINK = shutil.which("smtp-sink", path=os.environ.get("PATH", "") + ":/usr/sbin")


def session_message(tag: bytes) -> tuple[bytes, bytes]:
    """(prefix, suffix): prefix + b"%012d" % n + suffix is message n, MESSAGE_BYTES of content then ".", its
    Message-ID unique (looper's content-addressed store writes every one)."""
    prefix = (b"From: <load@" + NAME + b">\r\nTo: <sink@remote.bench.test>\r\nSubject: bench message\r\n"
              b"Date: Sat, 22 Nov 2025 09:00:00 +0000\r\nMessage-ID: <" + tag + b".")
    head_end = b"@" + NAME + b">\r\n\r\n"
    room = MESSAGE_BYTES - len(prefix) - 12 - len(head_end)  # the body: Lorem ipsum lines, the last one cut short
    body = ((b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n" * 20)[: room - 2]
            + b"\r\n").replace(b"\r\r\n", b"x\r\n")  # a line cut after its CR: no bare CR
    suffix = head_end + body + b".\r\n"
    assert len(prefix) + 12 + len(suffix) - 3 == MESSAGE_BYTES and b"\r\n.\r\n" not in body
    return prefix, suffix


def role_load(a) -> None:
    """`conc` sessions (or connections) in flight, each awaiting every reply; counts those ending in the window."""
    script = SESSION_SCRIPT if a.mode == "session" else ((b"220", None),)
    prefix, suffix = session_message(f"{os.getpid():07d}-{os.urandom(4).hex()}".encode())
    t0, t1 = a.start_at + a.warmup, a.start_at + a.warmup + a.duration
    ep, conns, errors, latencies = select.epoll(), {}, collections.Counter(), []  # conns: fd -> [sock, step, buf, t, t]
    serial = counted = total = messages = 0
    ru0 = ru1 = None
    late, running = time.monotonic() > a.start_at, True

    def open_one(now: float) -> None:
        nonlocal serial
        serial += 1
        sock = None
        try:
            sock = bound_socket(a.sources[serial % len(a.sources)])
            err = sock.connect_ex((HOST, a.port))
        except OSError as exc:
            err = exc.errno or -1
        if err and err != errno.EINPROGRESS:
            if sock:
                sock.close()
            errors[f"connect:{errno.errorcode.get(err, err)}"] += 1
        else:
            conns[sock.fileno()] = [sock, 0, b"", now, now]
            ep.register(sock.fileno(), select.EPOLLIN)

    def end(fd: int, what: str | None, now: float) -> None:
        """A session over: completed (what None) or failed; another in its place."""
        conn = conns.pop(fd)
        conn[0].close()
        if what is not None:
            errors[f"{STEPS[conn[1]]}:{what}"] += 1
        if running:
            open_one(now)

    time.sleep(max(0.0, a.start_at - time.monotonic()))
    for _ in range(a.conc):
        open_one(time.monotonic())
    next_scan = time.monotonic() + 1.0
    while conns or running:
        events = ep.poll(0.1)
        now = time.monotonic()
        if ru0 is None and now >= t0:
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
        if running and now >= t1:
            running, ru1, drain_until = False, resource.getrusage(resource.RUSAGE_SELF), now + DRAIN_S
        for fd, _ in events:
            if (conn := conns.get(fd)) is None:
                continue
            try:
                data = conn[0].recv(65536)
            except OSError as exc:
                end(fd, type(exc).__name__, now)
                continue
            if not data:
                end(fd, "EOF", now)
                continue
            # One command in flight: a reply is whole when the buffer ends with a final line ("ddd " or "ddd").
            data = conn[2] + data
            start = data.rfind(b"\n", 0, len(data) - 1) + 1
            if data[-1:] != b"\n" or data[start + 3 : start + 4] == b"-":
                conn[2] = data
                if len(data) > 65536:
                    end(fd, "overlong reply", now)
                continue
            conn[2] = b""
            expect, send = script[conn[1]]
            if data[:3] != expect or data[start : start + 3] != expect:
                end(fd, f"got {data[:3].decode('ascii', 'replace')}", now)
            elif send is None:
                total += 1
                if t0 <= now < t1:
                    counted += 1
                    latencies.append(now - conn[3])
                end(fd, None, now)
            else:
                conn[1], conn[4] = conn[1] + 1, now
                if send is MESSAGE:  # unique: the prefix names this process, the number this message
                    messages += 1
                    send = prefix + b"%012d" % messages + suffix
                try:
                    if conn[0].send(send) != len(send):
                        end(fd, "short send", now)
                except OSError as exc:
                    end(fd, type(exc).__name__, now)
        if now >= next_scan:
            next_scan = now + 1.0
            for fd in [fd for fd, conn in conns.items() if now - conn[4] > STEP_TIMEOUT_S]:
                end(fd, "timeout", now)
            if sum(errors.values()) > MAX_ERRORS_PER_PROC:
                errors["aborted"] = 1
                break
        if not running and now > drain_until:
            for fd in list(conns):
                end(fd, "still open after the drain", now)
            break
        while running and len(conns) < a.conc:  # a connect that failed outright: keep the concurrency
            open_one(now)
    errors.update({"client started late": 1} if late else {})
    emit({"sessions": counted, "total": total, "errors": errors, "latencies": latencies[:: len(latencies) // 4000 + 1],
          "cpu_s": ru1 and (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)})


def role_aiosmtpd(a) -> None:
    """aiosmtpd with the Sink handler as its Controller would serve it, on the stdlib asyncio loop."""
    import asyncio

    from aiosmtpd.handlers import Sink
    from aiosmtpd.smtp import SMTP

    async def main() -> None:
        # A fixed hostname: without one aiosmtpd calls socket.getfqdn() per connection (the resolver's speed).
        await asyncio.get_running_loop().create_server(lambda: SMTP(Sink(), hostname="sink.bench.test"), HOST, a.port,
                                                       backlog=BACKLOG, reuse_address=True)
        await stdin_closed().wait()

    run_loop(main)


ROLES = {"load": role_load, "aiosmtpd": role_aiosmtpd}


def _sink_preexec() -> None:
    """smtp-sink runs as root only with -u, whose setuid clears PDEATHSIG: drop to postfix here, then detach."""
    if os.getuid() == 0:
        user = pwd.getpwnam("postfix")
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    detach()


def available(wanted: list[str]) -> tuple[list[str], list[str]]:
    """(the servers we can run, notes on those we cannot)."""
    notes = {"aiosmtpd": not version("aiosmtpd")[0].isdigit() and "aiosmtpd is not installed (make bench installs it)",
             "smtp-sink": not SINK and "smtp-sink not found (Debian package postfix; make bench installs it as root)"
             or os.getuid() == 0 and "postfix" not in {u.pw_name for u in pwd.getpwall()}
             and "running as root and no postfix user for smtp-sink"}
    return [n for n in wanted if not notes.get(n)], [f"{notes[n]}: skipped" for n in wanted if notes.get(n)]


def start_server(name: str, workdir: Path, profile: str = "") -> Server:
    if name.startswith("looper"):  # nothing listens on the dial-back port: every session meets the emulated relay
        return Trap(workdir, {"dialback": {"port": free_port(), "on_failure": "emulate"},
                              "smtp": {"hostname": "mx.bench.test"}, "limits": {"per_ip": 20000, "total": 20000},
                              "log": {"max_bytes": 256 << 20, "backups": 1}}, profile=profile, label=name,
                    loop="asyncio" if name == "looper-asyncio" else "uvloop")
    port = free_port()
    if name == "aiosmtpd":
        return Server(name, role_argv("aiosmtpd", port=port), port)
    if name == "floor":
        return Server(name, role_argv("responders", hosts=[HOST], port=port, name="floor.bench.test", backlog=BACKLOG,
                                      loop="asyncio"), port)
    return Server(name, [SINK, "-h", "sink.bench.test", "-m", "1000", f"{HOST}:{port}", str(BACKLOG)], port,
                  preexec=_sink_preexec)


def load_run(server: Server, mode: str, conc: int, seconds: float, warmup: float, procs: int):
    """One window of load on `server`: `procs` client processes share `conc`."""
    start_at = time.monotonic() + START_DELAY_S
    t0, t1 = start_at + warmup, start_at + warmup + seconds
    clients = [Child(f"load[{server.name},{k}]", role_argv(
        "load", port=server.port, mode=mode, conc=n, sources=[f"127.0.0.{10 + 4 * k + j}" for j in range(4)],
        start_at=start_at, warmup=warmup, duration=seconds)) for k, n in enumerate(split(conc, min(procs, conc)))]
    try:
        server_cpu_s = cpu_between(server, t0, t1)
        results = [c.read_json(t1 + DRAIN_S + 20) for c in clients]
        for c in clients:
            c.wait(t1 + DRAIN_S + 20)
    finally:
        for c in clients:
            c.kill()
    errors = sum((collections.Counter(r["errors"]) for r in results), collections.Counter())
    server.sessions_done += sum(r["total"] for r in results) if mode == "session" else 0
    sessions = sum(r["sessions"] for r in results)
    return types.SimpleNamespace(rate=sessions / seconds, sessions=sessions, server_cpu_s=server_cpu_s, seconds=seconds,
                                 client_cpu_s=sum(r["cpu_s"] or 0.0 for r in results), errors=dict(errors),
                                 latencies=[x for r in results for x in r["latencies"]])


class Point:
    """The runs of one server at one concurrency in one mode (session, connect)."""

    def __init__(self, mode: str, conc: int, server: str) -> None:
        self.mode, self.conc, self.server, self.runs = mode, conc, server, []

    def median_of(self, attr) -> float:
        return median(attr(r) for r in self.runs)

    @property
    def rate(self) -> float:
        return self.median_of(lambda r: r.rate)

    @property
    def errors(self) -> dict:
        return dict(sum((collections.Counter(r.errors) for r in self.runs), collections.Counter()))


def sync_floor_us(workdir: Path, count: int = 200) -> float:
    """Median time of what the store does for each message at concurrency 1: write a 1 KiB file, fsync it, rename
    it into place, fsync the folder."""
    folder = workdir / "sync-floor"
    folder.mkdir(exist_ok=True)
    times = []
    for i in range(count):
        start = time.perf_counter()
        temporary, final = folder / f".{i}.tmp", folder / f"{i}.eml"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(1024))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
        times.append(time.perf_counter() - start)
    return median(times) * 1e6


def phase_rates(args, r, workdir: Path) -> None:
    if "sessions" in args.only:
        r.sync_us = sync_floor_us(workdir)
    plan = [("session", c) for c in args.concurrency if "sessions" in args.only]
    plan += [("connect", args.conn_concurrency)] if "connections" in args.only else []
    r.points = [Point(mode, conc, name) for mode, conc in plan for name in r.names]
    servers: dict[str, Server] = {}
    try:
        for name in r.names:
            servers[name] = start_server(name, workdir, r.profile if name == "looper" else "")
            # warm-up: code paths, caches, the message folder, the writer threads
            load_run(servers[name], "session", 10, args.warmup * 2, 0.0, args.client_procs)
        print("  servers: " + ", ".join(f"{s.name} on {HOST}:{s.port} (pid {s.pid})" for s in servers.values()),
              file=sys.stderr, flush=True)
        for rep in range(args.repeat):
            for p in r.points:
                server = servers[p.server]
                if not server.alive():
                    raise BenchError(f"{p.server} died: {server.err_tail()}")
                label = f"run {rep + 1}/{args.repeat} {'sessions' if p.mode == 'session' else 'connects'} c={p.conc:<3}"
                run, _ = steady(lambda: load_run(server, p.mode, p.conc, args.seconds, args.warmup,
                                                 1 if p.conc == 1 else args.client_procs),
                                lambda x: f"{label} {server.name:<14} {x.rate:9,.0f}/s  server CPU "
                                          f"{x.server_cpu_s / x.seconds:4.0%}  client CPU "
                                          f"{x.client_cpu_s / x.seconds:4.0%}"
                                          + (f"  errors {sum(x.errors.values())}" if x.errors else ""))
                p.runs.append(run)
        if looper := servers.get("looper"):
            time.sleep(0.5)
            r.disk = {"acknowledged": looper.sessions_done, "on_disk": looper.messages(), "rss_kib": looper.rss_kib()}
    finally:
        for server in servers.values():
            server.stop()


def rates_table(args, points: list[Point], disk: dict) -> list[str]:
    lines: list[str] = []
    by = {(p.mode, p.conc, p.server): p for p in points if p.runs}
    for mode in ("session", "connect"):
        if not (rows := [p for p in by.values() if p.mode == mode]):
            continue
        lines += ["", f"Sessions/s: connect, 220, EHLO, MAIL, RCPT, DATA, {MESSAGE_BYTES} bytes of content (unique "
                      f"each), \".\", QUIT, 221;\none command in flight, every reply code checked; median of "
                      f"{args.repeat} run(s) of {args.seconds:g} s" if mode == "session" else
                  f"Connections/s: connect, read the 220, close; concurrency {args.conn_concurrency}, median of "
                  f"{args.repeat} run(s) of {args.seconds:g} s",
                  f"  {'conc':>4}  {'server':<15}{'per s':>9}  {'min-max':>15}  {'p50 ms':>7} {'p99 ms':>7}  "
                  f"{'server CPU':>10} {'us/each':>8}  {'client CPU':>10} {'us/each':>8}  {'vs aiosmtpd':>11} "
                  f"{'vs smtp-sink':>12}  errors"]
        for p in rows:
            lat = sorted(x for r in p.runs for x in r.latencies) or [float("nan")]
            vs = [ratio(p.rate, by[mode, p.conc, ref].rate) if ref != p.server and (mode, p.conc, ref) in by else "-"
                  for ref in ("aiosmtpd", "smtp-sink")]
            rates, err = [r.rate for r in p.runs], p.errors
            lines.append(
                f"  {p.conc:>4}  {p.server:<15}{p.rate:9,.0f}  {min(rates):7,.0f}-{max(rates):<7,.0f}  "
                f"{lat[len(lat) // 2] * 1000:7.2f} {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:7.2f}  "
                f"{p.median_of(lambda r: r.server_cpu_s / r.seconds):>10.0%} "
                f"{p.median_of(lambda r: r.server_cpu_s / max(1, r.sessions) * 1e6):8.0f}  "
                f"{p.median_of(lambda r: r.client_cpu_s / r.seconds):>10.0%} "
                f"{p.median_of(lambda r: r.client_cpu_s / max(1, r.sessions) * 1e6):8.0f}  {vs[0]:>11} {vs[1]:>12}  "
                f"{sum(err.values())}" + (f" {err}" if err else ""))
    if lines:
        lines += ["  (server CPU: all its threads, as a share of one CPU over the window; us/each: CPU microseconds",
                  f"  per completed session or connection; client: the {args.client_procs} load processes (1 at "
                  f"concurrency 1); p50/p99: one session's (connection's) time as the client saw it;",
                  "  floor: a bare asyncio Protocol on looper's loop answering each line with a canned reply, no "
                  "parsing, no log, no storage: the most any asyncio server can do here)"]
    if disk:
        lines.append(f"  looper: {disk['on_disk']:,} messages on disk for {disk['acknowledged']:,} acknowledged (files "
                     f"in <log.dir>/messages, fsynced before each 250): "
                     f"{'all there' if disk['on_disk'] >= disk['acknowledged'] else 'MISSING SOME'}; its RSS after the "
                     f"phase {disk['rss_kib'] / 1024:.1f} MiB")
    return lines


def phase_memory(args, r, workdir: Path) -> None:
    for name in [n for n in r.names if n != "smtp-sink"]:
        server = start_server(name, workdir)
        try:
            load_run(server, "session", 10, 0.5, 0.0, 1)  # warm-up, as in the rate phases
            load_run(server, "connect", 10, 0.3, 0.0, 1)
            time.sleep(1.0)
            r.memory.append(idle_sessions(server, args.sessions))
        finally:
            server.stop()


def verdicts(r) -> list[str]:
    lines = ["", "Targets:"]
    by = {(p.mode, p.conc, p.server): p for p in r.points if p.runs}
    for p in by.values():
        if p.mode == "session" and p.server == "looper":
            if (ref := by.get(("session", p.conc, "aiosmtpd"))) is None:
                lines.append(f"    sessions/s c={p.conc}: no aiosmtpd figure: n/a")
                continue
            x = p.rate / ref.rate if ref.rate else float("inf")
            lines.append(target(f"sessions/s c={p.conc:<3} looper {p.rate:,.0f} >= {TARGET_SESSION_RATIO:g}x aiosmtpd "
                                f"{ref.rate:,.0f} ({x:.2f}x; aim {AIM_SESSION_RATIO:g}x){', errors' if p.errors else ''}",
                                x >= TARGET_SESSION_RATIO and not p.errors))
            if p.conc >= 10:
                cpu = p.median_of(lambda x: x.server_cpu_s / max(1, x.sessions) * 1e6)
                ref_cpu = ref.median_of(lambda x: x.server_cpu_s / max(1, x.sessions) * 1e6)
                lines.append(target(f"server CPU per session c={p.conc:<3} looper {cpu:,.0f} us <= 1/1.2 of aiosmtpd's "
                                    f"{ref_cpu:,.0f} us ({cpu / ref_cpu:.2f}x)", cpu <= TARGET_CPU_RATIO * ref_cpu))
    for p in by.values():
        if p.mode == "session" and p.server == "looper" and (ref := by.get(("session", p.conc, "looper-asyncio"))):
            lines.append(f"    event_loop: uvloop against asyncio, sessions/s c={p.conc:<3} {p.rate:,.0f} against "
                         f"{ref.rate:,.0f} ({ratio(p.rate, ref.rate)}), server CPU per session "
                         f"{p.median_of(lambda x: x.server_cpu_s / max(1, x.sessions) * 1e6):,.0f} against "
                         f"{ref.median_of(lambda x: x.server_cpu_s / max(1, x.sessions) * 1e6):,.0f} us")
    if r.disk:
        lines.append(target(f"every acknowledged message stored: {r.disk['on_disk']:,} files for "
                            f"{r.disk['acknowledged']:,}", r.disk["on_disk"] >= r.disk["acknowledged"]))
    for p in by.values():
        if p.mode == "connect" and p.server in ("looper", "looper-asyncio"):
            if (ref := by.get(("connect", p.conc, "aiosmtpd"))) is None or not ref.rate:
                lines.append(f"    connections/s {p.server}: no aiosmtpd figure: n/a")
                continue
            lines.append(target(f"connections/s {p.server} {p.rate:,.0f} >= {TARGET_CONNECTION_RATIO:g}x aiosmtpd "
                                f"{ref.rate:,.0f} ({p.rate / ref.rate:.2f}x){', errors' if p.errors else ''}",
                                p.rate >= TARGET_CONNECTION_RATIO * ref.rate and not p.errors))
    if r.sync_us:
        lines.append(f"    concurrency 1's floor: the two syncs of each message (its file, then its folder) take "
                     f"{r.sync_us:,.0f} us here: at most {1e6 / r.sync_us:,.0f} sessions/s, which aiosmtpd's sink "
                     f"does not pay")
    for row in r.memory:
        if row.name == "looper":
            lines.append(target(f"idle session resident looper {row.per_session / 1000:.2f} KB < "
                                f"{TARGET_IDLE_BYTES / 1000:g} KB ({row.sessions:,} sessions)",
                                row.per_session < TARGET_IDLE_BYTES and not row.failures))
    return lines + (["    (no looper figures in this run)"] if len(lines) == 2 else [])


def main() -> int:
    if run_role(ROLES):
        return 0
    p = parser(__doc__, "under a minute: 1 run of 1 s per point, 1,000 idle sessions, no floor",
               "sessions,connections,memory")
    p.add_argument("--servers", help=f"comma-separated, of {', '.join(SERVERS)} (default all; quick: all but floor)")
    p.add_argument("--concurrency", default="1,10,100", help="session concurrencies (default 1,10,100)")
    p.add_argument("--conn-concurrency", type=int, default=10, help="concurrency for connections/s (default 10)")
    p.add_argument("--seconds", type=float, help="measured window per run")
    p.add_argument("--warmup", type=float, help="load before each window")
    p.add_argument("--repeat", type=int, help="runs per point, interleaved")
    p.add_argument("--client-procs", type=int, default=2, help="load processes at concurrency > 1 (default 2)")
    p.add_argument("--sessions", type=int, help="idle sessions for the memory test")
    p.add_argument("--profile", metavar="DIR", default="", help="looper under cProfile in the rates phase, to DIR")
    p.add_argument("--workdir", default=tempfile.gettempdir(),
                   help="where the temporary folder (looper's log.dir) goes: its file system's fsync is measured")
    args = parse(p, seconds=(5.0, 1.0), warmup=(0.5, 0.2), repeat=(3, 1), sessions=(10_000, 1000),
                 max_seconds=(1200, 50))
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    wanted = [x.strip() for x in (args.servers or ",".join(SERVERS[: 4 if args.quick else 5])).split(",") if x.strip()]
    if set(wanted) - set(SERVERS):
        p.error(f"unknown server in --servers: {args.servers}")
    names, notes = available(wanted)
    r = types.SimpleNamespace(names=names, points=[], disk={}, memory=[], sync_us=0.0,
                              profile=args.profile and os.path.abspath(os.path.join(args.profile, "looper-rates.prof")))
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    about = "looper SMTP bench: " + machine("aiosmtpd", "smtp-sink")
    print(about, *notes, sep="\n  ", file=sys.stderr, flush=True)
    phases = [("rates", phase_rates)] if {"sessions", "connections"} & set(args.only) else []
    phases += [("memory", phase_memory)] if "memory" in args.only else []

    def report(stopped: str) -> list[str]:
        fs = subprocess.run(["df", "--output=fstype,source", args.workdir], capture_output=True, text=True).stdout
        lines = [about, f"looper's log.dir (events, messages) in {args.workdir}: {' on '.join(fs.split()[-2:])}; "
                        f"looper on uvloop (its default event_loop), looper-asyncio on the stdlib loop, aiosmtpd and floor on the stdlib loop", f"servers: {', '.join(names)}",
                 *[f"  {n}" for n in notes], f"load: {args.client_procs} client processes at concurrency > 1 (1 at "
                 f"concurrency 1), plain non-blocking sockets on epoll, from 127.0.0.10+"]
        lines += rates_table(args, r.points, r.disk)
        if r.disk and fs.split()[-2:-1] == ["ext4"]:  # measured: create+fsync 900-1,600 us against 300-450 for minutes
            lines.append("  the bench deletes these messages as it ends: on ext4, files made near them in the next minutes "
                         "cost 3-5x as much (inode allocation scans the recently deleted): give a bench soon after a "
                         "fresh --workdir, a new folder at the top of the file system")
        lines += [""] + idle_table(r.memory, "idle sessions (connected, greeted, silent)") if r.memory else []
        lines += [f"  looper ran under cProfile (--profile), its figures too; stats in {r.profile}"] * bool(r.profile)
        return lines + noise_report() + verdicts(r)

    return conduct("smtp", args, [(name, lambda w, f=f: f(args, r, w)) for name, f in phases], report, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
