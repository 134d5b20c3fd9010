"""Writes the seed inputs in fuzz/seeds/<target>/: real conversations in each
target's input format, so that a run starts from SMTP rather than from
nothing. Run it again after changing an input format:

    python fuzz/make_seeds.py
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "seeds"
ROOT = SEEDS.parent.parent

CLIENT, SERVER, CLIENT_EOF, SERVER_EOF = range(4)


def records(items: list[tuple[int, bytes]], *, op_bits: int = 0) -> bytes:
    """Data records of at most 255 bytes each: op, length, bytes."""
    out = bytearray()
    for kind, data in items:
        if kind in (CLIENT_EOF, SERVER_EOF):
            out.append(kind)
            continue
        for start in range(0, max(len(data), 1), 255):
            piece = data[start : start + 255]
            out += bytes([kind | op_bits, len(piece)]) + piece
    return bytes(out)


def stuff(content: bytes) -> bytes:
    return content.replace(b"\r\n.", b"\r\n..") + b".\r\n"


MESSAGE = (
    b"Received: from mx.relay.example (mx.relay.example [192.0.2.25])\r\n"
    b"\tby mx.relay.example (Postfix) with ESMTP id 4Tq1x2\r\n"
    b"\tfor <victim@trap.example>; Mon,  1 Jan 2024 00:00:02 +0000 (UTC)\r\n"
    b"received: by client.example (Postfix, from userid 1000) id 9A1B2C\r\n"
    b"Message-ID: <20240101000001.4Tq1x2@client.example>\r\n"
    b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from\r\n the loop\r\n"
    b"From: <spammer@client.example>\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a line that starts with a dot\r\n"
    b"Received: in the body is not a hop\r\n"
)
NO_ID_MESSAGE = b"Received: from a\r\nSubject: no id\r\n\r\nbody\r\n"
EHLO_REPLY = (
    b"250-mx.relay.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 CHUNKING\r\n"
)

OBSERVER = {
    "postfix": (
        0b001,
        [
            (SERVER, b"220 mx.relay.example ESMTP Postfix (Debian/GNU)\r\n"),
            (CLIENT, b"EHLO mx.relay.example\r\n"),
            (SERVER, EHLO_REPLY),
            (CLIENT, b"MAIL FROM:<s@client.example> SIZE=1234\r\nRCPT TO:<v@trap.example>\r\nDATA\r\n"),
            (SERVER, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
            (CLIENT, stuff(MESSAGE)),
            (SERVER, b"250 2.0.0 Ok: queued as 4Tq1x3\r\n"),
            (CLIENT, b"QUIT\r\n"),
            (SERVER, b"221 2.0.0 Bye\r\n"),
        ],
    ),
    "exim-bdat-masked": (
        0b010,
        [
            (SERVER, b"220 relay.example ESMTP Exim 4.96\r\n"),
            (CLIENT, b"EHLO relay.example\r\n"),
            (SERVER, b"250-relay.example Hello\r\n250-CHUNKING\r\n250 PIPELINING\r\n"),
            (
                CLIENT,
                b"MAIL FROM:<>\r\nRCPT TO:<v@trap.example>\r\nBDAT %d\r\n" % len(NO_ID_MESSAGE)
                + NO_ID_MESSAGE
                + b"BDAT 0 LAST\r\nQUIT\r\n",
            ),
            (SERVER, b"250 OK\r\n250 Accepted\r\n250 chunk\r\n250 OK id=1\r\n221 closing\r\n"),
        ],
    ),
    "starttls-auth": (
        0b000,
        [
            (SERVER, b"220 mx\r\n"),
            (CLIENT, b"EHLO x\r\nAUTH LOGIN\r\n"),
            (SERVER, b"250-mx\r\n250-STARTTLS\r\n250 AUTH LOGIN\r\n334 VXNlcm5hbWU6\r\n"),
            (CLIENT, b"Ym9i\r\n"),
            (SERVER, b"334 UGFzc3dvcmQ6\r\n"),
            (CLIENT, b"aHVudGVyMg==\r\nSTARTTLS\r\n"),
            (SERVER, b"235 ok\r\n220 go ahead\r\n"),
            (CLIENT, b"\x16\x03\x01\x00\xa5\x01\x00"),
            (SERVER_EOF, b""),
        ],
    ),
    "smuggling": (
        0b100,
        [
            (SERVER, b"220 mx\r\n"),
            (CLIENT, b"DATA\r\n"),
            (SERVER, b"354 go\r\n"),
            (CLIENT, b"Subject: x\r\n\r\n..a\n.\nb\r\n.\rc\r\n...\r\n.\r\nQUIT\r\n"),
            (SERVER, b"250 queued\r\n221 bye\r\n"),
        ],
    ),
}

TRANSACTION = (
    b"EHLO spam.example.org\r\n"
    b"MAIL FROM:<a@spam.example.org> SIZE=300 BODY=8BITMIME\r\n"
    b"RCPT TO:<victim@far.example.com> NOTIFY=NEVER\r\n"
    b"RCPT TO:<postmaster>\r\n"
    b"DATA\r\n" + stuff(MESSAGE) + b"QUIT\r\n"
)
SMTPD = {
    # (settings bytes, [(op, bytes)])
    "postfix-relay": (bytes([2, 0, 0b011]), [(0x00, TRANSACTION)]),
    # a 3000-byte shared memory budget, pregreet bytes; the message in pieces of 25 bytes
    "memory-budget": (bytes([2, 0, 0b1100_0011]), [(0x50, TRANSACTION)]),
    "exim-bdat": (
        bytes([1, 0, 0b001]),
        [
            (
                0x00,
                b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<v@trap.example>\r\nBDAT %d\r\n" % len(NO_ID_MESSAGE)
                + NO_ID_MESSAGE
                + b"BDAT 0 LAST\r\nRSET\r\nNOOP\r\nVRFY root\r\nETRN #x\r\nQUIT\r\n",
            )
        ],
    ),
    "auth": (
        bytes([2, 0b0000_0010, 0b111]),
        [
            (
                0x00,
                b"EHLO x\r\nAUTH PLAIN " + base64.b64encode(b"\0admin\0wrong") + b"\r\n"
                b"AUTH CRAM-MD5\r\n*\r\n"
                b"AUTH LOGIN\r\n" + base64.b64encode(b"admin") + b"\r\n" + base64.b64encode(b"admin") + b"\r\n"
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nQUIT\r\n",
            )
        ],
    ),
    # sendmail's DIGEST-MD5, to the end: challenge, response, rspauth, empty answer, 235
    "sendmail-digest-md5": (
        bytes([3, 0, 0b100]),
        [
            (0x00, b"EHLO x\r\n"),
            (0x00, b"AUTH DIGEST-MD5\r\n"),
            (
                0x00,
                base64.b64encode(
                    b'username="admin",realm="mx.trap.example.net",nonce="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",'
                    b'cnonce="OA6MHXh6VqTrRk",nc=00000001,qop=auth,digest-uri="smtp/mx.trap.example.net",'
                    b"response=cac74f8d07913d72e151fc34042b406a"
                )
                + b"\r\n",
            ),
            (0x00, b"\r\n"),
            (0x00, b"MAIL FROM:<a@b.example>\r\n"),
            (0x00, b"QUIT\r\n"),
        ],
    ),
    "starttls-slow-store": (
        bytes([2, 0b0100_0000, 0b001]),
        [
            (0x00, b"EHLO x\r\nSTARTTLS\r\n"),
            (0x00, b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"),
            (0x08, b"Subject: x\r\n\r\nhi\r\n.\r\n"),
            (0x30, b"QUIT\r\n"),
        ],
    ),
    "sendmail-junk": (
        bytes([3, 0b0001_0000, 0]),
        [(0x00, b"HELO\r\nGET / HTTP/1.0\r\n"), (0x02, b""), (0x00, b"\x16\x03\x01\x00")],
    ),
}

# A DIGEST-MD5 client's answer to fuzz_sasl.py's DIGEST_CHALLENGE, password admin.
DIGEST_MD5_RESPONSE = (
    b'username="admin",realm="mx.trap.example.net",nonce="b4dJ9sCh5VNM/6Cw9zxwKJOvKwTwPThVr1Pw0hqpRuc=",'
    b'cnonce="OA6MHXh6VqTrRk",nc=00000001,qop=auth,digest-uri="smtp/mx.trap.example.net",'
    b"response=4fc224591d864be107efb4a6b12653fe,charset=utf-8"
)

SASL = {
    "plain-initial": bytes([0b10100]) + base64.b64encode(b"\0admin\0admin"),
    "login": bytes([0b00001]) + base64.b64encode(b"admin") + b"\n" + base64.b64encode(b"secret"),
    "cram": bytes([0b00010]) + base64.b64encode(b"admin 0123456789abcdef0123456789abcdef"),
    "cancel-str": bytes([0b01001]) + b"*\n=",
    # admitted knowing the password: rspauth, then the client's empty answer
    "digest-md5": bytes([0b1100011]) + base64.b64encode(DIGEST_MD5_RESPONSE) + b"\n",
    # admitted by accept_after (no password), as str; the client cancels the proof
    "digest-md5-stand-in": bytes([0b0101011]) + base64.b64encode(DIGEST_MD5_RESPONSE) + b"\n*",
    "digest-md5-malformed": bytes([0b00011]) + base64.b64encode(DIGEST_MD5_RESPONSE.replace(b"nc=00000001", b"nc=2")),
}

CONFIGS = {
    "default": (ROOT / "config" / "looper.yaml").read_bytes(),
    "lab": b"""\
