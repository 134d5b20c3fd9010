"""The one SASL decoder: PLAIN, LOGIN and CRAM-MD5, for SMTP, IMAP and POP3.

An exchange is a small state machine fed the client's responses (the
base64 text of each line, the protocol's framing already removed) and
answering with the next challenge or the outcome. It decides nothing about
the credentials: the protocol machine does, from the Credentials it gets.

Rules:
- base64 is strict (RFC 4648, stdlib): anything else is Undecodable.
- "*" cancels at any step (RFC 4954 4, RFC 3501 6.2.2, RFC 5034 4).
- An empty initial response ("=" in SMTP, RFC 4954) is an empty string.
- PLAIN: [authzid] NUL authcid NUL passwd (RFC 4616); LOGIN: a username
  then a password prompt (draft-murchison-sasl-login); CRAM-MD5: the
  server's challenge, then "user hexdigest" (RFC 2195).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
from dataclasses import dataclass

from looper.proto.text import as_text

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")

LOGIN_USERNAME_PROMPT = b"Username:"
LOGIN_PASSWORD_PROMPT = b"Password:"
# One response line; a real client's is a few hundred bytes at most.
MAX_RESPONSE_BYTES = 12 * 1024


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send this to the client (the protocol base64-encodes it)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client claimed; password for PLAIN and LOGIN, digest for CRAM-MD5."""

    mechanism: str
    username: str
    password: str | None = None
    authzid: str | None = None
    digest: str | None = None
    challenge: str | None = None


class Failure(enum.Enum):
    CANCELLED = "cancelled"  # the client sent "*"
    UNDECODABLE = "undecodable"  # not base64
    MALFORMED = "malformed"  # base64, but not what the mechanism expects


Outcome = Challenge | Credentials | Failure


def decode_response(line: bytes | str) -> bytes | Failure:
    """A client's base64 response line, decoded; "*" is a cancel."""
    raw = line.encode("ascii", "replace") if isinstance(line, str) else bytes(line)
    raw = raw.strip()
    if raw == b"*":
        return Failure.CANCELLED
    if raw == b"=":
        return b""
    if len(raw) > MAX_RESPONSE_BYTES:
        return Failure.MALFORMED
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return Failure.UNDECODABLE


class SaslExchange:
    """One authentication exchange of one mechanism."""

    def __init__(self, mechanism: str, *, cram_challenge: str = "", empty_login_username: bool = False) -> None:
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._cram_challenge = cram_challenge
        # LOGIN with an empty user name goes on to the password (Exim's
        # plaintext authenticator) instead of failing at once (Dovecot).
        self._empty_login_username = empty_login_username
        self._username: str | None = None
        self.done = False

    def start(self, initial_response: bytes | str | None) -> Outcome:
        """Begin, with the initial response if the client sent one."""
        if initial_response is None:
            if self.mechanism == "PLAIN":
                return Challenge(b"")
            if self.mechanism == "LOGIN":
                return Challenge(LOGIN_USERNAME_PROMPT)
            return Challenge(self._cram_challenge.encode("ascii"))
        if self.mechanism == "CRAM-MD5":  # the server speaks first (RFC 2195)
            return self._finish(Failure.MALFORMED)
        return self.respond(initial_response)

    def respond(self, line: bytes | str) -> Outcome:
        """The client's next response line."""
        if self.done:
            raise RuntimeError("the SASL exchange is over")
        decoded = decode_response(line)
        if isinstance(decoded, Failure):
            return self._finish(decoded)
        if self.mechanism == "PLAIN":
            parts = decoded.split(b"\0")
            if len(parts) != 3:
                return self._finish(Failure.MALFORMED)
            authzid, username, password = (as_text(p) for p in parts)
            return self._finish(Credentials("PLAIN", username, password=password, authzid=authzid or None))
        if self.mechanism == "LOGIN":
            if self._username is None:
                if not decoded and not self._empty_login_username:
                    return self._finish(Failure.MALFORMED)  # no user name
                self._username = as_text(decoded)
                return Challenge(LOGIN_PASSWORD_PROMPT)
            return self._finish(Credentials("LOGIN", self._username, password=as_text(decoded)))
        username, _, digest = as_text(decoded).rpartition(" ")
        if not username or not digest:
            return self._finish(Failure.MALFORMED)
        return self._finish(
            Credentials("CRAM-MD5", username, digest=digest.lower(), challenge=self._cram_challenge)
        )

    def _finish(self, outcome: Outcome) -> Outcome:
        self.done = True
        return outcome


def cram_md5_digest(password: str, challenge: str) -> str:
    """What a client holding `password` answers to `challenge` (RFC 2195)."""
    return hmac.new(password.encode("utf-8"), challenge.encode("ascii"), "md5").hexdigest()
