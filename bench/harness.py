"""What the benchmarks in bench/ share: the machinery around the measurements.

bench/splice.py and bench/smtp.py both run each role in a child process and
conduct from the parent. This module holds what they do alike:

* roles: raising RLIMIT_NOFILE, dying with the parent, JSON lines to stdout;
* the conductor's children (`Child`): spawned with stderr in a file, read as
  JSON lines up to a deadline, reaped with wait4 for their CPU time, and all
  killed and reaped at the end of the run (`Child.cleanup`);
* readings from /proc: a process's CPU seconds, VmRSS and open fds;
* the measure of other work on the machine (`LoadMeter`, `note_noise`);
* the run's frame: role dispatch, signals and the --max-seconds alarm, the
  report on an abort, the final cleanup;
* the steps of the idle-session memory phase both benchmarks have.

The scripts import it as a sibling module: `python bench/NAME.py` puts bench/
first on sys.path (and each script makes sure of it when imported otherwise).
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NOISY_RUN_SHARE = 0.05  # a run during which others used more of the CPUs is redone,
NOISY_RUN_RETRIES = 2  # at most this many times (the last attempt counts regardless)


# ---------------------------------------------------------------------------
# Helpers for the roles (the child processes)
# ---------------------------------------------------------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the bench process dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def stdin_closed_event(loop):
    """An asyncio.Event of `loop`, set once the parent closes our stdin: how
    the conductor tells a serving role to stop."""
    import asyncio

    stop = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    return stop


def run_role(roles: dict) -> bool:
    """`NAME.py --role ROLE ARGS...`: run that role with ARGS; False if the
    command line asks for no role (this is the conductor)."""
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        roles[sys.argv[2]](sys.argv[3:])
        return True
    return False


# ---------------------------------------------------------------------------
# The conductor's child processes
# ---------------------------------------------------------------------------


class BenchError(Exception):
    pass


class Child:
    """A child process whose stdout is JSON lines; reaped with wait4 so that
    its CPU time is known. stderr goes to a file in the work folder."""

    started: list["Child"] = []
    workdir = Path(tempfile.gettempdir())
    serial = 0

    def __init__(self, name: str, argv: list[str], *, stdin_pipe: bool = False, preexec=die_with_parent,
                 stdout_pipe: bool = True) -> None:
        self.name = name
        Child.serial += 1
        self.err_path = Child.workdir / f"{Child.serial:04d}-{name.split('[')[0]}.stderr"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else subprocess.DEVNULL,
                stderr=err,
                preexec_fn=preexec,
                cwd=str(REPO),
            )
        self.cpu_s: float | None = None
        self._out = b""
        Child.started.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_json(self, deadline: float) -> dict:
        """The next JSON line of stdout, waiting until the deadline."""
        while b"\n" not in self._out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no answer in time")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                self.wait(deadline)
                raise BenchError(f"{self.name} exited ({self.proc.returncode}) without an answer: {self.err_tail()}")
            self._out += chunk
        line, _, self._out = self._out.partition(b"\n")
        return json.loads(line)

    def err_tail(self) -> str:
        try:
            return self.err_path.read_bytes().decode("utf-8", "replace")[-2000:].strip()
        except OSError:
            return ""

    def wait(self, deadline: float) -> int:
        """Reap with wait4 (CPU time included), killing at the deadline."""
        while self.proc.returncode is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.cpu_s = usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > deadline:
                self.kill()
                raise BenchError(f"{self.name}: did not finish in time")
            time.sleep(0.005)
        return self.proc.returncode

    def close_stdin(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def signal(self, signum: int) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except Exception:
                pass

    @classmethod
    def cleanup(cls, *, terminate: bool = True, grace_s: float = 5.0) -> None:
        """Everything we started: stdin closed (and SIGTERM if `terminate`),
        grace_s to end on its own, then SIGKILL, then reap."""
        for child in cls.started:
            child.close_stdin()
            if terminate:
                child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in cls.started:
            try:
                child.proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            child.kill()
            for stream in (child.proc.stdout, child.proc.stdin):
                try:
                    if stream:
                        stream.close()
                except OSError:
                    pass
        cls.started.clear()


# ---------------------------------------------------------------------------
# Readings from /proc
# ---------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU of the process, all its threads."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError("no VmRSS")


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, "?" if there is none."""
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except Exception:
        pass
    return cpu


# ---------------------------------------------------------------------------
# Other work on the machine
# ---------------------------------------------------------------------------


