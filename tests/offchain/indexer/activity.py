"""Chain activity sent with web3.py straight to Anvil (its dev accounts are unlocked): much
faster than Ape's transaction path, and the same transaction requests can be handed to
`anvil_reorg` to be mined into replacement blocks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak
from web3 import Web3

from offchain.abi import load_abi

GAS = 3_000_000
ERC20_ABI: list[dict[str, Any]] = [
    {
        "name": name,
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "a", "type": "address"}, {"name": "v", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    }
    for name in ("approve", "transfer", "mint")
]


@dataclass
class Contracts:
    """web3 handles on one deployment and its token."""

    web3: Web3
    manager: Any
    registry: Any
    token: Any

    @classmethod
    def of(cls, web3: Web3, manager: str, registry: str, token: str) -> Contracts:
        return cls(
            web3,
            web3.eth.contract(
                address=Web3.to_checksum_address(manager), abi=load_abi("SubscriptionManager")
            ),
            web3.eth.contract(
                address=Web3.to_checksum_address(registry), abi=load_abi("InvoiceRegistry")
            ),
            web3.eth.contract(address=Web3.to_checksum_address(token), abi=ERC20_ABI),
        )

    def request(
        self, sender: Any, contract: Any, function: str, *args: Any, gas: int = GAS
    ) -> dict[str, Any]:
        """An unsigned transaction request from one of Anvil's dev accounts."""
        return {
            "from": Web3.to_checksum_address(str(getattr(sender, "address", sender))),
            "to": contract.address,
            "data": contract.encode_abi(function, args=list(args)),
            "gas": gas,
        }

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        """Sends and mines one transaction (Anvil's automine); fails on a revert. Raw
        requests: web3.py's receipt polling would cost most of a test's time."""
        tx = {k: hex(v) if isinstance(v, int) else v for k, v in request.items()}
        provider = self.web3.provider
        sent = provider.make_request("eth_sendTransaction", [tx])  # type: ignore[arg-type]
        assert "error" not in sent, f"{request}: {sent}"
        for _ in range(5_000):  # Anvil may answer before the block is sealed
            receipt: dict[str, Any] | None = provider.make_request(
                "eth_getTransactionReceipt",  # type: ignore[arg-type]
                [sent["result"]],
            )["result"]
            if receipt is not None:
                break
            time.sleep(0.001)
        assert receipt is not None, f"{request} was not mined"
        assert receipt["status"] == "0x1", f"{request} reverted"
        return receipt

    def call(self, sender: Any, contract: Any, function: str, *args: Any, gas: int = GAS) -> Any:
        return self.send(self.request(sender, contract, function, *args, gas=gas))

    def invoice_id(self, merchant: Any, number: str) -> bytes:
        return bytes(
            self.registry.functions.invoiceIdOf(
                Web3.to_checksum_address(str(getattr(merchant, "address", merchant))),
                reference(number),
            ).call()
        )


def reference(label: str) -> bytes:
    return keccak(text=label)


def with_nonces(web3: Web3, requests: list[dict[str, Any]], block: int) -> list[dict[str, Any]]:
    """The requests with the nonces they take when mined in this order on top of `block`."""
    next_nonce: dict[str, int] = {}
    out = []
    for request in requests:
        sender = request["from"]
        if sender not in next_nonce:
            next_nonce[sender] = web3.eth.get_transaction_count(sender, block_identifier=block)
        out.append({**request, "nonce": next_nonce[sender]})
        next_nonce[sender] += 1
    return out
