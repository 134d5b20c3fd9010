"""`looper report`: the analysis core's state as a document (docs/report.md
is its schema), and that document as text for a terminal.

The HTML form (analysis/html.py) renders the same document, so the three
formats can never disagree.
"""

from __future__ import annotations

from typing import Any

import orjson

from looper.analysis.core import RANK, Analysis, Chain, Relay, chain_summary
from looper.analysis.logs import ReadStats
from looper.analysis.timestamps import format_timestamp

SCHEMA_VERSION = 1
TOP = 25  # rows in each top list
PASSES_BUCKETS = 48  # bars in the passes-over-time series


def _when(seconds: float | None) -> str | None:
    return format_timestamp(seconds) if seconds is not None else None


def relay_row(relay: Relay) -> dict[str, Any]:
    fingerprint = relay.fingerprint()
    return {
        "ip": relay.ip,
        "verdict": str(relay.verdict) if relay.verdict is not None else None,
        "first_seen": _when(relay.first_seen),
        "last_seen": _when(relay.last_seen),
        "days_seen": len(relay.days),
        "sensors": sorted(relay.sensors),
        "sessions": relay.sessions,
        "emulated_sessions": relay.emulated_sessions,
        "passes": relay.passes,
        "accepted_passes": relay.accepted,
        "chains": relay.chains,
        "hop_limit": relay.hop_limit,
        "self_detected": relay.self_detected,
        "mta": fingerprint.as_dict(),
        "greeting": relay.facts.greeting,
        "logins": relay.logins,
        "messages": relay.messages,
        "evidence": list(relay.evidence),
        "dns": _dns_row(relay.dns),
    }


def _dns_row(dns: dict | None) -> dict[str, Any] | None:
    if dns is None:
        return None
    return {**dns, "dnsbl": {zone: dns["dnsbl"][zone] for zone in sorted(dns["dnsbl"])}}


def dns_summary(dns: dict[str, Any] | None) -> str | None:
    """A relay's DNS evidence in a few words: its PTR name (with + when it
    is forward-confirmed, ! when it is not), the DNSBL zones that list it,
    and a HELO name that does not resolve."""
    if not dns:
        return None
    parts = []
    if dns.get("ptr"):
        parts.append(dns["ptr"] + {True: " +", False: " !"}.get(dns.get("fcrdns"), ""))
    else:
        parts.append("no PTR")
    listed = [zone for zone, answer in (dns.get("dnsbl") or {}).items() if answer]
    if listed:
        parts.append("listed: " + ",".join(listed))
    if dns.get("helo_resolves") is False:
        parts.append(f"HELO {dns.get('helo')} does not resolve")
    return "; ".join(parts)


def chain_row(chain: Chain) -> dict[str, Any]:
    row = chain_summary(chain)
    row.update({
        "started": _when(chain.started),
        "ended": _when(chain.ended),
        "last_pass": _when(chain.last_pass),
        "accepted": chain.accepted,
        "bytes": chain.bytes,
        "sessions": chain.sessions,
        "gaps": chain.gaps,
        "repeats": chain.repeats,
        "message_id": chain.message_id,
        "subject": chain.subject,
    })
    return row


def _passes_over_time(chains: list[Chain], first: float | None, last: float | None) -> list[dict[str, Any]]:
    """Passes per time bucket, from each chain's start (a chain's passes are
    spread evenly over its duration: the core keeps no per-pass times)."""
    if first is None or last is None or not chains:
        return []
    span = max(last - first, 1.0)
    width = span / PASSES_BUCKETS
    buckets = [0.0] * PASSES_BUCKETS
    for chain in chains:
        end = chain.ended if chain.ended is not None else chain.last_pass
        if chain.passes <= 1 or end <= chain.started:
            index = min(int((chain.started - first) / width), PASSES_BUCKETS - 1)
            buckets[index] += chain.passes
            continue
        step = (end - chain.started) / (chain.passes - 1)
        for n in range(chain.passes):
            index = min(max(int((chain.started + n * step - first) / width), 0), PASSES_BUCKETS - 1)
            buckets[index] += 1
    return [{"start": format_timestamp(first + i * width), "passes": int(round(count))}
            for i, count in enumerate(buckets)]


