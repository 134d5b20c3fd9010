"""The truth the bait servers are held to: a private Debian Dovecot that
serves looper's own bait (tests/dovecot.py), seen with Python's imaplib and
poplib; and the recordings of it in tests/data/dovecot/ (made by
tests/record_dovecot.py), complete and well formed."""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import re
import ssl
from datetime import datetime
from pathlib import Path

import pytest

from tests.dovecot import PASSWORD, USER, Ports, PrivateDovecot, dovecot_available
from tests.dovecot_recordings import load_recordings, mask
from tests.record_dovecot import VARIANTS, build

DATA = Path(__file__).resolve().parent / "data" / "dovecot"


@pytest.fixture(scope="module")
def needs_dovecot():
    if not dovecot_available():
        if os.environ.get("LOOPER_REQUIRE_DOVECOT") == "1":
            raise RuntimeError("LOOPER_REQUIRE_DOVECOT=1 but Dovecot (dovecot-imapd, dovecot-pop3d, or root) is missing")
        pytest.skip("needs root and Debian's dovecot-imapd and dovecot-pop3d (sudo make test-tools)")


@pytest.fixture(scope="module")
def dovecot(needs_dovecot):
    # Not the recorder's addresses and ports: both may run at once.
    instance = PrivateDovecot("127.0.0.42", Ports(16143, 16993, 16110, 16995), name="looper-test-dovecot")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def stock_dovecot(needs_dovecot):
    instance = PrivateDovecot("127.0.0.43", Ports(17143, 17993, 17110, 17995), plaintext_login=False,
                              name="looper-test-dovecot-stock")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_imaplib_logs_in_and_sees_the_bait_byte_for_byte(dovecot):
    store = dovecot.store
    with imaplib.IMAP4(dovecot.host, dovecot.ports.imap, timeout=30) as imap:
        assert imap.welcome.endswith(b"Dovecot (Debian) ready.")
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\] Authentication failed\."):
            imap.login(USER, "wrong")
        assert imap.login(USER, PASSWORD)[0] == "OK"
        typ, listed = imap.list()
        special = {}
        for line in listed:
            flags, _, name = re.fullmatch(rb'\((.*)\) "(.)" (.+)', line).groups()
            special[name.decode()] = next((f for f in flags.decode().split() if f in
                                           ("\\Sent", "\\Drafts", "\\Archive", "\\Junk")), None)
        assert special == {f.name: f.special_use for f in store.folders}
        for folder in store.folders:
            typ, data = imap.select(folder.name, readonly=True)
            assert int(data[0]) == len(folder.messages)
            assert imap.response("UIDVALIDITY")[1] == [str(folder.uidvalidity).encode()]
            for message in folder.messages:
                typ, data = imap.uid("FETCH", str(message.uid), "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
                meta, content = data[0]
                assert content == message.content
                flags = set(re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode().split())
                assert flags == set(message.flags)
                assert f"RFC822.SIZE {message.size}".encode() in meta
                stamp = re.search(rb'INTERNALDATE "([^"]+)"', meta).group(1).decode().strip()
                assert datetime.strptime(stamp, "%d-%b-%Y %H:%M:%S %z") == message.internaldate
        typ, data = imap.select("INBOX")
        typ, data = imap.search(None, "UNSEEN")
        assert data[0].split() == [str(m.uid).encode() for m in store.inbox.messages if "\\Seen" not in m.flags]


def test_poplib_logs_in_and_sees_the_inbox_byte_for_byte(dovecot):
    inbox = dovecot.store.inbox
    pop = poplib.POP3(dovecot.host, dovecot.ports.pop3, timeout=30)
    try:
        assert pop.getwelcome() == b"+OK Dovecot (Debian) ready."
        pop.user(USER)
        assert pop.pass_(PASSWORD) == b"+OK Logged in."
        assert pop.stat() == (len(inbox.messages), sum(m.size for m in inbox.messages))
        for number, message in enumerate(inbox.messages, 1):
            response, lines, octets = pop.retr(number)
            assert b"\r\n".join(lines) + b"\r\n" == message.content
    finally:
        pop.quit()


def test_stock_settings_refuse_plaintext_login_until_tls(stock_dovecot):
    with imaplib.IMAP4(stock_dovecot.host, stock_dovecot.ports.imap, timeout=30) as imap:
        assert "LOGINDISABLED" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED"):
            imap.login(USER, PASSWORD)
        imap.starttls(no_verify())
        assert imap.login(USER, PASSWORD)[0] == "OK"
    pop = poplib.POP3_SSL(stock_dovecot.host, stock_dovecot.ports.pop3s, timeout=30, context=no_verify())
    try:
        pop.user(USER)
        assert pop.pass_(PASSWORD) == b"+OK Logged in."
    finally:
        pop.quit()


# -- the recordings (no Dovecot needed) ---------------------------------------


def recordings() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DATA.glob("*.json"))}


