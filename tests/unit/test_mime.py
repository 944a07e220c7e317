"""Tables for pymail.mail.mime: message structure, exact offsets, envelope, JSON, fuzzing.

Run as a script for parse timings: ``python tests/unit/test_mime.py``.
"""

from __future__ import annotations

import base64
import json
import mmap
import os
import textwrap
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymail.mail import mime
from pymail.mail.mime import MAX_DEPTH, MAX_PARTS, Address, BodyPart, MessageStructure, parse_structure


def message(text: str, eol: str = "\r\n") -> bytes:
    """A raw message from an indented literal; lines end with ``eol``."""
    return textwrap.dedent(text).lstrip("\n").replace("\n", eol).encode("utf-8")


def body_of(raw: bytes, part: BodyPart) -> bytes:
    return raw[part.body_start : part.end]


def header_of(raw: bytes, part: BodyPart) -> bytes:
    return raw[part.header_start : part.body_start]


def check_invariants(structure: MessageStructure, raw: bytes) -> None:
    """The module invariants, on every part of the tree."""
    count = 0

    def walk(part: BodyPart, low: int, high: int) -> None:
        nonlocal count
        count += 1
        assert low <= part.header_start <= part.body_start <= part.end <= high, part
        assert part.type == part.type.lower() and part.subtype == part.subtype.lower()
        if part.type == "multipart":
            assert part.parts and part.message is None
            previous_end = part.body_start
            for child in part.parts:
                assert child.header_start >= previous_end
                walk(child, part.body_start, part.end)
                previous_end = child.end
        elif part.type == "message" and part.subtype in ("rfc822", "global"):
            assert part.message is not None and not part.parts
            inner = part.message.body
            assert (inner.header_start, inner.end) == (part.body_start, part.end)
            walk(inner, part.body_start, part.end)
        else:
            assert part.message is None and not part.parts
        if part.type == "text" or part.message is not None:
            assert part.lines == mime._count_lines(raw, part.body_start, part.end)

    assert structure.body.header_start == 0 and structure.body.end == len(raw)
    walk(structure.body, 0, len(raw))
    assert count <= MAX_PARTS
    assert MessageStructure.from_json(structure.to_json()) == structure


# --- a corpus of messages, used by the tables and as fuzzing seeds ----------------------------

SIMPLE = message(
    """
    Return-Path: <alice@example.org>
    Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)
    From: Alice Example <alice@example.org>
    Subject: Lunch?
    To: bob@example.com
    Message-ID: <1234@example.org>

    Shall we meet at noon?
    Alice
    """
)

ALTERNATIVE = message(
    """
    From: alice@example.org
    MIME-Version: 1.0
    Content-Type: multipart/alternative; boundary="alt-1"

    This is the preamble.
    --alt-1
    Content-Type: text/plain; charset=utf-8
    Content-Transfer-Encoding: QUOTED-PRINTABLE

    Hello =E2=82=AC
    --alt-1
    Content-Type: text/html; charset="utf-8"

    <p>Hello</p>

    --alt-1--
    This is the epilogue.
    """
)

NESTED = message(
    """
    From: alice@example.org
    Content-Type: multipart/mixed;
     boundary="outer"

    --outer
    Content-Type: multipart/alternative; boundary=inner

    --inner
    Content-Type: text/plain

    plain body
    --inner
    Content-Type: text/html

    <b>html body</b>
    --inner--
    --outer
    Content-Type: application/pdf; name="report.pdf"
    Content-Transfer-Encoding: base64
    Content-Disposition: attachment; filename="report.pdf"; size=12
    Content-ID: <report@example.org>
    Content-Description: The report
    Content-Language: en, fr (French)
    Content-Location: http://example.org/report.pdf
    Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

    JVBERi0xLjQK
    --outer--
    """
)

FORWARD = message(
    """
    From: bob@example.com
    To: carol@example.net
    Subject: Fwd: Lunch?
    Content-Type: multipart/mixed; boundary=fwd

    --fwd
    Content-Type: text/plain

    See below.
    --fwd
    Content-Type: message/rfc822

    From: Alice Example <alice@example.org>
    Subject: Lunch?
    Content-Type: multipart/alternative; boundary=in

    --in
    Content-Type: text/plain

    noon?
    --in
    Content-Type: text/html

    <i>noon?</i>
    --in--

    --fwd--
    """
)

DIGEST = message(
    """
    From: list@example.org
    Content-Type: multipart/digest; boundary=d

    --d

    From: one@example.org
    Subject: first

    body one
    --d
    Content-Type: text/plain

    not a message
    --d--
    """
)

