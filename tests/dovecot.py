"""A private, throwaway Dovecot with the bait mailbox, for the tests and the
recorder (helpers, not tests).

`PrivateDovecot` writes its own dovecot.conf, base_dir, state_dir, log,
self-signed certificate, passwd-file and Maildir into a fresh directory
and runs `dovecot -F -c CONF` as our child (run as root). It never reads
settings from, starts, stops or changes the system instance (/etc/dovecot,
/run/dovecot): every path it uses is its own, and its instance_name is
its own.

What it serves, and why:

- IMAP and POP3 on one 127.0.0.x address, plain and implicit TLS, on the
  ports given (high ports: the tests are not alone on this machine).
- The settings are stock Debian's (dovecot-core's conf.d: `doveconf -n`
  shows what differs from Dovecot's defaults, and those are kept: the
  special-use mailboxes of 15-mailboxes.conf, ssl = yes with the Debian
  DH parameters, auth_mechanisms = plain, mail_privileged_group = mail),
  except what an instance of our own needs: paths, listeners, a
  passwd-file user instead of PAM, and a Maildir (with separator "/",
  which is what stock Debian's mbox shows) instead of /var/mail, plus an
  Archive mailbox with its \\Archive special use, as the bait has one.
- `plaintext_login=False` is stock (disable_plaintext_auth = yes:
  LOGINDISABLED until STARTTLS); True is a Dovecot set up for legacy
  clients (disable_plaintext_auth = no), looper's default.
- The user (USER / PASSWORD) has a Maildir built from looper's own bait
  (looper.bait.load_bait, the shipped config/bait with the default company),
  byte for byte the messages the trap serves: same UIDs (a dovecot-uidlist
  is written, so UIDVALIDITY is the store's too), flags in the file names,
  INTERNALDATE as the file's mtime, every folder subscribed.
- Dovecot treats a client whose address is the server's as secured
  (plaintext allowed even when it is disabled): connect from another
  127.0.0.x address. Its auth failures are delayed (auth_failure_delay,
  2 s) and anvil's per-address penalty grows with each failure: use a fresh
  source address for each conversation that fails a login.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from looper.bait import load_bait
from looper.config import Config
from looper.proto.mailbox import BaitStore

DOVECOT = "/usr/sbin/dovecot"
DOVECONF = "/usr/bin/doveconf"
DEBIAN_DH = Path("/usr/share/dovecot/dh.pem")
USER = "admin"
PASSWORD = "password"  # the replays and the bench give looper this pair in `credentials` (none by default)
HOSTNAME = "mail.example.com"
MAIL_USER = "nobody"  # owns the Maildir; Dovecot's mail processes run as it
MAIL_GROUP = "nogroup"
# Maildir info flags (the letters after ":2,", in ASCII order) of the store's flags.
MAILDIR_FLAGS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S"}


def dovecot_available() -> bool:
    """True if Debian's Dovecot with imapd and pop3d is installed and we are root."""
    if os.geteuid() != 0 or not os.access(DOVECOT, os.X_OK):
        return False
    try:
        for user in ("dovecot", "dovenull", MAIL_USER):
            pwd.getpwnam(user)
    except KeyError:
        return False
    return all(os.access(f"/usr/lib/dovecot/{p}", os.X_OK) for p in ("imap", "imap-login", "pop3", "pop3-login"))


def dovecot_version() -> str:
    return subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, timeout=30).stdout.split()[0]


@dataclass(frozen=True)
class Ports:
    imap: int = 143
    imaps: int = 993
    pop3: int = 110
    pop3s: int = 995


def maildir_name(uid: int, message, hostname: str = HOSTNAME) -> str:
    """A Maildir file name: the arrival time first, so its order is the UIDs';
    S= and W= (its size, already CRLF); the flags after :2,."""
    flags = "".join(sorted(MAILDIR_FLAGS[f] for f in message.flags))
    base = f"{int(message.internaldate.timestamp())}.M{uid:06d}P1.{hostname},S={message.size},W={message.size}"
    return f"{base}:2,{flags}"


def write_maildir(root: Path, store: BaitStore, uid: int, gid: int) -> None:
    """The store as a Maildir++ under root (INBOX in root, others in .Name)."""
    for folder in store.folders:
        path = root if folder.name == "INBOX" else root / f".{folder.name}"
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        lines = [f"3 V{folder.uidvalidity} N{folder.uidnext}\n"]
        for message in folder.messages:
            name = maildir_name(message.uid, message)
            file = path / "cur" / name
            file.write_bytes(message.content)
            stamp = message.internaldate.timestamp()
            os.utime(file, (stamp, stamp))
            lines.append(f"{message.uid} :{name.split(':2,')[0]}\n")
        (path / "dovecot-uidlist").write_text("".join(lines))
        if folder.name != "INBOX":
            (path / "maildirfolder").touch()
    (root / "subscriptions").write_text("".join(f"{f.name}\n" for f in store.folders))
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, uid, gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), uid, gid)


