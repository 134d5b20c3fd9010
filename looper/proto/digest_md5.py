"""DIGEST-MD5 (RFC 2831) as a server words it and reads it: the challenge,
and the client's directive list checked against it. The hashing is in
sasl.py beside CRAM-MD5's; the exchange's steps are SaslExchange's.

Rules:
- The challenge is worded as the server behind a persona words it: Cyrus
  SASL (sendmail) names our host as realm, offers every qop and cipher and
  a nonce of 32 random bytes; Dovecot offers realm="" (no auth_realms),
  qop "auth" and 16 bytes.
- A response is a directive list (RFC 2831 7.1): `name=value` pairs, comma
  separated, white space around them and empty elements allowed; a value is
  a token or a quoted-string with backslash escapes. Only qop=auth is
  taken (no integrity or privacy layer follows), nc must be 00000001 (no
  re-authentication), the nonce must be ours, a charset can only be utf-8,
  and a directive given twice, or one of username, nonce, cnonce, nc,
  response, digest-uri missing, makes it malformed, as Cyrus and Dovecot
  reject it.
- Parsing is linear and bounded: Cyrus drops a response over 4096 bytes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass

# Cyrus SASL refuses a longer response outright (digestmd5.c, clientinlen).
MAX_DIGEST_RESPONSE_BYTES = 4096
# The servers whose challenge we word, and the random bytes in their nonce
# (Cyrus: 32, base64 in the recording; Dovecot: 128 bits, random_fill).
NONCE_BYTES = {"cyrus": 32, "dovecot": 16}
RSPAUTH_BYTES = 16  # an MD5 digest, as hex

_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z|~]+")
_SPACE = re.compile(r"[ \t\r\n]*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_ESCAPE = re.compile(r"\\(.)", re.S)
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}")
REQUIRED = ("username", "nonce", "cnonce", "response", "digest-uri")


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """One DIGEST-MD5 challenge: the nonce the response must carry back."""

    nonce: str  # base64 of the server's random bytes
    realm: str  # "" when the server names none (Dovecot without auth_realms)
    server: str = "cyrus"  # "cyrus" or "dovecot": whose wording
    # The rspauth shown to a client admitted without a known password
    # (accept_after): random, so that it looks like a real proof.
    stand_in_rspauth: str = "0" * 2 * RSPAUTH_BYTES

    @classmethod
    def drawn(cls, random_bytes: Callable[[int], bytes], realm: str, server: str = "cyrus") -> DigestChallenge:
        """A new challenge from the environment's randomness (the machines have none of their own)."""
        nonce = base64.b64encode(random_bytes(NONCE_BYTES[server])).decode("ascii")
        realm = "" if server == "dovecot" else realm
        return cls(nonce, realm, server, random_bytes(RSPAUTH_BYTES).hex())

    def text(self) -> str:
        if self.server == "dovecot":  # mech-digest-md5.c, get_digest_challenge
            return f'realm="{self.realm}",nonce="{self.nonce}",qop="auth",charset="utf-8",algorithm="md5-sess"'
        return (  # Cyrus SASL 2.1, as Debian 12's sendmail sent it (tests/data/sendmail/auth_unknown_mech.json)
            f'nonce="{self.nonce}",realm="{self.realm}",qop="auth,auth-int,auth-conf",'
            'cipher="rc4-40,rc4-56,rc4,des,3des",maxbuf=8192,charset=utf-8,algorithm=md5-sess'
        )


@dataclass(frozen=True, slots=True)
class DigestMd5Directives:
    """What the client sent besides its user name and response, all of it
    needed to verify the response (or to crack it offline)."""

    realm: str
    nonce: str
    cnonce: str
    nc: str
    qop: str
    digest_uri: str


@dataclass(frozen=True, slots=True)
class DigestMd5Response:
    username: str
    response: str  # 32 hex digits, lower case
    authzid: str | None
    directives: DigestMd5Directives


def parse_directives(text: str) -> dict[str, str] | None:
    """A directive list as name (lower case) to value, or None when it is
    not one or names a directive twice."""
    found: dict[str, str] = {}
    position, end = 0, len(text)
    while True:
        position = _SPACE.match(text, position).end()
        if position == end:
            return found
        if text[position] == ",":  # #rule: empty elements are allowed
            position += 1
            continue
        name = _TOKEN.match(text, position)
        if name is None:
            return None
        position = _SPACE.match(text, name.end()).end()
        if text[position:position + 1] != "=":
            return None
        position = _SPACE.match(text, position + 1).end()
        if quoted := _QUOTED.match(text, position):
            value, position = _ESCAPE.sub(r"\1", quoted.group(1)), quoted.end()
        elif token := _TOKEN.match(text, position):
            value, position = token.group(), token.end()
        else:
            return None
        key = name.group().lower()
        if key in found:
            return None
        found[key] = value
        position = _SPACE.match(text, position).end()
        if position < end and text[position] != ",":
            return None


def read_response(text: str, challenge: DigestChallenge) -> DigestMd5Response | None:
    """The client's answer to `challenge`, or None when it is malformed."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DIGEST_RESPONSE_BYTES:
        return None
    found = parse_directives(text)
    if found is None or any(not found.get(name) for name in REQUIRED):
        return None
    if found["nonce"] != challenge.nonce or found.get("nc", "") != "00000001":
        return None
    if found.get("qop", "auth") != "auth" or not _HEX_DIGEST.fullmatch(found["response"]):
        return None
    charset = found.get("charset")
    if charset is not None and charset.lower() != "utf-8":
        return None  # the only charset RFC 2831 allows
    directives = DigestMd5Directives(
        realm=found.get("realm", ""),
        nonce=found["nonce"],
        cnonce=found["cnonce"],
        nc=found["nc"],
        qop="auth",
        digest_uri=found["digest-uri"],
    )
    return DigestMd5Response(found["username"], found["response"].lower(), found.get("authzid") or None, directives)
