#!/usr/bin/env bash
# The main job as it stands: a local Anvil chain on 127.0.0.1:$PORT (state kept in
# .cache/anvil-state.json across restarts), chainbill deployed on it once, the manifest
# printed, the indexer following the chain into the SQL mirror ($DATABASE_URL, default
# sqlite:///chainbill.sqlite), the keeper charging what falls due, the webhook worker, and
# the gateway serving it on http://127.0.0.1:$API_PORT with a demo API key for the first
# merchant account. Stays in the foreground until Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
PORT="${CHAINBILL_RPC_PORT:-8545}"
API_PORT="${CHAINBILL_API_PORT:-8000}"
# Anvil's second test account: the demo merchant (the deploy script funds it with TUSD).
DEMO_MERCHANT="0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
RPC="http://127.0.0.1:$PORT"
MANIFEST="deployments/local.json"
mkdir -p .cache

rpc() {
  curl -s -m 2 -H 'Content-Type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}" "$RPC"
}

ANVIL_PID=""
if rpc eth_chainId '[]' | grep -q result; then
  echo "==> using the chain already answering at $RPC"
else
  echo "==> starting Anvil at $RPC (state: .cache/anvil-state.json)"
  anvil --port "$PORT" --state .cache/anvil-state.json --silent &
  ANVIL_PID=$!
  trap 'kill "$ANVIL_PID" 2>/dev/null || true; wait "$ANVIL_PID" 2>/dev/null || true' EXIT INT TERM
  for _ in $(seq 1 50); do
    rpc eth_chainId '[]' | grep -q result && break
    sleep 0.2
  done
  rpc eth_chainId '[]' | grep -q result || { echo "run: Anvil did not start on port $PORT (in use?)" >&2; exit 1; }
fi

deployed() {
  [ -f "$MANIFEST" ] || return 1
  local address
  address="$(python3 -c "import json;print(json.load(open('$MANIFEST'))['contracts']['SubscriptionManager']['address'])")"
  [ "$(rpc eth_getCode "[\"$address\",\"latest\"]" | python3 -c 'import json,sys;print(len(json.load(sys.stdin)["result"]))')" -gt 2 ]
}

if deployed; then
  echo "==> chainbill is already deployed on this chain ($MANIFEST)"
  cat "$MANIFEST"
else
  echo "==> deploying chainbill"
  APE_FOUNDRY_HOST="$RPC" ape run deploy --network ethereum:local:foundry --account TEST::0 \
    --manifest "$MANIFEST" 2>&1 | grep -v '^INFO:'
fi

echo "==> indexing into ${DATABASE_URL:-sqlite:///chainbill.sqlite} (chainbill index)"
export RPC_URL="$RPC" CHAINBILL_MANIFEST="$MANIFEST"
chainbill migrate >/dev/null
chainbill index --quiet &
INDEXER_PID=$!
export CHAINBILL_PUBLIC_URL="${CHAINBILL_PUBLIC_URL:-http://127.0.0.1:$API_PORT}"
chainbill serve --port "$API_PORT" &
API_PID=$!
# The keeper charges what falls due. On the local chain it uses Anvil's dev account 4
# (TEST::4, which the deploy script leaves alone); elsewhere set CHAINBILL_KEEPER_KEY.
export CHAINBILL_KEEPER_KEY="${CHAINBILL_KEEPER_KEY:-0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a}"
chainbill keeper &
KEEPER_PID=$!
# Webhook deliveries to the endpoints merchants register; a demo's receiver runs on this
# machine, which a public gateway would refuse (see README, outgoing webhooks).
export CHAINBILL_WEBHOOK_ALLOW_PRIVATE="${CHAINBILL_WEBHOOK_ALLOW_PRIVATE:-1}"
chainbill webhooks run &
WEBHOOKS_PID=$!
trap 'kill "$INDEXER_PID" "$API_PID" "$KEEPER_PID" "$WEBHOOKS_PID" 2>/dev/null || true; [ -z "$ANVIL_PID" ] || kill "$ANVIL_PID" 2>/dev/null || true; wait 2>/dev/null || true' EXIT INT TERM

# A demo API key for the first merchant, made once and kept in .cache (a local demo only:
# real keys are shown once by `chainbill api-key create` and never stored in clear).
demo_key_live() {
  [ -s .cache/demo-merchant-key ] || return 1
  local prefix
  prefix="$(cut -d_ -f2 .cache/demo-merchant-key)"
  chainbill api-key list --merchant "$DEMO_MERCHANT" | grep -q "^$prefix[[:space:]].*live$"
}
if ! demo_key_live; then
  chainbill api-key create --merchant "$DEMO_MERCHANT" --name "make run demo" \
    > .cache/demo-merchant-key 2>/dev/null
fi
for _ in $(seq 1 50); do
  curl -s -m 1 "http://127.0.0.1:$API_PORT/health" >/dev/null && break
  sleep 0.2
done
echo "==> gateway at http://127.0.0.1:$API_PORT (OpenAPI docs: /docs; health: /health)"
echo "    demo merchant $DEMO_MERCHANT, API key: $(cat .cache/demo-merchant-key)"
echo "==> chain at $RPC, mirror following; merchant scripts and \`chainbill reconcile\`: see README. Ctrl-C stops."
wait "$INDEXER_PID" "$API_PID" "$KEEPER_PID" "$WEBHOOKS_PID"
