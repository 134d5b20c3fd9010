#!/usr/bin/env python3
"""Record ground truth from the real Debian 12 Exim 4.96 and sendmail 8.17 (not a test).

Run as root from the repository root:

    python tests/record_personas.py [--persona exim|sendmail ...] [--only NAME ...]
                                    [--no-nmap] [--keep]

Nothing is installed: the Debian packages (exim4-daemon-light, exim4-base,
exim4-config, libidn12; sendmail-bin, sendmail-base, sendmail-cf; m4) are
fetched with `apt-get download` into WORK and unpacked with `dpkg-deb -x`, so
the system MTA (Postfix) stays as it is. Each daemon runs in the foreground in
private mount and UTS namespaces (`unshare --mount --uts`) where

- the host name is `mail.example.test` (so both MTAs derive their own names
  the way they do on a real box: Exim's primary_hostname, sendmail's $j);
- /etc/passwd and /etc/group are bind-mounted copies that add the system
  users the packages would have created (Debian-exim; smmta, smmsp);
- /etc/hosts is a copy that names 127.0.0.3 mail.example.test, 127.0.0.6
  client.example.net, and gives example.test and example.net addresses, so
  that the test envelope's domains resolve;
- /etc/resolv.conf points at 127.0.0.1, where this script answers every DNS
  query with NXDOMAIN (no DNS traffic leaves 127.0.0.0/8; a client address
  without a hosts entry has no reverse DNS, like most spam sources).

The configuration is the package's own: Exim's from Debian's
exim4.conf.template with the macros update-exim4.conf would write for
dc_eximconfig_configtype=internet; sendmail's from Debian's
cf/debian/sendmail.mc (OSTYPE debian, DOMAIN debian-mta, greet_pause,
delay_checks, access_db, ...) through m4 with the paths moved into WORK.
The changes from stock, per settings group, are listed in each JSON file's
"settings". Both listen on 127.0.0.3:25; delivery is off (Exim queue_only,
sendmail DeliveryMode=queueonly), which no SMTP client can see.

Scenarios are tests/record_postfix.py's (same Step/Scenario scripts, same
client code, same JSON format), less the Postfix/Dovecot specific ones, plus
some of our own (see build_extra()). One connection per scenario, from
127.0.0.5 (no reverse DNS) unless CLIENTS says otherwise. Output:
tests/data/<persona>/<scenario>.json:

    {"scenario": name, "description": "...", "<persona>_version": "...",
     "settings": {group overrides}, "client": "127.0.0.5",
     "exchanges": [...]}   (exchanges exactly as record_postfix.py documents)

and tests/data/<persona>/nmap.txt (`nmap -n -sV`, `-sC`, `--version-trace`
against 127.0.0.3:25). Everything is bounded in time; the daemons are stopped
at the end (by pid) and WORK is removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tests.record_postfix as rp  # noqa: E402
from tests.record_postfix import C, QUIT, R, TLS, WAIT, Scenario, long_line  # noqa: E402

HOST = "127.0.0.3"
CLIENT = "127.0.0.5"          # no hosts entry: no reverse DNS
MYHOSTNAME = "mail.example.test"
WORK = Path("/tmp/looper-record-personas")
NS = WORK / "ns"
DEBS = WORK / "debs"
ROOT = {"exim": WORK / "root-exim", "sendmail": WORK / "root-sendmail", "m4": WORK / "root-m4"}
PACKAGES = {"exim": ["exim4-daemon-light", "exim4-base", "exim4-config", "libidn12"],
            "sendmail": ["sendmail-bin", "sendmail-base", "sendmail-cf"],
            "m4": ["m4"]}
SASL_USER = rp.SASL_USER
SASL_PASS = rp.SASL_PASS
EXIM_UID = 990          # Debian-exim inside the namespace
SMMTA_UID, SMMSP_UID = 991, 992

HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
127.0.0.3\tmail.example.test mail
127.0.0.6\tclient.example.net
127.0.0.10\texample.test
127.0.0.11\texample.net
"""

# Scenarios sent from another source address.
CLIENTS = {"greeting_rdns": "127.0.0.6", "greeting_localhost": "127.0.0.1"}


# ------------------------------------------------------------------ setup
def run(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, **kw)


def fetch_packages() -> None:
    """apt-get download + dpkg-deb -x into WORK (nothing is installed)."""
    DEBS.mkdir(parents=True, exist_ok=True)
    DEBS.chmod(0o777)   # apt's _apt user writes here
    for key, pkgs in PACKAGES.items():
        if ROOT[key].exists():
            continue
        missing = [p for p in pkgs if not list(DEBS.glob(f"{p}_*.deb"))]
        if missing:
            run(["apt-get", "download", *missing], timeout=300, cwd=DEBS)
        ROOT[key].mkdir(parents=True)
        for p in pkgs:
            deb = sorted(DEBS.glob(f"{p}_*.deb"))[-1]
            run(["dpkg-deb", "-x", str(deb), str(ROOT[key])])


def deb_version(pkg: str) -> str:
    deb = sorted(DEBS.glob(f"{pkg}_*.deb"))[-1]
    return run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


