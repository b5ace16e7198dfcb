"""ASGI middleware: Prometheus metrics, rate limits and `Idempotency-Key` on POSTs."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import Conflict, GatewayError, IdempotencyKeyReused, InvalidInput, RateLimited
from offchain.db import gateway_repository
from offchain.db.models import IdempotencyRecord

EXEMPT_PATHS = ("/health", "/metrics")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def client_scope(scope: Scope) -> str:
    """Who is asking, for rate limits and idempotency: the bearer credential when there is
    one (hashed), else the client address."""
    authorization = _header(scope, b"authorization")
    if authorization:
        return "auth:" + hashlib.sha256(authorization.encode()).hexdigest()[:40]
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"


async def _send_error(send: Send, error: GatewayError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chainbill_http_requests",
            "HTTP requests served, by route template, method and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chainbill_http_request_duration_seconds",
            "Time to serve a request, by route template",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "chainbill_http_rate_limited",
            "Requests refused by the rate limit",
            registry=self.registry,
        )
        self.idempotent_replays = Counter(
            "chainbill_idempotent_replays",
            "POSTs answered from an earlier request with the same Idempotency-Key",
            registry=self.registry,
        )


def _route_template(scope: Scope) -> str:
    """The route template a request went to, for labels of bounded cardinality. Requests
    answered before routing (idempotent replays, rate-limit refusals) are matched here, so
    they count under their route rather than as unmatched."""
    template = getattr(scope.get("route"), "path", None)
    if template:
        return str(template)
    router = getattr(scope.get("app"), "router", None)
    return _match_template(getattr(router, "routes", ()), scope) or "unmatched"


def _match_template(routes: Iterable[Any], scope: Scope) -> str | None:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's lazily included routers
        if included is not None:
            found = _match_template(getattr(included, "routes", ()), scope)
            if found:
                return found
            continue
        match, _child = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", None) or "unmatched")
    return None


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            template = _route_template(scope)
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(scope["method"], template).observe(
                time.perf_counter() - started
            )


class TokenBuckets:
    """Per-client token buckets, in this process (each worker limits on its own)."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                if len(self._buckets) > 100_000:  # forget idle clients
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, buckets: TokenBuckets | None, metrics: Metrics) -> None:
        self.app = app
        self.buckets = buckets
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.buckets is not None
            and not scope["path"].startswith(EXEMPT_PATHS)
        ):
            wait = self.buckets.take(client_scope(scope))
            if wait > 0:
                self.metrics.rate_limited.inc()
                await _send_error(send, RateLimited(max(1, math.ceil(wait))))
                return
        await self.app(scope, receive, send)


def pool_capacity(engine: Engine) -> int | None:
    """How many connections the engine's pool hands out at most; None: no fixed bound."""
    pool = engine.pool
    if isinstance(pool, QueuePool):
        overflow = pool._max_overflow  # no public accessor
        return None if overflow < 0 else pool.size() + overflow
    return None


class ConcurrencyLimitMiddleware:
    """At most `limit` requests past this point at once (the others wait here, in the event
    loop, holding nothing). Set to the pool's capacity, this keeps the database pool from
    starving the thread pool under overload: without it, requests holding a pooled
    connection wait for a worker thread while every worker thread waits for a pooled
    connection, until the pool's timeout fails them all."""

    def __init__(self, app: ASGIApp, limit: int | None) -> None:
        self.app = app
        self.semaphore = anyio.Semaphore(limit) if limit else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.semaphore is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with self.semaphore:
            await self.app(scope, receive, send)


IDEMPOTENCY_TTL = timedelta(hours=24)
ABANDONED_AFTER = timedelta(minutes=5)


class IdempotencyMiddleware:
    """Stripe's semantics for `Idempotency-Key` on POST: the first request's response is
    kept for 24 hours and returned to every retry with the same key from the same client
    (header `Idempotent-Replayed: true`); the same key with a different request is refused
    (422); while the first is still running, a retry gets 409. Server errors (5xx) and
    responses marked `Cache-Control: no-store` (secrets) are not kept, so the retry runs
    again."""

    def __init__(self, app: ASGIApp, engine: Engine, metrics: Metrics) -> None:
        self.app = app
        self.engine = engine
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _header(scope, b"idempotency-key") if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not 1 <= len(key) <= 255:
            await _send_error(send, InvalidInput("Idempotency-Key must be 1 to 255 characters"))
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        who = client_scope(scope)
        fingerprint = hashlib.sha256(
            b"\x00".join(
                [
                    scope["method"].encode(),
                    scope["path"].encode(),
                    scope.get("query_string", b""),
                    body,
                ]
            )
        ).hexdigest()
        record = await anyio.to_thread.run_sync(self._claim, who, key, fingerprint)
        if record is not None:
            if record.fingerprint != fingerprint:
                await _send_error(
                    send,
                    IdempotencyKeyReused(
                        "this Idempotency-Key was used with a different request; use a new key"
                    ),
                )
            elif record.status_code is None:
                await _send_error(
                    send, Conflict("a request with this Idempotency-Key is still being processed")
                )
            else:
                self.metrics.idempotent_replays.inc()
                headers = [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in json.loads(record.response_headers or "[]")
                ]
                headers.append((b"idempotent-replayed", b"true"))
                await send(
                    {
                        "type": "http.response.start",
                        "status": record.status_code,
                        "headers": headers,
                    }
                )
                await send({"type": "http.response.body", "body": record.response_body or b""})
            return

        sent_body = False

        async def replay_body() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 500
        response_headers: list[tuple[str, str]] = []
        response_body: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_headers = [
                    (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                    for k, v in message.get("headers", [])
                ]
            elif message["type"] == "http.response.body":
                response_body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        except BaseException:
            await anyio.to_thread.run_sync(self._finish, who, key, 500, "[]", b"")
            raise
        await anyio.to_thread.run_sync(
            self._finish, who, key, status, json.dumps(response_headers), b"".join(response_body)
        )

    def _claim(self, who: str, key: str, fingerprint: str) -> IdempotencyRecord | None:
        """Claims the key for this request (None), or the record of the request that holds it."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            if gateway_repository.claim_idempotency_key(conn, who, key, fingerprint, now):
                return None
            record = gateway_repository.idempotency_record(conn, who, key)
            if record is None:
                return (
                    None
                    if gateway_repository.claim_idempotency_key(conn, who, key, fingerprint, now)
                    else gateway_repository.idempotency_record(conn, who, key)
                )
            created = aware(record.created_at)
            if created < now - IDEMPOTENCY_TTL or (
                record.status_code is None and created < now - ABANDONED_AFTER
            ):
                # Expired, or left running by a worker that died: the key is free again.
                gateway_repository.release_idempotency_key(conn, who, key)
                gateway_repository.claim_idempotency_key(conn, who, key, fingerprint, now)
                return None
            return record

    def _finish(self, who: str, key: str, status: int, headers: str, body: bytes) -> None:
        with self.engine.begin() as conn:
            if status >= 500 or _no_store(headers):
                gateway_repository.release_idempotency_key(conn, who, key)
            else:
                gateway_repository.complete_idempotency_key(conn, who, key, status, headers, body)


def _no_store(headers: str) -> bool:
    """A response marked `Cache-Control: no-store` carries a secret (a session token) that
    must not sit in the idempotency table: it is not kept, and a retry runs again."""
    return any(
        name.lower() == "cache-control" and "no-store" in value.lower()
        for name, value in json.loads(headers)
    )


def aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
