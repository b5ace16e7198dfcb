"""Tests of SubscriptionManager's signed onboarding: `subscribeWithSignature` with an EIP-712
`SubscriptionIntent`, signed by an account key (ECDSA) or for an EIP-1271 contract wallet.

Intents are signed here with eth_account, independently of the contract, so the tests check
the contract against the EIP-712 standard rather than against itself. Every test starts from
the fixtures' snapshot (Ape reverts the chain after each test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ape
import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from tests.chain_fixtures import FUNDS, PERIOD, PRICE, TRIAL
from tests.contracts.helpers import balances as _balances
from tests.contracts.helpers import event_names as _event_names
from tests.contracts.helpers import only as _only

HOUR = 3600
DAY = 24 * HOUR
MAX_UINT96 = 2**96 - 1
DOMAIN_NAME = "chainbill SubscriptionManager"
DOMAIN_VERSION = "1"
INTENT_TYPES = {
    "SubscriptionIntent": [
        {"name": "subscriber", "type": "address"},
        {"name": "planId", "type": "uint256"},
        {"name": "maxAmountPerPeriod", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}
INTENT_FIELDS = ("subscriber", "planId", "maxAmountPerPeriod", "nonce", "deadline")

# SubscriptionStatus
NONE, TRIALING, ACTIVE, PAST_DUE, CANCELED, LAPSED = range(6)
# SubscriptionState (stored)
STATE_NONE, STATE_LIVE, STATE_CANCELED, STATE_LAPSED = range(4)
# Subscription.flags
FLAG_IN_TRIAL = 4

Intent = tuple[str, int, int, int, int]


# ---------------------------------------------------------------- helpers


def _reverts(error: Any, **inputs: Any) -> Any:
    """`ape.reverts` that insists on every input of the error, by its exact name (ape itself
    silently ignores misspelt or missing names)."""
    names = {ipt.name for ipt in error.abi.inputs}
    assert set(inputs) == names, f"{error.abi.name} takes {sorted(names)}, got {sorted(inputs)}"
    return ape.reverts(error, **inputs)


def _address(who: Any) -> str:
    return str(who.address) if hasattr(who, "address") else str(who)


def _domain(manager: Any, chain_id: int) -> dict[str, Any]:
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": chain_id,
        "verifyingContract": _address(manager),
    }


def _message(intent: Intent) -> dict[str, Any]:
    return dict(zip(INTENT_FIELDS, intent, strict=True))


def _sign(signer: Any, manager: Any, intent: Intent, chain_id: int) -> bytes:
    """`signer`'s EIP-712 signature of `intent` for `manager` on chain `chain_id`."""
    signed = Account.sign_typed_data(
        signer.private_key, _domain(manager, chain_id), INTENT_TYPES, _message(intent)
    )
    return bytes(signed.signature)


def _digest(manager: Any, intent: Intent, chain_id: int) -> bytes:
    """The EIP-712 digest of `intent`, computed off-chain."""
    return bytes(
        _hash_eip191_message(
            encode_typed_data(_domain(manager, chain_id), INTENT_TYPES, _message(intent))
        )
    )


@pytest.fixture
def plan_id(create_plan: Any) -> int:
    return int(create_plan())


@pytest.fixture
def deadline(chain: Any) -> int:
    return int(chain.pending_timestamp) + DAY


@pytest.fixture
def intent_for(
    subscriptions: Any, customer: Any, plan_id: int, deadline: int
) -> Callable[..., Intent]:
    """Builds an intent; by default the customer's, for `plan_id`, cap = price, its current
    nonce, valid for a day."""

    def build(
        *,
        subscriber: Any = None,
        plan: int | None = None,
        cap: int = PRICE,
        nonce: int | None = None,
        until: int | None = None,
        manager: Any = None,
    ) -> Intent:
        who = _address(subscriber or customer)
        return (
            who,
            plan_id if plan is None else plan,
            cap,
            int((manager or subscriptions).nonces(who)) if nonce is None else nonce,
            deadline if until is None else until,
        )

    return build


