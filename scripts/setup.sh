#!/usr/bin/env bash
# Installs what building and testing Strata needs. Idempotent and quiet: every step first
# checks whether its thing is already there, so on a prepared machine this takes a second.
#
#   STRATA_VENV   Python virtualenv for the integration tests and the Swift/Keystone clients
#                 (default /root/.cache/strata-venv, outside the clone so it survives re-clones)
set -euo pipefail

STRATA_VENV="${STRATA_VENV:-/root/.cache/strata-venv}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "setup: $*"; }

# Runs a command with its output kept aside; shows the output only if the command fails.
quiet() {
    local out
    out="$(mktemp)"
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        echo "setup: failed: $*" >&2
        return 1
    fi
    rm -f "$out"
}

# --- Debian packages --------------------------------------------------------------------
# clang + libclang-dev: bindgen for the rocksdb bindings; protobuf-compiler: tonic-build;
# rclone: a further real Swift client for tests; libnbd-bin (nbdinfo, nbdcopy) and qemu-utils
# (qemu-img, qemu-io): real NBD clients for the NBD server tests; fio (its nbd engine): the
# write-back cache test's verified random writes.
APT_PACKAGES=(clang libclang-dev protobuf-compiler rclone libnbd-bin qemu-utils fio)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$p" >/dev/null 2>&1; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    log "installing ${missing[*]}"
    quiet $SUDO apt-get update -qq
    quiet $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- QEMU system emulator and the test guest ---------------------------------------------
# tests/integration/test_qemu_guest.py boots a QEMU guest from a volume. Bookworm's own
# qemu-system-x86 (7.2) cannot sit next to the qemu-utils 10.0 of bookworm-backports, so it
# comes from bookworm-backports too.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    BACKPORTS_SOURCES=/etc/apt/sources.list.d/strata-backports.sources
    if [[ ! -f "$BACKPORTS_SOURCES" ]]; then
        log "adding bookworm-backports to apt ($BACKPORTS_SOURCES)"
        printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
            "Suites: bookworm-backports" "Components: main" \
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
            $SUDO tee "$BACKPORTS_SOURCES" >/dev/null
    fi
    log "installing qemu-system-x86 from bookworm-backports"
    quiet $SUDO apt-get update -qq
    quiet $SUDO apt-get install -y -qq -t bookworm-backports --no-install-recommends qemu-system-x86
fi
# The guest's kernel and busybox initramfs, built from Debian packages (apt-get download,
# dpkg-deb) into a cache keyed by package versions; a no-op once they are there.
GUEST_CACHE="${STRATA_GUEST_CACHE:-$HOME/.cache/strata-guest}"
if [[ ! -d "$GUEST_CACHE" ]]; then
    log "building the QEMU test guest into $GUEST_CACHE"
fi
quiet python3 "$(dirname "${BASH_SOURCE[0]}")/../tests/integration/guest.py" build

# --- Python clients and pytest ----------------------------------------------------------
PY_PACKAGES=(python-swiftclient python-keystoneclient keystoneauth1 python-openstackclient pytest
    pytest-timeout requests)
PY_IMPORTS="import swiftclient, keystoneclient, keystoneauth1, openstackclient, pytest, pytest_timeout, requests"
if [[ ! -x "$STRATA_VENV/bin/python" ]]; then
    log "creating virtualenv $STRATA_VENV"
    python3 -m venv "$STRATA_VENV"
fi
if ! "$STRATA_VENV/bin/python" -c "$PY_IMPORTS" >/dev/null 2>&1 || [[ ! -x "$STRATA_VENV/bin/swift" ]] \
    || [[ ! -x "$STRATA_VENV/bin/openstack" ]]; then
    log "installing Python packages into $STRATA_VENV"
    quiet "$STRATA_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    quiet "$STRATA_VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
    "$STRATA_VENV/bin/python" -c "$PY_IMPORTS"
fi

# --- Rust -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install the stable Rust toolchain (rustup) first" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    installed="$(rustup component list --installed 2>/dev/null || true)"
    for c in rustfmt clippy; do
        if ! grep -q "^$c" <<<"$installed"; then
            log "adding rust component $c"
            quiet rustup component add "$c"
        fi
    done
fi

# --- OpenStack Swift's functional tests -------------------------------------------------
# The swift 2.38.3 sdist, unpacked next to the venv (outside the clone), installed with what
# its test/functional suite needs; tests/integration/test_swift_functional.py runs it.
SWIFT_VERSION=2.38.3
SWIFT_SRC="$(dirname "$STRATA_VENV")/swift-$SWIFT_VERSION"
if [[ ! -f "$SWIFT_SRC/test/functional/tests.py" ]]; then
    log "fetching the swift $SWIFT_VERSION sdist into $SWIFT_SRC"
    sdist_dir="$(mktemp -d)"
    quiet "$STRATA_VENV/bin/python" -m pip download -q --disable-pip-version-check \
        --no-deps --no-binary :all: "swift==$SWIFT_VERSION" -d "$sdist_dir"
    tar -xzf "$sdist_dir/swift-$SWIFT_VERSION.tar.gz" -C "$(dirname "$SWIFT_SRC")"
    rm -rf "$sdist_dir"
fi
if ! "$STRATA_VENV/bin/python" -c "import swift, pytest_subtests, keystoneclient" >/dev/null 2>&1; then
    log "installing swift $SWIFT_VERSION and its functional-test needs into $STRATA_VENV"
    quiet "$STRATA_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "$SWIFT_SRC" pytest-subtests python-keystoneclient
fi
