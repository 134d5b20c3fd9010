"""The bait mailboxes, read from disk: config/bait/<Folder>/*.eml into the
immutable BaitStore (looper/proto/mailbox.py) that the IMAP and POP3
machines serve.

What a message file holds, and what becomes of it at load, is told in
config/bait/README.md:

- two headers of ours at the top, removed at load: `X-Bait-Age` (how long
  before the start the message was written: `14d 6h`, units d h m s) and
  `X-Bait-Flags` (its IMAP flags, e.g. `\\Seen \\Flagged`);
- placeholders `{name}` replaced by the `bait` section's values (domain,
  company, people) and by the dates computed from the age: `{date}` (the
  Date: header, start time minus the age) and `{received}` (INTERNALDATE,
  two seconds later: the delivery);
- line ends made CRLF, as RETR and BODY[] send them.

Files are taken in name order within each folder, so the UIDs are 1..n in
that order (name them oldest first). UIDVALIDITY is the start time in
seconds for INBOX and one more for each next folder, as Dovecot numbers
the mailboxes it creates from the clock.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import time
from datetime import datetime, timedelta, timezone
from email.parser import BytesParser
from pathlib import Path

from looper.config import Bait, Config, ConfigError
from looper.proto.mailbox import STORED_FLAGS, BaitFolder, BaitMessage, BaitStore

# The folders in the store's order, and their RFC 6154 special use. (Dovecot's
# LIST shows a Maildir's folders in the order its directory lists them.)
FOLDERS: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Archive", "\\Archive"),
    ("Junk", "\\Junk"),
)
AGE_HEADER = "X-Bait-Age"
FLAGS_HEADER = "X-Bait-Flags"
# From the Date: a message was written to its arrival (INTERNALDATE).
DELIVERY_DELAY = timedelta(seconds=2)
# A bait file larger than this is a mistake, not a message (the PDF invoice is 2 KiB).
MAX_MESSAGE_BYTES = 1 << 20

_PLACEHOLDER = re.compile(rb"\{([a-z][a-z0-9_]*)\}")
_AGE = re.compile(r"\s*(?:(\d{1,4})d)?\s*(?:(\d{1,5})h)?\s*(?:(\d{1,6})m)?\s*(?:(\d{1,7})s)?\s*")
_OURS = (AGE_HEADER.lower().encode() + b":", FLAGS_HEADER.lower().encode() + b":")


class BaitError(Exception):
    """A bait file (or the folder) that cannot be used: `path` and why."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


