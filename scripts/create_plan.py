"""Create a subscription plan (run by the merchant, who receives its charges).

ape run create_plan --account TEST::1 --price 9.99 --period 30d --trial 14d --grace 3d
"""

from __future__ import annotations

import click
from ape.cli import ConnectedProviderCommand, account_option

from scripts._common import (
    contract,
    erc20,
    event_args,
    load_manifest,
    parse_amount,
    parse_duration,
    show_amount,
)


@click.command(cls=ConnectedProviderCommand)
@account_option()
@click.option(
    "--price",
    required=True,
    help="Price per period in whole tokens, e.g. 9.99 (exact, no rounding).",
)
@click.option(
    "--period", default="30d", show_default=True, help="Billing period: 30d, 1w, 12h or seconds."
)
@click.option("--trial", default="0", show_default=True, help="Free trial before the first charge.")
@click.option(
    "--grace",
    default="3d",
    show_default=True,
    help="Time a due charge may be retried before the subscription lapses.",
)
@click.option(
    "--token", default=None, help="ERC-20 token address (default: the local test stablecoin)."
)
@click.option(
    "--unit-price",
    default=None,
    help="Metered plan: price per usage unit above the included ones, in whole tokens.",
)
@click.option(
    "--included-units",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Metered plan: units included in every period.",
)
@click.option(
    "--manifest", default=None, help="Deployment manifest (default: deployments/<network>.json)."
)
def cli(
    account: object,
    price: str,
    period: str,
    trial: str,
    grace: str,
    token: str | None,
    unit_price: str | None,
    included_units: int,
    manifest: str | None,
) -> None:
    """Create a plan with immutable terms (metered with --unit-price)."""
    deployment = load_manifest(manifest)
    manager = contract(deployment, "SubscriptionManager")
    plan_token = erc20(token or deployment.address_of("MockStablecoin"))
    units = parse_amount(price, plan_token)
    terms = (
        plan_token,
        units,
        parse_duration(period),
        parse_duration(trial),
        parse_duration(grace),
    )
    if unit_price is None:
        receipt = manager.createPlan(*terms, sender=account)
    else:
        per_unit = parse_amount(unit_price, plan_token)
        receipt = manager.createMeteredPlan(*terms, per_unit, included_units, sender=account)
    created = event_args(receipt, manager.address, "PlanCreated")[0]
    metered = (
        f", {show_amount(int(created.unitPrice), plan_token)} per unit above {created.includedUnits}"
        if unit_price is not None
        else ""
    )
    click.echo(
        f"plan {created.planId}: {show_amount(units, plan_token)} every {parse_duration(period)} s{metered}, "
        f"trial {parse_duration(trial)} s, grace {parse_duration(grace)} s, paid to {created.merchant}"
    )
