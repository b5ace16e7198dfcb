"""Write the compiled ABIs of the production contracts to offchain/abi/*.json."""

from __future__ import annotations

import json
from typing import Any

from ape import project

from offchain.abi import ABI_DIR, EXPORTED_CONTRACTS


def compiled_abi(name: str) -> list[dict[str, Any]]:
    return [
        entry.model_dump(mode="json", by_alias=True, exclude_none=True)
        for entry in project.get_contract(name).contract_type.abi
    ]


def main() -> None:
    for name in EXPORTED_CONTRACTS:
        path = ABI_DIR / f"{name}.json"
        path.write_text(json.dumps(compiled_abi(name), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