class LoadMeter:
    """CPU used by processes that are not ours (nor kernel threads), plus
    hypervisor steal, while something runs: other work on the machine skews
    every figure, so say so (and redo a run that it disturbed)."""

    def __init__(self) -> None:
        self.start_cpu = self._foreign()
        self.start_steal = self._steal()
        self.start = time.monotonic()

    @staticmethod
    def _steal() -> float:
        """CPU time the hypervisor gave to someone else (steal), all CPUs."""
        try:
            fields_ = Path("/proc/stat").read_text().split("\n", 1)[0].split()
            return int(fields_[8]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    @staticmethod
    def _foreign() -> dict[int, float]:
        tick = os.sysconf("SC_CLK_TCK")
        parent, cpu = {}, {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                rest = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parent[int(name)] = int(rest[1])
            cpu[int(name)] = (int(rest[11]) + int(rest[12])) / tick
        me, foreign = os.getpid(), {}
        for pid in cpu:
            walk, seen = pid, 0
            while walk not in (0, 1, 2, me) and seen < 64:
                walk, seen = parent.get(walk, 0), seen + 1
            if walk != me and pid != 2 and parent.get(pid) != 2 and pid != me:
                foreign[pid] = cpu[pid]
        return foreign

    def share(self) -> tuple[float, float]:
        """(foreign CPU seconds, as a share of all CPUs over the wall time)."""
        now = self._foreign()
        used = sum(max(0.0, c - self.start_cpu.get(pid, 0.0)) for pid, c in now.items())
        used += self._steal() - self.start_steal
        wall = time.monotonic() - self.start
        return used, used / max(1e-9, wall * (os.cpu_count() or 1))


NOISE: list[str] = []  # one line per phase


def note_noise(phase: str, meter: LoadMeter, phase_width: int = 12) -> None:
    """A line for the report's "Machine noise" section: what others used
    while `phase` ran (phase names padded to phase_width)."""
    used, share = meter.share()
    warn = "  <-- other work on the machine: figures are skewed" if share > NOISY_RUN_SHARE else ""
    NOISE.append(f"    {phase:<{phase_width}} other processes and steal: {used:6.1f} CPU-s "
                 f"({share:5.1%} of all CPUs){warn}")


# ---------------------------------------------------------------------------
# The memory phase: idle-session clients
# ---------------------------------------------------------------------------


def merged_failures(reports: list[dict]) -> dict[str, int]:
    """The clients' failure counts ({"what": n}), summed over all reports."""
    failures: dict[str, int] = {}
    for r in reports:
        for what, n in r["failures"].items():
            failures[what] = failures.get(what, 0) + n
    return failures


def release_idle_clients(workers: list[Child], server_pid: int, base_fds: int) -> None:
    """Let the idle clients go (they hang up when stdin closes), reap them,
    and wait up to 30 s for the server to close its ends."""
    for w in workers:
        w.close_stdin()
    for w in workers:
        w.wait(time.monotonic() + 30)
    deadline = time.monotonic() + 30
    while proc_fds(server_pid) > base_fds + 2 and time.monotonic() < deadline:
        time.sleep(0.1)


def reap_quietly(workers: list[Child]) -> None:
    """On the way out (errors too): close the workers' stdin and reap them,
    10 s each at most; one that does not end is killed, not an error."""
    for w in workers:
        w.close_stdin()
    for w in workers:
        try:
            w.wait(time.monotonic() + 10)
        except BenchError:
            pass


# ---------------------------------------------------------------------------
# The run's frame
# ---------------------------------------------------------------------------


def arm_signals(max_seconds: float) -> None:
    """SIGTERM and SIGINT (also when started with SIGINT ignored, as a
    background job) raise KeyboardInterrupt, and SIGALRM after max_seconds
    raises BenchError: either way the run's cleanup runs."""

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def on_alarm(_signum, _frame):
        raise BenchError(f"the whole run exceeded --max-seconds {max_seconds:g}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(max_seconds)))


def report_abort(err: BaseException) -> None:
    """To stderr: why the run stopped, and the stderr of each child that had ended."""
    print(f"bench aborted: {err}", file=sys.stderr)
    for child in Child.started:
        tail = child.err_tail() if child.proc.poll() is not None else ""
        if tail:
            print(f"--- {child.name} stderr:\n{tail}", file=sys.stderr)


def end_run(workdir: Path, *, terminate: bool = True, grace_s: float = 5.0) -> None:
    """The alarm off, every child reaped (see Child.cleanup), the work folder removed."""
    signal.alarm(0)
    Child.cleanup(terminate=terminate, grace_s=grace_s)
    shutil.rmtree(workdir, ignore_errors=True)


def free_port(avoid: set[int] = frozenset()) -> int:
    """A port below the ephemeral range (so no client socket ever holds it)
    where nothing listens on any address: bound on 0.0.0.0 without
    SO_REUSEADDR, which fails if anything has it on any address."""
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in avoid:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise BenchError("no free port found")
