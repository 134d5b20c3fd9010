"""The one SASL decoder: PLAIN, LOGIN, CRAM-MD5 and DIGEST-MD5, for SMTP,
IMAP and POP3.

An exchange is a small state machine fed the client's responses (the
base64 text of each line, the protocol's framing already removed) and
answering with the next challenge or the outcome. It decides nothing about
the credentials: the protocol machine does, from the Credentials it gets,
and tells the exchange with admit(); DIGEST-MD5 then proves that the server
knew the password too (rspauth) and ends when the client has taken the
proof (Acknowledged).

    RESPONSE --Challenge--> RESPONSE
    RESPONSE --Failure--> DONE
    RESPONSE --Credentials--> VERDICT --admit()--> DONE, or (DIGEST-MD5)
        PROOF --Acknowledged or Failure--> DONE

Rules:
- base64 is strict (RFC 4648, stdlib): anything else is Undecodable.
- "*" cancels at any step (RFC 4954 4, RFC 3501 6.2.2, RFC 5034 4).
- An empty initial response ("=" in SMTP, RFC 4954) is an empty string.
- PLAIN: [authzid] NUL authcid NUL passwd (RFC 4616); LOGIN: a username
  then a password prompt (draft-murchison-sasl-login); CRAM-MD5: the
  server's challenge, then "user hexdigest" (RFC 2195); DIGEST-MD5: the
  server's challenge, the client's directives (digest_md5.py), rspauth and
  an empty response (RFC 2831 2.1).
- A machine that judges the Credentials a failure simply drops the exchange.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from dataclasses import dataclass

from looper.proto.digest_md5 import DigestChallenge, DigestMd5Directives, read_response
from looper.proto.text import as_text

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5")

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
    """What the client claimed: a password (PLAIN, LOGIN), or a digest and
    what it was computed over (CRAM-MD5's challenge, DIGEST-MD5's directives)."""

    mechanism: str
    username: str
    password: str | None = None
    authzid: str | None = None
    digest: str | None = None
    challenge: str | None = None
    directives: DigestMd5Directives | None = None


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The client took the server's proof with an empty response: the
    login the machine admitted is complete."""

    credentials: Credentials


class Failure(enum.Enum):
    CANCELLED = "cancelled"  # the client sent "*"
    UNDECODABLE = "undecodable"  # not base64
    MALFORMED = "malformed"  # base64, but not what the mechanism expects


Outcome = Challenge | Credentials | Acknowledged | Failure


