#!/usr/bin/env python3
"""Fixtures for the relay fingerprinter: tests/data/mta/<family>.json (not a test).

Run from the repository root:

    python tests/record_mta.py [all|record|build] [--keep]

`build` writes postfix.json, exim.json, sendmail.json and opensmtpd.json from
the recordings (tests/data/postfix, exim, sendmail; tests/data/mta/
opensmtpd_sessions.json) and the source facts in FACTS below (format:
tests/data/mta/README.md). `record` (root) records OpenSMTPD, the one MTA
with no recordings yet; `all` (the default) does both.

Nothing is installed. Debian's opensmtpd package (6.8.0p2-4+b4 in Debian 12)
is fetched with `apt-get download` into WORK and unpacked with `dpkg-deb -x`,
so the system MTA (Postfix) stays as it is: Debian's MTA packages conflict.
Its smtpd runs in the foreground (`smtpd -d -f CONF`) in private mount and
UTS namespaces (`unshare --mount --uts`), where

- the host name is `mail.example.test` (smtpd takes /etc/mailname first, which
  the package's postinst writes from debconf, else gethostname(): see
  getmailname() in smtpd/util.c; if the machine has an /etc/mailname, a copy
  naming mail.example.test is bound over it);
- /etc/passwd and /etc/group are bind-mounted copies that add the package's
  system users opensmtpd and opensmtpq (nothing is added to the real files);
- /var/spool (smtpd's compiled-in queue /var/spool/smtpd) and /var/lib (its
  privsep chroot /var/lib/opensmtpd/empty) are fresh tmpfs mounts;
- /etc/hosts names 127.0.0.7 mail.example.test and /etc/resolv.conf points at
  127.0.0.1, where this script answers every DNS query with NXDOMAIN
  (tests/record_personas.py's NxDns): no traffic leaves 127.0.0.0/8.

The configuration is Debian's /etc/smtpd.conf (from the package) with two
changes: `listen on 127.0.0.7 port 2525` instead of `listen on localhost`, and
the aliases table read from WORK. The client is 127.0.0.8. Groups:

- stock: the package's rules (`match from local for any action "relay"`);
  127.0.0.8 is not "local", so a foreign RCPT is refused: the relay-denied
  reply.
- open: `match from any for any action "relay"` (an open relay, what the trap
  meets), the relay action pointed at `relay host smtp://127.0.0.9:2525`,
  where nothing listens, so nothing is delivered anywhere. DATA with 99 and
  with 100 Received: headers shows where MAX_HOPS_COUNT (100, smtpd.h) acts.
- selfloop: the relay action is `relay host smtp://127.0.0.7:2525`, i.e.
  OpenSMTPD relays the message to itself, and its own mta (delivery) side
  meets its own greeting and EHLO reply on every pass. One message with no
  Received: header is sent; the loop runs until smtpd refuses it. smtpd's
  log shows each pass and how it ended (what a trap in the middle would
  see), and `-T mta` traces what its mta sent and read on the first pass.

Output: tests/data/mta/opensmtpd_sessions.json (every session's exchanges as
tests/record_postfix.py records them, smtpd's log lines, the self-loop's
first pass). Everything is bounded in time; smtpd (its own process group) is
stopped at the end, stragglers by pid, and WORK is removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.record_personas import NxDns  # noqa: E402

HOST = "127.0.0.7"
PORT = 2525
CLIENT = "127.0.0.8"
NOWHERE = "127.0.0.9"           # relay target of the "open" group: nothing listens
MYHOSTNAME = "mail.example.test"
WORK = Path("/tmp/looper-record-mta")
DEBS = WORK / "debs"
ROOT = WORK / "root"
NS = WORK / "ns"
OUT_DIR = REPO / "tests" / "data" / "mta"
SMTPD = ROOT / "usr" / "sbin" / "smtpd"
UID_D, UID_Q = 993, 994         # opensmtpd, opensmtpq inside the namespace

HOSTS = f"""127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
{HOST}\t{MYHOSTNAME} mail
"""


def run(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, **kw)


# ------------------------------------------------------------------ setup
def fetch() -> str:
    DEBS.mkdir(parents=True, exist_ok=True)
    DEBS.chmod(0o777)   # apt's _apt user writes here
    if not list(DEBS.glob("opensmtpd_*.deb")):
        run(["apt-get", "download", "opensmtpd"], timeout=300, cwd=DEBS)
    deb = sorted(DEBS.glob("opensmtpd_*.deb"))[-1]
    if not SMTPD.exists():
        ROOT.mkdir(parents=True, exist_ok=True)
        run(["dpkg-deb", "-x", str(deb), str(ROOT)])
    return run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


def make_namespace() -> None:
    NS.mkdir(parents=True, exist_ok=True)
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    passwd += (f"opensmtpd:x:{UID_D}:{UID_D}:OpenSMTPD Daemon:/var/lib/opensmtpd/empty:"
               "/usr/sbin/nologin\n"
               f"opensmtpq:x:{UID_Q}:{UID_Q}:OpenSMTPD queue user:/var/lib/opensmtpd/empty:"
               "/usr/sbin/nologin\n")
    group += f"opensmtpd:x:{UID_D}:\nopensmtpq:x:{UID_Q}:\n"
    files = {"passwd": passwd, "group": group, "hosts": HOSTS,
             "resolv.conf": "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
             "mailname": MYHOSTNAME + "\n", "aliases": "postmaster: root\n"}
    for name, text in files.items():
        (NS / name).write_text(text)
        (NS / name).chmod(0o644)
    (NS / "run.sh").write_text(f"""#!/bin/sh
