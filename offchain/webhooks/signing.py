"""Webhook signatures: what the worker sends and what a receiver checks.

Every request carries

    Chainbill-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>

with one `v1` per secret that is live for the endpoint (two during a rotation, so a
receiver holding either the old or the new secret verifies it). The timestamp is signed
with the body: a receiver that refuses timestamps older than a tolerance (5 minutes by
default) cannot be fed a captured request again later. `Chainbill-Event-Id` names the
event: delivery is at least once, so a receiver processes each id once.

`verify` is the check a receiver makes; it imports nothing of chainbill's beyond the
standard library, so a merchant can copy it as it is."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

SIGNATURE_HEADER = "Chainbill-Signature"
EVENT_ID_HEADER = "Chainbill-Event-Id"
EVENT_TYPE_HEADER = "Chainbill-Event-Type"
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """A request whose signature does not verify (or is too old, or malformed)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `{timestamp}.{body}` under `secret`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets: Iterable[str], timestamp: int, body: bytes) -> str:
    """The `Chainbill-Signature` value: the timestamp and one v1 per live secret."""
    parts = [f"t={timestamp}"]
    parts += [f"v1={signature(secret, timestamp, body)}" for secret in secrets]
    return ",".join(parts)


def verify(
    header: str | None,
    body: bytes,
    secret: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Checks a `Chainbill-Signature` header against the raw request body (the bytes as
    received: parsing and re-serializing the JSON would change them). Returns the signed
    timestamp; raises SignatureError when no v1 matches `secret`, the header is malformed,
    or the timestamp is further than `tolerance_s` from now."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("the timestamp is not an integer") from None
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("the header needs t=<unix seconds> and at least one v1=<hex>")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"the timestamp is more than {tolerance_s} s away from now")
    expected = signature(secret, timestamp, body)
    # Every candidate compared in constant time: which one matched must not leak by timing.
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("no signature matches the secret")
    return timestamp
