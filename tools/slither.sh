#!/usr/bin/env bash
# Slither over every contract under contracts/ (SubscriptionManager, InvoiceRegistry, base/,
# interfaces/ and the test/ mocks) in one compilation with the project's compiler settings.
# Fails on any High or Medium finding that is not suppressed in the source with a
# `// slither-disable-next-line <detector>` comment (see README, "Static analysis");
# Low, informational and optimization findings are printed but do not fail the run.
# JSON report: .cache/slither.json. Runs from the repository root whatever the caller's directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

INPUT=.cache/slither-input.json
REPORT=.cache/slither.json
mkdir -p .cache
rm -f "$REPORT"  # slither refuses to overwrite an existing report

# `slither contracts --solc-standard-json` only takes the top level of contracts/ (and what
# it imports), so the standard-JSON input is written here: every .sol file under contracts/,
# with the EVM version, optimizer and remappings of ape-config.yaml.
.venv/bin/python - "$INPUT" <<'PY'
import json
import pathlib
import sys

import yaml

config = yaml.safe_load(pathlib.Path("ape-config.yaml").read_text())["solidity"]
sources = sorted(p.as_posix() for p in pathlib.Path("contracts").rglob("*.sol"))
standard_json = {
    "language": "Solidity",
    "sources": {path: {"urls": [path]} for path in sources},
    "settings": {
        "evmVersion": config["evm_version"],
        "optimizer": {"enabled": bool(config["optimize"]), "runs": config["optimization_runs"]},
        "viaIR": bool(config["via_ir"]),
        "remappings": list(config["import_remapping"]),
    },
}
pathlib.Path(sys.argv[1]).write_text(json.dumps(standard_json, indent=2) + "\n")
print(f"slither: {len(sources)} files under contracts/", file=sys.stderr)
PY

# The compiler is solc-js behind tools/solc-shim.cjs (it ignores --allow-paths, which
# crytic-compile adds); its warnings are left to `ape compile`. Findings in node_modules
# (OpenZeppelin) are not reported. Slither 0.11.6 logs "Impossible to generate IR" for three
# functions of OpenZeppelin's EIP712 (a Slither limitation with ShortStrings, not an error
# in chainbill): only those three go unanalysed.
.venv/bin/slither "$INPUT" \
  --compile-force-framework solc-json \
  --solc "$ROOT/tools/solc-shim.cjs" \
  --solc-disable-warnings \
  --filter-paths node_modules \
  --fail-medium \
  --json "$REPORT"
