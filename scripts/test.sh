#!/usr/bin/env bash
# Runs every check and every test in the workspace; exits non-zero if any fails.
#
# Phases: setup (scripts/setup.sh) → rustfmt check → tests (cargo-nextest when installed,
# else cargo test; unit, integration, real-server and bench-smoke targets) → the engine
# and CLI suites again with RINGQ_BACKEND=epoll → doctests
# (nextest does not run them) → clippy with -D warnings. After setup, every phase runs even
# when an earlier one failed, so one run reports everything; the summary lists failures.
#
# Sized for a 2-core CI machine: a cold build plus all phases stays well under 30 minutes.
# Environment:
#   RINGQ_JOBS   build jobs and test threads (default 2)
#   RINGQ_LINT=0 skip the rustfmt and clippy phases (tests only)
#   REDIS_SERVER redis-server or valkey-server binary for the real-server tests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export RUST_BACKTRACE=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-auto}
jobs=${RINGQ_JOBS:-2}
lint=${RINGQ_LINT:-1}

failed=()
started=$SECONDS

header() { printf '\n==================== %s ====================\n' "$*"; }

# phase NAME COMMAND...: runs one phase, records a failure instead of stopping.
phase() {
    local name=$1 t0=$SECONDS
    shift
    header "$name"
    printf '$ %s\n' "$*"
    if "$@"; then
        printf -- '---- %s: ok (%ss)\n' "$name" "$((SECONDS - t0))"
    else
        printf -- '---- %s: FAILED (%ss)\n' "$name" "$((SECONDS - t0))"
        failed+=("$name")
    fi
}

header "setup"
bash scripts/setup.sh

if [[ $lint == 1 ]]; then
    phase "rustfmt" cargo fmt --all -- --check
fi

if cargo nextest --version >/dev/null 2>&1; then
    phase "tests (nextest)" cargo nextest run --workspace --all-targets \
        --config-file .ci/nextest.toml --build-jobs "$jobs" --test-threads "$jobs" --no-fail-fast
else
    echo "cargo-nextest not installed: running the tests with cargo test"
    phase "tests (cargo test)" cargo test --workspace --all-targets -j "$jobs" --no-fail-fast \
        -- --test-threads "$jobs"
fi

# The engine and CLI suites once more on the epoll backend (the fallback where io_uring
# is refused): the whole suite above ran on io_uring.
if cargo nextest --version >/dev/null 2>&1; then
    # Sentinel and Cluster live above the backend (the resolver, watcher and topology
    # threads, the handshake, routing): their failover suites, minutes of waiting for
    # sentinels and clusters, run once; on epoll one failover or reshard per suite shows
    # the wiring holds there too.
    phase "tests on epoll (engine, cli)" env RINGQ_BACKEND=epoll cargo nextest run \
        -p ringq -p ringq-cli --all-targets --config-file .ci/nextest.toml \
        --build-jobs "$jobs" --test-threads "$jobs" --no-fail-fast \
        -E 'not binary(/^(sentinel|cluster|cluster_acked)$/) or test(/planned_failover_loses_nothing_in_reliable|across_a_failover|redis::a_resharded_slot_loses_nothing_in_pop_mode|redis::reliable_loses_nothing_through_a_failover|every_command_finds_the_node/)'
else
    phase "tests on epoll (engine, cli)" env RINGQ_BACKEND=epoll cargo test -p ringq \
        -p ringq-cli --all-targets -j "$jobs" --no-fail-fast -- --test-threads "$jobs"
fi

phase "doctests" cargo test --workspace --doc -j "$jobs" --no-fail-fast

if [[ $lint == 1 ]]; then
    phase "clippy" cargo clippy --workspace --all-targets -j "$jobs" -- -D warnings
fi

header "summary"
echo "total time: $((SECONDS - started))s"
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all phases passed"
