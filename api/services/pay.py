"""The transactions a wallet sends to pay an invoice from the hosted page: approve + pay
when the ERC-20 allowance is short (or, for EIP-2612 tokens, a permit to sign and a single
payWithPermit), pay alone when it is enough, payEth with the value for ETH invoices."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3Exception

from api.errors import ChainUnavailable, Conflict, InvalidInput
from api.gateway import Gateway
from api.schemas.invoices import PayRequest, PayTransactions, PermitOffer, UnsignedTransaction
from api.services.chain import NATIVE_TOKEN
from api.services.invoices import InvoiceView, chain_time
from offchain.db.models import InvoiceStatus

PERMIT_TTL_S = 3600
# ERC-5267: how an EIP-712 token names its signing domain.
EIP712_DOMAIN_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "eip712Domain",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [
            {"name": "fields", "type": "bytes1"},
            {"name": "name", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"},
            {"name": "salt", "type": "bytes32"},
            {"name": "extensions", "type": "uint256[]"},
        ],
    },
    {
        "type": "function",
        "name": "nonces",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]
PERMIT_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ],
}


def _unavailable(gateway: Gateway, exc: Exception) -> ChainUnavailable:
    return ChainUnavailable(f"the node at {gateway.chain.rpc_url} does not answer: {exc}")


def _permit_message(
    gateway: Gateway, token: str, payer: str, amount: int, deadline: int
) -> dict[str, Any] | None:
    """The EIP-712 permit for `amount` to the registry, with integer values; None when the
    token does not describe its domain (ERC-5267) or has no permit nonces."""
    contract = gateway.chain.web3.eth.contract(
        address=Web3.to_checksum_address(token), abi=EIP712_DOMAIN_ABI
    )
    try:
        domain = contract.functions.eip712Domain().call()
        nonce = int(contract.functions.nonces(Web3.to_checksum_address(payer)).call())
    except (ContractLogicError, ValueError, Web3Exception, OSError):
        return None
    _fields, name, version, chain_id, verifying_contract, _salt, _extensions = domain
    return {
        "types": PERMIT_TYPES,
        "primaryType": "Permit",
        "domain": {
            "name": name,
            "version": version,
            "chainId": int(chain_id),
            "verifyingContract": Web3.to_checksum_address(verifying_contract),
        },
        "message": {
            "owner": Web3.to_checksum_address(payer),
            "spender": Web3.to_checksum_address(gateway.registry),
            "value": amount,
            "nonce": nonce,
            "deadline": deadline,
        },
    }


def _as_json(typed: dict[str, Any]) -> dict[str, Any]:
    """uint256 values as decimal strings: a JavaScript number would lose their digits."""
    message = {k: str(v) if isinstance(v, int) else v for k, v in typed["message"].items()}
    return {**typed, "message": message}


def _split_signature(signature: str) -> tuple[int, bytes, bytes]:
    raw = bytes.fromhex(signature[2:])
    v = raw[64]
    return (v + 27 if v < 27 else v), raw[:32], raw[32:64]


def prepare(gateway: Gateway, view: InvoiceView, request: PayRequest) -> PayTransactions:
    if view.pending:
        raise Conflict("the invoice is not on-chain yet: it cannot be paid before it is issued")
    if view.status is InvoiceStatus.VOID:
        raise Conflict("the invoice is void")
    if view.status is InvoiceStatus.PAID or view.due == 0:
        raise Conflict("the invoice is already paid")
    due = view.due
    amount = due if request.amount is None else int(request.amount)
    if amount == 0:
        raise InvalidInput("amount must be positive")
    if amount > due:
        raise InvalidInput(f"amount {amount} exceeds what is due ({due})", due=str(due))
    if amount < due and not view.allow_partial:
        raise InvalidInput(
            f"this invoice takes no partial payments: pay the {due} due", due=str(due)
        )
    chain = gateway.chain
    payer = Web3.to_checksum_address(request.payer)
    merchant = Web3.to_checksum_address(view.merchant)
    ref_hash = bytes.fromhex(view.reference_hash[2:])
    registry = gateway.registry
    token = view.token

    def answer(
        transactions: list[dict[str, Any]], permit: PermitOffer | None = None
    ) -> PayTransactions:
        return PayTransactions(
            invoice_id=view.invoice_id,
            payer=payer.lower(),
            amount=str(amount),
            chain_id=hex(gateway.chain_id),
            transactions=[UnsignedTransaction.model_validate(tx) for tx in transactions],
            permit=permit,
        )

    if token == NATIVE_TOKEN:
        if request.permit is not None:
            raise InvalidInput("ETH invoices are paid with payEth: there is nothing to permit")
        try:
            balance = int(chain.web3.eth.get_balance(payer))
        except (Web3Exception, OSError) as exc:
            raise _unavailable(gateway, exc) from exc
        if balance < amount:
            raise InvalidInput(f"the payer's ETH balance ({balance} wei) is below {amount}")
        data = chain.registry.encode_abi("payEth", args=[merchant, ref_hash])
        return answer([chain.unsigned(registry, data, payer, value=amount)])

    erc20 = chain.erc20(token)
    try:
        balance = int(chain.call(erc20.functions.balanceOf(payer)))
    except ContractLogicError as exc:
        raise InvalidInput(f"the token {token} refused balanceOf") from exc
    if balance < amount:
        raise InvalidInput(f"the payer's token balance ({balance}) is below {amount}")

    if request.permit is not None:
        deadline = request.permit.deadline
        if deadline <= chain_time(gateway):
            raise InvalidInput("the permit's deadline has passed: sign a new one")
        typed = _permit_message(gateway, token, payer, amount, deadline)
        if typed is None:
            raise InvalidInput(f"the token {token} does not support EIP-2612 permits")
        v, r, s = _split_signature(request.permit.signature)
        try:
            signer = Account.recover_message(encode_typed_data(full_message=typed), vrs=(v, r, s))
        except Exception as exc:  # eth_keys raises several kinds on a malformed signature
            raise InvalidInput("the permit signature is malformed") from exc
        if signer.lower() != payer.lower():
            raise InvalidInput("the permit is not signed by the payer (or not for this amount)")
        data = chain.registry.encode_abi(
            "payWithPermit", args=[merchant, ref_hash, amount, deadline, v, r, s]
        )
        return answer([chain.unsigned(registry, data, payer)])

    try:
        allowance = int(
            chain.call(erc20.functions.allowance(payer, Web3.to_checksum_address(registry)))
        )
    except ContractLogicError as exc:
        raise InvalidInput(f"the token {token} refused allowance") from exc
    pay = chain.unsigned(
        registry, chain.registry.encode_abi("pay", args=[merchant, ref_hash, amount]), payer
    )
    if allowance >= amount:
        return answer([pay])
    approve = chain.unsigned(
        token,
        erc20.encode_abi("approve", args=[Web3.to_checksum_address(registry), amount]),
        payer,
    )
    deadline = chain_time(gateway) + PERMIT_TTL_S
    typed = _permit_message(gateway, token, payer, amount, deadline)
    offer = None if typed is None else PermitOffer(typed_data=_as_json(typed), deadline=deadline)
    return answer([approve, pay], offer)
