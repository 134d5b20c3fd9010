#!/usr/bin/env python3
"""Splice benchmark: looper's reflect path side by side with its peers, in one run.

    .venv/bin/python bench/splice.py                  # full run, both loops (a few minutes)
    .venv/bin/python bench/splice.py --quick          # under a minute
    .venv/bin/python bench/splice.py --loop uvloop --only throughput,latency

Throughput of one bulk transfer (raw, and as SMTP DATA): direct, through socat
(8 KiB and 256 KiB buffers), through looper (observer on, and off), through two
reference pumps (asyncio Protocol and BufferedProtocol with looper's water
marks); round trips of 64-byte ping-pongs; memory of idle spliced sessions. The
trap runs `looper run` on the stdlib loop and on uvloop, wired as in real
life: the sender connects from 127.0.0.2, the trap dials 127.0.0.2 back on the
receiver's port and splices. The README's Benchmarks section says more.
"""

from __future__ import annotations

import base64
import math
import os
import shutil
import socket
import sys
import time
import types

from harness import (BenchError, Child, MiB, Server, Trap, bound_socket, conduct, emit, free_port, idle_sessions,
                     idle_table, machine, median, noise_report, ratio, role_argv, run_loop, run_role, steady,
                     stdin_closed, target, version, parser, parse, percentile)

TRAP_HOST, RELAY_HOST = "127.0.0.1", "127.0.0.2"
GiB = 1 << 30
TIMEOUT_S = 60.0  # every child socket: a stuck peer ends the child
RUN_TIMEOUT_S = 180.0  # one transfer, one ping series
GREETING = b"220 relay.bench.test ESMTP bench\r\n"
EHLO_REPLY = b"250-relay.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n"
PING = b"NOOP " + b"x" * 57 + b"\r\n"  # 64 bytes, a valid NOOP with a string
PONG = b"250 2.0.0 Ok " + b"y" * 49 + b"\r\n"  # 64 bytes
DATA_END = b"\r\n.\r\n"
SOCAT = bool(shutil.which("socat"))


def reply(f, expect: bytes) -> None:
    """A whole (multi-line) reply from the buffered reader of a blocking socket; it must start with `expect`."""
    while (line := f.readline()).startswith(expect) and line[3:4] == b"-":
        pass
    if not line.startswith(expect):
        raise ConnectionError(f"expected {expect!r}, got {line!r}")


