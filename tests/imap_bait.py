"""A small bait store for the IMAP tests: the two messages the machine's
expected bytes were recorded with from dovecot 2.3.19.1 (a Maildir on a
private instance: tests/test_imap_machine.py)."""

from __future__ import annotations

from datetime import datetime, timezone

from looper.proto.mailbox import BaitFolder, BaitMessage, BaitStore

INTERNALDATE = datetime(2026, 12, 3, 4, 29, 36, tzinfo=timezone.utc)
UIDVALIDITY = 1796272220

PLAIN = (
    b"From: Bob Smith <bob@example.com>\r\n"
    b'To: alice@example.com, "Carol" <carol@example.com>\r\n'
    b"Cc: dave@example.com\r\n"
    b"Subject: VPN config\r\n"
    b"Date: Mon, 1 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Alice,\r\n"
    b"the VPN password is hunter2.\r\n"
)
MULTIPART = (
    b"From: billing@example.com\r\n"
    b"To: alice@example.com\r\n"
    b"Subject: Invoice\r\n"
    b"Date: Tue, 2 Dec 2026 11:00:00 +0100\r\n"
    b"Message-ID: <2@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
    b"\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"See attached.\r\n"
    b"--XYZ\r\n"
    b'Content-Type: application/pdf; name="inv.pdf"\r\n'
    b'Content-Disposition: attachment; filename="inv.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--XYZ--\r\n"
)

STORE = BaitStore((
    BaitFolder("INBOX", None, UIDVALIDITY, (
        BaitMessage(1, PLAIN, frozenset({"\\Seen"}), INTERNALDATE),
        BaitMessage(2, MULTIPART, frozenset(), INTERNALDATE),
    )),
    BaitFolder("Archive", "\\Archive", UIDVALIDITY - 3),
    BaitFolder("Sent", "\\Sent", UIDVALIDITY - 2),
    BaitFolder("Drafts", "\\Drafts", UIDVALIDITY - 1),
    BaitFolder("Junk", "\\Junk", UIDVALIDITY - 4),
))
