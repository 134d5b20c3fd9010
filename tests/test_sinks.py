"""Events to central collectors, with real ones started here on 127.0.0.1:
a private rsyslogd (UDP and TCP, RFC 5424 fields written to a file), an
hpfeeds broker (the hpfeeds package's, with a subscriber that reads the
channel), and the Prometheus endpoint scraped over HTTP. Sessions are real
smtplib sessions with the emulated relay.

A collector that is dead, or takes nothing, costs the trap nothing: its
sessions are served as ever; the events the collector missed are counted,
and the first thing it gets once it is back is a looper.log.dropped event
with that count.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from looper.cli import main as looper_main
from looper.eventlog import LOG_DROPPED, EventLog, SessionInfo
from looper.sinks.metrics import TrapMetrics
from looper.sinks.queued import QueuedSink
from tests.conftest import EMULATED_CLIENT, free_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
SENSOR = "trap.looper.test"  # conftest's
MAIL_INFO = 2 * 8 + 6  # facility mail, severity info
MESSAGE = b"From: <a@spam.example>\r\nSubject: buy\r\nMessage-ID: <s1@spam.example>\r\n\r\nBody.\r\n"


def rsyslog_available() -> bool:
    return os.access(RSYSLOGD, os.X_OK)


def require_rsyslog() -> None:
    if not rsyslog_available():
        if os.environ.get("LOOPER_REQUIRE_RSYSLOG") == "1":
            raise RuntimeError(f"LOOPER_REQUIRE_RSYSLOG=1 but {RSYSLOGD} is missing")
        pytest.skip("needs rsyslog (sudo make test-tools)")


# -- the collectors ------------------------------------------------------------

# Each RFC 5424 field as rsyslog parsed it, separated by '|'; the MSG last.
RSYSLOG_TEMPLATE = (
    '%PRI%|%TIMESTAMP:::date-rfc3339%|%HOSTNAME%|%APP-NAME%|%PROCID%|%MSGID%|%STRUCTURED-DATA%|%msg%\\n'
)


class PrivateRsyslog:
    """rsyslogd in the foreground with imudp and imtcp on 127.0.0.1 ports
    of the test's and a local socket like /dev/log (imuxsock), writing what
    it receives to a file."""

    def __init__(self, folder: Path, *, udp_port: int, tcp_port: int, local_socket: Path) -> None:
        self.folder = folder
        self.udp_port, self.tcp_port, self.local_socket = udp_port, tcp_port, local_socket
        self.output = folder / "received.log"
        self.config = folder / "rsyslog.conf"
        self.config.write_text(
            f'global(workDirectory="{folder}" maxMessageSize="64k")\n'
            'module(load="imudp")\nmodule(load="imtcp")\nmodule(load="imuxsock" SysSock.Use="off")\n'
            f'input(type="imudp" address="127.0.0.1" port="{udp_port}")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{tcp_port}")\n'
            f'input(type="imuxsock" Socket="{local_socket}")\n'
            f'template(name="fields" type="string" string="{RSYSLOG_TEMPLATE}")\n'
            f'action(type="omfile" file="{self.output}" template="fields")\n'
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.folder / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # both inputs are set up before the first is served
            try:
                socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, f"rsyslogd exited: {self.process.returncode}"
                time.sleep(0.05)
        raise TimeoutError("rsyslogd does not listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def messages(self) -> list[list[str]]:
        """The messages received: their fields, the MSG last."""
        if not self.output.exists():
            return []
        text = self.output.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        # A line being written is not received yet.
        return [line.rstrip("\n").split("|", 7) for line in lines if line.endswith("\n")]

    def events(self) -> list[dict]:
        return [json.loads(fields[7]) for fields in self.messages()]


@pytest.fixture
def rsyslog(tmp_path):
    require_rsyslog()
    folder = tmp_path / "rsyslog"
    folder.mkdir()
    # A socket's path has room for 107 bytes: not in tmp_path, which can be longer.
    socket_folder = Path(tempfile.mkdtemp(prefix="looper-rsyslog-"))
    receiver = PrivateRsyslog(folder, udp_port=free_port(), tcp_port=free_port(), local_socket=socket_folder / "log")
    yield receiver
    receiver.stop()
    shutil.rmtree(socket_folder, ignore_errors=True)


HPFEEDS_BROKER = Path(sys.executable).parent / "hpfeeds-broker"
CHANNEL = "looper.events"
IDENT, SECRET = "looper-test", "s3cret-of-the-trap"


class HpfeedsBroker:
    """hpfeeds-broker (the hpfeeds package's) on a port of the test's; its
    users come from the environment: the trap may publish, `reader` may
    subscribe."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            f"HPFEEDS_{IDENT}_SECRET": SECRET, f"HPFEEDS_{IDENT}_PUBCHANS": CHANNEL,
            "HPFEEDS_READER_SECRET": "reader-secret", "HPFEEDS_READER_SUBCHANS": CHANNEL,
        }
        env = {key.upper() if key.startswith("HPFEEDS_") else key: value for key, value in env.items()}
        self.process = subprocess.Popen(
            [str(HPFEEDS_BROKER), "--bind", f"127.0.0.1:{self.port}", "--auth", "env"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, f"hpfeeds-broker exited: {self.process.returncode}"
                time.sleep(0.05)
        raise TimeoutError("hpfeeds-broker does not listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Subscriber:
    """A reader of the channel, with the hpfeeds package's asyncio client."""

    def __init__(self, port: int) -> None:
        from hpfeeds.asyncio import ClientSession

        self.session = ClientSession("127.0.0.1", port, "reader", "reader-secret")
        self.session.subscribe(CHANNEL)
        self.received: list[tuple[str, str, dict]] = []
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for ident, channel, payload in self.session:
            self.received.append((ident, channel, json.loads(payload)))

    async def connected(self) -> None:
        await asyncio.wait_for(self.session.when_connected, 10)
        await asyncio.sleep(0.2)  # its OP_SUBSCRIBE reaches the broker

    def events(self) -> list[dict]:
        return [event for _, _, event in self.received]

    async def close(self) -> None:
        self._task.cancel()
        self.session.closing = True
        if self.session.protocol is not None:
            self.session.protocol.transport.close()


@pytest.fixture
async def hpfeeds_broker():
    if not HPFEEDS_BROKER.exists():
        pytest.fail(f"{HPFEEDS_BROKER} is missing: pip install 'hpfeeds[broker]' (the test extra)")
    broker = HpfeedsBroker(free_port())
    subscribers: list[Subscriber] = []

    def subscribe() -> Subscriber:
        subscriber = Subscriber(broker.port)
        subscribers.append(subscriber)
        return subscriber

    broker.subscribe = subscribe
    yield broker
    for subscriber in subscribers:
        await subscriber.close()
    broker.stop()


# -- sessions -------------------------------------------------------------------


def emulated_session(trap, *, login: bool = True) -> None:
    """A spammer's session with the emulated relay: EHLO, AUTH, one message."""
    with smtplib.SMTP(trap.host, trap.port, local_hostname="spam.example.org",
                      source_address=(EMULATED_CLIENT, 0), timeout=10) as client:
        client.ehlo()
        if login:
            client.login("admin", "admin")
        assert client.sendmail("a@spam.example", ["victim@far.example.com"], MESSAGE) == {}


async def run_sessions(trap, count: int = 1) -> None:
    before = len(trap.events.of("looper.session.closed"))
    for _ in range(count):
        await asyncio.to_thread(emulated_session, trap)
    await trap.events.wait_for("looper.session.closed", before + count)
    await trap.quiet()


def collector_sink(trap) -> QueuedSink:
    (sink,) = [s for s in trap.trap.eventlog._sinks if isinstance(s, QueuedSink)]
    return sink


async def wait_until(condition, timeout: float = 20.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"gave up waiting: {what or condition}"
        await asyncio.sleep(0.05)


def without_dropped(events: list[dict]) -> list[dict]:
    return [e for e in events if e["eventid"] != LOG_DROPPED]


# -- syslog ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_every_event_reaches_rsyslog_as_an_rfc5424_message(relay, rsyslog, transport):
    await asyncio.to_thread(rsyslog.start)
    port = rsyslog.udp_port if transport == "udp" else rsyslog.tcp_port
    trap = await relay(syslog={"address": f"127.0.0.1:{port}", "transport": transport})
    await run_sessions(trap)
    logged = trap.events.all()
    await wait_until(lambda: len(rsyslog.messages()) >= len(logged), what="rsyslog has every event")
    received = rsyslog.messages()
    assert [json.loads(fields[7]) for fields in received] == logged  # the very events, in order
    for (pri, timestamp, hostname, app, procid, msgid, data, _), event in zip(received, logged):
        assert (pri, timestamp, hostname, app, msgid, data) == (
            str(MAIL_INFO), event["timestamp"], SENSOR, "looper", event["eventid"], "-"
        )
        assert procid == str(os.getpid())
    assert {"looper.session.connect", "looper.login.success", "looper.smtp.message"} <= {e["eventid"] for e in logged}


async def test_every_event_reaches_the_local_daemon_through_its_socket(relay, rsyslog):
    # The socket of rsyslog's imuxsock, as /dev/log is the system's.
    await asyncio.to_thread(rsyslog.start)
    trap = await relay(syslog={"address": str(rsyslog.local_socket)})
    await run_sessions(trap)
    logged = trap.events.all()
    await wait_until(lambda: len(rsyslog.messages()) >= len(logged), what="rsyslog has every event")
    received = rsyslog.messages()
    assert [json.loads(fields[7]) for fields in received] == logged
    # The local shape: "<PRI>stamp looper[PID]: MSG", parsed by the daemon itself.
    assert {(pri, app, procid) for pri, _, _, app, procid, *_ in received} == {(str(MAIL_INFO), "looper", str(os.getpid()))}


async def test_an_event_longer_than_max_message_bytes_is_cut_to_it(relay, rsyslog, caplog):
    await asyncio.to_thread(rsyslog.start)
    trap = await relay(syslog={"address": f"127.0.0.1:{rsyslog.udp_port}", "max_message_bytes": 1024})
    who = SessionInfo("long", "smtp", "192.0.2.1", 1, "127.0.0.1", 25)
    trap.trap.eventlog.emit(who, "looper.command.input", input="EHLO " + "é" * 2000)
    trap.trap.eventlog.emit(who, "looper.command.input", input="QUIT")
    await wait_until(lambda: len(rsyslog.messages()) == 2, what="both messages")
    long, short = rsyslog.messages()
    pri, *header, msg = long
    sent = f"<{pri}>1 {' '.join(header)} {msg}".encode("utf-8")  # the message as it was sent
    assert 1024 - 2 <= len(sent) <= 1024  # cut at a character's boundary ('é' is 2 bytes)
    assert msg.startswith('{"timestamp":') and "é" * 300 in msg
    assert json.loads(short[7])["input"] == "QUIT"
    assert "1 event(s) longer than syslog.max_message_bytes (1024) were cut" in caplog.text


async def test_a_dead_tcp_syslog_collector_costs_the_trap_nothing_and_hears_the_count_when_back(relay, rsyslog):
    # Nothing listens on rsyslog's port yet; the queue holds a few events only.
    trap = await relay(syslog={"address": f"127.0.0.1:{rsyslog.tcp_port}", "transport": "tcp", "queue_bytes": 4096})
    sink = collector_sink(trap)
    started = time.monotonic()
    await run_sessions(trap, 3)
    assert time.monotonic() - started < 10  # served as ever (each session well within its timeout)
    eventlog = trap.trap.eventlog
    assert eventlog.dropped > 0 and eventlog.healthy  # the file took everything: only the collector missed some
    missed = eventlog.dropped

    await asyncio.to_thread(rsyslog.start)
    await wait_until(lambda: sink.queued_bytes == 0, what="the queue is sent after the reconnect")
    await run_sessions(trap)  # its first batch carries the count
    logged = trap.events.all()
    await wait_until(lambda: len(without_dropped(rsyslog.events())) >= len(logged) - missed,
                     what="rsyslog has the events after the outage")
    received = rsyslog.events()
    (dropped,) = [e for e in received if e["eventid"] == LOG_DROPPED]
    assert dropped["dropped"] == missed and dropped["sensor"] == SENSOR
    assert dropped["error"].startswith("ECONNREFUSED")
    # Every event is accounted for: received, or in the count.
    assert len(without_dropped(received)) + dropped["dropped"] == len(logged)
    # The count comes right before the events of the session after the outage.
    after = received[received.index(dropped) + 1:]
    assert after == logged[-len(after):] and after[0]["eventid"] == "looper.session.connect"
    assert eventlog.dropped == 0
    assert [m[0] for m in rsyslog.messages() if LOG_DROPPED in m[5]] == [str(2 * 8 + 4)]  # a warning


async def test_a_collector_that_reads_nothing_fills_the_queue_and_the_trap_goes_on(relay):
    # A collector that accepts and never reads: the kernel's buffers fill,
    # then the queue; events are dropped from then on, sessions are not slowed.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    accepted = []
    try:
        trap = await relay(syslog={"address": f"127.0.0.1:{listener.getsockname()[1]}", "transport": "tcp",
                                   "queue_bytes": 4096})
        sink = collector_sink(trap)
        await wait_until(lambda: sink.connected, what="connected")
        who = SessionInfo("flood", "smtp", "192.0.2.1", 1, "127.0.0.1", 25)
        eventlog = trap.trap.eventlog
        for _ in range(100):  # about 10 MB of events: more than any socket buffer
            for _ in range(100):
                eventlog.emit(who, "looper.command.input", input="NOOP " + "x" * 900)
            await asyncio.sleep(0)
        assert eventlog.dropped > 0 and sink.queued_bytes <= 4096
        started = time.monotonic()
        await run_sessions(trap)
        assert time.monotonic() - started < 5
    finally:
        listener.close()


# -- hpfeeds --------------------------------------------------------------------


def hpfeeds_settings(port: int, **extra) -> dict:
    return {"host": "127.0.0.1", "port": port, "ident": IDENT, "secret": SECRET, "channel": CHANNEL, **extra}


async def test_every_event_is_published_to_the_hpfeeds_channel(relay, hpfeeds_broker):
    await asyncio.to_thread(hpfeeds_broker.start)
    subscriber = hpfeeds_broker.subscribe()
    await subscriber.connected()
    trap = await relay(hpfeeds=hpfeeds_settings(hpfeeds_broker.port))
    await wait_until(lambda: collector_sink(trap).connected, what="the trap is connected")
    await run_sessions(trap)
    logged = trap.events.all()
    await wait_until(lambda: len(subscriber.received) >= len(logged), what="the subscriber has every event")
    assert subscriber.events() == logged
    assert {(ident, channel) for ident, channel, _ in subscriber.received} == {(IDENT, CHANNEL)}


async def test_a_dead_hpfeeds_broker_costs_the_trap_nothing_and_hears_the_count_when_back(relay, hpfeeds_broker):
    trap = await relay(hpfeeds=hpfeeds_settings(hpfeeds_broker.port, queue_bytes=4096))
    sink = collector_sink(trap)
    await run_sessions(trap, 3)
    eventlog = trap.trap.eventlog
    missed = eventlog.dropped
    assert missed > 0

    await asyncio.to_thread(hpfeeds_broker.start)
    subscriber = hpfeeds_broker.subscribe()
    await subscriber.connected()
    await wait_until(lambda: sink.connected and sink.queued_bytes == 0, what="reconnected, queue sent")
    await run_sessions(trap)
    await wait_until(lambda: any(e["eventid"] == LOG_DROPPED for e in subscriber.events()), what="the count")
    logged = trap.events.all()
    session = [e for e in logged if e["session"] == logged[-1]["session"]]
    await wait_until(lambda: subscriber.events()[-1] == session[-1], what="the last session's events")
    received = subscriber.events()
    # (What the queue held went out at the reconnect, maybe before the subscriber was there.)
    (dropped,) = [e for e in received if e["eventid"] == LOG_DROPPED]
    assert dropped["dropped"] == missed and dropped["error"].startswith("ECONNREFUSED")
    assert received[received.index(dropped) + 1:] == session


async def test_a_broker_that_refuses_the_ident_is_retried_and_the_trap_goes_on(relay, hpfeeds_broker, caplog):
    await asyncio.to_thread(hpfeeds_broker.start)
    trap = await relay(hpfeeds=hpfeeds_settings(hpfeeds_broker.port, secret="not-the-secret"))
    await run_sessions(trap)
    await wait_until(lambda: "Authentication failed for looper-test" in caplog.text, what="the refusal is logged")
    assert "not-the-secret" not in caplog.text
    # Never taken for admitted: the events wait in the queue, not poured
    # into a connection the broker is about to close.
    sink = collector_sink(trap)
    assert not sink.connected and sink.queued_bytes > 0


# -- metrics --------------------------------------------------------------------


def scrape(endpoint: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_metrics_endpoint_counts_what_the_log_says(relay):
    endpoint = f"127.0.0.1:{free_port()}"
    trap = await relay(metrics={"listen": endpoint}, syslog={"address": f"127.0.0.1:{free_port()}",
                                                                "transport": "tcp", "queue_bytes": 4096})
    await run_sessions(trap, 2)
    await trap.events.wait_for("looper.relay.verdict")
    metrics = await asyncio.to_thread(scrape, endpoint)
    logged = trap.events.all()

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("looper_sessions_total", mode="emulate") == 2
    assert value("looper_dialbacks_total", result="refused") == 2
    assert value("looper_dialbacks_total", result="ok") == 0
    assert value("looper_logins_total", protocol="smtp", result="success") == 2
    assert value("looper_messages_total") == 2
    assert value("looper_loop_passes_total") == 0
    assert value("looper_relays", verdict="unreachable") == 1  # one relay, counted once
    for eventid in {e["eventid"] for e in logged}:
        assert value("looper_events_total", eventid=eventid) == sum(e["eventid"] == eventid for e in logged)
    assert value("looper_events_dropped_total", sink=str(trap.trap.eventlog._sinks[0])) == 0
    dead = str(collector_sink(trap))  # nothing listens there
    assert value("looper_events_dropped_total", sink=dead) == trap.trap.eventlog.dropped > 0
    assert value("looper_collector_connected", sink=dead) == 0
    assert 0 < value("looper_collector_queued_bytes", sink=dead) <= 4096


def test_a_relay_counts_once_under_its_latest_verdict_and_old_relays_are_forgotten(monkeypatch):
    import looper.sinks.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "MAX_RELAYS", 2)
    eventlog = EventLog("s", [])
    metrics = TrapMetrics(eventlog)
    trap_itself = SessionInfo("", "", "", 0, "", 0)

    def verdict(relay_ip: str, verdict: str) -> None:
        eventlog.emit(trap_itself, "looper.relay.verdict", relay_ip=relay_ip, verdict=verdict, evidence="")

    def gauge(verdict: str) -> float:
        return metrics.registry.get_sample_value("looper_relays", {"verdict": verdict}) or 0.0

    verdict("192.0.2.1", "probe_only")
    verdict("192.0.2.1", "open_relay")
    verdict("192.0.2.2", "open_relay")
    assert (gauge("probe_only"), gauge("open_relay")) == (0, 2)
    verdict("192.0.2.3", "refuses_relay")  # the bound: 192.0.2.1 is forgotten
    assert (gauge("open_relay"), gauge("refuses_relay")) == (1, 1)


def test_a_busy_metrics_port_stops_the_start_with_one_line(tmp_path, capsys):
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        endpoint = f"127.0.0.1:{busy.getsockname()[1]}"
        config = tmp_path / "looper.yaml"
        config.write_text(
            f"run_as: null\nlisten: {{smtp: ['127.0.0.1:{free_port()}'], pop3: [], pop3s: []}}\n"
            f"log: {{dir: '{tmp_path / 'logs'}'}}\nmetrics: {{listen: '{endpoint}'}}\n"
        )
        assert looper_main(["run", "--no-view", "-c", str(config)]) == 1
    finally:
        busy.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"{config}: metrics.listen: cannot listen on {endpoint}: Address already in use;"
                       " stop the program that listens there, or change metrics.listen")


async def test_the_metrics_server_is_gone_when_the_trap_stops(tmp_path):
    import yaml

    from looper.config import parse_config
    from looper.eventlog import open_event_log
    from looper.net.server import Trap

    endpoint = f"127.0.0.1:{free_port()}"
    config = parse_config(yaml.safe_dump({
        "listen": {"smtp": [f"127.0.0.1:{free_port()}"], "pop3": [], "pop3s": []}, "log": {"dir": str(tmp_path / "logs")},
        "metrics": {"listen": endpoint}, "smtp": {"hostname": "mx.trap.example.net"},
    }), "test")
    eventlog = open_event_log(config.sensor, config.log.dir, max_bytes=1 << 20, backups=1)
    trap = Trap(config, eventlog)
    await trap.start()
    try:
        assert ("looper_sessions_total", ()) not in await asyncio.to_thread(scrape, endpoint)  # no session yet
    finally:
        await trap.stop()
        eventlog.close()
    with pytest.raises(OSError):  # refused: the port is free again
        await asyncio.to_thread(scrape, endpoint)
    socket.create_server(("127.0.0.1", int(endpoint.rpartition(":")[2]))).close()


async def test_looper_run_sends_its_events_to_rsyslog_and_hpfeeds_and_serves_metrics(tmp_path, rsyslog, hpfeeds_broker):
    """The whole program, as an operator starts and stops it."""
    await asyncio.to_thread(rsyslog.start)
    await asyncio.to_thread(hpfeeds_broker.start)
    subscriber = hpfeeds_broker.subscribe()
    await subscriber.connected()
    port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    config = tmp_path / "looper.yaml"
    config.write_text(
        f"sensor: fleet-7\nlisten: {{smtp: ['127.0.0.1:{port}'], pop3: [], pop3s: []}}\n"
        f"dialback: {{port: 1, allow_private: true}}\nlog: {{dir: '{tmp_path / 'logs'}'}}\n"
        "smtp: {hostname: mx.cli.test}\nrun_as: null\n"
        f"syslog: {{address: '127.0.0.1:{rsyslog.tcp_port}', transport: tcp, facility: local3}}\n"
        f"hpfeeds: {{host: 127.0.0.1, port: {hpfeeds_broker.port}, ident: {IDENT}, secret: {SECRET}, channel: {CHANNEL}}}\n"
        f"metrics: {{listen: '{metrics}'}}\n"
    )
    trap = subprocess.Popen([sys.executable, "-m", "looper", "run", "--no-view", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def session() -> None:
            deadline = time.monotonic() + 15
            while True:
                try:
                    client = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.6", 0))
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline and trap.poll() is None
                    time.sleep(0.05)
            with client:  # nothing listens on 127.0.0.6:1: the emulated relay answers
                assert client.recv(1024).startswith(b"220 mx.cli.test ESMTP")
                client.sendall(b"QUIT\r\n")
                assert client.recv(1024) == b"221 2.0.0 Bye\r\n"

        await asyncio.to_thread(session)
        await wait_until(lambda: any(e["eventid"] == "looper.session.closed" for e in subscriber.events()),
                         what="the session's end at the broker")
        scraped = await asyncio.to_thread(scrape, metrics)
        assert scraped[("looper_sessions_total", (("mode", "emulate"),))] == 1
        trap.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(trap.wait, 15) == 0
    finally:
        trap.kill()
        trap.wait()
    stderr = trap.stderr.read()
    assert "Traceback" not in stderr
    logged = [json.loads(line) for line in (tmp_path / "logs" / "events.jsonl").read_text().splitlines()]
    await wait_until(lambda: len(rsyslog.messages()) >= len(logged), what="rsyslog has every event")
    assert rsyslog.events() == logged == subscriber.events()
    assert {(m[0], m[2]) for m in rsyslog.messages()} == {(str(19 * 8 + 6), "fleet-7")}  # local3.info, the sensor
