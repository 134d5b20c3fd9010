"""A private, throwaway Postfix instance for the tests (not a test module).

`PrivatePostfix` writes its own main.cf/master.cf, queue and data directories
under a temporary directory and runs `postfix -c DIR start`. The system
instance (/etc/postfix, /var/spool/postfix) is neither read for settings nor
started, stopped or modified.

Why plain `postfix -c DIR` is enough: `alternate_config_directories` (in the
default main.cf) is only consulted by the set-gid/unprivileged commands
(postdrop, postqueue, sendmail run by a non-root user). We are root, so
`postfix -c DIR`, `postqueue -c DIR` and `postsuper -c DIR` accept any
directory, and the master exports MAIL_CONFIG=DIR to every daemon it starts.
We use no `postmulti` (that would have to edit /etc/postfix/main.cf).
Because the directory is not in the default instance's
multi_instance_directories, `postfix start` treats us as a primary instance
and only *checks* (never changes) the shared files in /usr/lib/postfix and
/etc/postfix (`post-install create-missing` creates only our queue dirs).

The instance is an open relay for 127.0.0.0/8 on relay_ip:25 only; mail for
`spamtrap.test` goes to smtp:[trap_host]:trap_port from relay_ip; every other
destination (bounces, postmaster notices) is *discarded* locally, so nothing
can leave 127.0.0.1 and bounce loops cannot form. Logs go to DIR/maillog via
postlogd (maillog_file, Postfix >= 3.4), no syslog needed.

Daemons run without chroot: Debian's stock master.cf chroots most services into
the queue directory, which needs copies of /etc files (done by Debian's
init/systemd scripts, not by `postfix start`). We do not need that isolation.
"""

from __future__ import annotations

import json
import os
import pwd
import grp
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
SNAKEOIL_CERT = Path("/etc/ssl/certs/ssl-cert-snakeoil.pem")
SNAKEOIL_KEY = Path("/etc/ssl/private/ssl-cert-snakeoil.key")
SPAMTRAP_DOMAIN = "spamtrap.test"
CMD_TIMEOUT = 60.0

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


def postfix_available() -> bool:
    """True if Postfix (>= 3.4, for maillog_file) is installed and we are root."""
    if os.geteuid() != 0:
        return False
    if not all(os.access(p, os.X_OK) for p in (POSTFIX, POSTCONF, POSTQUEUE)):
        return False
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
        out = subprocess.run(
            [POSTCONF, "-dh", "mail_version"], capture_output=True, text=True,
            timeout=CMD_TIMEOUT, check=True,
        ).stdout.strip()
    except (KeyError, OSError, subprocess.SubprocessError):
        return False
    major, minor = (int(x) for x in out.split(".")[:2])
    return (major, minor) >= (3, 4)


class PostfixError(RuntimeError):
    pass


