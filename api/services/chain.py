"""The gateway's view of the chain (web3.py only, SPEC §2): token metadata, calls, and the
transactions it prepares for wallets or sends with the operator key."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, Web3Exception

from api.errors import ChainUnavailable, InvalidInput
from offchain.abi import load_abi
from offchain.manifest import Manifest

NATIVE_TOKEN = "0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"

# The part of ERC-20 / EIP-2612 the gateway reads or prepares calls for.
ERC20_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": name,
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": out}],
    }
    for name, out in (("symbol", "string"), ("decimals", "uint8"), ("name", "string"))
] + [
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "nonces",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "allowance",
        "stateMutability": "view",
        "inputs": [
            {"name": "owner", "type": "address"},
            {"name": "spender", "type": "address"},
        ],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "approve",
        "stateMutability": "nonpayable",
        "inputs": [
            {"name": "spender", "type": "address"},
            {"name": "amount", "type": "uint256"},
        ],
        "outputs": [{"name": "", "type": "bool"}],
    },
]


@dataclass(frozen=True)
class TokenInfo:
    address: str
    symbol: str
    decimals: int
    name: str


class Chain:
    """One node, one deployment. Token metadata is immutable in practice, so it is cached."""

    def __init__(self, rpc_url: str, manifest: Manifest, operator_key: str | None = None) -> None:
        self.rpc_url = rpc_url
        self.manifest = manifest
        self.web3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        self.registry_address = manifest.address_of("InvoiceRegistry").lower()
        self.manager_address = manifest.address_of("SubscriptionManager").lower()
        self.registry: Contract = self.web3.eth.contract(
            address=Web3.to_checksum_address(self.registry_address),
            abi=load_abi("InvoiceRegistry"),
        )
        self.manager: Contract = self.web3.eth.contract(
            address=Web3.to_checksum_address(self.manager_address),
            abi=load_abi("SubscriptionManager"),
        )
        self.operator: LocalAccount | None = (
            Account.from_key(operator_key) if operator_key else None
        )
        self._tokens: dict[str, TokenInfo] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()

    @property
    def chain_id(self) -> int:
        return self.manifest.chain_id

    def erc20(self, token: str) -> Contract:
        return self.web3.eth.contract(address=Web3.to_checksum_address(token), abi=ERC20_ABI)

    def token_info(self, token: str) -> TokenInfo:
        token = token.lower()
        if token == NATIVE_TOKEN:
            return TokenInfo(NATIVE_TOKEN, "ETH", 18, "Ether")
        with self._lock:
            cached = self._tokens.get(token)
        if cached is not None:
            return cached
        contract = self.erc20(token)
        try:
            info = TokenInfo(
                address=token,
                symbol=str(contract.functions.symbol().call()),
                decimals=int(contract.functions.decimals().call()),
                name=str(contract.functions.name().call()),
            )
        except (ContractLogicError, ValueError) as exc:
            raise InvalidInput(f"{token} is not an ERC-20 token with symbol and decimals") from exc
        except (Web3Exception, OSError) as exc:
            raise ChainUnavailable(f"the node at {self.rpc_url} does not answer: {exc}") from exc
        with self._lock:
            self._tokens[token] = info
        return info

    def call(self, function: Any) -> Any:
        """A view call; the node being down becomes a 503 naming it."""
        try:
            return function.call()
        except (Web3Exception, OSError) as exc:
            if isinstance(exc, ContractLogicError):
                raise
            raise ChainUnavailable(f"the node at {self.rpc_url} does not answer: {exc}") from exc

    def block_number(self) -> int:
        try:
            return int(self.web3.eth.block_number)
        except (Web3Exception, OSError) as exc:
            raise ChainUnavailable(f"the node at {self.rpc_url} does not answer: {exc}") from exc

    def unsigned(self, to: str, data: str, sender: str | None, value: int = 0) -> dict[str, Any]:
        """A transaction for a wallet to sign (EIP-1193 `eth_sendTransaction` fields)."""
        tx: dict[str, Any] = {
            "chainId": hex(self.chain_id),
            "to": Web3.to_checksum_address(to),
            "data": data,
            "value": hex(value),
        }
        if sender is not None:
            tx["from"] = Web3.to_checksum_address(sender)
        return tx

    def send_as_operator(self, to: str, data: str) -> str:
        """Signs and sends with the operator key; returns the transaction hash. Serialized so
        that two requests never take the same nonce."""
        if self.operator is None:
            raise InvalidInput("no operator key is configured (set CHAINBILL_OPERATOR_KEY)")
        with self._send_lock:
            try:
                tx: dict[str, Any] = {
                    "chainId": self.chain_id,
                    "from": self.operator.address,
                    "to": Web3.to_checksum_address(to),
                    "data": data,
                    "nonce": self.web3.eth.get_transaction_count(self.operator.address, "pending"),
                }
                tx["gas"] = int(self.web3.eth.estimate_gas(tx) * 12 // 10)  # type: ignore[arg-type]
                latest = self.web3.eth.get_block("latest")
                base_fee = int(latest.get("baseFeePerGas", 0))
                tip = int(self.web3.eth.max_priority_fee)
                tx["maxPriorityFeePerGas"] = tip
                tx["maxFeePerGas"] = 2 * base_fee + tip
                signed = self.operator.sign_transaction(tx)
                return "0x" + self.web3.eth.send_raw_transaction(signed.raw_transaction).hex()
            except ContractLogicError as exc:
                raise InvalidInput(f"the contract refused the transaction: {exc}") from exc
            except (Web3Exception, OSError) as exc:
                raise ChainUnavailable(
                    f"the node at {self.rpc_url} does not answer: {exc}"
                ) from exc
