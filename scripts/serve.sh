#!/usr/bin/env bash
# Builds and runs a Strata node: `bash scripts/serve.sh [--config FILE] [--admin-password PW]`.
# Without a config: one node, data in ./strata-data, Keystone on 127.0.0.1:5000,
# Swift on 127.0.0.1:8080.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/strata-target}"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi

bash "$ROOT/scripts/setup.sh"
cargo build --manifest-path "$ROOT/Cargo.toml" -p strata
exec "$CARGO_TARGET_DIR/debug/strata" serve "$@"
