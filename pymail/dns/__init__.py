"""DNS for pymail: one small async interface, one implementation over dnspython, one fake.

Everything in pymail that asks DNS a question (MX lookup for outbound mail, MTA-STS and
DANE, SPF/DKIM/DMARC checks, `pymail dns check`) goes through a `Resolver`:

* `DnsResolver` wraps ``dns.asyncresolver.Resolver``, configured by ``[dns]``: the
  configured ``nameservers`` and ``port`` only (``/etc/resolv.conf`` is never read then),
  or the system resolver when ``nameservers`` is empty.  Answers are cached by TTL.
* `FakeResolver` answers from a table of records, for unit tests (mox's spf/dns tests
  are the model): no sockets at all.

The answer model is the same for both (`Answer`): the records as plain Python values
(see `Answer.records`), the name the chain of CNAMEs ended at, and ``authenticated``, the
AD bit of the response: true only when a validating resolver vouched for the answer
(DNSSEC, RFC 4035 section 3.2.3; DANE needs it, RFC 7672 section 2.2).

Invariants:

* A name that does not exist (NXDOMAIN) and a name without records of the type
  (NODATA) are answers, not errors: ``Answer.exists`` tells them apart, ``records`` is
  empty for both.
* A failure to get an answer -- SERVFAIL, REFUSED, a timeout, no nameserver answering --
  is `DnsTemporaryError`, never an empty answer: callers turn it into "try again later"
  (a 4xx, a retry, SPF/DKIM ``temperror``), never into "no such record".
* Names are compared and returned in lower case without the trailing dot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pymail.dns.model import (
    Answer,
    DnsError,
    DnsTemporaryError,
    MxRecord,
    Resolver,
    SrvRecord,
    TlsaRecord,
    addresses,
    mx_records,
    txt_records,
)
from pymail.dns.fake import FakeResolver
from pymail.dns.resolver import DnsResolver

if TYPE_CHECKING:
    from pymail.config.schema import DnsConfig

__all__ = [
    "Answer",
    "DnsError",
    "DnsResolver",
    "DnsTemporaryError",
    "FakeResolver",
    "MxRecord",
    "Resolver",
    "SrvRecord",
    "TlsaRecord",
    "addresses",
    "mx_records",
    "resolver_from_config",
    "txt_records",
]


def resolver_from_config(config: "DnsConfig") -> DnsResolver:
    """The resolver ``[dns]`` describes."""
    return DnsResolver(config.nameservers or None, port=config.port, timeout=config.timeout)
