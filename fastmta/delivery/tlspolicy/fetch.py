"""The HTTPS fetch of a domain's MTA-STS policy file (RFC 8461 §3.3): verified, no redirects, bounded in time and size."""

from __future__ import annotations

import asyncio
import ssl

import httpx

from fastmta.delivery.mx import DnsFailure, MxResolver
from fastmta.delivery.tlspolicy.mta_sts import PolicyError, StsPolicy, parse_policy

# RFC 8461 §3.3 lets senders refuse larger policies; real ones are a few hundred bytes.
MAX_POLICY_BYTES = 64 * 1024
WELL_KNOWN = "/.well-known/mta-sts.txt"


class FetchFailed(Exception):
    """No valid policy could be fetched; the message says why."""


class PolicyFetcher:
    """Fetches https://mta-sts.<domain>/.well-known/mta-sts.txt.

    The policy host is resolved with delivery's own resolver (as MX hosts are, unless a signed MX
    RRset names them for DANE) and reached at that address, with its name in SNI and Host: the
    certificate is verified for the name. No proxy from the environment is used, so the name is
    never resolved by anyone else.

    No connection is kept for a later fetch: the pool knows a connection by scheme, address and
    port only, so one verified for mta-sts.a.example would carry b.example's fetch from the same
    address without b.example's certificate ever being checked. Each fetch makes its own handshake.
    """

    def __init__(self, resolver: MxResolver, context: ssl.SSLContext, timeout: float) -> None:
        self._resolver = resolver
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            verify=context, timeout=timeout, follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def __call__(self, domain: str) -> StsPolicy:
        host = f"mta-sts.{domain}"
        try:
            addresses = await self._resolver.addresses(host)
        except DnsFailure as failure:
            raise FetchFailed(str(failure)) from None
        if not addresses:
            raise FetchFailed(f"{host}: no address")
        problems = []
        for address in addresses:
            try:
                async with asyncio.timeout(self._timeout):
                    text = await self._get(host, address)
            except (httpx.HTTPError, TimeoutError, FetchFailed) as exc:
                problems.append(f"{host}[{address}]: {str(exc) or type(exc).__name__}")
                continue
            try:
                return parse_policy(text)
            except PolicyError as exc:
                raise FetchFailed(f"{host}: {exc}") from None
        raise FetchFailed("; ".join(problems))

    async def _get(self, host: str, address: str) -> str:
        url = f"https://[{address}]{WELL_KNOWN}" if ":" in address else f"https://{address}{WELL_KNOWN}"
        request = self._client.build_request("GET", url, headers={"Host": host}, extensions={"sni_hostname": host})
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code != 200:
                raise FetchFailed(f"HTTP {response.status_code}")  # a redirect too (RFC 8461 §3.3)
            media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type != "text/plain":
                raise FetchFailed(f"Content-Type {media_type or '(none)'}, not text/plain")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    raise FetchFailed(f"policy larger than {MAX_POLICY_BYTES} bytes")
        finally:
            await response.aclose()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise FetchFailed("policy is not UTF-8") from None

    async def close(self) -> None:
        await self._client.aclose()