CORPUS = [SIMPLE, ALTERNATIVE, NESTED, FORWARD, DIGEST, SIMPLE.replace(b"\r\n", b"\n"), NESTED.replace(b"\r\n", b"\n")]


# --- simple messages, headers, no body, no header ---------------------------------------------


def test_simple_text_message() -> None:
    structure = parse_structure(SIMPLE)
    body = structure.body
    assert (body.type, body.subtype, body.params, body.encoding) == ("text", "plain", {"charset": "us-ascii"}, "7bit")
    assert body_of(SIMPLE, body) == b"Shall we meet at noon?\r\nAlice\r\n"
    assert header_of(SIMPLE, body).endswith(b"Message-ID: <1234@example.org>\r\n\r\n")
    assert body.lines == 2
    envelope = structure.envelope
    assert envelope.date == "Mon, 7 Feb 1994 21:52:25 -0800 (PST)"
    assert envelope.subject == "Lunch?"
    assert envelope.from_ == [Address("Alice Example", None, "alice", "example.org")]
    assert envelope.sender == envelope.from_ and envelope.reply_to == envelope.from_
    assert envelope.to == [Address(None, None, "bob", "example.com")]
    assert envelope.cc == [] and envelope.bcc == []
    assert envelope.message_id == "<1234@example.org>"
    assert envelope.in_reply_to is None
    check_invariants(structure, SIMPLE)


EDGE_CASES = [
    # (name, raw, expected header bytes, expected body bytes)
    ("empty", b"", b"", b""),
    ("header only, blank line", b"Subject: x\r\n\r\n", b"Subject: x\r\n\r\n", b""),
    ("header only, no blank line", b"Subject: x\r\n", b"Subject: x\r\n", b""),
    ("header only, truncated line", b"Subject: x", b"Subject: x", b""),
    ("truncated continuation", b"Subject: x\r\n  y", b"Subject: x\r\n  y", b""),
    ("no header, blank first line", b"\r\nbody\r\n", b"\r\n", b"body\r\n"),
    ("no header, bare LF", b"\nbody", b"\n", b"body"),
    ("no header at all", b"just some text\r\nmore\r\n", b"", b"just some text\r\nmore\r\n"),
    ("indented first line", b"  indented\r\nSubject: x\r\n\r\nb", b"", b"  indented\r\nSubject: x\r\n\r\nb"),
    ("garbage ends header", b"Subject: x\r\nnot a header\r\nbody", b"Subject: x\r\n", b"not a header\r\nbody"),
    ("8-bit name ends header", b"Subject: x\r\nSubj\xe9ct: y\r\n\r\nb", b"Subject: x\r\n", b"Subj\xe9ct: y\r\n\r\nb"),
    ("bare LF", b"Subject: x\nTo: a@b\n\nline1\nline2\n", b"Subject: x\nTo: a@b\n\n", b"line1\nline2\n"),
    ("mixed line ends", b"Subject: x\r\nTo: a@b\n\r\nbody", b"Subject: x\r\nTo: a@b\n\r\n", b"body"),
    ("blank line with CR only", b"Subject: x\r\n\r", b"Subject: x\r\n\r", b""),
]


@pytest.mark.parametrize(("name", "raw", "header", "body"), EDGE_CASES, ids=[case[0] for case in EDGE_CASES])
def test_header_body_split(name: str, raw: bytes, header: bytes, body: bytes) -> None:
    structure = parse_structure(raw)
    assert header_of(raw, structure.body) == header
    assert body_of(raw, structure.body) == body
    check_invariants(structure, raw)