class Step(enum.Enum):
    RESPONSE = "response"  # the client's next response is due
    VERDICT = "verdict"  # Credentials given: the machine judges them (admit)
    PROOF = "proof"  # rspauth sent: the client's empty response is due
    DONE = "done"


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

    def __init__(self, mechanism: str, *, cram_challenge: str = "", digest_challenge: DigestChallenge | None = None,
                 empty_login_username: bool = False) -> None:
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        if mechanism == "DIGEST-MD5" and digest_challenge is None:
            raise ValueError("DIGEST-MD5 needs a digest_challenge")
        self.mechanism = mechanism
        self._cram_challenge = cram_challenge
        self._digest_challenge = digest_challenge
        # LOGIN with an empty user name goes on to the password (Exim's
        # plaintext authenticator) instead of failing at once (Dovecot).
        self._empty_login_username = empty_login_username
        self._username: str | None = None
        self._credentials: Credentials | None = None  # given, awaiting the verdict or the proof's acknowledgement
        self.step = Step.RESPONSE

    @property
    def done(self) -> bool:
        """No response may come now: over, or the machine's verdict is due."""
        return self.step in (Step.VERDICT, Step.DONE)

    def start(self, initial_response: bytes | str | None) -> Outcome:
        """Begin, with the initial response if the client sent one."""
        if initial_response is None:
            if self.mechanism == "PLAIN":
                return Challenge(b"")
            if self.mechanism == "LOGIN":
                return Challenge(LOGIN_USERNAME_PROMPT)
            if self.mechanism == "DIGEST-MD5":
                return Challenge(self._digest_challenge.text().encode("utf-8"))
            return Challenge(self._cram_challenge.encode("ascii"))
        if self.mechanism in ("CRAM-MD5", "DIGEST-MD5"):  # the server speaks first (RFC 2195, RFC 2831 2.1)
            return self._finish(Failure.MALFORMED)
        return self.respond(initial_response)

    def respond(self, line: bytes | str) -> Outcome:
        """The client's next response line."""
        if self.done:
            over = self.step is Step.DONE
            raise RuntimeError("the SASL exchange is over" if over else "the SASL exchange awaits admit()")
        decoded = decode_response(line)
        if isinstance(decoded, Failure):
            return self._finish(decoded)
        if self.step is Step.PROOF:  # RFC 2831 2.1.3: the client answers rspauth with nothing
            return self._finish(Acknowledged(self._credentials) if not decoded else Failure.MALFORMED)
        if self.mechanism == "PLAIN":
            parts = decoded.split(b"\0")
            if len(parts) != 3:
                return self._finish(Failure.MALFORMED)
            authzid, username, password = (as_text(p) for p in parts)
            return self._judge(Credentials("PLAIN", username, password=password, authzid=authzid or None))
        if self.mechanism == "LOGIN":
            if self._username is None:
                if not decoded and not self._empty_login_username:
                    return self._finish(Failure.MALFORMED)  # no user name
                self._username = as_text(decoded)
                return Challenge(LOGIN_PASSWORD_PROMPT)
            return self._judge(Credentials("LOGIN", self._username, password=as_text(decoded)))
        if self.mechanism == "DIGEST-MD5":
            response = read_response(as_text(decoded), self._digest_challenge)
            if response is None:
                return self._finish(Failure.MALFORMED)
            return self._judge(Credentials("DIGEST-MD5", response.username, authzid=response.authzid,
                                           digest=response.response, directives=response.directives))
        username, _, digest = as_text(decoded).rpartition(" ")
        if not username or not digest:
            return self._finish(Failure.MALFORMED)
        return self._judge(
            Credentials("CRAM-MD5", username, digest=digest.lower(), challenge=self._cram_challenge)
        )

    def admit(self, password: str | None) -> Challenge | None:
        """The machine admitted the Credentials just given; `password` is the
        configured one they prove (None: admitted without it, accept_after).
        DIGEST-MD5 answers with the server's proof, rspauth (RFC 2831 2.1.3),
        and waits for the client to take it; the others are done."""
        if self.step is not Step.VERDICT:
            raise RuntimeError("admit() without Credentials to admit")
        if self.mechanism != "DIGEST-MD5":
            self.step = Step.DONE
            return None
        credentials = self._credentials
        if password is None:  # we cannot prove what we never knew: a proof of the right shape
            rspauth = self._digest_challenge.stand_in_rspauth
        else:
            rspauth = digest_md5_digest(password, credentials.username, credentials.directives, credentials.authzid,
                                        rspauth=True)
        self.step = Step.PROOF
        return Challenge(b"rspauth=" + rspauth.encode("ascii"))

    def _judge(self, credentials: Credentials) -> Credentials:
        self._credentials = credentials
        self.step = Step.VERDICT
        return credentials

    def _finish(self, outcome: Outcome) -> Outcome:
        self.step = Step.DONE
        return outcome


def cram_md5_digest(password: str, challenge: str) -> str:
    """What a client holding `password` answers to `challenge` (RFC 2195)."""
    return hmac.new(password.encode("utf-8"), challenge.encode("ascii"), "md5").hexdigest()


def digest_md5_digest(password: str, username: str, directives: DigestMd5Directives, authzid: str | None = None,
                      *, rspauth: bool = False) -> str:
    """What a client holding `password` sends as DIGEST-MD5's response with
    these directives (RFC 2831 2.1.2.1, md5-sess, qop auth); rspauth: the
    server's proof instead (2.1.3, A2 without "AUTHENTICATE")."""
    secret = f"{username}:{directives.realm}:{password}"
    try:  # ISO 8859-1 whenever it can say it, else UTF-8 (RFC 2831 2.1.2.1, charset)
        secret_bytes = secret.encode("latin-1")
    except UnicodeEncodeError:
        secret_bytes = _utf8(secret)
    a1 = hashlib.md5(secret_bytes).digest() + _utf8(f":{directives.nonce}:{directives.cnonce}")
    if authzid:
        a1 += _utf8(f":{authzid}")
    a2 = ("" if rspauth else "AUTHENTICATE") + ":" + directives.digest_uri
    session = f"{_md5_hex(a1)}:{directives.nonce}:{directives.nc}:{directives.cnonce}:{directives.qop}:{_md5_hex(a2)}"
    return _md5_hex(session)


def _md5_hex(data: bytes | str) -> str:
    return hashlib.md5(data if isinstance(data, bytes) else _utf8(data)).hexdigest()


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # never raises: a digest of odd text is just wrong
