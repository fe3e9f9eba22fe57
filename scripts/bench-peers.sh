#!/usr/bin/env bash
# The peers of `strata bench`: OpenStack Swift from Debian's packages, and fio; with
# `--with-ceph`, a one-node Ceph from Debian's packages too.
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
# Replicas: SWIFT_REPLICAS=1 (devices d1..dN under DIR/swift/srv, one per replica, in
# every ring, so each replica of an object, container or account lands on its own device)
# TempAuth: user bench:bench, key benchkey -> http://127.0.0.1:18081/auth/v1.0
#
# Facts this relies on: a plain ext4 directory works as the device with
# `mount_check = false`; there is no systemd, so every `swift-*-server <conf>` is
# started directly; the servers drop to user `swift`, so the device is chowned to it;
# tempauth keeps its tokens in memcached.
#
#   bench-peers.sh ceph-install       install Ceph's Debian packages (skipped when present)
#   bench-peers.sh ceph-setup DIR     DIR/ceph/ceph.conf and a monitor store (idempotent)
#   bench-peers.sh ceph-start DIR     start ceph-mon, ceph-mgr, one ceph-osd and radosgw;
#                                     the first start also makes the OSD, the rbd pool
#                                     and the radosgw user. Prints "<name> <pid>" per
#                                     process, waits for radosgw's Swift auth
#   bench-peers.sh ceph-stop DIR      stop what `ceph-start` started (by the recorded PIDs)
#
# Ceph, on 127.0.0.1 only (override through the environment):
#   CEPH_MON_PORT=16789 (msgr v1) CEPH_MON_V2_PORT=16790 (msgr v2)
#   CEPH_PORT_MIN=16800 CEPH_PORT_MAX=16899 (the ports the OSD and the mgr bind)
#   CEPH_RGW_PORT=17480 (radosgw, beast)
#   CEPH_OSD_BYTES=12884901888 (the BlueStore file DIR/ceph/bluestore.img, sparse)
#   CEPH_RBD_POOL=bench-rbd
# Swift API: user bench-ceph:swift, key cephbenchkey (CEPH_SWIFT_KEY) ->
#   http://127.0.0.1:17480/auth/1.0, storage URL .../swift/v1/AUTH_bench-ceph
# Everything is in DIR/ceph; `rm -rf DIR/ceph` after ceph-stop forgets the cluster.
#
# Facts this relies on (Ceph 16.2, Debian 12): with `auth ... required = none` no
# keyring is needed anywhere, but radosgw only reaches the monitor with
# `ms mon client mode = crc secure`; one OSD needs pools of size 1, which the monitor
# refuses unless `mon allow pool size one`; `ceph-mon --mkfs` takes a monmap made by
# monmaptool; `ceph-osd --mkfs` creates its BlueStore file itself
# (`bluestore block create`) once `ceph osd new` registered the OSD's uuid; there is no
# systemd, so every daemon runs in the foreground (`-f`) with `-c DIR/ceph/ceph.conf`;
# radosgw-admin makes the default zone and its pools on first use; radosgw's built-in
# Swift auth answers TempAuth's `X-Auth-User`/`X-Auth-Key` at /auth/1.0; beast sends a
# small response's head and body in two writes, so without `tcp_nodelay=1` every small
# GET waits about 40 ms for the client's delayed ACK.
set -euo pipefail

PROXY_PORT=${SWIFT_PROXY_PORT:-18081}
OBJECT_PORT=${SWIFT_OBJECT_PORT:-16010}
CONTAINER_PORT=${SWIFT_CONTAINER_PORT:-16011}
ACCOUNT_PORT=${SWIFT_ACCOUNT_PORT:-16012}
MEMCACHED_PORT=${SWIFT_MEMCACHED_PORT:-21211}
PROXY_WORKERS=${SWIFT_PROXY_WORKERS:-2}
OBJECT_WORKERS=${SWIFT_OBJECT_WORKERS:-2}
REPLICAS=${SWIFT_REPLICAS:-1}
case $REPLICAS in [1-9]) ;; *) echo "bench-peers: SWIFT_REPLICAS must be 1-9" >&2; exit 2 ;; esac
PACKAGES=(swift swift-proxy swift-object swift-account swift-container memcached
          python3-swiftclient fio)

