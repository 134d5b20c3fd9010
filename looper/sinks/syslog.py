"""Events to syslog: rsyslog or syslog-ng over UDP or TCP, or the local daemon.

One message per event. Over the network it is RFC 5424:

    <PRI>1 TIMESTAMP HOSTNAME looper PROCID MSGID - {"timestamp":...}

TIMESTAMP is the event's own (RFC 3339, UTC, microseconds), HOSTNAME the
sensor name, MSGID the eventid (looper.session.connect; at most 32
characters, which every eventid fits), no structured data, and the MSG is
the event's JSON line as it is in events.jsonl, with no BOM so that a JSON
parser takes it as it is (rsyslog's mmjsonparse with cookie="", or
syslog-ng's json-parser()). PRI is the facility's with severity info (6),
warning (4) for looper.log.dropped. rsyslog's RSYSLOG_SyslogProtocol23Format
and syslog-ng's syslog-protocol() parse all of it into their fields.

- udp: one datagram per event (RFC 5426) from a non-blocking socket: a
  datagram the kernel cannot take at once, or a collector that answers
  with ICMP unreachable, is a lost line, counted. Nothing is queued.
- tcp: octet counting (RFC 6587: "LENGTH SP MESSAGE") through QueuedSink.
- a path (/dev/log): a local datagram socket, in the framing every local
  daemon parses (rsyslog's imuxsock, syslog-ng's unix-dgram(), journald):
  "<PRI>Mmm dd hh:mm:ss looper[PID]: MSG", the RFC 3164 shape.

An event longer than max_message_bytes is cut there (a syslog message has a
size limit at the collector too: rsyslog's maxMessageSize); its JSON is then
incomplete, and a warning says how many were cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time

from looper.config import SYSLOG_FACILITIES, Endpoint, Syslog
from looper.eventlog import LOG_DROPPED, LinesLost, Sink
from looper.sinks.queued import QueuedSink

log = logging.getLogger("looper.sinks")

APP_NAME = "looper"
SEVERITY_INFO = 6
SEVERITY_WARNING = 4
NIL = "-"

# The start of every line EventLog writes: timestamp first, eventid second.
_HEAD = re.compile(r'\{"timestamp":"([^"]*)","eventid":"([^"]*)"')
# RFC 5424 header fields are printable US-ASCII without spaces.
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _header_field(text: str, max_chars: int) -> str:
    return _NOT_PRINTUSASCII.sub("_", text)[:max_chars] or NIL


class Rfc5424:
    """Formats event lines as syslog messages of one facility and host."""

    def __init__(self, facility: str, sensor: str, max_message_bytes: int) -> None:
        self.facility_code = SYSLOG_FACILITIES.index(facility)
        self.hostname = _header_field(sensor, 255)
        self.procid = str(os.getpid())
        self.max_message_bytes = max_message_bytes
        self.cut = 0  # messages cut at max_message_bytes so far

    def fields(self, line: str) -> tuple[int, str, str]:
        """(PRI, timestamp, eventid) of an event line."""
        match = _HEAD.match(line)
        if match:
            timestamp, eventid = match.groups()
        else:  # not the emitter's order: the slow way
            record = json.loads(line)
            timestamp, eventid = str(record.get("timestamp", "")), str(record.get("eventid", ""))
        severity = SEVERITY_WARNING if eventid == LOG_DROPPED else SEVERITY_INFO
        return self.facility_code * 8 + severity, timestamp, eventid

    def message(self, line: str) -> bytes:
        pri, timestamp, eventid = self.fields(line)
        header = (f"<{pri}>1 {_header_field(timestamp, 32)} {self.hostname} {APP_NAME} {self.procid}"
                  f" {_header_field(eventid, 32)} {NIL} ")
        return self._fit(header.encode("ascii"), line)

    def local_message(self, line: str) -> bytes:
        """The RFC 3164 shape that local daemons parse (their clock stamps it)."""
        pri, _, _ = self.fields(line)
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
        return self._fit(f"<{pri}>{stamp} {APP_NAME}[{self.procid}]: ".encode("ascii"), line)

    def _fit(self, header: bytes, line: str) -> bytes:
        message = header + line.encode("utf-8")
        if len(message) <= self.max_message_bytes:
            return message
        self.cut += 1
        if self.cut == 1 or self.cut % 1000 == 0:
            log.warning("syslog: %d event(s) longer than syslog.max_message_bytes (%d) were cut",
                        self.cut, self.max_message_bytes)
        # Cut on a character's boundary: the collector must get valid UTF-8.
        return message[: self.max_message_bytes].decode("utf-8", "ignore").encode("utf-8")


class DatagramSyslog(Sink):
    """UDP to a collector, or a local daemon's datagram socket: one
    non-blocking send per event, nothing held back."""

    def __init__(self, address: Endpoint | str, formatter: Rfc5424) -> None:
        self.address = address
        self.formatter = formatter
        self.local = isinstance(address, str)
        self._socket: socket.socket | None = None

    def __str__(self) -> str:
        return f"syslog {self.address}" if self.local else f"syslog udp {self.address}"

    def write(self, lines: list[str]) -> None:
        make = self.formatter.local_message if self.local else self.formatter.message
        for index, line in enumerate(lines):
            try:
                if self._socket is None:
                    self._socket = self._open()
                self._socket.send(make(line))
            except OSError as err:
                # A local daemon that restarted has a new socket: open it again next time.
                if self.local and self._socket is not None:
                    self._socket.close()
                    self._socket = None
                raise LinesLost(index, err) from err

    def _open(self) -> socket.socket:
        if self.local:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            target: object = self.address
        else:
            family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            target = (self.address.host, self.address.port)
        sock.setblocking(False)  # a full buffer is a lost line, never a wait
        try:
            # Connected: the kernel reports an ICMP unreachable at the next send.
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class TcpSyslog(QueuedSink):
    """TCP to a collector, RFC 6587 octet counting, queued and reconnecting."""

    def __init__(self, address: Endpoint, formatter: Rfc5424, *, queue_bytes: int) -> None:
        super().__init__(f"syslog tcp {address}", queue_bytes=queue_bytes)
        self.address = address
        self.formatter = formatter

    def frame(self, line: str) -> bytes:
        message = self.formatter.message(line)
        return b"%d %s" % (len(message), message)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.address.host, self.address.port)


def syslog_sink(settings: Syslog, sensor: str) -> Sink:
    """The sink that settings.address (not None) asks for."""
    formatter = Rfc5424(settings.facility, sensor, settings.max_message_bytes)
    if settings.transport == "tcp" and isinstance(settings.address, Endpoint):
        return TcpSyslog(settings.address, formatter, queue_bytes=settings.queue_bytes)
    return DatagramSyslog(settings.address, formatter)

