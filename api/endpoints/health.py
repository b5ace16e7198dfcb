"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import GatewayDep
from api.errors import ChainUnavailable
from api.schemas.health import Health, IndexerHealth, Pong
from offchain.db import repository

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database does not answer"}},
)
def health(gateway: GatewayDep, response: Response) -> Health:
    """The database, the node and how far the mirror is behind the chain. 503 only when the
    database is down (the gateway can still serve the mirror while the node is away)."""
    database_ok = True
    indexer: IndexerHealth | None = None
    try:
        with gateway.engine.connect() as conn:
            conn.execute(text("select 1"))
            state = repository.get_state(conn, gateway.chain_id)
    except SQLAlchemyError:
        database_ok = False
        state = None
    head: int | None
    try:
        head = gateway.chain.block_number()
    except ChainUnavailable:
        head = None
    if state is not None:
        indexer = IndexerHealth(
            last_block=state.last_block,
            finalized_block=state.finalized_block,
            head=head,
            lag_blocks=None if head is None else max(head - state.last_block, 0),
        )
    status = "ok" if database_ok and head is not None else "degraded"
    if not database_ok:
        response.status_code = 503
    return Health(
        status=status,
        database=database_ok,
        node=head is not None,
        chain_id=gateway.chain_id,
        indexer=indexer,
    )


@router.get("/ping", response_model=Pong)
def ping() -> Pong:
    """Liveness without touching the database or the node: the benchmark's baseline."""
    return Pong()


def _metrics_registry(request: Request) -> object:
    return request.app.state.metrics.registry


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(registry: Annotated[object, Depends(_metrics_registry)]) -> Response:
    """Prometheus metrics of this worker."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]
