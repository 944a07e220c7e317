"""The raw header model (pymail.mail.headers): fields in order, repeated, byte-exact,
case-insensitive lookups, unfolded values, and where the header ends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pymail.mail.headers import parse_header

MESSAGE = (b"Received: from a\r\n\tby b; Wed, 02 Dec 2026\r\n"
           b"Received: from c by d\r\n"
           b"From: Alice <alice@example.test>\r\n"
           b"Subject : obsolete  spacing\r\n  and a fold\r\n"
           + "X-Name: Jörg\r\n".encode()
           + b"\r\nBody: not a field\r\n")


def test_fields_in_order_repeated_and_raw() -> None:
    block = parse_header(MESSAGE)
    assert [f.lower_name for f in block] == ["received", "received", "from", "subject", "x-name"]
    assert b"".join(f.raw for f in block) == MESSAGE[: block.fields_end]
    assert MESSAGE[block.body_start:] == b"Body: not a field\r\n"
    assert block.clean and len(block) == 5
    first, second = block.get_all("RECEIVED")
    assert first.raw == b"Received: from a\r\n\tby b; Wed, 02 Dec 2026\r\n"
    assert first.value == "from a\tby b; Wed, 02 Dec 2026"  # unfolded: CRLF out, WSP kept
    assert second.value == "from c by d"
    subject = block.get("subject")
    assert subject is not None and subject.name == b"Subject"
    assert subject.value == "obsolete  spacing  and a fold"
    assert block.get("x-name").value == "Jörg"  # type: ignore[union-attr]
    assert block.get("Cc") is None and block.get_all("cc") == []
    assert block.pairs()[3] == (b"Subject ", b" obsolete  spacing\r\n  and a fold\r\n")


def test_header_without_body_without_final_crlf_and_bare_lf() -> None:
    block = parse_header(b"Subject: only\r\nFrom: a@b")
    assert block.clean and [f.value for f in block] == ["only", "a@b"]
    assert block.body_start == block.fields_end == len(b"Subject: only\r\nFrom: a@b")
    lf = parse_header(b"From: a@b\n folded\n\nbody\n")
    assert lf.clean and lf.get("from").value == "a@b folded"  # type: ignore[union-attr]
    assert lf.body_start == len(b"From: a@b\n folded\n\n")
    empty = parse_header(b"\r\nbody")
    assert empty.clean and len(empty) == 0 and empty.body_start == 2


def test_a_stray_line_ends_the_header_and_is_not_clean() -> None:
    for data in (b"From: a@b\r\nno colon here\r\n\r\nbody", b" leading fold\r\nFrom: a\r\n\r\n",
                 b"From: a\r\n\x01: x\r\n\r\n"):
        block = parse_header(data)
        assert not block.clean
        assert b"".join(f.raw for f in block) == data[: block.fields_end]


@given(st.binary(max_size=300))
def test_any_input_parses_and_the_fields_are_the_data(data: bytes) -> None:
    block = parse_header(data)
    assert b"".join(f.raw for f in block) == data[: block.fields_end]
    assert block.fields_end <= block.body_start <= len(data)
    for f in block:
        assert isinstance(f.value, str)