@pytest.fixture
def sign(subscriptions: Any, customer: Any, chain: Any) -> Callable[..., bytes]:
    """Signs an intent, by default with the customer's key for `subscriptions` on this chain."""

    def do(
        intent: Intent, *, signer: Any = None, manager: Any = None, chain_id: int | None = None
    ) -> bytes:
        return _sign(
            signer or customer,
            manager or subscriptions,
            intent,
            chain.chain_id if chain_id is None else chain_id,
        )

    return do


@pytest.fixture
def approved(subscriptions: Any, customer: Any, token: Any) -> None:
    """The customer allows the manager a year of the default plan."""
    token.approve(subscriptions, 12 * PRICE, sender=customer)


@pytest.fixture
def wallet(project: Any, owner: Any, customer: Any, subscriptions: Any, token: Any) -> Any:
    """An EIP-1271 wallet whose key is the customer's, funded, that allows the manager a year
    of the default plan."""
    smart_wallet = owner.deploy(project.MockSmartWallet, customer)
    token.mint(smart_wallet, 100 * PRICE, sender=owner)
    smart_wallet.execute(
        token.address,
        token.approve.encode_input(subscriptions.address, 12 * PRICE),
        sender=customer,
    )
    return smart_wallet


# ------------------------------------------------------------------ domain


def test_eip712_domain_is_the_expected_one(subscriptions: Any, chain: Any) -> None:
    domain = subscriptions.eip712Domain()

    fields, name, version, chain_id, verifying_contract, salt, extensions = domain
    assert bytes(fields) == b"\x0f"  # name, version, chainId, verifyingContract
    assert (name, version) == (DOMAIN_NAME, DOMAIN_VERSION)
    assert chain_id == chain.chain_id
    assert verifying_contract == subscriptions.address
    assert bytes(salt) == b"\x00" * 32
    assert list(extensions) == []


def test_hash_subscription_intent_is_the_eip712_digest(
    subscriptions: Any, intent_for: Any, sign: Any, customer: Any, stranger: Any, chain: Any
) -> None:
    for intent in (
        intent_for(),
        intent_for(subscriber=stranger, plan=7, cap=MAX_UINT96, nonce=3, until=2**256 - 1),
    ):
        digest = bytes(subscriptions.hashSubscriptionIntent(intent))
        assert digest == _digest(subscriptions, intent, chain.chain_id)
        assert digest != _digest(subscriptions, intent, chain.chain_id + 1)
        # What eth_account signs is exactly this digest.
        assert Account._recover_hash(digest, signature=sign(intent)) == customer.address


def test_digest_differs_per_manager(
    project: Any, owner: Any, subscriptions: Any, intent_for: Any, chain: Any
) -> None:
    other = owner.deploy(project.SubscriptionManager, owner, "0x" + "00" * 20, 0)
    intent = intent_for()

    assert bytes(other.hashSubscriptionIntent(intent)) == _digest(other, intent, chain.chain_id)
    assert bytes(other.hashSubscriptionIntent(intent)) != bytes(
        subscriptions.hashSubscriptionIntent(intent)
    )


# ---------------------------------------------------------- signed subscribe


def test_relayer_submits_intent_and_the_subscriber_pays(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
    plan_id: int,
) -> None:
    token.approve(subscriptions, 12 * PRICE, sender=stranger)  # the relayer's must stay unused
    intent = intent_for(cap=2 * PRICE)
    signature = sign(intent)
    assert subscriptions.nonces(customer) == 0
    before = _balances(token, merchant, customer, stranger)

    receipt = subscriptions.subscribeWithSignature(intent, signature, sender=stranger)

    start = receipt.timestamp
    assert receipt.return_value == 1
    assert _event_names(receipt, subscriptions) == ["Subscribed", "Charged"]
    subscribed = _only(receipt, subscriptions, "Subscribed")
    assert (subscribed.subscriptionId, subscribed.planId, subscribed.subscriber) == (
        1,
        plan_id,
        customer.address,
    )
    assert subscribed.maxAmountPerPeriod == 2 * PRICE
    assert (subscribed.startedAt, subscribed.paidThrough) == (start, start + PERIOD)
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.subscriptionId, charged.periodStart, charged.paidThrough) == (
        1,
        start,
        start + PERIOD,
    )
    assert (charged.amount, charged.fee) == (PRICE, 0)

    assert _balances(token, merchant, customer, stranger) == [
        before[0] + PRICE,
        before[1] - PRICE,
        before[2],
    ]
    assert token.allowance(customer, subscriptions) == 11 * PRICE
    assert token.allowance(stranger, subscriptions) == 12 * PRICE
    assert subscriptions.nonces(customer) == 1
    assert subscriptions.nonces(stranger) == 0
    stored = subscriptions.getSubscription(1)
    assert stored.subscriber == customer.address
    assert (stored.planId, stored.maxAmountPerPeriod, stored.state) == (
        plan_id,
        2 * PRICE,
        STATE_LIVE,
    )
    assert subscriptions.statusOf(1) == ACTIVE


