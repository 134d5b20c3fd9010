"""TLS for the emulated servers: the certificate, and a server context that
negotiates like Debian's Postfix out of the box.

Without a configured certificate the trap makes one at first start and keeps
it: a self-signed one in the shape of Debian's snakeoil (make-ssl-cert, the
certificate an unconfigured Postfix on Debian presents): RSA 2048, sha256,
3650 days from now, a random 159-bit serial, subject and issuer just
CN=<host name>, and the extensions `openssl req` writes from ssl-cert's
template: basicConstraints CA:FALSE, subjectAltName DNS:<host name>,
subjectKeyIdentifier. Like make-ssl-cert, the common name is the full host
name unless it is longer than a common name may be (64), then its first
label; the subjectAltName is always the full name.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from looper.config import TLSFileError, load_tls_files
from looper.files import write_atomically

TLS_FOLDER = "tls"

RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
CERT_VALID_DAYS = 3650  # make-ssl-cert's default --expiration-days
COMMON_NAME_MAX_CHARS = 64  # X.520 ub-common-name

# Postfix's smtpd_tls_ciphers = medium, i.e. its tls_medium_cipherlist:
# broader than Python's default list (CBC and plain-RSA suites, CAMELLIA,
# ARIA), which matters when the clients are old spam bots. OpenSSL's
# security level (2 on Debian) drops what it forbids, as it does for Postfix.
POSTFIX_MEDIUM_CIPHERS = "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH"

# Postfix allows ">=TLSv1", but OpenSSL 3 at security level 1 or more (Debian
# builds level 2) refuses TLS 1.0 and 1.1: 1.2 is what such a Postfix takes.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2

# Postfix's tls_preempt_cipherlist = no: the client's preference wins. Python
# sets server preference by default, which shows in which suite a client gets.
PREFER_SERVER_CIPHERS = False


class TLSSetupError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


def server_context(cert_path: str | None, key_path: str | None, *, hostname: str, folder: str) -> ssl.SSLContext:
    """A server-side context with the configured certificate (`key_path`
    None: the key is in the certificate's file, as Postfix allows), or with
    the trap's own self-signed one for `hostname`, kept in `folder`/tls."""
    if cert_path is None:
        if key_path is not None:
            raise TLSSetupError(f"a TLS key ({key_path}) is configured without its certificate")
        cert_path, key_path = ensure_self_signed(hostname, folder)
    context = _postfix_like_context()
    try:
        load_tls_files(context, cert_path, key_path)  # as check-config checks them
    except TLSFileError as err:
        raise TLSSetupError(str(err)) from err
    return context


def _postfix_like_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # asks for no client certificate, as Postfix
    context.minimum_version = MINIMUM_TLS_VERSION
    context.set_ciphers(POSTFIX_MEDIUM_CIPHERS)
    if not PREFER_SERVER_CIPHERS:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # Not Postfix's default, but renegotiation does nothing for a trap except
    # let a client make it do handshakes on demand (bounded everything).
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def snakeoil_host_name() -> str:
    """The name Debian's snakeoil certificate carries, which Postfix, Exim and
    Dovecot serve by default: make-ssl-cert's `hostname -f` (the host's
    canonical name), else `hostname`. Not the mail name: on a real server
    the two often differ, and a certificate named exactly like the banner
    is one more sign of a server made up for the occasion."""
    short = socket.gethostname()
    try:
        canonical = socket.getaddrinfo(short, None, flags=socket.AI_CANONNAME)[0][3]
    except (OSError, IndexError, UnicodeError):
        canonical = ""
    return canonical or short or "localhost"


def self_signed_paths(hostname: str, folder: str) -> tuple[Path, Path]:
    """Where the certificate and key for `hostname` live: named after the
    host, so that renaming the trap gives it a matching certificate."""
    if not hostname or hostname in (".", "..") or "/" in hostname or "\\" in hostname or "\0" in hostname:
        raise TLSSetupError(f"not a host name to make a certificate for: {hostname!r}")
    tls_folder = Path(folder) / TLS_FOLDER
    return tls_folder / f"{hostname}.pem", tls_folder / f"{hostname}.key"


def ensure_self_signed(hostname: str, folder: str) -> tuple[str, str]:
    """The paths of the self-signed certificate and key for `hostname`,
    made now unless a usable pair is already there."""
    cert_path, key_path = self_signed_paths(hostname, folder)
    if cert_path.exists() and key_path.exists() and not _expired(cert_path):
        return str(cert_path), str(key_path)
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the key is in it
        cert_pem, key_pem = make_self_signed(hostname)
        # The key first: a certificate on disk always has its key beside it.
        write_atomically(key_path, key_pem, mode=0o600)
        write_atomically(cert_path, cert_pem, mode=0o644)
    except OSError as err:
        raise TLSSetupError(
            f"cannot write the self-signed TLS certificate to {err.filename or cert_path.parent}: {err.strerror or err}"
        ) from err
    return str(cert_path), str(key_path)


def make_self_signed(hostname: str, *, now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#8 key PEM) shaped like Debian's snakeoil."""
    key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)
    common_name = hostname if len(hostname) <= COMMON_NAME_MAX_CHARS else hostname.split(".")[0]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    # openssl req takes the current second as notBefore; no backdating.
    start = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CERT_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _expired(cert_path: Path) -> bool:
    """A kept certificate that has expired (or cannot be read) is made anew."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    return certificate.not_valid_after_utc <= datetime.datetime.now(datetime.timezone.utc)


# Exim 4.96 with no tls_certificate (Debian's exim4 as installed) makes its
# certificate when a TLS session starts (tls-gnu.c, tls_install_selfsign):
# C=UK, O=Exim Developers, CN=the host name it answers as, valid from that
# second for two hours, serial 1 written as a native time_t (8 bytes, little
# endian: 0x0100000000000000), RSA 2048, no extensions.
EXIM_CERT_VALID = datetime.timedelta(hours=2)
EXIM_CERT_SERIAL = int.from_bytes((1).to_bytes(8, "little"), "big")
# A session's certificate may be this many seconds old: one signing per
# second at most, however many sessions start.
EXIM_CERT_REUSE_SECONDS = 1.0


class EximSelfSigned:
    """The exim persona's certificate, made anew for the sessions that start
    (at most once a second), as Exim makes one per session. `context` is
    what listeners and STARTTLS are given; each handshake is moved to the
    current certificate's context by its SNI callback, which OpenSSL calls
    for every ClientHello, with or without a server name.

    One key for the trap's life: Exim makes a key per session too, but
    generating RSA keys per connection would let any client spend the
    trap's CPU at will (a client comparing keys across sessions sees it)."""

    def __init__(self, hostname: str, folder: str) -> None:
        self.hostname = hostname
        self.folder = Path(folder) / TLS_FOLDER
        self._key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)
        self._made_at = 0.0
        self._current: ssl.SSLContext | None = None
        self.context = self._fresh()
        self.context.sni_callback = self._choose

    def certificate_pem(self, now: datetime.datetime) -> bytes:
        name = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "UK"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Exim Developers"),
            x509.NameAttribute(NameOID.COMMON_NAME, self.hostname[:COMMON_NAME_MAX_CHARS]),
        ])
        start = now.replace(microsecond=0)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(EXIM_CERT_SERIAL)
            .not_valid_before(start)
            .not_valid_after(start + EXIM_CERT_VALID)
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        ssl_object.context = self._fresh()
        return None

    def _fresh(self) -> ssl.SSLContext:
        clock = time.monotonic()
        if self._current is not None and clock - self._made_at < EXIM_CERT_REUSE_SECONDS:
            return self._current
        now = datetime.datetime.now(datetime.timezone.utc)
        key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # The ssl module loads certificates from files only: written, loaded, removed.
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle, path = tempfile.mkstemp(dir=self.folder, prefix=".exim-selfsign-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(key_pem + self.certificate_pem(now))
            context = _postfix_like_context()
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        self._current, self._made_at = context, clock
        return context
