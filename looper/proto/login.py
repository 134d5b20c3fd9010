"""The one login policy of every emulated protocol (SMTP AUTH, IMAP and
POP3 logins): who gets in, how long a failure makes the client
wait, and the failures each address has run up, across its sessions and
across protocols. Plain bookkeeping, no I/O."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from looper.proto.sasl import Credentials, cram_md5_digest, digest_md5_digest

# Addresses whose failed logins are remembered (for accept_after and the
# failure delays, as Dovecot's penalty does); the oldest go first.
MAX_REMEMBERED_ADDRESSES = 100_000


@dataclass(frozen=True)
class LoginPolicy:
    credentials: frozenset[tuple[str, str]] = frozenset()
    # Any user:password once an address has failed this often (never at the
    # first try: honeypot detectors send a random pair first).
    accept_after: int | None = None
    # False (harvester mode): every login fails, whatever was sent.
    admits: bool = True

    def accepts(self, credentials: Credentials, earlier_failures: int) -> bool:
        if not self.admits:
            return False
        if credentials.authzid and credentials.authzid != credentials.username:
            return False  # Dovecot lets nobody act for another user
        known = self.password_of(credentials) is not None
        return known or (self.accept_after is not None and earlier_failures >= self.accept_after)

    def password_of(self, credentials: Credentials) -> str | None:
        """The configured password that the credentials prove, or None."""
        for user, password in self.credentials:
            if user == credentials.username and _proves(credentials, password):
                return password
        return None

    @staticmethod
    def failure_delay_s(failures: int, first_s: float, repeat_s: float) -> float:
        """Dovecot's: the first failure of an address waits less than the next ones."""
        return first_s if failures <= 1 else repeat_s


def _proves(credentials: Credentials, password: str) -> bool:
    """Would a client holding `password` have sent these credentials?"""
    if credentials.directives is not None:  # DIGEST-MD5
        return digest_md5_digest(password, credentials.username, credentials.directives,
                                 credentials.authzid) == credentials.digest
    if credentials.challenge is not None:  # CRAM-MD5
        return cram_md5_digest(password, credentials.challenge) == credentials.digest
    return credentials.password == password


def login_fields(credentials: Credentials) -> dict[str, Any]:
    """A login attempt as looper.login.success / looper.login.failed log it:
    what was tried, and for a digest all that cracking it offline needs."""
    fields: dict[str, Any] = {"mechanism": credentials.mechanism, "username": credentials.username}
    if credentials.directives is not None:
        directives = credentials.directives
        fields.update(digest=credentials.digest, realm=directives.realm, nonce=directives.nonce,
                      cnonce=directives.cnonce, nc=directives.nc, qop=directives.qop, digest_uri=directives.digest_uri)
    elif credentials.digest is not None:
        fields.update(digest=credentials.digest, challenge=credentials.challenge)
    else:
        fields["password"] = credentials.password
    if credentials.authzid:
        fields["authzid"] = credentials.authzid
    return fields


class FailureMemory:
    """Failed logins per address since its last success, whatever the
    protocol and however many sessions; bounded, the oldest forgotten first."""

    def __init__(self, max_addresses: int = MAX_REMEMBERED_ADDRESSES) -> None:
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def of(self, ip: str) -> int:
        return self._failures.get(ip, 0)

    def remember(self, ip: str, failures: int) -> None:
        if not failures:
            self._failures.pop(ip, None)
            return
        self._failures[ip] = failures
        self._failures.move_to_end(ip)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
