"""One error base class: each subclass carries its HTTP status and a stable code; the
handlers turn every error into `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException


class GatewayError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class InvalidInput(GatewayError):
    status_code = 422
    code = "invalid_input"


class Unauthenticated(GatewayError):
    status_code = 401
    code = "unauthenticated"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(GatewayError):
    status_code = 403
    code = "forbidden"


class NotFound(GatewayError):
    status_code = 404
    code = "not_found"


class Conflict(GatewayError):
    status_code = 409
    code = "conflict"


class IdempotencyKeyReused(GatewayError):
    status_code = 422
    code = "idempotency_key_reused"


class RateLimited(GatewayError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"too many requests: retry in {retry_after_s} s", retry_after_s=retry_after_s
        )
        self.headers = {"Retry-After": str(retry_after_s)}


class ChainUnavailable(GatewayError):
    status_code = 503
    code = "chain_unavailable"


class DatabaseUnavailable(GatewayError):
    status_code = 503
    code = "database_unavailable"


def error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "location": ".".join(str(part) for part in error.get("loc", ())),
                "message": error.get("msg", ""),
            }
            for error in exc.errors()
        ]
        summary = "; ".join(f"{p['location']}: {p['message']}" for p in problems[:5])
        body = {"error": {"code": "invalid_input", "message": summary, "problems": problems}}
        return JSONResponse(jsonable_encoder(body), status_code=422)

    @app.exception_handler(OperationalError)
    async def _database_error(_request: Request, exc: OperationalError) -> JSONResponse:
        # The server went away or refused us (restart, failover, too many connections):
        # the pool drops the connection; the client may retry.
        error = DatabaseUnavailable("the database did not answer; retry in a moment")
        error.headers = {"Retry-After": "1"}
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
