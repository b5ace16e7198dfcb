"""`chainbill api-key create|list|revoke`: merchant API keys for the gateway."""

from __future__ import annotations

from typing import Annotated

import typer

from offchain import apikeys
from offchain.cli_support import DatabaseOption, open_mirror
from offchain.config import Settings

keys_app = typer.Typer(help="Merchant API keys for the gateway.", no_args_is_help=True)
_ENV = Settings.from_env()
_REFUSALS = (apikeys.ApiKeyError,)


@keys_app.command("create")
def create(
    merchant: Annotated[str, typer.Option(help="The merchant address the key acts for.")],
    name: Annotated[str, typer.Option(help="What the key is for (e.g. 'ERP sync').")],
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """Create a key. It is printed once: store it now, only its hash is kept."""
    with open_mirror(database_url, write=True, refusals=_REFUSALS) as conn:
        created = apikeys.create_key(conn, merchant, name)
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
    with open_mirror(database_url, write=False, refusals=_REFUSALS) as conn:
        keys = apikeys.list_keys(conn, merchant)
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
    with open_mirror(database_url, write=True, refusals=_REFUSALS) as conn:
        apikeys.revoke_key(conn, prefix)
    typer.echo(f"revoked {prefix}")
