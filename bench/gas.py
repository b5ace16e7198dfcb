"""Gas benchmark of chainbill's contracts on a local Anvil chain.

Every figure is printed as a ratio to a bare OpenZeppelin ERC-20 ``transferFrom``
measured in the same run, beside the reference figures of SPEC.md §9, and written
to ``bench/results/gas.json``.

Run from the project root: ``make bench-gas`` (or ``.venv/bin/python bench/gas.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ape import accounts, chain, networks, project
from eth_account import Account
from eth_utils import keccak

RESULTS = Path(__file__).parent / "results" / "gas.json"
PERIOD = 30 * 24 * 3600
GRACE = 3 * 24 * 3600
PRICE = 10_000_000  # 10.00 in a 6-decimal stablecoin
FEE_BPS = 100
UNIT_PRICE = 10_000  # 0.01 per unit above the included ones
INCLUDED_UNITS = 100
ALLOWANCE = PRICE * 10_000  # finite, so every charge updates it like a real subscriber's

# Measured on identical settings (SPEC.md §9).
REFERENCES: dict[str, list[tuple[str, int]]] = {
    "charge": [
        ("Coinbase Spend Permissions", 72_758),
        ("Unlock", 90_658),
        ("Cadence", 95_605),
        ("Request Network recurring", 132_048),
    ],
    "pay_erc20": [("Request Network ERC20FeeProxy", 48_424)],
    "pay_erc20_with_fee": [("Request Network ERC20FeeProxy (fee)", 58_846)],
}
TARGETS: dict[str, int] = {
    "charge": 60_000,
    "charge_batch_50_per_item": 36_000,
    "pay_erc20": 53_300,
    "pay_erc20_with_fee": 64_700,
    "issue": 100_000,
}


@dataclass
class Deployment:
    token: Any
    subscriptions: Any
    invoices: Any


def gas_of(receipt: Any) -> int:
    return int(receipt.gas_used)


def deploy(owner: Any, fee_recipient: Any, fee_bps: int) -> Deployment:
    token = owner.deploy(project.MockStablecoin, "Bench USD", "BUSD")
    subscriptions = owner.deploy(project.SubscriptionManager, owner, fee_recipient, fee_bps)
    invoices = owner.deploy(project.InvoiceRegistry, owner, fee_recipient, fee_bps)
    return Deployment(token, subscriptions, invoices)


def fund(d: Deployment, wallets: list[Any], sender: Any) -> None:
    for wallet in wallets:
        d.token.mint(wallet, PRICE * 1_000_000, sender=sender)
        d.token.approve(d.subscriptions, ALLOWANCE, sender=wallet)
        d.token.approve(d.invoices, ALLOWANCE, sender=wallet)


def sign_intent(
    manager: Any, subscriber: Any, plan_id: int, cap: int
) -> tuple[tuple[Any, ...], bytes]:
    """An EIP-712 SubscriptionIntent signed by `subscriber`'s key."""
    intent = (
        subscriber.address,
        plan_id,
        cap,
        manager.nonces(subscriber),
        chain.pending_timestamp + 3600,
    )
    signed = Account.sign_typed_data(
        subscriber.private_key,
        {
            "name": "chainbill SubscriptionManager",
            "version": "1",
            "chainId": chain.chain_id,
            "verifyingContract": manager.address,
        },
        {
            "SubscriptionIntent": [
                {"name": "subscriber", "type": "address"},
                {"name": "planId", "type": "uint256"},
                {"name": "maxAmountPerPeriod", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ]
        },
        dict(
            zip(
                ["subscriber", "planId", "maxAmountPerPeriod", "nonce", "deadline"],
                intent,
                strict=True,
            )
        ),
    )
    return intent, bytes(signed.signature)


def measure_advanced(
    d: Deployment, owner: Any, merchant: Any, customer: Any, payer: Any, gas: dict[str, int]
) -> None:
    """Metered usage, plan changes and signed onboarding ([2/8])."""
    manager = d.subscriptions
    metered = manager.createMeteredPlan(
        d.token, PRICE, PERIOD, 0, GRACE, UNIT_PRICE, INCLUDED_UNITS, sender=merchant
    ).return_value
    sub = manager.subscribe(metered, PRICE * 10, sender=payer).return_value
    for n in range(2):  # the second report is the steady state (counter already non-zero)
        receipt = manager.reportUsage(sub, 150, keccak(text=f"usage-{n}"), sender=merchant)
    gas["usage_report"] = gas_of(receipt)
    chain.pending_timestamp += PERIOD
    gas["charge_with_usage"] = gas_of(manager.charge(sub, sender=owner))

    # Plan change half-way through a period: upgrade (charged now), then downgrade (credit).
    basic = manager.createPlan(d.token, PRICE, PERIOD, 0, GRACE, sender=merchant).return_value
    pro = manager.createPlan(d.token, PRICE * 3, PERIOD, 0, GRACE, sender=merchant).return_value
    sub = manager.subscribe(basic, PRICE * 3, sender=customer).return_value
    chain.pending_timestamp += PERIOD // 2
    gas["plan_change_upgrade"] = gas_of(manager.changePlan(sub, pro, PRICE * 3, sender=customer))
    chain.pending_timestamp += PERIOD // 4
    gas["plan_change_downgrade"] = gas_of(
        manager.changePlan(sub, basic, PRICE * 3, sender=customer)
    )
    chain.pending_timestamp = manager.paidThrough(sub)
    gas["charge_with_credit"] = gas_of(manager.charge(sub, sender=owner))

    # Signed onboarding submitted by a relayer (the subscriber pays).
    intent, signature = sign_intent(manager, customer, basic, PRICE)
    gas["subscribe_signed"] = gas_of(
        manager.subscribeWithSignature(intent, signature, sender=owner)
    )


def measure(batch_sizes: list[int]) -> dict[str, dict[str, float]]:
    owner, merchant, customer, payer, fee_recipient = accounts.test_accounts[:5]
    gas: dict[str, int] = {}

    plain = deploy(owner, fee_recipient, 0)
    with_fee = deploy(owner, fee_recipient, FEE_BPS)
    for d in (plain, with_fee):
        fund(d, [customer, payer, merchant, fee_recipient], owner)

    # Baseline: a bare OpenZeppelin transferFrom between two funded wallets, finite allowance.
    plain.token.approve(owner, ALLOWANCE, sender=customer)
    gas["transferFrom"] = gas_of(plain.token.transferFrom(customer, merchant, PRICE, sender=owner))

    # Subscriptions: subscribe (first period charged at once), then a steady-state charge.
    plan_id = plain.subscriptions.createPlan(
        plain.token, PRICE, PERIOD, 0, GRACE, sender=merchant
    ).return_value
    receipt = plain.subscriptions.subscribe(plan_id, PRICE * 2, sender=customer)
    gas["subscribe"] = gas_of(receipt)
    subscription_id = receipt.return_value
    chain.pending_timestamp += PERIOD
    gas["charge"] = gas_of(plain.subscriptions.charge(subscription_id, sender=owner))

    fee_plan = with_fee.subscriptions.createPlan(
        with_fee.token, PRICE, PERIOD, 0, GRACE, sender=merchant
    )
    fee_sub = with_fee.subscriptions.subscribe(
        fee_plan.return_value, PRICE, sender=customer
    ).return_value
    chain.pending_timestamp += PERIOD
    gas["charge_with_fee"] = gas_of(with_fee.subscriptions.charge(fee_sub, sender=owner))

    measure_advanced(plain, owner, merchant, customer, payer, gas)

    # Batches: one subscriber wallet per subscription (each pays from its own balance).
    for size in batch_sizes:
        ids = []
        for _ in range(size):
            wallet = accounts.test_accounts.generate_test_account()
            owner.transfer(wallet, 10**17)
            fund(plain, [wallet], owner)
            ids.append(plain.subscriptions.subscribe(plan_id, PRICE, sender=wallet).return_value)
        chain.pending_timestamp += PERIOD
        receipt = plain.subscriptions.chargeBatch(ids, sender=owner)
        charged = sum(1 for log in receipt.events if log.event_name == "Charged")
        if charged != size:
            raise SystemExit(f"chargeBatch of {size} charged only {charged}")
        gas[f"charge_batch_{size}_per_item"] = gas_of(receipt) // size

    # Invoices.
    due = chain.pending_timestamp + PERIOD
    n = 0

    def issue(d: Deployment, token: Any, amount: int) -> tuple[bytes, int]:
        # Realistic references and content hashes: 32 bytes of hash, as the gateway sends.
        nonlocal n
        n += 1
        reference = keccak(text=f"INV-2026-{n:06d}")
        content_hash = keccak(text=f"line items of invoice {n}")
        receipt = d.invoices.issue(
            merchant, reference, customer, token, amount, due, False, content_hash, sender=merchant
        )
        return reference, gas_of(receipt)

    reference, gas["issue"] = issue(plain, plain.token, PRICE)
    gas["pay_erc20"] = gas_of(plain.invoices.pay(merchant, reference, PRICE, sender=customer))
    reference, _ = issue(plain, plain.token, PRICE)
    gas["pay_erc20_on_behalf"] = gas_of(
        plain.invoices.pay(merchant, reference, PRICE, sender=payer)
    )
    reference, _ = issue(with_fee, with_fee.token, PRICE)
    gas["pay_erc20_with_fee"] = gas_of(
        with_fee.invoices.pay(merchant, reference, PRICE, sender=customer)
    )
    native = plain.invoices.NATIVE_TOKEN()
    reference, gas["issue_eth"] = issue(plain, native, 10**16)
    gas["pay_eth"] = gas_of(
        plain.invoices.payEth(merchant, reference, sender=customer, value=10**16)
    )

    baseline = gas["transferFrom"]
    return {
        name: {"gas": value, "ratio": round(value / baseline, 4)} for name, value in gas.items()
    }


def report(results: dict[str, dict[str, float]]) -> bool:
    baseline = int(results["transferFrom"]["gas"])
    print(
        f"\nGas on Anvil, as a ratio to a bare ERC-20 transferFrom ({baseline:,} gas) in this run\n"
    )
    print(f"{'operation':<28}{'gas':>9}{'ratio':>8}  {'target':>9}  references")
    all_met = True
    for name, figures in results.items():
        value = int(figures["gas"])
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            met = value < target
            all_met &= met
            verdict = f"{'<' if met else '>='}{target:,} {'met' if met else 'MISSED'}"
        refs = ", ".join(
            f"{label} {ref:,} ({value / ref:.2f}x)" for label, ref in REFERENCES.get(name, [])
        )
        print(f"{name:<28}{value:>9,}{figures['ratio']:>8.3f}  {verdict:>18}  {refs}")
    print("\nall targets met" if all_met else "\nSOME TARGETS MISSED")
    return all_met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--batch-sizes", default="1,10,50", help="comma-separated chargeBatch sizes"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    with networks.parse_network_choice("ethereum:local:foundry"):
        results = measure(sizes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    met = report(results)
    print(
        f"figures written to {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
