"""DKIM key files: made by `fastmta dkim keygen`, checked and loaded from [[dkim.keys]], and their DNS records.

A key lives in a PEM file only its owner may read (0600, as ssh asks of its keys): by default
data_dir/dkim/<domain>/<selector>.key in directories of mode 0700, or wherever key_file says.
A key's age is its file's modification time, which keygen sets when it writes it.
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from fastmta.dkim.sign import PrivateKey, algorithm_of

if TYPE_CHECKING:
    from fastmta.config import Config, DkimKeyConfig

# RFC 8301: verifiers ignore RSA keys under 1024 bits; 2048 is what large receivers ask for.
SMALLEST_RSA = 1024
# A TXT record's character-strings hold up to 255 octets each (RFC 1035 3.3.14).
_TXT_STRING = 255


class UnusableKey(Exception):
    """A configured key cannot be used (its file, or a signing key beside it); the message says why and what to do."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    workspace: str
    signing: bool
    path: Path
    private: PrivateKey
    created_at: float

    @property
    def algorithm(self) -> str:
        return algorithm_of(self.private)

    @property
    def bits(self) -> int:
        return self.private.key_size if isinstance(self.private, rsa.RSAPrivateKey) else 256

    @property
    def dns_record(self) -> str:
        return dns_record(self.private)


def default_path(data_dir: Path, domain: str, selector: str) -> Path:
    return data_dir / "dkim" / domain / f"{selector}.key"


def generate(algorithm: Literal["rsa", "ed25519"], bits: int = 2048) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write(data_dir: Path, domain: str, selector: str, key: PrivateKey) -> Path:
    """A new key file at its default path, mode 0600, its directories 0700; an existing file is never
    replaced (it may be signing mail now)."""
    path = default_path(data_dir, domain, selector)
    for directory in (path.parent.parent, path.parent):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())
    return path


def dns_record(key: PrivateKey) -> str:
    """The TXT record's text: RSA keys as SubjectPublicKeyInfo (as opendkim-genkey writes them), Ed25519 raw (RFC 8463)."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        kind, data = "ed25519", public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        kind = "rsa"
        data = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k={kind}; p={base64.b64encode(data).decode()}"


def dns_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def zone_entry(domain: str, selector: str, record: str) -> str:
    """The record in zone-file form, split into character-strings that fit."""
    strings = "\n\t".join(f'"{record[start : start + _TXT_STRING]}"' for start in range(0, len(record), _TXT_STRING))
    return f"{dns_name(domain, selector)}. IN TXT ( {strings} )\n"


def read(path: Path) -> PrivateKey:
    """The key in `path`, if only its owner may read it and it is an RSA (1024 bits or more) or Ed25519 key in PEM."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise UnusableKey(f"{path} may be read or written by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UnusableKey(f"no such file: {path} (fastmta dkim keygen DOMAIN SELECTOR makes one)") from None
    except OSError as exc:
        raise UnusableKey(f"{path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UnusableKey(f"{path}: not an unencrypted private key in PEM: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < SMALLEST_RSA:
            raise UnusableKey(f"{path}: {key.key_size} bits; receivers ignore RSA keys under {SMALLEST_RSA} (RFC 8301)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise UnusableKey(f"{path}: a {type(key).__name__.removeprefix('_')}; DKIM signs with RSA or Ed25519 keys")


def path_of(entry: DkimKeyConfig, data_dir: Path) -> Path:
    return Path(entry.key_file) if entry.key_file else default_path(data_dir, entry.domain, entry.selector)


def load(entry: DkimKeyConfig, data_dir: Path) -> DkimKey:
    path = path_of(entry, data_dir)
    private = read(path)
    return DkimKey(entry.domain, entry.selector, entry.workspace, entry.signing, path, private, path.stat().st_mtime)


def load_all(config: Config) -> list[DkimKey]:
    """Every configured key; UnusableKey names the entry (dkim.keys[N]) of the first that cannot be used.

    One key of each algorithm signs a domain's (or a workspace's) mail: an RSA and an Ed25519 key may
    sign side by side (receivers that do not know ed25519-sha256 skip that signature, RFC 8463), two
    of one algorithm may not.
    """
    keys: list[DkimKey] = []
    signing: dict[tuple[str, str, str], int] = {}
    for index, entry in enumerate(config.dkim.keys):
        try:
            key = load(entry, config.data_dir)
        except UnusableKey as exc:
            raise UnusableKey(f"dkim.keys[{index}].key_file: {exc}") from None
        if key.signing:
            where = (key.domain, key.workspace, key.algorithm)
            if where in signing:
                scope = f"{key.domain} (workspace {key.workspace})" if key.workspace else key.domain
                raise UnusableKey(
                    f"dkim.keys[{index}]: {scope} has a signing {key.algorithm} key already (keys[{signing[where]}]);"
                    " set signing = false on the one being retired"
                )
            signing[where] = index
        keys.append(key)
    return keys
