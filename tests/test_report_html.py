"""`looper report --format html`: one self-contained page, checked as text
and in a real headless Chromium.

The document comes from a made-up but realistic log (`rich_records`):
relays of every verdict, loop chains with every end, hop-limit peaks at 25
(sendmail), 30 (Exim) and 50 (Postfix), credentials on three protocols and
captured mail, with hostile texts where an attacker writes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from looper.analysis.core import Analysis
from looper.analysis.html import CHAIN_ROWS, CSP, RELAY_ROWS, SCRIPT, STYLE, TOP_RELAYS, render_html
from looper.analysis.report import build_report
from looper.analysis.timestamps import format_timestamp

# -- a made-up log -----------------------------------------------------------------------

START = 1_790_000_000.0  # 2026-09-21T14:13:20Z
DAYS = 3
HOSTILE_SUBJECT = "<script>alert(1)</script>"
HOSTILE_USER = 'admin"onmouseover="alert(2)'
HOSTILE_PASSWORD = '"><img src=x onerror=alert(3)>'
HOSTILE_HELO = "<svg/onload=alert(4)>"
HOSTILE_SENDER = '"<iframe src=https://evil.example/>"@spam.test'
HOSTILE_GREETING = 'evil.example ESMTP <b>Postfix</b> & "friends"'

POSTFIX = "mx{n}.example.net ESMTP Postfix (Debian/GNU)"
EXIM = "mail{n}.example.org ESMTP Exim 4.96 Mon, 21 Sep 2026 14:00:00 +0000"
SENDMAIL = "relay{n}.example.com ESMTP Sendmail 8.17.1.9/8.17.1.9/Debian-2; Mon, 21 Sep 2026 14:00:00 GMT"
OPENSMTPD = "smtp{n}.example.info ESMTP OpenSMTPD"
ANON = "mail{n}.example.biz ESMTP ready"


class Log:
    """Events as the trap logs them, at made-up times, sorted at the end."""

    def __init__(self, seed: int = 8) -> None:
        self.rng = random.Random(seed)
        self.events: list[tuple[float, int, dict]] = []
        self.serial = 0
        self.chains = 0
        self.addresses = 0

    def address(self) -> str:
        self.addresses += 1
        n = self.addresses
        if n % 7 == 0:
            return f"2001:db8:{n:x}::25"
        return f"{(203, 198, 192)[n % 3]}.{(0, 51, 0)[n % 3]}.{(113, 100, 2)[n % 3]}.{n % 250 + 1}"

    def chain_id(self) -> str:
        self.chains += 1
        return f"{self.chains:08x}-loop"

    def _add(self, when: float, sid: str, ip: str, eventid: str, sensor: str, protocol: str, **fields) -> None:
        record = {"timestamp": format_timestamp(when), "eventid": eventid, "session": sid, "sensor": sensor,
                  "protocol": protocol, "src_ip": ip, "src_port": 40000 + len(self.events) % 20000,
                  "dst_ip": "192.0.2.1", "dst_port": 25, **fields}
        self.events.append((when, len(self.events), record))

    def session_id(self) -> str:
        self.serial += 1
        return f"{self.serial:012x}"

    def reflected(self, ip: str, when: float, greeting: str, *, passes=(), helo: str | None = None,
                  rcpt: tuple[int, str] | None = None, quit_early=False, tls=False, close="closed",
                  sensor="trap-a") -> None:
        """One reflected session: `passes` are (chain, hops, code, reply, complete, subject)."""
        sid = self.session_id()
        name = greeting.split(" ", 1)[0]
        t = when

        def add(eventid, **fields):
            nonlocal t
            t += 0.05
            self._add(t, sid, ip, eventid, sensor, "smtp", **fields)

        add("looper.session.connect")
        add("looper.dialback.ok", target=f"{ip}:25", connect_ms=3.2)
        add("looper.reflect.greeting", code=220, text=greeting, pregreet_bytes=0)
        add("looper.reflect.helo", verb="EHLO", name=helo or name, code=250, reply=f"{name} Hello")
        add("looper.reflect.ehlo_reply", name=name, masked_as=None,
            extensions=["PIPELINING", "SIZE 10240000", "ETRN", "8BITMIME"])
        if quit_early:
            add("looper.reflect.command", verb="QUIT")
        elif tls:
            add("looper.reflect.tls", direction="client")
        elif rcpt is not None:
            add("looper.reflect.mail", address="bounce@spam.test", params=[], code=250, reply="2.1.0 Ok")
            add("looper.reflect.rcpt", address="victim@spamtrap.test", params=[], code=rcpt[0], reply=rcpt[1])
            add("looper.reflect.command", verb="QUIT")
        for chain, hops, code, reply, complete, subject in passes:
            add("looper.reflect.mail", address="bounce@spam.test", params=[], code=250, reply="2.1.0 Ok")
            add("looper.reflect.rcpt", address="victim@spamtrap.test", params=[], code=250, reply="2.1.5 Ok")
            add("looper.reflect.message", chain=chain, received_hops=hops, code=code, reply=reply,
                complete=complete, size=2400 + 60 * hops, sha256="0" * 64, mail_from="bounce@spam.test",
                rcpt_to=["victim@spamtrap.test"], transport="data", headers_truncated=False,
                message_id=f"<{chain}@spam.test>", subject=subject)
        add("looper.session.closed", mode="reflect", reason=close, duration=t - when, bytes_in=4000,
            bytes_out=900)

    def loop(self, ip: str, greeting: str, start: float, last_hops: int, end: tuple[int, str] | None = None,
             *, first_hops: int = 1, accepted: str = "2.0.0 Ok: queued", cut=None, tls=False,
             subject: str = "Your parcel is waiting", every=(20, 90)) -> float:
        """A loop through one relay: accepted passes up to `last_hops`, then
        the relay's `end` reply on one more pass (or silence, a cut pass,
        a TLS pass). Returns the time of its last event."""
        chain = self.chain_id()
        t = start
        for hops in range(first_hops, last_hops + 1):
            self.reflected(ip, t, greeting, passes=[(chain, hops, 250, accepted, True, subject)])
            t += self.rng.uniform(*every)
        if end is not None:
            self.reflected(ip, t, greeting, passes=[(chain, last_hops + 1, end[0], end[1], True, subject)])
        elif cut is not None:
            self.reflected(ip, t, greeting, passes=[(chain, last_hops + 1, None, None, False, subject)], close=cut)
        elif tls:
            self.reflected(ip, t, greeting, tls=True)
        return t

    def emulated(self, ip: str, when: float, protocol: str, *, helo: str | None = None,
                 logins=(), messages=(), sensor="trap-b") -> None:
        sid = self.session_id()
        t = when

        def add(eventid, **fields):
            nonlocal t
            t += 0.2
            self._add(t, sid, ip, eventid, sensor, protocol, **fields)

        add("looper.session.connect")
        add("looper.dialback.failed", target=f"{ip}:25", reason="refused", detail="connection refused")
        if helo is not None:
            add("looper.smtp.helo", verb="EHLO", name=helo, claims_our_name=False, reserved_name=False)
        for user, password, ok in logins:
            add("looper.login.success" if ok else "looper.login.failed", mechanism="PLAIN", username=user,
                password=password, **({} if ok else {"reason": "bad credentials"}))
        for sender, rcpts, subject in messages:
            add("looper.smtp.message", mail_from=sender, rcpt_to=rcpts, size=1800, subject=subject, username=None)
        add("looper.session.closed", mode="emulate", reason="closed_by_client", duration=t - when, bytes_in=900,
            bytes_out=700)

    def records(self) -> list[dict]:
        return [record for _, _, record in sorted(self.events, key=lambda e: (e[0], e[1]))]


def rich_records(seed: int = 8, *, short_chains: int = 320) -> list[dict]:
    log = Log(seed)
    rng = log.rng
    end_of_input = START + DAYS * 86400

    def when(margin: float = 6 * 3600) -> float:
        return START + rng.uniform(0, DAYS * 86400 - margin)

    # Postfix: `554 5.4.0 Error: too many hops` on the pass with 50 Received: headers.
    for n in range(14):
        ip = log.address()
        for _ in range(rng.choice((1, 1, 2, 3))):
            log.loop(ip, POSTFIX.format(n=n), when(), 49, (554, "5.4.0 Error: too many hops"))
    # Postfix with hop_count_limit turned down (or up) by its admin.
    for n, limit in enumerate((20, 40, 40, 75)):
        log.loop(log.address(), POSTFIX.format(n=100 + n), when(), limit - 1, (554, "5.4.0 Error: too many hops"))
    # Exim: accepts its 30th pass, bounces the next copy inside: silence (inferred).
    for n in range(10):
        ip = log.address()
        for _ in range(rng.choice((1, 2, 2))):
            log.loop(ip, EXIM.format(n=n), when(), 30, accepted="OK id=1tX4bK-000Abc-2D")
    # ... and one that says so.
    log.loop(log.address(), EXIM.format(n=50), when(), 29,
             (550, 'Too many "Received" headers - suspected mail loop'), accepted="OK id=1tX4bK-000Abc-2E")
    # sendmail: silent after its 25th hop (inferred), or `loops back to me` at once.
    for n in range(8):
        ip = log.address()
        for _ in range(rng.choice((1, 2))):
            log.loop(ip, SENDMAIL.format(n=n), when(), 25, accepted="2.0.0 4AB7xYz1 Message accepted for delivery")
    for n in range(3):
        log.loop(log.address(), SENDMAIL.format(n=20 + n), when(), 1,
                 (553, f"5.3.5 relay{20 + n}.example.com. config error: mail loops back to me (MX problem?)"))
    # OpenSMTPD: refuses at 100 hops.
    for n in range(2):
        log.loop(log.address(), OPENSMTPD.format(n=n), when(), 99, (550, "5.7.0 Routing loop detected: Loop detected"),
                 accepted="2.0.0 6b3a1f7e Message accepted for delivery", every=(5, 20))
    # Other ends: refused, TLS, our caps, silence short of any limit, still going.
    for n in range(4):
        log.loop(log.address(), ANON.format(n=n), when(), rng.randint(2, 9),
                 (550, "5.7.1 Message rejected as spam by content filter"))
    for n in range(3):
        log.loop(log.address(), POSTFIX.format(n=200 + n), when(), rng.randint(2, 6), tls=True)
    for n, reason in enumerate(("max_bytes", "max_seconds", "idle")):
        log.loop(log.address(), ANON.format(n=10 + n), when(), rng.randint(3, 12), cut=reason)
    log.loop(log.address(), HOSTILE_GREETING, when(), 4, subject=HOSTILE_SUBJECT)
    for n in range(5):
        log.loop(log.address(), ANON.format(n=20 + n), when(), rng.randint(3, 15))
    for n in range(4):
        log.loop(log.address(), EXIM.format(n=60 + n), end_of_input - rng.uniform(200, 400), rng.randint(1, 3),
                 every=(20, 40))
    # Spam cannons: many short chains each, all of which fall silent.
    cannons = [log.address() for _ in range(max(1, short_chains // 8))]
    for n in range(short_chains):
        log.loop(cannons[n % len(cannons)], ANON.format(n=300 + n % len(cannons)), when(), rng.randint(1, 3),
                 subject=f"Re: invoice {rng.randint(1000, 9999)}")

    # Relays that do not relay.
    for n in range(10):  # loop protected: quit on their own name
        ip = log.address()
        for _ in range(rng.randint(1, 4)):
            log.reflected(ip, when(), POSTFIX.format(n=400 + n), quit_early=True)
    for n in range(12):  # refuse the recipient
        greeting = (POSTFIX, EXIM, SENDMAIL)[n % 3].format(n=500 + n)
        reply = ("5.7.1 <victim@spamtrap.test>: Relay access denied", "relay not permitted",
                 "5.7.1 <victim@spamtrap.test>... Relaying denied")[n % 3]
        log.reflected(log.address(), when(), greeting, rcpt=(554 if n % 3 == 0 else 550, reply))
    for n in range(8):  # talk, start nothing
        log.reflected(log.address(), when(), ANON.format(n=600 + n), helo=f"client{n}.probe.test")

    # The emulated side: dial-back refused; logins and messages.
    pairs = [("admin", "admin"), ("root", "123456"), ("test", "test"), ("info", "info2024"),
             ("postmaster", "password"), (HOSTILE_USER, HOSTILE_PASSWORD), ("user", "qwerty")]
    subjects = ["Your account is suspended", "Invoice #4471 overdue", HOSTILE_SUBJECT, "Re: shipment",
                "Bitcoin opportunity", "invoice\u202efdp.exe", "\x1b[31mred alert\x1b[0m", "bad \ud800 surrogate"]
    helos = ["spambot", "WIN-7H2KQ3", "localhost", HOSTILE_HELO, "mail.example.com"]
    senders = ["promo@bulk.test", "noreply@phish.test", HOSTILE_SENDER, ""]
    domains = ["example.org", "victim.test", "mailinator.test", "corp.example"]
    for n in range(25):
        ip = log.address()
        for _ in range(rng.randint(1, 6)):
            protocol = rng.choice(("smtp", "smtp", "imap", "pop3"))
            logins = [(*rng.choice(pairs), rng.random() < 0.1) for _ in range(rng.randint(0, 5))]
            messages = []
            if protocol == "smtp" and rng.random() < 0.6:
                messages = [(rng.choice(senders), [f"u{rng.randint(1, 30)}@{rng.choice(domains)}"],
                             rng.choice(subjects)) for _ in range(rng.randint(1, 4))]
            log.emulated(ip, when(0), protocol, helo=rng.choice(helos) if protocol == "smtp" else None,
                         logins=logins, messages=messages)
    return log.records()


def offline(records) -> Analysis:
    analysis = Analysis()
    for record in records:
        analysis.feed(record)
    analysis.finish()
    return analysis


_DOCUMENTS: dict = {}


def rich_document(**options) -> dict:
    key = tuple(sorted(options.items()))
    if key not in _DOCUMENTS:
        _DOCUMENTS[key] = build_report(offline(rich_records(**options)))
    return json.loads(json.dumps(_DOCUMENTS[key]))  # a copy a test may change


# -- reading a page ------------------------------------------------------------------------

VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                  "wbr"})


class Page(HTMLParser):
    """A strict reading of a page: every element closed, in order; the
    tags, attributes, script and style text; `rect.bar` per chart."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.doctype = None
        self.bars: dict[str, int] = {}
        self.svg: str | None = None
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.problems.append(f"never closed: {self.stack}")

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def _element(self, tag: str, attrs: list) -> dict:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "svg":
            self.svg = attributes.get("id") or "(no id)"
            self.bars.setdefault(self.svg, 0)
        if tag == "rect" and "bar" in (attributes.get("class") or "").split():
            if self.svg is None:
                self.problems.append("a bar outside any chart")
            else:
                self.bars[self.svg] += 1
        return attributes

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._element(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self._element(tag, attrs)
        if self.svg is None and tag not in VOID:
            self.problems.append(f"<{tag}/> outside SVG")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            if tag in self.stack:
                del self.stack[self.stack.index(tag):]
            return
        self.stack.pop()
        if tag == "svg":
            self.svg = None

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)
        elif self.stack and self.stack[-1] == "style":
            self.styles.append(data)
        else:
            self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attributes for name, attributes in self.tags if name == tag]


