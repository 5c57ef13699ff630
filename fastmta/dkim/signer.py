"""Which keys sign a message, and the message with their signatures: its From domain's, its workspace's first.

Per domain and workspace one key of each algorithm signs (RSA, Ed25519, or one of each); others
listed for the domain (signing = false) are kept published while a rotation retires them. A
workspace's keys sign mail whose X-Workspace-ID names that workspace; other mail from the domain
takes the domain's own keys (workspace empty). Mail from a domain without keys goes unsigned.
"""

from __future__ import annotations

import email.utils

from fastmta.config import Config
from fastmta.dkim.keys import DkimKey, load_all
from fastmta.dkim.sign import signature


def from_domain(header_from: str) -> str:
    """The domain of the (first) address in a From field, lower-cased, in A-labels: '' if there is none."""
    for _, address in email.utils.getaddresses([header_from]):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" in address and domain:
            try:
                return domain.encode("idna").decode("ascii")
            except UnicodeError:
                return ""
    return ""


class Signer:
    def __init__(self, keys: list[DkimKey], headers: list[str]) -> None:
        self.keys: dict[tuple[str, str], list[DkimKey]] = {}
        for key in keys:
            if key.signing:
                self.keys.setdefault((key.domain, key.workspace), []).append(key)
        self.headers = frozenset(name.encode() for name in headers)

    @classmethod
    def configured(cls, config: Config) -> Signer | None:
        """None when no key is configured: then nothing is signed and nothing is looked up."""
        if not config.dkim.keys:
            return None
        return cls(load_all(config), config.dkim.headers)

    def keys_for(self, header_from: str, workspace: str) -> list[DkimKey]:
        domain = from_domain(header_from)
        if not domain:
            return []
        return (workspace and self.keys.get((domain, workspace))) or self.keys.get((domain, ""), [])

    def signed(self, message: bytes, header_from: str, workspace: str, now: float) -> bytes:
        """`message` (CRLF line ends) with a DKIM-Signature per key in front, or as it is when no key is for it.

        Each signature covers the message alone: DKIM-Signature fields are not among the signed headers.
        """
        keys = self.keys_for(header_from, workspace)
        signatures = [signature(message, key.private, key.domain, key.selector, int(now), self.headers) for key in keys]
        return b"".join(signatures) + message
