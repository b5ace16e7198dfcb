from __future__ import annotations

from pydantic import BaseModel


class IndexerHealth(BaseModel):
    last_block: int
    finalized_block: int
    head: int | None
    lag_blocks: int | None


class Health(BaseModel):
    status: str
    database: bool
    node: bool
    chain_id: int
    indexer: IndexerHealth | None


class Pong(BaseModel):
    ok: bool = True