# run "$@" in the private mount+UTS namespace made by record_mta.py
hostname {MYHOSTNAME} || exit 111
for f in passwd group hosts resolv.conf; do
    mount --bind {NS}/$f /etc/$f || exit 111
done
# /etc/mailname, if the machine has one, says mail.example.test too; without
# one smtpd takes gethostname(), the same name
if [ -e /etc/mailname ]; then mount --bind {NS}/mailname /etc/mailname || exit 111; fi
mount -t tmpfs -o mode=0755 tmpfs /var/spool || exit 111
mount -t tmpfs -o mode=0755 tmpfs /var/lib || exit 111
mkdir -p /var/spool/smtpd /var/lib/opensmtpd/empty || exit 111
chmod 711 /var/spool/smtpd
exec "$@"
""")
    (NS / "run.sh").chmod(0o755)


def config(group: str) -> Path:
    """Debian's smtpd.conf, as shipped, with the listener and aliases moved."""
    stock = (ROOT / "etc" / "smtpd.conf").read_text()
    conf = stock.replace("table aliases file:/etc/aliases",
                         f"table aliases file:{NS}/aliases")
    conf = conf.replace("\nlisten on localhost\n", f"\nlisten on {HOST} port {PORT}\n")
    if group == "open":
        conf = conf.replace('action "relay" relay\n',
                            f'action "relay" relay host smtp://{NOWHERE}:{PORT}\n')
        conf += 'match from any for any action "relay"\n'
    elif group == "selfloop":
        conf = conf.replace('action "relay" relay\n',
                            f'action "relay" relay host smtp://{HOST}:{PORT}\n')
        conf += 'match from any for any action "relay"\n'
    assert f"listen on {HOST} port {PORT}" in conf and "file:/etc/aliases" not in conf
    path = WORK / f"smtpd-{group}.conf"
    path.write_text(conf)
    path.chmod(0o644)
    return path


