"""Sans-IO tests of the streamed FETCH sections (pymail.proto.imap.sections).

A section planned and streamed in chunks of any size must give exactly the octets the
whole-message functions give (`bodystructure.fetch_body_item`/`fetch_binary_item`,
`filter_header_fields`, `mail.mime.decode_transfer_encoding`): checked with hypothesis
on random messages, headers and bodies, with random chunkings; and the transforms hold
a bounded state on input built to make them hold more."""

from __future__ import annotations

import base64
import binascii
import quopri

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymail.mail.mime import UnknownTransferEncoding, decode_transfer_encoding, parse_structure
from pymail.proto.imap.bodystructure import (
    fetch_binary_item, fetch_body_item, filter_header_fields,
)
from pymail.proto.imap.sections import (
    LINE_HOLD, HeaderFieldsFilter, SectionPlan, SectionStream, TransferDecoder, Window,
    literal_head, plan_section, section_octets,
)
from pymail.proto.imap.types import FetchAttribute, Section
from tests.unit.test_imap_responses import _entity


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def run(transform, pieces: list[bytes]) -> bytes:
    return b"".join(transform.feed(p) for p in pieces) + transform.finish()


def expected_value(attribute: FetchAttribute, raw: bytes) -> tuple[str, bytes]:
    """(item, value as encoded) by the whole-message functions."""
    structure = parse_structure(raw)
    if attribute.name in ("BINARY", "BINARY.SIZE"):
        return fetch_binary_item(attribute, raw, structure)
    return fetch_body_item(attribute, raw, structure)


def streamed_value(attribute: FetchAttribute, raw: bytes, cuts: list[int]) -> tuple[str, bytes]:
    """(item, value as encoded) by a plan streamed in chunks, as the session sends it."""
    plan = plan_section(attribute, parse_structure(raw))
    if plan is None:
        item = attribute.name if attribute.name.startswith("RFC822") else None
        return item or _item_name(attribute), b"NIL"
    stream = SectionStream(plan)
    data = b"".join(stream.feed(p) for p in chunked(raw[plan.start:plan.end], cuts)) + stream.finish()
    assert data == section_octets(plan, raw)
    if plan.size_only:
        return plan.item, str(len(data)).encode()
    return plan.item, literal_head(len(data), literal8=plan.binary and b"\x00" in data) + data


def _item_name(attribute: FetchAttribute) -> str:
    from pymail.proto.imap.responses import fetch_item_name, section_spec_text

    if attribute.name == "BINARY.SIZE":
        return f"BINARY.SIZE[{section_spec_text(attribute.section)}]"
    return fetch_item_name(attribute)


SECTIONS = [
    Section(), Section(text="HEADER"), Section(text="TEXT"), Section((1,)), Section((2,)),
    Section((1, 1)), Section((1,), "MIME"), Section((2,), "TEXT"), Section((1,), "HEADER"),
    Section((), "HEADER.FIELDS", ("FROM", "SUBJECT")), Section((), "HEADER.FIELDS.NOT", ("TO",)),
    Section((1,), "HEADER.FIELDS", ("CONTENT-TYPE",)), Section((3,)),
]
PARTIALS = [None, (0, 5), (3, 1000), (10**6, 5), (1, 0)]


@given(_entity(0), st.sampled_from(SECTIONS), st.sampled_from(PARTIALS),
       st.sampled_from(["BODY", "BINARY", "BINARY.SIZE", "RFC822", "RFC822.HEADER", "RFC822.TEXT"]),
       st.lists(st.integers(0, 400), max_size=6))
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_streamed_sections_equal_the_whole_message_answers(raw, section, partial, name, cuts):
    if name.startswith("RFC822"):
        attribute = FetchAttribute(name)
    elif name == "BINARY.SIZE":
        if section.text is not None:
            return
        attribute = FetchAttribute(name, section)
    elif name == "BINARY":
        if section.text is not None:
            return
        attribute = FetchAttribute(name, section, partial=partial)
    else:
        attribute = FetchAttribute(name, section, partial=partial)
    try:
        expected = expected_value(attribute, raw)
    except UnknownTransferEncoding:
        with pytest.raises(UnknownTransferEncoding):
            streamed_value(attribute, raw, cuts)
        return
    assert streamed_value(attribute, raw, cuts) == expected


