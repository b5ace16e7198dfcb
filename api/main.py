"""The gateway app: `create_app()` for tests and embedding, `app` for uvicorn."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from api.endpoints import analytics as analytics_endpoints
from api.endpoints import auth, health, pages
from api.endpoints import invoices as invoice_endpoints
from api.endpoints import lookups as lookup_endpoints
from api.endpoints import webhooks as webhook_endpoints
from api.errors import install_error_handlers
from api.gateway import Gateway
from api.middleware import (
    ConcurrencyLimitMiddleware,
    IdempotencyMiddleware,
    Metrics,
    MetricsMiddleware,
    RateLimitMiddleware,
    TokenBuckets,
    pool_capacity,
)
from api.settings import GatewaySettings
from offchain.db.engine import make_engine, upgrade_schema
from offchain.manifest import Manifest
from offchain.webhooks.sealing import check_key

API_DESCRIPTION = """chainbill's gateway over the SQL mirror of its contracts.

Amounts are integers in token base units, sent as decimal strings (uint256 does not fit a
JSON number); times are unix seconds. Authenticate with a merchant API key or a customer
session (Sign-In with Ethereum) as `Authorization: Bearer ...`. Every POST honours an
`Idempotency-Key` header. Errors are `{"error": {"code", "message"}}` with a 4xx status."""

SWITCH_INTERVAL_S = 0.0005


def create_app(settings: GatewaySettings | None = None, engine: Engine | None = None) -> FastAPI:
    # Each request hops between the event loop and the thread pool a few times; with the
    # default 5 ms GIL switch interval every hop under load can wait that long for the GIL.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    settings = settings or GatewaySettings.from_env()
    check_key()  # a malformed webhook secrets key stops the start, not the first request
    # No pre-ping: a round trip on every request. A connection the server dropped fails
    # one request with a 503 (see errors.py) and the pool replaces it.
    engine = engine or make_engine(settings.database_url, pool_pre_ping=False)
    upgrade_schema(engine)
    manifest = Manifest.load(settings.manifest_path)
    gateway = Gateway.open(settings, engine, manifest)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="chainbill gateway",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.metrics = metrics
    install_error_handlers(app)
    # Outermost last: metrics see every response, rate limits run before idempotency work.
    app.add_middleware(IdempotencyMiddleware, engine=engine, metrics=metrics)
    app.add_middleware(ConcurrencyLimitMiddleware, limit=pool_capacity(engine))
    buckets = (
        TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
        if settings.rate_limit_per_s > 0
        else None
    )
    app.add_middleware(RateLimitMiddleware, buckets=buckets, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(health.router)
    app.include_router(lookup_endpoints.router)
    app.include_router(analytics_endpoints.router)
    app.include_router(auth.router)
    app.include_router(invoice_endpoints.router)
    app.include_router(pages.router)
    app.include_router(webhook_endpoints.router)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory: `uvicorn --factory api.main:app_from_env`."""
    return create_app()
