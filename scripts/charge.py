"""Charge due subscriptions (run by anyone: the merchant's keeper, usually).

ape run charge --account TEST::4 --all-due
ape run charge --account TEST::4 --id 1 --id 2
"""

from __future__ import annotations

import click
from ape import chain
from ape.cli import ConnectedProviderCommand, account_option

from scripts._common import LOCAL_CHAIN_ID, contract, event_args, load_manifest, parse_duration

SKIP_REASONS = ["not found", "not due", "not live", "grace expired"]
FAILURE_REASONS = ["insufficient allowance", "insufficient balance", "transfer rejected"]


@click.command(cls=ConnectedProviderCommand)
@account_option()
@click.option("--id", "ids", type=int, multiple=True, help="Subscription id (repeatable).")
@click.option("--all-due", is_flag=True, help="Charge every subscription whose period is due now.")
@click.option(
    "--advance",
    default=None,
    help="Local chain only: move the chain's clock forward first (e.g. 30d), to see a period fall due.",
)
@click.option(
    "--manifest", default=None, help="Deployment manifest (default: deployments/<network>.json)."
)
def cli(
    account: object, ids: tuple[int, ...], all_due: bool, advance: str | None, manifest: str | None
) -> None:
    """Send one chargeBatch for the given (or all due) subscriptions."""
    deployment = load_manifest(manifest)
    if advance:
        if chain.chain_id != LOCAL_CHAIN_ID:
            raise click.ClickException("--advance only works on a local chain (chain id 31337)")
        chain.pending_timestamp += parse_duration(advance)
        chain.mine()
    manager = contract(deployment, "SubscriptionManager")
    selected = list(ids)
    if all_due:
        now = chain.pending_timestamp
        for subscription_id in range(1, manager.subscriptionCount() + 1):
            due_at = manager.nextChargeAt(subscription_id)
            if 0 < due_at <= now and subscription_id not in selected:
                selected.append(subscription_id)
    if not selected:
        raise click.ClickException(
            "nothing to charge: pass --id N or --all-due (no subscription is due now)"
        )
    receipt = manager.chargeBatch(selected, sender=account)
    for log in event_args(receipt, manager.address, "Charged"):
        click.echo(
            f"subscription {log.subscriptionId}: charged {log.amount} base units, paid through {log.paidThrough}"
        )
    for log in event_args(receipt, manager.address, "ChargeFailed"):
        click.echo(
            f"subscription {log.subscriptionId}: FAILED ({FAILURE_REASONS[log.reason]}), now past due"
        )
    for log in event_args(receipt, manager.address, "ChargeSkipped"):
        click.echo(f"subscription {log.subscriptionId}: skipped ({SKIP_REASONS[log.reason]})")
