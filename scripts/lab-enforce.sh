#!/usr/bin/env bash
# The main job on the local lab: real Keystone 22 + Glance 25 on loopback (test/e2e/lab.sh), and
# the enforcer consuming Glance's notifications against them with the embedded SQLite ledger.
# Against a real cloud, set OS_* (or OS_CLOUD) and TRANSPORT_URL yourself and run
# `node bin/glance-quota-enforcer.js consume` (docs/operators.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash test/e2e/lab.sh up
eval "$(bash test/e2e/lab.sh env)"
export OS_SYSTEM_SCOPE=all TRANSPORT_URL=${TRANSPORT_URL:-$LAB_TRANSPORT_URL} STORE_URL=${STORE_URL:-sqlite://./data/glance-quota.db}
[ -e dist/src/cli.js ] || npm run build
echo "== consume: Glance's notifications -> ledger -> decide -> verify with Glance -> act (${ENFORCEMENT_MODE:-enforce}); Ctrl-C stops"
echo "   metrics: http://127.0.0.1:${METRICS_PORT:-10920}/metrics   status: node bin/glance-quota-enforcer.js status"
exec node bin/glance-quota-enforcer.js consume
