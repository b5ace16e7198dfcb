"""Dependencies: the gateway, database connections and who is asking."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection

from api.errors import Forbidden, Unauthenticated
from api.gateway import Gateway
from offchain import apikeys
from offchain.db import gateway_repository

SESSION_PREFIX = "cbs_"


# Dependencies that neither block nor touch the database are `async def`: FastAPI runs
# plain `def` ones in its thread pool, a thread hop each, on every request.


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def request_connection(gateway: GatewayDep) -> AsyncIterator[Connection]:
    """The request's one database connection, shared by everything the request depends on
    (FastAPI caches it per request). A request that held a pooled connection while its
    authentication took a second one could deadlock the pool under load: every worker
    thread holding one connection and waiting for another.

    Taken and given back on the event loop: a pool checkout does not wait (the concurrency
    limit keeps requests in flight within the pool's size), and a thread-pool hop costs
    more than the checkout."""
    with gateway.engine.connect() as conn:
        yield conn


RequestConnection = Annotated[Connection, Depends(request_connection)]


async def read_connection(conn: RequestConnection) -> Connection:
    return conn


def write_connection(conn: RequestConnection) -> Iterator[Connection]:
    """One transaction for the request: committed when the endpoint returns normally."""
    if conn.in_transaction():  # reads made before (authentication) began one implicitly
        conn.rollback()
    with conn.begin():
        yield conn


ReadConnection = Annotated[Connection, Depends(read_connection)]
WriteConnection = Annotated[Connection, Depends(write_connection)]


class PrincipalKind(StrEnum):
    MERCHANT = "merchant"
    CUSTOMER = "customer"


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    address: str  # lowercase 0x-hex: the merchant a key belongs to, or the signed-in wallet

    def can_see(self, *parties: str) -> bool:
        """Whether this principal is one of an object's parties (merchant, customer, payer)."""
        return self.address in {p.lower() for p in parties}


def session_token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_bearer = HTTPBearer(auto_error=False, description="A merchant API key or a customer session")


def _merchant_of_key(gateway: Gateway, conn: Connection, token: str) -> str:
    """The merchant of a live key. A verified key is trusted until a revocation is seen:
    every `api_key_cache_s` a worker reads whether any key was revoked since it last
    looked (one small read, not one per request: on PostgreSQL a key's row is a round
    trip, a third of what a lookup costs), and forgets what it trusted if so."""
    ttl = gateway.settings.api_key_cache_s
    digest = hashlib.sha256(token.encode()).hexdigest()
    if ttl > 0:
        now = time.monotonic()
        if now - gateway.key_revocations_read_at >= ttl:
            revocations = gateway_repository.api_key_revocations(conn)
            if revocations != gateway.key_revocations:
                gateway.verified_keys.clear()
                gateway.key_revocations = revocations
            gateway.key_revocations_read_at = now
        merchant = gateway.verified_keys.get(digest)
        if merchant is not None:
            return merchant
    key = apikeys.verify_key(conn, token)
    if key is None:
        raise Unauthenticated("the API key is unknown or revoked")
    if ttl > 0:
        if len(gateway.verified_keys) > 100_000:  # forget them all rather than grow
            gateway.verified_keys.clear()
        gateway.verified_keys[digest] = key.merchant
    return key.merchant


def principal_of_token(gateway: Gateway, conn: Connection, token: str) -> Principal:
    """Who a bearer token is; Unauthenticated when it is nobody."""
    if apikeys.looks_like_key(token):
        return Principal(PrincipalKind.MERCHANT, _merchant_of_key(gateway, conn, token))
    if token.startswith(SESSION_PREFIX):
        session = gateway_repository.live_session(
            conn, session_token_sha256(token), datetime.now(UTC)
        )
        if session is None or session.chain_id != gateway.chain_id:
            raise Unauthenticated("the session is unknown or expired: sign in again")
        return Principal(PrincipalKind.CUSTOMER, session.address)
    raise Unauthenticated(
        "the bearer token is neither an API key (cbk_...) nor a session (cbs_...)"
    )


async def optional_principal(
    gateway: GatewayDep,
    conn: RequestConnection,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    # On the event loop: one indexed primary-key read (a fraction of a millisecond) costs
    # less than the thread-pool hop it would otherwise take on every request.
    if credentials is None:
        return None
    return principal_of_token(gateway, conn, credentials.credentials)


async def require_principal(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    if principal is None:
        raise Unauthenticated(AUTHENTICATION_REQUIRED)
    return principal


async def require_merchant(
    principal: Annotated[Principal, Depends(require_principal)],
) -> Principal:
    if principal.kind is not PrincipalKind.MERCHANT:
        raise Forbidden("this needs a merchant API key")
    return principal


async def require_customer(
    principal: Annotated[Principal, Depends(require_principal)],
) -> Principal:
    if principal.kind is not PrincipalKind.CUSTOMER:
        raise Forbidden("this needs a customer session (Sign-In with Ethereum)")
    return principal


OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]
AnyPrincipal = Annotated[Principal, Depends(require_principal)]
MerchantPrincipal = Annotated[Principal, Depends(require_merchant)]
CustomerPrincipal = Annotated[Principal, Depends(require_customer)]


@dataclass(frozen=True)
class Reader:
    """What a read-only endpoint needs: the gateway, the request's connection, the caller."""

    gateway: Gateway
    conn: Connection
    principal: Principal


AUTHENTICATION_REQUIRED = (
    "authentication required: a merchant API key or a customer session as "
    "'Authorization: Bearer ...'"
)


async def authenticated_reader(request: Request) -> AsyncIterator[Reader]:
    """`GatewayDep` + `ReadConnection` + `AnyPrincipal` in one dependency, for the hottest
    read endpoints: FastAPI's resolution of each dependency costs about as much as the
    indexed reads behind a lookup. Same rules as `optional_principal` + `require_principal`
    (a scheme other than Bearer counts as no credentials, as HTTPBearer has it)."""
    gateway: Gateway = request.app.state.gateway
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(AUTHENTICATION_REQUIRED)
    with gateway.read_engine.connect() as conn:
        yield Reader(gateway, conn, principal_of_token(gateway, conn, token.strip()))


AuthenticatedReader = Annotated[Reader, Depends(authenticated_reader)]
