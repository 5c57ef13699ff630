"""TLS for ingress: the server context built from the configured certificate, and how a session names it."""

from __future__ import annotations

import ssl


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    # Session tickets only help clients that reconnect; STARTTLS clients rarely do.
    context.options |= ssl.OP_NO_TICKET
    return context


def describe(ssl_object: ssl.SSLObject | None) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384', as it goes in the Received header and the queue record."""
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else 'unknown'}"