def test_every_scripted_conversation_is_recorded_in_each_of_its_variants():
    expected = {f"{c.name}.{variant}.json" for c in build(0.0) for variant in c.variants}
    assert set(recordings()) == expected
    assert set(VARIANTS) == {"plaintext", "stock"}


def test_every_recording_is_well_formed():
    for name, doc in recordings().items():
        assert doc["protocol"] in ("imap", "pop3"), name
        assert doc["port"] in ("imap", "imaps", "pop3", "pop3s"), name
        assert doc["variant"] in VARIANTS and name == f"{doc['conversation']}.{doc['variant']}.json"
        assert doc["settings"]["disable_plaintext_auth"] == ("no" if doc["variant"] == "plaintext" else "yes")
        assert doc["client"] != doc["server"].rsplit(":", 1)[0], name  # never a "secured" client
        exchanges = doc["exchanges"]
        assert exchanges and all({"send", "recv", "ms", "closed"} <= set(e) for e in exchanges), name
        greeting = next(e for e in exchanges if "tls" not in e)
        assert greeting["send"] == ""
        assert greeting["recv"].startswith("* OK [CAPABILITY " if doc["protocol"] == "imap" else "+OK Dovecot"), name
        assert greeting["recv"].endswith("Dovecot (Debian) ready.\r\n"), name
        for exchange in exchanges:
            # latin-1 strings of the bytes: every one encodes back
            exchange["send"].encode("latin-1"), exchange["recv"].encode("latin-1")
            assert "error" not in exchange, (name, exchange)


def test_the_store_rebuilt_from_a_recording_is_what_dovecot_served():
    """load_bait(config, bait_now) gives back Dovecot's bytes: a replay needs
    to mask neither dates nor UIDVALIDITY nor sizes."""
    checked = 0
    for recording in load_recordings():
        store = recording.store()
        uidvalidities = {str(f.uidvalidity).encode() for f in store.folders}
        for exchange in recording.exchanges:
            for number in re.findall(rb"UIDVALIDITY (\d+)", exchange.recv):
                assert number in uidvalidities, recording.name
            for number in re.findall(rb"\[APPENDUID (\d+) ", exchange.recv):
                assert number in uidvalidities, recording.name
            if exchange.send == b"a20 FETCH 10 (BODY[])\r\n":
                content = store.inbox.messages[9].content
                assert exchange.recv.startswith(b"* 10 FETCH (FLAGS (\\Seen) BODY[] {%d}\r\n" % len(content) + content + b")\r\n")
                checked += 1
            if exchange.send == b"RETR 6\r\n" and exchange.recv.startswith(b"+OK"):
                content = store.inbox.messages[5].content
                stuffed = re.sub(rb"(?m)^\.", b"..", content)
                assert exchange.recv == b"+OK %d octets\r\n" % len(content) + stuffed + b".\r\n"
                checked += 1
            if exchange.send == b"UIDL\r\n" and exchange.recv.startswith(b"+OK"):
                inbox = store.inbox
                lines = [b"%d %08x%08x" % (i, m.uid, inbox.uidvalidity) for i, m in enumerate(inbox.messages, 1)]
                assert exchange.recv == b"+OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b".\r\n"
                checked += 1
            if exchange.send.startswith(b"a2 FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE"):
                for message in store.inbox.messages:
                    stamp = message.internaldate.strftime("%d-%b-%Y %H:%M:%S +0000").encode()
                    assert b"* %d FETCH (FLAGS (" % message.uid in exchange.recv
                    assert b"UID %d RFC822.SIZE %d INTERNALDATE \"%s\"" % (message.uid, message.size, stamp) \
                        in exchange.recv, (recording.name, message.uid)
                checked += 1
    assert checked >= 4


def test_mask_makes_dovecots_timing_one_token():
    assert mask(b"a1 OK Fetch completed (0.001 + 0.000 secs).\r\n") == b"a1 OK Fetch completed (T secs).\r\n"
    assert mask(b"a1 OK [APPENDUID 1 2] Append completed (0.010 + 0.051 + 0.008 secs).\r\n") == \
        b"a1 OK [APPENDUID 1 2] Append completed (T secs).\r\n"
    assert mask(b"a1 OK Logout completed.\r\n") == b"a1 OK Logout completed.\r\n"


def test_recordings_load_for_replay():
    imap, pop3 = load_recordings(protocol="imap"), load_recordings(protocol="pop3")
    assert imap and pop3 and len(imap) + len(pop3) == len(recordings())
    stock = load_recordings(variant="stock")
    assert stock and all(not r.plaintext_login for r in stock)
    starttls = next(r for r in imap if r.name == "imap_starttls_login.stock")
    assert [e.tls is not None for e in starttls.exchanges] == [False, False, True, False, False, False, False]
    assert all(isinstance(e.send, bytes) and isinstance(e.recv, bytes) for r in imap for e in r.exchanges)
