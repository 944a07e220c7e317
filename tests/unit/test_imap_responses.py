"""Byte-exact tables for the IMAP response encoder (pymail.proto.imap.responses) and the
FETCH answers built from stored message structures (pymail.proto.imap.bodystructure),
plus a hypothesis fuzz test: random messages never make the encoder raise and its output
is balanced outside quoted strings and literals."""

from __future__ import annotations

import datetime
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymail.mail.mime import Address, Envelope, parse_structure
from pymail.proto.imap import responses as r
from pymail.proto.imap.bodystructure import (
    apply_partial, encode_address_list, encode_body_structure, encode_envelope, fetch_body_item,
    filter_header_fields, section_bytes,
)
from pymail.proto.imap.types import FetchAttribute, Section


def message(text: str) -> bytes:
    return textwrap.dedent(text).lstrip("\n").replace("\n", "\r\n").encode("utf-8")


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "utf8", "expected"),
    [
        ("hello", False, b'"hello"'),
        ("", False, b'""'),
        ('say "hi" \\o/', False, b'"say \\"hi\\" \\\\o/"'),
        ("two\r\nlines", False, b"{10}\r\ntwo\r\nlines"),
        ("bare\nLF", False, b"{7}\r\nbare\nLF"),
        ("nul\x00", False, b"{4}\r\nnul\x00"),
        ("caf\u00e9", False, b"{5}\r\ncaf\xc3\xa9"),
        ("caf\u00e9", True, b'"caf\xc3\xa9"'),
        ("raw\udce9", True, b"{4}\r\nraw\xe9"),  # surrogateescaped byte: not UTF-8
        (b"bytes", False, b'"bytes"'),
        ("x" * r.MAX_QUOTED, False, b'"' + b"x" * r.MAX_QUOTED + b'"'),
        ("x" * (r.MAX_QUOTED + 1), False, b"{1025}\r\n" + b"x" * (r.MAX_QUOTED + 1)),
    ],
)
def test_string_quoted_or_literal(value, utf8, expected):
    assert r.encode_string(value, utf8=utf8) == expected


def test_values():
    assert r.encode_value(None) == b"NIL"
    assert r.encode_value(0) == b"0"
    assert r.encode_value(2**63 - 1) == b"9223372036854775807"
    assert r.encode_value([1, "a", None, [r.Atom("\\Seen")], r.Literal(b"x"), r.Raw(b"(raw)")]) == (
        b'(1 "a" NIL (\\Seen) {1}\r\nx (raw))'
    )
    assert r.encode_value(()) == b"()"
    assert r.encode_nstring(None) == b"NIL"
    with pytest.raises(ValueError):
        r.encode_number(-1)
    with pytest.raises(TypeError):
        r.encode_value(True)
    with pytest.raises(TypeError):
        r.encode_value(object())


@pytest.mark.parametrize(
    ("value", "expected"),
    [("INBOX", b"INBOX"), ("a]b", b"a]b"), ("NIL", b'"NIL"'), ("has space", b'"has space"'),
     ("a*", b'"a*"'), ("a%", b'"a%"'), ("", b'""'), ("x{", b'"x{"'), ("a(b", b'"a(b"')],
)
def test_astring(value, expected):
    assert r.encode_astring(value) == expected


def test_flag_lists_and_sequence_sets():
    assert r.encode_flag_list(["\\Seen", "\\Answered", "$Forwarded"]) == b"(\\Seen \\Answered $Forwarded)"
    assert r.encode_flag_list([]) == b"()"
    assert r.encode_flag_list(["\\*"]) == b"(\\*)"
    for bad in ("two words", "\\", "(x", "a]"):
        with pytest.raises(ValueError):
            r.encode_flag_list([bad])
    assert r.encode_sequence_set([1, 2, 3, 5, 7, 8]) == b"1:3,5,7:8"
    assert r.encode_sequence_set([304, 319, 320]) == b"304,319:320"
    assert r.encode_sequence_set([9]) == b"9"
    with pytest.raises(ValueError):
        r.encode_sequence_set([])