def test_subscriber_may_submit_its_own_intent(
    subscriptions: Any, customer: Any, intent_for: Any, sign: Any, approved: None
) -> None:
    intent = intent_for()
    receipt = subscriptions.subscribeWithSignature(intent, sign(intent), sender=customer)

    assert _only(receipt, subscriptions, "Subscribed").subscriber == customer.address
    assert subscriptions.nonces(customer) == 1


def test_signed_intent_for_trial_plan_charges_nothing(
    subscriptions: Any,
    create_plan: Any,
    merchant: Any,
    customer: Any,
    keeper: Any,
    token: Any,
    intent_for: Any,
    sign: Any,
) -> None:
    plan = create_plan(trial=TRIAL)
    intent = intent_for(plan=plan)
    before = _balances(token, merchant, customer)

    # No allowance is needed before the trial ends.
    receipt = subscriptions.subscribeWithSignature(intent, sign(intent), sender=keeper)

    assert _event_names(receipt, subscriptions) == ["Subscribed"]
    sub_id = receipt.return_value
    assert subscriptions.statusOf(sub_id) == TRIALING
    assert subscriptions.getSubscription(sub_id).flags == FLAG_IN_TRIAL
    assert subscriptions.paidThrough(sub_id) == receipt.timestamp + TRIAL
    assert _balances(token, merchant, customer) == before
    assert subscriptions.nonces(customer) == 1