HEADER_VALUES = [
    # (raw header block, envelope attribute, expected value)
    (b"Subject: Hello\r\n world\r\n\tagain\r\n\r\n", "subject", "Hello world\tagain"),
    (b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n", "subject", "=?utf-8?q?Gr=C3=BC=C3=9Fe?="),
    (b"Subject:   padded  \r\n\r\n", "subject", "padded"),
    (b"Subject:\r\n\r\n", "subject", ""),
    (b"SUBJECT: upper\r\n\r\n", "subject", "upper"),
    (b"Subject : obsolete space\r\n\r\n", "subject", "obsolete space"),
    (b"Subject: first\r\nSubject: second\r\n\r\n", "subject", "first"),
    (b"Subject: caf\xc3\xa9\r\n\r\n", "subject", "caf\u00e9"),
    (b"Subject: caf\xe9\r\n\r\n", "subject", "caf\udce9"),
    (b"To: a@b\r\n\r\n", "subject", None),
    (b"Date:\r\n\r\n", "date", ""),
    (b"In-Reply-To: <a@b>\r\n <c@d>\r\n\r\n", "in_reply_to", "<a@b> <c@d>"),
    (b"Message-Id: <x@y>\r\n\r\n", "message_id", "<x@y>"),
]


@pytest.mark.parametrize(("raw", "attribute", "expected"), HEADER_VALUES)
def test_envelope_text_fields(raw: bytes, attribute: str, expected: str | None) -> None:
    structure = parse_structure(raw + b"body")
    assert getattr(structure.envelope, attribute) == expected
    check_invariants(structure, raw + b"body")


def test_raw_bytes_survive_in_header_values() -> None:
    raw = b"Subject: \xff\xfe junk \x80\r\n\r\n"
    subject = parse_structure(raw).envelope.subject
    assert subject is not None and subject.encode("utf-8", "surrogateescape") == b"\xff\xfe junk \x80"


# --- address lists (RFC 5322 section 3.4 as RFC 3501 ENVELOPE wants them) ---------------------

N = None
ADDRESS_LISTS = [
    ("alice@example.org", [(N, N, "alice", "example.org")]),
    ("Alice <alice@example.org>", [("Alice", N, "alice", "example.org")]),
    ('"Doe, John" <john@example.org>', [("Doe, John", N, "john", "example.org")]),
    ('"A \\"quoted\\" name" <a@b>', [('A "quoted" name', N, "a", "b")]),
    ("John Q. Public <jqp@example.org>", [("John Q. Public", N, "jqp", "example.org")]),
    ("=?utf-8?q?J=C3=B6rg?= <j@example.org>", [("=?utf-8?q?J=C3=B6rg?=", N, "j", "example.org")]),
    ("jane@example.org (Jane Doe)", [("Jane Doe", N, "jane", "example.org")]),
    ("Jane (comment) <jane@example.org>", [("Jane", N, "jane", "example.org")]),
    ("a@b, c@d", [(N, N, "a", "b"), (N, N, "c", "d")]),
    ("a@b,, ,c@d,", [(N, N, "a", "b"), (N, N, "c", "d")]),
    ('"john doe"@example.org', [(N, N, "john doe", "example.org")]),
    ("<@r1.example,@r2.example:x@y.example>", [(N, "@r1.example,@r2.example", "x", "y.example")]),
    ("x@[127.0.0.1]", [(N, N, "x", "[127.0.0.1]")]),
    ("joe", [(N, N, "joe", "")]),
    ("<>", [(N, N, "", "")]),
    ("undisclosed-recipients:;", [(N, N, "undisclosed-recipients", N), (N, N, N, N)]),
    (
        "Friends: a@b, C <c@d>; e@f",
        [(N, N, "Friends", N), (N, N, "a", "b"), ("C", N, "c", "d"), (N, N, N, N), (N, N, "e", "f")],
    ),
    ("Unclosed: a@b", [(N, N, "Unclosed", N), (N, N, "a", "b"), (N, N, N, N)]),
    ("Alice <alice@example.org", [("Alice", N, "alice", "example.org")]),
    ("jörg@bücher.example", [(N, N, "jörg", "bücher.example")]),
]


@pytest.mark.parametrize(("value", "expected"), ADDRESS_LISTS)
def test_address_lists(value: str, expected: list[tuple[str | None, ...]]) -> None:
    raw = f"To: {value}\r\n\r\n".encode()
    assert parse_structure(raw).envelope.to == [Address(*fields) for fields in expected]


def test_sender_and_reply_to_default_to_from() -> None:
    raw = b"From: a@b\r\nSender:\r\nReply-To: r@s\r\n\r\n"
    envelope = parse_structure(raw).envelope
    assert envelope.sender == [Address(None, None, "a", "b")]
    assert envelope.reply_to == [Address(None, None, "r", "s")]


# --- multipart, with exact offsets ----------------------------------------------------------


def test_multipart_alternative() -> None:
    structure = parse_structure(ALTERNATIVE)
    body = structure.body
    assert (body.type, body.subtype, body.params) == ("multipart", "alternative", {"boundary": "alt-1"})
    plain, html = body.parts
    assert (plain.type, plain.subtype, plain.params, plain.encoding) == ("text", "plain", {"charset": "utf-8"}, "quoted-printable")
    assert body_of(ALTERNATIVE, plain) == b"Hello =E2=82=AC"
    assert header_of(ALTERNATIVE, plain) == b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: QUOTED-PRINTABLE\r\n\r\n"
    assert plain.lines == 1
    assert body_of(ALTERNATIVE, html) == b"<p>Hello</p>\r\n"  # only the CRLF before the delimiter goes
    assert html.params == {"charset": "utf-8"}
    assert body_of(ALTERNATIVE, body).endswith(b"--alt-1--\r\nThis is the epilogue.\r\n")
    check_invariants(structure, ALTERNATIVE)


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_nested_multipart_with_attachment(eol: str) -> None:
    raw = NESTED.replace(b"\r\n", eol.encode())
    structure = parse_structure(raw)
    body = structure.body
    assert (body.type, body.subtype, body.params) == ("multipart", "mixed", {"boundary": "outer"})
    alternative, attachment = body.parts
    assert (alternative.type, alternative.subtype) == ("multipart", "alternative")
    assert [body_of(raw, part) for part in alternative.parts] == [b"plain body", b"<b>html body</b>"]
    assert body_of(raw, alternative) == message(
        """
        --inner
        Content-Type: text/plain

        plain body
        --inner
        Content-Type: text/html

        <b>html body</b>
        --inner--""",
        eol,
    )
    assert body_of(raw, attachment) == b"JVBERi0xLjQK"
    assert (attachment.type, attachment.subtype, attachment.params) == ("application", "pdf", {"name": "report.pdf"})
    assert attachment.encoding == "base64"
    assert attachment.disposition == ("attachment", {"filename": "report.pdf", "size": "12"})
    assert attachment.id == "<report@example.org>"
    assert attachment.description == "The report"
    assert attachment.language == ["en", "fr"]
    assert attachment.location == "http://example.org/report.pdf"
    assert attachment.md5 == "Q2hlY2sgSW50ZWdyaXR5IQ=="
    assert attachment.lines == 0  # only text/* and message/rfc822 have lines
    check_invariants(structure, raw)


def test_message_rfc822_inside_multipart() -> None:
    structure = parse_structure(FORWARD)
    text, forwarded = structure.body.parts
    assert body_of(FORWARD, text) == b"See below."
    assert (forwarded.type, forwarded.subtype) == ("message", "rfc822")
    inner = forwarded.message
    assert inner is not None
    assert inner.envelope.subject == "Lunch?"
    assert inner.envelope.from_ == [Address("Alice Example", None, "alice", "example.org")]
    assert inner.body.header_start == forwarded.body_start and inner.body.end == forwarded.end
    assert header_of(FORWARD, inner.body).startswith(b"From: Alice Example")
    assert body_of(FORWARD, forwarded).endswith(b"--in--\r\n")  # the blank line before --fwd-- is the delimiter's
    assert [body_of(FORWARD, part) for part in inner.body.parts] == [b"noon?", b"<i>noon?</i>"]
    assert forwarded.lines == body_of(FORWARD, forwarded).count(b"\n")
    check_invariants(structure, FORWARD)


def test_multipart_digest_default_type() -> None:
    structure = parse_structure(DIGEST)
    first, second = structure.body.parts
    assert (first.type, first.subtype, first.params) == ("message", "rfc822", {})
    assert first.message is not None and first.message.envelope.subject == "first"
    assert body_of(DIGEST, first.message.body) == b"body one"
    assert (second.type, second.subtype) == ("text", "plain")
    check_invariants(structure, DIGEST)


MULTIPART_EDGES = [
    # (name, body after the header, expected part bodies)
    ("missing close-delimiter", "--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n", [b"one", b"two\r\n"]),
    ("boundary-like lines", "--b\r\n\r\n--bb\r\n --b\r\nx--b\r\n--b junk\r\n--b-\r\n\r\n--b--\r\n",
     [b"--bb\r\n --b\r\nx--b\r\n--b junk\r\n--b-\r\n"]),
    ("transport padding", "--b  \t\r\n\r\none\r\n--b \r\n\r\ntwo\r\n--b-- \t\r\n", [b"one", b"two"]),
    ("empty parts", "--b\r\n--b\r\n\r\n--b--", [b"", b""]),
    ("no preamble CRLF", "--b\r\n\r\nx\r\n--b--", [b"x"]),
    ("close without line end", "--b\r\n\r\nx\r\n--b--", [b"x"]),
    ("parts after close are epilogue", "--b\r\n\r\nx\r\n--b--\r\n--b\r\n\r\ny\r\n", [b"x"]),
    ("delimiter at end of body", "--b\r\n\r\nx\r\n--b", [b"x", b""]),
    ("no headers in part, no blank line", "--b\r\nhello\r\n--b--", [b"hello"]),
]


@pytest.mark.parametrize(("name", "body", "expected"), MULTIPART_EDGES, ids=[case[0] for case in MULTIPART_EDGES])
def test_multipart_edges(name: str, body: str, expected: list[bytes]) -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body.encode()
    structure = parse_structure(raw)
    assert [body_of(raw, part) for part in structure.body.parts] == expected
    check_invariants(structure, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\nx\r\n",
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz--\r\n",
    ],
)
def test_multipart_without_usable_boundary_is_text(raw: bytes) -> None:
    structure = parse_structure(raw)
    assert (structure.body.type, structure.body.subtype, structure.body.parts) == ("text", "plain", [])
    check_invariants(structure, raw)


