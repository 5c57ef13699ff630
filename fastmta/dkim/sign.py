"""A DKIM-Signature for one message (RFC 6376, relaxed/relaxed; rsa-sha256, and ed25519-sha256 of RFC 8463).

Pure functions of bytes and a key. The canonicalisation is written here rather than taken from
dkimpy, which does it with a regular-expression substitution per whitespace run (0.5 to 1.4 ms for
a 10 KiB body on the reference machine), and its RSA is pure Python (9 ms a signature). Here a body
with nothing to reduce (no tab, no double space, no space before a line end: most machine-written
mail, every base64 part) is hashed as it is, and one with something is reduced by whole-buffer
replaces in C; the private-key operation is OpenSSL's, through `cryptography`. dkimpy remains
the reference: the tests check every signature with its verifier, and this canonicalisation
against its own on generated messages.

The message must have CRLF line ends throughout (delivery/outbound.crlf_lines), as it will on the wire.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# What the header lines of the signature are folded to: RFC 5322 asks for at most 78 octets.
_LINE = 76
_PREHASHED = utils.Prehashed(hashes.SHA256())


def split(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folds, without the final CRLF) and the body, as a verifier splits them."""
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:  # no body: the message is its header block
        block, body = message.removesuffix(b"\r\n"), b""
    else:
        block, body = message[:end], message[end + 4 :]
    fields: list[bytes] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields, body


def _single_spaced(text: bytes) -> bytes:
    """Each run of WSP (SP, HTAB) one SP. Whole-buffer replaces in C, a pass per halving of the longest
    run: a few microseconds for 10 KiB, where a regular expression costs a Python call per run."""
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    while b"  " in text:
        text = text.replace(b"  ", b" ")
    return text


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 3.4.2: name lower-cased, value unfolded, runs of WSP one space, none around the colon or at the ends."""
    name, _, value = field.partition(b":")
    return name.rstrip(b" \t").lower() + b":" + _single_spaced(value.replace(b"\r\n", b"")).strip(b" ")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 for a body of CRLF-terminated lines: WSP at line ends removed, other runs of WSP one
    space, empty lines at the end removed."""
    body = _single_spaced(body)
    if b" \r\n" in body:  # runs are single spaces now: one replace strips every line end
        body = body.replace(b" \r\n", b"\r\n")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    # Trailing empty lines go, the last line keeps its CRLF; an empty body stays empty.
    return body[:end] + b"\r\n" if end else b""


def algorithm_of(key: PrivateKey) -> str:
    return "ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa-sha256"


def _name(field: bytes) -> bytes:
    return field.partition(b":")[0].rstrip(b" \t").lower()


def _signed(fields: list[bytes], wanted: frozenset[bytes], oversigned: frozenset[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The h= list, and the fields it covers in its order.

    h= names every present field among `wanted`, each instance once, and the `oversigned` ones (among
    `wanted`) once more, so that a verifier takes one added later (a second From) as breaking the signature. Each
    name takes the last instance not yet taken, from the bottom (RFC 6376 5.4.2); none left, nothing.
    """
    names: list[bytes] = []
    by_name: dict[bytes, list[bytes]] = {}
    for field in fields:
        name = _name(field)
        if name in wanted:
            names.append(name)
            by_name.setdefault(name, []).append(field)
    names += sorted(oversigned)
    return names, [by_name[name].pop() for name in names if by_name.get(name)]


def _folded(pieces: list[tuple[bytes, bytes]], column: int) -> bytes:
    """Pieces, each with the glue that goes before it (b" " between tags, b"" inside h=), folded into lines
    of at most _LINE octets, `column` of the first taken already. A fold is CRLF and a space: relaxed
    canonicalisation reads it as the one space it replaces, or as none inside h=, where FWS may stand."""
    out = []
    for glue, piece in pieces:
        if column + len(glue) + len(piece) > _LINE:
            out.append(b"\r\n " + piece)
            column = 1 + len(piece)
        else:
            out.append(glue + piece)
            column += len(glue) + len(piece)
    return b"".join(out)


def signature(
    message: bytes, key: PrivateKey, domain: str, selector: str, now: int,
    wanted: frozenset[bytes], oversigned: frozenset[bytes] = frozenset({b"from"}),
) -> bytes:
    """The DKIM-Signature header field, CRLF-terminated, to put in front of `message`."""
    fields, body = split(message)
    names, covered = _signed(fields, wanted, oversigned)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    tags = [
        b"v=1;", b"a=" + algorithm_of(key).encode() + b";", b"c=relaxed/relaxed;", b"d=" + domain.encode() + b";",
        b"s=" + selector.encode() + b";", b"t=%d;" % now,
    ]
    h_items = [b"h=" + names[0]] + [b":" + name for name in names[1:]]
    h_items[-1] += b";"
    pieces = [(b" ", tag) for tag in tags] + [(b" ", h_items[0])] + [(b"", item) for item in h_items[1:]]
    pieces.append((b" ", b"bh=" + body_hash + b";"))
    # b= starts a line of its own, so that the value is folded the same way whatever came before.
    unsigned = b"DKIM-Signature:" + _folded(pieces, len(b"DKIM-Signature:")) + b"\r\n b="
    digest = hashlib.sha256()
    for field in covered:
        digest.update(relaxed_header(field) + b"\r\n")
    digest.update(relaxed_header(unsigned))  # without its CRLF, with b= empty (RFC 6376 3.7)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signed = key.sign(digest.digest())  # RFC 8463: Ed25519 over the SHA-256 of the header data
    else:
        signed = key.sign(digest.digest(), padding.PKCS1v15(), _PREHASHED)
    value = base64.b64encode(signed)
    first = _LINE - len(b" b=")
    lines = [value[:first]] + [value[start : start + _LINE - 1] for start in range(first, len(value), _LINE - 1)]
    return unsigned + b"\r\n ".join(lines) + b"\r\n"
