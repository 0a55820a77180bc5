"""Outbound calls to addresses a tenant names reach public addresses only.

A webhook URL, an LLM spec's `base_url`, an MCP server's `url` and a remote A2A agent's
`url` come from tenants; left alone, each could reach the cluster's own services (Redis,
Ray's job API, the metadata server of the cloud). Every such call is checked twice:

- when the URL is given (`url_problem`: the host is resolved and every address checked),
  so a bad spec is refused with 422 naming its field;
- when a connection is made (`guarded_transport`: an httpx transport whose network backend
  resolves the host, checks every address and connects to a checked one), so a name that
  resolves elsewhere later (DNS rebinding) or a redirect gains nothing.

Refused unless `outbound_allow` names them: loopback, private (RFC 1918, unique-local),
link-local, multicast, unspecified, reserved and shared (100.64/10) addresses, the cloud
metadata addresses (169.254.169.254, fd00:ec2::254, ...), and IPv6 forms that embed any of
those (IPv4-mapped `::ffff:a.b.c.d`, 6to4). `outbound_allow` entries are CIDRs or addresses
(`10.0.0.0/8`, `127.0.0.1`, `::1`) or host names (`localhost`, `*.svc.cluster.local`),
each optionally with a port (`127.0.0.1:8000`, `[::1]:8000`, `llm.internal:443`). A host
name entry trusts what the name resolves to; an address entry allows that address whatever
name led to it. This process's policy, read from its settings, is
`cluster.outbound.outbound_policy`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode

from cluster.errors import OutboundRefused

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud metadata and platform services some clouds serve on otherwise unremarkable addresses.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
    )
)
_HOST = re.compile(
    r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)
_SCHEMES = ("http", "https")


def address_problem(address: IPAddress) -> str | None:
    """Why `address` is not a public one (`"loopback"`, `"cloud metadata"`, ...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return address_problem(embedded)
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%")[0])
    checks = (
        (address in METADATA, "cloud metadata"),
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "non-public"),
    )
    return next((why for bad, why in checks if bad), None)


