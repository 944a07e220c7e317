"""pymail's DSNs (pymail.mail.dsn): RFC 3464 fields, RFC 6522 structure, the original
returned as headers or whole, the remote's reply quoted exactly, UTF-8 originals."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymail.mail.dsn import DsnRecipient, build_dsn

T0 = dt.datetime(2026, 12, 1, 9, 30, 0, tzinfo=dt.timezone.utc)
NOW = dt.datetime(2026, 12, 2, 13, 0, 0, tzinfo=dt.timezone.utc)
REPLY_550 = ("550 5.1.1 <nobody@remote.test>: Recipient address rejected: User unknown in "
             "local recipient table")
ORIGINAL = (b"Received: from client (client [127.0.0.9])\r\n\tby mail.example.test\r\n"
            b"From: Alice <alice@example.test>\r\n"
            b"To: nobody@remote.test\r\n"
            b"Subject: lunch?\r\n"
            b"Message-ID: <orig-1@example.test>\r\n"
            b"\r\n"
            b"Shall we?\r\n")


def failed(address: str = "nobody@remote.test", **kw: object) -> DsnRecipient:
    fields: dict[str, object] = dict(address=address, orcpt=f"rfc822;{address}", action="failed",
                                     status="5.1.1", remote_mta="mx.remote.test",
                                     diagnostic=REPLY_550, last_attempt=NOW)
    fields.update(kw)
    return DsnRecipient(**fields)  # type: ignore[arg-type]


def build(recipients: list[DsnRecipient] | None = None, **kw: object) -> bytes:
    args: dict[str, object] = dict(reporting_mta="mail.example.test",
                                   original_sender="alice@example.test",
                                   recipients=recipients or [failed()], original=ORIGINAL,
                                   ret=None, envid=None, arrival=T0, now=NOW,
                                   queue_id="A1B2C3D4E5", size_limit=50_000)
    args.update(kw)
    return build_dsn(**args)  # type: ignore[arg-type]


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def parts(data: bytes) -> tuple[Message, Message, Message, Message]:
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    payload = msg.get_payload()
    assert isinstance(payload, list) and len(payload) == 3
    return msg, payload[0], payload[1], payload[2]


def unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def test_top_level_fields() -> None:
    data = build()
    msg, *_ = parts(data)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.test>"
    assert msg["To"] == "<alice@example.test>"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"] == "Wed, 02 Dec 2026 13:00:00 +0000"
    assert re.fullmatch(r"<A1B2C3D4E5\.\d+\.[0-9a-f]{16}@mail\.example\.test>", msg["Message-ID"])
    # CRLF throughout, no line over 78 octets in the DSN's own fields
    assert b"\n" not in data.replace(b"\r\n", b"")
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


def test_each_dsn_has_its_own_message_id_and_boundary() -> None:
    a, b = parse(build()), parse(build())
    assert a["Message-ID"] != b["Message-ID"]
    assert a.get_boundary() != b.get_boundary()


def test_delivery_status_fields_per_message_and_per_recipient() -> None:
    later = NOW + dt.timedelta(days=3)
    recipients = [
        failed(),
        DsnRecipient(address="slow@remote.test", orcpt=None, action="delayed", status="4.4.1",
                     remote_mta=None, diagnostic=None, last_attempt=NOW, will_retry_until=later),
    ]
    _, _, status, _ = parts(build(recipients, envid="QQ314159"))
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list) and len(blocks) == 3
    per_message, first, second = blocks
    assert per_message["Reporting-MTA"] == "dns; mail.example.test"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Arrival-Date"] == "Tue, 01 Dec 2026 09:30:00 +0000"
    assert per_message["X-Pymail-Queue-ID"] == "A1B2C3D4E5"
    assert first["Final-Recipient"] == "rfc822; nobody@remote.test"
    assert first["Original-Recipient"] == "rfc822; nobody@remote.test"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Remote-MTA"] == "dns; mx.remote.test"
    assert unfold(first["Diagnostic-Code"]) == "smtp; " + REPLY_550
    assert first["Last-Attempt-Date"] == "Wed, 02 Dec 2026 13:00:00 +0000"
    assert first["Will-Retry-Until"] is None  # only for delayed
    assert second["Final-Recipient"] == "rfc822; slow@remote.test"
    assert second["Original-Recipient"] is None
    assert second["Action"] == "delayed"
    assert second["Status"] == "4.4.1"
    assert second["Remote-MTA"] is None and second["Diagnostic-Code"] is None
    assert second["Will-Retry-Until"] == "Sat, 05 Dec 2026 13:00:00 +0000"


def test_no_envid_no_original_envelope_id() -> None:
    _, _, status, _ = parts(build())
    assert status.get_payload()[0]["Original-Envelope-Id"] is None


def test_orcpt_that_differs_from_the_final_recipient() -> None:
    _, _, status, _ = parts(build([failed("bob@remote.test", orcpt="rfc822;team@example.test")]))
    block = status.get_payload()[1]
    assert block["Final-Recipient"] == "rfc822; bob@remote.test"
    assert block["Original-Recipient"] == "rfc822; team@example.test"


def test_human_part_quotes_the_reply_exactly_multiline_included() -> None:
    multi = "550-5.7.1 Message rejected\r\n550-5.7.1 see https://remote.test/why\r\n550 5.7.1 bye"
    _, human, status, _ = parts(build([failed(diagnostic=multi)]))
    assert human.get_content_type() == "text/plain"
    text = human.get_payload(decode=True).decode()
    assert "host mx.remote.test said:" in text
    for line in multi.split("\r\n"):
        assert f"        {line}\r\n" in text
    assert "<nobody@remote.test>" in text
    # the machine part has the reply unfolded on one line, lines joined with a space
    assert unfold(status.get_payload()[1]["Diagnostic-Code"]) == "smtp; " + multi.replace("\r\n", " ")


def test_long_reply_is_folded_at_its_own_spaces() -> None:
    long = "550 5.7.1 " + " ".join(f"word{n}" for n in range(200))
    data = build([failed(diagnostic=long)])
    assert all(len(line) <= 78 for line in data.split(b"\r\n") if line.startswith((b"Diag", b" word")))
    _, _, status, _ = parts(data)
    assert unfold(status.get_payload()[1]["Diagnostic-Code"]) == "smtp; " + long


def test_reply_with_control_characters_cannot_inject_fields() -> None:
    evil = "550 no\r\nX-Injected: yes\x00\x1b"
    _, _, status, _ = parts(build([failed(diagnostic=evil)]))
    block = status.get_payload()[1]
    assert block["X-Injected"] is None
    assert "\x00" not in block["Diagnostic-Code"] and "\x1b" not in block["Diagnostic-Code"]


def test_headers_returned_by_default_and_for_hdrs() -> None:
    for ret in (None, "HDRS"):
        _, _, _, third = parts(build(ret=ret))
        assert third.get_content_type() == "text/rfc822-headers"
        returned = third.get_payload(decode=True)
        assert returned == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
        assert b"Shall we?" not in returned


def test_full_message_returned_for_ret_full() -> None:
    data = build(ret="FULL")
    _, human, _, third = parts(data)
    assert third.get_content_type() == "message/rfc822"
    inner = third.get_payload()[0]
    assert inner["Message-ID"] == "<orig-1@example.test>"
    assert inner.get_payload() == "Shall we?\r\n"
    assert ORIGINAL in data  # octet for octet
    assert "original message is attached" in human.get_payload()


def test_ret_full_over_the_size_limit_returns_headers_only() -> None:
    _, _, _, third = parts(build(ret="full", size_limit=len(ORIGINAL) - 1))
    assert third.get_content_type() == "text/rfc822-headers"


def test_huge_header_is_cut_at_a_field_boundary() -> None:
    original = b"".join(b"X-Filler-%d: %s\r\n" % (n, b"y" * 60) for n in range(500)) + b"\r\nbody\r\n"
    _, _, _, third = parts(build(original=original, size_limit=4096))
    returned = third.get_payload(decode=True)
    assert len(returned) <= 4096
    assert returned.endswith(b"\r\n") and re.fullmatch(rb"(X-Filler-\d+: y{60}\r\n)+", returned)


def test_subject_for_delay_and_success() -> None:
    delayed = DsnRecipient("s@remote.test", None, "delayed", "4.4.1", None, None, NOW, NOW)
    delivered = DsnRecipient("s@remote.test", None, "delivered", "2.0.0", "mx.remote.test",
                             "250 2.0.0 Ok: queued as 4AB", NOW)
    assert parse(build([delayed]))["Subject"] == "Delayed Mail (still being retried)"
    assert parse(build([delivered]))["Subject"] == "Successful Mail Delivery Report"
    assert parse(build([delivered, delayed, failed()]))["Subject"] == \
        "Undelivered Mail Returned to Sender"


def test_malformed_status_and_unknown_action_do_not_crash() -> None:
    _, _, status, _ = parts(build([failed(status="bogus", action="exploded")]))
    block = status.get_payload()[1]
    assert block["Action"] == "failed" and block["Status"] == "5.0.0"


def test_naive_datetimes_are_taken_as_utc() -> None:
    msg = parse(build(now=NOW.replace(tzinfo=None), arrival=T0.replace(tzinfo=None)))
    assert msg["Date"] == "Wed, 02 Dec 2026 13:00:00 +0000"


def test_boundary_never_in_the_content() -> None:
    trap = b"Subject: x\r\n\r\n--=_pymail-dsn-0000000000000000\r\n"
    data = build(original=trap, ret="FULL", token="0000000000000000")
    msg = parse(data)
    assert msg.get_boundary() != "=_pymail-dsn-0000000000000000"
    assert len(msg.get_payload()) == 3


def test_utf8_original_headers_use_global_types() -> None:
    original = "From: Jörg <jörg@example.test>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    data = build(original=original, original_sender="jörg@example.test",
                 recipients=[failed("bjørn@remote.test", orcpt="rfc822;bjørn@remote.test")])
    msg = email.message_from_string(data.decode(), policy=email.policy.SMTPUTF8)
    assert msg["To"].addresses[0].addr_spec == "jörg@example.test"
    assert "To: <jörg@example.test>\r\n".encode() in data
    human, status, third = msg.get_payload()
    assert status.get_content_type() == "message/global-delivery-status"
    assert third.get_content_type() == "message/global-headers"
    assert third["Content-Transfer-Encoding"] == "8bit"
    assert original.split(b"\r\n\r\n")[0] in data
    assert "utf-8; bjørn@remote.test" in data.decode()
    assert "Final-Recipient: utf-8; bjørn@remote.test\r\n" in data.decode()
    full = build(original=original, ret="FULL")
    assert b"Content-Type: message/global\r\n" in full


def test_8bit_body_with_ascii_headers_is_message_rfc822_8bit() -> None:
    original = b"Subject: x\r\nContent-Type: text/plain; charset=latin-1\r\n\r\nh\xe9\r\n"
    data = build(original=original, ret="FULL")
    assert b"Content-Type: message/rfc822\r\n" in data
    assert b"Content-Transfer-Encoding: 8bit\r\n\r\nSubject: x" in data


def test_original_without_body_or_with_bare_lf() -> None:
    for original in (b"Subject: only a header\r\n", b"Subject: lf\nFrom: a@b\n\nbody\n", b""):
        _, _, _, third = parts(build(original=original))
        assert third.get_content_type() == "text/rfc822-headers"


def test_no_recipients_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        build_dsn(reporting_mta="h", original_sender="a@b", recipients=[], original=b"",
                  ret=None, envid=None, arrival=NOW, now=NOW, queue_id="Q", size_limit=1)


def test_golden_structure() -> None:
    """The whole layout, octet for octet, with the random token fixed."""
    data = build(envid="E1", token="0123456789abcdef")
    expected = (
        "From: Mail Delivery System <MAILER-DAEMON@mail.example.test>\r\n"
        "To: <alice@example.test>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Wed, 02 Dec 2026 13:00:00 +0000\r\n"
        f"Message-ID: <A1B2C3D4E5.{int(NOW.timestamp())}.0123456789abcdef@mail.example.test>\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        ' boundary="=_pymail-dsn-0123456789abcdef"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        "This is a MIME-encapsulated message (a delivery status notification).\r\n"
        "\r\n"
        "--=_pymail-dsn-0123456789abcdef\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Description: Notification\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        "This is the mail system at host mail.example.test.\r\n"
        "\r\n"
        "Your message could not be delivered to the following recipients; the delivery attempt\r\n"
        "failed permanently, and nothing more will be tried:\r\n"
        "\r\n"
        "<nobody@remote.test>:\r\n"
        "    host mx.remote.test said:\r\n"
        f"        {REPLY_550}\r\n"
        "\r\n"
        "The header of the original message is attached.\r\n"
        "\r\n"
        "--=_pymail-dsn-0123456789abcdef\r\n"
        "Content-Type: message/delivery-status\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        "Reporting-MTA: dns; mail.example.test\r\n"
        "X-Pymail-Queue-ID: A1B2C3D4E5\r\n"
        "Original-Envelope-Id: E1\r\n"
        "Arrival-Date: Tue, 01 Dec 2026 09:30:00 +0000\r\n"
        "\r\n"
        "Final-Recipient: rfc822; nobody@remote.test\r\n"
        "Original-Recipient: rfc822; nobody@remote.test\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Remote-MTA: dns; mx.remote.test\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <nobody@remote.test>: Recipient address\r\n"
        " rejected: User unknown in local recipient table\r\n"
        "Last-Attempt-Date: Wed, 02 Dec 2026 13:00:00 +0000\r\n"
        "\r\n"
        "--=_pymail-dsn-0123456789abcdef\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
    ).encode() + ORIGINAL.split(b"\r\n\r\n")[0] + (
        b"\r\n"
        b"\r\n"
        b"--=_pymail-dsn-0123456789abcdef--\r\n"
    )
    assert data == expected


@settings(max_examples=200, deadline=None)
@given(reply=st.text(max_size=600), original=st.binary(max_size=400),
       address=st.emails(), ret=st.sampled_from([None, "FULL", "HDRS"]))
def test_any_input_gives_a_parseable_report(reply: str, original: bytes, address: str,
                                            ret: str | None) -> None:
    data = build([failed(address, diagnostic=reply or None)], original=original, ret=ret)
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert len(msg.get_payload()) == 3