sensor: trap-1
listen: {smtp: ["127.0.0.1:2525", "[::1]:2525"], submissions: [0.0.0.0:465]}
dialback: {port: 2525, allow_private: true, deny: [192.0.2.0/24, "2001:db8::/32"], on_failure: hangup}
splice: {ehlo_name: mask, mask_name: trap.example.net, strip_starttls: false}
smtp:
  persona: exim
  mode: harvester
  accept_after: 3
  auth_mechanisms: [PLAIN, CRAM-MD5]
  replies: {noop: "250 2.0.0 Ok {host}", greeting: "220 {host} ESMTP"}
credentials: ["admin:admin", "user:pa:ss"]
limits: {per_ip: 2, total: 10, rate: 30/minute, block: [203.0.113.7]}
log: {dir: /tmp/looper-logs, stdout: true, max_bytes: 1048576, backups: 2}
""",
}

MESSAGES = {
    "strict": bytes([0]) + records([(0, stuff(MESSAGE))]),
    "bare-lf": bytes([1]) + records([(0, b"Subject: x\n\n.a\n..b\n.\n")]),
    "split-terminator": bytes([0]) + bytes([0, 6]) + b"x\r\n\r\n\r" + bytes([0, 4]) + b"\n.\r\n",
    # 255 bytes, 1 + 4 * 255 times: a header block over MAX_HEADER_BYTES
    "long-header": bytes([0, 1, 255]) + b"X-Long: " + b"a" * 245 + b"\r\n" + bytes([255, 0, 5]) + b"\r\nb\r\n",
}


def write(name: str, seeds: dict[str, bytes]) -> None:
    folder = SEEDS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for seed_name, data in seeds.items():
        (folder / seed_name).write_bytes(data)


def main() -> None:
    write("observer", {name: bytes([flags]) + records(items) for name, (flags, items) in OBSERVER.items()})
    smtpd = {}
    for name, (settings, items) in SMTPD.items():
        out = bytearray(settings)
        for op, data in items:
            if op & 3 in (2, 3):
                out.append(op)
            else:
                for start in range(0, len(data), 255):
                    piece = data[start : start + 255]
                    out += bytes([op, len(piece)]) + piece
        smtpd[name] = bytes(out)
    write("smtpd", smtpd)
    write("sasl", SASL)
    write("config", CONFIGS)
    write("message", MESSAGES)
    total = sum(p.stat().st_size for p in SEEDS.rglob("*") if p.is_file())
    print(f"seeds written to {SEEDS}: {total} bytes")


if __name__ == "__main__":
    main()
