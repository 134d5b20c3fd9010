"""Which MTA a relay runs, from what crossed the splice.

Everything here was said by the relay's own server to the relay's own
client: the greeting, the EHLO reply (its first line's wording and the
order of its capabilities), the replies to MAIL and RCPT, and how a loop
ended. Each family is a table of tells, each tell worth some points; the
family with the most points wins, and the tells that matched are the
evidence. The texts come from the real servers from Debian's packages
(tests/data/mta/ holds the recordings the tests check these rules with).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# (what is looked at, pattern, points, what it shows). `what` is one of
# greeting, ehlo (the EHLO reply's first line), extensions (the capability
# lines joined by spaces, in order), reply (a MAIL/RCPT/DATA reply), end
# (the reply that refused a looping message).
_Tell = tuple[str, "re.Pattern[str]", int, str]


def _tells(*rows: tuple[str, str, int, str]) -> tuple[_Tell, ...]:
    return tuple((where, re.compile(pattern), points, why) for where, pattern, points, why in rows)


FAMILIES: dict[str, tuple[_Tell, ...]] = {
    "postfix": _tells(
        ("greeting", r"\bESMTP Postfix\b", 10, "greeting names Postfix"),
        ("extensions", r"^PIPELINING SIZE( \d+)? (VRFY )?ETRN\b", 4, "Postfix's capability order"),
        ("reply", r"^2\.1\.[05] Ok$", 2, "Postfix's '2.1.0 Ok' wording"),
        ("reply", r"Relay access denied$", 2, "Postfix's relay refusal"),
        ("end", r"Error: too many hops", 10, "Postfix's hop limit reply"),
    ),
    "exim": _tells(
        ("greeting", r"\bESMTP Exim\b", 10, "greeting names Exim"),
        ("ehlo", r"\bHello \S+ \[[0-9a-fA-F.:]+\]$", 3, "Exim's 'Hello name [ip]' EHLO line"),
        ("extensions", r"\bPIPE_CONNECT\b|\bPRDR\b", 3, "Exim-only capabilities (PRDR, PIPE_CONNECT)"),
        ("reply", r"^OK$|^Accepted$", 2, "Exim's bare 'OK'/'Accepted' wording"),
        ("reply", r"^relay not permitted$", 3, "Exim's relay refusal"),
        ("end", r"Too many \"?Received\"? headers", 10, "Exim's received_headers_max"),
    ),
    "sendmail": _tells(
        ("greeting", r"\bESMTP Sendmail\b", 10, "greeting names Sendmail"),
        ("ehlo", r"pleased to meet you$", 2, "'pleased to meet you' EHLO line (sendmail, OpenSMTPD)"),
        ("extensions", r"\bVERB\b|\bDELIVERBY\b", 3, "sendmail-only capabilities (VERB, DELIVERBY)"),
        ("reply", r"\.\.\. (Sender|Recipient) ok$", 3, "sendmail's '... Sender ok' wording"),
        ("reply", r"Relaying denied", 3, "sendmail's relay refusal"),
        ("end", r"Too many hops|loops back to me", 10, "sendmail's loop replies"),
    ),
    "opensmtpd": _tells(
        ("greeting", r"\bESMTP OpenSMTPD\b", 10, "greeting names OpenSMTPD"),
        ("ehlo", r"pleased to meet you$", 2, "'pleased to meet you' EHLO line (sendmail, OpenSMTPD)"),
        ("reply", r"^2\.0\.0 Ok$", 1, "OpenSMTPD's '2.0.0 Ok' wording"),
        ("reply", r"Invalid recipient|Relaying disallowed|[Rr]elay(ing)? denied", 1, "OpenSMTPD's relay refusal"),
        ("end", r"[Ll]oop detected", 10, "OpenSMTPD's loop reply"),
    ),
    "exchange": _tells(
        ("greeting", r"Microsoft ESMTP MAIL Service", 10, "greeting names Microsoft's service"),
        ("extensions", r"\bX-EXPS\b|\bXEXCH50\b|\bX-ANONYMOUSTLS\b", 5, "Exchange-only capabilities"),
    ),
}

# Versions, where the family's greeting shows one.
_VERSIONS = {
    "exim": re.compile(r"\bExim (\d+\.\d+(?:\.\d+)*)"),
    "sendmail": re.compile(r"\bSendmail (\d+\.\d+\.\d+(?:\.\d+)*)"),
    "postfix": re.compile(r"\bPostfix(?: \((?:Debian/GNU|Ubuntu)\))? ?(\d+\.\d+\.\d+)?"),
    "exchange": re.compile(r"Version: (\d+\.\d+\.\d+\.\d+)"),
}
_DISTRIBUTION = re.compile(r"\((Debian/GNU|Ubuntu)\)|/Debian-|/Ubuntu-|Debian|Ubuntu")

# A loop that ends in silence: the last pass is accepted (250) and the copy
# that would pass the limit is bounced inside the relay, so it never comes
# back. The trap sees `received_hops` of the limit on that last pass (each
# counts its own new Received: header: tests/data/mta/ has the recordings
# and the sources). Exim: received_headers_max, 30. sendmail: MaxHopCount,
# 100 in Debian's configuration, 25 upstream.
SILENT_HOP_LIMITS: dict[str, tuple[int, ...]] = {"exim": (30,), "sendmail": (100, 25)}

MAX_FACTS = 24  # distinct texts kept per relay: what a fingerprint needs, bounded


@dataclass(slots=True)
class Fingerprint:
    family: str | None  # None: not enough to say
    version: str | None
    distribution: str | None
    evidence: list[str]

    def as_dict(self) -> dict:
        return {"family": self.family, "version": self.version, "distribution": self.distribution,
                "evidence": self.evidence}


@dataclass(slots=True)
class ServerFacts:
    """What one relay's server has said, a few texts of each kind (bounded)."""

    greeting: str | None = None
    ehlo: str | None = None
    extensions: str | None = None
    replies: list[str] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)

    def add_reply(self, text: str | None) -> None:
        if text and text not in self.replies and len(self.replies) < MAX_FACTS:
            self.replies.append(text)

    def add_end(self, text: str | None) -> None:
        if text and text not in self.ends and len(self.ends) < MAX_FACTS:
            self.ends.append(text)


def identify(facts: ServerFacts) -> Fingerprint:
    texts = {
        "greeting": [facts.greeting] if facts.greeting else [],
        "ehlo": [facts.ehlo] if facts.ehlo else [],
        "extensions": [facts.extensions] if facts.extensions is not None else [],
        "reply": facts.replies,
        "end": facts.ends,
    }
    best, best_points, best_evidence = None, 0, []
    for family, tells in FAMILIES.items():
        points, evidence = 0, []
        for where, pattern, worth, why in tells:
            if any(pattern.search(text) for text in texts[where]):
                points += worth
                evidence.append(why)
        if points > best_points:
            best, best_points, best_evidence = family, points, evidence
    if best_points < 3:  # one generic wording alone says nothing
        return Fingerprint(None, None, None, [])
    version = None
    if best in _VERSIONS and facts.greeting:
        found = _VERSIONS[best].search(facts.greeting)
        version = found.group(1) if found and found.group(1) else None
    distribution = None
    if facts.greeting and (found := _DISTRIBUTION.search(facts.greeting)):
        distribution = "Ubuntu" if "Ubuntu" in found.group(0) else "Debian"
    return Fingerprint(best, version, distribution, best_evidence)
