"""The blocklist written for its consumers: rbldnsd, Postfix, people, scripts.

Each format is one function from the listing to text, so `looper blocklist`
and the live feed write the same bytes for the same listing.
- rbldnsd: a `combined` dataset (one file, atomic to replace): an `ip4set`
  and an `ip6trie` for the base zone, with $SOA, $NS, $TTL and a
  $TIMESTAMP whose expiry makes rbldnsd stop answering from a file that
  stopped being renewed. Serve it with `rbldnsd ... ZONE:combined:FILE`.
- postfix: a `cidr:` table for check_client_access (no postmap needed).
- plain, csv, json.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import time
from dataclasses import dataclass

import orjson

from looper.analysis.blocklist import Listing, ListingRules
from looper.analysis.timestamps import format_timestamp

FORMATS = ("plain", "rbldnsd", "postfix", "csv", "json")
# RFC 5782 section 5: a DNSxL lists 127.0.0.2 (and ::ffff:7f00:2) for
# testing, and never 127.0.0.1 (nor ::ffff:7f00:1).
TEST_ENTRY_V4 = "127.0.0.2"
TEST_ENTRY_V6 = "::ffff:7f00:2"
TEST_TXT = "RFC 5782 test entry: this list answers"
# rbldnsd refuses a file whose $TIMESTAMP is ahead of its clock: a little
# behind ours, for a second machine whose clock is a little behind.
CLOCK_SLACK_SECONDS = 300


@dataclass(frozen=True)
class ZoneSettings:
    """blocklist.zone and the entries' values, resolved (no None left)."""

    name: str
    ns: str
    hostmaster: str
    ttl: int
    value: str  # the A record of a listed address
    txt: str  # a template: {verdict} {passes} {first} {last} {expires}; rbldnsd puts the address for $
    stale_after: int  # seconds after writing that rbldnsd stops answering from the file
    sensor: str


def render(fmt: str, listed: list[Listing], zone: ZoneSettings, rules: ListingRules, now: float) -> str:
    if fmt == "plain":
        return "".join(f"{listing.ip}\n" for listing in listed)
    if fmt == "rbldnsd":
        return rbldnsd_zone(listed, zone, now)
    if fmt == "postfix":
        return postfix_table(listed, zone, now)
    if fmt == "csv":
        return csv_table(listed)
    if fmt == "json":
        return json_document(listed, zone, rules, now)
    raise ValueError(f"no blocklist format {fmt!r} (known: {', '.join(FORMATS)})")


def entry_text(listing: Listing, template: str, *, keep_dollar: bool = False) -> str:
    """The entry's text from blocklist.txt: one line; `$` is the address,
    left for rbldnsd to put in (keep_dollar), else put in here."""
    text = template.format(verdict=listing.verdict.replace("_", " "), passes=listing.passes,
                           first=_day(listing.first), last=_day(listing.last), expires=_day(listing.expires))
    text = " ".join(text.split())
    return text if keep_dollar else text.replace("$", listing.ip)


def rbldnsd_zone(listed: list[Listing], zone: ZoneSettings, now: float) -> str:
    written = time.gmtime(now - CLOCK_SLACK_SECONDS)
    header = [
        f"# looper open-relay blocklist from sensor {zone.sensor}, written {format_timestamp(now)}:"
        f" {len(listed)} listed",
        f"# serve it: rbldnsd -b ADDRESS/53 {zone.name}:combined:THIS_FILE",
        f"$SOA {zone.ttl} {zone.ns} {zone.hostmaster} {int(now)} 3600 600 604800 {zone.ttl}",
        f"$NS {zone.ttl} {zone.ns}",
        f"$TTL {zone.ttl}",
        # Past this, rbldnsd answers nothing from the file: a feed that stopped
        # must not keep a list standing (the live feed renews it in time).
        f"$TIMESTAMP {time.strftime('%Y:%m:%d:%H:%M:%S', written)} +{zone.stale_after + CLOCK_SLACK_SECONDS}",
    ]
    v4 = ["$DATASET ip4set:looper-relays @", f":{zone.value}:Listed by looper",
          f"{TEST_ENTRY_V4} :{zone.value}:{TEST_TXT}"]
    v6 = ["$DATASET ip6trie:looper-relays6 @", f":{zone.value}:Listed by looper",
          f"{TEST_ENTRY_V6} :{zone.value}:{TEST_TXT}"]
    for listing in listed:
        if listing.ip in (TEST_ENTRY_V4, TEST_ENTRY_V6, "127.0.0.1", "::ffff:7f00:1"):
            continue
        line = f"{listing.ip} :{zone.value}:{entry_text(listing, zone.txt, keep_dollar=True)}"
        (v4 if ipaddress.ip_address(listing.ip).version == 4 else v6).append(line)
    return "\n".join([*header, *v4, *v6]) + "\n"


