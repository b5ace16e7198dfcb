"""`chainbill api-key create|list|revoke`: shown once, stored hashed, scoped, revocable."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from api.cli import app
from offchain.db.models import ApiKey
from tests.api.conftest import bearer


def run(engine: Engine, *args: str) -> Any:
    url = engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(app, ["api-key", *args, "--database-url", url])


def create(engine: Engine, merchant: str, name: str = "ERP sync") -> str:
    result = run(engine, "create", "--merchant", merchant, "--name", name)
    assert result.exit_code == 0, result.stderr
    return str(result.stdout.strip())


def test_create_prints_the_key_once_and_stores_only_its_hash(engine: Engine, merchant: Any) -> None:
    result = run(engine, "create", "--merchant", merchant.address, "--name", "  ERP sync ")
    assert result.exit_code == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("cbk_") and len(result.stdout.splitlines()) == 1
    assert "shown only now" in result.stderr and key not in result.stderr
    with engine.connect() as conn:
        rows = conn.execute(select(ApiKey.__table__)).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.merchant == merchant.address.lower() and row.name == "ERP sync"
    assert row.secret_sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(tuple(row)) and key.split("_")[2] not in repr(tuple(row))
    assert key.split("_")[1] == row.prefix


def test_the_key_authenticates_as_its_merchant_until_revoked(
    engine: Engine, client: TestClient, merchant: Any
) -> None:
    from tests.api.test_auth import install_whoami

    install_whoami(client.app)  # type: ignore[arg-type]
    key = create(engine, merchant.address)
    whoami = client.get("/test/whoami", headers=bearer(key))
    assert whoami.json() == {"kind": "merchant", "address": merchant.address.lower()}

    prefix = key.split("_")[1]
    revoked = run(engine, "revoke", prefix)
    assert revoked.exit_code == 0 and prefix in revoked.stdout
    refused = client.get("/test/whoami", headers=bearer(key))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]
    again = run(engine, "revoke", prefix)
    assert again.exit_code == 2 and "no live API key" in again.stderr


def test_tampered_keys_are_refused(engine: Engine, client: TestClient, merchant: Any) -> None:
    from tests.api.test_auth import install_whoami

    install_whoami(client.app)  # type: ignore[arg-type]
    key = create(engine, merchant.address)
    _, prefix, secret = key.split("_", 2)
    other = create(engine, merchant.address, "other")
    for forged in (
        f"cbk_{prefix}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}",  # wrong secret
        f"cbk_{other.split('_')[1]}_{secret}",  # another key's prefix
        f"cbk_{prefix}",  # no secret
        "cbk_",
        "cbk_nope_nope",
    ):
        assert client.get("/test/whoami", headers=bearer(forged)).status_code == 401, forged


def test_list_shows_every_key_but_never_a_secret(
    engine: Engine, merchant: Any, stranger: Any
) -> None:
    mine = create(engine, merchant.address, "shop")
    theirs = create(engine, stranger.address, "other shop")
    run(engine, "revoke", theirs.split("_")[1])
    listing = run(engine, "list")
    assert listing.exit_code == 0
    lines = listing.stdout.strip().splitlines()
    assert len(lines) == 2
    assert mine.split("_")[1] in lines[0] and merchant.address.lower() in lines[0]
    assert lines[0].endswith("live") and not lines[1].endswith("live")
    for key in (mine, theirs):
        assert key not in listing.stdout and key.split("_", 2)[2] not in listing.stdout
    only = run(engine, "list", "--merchant", merchant.address.lower())
    assert only.stdout.strip().splitlines() == lines[:1]


def test_bad_input_exits_2_with_a_message(engine: Engine, merchant: Any) -> None:
    for args, complaint in (
        (["create", "--merchant", "0x1234", "--name", "x"], "not an Ethereum address"),
        (["create", "--merchant", "not an address", "--name", "x"], "not an Ethereum address"),
        (
            ["create", "--merchant", merchant.address.lower().replace("0x", "0X"), "--name", "x"],
            "not an Ethereum address",
        ),
        (["create", "--merchant", merchant.address, "--name", "   "], "name"),
        (["create", "--merchant", merchant.address, "--name", "x" * 101], "name"),
        (["list", "--merchant", "0xzz"], "not an Ethereum address"),
        (["revoke", "000000000000"], "no live API key"),
    ):
        result = run(engine, *args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert complaint in result.stderr, (args, result.stderr)
    with engine.connect() as conn:
        assert conn.execute(select(ApiKey.id)).all() == []
