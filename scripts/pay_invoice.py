"""Pay an invoice (run by the customer, or anyone paying on its behalf).

    ape run pay_invoice --account TEST::2 --merchant 0x7099...79C8 --number INV-2026-0001

Pays what is due unless --amount is given (installments, where the invoice allows them).
"""

from __future__ import annotations

import click
from ape.cli import ConnectedProviderCommand, account_option
from eth_utils import keccak

from scripts._common import contract, erc20, load_manifest, parse_amount, show_amount

STATUSES = ["none", "open", "partially paid", "paid", "void"]


@click.command(cls=ConnectedProviderCommand)
@account_option()
@click.option("--merchant", required=True, help="The merchant's address.")
@click.option("--number", required=True, help="The business invoice number.")
@click.option("--amount", default=None, help="Amount in whole tokens (default: everything due).")
@click.option(
    "--manifest", default=None, help="Deployment manifest (default: deployments/<network>.json)."
)
def cli(
    account: object, merchant: str, number: str, amount: str | None, manifest: str | None
) -> None:
    """Approve (if needed) and pay."""
    deployment = load_manifest(manifest)
    registry = contract(deployment, "InvoiceRegistry")
    reference = keccak(text=number)
    invoice_id = registry.invoiceIdOf(merchant, reference)
    invoice = registry.getInvoice(invoice_id)
    if int(invoice.merchant, 16) == 0:
        raise click.ClickException(f"merchant {merchant} has issued no invoice numbered {number!r}")
    due = int(registry.amountDue(invoice_id))
    if due == 0:
        raise click.ClickException(
            f"invoice {number} has nothing left to pay (status: {STATUSES[registry.statusOf(invoice_id)]})"
        )
    if invoice.token == registry.NATIVE_TOKEN():
        from offchain.money import to_base_units

        units = to_base_units(amount, 18) if amount else due
        registry.payEth(merchant, reference, sender=account, value=units)
        click.echo(f"paid {units} wei")
    else:
        token = erc20(invoice.token)
        units = parse_amount(amount, token) if amount else due
        if token.allowance(account, registry) < units:
            token.approve(registry, units, sender=account)
        registry.pay(merchant, reference, units, sender=account)
        click.echo(f"paid {show_amount(units, token)}")
    click.echo(
        f"invoice {number}: {STATUSES[registry.statusOf(invoice_id)]}, {registry.amountDue(invoice_id)} base units left"
    )
