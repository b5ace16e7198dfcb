"""Types shared by the gateway's schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from offchain.addresses import parse_address

ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"

# An address in a request: 0x + 40 hex digits, EIP-55 checksum verified when mixed case,
# handed to the endpoint lowercase (as the mirror stores addresses).
AddressStr = Annotated[
    str,
    Field(pattern=ADDRESS_PATTERN, description="0x-hex address (EIP-55 checksum checked)"),
    AfterValidator(parse_address),
]
