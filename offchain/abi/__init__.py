"""The contracts' ABIs as compiled, checked in so that the services need no compiler.

`make abi` regenerates them from the build; `tests/offchain/test_abi.py` proves they are
identical to the compiler's output.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ABI_DIR = Path(__file__).resolve().parent
EXPORTED_CONTRACTS = ("SubscriptionManager", "InvoiceRegistry")


@cache
def load_abi(name: str) -> list[dict[str, Any]]:
    """The ABI of one of the `EXPORTED_CONTRACTS`."""
    if name not in EXPORTED_CONTRACTS:
        raise ValueError(f"no exported ABI for {name!r}; known: {', '.join(EXPORTED_CONTRACTS)}")
    abi: list[dict[str, Any]] = json.loads((ABI_DIR / f"{name}.json").read_text())
    return abi