def expected_bars(document: dict) -> dict[str, int]:
    summary = document["summary"]
    return {
        "verdicts-bar": sum(1 for n in summary["verdicts"].values() if n),
        "ends-bar": sum(1 for n in summary["chain_ends"].values() if n),
        "hop-histogram": len(document["hop_histogram"]),
        "passes-over-time": len(document["passes_over_time"]),
        "top-relays-chart": min(TOP_RELAYS, sum(1 for r in document["relays"] if r["passes"])),
    }


# -- the page as text ----------------------------------------------------------------------------


def test_the_document_has_everything_the_page_shows():
    document = rich_document()
    assert set(document["summary"]["verdicts"]) == {"open_relay", "refuses_relay", "loop_protected", "probe_only",
                                                    "unreachable"}
    assert set(document["summary"]["chain_ends"]) == {"hop_limit", "self_detected", "refused", "tls_opaque",
                                                      "capped", "vanished", "ongoing"}
    histogram = document["hop_histogram"]
    peaks = sorted(histogram, key=lambda hops: -histogram[hops])[:3]
    assert sorted(peaks, key=int) == ["25", "30", "50"]
    assert len(document["chains"]) > CHAIN_ROWS
    assert {"smtp", "imap", "pop3"} <= set(document["credentials"])
    assert document["captured"]["messages"] > 0


