#!/usr/bin/env python3
"""IMAP session benchmark: looper's bait IMAP server beside the real Dovecot 2.3, in one run.

    .venv/bin/python bench/imap.py                    # full run (about 2 minutes)
    .venv/bin/python bench/imap.py --quick            # under a minute
    .venv/bin/python bench/imap.py --concurrency 100 --seconds 10
    .venv/bin/python bench/imap.py --profile /tmp/prof   # where looper's time goes

Sessions/s at concurrency 1, 10 and 100, each session: connect, greeting,
LOGIN, SELECT INBOX, FETCH 1:* (FLAGS ENVELOPE), LOGOUT, every tagged reply
checked (OK, and one FETCH response per message SELECT counted); the
server's CPU per session from /proc. looper is `looper run` with listen.imap
and the shipped bait (config/bait); Dovecot is tests/dovecot.py's private
instance (stock Debian settings, a passwd-file user, a Maildir of the same
bait), which needs root and Debian's dovecot-imapd: without them only looper
runs. Each session in flight has a source address of its own (127.0.0.10 and
up): Dovecot allows 10 connections per user and address, and counts a client
on its own address as secured. The README's Benchmarks section says more.
"""

from __future__ import annotations

import collections
import os
import re
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

from harness import (OWN_SESSIONS, REPO, TICK, BenchError, Child, Trap, bound_socket, conduct, cpu_between, emit,
                     free_port, listening, machine, median, noise_report, parse, parser, percentile, proc_stat, ratio,
                     role_argv, run_loop, run_role, split, steady, target)

sys.path.insert(0, str(REPO))  # looper and tests.dovecot from this checkout, in the conductor and in the trap

USER, PASSWORD = "admin", "password"  # tests/dovecot.py's passwd-file user; the trap's `credentials` too
COMMANDS = (b"a1 LOGIN " + USER.encode() + b" " + PASSWORD.encode(), b"a2 SELECT INBOX",
            b"a3 FETCH 1:* (FLAGS ENVELOPE)", b"a4 LOGOUT")
STEPS = ("greeting", "LOGIN", "SELECT", "FETCH", "LOGOUT")
EXISTS = re.compile(rb"^\* (\d+) EXISTS\r$", re.M)
FETCHED = re.compile(rb"^\* \d+ FETCH \(", re.M)
SESSION_TIMEOUT_S = 10.0  # a session not over in this long is an error
DRAIN_S = 10.0  # after the window, sessions in flight get this long to finish
START_DELAY_S = 0.5  # clients are spawned, then all start together
FIRST_SOURCE = 10  # 127.0.0.10 and up: one address per session in flight
DOVECOT_HOST = "127.0.0.2"  # not a client's address: a client there would count as secured
TARGET_RATIO, AIM_RATIO = 2.0, 10.0  # looper against Dovecot, at every concurrency (issue 10)


class Session:  # an asyncio protocol, the client of one IMAP session
    """Sends each command once the previous reply is whole (its tagged line last), checks it, ends at LOGOUT's OK."""

    pause_writing = resume_writing = eof_received = lambda self, *args: None

    def __init__(self, done) -> None:
        self.done, self.step, self.buf, self.exists = done, 0, b"", -1

    def connection_made(self, transport) -> None:
        self.transport = transport

    def fail(self, what: str) -> None:
        if not self.done.done():
            self.done.set_result(f"{STEPS[self.step]}:{what}")
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf = self.buf + data
        if not buf.endswith(b"\r\n"):
            return
        last = buf[buf.rfind(b"\n", 0, len(buf) - 2) + 1 :]
        if self.step == 0:
            if not last.startswith(b"* OK "):
                return self.fail(f"got {last[:30]!r}")
        elif not last.startswith(COMMANDS[self.step - 1][:3]):
            return  # untagged lines so far
        elif not last.startswith(b"OK ", 3):
            return self.fail(f"got {last[:40]!r}")
        elif self.step == 2:
            found = EXISTS.findall(buf)
            self.exists = int(found[-1]) if found else -1
            if self.exists < 1:
                return self.fail("no messages")
        elif self.step == 3 and (fetched := len(FETCHED.findall(buf))) != self.exists:
            return self.fail(f"{fetched} FETCH responses for {self.exists} messages")
        self.buf, self.step = b"", self.step + 1
        if self.step == len(STEPS):
            self.done.set_result(None)
            return self.transport.close()
        self.transport.write(COMMANDS[self.step - 1] + b"\r\n")

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(f"{STEPS[self.step]}:{type(exc).__name__ if exc else 'EOF'}")


