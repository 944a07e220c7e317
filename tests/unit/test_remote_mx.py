"""`pymail.delivery.remote.mx.plan_route` over the fake resolver: MX order and shuffling
(RFC 5321 5.1), the implicit MX, null MX (RFC 7505), NXDOMAIN, DNS failures, and the
configured next hops (relay_host, a domain's smtp:[host]:port transport)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from pymail.config import load_config
from pymail.delivery.remote.mx import MAX_MX_HOSTS, Hop, plan_route
from pymail.dns.fake import FakeResolver
from pymail.dns.model import MxRecord


def cfg(tmp_path: Path, extra: str = ""):
    path = tmp_path / "pymail.toml"
    path.write_text(f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n' + extra)
    return load_config(path)


def plan(resolver, config, domain="example.org", route="mx", seed=1):
    return asyncio.run(plan_route(resolver, config, domain, route, rng=random.Random(seed)))


def test_preference_order_with_equal_preferences_shuffled(tmp_path: Path) -> None:
    resolver = FakeResolver({"example.org MX": [MxRecord(20, "c.example.org"), MxRecord(10, "a.example.org"),
                                                MxRecord(10, "b.example.org"), MxRecord(30, "a.example.org")]})
    orders = {tuple(h.name for h in plan(resolver, cfg(tmp_path), seed=s).hops) for s in range(20)}
    assert orders == {("a.example.org", "b.example.org", "c.example.org"),
                      ("b.example.org", "a.example.org", "c.example.org")}


def test_at_most_max_hosts_and_the_ad_bit_is_kept(tmp_path: Path) -> None:
    records = [MxRecord(i, f"mx{i}.example.org") for i in range(10)]
    resolver = FakeResolver({"example.org MX": records}, authenticated={"example.org MX"})
    hops = plan(resolver, cfg(tmp_path)).hops
    assert [h.name for h in hops] == [f"mx{i}.example.org" for i in range(MAX_MX_HOSTS)]
    assert all(h.authenticated and h.mx and h.port == 25 for h in hops)


def test_no_mx_is_the_implicit_mx_and_null_mx_or_nxdomain_is_permanent(tmp_path: Path) -> None:
    resolver = FakeResolver({"example.org A": ["192.0.2.1"], "nomail.org MX": [MxRecord(0, "")]})
    assert plan(resolver, cfg(tmp_path)).hops == (Hop("example.org"),)
    null = plan(resolver, cfg(tmp_path), "nomail.org")
    assert null.hops == () and null.failure is not None and null.failure[:2] == (556, "5.1.10")
    assert null.failure[3] is True
    missing = plan(resolver, cfg(tmp_path), "missing.org")
    assert missing.failure is not None and missing.failure[1] == "5.1.2" and missing.failure[3]


def test_a_dns_failure_is_temporary(tmp_path: Path) -> None:
    resolver = FakeResolver({"example.org MX": FakeResolver.SERVFAIL})
    failure = plan(resolver, cfg(tmp_path)).failure
    assert failure is not None and failure[1] == "4.4.3" and failure[3] is False


def test_relay_host_and_transport_routes_skip_the_mx_lookup(tmp_path: Path) -> None:
    resolver = FakeResolver({})
    relay = plan(resolver, cfg(tmp_path, '[delivery]\nrelay_host = "smtp.isp.example:587"\n'),
                 route="relay")
    assert relay.hops == (Hop("smtp.isp.example", 587, mx=False, relay=True),)
    transport = plan(resolver, cfg(tmp_path), route="smtp:10.0.0.5:2525")
    assert transport.hops == (Hop("10.0.0.5", 2525, mx=False),) and transport.hops[0].is_address
    assert resolver.queries == []
    # queued for a relay that has since been removed from the config: the domain's MX
    resolver.add("example.org MX", [MxRecord(10, "mx.example.org")])
    assert plan(resolver, cfg(tmp_path), route="relay").hops == (Hop("mx.example.org"),)
