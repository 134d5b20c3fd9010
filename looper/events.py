"""The one event type that every protocol core emits.

A core knows what it saw, never who it saw it from or when: the emitter in
eventlog.py adds the timestamp and the session's common fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """A fact seen by a protocol core: a dotted id and its own fields."""

    eventid: str
    fields: dict[str, Any] = field(default_factory=dict)


# -- every event looper logs, declared once ------------------------------------
#
# Each event id with its own fields and their JSON types ("str", "int",
# "float", "bool", "list", "dict" (an object), "null"; "a|b" for either; a
# trailing "?" for a field that only some of its events carry).
# docs/events.md documents exactly these (tests/test_docs.py), and every
# event the test suite sees in a log is checked against them
# (tests/conftest.py), so a field that is logged but not declared, or
# declared but typed otherwise, fails a test.

# What the emitter adds to every event (null for the trap's own, such as looper.log.dropped).
COMMON_FIELDS: dict[str, str] = {
    "timestamp": "str",
    "eventid": "str",
    "session": "str|null",
    "sensor": "str",
    "protocol": "str|null",
    "src_ip": "str|null",
    "src_port": "int|null",
    "dst_ip": "str|null",
    "dst_port": "int|null",
}

_LOGIN = {
    "mechanism": "str", "username": "str|null", "password": "str?", "digest": "str?", "challenge": "str?",
    "authzid": "str?",
    # DIGEST-MD5: what its digest was computed over (cracking it offline needs them all)
    "realm": "str?", "nonce": "str?", "cnonce": "str?", "nc": "str?", "qop": "str?", "digest_uri": "str?",
}
_REFLECT_PATH = {"address": "str|null", "params": "list", "code": "int|null", "reply": "str|null"}
_SMTP_PATH = {"address": "str|null", "params": "list", "code": "int|null", "reply": "str"}

EVENT_FIELDS: dict[str, dict[str, str]] = {
    "looper.session.connect": {},
    "looper.session.closed": {"mode": "str", "reason": "str", "duration": "float", "bytes_in": "int", "bytes_out": "int"},
    "looper.session.refused": {"reason": "str", "detail": "str"},
    "looper.session.error": {"error": "str"},
    "looper.dialback.ok": {"target": "str", "connect_ms": "float"},
    "looper.dialback.failed": {"target": "str", "reason": "str", "detail": "str"},
    "looper.reflect.greeting": {"code": "int|null", "text": "str|null", "pregreet_bytes": "int", "masked_as": "str|null"},
    "looper.reflect.helo": {"verb": "str", "name": "str", "code": "int|null", "reply": "str|null", "masked_as": "str|null"},
    "looper.reflect.ehlo_reply": {
        "code": "int", "name": "str", "extensions": "list", "starttls_stripped": "bool", "masked_as": "str|null",
    },
    "looper.reflect.mail": _REFLECT_PATH,
    "looper.reflect.rcpt": _REFLECT_PATH,
    "looper.reflect.message": {
        "mail_from": "str|null", "rcpt_to": "list", "transport": "str", "size": "int", "sha256": "str",
        "received_hops": "int", "headers_truncated": "bool", "message_id": "str|null", "subject": "str|null",
        "chain": "str", "complete": "bool", "code": "int|null", "reply": "str|null", "path": "str|null",
    },
    "looper.reflect.command": {"verb": "str|null", "argument": "str|null", "code": "int|null", "reply": "str|null"},
    "looper.reflect.tls": {},
    "looper.reflect.unparsed": {"direction": "str", "why": "str"},
    "looper.reflect.self_detected": {"name": "str", "where": "str"},
    "looper.command.input": {"input": "str"},
    "looper.smtp.helo": {"verb": "str", "name": "str", "claims_our_name": "bool", "reserved_name": "bool"},
    "looper.smtp.pregreet": {"bytes": "int"},
    "looper.smtp.mail": _SMTP_PATH,
    "looper.smtp.rcpt": _SMTP_PATH,
    "looper.smtp.message": {
        "queue_id": "str", "mail_from": "str", "rcpt_to": "list", "username": "str|null", "size": "int",
        "sha256": "str", "path": "str", "received_hops": "int", "message_id": "str|null", "subject": "str|null",
        "received_header": "str", "transport": "str",
    },
    "looper.smtp.store_failed": {"sha256": "str", "reason": "str"},
    "looper.smtp.message_cut": {"mail_from": "str", "rcpt_to": "list", "size": "int", "reason": "str"},
    "looper.smtp.limit": {"limit": "str", "seconds": "float?", "errors": "int?", "bytes": "int?"},
    "looper.smtp.forbidden": {"input": "str"},
    "looper.login.success": _LOGIN,
    "looper.login.failed": {**_LOGIN, "reason": "str"},
    "looper.bait.read": {"folder": "str", "uid": "int", "subject": "str|null", "what": "str"},
    "looper.imap.change": {
        "folder": "str", "uid": "int", "change": "str", "flags": "list", "how": "str|null", "to": "str|null",
    },
    "looper.imap.append": {
        "folder": "str", "uid": "int", "size": "int", "sha256": "str", "path": "str|null", "flags": "list",
        "subject": "str|null", "message_id": "str|null",
    },
    "looper.pop3.delete": {"action": "str", "uids": "list"},
    "looper.tls.established": {"version": "str", "cipher": "str"},
    "looper.tls.failed": {"error": "str"},
    "looper.dns.client": {
        "ptr": "str|null", "fcrdns": "bool|null", "dnsbl": "dict", "helo": "str|null", "helo_resolves": "bool|null",
        "unanswered": "list",
    },
    "looper.log.dropped": {"dropped": "int", "error": "str", "since": "str"},
    "looper.relay.verdict": {"relay_ip": "str", "verdict": "str", "evidence": "str"},
    "looper.relay.delisted": {"relay_ip": "str", "reason": "str|null", "requested_by": "str|null"},
    "looper.chain.ended": {
        "chain": "str", "relay_ip": "str", "passes": "int", "first_hops": "int|null", "last_hops": "int|null",
        "end": "str", "end_code": "int|null", "end_text": "str|null", "end_inferred": "bool", "duration": "float",
    },
}

_JSON_TYPES = {
    "str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict, "null": type(None),
}


def record_problems(record: dict[str, Any]) -> list[str]:
    """How a logged record differs from its declaration: unknown id,
    missing, unknown or mistyped fields. Empty when it matches."""
    eventid = record.get("eventid")
    if eventid not in EVENT_FIELDS:
        return [f"{eventid!r} is not a declared event"]
    problems = []
    declared = {**COMMON_FIELDS, **EVENT_FIELDS[eventid]}
    for name, spec in declared.items():
        optional = spec.endswith("?")
        if name not in record:
            if not optional:
                problems.append(f"{eventid}: {name} is missing")
            continue
        value = record[name]
        allowed = tuple(t for kind in spec.rstrip("?").split("|") for t in _as_tuple(_JSON_TYPES[kind]))
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            problems.append(f"{eventid}: {name} is {type(value).__name__}, declared {spec}")
    for name in record.keys() - declared.keys():
        problems.append(f"{eventid}: {name} is not declared")
    return problems


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
