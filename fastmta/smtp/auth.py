"""SASL for SMTP AUTH (RFC 4954): the PLAIN and LOGIN exchanges, from the AUTH line to a username and password."""

from __future__ import annotations

import base64
from typing import NamedTuple

from fastmta.smtp import replies as R

MECHANISMS = "PLAIN LOGIN"


class Credentials(NamedTuple):
    username: str
    password: str


class SaslExchange:
    """One exchange. start() and answer() return the challenge to send, or the credentials; they raise the refusal."""

    def __init__(self) -> None:
        self._step = ""
        self._username = ""

    def start(self, argument: str) -> bytes | Credentials:
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip()
        if mechanism == "PLAIN":
            if initial:
                return _plain(initial)
            self._step = "plain"
            return R.AUTH_CONTINUE
        if mechanism == "LOGIN":
            if initial:
                self._username = _decode64(initial)
                self._step = "login-password"
                return R.AUTH_PASSWORD
            self._step = "login-username"
            return R.AUTH_USERNAME
        raise R.UnknownMechanism()

    def answer(self, line: bytes) -> bytes | Credentials:
        step, self._step = self._step, ""
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            raise R.BadSyntax("Syntax: not base64") from None
        if text == "*":
            raise R.AuthCancelled()
        if step == "plain":
            return _plain(text)
        if step == "login-username":
            self._username = _decode64(text)
            self._step = "login-password"
            return R.AUTH_PASSWORD
        return _credentials(self._username, _decode64(text))


def _plain(encoded: str) -> Credentials:
    parts = _decode64(encoded).split("\0")
    if len(parts) != 3:
        raise R.BadSyntax("Syntax: AUTH PLAIN wants authzid NUL authcid NUL password")
    authzid, username, password = parts
    if authzid and authzid != username:
        raise R.AuthFailed()
    return _credentials(username, password)


def _credentials(username: str, password: str) -> Credentials:
    if not username or not password:
        raise R.AuthFailed()
    return Credentials(username, password)


def _decode64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, and a str with non-ASCII characters
        raise R.BadSyntax("Syntax: not base64") from None