def parse_age(text: str) -> timedelta:
    """`14d 6h`, `5h`, `0d 20h 30m`, `90s` (at least one unit) as a timedelta."""
    match = _AGE.fullmatch(text)
    if not match or not any(match.groups()):
        raise ValueError(f"expected an age such as '14d 6h' (units d h m s), got {text!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_flags(text: str) -> frozenset[str]:
    """`\\Seen \\Flagged` (any case) as the store's flags; unknown ones refused."""
    known = {flag.lower(): flag for flag in STORED_FLAGS}
    flags = set()
    for word in text.split():
        if word.lower() not in known:
            raise ValueError(f"unknown flag {word!r} (known: {', '.join(sorted(STORED_FLAGS))})")
        flags.add(known[word.lower()])
    return frozenset(flags)


def _address(name: str, domain: str) -> str:
    return ".".join(re.sub(r"[^a-z0-9-]", "", part.lower()) for part in name.split()) + "@" + domain


def placeholders(bait: Bait) -> dict[str, str]:
    """Every placeholder the messages may use but the dates, and its value."""
    values = {
        "domain": bait.domain,
        "company": bait.company,
        "company_slug": re.sub(r"[^a-z0-9]+", "-", bait.company.lower()).strip("-") or "company",
    }
    for role in ("admin", "ceo", "finance", "developer"):
        name = getattr(bait, role)
        values[role] = name
        values[f"{role}_first"] = name.split()[0]
        values[f"{role}_email"] = _address(name, bait.domain)
    values["admin_user"] = values["admin_email"].split("@")[0]
    return values


DATE_PLACEHOLDERS = ("date", "received")


def fill(template: bytes, values: dict[str, str]) -> bytes:
    """Replace every `{name}`; a name that is not in `values` is a KeyError
    (a typo in a bait file must not reach an attacker as `{admin_emial}`)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1).decode("ascii")].encode("ascii"), template)


def split_ours(text: bytes) -> tuple[dict[str, str], bytes]:
    """Take our X-Bait-* headers (LF line ends) out of the header block:
    their values by lower-case name, and the message without them."""
    head, sep, body = text.partition(b"\n\n")
    ours: dict[str, str] = {}
    kept: list[bytes] = []
    current: str | None = None
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and current is not None:  # a folded continuation
            ours[current] += " " + line.strip().decode("ascii", "replace")
            continue
        current = None
        lowered = line.lower()
        for name in _OURS:
            if lowered.startswith(name):
                current = name[:-1].decode()
                ours[current] = line[len(name):].strip().decode("ascii", "replace")
                break
        else:
            kept.append(line)
    return ours, b"\n".join(kept) + sep + body


def _crlf(text: bytes) -> bytes:
    return text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _defects(content: bytes) -> list[str]:
    message = BytesParser(policy=email.policy.compat32).parsebytes(content)
    found = [type(defect).__name__ for part in message.walk() for defect in part.defects]
    for name in ("From", "Date", "Subject", "Message-ID"):
        if message[name] is None:
            found.append(f"no {name}: header")
    return found


def load_message(path: Path, uid: int, values: dict[str, str], now: datetime) -> BaitMessage:
    """One bait file as the store's message; BaitError if it cannot be one."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BaitError(path, f"cannot read: {err.strerror or err}") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BaitError(path, f"larger than {MAX_MESSAGE_BYTES} bytes")
    ours, text = split_ours(raw.replace(b"\r\n", b"\n"))
    if "x-bait-age" not in ours:
        raise BaitError(path, f"no {AGE_HEADER}: header (how old the message is, e.g. '14d 6h')")
    try:
        age = parse_age(ours["x-bait-age"])
        flags = parse_flags(ours.get("x-bait-flags", ""))
    except ValueError as err:
        raise BaitError(path, str(err)) from None
    written = (now - age).replace(microsecond=0)
    internaldate = written + DELIVERY_DELAY
    dated = {
        **values,
        "date": email.utils.format_datetime(written),
        "received": email.utils.format_datetime(internaldate),
    }
    if b"Date: {date}" not in text.partition(b"\n\n")[0]:
        raise BaitError(path, "its header must say 'Date: {date}' (the date is made from the age)")
    try:
        content = _crlf(fill(text, dated))
    except KeyError as err:
        raise BaitError(path, f"unknown placeholder {{{err.args[0]}}} (known: {', '.join(dated)})") from None
    except UnicodeEncodeError:
        raise BaitError(path, "a placeholder's value is not ASCII") from None
    defects = _defects(content)
    if defects:
        raise BaitError(path, f"does not parse as a message: {', '.join(defects)}")
    return BaitMessage(uid=uid, content=content, flags=flags, internaldate=internaldate)


def load_bait(config: Config, now: float) -> BaitStore:
    """The store from `bait.folder`, dated relative to `now` (a Unix time);
    BaitError names the first file (or folder) that cannot be used."""
    root = Path(config.bait.folder)
    if not root.is_dir():
        raise BaitError(root, "no such folder (bait.folder: the bait messages, <Folder>/*.eml)")
    known = [name for name, _ in FOLDERS]
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name not in known:
            raise BaitError(entry, f"unknown folder (known: {', '.join(known)})")
    start = datetime.fromtimestamp(int(now), timezone.utc)
    values = placeholders(config.bait)
    folders = []
    for index, (name, special_use) in enumerate(FOLDERS):
        files = sorted((root / name).glob("*.eml")) if (root / name).is_dir() else []
        messages = tuple(load_message(path, uid, values, start) for uid, path in enumerate(files, 1))
        folders.append(BaitFolder(name, special_use, uidvalidity=int(now) + index, messages=messages))
    if not folders[0].messages:
        raise BaitError(root / "INBOX", "no messages (*.eml): an empty INBOX is no bait")
    return BaitStore(tuple(folders))


def mail_listeners(config: Config) -> bool:
    """Does any listener open the bait (IMAP or POP3, plain or TLS)?"""
    listen = config.listen
    return bool(listen.imap or listen.imaps or listen.pop3 or listen.pop3s)


def check_bait(config: Config, source: str) -> None:
    """What check-config and run ask before listening: the bait loads, when
    a listener would open it. ConfigError (bait.folder) names the file."""
    if not mail_listeners(config):
        return
    try:
        load_bait(config, time.time())
    except BaitError as err:
        raise ConfigError(source, "bait.folder", str(err)) from None