def test_internal_date():
    tz = datetime.timezone(datetime.timedelta(hours=-7))
    assert r.encode_internal_date(datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz)) == b'"17-Jul-1996 02:44:25 -0700"'
    assert r.encode_internal_date(datetime.datetime(2024, 1, 5, 23, 0, 9)) == b'" 5-Jan-2024 23:00:09 +0000"'
    tz = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    assert r.encode_internal_date(datetime.datetime(2024, 12, 31, 0, 0, 0, tzinfo=tz)) == b'"31-Dec-2024 00:00:00 +0530"'


def test_text_never_breaks_the_line():
    assert r.encode_text("a\r\nb\x00c") == b"a  b c"
    assert r.encode_text("caf\u00e9") == b"caf?"
    assert r.encode_text("caf\u00e9", utf8=True) == b"caf\xc3\xa9"


# --- modified UTF-7 (RFC 3501 section 5.1.3) ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 example
        ("Tom & Jerry", "Tom &- Jerry"),
        ("&", "&-"),
        ("&&", "&-&-"),
        ("Entw\u00fcrfe", "Entw&APw-rfe"),
        ("\U0001f600", "&2D3eAA-"),  # non-BMP: a surrogate pair
        ("a\U0001f600b\u00e9", "a&2D3eAA-b&AOk-"),
        ("\u00e9\u00e9\u00e9", "&AOkA6QDp-"),
        ("tab\there", "tab&AAk-here"),  # control characters are encoded
    ],
)
def test_modified_utf7_round_trip(name, encoded):
    assert r.encode_modified_utf7(name) == encoded
    assert r.decode_modified_utf7(encoded) == name


@pytest.mark.parametrize(
    "bad",
    ["&", "&AOk", "&A-", "&AOk=-", "&AOl-", "&AGE-", "&AOk-&AOk-", "&2D0-", "caf\u00e9", "a\tb", "&*-", "&AO-"],
)
def test_modified_utf7_rejects(bad):
    with pytest.raises(ValueError):
        r.decode_modified_utf7(bad)


