"""Central collectors, besides events.jsonl: syslog, hpfeeds, Prometheus.

Each is optional and fails soft: a collector that is dead, refuses or is
slow never blocks or stops the trap. What a sink cannot take is counted by
the EventLog and reported in a `looper.log.dropped` line, the first the
collector gets once it takes events again. Metrics are no sink: they are
counted from the events as they are emitted (metrics.py).
"""

from __future__ import annotations

from looper.config import Config
from looper.eventlog import Sink


def collector_sinks(config: Config) -> list[Sink]:
    """The sinks of the collectors `config` names (none by default).
    hpfeeds is imported only when asked for."""
    sinks: list[Sink] = []
    if config.syslog.address is not None:
        from looper.sinks.syslog import syslog_sink

        sinks.append(syslog_sink(config.syslog, config.sensor))
    if config.hpfeeds.host is not None:
        from looper.sinks.hpfeeds import HpfeedsSink

        sinks.append(HpfeedsSink(config.hpfeeds))
    return sinks