# --- Content-Type and friends ---------------------------------------------------------------

CONTENT_TYPES = [
    # (Content-Type value, type, subtype, params)
    ("text/plain", "text", "plain", {}),
    ("TEXT/HTML; CHARSET=UTF-8", "text", "html", {"charset": "UTF-8"}),
    ("text/plain; charset=us-ascii (Plain text)", "text", "plain", {"charset": "us-ascii"}),
    ("text/plain (comment) ; format=flowed", "text", "plain", {"format": "flowed"}),
    ('application/x; name="a;b \\"c\\".txt"', "application", "x", {"name": 'a;b "c".txt'}),
    ("application/x; name=my file.txt", "application", "x", {"name": "my file.txt"}),
    ("application/x; name=\"unterminated", "application", "x", {"name": "unterminated"}),
    ("application/x;; ;name=a; junk; =b", "application", "x", {"name": "a"}),
    ("application/x; name=a; NAME=b", "application", "x", {"name": "a"}),
    # RFC 2231 section 3, 4 and 4.1.
    ("application/x; filename*0*=utf-8''%E2%82%AC%20rates; filename*1=\".txt\"", "application", "x", {"filename": "€ rates.txt"}),
    ("application/x; title*=us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A", "application", "x", {"title": "This is ***fun***"}),
    ("application/x; url*0=\"ftp://\"; url*1=\"cs.utk.edu/pub\"", "application", "x", {"url": "ftp://cs.utk.edu/pub"}),
    ("application/x; n*1=b; n*0=a; n*2=c", "application", "x", {"n": "abc"}),
    ("application/x; name=plain.txt; name*=utf-8''%C3%A9t%C3%A9.txt", "application", "x", {"name": "été.txt"}),
    ("application/x; name*=iso-8859-1''caf%E9", "application", "x", {"name": "café"}),
    ("application/x; name*=no-such-charset''caf%C3%A9", "application", "x", {"name": "café"}),
    ("application/x; name*=rot13''abc", "application", "x", {"name": "abc"}),
    ("application/x; name*=''%FF", "application", "x", {"name": "\udcff"}),
    ("application/x; name*0*=utf-8''%E2%82; name*1*=%AC", "application", "x", {"name": "€"}),
    # Unusable values fall back to text/plain; charset=us-ascii (RFC 2045 section 5.2).
    ("text", "text", "plain", {"charset": "us-ascii"}),
    ("", "text", "plain", {"charset": "us-ascii"}),
    ("text/", "text", "plain", {"charset": "us-ascii"}),
    ("te xt/plain", "text", "plain", {"charset": "us-ascii"}),
    ("tëxt/plain", "text", "plain", {"charset": "us-ascii"}),
]


