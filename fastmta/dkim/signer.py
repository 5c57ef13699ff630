"""Which key signs a message, and the message with its signature: the key of its From domain, the workspace's own first.

Per (domain, workspace) one key signs; others listed for the domain (signing = false) are kept
published while a rotation retires them. A workspace key is for mail whose X-Workspace-ID names
that workspace; other mail from the domain takes the domain's key (workspace empty). Mail from a
domain with no key goes unsigned.
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
        self.keys = {(key.domain, key.workspace): key for key in keys if key.signing}
        self.headers = frozenset(name.encode() for name in headers)

    @classmethod
    def configured(cls, config: Config) -> Signer | None:
        """None when no key is configured: then nothing is signed and nothing is looked up."""
        if not config.dkim.keys:
            return None
        return cls(load_all(config), config.dkim.headers)

    def key_for(self, header_from: str, workspace: str) -> DkimKey | None:
        domain = from_domain(header_from)
        if not domain:
            return None
        return (workspace and self.keys.get((domain, workspace))) or self.keys.get((domain, ""))

    def signed(self, message: bytes, header_from: str, workspace: str, now: float) -> bytes:
        """`message` (CRLF line ends) with a DKIM-Signature in front, or as it is when no key is for it."""
        key = self.key_for(header_from, workspace)
        if key is None:
            return message
        return signature(message, key.private, key.domain, key.selector, int(now), self.headers) + message
