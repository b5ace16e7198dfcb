"""The deployment manifest round-trips and refuses what it cannot trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from offchain.manifest import ContractDeployment, Manifest, ManifestError, abi_sha256


def sample() -> Manifest:
    return Manifest(
        chain_id=31337,
        network="local",
        contracts={
            "SubscriptionManager": ContractDeployment(
                "0x" + "11" * 20, 3, "0x" + "aa" * 32, "ab" * 32
            ),
            "InvoiceRegistry": ContractDeployment("0x" + "22" * 20, 4, "0x" + "bb" * 32, "cd" * 32),
        },
        owner="0x" + "33" * 20,
        fee_bps=25,
        fee_recipient="0x" + "44" * 20,
    )


def test_round_trips_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "deployments" / "local.json"
    sample().write(path)
    loaded = Manifest.load(path)
    assert loaded == sample().__class__(**{**sample().__dict__, "deployed_at": loaded.deployed_at})
    assert loaded.address_of("InvoiceRegistry") == "0x" + "22" * 20
    assert loaded.start_block == 3
    assert not list(path.parent.glob("*.tmp"))


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="make run"):
        Manifest.load(tmp_path / "nope.json")


def test_unknown_contract_lists_the_known_ones() -> None:
    with pytest.raises(ManifestError, match="InvoiceRegistry, SubscriptionManager"):
        sample().address_of("Nope")


@pytest.mark.parametrize(
    "text",
    ['{"version": 1}', "not json", '{"version": 99, "contracts": {}}'],
)
def test_malformed_manifest_is_refused(text: str) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(text)


def test_abi_hash_ignores_key_order() -> None:
    assert abi_sha256([{"a": 1, "b": 2}]) == abi_sha256([{"b": 2, "a": 1}])
    assert abi_sha256([{"a": 1}]) != abi_sha256([{"a": 2}])
