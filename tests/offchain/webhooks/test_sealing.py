"""Signing secrets at rest: sealed under CHAINBILL_WEBHOOK_SECRETS_KEY when it is set (a
copy of the database alone signs nothing), opened to sign, rotated key by key; a missing or
wrong key is named, and a delivery it stops is retried, never lost. On SQLite and
PostgreSQL, with a real receiver checking the signatures."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine
from typer.testing import CliRunner

from api.cli import app
from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookDeliveryStatus, WebhookEndpoint
from offchain.webhooks import endpoints
from offchain.webhooks.delivery import Deliverer, DeliveryPolicy
from offchain.webhooks.producer import produce_all
from offchain.webhooks.sealing import SECRETS_KEY_ENV, SealingError, reseal, seal, unseal
from tests.offchain.indexer.helpers import Mirror
from tests.offchain.webhooks.receiver import Receiver
from tests.offchain.webhooks.test_delivery import an_event_for, deliveries

SECRET = endpoints.new_secret()
ONE_TRY = DeliveryPolicy(max_attempts=5, base_delay_s=0, max_delay_s=0, timeout_s=5)


def _key() -> str:
    return Fernet.generate_key().decode()


def _stored(engine: Engine) -> list[WebhookEndpoint]:
    with engine.connect() as conn:
        return repo.all_endpoints(conn)


def test_without_a_key_secrets_are_stored_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRETS_KEY_ENV, raising=False)
    assert seal(SECRET) == SECRET and unseal(SECRET) == SECRET


def test_a_sealed_secret_hides_it_and_opens_only_with_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = _key(), _key()
    monkeypatch.setenv(SECRETS_KEY_ENV, old)
    sealed = seal(SECRET)
    assert sealed.startswith("fernet:") and SECRET not in sealed and seal(SECRET) != sealed
    assert unseal(sealed) == SECRET

    # Rotation: the new key first seals; the old one still opens what it sealed.
    monkeypatch.setenv(SECRETS_KEY_ENV, f"{new}, {old}")
    assert unseal(sealed) == SECRET
    resealed = reseal(sealed)
    monkeypatch.setenv(SECRETS_KEY_ENV, new)
    assert unseal(resealed) == SECRET
    with pytest.raises(SealingError, match="not in CHAINBILL_WEBHOOK_SECRETS_KEY"):
        unseal(sealed)  # the old key is gone
    monkeypatch.delenv(SECRETS_KEY_ENV)
    with pytest.raises(SealingError, match="set CHAINBILL_WEBHOOK_SECRETS_KEY"):
        unseal(resealed)
    monkeypatch.setenv(SECRETS_KEY_ENV, "not-a-key")
    with pytest.raises(SealingError, match="Fernet keys"):
        seal(SECRET)


def test_deliveries_are_signed_with_the_sealed_secret_and_wait_for_a_missing_key(
    engine: Engine,
    mirror: Mirror,
    issue: Callable[..., bytes],
    chain: Any,
    merchant: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = _key()
    monkeypatch.setenv(SECRETS_KEY_ENV, key)
    an_event_for(receiver.url, engine, mirror, issue, chain, merchant, receiver)
    [secret] = receiver.secrets
    [stored] = _stored(engine)
    assert stored.secret.startswith("fernet:") and secret not in stored.secret

    with Deliverer(engine, ONE_TRY) as deliverer:
        deliverer.deliver_due()
    [delivered] = deliveries(engine)
    assert delivered.status == WebhookDeliveryStatus.SUCCEEDED  # the receiver checked it
    assert len(receiver.processed_ids()) == 1

    # Rotated with a grace period: the previous secret, sealed too, still signs.
    with engine.begin() as conn:
        rotated = endpoints.rotate_secret(conn, stored.public_id, None, grace_s=3600)
    [stored] = _stored(engine)
    assert stored.previous_secret is not None and stored.previous_secret.startswith("fernet:")
    now = datetime.now(UTC)
    assert endpoints.signing_secrets(stored, now) == [rotated.secret, secret]
    assert endpoints.signing_secrets(stored, now + timedelta(hours=2)) == [rotated.secret]

    # The worker started without the key: nothing is sent, and nothing is lost.
    monkeypatch.delenv(SECRETS_KEY_ENV)
    receiver.secrets = [rotated.secret]
    issue()
    chain.mine(3)
    mirror.sync()
    produce_all(engine, mirror.chain_id)
    with Deliverer(engine, ONE_TRY) as deliverer:
        deliverer.deliver_due()
    waiting = [d for d in deliveries(engine) if d.status == WebhookDeliveryStatus.PENDING]
    assert len(waiting) == 1 and SECRETS_KEY_ENV in (waiting[0].last_error or "")
    assert len(receiver.processed_ids()) == 1
    monkeypatch.setenv(SECRETS_KEY_ENV, key)
    with Deliverer(engine, ONE_TRY) as deliverer:
        deliverer.deliver_due()
    assert {d.status for d in deliveries(engine)} == {WebhookDeliveryStatus.SUCCEEDED}
    assert len(receiver.processed_ids()) == 2


def test_seal_secrets_seals_what_was_stored_in_the_clear(
    engine: Engine, merchant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRETS_KEY_ENV, raising=False)
    with engine.begin() as conn:
        created = endpoints.create_endpoint(conn, merchant.address, "https://crm.example/hook")
    assert _stored(engine)[0].secret == created.secret  # no key: in the clear
    url = engine.url.render_as_string(hide_password=False)
    command = ["webhooks", "seal-secrets", "--database-url", url]

    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 2 and SECRETS_KEY_ENV in refused.stderr
    assert _stored(engine)[0].secret == created.secret, "nothing written"

    monkeypatch.setenv(SECRETS_KEY_ENV, _key())
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 0, done.stderr
    assert "sealed 1 secret(s)" in done.stdout
    [stored] = _stored(engine)
    assert stored.secret.startswith("fernet:")
    assert endpoints.signing_secrets(stored, datetime.now(UTC)) == [created.secret]


def test_a_malformed_key_stops_the_worker_and_the_gateway_at_start(
    engine: Engine, mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRETS_KEY_ENV, "not-a-key")
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    url = engine.url.render_as_string(hide_password=False)
    worker = CliRunner().invoke(
        app, ["webhooks", "run", "--once", "--database-url", url, "--manifest", str(manifest)]
    )
    assert worker.exit_code == 2 and SECRETS_KEY_ENV in worker.stderr
    gateway = CliRunner().invoke(app, ["serve", "--port", "1"])  # refused before it listens
    assert gateway.exit_code == 2 and "Fernet keys" in gateway.stderr
