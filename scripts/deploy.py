"""Deploy chainbill's contracts and write the deployment manifest.

    ape run deploy --network ethereum:local:node --account TEST::0

On a local chain (chain id 31337) it also deploys the mock stablecoin "Test USD" and
funds the ten test accounts with it, so that a merchant can try everything at once.
"""

from __future__ import annotations

import click
from ape import accounts, chain, networks, project
from ape.cli import ConnectedProviderCommand, account_option

from offchain.manifest import ContractDeployment, Manifest, abi_sha256
from scripts._common import LOCAL_CHAIN_ID, manifest_path

TEST_FUNDS = 1_000_000 * 10**6  # 1,000,000.000000 TUSD per test account


def _record(instance: object, name: str) -> ContractDeployment:
    receipt = networks.provider.get_receipt(instance.txn_hash)  # type: ignore[attr-defined]
    abi = [
        entry.model_dump(mode="json", by_alias=True)
        for entry in project.get_contract(name).contract_type.abi
    ]
    return ContractDeployment(
        address=str(instance.address),  # type: ignore[attr-defined]
        block=int(receipt.block_number),
        transaction=str(receipt.txn_hash),
        abi_sha256=abi_sha256(abi),
    )


@click.command(cls=ConnectedProviderCommand)
@account_option()
@click.option(
    "--fee-bps",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Platform fee in basis points of every payment (fixed for ever).",
)
@click.option(
    "--fee-recipient", default=None, help="Receives the platform fee (default: the deployer)."
)
@click.option(
    "--manifest",
    default=None,
    help="Where to write the manifest (default: deployments/<network>.json).",
)
def cli(account: object, fee_bps: int, fee_recipient: str | None, manifest: str | None) -> None:
    """Deploy SubscriptionManager and InvoiceRegistry (and a funded test token on a local chain)."""
    deployer = account
    recipient = fee_recipient or deployer.address  # type: ignore[attr-defined]
    click.echo(f"deploying from {deployer.address} to chain {chain.chain_id}")  # type: ignore[attr-defined]
    subscriptions = deployer.deploy(project.SubscriptionManager, deployer, recipient, fee_bps)  # type: ignore[attr-defined]
    invoices = deployer.deploy(project.InvoiceRegistry, deployer, recipient, fee_bps)  # type: ignore[attr-defined]
    contracts = {
        "SubscriptionManager": _record(subscriptions, "SubscriptionManager"),
        "InvoiceRegistry": _record(invoices, "InvoiceRegistry"),
    }
    if chain.chain_id == LOCAL_CHAIN_ID:
        token = deployer.deploy(project.MockStablecoin, "Test USD", "TUSD")  # type: ignore[attr-defined]
        contracts["MockStablecoin"] = _record(token, "MockStablecoin")
        for test_account in accounts.test_accounts[:10]:
            token.mint(test_account, TEST_FUNDS, sender=deployer)
        click.echo(f"funded 10 test accounts with 1,000,000 TUSD each ({token.address})")

    result = Manifest(
        chain_id=chain.chain_id,
        network=networks.network.name,
        contracts=contracts,
        owner=deployer.address,  # type: ignore[attr-defined]
        fee_bps=fee_bps,
        fee_recipient=recipient,
    )
    path = manifest_path(manifest)
    result.write(path)
    click.echo(f"manifest written to {path}")
    click.echo(result.to_json())
