"""MTA-STS formats (RFC 8461): the _mta-sts TXT record, the policy file, and its MX patterns. No I/O."""

from __future__ import annotations

import re

import msgspec

# RFC 8461 §3.1: "v=STSv1" first, then fields separated by ";"; the id is 1 to 32 letters and digits.
_TXT_FIELD = re.compile(r"^\s*([^=\s]+)=(.*?)\s*$")
_POLICY_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
# RFC 8461 §3.2: max_age is 1 to 10 digits, and at most 31557600 seconds (about a year) count.
_MAX_AGE = re.compile(r"^[0-9]{1,10}$")
MAX_AGE_LIMIT = 31557600
MODES = ("enforce", "testing", "none")


class PolicyError(ValueError):
    """The policy file is not a valid STSv1 policy; the message says what is wrong."""


class StsPolicy(msgspec.Struct, frozen=True):
    """A domain's policy. Stored in the policy cache: new fields go last, with defaults."""

    mode: str  # "enforce" | "testing" | "none"
    mx: tuple[str, ...]
    max_age: int


def policy_id(txt_records: list[str]) -> str | None:
    """The id of the one TXT record that starts with v=STSv1; None when there is none, more than one, or a bad id."""
    found = [record for record in txt_records if record.startswith("v=STSv1")]
    if len(found) != 1:
        return None
    fields = found[0].split(";")
    if fields[0].strip() != "v=STSv1":
        return None
    for field in fields[1:]:
        pair = _TXT_FIELD.match(field)
        if pair and pair.group(1) == "id":
            return pair.group(2) if _POLICY_ID.match(pair.group(2)) else None
    return None


def parse_policy(text: str) -> StsPolicy:
    """The policy file: "key: value" lines (CRLF, or LF as many servers write them); unknown keys are ignored."""
    values: dict[str, str] = {}
    patterns: list[str] = []
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key, value = key.strip(), value.strip()
        if key == "mx":
            patterns.append(value.lower().rstrip("."))
        else:
            values.setdefault(key, value)  # the first of a repeated key counts
    if values.get("version") != "STSv1":
        raise PolicyError(f"version: not STSv1: {values.get('version', '(missing)')!r}")
    mode = values.get("mode", "")
    if mode not in MODES:
        raise PolicyError(f"mode: not one of enforce, testing, none: {mode!r}")
    age = values.get("max_age", "")
    if not _MAX_AGE.match(age):
        raise PolicyError(f"max_age: not a number of seconds: {age!r}")
    if mode != "none" and not patterns:
        raise PolicyError(f"mx: a policy in mode {mode} names at least one MX host")
    return StsPolicy(mode, tuple(patterns), min(int(age), MAX_AGE_LIMIT))


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: the name itself, or "*.example.com" for exactly one more label on the left."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def mx_allowed(policy: StsPolicy, host: str) -> bool:
    return any(mx_matches(pattern, host) for pattern in policy.mx)
