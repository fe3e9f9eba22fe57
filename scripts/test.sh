#!/usr/bin/env bash
# The test command: `bash scripts/test.sh`.
#
# Installs what is missing (scripts/setup.sh), then checks formatting, runs clippy, builds the
# server, runs the Rust tests and the integration tests against real server processes and
# real OpenStack clients (tests/integration). Every stage runs even if an earlier one failed
# (except that the integration tests need a built binary); the summary at the end lists each
# stage, and the exit status is non-zero if any failed.
#
#   CARGO_TARGET_DIR  build directory (default /root/.cache/strata-target, outside the clone)
#   STRATA_VENV       Python virtualenv (default /root/.cache/strata-venv)
#   PYTEST_ARGS       extra pytest arguments, e.g. PYTEST_ARGS="-k three_node"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/strata-target}"
export STRATA_VENV="${STRATA_VENV:-/root/.cache/strata-venv}"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PYTHONDONTWRITEBYTECODE=1

STRATA_BIN="$CARGO_TARGET_DIR/debug/strata"
RUN_START=$SECONDS
declare -a NAMES=() RESULTS=() TIMES=()

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# stage NAME COMMAND...: runs one stage with a header; records its result and duration.
stage() {
    local name="$1"
    shift
    local start=$SECONDS rc=0
    echo
    echo "==================== ${name} ===================="
    echo "\$ $*"
    "$@" || rc=$?
    local took=$((SECONDS - start))
    NAMES+=("$name")
    TIMES+=("$took")
    if ((rc == 0)); then
        RESULTS+=("ok")
        echo "---- ${name}: ok ($(fmt_secs "$took"))"
    else
        RESULTS+=("FAILED (exit $rc)")
        echo "---- ${name}: FAILED with exit $rc ($(fmt_secs "$took"))"
    fi
    return "$rc"
}

skip() {
    NAMES+=("$1")
    TIMES+=(0)
    RESULTS+=("SKIPPED ($2)")
    echo
    echo "==================== $1: skipped, $2 ===================="
}

summary() {
    local failed=0 i
    echo
    echo "==================== summary ===================="
    for i in "${!NAMES[@]}"; do
        printf '  %-20s %-20s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "$(fmt_secs "${TIMES[$i]}")"
        [[ "${RESULTS[$i]}" == ok ]] || failed=1
    done
    echo "  total time: $(fmt_secs $((SECONDS - RUN_START)))"
    if ((failed)); then
        echo "RESULT: FAILED"
    else
        echo "RESULT: all stages passed"
    fi
    return "$failed"
}

# Without the tools nothing else can run.
if ! stage setup bash scripts/setup.sh; then
    summary || true
    exit 1
fi

FMT_ARGS=(--check)
[[ -t 1 ]] || FMT_ARGS+=(--color never) # plain diffs in logs
stage "cargo fmt" cargo fmt --all -- "${FMT_ARGS[@]}" || true
stage "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings || true
built=0
stage "cargo build" cargo build -p strata && built=1 || true
stage "cargo test" cargo test --workspace || true

if ((built)) && [[ -x "$STRATA_BIN" ]]; then
    # tests/.work is ignored by git and cleared by pytest at the start of each run; node logs
    # and configs of the last run stay there for a look after a failure.
    mkdir -p "$ROOT/tests/.work"
    # Every node preallocates its disk files (1 GiB each in the tests) and up to seven nodes
    # run at once: say so up front when the disk cannot hold them.
    free_kib=$(df -Pk "$ROOT/tests/.work" | awk 'NR == 2 { print $4 }')
    if ((free_kib < 10 * 1024 * 1024)); then
        echo "WARNING: only $((free_kib / 1024)) MiB free under tests/.work; the integration" \
            "tests need about 10 GiB and will fail with ENOSPC below that"
    fi
    # shellcheck disable=SC2086
    stage "integration tests" env STRATA_BIN="$STRATA_BIN" \
        "$STRATA_VENV/bin/python" -m pytest -v tests/integration \
        --basetemp "$ROOT/tests/.work/pytest" ${PYTEST_ARGS:-} || true
else
    skip "integration tests" "no binary"
fi

summary
