#!/usr/bin/env bash
# The main job on the local lab: real Keystone 22 + Glance 25 on loopback (test/e2e/lab.sh), and
# the enforcer against them with the embedded SQLite ledger. Against a real cloud, set OS_* (or
# OS_CLOUD) yourself and run the same commands without the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash test/e2e/lab.sh up
eval "$(bash test/e2e/lab.sh env)"
export OS_SYSTEM_SCOPE=all STORE_URL=${STORE_URL:-sqlite://./data/glance-quota.db}
[ -e dist/src/cli.js ] || npm run build
bin=bin/glance-quota-enforcer.js
echo "== reconcile: the ledger from Glance's listing, then decide, verify and act (${ENFORCEMENT_MODE:-enforce})"
node "$bin" reconcile "$@"
echo "== status: usage from the ledger, limits from Keystone unified limits"
node "$bin" status
