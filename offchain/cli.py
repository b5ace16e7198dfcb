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

from offchain.cli_support import DatabaseOption
from offchain.config import Settings, default_confirmations
from offchain.db.engine import make_engine, upgrade_schema
from offchain.ha import LeaderLock
from offchain.indexer.indexer import Indexer, IndexerConfig, LeadershipLost, SyncResult
from offchain.indexer.rpc import NodeUnavailable, RpcClient
from offchain.keeper.chain import Chain
from offchain.keeper.dunning import DEFAULT_RETRY_SCHEDULE, parse_retry_schedule
from offchain.keeper.keeper import Keeper, KeeperConfig, PassResult
from offchain.keeper.locks import idle_senders, keeper_lock
from offchain.manifest import Manifest, ManifestError
from offchain.reconcile import reconcile as reconcile_mirror

app = typer.Typer(
    help="chainbill's off-chain services: the indexer, reconciliation and the keeper.",
    no_args_is_help=True,
)
console = Console(stderr=True)
_ENV = Settings.from_env()

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


KEY_ENV = "CHAINBILL_KEEPER_KEY"


def _keeper_key(key: str | None) -> str:
    if not key:
        console.print(
            f"[red]error:[/red] no keeper key: set {KEY_ENV} to the hex private key of the "
            "account that sends the charges (it pays their gas; fund it with ETH)"
        )
        raise typer.Exit(2)
    try:
        from eth_account import Account

        Account.from_key(key)
    except Exception as exc:
        console.print(
            f"[red]error:[/red] {KEY_ENV} is not a private key (expected 32 bytes of hex, "
            "0x-prefixed or not)"
        )
        raise typer.Exit(2) from exc
    return key


@app.command()
def keeper(
    database_url: DatabaseOption = _ENV.database_url,
    rpc_url: RpcOption = _ENV.rpc_url,
    manifest: ManifestOption = _ENV.manifest_path,
    key: Annotated[
        str | None,
        typer.Option(envvar=KEY_ENV, help="Hex private key of the keeper's account.", hidden=True),
    ] = None,
    confirmations: Annotated[
        int | None,
        typer.Option(envvar="CHAINBILL_CONFIRMATIONS", help="Blocks until a charge is final."),
    ] = None,
    once: Annotated[bool, typer.Option(help="Run one pass and stop.")] = False,
    poll_interval: Annotated[
        float, typer.Option(envvar="CHAINBILL_KEEPER_POLL_S", help="Seconds between passes.")
    ] = 5.0,
    max_gas_per_tx: Annotated[
        int, typer.Option(envvar="CHAINBILL_KEEPER_MAX_GAS", help="Gas limit of one batch.")
    ] = 10_000_000,
    max_batch: Annotated[int, typer.Option(help="Subscriptions in one chargeBatch at most.")] = 500,
    max_in_flight: Annotated[int, typer.Option(help="Pending transactions at once.")] = 16,
    replace_after_blocks: Annotated[
        int, typer.Option(help="Blocks without inclusion before a fee-bumped replacement.")
    ] = 3,
    max_fee_gwei: Annotated[
        float | None,
        typer.Option(envvar="CHAINBILL_KEEPER_MAX_FEE_GWEI", help="Cap on maxFeePerGas."),
    ] = None,
    min_tip_gwei: Annotated[float, typer.Option(help="Smallest priority fee, in gwei.")] = 1.0,
    retry_schedule: Annotated[
        str,
        typer.Option(
            envvar="CHAINBILL_DUNNING_SCHEDULE",
            help="Retries of a failed charge, as fractions of the grace period after the due date.",
        ),
    ] = ",".join(str(f) for f in DEFAULT_RETRY_SCHEDULE),
    at_risk_days: Annotated[
        float,
        typer.Option(
            envvar="CHAINBILL_AT_RISK_DAYS", help="Flag uncovered charges this far ahead."
        ),
    ] = 3.0,
) -> None:
    """Charge due subscriptions (chargeBatch), retry failed ones on the dunning schedule,
    finalize lapses and flag charges at risk. Needs the mirror (`chainbill index`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    private_key = _keeper_key(key)
    try:
        schedule = parse_retry_schedule(retry_schedule)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    deployment = _manifest(manifest)
    stop = _stop_on_signals()
    engine = make_engine(database_url)
    rpc = RpcClient(rpc_url)
    manager = deployment.address_of("SubscriptionManager")
    chain = Chain(rpc, deployment.chain_id, manager, private_key)
    # One process per key: two would fight over its nonces. On SQLite, one keeper at all
    # (no row locks to share the work with).
    lock = keeper_lock(engine, deployment.chain_id, chain.sender)
    if not lock.acquire(
        stop,
        on_wait=lambda: console.print(
            "standby: another keeper runs with this key (or on this SQLite database); waiting"
        ),
    ):
        engine.dispose()
        rpc.close()
        return
    try:
        upgrade_schema(engine)
        config = KeeperConfig(
            chain_id=deployment.chain_id,
            manager=manager,
            confirmations=confirmations
            if confirmations is not None
            else default_confirmations(deployment.chain_id),
            max_gas_per_tx=max_gas_per_tx,
            max_batch=max_batch,
            max_in_flight=max_in_flight,
            replace_after_blocks=replace_after_blocks,
            max_fee_per_gas=None if max_fee_gwei is None else int(max_fee_gwei * 10**9),
            min_priority_fee=int(min_tip_gwei * 10**9),
            retry_schedule=schedule,
            at_risk_days=at_risk_days,
        )
        worker = Keeper(
            engine, chain, config, sender_idle=idle_senders(engine, deployment.chain_id)
        )
        console.print(f"keeper {chain.sender} on chain {deployment.chain_id}")

        def report(result: PassResult) -> None:
            if result.sent or result.mined or result.dropped or result.at_risk:
                console.print(
                    f"sent {result.charge_transactions} batch(es) of {len(result.charges_sent)} "
                    f"charge(s), {result.lapse_transactions} lapse(s), {result.replaced} "
                    f"replacement(s); {result.mined} mined, {result.dropped} dropped, "
                    f"{result.unresolved} unresolved"
                    + ("" if result.at_risk is None else f"; {result.at_risk} at risk")
                )

        if once:
            report(worker.run_once(stop))
        else:
            worker.run(stop, poll_interval=poll_interval, on_pass=report)
    except NodeUnavailable as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(3) from exc
    finally:
        lock.release()
        rpc.close()
        engine.dispose()
