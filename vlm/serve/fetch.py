"""Fetch a client's `image_url` without letting the client reach what only the server can reach (SSRF).

Each hop's host is resolved here, every address it resolves to must be globally routable (unless the server
allows private addresses), and the connection goes to the address that was checked: no second DNS lookup a
rebinding name could answer differently. Redirects are followed here, at most `MAX_REDIRECTS`, each hop checked
again. Every failure is one `FetchError` whose detail is for the server log only: a client that learnt
"connection refused" from "403" could scan the server's network through it.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import httpx

MAX_REDIRECTS = 5
TIMEOUT_S = 10.0
REDIRECTS = (301, 302, 303, 307, 308)
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # embeds an IPv4 address the gateway connects to

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """The fetch failed; the message says why, for the server's log, never for the client."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: Address) -> bool:
    """Globally routable unicast: not loopback, private, link-local (169.254.169.254), CGNAT, multicast,
    reserved or unspecified, nor an IPv6 address wrapping one of those."""
    if isinstance(address, ipaddress.IPv6Address) and (inner := embedded_ipv4(address)) is not None:
        return is_public(inner)
    return address.is_global and not (address.is_multicast or address.is_private or address.is_loopback
                                      or address.is_link_local or address.is_reserved or address.is_unspecified)


def resolve(host: str, port: int, allow_private: bool) -> Address:
    """The address to connect to; every address the host resolves to must be allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise FetchError(f"cannot resolve {host!r}: {e}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise FetchError(f"{host!r} resolves to no address")
    refused = [str(a) for a in addresses if not (allow_private or is_public(a))]
    if refused:
        raise FetchError(f"{host!r} resolves to {', '.join(refused)}, not a public address")
    return addresses[0]


def pinned_request(client: httpx.Client, url: httpx.URL, allow_private: bool) -> httpx.Request:
    """A GET of `url` sent to the address checked here; the Host header and the TLS name stay the URL's."""
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise FetchError(f"{url.scheme!r} URL: only http and https are fetched")
    if url.userinfo:
        raise FetchError("URL with credentials")
    host = url.raw_host.decode("ascii")  # IDNA-encoded
    port = url.port or (443 if url.scheme == "https" else 80)
    address = resolve(host, port, allow_private)
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    return client.build_request("GET", url.copy_with(host=str(address), port=port),
                                headers={"Host": url.netloc.decode("ascii")}, extensions=extensions)


def fetch(url: str, max_bytes: int, allow_private: bool = False, timeout: float = TIMEOUT_S) -> bytes:
    """The body of `url` after at most MAX_REDIRECTS redirects, at most `max_bytes`; FetchError otherwise.

    One client per hop: a pooled connection made for one host name is never reused for another."""
    deadline = time.monotonic() + timeout
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise FetchError(f"bad URL: {e}") from None
    for _ in range(MAX_REDIRECTS + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"{url}: not fetched within {timeout} s")
        with httpx.Client(timeout=remaining, follow_redirects=False, trust_env=False) as client:
            request = pinned_request(client, current, allow_private)
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as e:
                raise FetchError(f"{current}: {type(e).__name__}: {e}") from None
            try:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    current = next_hop(current, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise FetchError(f"{current}: HTTP {response.status_code}")
                return read_body(response, max_bytes, deadline, current)
            finally:
                response.close()
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def next_hop(current: httpx.URL, location: str) -> httpx.URL:
    try:
        return current.join(location)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise FetchError(f"{current}: bad redirect {location!r}: {e}") from None


def read_body(response: httpx.Response, max_bytes: int, deadline: float, url: httpx.URL) -> bytes:
    """The body, refused as soon as it passes `max_bytes` or the deadline (a server dripping bytes)."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"{url}: Content-Length {length} is over {max_bytes} bytes")
    chunks, size = [], 0
    try:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"{url}: body over {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchError(f"{url}: body not read within the time limit")
            chunks.append(chunk)
    except httpx.HTTPError as e:
        raise FetchError(f"{url}: {type(e).__name__}: {e}") from None
    return b"".join(chunks)
