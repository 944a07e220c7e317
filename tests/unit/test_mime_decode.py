"""Transfer decoding and searchable text (pymail.mail.mime) and BINARY sections
(pymail.proto.imap.bodystructure), byte for byte."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymail.mail.mime import (
    UnknownTransferEncoding, decode_transfer_encoding, iter_text, parse_structure,
)
from pymail.proto.imap.bodystructure import binary_section, encode_literal8, fetch_binary_item
from pymail.proto.imap.types import FetchAttribute, Section

MESSAGE = (
    b"Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nK=FCche =\r\nund Bad\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAEC\r\nAw==\r\n"
    b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes("grüße".encode()).replace(b"\n", b"\r\n") +
    b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
    b"--b--\r\n"
)


@given(st.binary(max_size=2000))
def test_base64_round_trip_with_line_breaks(data: bytes) -> None:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert decode_transfer_encoding(encoded, "base64") == data
    assert decode_transfer_encoding(encoded, "BASE64") == data


def test_base64_tolerates_missing_padding_and_junk() -> None:
    assert decode_transfer_encoding(b"AAEC\r\nAw", "base64") == b"\x00\x01\x02\x03"
    assert decode_transfer_encoding(b"AA*EC Aw==", "base64") == b"\x00\x01\x02\x03"
    assert decode_transfer_encoding(b"", "base64") == b""


def test_quoted_printable_soft_and_hard_breaks() -> None:
    assert decode_transfer_encoding(b"a=3Db =\r\nc\r\nd", "quoted-printable") == b"a=b c\r\nd"


def test_identity_and_unknown_encodings() -> None:
    for name in ("7bit", "8bit", "binary"):
        assert decode_transfer_encoding(b"x\x00y", name) == b"x\x00y"
    with pytest.raises(UnknownTransferEncoding):
        decode_transfer_encoding(b"x", "x-uuencode")


def test_binary_sections() -> None:
    structure = parse_structure(MESSAGE)
    assert binary_section(MESSAGE, structure, Section()) == MESSAGE
    assert binary_section(MESSAGE, structure, Section(part=(1,))) == "Küche und Bad".encode("latin-1")
    assert binary_section(MESSAGE, structure, Section(part=(2,))) == b"\x00\x01\x02\x03"
    assert binary_section(MESSAGE, structure, Section(part=(3, 1))) == "grüße".encode()
    assert binary_section(MESSAGE, structure, Section(part=(9,))) is None
    with pytest.raises(UnknownTransferEncoding):
        binary_section(MESSAGE, structure, Section(part=(4,)))


def test_binary_fetch_items() -> None:
    structure = parse_structure(MESSAGE)
    item = fetch_binary_item(FetchAttribute("BINARY", Section(part=(2,)), peek=True), MESSAGE, structure)
    assert item == ("BINARY[2]", b"~{4}\r\n\x00\x01\x02\x03")
    item = fetch_binary_item(FetchAttribute("BINARY", Section(part=(1,)), partial=(2, 3)), MESSAGE, structure)
    assert item == ("BINARY[1]<2>", b"{3}\r\n" + "che".encode("latin-1"))
    item = fetch_binary_item(FetchAttribute("BINARY.SIZE", Section(part=(2,))), MESSAGE, structure)
    assert item == ("BINARY.SIZE[2]", b"4")
    item = fetch_binary_item(FetchAttribute("BINARY.SIZE", Section(part=(7,))), MESSAGE, structure)
    assert item == ("BINARY.SIZE[7]", b"NIL")
    assert encode_literal8(b"abc") == b"{3}\r\nabc"


def test_searchable_text() -> None:
    structure = parse_structure(MESSAGE)
    body = list(iter_text(MESSAGE, structure, headers=False))
    assert "Küche und Bad" in body[0]
    assert any("grüße" in text for text in body)
    assert not any("Subject" in text for text in body)
    with_headers = list(iter_text(MESSAGE, structure, headers=True))
    assert any("Subject: inner" in text for text in with_headers)
    assert any("Subject: t" in text for text in with_headers)


def test_quoted_printable_trailing_blanks() -> None:
    # RFC 2045 section 6.7 rule 3 (trailing blanks deleted) and rule 5 ("=" then blanks
    # at the line's end is a soft break); imaptest fetch-binary-mime-qp
    body = b"trailing \t\r\nsoft=  \r\nbreak\r\nlast line  "
    assert decode_transfer_encoding(body, "quoted-printable") == b"trailing\r\nsoftbreak\r\nlast line"