@given(st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_modified_utf7_round_trip_fuzz(name):
    name = "".join(c for c in name if not "\ud800" <= c <= "\udfff")
    encoded = r.encode_modified_utf7(name)
    assert encoded.isascii()
    assert r.decode_modified_utf7(encoded) == name


# --- status responses --------------------------------------------------------------------------


def test_status_responses():
    assert r.tagged_status("a1", "OK", "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert r.tagged_status("A003", "OK", "APPEND completed", r.code_appenduid(38505, [3955])) == (
        b"A003 OK [APPENDUID 38505 3955] APPEND completed\r\n"
    )
    assert r.tagged_status("A004", "OK", "Done", r.code_copyuid(38505, [304, 319, 320], [3956, 3957, 3958])) == (
        b"A004 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"
    )
    assert r.tagged_status("a", "NO", "Message too large", r.TOOBIG) == b"a NO [TOOBIG] Message too large\r\n"
    assert r.tagged_status("a", "NO", "Try later", r.UNAVAILABLE) == b"a NO [UNAVAILABLE] Try later\r\n"
    assert r.tagged_status("a", "BAD", "") == b"a BAD Completed\r\n"
    assert r.tagged_status("d", "OK", "Conditional STORE failed", r.code_modified([7, 9])) == (
        b"d OK [MODIFIED 7,9] Conditional STORE failed\r\n"
    )
    assert r.untagged_status("OK", "Predicted next UID", r.code_uidnext(4392)) == b"* OK [UIDNEXT 4392] Predicted next UID\r\n"
    assert r.untagged_status("OK", "UIDs valid", r.code_uidvalidity(3857529045)) == b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
    assert r.untagged_status("OK", "Limited", r.code_permanentflags(["\\Deleted", "\\Seen", "\\*"])) == (
        b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"
    )
    assert r.untagged_status("OK", "Highest", r.code_highestmodseq(715194045007)) == b"* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"
    assert r.untagged_status("OK", "ready", r.code_capability(["IMAP4rev1", "LITERAL+", "AUTH=PLAIN"])) == (
        b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n"
    )
    assert r.untagged_status("BYE", "Autologout; idle for too long") == b"* BYE Autologout; idle for too long\r\n"
    assert r.untagged_status("PREAUTH", "IMAP4rev1 server logged in as Smith") == b"* PREAUTH IMAP4rev1 server logged in as Smith\r\n"
    assert r.tagged_status("a", "NO", "x", r.code_badcharset(["UTF-8", "US-ASCII"])) == b"a NO [BADCHARSET (UTF-8 US-ASCII)] x\r\n"
    assert r.continuation("Ready for additional command text") == b"+ Ready for additional command text\r\n"
    assert r.continuation() == b"+ \r\n"
    assert r.continuation_data(b"YGgGCSqGSIb3EgECAgIAb1kwV6ADAgEFoQMCAQ8=") == b"+ YGgGCSqGSIb3EgECAgIAb1kwV6ADAgEFoQMCAQ8=\r\n"
    with pytest.raises(ValueError):
        r.tagged_status("a", "BYE", "no")
    with pytest.raises(ValueError):
        r.code_copyuid(1, [1, 2], [3])


def test_data_responses():
    assert r.capability_response(["IMAP4rev1", "STARTTLS", "AUTH=GSSAPI", "LOGINDISABLED"]) == (
        b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED\r\n"
    )
    assert r.list_response(["\\Noselect"], "/", "~/Mail/foo") == b'* LIST (\\Noselect) "/" "~/Mail/foo"\r\n'
    assert r.list_response([], None, "INBOX") == b'* LIST () NIL "INBOX"\r\n'
    assert r.list_response([], "\\", "a") == b'* LIST () "\\\\" "a"\r\n'
    assert r.list_response(["\\HasNoChildren"], "/", "Entw\u00fcrfe") == b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"\r\n'
    assert r.list_response(["\\HasNoChildren"], "/", "Entw\u00fcrfe", utf8=True) == (
        b'* LIST (\\HasNoChildren) "/" "Entw\xc3\xbcrfe"\r\n'
    )
    assert r.list_response(["\\Subscribed"], "/", "Foo", extended=[("CHILDINFO", ["SUBSCRIBED"])]) == (
        b'* LIST (\\Subscribed) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    )
    assert r.list_response([], "/", "Neu", extended=[("OLDNAME", ["\u00c4lt"])]) == (
        b'* LIST () "/" "Neu" ("OLDNAME" ("&AMQ-lt"))\r\n'
    )
    assert r.list_response(["\\Sent"], "/", "Sent", command="LSUB") == b'* LSUB (\\Sent) "/" "Sent"\r\n'
    assert r.status_response("blurdybloop", {"MESSAGES": 231, "UIDNEXT": 44292}) == (
        b'* STATUS "blurdybloop" (MESSAGES 231 UIDNEXT 44292)\r\n'
    )
    assert r.exists_response(23) == b"* 23 EXISTS\r\n"
    assert r.recent_response(5) == b"* 5 RECENT\r\n"
    assert r.expunge_response(44) == b"* 44 EXPUNGE\r\n"
    assert r.vanished_response([300, 301, 302, 405, 411]) == b"* VANISHED 300:302,405,411\r\n"
    assert r.vanished_response([41, 43], earlier=True) == b"* VANISHED (EARLIER) 41,43\r\n"
    assert r.flags_response(["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]) == (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
    )
    assert r.search_response([2, 84, 882]) == b"* SEARCH 2 84 882\r\n"
    assert r.search_response([]) == b"* SEARCH\r\n"
    assert r.search_response([2, 5, 6], modseq=917162500) == b"* SEARCH 2 5 6 (MODSEQ 917162500)\r\n"
    assert r.esearch_response("A282", [("MIN", 2), ("COUNT", 3)]) == b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n'
    assert r.esearch_response("A283", [("ALL", [2, 10, 11])], uid=True) == b'* ESEARCH (TAG "A283") UID ALL 2,10:11\r\n'
    assert r.esearch_response("A284", [("ALL", [])]) == b'* ESEARCH (TAG "A284")\r\n'
    assert r.enabled_response(["CONDSTORE", "UTF8=ACCEPT"]) == b"* ENABLED CONDSTORE UTF8=ACCEPT\r\n"
    assert r.enabled_response([]) == b"* ENABLED\r\n"
    assert r.id_response([("name", "pymail"), ("version", None)]) == b'* ID ("name" "pymail" "version" NIL)\r\n'
    assert r.id_response(None) == b"* ID NIL\r\n"
    assert r.namespace_response([("", "/")], None, None) == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert r.namespace_response([("", "/")], [("~", "/")], [("#shared/", "/"), ("#public/", "/")]) == (
        b'* NAMESPACE (("" "/")) (("~" "/")) (("#shared/" "/")("#public/" "/"))\r\n'
    )
    assert r.quota_response("", [("STORAGE", 10, 512)]) == b'* QUOTA "" (STORAGE 10 512)\r\n'
    assert r.quotaroot_response("INBOX", [""]) == b'* QUOTAROOT "INBOX" ""\r\n'


def test_fetch_response_and_item_names():
    tz = datetime.timezone(datetime.timedelta(hours=-7))
    line = r.fetch_response(12, [
        ("UID", r.encode_number(5)),
        ("FLAGS", r.encode_flag_list(["\\Seen"])),
        ("INTERNALDATE", r.encode_internal_date(datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz))),
        ("RFC822.SIZE", r.encode_number(4286)),
        ("MODSEQ", r.encode_modseq(12)),
    ])
    assert line == (
        b'* 12 FETCH (UID 5 FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE 4286 MODSEQ (12))\r\n'
    )
    section = Section((1, 2), "HEADER.FIELDS", ("FROM", "TO"))
    assert r.fetch_item_name(FetchAttribute("BODY", section, peek=True, partial=(0, 100))) == "BODY[1.2.HEADER.FIELDS (FROM TO)]<0>"
    assert r.fetch_item_name(FetchAttribute("BODY", Section())) == "BODY[]"
    assert r.fetch_item_name(FetchAttribute("BODY", Section(text="TEXT"), partial=(30, 5))) == "BODY[TEXT]<30>"
    assert r.fetch_item_name(FetchAttribute("BODY", Section((3,), "MIME"))) == "BODY[3.MIME]"
    assert r.fetch_item_name(FetchAttribute("BODY", Section((), "HEADER.FIELDS.NOT", ("x-spam",)))) == "BODY[HEADER.FIELDS.NOT (X-SPAM)]"
    assert r.fetch_item_name(FetchAttribute("RFC822.SIZE")) == "RFC822.SIZE"


# --- ENVELOPE and BODYSTRUCTURE (RFC 3501 section 7.4.2) -------------------------------------------

RFC3501_MESSAGE = message("""
    Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
    From: Terry Gray <gray@cac.washington.edu>
    Subject: IMAP4rev1 WG mtg summary and minutes
    To: imap@cac.washington.edu
    cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
    Message-Id: <B27397-0100000@cac.washington.edu>
    MIME-Version: 1.0
    Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

    Hello,
    this is the body.
    """)


def test_envelope_rfc3501_example():
    structure = parse_structure(RFC3501_MESSAGE)
    assert encode_envelope(structure.envelope) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )


def test_body_structure_plain_text():
    structure = parse_structure(RFC3501_MESSAGE)
    # the RFC 3501 section 7.4.2 shape ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)
    assert encode_body_structure(structure.body, extensible=False) == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 27 2)'
    assert encode_body_structure(structure.body) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 27 2 NIL NIL NIL NIL)'
    )


