"""What the benchmarks in bench/ share.

Each script conducts from the parent process and runs its roles (clients,
servers, the trap) as child processes: `python bench/NAME.py --role ROLE JSON`.
Here: children and servers, the trap as `looper run` runs it, a canned SMTP
responder, idle clients and the memory phase, source-bound sockets, free ports,
/proc readings, other work on the machine and the redo of a disturbed run,
figures, and the run's frame (`conduct`): a deadline, Ctrl-C and SIGTERM, and a
report of what was measured when cut short. Network rule: sockets on
127.0.0.0/8 only (`loopback`), every process bounded in time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import ipaddress
import itertools
import json
import math
import os
import platform
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # bind the address now, the port at connect()
NOISY_SHARE = 0.05  # a run during which others used more of the CPUs than this is redone
IDLE_PER_PROC = 2500  # idle clients per process (and source address)
WATCHDOG_S = 60  # past the deadline, the last resort kills every child and exits
TICK = os.sysconf("SC_CLK_TCK")
FRAME = types.SimpleNamespace(deadline=math.inf, retries=2, reserve=0.0, started=time.monotonic(), max_seconds=0,
                              redone=0)  # the run's frame: its deadline, how disturbed runs are redone
NOISE: list[str] = []  # the report's "Machine noise" lines, one per phase
OWN_SESSIONS: set[int] = set()  # session ids of servers started apart from Child (a Dovecot): not others' work
median = statistics.median


class BenchError(Exception):
    pass


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def detach() -> None:
    """preexec_fn: a process group of its own (Ctrl-C reaches the conductor only), killed with the conductor."""
    os.setpgrp()
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def stdin_closed():
    """An asyncio.Event set once the conductor closes our stdin: how it stops a serving role."""
    import asyncio
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    return stop


def run_loop(main, loop: str = "asyncio") -> None:
    """Run the coroutine function `main` on the stdlib loop or on uvloop."""
    import asyncio
    with asyncio.Runner(loop_factory=__import__(loop).new_event_loop) as runner:
        runner.run(main())


def role_argv(role: str, **args) -> list[str]:
    return [sys.executable, str(Path(sys.modules["__main__"].__file__).resolve()), "--role", role, json.dumps(args)]


def run_role(roles: dict) -> bool:
    """`NAME.py --role ROLE JSON`: run the script's or a shared role; False if none is named."""
    if len(sys.argv) != 4 or sys.argv[1] != "--role":
        return False
    raise_nofile()
    {**ROLES, **roles}[sys.argv[2]](types.SimpleNamespace(**json.loads(sys.argv[3])))
    return True


def role_trap(a) -> None:
    """`looper run -c CONFIG` (its event_loop is the loop asked for), with the observer or not, under cProfile if
    asked."""
    import cProfile

    import looper.cli
    import looper.net.reflect

    if a.observer == "off":  # looper's Observer opaque from the start: the splice passes every chunk on unparsed
        looper.net.reflect.Observer = type("NoObserver", (looper.net.reflect.Observer,), {"opaque": True})
    profiler = cProfile.Profile()
    try:
        sys.exit(profiler.runcall(looper.cli.main, ["run", "-c", a.config]) if a.profile else
                 looper.cli.main(["run", "-c", a.config]))
    finally:
        if a.profile:
            profiler.dump_stats(a.profile)


