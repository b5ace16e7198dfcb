"""Subscribe to a plan (run by the customer): approves the manager for a number of
periods, sets the spending cap, and pays the first period unless the plan has a trial.

    ape run subscribe --account TEST::2 --plan 1 --periods 12
"""

from __future__ import annotations

import click
from ape.cli import ConnectedProviderCommand, account_option

from scripts._common import contract, erc20, event_args, load_manifest, parse_amount, show_amount


@click.command(cls=ConnectedProviderCommand)
@account_option()
@click.option("--plan", "plan_id", type=int, required=True, help="Plan id.")
@click.option(
    "--cap",
    default=None,
    help="Most that may be charged per period, in whole tokens (default: the price).",
)
@click.option(
    "--periods",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="How many periods the token allowance covers.",
)
@click.option(
    "--manifest", default=None, help="Deployment manifest (default: deployments/<network>.json)."
)
def cli(account: object, plan_id: int, cap: str | None, periods: int, manifest: str | None) -> None:
    """Approve and subscribe."""
    deployment = load_manifest(manifest)
    manager = contract(deployment, "SubscriptionManager")
    plan = manager.getPlan(plan_id)
    if int(plan.merchant, 16) == 0:
        raise click.ClickException(
            f"there is no plan {plan_id} (plans run from 1 to {manager.planCount()})"
        )
    token = erc20(plan.token)
    cap_units = parse_amount(cap, token) if cap else int(plan.price)
    token.approve(manager, cap_units * periods, sender=account)
    receipt = manager.subscribe(plan_id, cap_units, sender=account)
    subscribed = event_args(receipt, manager.address, "Subscribed")[0]
    charged = event_args(receipt, manager.address, "Charged")
    first = (
        f"charged {show_amount(int(charged[0].amount), token)}"
        if charged
        else "trial, nothing charged yet"
    )
    click.echo(
        f"subscription {subscribed.subscriptionId} to plan {plan_id}: {first}; "
        f"next charge at {subscribed.paidThrough} (unix s), cap {show_amount(cap_units, token)} per period"
    )
