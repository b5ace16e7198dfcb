#!/usr/bin/env bash
# Installs everything chainbill needs from the package registries alone
# (PyPI, npm): no compiler or node binary is downloaded from anywhere else.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SOLC_VERSION="$(node -p "require('./package.json').dependencies.solc")"
PYTHON="${PYTHON:-python3}"

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

command -v node >/dev/null || { echo "setup: Node.js 18+ with npm is required (apt-get install nodejs npm)" >&2; exit 1; }

step "npm packages (solc-js, Anvil, OpenZeppelin)"
# `npm install` (with the lock file) rather than `npm ci`: the lock records only the Anvil
# build of the platform it was made on, and `npm ci` refuses a lock that lacks the others.
if [ ! -d node_modules/solc ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm install --no-audit --no-fund --loglevel=error
fi

step "Python environment (.venv)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.chainbill-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[dev]'
  touch "$stamp"
fi

step "Solidity $SOLC_VERSION for ape-solidity (solc-js shim where py-solc-x looks)"
SOLCX_DIR="${SOLCX_BINARY_PATH:-$HOME/.solcx}"
mkdir -p "$SOLCX_DIR"
cat > "$SOLCX_DIR/solc-v$SOLC_VERSION" <<SHIM
#!/usr/bin/env bash
exec node "$ROOT/tools/solc-shim.cjs" "\$@"
SHIM
chmod +x "$SOLCX_DIR/solc-v$SOLC_VERSION"

step "Anvil on the virtualenv's PATH (ape-foundry looks it up there)"
ANVIL_BIN="$(ls "$ROOT"/node_modules/@foundry-rs/anvil-*/bin/anvil 2>/dev/null | head -n 1 || true)"
[ -n "$ANVIL_BIN" ] || { echo "setup: no Anvil binary under node_modules/@foundry-rs (npm ci failed?)" >&2; exit 1; }
ln -sf "$ANVIL_BIN" .venv/bin/anvil

step "Chromium for the browser test (Debian's package, driven by Playwright)"
# Playwright's own browser download is not used: it fetches from a CDN, not a registry.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends chromium \
      || { apt-get update && apt-get install -y --no-install-recommends chromium; }
  else
    echo "setup: /usr/bin/chromium is missing; as root: apt-get install -y chromium" \
      "(the browser test is skipped without it)" >&2
  fi
fi

step "compile contracts"
PATH="$ROOT/.venv/bin:$PATH" .venv/bin/ape compile --force >/dev/null
echo "setup: done (solc $SOLC_VERSION, $(.venv/bin/anvil --version | head -n 1))"