class Smtpd:
    def __init__(self, group: str, trace: tuple[str, ...] = ()) -> None:
        self.group = group
        self.trace = trace      # smtpd -T subsystems, e.g. ("mta",)
        self.log = WORK / f"smtpd-{group}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        conf = config(self.group)
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--propagation", "private", str(NS / "run.sh"),
             str(SMTPD), "-d", "-v", *[a for t in self.trace for a in ("-T", t)],
             "-f", str(conf)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((HOST, PORT), timeout=2,
                                              source_address=("127.0.0.99", 0)) as s:
                    s.settimeout(5)
                    s.recv(1024)
                    s.sendall(b"QUIT\r\n")
                    s.recv(1024)
                break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("smtpd did not start:\n" + self.log.read_text(errors="replace"))
            time.sleep(0.2)

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def info_lines(self) -> list[str]:
        """smtpd's own log lines ('<session id> smtp|mta ...') and its loop
        warnings, less -v's debug chatter (all of it is in WORK with --keep)."""
        return info(self.log_lines())

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            # the process group is smtpd's alone (start_new_session)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        deadline = time.monotonic() + 10
        while (left := our_processes()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


def info(log: list[str]) -> list[str]:
    return [ln for ln in log
            if re.match(r"[0-9a-f]{16} (smtp|mta) ", ln) or "oop detected" in ln]


def our_processes() -> list[int]:
    """pids whose executable is the unpacked smtpd under WORK."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if exe.startswith(str(WORK)) and state != "Z":
            pids.append(int(entry))
    return pids


# ----------------------------------------------------------------- client
def replies_done(buf: bytes, n: int) -> bool:
    count = 0
    for line in buf.split(b"\n")[:-1]:
        line = line.rstrip(b"\r")
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b"-":
            continue
        count += 1
    return count >= n


def session(steps: list[tuple[bytes, int]], timeout: float = 15.0) -> list[dict]:
    """One connection from CLIENT: read the greeting, then for each (bytes,
    replies) write the bytes and read that many complete replies (0: wait
    for the close). Returns exchanges like tests/record_postfix.py's."""
    out: list[dict] = []
    with socket.create_connection((HOST, PORT), timeout=timeout,
                                  source_address=(CLIENT, 0)) as s:
        closed = False

        def read(n: int) -> tuple[bytes, float]:
            nonlocal closed
            t0 = time.monotonic()
            buf = b""
            deadline = t0 + timeout
            while not closed and (n == 0 or not replies_done(buf, n)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    chunk = s.recv(65536)
                except (TimeoutError, socket.timeout):
                    break
                except OSError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                buf += chunk
            return buf, round((time.monotonic() - t0) * 1000, 2)

        buf, ms = read(1)
        out.append({"send": "", "recv": buf.decode("latin-1"), "ms": ms, "closed": closed})
        for data, n in steps:
            if closed:
                break
            s.sendall(data)
            buf, ms = read(n)
            out.append({"send": data.decode("latin-1"), "recv": buf.decode("latin-1"),
                        "ms": ms, "closed": closed})
    return out


def C(line: str, n: int = 1) -> tuple[bytes, int]:
    return line.encode("latin-1") + b"\r\n", n


QUIT = (b"QUIT\r\n", 0)
EHLO = C("EHLO client.example.test")
MAIL = C("MAIL FROM:<sender@example.test>")


def message(received: int, subject: str = "looper ground truth") -> bytes:
    hops = b"".join(b"Received: from hop%d.example.net by relay%d.example.net; "
                    b"Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i) for i in range(received))
    return (hops + b"From: sender@example.test\r\nTo: rcpt@example.net\r\n"
            b"Subject: " + subject.encode() + b"\r\nMessage-ID: <mta-"
            + str(received).encode() + b"@example.test>\r\n\r\nHello.\r\n.\r\n")


def scenarios() -> dict[str, list[dict]]:
    rec: dict[str, list[dict]] = {}
    rec["stock/ehlo_quit"] = session([EHLO, QUIT])
    rec["stock/helo_quit"] = session([C("HELO client.example.test"), QUIT])
    rec["stock/relay_denied"] = session([EHLO, MAIL, C("RCPT TO:<rcpt@example.net>"),
                                         C("RCPT TO:<x@elsewhere.test>"), C("DATA"), QUIT])
    return rec


def open_scenarios() -> dict[str, list[dict]]:
    rec: dict[str, list[dict]] = {}
    for n in (0, 99, 100, 101):
        rec[f"open/data_received_{n}"] = session(
            [EHLO, MAIL, C("RCPT TO:<rcpt@example.net>"), C("DATA"),
             (message(n), 1), QUIT])
    return rec


def selfloop(smtpd: Smtpd, timeout: float = 180.0) -> dict:
    """Send one message with no Received: header; OpenSMTPD relays it to
    itself until smtpd refuses it. Returns the evidence from the -v log."""
    start = len(smtpd.log_lines())
    ex = session([EHLO, MAIL, C("RCPT TO:<user@spamtrap.test>"), C("DATA"),
                  (message(0, "self loop"), 1), QUIT])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("Loop detected" in line for line in smtpd.log_lines()[start:]):
            break
        time.sleep(0.5)
    time.sleep(3)   # the bounce and the last deliveries
    all_lines = smtpd.log_lines()[start:]
    # smtpd -T mta: the dialogue of the mta's sessions ("mta: 0x...: >>> EHLO ...");
    # keep the first session's, up to its DATA, as the sample of what it met
    trace_rx = re.compile(r"mta: (0x[0-9a-f]+): (>>>|<<<) ")
    first = next((m.group(1) for ln in all_lines if (m := trace_rx.match(ln))), None)
    sample = []
    for ln in all_lines:
        m = trace_rx.match(ln)
        if m and m.group(1) == first and len(sample) < 40:
            sample.append(ln)
            if ln.endswith(">>> DATA"):
                break
    return {"inject": ex, "mta_trace_first_pass": sample, "log": info(all_lines)}


def summarise_selfloop(loop: dict) -> dict:
    """What the self-loop's smtpd -v log shows. Pass n of the message (the
    n-th time OpenSMTPD's mta hands it to its own smtpd) carries n Received:
    headers on the wire: the injected copy had none, and each smtpd that
    takes it adds one. Returns the passes accepted, the reply that ended
    the loop and the log lines that show it."""
    log = loop["log"]
    peer: dict[str, str] = {}
    passes = 0
    for line in log:
        if m := re.match(r"(\w+) smtp connected address=(\S+)", line):
            peer[m.group(1)] = m.group(2)
        elif m := re.match(r"(\w+) smtp envelope evpid=\w+ from=<sender@example.test> "
                           r"to=<user@spamtrap.test>", line):
            passes += peer.get(m.group(1)) == "127.0.0.1"   # the mta's own connections
    refusal = [ln for ln in log if "failed-command" in ln and "DATA" in ln]
    ended = re.search(r'result="(\d{3}) (.*)"', refusal[0]) if refusal else None
    return {"passes_accepted": passes,
            "refused_pass_received_headers": passes + 1 if ended else None,
            "code": int(ended.group(1)) if ended else None,
            "text": ended.group(2) if ended else None,
            "log_lines": [ln for ln in log if "oop detected" in ln][:6]}



# ------------------------------------------------------------- fixtures
# What the recordings cannot show (the hop-limit ends and the self checks of
# the other three MTAs) comes from their source, cited by file and function:
# Postfix v3.7.11 (github vdukhovni/postfix), Exim exim-4.96 (github
# Exim/exim), sendmail 8.17.1.9 and OpenSMTPD 6.8.0p2 (Debian 12's source
# packages, `apt-get source`). The loop figures for Postfix were confirmed on
# the real trap (see how_recorded).
DATA = REPO / "tests" / "data"

FACTS: dict[str, dict] = {
    "postfix": {
        "version": "3.7.11",
        "package": "postfix 3.7.11-0+deb12u1 (Debian 12)",
        "how_recorded": (
            "greeting, EHLO/HELO, relay-denied and QUIT replies: the real Debian 12 Postfix "
            "3.7.11 (tests/record_postfix.py, private instance with myhostname "
            "mail.example.test on 127.0.0.2:25, client 127.0.0.1); files "
            "tests/data/postfix/ehlo_quit.json, helo.json, relay_denied.json, "
            "relay_denied_reject.json, too_many_hops.json. loop_end and self_detect: "
            "the real Postfix looped through the real trap (tests/test_postfix.py, "
            "trap on 127.0.0.1:25, Postfix myhostname relay.looper.test on 127.0.0.2:25, "
            "message injected over SMTP with no Received: header), with the trap's "
            "events and Postfix's log dumped: with the EHLO name masked the trap saw 49 "
            "passes carrying 1..49 Received: headers, 1..48 answered 250 and the 49th "
            "554; unmasked, Postfix sent EHLO and QUIT and bounced the message. The "
            "source (Postfix v3.7.11) says why, see detail."),
        "relay_denied_variants": {
            "smtpd_relay_restrictions = ... reject_unauth_destination (upstream default; "
            "tests/data/postfix/relay_denied_reject.json)":
                "554 5.7.1 <rcpt@example.net>: Relay access denied",
        },
        "client_ehlo": "EHLO $myhostname (smtp_helo_name, default $myhostname)",
        "loop_end": {
            "limit": {"value": 50, "setting": "hopcount_limit (main.cf; DEF_HOPCOUNT_LIMIT)",
                      "counts": "Received: headers on the wire + the one its smtpd adds",
                      "refused_when": "counted >= 50, i.e. 49 on the wire"},
            "how": "refused", "code": 554, "text": "5.4.0 Error: too many hops",
            "received_hops": 49,
            "detail": (
                "cleanup counts the Received: headers of the message as it takes it in "
                "(src/cleanup/cleanup_message.c, cleanup_header_callback(): hop_count += 1 per "
                "HDR_RECEIVED header, and once hop_count >= var_hopcount_limit it logs "
                "'warning: <queue id>: message rejected: hopcount exceeded' and sets "
                "CLEANUP_STAT_HOPS). The Received: header that Postfix's own smtpd "
                "prepends goes through cleanup too and is counted (cleanup_message.c "
                "keeps it as 'our Received: header' when hop_count == 1), so a message "
                "that crosses the splice with N Received: headers counts N+1. "
                "hopcount_limit is 50 (src/global/mail_params.h DEF_HOPCOUNT_LIMIT; "
                "main.cf hopcount_limit): the pass carrying 49 is refused at the end of "
                "DATA (src/smtpd/smtpd.c, common_post_message_handling(): '%d %s Error: %s' "
                "from cleanup_stat_detail(CLEANUP_STAT_HOPS) = 554 5.4.0 'too many hops', "
                "src/global/cleanup_strerror.c). Measured on the real trap: passes 1..48 "
                "got 250, the 49th got '554 5.4.0 Error: too many hops'; the sending side "
                "(Postfix's smtp) then bounces the message: 'dsn=5.4.0, status=bounced "
                "(host ... said: 554 5.4.0 Error: too many hops (in reply to end of DATA "
                "command))'. This end is only reached when the relay does not see its own "
                "name (the trap masks it, or the relay's smtpd and smtp names differ): "
                "otherwise self_detect ends the loop on the first pass."),
        },
        "self_detect": {
            "where": "ehlo_reply",
            "text": ("warning: host 127.0.0.1[127.0.0.1]:25 replied to HELO/EHLO with my own "
                     "hostname relay.looper.test ... status=bounced (mail for [127.0.0.1]:25 "
                     "loops back to myself)"),
            "detail": (
                "src/smtp/smtp_proto.c, smtp_helo(): the first word of the greeting is "
                "compared with $myhostname, but a match only logs 'warning: host %s greeted "
                "me with my own hostname %s' and the session goes on. The first word of the "
                "first line of the EHLO (or HELO) reply is compared with $myhostname "
                "(strcasecmp): a match logs 'warning: host %s replied to HELO/EHLO with my "
                "own hostname %s' and fails the delivery with 'mail for <nexthop> loops "
                "back to myself', 5.4.6 (bounce) when the server is a best MX "
                "(SMTP_FEATURE_BEST_MX, src/smtp/smtp_connect.c; [host] next hops count as "
                "best) else 4.4.6 (defer, next MX); best_mx_transport can take the mail "
                "instead. The check is on only for SMTP to port 25 "
                "(SMTP_MISC_FLAG_LOOP_DETECT, smtp_connect.c smtp_connect_inet()). On the "
                "wire the trap sees: greeting, 'EHLO <myhostname>', the EHLO reply, 'QUIT' "
                "(Postfix's smtpd logs 'ehlo=1 quit=1 commands=2'); no MAIL. Measured on "
                "the real trap (tests/test_postfix.py, unmasked)."),
        },
    },
    "exim": {
        "version": "4.96",
        "package": "exim4-daemon-light 4.96-15+deb12u10 (Debian 12)",
        "how_recorded": (
            "greeting, EHLO/HELO, relay-denied and QUIT replies: the real Debian 12 Exim "
            "4.96 (tests/record_personas.py: Debian's packages unpacked, stock "
            "configtype=internet config, host name mail.example.test on 127.0.0.3:25, "
            "client 127.0.0.5 without reverse DNS); files tests/data/exim/ehlo_quit.json, "
            "helo.json, relay_denied.json (dc_relay_nets empty), data_received_count.json "
            "(30 Received: headers: 250), too_many_hops_31.json (31: 250), "
            "too_many_hops.json (51: 250). loop_end and self_detect: Exim's source "
            "(exim-4.96: src/src/receive.c, deliver.c, spool_in.c, globals.c, "
            "transports/smtp.c, routers/rf_self_action.c), checked once with the real "
            "daemon (tests/record_personas.py's Exim, queue_only, then 'exim -M <id>'): "
            "a message sent with 29 Received: headers went on to routing ('** "
            "rcpt@example.net: Unrouteable address', no DNS here), one with 30 failed with "
            "'** rcpt@example.net: Too many \"Received\" headers - suspected mail loop'; "
            "both had got '250 OK id=...'. Not looped through the trap. "
            "The greeting's date is the time of the connection."),
        "client_ehlo": "EHLO $primary_hostname (smtp transport helo_data default)",
        "loop_end": {
            "limit": {"value": 30, "setting": "received_headers_max (main option; globals.c)",
                      "counts": "Received: headers on the wire + the one it adds",
                      "refused_when": "never at SMTP time; failed at delivery when counted "
                                      "> 30, i.e. 30 on the wire"},
            "how": "silent", "code": 250, "text": None,   # filled from the recording
            "received_hops": 30,
            "detail": (
                "Exim does not look at the Received: count at SMTP time (except for "
                "cutthrough delivery, off by default: receive.c receive_msg() then answers "
                "'550 Too many \"Received\" headers - suspected mail loop'). receive.c "
                "counts the incoming Received: headers starting from 1 for the one it adds "
                "(received_count = 1; ++ per htype_received header); spool_in.c recounts "
                "the spooled headers, its own included. At delivery, deliver.c "
                "deliver_message(): 'else if (received_count > received_headers_max) "
                "process_recipients = RECIP_FAIL_LOOP', and every recipient fails as a "
                "routing failure with 'Too many \"Received\" headers - suspected mail loop' "
                "(logged '** <rcpt> ...: Too many \"Received\" headers - suspected mail "
                "loop'); a bounce (DSN) goes to the sender, a bounce of a bounce is frozen. "
                "received_headers_max is a main option, default 30 (globals.c). A pass "
                "that crosses the splice with N headers is stored with N+1, so the pass "
                "with 29 is still relayed (with 30), and the pass with 30 is accepted with "
                "'250 OK id=...' and then failed internally: the trap sees passes 1..30, "
                "all accepted, and then nothing more (recorded: 30, 31 and 51 Received: "
                "headers all get 250 at SMTP time)."),
        },
        "self_detect": {
            "where": "none",
            "text": None,
            "detail": (
                "The smtp transport (src/src/transports/smtp.c) never compares the "
                "server's greeting or EHLO reply with primary_hostname. Exim's only other "
                "loop check is by address, before connecting: a router whose chosen host "
                "is the local host applies its 'self' option (routers/rf_self_action.c: "
                "'lowest numbered MX record points to local host' / 'remote host address "
                "is the local host'; dnslookup's default self = freeze). The trap's "
                "address is not the relay's, so nothing fires and the loop runs to "
                "received_headers_max."),
        },
    },
    "sendmail": {
        "version": "8.17.1.9",
        "package": "sendmail-bin 8.17.1.9-2+deb12u2 (Debian 12)",
        "how_recorded": (
            "greeting, EHLO/HELO, relay-denied and QUIT replies: the real Debian 12 sendmail "
            "8.17.1.9 (tests/record_personas.py: Debian's packages unpacked, sendmail.cf "
            "built from Debian's sendmail.mc, $j = mail.example.test on 127.0.0.3:25, "
            "client 127.0.0.5 without reverse DNS, greet_pause 1 s); files "
            "tests/data/sendmail/ehlo_quit.json, helo.json, relay_denied.json (no "
            "'Connect:127 RELAY'), too_many_hops_100.json (101 Received: headers: 250). "
            "loop_end and self_detect: sendmail's source (Debian's sendmail 8.17.1.9-2 "
            "source package: sendmail/deliver.c, headers.c, envelope.c, conf.c, "
            "srvrsmtp.c, usersmtp.c, err.c; debian/cf/domain/debian-mta.m4.in), checked "
            "once with the real daemon (tests/record_personas.py's sendmail, queueonly): "
            "a message with 99 Received: headers got 250 and a queue run tried to relay "
            "it; one with 100 got '250 2.0.0 <qid> Message accepted for delivery' and "
            "the server had already replaced it in the queue with a DSN to the sender: "
            "'(reason: 554 5.4.6 Too many hops)', transcript '554 5.4.6 Too many hops "
            "101 (100 max): from <sender@example.test> via [127.0.0.5], to "
            "<rcpt@example.net>'. The self check was not run. Not looped through the "
            "trap. The greeting has the date and the client's "
            "address and reverse-DNS result."),
        "relay_denied_variants": {
            "client with forward-confirmed reverse DNS (cf/m4/proto.m4 confRELAY_MSG; "
            "not recorded)": "550 5.7.1 <rcpt@example.net>... Relaying denied",
            "reverse DNS does not confirm (proto.m4 R<FORGED>; not recorded)":
                "550 5.7.1 <rcpt@example.net>... Relaying denied. IP name possibly forged "
                "<client name>",
            "with sasl.m4 / _USE_AUTH_ (proto.m4; not recorded)":
                "550 5.7.1 <rcpt@example.net>... Relaying denied. Proper authentication "
                "required.",
        },
        "client_ehlo": "EHLO $j (the canonical host name; HeloName option if set)",
        "loop_end": {
            "limit": {"value": 100, "setting": "MaxHopCount (option h, m4 confMAX_HOP): "
                                                 "100 in Debian's sendmail.cf, 25 upstream",
                      "counts": "trace headers (Received, X400-Received, Via, Mail-From) on "
                                "the wire + the Received: it adds",
                      "refused_when": "never at SMTP time; bounced at delivery when counted "
                                      "> 100, i.e. 100 on the wire (25 upstream)"},
            "how": "silent", "code": 250, "text": None,   # filled from the recording
            "received_hops": 100,
            "detail": (
                "deliver.c sendall(): 'if (e->e_hopcount > MaxHopCount)' the message is "
                "queued and every recipient fails with '554 5.4.6 Too many hops' "
                "(syserr '554 5.4.6 Too many hops %d (%d max): from %s via %s, to %s', "
                "logged as SYSERR and put in the DSN's transcript; the DSN goes to the "
                "sender). e_hopcount is set in headers.c eatheader() (called by collect() "
                "at the end of the headers): one per H_TRACE header (Received, "
                "X400-Received, Via, Mail-From; conf.c HdrInfo), and that includes "
                "sendmail's own Received: (the cf's HReceived: default header, copied into "
                "every new envelope from BlankEnvelope, envelope.c clearenvelope()), so a pass with N "
                "Received: headers on the wire counts N+1. For relayed recipients sendall() "
                "runs in the SMTP server right after DATA (srvrsmtp.c smtp_data(), no "
                "doublequeue), but after 'from now on, we have to operate silently; "
                "buffer_errors()' the error is held, not written: the client gets '250 "
                "2.0.0 <qid> Message accepted for delivery' and the message bounces. "
                "MaxHopCount (option h / O MaxHopCount, m4 confMAX_HOP) is 25 upstream "
                "(conf.c setdefaults(), cf/m4/proto.m4) but 100 in Debian's sendmail.cf "
                "(debian/cf/domain/debian-mta.m4.in: define(`confMAX_HOP', `100')). So a "
                "Debian relay is seen by the trap for passes 1..100, all accepted, the "
                "100th then bounced (upstream default: 1..25). This end is only reached "
                "when the relay does not see its own name: otherwise self_detect ends the "
                "loop on the first pass."),
        },
        "self_detect": {
            "where": "ehlo_reply",
            "text": ("SYSERR(root): <host> config error: mail loops back to me (MX problem?) "
                     "-- recipient fails: 553 5.3.5 system config error"),
            "detail": (
                "usersmtp.c smtpinit(): after a 2xx EHLO (or HELO) reply, the first word "
                "after the code of the reply's first line (SmtpReplyBuffer[4] up to the "
                "first space; reply() keeps the first line) is compared with MyHostName "
                "($j), case-insensitively, unless the mailer has F=k (M_NOLOOPCHECK) or is "
                "LMTP. On a match: syserr('553 5.3.5 %s config error: mail loops back to "
                "me (MX problem?)', CurHostName), mci_setstat(EX_CONFIG, '5.3.5', '553 "
                "5.3.5 system config error'), smtpquit(). The greeting is not checked "
                "(esmtp_check() only looks for 'ESMTP' and '8BIT-OK'). sendmail's EHLO "
                "reply starts '250-<$j> Hello ...', so a trap that splices sendmail to "
                "itself triggers it. On the wire: greeting, 'EHLO <$j>', the EHLO reply, "
                "'QUIT'; nothing of the 553 is sent, it is sendmail's own status. The "
                "recipient fails permanently (EX_CONFIG; the DSN's transcript shows '553 "
                "5.3.5 <host> config error: mail loops back to me (MX problem?)' and "
                "'554 5.3.5 Local configuration error')."),
        },
    },
    "opensmtpd": {
        "how_recorded": (
            "recorded for real by tests/record_mta.py: Debian 12's opensmtpd package "
            "unpacked (not installed), its smtpd run in the foreground (smtpd -d -v) in "
            "private mount/UTS namespaces with host name mail.example.test, Debian's "
            "/etc/smtpd.conf with 'listen on 127.0.0.7 port 2525'; client 127.0.0.8. "
            "Greeting, EHLO, HELO, QUIT and relay denied with the stock rules (127.0.0.8 "
            "is not 'local'); with an open-relay rule, DATA with 99 Received: headers got "
            "250 and with 100 or 101 got the 500; and an open relay relaying to itself "
            "(relay host smtp://127.0.0.7:2525) with one message injected with no "
            "Received: header: its mta met its own greeting and EHLO reply on every pass "
            "and carried on; 99 passes were accepted and the 100th (100 Received: "
            "headers on the wire) was refused. Transcripts and log lines: "
            "tests/data/mta/opensmtpd_sessions.json. Source: OpenSMTPD 6.8.0p2 "
            "(usr.sbin/smtpd/smtp_session.c, smtpd.h, esc.c, mta_session.c, mda.c)."),
        "client_ehlo": "EHLO <hostname> (/etc/mailname, else gethostname(); action 'helo' option)",
        "loop_end": {
            "limit": {"value": 100, "setting": "MAX_HOPS_COUNT (compile time, smtpd.h); "
                                                  "no smtpd.conf setting",
                      "counts": "Received: headers on the wire only (its own is not counted)",
                      "refused_when": "the 100th Received: header on the wire"},
            "how": "refused",
            "detail": (
                "smtp_session.c smtp_tx_dataline(): each incoming 'Received' header "
                "(RFC5322_HEADER_START) does 'if (++tx->rcvcount >= MAX_HOPS_COUNT)' -> log "
                "'warn: loop detected', tx->error = TX_ERROR_LOOP; the rest of the data "
                "is read and dropped and at the final dot smtp_message_end() answers "
                "'500 %s %s: Loop detected' with esc_code(ESC_STATUS_PERMFAIL, "
                "ESC_ROUTING_LOOP_DETECTED) = 5.4.6 and esc_description() = 'Routing loop "
                "detected' (esc.c). MAX_HOPS_COUNT is 100, a compile-time constant "
                "(smtpd.h), not a smtpd.conf setting. Only the client's headers count: "
                "OpenSMTPD writes its own Received: straight to the spool file "
                "(smtp_message_begin()), not through the parser. So the 100th Received: "
                "header on the wire is refused and 99 pass; the trap sees passes 1..100, "
                "the 100th refused (recorded). The sender's mta then logs 'result=\"PermFail\" "
                "stat=\"500 5.4.6 Routing loop detected: Loop detected\"' and bounces to the "
                "sender. Note the code 500, not 554."),
        },
        "self_detect": {
            "where": "none",
            "text": None,
            "detail": (
                "mta_session.c never compares the server's greeting or EHLO reply with its "
                "own name (it only looks at the reply codes and the extensions). Recorded "
                "(smtpd -T mta, opensmtpd_sessions.json selfloop.mta_trace_first_pass): "
                "relaying to its own listener, the mta read '220 mail.example.test ESMTP "
                "OpenSMTPD', sent 'EHLO mail.example.test', read '250-mail.example.test "
                "Hello mail.example.test [127.0.0.1], pleased to meet you' and went on with "
                "MAIL/RCPT/DATA, on every pass; connecting to its own address did not stop "
                "it either. The only other loop check, mda.c mda_check_loop() (a "
                "'Delivered-To:' header equal to the recipient), is for local delivery. So "
                "the loop runs to MAX_HOPS_COUNT."),
        },
    },
}


def transcript(family: str, scenario: str) -> list[dict]:
    return json.loads((DATA / family / f"{scenario}.json").read_text())["exchanges"]


def lines(recv: str) -> list[str]:
    return [ln for ln in recv.split("\r\n") if ln]


def reply_to(exchanges: list[dict], sent: str) -> str:
    for ex in exchanges:
        if ex["send"].startswith(sent):
            return ex["recv"].rstrip("\r\n")
    raise KeyError(sent)


def recorded_fields(family: str) -> dict:
    """greeting, ehlo_reply, helo_reply, relay_denied, quit_reply from the
    recordings in tests/data/<family>/ (or opensmtpd_sessions.json)."""
    if family == "opensmtpd":
        rec = json.loads((OUT_DIR / "opensmtpd_sessions.json").read_text())["recorded"]
        ehlo, helo, denied = rec["stock/ehlo_quit"], rec["stock/helo_quit"], rec["stock/relay_denied"]
    else:
        ehlo, helo = transcript(family, "ehlo_quit"), transcript(family, "helo")
        denied = transcript(family, "relay_denied")
    assert ehlo[1]["send"] == "EHLO client.example.test\r\n"
    return {"greeting": ehlo[0]["recv"].rstrip("\r\n"),
            "ehlo_reply": lines(ehlo[1]["recv"]),
            "helo_reply": reply_to(helo, "HELO "),
            "relay_denied": reply_to(denied, "RCPT TO:<rcpt@example.net>"),
            "quit_reply": reply_to(ehlo, "QUIT")}


def fixture(family: str) -> dict:
    facts = FACTS[family]
    rec = recorded_fields(family)
    loop = dict(facts["loop_end"])
    if family == "exim":
        # the last pass the trap sees carries 30 headers: data_received_count.json
        r = reply_to(transcript("exim", "data_received_count"), "Received: ")
        loop["code"], loop["text"] = int(r[:3]), r[4:]
    elif family == "sendmail":
        r = reply_to(transcript("sendmail", "too_many_hops_100"), "Received: ")
        loop["code"], loop["text"] = int(r[:3]), r[4:]
    elif family == "postfix":
        r = reply_to(transcript("postfix", "too_many_hops"), "Received: ")
        assert (int(r[:3]), r[4:]) == (loop["code"], loop["text"]), r
    if family == "opensmtpd":
        doc = json.loads((OUT_DIR / "opensmtpd_sessions.json").read_text())
        run = doc["recorded"]
        ok = reply_to(run["open/data_received_99"], "Received: ")
        refused = reply_to(run["open/data_received_100"], "Received: ")
        assert ok.startswith("250 ") and refused.startswith("5"), (ok, refused)
        loop_run = summarise_selfloop(run["selfloop"])
        assert loop_run["refused_pass_received_headers"] == 100, loop_run
        assert loop_run["text"] == refused[4:], (loop_run, refused)
        loop.update(code=int(refused[:3]), text=refused[4:], received_hops=100)
        version = re.search(r"opensmtpd (\S+)", doc["package"]).group(1)
        facts = dict(facts, package=doc["package"], version=version.split("-")[0])
    out = {"family": family, "version": facts["version"], "package": facts["package"],
           "how_recorded": facts["how_recorded"],
           "greeting": rec["greeting"], "ehlo_reply": rec["ehlo_reply"],
           "helo_reply": rec["helo_reply"], "relay_denied": rec["relay_denied"]}
    if "relay_denied_variants" in facts:
        out["relay_denied_variants"] = facts["relay_denied_variants"]
    out["loop_end"] = {k: loop[k] for k in ("how", "code", "text", "received_hops", "limit",
                                            "detail")}
    out["self_detect"] = facts["self_detect"]
    out["client_ehlo"] = facts["client_ehlo"]
    out["quit_reply"] = rec["quit_reply"]
    return out


def build() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for family in FACTS:
        path = OUT_DIR / f"{family}.json"
        path.write_text(json.dumps(fixture(family), indent=1, ensure_ascii=False) + "\n")
        print("wrote", path.relative_to(REPO))


# ------------------------------------------------------------------ main
def record(keep: bool) -> int:
    if os.geteuid() != 0:
        print("recording needs root (namespaces, bind mounts)", file=sys.stderr)
        return 2
    version = fetch()
    make_namespace()
    dns = NxDns()
    recorded: dict[str, object] = {}
    try:
        for group, fn in (("stock", scenarios), ("open", open_scenarios)):
            d = Smtpd(group)
            d.start()
            try:
                recorded.update(fn())
            finally:
                d.stop()
            recorded[f"{group}/smtpd_log"] = d.info_lines()
        d = Smtpd("selfloop", trace=("mta",))
        d.start()
        try:
            recorded["selfloop"] = selfloop(d)
        finally:
            d.stop()
    finally:
        dns.close()
        if our_processes():
            print("warning: smtpd processes left:", our_processes(), file=sys.stderr)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    doc = {"package": f"opensmtpd {version} (Debian 12)", "host": f"{HOST}:{PORT}",
           "client": CLIENT, "recorded": recorded}
    (OUT_DIR / "opensmtpd_sessions.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(summarise_selfloop(recorded["selfloop"]), indent=1))
    if not keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="all", choices=("all", "record", "build"),
                    help="record: OpenSMTPD only; build: only the fixtures; all: both")
    ap.add_argument("--keep", action="store_true", help="keep WORK")
    args = ap.parse_args(argv)
    if args.what in ("all", "record"):
        rc = record(args.keep)
        if rc:
            return rc
    if args.what in ("all", "build"):
        build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
