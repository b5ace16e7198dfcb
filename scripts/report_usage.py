"""Report metered usage of a subscription (run by the merchant or its operator).

    ape run report_usage --account TEST::1 --subscription 2 --units 120 --record call-log-2026-11-21

The record id is hashed on-chain and works once per merchant, so re-sending the same
report after a time-out cannot bill it twice.
"""

from __future__ import annotations

import click
from ape.cli import ConnectedProviderCommand, account_option
from eth_utils import keccak

from scripts._common import contract, erc20, event_args, load_manifest, show_amount


@click.command(cls=ConnectedProviderCommand)
@account_option()
@click.option("--subscription", "subscription_id", type=int, required=True, help="Subscription id.")
@click.option("--units", type=click.IntRange(min=1), required=True, help="Units used.")
@click.option("--record", required=True, help="Merchant-unique id of this usage record.")
@click.option(
    "--manifest", default=None, help="Deployment manifest (default: deployments/<network>.json)."
)
def cli(
    account: object, subscription_id: int, units: int, record: str, manifest: str | None
) -> None:
    """Report usage; prints what the next charge will be."""
    deployment = load_manifest(manifest)
    manager = contract(deployment, "SubscriptionManager")
    receipt = manager.reportUsage(subscription_id, units, keccak(text=record), sender=account)
    reported = event_args(receipt, manager.address, "UsageReported")[0]
    token = erc20(manager.getPlan(manager.getSubscription(subscription_id).planId).token)
    click.echo(
        f"subscription {subscription_id}: {reported.unbilledUnits} units unbilled; next charge "
        f"{show_amount(int(manager.amountDue(subscription_id)), token)} at {reported.billableAt} (unix s)"
    )
