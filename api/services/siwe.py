"""Sign-In with Ethereum (EIP-4361) for customers: nonces, message checks, sessions.

A sign-in is accepted only when the message parses, names this gateway's host as its
domain and this deployment's chain, is within its validity window, carries a nonce this
gateway issued that is unused and unexpired (consumed atomically: single use), and is
signed by its address (an EOA's signature, or an EIP-1271 contract wallet's). Only a
SHA-256 of the session token is stored."""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from pydantic import ValidationError
from requests.exceptions import RequestException
from sqlalchemy import Connection
from web3 import Web3
from web3.exceptions import Web3Exception

with warnings.catch_warnings():
    # siwe's EIP-4361 grammar, built on import, restates the ABNF core rules (ALPHA, LF,
    # DIGIT, HEXDIG) and the abnf package warns about each: four lines of noise at every
    # start of the gateway, about a library's grammar that parses as it should.
    warnings.filterwarnings("ignore", message=r"rule '\w+' redefines", module="abnf")
    import siwe
    from siwe.siwe import SchemeMismatch

from api.deps import SESSION_PREFIX, session_token_sha256
from api.errors import ChainUnavailable, InvalidInput, Unauthenticated
from api.gateway import Gateway
from api.middleware import aware
from api.repository import auth as auth_repository
from offchain.db import gateway_repository


@dataclass(frozen=True)
class IssuedNonce:
    nonce: str
    expires_at: datetime
    domain: str
    uri: str
    chain_id: int


@dataclass(frozen=True)
class NewSession:
    token: str  # the only time it exists outside the customer's hands
    address: str
    expires_at: datetime


def expected_domain(public_url: str) -> str:
    """host[:port] of the public origin: what the message's first line must name."""
    parts = urlsplit(public_url)
    return parts.netloc.rsplit("@", 1)[-1]


def issue_nonce(conn: Connection, gateway: Gateway, now: datetime) -> IssuedNonce:
    settings = gateway.settings
    nonce = secrets.token_hex(16)  # EIP-4361: at least 8 alphanumerics; 128 random bits
    expires_at = now + timedelta(seconds=settings.nonce_ttl_s)
    gateway_repository.delete_expired_nonces(conn, now)
    gateway_repository.insert_nonce(conn, nonce, now, expires_at)
    return IssuedNonce(
        nonce=nonce,
        expires_at=expires_at,
        domain=expected_domain(settings.public_url),
        uri=settings.public_url,
        chain_id=gateway.chain_id,
    )


def _parse(message: str) -> siwe.SiweMessage:
    try:
        parsed = siwe.SiweMessage.from_message(message)
    except ValidationError as exc:  # parsed, but a field is invalid
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidInput(
            f"the message is not an EIP-4361 (Sign-In with Ethereum) message: {problems}"[:500]
        ) from None
    except Exception as exc:  # the grammar's parse errors have no common base class
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InvalidInput(
            f"the message is not an EIP-4361 (Sign-In with Ethereum) message: {first_line}"[:500]
        ) from None
    if parsed.prepare_message() != message:
        # siwe checks the signature of its own rendering of the message: a message that
        # does not render back to itself would fail as a bad signature, misleadingly.
        raise InvalidInput(
            "the message is not in canonical EIP-4361 form (line breaks, spacing or field "
            "order differ): sign the message exactly as the EIP-4361 template lays it out"
        )
    return parsed


def _verify_signature(
    parsed: siwe.SiweMessage, signature: str, gateway: Gateway, domain: str, now: datetime
) -> None:
    scheme = urlsplit(gateway.settings.public_url).scheme
    provider = Web3.HTTPProvider(gateway.settings.rpc_url, request_kwargs={"timeout": 10})
    try:
        parsed.verify(
            signature,
            scheme=scheme if parsed.scheme is not None else None,
            domain=domain,
            timestamp=now,
            provider=provider,
        )
    except SchemeMismatch:
        raise Unauthenticated(
            f"the message's scheme is {parsed.scheme!r}, this gateway is served over {scheme!r}"
        ) from None
    except siwe.DomainMismatch:
        raise Unauthenticated(
            f"the message is for domain {parsed.domain!r}, this gateway is {domain!r}"
        ) from None
    except siwe.ExpiredMessage:
        raise Unauthenticated(
            f"the message expired at {parsed.expiration_time}: sign a new one"
        ) from None
    except siwe.NotYetValidMessage:
        raise Unauthenticated(f"the message is not valid before {parsed.not_before}") from None
    except siwe.InvalidSignature:
        raise Unauthenticated(
            f"the signature does not match the message's address {parsed.address} "
            "(neither an EOA signature nor an EIP-1271 contract wallet's)"
        ) from None
    except (RequestException, Web3Exception, OSError) as exc:
        # Only reached for contract wallets: an EOA signature is recovered offline.
        raise ChainUnavailable(f"cannot check a contract wallet's signature: {exc}") from None


def _consume_nonce(conn: Connection, nonce: str, now: datetime) -> None:
    if gateway_repository.consume_nonce(conn, nonce, now):
        return
    row = auth_repository.nonce(conn, nonce)
    if row is None:
        raise Unauthenticated(
            "the message's nonce was not issued by this gateway: get one from "
            "POST /v1/auth/siwe/nonce"
        )
    if row.used_at is not None:
        raise Unauthenticated("the message's nonce was already used: get a new one")
    raise Unauthenticated("the message's nonce expired: get a new one")


def sign_in(
    conn: Connection, gateway: Gateway, message: str, signature: str, now: datetime
) -> NewSession:
    parsed = _parse(message)
    domain = expected_domain(gateway.settings.public_url)
    if parsed.chain_id != gateway.chain_id:
        raise Unauthenticated(
            f"the message is for chain {parsed.chain_id}, this gateway serves chain "
            f"{gateway.chain_id}"
        )
    _verify_signature(parsed, signature, gateway, domain, now)
    # Last, so that a message failing any other check does not burn its nonce.
    _consume_nonce(conn, parsed.nonce, now)
    expires_at = now + timedelta(seconds=gateway.settings.session_ttl_s)
    if parsed.expiration_time is not None:
        expires_at = min(expires_at, aware(parsed.expiration_time._datetime))
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    address = parsed.address.lower()
    gateway_repository.insert_session(
        conn,
        {
            "token_sha256": session_token_sha256(token),
            "address": address,
            "chain_id": gateway.chain_id,
            "created_at": now,
            "expires_at": expires_at,
        },
    )
    return NewSession(token=token, address=address, expires_at=expires_at)


def sign_out(conn: Connection, token: str) -> None:
    gateway_repository.delete_session(conn, session_token_sha256(token))


def utc_now() -> datetime:
    return datetime.now(UTC)
