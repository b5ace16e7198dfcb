"""`chainbill`: the indexer commands of `offchain.cli`, plus the gateway's own."""

from __future__ import annotations

from typing import Annotated

import typer

from offchain.cli import app
from offchain.cli_keys import keys_app
from offchain.cli_support import fail
from offchain.cli_webhooks import webhooks_app
from offchain.webhooks.sealing import SealingError, check_key

app.add_typer(keys_app, name="api-key")
app.add_typer(webhooks_app, name="webhooks")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serve the gateway (settings from the environment: DATABASE_URL, RPC_URL,
    CHAINBILL_MANIFEST, CHAINBILL_PUBLIC_URL, CHAINBILL_OPERATOR_KEY, ...)."""
    import uvicorn

    try:
        check_key()
    except SealingError as exc:
        raise fail(exc) from exc
    uvicorn.run(
        "api.main:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )


__all__ = ["app"]


if __name__ == "__main__":  # `python -m api.cli ...`: this tree's code, whatever is installed
    app()