class PrivatePostfix:
    """A private Postfix open relay on relay_ip:25, for tests.

    Use as a context manager (`with PrivatePostfix(tmp_path) as pf:`) or call
    start()/stop() yourself; stop() is idempotent and always safe to call.
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike,
        *,
        relay_ip: str = "127.0.0.2",
        trap_host: str = "127.0.0.1",
        trap_port: int = 25,
        myhostname: str = "relay.looper.test",
        extra_main_cf: dict[str, str] | None = None,
    ) -> None:
        for ip in (relay_ip, trap_host):
            if not ip.startswith("127."):
                raise ValueError(f"refusing non-loopback address {ip!r}")
        self.base = Path(tmpdir).resolve() / "postfix"
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "spool"
        self.data_dir = self.base / "data"
        self.log_file = self.base / "maillog"
        self.relay_ip = relay_ip
        self.trap_host = trap_host
        self.trap_port = trap_port
        self.myhostname = myhostname
        self.extra_main_cf = dict(extra_main_cf or {})
        self._started = False

    # ----------------------------------------------------------- config
    def main_cf(self) -> dict[str, str]:
        cert, key = self._tls_files()
        nexthop = f"smtp:[{self.trap_host}]:{self.trap_port}"
        cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.base),
            # Names: ours must differ from the host's and the trap's.
            "myhostname": self.myhostname,
            "mydomain": "looper.test",
            "myorigin": "$myhostname",
            "smtpd_banner": "$myhostname ESMTP $mail_name (Debian/GNU)",
            # Listen and send from relay_ip only, IPv4 only.
            "inet_interfaces": self.relay_ip,
            "inet_protocols": "ipv4",
            "smtp_bind_address": self.relay_ip,
            # Open relay for loopback clients (the trap dials back from 127.0.0.1).
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            # No local delivery at all; spamtrap.test goes to the trap,
            # everything else (bounces, postmaster notices) is discarded.
            "mydestination": "",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "transport_maps": f"inline:{{ {SPAMTRAP_DOMAIN} = {nexthop} }}",
            "default_transport": "discard:looper test: no delivery outside spamtrap.test",
            "local_transport": "discard:looper test: no local delivery",
            "biff": "no",
            "append_dot_mydomain": "no",
            # No DNS anywhere (the sandbox has none): no reverse lookups of
            # clients; nexthops are bracketed IP literals.
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            # Debian's TLS defaults (main.cf.tls).
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_security_level": "may",
            "smtp_tls_CApath": "/etc/ssl/certs",
            "smtp_tls_security_level": "may",
            "smtp_tls_session_cache_database": "btree:${data_directory}/smtp_scache",
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
        # ssl-cert installed but no snakeoil pair (e.g. stripped image):
        # make a private self-signed pair instead of touching /etc/ssl.
        cert, key = self.base / "cert.pem", self.base / "key.pem"
        if not cert.exists():
            self.base.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-days", "30", "-subj", f"/CN={self.myhostname}",
                 "-keyout", str(key), "-out", str(cert)],
                capture_output=True, timeout=CMD_TIMEOUT, check=True,
            )
            key.chmod(0o600)
        return cert, key

    def _write_config(self) -> None:
        for d in (self.base, self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, 0, 0)
            d.chmod(0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        self.data_dir.chmod(0o700)
        lines = [f"{k} = {v}" for k, v in self.main_cf().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        (self.config_dir / "master.cf").write_text(MASTER_CF)

    # ---------------------------------------------------------- control
    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, MAIL_CONFIG=str(self.config_dir))
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, env=env,
            timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise PostfixError(
                f"{' '.join(argv)} exited {proc.returncode}: "
                f"{proc.stderr.strip() or proc.stdout.strip()}\n"
                + "\n".join(self.log_lines()[-20:])
            )
        return proc

    def start(self, timeout: float = 30.0) -> "PrivatePostfix":
        self._port_free_or_raise()
        self._write_config()
        self._started = True
        try:
            self._run(POSTFIX, "-c", str(self.config_dir), "start")
            self._wait_banner(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the instance and make sure none of its processes survive."""
        if not self._started:
            return
        self._started = False
        try:
            self._run(POSTFIX, "-c", str(self.config_dir), "stop", check=False)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        sig = signal.SIGTERM
        while pids := self.pids():
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGKILL and time.monotonic() > deadline + 5:
                raise PostfixError(f"postfix processes survive SIGKILL: {pids}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """PIDs of this instance: processes whose MAIL_CONFIG is our dir."""
        needle = f"MAIL_CONFIG={self.config_dir}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if needle in env:
                found.append(int(entry))
        return found

    def __enter__(self) -> "PrivatePostfix":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _port_free_or_raise(self) -> None:
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex((self.relay_ip, 25)) == 0:
                raise PostfixError(
                    f"something already listens on {self.relay_ip}:25 "
                    "(a system Postfix? see `ss -ltnp`)"
                )

    def _wait_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.relay_ip, 25), timeout=2) as s:
                    if s.recv(512).startswith(b"220 "):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise PostfixError(f"postfix did not greet on {self.relay_ip}:25: {last}")

    # ------------------------------------------------------------- mail
    def inject(
        self,
        mail_from: str,
        rcpt: str | list[str],
        message: bytes,
        *,
        helo: str = "client.looper.test",
        starttls: bool = False,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """Send one message to relay_ip:25 with smtplib; return the reply to
        the end of DATA (e.g. (250, b'2.0.0 Ok: queued as 4Xy...')).

        MAIL/RCPT refusals raise smtplib.SMTPResponseException."""
        rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        with smtplib.SMTP(self.relay_ip, 25, local_hostname=helo, timeout=timeout) as c:
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
        m = re.search(rb"queued as ([0-9A-Za-z]+)", reply[1])
        return m.group(1).decode() if m else None

    def log_lines(self) -> list[str]:
        try:
            return self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """Wait until a log line matches the regex; return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if m := rx.search(line):
                    return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"no log line matching {pattern!r} in {timeout}s")
            time.sleep(0.1)

    def queue(self) -> list[dict]:
        """The queue as `postqueue -j` objects (queue_id, queue_name, ...)."""
        out = self._run(POSTQUEUE, "-c", str(self.config_dir), "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue_empty(self) -> bool:
        return not self.queue()

    def flush(self) -> None:
        """Ask the queue manager to retry all deferred mail now."""
        self._run(POSTQUEUE, "-c", str(self.config_dir), "-f")

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() > deadline:
                raise TimeoutError(f"postfix queue not empty after {timeout}s")
            time.sleep(0.2)
