"""Byte-level tests of the sans-IO DATA decoder (pymail.proto.smtp.data) and the reply
helpers (pymail.proto.smtp.replies).

Each input is fed whole, byte by byte, at random split points (hypothesis), and with
trailing data (the next pipelined command), as STYLE.md item 4 asks; the SMTP smuggling
vectors are those of aiosmtpd's tests/test_smtpsmuggling.py and SEC Consult's 2023 write-up.
The decoder is checked against `reference`, a line-by-line reading of RFC 5321 written
independently of it."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pymail.proto.smtp.data import TERMINATOR, DataDecoder, Refusal
from pymail.proto.smtp.replies import with_enhanced_code

TRAILER = b"MAIL FROM:<next@example.test>\r\n"
PREFIX = b"Return-Path: <a@b.example>\r\nReceived: from x\r\n"


def reference(stream: bytes) -> tuple[bytes, bytes, bool] | None:
    """(content, trailing, bare CR/LF) by RFC 5321 sections 4.1.1.4 and 4.5.2, or None if
    the stream holds no end of data.  The DATA command's own CRLF may start the end."""
    stream = b"\r\n" + stream
    end = stream.find(b"\r\n.\r\n")
    if end < 0:
        return None
    raw = stream[2 : end + 2]
    crlf = raw.count(b"\r\n")
    bare = raw.count(b"\r") != crlf or raw.count(b"\n") != crlf
    lines = [line[1:] if line.startswith(b".") else line for line in raw.split(b"\r\n")]
    return b"\r\n".join(lines), stream[end + 5 :], bare


def feed(chunks: list[bytes], *, limit: int | None = None, prefix: bytes = b"") -> tuple[DataDecoder, bytes]:
    decoder = DataDecoder(prefix=prefix, size_limit=limit)
    out = b"".join(decoder.feed(chunk) for chunk in chunks)
    return decoder, out


def split_ways(stream: bytes, seed: int = 0) -> list[list[bytes]]:
    """Whole, byte by byte, and a few random splits."""
    rng = random.Random(seed)
    ways = [[stream], [stream[i : i + 1] for i in range(len(stream))]]
    for _ in range(3):
        cuts = sorted(rng.sample(range(len(stream) + 1), min(4, len(stream) + 1)))
        ways.append([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])])
    return ways


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),  # empty: the terminator's CRLF is the DATA line's
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),  # RFC 5321 4.5.2: the first dot goes
        (b"x\r\n..\r\n.\r\n", b"x\r\n.\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b".x\r\n.\r\n", b"x\r\n"),  # whatever follows the dot
        (b"a\r\n.x\r\n..y\r\n.\r\n", b"a\r\nx\r\n.y\r\n"),
        (b"a.\r\nb.c\r\n.\r\n", b"a.\r\nb.c\r\n"),  # dots elsewhere stay
        (b"\r\n\r\n\r\n.\r\n", b"\r\n\r\n\r\n"),
        (b"x" * 5000 + b"\r\n.\r\n", b"x" * 5000 + b"\r\n"),
        (b"\r\n" * 3000 + b".\r\n", b"\r\n" * 3000),
    ],
)
@pytest.mark.parametrize("trailer", [b"", TRAILER])
def test_content_and_end_of_data(wire: bytes, content: bytes, trailer: bytes) -> None:
    for chunks in split_ways(wire + trailer):
        decoder, out = feed(chunks)
        assert decoder.done
        assert out == content
        assert decoder.trailing == trailer
        assert reference(wire + trailer) == (content, trailer, decoder.bare_line_end)


def test_prefix_comes_first_and_the_key_is_the_stored_blob() -> None:
    for wire in (b".\r\n", b"Subject: s\r\n\r\n..dot\r\n.\r\n"):
        for chunks in split_ways(wire):
            decoder, out = feed(chunks, prefix=PREFIX)
            assert out.startswith(PREFIX)
            assert out == PREFIX + reference(wire)[0]  # type: ignore[index]
            assert decoder.key == hashlib.sha256(out).hexdigest()
            assert decoder.message_size == len(out)
            assert decoder.content_size == len(out) - len(PREFIX)
            assert decoder.refusal is None


# SMTP smuggling (SEC Consult, December 2023; aiosmtpd's tests/test_smtpsmuggling.py):
# an end of data other than CR LF . CR LF, with a second message behind it.
SMUGGLED = b"MAIL FROM:<x@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\n"


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n",
     b"\r\n\x00.\r\n", b"\r\n.\x00\r\n"],
)
def test_smuggling_vectors_do_not_end_the_data(fake_end: bytes) -> None:
    wire = b"Subject: a\r\n\r\nbody" + fake_end + SMUGGLED + b"tail\r\n.\r\n" + TRAILER
    for chunks in split_ways(wire):
        decoder, _ = feed(chunks)
        assert decoder.done
        assert decoder.trailing == TRAILER  # the smuggled commands were content
        if b"\x00" not in fake_end:
            assert decoder.refusal is Refusal.BARE_LINE_END
            assert decoder.bare_line_end


def test_aiosmtpd_smuggling_vector() -> None:
    wire = (b"From: Anne Person <anne@example.com>\r\nTo: Bart Person <bart@example.com>\r\n"
            b"Subject: A test\r\nMessage-ID: <ant>\r\n\r\nTesting\n.\r\nNO SMUGGLING\n\r\n.\r\n")
    for chunks in split_ways(wire):
        decoder, _ = feed(chunks)
        assert decoder.done and decoder.trailing == b""
        assert decoder.refusal is Refusal.BARE_LINE_END  # "NO SMUGGLING" was content


