"""Sans-IO tests of POP3 response encoding (pymail.proto.pop3.responses) and of the
session's maildrop view (pymail.proto.pop3.maildrop).

The dot-stuffer is fed every message whole, byte by byte, and cut at every position,
and must give the same bytes each way; a client-side reading of the result (undo the
stuffing, stop at the terminator) must give back the message with CRLF line ends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymail.proto.pop3 import CommandError, DotStuffer, LineLimit, Maildrop, MaildropEntry, responses


def stuff(chunks: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.finish()


def every_way(message: bytes) -> bytes:
    """The stuffed bytes, checked to be the same however the message is cut."""
    whole = stuff([message])
    assert stuff([message[i:i + 1] for i in range(len(message))]) == whole
    for cut in range(len(message) + 1):
        assert stuff([message[:cut], b"", message[cut:]]) == whole, cut
    return whole


def unstuff(wire: bytes) -> bytes:
    """What a POP3 client reads from a multi-line body (RFC 1939 section 3)."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n", wire
    lines = wire.split(b"\r\n")
    out = []
    for line in lines[:-2]:  # the "." line and the empty tail
        assert line != b".", "terminator before the end"
        out.append(line[1:] if line.startswith(b".") else line)
    assert lines[-2:] == [b".", b""]
    return b"".join(line + b"\r\n" for line in out)


def normalise(message: bytes) -> bytes:
    """The message with every line ending in CRLF (a bare LF becomes CRLF; the last
    line gets its CRLF)."""
    out = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


@pytest.mark.parametrize(("message", "wire"), [
    (b"", b".\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b".a\r\n.\r\n..b\r\n", b"..a\r\n..\r\n...b\r\n.\r\n"),
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),  # bare LF normalised
    (b"a\n.b", b"a\r\n..b\r\n.\r\n"),
    (b"x\r\n\r\n.\r\n", b"x\r\n\r\n..\r\n.\r\n"),
    (b"ends with CR\r", b"ends with CR\r\n.\r\n"),
    (b"a\rb\r\n", b"a\rb\r\n.\r\n"),  # a bare CR inside a line is data
    (b"a.b\r\n", b"a.b\r\n.\r\n"),
])
def test_dot_stuffing(message: bytes, wire: bytes) -> None:
    assert every_way(message) == wire


def test_chunk_ending_in_cr_then_lf() -> None:
    stuffer = DotStuffer()
    assert stuffer.feed(b"line\r") == b"line\r"
    assert stuffer.feed(b"\n.dot\r") == b"\n..dot\r"
    assert stuffer.feed(b"\n") == b"\n"
    assert stuffer.feed(b".") == b".."  # a chunk that starts a line with "."
    assert stuffer.finish() == b"\r\n.\r\n"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b" ", b"\xc3\xa9"]), max_size=40))
def test_dot_stuffing_round_trip(parts: list[bytes]) -> None:
    message = b"".join(parts)
    wire = every_way(message)
    if b"\r" in message.replace(b"\r\n", b""):  # bare CR: kept as data, no round trip claim
        return
    assert unstuff(wire) == normalise(message)


def test_large_message_in_chunks_matches_whole() -> None:
    body = b"".join(b"%s line %d\r\n" % (b"." if i % 7 == 0 else b"", i) for i in range(20_000))
    whole = stuff([body])
    for size in (1, 7, 4096, 65_536):
        assert stuff([body[i:i + size] for i in range(0, len(body), size)]) == whole
    assert unstuff(whole) == body


def test_line_limit() -> None:
    limit = LineLimit(2)
    assert limit.take(b"one\r\ntw") == b"one\r\ntw"
    assert not limit.done
    assert limit.take(b"o\r\nthree\r\n") == b"o\r\n"
    assert limit.done and limit.take(b"more\r\n") == b""
    assert LineLimit(0).done and LineLimit(0).take(b"x\r\n") == b""
    limit = LineLimit(5)
    assert limit.take(b"a\r\nlast without end") == b"a\r\nlast without end"
    limit = LineLimit(1)
    assert limit.take(b"a\rb\r\nc\r\n") == b"a\rb\r\n"  # a bare CR does not end a line


@given(st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"")), st.integers(0, 30),
       st.lists(st.integers(0, 200), max_size=5))
def test_line_limit_chunked_equals_whole(body: bytes, lines: int, cuts: list[int]) -> None:
    expected = b"".join(body.split(b"\n")[i] + b"\n" for i in range(min(lines, body.count(b"\n"))))
    if lines > body.count(b"\n"):
        expected = body
    positions = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    limit = LineLimit(lines)
    got = b"".join(limit.take(body[a:b]) for a, b in zip(positions, positions[1:]))
    assert got == expected


def test_status_lines_and_codes() -> None:
    assert responses.ok() == b"+OK\r\n"
    assert responses.ok("2 320") == b"+OK 2 320\r\n"
    assert responses.err("Authentication failed", responses.CODE_AUTH) == b"-ERR [AUTH] Authentication failed\r\n"
    assert responses.err("x", responses.CODE_SYS_TEMP) == b"-ERR [SYS/TEMP] x\r\n"
    assert responses.err("x", responses.CODE_IN_USE) == b"-ERR [IN-USE] x\r\n"
    assert responses.err("a\r\nb") == b"-ERR a??b\r\n"  # never a second line
    assert len(responses.ok("x" * 5000)) <= 512


def test_multiline_listing() -> None:
    assert responses.multiline("Capability list follows", ["TOP", "UIDL", ".odd"]) == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\n..odd\r\n.\r\n")
    assert responses.multiline("0 messages", []) == b"+OK 0 messages\r\n.\r\n"


def test_sasl_challenge() -> None:
    assert responses.sasl_challenge(b"") == b"+ \r\n"
    assert responses.sasl_challenge(b"Username:") == b"+ VXNlcm5hbWU6\r\n"


def test_unique_id_is_printable_and_short() -> None:
    uid = responses.unique_id(2**32 - 1, 2**32 - 1)
    assert len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid)
    assert responses.unique_id(7, 1) != responses.unique_id(7, 11) != responses.unique_id(71, 1)
    assert responses.unique_id(17, 1) != responses.unique_id(1, 71)


# --- the maildrop (RFC 1939 sections 5 and 6) -------------------------------------------


def make_drop() -> Maildrop:
    return Maildrop(99, [MaildropEntry(3, 100, "k3"), MaildropEntry(5, 200, "k5"), MaildropEntry(9, 300, "k9")])


def test_maildrop_numbers_sizes_and_marks() -> None:
    drop = make_drop()
    assert (drop.count, drop.size) == (3, 600)
    assert drop.message(2).uid == 5 and drop.unique_id(2) == "99.5"
    for bad in (0, 4, 10**9):
        with pytest.raises(CommandError) as refusal:
            drop.message(bad)
        assert refusal.value.reply == b"-ERR No such message\r\n"
    drop.delete(2)
    assert (drop.count, drop.size) == (2, 400)
    assert [n for n, _ in drop.listing()] == [1, 3]  # numbers do not move
    with pytest.raises(CommandError) as refusal:
        drop.delete(2)
    assert refusal.value.reply == b"-ERR Message already deleted\r\n"
    with pytest.raises(CommandError):
        drop.message(2)
    drop.delete(3)
    assert drop.deleted_uids() == [5, 9]
    drop.reset()
    assert drop.deleted_uids() == [] and drop.count == 3
