"""What the MTA-STS and DANE tests stand on: a certificate authority of the test's own, and the HTTPS host of policy files.

The policy host listens where RFC 8461 puts it, on port 443, at a loopback address of its own (so
it needs root); the test's DNS names mta-sts.<domain> to that address.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import os
import ssl
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def spki(certificate: x509.Certificate) -> bytes:
    """Its SubjectPublicKeyInfo, DER: what TLSA records with selector 1 describe."""
    return certificate.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Issued:
    """A certificate chain (leaf first) and the PEM files a server loads it and its key from."""

    cert_path: Path
    key_path: Path
    chain: list[x509.Certificate]

    @classmethod
    def written(cls, directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]) -> Issued:
        issued = cls(directory / f"{stem}.pem", directory / f"{stem}.key", chain)
        issued.cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        issued.key_path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return issued

    @classmethod
    def load(cls, files: tuple[Path, Path]) -> Issued:
        """A certificate and key made elsewhere (conftest's tls_files)."""
        cert_path, key_path = files
        return cls(cert_path, key_path, x509.load_pem_x509_certificates(cert_path.read_bytes()))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def der_chain(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.chain]

    def spki_sha256(self) -> bytes:
        """The leaf's key as a TLSA 3 1 1 record holds it."""
        return hashlib.sha256(spki(self.chain[0])).digest()


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, ca: bool) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


class TestCa:
    """A root that issues server certificates; `ca_file` is what [tls_policy] ca_file points at."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path, name: str = "fastmta test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        )
        self.certificate = (
            _builder(_name(name), _name(name), self.key.public_key(), ca=True)
            .add_extension(usage, critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / f"{name.replace(' ', '-')}.pem"
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *names: str) -> Issued:
        """A server certificate for `names`, sent with this CA's certificate above it (as DANE-TA wants)."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            _builder(_name(names[0]), self.certificate.subject, key.public_key(), ca=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued.written(self.directory, stem, key, [leaf, self.certificate])


class PolicyHost:
    """HTTPS on <loopback address>:443 serving /.well-known/mta-sts.txt by Host: `policies` maps a domain to its file.

    One certificate serves every name: a name it does not list gets its policy only from a client that
    does not check the certificate for it.
    """

    def __init__(self, issued: Issued) -> None:
        self.policies: dict[str, str] = {}
        self.fetches: Counter[str] = Counter()
        self.address = ""
        self._server = self._bind(self._handler())
        self._server.socket = issued.server_context().wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _bind(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        """The first free address of 127.0.44.0/24, from one that depends on the process, so parallel runs do not collide."""
        start = os.getpid() % 250
        for offset in range(250):
            address = f"127.0.44.{(start + offset) % 250 + 1}"
            try:
                server = ThreadingHTTPServer((address, 443), handler)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self.address = address
            server.daemon_threads = True
            return server
        raise OSError(errno.EADDRINUSE, "no free address for port 443 in 127.0.44.0/24")

    def start(self) -> PolicyHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # connections kept alive between requests, as real web servers keep them
            # The headers and the body go out in two writes: without this the body waits for the client's delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                domain = self.headers.get("Host", "").removeprefix("mta-sts.")
                host.fetches[domain] += 1
                text = host.policies.get(domain)
                if self.path != "/.well-known/mta-sts.txt" or text is None:
                    self.send_error(404)
                    return
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {pattern}" for pattern in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"