@pytest.mark.parametrize(("data", "bare"), [
    (b"a\r\nb\r\n", False), (b"a\nb\r\n", True), (b"a\rb\r\n", True), (b"a\r\n\n", True),
    (b"a\r\r\n", True), (b"\n", True), (b"\r\r\n", True), (b"x\r\n.\r\r\n", True),
])
def test_bare_line_ends(data: bytes, bare: bool) -> None:
    for chunks in split_ways(data + TERMINATOR):
        decoder, out = feed(chunks, prefix=PREFIX)
        assert decoder.done and decoder.bare_line_end is bare
        if bare:  # refused: nothing past the point it was known is handed out
            assert decoder.refusal is Refusal.BARE_LINE_END
            assert len(out) <= len(PREFIX) + len(data) + 2


@pytest.mark.parametrize("size", [0, 99, 100, 101, 300])
def test_size_limit_reads_to_the_end_then_refuses(size: int) -> None:
    body = b"z" * max(size - 2, 0) + b"\r\n" if size else b""
    for chunks in split_ways(body + b".\r\n" + TRAILER):
        decoder, out = feed(chunks, limit=100, prefix=PREFIX)
        assert decoder.done and decoder.trailing == TRAILER  # the session can go on
        assert decoder.content_size == len(body)
        if len(body) > 100:
            assert decoder.refusal is Refusal.TOO_BIG
            assert len(out) <= len(PREFIX) + 100 + 4  # at most one chunk short of the limit
        else:
            assert decoder.refusal is None and out == PREFIX + body


def test_size_limit_counts_unstuffed_octets() -> None:
    body = b"..\r\n" * 25  # 100 octets sent, 75 after unstuffing
    decoder, out = feed([body + b".\r\n"], limit=75)
    assert decoder.refusal is None and out == b".\r\n" * 25


def test_too_big_wins_over_bare_line_end() -> None:
    decoder, _ = feed([b"a\nb" * 100 + b"\r\n.\r\n"], limit=10)
    assert decoder.refusal is Refusal.TOO_BIG


def test_no_end_of_data_yet() -> None:
    for stream in (b"", b"unterminated\r\n", b"x\r\n.", b"x\r\n.\r", b"\n.\n"):
        decoder, _ = feed([stream])
        assert not decoder.done and reference(stream) is None


def test_bytes_after_the_end_are_kept() -> None:
    decoder, out = feed([b"a\r\n.\r\nNO", b"OP\r\n"])
    assert out == b"a\r\n" and decoder.trailing == b"NOOP\r\n"


def test_holds_at_most_four_octets() -> None:
    decoder = DataDecoder()
    for chunk in (b"x" * 1000, b"\r", b"\n", b".", b"\r", b"y", b"\r\n."):
        decoder.feed(chunk)
        assert len(decoder._held) <= 4


def read_like_the_session(stream: bytes, overrun: int) -> tuple[DataDecoder, bytes, int]:
    """Read `stream` the way PymailSMTP does (read_limit octets exactly, else up to the
    next TERMINATOR the stream holds, at most `overrun` octets at a time, as
    StreamReader.readuntil gives them); returns the decoder, output, octets consumed."""
    decoder = DataDecoder()
    out, pos = b"", 0
    while not decoder.done and pos < len(stream):
        limit = decoder.read_limit()
        if limit:
            chunk = stream[pos : pos + limit]
        else:
            end = stream.find(TERMINATOR, pos)
            stop = end + len(TERMINATOR) if end >= 0 else len(stream)
            if stop - pos > overrun:  # LimitOverrunError: all but the last 4 octets
                stop = max(pos + 1, min(stop, len(stream)) - (len(TERMINATOR) - 1))
            chunk = stream[pos:stop]
        pos += len(chunk)
        out += decoder.feed(chunk)
    return decoder, out, pos


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\r\n.", b"\r\n.\r\n"]),
                max_size=40),
       st.integers(min_value=5, max_value=40))
def test_reading_by_read_limit_never_reads_past_the_end(pieces: list[bytes], overrun: int) -> None:
    stream = b"".join(pieces) + b"\r\n.\r\n" + TRAILER
    decoder, out, consumed = read_like_the_session(stream, overrun)
    expected = reference(stream)
    assert expected is not None and decoder.done
    content, trailing, bare = expected
    assert decoder.trailing == b""  # the next command stayed in the stream
    assert stream[consumed:] == trailing
    assert decoder.bare_line_end is bare
    if not bare:
        assert out == content


@settings(max_examples=500, deadline=None)
@example(body=b"\r\x00", cuts=[1], ending=b"")
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=8),
       st.sampled_from([b"", b"\r\n.\r\n", b"x\r\n.\r\n" + TRAILER, b"\r\n..\r\n.\r\n"]))
def test_any_split_decodes_like_the_reference(body: bytes, cuts: list[int], ending: bytes) -> None:
    stream = body.replace(b"\x00", b"\r\n.") + ending
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    decoder, out = feed(chunks, prefix=PREFIX)
    whole, whole_out = feed([stream], prefix=PREFIX)
    expected = reference(stream)
    assert (decoder.done, decoder.trailing, decoder.refusal) == (
        whole.done, whole.trailing, whole.refusal)
    # What came out before a refusal was known depends on where the chunks were cut
    # (b"\r" then b"\r\n." emits the prefix first); the caller drops it (module contract).
    if decoder.refusal is None:
        assert out == whole_out
    if expected is None:
        assert not decoder.done
        return
    content, trailing, bare = expected
    assert decoder.done and decoder.trailing == trailing and decoder.bare_line_end is bare
    if not bare:
        assert out == PREFIX + content
        assert decoder.key == hashlib.sha256(PREFIX + content).hexdigest()


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
