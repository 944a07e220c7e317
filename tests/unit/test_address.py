"""Tables for pymail.mail.address: envelope paths and RFC 5321 mailboxes, valid and malformed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymail.mail.address import AddressError, Mailbox, parse_mailbox, split_path, split_route

LOCAL_64 = "a" * 64
LABEL_63 = "b" * 63
DOMAIN_255 = ".".join([LABEL_63] * 3 + ["c" * 63])  # 63*4 + 3 dots = 255


# --- split_path ------------------------------------------------------------------------------

SPLIT_PATH_OK = [
    # (argument after "MAIL FROM:", path, rest)
    ("<user@example.com>", "user@example.com", ""),
    (" <user@example.com>", "user@example.com", ""),
    ("<>", "", ""),
    ("<> SIZE=100", "", "SIZE=100"),
    ("<user@example.com> SIZE=1000 BODY=8BITMIME", "user@example.com", "SIZE=1000 BODY=8BITMIME"),
    ("<user@example.com>   SMTPUTF8  ", "user@example.com", "SMTPUTF8"),
    ("<user@example.com>\tSIZE=5", "user@example.com", "SIZE=5"),
    ("<@a.example:user@c.example>", "@a.example:user@c.example", ""),
    ("<@a.example,@b.example:user@c.example>", "@a.example,@b.example:user@c.example", ""),
    ("user@example.com", "user@example.com", ""),
    ("user@example.com SIZE=10", "user@example.com", "SIZE=10"),
    ('<"a>b"@example.com>', '"a>b"@example.com', ""),
    ('<"a<b"@example.com>', '"a<b"@example.com', ""),
    ('<"john doe"@example.com> SIZE=1', '"john doe"@example.com', "SIZE=1"),
    ('"john doe"@example.com SIZE=1', '"john doe"@example.com', "SIZE=1"),
    ('<"a\\"b"@example.com>', '"a\\"b"@example.com', ""),
    ("<jörg@bücher.example>", "jörg@bücher.example", ""),
    ("< user@example.com >", " user@example.com ", ""),  # parse_mailbox refuses the spaces
]


@pytest.mark.parametrize(("text", "path", "rest"), SPLIT_PATH_OK)
def test_split_path_ok(text: str, path: str, rest: str) -> None:
    assert split_path(text) == (path, rest)


SPLIT_PATH_BAD = [
    "",
    "   ",
    "<",
    "<user@example.com",
    "<<a@b>>",
    "<a@b>>",
    "<a@<b>",
    "<a@b>SIZE=10",
    "a@b>",
    "a<b@c",
    '<"unterminated@example.com>',
    '"unterminated@example.com',
    '<"a\\">',
    "<a@b\x00>",
    "<a@b>\x00",
    "<a@b\r\n>",
    "<a@b>\r\nRCPT TO:<c@d>",
    "<a@b\n>",
    "<a@b\r>",
]


@pytest.mark.parametrize("text", SPLIT_PATH_BAD)
def test_split_path_bad(text: str) -> None:
    with pytest.raises(AddressError):
        split_path(text)


# --- split_route -----------------------------------------------------------------------------

SPLIT_ROUTE_OK = [
    ("user@c.example", (), "user@c.example"),
    ("", (), ""),
    ("@a.example:user@c.example", ("@a.example",), "user@c.example"),
    ("@a.example,@b.example:user@c.example", ("@a.example", "@b.example"), "user@c.example"),
    ('@a.example:"x y"@c.example', ("@a.example",), '"x y"@c.example'),
]


@pytest.mark.parametrize(("path", "route", "mailbox"), SPLIT_ROUTE_OK)
def test_split_route_ok(path: str, route: tuple[str, ...], mailbox: str) -> None:
    assert split_route(path) == (route, mailbox)


@pytest.mark.parametrize(
    "path",
    ["@a.example", "@a.example,b.example:u@c.example", "@:u@c.example", "@a..example:u@c.example", "@a.example,:u@c"],
)
def test_split_route_bad(path: str) -> None:
    with pytest.raises(AddressError):
        split_route(path)


# --- parse_mailbox ---------------------------------------------------------------------------

PARSE_OK = [
    # (text, local_part, domain, quoted, is_literal, canonical address)
    ("user@example.com", "user", "example.com", False, False, "user@example.com"),
    ("User.Name@Example.COM", "User.Name", "example.com", False, False, "User.Name@example.com"),
    ("a+tag@example.com", "a+tag", "example.com", False, False, "a+tag@example.com"),
    ("a%b@example.com", "a%b", "example.com", False, False, "a%b@example.com"),
    ("a!b@example.com", "a!b", "example.com", False, False, "a!b@example.com"),
    ("!#$%&'*+-/=?^_`{|}~@example.com", "!#$%&'*+-/=?^_`{|}~", "example.com", False, False,
     "!#$%&'*+-/=?^_`{|}~@example.com"),
    ("postmaster@localhost", "postmaster", "localhost", False, False, "postmaster@localhost"),
    ("x@123.example", "x", "123.example", False, False, "x@123.example"),
    ("x@a-b.example", "x", "a-b.example", False, False, "x@a-b.example"),
    ('"john doe"@example.com', "john doe", "example.com", True, False, '"john doe"@example.com'),
    ('"john"@example.com', "john", "example.com", True, False, "john@example.com"),
    ('"a\\"b"@example.com', 'a"b', "example.com", True, False, '"a\\"b"@example.com'),
    ('"a\\\\b"@example.com', "a\\b", "example.com", True, False, '"a\\\\b"@example.com'),
    ('"a\\b"@example.com', "ab", "example.com", True, False, "ab@example.com"),
    ('"a@b"@example.com', "a@b", "example.com", True, False, '"a@b"@example.com'),
    ('"a..b"@example.com', "a..b", "example.com", True, False, '"a..b"@example.com'),
    ('".a"@example.com', ".a", "example.com", True, False, '".a"@example.com'),
    ('"a,b"@example.com', "a,b", "example.com", True, False, '"a,b"@example.com'),
    ("u@[127.0.0.1]", "u", "[127.0.0.1]", False, True, "u@[127.0.0.1]"),
    ("u@[IPv6:::1]", "u", "[ipv6:::1]", False, True, "u@[ipv6:::1]"),
    ("u@[IPv6:2001:DB8::1]", "u", "[ipv6:2001:db8::1]", False, True, "u@[ipv6:2001:db8::1]"),
    ("u@[IPv6:::ffff:192.0.2.1]", "u", "[ipv6:::ffff:192.0.2.1]", False, True, "u@[ipv6:::ffff:192.0.2.1]"),
    # RFC 6531 SMTPUTF8: UTF-8 local part, U-label domains become A-labels.
    ("jörg@example.com", "jörg", "example.com", False, False, "jörg@example.com"),
    ("用户@例子.广告", "用户", "xn--fsqu00a.xn--4rr70v", False, False, "用户@xn--fsqu00a.xn--4rr70v"),
    ("jörg@Bücher.Example", "jörg", "xn--bcher-kva.example", False, False, "jörg@xn--bcher-kva.example"),
    ("x@xn--bcher-kva.example", "x", "xn--bcher-kva.example", False, False, "x@xn--bcher-kva.example"),
    ('"jö rg"@example.com', "jö rg", "example.com", True, False, '"jö rg"@example.com'),
    # Size limits exactly at the edge are fine.
    (f"{LOCAL_64}@example.com", LOCAL_64, "example.com", False, False, f"{LOCAL_64}@example.com"),
    (f"u@{LABEL_63}.example", "u", f"{LABEL_63}.example", False, False, f"u@{LABEL_63}.example"),
    (f"u@{DOMAIN_255}", "u", DOMAIN_255, False, False, f"u@{DOMAIN_255}"),
]


@pytest.mark.parametrize(("text", "local_part", "domain", "quoted", "is_literal", "address"), PARSE_OK)
def test_parse_mailbox_ok(text: str, local_part: str, domain: str, quoted: bool, is_literal: bool, address: str) -> None:
    mailbox = parse_mailbox(text)
    assert mailbox == Mailbox(local_part=local_part, domain=domain, quoted=quoted, is_literal=is_literal)
    assert mailbox.address == address
    # The canonical form parses back to the same mailbox.
    again = parse_mailbox(mailbox.address)
    assert (again.local_part, again.domain, again.address) == (local_part, domain, address)


PARSE_BAD = [
    ("", "missing address"),
    ("user", "missing @"),
    ("user@", "missing domain"),
    ("@example.com", "empty local part"),
    ('""@example.com', "empty local part"),
    ("a@b@example.com", "too many @"),
    ("a b@example.com", "bad local part"),
    (" a@example.com", "bad local part"),
    ("a@example.com ", "bad domain"),
    (".a@example.com", "bad local part"),
    ("a.@example.com", "bad local part"),
    ("a..b@example.com", "bad local part"),
    ("a(b)@example.com", "bad local part"),
    ("a[b]@example.com", "bad local part"),
    ("a,b@example.com", "bad local part"),
    ("a\\b@example.com", "bad local part"),
    ('a"b"@example.com', "bad local part"),
    ('"unterminated@example.com', "unterminated quoted string"),
    ('"a"b@example.com', "bad local part"),
    ('"a"', "missing @"),
    ('"a\tb"@example.com', "control character in address"),
    ('"a\\\x01"@example.com', "control character in address"),
    ("a\x00b@example.com", "control character in address"),
    ("a@exa\x00mple.com", "control character in address"),
    ("a\r\n@example.com", "control character in address"),
    ("a@example.com\r\n", "control character in address"),
    ("a\x7f@example.com", "control character in address"),
    ("a\x85@example.com", "control character in address"),
    ("a\udcff@example.com", "control character in address"),
    ("a\u00a0b@example.com", "bad local part"),
    (f"{LOCAL_64}a@example.com", "local part too long"),
    (f'"{"a" * 63}"@example.com', "local part too long"),
    ("ö" * 33 + "@example.com", "local part too long"),
    (f"u@{'b' * 64}.example", "domain label too long"),
    (f"u@{DOMAIN_255}d", "domain too long"),
    (f"u@a.{DOMAIN_255}", "domain too long"),
    ("u@-example.com", "bad domain"),
    ("u@example-.com", "bad domain"),
    ("u@exa_mple.com", "bad domain"),
    ("u@example..com", "bad domain"),
    ("u@.example.com", "bad domain"),
    ("u@example.com.", "bad domain"),
    ("u@exa mple.com", "bad domain"),
    ("u@ex!ample.com", "bad domain"),
    ("u@bü cher.example", "bad domain"),
    ("u@" + "ü" * 70 + ".example", "bad domain"),
    ("u@[127.0.0.1", "bad address literal"),
    ("u@[]", "bad address literal"),
    ("u@[1.2.3]", "bad address literal"),
    ("u@[1.2.3.256]", "bad address literal"),
    ("u@[01.2.3.4]", "bad address literal"),
    ("u@[::1]", "bad address literal"),
    ("u@[IPv6:1.2.3.4]", "bad address literal"),
    ("u@[IPv6:::1%eth0]", "bad address literal"),
    ("u@[IPv6:12345::]", "bad address literal"),
    ("u@[x-tag:stuff]", "bad address literal"),
    ("u@[127.0.0.1]x", "bad address literal"),
    ("u@[١٢٧.0.0.1]", "bad address literal"),
    ("<u@example.com>", "bad local part"),
]


@pytest.mark.parametrize(("text", "message"), PARSE_BAD)
def test_parse_mailbox_bad(text: str, message: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_mailbox(text)
    assert str(caught.value) == message


def test_error_is_a_value_error() -> None:
    assert issubclass(AddressError, ValueError)


def test_mailbox_is_frozen() -> None:
    mailbox = parse_mailbox("a@example.com")
    with pytest.raises(AttributeError):
        mailbox.domain = "evil.example"  # type: ignore[misc]


# --- the three steps together, as the SMTP server uses them --------------------------------

PIPELINE = [
    ("<>", ((), None, "")),
    ("<@a.example,@b.example:User@C.Example> NOTIFY=NEVER", (("@a.example", "@b.example"), "User@c.example", "NOTIFY=NEVER")),
    ("user@example.com SIZE=10", ((), "user@example.com", "SIZE=10")),
    ('<"a@b"@example.com>', ((), '"a@b"@example.com', "")),
]


@pytest.mark.parametrize(("text", "expected"), PIPELINE)
def test_pipeline(text: str, expected: tuple[tuple[str, ...], str | None, str]) -> None:
    path, rest = split_path(text)
    route, mailbox_text = split_route(path)
    address = parse_mailbox(mailbox_text).address if mailbox_text else None
    assert (route, address, rest) == expected


# --- fuzz: nothing but AddressError ever escapes ---------------------------------------------

_ADDRESSY = st.lists(
    st.sampled_from(list('aZ09.@<>"\\[]:,; \t\r\n\x00-_%!éü用') + ["IPv6:", "::1", "127.0.0.1", "xn--", "ß"])
).map("".join)


def _only_address_errors(text: str) -> None:
    for function in (split_path, parse_mailbox, split_route):
        try:
            function(text)
        except AddressError:
            pass
    try:
        path, _ = split_path(text)
        _, mailbox_text = split_route(path)
        mailbox = parse_mailbox(mailbox_text)
    except AddressError:
        return
    again = parse_mailbox(mailbox.address)
    assert (again.local_part, again.domain) == (mailbox.local_part, mailbox.domain)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    _only_address_errors(text)


@settings(max_examples=1000, deadline=None)
@given(_ADDRESSY)
def test_fuzz_address_like_text(text: str) -> None:
    _only_address_errors(text)
