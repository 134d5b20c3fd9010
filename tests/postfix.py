"""A private, throwaway Postfix instance for the tests (helpers, not tests).

`PrivatePostfix` writes its own main.cf and master.cf, queue and data
directories and log file into a temporary directory and runs
`postfix -c DIR start`. It never reads settings from, starts, stops or
changes the system instance (/etc/postfix, /var/spool/postfix).

How the instance is isolated, and why that is enough:

- `postfix -c DIR` (which exports MAIL_CONFIG=DIR to postfix-script, master
  and every daemon) accepts any directory when run by root.
  `alternate_config_directories` in the default main.cf is only consulted
  for unprivileged use of the set-gid commands (postdrop, postqueue), so
  root's `postqueue -c DIR` works too. No `postmulti`, which would have to
  edit /etc/postfix/main.cf. `postfix start` only *checks* the shared files
  in /usr/lib/postfix and /etc/postfix; `post-install create-missing`
  creates the queue subdirectories in our own queue_directory.
- inet_interfaces = 127.0.0.2, and the address must be configured on an
  interface: Postfix refuses (fatal "no local interface found for
  127.0.0.2") an address that is merely routed to lo, as 127.0.0.2 is by
  default (lo carries 127.0.0.1/8). start() therefore adds 127.0.0.2/32 to lo
  (`ip addr add`, needs root/CAP_NET_ADMIN and iproute2) if it is missing and
  stop() removes it again. The alternatives fail: binding 127.0.0.2:smtp in
  master.cf works, but inet_interfaces must then name another local address,
  and with 127.0.0.1 there Postfix treats the trap as itself and bounces at
  once ("mail for 127.0.0.1 loops back to myself", its address-based loop
  check, active for port 25 only) without ever connecting.
- The daemons run without chroot: Debian's stock master.cf chroots them into
  the queue directory, which needs copies of /etc files that Debian's service
  scripts make, not `postfix start`.
- The postfix user opens data_directory (master.lock) by absolute path, so
  every parent directory must be searchable by it. pytest's tmp_path sits
  under a 0700 root directory; then the instance lives in a fresh 0755
  directory under the system temp dir, and stop() copies the log to
  tmpdir/postfix.maillog and removes that directory.
- Mail: an open relay for 127.0.0.0/8 on relay_ip:25; `spamtrap.test` goes to
  smtp:[trap_host]:trap_port from relay_ip; everything else (bounces,
  postmaster notices, any other domain) goes to the discard transport, so no
  traffic can leave for anywhere but the trap, and bounces cannot loop.
  Logs go to a file through postlogd (maillog_file, Postfix >= 3.4).
"""

from __future__ import annotations

import grp
import json
import os
import pty
import pwd
import re
import select
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
SNAKEOIL_CERT = Path("/etc/ssl/certs/ssl-cert-snakeoil.pem")
SNAKEOIL_KEY = Path("/etc/ssl/private/ssl-cert-snakeoil.key")
SPAMTRAP_DOMAIN = "spamtrap.test"
CMD_TIMEOUT = 60.0

# Debian's master.cf services minus the pipe/local/virtual/lmtp/postscreen
# ones, chroot off.
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    pass


def postfix_available() -> bool:
    """True if Postfix >= 3.4 (for maillog_file) is installed and we are root."""
    if os.geteuid() != 0:
        return False
    if not all(os.access(p, os.X_OK) for p in (POSTFIX, POSTCONF, POSTQUEUE)):
        return False
    if not shutil.which("ip"):  # iproute2, to put relay_ip on lo
        return False
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
        version = subprocess.run(
            [POSTCONF, "-dh", "mail_version"], capture_output=True, text=True,
            timeout=CMD_TIMEOUT, check=True, stdin=subprocess.DEVNULL,
        ).stdout.strip()
        major, minor = (int(x) for x in version.split(".")[:2])
    except (KeyError, ValueError, OSError, subprocess.SubprocessError):
        return False
    return (major, minor) >= (3, 4)


