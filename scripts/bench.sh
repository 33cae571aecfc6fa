#!/usr/bin/env bash
# ringq's benchmark suite: the main job of this repository.
#
# Steps (each prints a header; the script stops at the first failure):
#   1. setup      scripts/setup.sh (installs redis-server when missing)
#   2. build      optimized build of the workspace with the `bench` profile (release
#                 settings plus line tables, Cargo.toml): binaries land in target/release/
#                 and `cargo bench` reuses the same artifacts instead of a second build
#   3. codec      criterion micro-benchmarks of ringq-resp against redis-protocol
#                 (results: target/criterion/)
# Later steps (engine drain benchmark, the ringq-bench scenarios) are appended below the
# same way: one `step` call each.
#
# Environment:
#   RINGQ_JOBS           build jobs (default 2)
#   RINGQ_BENCH_QUICK=1  shorter criterion runs (smoke test of the suite, noisy figures)
#   RINGQ_BENCH_OUT      directory for logs and result files (default target/ringq-bench)
#   REDIS_SERVER         redis-server or valkey-server binary for broker benchmarks
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

jobs=${RINGQ_JOBS:-2}
out=${RINGQ_BENCH_OUT:-target/ringq-bench}
if [[ ${RINGQ_BENCH_QUICK:-0} == 1 ]]; then
    criterion_args=(--warm-up-time 1 --measurement-time 1)
else
    criterion_args=(--warm-up-time 1 --measurement-time 3)
fi
mkdir -p "$out"
started=$SECONDS

header() { printf '\n==================== %s ====================\n' "$*"; }

# step NAME COMMAND...: runs one step, teeing its output to $out/NAME.log.
step() {
    local name=$1 t0=$SECONDS
    shift
    header "$name"
    printf '$ %s\n' "$*"
    "$@" 2>&1 | tee "$out/$name.log"
    printf -- '---- %s: done (%ss), log: %s\n' "$name" "$((SECONDS - t0))" "$out/$name.log"
}

header "setup"
bash scripts/setup.sh

{
    echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host:    $(uname -n)"
    echo "kernel:  $(uname -r)"
    echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
    echo "cores:   $(nproc)"
    echo "rustc:   $(rustc --version)"
    echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee "$out/machine.txt"

step build cargo build --profile bench --workspace -j "$jobs"

step codec cargo bench -p ringq-resp --bench codec -j "$jobs" -- "${criterion_args[@]}"

header "results"
echo "total time: $((SECONDS - started))s"
echo "machine description:   $out/machine.txt"
echo "step logs:             $out/*.log"
echo "criterion estimates:   target/criterion/<group>/<benchmark>/new/estimates.json"
echo "committed figures:     docs/bench/ (copy results that matter there, with machine.txt)"
