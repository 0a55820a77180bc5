"""The outbound address checker: which addresses are refused, what the allow-list admits,
and that a guarded httpx client connects only where the check allowed (real sockets)."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import httpx2
import pytest

from cluster import netguard
from cluster.errors import ConfigError, OutboundRefused
from cluster.netguard import AllowEntry, OutboundPolicy, address_problem, guarded_transport
from cluster.settings import load_settings

DEFAULT = OutboundPolicy()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("::7f00:1", "reserved"),  # IPv4-compatible 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def test_allow_entries_parse_networks_hosts_and_ports() -> None:
    assert AllowEntry.parse("10.0.0.0/8").network == ipaddress.ip_network("10.0.0.0/8")
    assert AllowEntry.parse("127.0.0.1:8000").port == 8000
    assert AllowEntry.parse("[::1]:8000") == AllowEntry(ipaddress.ip_network("::1/128"), None, 8000)
    assert AllowEntry.parse("::1").network == ipaddress.ip_network("::1/128")
    assert AllowEntry.parse("LLM.Internal:443") == AllowEntry(None, "llm.internal", 443)
    for bad in ("not a host", "1.2.3.4:0", "host:http", "[::1]x"):
        with pytest.raises(ValueError, match=r"port|CIDR|expected"):
            AllowEntry.parse(bad)


def test_allow_list_admits_only_what_it_names() -> None:
    loopback = [ipaddress.ip_address("127.0.0.1")]
    assert DEFAULT.problem("127.0.0.1", 80, loopback) is not None
    assert OutboundPolicy.from_entries(["127.0.0.1"]).problem("localhost", 80, loopback) is None
    port_bound = OutboundPolicy.from_entries(["127.0.0.1:8000"])
    assert port_bound.problem("127.0.0.1", 8000, loopback) is None
    assert port_bound.problem("127.0.0.1", 8001, loopback) is not None
    by_name = OutboundPolicy.from_entries(["*.svc.local"])
    assert by_name.problem("llm.svc.local", 80, loopback) is None
    assert by_name.problem("svc.local.evil", 80, loopback) is not None
    # an IPv4 entry covers that address in its IPv4-mapped IPv6 form too
    mapped = [ipaddress.ip_address("::ffff:127.0.0.1")]
    assert OutboundPolicy.from_entries(["127.0.0.0/8"]).problem("x", 80, mapped) is None


def test_a_platform_endpoint_is_trusted_on_its_host_and_port_only() -> None:
    loopback = [ipaddress.ip_address("127.0.0.1")]
    ollama = DEFAULT.trusting("http://localhost:11434/v1")
    assert ollama.problem("localhost", 11434, loopback) is None
    assert ollama.problem("localhost", 8265, loopback) is not None  # Ray's job API
    assert ollama.problem("127.0.0.1", 11434, loopback) is not None  # another name
    by_address = DEFAULT.trusting("http://[::1]:8000/v1")
    assert by_address.problem("::1", 8000, [ipaddress.ip_address("::1")]) is None
    assert DEFAULT.trusting("not a url") == DEFAULT


def test_every_address_of_a_name_is_checked() -> None:
    mixed = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.1")]
    problem = DEFAULT.problem("both.example", 443, mixed)
    assert problem is not None and "'both.example' resolves to 10.0.0.1" in problem


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",  # a name that resolves to loopback
        "http://[::ffff:127.0.0.1]:9/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "https://0.0.0.0/",
    ],
)
def test_urls_to_internal_addresses_are_refused(url: str) -> None:
    problem = DEFAULT.url_problem(url)
    assert problem is not None and "outbound_allow" in problem
    with pytest.raises(OutboundRefused, match=r"^webhook\.url: "):
        DEFAULT.check_url(url, "webhook.url")


def test_url_problems_of_form() -> None:
    assert "not an http(s) URL" in (DEFAULT.url_problem("file:///etc/passwd") or "")
    assert DEFAULT.url_problem("http://93.184.216.34/") is None
    # a name that does not resolve now passes here; its connections are checked
    assert DEFAULT.url_problem("http://no-such-host.invalid/") is None


def test_settings_read_the_allow_list_in_every_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAFNCK_OUTBOUND_ALLOW", "['127.0.0.1', '::1']")  # str(list)
    assert load_settings().outbound_allow == ["127.0.0.1", "::1"]
    monkeypatch.setenv("DAFNCK_OUTBOUND_ALLOW", '["10.0.0.0/8"]')
    assert load_settings().outbound_allow == ["10.0.0.0/8"]
    monkeypatch.setenv("DAFNCK_OUTBOUND_ALLOW", "10.0.0.0/8, [::1]:8000")
    assert load_settings().outbound_allow == ["10.0.0.0/8", "[::1]:8000"]
    monkeypatch.delenv("DAFNCK_OUTBOUND_ALLOW")
    assert load_settings(outbound_allow=[]).outbound_allow == []
    with pytest.raises(ConfigError, match=r"outbound_allow: .*'not a host'"):
        load_settings(outbound_allow=["not a host"])


# -- the guarded transport, on real sockets ---------------------------------------------------


class _Hits(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Hits.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[int]:
    """An HTTP server on a free port of 127.0.0.1 that records every request."""
    _Hits.hits = []
    server = HTTPServer(("127.0.0.1", 0), _Hits)
    # shutdown() waits for the loop's next poll: 0.5 s by default, on every test.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def _get(module: Any, policy: OutboundPolicy, url: str) -> int:
    async with module.AsyncClient(transport=guarded_transport(policy, module)) as client:
        return int((await client.get(url)).status_code)


@pytest.mark.parametrize("module", [httpx, httpx2])
def test_guarded_client_refuses_before_connecting(module: Any, listener: int) -> None:
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
        with pytest.raises(OutboundRefused, match="loopback"):
            asyncio.run(_get(module, DEFAULT, f"http://{host}:{listener}/x"))
    assert _Hits.hits == []


@pytest.mark.parametrize("module", [httpx, httpx2])
def test_guarded_client_reaches_an_allowed_address(module: Any, listener: int) -> None:
    allowed = OutboundPolicy.from_entries([f"127.0.0.1:{listener}"])
    assert asyncio.run(_get(module, allowed, f"http://127.0.0.1:{listener}/ok")) == 200
    assert _Hits.hits == ["/ok"]


def test_connection_goes_to_the_checked_address(
    listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once, by the check: the connection uses that answer (a resolver
    that answers differently the second time, as DNS rebinding does, is never asked)."""
    answers = iter([[ipaddress.ip_address("127.0.0.1")]])

    async def once(host: str, port: int) -> list[Any]:
        return next(answers)  # a second lookup would raise StopIteration

    monkeypatch.setattr(netguard, "resolve_async", once)
    allowed = OutboundPolicy.from_entries(["127.0.0.1"])
    assert asyncio.run(_get(httpx, allowed, f"http://rebind.invalid:{listener}/r")) == 200
    assert _Hits.hits == ["/r"]


def test_refusal_is_found_behind_wrapping_errors() -> None:
    refused = OutboundRefused("10.0.0.1 is a private address")
    try:
        try:
            raise refused
        except OutboundRefused as exc:
            raise RuntimeError("Connection error.") from exc
    except RuntimeError as wrapped:
        assert netguard.refused_in(wrapped) is refused
    assert netguard.refused_in(ExceptionGroup("g", [ValueError("x")])) is None
