"""The chain fixtures (tests/chain_fixtures.py), for the contract tests."""

from tests.chain_fixtures import *  # noqa: F403