@pytest.mark.parametrize(("value", "media_type", "subtype", "params"), CONTENT_TYPES)
def test_content_type(value: str, media_type: str, subtype: str, params: dict[str, str]) -> None:
    raw = f"Content-Type: {value}\r\n\r\nbody".encode()
    body = parse_structure(raw).body
    assert (body.type, body.subtype, body.params) == (media_type, subtype, params)


@pytest.mark.parametrize(
    ("headers", "attribute", "expected"),
    [
        ("Content-Transfer-Encoding: BASE64", "encoding", "base64"),
        ("Content-Transfer-Encoding: 8bit (comment)", "encoding", "8bit"),
        ("Content-Transfer-Encoding:", "encoding", "7bit"),
        ("Content-Disposition: INLINE", "disposition", ("inline", {})),
        ("Content-Disposition: attachment; filename*=utf-8''%C3%A9.pdf", "disposition", ("attachment", {"filename": "é.pdf"})),
        ("Content-Disposition:", "disposition", None),
        ("Content-Language: en-US", "language", ["en-US"]),
        ("Content-Language: ,", "language", None),
        ("Content-ID: <x@y>", "id", "<x@y>"),
        ("Content-ID:", "id", None),
        ("X-Other: 1", "id", None),
    ],
)
def test_content_fields(headers: str, attribute: str, expected: object) -> None:
    raw = f"{headers}\r\n\r\nbody".encode()
    assert getattr(parse_structure(raw).body, attribute) == expected


