"""The bait mailboxes as shipped (config/bait/) and their loader (looper/bait.py)."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from looper import cli
from looper.bait import (
    DELIVERY_DELAY, BaitError, check_bait, fill, load_bait, parse_age, parse_flags, placeholders, split_ours,
)
from looper.config import Config, ConfigError, parse_config
from looper.proto.mailbox import STORED_FLAGS

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "bait"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
FOLDERS = ("INBOX", "Sent", "Drafts", "Archive", "Junk")


def config_for(folder: Path, **bait) -> Config:
    text = "bait: {" + ", ".join(f"{k}: '{v}'" for k, v in {"folder": str(folder), **bait}.items()) + "}\n"
    return parse_config(text, "test.yaml")


@pytest.fixture(scope="module")
def store():
    return load_bait(config_for(SHIPPED), NOW)


def shipped_files(folder: str) -> list[Path]:
    return sorted((SHIPPED / folder).glob("*.eml"))


def parsed(message) -> email.message.EmailMessage:
    return email.message_from_bytes(message.content, policy=email.policy.default)


def test_the_five_folders_in_order_with_their_special_use_and_uids_1_to_n(store):
    assert [f.name for f in store.folders] == list(FOLDERS)
    assert [f.special_use for f in store.folders] == [None, "\\Sent", "\\Drafts", "\\Archive", "\\Junk"]
    for folder in store.folders:
        assert [m.uid for m in folder.messages] == list(range(1, len(shipped_files(folder.name)) + 1))
        assert folder.uidnext == len(folder.messages) + 1
    # Dovecot numbers the mailboxes it creates from the clock: the start time, then one more each.
    assert [f.uidvalidity for f in store.folders] == [int(NOW) + i for i in range(5)]
    assert 15 <= sum(len(f.messages) for f in store.folders) <= 20


def test_every_message_parses_without_defects_with_crlf_only(store):
    for folder in store.folders:
        for message in folder.messages:
            parsed_message = parsed(message)
            assert not [d for part in parsed_message.walk() for d in part.defects], (folder.name, message.uid)
            for name in ("From", "To", "Date", "Subject", "Message-ID"):
                assert parsed_message[name], (folder.name, message.uid, name)
            assert b"\n" not in message.content.replace(b"\r\n", b"")
            assert b"\r" not in message.content.replace(b"\r\n", b"")
            assert b"X-Bait-" not in message.content
            assert message.size == len(message.content)
            assert max(len(line) for line in message.content.split(b"\r\n")) <= 998


def test_every_placeholder_is_replaced_by_the_configured_company_and_people():
    store = load_bait(config_for(SHIPPED, domain="corp.example", company="Acme Freight & Co",
                                 admin="Ola Nordmann", ceo="Jane Roe", finance="Max Mustermann",
                                 developer="Erika Muster"), NOW)
    every = b"".join(m.content for f in store.folders for m in f.messages)
    assert not re.search(rb"\{[a-z][a-z0-9_]*\}", every)
    for default in (b"example.com", b"Brightwater", b"Mark", b"Claire", b"Priya", b"Tom Becker"):
        assert default not in every, default
    for value in (b"@corp.example", b"Acme Freight & Co", b"acme-freight-co", b"ola.nordmann@corp.example",
                  b"Jane Roe", b"max.mustermann@corp.example", b"Erika"):
        assert value in every, value
    assert parsed(store.inbox.messages[1])["To"] == "Ola Nordmann <ola.nordmann@corp.example>"


def test_dates_are_the_start_time_minus_the_age_and_internaldate_the_arrival():
    for now in (NOW, NOW + 86400 * 400.5):
        store = load_bait(config_for(SHIPPED), now)
        start = datetime.fromtimestamp(int(now), timezone.utc)
        for folder in store.folders:
            for message, path in zip(folder.messages, shipped_files(folder.name)):
                age = parse_age(re.search(r"^X-Bait-Age:(.*)$", path.read_text(), re.M).group(1))
                date = email.utils.parsedate_to_datetime(parsed(message)["Date"])
                assert date == start - age
                assert message.internaldate == date + DELIVERY_DELAY
                assert message.internaldate.tzinfo is not None
                assert timedelta(0) < start - message.internaldate < timedelta(days=90)
                received = parsed(message).get_all("Received") or []
                for header in received:
                    stamp = email.utils.parsedate_to_datetime(header.rsplit(";", 1)[1].strip())
                    assert stamp == message.internaldate
            # oldest first: the UIDs follow the dates
            dates = [m.internaldate for m in folder.messages]
            assert dates == sorted(dates), folder.name


def test_flags_are_what_each_file_says(store):
    for folder in store.folders:
        for message, path in zip(folder.messages, shipped_files(folder.name)):
            said = re.search(r"^X-Bait-Flags:(.*)$", path.read_text(), re.M)
            assert message.flags == parse_flags(said.group(1) if said else "")
            assert message.flags <= STORED_FLAGS
    assert all("\\Draft" in m.flags for m in store.folder("Drafts").messages)
    assert any("\\Flagged" in m.flags for m in store.inbox.messages)
    assert any("\\Answered" in m.flags for m in store.inbox.messages)
    assert any("\\Seen" not in m.flags for m in store.inbox.messages)  # something unread


def test_the_invoice_has_its_pdf_part(store):
    [invoice] = [m for m in store.inbox.messages if b"Invoice INV-2024-0193" in m.content]
    message = parsed(invoice)
    assert message.get_content_type() == "multipart/mixed"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/pdf"]
    pdf = parts[1].get_content()
    assert parts[1].get_filename() == "INV-2024-0193.pdf"
    assert pdf.startswith(b"%PDF-1.") and pdf.rstrip().endswith(b"%%EOF")
    # a real PDF: its xref offset points at its xref table
    offset = int(pdf.rsplit(b"startxref", 1)[1].split()[0])
    assert pdf[offset:].startswith(b"xref")


def test_the_shapes_imap_clients_meet(store):
    types = {parsed(m).get_content_type() for f in store.folders for m in f.messages}
    assert {"text/plain", "multipart/alternative", "multipart/mixed", "text/html"} <= types
    encodings = {str(part.get("Content-Transfer-Encoding", "")).lower()
                 for f in store.folders for m in f.messages for part in parsed(m).walk()}
    assert {"quoted-printable", "base64", "7bit"} <= encodings
    subjects = [str(parsed(m)["Subject"]) for m in store.inbox.messages]
    assert "Überstunden und Planung für Q3" in subjects  # RFC 2047, decoded
    assert any(b"=?UTF-8?Q?" in m.content for m in store.inbox.messages)


def text_of(message) -> str:
    out = []
    for part in parsed(message).walk():
        if part.get_content_maintype() == "text":
            out.append(part.get_content())
    return "\n".join(out)


@pytest.mark.parametrize(("folder", "lure"), [
    ("INBOX", "AKIAIOSFODNN7EXAMPLE"),
    ("INBOX", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("INBOX", "postgresql://crm_app:Wint3r-Sun-2024!@db01.internal.example.com:5432/crm?sslmode=require"),
    ("INBOX", "PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="),
    ("INBOX", "Failed password for root from 198.51.100.77"),
    ("INBOX", "Temporary password: Welcome2024!Reset"),
    ("INBOX", "SHIPPING_API_TOKEN=sk_live_EXAMPLE_"),
    ("INBOX", "backup01.example.com (192.0.2.50)"),
    ("INBOX", "Passwort Lohn-2024-März"),
    ("Sent", "password: Tr0ub4dor&3-example"),
    ("Drafts", "kind: Secret"),
    ("Drafts", "AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("Archive", "Your domain example.com has been renewed"),
    ("Junk", "X-Spam-Flag: YES"),
])
def test_the_bait_is_there_decoded(store, folder, lure):
    texts = [text_of(m) + str(parsed(m)["Subject"]) + m.content.decode("latin-1") for m in store.folder(folder).messages]
    assert any(lure in text for text in texts), lure


def test_the_shipped_config_loads_the_shipped_bait_from_the_repository():
    assert Config().bait.folder == "config/bait"
    assert placeholders(Config().bait)["admin_email"] == "mark.jensen@example.com"
    assert placeholders(Config().bait)["company_slug"] == "brightwater-logistics"


# -- what is refused, and how it is said -------------------------------------


def copy_bait(tmp_path: Path) -> Path:
    folder = tmp_path / "bait"
    shutil.copytree(SHIPPED, folder)
    return folder


def refusal(folder: Path) -> str:
    with pytest.raises(BaitError) as caught:
        load_bait(config_for(folder), NOW)
    return str(caught.value)


def test_a_missing_folder_is_refused(tmp_path):
    assert refusal(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: no such folder (bait.folder: the bait messages, <Folder>/*.eml)"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda t: t.replace("{ceo_first}", "{ceo_frist}", 1), "unknown placeholder {ceo_frist}"),
    (lambda t: t.replace("X-Bait-Flags: \\Seen", "X-Bait-Flags: \\Seen \\Recent", 1), "unknown flag '\\\\Recent'"),
    (lambda t: t.replace("X-Bait-Age: 20d 3h", "X-Bait-Age: three weeks", 1), "expected an age"),
    (lambda t: re.sub(r"X-Bait-Age: .*\n", "", t, count=1), "no X-Bait-Age: header"),
    (lambda t: t.replace("Date: {date}", "Date: Mon, 1 Jan 2024 10:00:00 +0000", 1), "'Date: {date}'"),
    (lambda t: t.replace("--b1_lunch--", ""), "does not parse as a message: CloseBoundaryNotFoundDefect"),
])
def test_a_broken_message_is_named_with_its_problem(tmp_path, change, problem):
    folder = copy_bait(tmp_path)
    path = folder / "INBOX" / "01-team-lunch.eml"
    path.write_text(change(path.read_text()))
    said = refusal(folder)
    assert said.startswith(f"{path}: ") and problem in said, said


def test_an_unknown_folder_and_an_empty_inbox_are_refused(tmp_path):
    folder = copy_bait(tmp_path)
    (folder / "Spam").mkdir()
    assert refusal(folder) == f"{folder / 'Spam'}: unknown folder (known: INBOX, Sent, Drafts, Archive, Junk)"
    (folder / "Spam").rmdir()
    shutil.rmtree(folder / "INBOX")
    assert "no messages" in refusal(folder)


def test_a_missing_folder_other_than_inbox_is_empty(tmp_path):
    folder = copy_bait(tmp_path)
    shutil.rmtree(folder / "Junk")
    assert load_bait(config_for(folder), NOW).folder("Junk").messages == ()


def test_check_config_names_a_broken_bait_in_one_line_when_imap_or_pop3_listens(tmp_path, capsys):
    folder = copy_bait(tmp_path)
    path = folder / "Sent" / "03-root-password.eml"
    path.write_text(path.read_text().replace("{developer_first}", "{dev_first}"))
    config = tmp_path / "looper.yaml"
    config.write_text(f"run_as: null\nlog: {{dir: '{tmp_path / 'logs'}'}}\nbait: {{folder: '{folder}'}}\n")
    quiet = "listen: {smtp: [], imap: [], imaps: [], pop3: [], pop3s: []}\n"
    check_bait(parse_config(config.read_text() + quiet, str(config)), str(config))  # nothing listens: not loaded
    config.write_text(config.read_text() + "listen: {smtp: [], imap: [], imaps: [], pop3: ['127.0.0.1:11110'], pop3s: []}\n")
    assert cli.main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"{config}: bait.folder: {path}: unknown placeholder {{dev_first}}"), err
    with pytest.raises(ConfigError):
        check_bait(parse_config(config.read_text(), str(config)), str(config))


@pytest.mark.parametrize(("text", "problem"), [
    ("bait: {mailbox: x}", "bait.mailbox: unknown key (known: folder, domain, company, admin, ceo, finance, developer)"),
    ("bait: {domain: 'Example.COM'}", "bait.domain: expected a lower-case mail domain"),
    ("bait: {domain: localhost}", "bait.domain: expected a lower-case mail domain"),
    ("bait: {admin: Mark}", "bait.admin: expected a first and a last name"),
    ("bait: {ceo: 'Jörg Müller'}", "bait.ceo: expected a first and a last name"),
    ("bait: {company: 'Evil {domain} Inc'}", "bait.company: expected a company name"),
    ("bait: {folder: 'my bait'}", "bait.folder: expected a name without spaces"),
])
def test_bad_bait_settings_name_file_key_and_problem(text, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.yaml")
    assert str(caught.value).startswith(f"t.yaml: {problem}"), str(caught.value)


# -- properties of what parses our own syntax ---------------------------------


@given(st.integers(0, 9999), st.integers(0, 99999), st.integers(0, 999999), st.integers(0, 9999999))
def test_an_age_reads_back(days, hours, minutes, seconds):
    text = f"{days}d {hours}h {minutes}m {seconds}s"
    assert parse_age(text) == timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


@given(st.text(max_size=40))
def test_an_age_is_a_timedelta_or_a_value_error(text):
    try:
        assert parse_age(text) >= timedelta(0)
    except ValueError:
        pass


@given(st.lists(st.sampled_from(sorted(STORED_FLAGS) + ["\\seen", "\\FLAGGED"]), max_size=6))
def test_flags_read_back_in_any_case(words):
    by_case = {flag.lower(): flag for flag in STORED_FLAGS}
    assert parse_flags(" ".join(words)) == {by_case[word.lower()] for word in words}


_VALUES = {"domain": "corp.example", "admin": "Ola Nordmann", "date": "Mon, 1 Jan 2024 00:00:00 +0000"}


@given(st.lists(st.one_of(st.text(alphabet=st.characters(codec="ascii"), max_size=20),
                          st.sampled_from([f"{{{k}}}" for k in _VALUES]),
                          st.sampled_from(["{", "}", "{}", "{1x}", "{Domain}", "${HOME}", '{"a": 1}'])),
                max_size=20))
def test_fill_replaces_every_known_placeholder_and_refuses_an_unknown_one(pieces):
    text = "".join(pieces).encode("ascii")
    try:
        out = fill(text, _VALUES)
    except KeyError as err:
        assert f"{{{err.args[0]}}}".encode() in text
        return
    assert not re.search(rb"\{[a-z][a-z0-9_]*\}", out)


@given(st.lists(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n"), max_size=30), max_size=8),
       st.sampled_from(["", "\\Seen", "\\Seen \\Flagged"]), st.binary(max_size=50))
def test_split_ours_takes_our_headers_out_and_keeps_every_other_line(others, flags, body):
    lines = [line for line in others if line and not line.lower().startswith(("x-bait-age:", "x-bait-flags:"))
             and line[0] not in " \t"]
    head = b"\n".join([b"X-Bait-Age: 1d", f"X-Bait-Flags: {flags}".encode(), *(l.encode() for l in lines)])
    ours, rest = split_ours(head + b"\n\n" + body)
    assert ours == {"x-bait-age": "1d", "x-bait-flags": flags}
    assert rest == b"\n".join(l.encode() for l in lines) + b"\n\n" + body


# -- wired into the trap ---------------------------------------------------------


async def test_the_trap_opens_the_bait_when_imap_or_pop3_listens_and_not_else(start_trap):
    from tests.conftest import free_port

    quiet = await start_trap(free_port())
    assert quiet.trap.context.bait.folders == ()
    listening = await start_trap(free_port(), listen={"pop3": [f"127.0.0.1:{free_port()}"]},
                                 bait={"folder": str(SHIPPED), "domain": "trap.example"})
    bait = listening.trap.context.bait
    assert [f.name for f in bait.folders] == list(FOLDERS)
    assert b"mark.jensen@trap.example" in bait.inbox.messages[1].content
    # dated from the start: the newest INBOX message is hours old, not years
    age = datetime.now(timezone.utc) - bait.inbox.messages[-1].internaldate
    assert timedelta(hours=1) < age < timedelta(days=1)