_header_line = st.one_of(
    st.sampled_from([b"Subject: x\r\n", b"To: a@b\r\n", b" folded\r\n", b"\tfolded\n", b"\r\n", b"\n",
                     b"From : y\n", b"not a field\r\n", b"X-Long-Name-Field: z\r\n", b":\r\n",
                     b"subject:\r\n", b"TO\t: q\r\n", b"\r", b"To: no line end"]),
    st.binary(max_size=12),
)


@given(st.lists(_header_line, max_size=10), st.lists(st.sampled_from(["SUBJECT", "TO", "FROM", "X"]), max_size=3),
       st.booleans(), st.lists(st.integers(0, 200), max_size=8))
@settings(max_examples=1500, deadline=None)
def test_the_header_filter_equals_filter_header_fields(lines, names, exclude, cuts):
    header = b"".join(lines)
    expected = filter_header_fields(header, tuple(names), exclude=exclude)
    got = run(HeaderFieldsFilter(tuple(names), exclude=exclude), chunked(header, cuts))
    assert got == expected


@pytest.mark.parametrize("header", [
    b"To: a@b\r\n\r\nnot a field\r\n\r\x00To: a@b\r\n\r\n",
    b"Subject: x\r\n folded\r\n\tmore\nTO\t: q\r\n:\r\n\r",
    b"subject:\r\nFrom : y\n\n",
    b"X: 1\r\n \r\n\r\n",
    b"To: no line end",
])
@pytest.mark.parametrize(("names", "exclude"), [(("SUBJECT", "TO"), False), (("TO",), True), ((), True)])
def test_the_header_filter_at_every_cut_point(header: bytes, names: tuple[str, ...], exclude: bool) -> None:
    expected = filter_header_fields(header, names, exclude=exclude)
    for first in range(len(header) + 1):
        for second in range(first, len(header) + 1):
            pieces = [header[:first], header[first:second], header[second:]]
            assert run(HeaderFieldsFilter(names, exclude=exclude), pieces) == expected, (first, second)


_base64_body = st.one_of(
    st.binary(max_size=60).map(lambda b: base64.encodebytes(b)),
    st.text(alphabet="AB+/=\r\n x!", max_size=40).map(str.encode),
)
_qp_body = st.one_of(
    st.binary(max_size=60).map(lambda b: quopri.encodestring(b)),
    st.text(alphabet="=\r\nA3fgz \t", max_size=40).map(str.encode),
)


@given(st.one_of(_base64_body.map(lambda b: ("base64", b)), _qp_body.map(lambda b: ("quoted-printable", b))),
       st.lists(st.integers(0, 100), max_size=8))
@settings(max_examples=2000, deadline=None)
def test_the_decoder_equals_decode_transfer_encoding(case, cuts):
    encoding, body = case
    assert run(TransferDecoder(encoding), chunked(body, cuts)) == decode_transfer_encoding(body, encoding)


@pytest.mark.parametrize(("encoding", "body"), [
    ("quoted-printable", b"caf=C3=A9 soft=\r\nbreak ==3D=\rskipped\nx=A=4\r\n=41=\n=\r"),
    ("quoted-printable", b"a===41=\r\n=\n=4=\r="),
    # RFC 2045 section 6.7 rules 3 and 5: trailing blanks deleted, "=" + blanks a soft break
    ("quoted-printable", b"a b \t\r\nsoft= \t\r\nbreak=\t\nend  "),
    ("base64", b"AAEC\r\nAw==\r\n!!QUJD\nRA"),
    ("base64", b"QQ==QQ==Q"),
    ("7bit", b"as it is\r\n"),
])
def test_the_decoder_at_every_cut_point(encoding: str, body: bytes) -> None:
    expected = decode_transfer_encoding(body, encoding)
    for first in range(len(body) + 1):
        for second in range(first, len(body) + 1):
            pieces = [body[:first], body[first:second], body[second:]]
            assert run(TransferDecoder(encoding), pieces) == expected, (first, second)


