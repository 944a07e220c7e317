"""Byte-level tests of the DATA reader and reply helpers in pymail.net.smtp.

Each input is fed whole, byte by byte, and with trailing data (the next pipelined
command), as STYLE.md item 4 asks; the trailing data must stay unread in the stream."""

from __future__ import annotations

import asyncio

import pytest

from pymail.net.smtp import (
    DataTooBig,
    has_bare_line_end,
    read_message_data,
    undo_dot_stuffing,
    with_enhanced_code,
)

TRAILER = b"MAIL FROM:<next@example.test>\r\n"


async def _read(chunks: list[bytes], limit: int | None, reader_limit: int) -> tuple[bytes, bytes]:
    reader = asyncio.StreamReader(limit=reader_limit)

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    data = await read_message_data(reader, limit)
    await feeder
    rest = await reader.read()
    return data, rest


def split_ways(stream: bytes) -> list[list[bytes]]:
    return [[stream], [stream[i:i + 1] for i in range(len(stream))], [stream[:7], stream[7:]]]


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"..\r\n.\r\n", b"..\r\n"),  # still stuffed: undo_dot_stuffing's job
        (b"x\r\n..\r\n.\r\n", b"x\r\n..\r\n"),
        (b"\r\n\r\n\r\n.\r\n", b"\r\n\r\n\r\n"),
        (b".x\r\n.\r\n", b".x\r\n"),
        (b"a\r\n.x\r\n.\r\n", b"a\r\n.x\r\n"),
        (b"bare\nlf\r\n.\r\n", b"bare\nlf\r\n"),  # found, and left for has_bare_line_end
        (b"no.\r.\nend\r\n.\r\n", b"no.\r.\nend\r\n"),
        (b"x" * 5000 + b"\r\n.\r\n", b"x" * 5000 + b"\r\n"),  # longer than the reader limit
        (b"\r\n" * 3000 + b".\r\n", b"\r\n" * 3000),
    ],
)
@pytest.mark.parametrize("trailer", [b"", TRAILER])
def test_end_of_data_found_exactly(wire: bytes, content: bytes, trailer: bytes) -> None:
    for chunks in split_ways(wire + trailer):
        data, rest = asyncio.run(_read(chunks, None, reader_limit=64))
        assert data == content
        assert rest == trailer


def test_terminator_split_across_reader_limit() -> None:
    # put the terminator at every offset around the reader's buffer limit
    for pad in range(55, 75):
        wire = b"y" * pad + b"\r\n.\r\n" + TRAILER
        data, rest = asyncio.run(_read([wire], None, reader_limit=64))
        assert data == b"y" * pad + b"\r\n" and rest == TRAILER


@pytest.mark.parametrize("size", [99, 100, 101, 300])
def test_size_limit_drains_then_raises(size: int) -> None:
    body = b"z" * (size - 2) + b"\r\n"
    wire = body + b".\r\n" + TRAILER
    if size > 100:
        with pytest.raises(DataTooBig):
            asyncio.run(_read([wire], 100, reader_limit=64))
        # the stream after the terminator is intact: the session can go on
        reader_rest = asyncio.run(_read_rest_after_too_big(wire))
        assert reader_rest == TRAILER
    else:
        data, rest = asyncio.run(_read([wire], 100, reader_limit=64))
        assert data == body and rest == TRAILER


async def _read_rest_after_too_big(wire: bytes) -> bytes:
    reader = asyncio.StreamReader(limit=64)
    reader.feed_data(wire)
    reader.feed_eof()
    with pytest.raises(DataTooBig):
        await read_message_data(reader, 100)
    return await reader.read()


def test_eof_before_terminator() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(_read([b"unterminated\r\n"], None, reader_limit=64))


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"", False),
        (b"a\r\nb\r\n", False),
        (b"a\nb\r\n", True),
        (b"a\rb\r\n", True),
        (b"a\r\n\n", True),
        (b"a\r\r\n", True),
        (b"\n", True),
        (b"\r", True),
    ],
)
def test_bare_line_ends(data: bytes, bare: bool) -> None:
    assert has_bare_line_end(data) is bare


@pytest.mark.parametrize(
    ("stuffed", "plain"),
    [
        (b"", b""),
        (b"..\r\n", b".\r\n"),
        (b"a\r\n..b\r\n", b"a\r\n.b\r\n"),
        (b"...\r\n", b"..\r\n"),
        (b".x\r\n", b"x\r\n"),  # RFC 5321 4.5.2: the first dot goes, whatever follows
        (b"a.\r\nb\r\n", b"a.\r\nb\r\n"),
    ],
)
def test_undo_dot_stuffing(stuffed: bytes, plain: bytes) -> None:
    assert undo_dot_stuffing(stuffed) == plain


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"250 OK", b"250 2.0.0 OK"),
        (b"250 2.1.5 Recipient ok", b"250 2.1.5 Recipient ok"),
        (b"503 Error: need MAIL command", b"503 5.5.1 Error: need MAIL command"),
        (b"500 Error: bad syntax", b"500 5.5.2 Error: bad syntax"),
        (b"220 mx.example ESMTP", b"220 mx.example ESMTP"),
        (b"354 End data", b"354 End data"),
        (b"221 Bye", b"221 2.0.0 Bye"),
        (b"599 odd", b"599 odd"),
        (b"25", b"25"),
    ],
)
def test_enhanced_codes(reply: bytes, expected: bytes) -> None:
    assert with_enhanced_code(reply) == expected