def test_nonces_allow_one_intent_after_another(
    subscriptions: Any,
    create_plan: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    second_plan = create_plan(price=PRICE // 2)
    first = intent_for(nonce=0)
    second = intent_for(plan=second_plan, nonce=1)
    first_signature, second_signature = sign(first), sign(second)

    subscriptions.subscribeWithSignature(first, first_signature, sender=stranger)
    receipt = subscriptions.subscribeWithSignature(second, second_signature, sender=stranger)

    subscribed = _only(receipt, subscriptions, "Subscribed")
    assert (subscribed.subscriptionId, subscribed.planId, subscribed.subscriber) == (
        2,
        second_plan,
        customer.address,
    )
    assert subscriptions.nonces(customer) == 2


# ---------------------------------------------------------------- replays


def test_replayed_signature_reverts_invalid_account_nonce(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    keeper: Any,
    token: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    intent = intent_for()
    signature = sign(intent)
    subscriptions.subscribeWithSignature(intent, signature, sender=stranger)
    before = _balances(token, merchant, customer)

    for relayer in (stranger, keeper, customer):
        with _reverts(subscriptions.InvalidAccountNonce, account=customer.address, currentNonce=1):
            subscriptions.subscribeWithSignature(intent, signature, sender=relayer)

    assert subscriptions.subscriptionCount() == 1
    assert subscriptions.nonces(customer) == 1
    assert _balances(token, merchant, customer) == before


def test_future_nonce_reverts_invalid_account_nonce(
    subscriptions: Any, customer: Any, stranger: Any, intent_for: Any, sign: Any, approved: None
) -> None:
    intent = intent_for(nonce=1)

    with _reverts(subscriptions.InvalidAccountNonce, account=customer.address, currentNonce=0):
        subscriptions.subscribeWithSignature(intent, sign(intent), sender=stranger)

    assert subscriptions.nonces(customer) == 0
    assert subscriptions.subscriptionCount() == 0


def test_signature_for_another_chain_is_invalid(
    subscriptions: Any,
    customer: Any,
    stranger: Any,
    chain: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    intent = intent_for()
    for chain_id in (chain.chain_id + 1, 1):
        with _reverts(subscriptions.InvalidSignature, subscriber=customer.address):
            subscriptions.subscribeWithSignature(
                intent, sign(intent, chain_id=chain_id), sender=stranger
            )
    assert subscriptions.nonces(customer) == 0


def test_signature_for_another_manager_is_invalid_here_and_valid_there(
    project: Any,
    owner: Any,
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
    plan_id: int,
) -> None:
    other = owner.deploy(project.SubscriptionManager, owner, "0x" + "00" * 20, 0)
    other_plan = other.createPlan(token, PRICE, PERIOD, 0, 3 * DAY, sender=merchant).return_value
    assert other_plan == plan_id  # the same plan id exists in both
    token.approve(other, 12 * PRICE, sender=customer)
    intent = intent_for()
    signature = sign(intent, manager=other)

    with _reverts(subscriptions.InvalidSignature, subscriber=customer.address):
        subscriptions.subscribeWithSignature(intent, signature, sender=stranger)
    assert subscriptions.subscriptionCount() == 0

    receipt = other.subscribeWithSignature(intent, signature, sender=stranger)
    assert _only(receipt, other, "Subscribed").subscriber == customer.address
    assert other.nonces(customer) == 1
    assert subscriptions.nonces(customer) == 0  # nonces are per manager


@pytest.mark.parametrize(
    "field", ["planId", "maxAmountPerPeriod", "nonce", "deadline", "subscriber"]
)
def test_altered_intent_is_invalid(
    subscriptions: Any,
    create_plan: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
    field: str,
) -> None:
    token.approve(subscriptions, 12 * PRICE, sender=stranger)
    other_plan = create_plan()
    signed = intent_for()
    signature = sign(signed)
    altered = {
        "planId": intent_for(plan=other_plan),
        "maxAmountPerPeriod": intent_for(cap=2 * PRICE),
        "nonce": intent_for(nonce=1),
        "deadline": intent_for(until=signed[4] + 1),
        "subscriber": intent_for(subscriber=stranger),
    }[field]
    assert altered != signed

    with _reverts(subscriptions.InvalidSignature, subscriber=altered[0]):
        subscriptions.subscribeWithSignature(altered, signature, sender=stranger)

    assert subscriptions.subscriptionCount() == 0
    assert subscriptions.nonces(customer) == 0
    assert subscriptions.nonces(stranger) == 0


def test_signature_by_another_key_is_invalid(
    subscriptions: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    intent = intent_for()  # the customer subscribes ...
    signature = sign(intent, signer=stranger)  # ... but the stranger signs

    with _reverts(subscriptions.InvalidSignature, subscriber=customer.address):
        subscriptions.subscribeWithSignature(intent, signature, sender=stranger)
    assert subscriptions.subscriptionCount() == 0


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x01" * 64, b"\x00" * 65, b"\x01" * 66],
    ids=["empty", "garbage-64", "zeros-65", "garbage-66"],
)
def test_malformed_signature_is_invalid(
    subscriptions: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    approved: None,
    signature: bytes,
) -> None:
    with _reverts(subscriptions.InvalidSignature, subscriber=customer.address):
        subscriptions.subscribeWithSignature(intent_for(), signature, sender=stranger)


def test_expired_intent_reverts_intent_expired(
    subscriptions: Any,
    customer: Any,
    stranger: Any,
    chain: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    deadline = int(chain.pending_timestamp) + HOUR
    intent = intent_for(until=deadline)
    signature = sign(intent)

    chain.pending_timestamp = deadline + 1
    with _reverts(subscriptions.IntentExpired, deadline=deadline, now_=deadline + 1):
        subscriptions.subscribeWithSignature(intent, signature, sender=stranger)
    assert subscriptions.nonces(customer) == 0


def test_intent_is_accepted_up_to_its_deadline(
    subscriptions: Any,
    customer: Any,
    stranger: Any,
    chain: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    deadline = int(chain.pending_timestamp) + HOUR
    intent = intent_for(until=deadline)

    chain.pending_timestamp = deadline
    receipt = subscriptions.subscribeWithSignature(intent, sign(intent), sender=stranger)

    assert receipt.timestamp == deadline
    assert _only(receipt, subscriptions, "Subscribed").startedAt == deadline


def test_revoke_intents_invalidates_pending_intent(
    subscriptions: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    pending = intent_for()
    signature = sign(pending)

    receipt = subscriptions.revokeIntents(sender=customer)

    assert _event_names(receipt, subscriptions) == ["IntentsRevoked"]
    log = _only(receipt, subscriptions, "IntentsRevoked")
    assert (log.subscriber, log.revokedNonce) == (customer.address, 0)
    assert subscriptions.nonces(customer) == 1

    with _reverts(subscriptions.InvalidAccountNonce, account=customer.address, currentNonce=1):
        subscriptions.subscribeWithSignature(pending, signature, sender=stranger)
    assert subscriptions.subscriptionCount() == 0

    # A fresh intent, at the new nonce, works.
    fresh = intent_for()
    assert fresh[3] == 1
    receipt = subscriptions.subscribeWithSignature(fresh, sign(fresh), sender=stranger)
    assert _only(receipt, subscriptions, "Subscribed").subscriber == customer.address
    assert subscriptions.nonces(customer) == 2


def test_revoke_intents_works_while_paused_and_only_for_the_caller(
    subscriptions: Any,
    owner: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    intent = intent_for()
    signature = sign(intent)
    subscriptions.pause(sender=owner)

    receipt = subscriptions.revokeIntents(sender=stranger)  # the stranger's own nonce only
    log = _only(receipt, subscriptions, "IntentsRevoked")
    assert (log.subscriber, log.revokedNonce) == (stranger.address, 0)
    receipt = subscriptions.revokeIntents(sender=customer)
    log = _only(receipt, subscriptions, "IntentsRevoked")
    assert (log.subscriber, log.revokedNonce) == (customer.address, 0)
    assert (subscriptions.nonces(customer), subscriptions.nonces(stranger)) == (1, 1)

    subscriptions.unpause(sender=owner)
    with _reverts(subscriptions.InvalidAccountNonce, account=customer.address, currentNonce=1):
        subscriptions.subscribeWithSignature(intent, signature, sender=stranger)


def test_signed_subscribe_while_paused_reverts(
    subscriptions: Any,
    owner: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
) -> None:
    intent = intent_for()
    signature = sign(intent)
    subscriptions.pause(sender=owner)

    with _reverts(subscriptions.EnforcedPause):
        subscriptions.subscribeWithSignature(intent, signature, sender=stranger)
    assert subscriptions.nonces(customer) == 0

    # The intent survives the pause.
    subscriptions.unpause(sender=owner)
    receipt = subscriptions.subscribeWithSignature(intent, signature, sender=stranger)
    assert _only(receipt, subscriptions, "Subscribed").subscriber == customer.address


# ---------------------------------------------------- subscribe's own checks


def test_signed_subscribe_without_allowance_reverts_payment_failed(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    intent_for: Any,
    sign: Any,
) -> None:
    token.approve(subscriptions, 12 * PRICE, sender=stranger)  # the relayer's does not count
    intent = intent_for()
    before = _balances(token, merchant, customer, stranger)

    with _reverts(
        subscriptions.PaymentFailed,
        token=token.address,
        amount=PRICE,
        allowance=0,
        balance=FUNDS,
        **{"from": customer.address},
    ):
        subscriptions.subscribeWithSignature(intent, sign(intent), sender=stranger)

    assert _balances(token, merchant, customer, stranger) == before
    assert subscriptions.nonces(customer) == 0  # the intent can still be used later
    assert subscriptions.subscriptionCount() == 0


@pytest.mark.parametrize("cap", [0, PRICE - 1, MAX_UINT96 + 1])
def test_signed_cap_below_price_reverts(
    subscriptions: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
    cap: int,
) -> None:
    intent = intent_for(cap=cap)
    with _reverts(subscriptions.CapBelowPrice, maxAmountPerPeriod=cap, price=PRICE):
        subscriptions.subscribeWithSignature(intent, sign(intent), sender=stranger)
    assert subscriptions.nonces(customer) == 0


def test_signed_intent_for_inactive_plan_reverts(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    sign: Any,
    approved: None,
    plan_id: int,
) -> None:
    intent = intent_for()
    signature = sign(intent)
    subscriptions.deactivatePlan(plan_id, sender=merchant)

    with _reverts(subscriptions.PlanInactive, planId=plan_id):
        subscriptions.subscribeWithSignature(intent, signature, sender=stranger)
    assert subscriptions.nonces(customer) == 0


def test_signed_intent_for_unknown_plan_reverts(
    subscriptions: Any, stranger: Any, intent_for: Any, sign: Any, approved: None
) -> None:
    intent = intent_for(plan=999)
    with _reverts(subscriptions.PlanNotFound, planId=999):
        subscriptions.subscribeWithSignature(intent, sign(intent), sender=stranger)


# ----------------------------------------------------------------- EIP-1271


def test_contract_wallet_subscribes_with_its_owners_signature(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    keeper: Any,
    token: Any,
    chain: Any,
    intent_for: Any,
    sign: Any,
    wallet: Any,
    plan_id: int,
) -> None:
    assert wallet.owner() == customer.address
    assert token.allowance(wallet, subscriptions) == 12 * PRICE
    token.approve(subscriptions, 12 * PRICE, sender=customer)  # the key's own must stay unused
    intent = intent_for(subscriber=wallet)
    signature = sign(intent)  # the customer's key signs for the wallet
    before = _balances(token, merchant, customer, wallet, stranger)

    receipt = subscriptions.subscribeWithSignature(intent, signature, sender=stranger)

    sub_id = receipt.return_value
    subscribed = _only(receipt, subscriptions, "Subscribed")
    assert (subscribed.planId, subscribed.subscriber) == (plan_id, wallet.address)
    assert _only(receipt, subscriptions, "Charged").amount == PRICE
    assert _balances(token, merchant, customer, wallet, stranger) == [
        before[0] + PRICE,
        before[1],
        before[2] - PRICE,
        before[3],
    ]
    assert subscriptions.getSubscription(sub_id).subscriber == wallet.address
    assert subscriptions.nonces(wallet) == 1
    assert subscriptions.nonces(customer) == 0
    with _reverts(subscriptions.InvalidAccountNonce, account=wallet.address, currentNonce=1):
        subscriptions.subscribeWithSignature(intent, signature, sender=stranger)

    # Later periods are charged to the wallet as well.
    chain.pending_timestamp = int(subscriptions.paidThrough(sub_id))
    subscriptions.charge(sub_id, sender=keeper)
    assert _balances(token, merchant, customer, wallet) == [
        before[0] + 2 * PRICE,
        before[1],
        before[2] - 2 * PRICE,
    ]


def test_contract_wallet_rejects_signature_by_another_key(
    subscriptions: Any,
    merchant: Any,
    stranger: Any,
    token: Any,
    intent_for: Any,
    sign: Any,
    wallet: Any,
) -> None:
    intent = intent_for(subscriber=wallet)
    before = _balances(token, merchant, wallet)

    with _reverts(subscriptions.InvalidSignature, subscriber=wallet.address):
        subscriptions.subscribeWithSignature(intent, sign(intent, signer=stranger), sender=stranger)

    assert _balances(token, merchant, wallet) == before
    assert subscriptions.nonces(wallet) == 0


def test_owners_signature_for_itself_does_not_subscribe_its_wallet(
    subscriptions: Any,
    customer: Any,
    stranger: Any,
    intent_for: Any,
    sign: Any,
    wallet: Any,
) -> None:
    own = intent_for()  # subscriber = the customer's own account
    signature = sign(own)
    for_wallet = intent_for(subscriber=wallet)

    with _reverts(subscriptions.InvalidSignature, subscriber=wallet.address):
        subscriptions.subscribeWithSignature(for_wallet, signature, sender=stranger)


def test_contract_wallet_without_funds_reverts_payment_failed(
    subscriptions: Any,
    owner: Any,
    project: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    intent_for: Any,
    sign: Any,
) -> None:
    empty = owner.deploy(project.MockSmartWallet, customer)
    empty.execute(
        token.address,
        token.approve.encode_input(subscriptions.address, 12 * PRICE),
        sender=customer,
    )
    intent = intent_for(subscriber=empty)

    with _reverts(
        subscriptions.PaymentFailed,
        token=token.address,
        amount=PRICE,
        allowance=12 * PRICE,
        balance=0,
        **{"from": empty.address},
    ):
        subscriptions.subscribeWithSignature(intent, sign(intent), sender=stranger)
    assert subscriptions.nonces(empty) == 0
