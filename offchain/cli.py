"""`chainbill`: the off-chain services' command line."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from web3 import Web3

from offchain.config import Settings, default_confirmations
from offchain.db.engine import make_engine, upgrade_schema
from offchain.ha import LeaderLock
from offchain.indexer.indexer import Indexer, IndexerConfig, LeadershipLost, SyncResult
from offchain.indexer.rpc import NodeUnavailable, RpcClient
from offchain.manifest import Manifest, ManifestError
from offchain.reconcile import reconcile as reconcile_mirror

app = typer.Typer(
    help="chainbill's off-chain services: the indexer and reconciliation.", no_args_is_help=True
)
console = Console(stderr=True)
_ENV = Settings.from_env()

DatabaseOption = Annotated[
    str, typer.Option(envvar="DATABASE_URL", help="sqlite:///path or postgresql://...")
]
RpcOption = Annotated[str, typer.Option(envvar="RPC_URL", help="JSON-RPC URL of the node.")]
ManifestOption = Annotated[
    Path,
    typer.Option(
        envvar="CHAINBILL_MANIFEST", help="Deployment manifest written by `ape run deploy`."
    ),
]


def _manifest(path: Path) -> Manifest:
    try:
        return Manifest.load(path)
    except ManifestError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        console.print(f"received {signal.Signals(signum).name}: stopping after the current range")
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


@app.command()
def index(
    database_url: DatabaseOption = _ENV.database_url,
    rpc_url: RpcOption = _ENV.rpc_url,
    manifest: ManifestOption = _ENV.manifest_path,
    confirmations: Annotated[
        int | None,
        typer.Option(envvar="CHAINBILL_CONFIRMATIONS", help="Blocks until data is final."),
    ] = None,
    follow: Annotated[
        bool, typer.Option(help="Keep following the head after the backfill.")
    ] = True,
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls at the head.")] = 1.0,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Backfill the contracts' events into the mirror, then follow the head."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    deployment = _manifest(manifest)
    stop = _stop_on_signals()
    engine = make_engine(database_url)
    lock = LeaderLock(engine, f"chainbill-indexer:{deployment.chain_id}")
    if not lock.acquire(
        stop, on_wait=lambda: console.print("standby: another indexer leads this chain; waiting")
    ):
        engine.dispose()
        return
    rpc = RpcClient(rpc_url)
    try:
        upgrade_schema(engine)
        config = IndexerConfig(
            chain_id=deployment.chain_id,
            contracts=(
                deployment.address_of("SubscriptionManager"),
                deployment.address_of("InvoiceRegistry"),
            ),
            start_block=deployment.start_block,
            confirmations=confirmations
            if confirmations is not None
            else default_confirmations(deployment.chain_id),
            poll_interval=poll_interval,
        )
        with Indexer(engine, rpc, config) as indexer:  # stops its reading/writing threads
            _run_with_progress(indexer, stop, follow, quiet, lock.still_held)
    except NodeUnavailable as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(3) from exc
    except LeadershipLost as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(4) from exc
    finally:
        lock.release()
        rpc.close()
        engine.dispose()


def _run_with_progress(
    indexer: Indexer,
    stop: threading.Event,
    follow: bool,
    quiet: bool,
    still_leader: Callable[[], bool],
) -> None:
    started = time.monotonic()
    total_events = 0
    with Progress(
        TextColumn("[bold]indexing"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn(
            "{task.fields[events]} events, {task.fields[rate]} events/s, {task.fields[left]} blocks left"
        ),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    ) as progress:
        task = progress.add_task("index", total=None, events=0, rate=0, left="?")
        first_block: int | None = None

        def on_progress(result: SyncResult) -> None:
            nonlocal total_events, first_block
            if result.reorged_from is not None:
                console.print(f"reorg: rolled back from block {result.reorged_from}")
                return
            total_events += result.events
            if first_block is None:
                first_block = result.first_block
            elapsed = max(time.monotonic() - started, 1e-9)
            progress.update(
                task,
                total=max(result.head - first_block + 1, 1),
                completed=result.last_block - first_block + 1,
                events=total_events,
                rate=int(total_events / elapsed),
                left=max(result.head - result.last_block, 0),
            )

        indexer.run(stop, on_progress=on_progress, follow=follow, still_leader=still_leader)
    console.print(f"indexed {total_events} events in {time.monotonic() - started:.1f} s")


@app.command()
def reconcile(
    database_url: DatabaseOption = _ENV.database_url,
    rpc_url: RpcOption = _ENV.rpc_url,
    manifest: ManifestOption = _ENV.manifest_path,
) -> None:
    """Compare the mirror with the contracts' views; exit 1 on any difference."""
    deployment = _manifest(manifest)
    engine = make_engine(database_url)
    upgrade_schema(engine)
    web3 = Web3(Web3.HTTPProvider(rpc_url))
    if not web3.is_connected():
        console.print(f"[red]error:[/red] the node at {rpc_url} does not answer (set RPC_URL)")
        raise typer.Exit(3)
    block, differences = reconcile_mirror(engine, web3, deployment)
    for difference in differences:
        typer.echo(str(difference))
    typer.echo(f"reconciled at block {block}: {len(differences)} difference(s)")
    engine.dispose()
    if differences:
        raise typer.Exit(1)


@app.command()
def migrate(database_url: DatabaseOption = _ENV.database_url) -> None:
    """Create or upgrade the mirror's schema (the other commands do it too)."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    typer.echo(f"schema up to date at {engine.url.render_as_string(hide_password=True)}")