def make_namespace_files() -> None:
    NS.mkdir(parents=True, exist_ok=True)
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    passwd += (f"Debian-exim:x:{EXIM_UID}:{EXIM_UID}::/var/spool/exim4:/usr/sbin/nologin\n"
               f"smmta:x:{SMMTA_UID}:{SMMTA_UID}:Mail Transfer Agent,,,:/var/lib/sendmail:"
               "/usr/sbin/nologin\n"
               f"smmsp:x:{SMMSP_UID}:{SMMSP_UID}:Mail Submission Program,,,:/var/lib/sendmail:"
               "/usr/sbin/nologin\n")
    group += (f"Debian-exim:x:{EXIM_UID}:\nsmmta:x:{SMMTA_UID}:\nsmmsp:x:{SMMSP_UID}:\n")
    (NS / "passwd").write_text(passwd)
    (NS / "group").write_text(group)
    (NS / "hosts").write_text(HOSTS)
    (NS / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (NS / "run.sh").write_text(f"""#!/bin/sh
# run "$@" in the private mount+UTS namespace set up by record_personas.py
hostname {MYHOSTNAME} || exit 111
for f in passwd group hosts resolv.conf; do
    mount --bind {NS}/$f /etc/$f || exit 111
done
exec "$@"
""")
    (NS / "run.sh").chmod(0o755)
    for p in NS.iterdir():
        if p.name != "run.sh":
            p.chmod(0o644)


def ns_argv(argv: list[str]) -> list[str]:
    return ["unshare", "--mount", "--uts", "--propagation", "private",
            str(NS / "run.sh"), *argv]


def self_signed(dir_: Path, name: str) -> tuple[Path, Path]:
    crt, key = dir_ / f"{name}.crt", dir_ / f"{name}.key"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-subj", f"/CN={MYHOSTNAME}", "-keyout", str(key), "-out", str(crt)])
    key.chmod(0o640)
    return crt, key


# --------------------------------------------------------------- mini DNS
class NxDns:
    """Answers every query on 127.0.0.1:53 (UDP and TCP) with NXDOMAIN."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.stop_evt = threading.Event()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.bind(("127.0.0.1", 53))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", 53))
        self.tcp.listen(16)
        self.threads = [threading.Thread(target=self._udp, daemon=True),
                        threading.Thread(target=self._tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def answer(self, q: bytes) -> bytes | None:
        if len(q) < 12:
            return None
        # question section: labels, then qtype+qclass
        i, labels = 12, []
        while i < len(q) and q[i] != 0:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode("latin-1"))
            i += 1 + n
        end = i + 5
        qtype = int.from_bytes(q[i + 1:i + 3], "big") if end <= len(q) else 0
        self.queries.append(f"{'.'.join(labels)} type {qtype}")
        flags = 0x8000 | (q[2] & 0x79) << 8 | 0x0080 | 3   # QR, opcode+RD kept, RA, NXDOMAIN
        return q[:2] + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00" + q[12:end]

    def _udp(self) -> None:
        self.udp.settimeout(0.5)
        while not self.stop_evt.is_set():
            try:
                q, addr = self.udp.recvfrom(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            a = self.answer(q)
            if a:
                self.udp.sendto(a, addr)

    def _tcp(self) -> None:
        self.tcp.settimeout(0.5)
        while not self.stop_evt.is_set():
            try:
                c, _ = self.tcp.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                c.settimeout(2)
                ln = int.from_bytes(c.recv(2), "big")
                q = b""
                while len(q) < ln:
                    chunk = c.recv(ln - len(q))
                    if not chunk:
                        break
                    q += chunk
                a = self.answer(q)
                if a:
                    c.sendall(len(a).to_bytes(2, "big") + a)
            except OSError:
                pass
            finally:
                c.close()

    def close(self) -> None:
        self.stop_evt.set()
        for t in self.threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


# ----------------------------------------------------------------- daemons
class Daemon:
    """A daemon run in the foreground in the namespace; stopped by pid."""

    persona = ""

    def __init__(self, group: str, settings: dict[str, str]) -> None:
        self.group = group
        self.settings = settings
        self.dir = WORK / self.persona / group
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        self.prepare()
        log = open(self.dir / "daemon.out", "wb")
        self.proc = subprocess.Popen(ns_argv(self.argv()), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((HOST, 25), timeout=2,
                                         source_address=("127.0.0.99", 0)).close()
                break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = (self.dir / "daemon.out").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"{self.persona} did not start: {out}")
            time.sleep(0.2)
        time.sleep(1.5)  # let the probe connection's child go away

    def stop(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        # children (per-connection processes) of ours: by pid, found by exe
        deadline = time.monotonic() + 10
        while True:
            left = our_processes()
            if not left or time.monotonic() > deadline:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
            rp.reap()
        rp.reap()


def our_processes() -> list[int]:
    """pids whose executable is one of the unpacked binaries under WORK."""
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


# -------------------------------------------------------------------- Exim
EXIM_AUTH = r"""
plain_server:
  driver = plaintext
  public_name = PLAIN
  server_condition = "${if crypteq{$auth3}{${extract{1}{:}{${lookup{$auth2}lsearch{CONFDIR/passwd}{$value}{*:*}}}}}{1}{0}}"
  server_set_id = $auth2
  server_prompts = :
  .ifndef AUTH_SERVER_ALLOW_NOTLS_PASSWORDS
  server_advertise_condition = ${if eq{$tls_in_cipher}{}{}{*}}
  .endif

login_server:
  driver = plaintext
  public_name = LOGIN
  server_prompts = "Username:: : Password::"
  server_condition = "${if crypteq{$auth2}{${extract{1}{:}{${lookup{$auth1}lsearch{CONFDIR/passwd}{$value}{*:*}}}}}{1}{0}}"
  server_set_id = $auth1
  .ifndef AUTH_SERVER_ALLOW_NOTLS_PASSWORDS
  server_advertise_condition = ${if eq{$tls_in_cipher}{}{}{*}}
  .endif
"""

# group -> (update-exim4.conf.conf-like settings and macros, main options)
EXIM_GROUPS: dict[str, dict[str, str]] = {
    "default": {},
    "timeout5": {"smtp_receive_timeout": "5s"},
    "size10000": {"MESSAGE_SIZE_LIMIT": "10000"},
    # Debian's own default dc_relay_nets (empty: 127.0.0.1 and ::1 only);
    # our client is 127.0.0.5.
    "relay_denied": {"dc_relay_nets": ""},
    # Debian's example plain_server/login_server authenticators, passwords
    # allowed in the clear...
    "auth": {"authenticators": "plain_server, login_server (Debian example)",
             "AUTH_SERVER_ALLOW_NOTLS_PASSWORDS": "1"},
    # ...and as shipped: advertised only under TLS.
    "auth_tls": {"authenticators": "plain_server, login_server (Debian example)"},
}


class Exim(Daemon):
    persona = "exim"

    def conf(self) -> str:
        s = self.settings
        template = (ROOT["exim"] / "etc/exim4/exim4.conf.template").read_text()
        relay_nets = s.get("dc_relay_nets", "127.0.0.0/8")
        relay_nets = f"{relay_nets} : 127.0.0.1 : ::::1"
        # what update-exim4.conf seeds for configtype internet
        macros = "".join(f".ifndef {k}\n{k}={v}\n.endif\n" for k, v in [
            ("MAIN_LOCAL_INTERFACES", HOST),
            ("MAIN_PACKAGE_VERSION", deb_version("exim4-config")),
            ("MAIN_LOCAL_DOMAINS", "@:localhost"),
            ("MAIN_RELAY_TO_DOMAINS", ""),
            ("ETC_MAILNAME", MYHOSTNAME),
            ("LOCAL_DELIVERY", "mail_spool"),
            ("MAIN_RELAY_NETS", relay_nets),
            ("DCreadhost", ""), ("DCsmarthost", ""),
            ("DC_eximconfig_configtype", "internet"),
            ("DCconfig_internet", "1")])
        # exim4.conf.localmacros
        local = (f"CONFDIR = {self.dir}\nSPOOLDIR = {self.dir}/spool\n"
                 + "".join(f"{k} = {v}\n" for k, v in s.items() if k.isupper()))
        main = (f"exim_path = {ROOT['exim']}/usr/sbin/exim4\n"
                f"log_file_path = {self.dir}/log/%slog\n"
                "daemon_smtp_ports = 25\n"
                "queue_only = true\n"
                + "".join(f"{k} = {v}\n" for k, v in s.items() if k.islower() and "_" in k
                          and not k.startswith("dc_")))
        assert "exim_path = /usr/sbin/exim4\n" in template
        conf = template.replace("exim_path = /usr/sbin/exim4\n", main, 1)
        conf = conf.replace("UPEX4CmacrosUPEX4C = 1\n", "UPEX4CmacrosUPEX4C = 1\n" + macros, 1)
        if "authenticators" in s:
            conf = conf.replace("begin authenticators\n", "begin authenticators\n" + EXIM_AUTH, 1)
        return local + conf

    def prepare(self) -> None:
        for d in ("spool", "log"):
            (self.dir / d).mkdir()
            os.chown(self.dir / d, EXIM_UID, EXIM_UID)
            (self.dir / d).chmod(0o750)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import crypt as _crypt
            hashed = _crypt.crypt(SASL_PASS, "$6$looperlooper$")
        (self.dir / "passwd").write_text(f"{SASL_USER}:{hashed}:{SASL_PASS}\n")
        (self.dir / "exim4.conf").write_text(self.conf())
        env = {"LD_LIBRARY_PATH": str(ROOT["exim"] / "usr/lib/x86_64-linux-gnu")}
        check = subprocess.run(ns_argv(self.exim() + ["-bV"]), capture_output=True, text=True,
                               timeout=30, env={**os.environ, **env}, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            raise RuntimeError(f"exim -bV: {check.stdout}{check.stderr}")

    def exim(self) -> list[str]:
        return [str(ROOT["exim"] / "usr/sbin/exim4"), "-C", str(self.dir / "exim4.conf")]

    def argv(self) -> list[str]:
        return ["env", f"LD_LIBRARY_PATH={ROOT['exim']}/usr/lib/x86_64-linux-gnu",
                *self.exim(), "-bdf"]

    @staticmethod
    def version() -> str:
        return f"Exim 4.96 (Debian exim4-daemon-light {deb_version('exim4-daemon-light')})"


# ---------------------------------------------------------------- sendmail
SENDMAIL_GROUPS: dict[str, dict[str, str]] = {
    "default": {"access": "Connect:127 RELAY"},
    "timeout5": {"access": "Connect:127 RELAY", **{f"confTO_{t}": "5s" for t in (
        "COMMAND", "HELO", "MAIL", "RCPT", "DATAINIT", "DATABLOCK", "RSET", "MISC")}},
    "size10000": {"access": "Connect:127 RELAY", "confMAX_MESSAGE_SIZE": "10000"},
    "relay_denied": {"access": ""},
    # Debian's /etc/mail/tls/starttls.m4 included, with a self-signed cert.
    "tls": {"access": "Connect:127 RELAY", "starttls.m4": "included (self-signed cert)"},
}


class Sendmail(Daemon):
    persona = "sendmail"

    def mc(self) -> str:
        sm = ROOT["sendmail"] / "usr/share/sendmail/cf"
        d = self.dir
        s = self.settings
        tls = ""
        if "starttls.m4" in s:
            crt, key = self_signed(d / "etc" / "tls", "sendmail-server")
            tls = f"""dnl # TLS/SSL support (Debian's /etc/mail/tls/starttls.m4)
define(`confDONT_BLAME_SENDMAIL',dnl
    defn(`confDONT_BLAME_SENDMAIL')`,GroupReadableKeyFile')dnl
define(`confTO_STARTTLS', `2m')dnl
define(`confCACERT_PATH', `/etc/ssl/certs')dnl
define(`confCACERT',      `{crt}')dnl
define(`confSERVER_CERT', `{crt}')dnl
define(`confSERVER_KEY',  `{key}')dnl
define(`confCLIENT_CERT', `{crt}')dnl
define(`confCLIENT_KEY',  `{key}')dnl
define(`confDH_PARAMETERS',`i')dnl
define(`confTLS_SRV_OPTIONS', `')dnl
"""
        extra = "".join(f"define(`{k}', `{v}')dnl\n" for k, v in s.items()
                        if k.startswith("conf"))
        # Debian's cf/debian/sendmail.mc, paths moved into WORK, the MSA
        # daemon (port 587) left out, DAEMON_OPTIONS on 127.0.0.3:25.
        return f"""divert(-1)dnl
divert(0)dnl
define(`_USE_ETC_MAIL_')dnl
include(`{sm}/m4/cf.m4')dnl
include(`{sm}/debian/autoconf.m4')dnl
VERSIONID(`$Id: sendmail.mc, v 8.17.1.9-2+deb12u2 2024-06-16 21:07:57 cowboy Exp $')
define(`MAIL_SETTINGS_DIR', `{d}/etc/')dnl
OSTYPE(`debian')dnl
DOMAIN(`debian-mta')dnl
dnl # moved into {d}
define(`STATUS_FILE', `{d}/lib/sendmail.st')dnl
define(`confHOST_STATUS_DIRECTORY', `{d}/lib/host_status')dnl
define(`confPID_FILE', `{d}/run/sendmail.pid')dnl
define(`confCONTROL_SOCKET_NAME', `{d}/run/smcontrol')dnl
define(`confDEAD_LETTER_DROP', `{d}/lib/dead.letter')dnl
define(`QUEUE_DIR', `{d}/mqueue')dnl
define(`ALIAS_FILE', `{d}/etc/aliases')dnl
define(`confHELP_FILE', `{d}/etc/helpfile')dnl
define(`confSERVICE_SWITCH_FILE', `{d}/etc/service.switch')dnl
dnl # no delivery (invisible to an SMTP client)
define(`confDELIVERY_MODE', `queueonly')dnl
{extra}FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Family=inet,  Name=MTA-v4, Port=smtp, Addr={HOST}')dnl
define(`confPRIVACY_FLAGS',dnl
`needmailhelo,needexpnhelo,needvrfyhelo,restrictqrun,restrictexpand,nobodyreturn,authwarnings')dnl
define(`confCONNECTION_RATE_THROTTLE', `15')dnl
define(`confCONNECTION_RATE_WINDOW_SIZE',`10m')dnl
FEATURE(`use_cw_file')dnl
FEATURE(`access_db', `hash -T<TMPF> -o {d}/etc/access', `skip')dnl
FEATURE(`greet_pause', `1000')dnl 1 seconds
FEATURE(`delay_checks', `friend', `n')dnl
define(`confBAD_RCPT_THROTTLE',`3')dnl
FEATURE(`conncontrol', `nodelay', `terminate')dnl
FEATURE(`ratecontrol', `nodelay', `terminate')dnl
{tls}MAILER_DEFINITIONS
MAILER(`local')dnl
MAILER(`smtp')dnl
"""

    def bin(self, name: str) -> str:
        return str(ROOT["sendmail"] / "usr/libexec/sendmail" / name)

    def prepare(self) -> None:
        d = self.dir
        for sub in ("etc", "etc/tls", "mqueue", "lib", "lib/host_status", "run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
            (d / sub).chmod(0o755 if sub != "mqueue" else 0o700)
        src = ROOT["sendmail"] / "etc/mail"
        shutil.copy(src / "helpfile", d / "etc/helpfile")
        shutil.copy(src / "service.switch", d / "etc/service.switch")
        access = self.settings.get("access", "")
        (d / "etc/access").write_text(access.replace(" ", "\t") + "\n" if access else "")
        (d / "etc/aliases").write_text("postmaster: root\nMAILER-DAEMON: postmaster\n"
                                       "abuse: root\n")
        for f in ("local-host-names", "relay-domains", "trusted-users"):
            (d / "etc" / f).write_text("")
        (d / "etc/sendmail.mc").write_text(self.mc())
        cf = run([str(ROOT["m4"] / "usr/bin/m4"), str(d / "etc/sendmail.mc")])
        if "ERROR" in cf.stderr or "cannot open" in cf.stderr:
            raise RuntimeError(f"m4: {cf.stderr}")
        (d / "etc/sendmail.cf").write_text(cf.stdout)
        cfarg = ["-C", str(d / "etc/sendmail.cf")]
        with open(d / "etc/access") as f:
            subprocess.run(ns_argv([self.bin("makemap"), *cfarg, "hash", str(d / "etc/access")]),
                           stdin=f, check=True, timeout=30, capture_output=True)
        subprocess.run(ns_argv([self.bin("sendmail"), *cfarg, "-bi"]), check=True, timeout=30,
                       capture_output=True, stdin=subprocess.DEVNULL)

    def argv(self) -> list[str]:
        return [self.bin("sendmail"), "-C", str(self.dir / "etc/sendmail.cf"), "-bD"]

    @staticmethod
    def version() -> str:
        return f"sendmail 8.17.1.9 (Debian sendmail-bin {deb_version('sendmail-bin')})"


PERSONAS = {"exim": (Exim, EXIM_GROUPS), "sendmail": (Sendmail, SENDMAIL_GROUPS)}


# --------------------------------------------------------------- scenarios
# Postfix scenarios that only make sense against Postfix/Dovecot.
SKIP = {"relay_denied_reject", "auth_penalty_next_connection", "sasl_dovecot_default",
        "sasl_dovecot_default_login", "sasl_plain_login_ehlo", "auth_cram_md5"}
# sendmail sleeps 1, 2, 4 ... s before each NOOP past the 20th, up to 4 min
# a NOOP: 125 NOOPs would take hours (noop_many shows the pattern).
PERSONA_SKIP = {"sendmail": {"junk_limit"}}
# Postfix SASL scenarios replayed against Exim's plaintext authenticators.
EXIM_AUTH_SCENARIOS = {
    "sasl_ehlo", "sasl_helo", "auth_plain_ir_good", "auth_plain_ir_bad", "auth_plain_bad_user",
    "auth_plain_cont", "auth_plain_cont_bad", "auth_plain_authzid_other", "auth_plain_authzid",
    "auth_plain_malformed", "auth_plain_empty_ir", "auth_login", "auth_login_bad",
    "auth_login_ir", "auth_login_lowercase", "auth_bad_base64", "auth_cancel",
    "auth_unknown_mech", "auth_without_ehlo", "auth_in_transaction", "auth_repeated_failures",
    "auth_failures_then_quit", "auth_login_empty", "auth_star_outside", "auth_long_response",
    "sasl_relay", "sasl_starttls"}
STARTTLS_SCENARIOS = {"starttls", "starttls_arg", "starttls_before_ehlo", "starttls_twice",
                      "starttls_no_ehlo_after", "starttls_pipelined", "starttls_in_transaction"}
EHLO = rp.EHLO
MAIL = rp.MAIL
RCPT = rp.RCPT
MSG = rp.MSG
HEADERS = rp.HEADERS


def build_extra(persona: str) -> list[Scenario]:
    S = Scenario
    size_limit = 52428800 if persona == "exim" else 0
    sc = [
        S("greeting_rdns", "greeting and EHLO from 127.0.0.6, whose reverse and forward "
          "DNS (hosts file) say client.example.net", [EHLO, QUIT()]),
        S("greeting_localhost", "greeting and EHLO from 127.0.0.1 (localhost)", [EHLO, QUIT()]),
        S("error_limit_30", "30 unknown commands", [C("XYZZY", timeout=15) for _ in range(30)]
          + [QUIT(timeout=15)]),
        S("unknown_then_ok", "3 unknown commands, then a full transaction",
          [C("XYZZY"), C("FOO bar"), C("EHLOX"), EHLO, MAIL, RCPT, C("DATA"), R(MSG), QUIT()]),
        S("mail_size_default", f"MAIL SIZE= around the default limit ({size_limit or 'none'})",
          [EHLO, C(f"MAIL FROM:<sender@example.test> SIZE={size_limit + 1}"), C("RSET"),
           C(f"MAIL FROM:<sender@example.test> SIZE={max(size_limit, 1)}"), C("RSET"),
           C("MAIL FROM:<sender@example.test> SIZE=999999999999"), C("RSET"),
           C("MAIL FROM:<sender@example.test> SIZE=99999999999999999999"), QUIT()]),
        S("sender_unresolvable", "MAIL FROM and RCPT TO domains that do not resolve "
          "(NXDOMAIN)", [EHLO, C("MAIL FROM:<sender@nosuch.invalid>"), C("RSET"), MAIL,
                         C("RCPT TO:<rcpt@nosuch.invalid>"), RCPT, C("DATA"), R(MSG), QUIT()]),
        S("null_sender", "MAIL FROM:<> (a bounce) to a relayed recipient",
          [EHLO, C("MAIL FROM:<>"), RCPT, C("DATA"), R(MSG), QUIT()]),
        S("rcpt_bad_local", "8 unknown local recipients (sendmail BAD_RCPT_THROTTLE 3)",
          [EHLO, MAIL] + [C(f"RCPT TO:<nosuch{i}@mail.example.test>", timeout=20)
                          for i in range(8)] + [RCPT, QUIT()]),
        S("noop_many", "26 NOOPs (sendmail: MAXNOOPCOMMANDS 20, then doubling delays)",
          [EHLO] + [C("NOOP", timeout=150) for _ in range(26)] + [QUIT(timeout=30)]),
        S("vrfy_many", "10 VRFYs (sendmail: MAXVRFYCOMMANDS 6)",
          [EHLO] + [C("VRFY root", timeout=60) for _ in range(10)] + [QUIT(timeout=30)]),
        S("helo_many", "8 EHLOs (sendmail: MAXHELOCOMMANDS 3)",
          [EHLO] + [C("EHLO client.example.test", timeout=60) for _ in range(7)]
          + [QUIT(timeout=30)]),
        S("helo_pipelined", "HELO (no PIPELINING), then MAIL and RCPT in one write",
          [C("HELO client.example.test"),
           R(b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<rcpt@example.net>\r\n", expect=2),
           QUIT()]),
        S("pipelined_rset_noop", "EHLO, RSET, NOOP, MAIL, RCPT, RCPT, DATA in one write",
          [R(b"EHLO client.example.test\r\nRSET\r\nNOOP\r\nMAIL FROM:<sender@example.test>\r\n"
             b"RCPT TO:<rcpt@example.net>\r\nRCPT TO:<rcpt2@example.net>\r\nDATA\r\n",
             expect=7), R(MSG), QUIT()]),
        S("greeting_pipelined_helo", "HELO sent about 0.2 s after connect, before the greeting "
          "(the client talks first)", [WAIT(0.3, expect=0),
                                       C("HELO client.example.test", expect=2), QUIT()],
          greet=False),
        S("expn_verb_etrn", "EXPN, VERB, ETRN, ONEX, VERB ON, TURN, DSN params",
          [EHLO, C("EXPN postmaster"), C("EXPN root"), C("VERB"), C("ONEX"), C("ETRN"),
           C("ETRN example.net"), C("TURN"), C("ATRN"),
           C("MAIL FROM:<sender@example.test> RET=FULL ENVID=x1"),
           C("RCPT TO:<rcpt@example.net> NOTIFY=SUCCESS"), QUIT()]),
        S("data_received_count", "DATA with 30 Received: headers",
          [EHLO, MAIL, RCPT, C("DATA"),
           R(b"".join(b"Received: from hop%d.example.net by relay%d.example.net; "
                      b"Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i) for i in range(30)) + MSG),
           QUIT()]),
    ]
    # One bad command per connection: Exim drops the connection after its
    # third syntax/protocol error (smtp_max_synprot_errors 3), which cuts
    # Postfix's multi-error scripts short.
    singles = {
        "mail_param_size_abc": "MAIL FROM:<sender@example.test> SIZE=abc",
        "mail_param_binarymime": "MAIL FROM:<sender@example.test> BODY=BINARYMIME",
        "mail_param_body_foo": "MAIL FROM:<sender@example.test> BODY=foo",
        "mail_param_unknown": "MAIL FROM:<sender@example.test> FOO=bar",
        "mail_param_ret_foo": "MAIL FROM:<sender@example.test> RET=foo",
        "mail_param_size_twice": "MAIL FROM:<sender@example.test> SIZE=1000 SIZE=2000",
        "mail_param_smtputf8": "MAIL FROM:<sender@example.test> SMTPUTF8",
        "mail_param_auth": "MAIL FROM:<sender@example.test> AUTH=<>",
        "mail_noarg": "MAIL",
        "mail_to": "MAIL TO:<sender@example.test>",
        "mail_no_colon": "MAIL FROM <sender@example.test>",
        "mail_empty": "MAIL FROM:",
    }
    for name, cmd in singles.items():
        sc.append(S(name, f"EHLO, then only `{cmd}`, RSET, NOOP",
                    [EHLO, C(cmd), C("RSET"), C("NOOP"), QUIT()]))
    rcpt_singles = {
        "rcpt_null": "RCPT TO:<>",
        "rcpt_param_unknown": "RCPT TO:<rcpt@example.net> FOO=bar",
        "rcpt_param_dsn": "RCPT TO:<rcpt@example.net> NOTIFY=SUCCESS,FAILURE "
                          "ORCPT=rfc822;rcpt@example.net",
        "rcpt_noarg": "RCPT",
        "rcpt_space_domain": "RCPT TO:<rcpt@ex ample.net>",
        "rcpt_no_colon": "RCPT TO <rcpt@example.net>",
        "rcpt_postmaster": "RCPT TO:<postmaster>",
        "rcpt_literal": "RCPT TO:<rcpt@[127.0.0.3]>",
    }
    for name, cmd in rcpt_singles.items():
        sc.append(S(name, f"EHLO, MAIL, then only `{cmd}`, then a good RCPT",
                    [EHLO, MAIL, C(cmd), RCPT, QUIT()]))
    # Where the command length limit is (sendmail: 421 "Command too long").
    for n in (1000, 2040, 2044, 2045, 2046, 2047):
        sc.append(S(f"cmd_len_{n}", f"EHLO, a NOOP line of {n} bytes before CRLF, NOOP",
                    [EHLO, R(long_line("NOOP ", n) + b"\r\n"), C("NOOP"), QUIT()]))
    # Refused recipients, many of them, from a client that may not relay
    # (Exim: a bad-recipient limit? sendmail: BAD_RCPT_THROTTLE, no close).
    sc.append(S("rcpt_bad_many", "12 refused RCPTs (relaying denied, unknown local users), "
                "then a local one", [EHLO, MAIL]
                + [C(f"RCPT TO:<rcpt{i}@example.net>", timeout=20) for i in range(6)]
                + [C(f"RCPT TO:<nosuch{i}@mail.example.test>", timeout=20) for i in range(6)]
                + [C("RCPT TO:<postmaster@mail.example.test>", timeout=20), C("DATA", timeout=20),
                   R(MSG, timeout=20), QUIT(timeout=20)], group="relay_denied"))
    if persona == "sendmail":
        sc += [
            S("starttls_tls_ehlo", "EHLO, STARTTLS, TLS, EHLO, a transaction in TLS",
              [EHLO, C("STARTTLS"), TLS, EHLO, MAIL, RCPT, C("DATA"), R(MSG), QUIT()],
              group="tls"),
            S("too_many_hops_100", "DATA with 101 Received: headers (MaxHopCount 100)",
              [EHLO, MAIL, RCPT, C("DATA"),
               R(b"".join(b"Received: from hop%d.example.net by relay%d.example.net; "
                          b"Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i)
                          for i in range(101)) + MSG), QUIT()]),
        ]
    if persona == "exim":
        sc += [
            S("auth_tls_ehlo", "Debian's example authenticators as shipped: EHLO in the clear "
              "and in TLS; AUTH in the clear", [EHLO, C("AUTH PLAIN " + rp.PLAIN_GOOD),
                                                C("STARTTLS"), TLS, EHLO, QUIT()],
              group="auth_tls"),
            S("too_many_hops_31", "DATA with 31 Received: headers (received_headers_max 30)",
              [EHLO, MAIL, RCPT, C("DATA"),
               R(b"".join(b"Received: from hop%d.example.net by relay%d.example.net; "
                          b"Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i)
                          for i in range(31)) + MSG), QUIT()]),
            # After QUIT inside a chunked transaction Exim answers 221 and
            # then reads commands again (bdat_then_data): what it does next.
            S("bdat_quit_then_talk", "QUIT after a refused DATA in a chunked transaction, "
              "then NOOP, RSET, MAIL and QUIT", [EHLO, MAIL, RCPT, R(b"BDAT 8\r\nHello.\r\n"),
                                                  C("DATA"), C("QUIT", timeout=3), C("NOOP", timeout=3),
                                                  C("RSET", timeout=3), MAIL, QUIT()]),
            S("bdat_quit_direct", "QUIT right after a non-LAST chunk, then NOOP and QUIT",
              [EHLO, MAIL, RCPT, R(b"BDAT 8\r\nHello.\r\n"), C("QUIT", timeout=3),
               C("NOOP", timeout=3), QUIT()]),
            S("bdat_quit_headers", "QUIT after a chunk holding the whole header, then NOOP and QUIT",
              [EHLO, MAIL, RCPT, R(b"BDAT %d\r\n" % len(HEADERS) + HEADERS), C("QUIT", timeout=3),
               C("NOOP", timeout=3), QUIT()]),
            S("bdat_quit_header_line", "QUIT after a chunk holding one header line, then NOOP and QUIT",
              [EHLO, MAIL, RCPT, R(b"BDAT 27\r\nFrom: sender@example.test\r\n"), C("QUIT", timeout=3),
               C("NOOP", timeout=3), QUIT()]),
            S("bdat_quit_cr", "QUIT after a chunk ending in a CR, then NOOP and QUIT",
              [EHLO, MAIL, RCPT, R(b"BDAT 7\r\nHello.\r"), C("QUIT", timeout=3),
               C("NOOP", timeout=3), QUIT()]),
            S("bdat_quit_body_line", "QUIT after a chunk holding the header and a body line, "
              "then NOOP and QUIT", [EHLO, MAIL, RCPT, R(b"BDAT %d\r\n" % (len(HEADERS) + 8) + HEADERS
                                                          + b"Hello.\r\n"),
                                     C("QUIT", timeout=3), C("NOOP", timeout=3), QUIT()]),
            S("bdat_quit_idle", "QUIT after a refused DATA in a chunked transaction, then silence "
              "(smtp_receive_timeout 5s)", [EHLO, MAIL, RCPT, R(b"BDAT 8\r\nHello.\r\n"),
                                            C("DATA"), C("QUIT", timeout=3), WAIT(15, close=True)],
              group="timeout5"),
        ]
    return sc


def build_scenarios(persona: str) -> list[Scenario]:
    out: list[Scenario] = []
    for sc in rp.build_scenarios():
        if sc.name in SKIP or sc.name in PERSONA_SKIP.get(persona, ()):
            continue
        if sc.group == "local":
            sc.group = "default"
        elif sc.group == "relay_denied_reject":
            continue
        elif sc.group.startswith("sasl"):
            if persona == "exim" and sc.name in EXIM_AUTH_SCENARIOS:
                sc.group = "auth"
            elif persona == "exim" and sc.name == "sasl_tls_auth_only":
                sc.group = "auth_tls"
            elif persona == "sendmail" and sc.name in ("sasl_ehlo", "auth_cram_md5_bad",
                                                       "auth_unknown_mech",
                                                       "auth_plain_ir_good"):
                sc.group = "default"   # stock sendmail advertises AUTH (see notes)
            else:
                continue
        out.append(sc)
        if persona == "sendmail" and sc.name in STARTTLS_SCENARIOS:
            out.append(Scenario(sc.name + "_tls", sc.description + " (STARTTLS configured)",
                                sc.steps, group="tls", greet=sc.greet))
    out += build_extra(persona)
    names = [s.name for s in out]
    assert len(names) == len(set(names)), "duplicate scenario names"
    return out


# ------------------------------------------------------------------- nmap
def nmap(label: str) -> str:
    """record_postfix's nmap views of HOST:25, with -n (no reverse DNS in the namespace)."""
    return rp.nmap(label, host=HOST, options=("-n",))


NMAP_GROUPS = {"exim": {"default": "real Exim 4.96 (Debian), stock TLS (auto self-signed)",
                        "auth": "real Exim 4.96 (Debian), plaintext AUTH in the clear"},
               "sendmail": {"default": "real sendmail 8.17.1.9 (Debian), no STARTTLS",
                            "tls": "real sendmail 8.17.1.9 (Debian), starttls.m4"}}


# ------------------------------------------------------------------- main
def record(persona: str, only: list[str] | None, want_nmap: bool) -> int:
    cls, groups = PERSONAS[persona]
    out_dir = REPO / "tests" / "data" / persona
    out_dir.mkdir(parents=True, exist_ok=True)
    scenarios = build_scenarios(persona)
    if only:
        scenarios = [s for s in scenarios if s.name in only]
    version = cls.version()
    failed = 0
    nmap_text = []
    for group, settings in groups.items():
        todo = [s for s in scenarios if s.group == group]
        do_nmap = want_nmap and not only and group in NMAP_GROUPS[persona]
        if not todo and not do_nmap:
            continue
        print(f"[{persona}/{group}] {settings}", flush=True)
        daemon = cls(group, settings)
        try:
            daemon.start()
            for sc in todo:
                rp.CLIENT = CLIENTS.get(sc.name, CLIENT)
                try:
                    exchanges = rp.run_scenario(sc)
                except Exception as e:  # noqa: BLE001 (one scenario, not the run)
                    print(f"  {sc.name}: FAILED {e!r}", flush=True)
                    failed += 1
                    continue
                finally:
                    rp.CLIENT = CLIENT
                doc = {"scenario": sc.name, "description": sc.description,
                       f"{persona}_version": version, "settings": settings,
                       "client": CLIENTS.get(sc.name, CLIENT), "exchanges": exchanges}
                (out_dir / f"{sc.name}.json").write_text(
                    json.dumps(doc, indent=1, ensure_ascii=True) + "\n")
            if do_nmap:
                print(f"  nmap ({group})", flush=True)
                nmap_text.append(nmap(NMAP_GROUPS[persona][group]))
        finally:
            daemon.stop()
    if nmap_text:
        (out_dir / "nmap.txt").write_text(
            f"# nmap against the real {version} on {HOST}:25 (host name {MYHOSTNAME}); "
            "tests/record_personas.py\n\n" + "\n".join(nmap_text))
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--persona", nargs="*", choices=sorted(PERSONAS), default=sorted(PERSONAS))
    ap.add_argument("--only", nargs="*", help="scenario names to record")
    ap.add_argument("--no-nmap", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep WORK (logs, configs, debs)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (namespaces, port 25)", file=sys.stderr)
        return 2
    rp.HOST = HOST
    rp.CLIENT = CLIENT
    rp.become_subreaper()
    fetch_packages()
    make_namespace_files()
    dns = NxDns()
    failed = 0
    try:
        for persona in args.persona:
            failed += record(persona, args.only, not args.no_nmap)
    finally:
        dns.close()
        for pid in our_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        rp.reap()
        print(f"DNS queries answered NXDOMAIN: {sorted(set(dns.queries))}", flush=True)
        if not args.keep:
            for p in WORK.iterdir():
                if p.name not in ("debs",):
                    shutil.rmtree(p, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
