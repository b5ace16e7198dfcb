"""The deployment manifest: which contracts a deployment has, where, since which block,
and with which ABI. Deploy scripts write it; the services read it (SPEC §2)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1
DEPLOYMENTS_DIR = Path(__file__).resolve().parent.parent / "deployments"


class ManifestError(ValueError):
    """A manifest that is missing or does not have the expected shape."""


def abi_sha256(abi: list[dict[str, Any]]) -> str:
    """A stable fingerprint of an ABI: SHA-256 of its canonical JSON."""
    canonical = json.dumps(abi, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ContractDeployment:
    """One deployed contract."""

    address: str
    block: int
    transaction: str
    abi_sha256: str


@dataclass(frozen=True)
class Manifest:
    """A deployment of chainbill on one chain."""

    chain_id: int
    network: str
    contracts: dict[str, ContractDeployment]
    owner: str
    fee_bps: int
    fee_recipient: str
    deployed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    version: int = MANIFEST_VERSION

    def address_of(self, name: str) -> str:
        try:
            return self.contracts[name].address
        except KeyError:
            known = ", ".join(sorted(self.contracts)) or "none"
            raise ManifestError(f"no contract {name!r} in the manifest (it has: {known})") from None

    @property
    def start_block(self) -> int:
        """The first block an indexer must read: the earliest deployment."""
        return min(c.block for c in self.contracts.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # atomic: a reader never sees half a manifest

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            version = data.get("version")
            if version != MANIFEST_VERSION:
                raise ManifestError(
                    f"manifest version {version!r} is not supported (expected {MANIFEST_VERSION})"
                )
            contracts = {
                name: ContractDeployment(**entry) for name, entry in data["contracts"].items()
            }
            return cls(
                chain_id=int(data["chain_id"]),
                network=str(data["network"]),
                contracts=contracts,
                owner=str(data["owner"]),
                fee_bps=int(data["fee_bps"]),
                fee_recipient=str(data["fee_recipient"]),
                deployed_at=str(data["deployed_at"]),
                version=version,
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"malformed manifest: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.exists():
            raise ManifestError(
                f"no deployment manifest at {path}: run `make run` (local chain) or "
                "`ape run deploy --network <network>` first"
            )
        return cls.from_json(path.read_text())


def default_manifest_path(network_name: str) -> Path:
    """``deployments/<network>.json``, e.g. ``deployments/local.json``."""
    return DEPLOYMENTS_DIR / f"{network_name}.json"
