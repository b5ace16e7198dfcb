"""The chain fixtures (tests/chain_fixtures.py) and the databases, for the off-chain tests."""

from tests.chain_fixtures import *  # noqa: F403
from tests.db_fixtures import *  # noqa: F403
