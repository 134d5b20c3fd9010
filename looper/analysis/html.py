"""`looper report --format html`: the report document (analysis/report.py,
docs/report.md) as one self-contained HTML5 page.

Nothing in the page is fetched: the style is inline, the charts are SVG
drawn here, and the one script (sorting a table by a click on its header)
is inline too. A Content-Security-Policy in the page allows only that
style and that script (by their hashes) and no other source of anything,
so a browser fetches nothing even if something slipped through.

Every text in the document that came from the log was written by whoever
connected (greetings, HELO names, subjects, usernames, passwords) and is
hostile: all of it goes through `_text`, which escapes it for HTML (text
and attribute values alike), shows control and bidi-override characters as
escapes, and replaces lone surrogates. Colours and CSS classes come only
from the fixed tables below, never from the document.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from typing import Any

from looper.analysis.timestamps import epoch_seconds

CHAIN_ROWS = 300  # rows in the chains table (the chains with most passes)
RELAY_ROWS = 1000  # rows in the relay table (in the document's order: verdict, then passes)
TOP_RELAYS = 15  # bars in the top relays chart
TOP_VALUES = 15  # rows in each captured-mail and credentials table

# Where the real servers' loops end, as the trap counts Received: headers on
# the last pass (tests/data/mta/): (hops, MTA, class). Postfix refuses the
# pass that arrives with 49 (its own header makes 50); Exim goes silent after
# 30; sendmail after 25 upstream, 100 in Debian's configuration, where
# OpenSMTPD refuses too.
REFERENCE_LIMITS = (
    (25, "sendmail", "mta-sendmail"), (30, "Exim", "mta-exim"), (49, "Postfix", "mta-postfix"),
    (100, "sendmail (Debian), OpenSMTPD", "mta-sendmail"),
)

VERDICTS = {  # verdict: (label, what it means)
    "open_relay": ("open relay", "its own server accepted a message for relaying (a loop pass)"),
    "refuses_relay": ("refuses relay", "its own server refused the recipient"),
    "loop_protected": ("loop protected", "its client quit on its own name before any MAIL (masking would tell more)"),
    "probe_only": ("probe only", "reflected, but it started no transaction"),
    "unreachable": ("unreachable", "the dial-back failed: it met the emulated servers"),
}
ENDS = {  # chain end: (label, what it means)
    "hop_limit": ("hop limit", "the relay refused it with a hop or loop reply, or fell silent at its known limit"),
    "self_detected": ("self detected", "the relay saw its own name, or refused a loop by name"),
    "refused": ("refused", "the relay's server refused a pass for another reason"),
    "tls_opaque": ("TLS opaque", "its next pass went through TLS, unread"),
    "capped": ("capped", "the trap's own caps cut it"),
    "vanished": ("vanished", "no further pass within the quiet time"),
    "ongoing": ("ongoing", "still within the quiet time at the end of the input"),
}

_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?Z$")


# -- text --------------------------------------------------------------------------------


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _text(value: Any, limit: int | None = None) -> str:
    """Any value as HTML text or an attribute value: clipped, with control
    and direction-changing characters shown as escapes, and escaped."""
    if value is None:
        return "–"
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(_UNSAFE.sub(_visible, text), quote=True)


def _clipped(value: Any, limit: int) -> str:
    """Clipped text in a span whose tooltip holds more of it."""
    if value is None:
        return "–"
    text = str(value)
    if len(text) <= limit:
        return _text(text)
    return f'<span title="{_text(text, 2000)}">{_text(text, limit)}</span>'


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _text(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
    return _text(value)


def _count_cell(value: Any) -> str:
    """A right-aligned number cell, sortable, zeros muted."""
    muted = " zero" if value == 0 or value is None else ""
    return f'<td class="num{muted}"{_sortkey(value)}>{_number(value)}</td>'


def _sortkey(value: Any) -> str:
    """A `data-sort` attribute for a number (empty when there is none: sorted last)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f' data-sort="{value}"'
    return ' data-sort=""'


