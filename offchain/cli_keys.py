"""`chainbill api-key create|list|revoke`: merchant API keys for the gateway."""

from __future__ import annotations

from typing import Annotated

import typer

from offchain import apikeys
from offchain.config import Settings
from offchain.db.engine import make_engine, upgrade_schema

keys_app = typer.Typer(help="Merchant API keys for the gateway.", no_args_is_help=True)
_ENV = Settings.from_env()
DatabaseOption = Annotated[
    str, typer.Option(envvar="DATABASE_URL", help="sqlite:///path or postgresql://...")
]


@keys_app.command("create")
def create(
    merchant: Annotated[str, typer.Option(help="The merchant address the key acts for.")],
    name: Annotated[str, typer.Option(help="What the key is for (e.g. 'ERP sync').")],
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """Create a key. It is printed once: store it now, only its hash is kept."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    try:
        with engine.begin() as conn:
            created = apikeys.create_key(conn, merchant, name)
    except apikeys.ApiKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    typer.echo(created.key)
    typer.echo(
        f"key {created.prefix} for merchant {created.merchant} ({created.name}); shown only now",
        err=True,
    )


@keys_app.command("list")
def list_keys(
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's keys.")] = None,
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """List keys (prefix, merchant, name, created, revoked); never the secrets."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    try:
        with engine.connect() as conn:
            keys = apikeys.list_keys(conn, merchant)
    except apikeys.ApiKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    for key in keys:
        revoked = key.revoked_at.isoformat() if key.revoked_at else "live"
        typer.echo(
            f"{key.prefix}\t{key.merchant}\t{key.name}\t{key.created_at.isoformat()}\t{revoked}"
        )


@keys_app.command("revoke")
def revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (see `list`).")],
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    try:
        with engine.begin() as conn:
            apikeys.revoke_key(conn, prefix)
    except apikeys.ApiKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    typer.echo(f"revoked {prefix}")