class Responder:  # an asyncio protocol (not importing asyncio spares the other roles ~50 ms of start-up)
    """An SMTP server of canned replies: 220, 250 to every command (EHLO's names PIPELINING and 8BITMIME),
    354 to DATA and 250 at its end, 221 to QUIT; no parsing, log or storage."""

    eof_received = connection_lost = pause_writing = resume_writing = lambda self, *args: None

    def __init__(self, name: bytes) -> None:
        self.name, self.buf, self.in_data = name, b"", False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"220 " + self.name + b" ESMTP bench\r\n")

    def data_received(self, data: bytes) -> None:
        buf, write = self.buf + data if self.buf else data, self.transport.write
        while buf:
            if self.in_data:
                if (end := buf.find(b"\r\n.\r\n")) < 0:
                    break
                buf, self.in_data = buf[end + 5 :], False
                write(b"250 2.0.0 Ok: queued as BENCH\r\n")
                continue
            if (end := buf.find(b"\n")) < 0:
                break
            verb, buf = buf[:4].upper(), buf[end + 1 :]
            if verb == b"EHLO":
                write(b"250-" + self.name + b"\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data, buf = True, b"\r\n" + buf  # the DATA line's CRLF starts the search
            elif verb == b"QUIT":
                write(b"221 2.0.0 Bye\r\n")
                return self.transport.close()
            else:
                write(b"250 2.0.0 Ok\r\n")
        self.buf = buf
        if len(buf) > MiB:
            self.transport.close()


def role_responders(a) -> None:
    """Responders on each of `hosts`, port `port`, named `name` ({host}: the address), until stdin closes."""

    async def main() -> None:
        import asyncio
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(lambda name=a.name.format(host=host).encode(): Responder(name),
                                            loopback(host), a.port, backlog=a.backlog, reuse_address=True)
                   for host in a.hosts]
        emit({"ready": len(servers)})
        await stdin_closed().wait()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the conductor stops us
    run_loop(main, a.loop)


def role_idle(a) -> None:
    """`count` clients from `addr` to 127.0.0.1:`port` that read a greeting starting with `expect`, then hold until
    stdin closes; with `relay_port`, a Responder on addr:relay_port too (the relay the trap dials)."""

    async def main() -> None:
        import asyncio
        loop = asyncio.get_running_loop()
        held, failures, gate = [], collections.Counter(), asyncio.Semaphore(100)
        if a.relay_port:
            await loop.create_server(lambda: Responder(b"relay.bench.test"), a.addr, a.relay_port,
                                     backlog=4096, reuse_address=True)

        async def client() -> None:
            async with gate:
                sock, got = bound_socket(a.addr), b""
                try:
                    async with asyncio.timeout(30):
                        await loop.sock_connect(sock, ("127.0.0.1", a.port))
                        while not got.endswith(b"\n"):
                            if not (chunk := await loop.sock_recv(sock, 512)):
                                raise ConnectionError("EOF")
                            got += chunk
                    if not got.startswith(a.expect.encode()):
                        raise ConnectionError(f"got {got[:20]!r}")
                    held.append(sock)
                except Exception as err:  # counted, reported, never fatal
                    failures[type(err).__name__ + (f": {err}" if isinstance(err, ConnectionError) else "")] += 1
                    sock.close()

        await asyncio.gather(*(client() for _ in range(a.count)))
        emit({"ok": len(held), "failures": failures})
        await stdin_closed().wait()

    run_loop(main)


ROLES = {"trap": role_trap, "responders": role_responders, "idle": role_idle}


def loopback(host: str) -> str:
    """The network rule: the benches talk to 127.0.0.0/8 and ::1 only."""
    if not ipaddress.ip_address(host).is_loopback:
        raise BenchError(f"{host} is not a loopback address")
    return host


