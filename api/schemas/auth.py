"""Sign-In with Ethereum (EIP-4361) requests and responses."""

from __future__ import annotations

from pydantic import BaseModel, Field


class NonceResponse(BaseModel):
    nonce: str = Field(description="Put this in the message's `Nonce:` line; single use")
    expires_at: int = Field(description="Unix seconds: sign in before then")
    domain: str = Field(description="What the message's first line must name as its domain")
    uri: str = Field(description="A suitable `URI:` line for the message")
    chain_id: int = Field(description="What the message's `Chain ID:` line must say")


class VerifyRequest(BaseModel):
    message: str = Field(
        min_length=1,
        max_length=4096,
        description="The EIP-4361 message exactly as the wallet signed it",
    )
    signature: str = Field(
        min_length=4,
        max_length=4096,
        pattern=r"^0x([0-9a-fA-F]{2})+$",
        description="The wallet's EIP-191 signature of the message (0x-hex; EIP-1271 "
        "signatures of contract wallets are accepted too)",
    )


class SessionResponse(BaseModel):
    token: str = Field(description="The session: send it as `Authorization: Bearer cbs_...`")
    address: str = Field(description="The signed-in wallet, lowercase 0x-hex")
    expires_at: int = Field(description="Unix seconds")
