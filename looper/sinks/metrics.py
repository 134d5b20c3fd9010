"""Prometheus metrics of a running trap, counted from its events.

An EventLog listener turns each event into counts as it is emitted, so the
metrics say what events.jsonl says (and nothing the log does not). They live
in a registry of their own, not prometheus_client's global one, so that two
traps in one process (the tests) never share or clash. prometheus_client's
HTTP server answers scrapes on a thread of its own: a scrape never waits
for the event loop, nor the loop for a scrape.

Metric names (Prometheus conventions: a `looper_` prefix, `_total` on
counters):

    looper_events_total{eventid}            every event logged
    looper_sessions_total{mode}             sessions closed, by mode (reflect, emulate, refused, ...)
    looper_dialbacks_total{result}          dial-backs: ok, or the failure's reason (refused, timeout, ...)
    looper_loop_passes_total                reflected messages (looper.reflect.message)
    looper_relays{verdict}                  relays by their latest verdict (each counted once)
    looper_logins_total{protocol,result}    logins to the emulated servers: success or failed
    looper_messages_total                   messages the emulated relay stored (looper.smtp.message)
    looper_events_dropped_total{sink}       events a sink could not take (events.jsonl, syslog, hpfeeds)
    looper_collector_connected{sink}        1 while a TCP collector (syslog tcp, hpfeeds) is connected
    looper_collector_queued_bytes{sink}     what its queue holds, waiting for it
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from looper.config import Endpoint
from looper.eventlog import EventLog
from looper.sinks.queued import QueuedSink

log = logging.getLogger("looper.sinks")

# Relays whose verdict is remembered; the least recently judged is forgotten
# first (as the live analysis forgets them: memory bounded by this, not by
# the relays ever seen).
MAX_RELAYS = 100_000


class MetricsBindError(OSError):
    """metrics.listen cannot be bound (the errno says why)."""

    def __init__(self, endpoint: Endpoint, err: OSError) -> None:
        super().__init__(err.errno, err.strerror)
        self.endpoint = endpoint


class _SinkState(Collector):
    """Read from the EventLog and its sinks at each scrape: the
    looper.log.dropped lines go to the sinks, not to listeners, and a
    collector's connection is no event at all. (Read from the scrape's
    thread: plain numbers and a flag, each read whole.)"""

    def __init__(self, eventlog: EventLog) -> None:
        self.eventlog = eventlog

    def collect(self):
        dropped = CounterMetricFamily("looper_events_dropped", "Events a sink could not take", labels=["sink"])
        for sink, count in self.eventlog.dropped_by_sink().items():
            dropped.add_metric([sink], count)
        yield dropped
        queued = [sink for sink in self.eventlog.sinks if isinstance(sink, QueuedSink)]
        connected = GaugeMetricFamily("looper_collector_connected", "1 while a collector is connected",
                                      labels=["sink"])
        waiting = GaugeMetricFamily("looper_collector_queued_bytes", "Bytes queued for a collector",
                                    labels=["sink"])
        for sink in queued:
            connected.add_metric([str(sink)], 1 if sink.connected else 0)
            waiting.add_metric([str(sink)], sink.queued_bytes)
        yield connected
        yield waiting


class TrapMetrics:
    """The trap's metrics, fed by `observe` (an EventLog listener)."""

    def __init__(self, eventlog: EventLog) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.events = Counter("looper_events", "Events logged, by eventid", ["eventid"], registry=registry)
        self.sessions = Counter("looper_sessions", "Sessions closed, by mode", ["mode"], registry=registry)
        self.dialbacks = Counter("looper_dialbacks", "Dial-backs: ok, or why they failed", ["result"],
                                 registry=registry)
        self.loop_passes = Counter("looper_loop_passes", "Reflected messages (loop passes)", registry=registry)
        self.relays = Gauge("looper_relays", "Relays by their latest verdict", ["verdict"], registry=registry)
        self.logins = Counter("looper_logins", "Logins to the emulated servers", ["protocol", "result"],
                              registry=registry)
        self.messages = Counter("looper_messages", "Messages the emulated relay stored", registry=registry)
        registry.register(_SinkState(eventlog))
        self._verdicts: OrderedDict[str, str] = OrderedDict()
        self._server = None
        self._thread = None
        self._handlers = {
            "looper.session.closed": lambda r: self.sessions.labels(r.get("mode") or "unknown").inc(),
            "looper.dialback.ok": lambda r: self.dialbacks.labels("ok").inc(),
            "looper.dialback.failed": lambda r: self.dialbacks.labels(r.get("reason") or "unknown").inc(),
            "looper.reflect.message": lambda r: self.loop_passes.inc(),
            "looper.relay.verdict": self._verdict,
            "looper.login.success": lambda r: self.logins.labels(r.get("protocol") or "unknown", "success").inc(),
            "looper.login.failed": lambda r: self.logins.labels(r.get("protocol") or "unknown", "failed").inc(),
            "looper.smtp.message": lambda r: self.messages.inc(),
        }
        eventlog.listeners.append(self.observe)

    def observe(self, record: dict[str, Any]) -> None:
        eventid = record["eventid"]
        self.events.labels(eventid).inc()
        handler = self._handlers.get(eventid)
        if handler is not None:
            handler(record)

    def _verdict(self, record: dict[str, Any]) -> None:
        relay, verdict = record.get("relay_ip"), record.get("verdict") or "unknown"
        previous = self._verdicts.pop(relay, None)
        if previous is not None:
            self.relays.labels(previous).dec()
        elif len(self._verdicts) >= MAX_RELAYS:
            _, forgotten = self._verdicts.popitem(last=False)
            self.relays.labels(forgotten).dec()
        self._verdicts[relay] = verdict
        self.relays.labels(verdict).inc()

    def serve(self, endpoint: Endpoint) -> None:
        """Answer scrapes on http://endpoint/metrics (a thread of its own)."""
        try:
            self._server, self._thread = start_http_server(endpoint.port, endpoint.host, registry=self.registry)
        except OSError as err:
            raise MetricsBindError(endpoint, err) from err
        log.info("metrics on http://%s/metrics", endpoint)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # serve_forever returns
            self._server.server_close()  # the port is free again
            self._thread.join(timeout=5)
            self._server = self._thread = None