def test_the_page_is_well_formed_html5():
    document = rich_document()
    text = render_html(document)
    page = Page(text)
    assert page.problems == []
    assert page.doctype == "DOCTYPE html"
    assert [t for t, _ in page.tags].count("html") == 1 and page.all("html")[0]["lang"] == "en"
    assert page.all("meta")[0] == {"charset": "utf-8"}
    ids = [a["id"] for _, a in page.tags if "id" in a]
    assert len(ids) == len(set(ids)), "ids are unique"
    anchors = {a["href"][1:] for a in page.all("a")}
    assert anchors <= set(ids), "every link in the page points into it"
    text.encode("utf-8")  # a lone surrogate from the log is not carried into the page


def test_every_hostile_text_is_escaped():
    text = render_html(rich_document())
    page = Page(text)
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'admin"onmouseover' not in text and "admin&quot;onmouseover=&quot;alert(2)" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(3)&gt;" in text
    assert "&lt;svg/onload=alert(4)&gt;" in text
    assert "&lt;b&gt;Postfix&lt;/b&gt; &amp; &quot;friends&quot;" in text
    # As the browser reads it: the texts are text, never elements or attributes.
    words = "".join(page.text)
    assert HOSTILE_SUBJECT in words and HOSTILE_USER in words and HOSTILE_PASSWORD in words
    assert page.all("script") == [{}] and page.scripts == [SCRIPT]
    assert page.all("img") == [] and page.all("iframe") == [] and "<b>Postfix" not in text
    assert not [(t, a) for t, a in page.tags for name in a if name.startswith("on")]
    # Control and direction-changing characters are shown, not obeyed.
    assert "invoice\\u202efdp.exe" in words and "\\x1b[31mred alert" in words
    assert "\u202e" not in text and "\x1b" not in text
    assert "bad \ufffd surrogate" in words