def _postfix_user_can_reach(path: Path) -> bool:
    """Can the postfix user search every directory from / down to path?"""
    pw = pwd.getpwnam("postfix")
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    for d in (path, *path.parents):
        st = d.stat()
        if st.st_uid == pw.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _run_on_tty(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a Postfix admin command with stdout and stderr on a pty.

    Postfix commands print their messages to stderr only if it is a terminal;
    early fatal errors (a bad main.cf value, say) come before maillog_file
    logging is set up and would otherwise be lost.
    """
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=slave, env=env)
    finally:
        os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None or select.select([master], [], [], 0)[0]:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                raise PostfixError(f"{' '.join(argv)} timed out: {out.decode(errors='replace')}")
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every writer has gone
                    chunk = b""
                if not chunk:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                    break
                out += chunk
    finally:
        os.close(master)
    return proc.wait(5), out.decode(errors="replace").replace("\r\n", "\n")


class PrivatePostfix:
    """A private Postfix open relay on relay_ip:25 that routes spamtrap.test
    to trap_host:trap_port.

    Use as a context manager (`with PrivatePostfix(tmp_path) as pf: ...`) or
    call start() and stop(); stop() is idempotent and safe after a failure.

    smtpd_hostname: the name smtpd alone uses (greeting, EHLO reply,
    Received: "by"), via `-o myhostname=` in master.cf. Unset, Postfix's smtp
    client sees its own name in the EHLO reply when it is reflected to itself
    and bounces at once ("loops back to myself"); set to another name, that
    check cannot fire and the loop runs until the hop count stops it.
    extra_main_cf: main.cf overrides (e.g. {"smtp_tls_security_level":
    "none"} to keep a reflected session in plaintext).
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike,
        *,
        relay_ip: str = "127.0.0.2",
        trap_host: str = "127.0.0.1",
        trap_port: int = 25,
        myhostname: str = "relay.looper.test",
        smtpd_hostname: str | None = None,
        extra_main_cf: dict[str, str] | None = None,
    ) -> None:
        for ip in (relay_ip, trap_host):
            if not ip.startswith("127."):
                raise ValueError(f"refusing non-loopback address {ip!r}")
        self.tmpdir = Path(tmpdir).resolve()
        self.relay_ip = relay_ip
        self.trap_host = trap_host
        self.trap_port = trap_port
        self.myhostname = myhostname
        self.smtpd_hostname = smtpd_hostname
        self.extra_main_cf = dict(extra_main_cf or {})
        self._external_base = False
        self._added_ip = False
        self._started = False
        self._set_base(self.tmpdir / "postfix")

    def _set_base(self, base: Path) -> None:
        self.base = base
        self.config_dir = base / "etc"
        self.queue_dir = base / "spool"
        self.data_dir = base / "data"
        self.log_file = base / "maillog"

    # ------------------------------------------------------------ config
    def main_cf(self) -> dict[str, str]:
        """The main.cf settings, as written by start()."""
        cert, key = self._tls_files()
        nexthop = f"smtp:[{self.trap_host}]:{self.trap_port}"
        cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.base),
            # Our name must differ from the host's and from the trap's.
            "myhostname": self.myhostname,
            "mydomain": "looper.test",
            "myorigin": "$myhostname",
            "smtpd_banner": "$myhostname ESMTP $mail_name (Debian/GNU)",
            # Listen on and send from relay_ip only (see module doc).
            "inet_interfaces": self.relay_ip,
            "inet_protocols": "ipv4",
            "smtp_bind_address": self.relay_ip,
            # Open relay for loopback clients (the trap dials back from
            # 127.0.0.1). Default smtpd limits apply (hopcount_limit = 50).
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            # No local delivery at all: spamtrap.test goes to the trap,
            # everything else (bounces, postmaster notices) is discarded.
            "mydestination": "",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "transport_maps": f"inline:{{ {SPAMTRAP_DOMAIN}={nexthop} }}",
            "default_transport": "discard:looper test: no delivery outside spamtrap.test",
            "local_transport": "discard:looper test: no local delivery",
            "biff": "no",
            "append_dot_mydomain": "no",
            # No DNS (nexthops are IP literals; no reverse lookups of clients).
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            # Debian's TLS defaults (/usr/share/postfix/main.cf.tls).
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_security_level": "may",
            "smtp_tls_CApath": "/etc/ssl/certs",
            "smtp_tls_security_level": "may",
            "smtp_tls_session_cache_database": "btree:${data_directory}/smtp_scache",
            # Not Debian's default (0): log "... TLS connection established".
            "smtpd_tls_loglevel": "1",
            "smtp_tls_loglevel": "1",
            # Fast retries, bounded lifetimes, short timeouts.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": "10m",
            "bounce_queue_lifetime": "10m",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "30s",
            "smtp_mail_timeout": "30s",
            "smtp_rcpt_timeout": "30s",
            "smtp_data_init_timeout": "30s",
            "smtp_data_xfer_timeout": "30s",
            "smtp_data_done_timeout": "30s",
            "smtp_quit_timeout": "10s",
            "smtpd_timeout": "30s",
        }
        cf.update(self.extra_main_cf)
        return cf

    def _tls_files(self) -> tuple[Path, Path]:
        if SNAKEOIL_CERT.exists() and SNAKEOIL_KEY.exists():
            return SNAKEOIL_CERT, SNAKEOIL_KEY
        # ssl-cert installed but no snakeoil pair (a stripped image): make a
        # private self-signed pair rather than touch /etc/ssl.
        cert, key = self.base / "cert.pem", self.base / "key.pem"
        if not cert.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-days", "30", "-subj", f"/CN={self.myhostname}",
                 "-keyout", str(key), "-out", str(cert)],
                capture_output=True, timeout=CMD_TIMEOUT, check=True,
                stdin=subprocess.DEVNULL,
            )
            key.chmod(0o600)
        return cert, key

    def _write_config(self) -> None:
        if _postfix_user_can_reach(self.tmpdir):
            self.base.mkdir(exist_ok=True)
        else:
            self._set_base(Path(tempfile.mkdtemp(prefix="looper-postfix-")))
            self._external_base = True
        for d in (self.base, self.config_dir, self.queue_dir):
            d.mkdir(exist_ok=True)
            os.chown(d, 0, 0)
            d.chmod(0o755)
        pw = pwd.getpwnam("postfix")
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        main = "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(main)
        master = MASTER_CF
        if self.smtpd_hostname:
            smtpd = "smtpd\n"
            master = master.replace(smtpd, f"smtpd -o myhostname={self.smtpd_hostname}\n", 1)
        (self.config_dir / "master.cf").write_text(master)

    # ----------------------------------------------------------- control
    def _env(self) -> dict[str, str]:
        return dict(os.environ, MAIL_CONFIG=str(self.config_dir))

    def _admin(self, command: str, check: bool = True) -> str:
        """Run `postfix -c DIR <command>`; return what it printed."""
        argv = [POSTFIX, "-c", str(self.config_dir), command]
        rc, out = _run_on_tty(argv, self._env(), CMD_TIMEOUT)
        if check and rc != 0:
            raise PostfixError(
                f"{' '.join(argv)} exited {rc}:\n{out.strip()}\n"
                + "\n".join(self.log_lines()[-20:])
            )
        return out

    def _postqueue(self, *args: str) -> str:
        proc = subprocess.run(
            [POSTQUEUE, "-c", str(self.config_dir), *args], capture_output=True,
            text=True, env=self._env(), timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise PostfixError(f"postqueue {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, timeout: float = 30.0) -> "PrivatePostfix":
        if self._started:
            raise PostfixError("already started")
        with socket.socket() as s:
            s.settimeout(2.0)
            if s.connect_ex((self.relay_ip, 25)) == 0:
                raise PostfixError(f"something already listens on {self.relay_ip}:25 "
                                   "(the system Postfix? see `ss -ltnp`)")
        self._started = True
        try:
            self._ensure_relay_ip()
            self._write_config()
            self._admin("start")
            self._wait_banner(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the instance; no process of it survives. Idempotent."""
        if not self._started:
            return
        self._started = False
        try:
            if (self.config_dir / "main.cf").exists():
                # SIGTERM to master, waits up to 5 s, then SIGKILLs its group.
                self._admin("stop", check=False)
        except PostfixError:
            pass  # timed out: the stragglers are killed below
        try:
            self._kill_stragglers(timeout)
        finally:
            if self._added_ip:
                self._added_ip = False
                subprocess.run(["ip", "addr", "del", f"{self.relay_ip}/32", "dev", "lo"],
                               capture_output=True, timeout=CMD_TIMEOUT)
            if self._external_base:
                self._external_base = False
                kept = self.tmpdir / "postfix.maillog"
                if self.log_file.exists():
                    shutil.copyfile(self.log_file, kept)
                shutil.rmtree(self.base, ignore_errors=True)
                self._set_base(self.tmpdir / "postfix")
                self.log_file = kept

    def _ensure_relay_ip(self) -> None:
        def present() -> bool:
            out = subprocess.run(
                ["ip", "-o", "-4", "addr", "show", "to", f"{self.relay_ip}/32"],
                capture_output=True, text=True, timeout=CMD_TIMEOUT, check=True,
            ).stdout
            return bool(out.strip())
        if present():
            return
        proc = subprocess.run(
            ["ip", "addr", "add", f"{self.relay_ip}/32", "dev", "lo"],
            capture_output=True, text=True, timeout=CMD_TIMEOUT,
        )
        if proc.returncode != 0 and not present():
            raise PostfixError(f"cannot add {self.relay_ip}/32 to lo (Postfix's "
                               f"inet_interfaces needs it): {proc.stderr.strip()}")
        self._added_ip = proc.returncode == 0

    def _kill_stragglers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        sig = signal.SIGTERM
        while pids := self.pids():
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    raise PostfixError(f"postfix processes survive SIGKILL: {pids}")
                sig, deadline = signal.SIGKILL, time.monotonic() + 5
            time.sleep(0.2)

    def pids(self) -> list[int]:
        """Live processes of this instance (their MAIL_CONFIG is our dir).
        Zombies have no environ and are not listed."""
        needle = b"MAIL_CONFIG=" + str(self.config_dir).encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def __enter__(self) -> "PrivatePostfix":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.relay_ip, 25), timeout=2) as s:
                    last = s.recv(512)
                    if last.startswith(b"220 "):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise PostfixError(f"no 220 greeting on {self.relay_ip}:25: {last!r}\n"
                           + "\n".join(self.log_lines()[-20:]))

    # -------------------------------------------------------------- mail
    def inject(
        self,
        mail_from: str,
        rcpt: str | list[str],
        message: bytes,
        *,
        helo: str = "client.looper.test",
        source_ip: str | None = "127.0.0.1",
        starttls: bool = False,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """Send one message to relay_ip:25 with smtplib (a real client).

        Returns the reply to the end of DATA, e.g.
        (250, b'2.0.0 Ok: queued as 4Xy...') or
        (554, b'5.4.0 Error: too many hops'). A refused MAIL FROM or RCPT TO
        raises smtplib.SMTPSenderRefused / SMTPRecipientsRefused."""
        rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        source = (source_ip, 0) if source_ip else None
        with smtplib.SMTP(self.relay_ip, 25, local_hostname=helo, timeout=timeout,
                          source_address=source) as c:
            c.ehlo()
            if starttls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                c.starttls(context=ctx)
                c.ehlo()
            code, resp = c.mail(mail_from)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, resp, mail_from)
            for r in rcpts:
                code, resp = c.rcpt(r)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({r: (code, resp)})
            return c.data(message)

    @staticmethod
    def queue_id(reply: tuple[int, bytes]) -> str | None:
        """The queue id in a '250 ... queued as ID' reply, else None."""
        m = re.search(rb"queued as ([0-9A-Za-z]+)", reply[1])
        return m.group(1).decode() if m else None

    def log_lines(self) -> list[str]:
        """Postfix's log so far (also readable after stop())."""
        try:
            return self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """Wait for a log line matching the regex; return the first match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if m := rx.search(line):
                    return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Postfix log line matches {pattern!r} "
                                   f"after {timeout}s")
            time.sleep(0.1)

    def queue(self) -> list[dict]:
        """The mail queue as `postqueue -j` records (queue_id, queue_name,
        sender, recipients[{address, delay_reason}], ...)."""
        out = self._postqueue("-j")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue_empty(self) -> bool:
        return not self.queue()

    def flush(self) -> None:
        """Retry all deferred mail now (`postqueue -f`)."""
        self._postqueue("-f")

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postfix queue not empty after {timeout}s: "
                                   f"{self.queue()}")
            time.sleep(0.2)
