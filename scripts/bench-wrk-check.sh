#!/usr/bin/env bash
# Cross-checks `strata bench load` against wrk: both GET 4 KiB objects from one Strata node
# at concurrency 16 over keep-alive connections, one after the other, and print their
# request rates. If the two agree, the bench's own load generator measures what wrk does.
#
#   bash scripts/bench-wrk-check.sh [STRATA_BIN] [SECONDS]
#
# Needs wrk (apt-get install -y wrk) and curl. Everything runs on 127.0.0.1 in a temp dir
# that is removed at the end, as is the node (by PID).
set -euo pipefail

BIN="${1:-${CARGO_TARGET_DIR:-/root/.cache/strata-target}/debug/strata}"
SECS="${2:-10}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/strata-wrk.XXXXXX)"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
read -r KS SW RPC NBD CIN COMP GL <<<"$(for _ in 1 2 3 4 5 6 7; do free_port; done | tr '\n' ' ')"
cat > "$WORK/node.toml" <<CONF
node-id = 1
data-dir = "$WORK/data"
bind = "127.0.0.1"
[ports]
keystone = $KS
swift = $SW
rpc = $RPC
nbd = $NBD
cinder = $CIN
compute = $COMP
glance = $GL
[[disks]]
path = "disk0"
capacity-bytes = 2147483648
CONF
PASSWORD="wrk-$RANDOM$RANDOM"
RUST_LOG=warn STRATA_ADMIN_PASSWORD="$PASSWORD" "$BIN" serve --config "$WORK/node.toml" \
    >"$WORK/node.log" 2>&1 &
PID=$!

AUTH="http://127.0.0.1:$SW/auth/v1.0"
for _ in $(seq 1 120); do
    curl -sf -o /dev/null -H "X-Auth-User: admin:admin" -H "X-Auth-Key: $PASSWORD" "$AUTH" && break
    sleep 0.5
done
HEADERS="$(curl -sf -D - -o /dev/null -H "X-Auth-User: admin:admin" -H "X-Auth-Key: $PASSWORD" "$AUTH")"
TOKEN="$(tr -d '\r' <<<"$HEADERS" | awk -F': ' 'tolower($1)=="x-auth-token" {print $2}')"
STORAGE="$(tr -d '\r' <<<"$HEADERS" | awk -F': ' 'tolower($1)=="x-storage-url" {print $2}')"
curl -sf -X PUT -H "X-Auth-Token: $TOKEN" "$STORAGE/wrk" -o /dev/null
head -c 4096 /dev/urandom | curl -sf -X PUT -H "X-Auth-Token: $TOKEN" --data-binary @- \
    "$STORAGE/wrk/object-4k" -o /dev/null

echo "== strata bench load: GET 4 KiB, concurrency 16, ${SECS}s"
STRATA_BENCH_KEY="$PASSWORD" "$BIN" bench load --auth-url "$AUTH" --user admin:admin \
    --op get --size 4k -c 16 --duration "$SECS" --container wrk --server-pid "$PID"
echo "== wrk: GET of one 4 KiB object, 16 connections, 2 threads, ${SECS}s"
wrk -t2 -c16 -d"${SECS}s" --latency -H "X-Auth-Token: $TOKEN" "$STORAGE/wrk/object-4k"
