"""Fuzz target: the SASL decoder (looper/proto/sasl.py).

Input: one byte, then the client's response lines, separated by LF.
  bits 0-1  the mechanism: PLAIN, LOGIN, CRAM-MD5, DIGEST-MD5
  bit 2     the first line is the initial response (AUTH PLAIN <line>)
  bit 3     lines are given as str (IMAP's and POP3's way), else bytes
  bit 4     also round-trip the line through base64 (below)
  bit 5     the machine admits the Credentials it gets (knowing the
            password if bit 6), so DIGEST-MD5 goes on to its rspauth step

Beyond "never raises" (but for responding after the end, which is the
caller's mistake and must raise RuntimeError), it checks:
- every outcome is a Challenge, Credentials, Acknowledged or a Failure, and
  the exchange ends within the mechanism's number of steps (PLAIN 1, LOGIN
  2, CRAM-MD5 1 after the server's challenge, DIGEST-MD5 2: the directives
  and, once admitted, the empty answer to rspauth);
- Credentials hold str fields that encode as UTF-8 (they go to the log);
  DIGEST-MD5's carry our nonce, nc 00000001, qop auth and a 32-hex digest;
- decode_response(base64 of x) is x (or MALFORMED past the size limit);
  "*" is CANCELLED, "=" is b"";
- PLAIN of authzid NUL user NUL password (each UTF-8 without NUL) gives
  exactly those back.
"""

from __future__ import annotations

import base64

from _harness import Reader, check, instrumented, main

with instrumented(__name__ == "__main__"):
    from looper.proto.digest_md5 import DigestChallenge
    from looper.proto.sasl import (
        MAX_RESPONSE_BYTES,
        Acknowledged,
        Challenge,
        Credentials,
        Failure,
        SaslExchange,
        decode_response,
    )

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5")
MAX_RESPONSES = {"PLAIN": 1, "LOGIN": 2, "CRAM-MD5": 1, "DIGEST-MD5": 2}  # the initial response included
CHALLENGE = "<1234567890123456.1795000000@mx.trap.example.net>"
DIGEST_CHALLENGE = DigestChallenge("b4dJ9sCh5VNM/6Cw9zxwKJOvKwTwPThVr1Pw0hqpRuc=", "mx.trap.example.net")
HEX = frozenset("0123456789abcdef")


def check_outcome(outcome: object) -> None:
    check(isinstance(outcome, (Challenge, Credentials, Acknowledged, Failure)), f"outcome {outcome!r}")
    if isinstance(outcome, Challenge):
        check(isinstance(outcome.data, bytes), "challenge data not bytes")
    if isinstance(outcome, Acknowledged):
        outcome = outcome.credentials
    if isinstance(outcome, Credentials):
        fields = [getattr(outcome, name) for name in ("mechanism", "username", "password", "authzid", "digest",
                                                      "challenge")]
        if outcome.directives is not None:
            directives = outcome.directives
            fields += [directives.realm, directives.nonce, directives.cnonce, directives.nc, directives.qop,
                       directives.digest_uri]
            check(directives.nonce == DIGEST_CHALLENGE.nonce and directives.nc == "00000001", "not our nonce or nc")
            check(directives.qop == "auth" and len(outcome.digest) == 32 and set(outcome.digest) <= HEX, "digest")
        for value in fields:
            check(value is None or isinstance(value, str), f"{value!r} is {type(value).__name__}")
            if value is not None:
                value.encode("utf-8")  # no lone surrogates: the log writes UTF-8


def exchange(mechanism: str, initial: bytes | str | None, lines: list, admit: bool, password: str | None) -> None:
    sasl = SaslExchange(mechanism, cram_challenge=CHALLENGE, digest_challenge=DIGEST_CHALLENGE)
    outcome = sasl.start(initial)
    responses = 0 if initial is None else 1
    for line in [None, *lines]:
        if isinstance(outcome, Credentials) and admit:
            check_outcome(outcome)
            outcome = sasl.admit(password) or Acknowledged(outcome)
            if isinstance(outcome, Challenge):
                check(mechanism == "DIGEST-MD5" and outcome.data.startswith(b"rspauth="), "a proof not DIGEST-MD5's")
        if line is not None:
            if sasl.done:
                try:
                    sasl.respond(line)
                except RuntimeError:
                    return
                check(False, "respond() after the end did not raise")
            outcome = sasl.respond(line)
            responses += 1
        check_outcome(outcome)
        check(isinstance(outcome, Challenge) != sasl.done, f"{outcome!r} with done={sasl.done}")
        check(sasl.done or responses < MAX_RESPONSES[mechanism], "the exchange does not end in time")


def round_trip(raw: bytes) -> None:
    encoded = base64.b64encode(raw)
    decoded = decode_response(encoded)
    if len(encoded) > MAX_RESPONSE_BYTES:
        check(decoded is Failure.MALFORMED, "an oversized response was decoded")
    else:
        check(decoded == raw, "base64 round trip")
        check(decode_response(b" " + encoded + b"\r\n") == raw, "surrounding space not ignored")
        check(decode_response(encoded.decode("ascii")) == raw, "str and bytes decode differently")
    check(decode_response(b"*") is Failure.CANCELLED and decode_response("*") is Failure.CANCELLED, "cancel")
    check(decode_response(b"=") == b"" and decode_response("=") == b"", "empty initial response")
    parts = raw.split(b"\0")
    if len(parts) == 3:
        try:
            authzid, user, password = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            return
        if len(encoded) <= MAX_RESPONSE_BYTES:
            got = SaslExchange("PLAIN").start(encoded)
            check(
                got == Credentials("PLAIN", user, password=password, authzid=authzid or None),
                f"PLAIN gave {got!r}",
            )


def test_one_input(data: bytes) -> None:
    reader = Reader(data)
    flags = reader.byte()
    rest = reader.rest()
    mechanism = MECHANISMS[flags & 3]
    lines: list = rest.split(b"\n")
    if flags & 8:
        lines = [line.decode("latin-1") for line in lines]
    initial = lines.pop(0) if flags & 4 else None
    exchange(mechanism, initial, lines, admit=bool(flags & 32), password="admin" if flags & 64 else None)
    if flags & 16:
        round_trip(rest)
    decode_response(rest)


if __name__ == "__main__":
    main("sasl", test_one_input, dictionary="sasl.dict")