def test_the_page_fetches_nothing():
    text = render_html(rich_document())
    page = Page(text)
    assert page.all("link") == [] and page.all("img") == [] and page.all("object") == []
    for tag, attributes in page.tags:
        for name in ("src", "href", "action", "srcset", "xlink:href", "data", "poster"):
            value = attributes.get(name)
            assert value is None or (name == "href" and value.startswith("#")), (tag, name, value)
        assert "url(" not in (attributes.get("style") or "")
    assert "url(" not in "".join(page.styles) and "@import" not in "".join(page.styles)
    for tag in re.findall(r"<[a-zA-Z][^>]*>", text):  # the markup (texts from the log hold no `<`)
        assert not re.search(r"\b(src|href|action)\s*=\s*[\"']?\s*(https?:|//|file:|data:)", tag, re.I), tag
        assert "http://" not in tag and "https://" not in tag, tag
    # And the browser is told so: nothing but this style and this script.
    [csp] = [m["content"] for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp == CSP and csp.startswith("default-src 'none';")
    for source, directive in ((STYLE, "style-src"), (SCRIPT, "script-src")):
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp
    assert page.styles == [STYLE]


def test_each_chart_has_a_bar_per_value():
    document = rich_document()
    page = Page(render_html(document))
    expected = expected_bars(document)
    assert page.bars == expected
    assert expected["hop-histogram"] == 7 and expected["passes-over-time"] == 48 and expected["top-relays-chart"] == 15
    bars = [a for t, a in page.tags if t == "rect" and "bar" in a.get("class", "")]
    assert all(float(a["height"]) >= 0 and float(a["width"]) > 0 for a in bars)
    # The known limits are drawn, and the bars at them are the MTA's colour.
    labels = "".join(page.text)
    assert "sendmail 25" in labels and "Exim 30" in labels and "Postfix 49" in labels
    lines = [a["class"] for a in page.all("line") if "reference" in a.get("class", "")]
    assert lines == ["reference mta-sendmail", "reference mta-exim", "reference mta-postfix", "reference mta-sendmail"]
    hop_bars = [a["class"] for a in page.all("rect") if "bar" in a.get("class", "").split()][
        expected["verdicts-bar"] + expected["ends-bar"]:][: expected["hop-histogram"]]
    # (the made-up Postfix loops end at 50, a hop past where the real one does)
    assert hop_bars == ["bar", "bar mta-sendmail", "bar mta-exim", "bar", "bar", "bar", "bar mta-sendmail"]


def test_tables_show_verdicts_fingerprints_and_the_busiest_chains():
    document = rich_document()
    text = render_html(document)
    page = Page(text)
    relay_rows = text.split('id="relay-table"')[1].split("</table>")[0].count("<tr>") - 1
    assert relay_rows == len(document["relays"]) < RELAY_ROWS
    chain_table = text.split('id="chain-table"')[1].split("</table>")[0]
    assert chain_table.count("<tr>") - 1 == CHAIN_ROWS
    assert f"Showing the {CHAIN_ROWS} chains with the most passes of {len(document['chains'])}" in text
    passes = [int(p) for p in re.findall(r'<td class="num" data-sort="(\d+)">[\d,]+</td><td class="num" '
                                         r'data-sort="\d+">[\d,]+ →', chain_table)]
    assert len(passes) == CHAIN_ROWS and passes == sorted(passes, reverse=True)
    assert passes[0] == max(c["passes"] for c in document["chains"])
    badges = [a["class"] for a in page.all("span") if "badge" in a.get("class", "")]
    for verdict in document["summary"]["verdicts"]:
        assert f"badge v-{verdict}" in badges
    for end in document["summary"]["chain_ends"]:
        assert f"badge e-{end}" in badges
    # A fingerprint: family and version, its evidence as tooltip and details.
    assert "exim 4.96</summary>" in text
    assert 'title="greeting names Exim' in text and "<li>greeting names Exim</li>" in text
    assert "Postfix&#x27;s hop limit reply" in text
    assert '<span class="tag">inferred</span>' in text
    for section in ("credentials", "captured", "activity"):
        assert f'<section id="{section}">' in text
    assert "Nothing yet" not in text


def test_an_empty_log_says_nothing_yet():
    document = build_report(offline([]))
    text = render_html(document)
    page = Page(text)
    assert page.problems == []
    assert page.all("svg") == [] and page.all("rect") == []
    assert text.count('class="empty"') == 10
    assert "Nothing yet: no loop has ended at a hop limit." in text


def test_an_odd_document_still_renders():
    document = rich_document()
    document["hop_histogram"] = {"12": 3, "not a number": 2}
    document["relays"][0].update(verdict="something_new", mta=None, evidence=None, passes=None)
    document["chains"][0].update(end=None, duration="x", subject=None)
    document["passes_over_time"] = [{"start": "garbage", "passes": 5}]
    document["captured"]["subjects"] = None
    page = Page(render_html(document))
    assert page.problems == []
    assert page.bars["hop-histogram"] == 1 and page.bars["passes-over-time"] == 1


def test_looper_report_writes_the_page(tmp_path):
    from looper.cli import main

    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rich_records(short_chains=16)))
    out = tmp_path / "report.html"
    assert main(["report", "--format", "html", "-o", str(out), str(log)]) == 0
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert page.problems == []
    assert page.bars["hop-histogram"] == 7
    assert str(log) in "".join(page.text)