def bound_socket(src: str, blocking: bool = False) -> socket.socket:
    """A TCP socket bound to src, its port chosen at connect (TIME_WAIT cannot use them up)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_IP, NO_PORT, 1)
    sock.bind((loopback(src), 0))
    sock.setblocking(blocking)
    return sock


def free_port(given: set[int] = set()) -> int:  # noqa: B006 (given: the ports given so far in this run)
    """A port below the ephemeral range, not given before in this run, that nothing has bound on any address."""
    for port in random.sample(range(20000, 32000), 1000):
        with socket.socket() as probe, contextlib.suppress(OSError):
            if port not in given:
                probe.bind(("0.0.0.0", port))
                given.add(port)
                return port
    raise BenchError("no free port found")


def listening(port: int) -> bool:
    """Something listens on TCP port `port` (IPv4), says /proc/net/tcp."""
    with open("/proc/net/tcp") as table:
        rows = map(str.split, itertools.islice(table, 1, None))
        return any(f[3] == "0A" and f[1].endswith(f":{port:04X}") for f in rows)


class Child:
    """A child process: stdout JSON lines, stderr to a file, reaped with wait4 (its CPU time known)."""

    started: list[Child] = []
    workdir = Path(tempfile.gettempdir())
    serial = itertools.count(1)

    def __init__(self, name: str, argv: list[str], *, stdin: bool = False, stdout: bool = True, preexec=detach):
        self.name, self.cpu_s, self._out = name, None, b""
        self.err_path = Child.workdir / f"{next(Child.serial):04d}-{name.split('[')[0]}.stderr"
        pipe = {True: subprocess.PIPE, False: subprocess.DEVNULL}
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=pipe[stdin], stdout=pipe[stdout], stderr=err, preexec_fn=preexec,
                                         cwd=str(REPO))
        self.pid = self.proc.pid
        Child.started.append(self)

    def alive(self) -> bool:
        return self.proc.returncode is None and proc_alive(self.pid)

    def read_json(self, deadline: float) -> dict:
        """The next JSON line of stdout, waiting until the deadline."""
        while b"\n" not in self._out:
            if deadline < time.monotonic():
                raise BenchError(f"{self.name}: no answer in time")
            if select.select([self.proc.stdout], [], [], deadline - time.monotonic())[0]:
                if not (chunk := os.read(self.proc.stdout.fileno(), MiB)):
                    self.wait(deadline)
                    raise BenchError(f"{self.name} exited ({self.proc.returncode}), no answer: {self.err_tail()}")
                self._out += chunk
        line, _, self._out = self._out.partition(b"\n")
        return json.loads(line)

    def err_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.err_path.read_bytes().decode("utf-8", "replace")[-2000:].strip()
        return ""

    def wait(self, deadline: float) -> int:
        """Reap with wait4 (CPU time included); killed at the deadline."""
        while self.proc.returncode is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.proc.returncode, self.cpu_s = os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
            elif time.monotonic() > deadline:
                self.kill()
                raise BenchError(f"{self.name}: did not finish in time")
            else:
                time.sleep(0.005)
        return self.proc.returncode

    def close_stdin(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # nothing was written: nothing to flush

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    @classmethod
    def cleanup(cls, grace_s: float = 3.0) -> None:
        """Everything we started: stdin closed and SIGTERM, grace_s to end, then SIGKILL."""
        for child in cls.started:
            child.close_stdin()
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in cls.started:
            try:
                child.proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        cls.started.clear()


class Server(Child):
    """A server in a child process, listening on `port` once constructed; stopped by closing stdin and SIGTERM."""

    def __init__(self, name: str, argv: list[str], port: int, *, preexec=detach) -> None:
        super().__init__(name, argv, stdin=True, stdout=False, preexec=preexec)
        self.port, self.exit_code, self.stop_s, self.sessions_done = port, None, None, 0
        deadline = time.monotonic() + 30
        while not listening(port):
            if not self.alive() or time.monotonic() > deadline:
                raise BenchError(f"{name} is not listening on port {port}: {self.err_tail()}")
            time.sleep(0.05)

    def cpu_now(self) -> float:
        """Its CPU seconds and those of the processes it started (looper's message writer)."""
        return sum(sum(proc_cpu(pid)) for pid in process_tree(self.pid))

    def rss_kib(self) -> int:
        return proc_kib(self.pid)

    def stop(self, timeout: float = 20.0) -> None:
        if self.exit_code is None:
            t0 = time.monotonic()
            self.close_stdin()
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(BenchError):
                self.exit_code, self.stop_s = self.wait(t0 + timeout), time.monotonic() - t0


class Trap(Server):
    """`looper run -c CONFIG` on 127.0.0.1 and a free port; CONFIG: `config` (key by key) over sensor bench,
    dialback.allow_private true, log.dir in the work folder. `loop`, `observer`, `profile`: see role_trap."""

    def __init__(self, workdir: Path, config: dict, *, label: str = "looper", loop: str = "uvloop",
                 observer: str = "on", profile: str = "") -> None:
        port = free_port()
        self.log_dir, self.config_path = workdir / f"looper-{port}", workdir / f"looper-{port}.json"
        self.config = {"sensor": "bench", "listen": {"smtp": [f"127.0.0.1:{port}"], "imap": [], "imaps": [], "pop3": [], "pop3s": []},
                       "dialback": {"allow_private": True}, "log": {"dir": str(self.log_dir)}}
        if os.getuid() == 0 and "run_as" in __import__("looper.config").config.Config.__annotations__:
            self.config["run_as"] = None  # the trap stays who runs the bench: its ports need no root, no user to add
        self.config["event_loop"] = loop
        for key, value in config.items():
            self.config[key] = {**self.config.get(key, {}), **value} if isinstance(value, dict) else value
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n")  # JSON is YAML
        super().__init__(label, role_argv("trap", observer=observer, profile=profile,
                                          config=str(self.config_path)), port)

    def messages(self) -> int:
        with contextlib.suppress(OSError):
            return sum(1 for entry in os.scandir(self.log_dir / "messages") if entry.name.endswith(".eml"))
        return 0


def cpu_between(server, t0: float, t1: float) -> float:
    """The CPU seconds `server` (anything with cpu_now()) used from monotonic time t0 to t1, sleeping until t1."""
    time.sleep(max(0.0, t0 - time.monotonic()))
    cpu0 = server.cpu_now()
    time.sleep(max(0.0, t1 - time.monotonic()))
    return server.cpu_now() - cpu0


def proc_stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command's name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process, all its threads, in seconds."""
    fields = proc_stat(pid)
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants alive now."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        found.append(parent)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError):
                    todo += map(int, Path(f"/proc/{parent}/task/{task}/children").read_text().split())
    return found


def proc_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_alive(pid: int) -> bool:
    """Running and not a zombie (without reaping it: wait4 does, for its CPU)."""
    with contextlib.suppress(OSError):
        return proc_stat(pid)[0] != "Z"
    return False


def idle_sessions(server: Server, wanted: int, *, relay_port: int = 0, expect: str = "220"):
    """`wanted` idle sessions on `server` (RLIMIT_NOFILE allowing) from 127.0.0.2 and up, IDLE_PER_PROC per process
    and address (with `relay_port`, its relay too): the server's VmRSS before, with them, after they closed."""
    base_fds = proc_fds(server.pid)
    sessions = min(wanted, (raise_nofile() - base_fds - 64) // (2 if relay_port else 1))
    rss_before, procs, t0 = server.rss_kib(), max(1, math.ceil(sessions / IDLE_PER_PROC)), time.monotonic()
    workers = [Child(f"idle[{server.name},{k}]", role_argv("idle", addr=f"127.0.0.{2 + k}", port=server.port, count=n,
                                                           relay_port=relay_port, expect=expect), stdin=True)
               for k, n in enumerate(split(sessions, procs))]
    try:
        reports = [w.read_json(time.monotonic() + 180) for w in workers]
        setup_s, failures = time.monotonic() - t0, sum((collections.Counter(r["failures"]) for r in reports),
                                                       collections.Counter())
        time.sleep(1.0)  # the last sessions' events written, their timers armed
        rss_with, fds = server.rss_kib(), proc_fds(server.pid)
        for w in workers:
            w.close_stdin()
        for w in workers:
            w.wait(time.monotonic() + 30)
        deadline = time.monotonic() + 30
        while proc_fds(server.pid) > base_fds + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        ok = sum(r["ok"] for r in reports)
        per_session = (rss_with - rss_before) * 1024 / max(1, ok)  # resident bytes per idle session
        row = types.SimpleNamespace(name=server.name, wanted=wanted, sessions=ok, fds=fds, rss_before_kib=rss_before,
                                    rss_with_kib=rss_with, rss_after_kib=server.rss_kib(), setup_s=setup_s,
                                    failures=dict(failures), procs=procs, per_session=per_session,
                                    at_10k=rss_before * 1024 + per_session * 10_000)  # resident bytes, extrapolated
        print(f"  {row.name:<10} {ok:,} idle sessions up in {setup_s:.1f} s, {per_session / 1000:.2f} KB each"
              + (f"; failures {row.failures}" if failures else ""), file=sys.stderr)
        return row
    finally:
        for w in workers:
            w.kill()


def idle_table(rows: list, what: str) -> list[str]:
    lines = [f"Memory: {what}, the server's VmRSS", f"    {'':<10}{'sessions':>9}{'fds':>8}{'RSS before':>13}"
             f"{'RSS with':>11}{'per session':>13}{'at 10,000':>11}{'after close':>13}{'setup':>8}"]
    for r in rows:
        lines.append(f"    {r.name:<10}{r.sessions:>9,}{r.fds:>8,}{r.rss_before_kib / 1024:>9.1f} MiB"
                     f"{r.rss_with_kib / 1024:>7.1f} MiB{r.per_session / 1000:>9.2f} KB{r.at_10k / 1e6:>8.1f} MB"
                     f"{r.rss_after_kib / 1024:>9.1f} MiB{r.setup_s:>7.1f}s"
                     + (f"  failures: {r.failures}" if r.failures else "")
                     + (f"  (RLIMIT_NOFILE: {r.wanted:,} asked)" if r.sessions < r.wanted and not r.failures else ""))
    k = rows[0].procs
    return lines + [f"    (clients from 127.0.0.2-127.0.0.{1 + k}, {k} process{'es' if k > 1 else ''}; per session = "
                    f"(RSS with - RSS before) / sessions, 1 KB = 1,000 bytes;",
                    "    at 10,000 = RSS before + 10,000 x per session; setup: until every client had its greeting;",
                    "    RSS is the server process's only: the kernel's socket memory is apart)"]


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def ratio(x: float | None, y: float | None) -> str:
    return "-" if not x or not y else f"{x / y:.2f}x"


def target(text: str, ok: bool) -> str:
    return f"    {text}: {'PASS' if ok else 'FAIL'}"


def version(tool: str) -> str:
    """The version of socat, smtp-sink, a Python package, or looper's git revision."""
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout.strip()

    try:
        if tool == "socat":
            return run("socat", "-V").split("socat version ", 1)[1].split()[0]
        if tool == "smtp-sink":
            return "Postfix " + run("dpkg-query", "-W", "-f", "${Version}", "postfix")
        if tool == "git":
            git = ("git", "-C", str(REPO))
            dirty = [line.split()[-1] for line in run(*git, "status", "-s", "--", "looper").splitlines()]
            changed = f" with uncommitted changes to {', '.join(dirty[:3])}" + f" and {len(dirty) - 3} more" * (
                len(dirty) > 3)
            return run(*git, "rev-parse", "--short", "HEAD") + changed * bool(dirty)
        return __import__("importlib.metadata").metadata.version(tool)
    except Exception:
        return "not found"


def machine(*tools: str) -> str:
    """looper's git revision, the CPUs, kernel, Python, and the tools' versions."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    return (f"looper at git {version('git')}; {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python "
            f"{platform.python_version()}" + "".join(f", {tool} {version(tool)}" for tool in tools))


class LoadMeter:
    """Others' CPU (not ours, not kernel threads) and steal while something runs: it skews every figure."""

    def __init__(self) -> None:
        self.start, self.start_cpu = time.monotonic(), self._foreign()

    @staticmethod
    def _foreign() -> dict[int, float]:
        """CPU seconds by pid of the processes that are not ours nor kernel threads; steal as pid 0."""
        ours, foreign = {os.getpid(), 2} | {child.pid for child in Child.started}, {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                fields = proc_stat(pid)
                # (a child's own process group, detach(): what it starts, looper's message writer, is ours too)
                if (int(pid) not in ours and fields[1] != "2" and int(fields[2]) not in ours
                        and int(fields[3]) not in OWN_SESSIONS):
                    foreign[int(pid)] = (int(fields[11]) + int(fields[12])) / TICK
        return foreign | {0: int(Path("/proc/stat").read_text().split(maxsplit=9)[8]) / TICK}

    def share(self) -> tuple[float, float]:
        """(others' CPU seconds, as a share of all CPUs over the wall time)."""
        used = sum(max(0.0, c - self.start_cpu.get(pid, 0.0)) for pid, c in self._foreign().items())
        return used, used / max(1e-9, (time.monotonic() - self.start) * (os.cpu_count() or 1))


def steady(run, show):
    """run() and again while others used more than NOISY_SHARE of the CPUs meanwhile (FRAME.retries times at most,
    FRAME.reserve seconds before the deadline at the latest); show(result) on stderr. (result, times redone)."""
    for attempt in itertools.count():
        t0, meter = time.monotonic(), LoadMeter()
        result = run()
        others = meter.share()[1]
        again = (others > NOISY_SHARE and attempt < FRAME.retries
                 and FRAME.deadline - time.monotonic() > FRAME.reserve + 2 * (time.monotonic() - t0))
        print(f"  {show(result)}  (others {others:4.0%})" + ("  disturbed, again" if again else ""), file=sys.stderr,
              flush=True)
        if not again:
            return result, attempt
        FRAME.redone += 1


def noise_report() -> list[str]:
    return (["", "Machine noise (CPU of processes outside this bench while it ran):"] + NOISE
            + [f"    {FRAME.redone} run(s) redone (others > {NOISY_SHARE:.0%}, at most {FRAME.retries} times each, "
               f"time allowing)"])


def parser(doc: str, quick: str, phases: str) -> argparse.ArgumentParser:
    """The script's options: its docstring for --help, --quick, --only (of `phases`), --max-seconds."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--only", default=phases, help=f"comma-separated phases, of {phases} (default all)")
    p.add_argument("--max-seconds", type=float, help="deadline of the whole run (default: see below)")
    return p


def parse(p: argparse.ArgumentParser, **defaults: tuple) -> argparse.Namespace:
    """The options; one left unset takes its default, (full run, --quick), as --help says."""
    p.epilog += "\ndefaults (full run, --quick): " + ", ".join(f"--{k.replace('_', '-')} {v[0]}, {v[1]}"
                                                               for k, v in defaults.items())
    args = p.parse_args()
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    if set(args.only) - set(p.get_default("only").split(",")):
        p.error(f"unknown phase in --only: {','.join(args.only)}")
    return args


def arm(seconds: float) -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, SIGALRM (in `seconds`) BenchError: the run stops and reports."""

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"interrupted ({signal.Signals(signum).name})")

    def on_alarm(_signum, _frame):
        raise BenchError(f"cut short by the deadline (--max-seconds {FRAME.max_seconds:g})")

    for signum, handler in ((signal.SIGTERM, on_signal), (signal.SIGINT, on_signal), (signal.SIGALRM, on_alarm)):
        signal.signal(signum, handler)
    signal.alarm(max(1, math.ceil(seconds)))


def _force_exit() -> None:
    print("bench: the deadline passed and the cleanup hung: killing everything", file=sys.stderr, flush=True)
    for child in list(Child.started):
        child.proc.send_signal(signal.SIGKILL)
    os._exit(3)


def conduct(name: str, args, phases: list, report, workdir_in: str | None = None) -> int:
    """Each (phase name, function(workdir)) in turn, other work measured per phase; then, finished or cut short
    (Ctrl-C, SIGTERM, the deadline, an error), every child stopped and report(why stopped) printed: the figures
    so far. A disturbed run is redone twice at most (--quick: once), never in the last 40% of the time."""
    FRAME.max_seconds, FRAME.started = args.max_seconds, time.monotonic()
    FRAME.deadline, FRAME.retries = FRAME.started + args.max_seconds, 2 - args.quick
    FRAME.reserve = 0.4 * args.max_seconds
    raise_nofile()
    Child.workdir = workdir = Path(tempfile.mkdtemp(prefix=f"looper-{name}-", dir=workdir_in))
    watchdog = threading.Timer(args.max_seconds + WATCHDOG_S, _force_exit)
    watchdog.daemon = True
    watchdog.start()
    stopped = ""
    arm(args.max_seconds)
    try:
        for phase, run in phases:
            print(f"{phase} ...", file=sys.stderr, flush=True)
            meter = LoadMeter()
            try:
                run(workdir)
            finally:
                used, share = meter.share()
                NOISE.append(f"    {phase:<12} other processes and steal: {used:6.1f} CPU-s ({share:5.1%} of all CPUs)"
                             + ("  <-- other work on the machine: figures are skewed" if share > NOISY_SHARE else ""))
    except (BenchError, KeyboardInterrupt, OSError) as err:
        stopped = str(err) or type(err).__name__
        print(f"bench stopped: {stopped}", file=sys.stderr)
        cut = isinstance(err, KeyboardInterrupt) or stopped.startswith("cut short")  # children die of it: no news
        for child in () if cut else Child.started:
            if child.proc.poll() and child.err_tail():
                print(f"--- {child.name} stderr:\n{child.err_tail()}", file=sys.stderr)
    finally:
        signal.alarm(0)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # the cleanup and the report are bounded: let them finish
        Child.cleanup()
    lines = report(stopped)
    if stopped:
        lines[1:1] = [f"PARTIAL FIGURES: {stopped}, after {time.monotonic() - FRAME.started:.0f} s"]
    print("\n".join(lines + [f"\n(total {time.monotonic() - FRAME.started:.0f} s)"]), flush=True)
    watchdog.cancel()
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if stopped else 0