class PrivateDovecot:
    """One Dovecot serving imap, imaps, pop3 and pop3s on `host`.

    start() builds everything and waits until every port answers; stop()
    ends the instance (and every process of its session) and removes its
    directory. Usable as a context manager.
    """

    def __init__(self, host: str = "127.0.0.40", ports: Ports = Ports(14143, 14993, 14110, 14995), *,
                 plaintext_login: bool = True, store: BaitStore | None = None, now: float | None = None,
                 name: str = "looper-dovecot") -> None:
        self.host, self.ports, self.plaintext_login = host, ports, plaintext_login
        self.now = time.time() if now is None else now
        self.store = store if store is not None else load_bait(_shipped_config(), self.now)
        self.name = name
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    # -- configuration ------------------------------------------------------

    def settings(self) -> dict[str, str]:
        """The settings a recording names (what differs from stock Debian's that matters)."""
        return {
            "disable_plaintext_auth": "no" if self.plaintext_login else "yes",
            "auth_mechanisms": "plain",
            "mail_location": "maildir:~/Maildir",
            "namespace inbox separator": "/",
            "ssl": "yes (self-signed, CN=" + HOSTNAME + ")",
            "passdb": "passwd-file",
            "hostname": HOSTNAME,
        }

    def config(self) -> str:
        d = self.dir
        dh = f"ssl_dh = <{DEBIAN_DH}\n" if DEBIAN_DH.exists() else ""
        return f"""\
# A private instance for looper's tests: stock Debian's settings but paths,
# listeners, passdb/userdb and the Maildir (tests/dovecot.py).
instance_name = {self.name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
hostname = {HOSTNAME}
protocols = imap pop3
listen = {self.host}
disable_plaintext_auth = {'no' if self.plaintext_login else 'yes'}
auth_mechanisms = plain
mail_location = maildir:~/Maildir
mail_privileged_group = mail
first_valid_uid = 1
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
ssl_client_ca_dir = /etc/ssl/certs
{dh}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={MAIL_USER} gid={MAIL_GROUP} home={d}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox "Sent Messages" {{
    special_use = \\Sent
  }}
  mailbox Archive {{
    special_use = \\Archive
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {self.ports.imap}
  }}
  inet_listener imaps {{
    port = {self.ports.imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.ports.pop3}
  }}
  inet_listener pop3s {{
    port = {self.ports.pop3s}
    ssl = yes
  }}
}}
"""

    # -- life ---------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        # A Dovecot left over by a run that was killed would answer in our
        # place (with another bait's dates): say so rather than test it.
        busy = [port for port in (self.ports.imap, self.ports.imaps, self.ports.pop3, self.ports.pop3s)
                if self._answers(port)]
        if busy:
            raise RuntimeError(f"something already listens on {self.host} port {busy[0]}: a Dovecot left over"
                               " by a killed run? (pgrep -af dovecot)")
        # Under the system temp dir, 0755: the mail user must reach the Maildir.
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.dir.chmod(0o755)
        d = self.dir
        for sub in ("run", "state", "home"):
            (d / sub).mkdir()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", f"/CN={HOSTNAME}",
             "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
            check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        (d / "key.pem").chmod(0o600)
        (d / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        mail = pwd.getpwnam(MAIL_USER)
        home = d / "home" / USER
        home.mkdir()
        write_maildir(home / "Maildir", self.store, mail.pw_uid, mail.pw_gid)
        os.chown(home, mail.pw_uid, mail.pw_gid)
        (d / "dovecot.conf").write_text(self.config())
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(d / "dovecot.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        for port in (self.ports.imap, self.ports.imaps, self.ports.pop3, self.ports.pop3s):
            while not self._answers(port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    problem = self.log() + (self.proc.stderr.read().decode() if self.proc.poll() is not None else "")
                    self.stop()
                    raise RuntimeError(f"dovecot did not start: {problem.strip()[-2000:]}")
                time.sleep(0.1)

    def reset_mailbox(self) -> None:
        """The Maildir as built at start again (what sessions changed, and
        Dovecot's indexes, are gone): the next login is the first one ever,
        as every login to the trap is. Sessions in progress must be over."""
        mail = pwd.getpwnam(MAIL_USER)
        maildir = self.dir / "home" / USER / "Maildir"
        shutil.rmtree(maildir)
        write_maildir(maildir, self.store, mail.pw_uid, mail.pw_gid)

    def _answers(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1):
                return True
        except OSError:
            return False

    def log(self) -> str:
        path = self.dir / "dovecot.log" if self.dir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            try:  # children share its session: none may outlive it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(5)
            if proc.stderr:
                proc.stderr.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PrivateDovecot:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _shipped_config() -> Config:
    """The defaults, with the bait folder of this repository whatever the cwd."""
    from looper.config import parse_config

    folder = Path(__file__).resolve().parent.parent / "config" / "bait"
    return parse_config(f"bait: {{folder: '{folder}'}}\n", "tests/dovecot.py")