# -- in a real browser -----------------------------------------------------------------------

CHROMIUM_TIMEOUT = 90  # seconds for one browser run, start to exit
# No network, no profile left behind, nothing started but the page.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-extensions", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-breakpad", "--metrics-recording-only", "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    "--hide-scrollbars", "--disable-dev-shm-usage",
)


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def chromium() -> str:
    found = chromium_binary()
    if found is None:
        if os.environ.get("LOOPER_REQUIRE_CHROMIUM") == "1":
            pytest.fail("LOOPER_REQUIRE_CHROMIUM=1 but chromium is missing (sudo make test-tools)")
        pytest.skip("needs Debian's chromium (sudo make test-tools)")
    return found


@pytest.fixture
def report_page(tmp_path) -> tuple[dict, Path]:
    document = rich_document()
    page = tmp_path / "report.html"
    page.write_text(render_html(document), encoding="utf-8")
    return document, page


def _stop(process: subprocess.Popen) -> None:
    """Ends the browser and everything it started (its own process group)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # any helper left in the group
    except ProcessLookupError:
        pass
    process.wait(5)


def console_problems(stderr: str) -> list[str]:
    """What the page wrote to the console, as Chromium logs it on stderr
    (the level is not shown there; the page logs nothing at all, so any
    console line is a problem), and uncaught exceptions."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_chromium_renders_the_charts_with_their_bars(chromium, report_page, tmp_path):
    """`--dump-dom` and `--screenshot`: the DOM after the page ran, as the
    browser built it, with the bars in their charts."""
    document, page = report_page
    screenshot = tmp_path / "report.png"
    stderr = tmp_path / "chromium.err"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
             "--v=0", "--dump-dom", f"--screenshot={screenshot}", "--window-size=1400,3000", page.as_uri()],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        try:
            dom, _ = process.communicate(timeout=CHROMIUM_TIMEOUT)
        finally:
            _stop(process)
    log = stderr.read_text(errors="replace")
    assert process.returncode == 0, log[-3000:]
    assert console_problems(log) == []
    built = Page(dom.decode())
    assert built.bars == expected_bars(document)
    assert "sendmail 25" in "".join(built.text)
    # The script ran: it made the headers keyboard-focusable.
    headers = built.all("th")
    assert headers and all(h.get("tabindex") == "0" for h in headers)
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    assert png[16:24] == (1400).to_bytes(4, "big") + (3000).to_bytes(4, "big")  # IHDR: width, height
    if os.environ.get("LOOPER_REPORT_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["LOOPER_REPORT_SCREENSHOT"])


_ON_FDS_3_AND_4 = """
import fcntl, os, sys
given = [int(sys.argv[1]), int(sys.argv[2])]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 5) for fd in given]  # out of the way of 3 and 4
for fd in given:
    os.close(fd)
os.dup2(high[0], 3)
os.dup2(high[1], 4)
for fd in high:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


class DevTools:
    """Chromium's DevTools protocol over `--remote-debugging-pipe`: JSON
    messages ended by NUL, commands into the browser's fd 3, replies and
    events out of its fd 4. Stdlib only."""

    def __init__(self, binary: str, profile: Path, stderr) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # A tiny Python puts the pipes on fds 3 and 4, then becomes the browser.
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ON_FDS_3_AND_4, str(commands_read), str(replies_write), binary,
             *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "--enable-logging=stderr", "--v=0", "about:blank"],
            pass_fds=(commands_read, replies_write), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            start_new_session=True)
        os.close(commands_read)
        os.close(replies_write)
        self.deadline = time.monotonic() + CHROMIUM_TIMEOUT
        self.buffer = b""
        self.serial = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.send("Browser.close")
                self.process.wait(10)
        except (OSError, TimeoutError, EOFError, subprocess.TimeoutExpired, RuntimeError):
            pass
        finally:
            _stop(self.process)
            os.close(self._commands)
            os.close(self._replies)

    def _receive(self) -> dict:
        import select

        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._replies], [], [], left)
            if ready:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed its DevTools pipe")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.serial += 1
        message = {"id": self.serial, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self.serial:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._receive())

    def evaluate(self, expression: str, session: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


def test_chromium_loads_the_page_without_errors_or_fetches(chromium, report_page, tmp_path):
    """Through the DevTools protocol: no console error, no exception, no
    request but the file itself; the bars are in the DOM; the hostile texts
    ran nothing; a click on a header sorts the table."""
    document, page = report_page
    with open(tmp_path / "chromium.err", "wb") as stderr:
        browser = DevTools(chromium, tmp_path / "profile", stderr)
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", {}, session)
            # An alert the page's texts might smuggle in would be counted here.
            browser.send("Page.addScriptToEvaluateOnNewDocument", {
                "source": "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"
            }, session)
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": 1400, "height": 3000, "deviceScaleFactor": 1, "mobile": False}, session)
            navigated = browser.send("Page.navigate", {"url": page.as_uri()}, session)
            assert "errorText" not in navigated, navigated
            browser.wait_for("Page.loadEventFired")
            counts = browser.evaluate(
                "JSON.stringify(Object.fromEntries(Array.from(document.querySelectorAll('svg.chart'))"
                ".map(svg => [svg.id, svg.querySelectorAll('rect.bar').length])))", session)
            sizes = browser.evaluate(
                "JSON.stringify(Array.from(document.querySelectorAll('#hop-histogram rect.bar'))"
                ".map(r => { const b = r.getBoundingClientRect(); return [b.width, b.height]; }))", session)
            alerts = browser.evaluate("JSON.stringify(window.__alerts)", session)
            scripts = browser.evaluate("document.scripts.length", session)
            # Sort the relay table by passes, smallest first, by a click.
            order = browser.evaluate(
                "(() => { const table = document.getElementById('relay-table');"
                " const th = Array.from(table.tHead.rows[0].cells).find(c => c.textContent === 'passes');"
                " th.click();"
                " const cells = Array.from(table.tBodies[0].rows).map(r => r.cells[th.cellIndex].dataset.sort);"
                " return JSON.stringify([th.getAttribute('aria-sort'), cells.map(Number)]); })()", session)
            screenshot = browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        finally:
            browser.close()
    events = browser.events
    problems = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    problems += [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled"
                 and e["params"].get("type") in ("error", "assert", "warning")]
    problems += [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"
                 and e["params"]["entry"].get("level") in ("error", "warning")]
    assert problems == []
    requested = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert requested == [page.as_uri()]
    assert json.loads(counts) == expected_bars(document)
    assert all(width > 0 for width, _ in json.loads(sizes)), "bars are drawn"
    assert max(height for _, height in json.loads(sizes)) > 100
    assert json.loads(alerts) == [] and scripts == 1
    sort, passes = json.loads(order)
    assert sort == "ascending" and passes == sorted(passes) and len(passes) == len(document["relays"])
    png = base64.b64decode(screenshot)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == (1400).to_bytes(4, "big") + (3000).to_bytes(4, "big")
