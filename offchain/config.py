"""Settings of the off-chain services, from the environment (or command-line options)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from offchain.db.engine import DEFAULT_DATABASE_URL
from offchain.manifest import DEPLOYMENTS_DIR

LOCAL_CHAIN_ID = 31337


@dataclass(frozen=True)
class Settings:
    database_url: str
    rpc_url: str
    manifest_path: Path
    confirmations: int | None  # None: the default for the manifest's chain

    @classmethod
    def from_env(cls) -> Settings:
        confirmations = os.environ.get("CHAINBILL_CONFIRMATIONS")
        return cls(
            database_url=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            rpc_url=os.environ.get("RPC_URL", "http://127.0.0.1:8545"),
            manifest_path=Path(
                os.environ.get("CHAINBILL_MANIFEST", DEPLOYMENTS_DIR / "local.json")
            ),
            confirmations=int(confirmations) if confirmations else None,
        )


def default_confirmations(chain_id: int) -> int:
    """Blocks after which the mirror treats data as final: 2 on a local Anvil, 12 elsewhere."""
    return 2 if chain_id == LOCAL_CHAIN_ID else 12