def build_report(analysis: Analysis, stats: ReadStats | None = None, *, top: int = TOP) -> dict[str, Any]:
    """The report document (docs/report.md)."""
    relays = sorted(analysis.relay_list(), key=lambda r: (-_rank(r), -r.passes, r.ip))
    chains = analysis.chains()
    verdicts: dict[str, int] = {}
    for relay in relays:
        verdicts[str(relay.verdict)] = verdicts.get(str(relay.verdict), 0) + 1
    ends: dict[str, int] = {}
    rows = [chain_row(chain) for chain in chains]
    for row in rows:
        ends[row["end"]] = ends.get(row["end"], 0) + 1
    credentials = {
        protocol: {
            "attempts": tally.total,
            "distinct": len(tally),
            "top": [{"username": user, "password": secret, "succeeded": ok, "count": count}
                    for (user, secret, ok), count in tally.top(top)],
        }
        for protocol, tally in sorted(analysis.credentials.items())
    }
    captured = {
        "messages": analysis.captured_messages,
        "bytes": analysis.captured_bytes,
        **{name: [{"value": value, "count": count} for value, count in tally.top(top)]
           for name, tally in analysis.captured.items()},
    }
    activity = sorted((r for r in analysis.relays.values() if r.emulated_sessions or r.logins or r.messages),
                      key=lambda r: (-(r.logins + r.messages), -r.emulated_sessions, r.ip))
    return {
        "schema": SCHEMA_VERSION,
        "input": {
            "files": list(stats.files) if stats else [],
            "lines": stats.lines if stats else analysis.events,
            "bad_lines": stats.bad_lines if stats else 0,
            "events": analysis.events,
            "first": _when(analysis.first),
            "last": _when(analysis.last),
            "sensors": sorted(analysis.sensors),
        },
        "summary": {
            "addresses": len(analysis.relays),
            "verdicts": verdicts,
            "chains": len(rows),
            "chain_ends": ends,
            "passes": sum(c.passes for c in chains),
        },
        "relays": [relay_row(r) for r in relays],
        "chains": rows,
        "hop_histogram": {str(hops): count for hops, count in sorted(analysis.hop_histogram.items())},
        "passes_over_time": _passes_over_time(chains, analysis.first, analysis.last),
        "credentials": credentials,
        "captured": captured,
        "emulated_activity": [
            {"ip": r.ip, "sessions": r.emulated_sessions, "logins": r.logins, "messages": r.messages,
             "first_seen": _when(r.first_seen), "last_seen": _when(r.last_seen)}
            for r in activity[:top]
        ],
    }


def report_json(document: dict[str, Any]) -> str:
    """The document as indented JSON. (The standard library's encoder turns
    to pure Python when asked to indent: orjson writes a big report in a
    tenth of the time, without holding its pieces.)"""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode("utf-8") + "\n"


def _rank(relay: Relay) -> int:
    return RANK[relay.verdict] if relay.verdict is not None else -1


# -- text ----------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return out


def _clip(text: str | None, width: int) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


def render_text(report: dict[str, Any], *, top: int = TOP) -> str:
    source = report["input"]
    summary = report["summary"]
    lines = [
        f"looper report: {source['lines']} lines from {len(source['files'])} file(s) ({source['events']} events"
        " analysed), "
        f"{source['first'] or '-'} to {source['last'] or '-'}"
        + (f", sensors {', '.join(source['sensors'])}" if source["sensors"] else ""),
    ]
    if source["bad_lines"]:
        lines.append(f"  ({source['bad_lines']} lines were not events and were skipped)")
    verdicts = ", ".join(f"{n} {v}" for v, n in summary["verdicts"].items()) or "none"
    ends = ", ".join(f"{n} {e}" for e, n in summary["chain_ends"].items()) or "none"
    lines += ["", f"Addresses: {summary['addresses']} ({verdicts})",
              f"Loop chains: {summary['chains']} ({ends}), {summary['passes']} passes", ""]

    lines.append("Relays")
    rows = [[r["ip"], r["verdict"], r["passes"], r["chains"], r["hop_limit"],
             " ".join(x for x in (r["mta"]["family"], r["mta"]["version"]) if x) or None,
             r["last_seen"][:19] if r["last_seen"] else None, _clip(dns_summary(r.get("dns")), 60)]
            for r in report["relays"][:top]]
    lines += ["  " + line for line in _table(["address", "verdict", "passes", "chains", "hop limit", "mta",
                                               "last seen", "dns"], rows)]
    if len(report["relays"]) > top:
        lines.append(f"  ... and {len(report['relays']) - top} more (--format json has them all)")
    lines.append("")

    lines.append("Loop chains")
    chains = sorted(report["chains"], key=lambda c: -c["passes"])[:top]
    rows = [[c["chain"], c["relay_ip"], c["passes"], f"{c['first_hops']}..{c['last_hops']}",
             c["end"] + (" (inferred)" if c["end_inferred"] else ""),
             _clip(" ".join(str(x) for x in (c["end_code"], c["end_text"]) if x is not None) or None, 48),
             f"{c['duration']:.1f}s"]
            for c in chains]
    lines += ["  " + line for line in _table(["chain", "relay", "passes", "hops", "end", "how", "duration"], rows)]
    lines.append("")

    if report["hop_histogram"]:
        lines.append("Hops at which loops ended")
        peak = max(report["hop_histogram"].values())
        for hops, count in report["hop_histogram"].items():
            lines.append(f"  {hops:>5}  {'#' * max(1, round(40 * count / peak))} {count}")
        lines.append("")

    for protocol, found in report["credentials"].items():
        lines.append(f"Credentials tried ({protocol}): {found['attempts']} attempts, {found['distinct']} distinct")
        rows = [[c["username"], _clip(c["password"], 40), "yes" if c["succeeded"] else "no", c["count"]]
                for c in found["top"][:10]]
        lines += ["  " + line for line in _table(["username", "password", "accepted", "count"], rows)]
        lines.append("")

    captured = report["captured"]
    if captured["messages"]:
        lines.append(f"Captured mail: {captured['messages']} messages, {captured['bytes']} bytes")
        for name in ("senders", "domains", "helo_names", "subjects"):
            values = ", ".join(f"{_clip(v['value'], 60)} ({v['count']})" for v in captured[name][:5])
            if values:
                lines.append(f"  top {name.replace('_', ' ')}: {values}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