# --- limits ---------------------------------------------------------------------------------


def nested_multiparts(levels: int) -> bytes:
    raw = b"innermost"
    for level in range(levels):
        boundary = b"b%d" % level
        raw = b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" + boundary + b"\r\n" + raw + b"\r\n--" + boundary + b"--"
    return raw


def nested_messages(levels: int) -> bytes:
    raw = b"Subject: innermost\r\n\r\ninnermost"
    for _ in range(levels):
        raw = b"Content-Type: message/rfc822\r\n\r\n" + raw
    return raw


@pytest.mark.parametrize("build", [nested_multiparts, nested_messages])
def test_nesting_limit(build) -> None:
    raw = build(MAX_DEPTH * 3)
    structure = parse_structure(raw)
    check_invariants(structure, raw)
    depth, part = 0, structure.body
    while part.parts or part.message:
        part = part.parts[0] if part.parts else part.message.body  # type: ignore[union-attr]
        depth += 1
    assert depth == MAX_DEPTH
    assert (part.type, part.subtype) == ("application", "octet-stream")
    assert mime._parse_message(raw, 0, len(raw), 0, mime._Budget(MAX_PARTS - 1)) == structure


def test_nesting_below_the_limit_is_kept() -> None:
    raw = nested_multiparts(10)
    structure = parse_structure(raw)
    part = structure.body
    for _ in range(10):
        assert part.type == "multipart"
        part = part.parts[0]
    assert (part.type, body_of(raw, part)) == ("text", b"innermost")


def test_part_count_limit() -> None:
    count = MAX_PARTS + 500
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * count + b"--b--\r\n"
    structure = parse_structure(raw)
    check_invariants(structure, raw)
    parts = structure.body.parts
    assert len(parts) == MAX_PARTS - 1  # plus the multipart itself
    assert body_of(raw, parts[0]) == b"x"
    assert parts[-1].end == len(raw)  # the rest is one opaque body


def test_many_repeated_header_fields() -> None:
    # Past the first 1,000 wanted fields, the missing ones are still found (first wins).
    raw = b"To: a@b\r\nCC: c@d\r\n" * 3000 + b"content-TYPE: text/html\r\nSubject: one\r\nsubject: two\r\n\r\nbody"
    structure = parse_structure(raw)
    assert (structure.body.type, structure.body.subtype) == ("text", "html")
    assert structure.envelope.subject == "one"
    assert structure.envelope.to == [Address(None, None, "a", "b")]
    assert body_of(raw, structure.body) == b"body"


def test_address_count_limit() -> None:
    raw = b"To: " + b"a@b, " * (mime.MAX_ADDRESSES * 3) + b"\r\nCc: G: " + b"c@d, " * (mime.MAX_ADDRESSES * 3) + b";\r\n\r\n"
    envelope = parse_structure(raw).envelope
    assert mime.MAX_ADDRESSES <= len(envelope.to) <= mime.MAX_ADDRESSES + 1
    assert envelope.cc[0] == Address(None, None, "G", None) and envelope.cc[-1] == Address(None, None, None, None)


def test_field_value_limit() -> None:
    raw = b"Subject: " + b"x" * (mime.MAX_FIELD_VALUE * 2) + b"\r\n\r\nbody"
    structure = parse_structure(raw)
    assert structure.envelope.subject == "x" * (mime.MAX_FIELD_VALUE - 1)  # the value starts with a space
    assert body_of(raw, structure.body) == b"body"


def test_false_delimiter_limit() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
        + b"--bX\r\n" * (mime.MAX_FALSE_DELIMITERS + 10)
        + b"--b\r\n\r\nsecond\r\n--b--\r\n"
    )
    structure = parse_structure(raw)
    check_invariants(structure, raw)
    (only,) = structure.body.parts  # the rest is one opaque body
    assert only.end == len(raw)
    few = raw.replace(b"--bX\r\n" * (mime.MAX_FALSE_DELIMITERS + 10), b"--bX\r\n" * 10)
    assert [body_of(few, part) for part in parse_structure(few).body.parts] == [b"--bX\r\n" * 9 + b"--bX", b"second"]