def test_envelope_missing_headers_and_group():
    structure = parse_structure(message("""
        To: undisclosed-recipients:;
        Cc: Friends: alice@example.org, Bob <bob@example.org>;, carol@example.net

        x
        """))
    assert encode_envelope(structure.envelope) == (
        b"(NIL NIL NIL NIL NIL "
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b'((NIL NIL "Friends" NIL)(NIL NIL "alice" "example.org")("Bob" NIL "bob" "example.org")(NIL NIL NIL NIL)'
        b'(NIL NIL "carol" "example.net")) NIL NIL NIL)'
    )
    assert encode_address_list([]) == b"NIL"
    envelope = Envelope(subject="", from_=[Address(None, "@a.example", "joe", "b.example")])
    assert encode_envelope(envelope).startswith(b'(NIL "" ((NIL "@a.example" "joe" "b.example")) NIL')


def test_envelope_8bit_subject_is_a_literal():
    raw = "Subject: Gr\u00fc\u00dfe\r\nFrom: J\u00fcrgen <j@example.de>\r\n\r\nx\r\n".encode("utf-8")
    structure = parse_structure(raw)
    assert encode_envelope(structure.envelope) == (
        b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe ((" b"{7}\r\nJ\xc3\xbcrgen NIL \"j\" \"example.de\")) "
        b"((" b"{7}\r\nJ\xc3\xbcrgen NIL \"j\" \"example.de\")) "
        b"((" b"{7}\r\nJ\xc3\xbcrgen NIL \"j\" \"example.de\")) NIL NIL NIL NIL NIL)"
    )
    assert encode_envelope(structure.envelope, utf8=True).startswith(b'(NIL "Gr\xc3\xbc\xc3\x9fe" (("J\xc3\xbcrgen" NIL')
    # raw bytes that are not UTF-8 go as a literal even under UTF8=ACCEPT
    structure = parse_structure(b"Subject: \xe9t\xe9\r\n\r\n")
    assert encode_envelope(structure.envelope, utf8=True).startswith(b"(NIL {3}\r\n\xe9t\xe9 NIL")


ALTERNATIVE = message("""
    From: a@example.org
    Subject: alt
    Content-Type: multipart/alternative; boundary="b1"

    --b1
    Content-Type: text/plain; charset=utf-8

    plain
    --b1
    Content-Type: text/html; charset=utf-8
    Content-Transfer-Encoding: quoted-printable

    <p>html</p>
    <p>two</p>
    --b1--
    """)


def test_body_structure_multipart_alternative():
    structure = parse_structure(ALTERNATIVE)
    assert encode_body_structure(structure.body, extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 1)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 23 2) "ALTERNATIVE")'
    )
    assert encode_body_structure(structure.body) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 23 2 NIL NIL NIL NIL) '
        b'"ALTERNATIVE" ("BOUNDARY" "b1") NIL NIL NIL)'
    )


