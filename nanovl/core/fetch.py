"""Fetching image URLs safely: async HTTP(S) with timeouts, byte and redirect caps, and no way to a private network.

Every hop (the URL and each redirect) is checked the same way: scheme http/https, host on the domain
allow-list when there is one, and every address the host resolves to public (not loopback, private,
link-local / cloud metadata, shared, multicast or reserved) unless the operator allows private addresses.
The connection then goes to the address that was checked (the Host header and TLS SNI keep the name), so a
second DNS answer cannot swap in another address (DNS rebinding). Proxies from the environment are not used.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from .errors import ClientError

_REDIRECTS = (301, 302, 303, 307, 308)
# Content types servers use for images they do not label: the decoder decides.
_NEUTRAL_TYPES = ("application/octet-stream", "binary/octet-stream", "")


@dataclass(frozen=True)
class FetchSettings:
    allow_private: bool = False             # loopback / private / link-local addresses (tests, on-prem stores)
    allowed_domains: tuple[str, ...] = ()   # empty: any public host; else these hosts and their subdomains
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0            # longest wait for the next bytes
    total_timeout_s: float = 30.0           # whole fetch, redirects included (stops a slow drip)
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3


def _refuse(index: int, message: str, code: str) -> ClientError:
    return ClientError(f"image {index}: {message}", param="messages", code=code)


def address_refusal(address: str) -> str | None:
    """Why an address is not a public one, or None if it is."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "not a public address"
    return None


def domain_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return not allowed or any(host == d or host.endswith("." + d) for d in allowed)


async def resolve_checked(host: str, port: int, *, index: int, settings: FetchSettings) -> str:
    """The address to connect to; every address the name resolves to must pass, not only the first."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _refuse(index, f"cannot resolve {host!r} ({exc})", "image_fetch_failed") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not settings.allow_private:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise _refuse(index, f"{host} resolves to {reason}; image URLs must be public",
                              "image_url_forbidden")
    if not addresses:
        raise _refuse(index, f"cannot resolve {host!r}", "image_fetch_failed")
    return addresses[0]


def _check_url(url: str, *, index: int, settings: FetchSettings):
    try:
        parts = urlsplit(url)
    except ValueError:   # e.g. an unclosed IPv6 bracket
        raise _refuse(index, "the URL cannot be parsed", "invalid_image_url") from None
    if parts.scheme not in ("http", "https"):
        raise _refuse(index, f"URL scheme {parts.scheme!r} is not accepted: use https, http or a base64 data URL",
                      "invalid_image_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refuse(index, "the URL has an invalid port", "invalid_image_url") from None
    if not parts.hostname:
        raise _refuse(index, "the URL has no host", "invalid_image_url")
    if not domain_allowed(parts.hostname, settings.allowed_domains):
        raise _refuse(index, f"host {parts.hostname} is not on this server's image domain allow-list",
                      "image_url_forbidden")
    return parts, port


async def _get_pinned(client: httpx.AsyncClient, url: str, *, index: int, settings: FetchSettings):
    """Open a streamed GET to the checked address of `url`; the caller closes the response."""
    parts, port = _check_url(url, index=index, settings=settings)
    address = await resolve_checked(parts.hostname, port, index=index, settings=settings)
    try:
        target = httpx.URL(url).copy_with(host=address)
    except (ValueError, httpx.InvalidURL):   # a lone surrogate or a character httpx will not send
        raise _refuse(index, "the URL cannot be parsed", "invalid_image_url") from None
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    request = client.build_request("GET", target, headers={"Host": parts.netloc.rpartition("@")[2]},
                                   extensions=extensions)
    return await client.send(request, stream=True)


async def _read_capped(response: httpx.Response, *, index: int, settings: FetchSettings) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_bytes:
        raise _refuse(index, f"the URL serves {declared} bytes, more than {settings.max_bytes}", "image_too_large")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type.startswith("image/") and content_type not in _NEUTRAL_TYPES:
        raise _refuse(index, f"the URL serves {content_type}, not an image", "invalid_image")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > settings.max_bytes:
            raise _refuse(index, f"the URL serves more than {settings.max_bytes} bytes", "image_too_large")
    return bytes(body)


async def _fetch(client: httpx.AsyncClient, url: str, *, index: int, settings: FetchSettings) -> bytes:
    for _ in range(settings.max_redirects + 1):
        response = await _get_pinned(client, url, index=index, settings=settings)
        try:
            if response.status_code in _REDIRECTS and "location" in response.headers:
                url = urljoin(url, response.headers["location"])   # checked again on the next hop
                continue
            if response.status_code != 200:
                raise _refuse(index, f"fetching the URL failed: HTTP {response.status_code}", "image_fetch_failed")
            return await _read_capped(response, index=index, settings=settings)
        finally:
            await response.aclose()
    raise _refuse(index, f"more than {settings.max_redirects} redirects", "image_fetch_failed")


async def fetch_image(client: httpx.AsyncClient, url: str, *, index: int, settings: FetchSettings) -> bytes:
    """GET an image URL under every limit of `settings`; any failure is a ClientError naming the image."""
    try:
        return await asyncio.wait_for(_fetch(client, url, index=index, settings=settings), settings.total_timeout_s)
    except asyncio.TimeoutError:
        raise _refuse(index, f"fetching the URL took longer than {settings.total_timeout_s:g} s",
                      "image_fetch_timeout") from None
    except httpx.TimeoutException as exc:
        raise _refuse(index, f"fetching the URL timed out ({type(exc).__name__})", "image_fetch_timeout") from None
    except httpx.HTTPError as exc:
        raise _refuse(index, f"fetching the URL failed ({type(exc).__name__}: {exc})", "image_fetch_failed") from None


class Fetcher:
    """Owns an event loop in a background thread and one HTTP client; sync callers fetch many URLs at once.

    Triton calls execute() synchronously; a loop that lives as long as the model keeps the client's
    connection pool (and TLS sessions) across requests, which asyncio.run() per call would throw away.
    """

    def __init__(self, settings: FetchSettings = FetchSettings()):
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="image-fetch", daemon=True)
        self._thread.start()
        timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
        self._client = self._run(self._make_client(timeout))

    @staticmethod
    async def _make_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                 # identity: images are compressed already, and a compressed body could expand past the cap.
                                 headers={"User-Agent": "nanovl-image-fetch/1", "Accept": "image/*",
                                          "Accept-Encoding": "identity"})

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def fetch_many_async(self, urls: list[tuple[int, str]]) -> list[bytes | ClientError]:
        """(image index, url) pairs -> bytes or the ClientError of each, fetched concurrently, in order."""
        async def one(index: int, url: str):
            try:
                return await fetch_image(self._client, url, index=index, settings=self.settings)
            except ClientError as exc:
                return exc

        return list(await asyncio.gather(*(one(i, u) for i, u in urls)))

    def fetch_many(self, urls: list[tuple[int, str]]) -> list[bytes | ClientError]:
        return self._run(self.fetch_many_async(urls)) if urls else []

    def close(self) -> None:
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
