"""Memory a client can make the trap hold, read from the trap process's own
/proc status: whatever a client does, the trap's memory stays bounded."""

from __future__ import annotations

import asyncio
import hashlib
import socket

from tests.netutil import connect_from
from tests.trapproc import TrapProcess

RELAY = "127.0.0.2"
MIB = 1024


class StalledRelay:
    """A relay's server that greets, then reads nothing until told to, with
    the smallest receive buffer the kernel allows: what the trap forwards
    to it piles up in the trap almost at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.received = hashlib.sha256()
        self.received_bytes = 0
        self.done = asyncio.Event()

    async def __aenter__(self) -> "StalledRelay":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # accepted sockets inherit it
        listener.bind((RELAY, 0))
        self.port = listener.getsockname()[1]
        self.server = await asyncio.start_server(self._handle, sock=listener)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _handle(self, reader, writer) -> None:
        writer.write(b"220 stalled.relay ESMTP\r\n")
        await self.release.wait()
        while chunk := await reader.read(1 << 16):
            self.received.update(chunk)
            self.received_bytes += len(chunk)
        writer.close()
        self.done.set()


async def test_a_stalled_relay_and_small_paced_writes_do_not_pin_memory(tmp_path):
    """From Python 3.12 a transport keeps what write() gets: a view of a
    shared read buffer would pin the whole buffer for a few bytes of data.
    3,000 paced 2 KB writes toward a relay that reads nothing: the trap holds
    the backlog (bounded by flow control), not a read buffer per write."""
    async with StalledRelay() as relay:
        with TrapProcess(tmp_path, dialback={"port": relay.port}, splice={"idle_seconds": 60}) as trap:
            reader, writer = await connect_from(RELAY, trap.host, trap.port)
            assert await reader.readline() == b"220 stalled.relay ESMTP\r\n"
            rss_before = trap.status_kib("VmRSS")
            sent = hashlib.sha256()
            sent_bytes = 0
            chunk_size = 2000
            try:
                # Enough to fill the kernel's buffers (a few MB on loopback),
                # then the trap's own backlog, a write at a time.
                for index in range(3000):
                    chunk = index.to_bytes(4, "big") * (chunk_size // 4)
                    writer.write(chunk)
                    sent.update(chunk)
                    sent_bytes += len(chunk)
                    async with asyncio.timeout(1):
                        await writer.drain()
                    await asyncio.sleep(0.0002)
            except TimeoutError:
                pass  # the trap stopped reading: flow control, as it should
            grown_kib = trap.status_kib("VmHWM") - rss_before
            relay.release.set()
            await writer.drain()
            writer.close()
            async with asyncio.timeout(20):
                await relay.done.wait()
            assert relay.received_bytes == sent_bytes and relay.received.digest() == sent.digest()
            assert sent_bytes > 4_000_000, sent_bytes
            assert grown_kib < 48 * MIB, f"the trap grew by {grown_kib / MIB:.0f} MiB for {sent_bytes / 1e6:.1f} MB sent"


async def test_hundreds_of_slow_messages_at_once_stay_within_the_memory_budget(tmp_path):
    """300 clients each hold a 512 KB message open (150 MB in all) before
    any sends its final dot. The budget (8 MiB here) is what the trap may
    hold: the messages that fit are stored, the rest get 452 4.3.1."""
    sessions, message_bytes = 300, 512 * 1024
    budget = 8 * 1024 * 1024
    line = b"x" * 998 + b"\r\n"
    with TrapProcess(tmp_path, limits={"message_memory_bytes": budget, "per_ip": 50, "total": 1000}) as trap:
        rss_before = trap.status_kib("VmRSS")

        async def open_message(index: int):
            reader, writer = await connect_from(f"127.0.1.{index % 250 + 1}", trap.host, trap.port)
            await reader.readline()
            writer.write(b"EHLO slow.example\r\nMAIL FROM:<a@slow.example>\r\nRCPT TO:<v@far.example>\r\nDATA\r\n")
            while not (await reader.readline()).startswith(b"354 "):
                pass
            for _ in range(message_bytes // len(line)):
                writer.write(line)
                await writer.drain()
            return reader, writer

        async with asyncio.timeout(120):
            clients = []
            for first in range(0, sessions, 50):  # in waves: the listen backlog is finite
                clients += await asyncio.gather(*(open_message(i) for i in range(first, min(first + 50, sessions))))
            await asyncio.sleep(0.5)  # every message is inside the trap now
            grown_kib = trap.status_kib("VmRSS") - rss_before
            for _, writer in clients:
                writer.write(b".\r\nQUIT\r\n")
            replies = [await reader.read() for reader, _ in clients]
        for _, writer in clients:
            writer.close()
        stored = sum(r.startswith(b"250 2.0.0 Ok: queued as ") for r in replies)
        refused = sum(r.startswith(b"452 4.3.1 Insufficient system storage\r\n") for r in replies)
    assert stored + refused == sessions and 0 < stored <= budget // message_bytes
    assert grown_kib < 64 * MIB, f"the trap grew by {grown_kib / MIB:.0f} MiB holding {sessions} messages"
    assert len(trap.events.of("looper.smtp.message")) == stored


async def _still_greets_then_stops(trap: TrapProcess) -> None:
    """After the storm the trap is itself: a fresh client is greeted at once, and SIGTERM stops it cleanly."""
    reader, writer = await connect_from("127.0.3.1", trap.host, trap.port)
    async with asyncio.timeout(5):
        assert (await reader.readline()).startswith(b"220 mx.proc.test ESMTP")
    writer.close()
    assert trap.stop() == 0


def _junk(index: int) -> bytes:
    """Bytes as hostile as they come cheaply: lines of noise, endless lines,
    NULs and high bytes, commands out of order."""
    kinds = (
        bytes(range(256)) * 64,  # binary, a few newlines in it
        b"A" * 16384,  # no newline at all: one endless line
        b"\r\n" * 8192,  # empty commands
        b"MAIL FROM:<x@y>\r\nDATA\r\n\x00\xff" * 1024,
    )
    return kinds[index % len(kinds)]


async def _flood_with_junk(trap: TrapProcess, clients: int, seconds: float, first_address: int) -> int:
    """`clients` connections that send junk as fast as they can for
    `seconds`, then vanish (a reset); the bytes they got out."""
    connections = await asyncio.gather(*(
        connect_from(f"127.{first_address + i // 200}.{i % 200 + 1}.1", trap.host, trap.port, timeout=20)
        for i in range(clients)
    ))
    sent = [0] * clients
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def flood(index: int, writer: asyncio.StreamWriter) -> None:
        junk = _junk(index)
        try:
            while loop.time() < deadline:
                writer.write(junk)
                sent[index] += len(junk)
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    await writer.drain()
                await asyncio.sleep(0)  # drain() does not yield while the kernel takes it all
        except (ConnectionError, TimeoutError):
            pass  # the trap stopped reading or hung up: both are fine

    await asyncio.gather(*(flood(i, writer) for i, (_, writer) in enumerate(connections)))
    for _, writer in connections:
        writer.transport.abort()
    assert all(sent)
    return sum(sent)


async def test_a_thousand_clients_sending_junk_as_fast_as_they_can(tmp_path):
    """Twice, 1,000 clients at once: memory stays bounded while they rage,
    does not ratchet up from one flood to the next, and the trap still
    greets the next client at once. (Before early talk was capped, the
    first flood took the trap to 755 MiB of live objects.)"""
    clients, seconds = 1000, 3.0
    settings = dict(limits={"per_ip": 10, "total": 2000}, smtp={"idle_timeout": 30}, shutdown_grace_s=0.5)
    with TrapProcess(tmp_path, **settings) as trap:
        rss = [trap.status_kib("VmRSS")]
        junk_bytes = 0
        for flood in range(2):
            junk_bytes += await _flood_with_junk(trap, clients, seconds, first_address=10 + flood * 10)
            async with asyncio.timeout(20):
                while len(trap.events.of("looper.session.closed")) < (flood + 1) * clients:
                    await asyncio.sleep(0.2)
            rss.append(trap.status_kib("VmRSS"))
        peak_kib = trap.status_kib("VmHWM")
        await _still_greets_then_stops(trap)
    print(f"trap RSS before {rss[0] / MIB:.0f} MiB, after each flood {rss[1] / MIB:.0f} and {rss[2] / MIB:.0f} MiB,"
          f" peak {peak_kib / MIB:.0f} MiB; {junk_bytes / 1e6:.0f} MB of junk")
    assert junk_bytes > 100_000_000
    assert peak_kib - rss[0] < 64 * MIB
    # No ratchet: before early talk was capped, each flood added 30-70 MiB;
    # what remains is the new addresses' bookkeeping and allocator slack.
    assert rss[2] - rss[1] < 16 * MIB
    assert trap.events.of("looper.session.error") == []
    assert len(trap.events.of("looper.session.closed")) == len(trap.events.of("looper.session.connect"))


async def test_a_burst_of_5000_connections_in_one_second(tmp_path):
    connections = 5000
    with TrapProcess(tmp_path, limits={"per_ip": 50, "total": 1000}, shutdown_grace_s=0.5) as trap:
        rss_before = trap.status_kib("VmRSS")
        answers: list[bytes] = []

        async def knock(index: int) -> None:
            try:
                reader, writer = await connect_from(f"127.0.4.{index % 200 + 1}", trap.host, trap.port, timeout=30)
            except (OSError, TimeoutError) as err:
                answers.append(repr(err).encode())
                return
            try:
                async with asyncio.timeout(30):
                    answers.append(await reader.readline())
            except (ConnectionError, TimeoutError) as err:
                answers.append(repr(err).encode())
            writer.transport.abort()

        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks = []
        for index in range(connections):  # spread over one second
            tasks.append(asyncio.ensure_future(knock(index)))
            if index % 500 == 499:
                await asyncio.sleep(max(0.0, started + (index + 1) / connections - loop.time()))
        await asyncio.gather(*tasks)
        peak_kib = trap.status_kib("VmHWM")
        await _still_greets_then_stops(trap)
    greeted = sum(a.startswith(b"220 mx.proc.test ESMTP") for a in answers)
    hung_up = sum(a == b"421 4.3.2 Service not available, closing transmission channel\r\n" for a in answers)
    print(f"{greeted} greeted, {hung_up} told 421 (over limits.total), {len(answers) - greeted - hung_up} other answers")
    assert len(answers) == connections and greeted + hung_up == connections
    assert peak_kib - rss_before < 64 * MIB
    assert trap.events.of("looper.session.error") == []


async def test_big_read_buffers_left_with_slow_peers_are_counted_and_capped(start_trap, monkeypatch):
    """A write of the shared 1 MiB read buffer that a slow peer does not take
    at once leaves the buffer with that peer's transport until it drains.
    Such buffers are counted; past the cap, reads use the small buffer, so
    slow peers cannot pin more than MAX_PINNED_READ_BUFFERS of them."""
    import looper.net.splice as splice

    monkeypatch.setattr(splice, "MAX_PINNED_READ_BUFFERS", 1)
    pinned_before = splice._buffers.pinned
    async with StalledRelay() as relay:
        trap = await start_trap(relay.port, splice={"idle_seconds": 30})
        clients = []
        for source in ("127.0.0.2", "127.0.0.2"):
            reader, writer = await connect_from(source, trap.host, trap.port)
            assert await reader.readline() == b"220 stalled.relay ESMTP\r\n"
            writer.write(bytes(4 << 20))  # more than the kernel takes for a relay that does not read
            clients.append(writer)
            await asyncio.sleep(0.3)
        assert splice._buffers.pinned == pinned_before + 1  # the second one read into the small buffer
        relay.release.set()
        for writer in clients:
            writer.close()
        await trap.events.wait_for("looper.session.closed", count=2, timeout=20)
    assert splice._buffers.pinned == pinned_before  # all given back