MIXED = message("""
    From: a@example.org
    Content-Type: multipart/mixed; boundary=outer
    Content-Language: en, de

    preamble
    --outer
    Content-Type: text/plain

    see attachment
    --outer
    Content-Type: application/pdf; name="report.pdf"
    Content-Disposition: attachment; filename="report.pdf"
    Content-Transfer-Encoding: base64
    Content-ID: <part2@example.org>
    Content-Description: The report
    Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==
    Content-Language: en
    Content-Location: http://example.org/report.pdf

    JVBERi0xLjQK
    --outer
    Content-Type: text/plain; charset=utf-8
    Content-Disposition: attachment; filename*=utf-8''%C3%A9t%C3%A9.txt

    summer
    --outer--
    epilogue
    """)


def test_body_structure_mixed_with_attachment():
    structure = parse_structure(MIXED)
    assert encode_body_structure(structure.body) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 14 1 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") "<part2@example.org>" "The report" "BASE64" 12 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("ATTACHMENT" ("FILENAME" "report.pdf")) "en" "http://example.org/report.pdf")'
        b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 6 1 NIL '
        b'''("ATTACHMENT" ("FILENAME*" "utf-8''%C3%A9t%C3%A9.txt")) NIL NIL) '''
        b'"MIXED" ("BOUNDARY" "outer") NIL ("en" "de") NIL)'
    )
    # under UTF8=ACCEPT the decoded filename goes as UTF-8
    assert b'("ATTACHMENT" ("FILENAME" "\xc3\xa9t\xc3\xa9.txt"))' in encode_body_structure(structure.body, utf8=True)


