"""RFC 3461 DSN and RFC 8689 REQUIRETLS parameters (pymail.proto.smtp.params): what is
taken out of the raw MAIL/RCPT text, what is accepted, and the reply for what is not."""

from __future__ import annotations

import pytest

from pymail.proto.smtp.params import (
    MailParameters,
    ParameterError,
    RcptParameters,
    mail_parameters,
    rcpt_parameters,
    split_extensions,
    xtext_decode,
    xtext_encode,
)


def mail(text: str, tls: bool = True) -> MailParameters:
    rest, found = split_extensions(text)
    return mail_parameters(found, tls=tls)


def rcpt(text: str) -> RcptParameters:
    rest, found = split_extensions(text)
    return rcpt_parameters(found)


def test_split_keeps_the_case_and_leaves_the_rest_to_aiosmtpd() -> None:
    rest, found = split_extensions("SIZE=100 ret=hdrs ENVID=Q+2BAbc BODY=8BITMIME")
    assert rest == "SIZE=100 BODY=8BITMIME"
    assert found == {"RET": "hdrs", "ENVID": "Q+2BAbc"}
    assert split_extensions("") == ("", {})
    with pytest.raises(ParameterError) as e:
        split_extensions("RET=FULL RET=HDRS")
    assert e.value.reply.startswith("501 5.5.4")


def test_mail_parameters() -> None:
    assert mail("RET=full ENVID=Msg+2B1") == MailParameters("FULL", "Msg+1", False)
    assert mail("RET=HDRS") == MailParameters("HDRS", None, False)
    assert mail("REQUIRETLS") == MailParameters(None, None, True)
    assert mail("") == MailParameters()


@pytest.mark.parametrize(("text", "tls", "reply"), [
    ("RET=ALL", True, "501 5.5.4"),
    ("RET", True, "501 5.5.4"),
    ("ENVID=", True, "501 5.5.4"),
    ("ENVID=" + "x" * 101, True, "501 5.5.4"),
    ("ENVID=bad+zz", True, "501 5.5.4"),
    ("ENVID=a+00b", True, "501 5.5.4"),  # a NUL after decoding
    ("REQUIRETLS=yes", True, "501 5.5.4"),
    ("REQUIRETLS", False, "530 5.7.10"),  # RFC 8689: only over TLS
    ("NOTIFY=NEVER", True, "555 5.5.4"),  # a RCPT parameter
    ("ORCPT=rfc822;a@b.example", True, "555 5.5.4"),
])
def test_bad_mail_parameters(text: str, tls: bool, reply: str) -> None:
    with pytest.raises(ParameterError) as e:
        mail(text, tls)
    assert e.value.reply.startswith(reply)


def test_rcpt_parameters() -> None:
    assert rcpt("NOTIFY=never") == RcptParameters(frozenset({"NEVER"}), None)
    assert rcpt("NOTIFY=SUCCESS,delay ORCPT=RFC822;Bob+40x@B.example") == RcptParameters(
        frozenset({"SUCCESS", "DELAY"}), "rfc822;Bob@x@B.example")
    assert rcpt("ORCPT=rfc822;bob@b.example") == RcptParameters(frozenset(), "rfc822;bob@b.example")
    assert rcpt("") == RcptParameters()


@pytest.mark.parametrize(("text", "reply"), [
    ("NOTIFY=", "501 5.5.4"),
    ("NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
    ("NOTIFY=SUCCESS,SUCCESS", "501 5.5.4"),
    ("NOTIFY=ALWAYS", "501 5.5.4"),
    ("ORCPT=bob@b.example", "501 5.5.4"),  # no addr-type
    ("ORCPT=rfc822;", "501 5.5.4"),
    ("ORCPT=rfc 822;x", "501 5.5.4"),
    ("ORCPT=rfc822;" + "a" * 500, "501 5.5.4"),
    ("ORCPT=rfc822;a+0Db@c", "501 5.5.4"),  # a CR after decoding
    ("RET=FULL", "555 5.5.4"),  # a MAIL parameter
    ("REQUIRETLS", "555 5.5.4"),
])
def test_bad_rcpt_parameters(text: str, reply: str) -> None:
    with pytest.raises(ParameterError) as e:
        rcpt(text)
    assert e.value.reply.startswith(reply)


def test_xtext_round_trip() -> None:
    for text in ("plain", "a+b=c", "rfc822;bob@b.example", "sp ace\x7f"):
        assert xtext_decode(xtext_encode(text)) == text
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    with pytest.raises(ValueError):
        xtext_decode("a=b")
