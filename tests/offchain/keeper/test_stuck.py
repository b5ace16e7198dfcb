"""A keeper transaction left out of blocks (its max fee below the base fee) is replaced at
the same nonce after `replace_after_blocks` blocks, with both fees raised by at least
12.5%; the replacement is mined, its receipt read, and the subscriptions charged once."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest

from offchain.db import keeper_repository as repo
from offchain.db.models import KeeperTxStatus
from offchain.keeper.keeper import Keeper
from tests.chain_fixtures import PERIOD
from tests.offchain.indexer.helpers import Mirror
from tests.offchain.keeper.helpers import Billing, advance, charged_periods, node_call, settle

GWEI = 10**9


def _mine_without_it(mirror: Mirror, blocks: int, base_fee: int) -> None:
    for _ in range(blocks):
        node_call(mirror, "anvil_setNextBlockBaseFeePerGas", hex(base_fee))
        node_call(mirror, "evm_mine")


def test_a_stuck_transaction_is_replaced_with_higher_fees(
    mirror: Mirror, database_url: str, make_keeper: Callable[..., Keeper], token: Any,
    merchant: Any, customer: Any,
) -> None:  # fmt: skip
    if not database_url.startswith("sqlite"):
        pytest.skip("fee replacement does not depend on the database")
    billing = Billing.create(mirror, token, merchant, customer, 6)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    keeper = make_keeper(replace_after_blocks=3, min_priority_fee=GWEI)
    node_call(mirror, "evm_setAutomine", False)
    try:
        assert keeper.run_once().charges_sent == billing.ids
        with mirror.engine.connect() as conn:
            (tx,) = repo.transactions(conn, mirror.chain_id)
            (first,) = repo.attempts_of(conn, [tx.id])[tx.id]
        # Blocks come, but the base fee stays above what the transaction offers.
        _mine_without_it(mirror, 2, 20 * first.max_fee_per_gas)
        assert keeper.run_once().replaced == 0  # two blocks: not stuck yet
        _mine_without_it(mirror, 1, 20 * first.max_fee_per_gas)
        assert keeper.run_once().replaced == 1
        with mirror.engine.connect() as conn:
            first_again, second = repo.attempts_of(conn, [tx.id])[tx.id]
        assert first_again.tx_hash == first.tx_hash
        bump = Fraction(1125, 1000)
        assert second.max_fee_per_gas >= first.max_fee_per_gas * bump
        assert second.max_priority_fee_per_gas >= first.max_priority_fee_per_gas * bump
        # Above the base fee now: the next block takes the replacement.
        node_call(mirror, "evm_mine")
    finally:
        node_call(mirror, "evm_setAutomine", True)
    settle(keeper)
    with mirror.engine.connect() as conn:
        (mined,) = repo.transactions(conn, mirror.chain_id)
    assert mined.status == KeeperTxStatus.CONFIRMED
    assert mined.mined_tx_hash == second.tx_hash and mined.nonce == tx.nonce
    periods = charged_periods(mirror)
    assert all(n == 1 for n in periods.values()) and len(periods) == 2 * 6