die() { echo "bench-peers: $*" >&2; exit 1; }

# install_missing WHAT [APT-OPTION ...] -- PACKAGE ...: install the packages that are not
# installed yet.
install_missing() {
    local what=$1; shift
    local opts=()
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "bench-peers: $what packages already installed"
        return
    fi
    echo "bench-peers: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${opts[@]}" "${missing[@]}"
}

cmd_install() { install_missing Swift -- "${PACKAGES[@]}"; }

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
    local n
    mkdir -p "$ETC" "$dir/swift/run" "$dir/swift/log"
    for n in $(seq 1 "$REPLICAS"); do mkdir -p "$SRV/d$n"; done
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

    # Rings: one device per replica, 2^8 partitions. Rebuilt only when missing or when a
    # port or the replica count changed.
    local stamp="$PROXY_PORT $OBJECT_PORT $CONTAINER_PORT $ACCOUNT_PORT r$REPLICAS"
    if [ "$(cat "$ETC/ring-ports" 2>/dev/null)" != "$stamp" ]; then
        rm -f "$ETC"/*.builder "$ETC"/*.ring.gz
        local kind port
        for kind in object container account; do
            case $kind in
                object) port=$OBJECT_PORT ;;
                container) port=$CONTAINER_PORT ;;
                account) port=$ACCOUNT_PORT ;;
            esac
            swift-ring-builder "$ETC/$kind.builder" create 8 "$REPLICAS" 1 >/dev/null
            for n in $(seq 1 "$REPLICAS"); do
                swift-ring-builder "$ETC/$kind.builder" add "r1z1-127.0.0.1:$port/d$n" 100 \
                    >/dev/null
            done
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

CEPH_MON_PORT=${CEPH_MON_PORT:-16789}
CEPH_MON_V2_PORT=${CEPH_MON_V2_PORT:-16790}
CEPH_PORT_MIN=${CEPH_PORT_MIN:-16800}
CEPH_PORT_MAX=${CEPH_PORT_MAX:-16899}
CEPH_RGW_PORT=${CEPH_RGW_PORT:-17480}
CEPH_OSD_BYTES=${CEPH_OSD_BYTES:-12884901888}
CEPH_RBD_POOL=${CEPH_RBD_POOL:-bench-rbd}
CEPH_SWIFT_UID=bench-ceph
CEPH_SWIFT_KEY=${CEPH_SWIFT_KEY:-cephbenchkey}
CEPH_PACKAGES=(ceph-mon ceph-osd ceph-mgr radosgw ceph-common fio)

cmd_ceph_install() { install_missing Ceph --no-install-recommends -- "${CEPH_PACKAGES[@]}"; }

cmd_ceph_setup() {
    local dir=${1:?usage: ceph-setup DIR}
    command -v ceph-mon >/dev/null && command -v radosgw >/dev/null \
        || die "Ceph is not installed (run: $0 ceph-install)"
    mkdir -p "$dir/ceph"
    dir=$(cd "$dir" && pwd)
    local c=$dir/ceph
    mkdir -p "$c/mon" "$c/mgr" "$c/osd" "$c/rgw" "$c/run" "$c/log" "$c/pids"
    local fsid
    fsid=$(sed -n 's/^fsid = //p' "$c/ceph.conf" 2>/dev/null || true)
    [ -n "$fsid" ] || fsid=$(cat /proc/sys/kernel/random/uuid)
    cat >"$c/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$CEPH_MON_V2_PORT,v1:127.0.0.1:$CEPH_MON_PORT]
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
ms bind port min = $CEPH_PORT_MIN
ms bind port max = $CEPH_PORT_MAX
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
run dir = $c/run
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 32
osd pool default pgp num = 32
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
mon max pg per osd = 1000
mon data avail warn = 5
mon warn on insecure global id reclaim allowed = false

[mon]
mon data = $c/mon
admin socket = $c/run/\$name.asok
log file = $c/log/\$name.log

[mgr]
mgr data = $c/mgr
admin socket = $c/run/\$name.asok
log file = $c/log/\$name.log

[osd]
osd data = $c/osd
osd objectstore = bluestore
bluestore block path = $c/bluestore.img
bluestore block size = $CEPH_OSD_BYTES
bluestore block create = true
osd memory target = 2147483648
admin socket = $c/run/\$name.asok
log file = $c/log/\$name.log

[client.rgw.bench]
rgw data = $c/rgw
rgw frontends = beast endpoint=127.0.0.1:$CEPH_RGW_PORT tcp_nodelay=1
rgw swift account in url = true
admin socket = $c/run/\$name.asok
log file = $c/log/\$name.log
EOF
    if [ ! -f "$c/mon/store.db/CURRENT" ]; then
        find "$c/mon" -mindepth 1 -delete
        monmaptool --create --clobber --fsid "$fsid" \
            --addv a "[v2:127.0.0.1:$CEPH_MON_V2_PORT,v1:127.0.0.1:$CEPH_MON_PORT]" \
            "$c/run/monmap" >/dev/null
        ceph-mon -c "$c/ceph.conf" --mkfs -i a --monmap "$c/run/monmap" \
            >"$c/log/mon-mkfs.log" 2>&1 || die "ceph-mon --mkfs failed; see $c/log/mon-mkfs.log"
    fi
    echo "bench-peers: Ceph set up in $c"
}

ceph_cli() { # CONF ARGS...
    local conf=$1
    shift
    timeout 60 ceph -c "$conf" --connect-timeout 10 "$@"
}

ceph_wait() { # CEPH-DIR NAME SECONDS COMMAND...: until COMMAND succeeds, while NAME runs
    local c=$1 name=$2 secs=$3
    shift 3
    local end=$((SECONDS + secs)) pid
    pid=$(cat "$c/pids/$name.pid")
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "$name exited; see its output, $name.out, in $c/log"
        [ $SECONDS -lt $end ] || die "$name not ready after $secs s; see $c/log"
        sleep 0.5
    done
}

ceph_osd_up() { # CONF
    ceph_cli "$1" osd stat | grep -q " 1 up"
}

rgw_auth() { # HEADERS-FILE
    curl -fsS -o /dev/null -D "$1" -H "X-Auth-User: $CEPH_SWIFT_UID:swift" \
        -H "X-Auth-Key: $CEPH_SWIFT_KEY" "http://127.0.0.1:$CEPH_RGW_PORT/auth/1.0"
}

ceph_spawn() { # CEPH-DIR NAME COMMAND...
    local c=$1 name=$2
    shift 2
    "$@" >"$c/log/$name.out" 2>&1 </dev/null &
    echo $! >"$c/pids/$name.pid"
    echo "$name $!"
}

cmd_ceph_start() {
    local dir=${1:?usage: ceph-start DIR}
    dir=$(cd "$dir" && pwd)
    local c=$dir/ceph
    local conf=$c/ceph.conf
    [ -f "$conf" ] && [ -f "$c/mon/store.db/CURRENT" ] \
        || die "not set up (run: $0 ceph-setup $dir)"
    cmd_ceph_stop "$dir" >/dev/null 2>&1 || true
    ceph_spawn "$c" ceph-mon ceph-mon -c "$conf" -i a -f
    ceph_wait "$c" ceph-mon 60 ceph_cli "$conf" mon stat
    ceph_spawn "$c" ceph-mgr ceph-mgr -c "$conf" -i x -f
    if [ ! -f "$c/osd/ready" ]; then
        # A fresh OSD: registered with the monitor, then its BlueStore file made.
        # The uuid is kept, so a retry after a failed mkfs gets the same OSD id.
        find "$c/osd" -mindepth 1 -delete
        rm -f "$c/bluestore.img"
        local uuid id
        [ -s "$c/osd-uuid" ] || cat /proc/sys/kernel/random/uuid >"$c/osd-uuid"
        uuid=$(cat "$c/osd-uuid")
        id=$(ceph_cli "$conf" osd new "$uuid") || die "ceph osd new failed"
        [ "$id" = 0 ] || die "the new OSD got id $id, not 0 (a stale monitor store? rm -rf $c)"
        ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >"$c/log/osd-mkfs.log" 2>&1 \
            || die "ceph-osd --mkfs failed; see $c/log/osd-mkfs.log"
        touch "$c/osd/ready"
    fi
    ceph_spawn "$c" ceph-osd ceph-osd -c "$conf" -i 0 -f
    ceph_wait "$c" ceph-osd 120 ceph_osd_up "$conf"
    if ! ceph_cli "$conf" osd pool ls | grep -qx "$CEPH_RBD_POOL"; then
        ceph_cli "$conf" osd pool create "$CEPH_RBD_POOL" 32 32 >/dev/null 2>&1
        ceph_cli "$conf" osd pool application enable "$CEPH_RBD_POOL" rbd >/dev/null 2>&1
    fi
    if ! timeout 120 radosgw-admin -c "$conf" user info --uid "$CEPH_SWIFT_UID" >/dev/null 2>&1
    then
        timeout 120 radosgw-admin -c "$conf" user create --uid "$CEPH_SWIFT_UID" \
            --display-name "strata bench" >/dev/null
        timeout 60 radosgw-admin -c "$conf" subuser create --uid "$CEPH_SWIFT_UID" \
            --subuser "$CEPH_SWIFT_UID:swift" --access full >/dev/null
    fi
    # The secret is set on every start, so CEPH_SWIFT_KEY may change between runs.
    timeout 60 radosgw-admin -c "$conf" key create --subuser "$CEPH_SWIFT_UID:swift" \
        --key-type swift --secret "$CEPH_SWIFT_KEY" >/dev/null
    ceph_spawn "$c" radosgw radosgw -c "$conf" -n client.rgw.bench -f
    local headers=$c/run/auth-headers
    ceph_wait "$c" radosgw 120 rgw_auth "$headers"
    # radosgw makes its data pool on the first object written, which takes seconds
    # (pool creation, PG peering): one object written and removed, so that this is not
    # measured as the first PUTs' latency.
    local url token
    url=$(tr -d '\r' <"$headers" | sed -n 's/^[Xx]-[Ss]torage-[Uu]rl: //p')
    token=$(tr -d '\r' <"$headers" | sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p')
    rm -f "$headers"
    curl -fsS -o /dev/null -X PUT -H "X-Auth-Token: $token" "$url/bench-warmup" \
        && curl -fsS -o /dev/null -X PUT -H "X-Auth-Token: $token" --data-binary warmup \
            "$url/bench-warmup/o" \
        && curl -fsS -o /dev/null -X DELETE -H "X-Auth-Token: $token" "$url/bench-warmup/o" \
        && curl -fsS -o /dev/null -X DELETE -H "X-Auth-Token: $token" "$url/bench-warmup" \
        || die "radosgw's first object write failed; see $c/log"
}

cmd_ceph_stop() {
    local dir=${1:?usage: ceph-stop DIR}
    local f pid name i
    # radosgw and the OSD first, the monitor last.
    for name in radosgw ceph-osd ceph-mgr ceph-mon; do
        f=$dir/ceph/pids/$name.pid
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

case ${1:-} in
    install) cmd_install ;;
    setup) cmd_setup "${2:-}" ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    ceph-install) cmd_ceph_install ;;
    ceph-setup) cmd_ceph_setup "${2:-}" ;;
    ceph-start) cmd_ceph_start "${2:-}" ;;
    ceph-stop) cmd_ceph_stop "${2:-}" ;;
    *) die "usage: $0 install | setup DIR | start DIR | stop DIR | ceph-install | ceph-setup DIR | ceph-start DIR | ceph-stop DIR" ;;
esac
