"""Signatures as a receiver checks them: the right secret verifies; a wrong secret, a
changed body, a changed or stale timestamp, or a malformed header does not."""

from __future__ import annotations

import pytest

from offchain.webhooks.signing import SignatureError, signature, signature_header, verify

BODY = b'{"amount":"115792089237316195423570985008687907853269984665640564039457584007913129639935","id":"evt_1"}'
NOW = 1_800_000_000


def test_the_right_secret_verifies_and_returns_the_timestamp() -> None:
    header = signature_header(["whsec_a"], NOW, BODY)
    assert header == f"t={NOW},v1={signature('whsec_a', NOW, BODY)}"
    assert verify(header, BODY, "whsec_a", now=NOW + 10) == NOW


def test_during_a_rotation_either_secret_verifies() -> None:
    header = signature_header(["whsec_new", "whsec_old"], NOW, BODY)
    assert verify(header, BODY, "whsec_new", now=NOW) == NOW
    assert verify(header, BODY, "whsec_old", now=NOW) == NOW
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(header, BODY, "whsec_other", now=NOW)


@pytest.mark.parametrize(
    ("header", "body", "now", "complaint"),
    [
        (signature_header(["whsec_b"], NOW, BODY), BODY, NOW, "no signature matches"),
        (signature_header(["whsec_a"], NOW, BODY), BODY + b" ", NOW, "no signature matches"),
        (
            signature_header(["whsec_a"], NOW, BODY).replace(f"t={NOW}", f"t={NOW + 1}"),
            BODY,
            NOW,
            "no signature matches",
        ),
        (signature_header(["whsec_a"], NOW, BODY), BODY, NOW + 301, "away from now"),
        (signature_header(["whsec_a"], NOW, BODY), BODY, NOW - 301, "away from now"),
        (None, BODY, NOW, "no Chainbill-Signature"),
        ("", BODY, NOW, "no Chainbill-Signature"),
        (f"t={NOW}", BODY, NOW, "at least one v1"),
        ("v1=00", BODY, NOW, "at least one v1"),
        ("t=soon,v1=00", BODY, NOW, "not an integer"),
        (f"t={NOW},v1=", BODY, NOW, "no signature matches"),
    ],
)
def test_what_does_not_verify(header: str | None, body: bytes, now: int, complaint: str) -> None:
    with pytest.raises(SignatureError, match=complaint):
        verify(header, body, "whsec_a", now=now)