NESTED = message("""
    From: outer@example.org
    Subject: fwd
    Content-Type: multipart/mixed; boundary=o

    --o
    Content-Type: text/plain

    see below
    --o
    Content-Type: message/rfc822

    From: Inner <inner@example.org>
    Subject: inner
    Content-Type: multipart/alternative; boundary=i

    --i
    Content-Type: text/plain

    inner plain
    --i
    Content-Type: text/html

    <b>inner</b>
    --i--
    --o--
    """)


def test_body_structure_nested_message():
    structure = parse_structure(NESTED)
    inner = structure.find_part((2,))
    assert inner is not None and inner.message is not None
    size = inner.end - inner.body_start
    assert encode_body_structure(structure.body, extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 9 1)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" ' + str(size).encode() + b" "
        b'(NIL "inner" (("Inner" NIL "inner" "example.org")) (("Inner" NIL "inner" "example.org")) '
        b'(("Inner" NIL "inner" "example.org")) NIL NIL NIL NIL NIL) '
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 11 1)'
        b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 1) "ALTERNATIVE") '
        + str(inner.lines).encode() + b') "MIXED")'
    )
    assert inner.lines == 13
    extensible = encode_body_structure(structure.body)
    assert b'"ALTERNATIVE" ("BOUNDARY" "i") NIL NIL NIL) 13 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "o") NIL NIL NIL)' in extensible


# --- section contents (RFC 3501 section 6.4.5) -------------------------------------------------


def body(raw: bytes, part=(), text=None, fields=()):
    return section_bytes(raw, parse_structure(raw), Section(tuple(part), text, tuple(fields)))


def test_sections_of_a_simple_message():
    raw = message("""
        From: a@example.org
        To: b@example.org,
         c@example.org
        Subject: hi
        X-Spam: yes

        line 1
        line 2
        """)
    header, text = raw.split(b"\r\n\r\n", 1)
    assert body(raw) == raw
    assert body(raw, text="HEADER") == header + b"\r\n\r\n"
    assert body(raw, text="TEXT") == text == b"line 1\r\nline 2\r\n"
    assert body(raw, [1]) == text
    assert body(raw, [2]) is None
    assert body(raw, text="HEADER.FIELDS", fields=["TO", "SUBJECT", "CC"]) == (
        b"To: b@example.org,\r\n c@example.org\r\nSubject: hi\r\n\r\n"
    )
    assert body(raw, text="HEADER.FIELDS.NOT", fields=["TO", "X-SPAM"]) == b"From: a@example.org\r\nSubject: hi\r\n\r\n"
    assert body(raw, text="HEADER.FIELDS", fields=["NEWSGROUPS"]) == b"\r\n"
    assert body(raw, [1], "HEADER") is None  # HEADER after a part number needs message/rfc822


def test_filter_header_fields_edges():
    # obs WSP before the colon, a non-field line, no trailing blank line, LF line ends
    header = b"Subject : x\nnot a field\nTo: y\n folded\n"
    assert filter_header_fields(header, ("SUBJECT", "TO")) == b"Subject : x\nTo: y\n folded\n\r\n"
    assert filter_header_fields(header, ("TO",), exclude=True) == b"Subject : x\nnot a field\n\r\n"
    assert filter_header_fields(b"A: 1\r\nB: 2", ("B",)) == b"B: 2\r\n\r\n"
    assert filter_header_fields(b"", ("B",)) == b"\r\n"
    # "Subject-Extra" is not "Subject"
    assert filter_header_fields(b"Subject-Extra: 1\r\nSubject: 2\r\n\r\n", ("SUBJECT",)) == b"Subject: 2\r\n\r\n"


