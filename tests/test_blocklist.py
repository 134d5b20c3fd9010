"""The open-relay blocklist: `looper blocklist` and the live feed of
`looper run`, read by their real consumers: rbldnsd (queried through
aiodns), Postfix (postmap on the cidr: table), and a real loop through a
real Postfix listed live.

Relays here are on 127.0.0.0/8, which `blocklist.never` keeps off the list
by default: the tests say `never: []`. 127.0.0.2 is the RFC 5782 test
entry, listed whatever happens, so the listed relays are on .5 and up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiodns
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.analysis.blocklist import Book, ListingRules
from looper.analysis.timestamps import format_timestamp
from looper.relaysim import RelaySim
from tests.conftest import free_port

RBLDNSD = shutil.which("rbldnsd") or (os.path.exists("/usr/sbin/rbldnsd") and "/usr/sbin/rbldnsd") or None
ZONE = "bl.looper.test"


def needs_rbldnsd() -> None:
    if RBLDNSD is None:
        if os.environ.get("LOOPER_REQUIRE_RBLDNSD") == "1":
            pytest.fail("LOOPER_REQUIRE_RBLDNSD=1 but rbldnsd is missing (sudo make test-tools)")
        pytest.skip("needs rbldnsd (sudo make test-tools)")


# -- the book, sans-IO ------------------------------------------------------------------


def stamp(seconds: float) -> str:
    return format_timestamp(seconds)


def passed(ip: str, when: float, code: int = 250, complete: bool = True, chain: str = "c1",
           sensor: str = "trap-1") -> dict:
    return {"timestamp": stamp(when), "eventid": "looper.reflect.message", "session": "s", "sensor": sensor,
            "protocol": "smtp", "src_ip": ip, "src_port": 1, "dst_ip": "192.0.2.1", "dst_port": 25,
            "mail_from": "a@b.test", "rcpt_to": ["c@d.test"], "transport": "smtp", "size": 10, "sha256": "0" * 64,
            "received_hops": 1, "headers_truncated": False, "message_id": None, "subject": None, "chain": chain,
            "complete": complete, "code": code, "reply": "2.0.0 Ok", "path": None}


def verdict(ip: str, when: float, name: str) -> dict:
    return {"timestamp": stamp(when), "eventid": "looper.relay.verdict", "session": "s", "sensor": "trap-1",
            "protocol": "smtp", "src_ip": ip, "src_port": 1, "dst_ip": "192.0.2.1", "dst_port": 25,
            "relay_ip": ip, "verdict": name, "evidence": "..."}


def delisted(ip: str, when: float) -> dict:
    return {"timestamp": stamp(when), "eventid": "looper.relay.delisted", "session": None, "sensor": "trap-1",
            "protocol": None, "src_ip": None, "src_port": None, "dst_ip": None, "dst_port": None,
            "relay_ip": ip, "reason": "fixed", "requested_by": "root"}


NOW = 1_800_000_000.0
DAY = 86400.0


def listed_ips(book: Book, now: float = NOW) -> list[str]:
    return [listing.ip for listing in book.listed(now)]


def test_an_accepted_pass_lists_a_relay_until_its_evidence_expires():
    book = Book(ListingRules(expire_days=30))
    book.feed(passed("198.51.7.5", NOW - 10 * DAY))
    book.feed(passed("198.51.7.6", NOW - 40 * DAY))  # too old
    book.feed(passed("198.51.7.7", NOW - DAY, code=554))  # refused: proves nothing
    book.feed(passed("198.51.7.8", NOW - DAY, complete=False))  # cut short: no verdict of its server
    assert listed_ips(book) == ["198.51.7.5"]
    [listing] = book.listed(NOW)
    assert listing.expires == NOW + 20 * DAY and listing.passes == 1 and listing.verdict == "open_relay"
    assert listed_ips(book, NOW + 21 * DAY) == []
    book.feed(passed("198.51.7.5", NOW + 22 * DAY))  # seen again: listed again
    assert listed_ips(book, NOW + 23 * DAY) == ["198.51.7.5"]


def test_min_passes_never_and_loop_protected():
    rules = ListingRules(min_passes=2, never=(ipaddress.ip_network("198.51.7.0/28"),))
    book = Book(rules)
    for ip in ("198.51.7.5", "198.51.7.20", "198.51.7.20", "2001:4860::5", "2001:4860::5"):
        book.feed(passed(ip, NOW - 60))
    book.feed(verdict("198.51.7.30", NOW - 60, "loop_protected"))
    assert listed_ips(book) == ["198.51.7.20", "2001:4860::5"]  # IPv4 first, then IPv6
    with_protected = Book(ListingRules(include_loop_protected=True))
    with_protected.feed(verdict("198.51.7.30", NOW - 60, "loop_protected"))
    with_protected.feed(verdict("198.51.7.31", NOW - 60, "refuses_relay"))
    assert [(entry.ip, entry.verdict) for entry in with_protected.listed(NOW)] == [("198.51.7.30", "loop_protected")]


def test_a_delisting_holds_until_new_evidence_and_only_new_passes_count():
    book = Book(ListingRules(min_passes=2))
    book.feed(passed("198.51.7.5", NOW - 300))
    book.feed(passed("198.51.7.5", NOW - 200))
    assert listed_ips(book) == ["198.51.7.5"]
    book.feed(delisted("198.51.7.5", NOW - 100))
    assert listed_ips(book) == []
    book.feed(passed("198.51.7.5", NOW - 50))  # one new pass: not yet min_passes
    assert listed_ips(book) == []
    book.feed(passed("198.51.7.5", NOW - 40))
    assert [(e.ip, e.passes) for e in book.listed(NOW)] == [("198.51.7.5", 2)]


def test_the_book_keeps_its_state_across_a_restart():
    book = Book(ListingRules())
    book.feed(passed("198.51.7.5", NOW - 300, sensor="a"))
    book.feed(passed("198.51.7.5", NOW - 200, sensor="b"))
    book.feed(delisted("198.51.7.9", NOW - 100))
    again = Book(ListingRules())
    again.load(json.loads(json.dumps(book.state())))
    assert again.listed(NOW) == book.listed(NOW)
    assert again.listed(NOW)[0].sensors == ("a", "b")
    again.feed(passed("198.51.7.9", NOW - 150))  # older than its delisting
    assert listed_ips(again) == ["198.51.7.5"]


_FIELDS = st.dictionaries(
    st.sampled_from(["eventid", "timestamp", "src_ip", "relay_ip", "code", "complete", "verdict", "chain", "sensor"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=30), st.booleans(),
              st.sampled_from(["looper.reflect.message", "looper.relay.verdict", "looper.relay.delisted",
                               "loop_protected", "198.51.7.5", "::1", stamp(NOW)])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_FIELDS, max_size=30))
def test_no_record_makes_the_book_raise(records):
    book = Book(ListingRules(include_loop_protected=True))
    for record in records:
        book.feed(record)
    book.listed(NOW)
    book.forget_old(NOW)
    Book(ListingRules()).load(book.state())


# -- the command and its formats --------------------------------------------------------


def write_log(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_config(tmp_path: Path, **blocklist) -> Path:
    config = tmp_path / "looper.yaml"
    config.write_text(yaml.safe_dump({
        "sensor": "trap-1.looper.test", "run_as": None, "log": {"dir": str(tmp_path / "logs")},
        "blocklist": {"never": [], **blocklist},
    }))
    return config


def looper(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "looper", *args], capture_output=True, text=True, timeout=60)


def sample_log(tmp_path: Path) -> Path:
    now = time.time()
    return write_log(tmp_path / "logs", [
        passed("127.0.0.5", now - 120, chain="a"), passed("127.0.0.5", now - 100, chain="a"),
        passed("127.0.0.6", now - 90, code=554),
        passed("::ffff:7f00:7", now - 80),  # an IPv4-mapped address: the IPv4 relay it maps
        passed("2001:4860::5", now - 70),
        passed("127.0.0.1", now - 60), passed("127.0.0.2", now - 60),
        verdict("127.0.0.8", now - 50, "loop_protected"),
    ])


def test_every_format_lists_the_same_relays(tmp_path):
    sample_log(tmp_path)
    config = str(write_config(tmp_path))
    plain = looper("blocklist", "-c", config, "--format", "plain")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == ["127.0.0.1", "127.0.0.2", "127.0.0.5", "127.0.0.7", "2001:4860::5"]
    csv_out = looper("blocklist", "-c", config, "--format", "csv").stdout.splitlines()
    assert csv_out[0] == "ip,verdict,passes,first_evidence,last_evidence,expires,sensors,chain"
    assert csv_out[3].startswith("127.0.0.5,open_relay,2,") and csv_out[4].startswith("127.0.0.7,open_relay,1,") and csv_out[3].endswith(",trap-1,a")
    document = json.loads(looper("blocklist", "-c", config, "--format", "json").stdout)
    assert [e["ip"] for e in document["listed"]] == plain.stdout.split()
    five = document["listed"][2]
    assert five["passes"] == 2 and five["verdict"] == "open_relay"
    assert five["reason"].startswith("127.0.0.5 listed: open relay, last evidence ")
    assert document["rules"] == {"min_passes": 1, "expire_days": 30.0, "include_loop_protected": False,
                                 "never": []}
    two = looper("blocklist", "-c", config, "--format", "plain", "--min-passes", "2").stdout.split()
    assert two == ["127.0.0.5"]
    protected = looper("blocklist", "-c", config, "--format", "plain", "--include", "loop_protected")
    assert "127.0.0.8" in protected.stdout.split()
    sensor = looper("blocklist", "-c", config, "--format", "plain", "--sensor", "elsewhere")
    assert sensor.returncode == 0 and sensor.stdout == ""


def test_the_default_never_list_keeps_private_and_documentation_ranges_off(tmp_path):
    now = time.time()
    write_log(tmp_path / "logs", [passed(ip, now - 10) for ip in ("127.0.0.5", "10.1.2.3", "192.0.2.7", "8.8.4.4")])
    config = tmp_path / "looper.yaml"
    config.write_text(yaml.safe_dump({"log": {"dir": str(tmp_path / "logs")}, "run_as": None}))
    out = looper("blocklist", "-c", str(config), "--format", "plain")
    assert out.returncode == 0 and out.stdout.split() == ["8.8.4.4"]


def test_bad_arguments_say_what_is_wrong_in_one_line(tmp_path):
    sample_log(tmp_path)
    config = str(write_config(tmp_path))
    for args, said in ((["--min-passes", "0"], "--min-passes"), (["--expire-days", "-1"], "--expire-days"),
                       (["--format", "bind"], "--format"), (["--include", "refuses_relay"], "--include"),
                       (["--delist", "not-an-ip"], "not an IP address")):
        out = looper("blocklist", "-c", config, *args)
        assert out.returncode == 2 and said in out.stderr, (args, out.stderr)
    bad = write_config(tmp_path, value="10.0.0.2")
    out = looper("blocklist", "-c", str(bad))
    assert out.returncode == 2 and "blocklist.value" in out.stderr and "127.0.0.0/8" in out.stderr
    bad = write_config(tmp_path, txt="{who} is bad")
    out = looper("blocklist", "-c", str(bad))
    assert out.returncode == 2 and "blocklist.txt" in out.stderr and "{who}" in out.stderr


def test_the_postfix_table_is_read_by_postfix(tmp_path):
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    if not os.path.exists(postmap):
        if os.environ.get("LOOPER_REQUIRE_POSTFIX") == "1":
            pytest.fail("LOOPER_REQUIRE_POSTFIX=1 but postmap is missing")
        pytest.skip("needs Postfix's postmap (sudo make test-tools)")
    sample_log(tmp_path)
    table = tmp_path / "relays.cidr"
    out = looper("blocklist", "-c", str(write_config(tmp_path)), "--format", "postfix", "-o", str(table))
    assert out.returncode == 0, out.stderr

    # A configuration of its own: postmap reads main.cf, and this machine
    # may have none (Postfix installed unconfigured) or a real one.
    settings = tmp_path / "postfix"
    settings.mkdir()
    (settings / "main.cf").write_text("compatibility_level = 3.6\n")

    def ask(ip: str) -> subprocess.CompletedProcess:
        return subprocess.run([postmap, "-c", str(settings), "-q", ip, f"cidr:{table}"], capture_output=True,
                              text=True, timeout=30)

    five = ask("127.0.0.5")
    assert five.returncode == 0, five.stderr
    assert five.stdout.startswith("REJECT 127.0.0.5 listed: open relay, last evidence ")
    assert ask("2001:4860::5").stdout.startswith("REJECT 2001:4860::5 listed: open relay")
    assert ask("127.0.0.6").returncode == 1  # refused relaying: not listed
    assert ask("127.0.0.9").returncode == 1
    assert "warning" not in five.stderr.lower()


# -- rbldnsd ------------------------------------------------------------------------------


class Rbldnsd:
    """A private rbldnsd on 127.0.0.1 serving one zone from one file,
    checking it for changes every second."""

    def __init__(self, folder: Path, zone_file: Path) -> None:
        self.folder = folder
        self.zone_file = zone_file
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> "Rbldnsd":
        self.process = subprocess.Popen(
            [RBLDNSD, "-n", "-b", f"127.0.0.1/{self.port}", "-w", str(self.zone_file.parent),
             "-c", "1", "-t", "60", f"{ZONE}:combined:{self.zone_file.name}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        return self

    def stop(self) -> str:
        assert self.process is not None
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out

    async def ask(self, ip: str, kind: str = "A", timeout: float = 5.0) -> list[str] | None:
        """The answers for `ip` in the zone (None: NXDOMAIN), retrying while
        rbldnsd is still loading (it refuses or does not answer yet)."""
        resolver = aiodns.DNSResolver(nameservers=[f"127.0.0.1:{self.port}"], timeout=0.5, tries=1)
        name = f"{ipaddress.ip_address(ip).reverse_pointer.rsplit('.', 2)[0]}.{ZONE}"
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    result = await resolver.query_dns(name, kind)
                except aiodns.error.DNSError as err:
                    if err.args[0] == aiodns.error.ARES_ENOTFOUND:
                        return None
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                return [_value(record.data) for record in result.answer]
        finally:
            await resolver.close()


def _value(data) -> str:
    if hasattr(data, "addr"):
        return data.addr
    text = data.data
    return text.decode() if isinstance(text, bytes) else str(text)


class RbldnsdFolder:
    """Where rbldnsd's zones go: a folder of its own that rbldnsd's user can
    read (started as root, rbldnsd runs as the rbldns user, and pytest's
    tmp_path is root's alone)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="looper-rbldnsd-"))
        self.folder.chmod(0o755)
        self.servers: list[Rbldnsd] = []

    def serve(self, zone_file: Path) -> Rbldnsd:
        assert zone_file.parent == self.folder
        server = Rbldnsd(self.folder, zone_file).start()
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def rbldnsd():
    needs_rbldnsd()
    folder = RbldnsdFolder()
    yield folder
    folder.close()


async def wait_until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_rbldnsd_serves_the_zone(tmp_path, rbldnsd):
    sample_log(tmp_path)
    zone = rbldnsd.folder / "relays.zone"
    out = looper("blocklist", "-c", str(write_config(tmp_path)), "--format", "rbldnsd", "-o", str(zone))
    assert out.returncode == 0, out.stderr
    server = rbldnsd.serve(zone)
    assert await server.ask("127.0.0.5") == ["127.0.0.2"]
    [text] = await server.ask("127.0.0.5", "TXT")
    assert text.startswith("127.0.0.5 listed: open relay, last evidence ") and "accepted loop passes: 2" in text
    assert await server.ask("2001:4860::5") == ["127.0.0.2"]
    [text] = await server.ask("2001:4860::5", "TXT")
    assert text.startswith("2001:4860::5 listed: open relay")
    assert await server.ask("127.0.0.6") is None  # refused relaying
    assert await server.ask("127.0.0.9") is None
    # RFC 5782: the test entries answer, 127.0.0.1 never (although it looped here).
    assert await server.ask("127.0.0.2") == ["127.0.0.2"]
    assert await server.ask("::ffff:7f00:2") == ["127.0.0.2"]
    assert await server.ask("127.0.0.1") is None
    assert "error" not in server.stop().lower()


async def test_rbldnsd_stops_answering_from_a_zone_nobody_renews(tmp_path, rbldnsd):
    sample_log(tmp_path)
    zone = rbldnsd.folder / "relays.zone"
    out = looper("blocklist", "-c", str(write_config(tmp_path, stale_after=3)), "-o", str(zone))
    assert out.returncode == 0, out.stderr
    server = rbldnsd.serve(zone)
    assert await server.ask("127.0.0.5") == ["127.0.0.2"]

    async def stale() -> bool:
        try:
            return await server.ask("127.0.0.5", timeout=0.1) is None
        except aiodns.error.DNSError:
            return True  # refused or unanswered: no listing either

    assert await wait_until(stale, timeout=15), "rbldnsd still answers from a stale zone"


# -- the live feed ------------------------------------------------------------------------

LOOP_RELAY = "127.0.0.5"
MESSAGE = (b"From: <spam@sender.test>\r\nTo: <user@spamtrap.test>\r\nSubject: listed\r\n"
           b"Message-ID: <bl-1@sender.test>\r\n\r\nHello.\r\n")


async def loop_through(start_trap, feed: Path, hop_limit: int = 4, **trap_options):
    relay = RelaySim(LOOP_RELAY, 0, trap=("127.0.0.1", 0), hop_limit=hop_limit)
    await relay.start()
    try:
        trap = await start_trap(relay.port, blocklist={"file": str(feed), "never": [], **trap_options})
        relay.trap = (trap.host, trap.port)
        await relay.inject("spam@sender.test", "user@spamtrap.test", MESSAGE)
        assert await relay.wait_idle(30), relay
        await trap.quiet()
    finally:
        await relay.stop()
    return trap


async def file_lists(path: Path, ip: str, timeout: float = 10.0) -> str | None:
    async def listed():
        text = path.read_text() if path.exists() else ""
        return text if any(line.split()[:1] == [ip] for line in text.splitlines()) else None

    return await wait_until(listed, timeout)


async def test_the_live_feed_lists_a_looping_relay_after_its_evidence_is_logged(start_trap, tmp_path):
    feed = tmp_path / "feed" / "relays.txt"
    feed.parent.mkdir()
    trap = await loop_through(start_trap, feed, format="plain")
    text = await file_lists(feed, LOOP_RELAY)
    assert text is not None, "the relay was never listed"
    # The evidence was in the log before the listing: read it only now.
    accepted = trap.events.of("looper.reflect.message", src_ip=LOOP_RELAY, code=250)
    assert accepted
    assert text.split() == [LOOP_RELAY]
    assert not [p for p in feed.parent.iterdir() if p.name != feed.name], "a temporary file was left behind"
    state = json.loads((tmp_path / "logs" / "blocklist.state.json").read_text())
    assert [e["ip"] for e in state["entries"]] == [LOOP_RELAY]


async def test_delisting_by_hand_reaches_the_running_trap_and_a_restart(start_trap, tmp_path):
    feed = tmp_path / "feed" / "relays.zone"
    feed.parent.mkdir()
    trap = await loop_through(start_trap, feed)  # rbldnsd, the default format
    assert await file_lists(feed, LOOP_RELAY)
    config = write_config(tmp_path, file=str(feed))
    delist = await asyncio.to_thread(looper, "blocklist", "-c", str(config), "--delist", LOOP_RELAY,
                                     "--reason", "operator fixed the relay")
    assert delist.returncode == 0, delist.stderr
    assert "running trap" in delist.stdout
    [event] = await trap.events.wait_for("looper.relay.delisted")
    assert (event["relay_ip"], event["reason"]) == (LOOP_RELAY, "operator fixed the relay")
    assert event["requested_by"]

    async def gone():
        return LOOP_RELAY not in [line.split()[0] for line in feed.read_text().splitlines() if line[:1].isdigit()]

    assert await wait_until(gone)
    assert not list((tmp_path / "logs" / "delist").iterdir())
    await trap.trap.stop()
    # Started again: still delisted, and `looper blocklist` over the log agrees.
    trap_again = await start_trap(free_port("127.0.0.5"), blocklist={"file": str(feed), "never": []})
    await asyncio.sleep(1.5)
    assert LOOP_RELAY not in feed.read_text()
    out = looper("blocklist", "-c", str(config), "--format", "plain")
    assert out.returncode == 0 and LOOP_RELAY not in out.stdout.split()
    await trap_again.trap.stop()


def test_delisting_with_no_trap_running_is_logged_for_later_runs(tmp_path):
    sample_log(tmp_path)
    config = str(write_config(tmp_path))
    out = looper("blocklist", "-c", config, "--delist", "127.0.0.5")
    assert out.returncode == 0, out.stderr
    assert "no trap is running" in out.stdout
    last = json.loads((tmp_path / "logs" / "events.jsonl").read_text().splitlines()[-1])
    assert (last["eventid"], last["relay_ip"], last["reason"]) == ("looper.relay.delisted", "127.0.0.5", None)
    assert "127.0.0.5" not in looper("blocklist", "-c", config, "--format", "plain").stdout.split()


async def test_a_live_zone_from_a_looping_relay_is_answered_by_rbldnsd(start_trap, tmp_path, rbldnsd):
    feed = rbldnsd.folder / "relays.zone"
    await loop_through(start_trap, feed)
    assert await file_lists(feed, LOOP_RELAY)
    server = rbldnsd.serve(feed)
    assert await server.ask(LOOP_RELAY) == ["127.0.0.2"]
    [text] = await server.ask(LOOP_RELAY, "TXT")
    assert text.startswith(f"{LOOP_RELAY} listed: open relay")


async def test_a_real_postfix_looped_through_the_trap_is_listed_live_and_rbldnsd_answers(start_trap, tmp_path,
                                                                                           rbldnsd):
    """The whole way: Debian's Postfix, an open relay on 127.0.0.9, loops a
    message through the trap (ehlo_name: mask, so it loops to its hop
    limit); the trap lists it in its live zone; rbldnsd answers for it."""
    from tests.postfix import PrivatePostfix, postfix_available

    if not postfix_available():
        if os.environ.get("LOOPER_REQUIRE_POSTFIX") == "1":
            pytest.fail("LOOPER_REQUIRE_POSTFIX=1 but Postfix (or root, or iproute2) is missing")
        pytest.skip("needs root and Debian's Postfix (sudo make test-tools)")
    relay_ip = "127.0.0.9"
    postfix = PrivatePostfix(tmp_path, relay_ip=relay_ip, trap_host="127.0.0.1", trap_port=25)
    await asyncio.to_thread(postfix.start)
    try:
        feed = rbldnsd.folder / "relays.zone"
        trap = await start_trap(25, listen_port=25, splice={"ehlo_name": "mask"},
                                blocklist={"file": str(feed), "never": [], "zone": {"name": ZONE}})
        await asyncio.to_thread(postfix.inject, "spam@sender.test", "user@spamtrap.test", MESSAGE)
        await asyncio.to_thread(postfix.wait_log, r"too many hops", 60)
        zone_text = await file_lists(feed, relay_ip)
        assert zone_text is not None, "the looping Postfix was never listed"
        passes = len(trap.events.of("looper.reflect.message", src_ip=relay_ip, code=250))
        server = rbldnsd.serve(feed)
        assert await server.ask(relay_ip) == ["127.0.0.2"]
        [text] = await server.ask(relay_ip, "TXT")
        assert text.startswith(f"{relay_ip} listed: open relay, last evidence ")
        listed_passes = int(text.rsplit("accepted loop passes: ", 1)[1].split()[0])
        assert 1 <= listed_passes <= passes  # the zone may have been written before the last passes
        assert await server.ask("127.0.0.1") is None
        # For the record (pytest -s shows it): the zone and rbldnsd's answer.
        print(zone_text, f"\nrbldnsd: {relay_ip} -> 127.0.0.2, TXT {text!r}")
    finally:
        await asyncio.to_thread(postfix.stop)