def postfix_table(listed: list[Listing], zone: ZoneSettings, now: float) -> str:
    lines = [f"# looper open-relay blocklist from sensor {zone.sensor}, written {format_timestamp(now)}:"
             f" {len(listed)} listed",
             "# smtpd_client_restrictions = check_client_access cidr:/path/to/this/file"]
    for listing in listed:
        lines.append(f"{listing.ip} REJECT {entry_text(listing, zone.txt)}")
    return "\n".join(lines) + "\n"


def csv_table(listed: list[Listing]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["ip", "verdict", "passes", "first_evidence", "last_evidence", "expires", "sensors", "chain"])
    for listing in listed:
        writer.writerow([listing.ip, listing.verdict, listing.passes, format_timestamp(listing.first),
                         format_timestamp(listing.last), format_timestamp(listing.expires),
                         " ".join(listing.sensors), listing.chain or ""])
    return out.getvalue()


def json_document(listed: list[Listing], zone: ZoneSettings, rules: ListingRules, now: float) -> str:
    document = {
        "generated": format_timestamp(now),
        "sensor": zone.sensor,
        "rules": {"min_passes": rules.min_passes, "expire_days": rules.expire_days,
                  "include_loop_protected": rules.include_loop_protected,
                  "never": [str(network) for network in rules.never]},
        "listed": [
            {"ip": listing.ip, "verdict": listing.verdict, "passes": listing.passes,
             "first_evidence": format_timestamp(listing.first), "last_evidence": format_timestamp(listing.last),
             "expires": format_timestamp(listing.expires), "sensors": list(listing.sensors),
             "chain": listing.chain, "reason": entry_text(listing, zone.txt)}
            for listing in listed
        ],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"


def _day(seconds: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def zone_settings(blocklist, sensor: str) -> ZoneSettings:
    """The `blocklist` config section's zone, with its defaults derived from
    the sensor name, so that a zone can be made with no configuration."""
    zone = blocklist.zone
    base = sensor.rstrip(".")
    return ZoneSettings(
        name=zone.name or f"bl.{base}",
        ns=zone.ns or base,
        hostmaster=zone.hostmaster or f"hostmaster.{base}",
        ttl=zone.ttl,
        value=blocklist.value,
        txt=blocklist.txt,
        stale_after=int(blocklist.stale_after),
        sensor=sensor,
    )


def listing_rules(blocklist, *, own_addresses: tuple[str, ...] = (), min_passes: int | None = None,
                  expire_days: float | None = None, include_loop_protected: bool | None = None) -> ListingRules:
    """The config section's rules, with a command line's overrides; the
    trap's own addresses are never listed."""
    never = list(blocklist.never)
    for ip in own_addresses:
        address = ipaddress.ip_address(ip)
        if not address.is_unspecified:
            never.append(ipaddress.ip_network(address))
    return ListingRules(
        min_passes=blocklist.min_passes if min_passes is None else min_passes,
        expire_days=blocklist.expire_days if expire_days is None else expire_days,
        include_loop_protected=(blocklist.include_loop_protected if include_loop_protected is None
                                else include_loop_protected),
        never=tuple(never),
    )