@dataclass(frozen=True)
class AllowEntry:
    """One `outbound_allow` entry: a network or a host name (`*.` for its subdomains),
    with an optional port."""

    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """Raises: ValueError naming the entry and the forms it may take."""
        raw = text.strip().lower()
        where, port = _split_port(raw)
        try:
            return cls(network=ipaddress.ip_network(where, strict=False), port=port)
        except ValueError:
            pass
        if not _HOST.match(where):
            raise ValueError(
                f"{text!r} is not a CIDR, an address or a host name (each optionally with "
                "':port'; an IPv6 address with a port in brackets: '[::1]:8000')"
            )
        return cls(host=where.rstrip("."), port=port)

    def allows(self, host: str, address: IPAddress | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            name = host.lower().rstrip(".")
            if self.host.startswith("*."):
                return name.endswith(self.host[1:])
            return name == self.host
        if address is None or self.network is None:
            return False
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            candidates.append(address.ipv4_mapped)
        return any(a.version == self.network.version and a in self.network for a in candidates)


def _split_port(raw: str) -> tuple[str, int | None]:
    """`[v6]:port`, `v4:port`, `host:port` or no port at all. Raises: ValueError."""
    if raw.startswith("["):
        inside, _, rest = raw[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{raw!r}: expected '[address]:port'")
        return inside, _port(raw, rest[1:]) if rest else None
    if raw.count(":") == 1:
        where, _, port = raw.partition(":")
        return where, _port(raw, port)
    return raw, None


def _port(raw: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{raw!r}: the port must be a number within 1..65535")
    return int(text)


@dataclass(frozen=True)
class OutboundPolicy:
    """The platform's `outbound_allow`, as one value every outbound check consults."""

    allow: tuple[AllowEntry, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> OutboundPolicy:
        """Raises: ValueError naming every entry that does not parse."""
        parsed, problems = [], []
        for entry in entries:
            try:
                parsed.append(AllowEntry.parse(entry))
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return cls(tuple(parsed))

    def trusting(self, url: str) -> OutboundPolicy:
        """This policy, and `url`'s host and port too: for an endpoint the platform's own
        configuration names (an operator's `OPENAI_BASE_URL`), never one a tenant gave."""
        parts = _parse(url)
        if isinstance(parts, str):
            return self
        host, port = parts
        name = host.strip("[]").lower()
        entry = AllowEntry(host=name, port=port)
        if _literal(name) is not None:
            entry = AllowEntry(network=ipaddress.ip_network(name), port=port)
        return OutboundPolicy((*self.allow, entry))

    def problem(self, host: str, port: int, addresses: Sequence[IPAddress]) -> str | None:
        """Why a connection to `host` (resolved to `addresses`) is refused, or None."""
        if any(e.host is not None and e.allows(host, None, port) for e in self.allow):
            return None
        for address in addresses:
            why = address_problem(address)
            if why and not any(e.allows(host, address, port) for e in self.allow):
                named = "" if _literal(host) == address else f"{host!r} resolves to "
                return f"{named}{address} is a {why} address; the platform's outbound_allow does not name it"
        return None

    def url_problem(self, url: str) -> str | None:
        """Why calls to `url` are refused (its scheme, or an address its host resolves to),
        or None. A host that does not resolve now passes: its connections are checked."""
        parts = _parse(url)
        if isinstance(parts, str):
            return parts
        host, port = parts
        try:
            addresses = resolve(host, port)
        except OSError:
            return None
        return self.problem(host, port, addresses)

    def check_url(self, url: str, field: str) -> None:
        """Raises: OutboundRefused naming `field` when `url_problem` finds one."""
        problem = self.url_problem(url)
        if problem:
            raise OutboundRefused(f"{field}: {problem}")


def _parse(url: str) -> tuple[str, int] | str:
    """(host, port) of an http(s) URL, or the problem with it."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return f"{url!r} is not a URL"
    if parsed.scheme not in _SCHEMES or not parsed.host:
        return f"{url!r} is not an http(s) URL with a host"
    return parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (blocking). Raises: OSError (it does not resolve)."""
    return _addresses(socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM))


async def resolve_async(host: str, port: int) -> list[IPAddress]:
    """`resolve` without blocking the event loop. Raises: OSError."""
    import anyio

    infos = await anyio.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    return _addresses(infos)


class GuardedBackend:
    """An httpcore network backend that checks each connection's addresses first.

    The host is resolved once; the connection goes to one of the checked addresses (TLS
    still verifies the URL's host name), so a second lookup cannot answer differently.
    """

    def __init__(self, inner: Any, policy: OutboundPolicy) -> None:
        self._inner = inner
        self.policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        """Raises: OutboundRefused; the inner backend's errors."""
        import anyio

        with anyio.fail_after(timeout):
            addresses = await resolve_async(host, port)
        problem = self.policy.problem(host, port, addresses)
        if problem:
            raise OutboundRefused(problem)
        last: BaseException | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except Exception as exc:  # try the next address, as a resolver-aware connect does
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, *args: Any, **kwargs: Any) -> Any:
        raise OutboundRefused(f"unix socket {path!r}: outbound calls use TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(policy: OutboundPolicy, module: ModuleType | None = None) -> Any:
    """An `AsyncHTTPTransport` of `module` (`httpx` by default; the LLM and MCP SDKs use
    `httpx2`) whose connections `policy` checks. It never goes through a proxy from the
    environment (a client given a transport ignores them), so every connection is direct."""
    if module is None:
        import httpx

        module = httpx
    transport = module.AsyncHTTPTransport(trust_env=False)
    pool = transport._pool
    pool._network_backend = GuardedBackend(pool._network_backend, policy)
    return transport


def refused_in(exc: BaseException | None) -> OutboundRefused | None:
    """The `OutboundRefused` behind `exc` (SDKs wrap it as their connection error), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OutboundRefused):
            return exc
        seen.add(id(exc))
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        else:
            exc = exc.__cause__ or exc.__context__
    return None


def split_entries(value: Any) -> Any:
    """A list from JSON, a Python-style list (`str(list)`, as settings reach API replicas in
    variables) or comma-separated text; anything else is left for validation to refuse."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    for candidate in (text, text.replace("'", '"')):
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, list):
            return parsed
    return [part.strip() for part in text.split(",") if part.strip()]


def _valid(entries: list[str]) -> list[str]:
    OutboundPolicy.from_entries(entries)  # ValueError naming every bad entry
    return entries


#: The settings field: entries checked when settings load; read from the environment as a
#: JSON list or comma-separated (`DAFNCK_OUTBOUND_ALLOW=127.0.0.1,10.0.0.0/8`).
OutboundAllow = Annotated[
    list[str], NoDecode, BeforeValidator(split_entries), AfterValidator(_valid)
]


__all__ = [
    "METADATA",
    "AllowEntry",
    "GuardedBackend",
    "OutboundAllow",
    "OutboundPolicy",
    "address_problem",
    "guarded_transport",
    "refused_in",
    "resolve",
    "resolve_async",
    "split_entries",
]
