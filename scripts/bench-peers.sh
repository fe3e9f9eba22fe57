#!/usr/bin/env bash
# The peers of `strata bench`: OpenStack Swift from Debian's packages, and fio.
#
#   bench-peers.sh install        install the Debian packages (skipped when present)
#   bench-peers.sh setup DIR      configs, rings and device under DIR/swift (idempotent)
#   bench-peers.sh start DIR      start memcached and the four Swift servers; prints
#                                 "<name> <pid>" per process, waits for the proxy
#   bench-peers.sh stop DIR       stop what `start` started (by the recorded PIDs)
#
# Everything listens on 127.0.0.1 only. Ports (override through the environment):
#   SWIFT_PROXY_PORT=18081 SWIFT_OBJECT_PORT=16010 SWIFT_CONTAINER_PORT=16011
#   SWIFT_ACCOUNT_PORT=16012 SWIFT_MEMCACHED_PORT=21211
# TempAuth: user bench:bench, key benchkey -> http://127.0.0.1:18081/auth/v1.0
#
# Facts this relies on: a plain ext4 directory works as the device with
# `mount_check = false`; there is no systemd, so every `swift-*-server <conf>` is
# started directly; the servers drop to user `swift`, so the device is chowned to it;
# tempauth keeps its tokens in memcached.
set -euo pipefail

PROXY_PORT=${SWIFT_PROXY_PORT:-18081}
OBJECT_PORT=${SWIFT_OBJECT_PORT:-16010}
CONTAINER_PORT=${SWIFT_CONTAINER_PORT:-16011}
ACCOUNT_PORT=${SWIFT_ACCOUNT_PORT:-16012}
MEMCACHED_PORT=${SWIFT_MEMCACHED_PORT:-21211}
PROXY_WORKERS=${SWIFT_PROXY_WORKERS:-2}
OBJECT_WORKERS=${SWIFT_OBJECT_WORKERS:-2}
PACKAGES=(swift swift-proxy swift-object swift-account swift-container memcached
          python3-swiftclient fio)

die() { echo "bench-peers: $*" >&2; exit 1; }

cmd_install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "bench-peers: packages already installed"
        return
    fi
    echo "bench-peers: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

write_server_conf() { # FILE PORT WORKERS APP-SECTION
    local file=$1 port=$2 workers=$3 app=$4
    cat >"$file" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
workers = $workers
user = swift
swift_dir = $ETC
devices = $SRV
mount_check = false
log_name = bench-$(basename "$file" .conf)

[pipeline:main]
pipeline = $app

[app:$app]
use = egg:swift#${app%-server}
EOF
}

cmd_setup() {
    local dir=${1:?usage: setup DIR}
    command -v swift-ring-builder >/dev/null || die "Swift is not installed (run: $0 install)"
    mkdir -p "$dir/swift"
    dir=$(cd "$dir" && pwd)
    ETC=$dir/swift/etc SRV=$dir/swift/srv
    mkdir -p "$ETC" "$SRV/d1" "$dir/swift/run" "$dir/swift/log"
    # The servers drop to user swift: it must reach and own the device.
    chown -R swift:swift "$SRV" "$dir/swift/run"
    chmod o+x "$dir" "$dir/swift" 2>/dev/null || true
    [ -f /etc/swift/swift.conf ] || cat >/etc/swift/swift.conf <<EOF
[swift-hash]
swift_hash_path_suffix = strata-bench
swift_hash_path_prefix = strata-bench

[storage-policy:0]
name = Policy-0
default = yes
EOF

    write_server_conf "$ETC/object-server.conf" "$OBJECT_PORT" "$OBJECT_WORKERS" object-server
    write_server_conf "$ETC/container-server.conf" "$CONTAINER_PORT" 1 container-server
    write_server_conf "$ETC/account-server.conf" "$ACCOUNT_PORT" 1 account-server
    cat >"$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PROXY_PORT
workers = $PROXY_WORKERS
user = swift
swift_dir = $ETC
log_name = bench-proxy

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats tempauth copy dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
allow_account_management = true
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_bench_bench = benchkey .admin .reseller_admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:dlo]
use = egg:swift#dlo
EOF

    # Rings: one device, one replica, 2^8 partitions. Rebuilt only when missing or
    # when a port changed.
    local stamp="$PROXY_PORT $OBJECT_PORT $CONTAINER_PORT $ACCOUNT_PORT"
    if [ "$(cat "$ETC/ring-ports" 2>/dev/null)" != "$stamp" ]; then
        rm -f "$ETC"/*.builder "$ETC"/*.ring.gz
        local kind port
        for kind in object container account; do
            case $kind in
                object) port=$OBJECT_PORT ;;
                container) port=$CONTAINER_PORT ;;
                account) port=$ACCOUNT_PORT ;;
            esac
            swift-ring-builder "$ETC/$kind.builder" create 8 1 1 >/dev/null
            swift-ring-builder "$ETC/$kind.builder" add "r1z1-127.0.0.1:$port/d1" 100 >/dev/null
            # Exit code 1 is a warning (for instance about balance with one device).
            swift-ring-builder "$ETC/$kind.builder" rebalance >/dev/null || [ $? -eq 1 ]
        done
        echo "$stamp" >"$ETC/ring-ports"
    fi
    echo "bench-peers: Swift set up in $dir/swift"
}

cmd_start() {
    local dir=${1:?usage: start DIR}
    dir=$(cd "$dir" && pwd)
    local etc=$dir/swift/etc run=$dir/swift/run log=$dir/swift/log
    [ -f "$etc/proxy-server.conf" ] || die "not set up (run: $0 setup $dir)"
    cmd_stop "$dir" >/dev/null 2>&1 || true
    memcached -u memcache -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 64 \
        >"$log/memcached.log" 2>&1 </dev/null &
    echo $! >"$run/memcached.pid"
    echo "memcached $!"
    local s
    for s in account container object proxy; do
        "swift-$s-server" "$etc/$s-server.conf" >"$log/$s.log" 2>&1 </dev/null &
        echo $! >"$run/$s.pid"
        echo "swift-$s-server $!"
    done
    # Ready when every server accepts connections and the proxy answers its healthcheck.
    local i port ready
    for i in $(seq 1 240); do
        ready=1
        for port in "$ACCOUNT_PORT" "$CONTAINER_PORT" "$OBJECT_PORT" "$MEMCACHED_PORT"; do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || ready=0
        done
        if [ $ready = 1 ] \
            && curl -fsS "http://127.0.0.1:$PROXY_PORT/healthcheck" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    die "Swift not answering on 127.0.0.1 ports $PROXY_PORT, $ACCOUNT_PORT, $CONTAINER_PORT, $OBJECT_PORT; see $log"
}

cmd_stop() {
    local dir=${1:?usage: stop DIR}
    local f pid
    for f in "$dir"/swift/run/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        # Stop the server's workers first, then the server itself.
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

case ${1:-} in
    install) cmd_install ;;
    setup) cmd_setup "${2:-}" ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    *) die "usage: $0 install | setup DIR | start DIR | stop DIR" ;;
esac