def test_sections_of_multipart_and_nested_message():
    raw = NESTED
    assert body(raw, [1]) == b"see below"
    assert body(raw, [1], "MIME") == b"Content-Type: text/plain\r\n\r\n"
    encapsulated = body(raw, [2])
    assert encapsulated.startswith(b"From: Inner") and encapsulated.endswith(b"--i--")
    assert body(raw, [2], "HEADER") == (
        b"From: Inner <inner@example.org>\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n"
    )
    assert body(raw, [2], "HEADER.FIELDS", ["SUBJECT"]) == b"Subject: inner\r\n\r\n"
    assert body(raw, [2], "TEXT").startswith(b"--i\r\nContent-Type: text/plain")
    assert body(raw, [2, 1]) == b"inner plain"
    assert body(raw, [2, 2]) == b"<b>inner</b>"
    assert body(raw, [2, 2], "MIME") == b"Content-Type: text/html\r\n\r\n"
    assert body(raw, [2, 3]) is None
    assert body(raw, [3]) is None
    assert body(ALTERNATIVE, [1, 2]) is None
    assert body(MIXED, [2]) == b"JVBERi0xLjQK"
    assert body(MIXED, [2], "TEXT") is None


def test_nested_text_of_a_non_multipart_inner_message():
    raw = message("""
        Content-Type: multipart/mixed; boundary=x

        --x
        Content-Type: text/plain

        a
        --x
        Content-Type: message/rfc822

        Subject: in

        inner body
        --x--
        """)
    assert body(raw, [2], "TEXT") == b"inner body"
    assert body(raw, [2, 1]) == b"inner body"


def test_partials():
    data = b"0123456789"
    assert apply_partial(data, None) == data
    assert apply_partial(data, (0, 3)) == b"012"
    assert apply_partial(data, (8, 5)) == b"89"
    assert apply_partial(data, (9, 1)) == b"9"
    assert apply_partial(data, (10, 1)) == b""
    assert apply_partial(data, (1000, 1)) == b""
    assert apply_partial(b"", (0, 1)) == b""


def test_fetch_body_items():
    raw = RFC3501_MESSAGE
    structure = parse_structure(raw)
    name, value = fetch_body_item(FetchAttribute("BODY", Section(text="TEXT"), peek=True, partial=(8, 4)), raw, structure)
    assert (name, value) == ("BODY[TEXT]<8>", b"{4}\r\nthis")
    name, value = fetch_body_item(FetchAttribute("BODY", Section(text="TEXT"), partial=(500, 4)), raw, structure)
    assert (name, value) == ("BODY[TEXT]<500>", b"{0}\r\n")
    name, value = fetch_body_item(FetchAttribute("BODY", Section((1, 2))), raw, structure)
    assert (name, value) == ("BODY[1.2]", b"NIL")
    name, value = fetch_body_item(FetchAttribute("BODY", Section(text="HEADER.FIELDS", header_fields=("FROM",))), raw, structure)
    assert (name, value) == ("BODY[HEADER.FIELDS (FROM)]", b"{46}\r\nFrom: Terry Gray <gray@cac.washington.edu>\r\n\r\n")
    assert fetch_body_item(FetchAttribute("RFC822"), raw, structure) == ("RFC822", b"{%d}\r\n" % len(raw) + raw)
    assert fetch_body_item(FetchAttribute("RFC822.TEXT"), raw, structure)[1].endswith(b"body.\r\n")
    assert fetch_body_item(FetchAttribute("BODY"), raw, structure)[1] == encode_body_structure(structure.body, extensible=False)
    assert fetch_body_item(FetchAttribute("BODYSTRUCTURE"), raw, structure)[1] == encode_body_structure(structure.body)
    assert fetch_body_item(FetchAttribute("ENVELOPE"), raw, structure)[1] == encode_envelope(structure.envelope)
    with pytest.raises(ValueError):
        fetch_body_item(FetchAttribute("UID"), raw, structure)
    line = r.fetch_response(1, [fetch_body_item(FetchAttribute("BODY", Section(text="TEXT")), raw, structure)])
    assert line == b"* 1 FETCH (BODY[TEXT] {27}\r\nHello,\r\nthis is the body.\r\n)\r\n"


def test_structure_from_json_gives_the_same_answers():
    structure = parse_structure(MIXED)
    again = type(structure).from_json(structure.to_json())
    assert encode_body_structure(again.body) == encode_body_structure(structure.body)
    assert encode_envelope(again.envelope) == encode_envelope(structure.envelope)


# --- fuzz: random messages, balanced output ---------------------------------------------------