@given(st.one_of(_qp_body, st.text(alphabet="=\rA3fgz", max_size=40).map(str.encode)),
       st.lists(st.integers(0, 100), max_size=8))
@settings(max_examples=1500, deadline=None)
def test_the_qp_decoder_cuts_long_lines_exactly(body, cuts):
    # with a tiny LINE_HOLD every line is a "long" one, cut at a2b_qp token boundaries
    import pymail.proto.imap.sections as sections

    saved, sections.LINE_HOLD = sections.LINE_HOLD, 4
    try:
        got = run(TransferDecoder("quoted-printable"), chunked(body, cuts))
    finally:
        sections.LINE_HOLD = saved
    assert got == decode_transfer_encoding(body, "quoted-printable")


def test_the_qp_decoder_holds_a_bounded_line() -> None:
    # one 20 MB line of quoted-printable escapes, no line end: decoded as it comes
    decoder = TransferDecoder("quoted-printable")
    piece = b"=41" * 20000 + b"x"
    out = 0
    for _ in range(40):
        out += len(decoder.feed(piece))
        assert len(decoder._carry) <= LINE_HOLD + len(piece)
    out += len(decoder.finish())
    assert out == 40 * 20001
    # a soft break with no LF: everything after it is skipped, and not held
    decoder = TransferDecoder("quoted-printable")
    assert decoder.feed(b"ab=\r" + b"x" * (LINE_HOLD + 10)) == b"ab"
    assert decoder.feed(b"y" * 100000) == b"" and decoder._carry == b""
    assert decoder.feed(b"z\nok") == b"" and decoder.finish() == b"ok"
    whole = b"ab=\r" + b"x" * (LINE_HOLD + 10) + b"y" * 100000 + b"z\nok"
    assert binascii.a2b_qp(whole) == b"abok"


def test_the_header_filter_holds_a_bounded_line() -> None:
    filter_ = HeaderFieldsFilter(("SUBJECT",))
    held = 0
    for _ in range(100):
        filter_.feed(b"Subject" + b" " * 100000)  # blanks after a wanted name, no colon yet
        held = max(held, len(filter_._line))
    assert held <= LINE_HOLD + 100010
    assert filter_.finish() == b"\r\n"  # counted as no field
    kept = HeaderFieldsFilter(("SUBJECT",))
    out = kept.feed(b"Subject: " + b"x" * 300000)
    out += kept.feed(b"y" * 300000 + b"\r\nTo: z\r\n\r\n") + kept.finish()
    assert out == b"Subject: " + b"x" * 300000 + b"y" * 300000 + b"\r\n\r\n"
    assert len(kept._line) == 0


def test_window_and_plans() -> None:
    window = Window((3, 4))
    assert [window.take(c) for c in (b"ab", b"cdef", b"ghij")] == [b"", b"def", b"g"]
    assert window.done
    plan = SectionPlan("BODY[]", 10, 20, partial=(5, 100))
    assert plan.window() == (15, 20) and plan.clamped(12).window() == (12, 12)
    assert literal_head(3, literal8=False) == b"{3}\r\n" and literal_head(3, literal8=True) == b"~{3}\r\n"


def test_binary_of_an_unknown_encoding_is_refused_at_planning() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n--b--\r\n")
    with pytest.raises(UnknownTransferEncoding):
        plan_section(FetchAttribute("BINARY", Section((1,))), parse_structure(raw))
    assert plan_section(FetchAttribute("BODY", Section((1,))), parse_structure(raw)) is not None