def role_load(a) -> None:
    """A session loop per address of `sources` (one in flight each) on `host`:`port`; counts those ending in the
    window [start_at + warmup, + duration), emits counts, errors, latencies and its own CPU in the window."""

    async def main() -> None:
        import asyncio
        loop = asyncio.get_running_loop()
        t0, t1 = a.start_at + a.warmup, a.start_at + a.warmup + a.duration
        tally = types.SimpleNamespace(counted=0, total=0, errors=collections.Counter(), latencies=[], ru=[])

        async def session(source: str) -> str | None:
            done, sock = loop.create_future(), bound_socket(source)
            client = Session(done)
            try:
                async with asyncio.timeout(SESSION_TIMEOUT_S):
                    await loop.sock_connect(sock, (a.host, a.port))
                    await loop.create_connection(lambda: client, sock=sock)
                    return await done
            except TimeoutError:
                client.fail("timeout") if hasattr(client, "transport") else sock.close()
                return done.result() if done.done() else "connect:timeout"
            except OSError as err:
                sock.close()
                return f"connect:{type(err).__name__}"

        async def slot(source: str) -> None:
            while (started := time.monotonic()) < t1:
                failed = await session(source)
                now = time.monotonic()
                if failed:
                    tally.errors[failed] += 1
                    await asyncio.sleep(0.05)  # a broken server: no hot loop
                    continue
                tally.total += 1
                if t0 <= now < t1:
                    tally.counted += 1
                    tally.latencies.append(now - started)

        async def usage_at(when: float) -> None:
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            tally.ru.append(resource.getrusage(resource.RUSAGE_SELF))

        await asyncio.sleep(max(0.0, a.start_at - time.monotonic()))
        late = time.monotonic() - a.start_at > 0.1
        meters = [asyncio.ensure_future(usage_at(t)) for t in (t0, t1)]
        try:
            async with asyncio.timeout(a.warmup + a.duration + DRAIN_S):
                await asyncio.gather(*(slot(source) for source in a.sources))
        except TimeoutError:
            tally.errors["still open after the drain"] += 1
        await asyncio.gather(*meters)
        ru0, ru1 = tally.ru
        emit({"sessions": tally.counted, "total": tally.total, "late": late,
              "errors": tally.errors | ({"client started late": 1} if late else {}),
              "latencies": tally.latencies[:: len(tally.latencies) // 4000 + 1],
              "cpu_s": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime})

    run_loop(main, a.loop)


ROLES = {"load": role_load}


class LooperImap(Trap):
    """`looper run` with listen.imap on a free port of 127.0.0.1, the shipped bait, the bench user's credentials."""

    def __init__(self, workdir: Path, profile: str) -> None:
        imap_port = free_port()
        super().__init__(workdir, {"listen": {"imap": [f"127.0.0.1:{imap_port}"]},
                                   "credentials": [f"{USER}:{PASSWORD}"],
                                   "bait": {"folder": str(REPO / "config" / "bait")},
                                   "limits": {"per_ip": 20000, "total": 20000},
                                   "log": {"max_bytes": 256 << 20, "backups": 1}}, profile=profile)
        self.host, self.port = "127.0.0.1", imap_port
        deadline = time.monotonic() + 30
        while not listening(imap_port):
            if not self.alive() or time.monotonic() > deadline:
                raise BenchError(f"looper is not listening on IMAP port {imap_port}: {self.err_tail()}")
            time.sleep(0.05)


class Dovecot:
    """tests/dovecot.py's PrivateDovecot on DOVECOT_HOST and free ports; its CPU is that of every process of its
    session (master, login, auth, imap), the exited ones included (the master's cutime)."""

    name = "dovecot"

    def __init__(self) -> None:
        from tests.dovecot import Ports, PrivateDovecot
        self.instance = PrivateDovecot(DOVECOT_HOST, Ports(*(free_port() for _ in range(4))),
                                       name=f"looper-bench-dovecot-{os.getpid()}")
        self.instance.start()
        self.host, self.port, self.pid = DOVECOT_HOST, self.instance.ports.imap, self.instance.proc.pid
        OWN_SESSIONS.add(self.pid)  # started with a session of its own: every process of it is ours

    def alive(self) -> bool:
        return self.instance.proc is not None and self.instance.proc.poll() is None

    def err_tail(self) -> str:
        return self.instance.log()[-2000:]

    def cpu_now(self) -> float:
        ticks = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = proc_stat(pid)
            except OSError:
                continue
            if int(fields[3]) == self.pid:  # its session
                ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        return ticks / TICK

    def stop(self) -> None:
        self.instance.stop()


def dovecot_note() -> str:
    """Why Dovecot cannot run here, or ''."""
    from tests.dovecot import dovecot_available
    if os.geteuid() != 0:
        return "Dovecot needs root (tests/dovecot.py runs a private instance): looper only"
    return "" if dovecot_available() else "Dovecot not installed (Debian's dovecot-imapd): looper only"


def window(server, conc: int, args) -> types.SimpleNamespace:
    """One measured window: `conc` sessions in flight over min(conc, --client-procs) processes."""
    start_at = time.monotonic() + START_DELAY_S
    t0, t1 = start_at + args.warmup, start_at + args.warmup + args.seconds
    sources = [f"127.0.0.{FIRST_SOURCE + k}" for k in range(conc)]
    clients, at = [], 0
    for k, n in enumerate(split(conc, min(args.client_procs, conc))):
        clients.append(Child(f"load[{server.name},{k}]", role_argv(
            "load", host=server.host, port=server.port, sources=sources[at : at + n], start_at=start_at,
            warmup=args.warmup, duration=args.seconds, loop=args.client_loop)))
        at += n
    try:
        server_cpu_s = cpu_between(server, t0, t1)
        results = [c.read_json(t1 + DRAIN_S + 20) for c in clients]
    finally:
        for c in clients:
            c.kill()
    count = sum(r["sessions"] for r in results)
    return types.SimpleNamespace(rate=count / args.seconds, sessions=count, server_cpu_s=server_cpu_s,
                                 client_cpu_s=sum(r["cpu_s"] for r in results), seconds=args.seconds,
                                 errors=sum((collections.Counter(r["errors"]) for r in results), collections.Counter()),
                                 latencies=[x for r in results for x in r["latencies"]])


def phase_sessions(args, r, workdir: Path) -> None:
    servers = []
    try:
        servers.append(LooperImap(workdir, r.profile))
        if not r.notes:
            servers.append(Dovecot())
        args_warm = types.SimpleNamespace(**{**vars(args), "seconds": args.warmup * 2, "warmup": 0.0})
        for server in servers:  # warm-up: code paths, caches, Dovecot's indexes
            window(server, 10, args_warm)
        print("  servers: " + ", ".join(f"{s.name} on {s.host}:{s.port} (pid {s.pid})" for s in servers),
              file=sys.stderr, flush=True)
        for rep in range(args.repeat):
            for conc in args.concurrency:
                for server in servers:
                    if not server.alive():
                        raise BenchError(f"{server.name} died: {server.err_tail()}")
                    label = f"run {rep + 1}/{args.repeat} c={conc:<3} {server.name:<8}"
                    run, _ = steady(lambda: window(server, conc, args),
                                    lambda x: f"{label} {x.rate:8,.0f}/s  server CPU {x.server_cpu_s / x.seconds:4.0%}"
                                              f"  client CPU {x.client_cpu_s / x.seconds:4.0%}"
                                              + (f"  errors {dict(x.errors)}" if x.errors else ""))
                    r.runs[conc, server.name].append(run)
    finally:
        for server in servers:
            server.stop()


def figures(args, r) -> list[str]:
    """The table, one row per concurrency: each server's rate, CPU per session and errors, side by side."""
    names = [n for n in ("looper", "dovecot") if any(name == n for _, name in r.runs)]
    if not names:
        return []
    lines = ["", f"Sessions/s: connect, greeting, LOGIN, SELECT INBOX, FETCH 1:* (FLAGS ENVELOPE), LOGOUT; one command "
                 f"in flight,\nevery tagged reply checked; median of {args.repeat} run(s) of {args.seconds:g} s",
             f"  {'conc':>4}"
             + "".join(f"  {n + ' /s':>12} {'p50 ms':>7} {'CPU us/s.':>9} {'errors':>6}" for n in names)
             + ("  looper/dovecot" if len(names) == 2 else "")]
    for conc in args.concurrency:
        cells, rates = [], []
        for name in names:
            runs = r.runs.get((conc, name), [])
            if not runs:
                cells.append(f"  {'-':>12} {'':>7} {'':>9} {'':>6}")
                rates.append(None)
                continue
            lat = [x for run in runs for x in run.latencies] or [float("nan")]
            rates.append(median(run.rate for run in runs))
            cells.append(f"  {rates[-1]:12,.0f} {percentile(lat, 0.5) * 1000:7.2f} "
                         f"{median(run.server_cpu_s / max(1, run.sessions) * 1e6 for run in runs):9,.0f} "
                         f"{sum(sum(run.errors.values()) for run in runs):6}")
        lines.append(f"  {conc:>4}" + "".join(cells) + (f"  {ratio(*rates):>15}" if len(names) == 2 else ""))
    errors = {f"{name} c={conc}": dict(sum((run.errors for run in runs), collections.Counter()))
              for (conc, name), runs in r.runs.items() if any(run.errors for run in runs)}
    return lines + [f"  errors: {errors}"] * bool(errors) + [
        "  (CPU us/s.: the server's CPU microseconds per completed session, all its threads (Dovecot: every process",
        "  of its session, exited ones too); p50: one session's time as the client saw it; clients: "
        f"{args.client_procs} processes at", "  concurrency > 1, each session in flight from its own address)"]


def verdicts(args, r) -> list[str]:
    lines = ["", "Targets:"]
    for conc in args.concurrency:
        ours, theirs = r.runs.get((conc, "looper")), r.runs.get((conc, "dovecot"))
        if not ours or not theirs:
            lines.append(f"    sessions/s c={conc}: {'no Dovecot figure' if ours else 'no looper figure'}: n/a")
            continue
        x, y = median(run.rate for run in ours), median(run.rate for run in theirs)
        failed = any(run.errors for run in ours + theirs)
        lines.append(target(f"sessions/s c={conc:<3} looper {x:,.0f} >= {TARGET_RATIO:g}x Dovecot {y:,.0f} "
                            f"({ratio(x, y)}; aim {AIM_RATIO:g}x){', errors' if failed else ''}",
                            bool(y) and x / y >= TARGET_RATIO and not failed))
    return lines


def main() -> int:
    if run_role(ROLES):
        return 0
    p = parser(__doc__, "under a minute: 1 run of 2 s per point", "sessions")
    p.add_argument("--concurrency", default="1,10,100", help="session concurrencies (default 1,10,100)")
    p.add_argument("--seconds", type=float, help="measured window per run")
    p.add_argument("--warmup", type=float, help="load before each window")
    p.add_argument("--repeat", type=int, help="runs per point, interleaved")
    p.add_argument("--client-procs", type=int, default=2, help="load processes at concurrency > 1 (default 2)")
    p.add_argument("--client-loop", default="uvloop", choices=("uvloop", "asyncio"), help="the clients' event loop")
    p.add_argument("--profile", metavar="DIR", default="", help="looper under cProfile, its stats to DIR")
    args = parse(p, seconds=(5.0, 2.0), warmup=(0.5, 0.3), repeat=(3, 1), max_seconds=(600, 50))
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if max(args.concurrency) > 240:
        p.error("at most 240 sessions in flight (one 127.0.0.x address each)")
    if args.client_loop == "uvloop" and not __import__("importlib.util").util.find_spec("uvloop"):
        args.client_loop = "asyncio"
    r = types.SimpleNamespace(runs=collections.defaultdict(list), notes=dovecot_note(),
                              profile=args.profile and os.path.abspath(os.path.join(args.profile, "looper-imap.prof")))
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    about = "looper IMAP bench: " + machine("uvloop") + (
        "" if r.notes else f", Dovecot {__import__('tests.dovecot').dovecot.dovecot_version()}")
    print(about, *filter(None, [r.notes]), sep="\n  ", file=sys.stderr, flush=True)

    def report(stopped: str) -> list[str]:
        lines = [about, "servers: looper (`looper run`, uvloop, its default event_loop, shipped bait)"
                 + (f"; {r.notes}" if r.notes else ", Dovecot (tests/dovecot.py's private instance, passwd-file)"),
                 f"load: clients on {args.client_loop}, from 127.0.0.{FIRST_SOURCE}+"]
        lines += figures(args, r)
        lines += [f"  looper ran under cProfile (--profile), its figures too; stats in {r.profile}"] * bool(r.profile)
        return lines + noise_report() + verdicts(args, r)

    return conduct("imap", args, [("sessions", lambda w: phase_sessions(args, r, w))], report,
                   tempfile.gettempdir())


if __name__ == "__main__":
    sys.exit(main())