def _bytes(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return _text(value)
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return _text(value)  # not reached


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _short_time(timestamp: Any) -> str:
    """`2026-09-21T14:17:44.852045Z` -> `2026-09-21 14:17:44` (as plain text)."""
    if not isinstance(timestamp, str):
        return "–" if timestamp is None else str(timestamp)
    found = _TIMESTAMP.match(timestamp)
    return f"{found.group(1)} {found.group(2)}" if found else timestamp


def _time(timestamp: Any) -> str:
    if timestamp is None:
        return "–"
    if isinstance(timestamp, str) and _TIMESTAMP.match(timestamp):
        return f'<time datetime="{_text(timestamp)}" title="{_text(timestamp)}">{_text(_short_time(timestamp))}</time>'
    return _text(timestamp)


def _seconds(timestamp: Any) -> float | None:
    try:
        return epoch_seconds(timestamp)
    except (TypeError, ValueError, IndexError):
        return None


def _verdict_class(verdict: Any) -> str:
    return f"v-{verdict}" if verdict in VERDICTS else "v-other"


def _end_class(end: Any) -> str:
    return f"e-{end}" if end in ENDS else "e-other"


def _badge(kind: str, value: Any) -> str:
    table, cls = (VERDICTS, _verdict_class(value)) if kind == "verdict" else (ENDS, _end_class(value))
    label, meaning = table.get(value, (value if value is not None else "none", ""))
    return f'<span class="badge {cls}" title="{_text(meaning)}">{_text(label)}</span>'


def _empty(what: str) -> str:
    return f'<p class="empty">Nothing yet: {_text(what)}.</p>'


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# -- charts --------------------------------------------------------------------------------

WIDTH = 1200  # the charts' drawing width (they scale down with the window)


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    if raw <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        if raw <= multiple * magnitude:
            return multiple * magnitude
    return 10 * magnitude


def _y_axis(top: int, left: float, right: float, y0: float, height: float) -> tuple[int, list[str]]:
    """Gridlines and labels for counts 0..top; returns the axis maximum."""
    step = max(1, int(_nice_step(top, 4)))
    highest = max(step, math.ceil(top / step) * step)
    parts = []
    for value in range(0, highest + 1, step):
        y = y0 - height * value / highest
        parts.append(f'<line class="grid" x1="{left:.1f}" x2="{right:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{value:,}</text>')
    return highest, parts


def _svg(chart_id: str, height: int, label: str, body: list[str]) -> str:
    return (f'<svg class="chart" id="{chart_id}" viewBox="0 0 {WIDTH} {height}" '
            f'role="img" aria-label="{_text(label)}">' + "".join(body) + "</svg>")


def hop_histogram_svg(histogram: dict) -> str:
    """Vertical bars at the hop counts where loops ended, on a linear axis,
    with the known default limits as dashed lines."""
    entries = []
    for hops, count in histogram.items():
        try:
            entries.append((int(hops), int(count)))
        except (TypeError, ValueError):
            continue
    entries.sort()
    if not entries:
        return _empty("no loop has ended at a hop limit")
    height, left, right, top, bottom = 300, 56, WIDTH - 16, 40, 300 - 40
    most = max(count for _, count in entries)
    x_max = max(55, entries[-1][0] + 5)
    x_min = min(0, entries[0][0])
    plot = right - left
    unit = plot / (x_max - x_min + 1)

    def x(hops: float) -> float:
        return left + (hops - x_min + 0.5) * unit

    y_top, parts = _y_axis(most, left, right, bottom, bottom - top)
    step = int(max(1, _nice_step(x_max - x_min, 12)))
    for hops in range(x_min - x_min % step, x_max + 1, step):
        if hops < x_min:
            continue
        parts.append(f'<line class="tick" x1="{x(hops):.1f}" x2="{x(hops):.1f}" y1="{bottom}" y2="{bottom + 4}"/>'
                     f'<text x="{x(hops):.1f}" y="{bottom + 16}" text-anchor="middle">{hops}</text>')
    parts.append(f'<text class="axis-title" x="{(left + right) / 2:.1f}" y="{height - 4}" text-anchor="middle">'
                 "Received: headers (hops) on the pass that ended the loop</text>")
    parts.append(f'<text class="axis-title" x="14" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + bottom) / 2:.1f})">loops</text>')
    references = {hops: (name, cls) for hops, name, cls in REFERENCE_LIMITS}
    for hops, name, cls in REFERENCE_LIMITS:
        if not x_min <= hops <= x_max:
            continue
        at = x(hops)
        anchor, dx = ("end", -4) if name == "sendmail" else ("start", 4)
        parts.append(f'<line class="reference {cls}" x1="{at:.1f}" x2="{at:.1f}" y1="{top - 22}" y2="{bottom}">'
                     f"<title>{_text(name)}'s default limit: {hops} hops</title></line>"
                     f'<text class="reference-label {cls}" x="{at + dx:.1f}" y="{top - 12}" '
                     f'text-anchor="{anchor}">{_text(name)} {hops}</text>')
    width = max(2.0, min(unit * 0.8, 28.0))
    label_counts = len(entries) <= 40
    for hops, count in entries:
        bar = (bottom - top) * count / y_top
        if count > 0:
            bar = max(bar, 1.5)
        known = references.get(hops)
        cls = f"bar {known[1]}" if known else "bar"
        note = f" ({known[0]}'s default limit)" if known else ""
        parts.append(f'<rect class="{cls}" x="{x(hops) - width / 2:.1f}" y="{bottom - bar:.1f}" width="{width:.1f}" '
                     f'height="{bar:.1f}"><title>{hops} hops: {count:,} loop{"s" if count != 1 else ""} '
                     f"ended here{_text(note)}</title></rect>")
        if label_counts:
            parts.append(f'<text class="value" x="{x(hops):.1f}" y="{bottom - bar - 4:.1f}" '
                         f'text-anchor="middle">{count:,}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>')
    return _svg("hop-histogram", height, "Hop counts at which loops ended", parts)


def passes_over_time_svg(series: list) -> str:
    points = [(p.get("start"), _int(p.get("passes"))) for p in series if isinstance(p, dict)]
    if not points or not any(count for _, count in points):
        return _empty("no reflected pass in the input")
    height, left, right, top, bottom = 260, 56, WIDTH - 16, 16, 260 - 44
    slot = (right - left) / len(points)
    y_top, parts = _y_axis(max(count for _, count in points), left, right, bottom, bottom - top)
    times = [_seconds(start) for start, _ in points]
    width = times[1] - times[0] if len(times) > 1 and times[0] is not None and times[1] is not None else None
    for index, (start, count) in enumerate(points):
        bar = (bottom - top) * count / y_top
        if count > 0:
            bar = max(bar, 1.5)
        span = f"{_short_time(start)} UTC" + (f", {_duration(width)}" if width else "")
        parts.append(f'<rect class="bar" x="{left + index * slot + slot * 0.1:.1f}" y="{bottom - bar:.1f}" '
                     f'width="{slot * 0.8:.1f}" height="{bar:.1f}"><title>{_text(span)}: {count:,} '
                     f'pass{"es" if count != 1 else ""}</title></rect>')
    labels = 6 if len(points) >= 6 else len(points)
    for n in range(labels):
        index = round(n * (len(points) - 1) / max(labels - 1, 1))
        start = _short_time(points[index][0])
        at = left + (index + 0.5) * slot
        anchor = "start" if n == 0 and labels > 1 else "end" if n == labels - 1 and labels > 1 else "middle"
        shift = -slot * 0.4 if anchor == "start" else slot * 0.4 if anchor == "end" else 0
        parts.append(f'<line class="tick" x1="{at:.1f}" x2="{at:.1f}" y1="{bottom}" y2="{bottom + 4}"/>'
                     f'<text x="{at + shift:.1f}" y="{bottom + 16}" text-anchor="{anchor}">{_text(start[5:16])}</text>')
    parts.append(f'<text class="axis-title" x="{(left + right) / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                 f"time (UTC){_text(', bars of ' + _duration(width)) if width else ''}</text>")
    parts.append(f'<line class="axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>')
    return _svg("passes-over-time", height, "Reflected passes over time", parts)


def top_relays_svg(relays: list) -> str:
    ranked = sorted((r for r in relays if isinstance(r, dict) and _int(r.get("passes")) > 0),
                    key=lambda r: (-_int(r.get("passes")), str(r.get("ip"))))[:TOP_RELAYS]
    if not ranked:
        return _empty("no relay has looped a message")
    row, left, right, top = 24, 190, WIDTH - 70, 8
    height = top + row * len(ranked) + 8
    most = max(_int(r.get("passes")) for r in ranked)
    parts = []
    for index, relay in enumerate(ranked):
        passes = _int(relay.get("passes"))
        y = top + index * row
        length = max(1.5, (right - left) * passes / most)
        mta = _dict(relay.get("mta"))
        family = " ".join(str(x) for x in (mta.get("family"), mta.get("version")) if x) or "unknown MTA"
        verdict = relay.get("verdict")
        tip = (f"{relay.get('ip')}: {passes:,} passes in {_int(relay.get('chains')):,} chains, "
               f"{VERDICTS.get(verdict, (verdict,))[0]}, {family}")
        parts.append(f'<text class="label" x="{left - 8}" y="{y + 16}" text-anchor="end">'
                     f"{_text(relay.get('ip'), 28)}</text>"
                     f'<rect class="bar {_verdict_class(verdict)}" x="{left}" y="{y + 3}" width="{length:.1f}" '
                     f'height="{row - 7}"><title>{_text(tip)}</title></rect>'
                     f'<text class="value" x="{left + length + 6:.1f}" y="{y + 16}">{passes:,}</text>')
    return _svg("top-relays-chart", height, "Relays with the most loop passes", parts)


def _stacked(chart_id: str, counts: dict, table: dict, cls, label: str) -> str:
    items = [(key, _int(counts.get(key))) for key in table if _int(counts.get(key)) > 0]
    items += [(key, _int(n)) for key, n in counts.items() if key not in table and _int(n) > 0]
    total = sum(n for _, n in items)
    if not total:
        return ""
    # A sliver still shows: no segment narrower than `least`.
    least = 5.0
    small = sum(least for _, n in items if WIDTH * n / total < least)
    large = sum(n for _, n in items if WIDTH * n / total >= least)
    parts, x = [], 0.0
    for key, count in items:
        width = WIDTH * count / total
        if large:
            width = least if width < least else (WIDTH - small) * count / large
        name = table.get(key, (key,))[0]
        parts.append(f'<rect class="bar {cls(key)}" x="{x:.2f}" y="0" width="{width:.2f}" height="22">'
                     f"<title>{_text(name)}: {count:,} ({100 * count / total:.0f}%)</title></rect>")
        x += width
    legend = "".join(f'<li><span class="swatch {cls(key)}"></span>{_text(table.get(key, (key,))[0])} '
                     f"<b>{count:,}</b></li>" for key, count in items)
    return _svg(chart_id, 22, label, parts) + f'<ul class="legend">{legend}</ul>'


# -- sections ------------------------------------------------------------------------------


def _section(section_id: str, title: str, body: str, intro: str = "") -> str:
    intro_html = f'<p class="note">{intro}</p>' if intro else ""
    return f'<section id="{section_id}"><h2>{_text(title)}</h2>{intro_html}{body}</section>'


def _table(table_id: str, headers: list[tuple[str, ...]], rows: list[str]) -> str:
    """A sortable table; each header is (name, CSS class[, tooltip])."""
    cells = []
    for name, cls, *tip in headers:
        attributes = (f' class="{cls}"' if cls else "") + (f' title="{_text(tip[0])}"' if tip else "")
        cells.append(f'<th scope="col"{attributes}>{_text(name)}</th>')
    return (f'<div class="scroll"><table id="{table_id}" class="sortable">'
            f"<thead><tr>{''.join(cells)}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _header(document: dict) -> str:
    source = _dict(document.get("input"))
    files = [str(f) for f in _list(source.get("files"))]
    shown = ", ".join(f"<code>{_text(f, 200)}</code>" for f in files[:12]) or "–"
    if len(files) > 12:
        shown += f" and {len(files) - 12:,} more"
    sensors = ", ".join(_text(s, 80) for s in _list(source.get("sensors"))[:50]) or "–"
    first, last = source.get("first"), source.get("last")
    span = f"{_time(first)} to {_time(last)} UTC" if first is not None or last is not None else "–"
    a, b = _seconds(first), _seconds(last)
    if a is not None and b is not None:
        span += f" ({_duration(b - a)})"
    events = f"{_number(source.get('events'))} events from {_number(source.get('lines'))} lines"
    if _int(source.get("bad_lines")):
        events += f" ({_number(source.get('bad_lines'))} lines were not events and were skipped)"
    return ('<header><h1>looper report</h1><p class="sub">A reflective relay trap: the open relays that looped '
            "through it, how their loops ended, and what the emulated servers caught.</p>"
            f'<dl class="input"><dt>Files</dt><dd>{shown}</dd><dt>Sensors</dt><dd>{sensors}</dd>'
            f"<dt>Time span</dt><dd>{span}</dd><dt>Events</dt><dd>{events}</dd></dl></header>")


def _summary(document: dict) -> str:
    summary = _dict(document.get("summary"))
    verdicts, ends = _dict(summary.get("verdicts")), _dict(summary.get("chain_ends"))
    cards = [("addresses", summary.get("addresses")), ("open relays", _int(verdicts.get("open_relay"))),
             ("loop chains", summary.get("chains")), ("passes", summary.get("passes")),
             ("loops ended at a hop limit", _int(ends.get("hop_limit"))),
             ("credentials tried", sum(_int(_dict(c).get("attempts"))
                                       for c in _dict(document.get("credentials")).values())),
             ("messages captured", _dict(document.get("captured")).get("messages"))]
    body = '<div class="cards">' + "".join(f'<div class="card"><b>{_number(v if v is not None else 0)}</b>'
                                           f"{_text(k)}</div>" for k, v in cards) + "</div>"
    verdict_chart = _stacked("verdicts-bar", verdicts, VERDICTS, _verdict_class, "Addresses by verdict")
    end_chart = _stacked("ends-bar", ends, ENDS, _end_class, "Loop chains by how they ended")
    body += "<h3>Verdicts</h3>" + (verdict_chart or _empty("no address has earned a verdict"))
    body += "<h3>How loop chains ended</h3>" + (end_chart or _empty("no loop chain"))
    return _section("summary", "Summary", body)


def _mta(relay: dict) -> str:
    mta = _dict(relay.get("mta"))
    greeting = relay.get("greeting")
    name = " ".join(str(x) for x in (mta.get("family"), mta.get("version")) if x)
    if mta.get("distribution"):
        name = f"{name} ({mta['distribution']})" if name else str(mta["distribution"])
    evidence = [str(e) for e in _list(mta.get("evidence"))]
    if not name and not greeting:
        return "–"
    items = "".join(f"<li>{_text(e, 300)}</li>" for e in evidence)
    if greeting:
        items += f"<li>greeting: <code>{_text(greeting, 300)}</code></li>"
    tooltip = "\n".join(evidence) or "no fingerprint: the greeting is all there is"
    return (f'<details class="mta"><summary title="{_text(tooltip, 2000)}">{_text(name or "unknown", 80)}</summary>'
            f"<ul>{items}</ul></details>")


def _verdict(relay: dict) -> str:
    """The verdict's badge; a click on it shows the evidence (sessions, times, what happened)."""
    badge = _badge("verdict", relay.get("verdict"))
    items = [e for e in _list(relay.get("evidence")) if isinstance(e, dict)]
    if not items:
        return badge
    rows = "".join(f"<li>{_time(e.get('timestamp'))} session <code>{_text(e.get('session'), 40)}</code>: "
                   f"{_text(e.get('what'), 400)}</li>" for e in items)
    return (f'<details class="evidence"><summary title="{_text(items[0].get("what"), 400)}">{badge} '
            f'<span class="count">{len(items)}</span></summary><ol>{rows}</ol></details>')


def _dns(relay: dict) -> str:
    """The relay's PTR name (+ forward-confirmed, ! not) and DNSBL listings;
    a click shows everything DNS said."""
    dns = relay.get("dns")
    if not isinstance(dns, dict):
        return "–"
    ptr, fcrdns = dns.get("ptr"), dns.get("fcrdns")
    zones = _dict(dns.get("dnsbl"))
    listed = [str(zone) for zone, answer in zones.items() if answer]
    name = f"{_text(ptr, 80)} {'+' if fcrdns is True else '!' if fcrdns is False else ''}" if ptr else "no PTR"
    badge = f' <span class="badge listed">listed {len(listed)}</span>' if listed else ""
    confirmed = {True: "forward-confirmed (FCrDNS)", False: "not forward-confirmed"}.get(fcrdns, "not confirmed")
    items = [f"<li>PTR: {_text(ptr or 'none', 200)}, {confirmed}</li>"]
    for zone, answer in zones.items():
        found = ", ".join(str(a) for a in _list(answer)) if answer else "not listed"
        items.append(f"<li>{_text(zone, 120)}: {_text(found, 200)}</li>")
    if dns.get("helo") is not None:
        resolves = {True: "resolves", False: "does not resolve"}.get(dns.get("helo_resolves"), "not resolved")
        items.append(f"<li>HELO <code>{_text(dns.get('helo'), 120)}</code>: {resolves}</li>")
    return (f'<details class="dns"><summary title="{_text(confirmed)}">{name.strip()}{badge}</summary>'
            f"<ul>{''.join(items)}</ul></details>")


def _emulated_cell(relay: dict) -> str:
    values = [relay.get(k) for k in ("emulated_sessions", "logins", "messages")]
    if not any(values):
        return _count_cell(0)
    tip = "{} emulated sessions, {} logins, {} messages captured".format(*(_number(v) for v in values))
    return (f'<td class="num"{_sortkey(values[0])} title="{tip}">'
            + " · ".join(_number(v) for v in values) + "</td>")


def _relays(document: dict) -> str:
    relays = [r for r in _list(document.get("relays")) if isinstance(r, dict)]
    chart = top_relays_svg(relays)
    top = _section("top-relays", "Top relays", chart, "The addresses whose servers looped the most passes, "
                   "coloured by verdict.")
    if not relays:
        return top + _section("relays", "Relays", _empty("no address has earned a verdict"))
    rank = {v: i for i, v in enumerate(VERDICTS)}
    rows = []
    for relay in relays[:RELAY_ROWS]:
        verdict = relay.get("verdict")
        sensors = ", ".join(str(s) for s in _list(relay.get("sensors")))
        rows.append(
            f'<tr><td class="ip"><code>{_text(relay.get("ip"), 60)}</code></td>'
            f'<td data-sort="{rank.get(verdict, len(rank))}">{_verdict(relay)}</td>'
            f"<td>{_mta(relay)}</td>"
            f"<td>{_dns(relay)}</td>"
            + "".join(_count_cell(relay.get(k)) for k in ("passes", "accepted_passes", "chains", "hop_limit",
                                                          "sessions"))
            + _emulated_cell(relay) + _count_cell(relay.get("days_seen"))
            + f'<td data-sort="{_text(relay.get("last_seen"))}">{_time(relay.get("first_seen"))}<br>'
            f"{_time(relay.get('last_seen'))}</td>"
            f"<td>{_clipped(sensors or None, 40)}</td></tr>")
    headers = [("address", ""), ("verdict", "", "open a verdict for its evidence"),
               ("MTA", "", "the fingerprinted MTA family and version"),
               ("DNS", "", "its PTR name (+ forward-confirmed, ! not) and DNSBL listings"),
               ("passes", "num", "reflected messages"), ("accepted", "num", "passes its server accepted (2xx)"),
               ("chains", "num"), ("hop limit", "num", "Received: hops at which its loops ended by its limit"),
               ("sessions", "num", "reflected sessions"),
               ("emulated", "num", "on the emulated servers: sessions · logins · messages"),
               ("days", "num", "days seen"), ("seen", "", "first and last seen (UTC)"), ("sensors", "")]
    note = ""
    if len(relays) > RELAY_ROWS:
        note = (f'<p class="note">Showing the first {RELAY_ROWS:,} of {len(relays):,} addresses; '
                "<code>looper report --format json</code> has them all.</p>")
    legend = "".join(f"<li>{_badge('verdict', v)} {_text(meaning)}</li>" for v, (_, meaning) in VERDICTS.items())
    intro = ("Every address that earned a verdict, strongest verdict first. Click a header to sort; open a "
             "verdict for the sessions behind it (the number is how many are kept), an <i>MTA</i> for the "
             "fingerprint's evidence, and a <i>DNS</i> for what DNS said of it.")
    return top + _section("relays", "Relays", f'<ul class="legend verdicts">{legend}</ul>'
                          + _table("relay-table", headers, rows) + note, intro)


def _chains(document: dict) -> str:
    chains = [c for c in _list(document.get("chains")) if isinstance(c, dict)]
    if not chains:
        return _section("chains", "Loop chains", _empty("no reflected message has looped"))
    shown = sorted(chains, key=lambda c: (-_int(c.get("passes")), str(c.get("started"))))[:CHAIN_ROWS]
    rank = {e: i for i, e in enumerate(ENDS)}
    rows = []
    for chain in shown:
        end = chain.get("end")
        how = " ".join(str(x) for x in (chain.get("end_code"), chain.get("end_text")) if x is not None) or None
        inferred = ' <span class="tag">inferred</span>' if chain.get("end_inferred") else ""
        gaps, repeats = _int(chain.get("gaps")), _int(chain.get("repeats"))
        rows.append(
            f'<tr><td class="ip"><code>{_text(chain.get("chain"), 40)}</code></td>'
            f'<td class="ip"><code>{_text(chain.get("relay_ip"), 60)}</code></td>'
            f'<td class="num"{_sortkey(chain.get("passes"))}>{_number(chain.get("passes"))}</td>'
            f'<td class="num"{_sortkey(chain.get("last_hops"))}>{_number(chain.get("first_hops"))} → '
            f"{_number(chain.get('last_hops'))}</td>"
            f'<td data-sort="{rank.get(end, len(rank))}">{_badge("end", end)}{inferred}</td>'
            f"<td>{_clipped(how, 90)}</td>"
            f"<td>{_time(chain.get('started'))}</td>"
            f'<td class="num"{_sortkey(chain.get("duration"))}>{_text(_duration(chain.get("duration")))}</td>'
            f'<td class="num"{_sortkey(chain.get("bytes"))}>{_bytes(chain.get("bytes"))}</td>'
            f'<td class="num"{_sortkey(chain.get("sessions"))}>{_number(chain.get("sessions"))}</td>'
            f'<td class="num" data-sort="{gaps + repeats}">{gaps:,} / {repeats:,}</td>'
            f"<td>{_clipped(chain.get('subject'), 60)}</td></tr>")
    headers = [("chain", ""), ("relay", ""), ("passes", "num"), ("hops", "num"), ("end", ""), ("how", ""),
               ("started", ""), ("duration", "num"), ("bytes", "num"), ("sessions", "num"),
               ("gaps / repeats", "num"), ("subject", "")]
    note = ""
    if len(chains) > CHAIN_ROWS:
        note = (f'<p class="note">Showing the {CHAIN_ROWS:,} chains with the most passes of {len(chains):,}; '
                "<code>looper report --format json</code> has them all.</p>")
    legend = "".join(f"<li>{_badge('end', e)} {_text(meaning)}</li>" for e, (_, meaning) in ENDS.items())
    intro = ("One row per looping message (its first pass's chain id), the most passes first. <i>hops</i>: the "
             "Received: count on its first and last pass; <i>inferred</i>: silent at the fingerprinted MTA's "
             "known limit.")
    return _section("chains", "Loop chains", f'<ul class="legend ends">{legend}</ul>' + note
                    + _table("chain-table", headers, rows), intro)


def _credentials(document: dict) -> str:
    found = _dict(document.get("credentials"))
    if not found:
        return _section("credentials", "Credentials tried", _empty("no login was attempted"))
    cards = []
    for protocol, data in found.items():
        data = _dict(data)
        rows = []
        for item in [i for i in _list(data.get("top")) if isinstance(i, dict)][:TOP_VALUES]:
            ok = bool(item.get("succeeded"))
            rows.append(f'<tr{" class=" + chr(34) + "accepted" + chr(34) if ok else ""}>'
                        f"<td><code>{_text(item.get('username'), 80)}</code></td>"
                        f"<td><code>{_text(item.get('password'), 80)}</code></td>"
                        f"<td>{'accepted' if ok else 'refused'}</td>"
                        f'<td class="num"{_sortkey(item.get("count"))}>{_number(item.get("count"))}</td></tr>')
        table = _table(f"credentials-{len(cards)}", [("username", ""), ("password", ""), ("login", ""),
                                                     ("count", "num")], rows)
        cards.append(f'<div class="panel"><h3 class="protocol">{_text(protocol, 40)}</h3>'
                     f'<p class="note">{_number(data.get("attempts"))} attempts, {_number(data.get("distinct"))} '
                     f"distinct pairs</p>{table}</div>")
    return _section("credentials", "Credentials tried", f'<div class="panels">{"".join(cards)}</div>',
                    "Logins on the emulated SMTP, IMAP and POP3 servers, the most tried pairs of each protocol.")


def _captured(document: dict) -> str:
    captured = _dict(document.get("captured"))
    if not _int(captured.get("messages")):
        return _section("captured", "Captured mail", _empty("the emulated relay has captured no message"))
    panels = []
    for key, title in (("senders", "Senders"), ("domains", "Recipient domains"), ("helo_names", "HELO names"),
                       ("subjects", "Subjects"), ("recipients", "Recipients")):
        values = [v for v in _list(captured.get(key)) if isinstance(v, dict)][:TOP_VALUES]
        if values:
            rows = [f"<tr><td><code>{_clipped(v.get('value'), 70)}</code></td>"
                    f'<td class="num"{_sortkey(v.get("count"))}>{_number(v.get("count"))}</td></tr>' for v in values]
            body = _table(f"captured-{key}", [(title.lower(), ""), ("count", "num")], rows)
        else:
            body = _empty(f"no {title.lower()}")
        panels.append(f'<div class="panel"><h3>{_text(title)}</h3>{body}</div>')
    intro = (f"{_number(captured.get('messages'))} messages ({_bytes(captured.get('bytes'))}) accepted and stored by "
             "the emulated relay, delivered nowhere.")
    return _section("captured", "Captured mail", f'<div class="panels">{"".join(panels)}</div>', intro)


def _activity(document: dict) -> str:
    items = [a for a in _list(document.get("emulated_activity")) if isinstance(a, dict)]
    if not items:
        return _section("activity", "Emulated activity", _empty("no address has met the emulated servers"))
    rows = [f'<tr><td class="ip"><code>{_text(a.get("ip"), 60)}</code></td>'
            + "".join(_count_cell(a.get(k)) for k in ("sessions", "logins", "messages"))
            + f"<td>{_time(a.get('first_seen'))}</td><td>{_time(a.get('last_seen'))}</td></tr>" for a in items]
    headers = [("address", ""), ("sessions", "num"), ("logins", "num"), ("messages", "num"), ("first seen", ""),
               ("last seen", "")]
    return _section("activity", "Emulated activity", _table("activity-table", headers, rows),
                    "The busiest addresses on the emulated servers (their dial-back failed).")


# -- the page ------------------------------------------------------------------------------

_PALETTE = {
    "v-open_relay": "#c62828", "v-refuses_relay": "#2e7d32", "v-loop_protected": "#1565c0",
    "v-probe_only": "#78909c", "v-unreachable": "#8e24aa", "v-other": "#546e7a",
    "e-hop_limit": "#d84315", "e-self_detected": "#1565c0", "e-refused": "#2e7d32", "e-tls_opaque": "#6a1b9a",
    "e-capped": "#f9a825", "e-vanished": "#90a4ae", "e-ongoing": "#00838f", "e-other": "#546e7a",
    "mta-sendmail": "#ef6c00", "mta-exim": "#2e7d32", "mta-postfix": "#1565c0",
}

STYLE = """
:root{--fg:#1d2330;--muted:#5c6678;--bg:#f3f4f7;--card:#fff;--line:#dde1e8;--accent:#1565c0}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:20px 32px}
header h1{margin:0 0 4px;font-size:24px}
header .sub{margin:0 0 12px;color:#b8c0cc}
header code{color:#fff}
dl.input{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dl.input dt{color:#b8c0cc}
dl.input dd{margin:0}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;
display:flex;flex-wrap:wrap;gap:4px 18px}
nav a{color:var(--accent);text-decoration:none}
nav a:hover{text-decoration:underline}
main{padding:4px 32px 24px;max-width:1600px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 20px;margin:14px 0}
h2{margin:0 0 6px;font-size:18px}
h3{margin:14px 0 6px;font-size:14px}
.note{color:var(--muted);margin:4px 0 10px}
.empty{color:var(--muted);font-style:italic;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 8px}
.card{border:1px solid var(--line);border-radius:6px;padding:6px 14px;min-width:120px;color:var(--muted)}
.card b{display:block;font-size:22px;color:var(--fg)}
svg.chart{display:block;width:100%;max-width:1200px;height:auto;margin:4px 0}
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:var(--muted)}
svg text.value{fill:var(--fg);font-weight:600}
svg text.label{fill:var(--fg);font-family:ui-monospace,Menlo,Consolas,monospace}
svg text.axis-title{font-size:12px}
svg .grid{stroke:#e6e9ef}
svg .axis,svg .tick{stroke:#9aa3b2}
rect.bar{fill:var(--c,#546e7a)}
rect.bar:hover{opacity:.8}
line.reference{stroke:var(--c);stroke-width:1.5;stroke-dasharray:5 4}
text.reference-label{fill:var(--c);font-weight:600;font-size:12px}
#passes-over-time rect.bar{fill:#3f6ea8}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:4px 16px;padding:0;margin:6px 0 10px}
.legend li{display:flex;align-items:center;gap:6px}
.legend.verdicts,.legend.ends{color:var(--muted);font-size:12px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;background:var(--c,#546e7a)}
.badge{display:inline-block;padding:0 8px;border-radius:10px;background:var(--c,#546e7a);color:#fff;font-size:12px;
white-space:nowrap}
.tag{display:inline-block;padding:0 5px;border:1px solid var(--line);border-radius:4px;font-size:11px;
color:var(--muted)}
.scroll{overflow-x:auto;max-height:720px;overflow-y:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{position:sticky;top:0;background:#eef1f5;z-index:1;white-space:nowrap}
th.num,td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.zero{color:#b0b7c3}
tbody tr:nth-child(even){background:#fafbfc}
tr.accepted td{background:#fff3e0}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{background:#e2e7ee}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
td.ip code{word-break:normal;white-space:nowrap}
details summary{cursor:pointer;white-space:nowrap}
details ul,details ol{margin:4px 0;padding-left:18px;min-width:300px;max-width:560px;white-space:normal}
details.evidence ol{min-width:420px;font-size:12px;color:var(--muted)}
details.evidence li{margin-bottom:2px}
details.dns ul{min-width:280px;font-size:12px;color:var(--muted);padding-left:16px}
.badge.listed{--c:#c62828}
.count{font-size:11px;color:var(--muted)}
time{white-space:nowrap}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.panel h3{margin-top:4px}
h3.protocol{text-transform:uppercase}
footer{color:var(--muted);padding:0 32px 24px;font-size:12px}
@media print{nav{display:none}.scroll{max-height:none;overflow:visible}}
""" + "".join(f".{cls}{{--c:{colour}}}" for cls, colour in _PALETTE.items()) + "\n"

# Sorts a table by the clicked header: numbers by `data-sort` (or the text),
# empty values last; the second click reverses.
SCRIPT = """
(function () {
  "use strict";
  function key(row, index) {
    var cell = row.cells[index];
    if (!cell) return null;
    var value = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (value === "" || value === "\\u2013") return null;
    var number = Number(value);
    return isNaN(number) ? value.toLowerCase() : number;
  }
  function compare(a, b) {
    if (typeof a !== typeof b) { a = String(a); b = String(b); }
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function sortBy(th) {
    var table = th.closest("table");
    var body = table && table.tBodies[0];
    if (!body) return;
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var up = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    var rows = Array.prototype.map.call(body.rows, function (row, n) { return [key(row, index), n, row]; });
    rows.sort(function (a, b) {
      if (a[0] === null || b[0] === null) return (a[0] === null) - (b[0] === null) || a[1] - b[1];
      return (up ? 1 : -1) * compare(a[0], b[0]) || a[1] - b[1];
    });
    rows.forEach(function (item) { body.appendChild(item[2]); });
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.tabIndex = 0;
    if (!th.title) th.title = "sort by this column";
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(th); }
    });
  });
})();
"""


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


CSP = (f"default-src 'none'; style-src {_hash(STYLE)}; script-src {_hash(SCRIPT)}; img-src data:; "
       "base-uri 'none'; form-action 'none'")

SECTIONS = (("summary", "Summary"), ("hops", "Hop limits"), ("time", "Passes over time"), ("top-relays", "Top relays"),
            ("relays", "Relays"), ("chains", "Loop chains"), ("credentials", "Credentials"),
            ("captured", "Captured mail"), ("activity", "Emulated activity"))


def render_html(document: dict) -> str:
    """The report document as one self-contained HTML page."""
    document = _dict(document)
    hops_intro = ("Each bar counts the loops that ended by a hop limit with that many Received: headers on the "
                  "pass that ended them: refused with a hop or loop reply, or silent after an accepted pass at the "
                  "fingerprinted MTA's known limit. The dashed lines are where the real servers stop, counted the "
                  "same way: sendmail upstream (25), Exim (30), Postfix (49: its own header makes its limit of 50), "
                  "sendmail as Debian configures it and OpenSMTPD (100). Peaks there say which software the open "
                  "relays run.")
    time_intro = ("Reflected passes per time slot from the first event to the last (a chain's passes are spread "
                  "evenly over its duration).")
    body = [
        _summary(document),
        _section("hops", "Where loops ended: hop limits", hop_histogram_svg(_dict(document.get("hop_histogram"))),
                 hops_intro),
        _section("time", "Passes over time", passes_over_time_svg(_list(document.get("passes_over_time"))),
                 time_intro),
        _relays(document),
        _chains(document),
        _credentials(document),
        _captured(document),
        _activity(document),
    ]
    nav = "".join(f'<a href="#{anchor}">{_text(name)}</a>' for anchor, name in SECTIONS)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        "<title>looper report</title>"
        f"<style>{STYLE}</style></head>\n<body>"
        + _header(document)
        + f"<nav>{nav}</nav><main>"
        + "\n".join(body)
        + "</main><footer>Generated by looper (report schema "
        + _text(document.get("schema"))
        + "). Every name, address and text in this page was written by the machines that connected to the trap: "
        "it is shown, escaped, never followed.</footer>"
        + f"<script>{SCRIPT}</script></body></html>\n"
    )