def test_part_count_limit_with_nested_containers() -> None:
    inner = b"Content-Type: multipart/mixed; boundary=i\r\n\r\n" + b"--i\r\n\r\ny\r\n" * 50 + b"--i--"
    raw = b"Content-Type: multipart/mixed; boundary=o\r\n\r\n" + (b"--o\r\n" + inner + b"\r\n") * 400 + b"--o--"
    structure = parse_structure(raw)
    check_invariants(structure, raw)


# --- sections, JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "section", "expected_body"),
    [
        (SIMPLE, (1,), b"Shall we meet at noon?\r\nAlice\r\n"),
        (SIMPLE, (2,), None),
        (SIMPLE, (1, 1), None),
        (NESTED, (1, 1), b"plain body"),
        (NESTED, (1, 2), b"<b>html body</b>"),
        (NESTED, (2,), b"JVBERi0xLjQK"),
        (NESTED, (3,), None),
        (NESTED, (0,), None),
        (FORWARD, (2, 1), b"noon?"),
        (FORWARD, (2, 2), b"<i>noon?</i>"),
        (FORWARD, (2, 3), None),
        (DIGEST, (1, 1), b"body one"),
        (DIGEST, (1, 2), None),
        (SIMPLE, (), None),
    ],
)
def test_find_part(raw: bytes, section: tuple[int, ...], expected_body: bytes | None) -> None:
    part = parse_structure(raw).find_part(section)
    assert (None if part is None else body_of(raw, part)) == expected_body


@pytest.mark.parametrize("raw", CORPUS)
def test_json_round_trip(raw: bytes) -> None:
    structure = parse_structure(raw)
    text = structure.to_json()
    assert MessageStructure.from_json(text) == structure
    assert text == MessageStructure.from_json(text).to_json()
    assert text == json.dumps(json.loads(text), separators=(",", ":"))  # compact


def test_json_round_trip_of_raw_bytes() -> None:
    raw = b"Subject: \xff\x00\r\nContent-Type: text/plain; name=\"\xe9\"\r\n\r\n"
    structure = parse_structure(raw)
    assert MessageStructure.from_json(structure.to_json()) == structure


@pytest.mark.parametrize("text", ["{}", '{"v": 99}', "[]", '{"v":1,"envelope":{},"body":{}}', "not json"])
def test_from_json_refuses_other_documents(text: str) -> None:
    with pytest.raises(ValueError):
        MessageStructure.from_json(text)


def test_accepts_bytes_like() -> None:
    assert parse_structure(bytearray(SIMPLE)) == parse_structure(SIMPLE)
    assert parse_structure(memoryview(SIMPLE)) == parse_structure(SIMPLE)


def _parse_mapped(raw: bytes, tmp_path) -> MessageStructure:
    """parse_structure over an mmap of a file holding `raw` (how a spooled message is parsed)."""
    path = tmp_path / "message.eml"
    path.write_bytes(raw)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return parse_structure(mapped)


@pytest.mark.parametrize("raw", CORPUS)
def test_an_mmap_gives_the_same_structure(raw: bytes, tmp_path) -> None:
    assert _parse_mapped(raw, tmp_path) == parse_structure(raw)


def test_an_mmap_is_parsed_without_copying_it(tmp_path) -> None:
    """A spooled message is parsed over an mmap: the process holds a few slices of it,
    not the message (before, parse_structure copied anything that was not bytes)."""
    raw = NESTED.replace(b"plain body", b"plain body line\r\n" * 500_000)  # ~8.5 MB
    path = tmp_path / "big.eml"
    path.write_bytes(raw)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        tracemalloc.start()
        try:
            structure = parse_structure(mapped)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert structure == parse_structure(raw)
    assert peak < 2.5 * 2**20, f"{peak / 2**20:.1f} MiB"


