"""The gateway's settings, from the environment (the `chainbill serve` options set them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from offchain.config import Settings


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None


@dataclass(frozen=True)
class GatewaySettings:
    database_url: str
    rpc_url: str
    manifest_path: Path
    # The origin customers open invoice pages on; Sign-In with Ethereum messages must name
    # its host as their domain.
    public_url: str = "http://127.0.0.1:8000"
    # Keys public invoice links are derived from; None: one generated and kept in the database.
    secret_key: str | None = None
    # A private key (0x-hex) of an operator the merchants approved: when set, the gateway
    # sends invoice transactions itself instead of returning them unsigned.
    operator_key: str | None = None
    session_ttl_s: int = 24 * 3600
    nonce_ttl_s: int = 10 * 60
    # Requests per second per client (API key, session or address), with bursts up to
    # `rate_limit_burst`; 0 turns rate limiting off.
    rate_limit_per_s: int = 20
    rate_limit_burst: int = 60
    # How long a worker trusts the API keys it has verified without looking for new
    # revocations (one small read per worker per period, whatever the number of keys): a
    # revoked key is refused by every worker at most this many seconds later (0: each
    # request reads its key).
    api_key_cache_s: float = 2.0
    # How long a worker reuses the newest indexed block's time (a view's overdue is judged
    # by it) and the node's latest block time (the 'now' of lists and statements).
    block_time_cache_s: float = 1.0

    @classmethod
    def from_env(cls) -> GatewaySettings:
        base = Settings.from_env()
        return cls(
            database_url=base.database_url,
            rpc_url=base.rpc_url,
            manifest_path=base.manifest_path,
            public_url=os.environ.get("CHAINBILL_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/"),
            secret_key=os.environ.get("CHAINBILL_SECRET_KEY") or None,
            operator_key=os.environ.get("CHAINBILL_OPERATOR_KEY") or None,
            session_ttl_s=_int("CHAINBILL_SESSION_TTL_S", 24 * 3600),
            nonce_ttl_s=_int("CHAINBILL_NONCE_TTL_S", 10 * 60),
            rate_limit_per_s=_int("CHAINBILL_RATE_LIMIT_PER_S", 20),
            rate_limit_burst=_int("CHAINBILL_RATE_LIMIT_BURST", 60),
            api_key_cache_s=float(os.environ.get("CHAINBILL_API_KEY_CACHE_S") or 2.0),
            block_time_cache_s=float(os.environ.get("CHAINBILL_BLOCK_TIME_CACHE_S") or 1.0),
        )

    def with_overrides(self, **changes: object) -> GatewaySettings:
        return replace(self, **changes)  # type: ignore[arg-type]
