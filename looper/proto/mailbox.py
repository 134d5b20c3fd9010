"""The bait mailboxes: one store, read by the IMAP and the POP3 machines.

The store is immutable: every login sees the same folders, fresh, and what
a session changes (flags, deletions, expunges, appended messages) lives in
that session's own state, inside its machine, and ends with it. looper/
bait.py builds the store from config/bait/<folder>/*.eml at start.

Sans-IO: bytes and plain data; what a machine derives from a message
(ENVELOPE, BODYSTRUCTURE, parts) it parses with the standard library's
email package, from `content`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# IMAP system flags a bait message may carry (RFC 3501 2.3.2); \Recent and
# \Deleted are a session's, never the store's.
STORED_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Draft"})


@dataclass(frozen=True, slots=True)
class BaitMessage:
    uid: int
    content: bytes  # RFC 5322, CRLF line ends, as RETR and BODY[] send it
    flags: frozenset[str]  # a subset of STORED_FLAGS
    internaldate: datetime  # timezone-aware

    @property
    def size(self) -> int:
        """RFC822.SIZE, and POP3's octet count: the CRLF form's length."""
        return len(self.content)


@dataclass(frozen=True, slots=True)
class BaitFolder:
    name: str  # "INBOX", "Sent", "Drafts", "Archive", "Junk"
    special_use: str | None  # RFC 6154: "\\Sent", "\\Drafts", "\\Archive", "\\Junk"; None for INBOX
    uidvalidity: int
    messages: tuple[BaitMessage, ...] = ()  # in UID order, UIDs ascending

    @property
    def uidnext(self) -> int:
        return (self.messages[-1].uid + 1) if self.messages else 1

    def by_uid(self, uid: int) -> BaitMessage | None:
        for message in self.messages:
            if message.uid == uid:
                return message
        return None


@dataclass(frozen=True, slots=True)
class BaitStore:
    """The mailbox every successful login opens, the same for every user."""

    folders: tuple[BaitFolder, ...] = field(default_factory=tuple)

    def folder(self, name: str) -> BaitFolder | None:
        """A folder by name; INBOX in any case (RFC 3501 5.1), the others exactly."""
        for folder in self.folders:
            if folder.name == name or (folder.name == "INBOX" and name.upper() == "INBOX"):
                return folder
        return None

    @property
    def inbox(self) -> BaitFolder:
        found = self.folder("INBOX")
        return found if found is not None else BaitFolder("INBOX", None, 1)
