"""`FakeResolver`: a `Resolver` that answers from a table, for unit tests.

    resolver = FakeResolver({
        "example.test MX": [MxRecord(10, "mail.example.test")],
        "mail.example.test A": ["127.0.0.2"],
        "example.test TXT": [b"v=spf1 mx -all"],
        "broken.test MX": FakeResolver.SERVFAIL,
    }, authenticated={"mail.example.test A"})

Keys are ``"name TYPE"``.  A name that appears under no type is NXDOMAIN; a name known
under other types answers NODATA (no records).  `SERVFAIL` and `TIMEOUT` raise
`DnsTemporaryError`.  CNAMEs are followed (``"www.test CNAME": ["example.test"]``).
``queries`` records every question asked, in order, so a test can assert on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pymail.dns.model import SUPPORTED_TYPES, Answer, DnsError, DnsTemporaryError, normalise_name

__all__ = ["FakeResolver"]

MAX_CNAME_CHAIN = 8


class _Failure:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"FakeResolver.{self.reason}"


class FakeResolver:
    SERVFAIL = _Failure("SERVFAIL")
    TIMEOUT = _Failure("TIMEOUT")

    def __init__(self, records: Mapping[str, Any] | None = None, *,
                 authenticated: Iterable[str] = ()) -> None:
        self.records: dict[tuple[str, str], Any] = {}
        for key, value in (records or {}).items():
            self.add(key, value)
        self.authenticated = {self._key(k) for k in authenticated}
        self.queries: list[tuple[str, str]] = []

    @staticmethod
    def _key(key: str) -> tuple[str, str]:
        name, _, rdtype = key.strip().rpartition(" ")
        rdtype = rdtype.upper()
        if rdtype not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported record type in {key!r}")
        return normalise_name(name), rdtype

    def add(self, key: str, value: Any) -> None:
        """Set the records (a list, or SERVFAIL/TIMEOUT) of ``"name TYPE"``."""
        self.records[self._key(key)] = value if isinstance(value, _Failure) else list(value)

    async def query(self, name: str, rdtype: str) -> Answer:
        rdtype = rdtype.upper()
        if rdtype not in SUPPORTED_TYPES:
            raise DnsError(f"unsupported record type {rdtype}")
        qname = current = normalise_name(name)
        self.queries.append((qname, rdtype))
        authenticated = True
        for _ in range(MAX_CNAME_CHAIN):
            value = self.records.get((current, rdtype))
            if value is None and rdtype != "CNAME":
                alias = self.records.get((current, "CNAME"))
                if isinstance(alias, list) and alias:
                    authenticated = authenticated and (current, "CNAME") in self.authenticated
                    current = normalise_name(alias[0])
                    continue
            break
        else:
            raise DnsTemporaryError(f"{qname}/{rdtype}: CNAME chain too long")
        if isinstance(value, _Failure):
            raise DnsTemporaryError(f"{qname}/{rdtype}: {value.reason}")
        authenticated = authenticated and (current, rdtype) in self.authenticated
        if value is None:
            exists = any(n == current for n, _ in self.records)
            return Answer(qname, rdtype, (), exists=exists, authenticated=authenticated,
                          canonical_name=current)
        return Answer(qname, rdtype, tuple(value), exists=True, authenticated=authenticated,
                      canonical_name=current)
