"""Issue an invoice (run by the merchant or an operator it approved).

    ape run issue_invoice --account TEST::1 --number INV-2026-0001 --amount 250.00 \
        --customer 0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC --due-in 30d

The invoice id is printed before the transaction is sent: it derives from the merchant
and the invoice number alone.
"""

from __future__ import annotations

from pathlib import Path

import click
from ape import chain
from ape.cli import ConnectedProviderCommand, account_option
from eth_utils import keccak

from scripts._common import contract, erc20, load_manifest, parse_amount, parse_duration

ZERO_ADDRESS = "0x" + "00" * 20


@click.command(cls=ConnectedProviderCommand)
@account_option()
@click.option(
    "--number",
    required=True,
    help="Business invoice number, unique per merchant (hashed on-chain).",
)
@click.option("--amount", required=True, help="Amount in whole tokens (or ETH), e.g. 250.00.")
@click.option(
    "--customer", default=ZERO_ADDRESS, help="Customer wallet (default: anyone, a payment link)."
)
@click.option(
    "--token", default=None, help="ERC-20 address, or ETH (default: the local test stablecoin)."
)
@click.option("--due-in", default="30d", show_default=True, help="Time until the due date.")
@click.option("--partial", is_flag=True, help="Accept installments.")
@click.option(
    "--content",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File with the invoice content (line items, taxes); its keccak256 goes on-chain.",
)
@click.option(
    "--merchant", default=None, help="Issue for this merchant (the caller must be its operator)."
)
@click.option(
    "--manifest", default=None, help="Deployment manifest (default: deployments/<network>.json)."
)
def cli(
    account: object,
    number: str,
    amount: str,
    customer: str,
    token: str | None,
    due_in: str,
    partial: bool,
    content: Path | None,
    merchant: str | None,
    manifest: str | None,
) -> None:
    """Issue an invoice; prints its id."""
    deployment = load_manifest(manifest)
    registry = contract(deployment, "InvoiceRegistry")
    merchant_address = merchant or account.address  # type: ignore[attr-defined]
    if token and token.upper() == "ETH":
        token_address, units = registry.NATIVE_TOKEN(), parse_eth(amount)
    else:
        invoice_token = erc20(token or deployment.address_of("MockStablecoin"))
        token_address, units = invoice_token.address, parse_amount(amount, invoice_token)
    reference = keccak(text=number)
    content_hash = keccak(content.read_bytes()) if content else keccak(text=f"{number}:{amount}")
    invoice_id = registry.invoiceIdOf(merchant_address, reference)
    click.echo(
        f"invoice id {invoice_id.hex() if isinstance(invoice_id, bytes) else invoice_id} (reference {reference.hex()})"
    )
    due_date = chain.pending_timestamp + parse_duration(due_in)
    registry.issue(
        merchant_address,
        reference,
        customer,
        token_address,
        units,
        due_date,
        partial,
        content_hash,
        sender=account,
    )
    click.echo(
        f"issued {number}: {units} base units, due {due_date} (unix s), partial payments {'on' if partial else 'off'}"
    )


def parse_eth(amount: str) -> int:
    from offchain.money import AmountError, to_base_units

    try:
        return to_base_units(amount, 18)
    except AmountError as exc:
        raise click.BadParameter(str(exc)) from exc