def test_an_mmap_with_long_header_values_and_many_lines(tmp_path) -> None:
    # a value past MAX_FIELD_VALUE is cut the same way; line counts over several count chunks
    raw = (b"Subject: " + b"y" * (mime.MAX_FIELD_VALUE + 100) + b"\r\n\r\n"
           + b"line\r\n" * (3 * mime._COUNT_CHUNK // 6 + 5) + b"no end")
    assert _parse_mapped(raw, tmp_path) == parse_structure(raw)


# --- fuzz: never raises, offsets always sane ------------------------------------------------

_MUTATION = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "truncate", "duplicate"]),
    st.integers(min_value=0, max_value=4000),
    st.integers(min_value=0, max_value=200),
    st.sampled_from([b"", b"\r\n", b"\n", b"--", b"--b", b"--outer\r\n", b"--fwd--", b":", b";", b'"', b"(", b"<",
                     b"\r\n\r\n", b"\xff\xfe", b"\x00", b" ", b"Content-Type: multipart/mixed; boundary=outer\r\n",
                     b"Content-Type: message/rfc822\r\n\r\n", b"boundary*0*=''%2", b"From: a:;<@b:"]),
)


def _mutate(raw: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    for kind, position, length, data in mutations:
        position = position % (len(raw) + 1)
        if kind == "insert":
            raw = raw[:position] + data + raw[position:]
        elif kind == "delete":
            raw = raw[:position] + raw[position + length :]
        elif kind == "replace":
            raw = raw[:position] + data + raw[position + len(data) :]
        elif kind == "truncate":
            raw = raw[:position]
        else:
            raw = raw[:position] + raw[position : position + length] * 2 + raw[position + length :]
    return raw


def _never_raises(raw: bytes) -> None:
    # The private parser: parse_structure would hide a bug behind its safety net.
    structure = mime._parse_message(raw, 0, len(raw), 0, mime._Budget(MAX_PARTS - 1))
    check_invariants(structure, raw)
    assert parse_structure(raw) == structure


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(raw: bytes) -> None:
    _never_raises(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS), st.lists(_MUTATION, max_size=8))
def test_fuzz_mutated_messages(raw: bytes, mutations: list[tuple[str, int, int, bytes]]) -> None:
    _never_raises(_mutate(raw, mutations))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.sampled_from(CORPUS), st.lists(_MUTATION, max_size=8))
def test_fuzz_an_mmap_parses_like_bytes(tmp_path, raw: bytes, mutations: list[tuple[str, int, int, bytes]]) -> None:
    raw = _mutate(raw, mutations)
    if raw:  # an empty file cannot be mapped (a spooled message never is empty)
        assert _parse_mapped(raw, tmp_path) == parse_structure(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab@<>,;:."\\()[] \t=?')), max_size=80))
def test_fuzz_address_lists(value: str) -> None:
    for address in parse_structure(f"From: {value}\r\n\r\n".encode()).envelope.from_:
        # Only group markers have host=None (RFC 3501 section 7.4.2).
        if address.host is None:
            assert address.name is None and address.adl is None


# --- timing helper: python tests/unit/test_mime.py --------------------------------------------


def _timing_messages() -> dict[str, bytes]:
    plain_4k = SIMPLE.replace(b"Shall we meet at noon?\r\n", b"A line of text of about sixty characters, as in a mail.\r\n" * 70)
    attachment = base64.encodebytes(os.urandom(75_000)).replace(b"\n", b"\r\n")
    big_attachment = base64.encodebytes(os.urandom(7_500_000)).replace(b"\n", b"\r\n")

    def with_attachment(data: bytes) -> bytes:
        return (
            b"From: Alice <alice@example.org>\r\nTo: bob@example.com, Carol <carol@example.net>\r\n"
            b"Subject: report\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <x@y>\r\n"
            b"Content-Type: multipart/mixed; boundary=\"----=_Part_0_1\"\r\n\r\n"
            b"------=_Part_0_1\r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n"
            b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + b"Hello Bob, see attached.\r\n" * 40 +
            b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + b"<p>Hello Bob, see attached.</p>\r\n" * 40 +
            b"--alt--\r\n"
            b"------=_Part_0_1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n"
            + data + b"------=_Part_0_1--\r\n"
        )

    return {"4 KB plain": plain_4k, "100 KB multipart": with_attachment(attachment), "10 MB attachment": with_attachment(big_attachment)}


def main() -> None:
    for name, raw in _timing_messages().items():
        rounds = max(3, min(2000, 20_000_000 // len(raw)))
        start = time.perf_counter()
        for _ in range(rounds):
            structure = parse_structure(raw)
        parse = (time.perf_counter() - start) / rounds
        start = time.perf_counter()
        for _ in range(rounds):
            text = structure.to_json()
        dump = (time.perf_counter() - start) / rounds
        print(f"{name:18} {len(raw):>10} bytes  parse {parse * 1e6:9.1f} µs  to_json {dump * 1e6:7.1f} µs  json {len(text)} bytes")


if __name__ == "__main__":
    main()
