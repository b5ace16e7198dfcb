"""Ethereum addresses as the off-chain services keep them: lowercase 0x-hex.

Input in mixed case must carry a valid EIP-55 checksum: a mistyped character in a pasted
address is then caught instead of sending money or access to an address nobody holds
(web3's `is_address` accepts any mixed case)."""

from __future__ import annotations

import re

from eth_utils import is_checksum_address

_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class InvalidAddress(ValueError):
    """Text that is not an Ethereum address (or whose checksum is wrong)."""


def parse_address(text: str) -> str:
    """The address `text` names, lowercase; InvalidAddress saying what is wrong otherwise."""
    if not isinstance(text, str) or not _HEX_ADDRESS.match(text):
        raise InvalidAddress(f"{text!r} is not an Ethereum address (0x followed by 40 hex digits)")
    body = text[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(text):
        raise InvalidAddress(
            f"{text} has a wrong EIP-55 checksum (a mistyped character?); "
            "check it, or give it in all lowercase"
        )
    return text.lower()
