"""Every replica behind one DNS name, for ``dns+http://NAME:PORT`` report sources.

A Kubernetes headless Service (``clusterIP: None``) answers a query for its name with the
address of each of its pods, so one name stands for every replica of a Deployment. The
name is resolved with the system resolver (``socket.getaddrinfo``: ``/etc/hosts``, then
DNS), IPv4 and IPv6 alike; an address listed twice is one replica. Each address becomes an
admin URL on the same port and path.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shadowproxy.errors import StateError

DNS_SCHEME = "dns+http"


@dataclass(frozen=True)
class DnsSource:
    """A parsed ``dns+http://NAME:PORT[/PATH]`` source."""

    source: str
    host: str
    port: int
    path: str

    def replica_urls(self, addresses: list[str]) -> list[str]:
        """The admin base URL of every address, in the order given."""
        return [f"http://{_netloc(a, self.port)}{self.path}" for a in addresses]


def is_dns_source(source: str) -> bool:
    return source.startswith(DNS_SCHEME + "://")


def parse_dns_source(source: str) -> DnsSource:
    """Split a ``dns+http://`` source; StateError naming it when the host or port is missing.

    The port is required: it is the admin port of the pods, and a default (80) would look
    for them where they are not.
    """
    parts = urllib.parse.urlsplit(source)
    try:
        port = parts.port
    except ValueError as exc:
        raise StateError(f"{source}: the port is not a number from 1 to 65535") from exc
    if parts.scheme != DNS_SCHEME or not parts.hostname:
        raise StateError(f"{source}: expected {DNS_SCHEME}://NAME:PORT, e.g. a headless Service")
    if port is None:
        raise StateError(
            f"{source}: needs the admin port, e.g. {DNS_SCHEME}://{parts.hostname}:9090"
        )
    if parts.query or parts.fragment or parts.username:
        raise StateError(f"{source}: takes no user, query or fragment")
    return DnsSource(source, parts.hostname, port, parts.path.rstrip("/"))


def unique_addresses(infos: Iterable[tuple[Any, ...]]) -> list[str]:
    """The distinct IP addresses in ``getaddrinfo`` results, IPv4 first, each in order.

    Sorting makes the list, and so the order in which replicas are read and named in the
    report, the same whatever order the resolver answered in.
    """
    found = {ipaddress.ip_address(info[4][0]) for info in infos}
    return [str(a) for a in sorted(found, key=lambda a: (a.version, int(a)))]


def resolve(ds: DnsSource) -> list[str]:
    """Every address ``ds.host`` resolves to; StateError naming the source when none."""
    try:
        infos = socket.getaddrinfo(ds.host, ds.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise StateError(f"{ds.source}: {ds.host} resolves to no address: {exc}") from exc
    addresses = unique_addresses(infos)
    if not addresses:
        raise StateError(f"{ds.source}: {ds.host} resolves to no address")
    return addresses


def _netloc(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
