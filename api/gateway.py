"""What every request shares: settings, the database engine, the deployment and the chain."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from api.services.chain import Chain
from api.settings import GatewaySettings
from offchain.db import gateway_repository
from offchain.manifest import Manifest


@dataclass
class Gateway:
    settings: GatewaySettings
    engine: Engine
    manifest: Manifest
    chain: Chain
    link_key: bytes  # keys the HMAC of public invoice links
    # The engine read-only endpoints take their connection from. On PostgreSQL it runs in
    # autocommit: under READ COMMITTED each statement sees its own snapshot inside a
    # transaction too, so BEGIN and the ROLLBACK on return would be two round trips that
    # buy nothing. SQLite keeps its transaction: there it is what gives one snapshot.
    read_engine: Engine
    # SHA-256 of a verified API key -> its merchant, trusted until a revocation is seen:
    # see api_key_cache_s and api.deps._merchant_of_key.
    verified_keys: dict[str, str] = field(default_factory=dict)
    # api_key_revocations() as last read (None: not yet), and when (monotonic seconds).
    key_revocations: tuple[int, datetime | None] | None = None
    key_revocations_read_at: float = float("-inf")

    @classmethod
    def open(cls, settings: GatewaySettings, engine: Engine, manifest: Manifest) -> Gateway:
        if settings.secret_key:
            secret = settings.secret_key
        else:
            with engine.begin() as conn:
                secret = gateway_repository.get_or_create_secret(
                    conn, "link_key", secrets.token_hex(32), datetime.now(UTC)
                )
        return cls(
            settings=settings,
            engine=engine,
            manifest=manifest,
            chain=Chain(settings.rpc_url, manifest, settings.operator_key),
            link_key=hashlib.sha256(
                b"chainbill public invoice link\x00" + secret.encode()
            ).digest(),
            read_engine=engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine,
        )

    @property
    def chain_id(self) -> int:
        return self.manifest.chain_id

    @property
    def registry(self) -> str:
        return self.chain.registry_address

    @property
    def manager(self) -> str:
        return self.chain.manager_address

    def public_token(self, invoice_id: str) -> str:
        """The unguessable part of an invoice's public link: 128 bits of HMAC of its id."""
        mac = hmac.new(self.link_key, invoice_id.lower().encode(), hashlib.sha256).hexdigest()
        return mac[:32]

    def check_public_token(self, invoice_id: str, token: str) -> bool:
        return hmac.compare_digest(self.public_token(invoice_id), token.lower())

    def public_link(self, invoice_id: str) -> str:
        return (
            f"{self.settings.public_url}/pay/{invoice_id.lower()}/{self.public_token(invoice_id)}"
        )
