"""Sign-In with Ethereum for customers: nonce, verify, logout."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import CustomerPrincipal, GatewayDep, WriteConnection
from api.errors import GatewayError
from api.schemas.auth import NonceResponse, SessionResponse, VerifyRequest
from api.services import siwe as siwe_service

router = APIRouter(prefix="/v1/auth", tags=["auth"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "Which check failed: domain, chain, expiry, nonce or signature"},
    422: {"description": "Not an EIP-4361 message, or a malformed signature"},
}


@router.post("/siwe/nonce", response_model=NonceResponse, status_code=201)
def nonce(gateway: GatewayDep, conn: WriteConnection) -> NonceResponse:
    """A single-use nonce for a Sign-In with Ethereum message, valid for a few minutes. The
    response also says what the message's domain, URI and chain id must be."""
    issued = siwe_service.issue_nonce(conn, gateway, siwe_service.utc_now())
    return NonceResponse(
        nonce=issued.nonce,
        expires_at=int(issued.expires_at.timestamp()),
        domain=issued.domain,
        uri=issued.uri,
        chain_id=issued.chain_id,
    )


@router.post("/siwe/verify", response_model=SessionResponse, responses=_ERRORS)
def verify(
    body: VerifyRequest, gateway: GatewayDep, conn: WriteConnection, response: Response
) -> SessionResponse:
    """Exchanges a signed EIP-4361 message for a customer session token (shown once: the
    answer is not kept for `Idempotency-Key` retries, since only the token's hash is
    stored)."""
    response.headers["Cache-Control"] = "no-store"
    session = siwe_service.sign_in(
        conn, gateway, body.message, body.signature, siwe_service.utc_now()
    )
    return SessionResponse(
        token=session.token,
        address=session.address,
        expires_at=int(session.expires_at.timestamp()),
    )


@router.post("/logout", status_code=204, response_class=Response)
def logout(_customer: CustomerPrincipal, request: Request, conn: WriteConnection) -> Response:
    """Ends the customer session the request is authenticated with."""
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:  # unreachable once CustomerPrincipal passed
        raise GatewayError("no bearer token")
    siwe_service.sign_out(conn, token.strip())
    return Response(status_code=204)