def role_server(a) -> None:
    """The relay's own server, one connection on RELAY_HOST:port: sinks raw bytes to EOF (raw) or one SMTP message
    (smtp), or answers each line with a 64-byte 250 after a 220 (pong)."""
    with socket.create_server((RELAY_HOST, a.port)) as listener:
        listener.settimeout(TIMEOUT_S)
        emit({"ready": True})
        conn, (peer, _) = listener.accept()
    conn.settimeout(TIMEOUT_S)
    buf, total, recv_into, reader = bytearray(MiB), 0, conn.recv_into, conn.makefile("rb")
    if a.mode == "raw":
        while n := recv_into(buf):
            total += n
        return emit({"bytes": total, "t_end": time.monotonic(), "peer": peer})
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(GREETING)
    if a.mode == "pong":
        pending = b""
        while chunk := conn.recv(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            if lines:
                conn.sendall(b"".join(b"221 2.0.0 Bye\r\n" if line.startswith(b"QUIT") else PONG for line in lines))
        return emit({"done": True})
    while not (line := reader.readline().upper()).startswith(b"DATA"):
        if not line:
            raise ConnectionError("EOF before DATA")
        conn.sendall(EHLO_REPLY if line.startswith((b"EHLO", b"HELO")) else b"250 2.1.0 Ok\r\n")
    conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    # The client waits for the 354 and, after the final ".", for our 250, and
    # the body has no "." at all: the end is the last 5 bytes of some read.
    last = bytearray(b"\r\n")
    while not last.endswith(DATA_END):
        if not (n := recv_into(buf)):
            raise ConnectionError("EOF inside DATA")
        total += n
        last += buf[max(0, n - 5) : n]
        del last[:-5]
    t_end = time.monotonic()
    conn.sendall(b"250 2.0.0 Ok: queued as BENCH\r\n")
    reader.readline()
    conn.sendall(b"221 2.0.0 Bye\r\n")
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass
    emit({"bytes": total, "t_end": t_end, "peer": peer})


def role_client(a) -> None:
    """From RELAY_HOST: bulk bytes (raw); one message with a bulk body of base64 lines, no "." in them (smtp); or
    `count` ping-pongs after 200 to warm up, one in flight (ping)."""
    sock = bound_socket(RELAY_HOST, blocking=True)
    sock.settimeout(TIMEOUT_S)
    sock.connect((a.host, a.port))
    sendall, reader = sock.sendall, sock.makefile("rb")
    if a.mode == "ping":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply(reader, b"220")
        send, recv, clock, samples = sock.send, sock.recv, time.perf_counter_ns, []
        for i in range(200 + a.count):
            t0 = clock()
            send(PING)
            got = recv(128)
            while len(got) < 64:
                if not (more := recv(128)):
                    raise ConnectionError("EOF in a ping-pong")
                got += more
            if i >= 200:
                samples.append(clock() - t0)
        sendall(b"QUIT\r\n")
        reply(reader, b"221")
        samples.sort()
        return emit({"median_us": median(samples) / 1000, "p99_us": percentile(samples, 0.99) / 1000})
    block = (base64.encodebytes(os.urandom(MiB // 78 * 57)).replace(b"\n", b"\r\n") if a.mode == "smtp"
             else os.urandom(MiB))
    count, header = math.ceil(a.bytes / len(block)), b""
    if a.mode == "smtp":
        reply(reader, b"220")
        for line, expect in ((b"EHLO client.bench.test", b"250"), (b"MAIL FROM:<bench@client.bench.test>", b"250"),
                             (b"RCPT TO:<sink@relay.bench.test>", b"250"), (b"DATA", b"354")):
            sendall(line + b"\r\n")
            reply(reader, expect)
        header = (b"Received: from client.bench.test (client [127.0.0.2]) by relay.bench.test; Sat, 22 Nov 2025 "
                  b"09:00:00 +0000\r\nFrom: <bench@client.bench.test>\r\nTo: <sink@relay.bench.test>\r\n"
                  b"Subject: bulk\r\nMessage-ID: <bench.1@client.bench.test>\r\n\r\n")
    t_start = time.monotonic()
    sendall(header)
    for _ in range(count):
        sendall(block)
    if a.mode == "smtp":
        sendall(b".\r\n")
        reply(reader, b"250")
        sendall(b"QUIT\r\n")
        reply(reader, b"221")
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    emit({"bytes": count * len(block) + len(header) + (3 if header else 0), "t_start": t_start})


def role_pump(a) -> None:
    """Reference: the least asyncio pump with looper's water marks (no observer, policy, events, timers)."""
    import asyncio

    class End(asyncio.Protocol):
        peer: End | None = None

        def __init__(self) -> None:
            self.pending, self.eof = bytearray(), False

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
        """recv_into one buffer shared by every end (each read is forwarded
        before the next); a new one when a transport kept the view queued."""

        shared = [memoryview(bytearray(a.buffered or 1))]

        def get_buffer(self, sizehint: int) -> memoryview:
            return self.shared[0]

        def buffer_updated(self, nbytes: int) -> None:
            view = self.shared[0][:nbytes]
            if self.peer is None:
                self.pending += view
                return
            self.peer.transport.write(view)
            if self.peer.transport.get_write_buffer_size():
                self.shared[0] = memoryview(bytearray(a.buffered))

    Base = BufferedEnd if a.buffered else End  # noqa: N806

    async def main() -> None:
        loop = asyncio.get_running_loop()

        class Inbound(Base):
            def connection_made(self, transport) -> None:
                super().connection_made(transport)
                loop.create_task(self.dial())

            async def dial(self) -> None:
                host = self.transport.get_extra_info("peername")[0]
                _, out = await loop.create_connection(Base, host, a.dialback_port, local_addr=(TRAP_HOST, 0))
                out.peer, self.peer = self, out
                for src, dst in ((self, out), (out, self)):  # what either side sent before the link
                    if src.pending:
                        dst.transport.write(bytes(src.pending))
                    if src.eof:
                        dst.transport.write_eof()

        await loop.create_server(Inbound, TRAP_HOST, a.port, reuse_address=True)
        await stdin_closed().wait()

    run_loop(main, a.loop)


ROLES = {"server": role_server, "client": role_client, "pump": role_pump}


def start_relay(args, workdir, relay: str, loop: str, dialback_port: int, observer: str = "on", pump_buffer: int = 0,
                phase: str = "", label: str = "") -> Server:
    """A trap (relay looper) or a reference pump (relay pump) dialing back on dialback_port."""
    if relay == "pump":
        port = free_port()
        return Server(f"pump[{loop}]", role_argv("pump", loop=loop, port=port, dialback_port=dialback_port,
                                                 buffered=pump_buffer), port)
    profile = f"{os.path.abspath(args.profile)}/trap-{phase}-{loop}-observer-{observer}.prof"
    # "uncaptured": the observer on, with capture.reflected none (no content kept in memory for the file)
    capture = {"capture": {"reflected": "none"}} if observer == "uncaptured" else {}
    return Trap(workdir, {"dialback": {"port": dialback_port, "timeout": 10, "per_ip_hourly": None},
                          "splice": {"max_bytes": 2**62, "max_seconds": 3600, "idle_seconds": 3600,
                                     "bytes_per_minute": None},
                          "limits": {"per_ip": 20000, "total": 20000}, "log": {"max_bytes": 64 * MiB, "backups": 1},
                          **capture},
                label=label or f"trap[{loop},observer {observer}]", loop=loop, observer=observer,
                profile=profile if args.profile and phase else "")


def exchange(mode: str, relay: str, port: int, server: Server | None, socat_buffer: int | None = 262144,
             **client) -> tuple[dict, dict, float | None]:
    """The server and client roles, direct, via socat or `server`: (client's figures, server's, relay CPU s)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    sink = Child(f"server[{relay}]", role_argv("server", port=port, mode="pong" if mode == "ping" else mode))
    sink.read_json(deadline)
    socat = None
    if relay == "direct":
        host, dport = RELAY_HOST, port
    elif relay == "socat":
        host, dport = TRAP_HOST, free_port()
        socat = Server("socat", ["socat"] + (["-b", str(socat_buffer)] if socat_buffer else []) + [
            f"TCP-LISTEN:{dport},bind={TRAP_HOST},reuseaddr", f"TCP:{RELAY_HOST}:{port}"], dport)
    else:
        host, dport = TRAP_HOST, server.port
    cpu0 = server.cpu_now() if server else 0.0
    sender = Child(f"client[{relay}]", role_argv("client", host=host, port=dport, mode=mode, **client))
    sent, got = sender.read_json(deadline), sink.read_json(deadline)
    for child in filter(None, (sender, sink, socat)):
        child.wait(deadline)
    if server is None:
        return sent, got, socat.cpu_s if socat else None
    time.sleep(0.02)  # the session's last events
    return sent, got, server.cpu_now() - cpu0


def variant(key: str, label: str, mode: str, relay: str, socat_buffer: int | None = None, loop: str = "-",
            observer: str = "-", pump_buffer: int = 0) -> types.SimpleNamespace:
    """A throughput variant (pump_buffer: 0 for the Protocol pump, n for the BufferedProtocol one), its figures."""
    return types.SimpleNamespace(**locals(), reruns=0, gbps=[], cpu_per_gib=[], median=None)


def transfer(v, nbytes: int, port: int, server: Server | None) -> tuple[float, float | None]:
    """One bulk transfer: (GB/s, relay CPU seconds per GiB)."""
    sent, got, cpu = exchange(v.mode, v.relay, port, server, v.socat_buffer, bytes=nbytes)
    if got["bytes"] != sent["bytes"]:
        raise BenchError(f"{v.key}: sent {sent['bytes']} bytes, received {got['bytes']}")
    if server is not None and got["peer"] != TRAP_HOST:
        raise BenchError(f"{v.key}: the receiver saw {got['peer']}, not the trap's dial-back")
    return sent["bytes"] / (got["t_end"] - sent["t_start"]) / 1e9, None if cpu is None else cpu / (sent["bytes"] / GiB)


def phase_throughput(args, r, workdir) -> None:
    nbytes, port = args.size_mib * MiB, free_port()
    r.sha256_gbps = sha256_gbps()
    r.variants = [variant("a", "direct loopback", "raw", "direct"),
                  variant("b", "socat (default 8 KiB buffer)", "raw", "socat"),
                  variant("c", "socat -b 262144", "raw", "socat", socat_buffer=262144),
                  variant("a'", "direct loopback, SMTP DATA", "smtp", "direct"),
                  variant("c'", "socat -b 262144, SMTP DATA", "smtp", "socat", socat_buffer=262144)]
    for loop in r.loops:
        r.variants += [variant("p", "reference: bare Protocol pump", "raw", "pump", loop=loop),
                       variant("p2", "reference: BufferedProtocol pump", "raw", "pump", loop=loop, pump_buffer=MiB),
                       variant("d", "looper raw, observer on", "raw", "looper", loop=loop, observer="on"),
                       variant("e", "looper SMTP DATA, observer on", "smtp", "looper", loop=loop, observer="on"),
                       variant("e2", "looper SMTP DATA, uncaptured", "smtp", "looper", loop=loop,
                               observer="uncaptured"),
                       variant("f", "looper SMTP DATA, observer off", "smtp", "looper", loop=loop, observer="off")]
    r.variants = [v for v in r.variants if v.relay != "socat" or SOCAT]
    servers: dict[tuple, Server] = {}
    try:
        for v in r.variants:
            key = (v.loop, v.relay, v.observer, v.pump_buffer)
            if v.relay in ("looper", "pump") and key not in servers:
                servers[key] = start_relay(args, workdir, v.relay, v.loop, port, v.observer, v.pump_buffer,
                                           "throughput")
                if v.relay == "looper":
                    transfer(variant("warm", "warm-up", "smtp", "looper"), 16 * MiB, port, servers[key])
        for rep in range(args.repeat):
            for v in r.variants:
                server = servers.get((v.loop, v.relay, v.observer, v.pump_buffer))
                (gbps, cpu), redone = steady(lambda: transfer(v, nbytes, port, server),
                                             lambda res: f"run {rep + 1}/{args.repeat} ({v.key}) {v.label:<36} "
                                                         f"{v.loop:<8} {res[0]:6.2f} GB/s")
                v.reruns += redone
                v.gbps.append(gbps)
                v.median = median(v.gbps)
                v.cpu_per_gib += [] if cpu is None else [cpu]
    finally:
        for server in servers.values():
            server.stop()


def throughput_table(args, r) -> list[str]:
    variants = r.variants
    socat256 = {v.mode: v.median for v in variants if v.relay == "socat" and v.socat_buffer}
    lines = [f"Throughput: {args.size_mib} MiB client -> server per run, median of {args.repeat} (GB/s = 1e9 bytes/s; "
             f"relay CPU = CPU seconds of socat or the trap per GiB)",
             f"{'':5}{'variant':<37}{'loop':<9}{'GB/s':>6}  {'min-max':>11}  {'vs (c)':>7}  {'vs socat256':>11}  "
             f"{'relay CPU s/GiB':>15}"]
    for v in (v for v in variants if v.gbps):
        cpu = f"{median(v.cpu_per_gib):.2f}" if v.cpu_per_gib else "-"
        lines.append(f"{'(' + v.key + ')':<5}{v.label:<37}{v.loop:<9}{v.median:6.2f}  {min(v.gbps):5.2f}-"
                     f"{max(v.gbps):<5.2f}  {ratio(v.median, socat256.get('raw')):>7}  "
                     f"{ratio(v.median, socat256.get(v.mode)):>11}  {cpu:>15}"
                     + (f"  ({v.reruns} disturbed run{'s' if v.reruns > 1 else ''} redone)" if v.reruns else ""))
    lines += ["    (vs socat256: against socat -b 262144 carrying the same workload, (c) for raw, (c') for SMTP)",
              "    (e2) as (e), with capture.reflected none: no copy of the content kept in memory for the file",
              f"    one core's SHA-256 over 1 MiB buffers, measured in this run: {r.sha256_gbps:.2f} GB/s",
              "    (p) a Protocol pump with looper's water marks and nothing else; (p2) the same as a BufferedProtocol",
              "    reading into one shared 1 MiB buffer: the ceilings of looper's splice as it is, and as it could be"]
    by = {(v.key, v.loop): v for v in variants}
    for loop in sorted({v.loop for v in variants if v.relay == "looper"}):
        e, f = by[("e", loop)], by[("f", loop)]
        if e.cpu_per_gib and f.cpu_per_gib:
            ecpu, fcpu = median(e.cpu_per_gib), median(f.cpu_per_gib)
            lines.append(f"    observer cost [{loop}]: (e) vs (f) {e.median / f.median - 1:+.1%} throughput, "
                         f"{ecpu - fcpu:+.2f} trap CPU s/GiB ({ecpu:.2f} vs {fcpu:.2f})")
    return lines


def phase_latency(args, r, workdir) -> None:
    """Every series --repeat times, interleaved; rows: the median of the series' median and p99."""
    port = free_port()
    plan: list[tuple] = [("direct", "direct loopback", "-", None)] + [("socat", "socat -b 262144", "-", None)] * SOCAT
    servers: list[Server] = []
    try:
        for loop in r.loops:
            servers.append(start_relay(args, workdir, "pump", loop, port))
            plan.append(("pump", "reference: bare Protocol pump", loop, servers[-1]))
            for observer in ("on", "off"):
                servers.append(start_relay(args, workdir, "looper", loop, port, observer, phase="latency"))
                plan.append(("looper", f"looper, observer {observer}", loop, servers[-1]))
        for rep in range(args.repeat):
            for relay, label, loop, server in plan:
                row, _ = steady(lambda: exchange("ping", relay, port, server, count=args.pings)[0],
                                lambda res: f"run {rep + 1}/{args.repeat} {label:<30} {loop:<8} median "
                                            f"{res['median_us']:7.1f} us  p99 {res['p99_us']:7.1f} us")
                r.latency.setdefault((label, loop), []).append(row)
    finally:
        for server in servers:
            server.stop()


def latency_table(args, latency: dict) -> list[str]:
    rows = [(label, loop, median(x["median_us"] for x in runs), median(x["p99_us"] for x in runs))
            for (label, loop), runs in latency.items()]
    lines = [f"Round trip: {args.pings:,} ping-pongs of 64 bytes each way (NOOP ... / 250 ...) after a 220, one at a "
             f"time; microseconds, median over {args.repeat} series of each series' median and p99",
             f"    {'variant':<38}{'loop':<9}{'median':>8}{'p99':>9}{'+median':>9}{'+p99':>9}"]
    for label, loop, med, p99 in rows:
        lines.append(f"    {label:<38}{loop:<9}{med:8.1f}{p99:9.1f}{med - rows[0][2]:+9.1f}{p99 - rows[0][3]:+9.1f}")
    return lines + ["    (+median, +p99: added to the direct path)"]


def phase_memory(args, r, workdir) -> None:
    for loop in r.loops:
        relay_port = free_port()
        trap = start_relay(args, workdir, "looper", loop, relay_port, label=loop)
        try:
            time.sleep(0.2)
            r.memory.append(idle_sessions(trap, args.sessions, relay_port=relay_port, expect="220 relay.bench"))
        finally:
            trap.stop()


def sha256_gbps(seconds: float = 1.0) -> float:
    """How fast one core of this machine computes SHA-256 over 1 MiB buffers: the limit of a relay that hashes
    every message that passes, measured in the same run."""
    import hashlib

    block, digest, count = os.urandom(MiB), hashlib.sha256(), 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        digest.update(block)
        count += 1
    return count * MiB / elapsed / 1e9


def verdicts(r) -> list[str]:
    lines = ["", "Targets (observer on; issue 13's floors):"]
    socat256 = {v.mode: v for v in r.variants if v.relay == "socat" and v.socat_buffer and v.gbps}
    for v in r.variants:
        if v.relay == "looper" and v.observer == "on" and v.gbps and (ref := socat256.get(v.mode)):
            if v.mode == "smtp" and r.sha256_gbps and r.sha256_gbps < ref.median:
                lines.append(target(f"throughput ({v.key}) [{v.loop}] {v.median:.2f} >= one core's SHA-256 "
                                    f"{r.sha256_gbps:.2f} GB/s (below socat256 ({ref.key}) {ref.median:.2f})",
                                    v.median >= r.sha256_gbps))
            else:
                lines.append(target(f"throughput ({v.key}) [{v.loop}] {v.median:.2f} >= socat256 ({ref.key}) "
                                    f"{ref.median:.2f} GB/s", v.median >= ref.median))
    medians = {key: median(x["median_us"] for x in runs) for key, runs in r.latency.items()}
    direct = medians.get(("direct loopback", "-"))
    for (label, loop), med in medians.items():
        pump = medians.get(("reference: bare Protocol pump", loop))
        if label == "looper, observer on" and direct is not None and pump is not None:
            lines.append(target(f"added round trip [{loop}] {med - direct:.1f} us <= 1.2 x the bare pump's "
                                f"{pump - direct:.1f} us", med - direct <= 1.2 * (pump - direct)))
    for row in r.memory:
        lines.append(target(f"10,000 idle sessions [{row.name}] {row.at_10k / 1e6:.1f} MB resident (measured "
                            f"{row.rss_with_kib * 1024 / 1e6:.1f} MB with {row.sessions:,}) < 120 MB",
                            row.at_10k < 120e6 and not row.failures))
    return lines


def main() -> int:
    if run_role(ROLES):
        return 0
    p = parser(__doc__, "under a minute: 64 MiB, 2 runs, 1,000 pings, 1,000 sessions", "throughput,latency,memory")
    p.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both", help="the trap's event loop")
    p.add_argument("--size-mib", type=int, help="bulk transfer size")
    p.add_argument("--repeat", type=int, help="runs per throughput variant, series per latency one")
    p.add_argument("--pings", type=int, help="round trips per series")
    p.add_argument("--sessions", type=int, help="idle sessions")
    p.add_argument("--profile", metavar="DIR", default="", help="cProfile stats of the traps (not memory's) in DIR")
    args = parse(p, size_mib=(1024, 64), repeat=(3, 2), pings=(10_000, 1000), sessions=(10_000, 1000),
                 max_seconds=(900, 50))
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    if "uvloop" in loops and not version("uvloop")[0].isdigit():
        p.error("uvloop is not installed in this Python (make bench installs it)")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    r = types.SimpleNamespace(loops=loops, variants=[], latency={}, memory=[], sha256_gbps=0.0)
    runs = {"throughput": phase_throughput, "latency": phase_latency, "memory": phase_memory}
    about = "looper splice bench: " + machine("uvloop", "socat")
    print(about, file=sys.stderr, flush=True)

    def report(stopped: str) -> list[str]:
        lines = [about, f"trap event loops: {', '.join(loops)}"]
        lines += ["socat not found (Debian package socat; make bench installs it as root): skipped"] * (not SOCAT)
        lines += [""] + throughput_table(args, r) if any(v.gbps for v in r.variants) else []
        lines += [""] + latency_table(args, r.latency) if r.latency else []
        lines += [""] + idle_table(r.memory, "idle spliced sessions (greeting passed, then idle)") if r.memory else []
        return lines + noise_report() + verdicts(r)

    return conduct("splice", args, [(name, lambda w, f=runs[name]: f(args, r, w)) for name in args.only], report)


if __name__ == "__main__":
    sys.exit(main())