def balanced(data: bytes) -> bool:
    """Parentheses balance outside quoted strings and literals, which are well formed."""
    depth, pos, n = 0, 0, len(data)
    while pos < n:
        byte = data[pos]
        if byte == 0x22:  # quoted string
            pos += 1
            while pos < n and data[pos] != 0x22:
                if data[pos] in b"\r\n":
                    return False
                pos += 2 if data[pos] == 0x5C else 1
            if pos >= n:
                return False
            pos += 1
            continue
        if byte == 0x7B:  # literal {n}\r\n
            close = data.find(b"}\r\n", pos)
            if close < 0 or not data[pos + 1 : close].isdigit():
                return False
            pos = close + 3 + int(data[pos + 1 : close])
            if pos > n:
                return False
            continue
        if byte in b"\r\n":
            return False  # a bare line break outside literals
        if byte == 0x28:
            depth += 1
        elif byte == 0x29:
            depth -= 1
            if depth < 0:
                return False
        pos += 1
    return depth == 0


_header_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_token = st.text(alphabet="abcxyz-09", min_size=1, max_size=6)
_header_name = st.sampled_from(
    ["From", "To", "Cc", "Bcc", "Sender", "Reply-To", "Subject", "Date", "Message-ID", "In-Reply-To",
     "Content-Disposition", "Content-Language", "Content-Location", "Content-ID", "Content-Description",
     "Content-MD5", "Content-Transfer-Encoding", "X-Other"]
)
_header_value = st.one_of(
    _header_text,
    st.sampled_from(['a@b.c', 'G: a@b, "q\\"x" <c@d>;', "(c) <@r:x@y>", "attachment; filename*=utf-8''%E2%82%AC",
                     "x\"y\\z", "\x00\x7f", "en, de", "<id@x>", "undisclosed:;", "a@", "<>", "((("]),
)


@st.composite
def _entity(draw, depth: int) -> bytes:
    headers = draw(st.lists(st.tuples(_header_name, _header_value), max_size=4))
    lines = [f"{name}: {value}".encode("utf-8", "surrogateescape") for name, value in headers]
    kind = draw(st.sampled_from(["text", "multipart", "message", "other"] if depth < 3 else ["text", "other"]))
    if kind == "multipart":
        boundary = draw(_token)
        subtype = draw(st.sampled_from(["mixed", "alternative", "digest", "related"]))
        lines.append(f'Content-Type: multipart/{subtype}; boundary="{boundary}"; x*=utf-8\'\'%C3%A9'.encode())
        children = draw(st.lists(_entity(depth + 1), min_size=0, max_size=3))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + child + b"\r\n" for child in children)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\r\n"
    elif kind == "message":
        lines.append(b"Content-Type: message/rfc822")
        body = draw(_entity(depth + 1))
    else:
        content_type = draw(st.sampled_from(["text/plain; charset=utf-8", "image/png; name=\"a b.png\"", "bogus", "text/html"]))
        lines.append(b"Content-Type: " + content_type.encode())
        body = draw(st.binary(max_size=30))
    separator = b"\r\n" if draw(st.booleans()) else b"\n"
    return separator.join(lines) + separator + separator + body


@given(_entity(0), st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_messages_encode_balanced(raw, utf8):
    structure = parse_structure(raw)
    items = [
        ("ENVELOPE", encode_envelope(structure.envelope, utf8=utf8)),
        ("BODYSTRUCTURE", encode_body_structure(structure.body, utf8=utf8)),
        ("BODY", encode_body_structure(structure.body, extensible=False, utf8=utf8)),
    ]
    for section in (Section(), Section(text="HEADER"), Section((1,)), Section((1, 1), "MIME"), Section((2,), "TEXT"),
                    Section((1,), "HEADER.FIELDS", ("FROM", "SUBJECT")), Section((), "HEADER.FIELDS.NOT", ("TO",))):
        items.append(fetch_body_item(FetchAttribute("BODY", section, partial=(1, 10)), raw, structure, utf8=utf8))
    for name, value in items:
        assert balanced(value), (name, value)
    line = r.fetch_response(1, items)
    assert line.endswith(b")\r\n") and balanced(line[:-2])
