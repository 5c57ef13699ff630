"""A next hop's certificate chain verified after the handshake, up to trust anchors, for a host name (cryptography's verifier).

The handshake itself verifies nothing (see outbound.TlsPolicy.check): one handshake serves every
policy, and a policy in testing mode can report a certificate it would refuse and still deliver.
"""

from __future__ import annotations

import ssl
import warnings

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import DNSName, PolicyBuilder, Store, VerificationError


def ca_context(ca_file: str) -> ssl.SSLContext:
    """A verifying client context with `ca_file`'s certificates, or the system's when it is empty."""
    return ssl.create_default_context(cafile=ca_file or None)


def anchors(context: ssl.SSLContext) -> Store:
    """The context's CA certificates as a store for the verifier. Raises ValueError when it holds none."""
    found = []
    for der in context.get_ca_certs(binary_form=True):
        try:
            with warnings.catch_warnings():
                # Old roots with a serial number RFC 5280 forbids are read with a warning, and kept.
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                found.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue  # a root this parser refuses can anchor nothing for it
    if not found:
        raise ValueError("no CA certificates to verify against")
    return Store(found)


def parsed(chain: list[bytes]) -> list[x509.Certificate]:
    """The peer's chain, leaf first. Raises ValueError for a certificate that cannot be read."""
    return [x509.load_der_x509_certificate(der) for der in chain]


def path_problem(chain: list[x509.Certificate], store: Store, host: str) -> str:
    """Why the chain does not lead from a certificate for `host` to one of the store's anchors; "" when it does."""
    try:
        name = DNSName(host)
    except ValueError:
        return f"{host!r} is not a host name a certificate can be checked against"
    verifier = PolicyBuilder().store(store).build_server_verifier(name)
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        # The reason, without the repr of the certificate it was found in.
        return f"certificate of {host} not trusted: {str(exc).partition(' (encountered')[0]}"
    return ""
